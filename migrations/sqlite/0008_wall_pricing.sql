-- Wall-time pricing and per-key concurrency limits. SQLite dialect. Keep in step with
-- ../postgres/0008_wall_pricing.sql.

-- A cast's charge for the time it was blocked in host calls (µ$, part of -amount_microusd).
-- NULL on every other entry and on casts settled before this migration: the hash chains it
-- only when present, so older entries still verify.
ALTER TABLE ledger ADD COLUMN wall_microusd INTEGER CHECK (wall_microusd IS NULL OR wall_microusd >= 0);

-- What each cast was charged, by component (NULL: settled before this migration), and the
-- blocked time billed, in whole milliseconds.
ALTER TABLE casts ADD COLUMN blocked_ms INTEGER CHECK (blocked_ms IS NULL OR blocked_ms >= 0);
ALTER TABLE casts ADD COLUMN base_microusd INTEGER CHECK (base_microusd IS NULL OR base_microusd >= 0);
ALTER TABLE casts ADD COLUMN fuel_microusd INTEGER CHECK (fuel_microusd IS NULL OR fuel_microusd >= 0);
ALTER TABLE casts ADD COLUMN wall_microusd INTEGER CHECK (
    wall_microusd IS NULL
    OR (wall_microusd >= 0 AND base_microusd + fuel_microusd + wall_microusd = cost_microusd)
);

-- A key's own limit on casts in flight (NULL: only the user's limit). May exceed the user's
-- limit, which still binds.
ALTER TABLE api_keys ADD COLUMN concurrent_casts_max INTEGER CHECK (
    concurrent_casts_max IS NULL OR concurrent_casts_max > 0
);
