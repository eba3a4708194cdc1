-- Keyless signers (a Sigstore certificate identity and OIDC issuer) beside key signers, and
-- what a Sigstore bundle proved for each version. SQLite dialect. Keep in step with
-- ../postgres/0006_sigstore_signers.sql.

-- A signer is a key (`public_key_pem` set, the rest NULL) or an identity (`issuer` and exactly
-- one of `identity` / `identity_regex` set, `public_key_pem` empty: SQLite cannot relax the
-- column's NOT NULL in place). The registry checks this on every insert.
ALTER TABLE signers ADD COLUMN identity TEXT;
ALTER TABLE signers ADD COLUMN identity_regex TEXT;
ALTER TABLE signers ADD COLUMN issuer TEXT;

-- A version signed with a Sigstore bundle keeps the bundle (`signature` is then empty), the
-- certificate's identity and issuer (keyless), and the transparency-log entry's index and
-- integrated time (Unix seconds), as verified at publish.
ALTER TABLE spell_versions ADD COLUMN sigstore_bundle TEXT;
ALTER TABLE spell_versions ADD COLUMN signed_identity TEXT;
ALTER TABLE spell_versions ADD COLUMN signed_issuer TEXT;
ALTER TABLE spell_versions ADD COLUMN tlog_index INTEGER;
ALTER TABLE spell_versions ADD COLUMN tlog_integrated_time INTEGER;
