-- Idempotency keys and account erasure, PostgreSQL dialect. Keep in step with
-- ../sqlite/0009_idempotency_and_privacy.sql. Times are Unix milliseconds.

-- One row per (user, Idempotency-Key) for 24 hours. The client's key is never stored: rows are
-- found by a hash of it, and the stored response is sealed (AES-256-GCM) under a key derived
-- from it, so the database alone cannot read a replayed API key or a cast's output. The row
-- is inserted before the request runs (the primary key is the reservation, across instances);
-- `status`/`response` are set once it took effect (a cast: in its settlement's transaction).
-- A row still without a response past `locked_until_ms` belongs to a process that died: the
-- next request with the key takes it over.
CREATE TABLE idempotency_keys (
    user_id         BIGINT NOT NULL REFERENCES users(id),
    key_hash        TEXT   NOT NULL,
    request_hash    TEXT   NOT NULL,
    route           TEXT   NOT NULL,
    lock_token      TEXT   NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    locked_until_ms BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    status          BIGINT,
    response        TEXT,
    completed_at_ms BIGINT,
    PRIMARY KEY (user_id, key_hash),
    CHECK ((status IS NULL) = (response IS NULL) AND (status IS NULL) = (completed_at_ms IS NULL))
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys(expires_at_ms);

-- Erased accounts (`DELETE /v1/users/me`): the row stays, pseudonymized (handle `deleted-<id>`,
-- no email, no Stripe customer), because the ledger's financial records reference it.
ALTER TABLE users ADD COLUMN deleted_at_ms BIGINT;

-- Handles of erased accounts, as SHA-256, so that nobody can take over an erased author's
-- spell names (`owner/name` that other users' casts and allow-lists still name).
CREATE TABLE retired_handles (
    handle_sha256 TEXT   PRIMARY KEY,
    retired_at_ms BIGINT NOT NULL
);
