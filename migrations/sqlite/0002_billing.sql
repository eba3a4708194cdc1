-- Stripe billing, SQLite dialect. Keep in step with ../postgres/0002_billing.sql.

-- Checkout Sessions spellhost created, and whether their payment was credited.
CREATE TABLE checkout_sessions (
    id                TEXT    PRIMARY KEY,
    user_id           INTEGER NOT NULL REFERENCES users(id),
    amount_cents      INTEGER NOT NULL CHECK (amount_cents > 0),
    payment_intent_id TEXT,
    created_at_ms     INTEGER NOT NULL,
    credited_at_ms    INTEGER
);
CREATE INDEX checkout_sessions_user ON checkout_sessions(user_id);

-- Payment intents whose checkout completed: how refunds and disputes find their user.
CREATE TABLE payment_intents (
    id                  TEXT    PRIMARY KEY,
    user_id             INTEGER NOT NULL REFERENCES users(id),
    checkout_session_id TEXT    NOT NULL
);

-- Charges seen in refunds: the cumulative amount already debited, so partial refunds
-- (each event carries the running total) are debited once, in any order.
CREATE TABLE stripe_charges (
    id             TEXT    PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    refunded_cents INTEGER NOT NULL DEFAULT 0
);

-- Every verified webhook event, once. `status`: applied, ignored, not_credited (wrong
-- currency or unpaid), pending (waiting for the payment intent named in `waiting_for`).
CREATE TABLE stripe_events (
    id             TEXT    PRIMARY KEY,
    type           TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    waiting_for    TEXT,
    payload        TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE INDEX stripe_events_waiting ON stripe_events(waiting_for);
