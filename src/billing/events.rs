//! Applying verified Stripe events: record the event id, then apply it idempotently, in one
//! transaction. Completion, refund and dispute events give the same balance in any order: an
//! event that cannot be tied to a user yet waits ("pending") for the payment intent that a
//! later completion records.

use stripe_checkout::CheckoutSessionPaymentStatus;
use stripe_shared::{Charge, CheckoutSession, Dispute};
use stripe_types::Currency;
use stripe_webhook::{Event, EventObject, Webhook};

use super::{BillingError, USER_METADATA_KEY, Verified};
use crate::money::{self, EntryKind, MicroUsd};
use crate::store::{Db, Tx, now_ms};

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Seen before: no effect.
    Duplicate,
    /// Money moved (or, for a refund already covered, nothing was left to move).
    Applied,
    /// Recorded; nothing to do (unknown type, not ours).
    Ignored,
    /// Recorded, not credited: unpaid, or not in USD.
    NotCredited,
    /// Recorded; waits for the checkout completion of its payment intent.
    Pending,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Duplicate => "duplicate",
            EventOutcome::Applied => "applied",
            EventOutcome::Ignored => "ignored",
            EventOutcome::NotCredited => "not_credited",
            EventOutcome::Pending => "pending",
        }
    }
}

fn cents(amount: i64) -> Result<MicroUsd, BillingError> {
    MicroUsd::from_cents(amount)
        .ok_or_else(|| BillingError::Internal(format!("amount {amount} overflows")))
}

pub async fn apply_event(
    db: &Db,
    verified: Verified,
    payload: &str,
) -> Result<EventOutcome, BillingError> {
    let (id, type_) = match &verified {
        Verified::Event(event) => (
            event.id.as_str().to_owned(),
            event.type_.as_str().to_owned(),
        ),
        Verified::Untyped { id, type_ } => (id.clone(), type_.clone()),
    };
    let mut tx = db.begin().await?;
    // Billing events are applied one at a time (PostgreSQL: a transaction-scoped advisory lock,
    // taken before any row lock so the lock order stays advisory → user → ledger head, as in
    // every other money transaction), so a refund and the completion it waits for can never
    // miss each other.
    sqlx::query(db.pick("SELECT 1", "SELECT pg_advisory_xact_lock(7234001)"))
        .execute(&mut *tx)
        .await?;
    let recorded = sqlx::query(
        "INSERT INTO stripe_events (id, type, status, payload, received_at_ms) VALUES ($1, $2, 'received', $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(&type_)
    .bind(payload)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if recorded == 0 {
        return Ok(EventOutcome::Duplicate);
    }
    let (outcome, waiting_for) = match &verified {
        Verified::Event(event) => apply_object(db, &mut tx, event).await?,
        Verified::Untyped { .. } => (EventOutcome::Ignored, None),
    };
    set_status(&mut tx, &id, outcome, waiting_for.as_deref()).await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn set_status(
    tx: &mut Tx,
    id: &str,
    outcome: EventOutcome,
    waiting_for: Option<&str>,
) -> Result<(), BillingError> {
    sqlx::query("UPDATE stripe_events SET status = $1, waiting_for = $2 WHERE id = $3")
        .bind(outcome.as_str())
        .bind(waiting_for)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn apply_object(
    db: &Db,
    tx: &mut Tx,
    event: &Event,
) -> Result<(EventOutcome, Option<String>), BillingError> {
    match &event.data.object {
        EventObject::CheckoutSessionCompleted(session)
        | EventObject::CheckoutSessionAsyncPaymentSucceeded(session) => {
            Ok((completion(db, tx, session).await?, None))
        }
        EventObject::ChargeRefunded(charge) => refund(db, tx, charge).await,
        EventObject::ChargeDisputeCreated(dispute) => dispute_created(db, tx, dispute).await,
        _ => Ok((EventOutcome::Ignored, None)),
    }
}

async fn user_exists(tx: &mut Tx, user_id: i64) -> Result<bool, BillingError> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
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

async fn user_by_payment_intent(
    tx: &mut Tx,
    payment_intent: Option<&str>,
) -> Result<Option<i64>, BillingError> {
    let Some(payment_intent) = payment_intent else {
        return Ok(None);
    };
    let row: Option<(i64,)> = sqlx::query_as("SELECT user_id FROM payment_intents WHERE id = $1")
        .bind(payment_intent)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|(id,)| id))
}

/// The user a completed session belongs to: the session we created, else the
/// `client_reference_id`/metadata we set, else the customer we created.
async fn session_user(tx: &mut Tx, session: &CheckoutSession) -> Result<Option<i64>, BillingError> {
    let recorded: Option<(i64,)> =
        sqlx::query_as("SELECT user_id FROM checkout_sessions WHERE id = $1")
            .bind(session.id.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    if let Some((user_id,)) = recorded {
        return Ok(Some(user_id));
    }
    let named = session
        .client_reference_id
        .as_deref()
        .or_else(|| {
            session
                .metadata
                .as_ref()
                .and_then(|m| m.get(USER_METADATA_KEY))
                .map(String::as_str)
        })
        .and_then(|id| id.parse::<i64>().ok());
    if let Some(user_id) = named
        && user_exists(tx, user_id).await?
    {
        return Ok(Some(user_id));
    }
    let customer = session
        .customer
        .as_ref()
        .map(|c| c.id().as_str().to_owned());
    user_by_customer(tx, customer.as_deref()).await
}

/// Credits `amount_total` × 10 000 µ$. Checkout Sessions spellhost creates carry no tax or
/// shipping, so that is exactly the amount asked for.
async fn completion(
    db: &Db,
    tx: &mut Tx,
    session: &CheckoutSession,
) -> Result<EventOutcome, BillingError> {
    let paid = session.payment_status == CheckoutSessionPaymentStatus::Paid;
    let amount = session.amount_total.filter(|a| *a > 0);
    let (Some(amount), true, true) = (amount, paid, session.currency == Some(Currency::USD)) else {
        return Ok(EventOutcome::NotCredited);
    };
    let Some(user_id) = session_user(tx, session).await? else {
        tracing::warn!(stripe.session = %session.id.as_str(), "a completed checkout names no spellhost user");
        return Ok(EventOutcome::Ignored);
    };
    let session_id = session.id.as_str();
    let payment_intent = session
        .payment_intent
        .as_ref()
        .map(|p| p.id().as_str().to_owned());
    sqlx::query(
        "INSERT INTO checkout_sessions (id, user_id, amount_cents, created_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(amount)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    // `completed` and `async_payment_succeeded` may both arrive paid: credit a session once.
    let first = sqlx::query(
        "UPDATE checkout_sessions SET credited_at_ms = $1, payment_intent_id = $2 WHERE id = $3 AND credited_at_ms IS NULL",
    )
    .bind(now_ms())
    .bind(payment_intent.as_deref())
    .bind(session_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if first == 0 {
        return Ok(EventOutcome::Ignored);
    }
    money::post_in(
        db,
        tx,
        user_id,
        EntryKind::Topup,
        cents(amount)?,
        &format!("stripe:{session_id}"),
    )
    .await?;
    if let Some(payment_intent) = payment_intent {
        sqlx::query("INSERT INTO payment_intents (id, user_id, checkout_session_id) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .bind(&payment_intent)
            .bind(user_id)
            .bind(session_id)
            .execute(&mut **tx)
            .await?;
        apply_waiting(db, tx, &payment_intent).await?;
    }
    Ok(EventOutcome::Applied)
}

/// Applies the refunds and disputes that were waiting for this payment intent.
async fn apply_waiting(db: &Db, tx: &mut Tx, payment_intent: &str) -> Result<(), BillingError> {
    let waiting: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, payload FROM stripe_events WHERE waiting_for = $1 AND status = 'pending' ORDER BY received_at_ms, id",
    )
    .bind(payment_intent)
    .fetch_all(&mut **tx)
    .await?;
    for (id, payload) in waiting {
        // Verified when it arrived; parsed again from what was stored.
        let event =
            Webhook::insecure(&payload).map_err(|e| BillingError::Internal(e.to_string()))?;
        let (outcome, waiting_for) = match &event.data.object {
            EventObject::ChargeRefunded(charge) => refund(db, tx, charge).await?,
            EventObject::ChargeDisputeCreated(dispute) => dispute_created(db, tx, dispute).await?,
            _ => (EventOutcome::Ignored, None),
        };
        set_status(tx, &id, outcome, waiting_for.as_deref()).await?;
    }
    Ok(())
}

async fn refund(
    db: &Db,
    tx: &mut Tx,
    charge: &Charge,
) -> Result<(EventOutcome, Option<String>), BillingError> {
    if charge.currency != Currency::USD {
        return Ok((EventOutcome::NotCredited, None));
    }
    let payment_intent = charge
        .payment_intent
        .as_ref()
        .map(|p| p.id().as_str().to_owned());
    let customer = charge.customer.as_ref().map(|c| c.id().as_str().to_owned());
    let charge_id = charge.id.as_str();
    let known: Option<(i64, i64)> =
        sqlx::query_as("SELECT user_id, refunded_cents FROM stripe_charges WHERE id = $1")
            .bind(charge_id)
            .fetch_optional(&mut **tx)
            .await?;
    let user_id = match known {
        Some((user_id, _)) => Some(user_id),
        None => match user_by_payment_intent(tx, payment_intent.as_deref()).await? {
            Some(user_id) => Some(user_id),
            None => user_by_customer(tx, customer.as_deref()).await?,
        },
    };
    let Some(user_id) = user_id else {
        return Ok(waiting(payment_intent));
    };
    // Each refund event carries the charge's running total: debit only what is new.
    let already = known.map_or(0, |(_, refunded)| refunded);
    let new = charge.amount_refunded - already;
    if new <= 0 {
        return Ok((EventOutcome::Applied, None));
    }
    sqlx::query(
        "INSERT INTO stripe_charges (id, user_id, refunded_cents) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET refunded_cents = excluded.refunded_cents",
    )
    .bind(charge_id)
    .bind(user_id)
    .bind(charge.amount_refunded)
    .execute(&mut **tx)
    .await?;
    let debit = MicroUsd::new(-cents(new)?.get());
    money::post_in(
        db,
        tx,
        user_id,
        EntryKind::Refund,
        debit,
        &format!("stripe:{charge_id}:refunded"),
    )
    .await?;
    Ok((EventOutcome::Applied, None))
}

async fn dispute_created(
    db: &Db,
    tx: &mut Tx,
    dispute: &Dispute,
) -> Result<(EventOutcome, Option<String>), BillingError> {
    if dispute.currency != Currency::USD {
        return Ok((EventOutcome::NotCredited, None));
    }
    let payment_intent = dispute
        .payment_intent
        .as_ref()
        .map(|p| p.id().as_str().to_owned());
    let charge_id = dispute.charge.id().as_str().to_owned();
    let mut user_id = user_by_payment_intent(tx, payment_intent.as_deref()).await?;
    if user_id.is_none() {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT user_id FROM stripe_charges WHERE id = $1")
                .bind(&charge_id)
                .fetch_optional(&mut **tx)
                .await?;
        user_id = row.map(|(id,)| id);
    }
    let Some(user_id) = user_id else {
        return Ok(waiting(payment_intent));
    };
    let debit = MicroUsd::new(-cents(dispute.amount)?.get());
    money::post_in(
        db,
        tx,
        user_id,
        EntryKind::Dispute,
        debit,
        &format!("stripe:{}", dispute.id.as_str()),
    )
    .await?;
    Ok((EventOutcome::Applied, None))
}

/// Not tied to a user yet: wait for the payment intent's checkout, or ignore if none named.
fn waiting(payment_intent: Option<String>) -> (EventOutcome, Option<String>) {
    match payment_intent {
        Some(payment_intent) => (EventOutcome::Pending, Some(payment_intent)),
        None => (EventOutcome::Ignored, None),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cent_is_ten_thousand_microdollars() {
        assert_eq!(super::cents(500).map(|m| m.get()).ok(), Some(5_000_000));
    }
}
