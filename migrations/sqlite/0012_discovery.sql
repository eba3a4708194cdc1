-- Spells a client can discover and price (sqlite dialect; keep in step with
-- ../postgres/0012_discovery.sql).

-- Each version's description, kept beside it so that the catalog can match `q` in SQL
-- (NULL for versions published before it was kept: they match by name only).
ALTER TABLE spell_versions ADD COLUMN description TEXT;

-- Usage statistics: how many settled casts of each version burned fuel in each log-spaced
-- bucket (src/money/fuel_histogram.rs). Maintained by the settlement batch, in the same
-- transaction as the charges and only for casts that batch records, so a retried batch never counts twice;
-- percentiles are computed from the buckets when read, never by scanning casts.
CREATE TABLE spell_fuel_histogram (
    spell   TEXT    NOT NULL,               -- owner/name, as in casts
    version TEXT    NOT NULL,
    bucket  INTEGER NOT NULL CHECK (bucket >= 0),
    casts   INTEGER NOT NULL CHECK (casts >= 0),
    PRIMARY KEY (spell, version, bucket)
);

-- A settled cast's output, for the caster to fetch again (GET /v1/casts/{id}): written with the
-- settlement, kept until output_expires_at_ms, then swept (set to NULL; the record stays).
-- output_encoding: 'utf8' (the bytes as text) or 'base64'. output_bytes: the output's size,
-- kept or not (NULL for casts settled before this migration).
ALTER TABLE casts ADD COLUMN output TEXT;
ALTER TABLE casts ADD COLUMN output_encoding TEXT CHECK (output_encoding IS NULL OR output_encoding IN ('utf8', 'base64'));
ALTER TABLE casts ADD COLUMN output_bytes INTEGER CHECK (output_bytes IS NULL OR output_bytes >= 0);
ALTER TABLE casts ADD COLUMN output_expires_at_ms INTEGER;
CREATE INDEX casts_output_expiry ON casts(output_expires_at_ms) WHERE output IS NOT NULL;
