-- spellhost schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_initial.sql.
-- Money is integer micro-dollars (1 = $0.000001). Times are Unix milliseconds.

CREATE TABLE users (
    id               BIGSERIAL PRIMARY KEY,
    handle           TEXT    NOT NULL UNIQUE,
    email            TEXT    NOT NULL,
    is_admin         BIGINT NOT NULL DEFAULT 0,
    balance_microusd BIGINT NOT NULL DEFAULT 0,
    held_microusd    BIGINT NOT NULL DEFAULT 0 CHECK (held_microusd >= 0),
    stripe_customer_id TEXT UNIQUE,
    created_at_ms    BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT    PRIMARY KEY,          -- the public id part of the key
    user_id       BIGINT NOT NULL REFERENCES users(id),
    name          TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL,             -- argon2id PHC string
    created_at_ms BIGINT NOT NULL,
    deleted_at_ms BIGINT
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE signers (
    id             BIGSERIAL PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users(id),
    name           TEXT    NOT NULL,
    public_key_pem TEXT    NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    UNIQUE (user_id, name)
);

-- Module bytes, content-addressed. In the database so that several instances share them.
CREATE TABLE modules (
    digest TEXT PRIMARY KEY,                    -- 64 lowercase hex
    bytes  BYTEA NOT NULL
);

CREATE TABLE spell_versions (
    id            BIGSERIAL PRIMARY KEY,
    owner_id      BIGINT NOT NULL REFERENCES users(id),
    name          TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    digest        TEXT    NOT NULL REFERENCES modules(digest),
    manifest      TEXT    NOT NULL,
    sbom          BYTEA    NOT NULL,
    signature     TEXT    NOT NULL,
    signer_id     BIGINT NOT NULL REFERENCES signers(id),
    created_at_ms BIGINT NOT NULL,
    UNIQUE (owner_id, name, version)
);

-- Money set aside for casts in flight. A row exists from hold until settle or void.
CREATE TABLE holds (
    id              TEXT    PRIMARY KEY,        -- the cast id
    user_id         BIGINT NOT NULL REFERENCES users(id),
    amount_microusd BIGINT NOT NULL CHECK (amount_microusd >= 0),
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL
);
CREATE INDEX holds_expiry ON holds(expires_at_ms);

-- The ledger: append-only, gapless seq, each hash chaining the previous one.
CREATE TABLE ledger (
    seq                    BIGINT PRIMARY KEY,
    user_id                BIGINT NOT NULL REFERENCES users(id),
    kind                   TEXT    NOT NULL,
    amount_microusd        BIGINT NOT NULL,
    balance_after_microusd BIGINT NOT NULL,
    reference              TEXT    NOT NULL,
    created_at_ms          BIGINT NOT NULL,
    prev_hash              TEXT    NOT NULL,
    hash                   TEXT    NOT NULL
);
CREATE INDEX ledger_user ON ledger(user_id, seq);
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the ledger is append-only'; END $$;
CREATE TRIGGER ledger_no_update_or_delete BEFORE UPDATE OR DELETE ON ledger
FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- The head of the chain, one row. Appends lock it, which makes seq gapless under concurrency.
CREATE TABLE ledger_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO ledger_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- One row per settled cast (what the client was told).
CREATE TABLE casts (
    id             TEXT    PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users(id),
    spell          TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    digest         TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    fuel_used      BIGINT NOT NULL,
    cost_microusd  BIGINT NOT NULL,
    duration_us    BIGINT NOT NULL,
    ledger_seq     BIGINT NOT NULL,
    created_at_ms  BIGINT NOT NULL
);
