-- GitHub login and sessions, PostgreSQL dialect. Keep in step with
-- ../sqlite/0013_github_login_and_sessions.sql. Times are Unix milliseconds.

-- The GitHub account a user logs in with, by GitHub's numeric id (a renamed login keeps its
-- id). Cleared when the account is erased.
ALTER TABLE users ADD COLUMN github_id BIGINT;
CREATE UNIQUE INDEX users_github_id ON users(github_id);

-- Sessions: `sps_<id>_<secret><checksum>` bearer tokens. Only a SHA-256 of the whole token is
-- stored (a fast hash is enough for ~190 random bits; argon2 on every request is not).
CREATE TABLE sessions (
    id              TEXT    PRIMARY KEY,          -- the public id part of the token
    user_id         BIGINT NOT NULL REFERENCES users(id),
    token_sha256    TEXT    NOT NULL,             -- 64 lowercase hex
    created_at_ms   BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    last_used_at_ms BIGINT,
    revoked_at_ms   BIGINT,
    CHECK (expires_at_ms > created_at_ms)
);
CREATE INDEX sessions_user ON sessions(user_id);

-- OAuth `state` values already used at the callback, until they would have expired anyway:
-- a replayed callback is refused. Kept as SHA-256.
CREATE TABLE oauth_states_used (
    state_sha256  TEXT    PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX oauth_states_used_expiry ON oauth_states_used(expires_at_ms);

-- GitHub accounts whose spellhost account was erased, as SHA-256 of `github:<id>`: such an
-- account can never log in again (see crate::privacy).
CREATE TABLE retired_github_ids (
    github_id_sha256 TEXT    PRIMARY KEY,
    retired_at_ms    BIGINT NOT NULL
);
