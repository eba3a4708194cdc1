-- spellhost schema, SQLite dialect. Keep in step with ../postgres/0001_initial.sql.
-- Money is integer micro-dollars (1 = $0.000001). Times are Unix milliseconds.

CREATE TABLE users (
    id               INTEGER PRIMARY KEY,
    handle           TEXT    NOT NULL UNIQUE,
    email            TEXT    NOT NULL,
    is_admin         INTEGER NOT NULL DEFAULT 0,
    balance_microusd INTEGER NOT NULL DEFAULT 0,
    held_microusd    INTEGER NOT NULL DEFAULT 0 CHECK (held_microusd >= 0),
    stripe_customer_id TEXT UNIQUE,
    created_at_ms    INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT    PRIMARY KEY,          -- the public id part of the key
    user_id       INTEGER NOT NULL REFERENCES users(id),
    name          TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL,             -- argon2id PHC string
    created_at_ms INTEGER NOT NULL,
    deleted_at_ms INTEGER
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE signers (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    name           TEXT    NOT NULL,
    public_key_pem TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    UNIQUE (user_id, name)
);

-- Module bytes, content-addressed. In the database so that several instances share them.
CREATE TABLE modules (
    digest TEXT PRIMARY KEY,                    -- 64 lowercase hex
    bytes  BLOB NOT NULL
);

CREATE TABLE spell_versions (
    id            INTEGER PRIMARY KEY,
    owner_id      INTEGER NOT NULL REFERENCES users(id),
    name          TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    digest        TEXT    NOT NULL REFERENCES modules(digest),
    manifest      TEXT    NOT NULL,
    sbom          BLOB    NOT NULL,
    signature     TEXT    NOT NULL,
    signer_id     INTEGER NOT NULL REFERENCES signers(id),
    created_at_ms INTEGER NOT NULL,
    UNIQUE (owner_id, name, version)
);

-- Money set aside for casts in flight. A row exists from hold until settle or void.
CREATE TABLE holds (
    id              TEXT    PRIMARY KEY,        -- the cast id
    user_id         INTEGER NOT NULL REFERENCES users(id),
    amount_microusd INTEGER NOT NULL CHECK (amount_microusd >= 0),
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL
);
CREATE INDEX holds_expiry ON holds(expires_at_ms);

-- The ledger: append-only, gapless seq, each hash chaining the previous one.
CREATE TABLE ledger (
    seq                    INTEGER PRIMARY KEY,
    user_id                INTEGER NOT NULL REFERENCES users(id),
    kind                   TEXT    NOT NULL,
    amount_microusd        INTEGER NOT NULL,
    balance_after_microusd INTEGER NOT NULL,
    reference              TEXT    NOT NULL,
    created_at_ms          INTEGER NOT NULL,
    prev_hash              TEXT    NOT NULL,
    hash                   TEXT    NOT NULL
);
CREATE INDEX ledger_user ON ledger(user_id, seq);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;

-- The head of the chain, one row. Appends lock it, which makes seq gapless under concurrency.
CREATE TABLE ledger_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO ledger_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- One row per settled cast (what the client was told).
CREATE TABLE casts (
    id             TEXT    PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    spell          TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    digest         TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    fuel_used      INTEGER NOT NULL,
    cost_microusd  INTEGER NOT NULL,
    duration_us    INTEGER NOT NULL,
    ledger_seq     INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
