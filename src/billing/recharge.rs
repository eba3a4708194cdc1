//! Automatic recharge. The cast path only tells [`Recharger::settled`] that a user's balance
//! went down; it never waits: the notice goes into a bounded queue (dropped when full) and a
//! background worker decides from the database, so what it enforces — one payment intent in
//! flight per user, at most `max_per_day` a day — holds across instances and crashes. A
//! periodic scan finds users whose notice was dropped and retries creations whose outcome is
//! unknown, with the same Stripe idempotency key. The credit comes only from the
//! `payment_intent.succeeded` webhook.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus::IntCounter;
use serde::Serialize;
use serde_json::Value;
use stripe::StripeError;
use tokio::sync::mpsc;

use super::account::Settings;
use super::event::PaymentError;
use super::{Billing, BillingError, RECHARGE_METADATA_KEY, USER_METADATA_KEY, apply, stripe_api};
use crate::App;
use crate::store::{Db, is_unique_violation, now_ms};

/// Settlement notices waiting for the worker. A burst beyond this is dropped, not queued: the
/// worker coalesces notices per user anyway, and the periodic scan finds whoever was dropped.
const QUEUE_CAPACITY: usize = 4096;

/// A creation whose outcome is unknown is retried after this long: longer than the Stripe
/// request timeout, so a request still in flight on another instance has ended by then.
const RETRY_AFTER_MS: i64 = 60_000;

/// Stripe keeps an idempotency key for 24 hours; past 23 a retry could create a second payment
/// intent, so the attempt is abandoned instead (its webhook still credits it if it was paid).
const IDEMPOTENCY_WINDOW_MS: i64 = 23 * 3600 * 1000;

/// The daily limit counts UTC days.
const DAY_MS: i64 = 86_400_000;

/// How many users one scan looks at; the next scan takes the rest.
const SCAN_USERS_MAX: i64 = 1000;

/// The handle the cast path holds. Inert when billing is not configured.
pub struct Recharger {
    sender: Option<mpsc::Sender<i64>>,
    receiver: Mutex<Option<mpsc::Receiver<i64>>>,
    dropped: Option<IntCounter>,
}

impl Recharger {
    pub fn disabled() -> Self {
        Recharger {
            sender: None,
            receiver: Mutex::new(None),
            dropped: None,
        }
    }

    /// `dropped` counts notices dropped because the queue was full.
    pub fn new(dropped: IntCounter) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        Recharger {
            sender: Some(sender),
            receiver: Mutex::new(Some(receiver)),
            dropped: Some(dropped),
        }
    }

    /// A settlement took money from `user_id`'s balance. Never waits, never fails.
    pub fn settled(&self, user_id: i64) {
        if let Some(sender) = &self.sender
            && sender.try_send(user_id).is_err()
            && let Some(dropped) = &self.dropped
        {
            dropped.inc();
        }
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<i64>> {
        self.receiver.lock().ok().and_then(|mut r| r.take())
    }
}

/// Starts the worker (once per process; `None` without billing).
pub fn spawn(app: &App) -> Option<tokio::task::JoinHandle<()>> {
    app.billing.as_ref()?;
    let receiver = app.recharger.take_receiver()?;
    let app = app.clone();
    Some(tokio::spawn(async move { run(app, receiver).await }))
}

async fn run(app: App, mut receiver: mpsc::Receiver<i64>) {
    let Some(billing) = app.billing.as_ref() else {
        return;
    };
    // At start-up every creation of unknown outcome is retried: this process may be the one
    // that crashed in the middle of it.
    scan(&app, billing, now_ms()).await;
    let mut interval = tokio::time::interval(billing.config.recharge_scan_interval);
    // A scan slower than the interval is followed by the next one, not by a burst.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        tokio::select! {
            notice = receiver.recv() => {
                let Some(user_id) = notice else { return };
                let mut users = BTreeSet::from([user_id]);
                while let Ok(user_id) = receiver.try_recv() {
                    users.insert(user_id);
                }
                for user_id in users {
                    consider(&app, billing, user_id).await;
                }
            }
            _ = interval.tick() => scan(&app, billing, now_ms() - RETRY_AFTER_MS).await,
        }
    }
}

/// Retries creations last tried before `retry_before_ms`, then considers every user below
/// their threshold with nothing in flight (their notice may have been dropped).
async fn scan(app: &App, billing: &Billing, retry_before_ms: i64) {
    match unknown_creations(&app.db, retry_before_ms).await {
        Ok(attempts) => {
            for attempt in attempts {
                retry(app, billing, attempt).await;
            }
        }
        Err(error) => tracing::warn!(error = %error, "listing recharges to retry failed"),
    }
    let candidates: Result<Vec<(i64,)>, sqlx::Error> = sqlx::query_as(
        "SELECT a.user_id FROM auto_recharge a JOIN users u ON u.id = a.user_id \
         WHERE a.enabled = 1 AND a.payment_method_id IS NOT NULL \
         AND u.balance_microusd < a.threshold_microusd \
         AND NOT EXISTS (SELECT 1 FROM recharges r WHERE r.user_id = a.user_id AND r.state IN ('creating', 'pending')) \
         ORDER BY a.user_id LIMIT $1",
    )
    .bind(SCAN_USERS_MAX)
    .fetch_all(app.db.reader())
    .await;
    match candidates {
        Ok(users) => {
            for (user_id,) in users {
                consider(app, billing, user_id).await;
            }
        }
        Err(error) => tracing::warn!(error = %error, "scanning for auto-recharge failed"),
    }
}

/// A recharge attempt, as recorded before Stripe is asked.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Attempt {
    id: String,
    user_id: i64,
    amount_cents: i64,
    customer_id: String,
    payment_method_id: String,
    created_at_ms: i64,
}

async fn unknown_creations(db: &Db, before_ms: i64) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, amount_cents, customer_id, payment_method_id, created_at_ms FROM recharges \
         WHERE state = 'creating' AND attempted_at_ms <= $1 ORDER BY created_at_ms LIMIT $2",
    )
    .bind(before_ms)
    .bind(SCAN_USERS_MAX)
    .fetch_all(db.reader())
    .await
}

async fn retry(app: &App, billing: &Billing, attempt: Attempt) {
    let now = now_ms();
    let touched = if now - attempt.created_at_ms > IDEMPOTENCY_WINDOW_MS {
        sqlx::query(
            "UPDATE recharges SET state = 'abandoned', failure_reason = 'no answer from Stripe within the idempotency window' \
             WHERE id = $1 AND state = 'creating'",
        )
        .bind(&attempt.id)
        .execute(app.db.writer())
        .await
        .map(|_| false)
    } else {
        sqlx::query(
            "UPDATE recharges SET attempted_at_ms = $1 WHERE id = $2 AND state = 'creating'",
        )
        .bind(now)
        .bind(&attempt.id)
        .execute(app.db.writer())
        .await
        .map(|done| done.rows_affected() == 1)
    };
    match touched {
        Ok(true) => send(app, billing, &attempt).await,
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(error = %error, recharge.id = %attempt.id, "retrying a recharge failed")
        }
    }
}

async fn consider(app: &App, billing: &Billing, user_id: i64) {
    if let Err(error) = recharge_now(app, billing, user_id).await {
        tracing::warn!(error = %error, user.id = user_id, "deciding on an auto-recharge failed");
    }
}

/// What the worker does on a settlement notice, run at once: decides from the database and,
/// if a recharge is due, asks Stripe for it. The id of the recharge started, if any.
pub async fn recharge_now(
    app: &App,
    billing: &Billing,
    user_id: i64,
) -> Result<Option<String>, BillingError> {
    let Some(attempt) = start(&app.db, user_id, now_ms()).await? else {
        return Ok(None);
    };
    send(app, billing, &attempt).await;
    Ok(Some(attempt.id))
}

/// What the worker reads about a user.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Candidate {
    #[sqlx(flatten)]
    settings: Settings,
    balance_microusd: i64,
    held_microusd: i64,
    stripe_customer_id: Option<String>,
    /// Recharges asked of Stripe whose outcome is not known yet (0 or 1).
    in_flight: i64,
}

/// Whether to recharge now, and with what.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Skip(&'static str),
    Recharge {
        customer: String,
        payment_method: String,
        /// Recharges counted today, this one included.
        day_count: i64,
    },
}

fn decide(candidate: &Candidate, today: i64) -> Decision {
    let settings = &candidate.settings;
    let (Some(customer), Some(payment_method)) =
        (&candidate.stripe_customer_id, &settings.payment_method_id)
    else {
        return Decision::Skip("no saved payment method");
    };
    // The settled balance: `held_microusd` is mostly money leased to instances for casts
    // to come, not spent, and counting it would recharge users who have plenty.
    let available = candidate.balance_microusd;
    debug_assert!(candidate.held_microusd >= 0);
    let counted = if settings.day == today {
        settings.day_count
    } else {
        0
    };
    if settings.enabled == 0 {
        Decision::Skip("disabled")
    } else if available >= settings.threshold_microusd {
        Decision::Skip("above the threshold")
    } else if candidate.in_flight > 0 {
        Decision::Skip("a recharge is in flight")
    } else if counted >= settings.max_per_day {
        Decision::Skip("the daily limit is reached")
    } else {
        Decision::Recharge {
            customer: customer.clone(),
            payment_method: payment_method.clone(),
            day_count: counted + 1,
        }
    }
}

/// One user's settings, balance and whether a recharge is in flight.
macro_rules! candidate_sql {
    () => {
        "SELECT a.enabled, a.threshold_microusd, a.amount_cents, a.max_per_day, a.day, a.day_count, \
         a.payment_method_id, a.disabled_reason, a.disabled_at_ms, \
         u.balance_microusd, u.held_microusd, u.stripe_customer_id, \
         (SELECT COUNT(*) FROM recharges r WHERE r.user_id = a.user_id AND r.state IN ('creating', 'pending')) AS in_flight \
         FROM auto_recharge a JOIN users u ON u.id = a.user_id WHERE a.user_id = $1"
    };
}
const CANDIDATE: &str = candidate_sql!();
/// [`CANDIDATE`], locking the auto-recharge row (PostgreSQL; SQLite's writer is exclusive).
const CANDIDATE_FOR_UPDATE: &str = concat!(candidate_sql!(), " FOR UPDATE OF a");

/// Records a new attempt if the user needs one, in one transaction that holds the user's
/// auto-recharge row: the in-flight check, the daily count and the insert cannot interleave
/// with another worker's (the partial unique index `recharges_one_in_flight` is the net).
async fn start(db: &Db, user_id: i64, now: i64) -> Result<Option<Attempt>, BillingError> {
    let today = now / DAY_MS;
    // Every settlement notifies: most users need nothing, and the answer is known from a read
    // on the reader pool, without taking SQLite's single writer from the settlements.
    let peek: Option<Candidate> = sqlx::query_as(CANDIDATE)
        .bind(user_id)
        .fetch_optional(db.reader())
        .await?;
    if !peek.is_some_and(|c| matches!(decide(&c, today), Decision::Recharge { .. })) {
        return Ok(None);
    }
    let mut tx = db.begin().await?;
    let candidate: Option<Candidate> = sqlx::query_as(db.pick(CANDIDATE, CANDIDATE_FOR_UPDATE))
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(candidate) = candidate else {
        return Ok(None);
    };
    let Decision::Recharge {
        customer,
        payment_method,
        day_count,
    } = decide(&candidate, today)
    else {
        return Ok(None);
    };
    debug_assert!(day_count <= candidate.settings.max_per_day);
    sqlx::query("UPDATE auto_recharge SET day = $1, day_count = $2 WHERE user_id = $3")
        .bind(today)
        .bind(day_count)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let attempt = Attempt {
        id: uuid::Uuid::new_v4().simple().to_string(),
        user_id,
        amount_cents: candidate.settings.amount_cents,
        customer_id: customer,
        payment_method_id: payment_method,
        created_at_ms: now,
    };
    let inserted = sqlx::query(
        "INSERT INTO recharges (id, user_id, amount_cents, customer_id, payment_method_id, state, created_at_ms, attempted_at_ms) \
         VALUES ($1, $2, $3, $4, $5, 'creating', $6, $6)",
    )
    .bind(&attempt.id)
    .bind(user_id)
    .bind(attempt.amount_cents)
    .bind(&attempt.customer_id)
    .bind(&attempt.payment_method_id)
    .bind(now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        // Another instance's attempt got in first: this one never happened.
        Err(error) if is_unique_violation(&error) => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    tx.commit().await?;
    Ok(Some(attempt))
}

#[derive(Serialize)]
struct CreateIntent<'a> {
    amount: i64,
    currency: &'static str,
    customer: &'a str,
    payment_method: &'a str,
    confirm: bool,
    off_session: bool,
    description: &'static str,
    metadata: BTreeMap<&'static str, String>,
}

/// What Stripe said to a creation.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// Created; the webhook will tell how it ends.
    InFlight { payment_intent: String },
    /// Declined, or needs the customer: auto-recharge is disabled with the reason.
    Failed {
        payment_intent: Option<String>,
        reason: String,
    },
    /// No answer, or one that may change (rate limit, conflict, outage): retried later with the
    /// same idempotency key.
    Unknown(String),
}

fn classify(result: Result<Value, StripeError>) -> Sent {
    match result {
        Ok(intent) => {
            let Some(id) = intent["id"].as_str().map(str::to_owned) else {
                return Sent::Unknown("a payment intent without an id".into());
            };
            match intent["status"].as_str().unwrap_or("unknown") {
                "succeeded" | "processing" | "requires_capture" => {
                    Sent::InFlight { payment_intent: id }
                }
                "requires_action" => Sent::Failed {
                    payment_intent: Some(id),
                    reason:
                        "the card asks for authentication (requires_action); pay once on-session"
                            .into(),
                },
                status => Sent::Failed {
                    payment_intent: Some(id),
                    reason: format!("the payment intent is {status}"),
                },
            }
        }
        Err(StripeError::Stripe(error, status))
            if (400..500).contains(&status) && status != 409 && status != 429 =>
        {
            let described = PaymentError {
                code: error.code.as_ref().map(|c| c.as_str().to_owned()),
                decline_code: error.decline_code.clone(),
                message: error.message.clone(),
            };
            Sent::Failed {
                payment_intent: error
                    .payment_intent
                    .as_ref()
                    .map(|p| p.id.as_str().to_owned()),
                reason: described.describe(),
            }
        }
        Err(StripeError::Stripe(error, status)) => Sent::Unknown(format!(
            "{status} {}",
            error.code.as_ref().map_or("", |c| c.as_str())
        )),
        Err(other) => Sent::Unknown(other.to_string()),
    }
}

/// Asks Stripe for the payment intent of `attempt` (off-session, confirmed at once) and
/// records what it said.
async fn send(app: &App, billing: &Billing, attempt: &Attempt) {
    let form = CreateIntent {
        amount: attempt.amount_cents,
        currency: "usd",
        customer: &attempt.customer_id,
        payment_method: &attempt.payment_method_id,
        confirm: true,
        off_session: true,
        description: "spellhost automatic recharge",
        metadata: BTreeMap::from([
            (RECHARGE_METADATA_KEY, attempt.id.clone()),
            (USER_METADATA_KEY, attempt.user_id.to_string()),
        ]),
    };
    let key = format!("spellhost-recharge-{}", attempt.id);
    let result =
        stripe_api::post_idempotent(&billing.client, "/payment_intents", &form, &key).await;
    let sent = classify(result);
    let label = match &sent {
        Sent::InFlight { .. } => "created",
        Sent::Failed { .. } => "failed",
        Sent::Unknown(_) => "unknown",
    };
    app.metrics.recharges.with_label_values(&[label]).inc();
    if let Err(error) = record(&app.db, attempt, sent).await {
        tracing::warn!(error = %error, recharge.id = %attempt.id, "recording a recharge failed; the scan retries it");
    }
}

async fn record(db: &Db, attempt: &Attempt, sent: Sent) -> Result<(), BillingError> {
    match sent {
        Sent::InFlight { payment_intent } => {
            let moved = sqlx::query(
                "UPDATE recharges SET state = 'pending', payment_intent_id = $1 WHERE id = $2 AND state = 'creating'",
            )
            .bind(&payment_intent)
            .bind(&attempt.id)
            .execute(db.writer())
            .await?
            .rows_affected();
            if moved == 0 {
                // Its webhook came first (and moved it on); just remember the payment intent.
                sqlx::query("UPDATE recharges SET payment_intent_id = $1 WHERE id = $2 AND payment_intent_id IS NULL")
                    .bind(&payment_intent)
                    .bind(&attempt.id)
                    .execute(db.writer())
                    .await?;
            }
            tracing::info!(user.id = attempt.user_id, recharge.id = %attempt.id, "auto-recharge payment intent created");
        }
        Sent::Failed {
            payment_intent,
            reason,
        } => {
            let mut tx = db.begin().await?;
            apply::fail_recharge(
                db,
                &mut tx,
                &attempt.id,
                attempt.user_id,
                payment_intent.as_deref(),
                &reason,
            )
            .await?;
            tx.commit().await?;
        }
        Sent::Unknown(reason) => {
            tracing::warn!(recharge.id = %attempt.id, reason = %reason, "no usable answer from Stripe; the recharge will be retried");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate() -> Candidate {
        Candidate {
            settings: Settings {
                enabled: 1,
                threshold_microusd: 1_000_000,
                amount_cents: 1000,
                max_per_day: 2,
                day: 7,
                day_count: 1,
                payment_method_id: Some("pm_1".into()),
                disabled_reason: None,
                disabled_at_ms: None,
            },
            balance_microusd: 900_000,
            held_microusd: 0,
            stripe_customer_id: Some("cus_1".into()),
            in_flight: 0,
        }
    }

    fn with(change: impl FnOnce(&mut Settings)) -> Candidate {
        let mut candidate = candidate();
        change(&mut candidate.settings);
        candidate
    }

    #[test]
    fn a_balance_below_the_threshold_recharges_and_counts_the_day() {
        assert_eq!(
            decide(&candidate(), 7),
            Decision::Recharge {
                customer: "cus_1".into(),
                payment_method: "pm_1".into(),
                day_count: 2
            }
        );
    }

    #[test]
    fn money_leased_for_casts_to_come_is_not_spent() {
        let candidate = Candidate {
            balance_microusd: 1_500_000,
            held_microusd: 1_400_000,
            ..candidate()
        };
        assert_eq!(decide(&candidate, 7), Decision::Skip("above the threshold"));
    }

    #[test]
    fn the_daily_limit_resets_on_a_new_day() {
        let candidate = with(|s| s.day_count = 2);
        assert_eq!(
            decide(&candidate, 7),
            Decision::Skip("the daily limit is reached")
        );
        assert!(matches!(
            decide(&candidate, 8),
            Decision::Recharge { day_count: 1, .. }
        ));
    }

    #[test]
    fn nothing_happens_with_one_in_flight_above_the_threshold_or_disabled() {
        let in_flight = Candidate {
            in_flight: 1,
            ..candidate()
        };
        assert_eq!(
            decide(&in_flight, 7),
            Decision::Skip("a recharge is in flight")
        );
        let above = Candidate {
            balance_microusd: 1_000_000,
            ..candidate()
        };
        assert_eq!(decide(&above, 7), Decision::Skip("above the threshold"));
        let disabled = with(|s| s.enabled = 0);
        assert_eq!(decide(&disabled, 7), Decision::Skip("disabled"));
        let no_card = with(|s| s.payment_method_id = None);
        assert_eq!(
            decide(&no_card, 7),
            Decision::Skip("no saved payment method")
        );
    }

    #[test]
    fn created_intents_are_in_flight_and_refusals_fail() {
        let created = classify(Ok(serde_json::json!({"id": "pi_1", "status": "succeeded"})));
        assert_eq!(
            created,
            Sent::InFlight {
                payment_intent: "pi_1".into()
            }
        );
        let action = classify(Ok(
            serde_json::json!({"id": "pi_2", "status": "requires_action"}),
        ));
        assert!(matches!(action, Sent::Failed { .. }));
        let timeout = classify(Err(StripeError::Timeout));
        assert!(matches!(timeout, Sent::Unknown(_)));
    }
}
