-- Stripe billing, PostgreSQL dialect. Keep in step with ../sqlite/0002_billing.sql.

-- Checkout Sessions spellhost created, and whether their payment was credited.
CREATE TABLE checkout_sessions (
    id                TEXT    PRIMARY KEY,
    user_id           BIGINT NOT NULL REFERENCES users(id),
    amount_cents      BIGINT NOT NULL CHECK (amount_cents > 0),
    payment_intent_id TEXT,
    created_at_ms     BIGINT NOT NULL,
    credited_at_ms    BIGINT
);
CREATE INDEX checkout_sessions_user ON checkout_sessions(user_id);

-- Payment intents whose checkout completed: how refunds and disputes find their user.
CREATE TABLE payment_intents (
    id                  TEXT    PRIMARY KEY,
    user_id             BIGINT NOT NULL REFERENCES users(id),
    checkout_session_id TEXT    NOT NULL
);

-- Charges seen in refunds: the cumulative amount already debited, so partial refunds
-- (each event carries the running total) are debited once, in any order.
CREATE TABLE stripe_charges (
    id             TEXT    PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users(id),
    refunded_cents BIGINT NOT NULL DEFAULT 0
);

-- Every verified webhook event, once. `status`: applied, ignored, not_credited (wrong
-- currency or unpaid), pending (waiting for the payment intent named in `waiting_for`).
CREATE TABLE stripe_events (
    id             TEXT    PRIMARY KEY,
    type           TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    waiting_for    TEXT,
    payload        TEXT    NOT NULL,
    received_at_ms BIGINT NOT NULL
);
CREATE INDEX stripe_events_waiting ON stripe_events(waiting_for);
