-- Keyless signers (a Sigstore certificate identity and OIDC issuer) beside key signers, and
-- what a Sigstore bundle proved for each version. PostgreSQL dialect. Keep in step with
-- ../sqlite/0006_sigstore_signers.sql.

-- A signer is a key (`public_key_pem` set, the rest NULL) or an identity (`issuer` and exactly
-- one of `identity` / `identity_regex` set, `public_key_pem` empty, as in SQLite, which cannot
-- relax the column's NOT NULL in place). The registry checks this on every insert; here the
-- database checks it too.
ALTER TABLE signers ADD COLUMN identity TEXT;
ALTER TABLE signers ADD COLUMN identity_regex TEXT;
ALTER TABLE signers ADD COLUMN issuer TEXT;
-- The Sigstore instance (trusted root) whose certificates an identity signer accepts; NULL is
-- the public-good instance. A root an operator pins is used only by the signers that name it.
ALTER TABLE signers ADD COLUMN sigstore_instance TEXT;
ALTER TABLE signers ADD CONSTRAINT signers_one_kind CHECK (
    (public_key_pem <> '' AND issuer IS NULL AND identity IS NULL AND identity_regex IS NULL)
    OR (public_key_pem = '' AND issuer IS NOT NULL AND ((identity IS NULL) <> (identity_regex IS NULL)))
);

-- A version signed with a Sigstore bundle keeps the bundle (`signature` is then empty), the
-- certificate's identity and issuer (keyless), and the transparency-log entry's index and
-- integrated time (Unix seconds), as verified at publish.
ALTER TABLE spell_versions ADD COLUMN sigstore_bundle TEXT;
ALTER TABLE spell_versions ADD COLUMN sigstore_instance TEXT;
ALTER TABLE spell_versions ADD COLUMN signed_identity TEXT;
ALTER TABLE spell_versions ADD COLUMN signed_issuer TEXT;
ALTER TABLE spell_versions ADD COLUMN tlog_index BIGINT;
ALTER TABLE spell_versions ADD COLUMN tlog_integrated_time BIGINT;
-- The SBOM's format (`CycloneDX 1.5`) and top-level component count, as checked at publish.
ALTER TABLE spell_versions ADD COLUMN sbom_format TEXT;
ALTER TABLE spell_versions ADD COLUMN sbom_components BIGINT;

-- A version carries a detached signature or a Sigstore bundle, exactly one.
ALTER TABLE spell_versions ADD CONSTRAINT spell_versions_one_signature CHECK (
    (signature = '') = (sigstore_bundle IS NOT NULL)
);
