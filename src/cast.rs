//! A cast: resolve → hold → run → settle. The one domain function behind `POST /v1/cast`.

use std::time::Duration;

use crate::AppState;
use crate::auth::Caller;
use crate::money::{self, CastRecord, FuelBound, HoldRequest, MicroUsd, MoneyError};
use crate::registry::{RegistryError, SpellRef};
use crate::sandbox::{Outcome, RunReport, SandboxError};
use crate::supply_chain::ModuleDigest;

/// Time a hold outlives its cast's wall-time limit and queue wait, for the settle itself.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

pub struct CastRequest {
    pub spell: SpellRef,
    pub input: Vec<u8>,
    pub max_fuel: Option<u64>,
}

/// A cast that ran and was charged.
pub struct CastResult {
    pub cast_id: String,
    pub spell: String,
    pub version: String,
    pub digest: ModuleDigest,
    pub report: RunReport,
    pub cost: MicroUsd,
    pub balance_after: MicroUsd,
    /// What decided the fuel cap (tells a 402 from a 422 when fuel ran out).
    pub bound: FuelBound,
}

#[derive(Debug, thiserror::Error)]
pub enum CastError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("insufficient funds: {required} required, {available} available")]
    BudgetExhausted {
        required: MicroUsd,
        available: MicroUsd,
    },
    #[error("the sandbox is at capacity")]
    Overloaded,
    #[error(transparent)]
    Sandbox(SandboxError),
    #[error(transparent)]
    Money(MoneyError),
}

impl From<MoneyError> for CastError {
    fn from(error: MoneyError) -> Self {
        match error {
            MoneyError::InsufficientFunds {
                required,
                available,
            } => CastError::BudgetExhausted {
                required,
                available,
            },
            other => CastError::Money(other),
        }
    }
}

pub async fn cast(
    app: &AppState,
    caller: &Caller,
    request: CastRequest,
) -> Result<CastResult, CastError> {
    let resolved = app.registry.resolve(&request.spell).await?;
    let limits = app.sandbox.limits_for(&resolved.limits);
    let cast_id = format!("cast_{}", uuid::Uuid::now_v7().simple());
    let ttl =
        app.config.sandbox.queue_wait_max + Duration::from_millis(limits.wall_ms) + SETTLE_GRACE;
    let hold_request = HoldRequest {
        user_id: caller.user_id,
        cast_id: cast_id.clone(),
        spell_fuel_max: limits.fuel,
        caller_fuel_max: request.max_fuel,
        ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
    };
    let hold = money::reserve(&app.db, &hold_request, &app.config.pricing)
        .await
        .inspect_err(|error| {
            if matches!(error, MoneyError::InsufficientFunds { .. }) {
                app.metrics
                    .casts
                    .with_label_values(&["budget_exhausted"])
                    .inc();
            }
        })?;
    app.metrics.active_holds.inc();
    let bound = hold.bound;
    let run = app
        .sandbox
        .run(
            resolved.compiled.clone(),
            request.input,
            limits.with_fuel_at_most(hold.fuel_cap),
        )
        .await;
    let report = match run {
        Ok(report) => report,
        Err(error) => {
            let voided = money::void(&app.db, hold).await;
            app.metrics.active_holds.dec();
            voided?;
            return Err(match error {
                SandboxError::Busy => CastError::Overloaded,
                other => CastError::Sandbox(other),
            });
        }
    };
    let record = CastRecord {
        spell: &resolved.spell,
        version: &resolved.version,
        digest: &resolved.digest.hex(),
        outcome: report.outcome.as_str(),
        fuel_used: report.fuel_used,
        duration_us: u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
    };
    let settled = money::settle(&app.db, hold, &app.config.pricing, &record).await;
    app.metrics.active_holds.dec();
    // A settle that fails after the spell ran is an internal error, never a "402, nothing
    // ran": the hold stays until the sweeper voids it, and nothing is charged twice.
    let settlement = settled.map_err(CastError::Money)?;
    app.recharger.settled(caller.user_id);
    observe(app, &report, settlement.cost);
    tracing::debug!(cast.id = %cast_id, spell.digest = %resolved.digest, cast.outcome = report.outcome.as_str(),
        cast.fuel_used = report.fuel_used, cast.cost_microusd = settlement.cost.get(), "cast settled");
    Ok(CastResult {
        cast_id,
        spell: resolved.spell,
        version: resolved.version,
        digest: resolved.digest,
        report,
        cost: settlement.cost,
        balance_after: settlement.balance_after,
        bound,
    })
}

fn observe(app: &AppState, report: &RunReport, cost: MicroUsd) {
    let metrics = &app.metrics;
    metrics
        .casts
        .with_label_values(&[report.outcome.as_str()])
        .inc();
    metrics.cast_duration.observe(report.duration.as_secs_f64());
    metrics.fuel_consumed.inc_by(report.fuel_used);
    metrics
        .charged_microusd
        .inc_by(u64::try_from(cost.get()).unwrap_or(0));
}

/// Whether a fuel-exhausted run ran out because the balance bound its cap (402) rather than
/// the caller's or the spell's own cap (422).
pub fn budget_ran_out(result: &CastResult) -> bool {
    result.report.outcome == Outcome::OutOfFuel && result.bound == FuelBound::Budget
}
