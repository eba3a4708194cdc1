-- Leases replace per-cast holds, SQLite dialect. Keep in step with ../postgres/0004_leases.sql.
--
-- An instance borrows a slice of a user's available balance, or of one budget's remaining
-- amount, in one transaction, and takes holds for casts from it in memory. `amount_microusd`
-- is what the lease still holds: what was borrowed, less what its settled casts were charged
-- and what was given back. `users.held_microusd` is the sum of the user's balance leases;
-- `budgets.held_microusd` the sum of the budget's leases. A lease past its expiry (taken from
-- the database's clock) belongs to an instance that died: the sweeper gives its amount back.
DROP TABLE hold_budgets;
DROP TABLE holds;

CREATE TABLE leases (
    id              TEXT    PRIMARY KEY,
    instance_id     TEXT    NOT NULL,
    user_id         INTEGER NOT NULL REFERENCES users(id),
    -- NULL: a slice of the balance; else a slice of this budget.
    budget_id       TEXT    REFERENCES budgets(id) ON DELETE CASCADE,
    amount_microusd INTEGER NOT NULL CHECK (amount_microusd >= 0),
    -- Set when a debit (refund, dispute) or a changed budget means the lease must not admit
    -- new casts: its owner stops using it and gives it back.
    revoked         INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL
);
CREATE INDEX leases_user ON leases(user_id);
CREATE INDEX leases_expiry ON leases(expires_at_ms);
CREATE UNIQUE INDEX leases_one_per_pool ON leases(instance_id, user_id, COALESCE(budget_id, ''));

-- Bumped by every change to a user's budgets, so instances notice a new or changed budget.
ALTER TABLE users ADD COLUMN budgets_version INTEGER NOT NULL DEFAULT 0;

-- Instances keep API keys and spell versions in memory; a change bumps its epoch in the same
-- transaction, and every instance polls the epochs (twice a second) and drops what changed.
CREATE TABLE cache_epochs (
    name  TEXT    PRIMARY KEY,
    epoch INTEGER NOT NULL
);
INSERT INTO cache_epochs (name, epoch) VALUES ('keys', 0), ('spells', 0);
