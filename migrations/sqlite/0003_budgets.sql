-- Budgets, API key scopes and allow-lists, SQLite dialect. Keep in step with
-- ../postgres/0003_budgets.sql. Money is integer micro-dollars; times are Unix milliseconds.

-- A spending limit of one user over one scope (the account, one API key, one spell) and one
-- calendar period (UTC). `used_microusd` is what casts settled in the period that starts at
-- `period_start_ms` cost; it counts from zero again in the next period. `held_microusd` is set
-- aside for casts in flight, whatever the period.
CREATE TABLE budgets (
    id                  TEXT    PRIMARY KEY,
    user_id             INTEGER NOT NULL REFERENCES users(id),
    scope_type          TEXT    NOT NULL CHECK (scope_type IN ('account', 'key', 'spell')),
    -- '' for the account, the key's id for a key, 'owner/name' for a spell.
    scope_value         TEXT    NOT NULL,
    period              TEXT    NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
    hard_limit_microusd INTEGER NOT NULL CHECK (hard_limit_microusd > 0),
    soft_limit_microusd INTEGER CHECK (soft_limit_microusd IS NULL
                                       OR (soft_limit_microusd > 0
                                           AND soft_limit_microusd <= hard_limit_microusd)),
    period_start_ms     INTEGER NOT NULL,
    used_microusd       INTEGER NOT NULL DEFAULT 0 CHECK (used_microusd >= 0),
    held_microusd       INTEGER NOT NULL DEFAULT 0 CHECK (held_microusd >= 0),
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    UNIQUE (user_id, scope_type, scope_value, period)
);

-- The budgets a hold set its amount aside against (the same amount as on the balance).
CREATE TABLE hold_budgets (
    hold_id   TEXT NOT NULL REFERENCES holds(id) ON DELETE CASCADE,
    budget_id TEXT NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
    PRIMARY KEY (hold_id, budget_id)
);
CREATE INDEX hold_budgets_budget ON hold_budgets(budget_id);

-- Which key a cast came with, for usage by key.
ALTER TABLE casts ADD COLUMN key_id TEXT;
CREATE INDEX casts_user_time ON casts(user_id, created_at_ms);

-- Scopes: a comma-separated subset of cast,publish,read,manage (existing keys keep all four).
-- Allowed spells: NULL for any, else a newline-separated list of owner/name or owner/*.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT 'cast,publish,read,manage';
ALTER TABLE api_keys ADD COLUMN allowed_spells TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at_ms INTEGER;
ALTER TABLE api_keys ADD COLUMN last_used_at_ms INTEGER;
