//! Applying Stripe events: record the event id, then apply it idempotently, in one transaction.
//!
//! Every effect is keyed by the Stripe object it concerns, never by the event: a session is
//! credited once, a recharge once, a charge's refunds and a dispute move the balance by the
//! difference between what is known about them and what was already moved. So a duplicate, a
//! replay or any order of events ends at the same balance. An event that cannot be tied to a
//! user yet waits (`pending`) for the payment intent that a later credit records.
//!
//! Events reach a user only through what spellhost itself created: its Checkout Sessions, its
//! recharge payment intents (by id, or by the random recharge id it set as metadata), and its
//! Stripe customers (for saving a payment method, which moves no money).

use super::event::{
    Cents, Charge, Dispute, Object, PaymentIntent, PaymentMethod, Refund, Session, SetupIntent,
    StripeEvent, Unreadable, is_usd,
};
use super::{BillingError, RECHARGE_METADATA_KEY};
use crate::money::{self, EntryKind, MicroUsd, MoneyError};
use crate::store::{Db, Tx, now_ms};

/// What the configuration allows an event to do.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The API versions the webhook endpoint is pinned to (`SPELLHOST_STRIPE_API_VERSION`).
    pub accepted_versions: Vec<String>,
    /// The largest amount one event may carry (`SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS`).
    pub amount_max_cents: i64,
}

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Seen before: no effect.
    Duplicate,
    /// Applied (money moved, or state that moves money later was recorded).
    Applied,
    /// Recorded; nothing to do (a type not acted on, not ours, already done).
    Ignored,
    /// Recorded, not credited: unpaid, or not in USD.
    NotCredited,
    /// Recorded; waits for a payment intent spellhost created to be recorded.
    Pending,
    /// Recorded, not applied: an amount above the maximum or arithmetic that would overflow.
    /// Answered 2xx (a retry would fail the same way); the operator replays it after review.
    Rejected,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::Applied => "applied",
            EventOutcome::Ignored => "ignored",
            EventOutcome::NotCredited => "not_credited",
            EventOutcome::Pending => "pending",
            EventOutcome::Rejected => "rejected",
        }
    }
}

/// An event that was received (or replayed) and what became of it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub type_: String,
    pub outcome: EventOutcome,
    pub reason: Option<String>,
    /// Events rejected by this application: this one and any waiting one it released.
    pub rejected: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Not recorded: Stripe must retry (answered 5xx).
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    #[error(transparent)]
    Billing(#[from] BillingError),
}

impl From<sqlx::Error> for ReceiveError {
    fn from(error: sqlx::Error) -> Self {
        ReceiveError::Billing(error.into())
    }
}

/// The result of applying one event, before it is written to `stripe_events`.
struct Applied {
    outcome: EventOutcome,
    waiting_for: Option<String>,
    reason: Option<String>,
    rejected: u32,
}

impl Applied {
    fn of(outcome: EventOutcome) -> Self {
        Applied {
            outcome,
            waiting_for: None,
            reason: None,
            rejected: 0,
        }
    }

    /// Not tied to a user yet: wait for the payment intent, or ignore if none is named.
    fn waiting(payment_intent: Option<&str>) -> Self {
        match payment_intent {
            Some(payment_intent) => Applied {
                waiting_for: Some(payment_intent.to_owned()),
                ..Applied::of(EventOutcome::Pending)
            },
            None => Applied::of(EventOutcome::Ignored),
        }
    }
}

/// One event, from a webhook delivery or the events list: recorded and applied exactly once.
pub async fn receive(db: &Db, rules: &Rules, payload: &str) -> Result<Received, ReceiveError> {
    let event = StripeEvent::parse(payload, &rules.accepted_versions)?;
    let mut tx = db.begin().await?;
    lock_billing(db, &mut tx).await?;
    let recorded = sqlx::query(
        "INSERT INTO stripe_events (id, type, status, payload, received_at_ms) VALUES ($1, $2, 'received', $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.type_)
    .bind(payload)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if recorded == 0 {
        return Ok(received(&event, Applied::of(EventOutcome::Duplicate)));
    }
    let applied = apply_guarded(db, &mut tx, rules, &event).await?;
    set_status(&mut tx, &event.id, &applied).await?;
    tx.commit().await?;
    Ok(received(&event, applied))
}

/// Applies an event that was recorded before, again, from its stored payload (an operator's
/// tool, e.g. after reviewing a rejected amount). `None` when no such event was recorded.
pub async fn replay(
    db: &Db,
    rules: &Rules,
    event_id: &str,
) -> Result<Option<Received>, ReceiveError> {
    let mut tx = db.begin().await?;
    lock_billing(db, &mut tx).await?;
    let stored: Option<(String,)> =
        sqlx::query_as("SELECT payload FROM stripe_events WHERE id = $1")
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((payload,)) = stored else {
        return Ok(None);
    };
    let event = StripeEvent::parse(&payload, &rules.accepted_versions)?;
    let applied = apply_guarded(db, &mut tx, rules, &event).await?;
    set_status(&mut tx, &event.id, &applied).await?;
    tx.commit().await?;
    Ok(Some(received(&event, applied)))
}

/// The recorded status of an event, if it was recorded.
pub async fn recorded_status(db: &Db, event_id: &str) -> Result<Option<String>, BillingError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT status FROM stripe_events WHERE id = $1")
        .bind(event_id)
        .fetch_optional(db.reader())
        .await?;
    Ok(row.map(|(status,)| status))
}

fn received(event: &StripeEvent, applied: Applied) -> Received {
    Received {
        id: event.id.clone(),
        type_: event.type_.clone(),
        outcome: applied.outcome,
        reason: applied.reason,
        rejected: applied.rejected,
    }
}

/// Billing events are applied one at a time (PostgreSQL: a transaction-scoped advisory lock,
/// taken before any row lock so the lock order stays advisory → auto-recharge row → recharge →
/// user → ledger head, as in every other money transaction), so a refund and the credit it
/// waits for can never miss each other.
async fn lock_billing(db: &Db, tx: &mut Tx) -> Result<(), sqlx::Error> {
    sqlx::query(db.pick("SELECT 1", "SELECT pg_advisory_xact_lock(7234001)"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn set_status(tx: &mut Tx, id: &str, applied: &Applied) -> Result<(), BillingError> {
    sqlx::query(
        "UPDATE stripe_events SET status = $1, waiting_for = $2, reason = $3 WHERE id = $4",
    )
    .bind(applied.outcome.as_str())
    .bind(applied.waiting_for.as_deref())
    .bind(applied.reason.as_deref())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Why an error rejects the event (recorded, not retried) rather than failing the delivery.
fn rejection(error: &BillingError) -> Option<String> {
    match error {
        BillingError::Rejected(reason) => Some(reason.clone()),
        BillingError::Money(MoneyError::AmountOutOfRange) => {
            Some("the credit or debit would overflow the balance".into())
        }
        _ => None,
    }
}

/// Runs an application inside a savepoint: a rejection undoes only what the event did, the
/// event itself stays recorded as `rejected`.
async fn savepoint(tx: &mut Tx) -> Result<(), sqlx::Error> {
    sqlx::query("SAVEPOINT billing_event")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn end_savepoint(
    tx: &mut Tx,
    event: &StripeEvent,
    result: Result<Applied, BillingError>,
) -> Result<Applied, BillingError> {
    let reason = match result {
        Ok(applied) => {
            sqlx::query("RELEASE SAVEPOINT billing_event")
                .execute(&mut **tx)
                .await?;
            return Ok(applied);
        }
        Err(error) => rejection(&error).ok_or(error)?,
    };
    sqlx::query("ROLLBACK TO SAVEPOINT billing_event")
        .execute(&mut **tx)
        .await?;
    sqlx::query("RELEASE SAVEPOINT billing_event")
        .execute(&mut **tx)
        .await?;
    tracing::error!(stripe.event = %event.id, stripe.event_type = %event.type_, reason = %reason,
        "stripe event rejected; review it, then `spellhost billing replay`");
    Ok(Applied {
        reason: Some(reason),
        rejected: 1,
        ..Applied::of(EventOutcome::Rejected)
    })
}

async fn apply_guarded(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    event: &StripeEvent,
) -> Result<Applied, BillingError> {
    savepoint(tx).await?;
    let result = apply(db, tx, rules, event).await;
    end_savepoint(tx, event, result).await
}

async fn apply(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    event: &StripeEvent,
) -> Result<Applied, BillingError> {
    match &event.object {
        Object::Session(session) => completion(db, tx, rules, &event.type_, session).await,
        Object::PaymentIntent(intent) => payment_intent(db, tx, rules, event, intent).await,
        Object::SetupIntent(intent) => setup_intent(tx, event, intent).await,
        Object::PaymentMethod(method) => payment_method(db, tx, &event.type_, method).await,
        Object::Charge(_) | Object::Refund(_) | Object::Dispute(_) => {
            dependent(db, tx, rules, event).await
        }
        Object::NotActedOn => Ok(Applied::of(EventOutcome::Ignored)),
    }
}

/// The events that may wait for a payment intent: refunds and disputes.
async fn dependent(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    event: &StripeEvent,
) -> Result<Applied, BillingError> {
    match &event.object {
        Object::Charge(charge) => charge_refunded(db, tx, rules, charge).await,
        Object::Refund(refund) => refund_updated(db, tx, rules, refund).await,
        Object::Dispute(dispute) => dispute_event(db, tx, rules, &event.type_, dispute).await,
        _ => Ok(Applied::of(EventOutcome::Ignored)),
    }
}

/// Applies the refunds and disputes that were waiting for this payment intent, each in its own
/// savepoint; returns how many were rejected.
async fn apply_waiting(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    payment_intent: &str,
) -> Result<u32, BillingError> {
    let waiting: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, payload FROM stripe_events WHERE waiting_for = $1 AND status = 'pending' ORDER BY received_at_ms, id",
    )
    .bind(payment_intent)
    .fetch_all(&mut **tx)
    .await?;
    let mut rejected = 0;
    for (id, payload) in waiting {
        // Read when it arrived; read again from what was stored.
        let applied = match StripeEvent::parse(&payload, &rules.accepted_versions) {
            Ok(event) => {
                savepoint(tx).await?;
                let result = dependent(db, tx, rules, &event).await;
                end_savepoint(tx, &event, result).await?
            }
            Err(error) => {
                tracing::error!(stripe.event = %id, error = %error, "a waiting stripe event can no longer be read");
                Applied {
                    reason: Some(error.to_string()),
                    rejected: 1,
                    ..Applied::of(EventOutcome::Rejected)
                }
            }
        };
        rejected += applied.rejected;
        set_status(tx, &id, &applied).await?;
    }
    Ok(rejected)
}

async fn user_by_customer(
    tx: &mut Tx,
    customer: Option<&str>,
) -> Result<Option<i64>, BillingError> {
    let Some(customer) = customer else {
        return Ok(None);
    };
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE stripe_customer_id = $1")
        .bind(customer)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|(id,)| id))
}

/// The user of a charge: known from an earlier refund or dispute, or through its payment
/// intent, if spellhost created that payment (a top-up's Checkout or a recharge).
async fn user_for_charge(
    tx: &mut Tx,
    charge: Option<&str>,
    payment_intent: Option<&str>,
) -> Result<Option<i64>, BillingError> {
    if let Some(charge) = charge {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT user_id FROM stripe_charges WHERE id = $1")
                .bind(charge)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some((user_id,)) = row {
            return Ok(Some(user_id));
        }
    }
    let Some(payment_intent) = payment_intent else {
        return Ok(None);
    };
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT user_id FROM payment_intents WHERE id = $1 \
         UNION ALL SELECT user_id FROM recharges WHERE payment_intent_id = $1",
    )
    .bind(payment_intent)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(id,)| id))
}

fn negative(amount: MicroUsd) -> Result<MicroUsd, BillingError> {
    MicroUsd::ZERO
        .checked_sub(amount)
        .ok_or(BillingError::Money(MoneyError::AmountOutOfRange))
}

fn microusd_of_cents(cents: i64) -> Result<MicroUsd, BillingError> {
    MicroUsd::from_cents(cents).ok_or(BillingError::Money(MoneyError::AmountOutOfRange))
}

/// The credit of a paid top-up (a session or a recharge), referenced by its Stripe object.
async fn credit_topup(
    db: &Db,
    tx: &mut Tx,
    user_id: i64,
    amount: Cents,
    object_id: &str,
) -> Result<(), BillingError> {
    let reference = format!("stripe:{object_id}");
    money::post_in(
        db,
        tx,
        user_id,
        EntryKind::Topup,
        amount.microusd()?,
        &reference,
    )
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RecordedSession {
    user_id: i64,
    amount_cents: i64,
}

/// `checkout.session.completed` / `async_payment_succeeded`: credits a paid top-up session
/// that spellhost created, once, with exactly the amount it asked for.
async fn completion(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    type_: &str,
    session: &Session,
) -> Result<Applied, BillingError> {
    let credits = matches!(
        type_,
        "checkout.session.completed" | "checkout.session.async_payment_succeeded"
    );
    // Setup-mode sessions move no money; the card is saved by `setup_intent.succeeded`.
    if !credits || session.mode != "payment" {
        return Ok(Applied::of(EventOutcome::Ignored));
    }
    let recorded: Option<RecordedSession> =
        sqlx::query_as("SELECT user_id, amount_cents FROM checkout_sessions WHERE id = $1")
            .bind(&session.id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(recorded) = recorded else {
        tracing::warn!(stripe.session = %session.id, "a completed checkout that spellhost did not create");
        return Ok(Applied::of(EventOutcome::Ignored));
    };
    if session.payment_status != "paid" || !is_usd(session.currency.as_deref()) {
        return Ok(Applied::of(EventOutcome::NotCredited));
    }
    let amount = session
        .amount_total
        .as_ref()
        .ok_or_else(|| BillingError::Rejected("a paid session without amount_total".into()))?
        .cents("amount_total", rules.amount_max_cents)?;
    if amount.get() != recorded.amount_cents {
        return Err(BillingError::Rejected(format!(
            "amount_total {} differs from the {} cents spellhost asked for",
            amount.get(),
            recorded.amount_cents
        )));
    }
    let payment_intent = session.payment_intent();
    let first = sqlx::query(
        "UPDATE checkout_sessions SET credited_at_ms = $1, payment_intent_id = $2 WHERE id = $3 AND credited_at_ms IS NULL",
    )
    .bind(now_ms())
    .bind(payment_intent)
    .bind(&session.id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    // `completed` and `async_payment_succeeded` may both arrive paid: credit a session once.
    if first == 0 {
        return Ok(Applied::of(EventOutcome::Ignored));
    }
    credit_topup(db, tx, recorded.user_id, amount, &session.id).await?;
    let mut applied = Applied::of(EventOutcome::Applied);
    if let Some(payment_intent) = payment_intent {
        sqlx::query("INSERT INTO payment_intents (id, user_id, checkout_session_id) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .bind(payment_intent)
            .bind(recorded.user_id)
            .bind(&session.id)
            .execute(&mut **tx)
            .await?;
        applied.rejected = apply_waiting(db, tx, rules, payment_intent).await?;
    }
    Ok(applied)
}

#[derive(sqlx::FromRow)]
struct RechargeRow {
    id: String,
    user_id: i64,
    amount_cents: i64,
    customer_id: String,
}

/// The recharge a payment intent belongs to: by its recorded id, or (its creation was never
/// recorded: a crash) by the random recharge id spellhost set as metadata, for the same
/// customer.
async fn recharge_of(
    tx: &mut Tx,
    intent: &PaymentIntent,
) -> Result<Option<RechargeRow>, BillingError> {
    let by_id: Option<RechargeRow> = sqlx::query_as(
        "SELECT id, user_id, amount_cents, customer_id FROM recharges WHERE payment_intent_id = $1",
    )
    .bind(&intent.id)
    .fetch_optional(&mut **tx)
    .await?;
    if by_id.is_some() {
        return Ok(by_id);
    }
    let Some(recharge_id) = intent.metadata.get(RECHARGE_METADATA_KEY) else {
        return Ok(None);
    };
    let by_metadata: Option<RechargeRow> = sqlx::query_as(
        "SELECT id, user_id, amount_cents, customer_id FROM recharges WHERE id = $1 AND payment_intent_id IS NULL",
    )
    .bind(recharge_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(by_metadata.filter(|r| intent.customer() == Some(r.customer_id.as_str())))
}

async fn payment_intent(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    event: &StripeEvent,
    intent: &PaymentIntent,
) -> Result<Applied, BillingError> {
    if let Some(recharge) = recharge_of(tx, intent).await? {
        return recharge_event(db, tx, rules, &event.type_, intent, &recharge).await;
    }
    // A top-up that asked to keep its card (`setup_future_usage=off_session`).
    let saves_card = event.type_ == "payment_intent.succeeded"
        && intent.setup_future_usage.as_deref() == Some("off_session");
    match (saves_card, intent.payment_method()) {
        (true, Some(method)) => {
            save_payment_method(tx, intent.customer(), method, event.created).await
        }
        _ => Ok(Applied::of(EventOutcome::Ignored)),
    }
}

async fn recharge_event(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    type_: &str,
    intent: &PaymentIntent,
    recharge: &RechargeRow,
) -> Result<Applied, BillingError> {
    let failure = match type_ {
        "payment_intent.succeeded" => {
            return recharge_succeeded(db, tx, rules, intent, recharge).await;
        }
        "payment_intent.payment_failed" => intent
            .last_payment_error
            .as_ref()
            .map_or_else(|| "the payment failed".to_owned(), |e| e.describe()),
        "payment_intent.requires_action" => {
            "the card asks for authentication (requires_action); pay once on-session".to_owned()
        }
        "payment_intent.canceled" => "the payment intent was canceled".to_owned(),
        _ => {
            sqlx::query("UPDATE recharges SET payment_intent_id = $1 WHERE id = $2 AND payment_intent_id IS NULL")
                .bind(&intent.id)
                .bind(&recharge.id)
                .execute(&mut **tx)
                .await?;
            return Ok(Applied::of(EventOutcome::Ignored));
        }
    };
    let failed = fail_recharge(
        db,
        tx,
        &recharge.id,
        recharge.user_id,
        Some(&intent.id),
        &failure,
    )
    .await?;
    Ok(Applied::of(if failed {
        EventOutcome::Applied
    } else {
        EventOutcome::Ignored
    }))
}

/// The credit of a recharge: only ever from `payment_intent.succeeded`, once per recharge,
/// whatever state the attempt was in (money received is always credited).
async fn recharge_succeeded(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    intent: &PaymentIntent,
    recharge: &RechargeRow,
) -> Result<Applied, BillingError> {
    if !is_usd(Some(&intent.currency)) {
        return Ok(Applied::of(EventOutcome::NotCredited));
    }
    let amount = intent
        .amount_received
        .cents("amount_received", rules.amount_max_cents)?;
    if amount.get() != recharge.amount_cents {
        return Err(BillingError::Rejected(format!(
            "amount_received {} differs from the {} cents of recharge {}",
            amount.get(),
            recharge.amount_cents,
            recharge.id
        )));
    }
    lock_auto_recharge(db, tx, recharge.user_id).await?;
    let first = sqlx::query(
        "UPDATE recharges SET state = 'succeeded', credited_at_ms = $1, payment_intent_id = $2, failure_reason = NULL \
         WHERE id = $3 AND credited_at_ms IS NULL",
    )
    .bind(now_ms())
    .bind(&intent.id)
    .bind(&recharge.id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if first == 0 {
        return Ok(Applied::of(EventOutcome::Ignored));
    }
    credit_topup(db, tx, recharge.user_id, amount, &intent.id).await?;
    let rejected = apply_waiting(db, tx, rules, &intent.id).await?;
    Ok(Applied {
        rejected,
        ..Applied::of(EventOutcome::Applied)
    })
}

/// Locks a user's auto-recharge row (PostgreSQL; SQLite's writer is exclusive), first of the
/// rows a recharge transaction touches, so the worker and the webhooks take locks in one order.
pub(super) async fn lock_auto_recharge(
    db: &Db,
    tx: &mut Tx,
    user_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(db.pick(
        "SELECT user_id FROM auto_recharge WHERE user_id = $1",
        "SELECT user_id FROM auto_recharge WHERE user_id = $1 FOR UPDATE",
    ))
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks a recharge in flight as failed and disables auto-recharge with the reason (a decline
/// or a card that asks for authentication would fail again). Whether it was in flight.
pub(super) async fn fail_recharge(
    db: &Db,
    tx: &mut Tx,
    recharge_id: &str,
    user_id: i64,
    payment_intent: Option<&str>,
    reason: &str,
) -> Result<bool, BillingError> {
    lock_auto_recharge(db, tx, user_id).await?;
    let failed = sqlx::query(
        "UPDATE recharges SET state = 'failed', failure_reason = $1, payment_intent_id = COALESCE(payment_intent_id, $2) \
         WHERE id = $3 AND state IN ('creating', 'pending')",
    )
    .bind(reason)
    .bind(payment_intent)
    .bind(recharge_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if failed == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE auto_recharge SET enabled = 0, disabled_reason = $1, disabled_at_ms = $2, updated_at_ms = $2 WHERE user_id = $3",
    )
    .bind(reason)
    .bind(now_ms())
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    tracing::warn!(user.id = user_id, recharge.id = %recharge_id, reason = %reason, "auto-recharge failed and was disabled");
    Ok(true)
}

/// `charge.refunded`: records the charge's running refunded total (the highest seen).
async fn charge_refunded(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    charge: &Charge,
) -> Result<Applied, BillingError> {
    if !is_usd(Some(&charge.currency)) {
        return Ok(Applied::of(EventOutcome::NotCredited));
    }
    let payment_intent = charge.payment_intent.as_ref().map(|p| p.id());
    let Some(user_id) = user_for_charge(tx, Some(&charge.id), payment_intent).await? else {
        return Ok(Applied::waiting(payment_intent));
    };
    let refunded = charge
        .amount_refunded
        .cents("amount_refunded", rules.amount_max_cents)?;
    sqlx::query(
        "INSERT INTO stripe_charges (id, user_id, refunded_cents) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET refunded_cents = CASE \
         WHEN excluded.refunded_cents > stripe_charges.refunded_cents THEN excluded.refunded_cents \
         ELSE stripe_charges.refunded_cents END",
    )
    .bind(&charge.id)
    .bind(user_id)
    .bind(refunded.get())
    .execute(&mut **tx)
    .await?;
    settle_refunds(db, tx, &charge.id, user_id).await
}

/// `charge.refund.updated`: a refund that failed or was canceled is credited back.
async fn refund_updated(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    refund: &Refund,
) -> Result<Applied, BillingError> {
    let reversed = matches!(refund.status.as_deref(), Some("failed" | "canceled"));
    let Some(charge) = refund.charge.as_ref().map(|c| c.id()) else {
        return Ok(Applied::of(EventOutcome::Ignored));
    };
    if !reversed {
        return Ok(Applied::of(EventOutcome::Ignored));
    }
    if !is_usd(Some(&refund.currency)) {
        return Ok(Applied::of(EventOutcome::NotCredited));
    }
    let payment_intent = refund.payment_intent.as_ref().map(|p| p.id());
    let Some(user_id) = user_for_charge(tx, Some(charge), payment_intent).await? else {
        return Ok(Applied::waiting(payment_intent));
    };
    let amount = refund.amount.cents("amount", rules.amount_max_cents)?;
    sqlx::query(
        "INSERT INTO stripe_refunds (id, charge_id, amount_cents, failed) VALUES ($1, $2, $3, 1) \
         ON CONFLICT (id) DO UPDATE SET failed = 1",
    )
    .bind(&refund.id)
    .bind(charge)
    .bind(amount.get())
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO stripe_charges (id, user_id, refunded_cents) VALUES ($1, $2, 0) ON CONFLICT (id) DO NOTHING")
        .bind(charge)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    settle_refunds(db, tx, charge, user_id).await
}

#[derive(sqlx::FromRow)]
struct ChargeRefunds {
    refunded_cents: i64,
    debited_cents: i64,
    failed_cents: i64,
}

/// Moves the balance by what a charge's refunds should have debited (the highest refunded
/// total seen, less the refunds seen failed or canceled) minus what was debited so far.
async fn settle_refunds(
    db: &Db,
    tx: &mut Tx,
    charge: &str,
    user_id: i64,
) -> Result<Applied, BillingError> {
    let state: ChargeRefunds = sqlx::query_as(
        "SELECT refunded_cents, debited_cents, \
         (SELECT CAST(COALESCE(SUM(amount_cents), 0) AS BIGINT) FROM stripe_refunds WHERE charge_id = $1 AND failed = 1) AS failed_cents \
         FROM stripe_charges WHERE id = $1",
    )
    .bind(charge)
    .fetch_one(&mut **tx)
    .await?;
    let target = state.refunded_cents - state.failed_cents.min(state.refunded_cents);
    debug_assert!((0..=state.refunded_cents).contains(&target));
    let delta = target
        .checked_sub(state.debited_cents)
        .ok_or(BillingError::Money(MoneyError::AmountOutOfRange))?;
    if delta == 0 {
        return Ok(Applied::of(EventOutcome::Applied));
    }
    sqlx::query("UPDATE stripe_charges SET debited_cents = $1 WHERE id = $2")
        .bind(target)
        .bind(charge)
        .execute(&mut **tx)
        .await?;
    let amount = negative(microusd_of_cents(delta)?)?;
    let reference = format!("stripe:{charge}:refunds");
    money::post_in(db, tx, user_id, EntryKind::Refund, amount, &reference).await?;
    Ok(Applied::of(EventOutcome::Applied))
}

#[derive(sqlx::FromRow)]
struct DisputeState {
    amount_cents: i64,
    withdrawn: i64,
    reinstated: i64,
    debited_cents: i64,
}

/// Every `charge.dispute.*` event: what it shows (funds withdrawn: `funds_withdrawn`, or a
/// negative balance transaction; reinstated: `funds_reinstated`, a dispute won, or a positive
/// balance transaction) is added to what is known, and the balance moves by the difference.
/// An inquiry that withdrew nothing moves nothing.
async fn dispute_event(
    db: &Db,
    tx: &mut Tx,
    rules: &Rules,
    type_: &str,
    dispute: &Dispute,
) -> Result<Applied, BillingError> {
    if !is_usd(Some(&dispute.currency)) {
        return Ok(Applied::of(EventOutcome::NotCredited));
    }
    let charge = dispute.charge.id();
    let payment_intent = dispute.payment_intent.as_ref().map(|p| p.id());
    let Some(user_id) = user_for_charge(tx, Some(charge), payment_intent).await? else {
        return Ok(Applied::waiting(payment_intent));
    };
    let amount = dispute.amount.cents("amount", rules.amount_max_cents)?;
    let signs = || dispute.balance_transactions.iter().map(|t| t.sign());
    let withdrawn = type_ == "charge.dispute.funds_withdrawn" || signs().any(|s| s < 0);
    let reinstated = type_ == "charge.dispute.funds_reinstated"
        || dispute.status == "won"
        || signs().any(|s| s > 0);
    sqlx::query(
        "INSERT INTO stripe_disputes (id, user_id, charge_id, amount_cents, withdrawn, reinstated) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET \
         amount_cents = CASE WHEN excluded.amount_cents > stripe_disputes.amount_cents THEN excluded.amount_cents ELSE stripe_disputes.amount_cents END, \
         withdrawn = CASE WHEN excluded.withdrawn = 1 THEN 1 ELSE stripe_disputes.withdrawn END, \
         reinstated = CASE WHEN excluded.reinstated = 1 THEN 1 ELSE stripe_disputes.reinstated END, \
         charge_id = COALESCE(stripe_disputes.charge_id, excluded.charge_id)",
    )
    .bind(&dispute.id)
    .bind(user_id)
    .bind(charge)
    .bind(amount.get())
    .bind(i64::from(withdrawn))
    .bind(i64::from(reinstated))
    .execute(&mut **tx)
    .await?;
    let state: DisputeState = sqlx::query_as(
        "SELECT amount_cents, withdrawn, reinstated, debited_cents FROM stripe_disputes WHERE id = $1",
    )
    .bind(&dispute.id)
    .fetch_one(&mut **tx)
    .await?;
    // Funds reinstated were withdrawn before: together they net to nothing.
    let target = if state.withdrawn == 1 && state.reinstated == 0 {
        state.amount_cents
    } else {
        0
    };
    let delta = target
        .checked_sub(state.debited_cents)
        .ok_or(BillingError::Money(MoneyError::AmountOutOfRange))?;
    if delta == 0 {
        return Ok(Applied::of(EventOutcome::Ignored));
    }
    sqlx::query("UPDATE stripe_disputes SET debited_cents = $1 WHERE id = $2")
        .bind(target)
        .bind(&dispute.id)
        .execute(&mut **tx)
        .await?;
    // A positive delta debits (funds withdrawn), a negative one credits back (reinstated).
    let amount = negative(microusd_of_cents(delta)?)?;
    let what = if delta > 0 { "withdrawn" } else { "reinstated" };
    let reference = format!("stripe:{}:{what}", dispute.id);
    money::post_in(db, tx, user_id, EntryKind::Dispute, amount, &reference).await?;
    Ok(Applied::of(EventOutcome::Applied))
}

/// `setup_intent.succeeded` for a user's customer: the card becomes the user's saved payment
/// method for automatic recharges.
async fn setup_intent(
    tx: &mut Tx,
    event: &StripeEvent,
    intent: &SetupIntent,
) -> Result<Applied, BillingError> {
    let off_session = intent.usage.as_deref().is_none_or(|u| u == "off_session");
    let method = intent.payment_method.as_ref().map(|m| m.id());
    match (
        event.type_.as_str(),
        intent.status.as_str(),
        off_session,
        method,
    ) {
        ("setup_intent.succeeded", "succeeded", true, Some(method)) => {
            let customer = intent.customer.as_ref().map(|c| c.id());
            save_payment_method(tx, customer, method, event.created).await
        }
        _ => Ok(Applied::of(EventOutcome::Ignored)),
    }
}

/// Saves `method` as the payment method of the user whose customer it was set up on. The
/// latest event wins whatever order they arrive in; a method seen detached is never saved.
async fn save_payment_method(
    tx: &mut Tx,
    customer: Option<&str>,
    method: &str,
    event_created: i64,
) -> Result<Applied, BillingError> {
    let Some(user_id) = user_by_customer(tx, customer).await? else {
        return Ok(Applied::of(EventOutcome::Ignored));
    };
    let detached: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT detached_at_ms FROM stripe_payment_methods WHERE id = $1")
            .bind(method)
            .fetch_optional(&mut **tx)
            .await?;
    if matches!(detached, Some((Some(_),))) {
        return Ok(Applied::of(EventOutcome::Ignored));
    }
    sqlx::query(
        "INSERT INTO stripe_payment_methods (id, user_id) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id",
    )
    .bind(method)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO auto_recharge (user_id, payment_method_id, payment_method_event_at, updated_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id) DO UPDATE SET payment_method_id = excluded.payment_method_id, \
         payment_method_event_at = excluded.payment_method_event_at, updated_at_ms = excluded.updated_at_ms \
         WHERE auto_recharge.payment_method_event_at IS NULL OR auto_recharge.payment_method_event_at <= excluded.payment_method_event_at",
    )
    .bind(user_id)
    .bind(method)
    .bind(event_created)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(Applied::of(EventOutcome::Applied))
}

/// `payment_method.*`: card details for display; a detached card stops being the saved one
/// (and auto-recharge, which would fail with it, is disabled).
async fn payment_method(
    db: &Db,
    tx: &mut Tx,
    type_: &str,
    method: &PaymentMethod,
) -> Result<Applied, BillingError> {
    if type_ == "payment_method.detached" {
        return detach(db, tx, &method.id).await;
    }
    let customer = method.customer.as_ref().map(|c| c.id());
    let Some(user_id) = user_by_customer(tx, customer).await? else {
        return Ok(Applied::of(EventOutcome::Ignored));
    };
    let card = method.card.as_ref();
    sqlx::query(
        "INSERT INTO stripe_payment_methods (id, user_id, brand, last4, exp_month, exp_year) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, brand = excluded.brand, last4 = excluded.last4, \
         exp_month = excluded.exp_month, exp_year = excluded.exp_year",
    )
    .bind(&method.id)
    .bind(user_id)
    .bind(card.and_then(|c| c.brand.as_deref()))
    .bind(card.and_then(|c| c.last4.as_deref()))
    .bind(card.and_then(|c| c.exp_month))
    .bind(card.and_then(|c| c.exp_year))
    .execute(&mut **tx)
    .await?;
    Ok(Applied::of(EventOutcome::Applied))
}

async fn detach(db: &Db, tx: &mut Tx, method: &str) -> Result<Applied, BillingError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO stripe_payment_methods (id, detached_at_ms) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET detached_at_ms = excluded.detached_at_ms",
    )
    .bind(method)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let owner: Option<(i64,)> =
        sqlx::query_as("SELECT user_id FROM auto_recharge WHERE payment_method_id = $1")
            .bind(method)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((user_id,)) = owner else {
        return Ok(Applied::of(EventOutcome::Ignored));
    };
    lock_auto_recharge(db, tx, user_id).await?;
    sqlx::query(
        "UPDATE auto_recharge SET payment_method_id = NULL, enabled = 0, \
         disabled_reason = CASE WHEN enabled = 1 THEN 'the saved payment method was removed' ELSE disabled_reason END, \
         disabled_at_ms = CASE WHEN enabled = 1 THEN $1 ELSE disabled_at_ms END, updated_at_ms = $1 \
         WHERE user_id = $2 AND payment_method_id = $3",
    )
    .bind(now)
    .bind(user_id)
    .bind(method)
    .execute(&mut **tx)
    .await?;
    Ok(Applied::of(EventOutcome::Applied))
}
