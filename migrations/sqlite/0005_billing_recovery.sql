-- Billing that fails closed and recovers, every Stripe money event in both directions, and
-- automatic recharge. SQLite dialect. Keep in step with ../postgres/0005_billing_recovery.sql.

-- Why an event was rejected (`status = 'rejected'`): an amount above the configured maximum or
-- arithmetic that would overflow. The operator replays it after review.
ALTER TABLE stripe_events ADD COLUMN reason TEXT;

-- Refunds are applied as a difference between what a charge's refunds should have debited
-- (the highest `amount_refunded` seen, less the refunds seen failed or canceled) and what was
-- debited so far, so every order of refund events ends at the same balance. Before this
-- migration a charge's `refunded_cents` was exactly what had been debited.
ALTER TABLE stripe_charges ADD COLUMN debited_cents INTEGER NOT NULL DEFAULT 0 CHECK (debited_cents >= 0);
UPDATE stripe_charges SET debited_cents = refunded_cents;

-- Refunds seen failed or canceled (`charge.refund.updated`): credited back once.
CREATE TABLE stripe_refunds (
    id           TEXT    PRIMARY KEY,
    charge_id    TEXT    NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    failed       INTEGER NOT NULL DEFAULT 0 CHECK (failed IN (0, 1))
);
CREATE INDEX stripe_refunds_charge ON stripe_refunds(charge_id);

-- Disputes: what is known (funds withdrawn, funds reinstated) only ever grows, and the balance
-- moves by the difference between what that knowledge implies and what was debited so far.
CREATE TABLE stripe_disputes (
    id            TEXT    PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id),
    charge_id     TEXT,
    amount_cents  INTEGER NOT NULL CHECK (amount_cents >= 0),
    withdrawn     INTEGER NOT NULL DEFAULT 0 CHECK (withdrawn IN (0, 1)),
    reinstated    INTEGER NOT NULL DEFAULT 0 CHECK (reinstated IN (0, 1)),
    debited_cents INTEGER NOT NULL DEFAULT 0 CHECK (debited_cents >= 0 AND debited_cents <= amount_cents)
);
-- Disputes debited before this migration (on `charge.dispute.created`): withdrawn, debited.
INSERT INTO stripe_disputes (id, user_id, amount_cents, withdrawn, debited_cents)
SELECT substr(reference, 8), user_id, (-amount_microusd) / 10000, 1, (-amount_microusd) / 10000
FROM ledger WHERE kind = 'dispute' AND reference LIKE 'stripe:dp_%' AND amount_microusd < 0;

-- Auto-recharge settings, the saved payment method and today's count of recharges, per user.
CREATE TABLE auto_recharge (
    user_id                 INTEGER PRIMARY KEY REFERENCES users(id),
    enabled                 INTEGER NOT NULL DEFAULT 0 CHECK (enabled IN (0, 1)),
    threshold_microusd      INTEGER NOT NULL DEFAULT 0 CHECK (threshold_microusd >= 0),
    amount_cents            INTEGER NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
    max_per_day             INTEGER NOT NULL DEFAULT 0 CHECK (max_per_day >= 0),
    day                     INTEGER NOT NULL DEFAULT 0,  -- UTC day (Unix ms / 86 400 000) of day_count
    day_count               INTEGER NOT NULL DEFAULT 0 CHECK (day_count >= 0),
    payment_method_id       TEXT,
    payment_method_event_at INTEGER,                     -- `created` of the event that saved it
    disabled_reason         TEXT,
    disabled_at_ms          INTEGER,
    updated_at_ms           INTEGER NOT NULL,
    CHECK (enabled = 0 OR (amount_cents > 0 AND max_per_day > 0 AND payment_method_id IS NOT NULL))
);

-- Card details of the users' payment methods, for display (`payment_method.*` events).
CREATE TABLE stripe_payment_methods (
    id             TEXT    PRIMARY KEY,
    user_id        INTEGER REFERENCES users(id),
    brand          TEXT,
    last4          TEXT,
    exp_month      INTEGER,
    exp_year       INTEGER,
    detached_at_ms INTEGER
);

-- Automatic recharge attempts. The id is random: it names the Stripe idempotency key and is
-- set as the payment intent's metadata, so a payment intent whose creation was never recorded
-- (a crash) is still recognised, and only by what spellhost itself chose.
CREATE TABLE recharges (
    id                TEXT    PRIMARY KEY,
    user_id           INTEGER NOT NULL REFERENCES users(id),
    amount_cents      INTEGER NOT NULL CHECK (amount_cents > 0),
    customer_id       TEXT    NOT NULL,
    payment_method_id TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('creating', 'pending', 'succeeded', 'failed', 'abandoned')),
    payment_intent_id TEXT    UNIQUE,
    failure_reason    TEXT,
    created_at_ms     INTEGER NOT NULL,
    attempted_at_ms   INTEGER NOT NULL,
    credited_at_ms    INTEGER,
    CHECK ((state = 'succeeded') = (credited_at_ms IS NOT NULL))
);
-- Never more than one payment intent in flight per user, across instances and crashes.
CREATE UNIQUE INDEX recharges_one_in_flight ON recharges(user_id) WHERE state IN ('creating', 'pending');
CREATE INDEX recharges_user ON recharges(user_id, created_at_ms);
