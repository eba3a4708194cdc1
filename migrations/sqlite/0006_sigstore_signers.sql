-- Keyless signers (a Sigstore certificate identity and OIDC issuer) beside key signers, and
-- what a Sigstore bundle proved for each version. SQLite dialect. Keep in step with
-- ../postgres/0006_sigstore_signers.sql.

-- A signer is a key (`public_key_pem` set, the rest NULL) or an identity (`issuer` and exactly
-- one of `identity` / `identity_regex` set, `public_key_pem` empty: SQLite cannot relax the
-- column's NOT NULL in place). The registry checks this on every insert, and so does the
-- trigger below.
ALTER TABLE signers ADD COLUMN identity TEXT;
ALTER TABLE signers ADD COLUMN identity_regex TEXT;
ALTER TABLE signers ADD COLUMN issuer TEXT;
-- The Sigstore instance (trusted root) whose certificates an identity signer accepts; NULL is
-- the public-good instance. A root an operator pins is used only by the signers that name it.
ALTER TABLE signers ADD COLUMN sigstore_instance TEXT;

-- A version signed with a Sigstore bundle keeps the bundle (`signature` is then empty), the
-- certificate's identity and issuer (keyless), and the transparency-log entry's index and
-- integrated time (Unix seconds), as verified at publish.
ALTER TABLE spell_versions ADD COLUMN sigstore_bundle TEXT;
ALTER TABLE spell_versions ADD COLUMN sigstore_instance TEXT;
ALTER TABLE spell_versions ADD COLUMN signed_identity TEXT;
ALTER TABLE spell_versions ADD COLUMN signed_issuer TEXT;
ALTER TABLE spell_versions ADD COLUMN tlog_index INTEGER;
ALTER TABLE spell_versions ADD COLUMN tlog_integrated_time INTEGER;
-- The SBOM's format (`CycloneDX 1.5`) and top-level component count, as checked at publish.
ALTER TABLE spell_versions ADD COLUMN sbom_format TEXT;
ALTER TABLE spell_versions ADD COLUMN sbom_components INTEGER;

-- What PostgreSQL's CHECK constraints say, as triggers (SQLite cannot add constraints to a
-- table in place).
CREATE TRIGGER signers_one_kind BEFORE INSERT ON signers
WHEN NOT (
    (NEW.public_key_pem <> '' AND NEW.issuer IS NULL AND NEW.identity IS NULL AND NEW.identity_regex IS NULL)
    OR (NEW.public_key_pem = '' AND NEW.issuer IS NOT NULL AND ((NEW.identity IS NULL) <> (NEW.identity_regex IS NULL)))
)
BEGIN
    SELECT RAISE(ABORT, 'a signer is a key or an identity (issuer and one of identity, identity_regex)');
END;

CREATE TRIGGER spell_versions_one_signature BEFORE INSERT ON spell_versions
WHEN (NEW.signature = '') <> (NEW.sigstore_bundle IS NOT NULL)
BEGIN
    SELECT RAISE(ABORT, 'a version carries a signature or a Sigstore bundle, exactly one');
END;
