//! A user's billing as they see it (`GET /v1/billing`) and their auto-recharge settings
//! (`PUT /v1/billing/auto-recharge`).

use serde::Serialize;

use super::BillingError;
use super::apply::lock_auto_recharge;
use crate::money::MicroUsd;
use crate::store::{Db, now_ms};

/// The highest threshold accepted: $1 000 000. Anything above is a typo, not a plan.
const THRESHOLD_MICROUSD_MAX: i64 = 1_000_000_000_000;

/// At most this many recharges a day: one an hour on average. A card charged more often looks
/// like fraud to its issuer, and a spell burning that fast wants a larger amount instead.
pub const MAX_PER_DAY_LIMIT: i64 = 24;

/// How many top-ups `GET /v1/billing` lists.
const TOPUPS_SHOWN: i64 = 10;

const DAY_MS: i64 = 86_400_000;

/// Auto-recharge settings, checked. Disabling keeps the stored values of fields not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoRecharge {
    Enabled {
        threshold: MicroUsd,
        amount_cents: i64,
        max_per_day: i64,
    },
    Disabled,
}

impl AutoRecharge {
    /// `amount_cents` must be a top-up the server accepts (`SPELLHOST_TOPUP_{MIN,MAX}_CENTS`).
    pub fn parse(
        enabled: bool,
        threshold_microusd: Option<i64>,
        amount_usd_cents: Option<i64>,
        max_per_day: Option<i64>,
        topup_cents: std::ops::RangeInclusive<i64>,
    ) -> Result<AutoRecharge, BillingError> {
        if !enabled {
            return Ok(AutoRecharge::Disabled);
        }
        let invalid = |message: &str| BillingError::InvalidAutoRecharge(message.to_owned());
        let (Some(threshold), Some(amount_cents), Some(max_per_day)) =
            (threshold_microusd, amount_usd_cents, max_per_day)
        else {
            return Err(invalid(
                "enabling needs threshold_microusd, amount_usd_cents and max_per_day",
            ));
        };
        if !(0..=THRESHOLD_MICROUSD_MAX).contains(&threshold) {
            return Err(invalid(&format!(
                "threshold_microusd must be between 0 and {THRESHOLD_MICROUSD_MAX}"
            )));
        }
        if !(1..=MAX_PER_DAY_LIMIT).contains(&max_per_day) {
            return Err(invalid(&format!(
                "max_per_day must be between 1 and {MAX_PER_DAY_LIMIT}"
            )));
        }
        if !topup_cents.contains(&amount_cents) {
            return Err(BillingError::AmountOutOfRange {
                min: *topup_cents.start(),
                max: *topup_cents.end(),
            });
        }
        Ok(AutoRecharge::Enabled {
            threshold: MicroUsd::new(threshold),
            amount_cents,
            max_per_day,
        })
    }
}

/// Stores the settings. Enabling needs a saved payment method, and clears the reason of an
/// earlier disabling.
pub async fn set_auto_recharge(
    db: &Db,
    user_id: i64,
    settings: &AutoRecharge,
) -> Result<(), BillingError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO auto_recharge (user_id, updated_at_ms) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    lock_auto_recharge(db, &mut tx, user_id).await?;
    match settings {
        AutoRecharge::Disabled => {
            sqlx::query(
                "UPDATE auto_recharge SET enabled = 0, updated_at_ms = $1 WHERE user_id = $2",
            )
            .bind(now_ms())
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        }
        AutoRecharge::Enabled {
            threshold,
            amount_cents,
            max_per_day,
        } => {
            let enabled = sqlx::query(
                "UPDATE auto_recharge SET enabled = 1, threshold_microusd = $1, amount_cents = $2, max_per_day = $3, \
                 disabled_reason = NULL, disabled_at_ms = NULL, updated_at_ms = $4 \
                 WHERE user_id = $5 AND payment_method_id IS NOT NULL",
            )
            .bind(threshold.get())
            .bind(amount_cents)
            .bind(max_per_day)
            .bind(now_ms())
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if enabled == 0 {
                return Err(BillingError::NoPaymentMethod);
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AutoRechargeView {
    pub enabled: bool,
    pub threshold_microusd: i64,
    pub amount_usd_cents: i64,
    pub max_per_day: i64,
    pub recharges_today: i64,
    /// Why it was last disabled by spellhost (a decline, a card asking for authentication, a
    /// removed card), until it is enabled again.
    pub disabled_reason: Option<String>,
    pub disabled_at_ms: Option<i64>,
    /// A recharge has been asked of Stripe and its outcome is not known yet.
    pub in_flight: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct PaymentMethodView {
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i64>,
    pub exp_year: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct TopupView {
    /// `checkout` or `auto_recharge`.
    pub kind: String,
    pub amount_usd_cents: i64,
    /// Checkout: `open` or `credited`; auto-recharge: `creating`, `pending`, `succeeded`,
    /// `failed` or `abandoned`.
    pub state: String,
    pub created_at_ms: i64,
    pub credited_at_ms: Option<i64>,
    pub failure_reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BillingView {
    pub balance_microusd: i64,
    pub held_microusd: i64,
    pub available_microusd: i64,
    pub auto_recharge: AutoRechargeView,
    pub payment_method: Option<PaymentMethodView>,
    pub topups: Vec<TopupView>,
}

/// A user's auto-recharge row, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Settings {
    pub(super) enabled: i64,
    pub(super) threshold_microusd: i64,
    pub(super) amount_cents: i64,
    pub(super) max_per_day: i64,
    pub(super) day: i64,
    pub(super) day_count: i64,
    pub(super) payment_method_id: Option<String>,
    pub(super) disabled_reason: Option<String>,
    pub(super) disabled_at_ms: Option<i64>,
}

pub async fn view(db: &Db, user_id: i64) -> Result<BillingView, BillingError> {
    let reader = db.reader();
    let balance = crate::money::balance(db, user_id).await?;
    let settings: Option<Settings> = sqlx::query_as(
        "SELECT enabled, threshold_microusd, amount_cents, max_per_day, day, day_count, payment_method_id, \
         disabled_reason, disabled_at_ms FROM auto_recharge WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(reader)
    .await?;
    let (in_flight,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM recharges WHERE user_id = $1 AND state IN ('creating', 'pending')",
    )
    .bind(user_id)
    .fetch_one(reader)
    .await?;
    let payment_method = match settings
        .as_ref()
        .and_then(|s| s.payment_method_id.as_deref())
    {
        Some(method) => {
            let details: Option<PaymentMethodView> = sqlx::query_as(
                "SELECT brand, last4, exp_month, exp_year FROM stripe_payment_methods WHERE id = $1",
            )
            .bind(method)
            .fetch_optional(reader)
            .await?;
            Some(details.unwrap_or(PaymentMethodView {
                brand: None,
                last4: None,
                exp_month: None,
                exp_year: None,
            }))
        }
        None => None,
    };
    let topups: Vec<TopupView> = sqlx::query_as(
        "SELECT 'checkout' AS kind, amount_cents AS amount_usd_cents, \
         CASE WHEN credited_at_ms IS NULL THEN 'open' ELSE 'credited' END AS state, \
         created_at_ms, credited_at_ms, CAST(NULL AS TEXT) AS failure_reason \
         FROM checkout_sessions WHERE user_id = $1 \
         UNION ALL SELECT 'auto_recharge', amount_cents, state, created_at_ms, credited_at_ms, failure_reason \
         FROM recharges WHERE user_id = $1 \
         ORDER BY created_at_ms DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(TOPUPS_SHOWN)
    .fetch_all(reader)
    .await?;
    let today = now_ms() / DAY_MS;
    let auto_recharge = match settings {
        Some(s) => AutoRechargeView {
            enabled: s.enabled == 1,
            threshold_microusd: s.threshold_microusd,
            amount_usd_cents: s.amount_cents,
            max_per_day: s.max_per_day,
            recharges_today: if s.day == today { s.day_count } else { 0 },
            disabled_reason: s.disabled_reason,
            disabled_at_ms: s.disabled_at_ms,
            in_flight: in_flight > 0,
        },
        None => AutoRechargeView {
            enabled: false,
            threshold_microusd: 0,
            amount_usd_cents: 0,
            max_per_day: 0,
            recharges_today: 0,
            disabled_reason: None,
            disabled_at_ms: None,
            in_flight: false,
        },
    };
    Ok(BillingView {
        balance_microusd: balance.balance.get(),
        held_microusd: balance.held.get(),
        available_microusd: balance.available().get(),
        auto_recharge,
        payment_method,
        topups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabling_needs_every_setting_within_its_bounds() {
        let parse = |t, a, m| AutoRecharge::parse(true, t, a, m, 500..=50_000);
        assert!(matches!(
            parse(Some(1_000_000), Some(1000), Some(3)),
            Ok(AutoRecharge::Enabled { .. })
        ));
        assert!(matches!(
            parse(None, Some(1000), Some(3)),
            Err(BillingError::InvalidAutoRecharge(_))
        ));
        assert!(matches!(
            parse(Some(-1), Some(1000), Some(3)),
            Err(BillingError::InvalidAutoRecharge(_))
        ));
        assert!(matches!(
            parse(Some(1), Some(1000), Some(25)),
            Err(BillingError::InvalidAutoRecharge(_))
        ));
        assert!(matches!(
            parse(Some(1), Some(49), Some(1)),
            Err(BillingError::AmountOutOfRange { .. })
        ));
        assert_eq!(
            AutoRecharge::parse(false, None, None, None, 500..=50_000).ok(),
            Some(AutoRecharge::Disabled)
        );
    }
}
