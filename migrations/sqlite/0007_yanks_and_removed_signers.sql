-- Yanked versions: no longer chosen for casts that name no version, refused (410) for casts
-- that pin them, still listed, still counted when a new version must be higher than every
-- published one. SQLite dialect. Keep in step with ../postgres/0007_yanks_and_removed_signers.sql.
ALTER TABLE spell_versions ADD COLUMN yanked_at_ms INTEGER;

-- Removed signers (`DELETE /v1/signers/{id}`) authorize no new version; the versions they
-- signed stay published and keep naming them. The name is freed for a new signer by suffixing
-- the removed one's with its id.
ALTER TABLE signers ADD COLUMN removed_at_ms INTEGER;
