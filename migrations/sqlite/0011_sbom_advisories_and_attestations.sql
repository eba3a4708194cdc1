-- What the advisory check found when a version was published (JSON: the database snapshot, the
-- severity threshold, the findings and their VEX states; NULL for versions published before
-- the check existed). SQLite dialect. Keep in step with
-- ../postgres/0011_sbom_advisories_and_attestations.sql.
ALTER TABLE spell_versions ADD COLUMN advisory_check TEXT;

-- The signed SBOM (an in-toto attestation bundle over the module, predicate type CycloneDX)
-- that came with a version, as verified at publish.
ALTER TABLE spell_versions ADD COLUMN sbom_attestation TEXT;

-- A signer may require every version it signs to come with a signed SBOM, verified with the
-- same identity policy as the module. Booleans are 0/1 integers, as elsewhere.
ALTER TABLE signers ADD COLUMN require_signed_sbom INTEGER NOT NULL DEFAULT 0 CHECK (require_signed_sbom IN (0, 1));
