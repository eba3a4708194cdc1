//! A cast: resolve → hold → run → settle. The one domain function behind `POST /v1/cast`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Caller;
use crate::idempotency::Reservation;
use crate::{App, AppState};
use base64::Engine as _;

use crate::config::CastOutputConfig;
use crate::money::batch::{KeptOutput, Receipt, Settled};
use crate::money::quote::{self, Caps, Plan, PlanError};
use crate::money::{
    self, Budget, CastRecord, Cost, HoldFor, InFlight, MicroUsd, MoneyError, Pricing, Refusal,
};
use crate::registry::{RegistryError, Resolved, SpellRef, Usage};
use crate::sandbox::{Lane, Outcome, RunFor, RunLimits, RunReport, SandboxError, Tenant};
use crate::supply_chain::{ModuleDigest, SchemaViolation, SpellSchema};

pub struct CastRequest {
    pub spell: SpellRef,
    pub input: Vec<u8>,
    pub max_fuel: Option<u64>,
    pub max_cost: Option<MicroUsd>,
}

/// A cast that ran and was charged.
#[derive(Clone)]
pub struct CastResult {
    pub cast_id: String,
    pub spell: String,
    pub version: String,
    pub digest: ModuleDigest,
    pub report: RunReport,
    /// What was charged (`breakdown.total()`).
    pub cost: MicroUsd,
    pub breakdown: Cost,
    /// The blocked time billed, in whole ms.
    pub blocked_ms: u64,
    pub balance_after: MicroUsd,
    /// The budgets that govern the cast, as they are after it.
    pub budgets: Vec<Budget>,
    /// Where the cast's time went on the server.
    pub timing: Timing,
}

/// Where a cast's time went on the server, stage by stage, as its answer's `Server-Timing`
/// header tells the client (with the run's own `duration`, `report.queue_wait` and
/// `report.dispatch_wait`): what a slow cast waited for, without access to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// Resolving the spell, pricing its worst case and holding it.
    pub prepare: Duration,
    /// From the run's end to its settlement, committed, reaching the cast: pricing, the money
    /// writer's queue and batch, and the wake-up of the cast's task.
    pub settle: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CastError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("this API key may not cast {0}")]
    NotAllowed(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("input is {actual} bytes; the limit is {limit}")]
    InputTooLarge { actual: usize, limit: u64 },
    /// The input does not match the version's `input_schema`: nothing was held or run.
    #[error("the input does not match the spell's input_schema")]
    InvalidInput(Vec<SchemaViolation>),
    /// The balance or a budget cannot hold the worst case: nothing ran, nothing was charged.
    #[error("the cast's worst case cannot be held")]
    Refused {
        refusal: Box<Refusal>,
        budgets: Vec<Budget>,
    },
    #[error("the sandbox is at capacity")]
    Overloaded,
    /// The caller's own casts in flight fill its share; nothing ran, nothing was charged.
    #[error("{limit} casts of this user are already in flight")]
    TooManyConcurrent { limit: usize },
    /// The key's own limit: its casts in flight fill it; nothing ran, nothing was charged.
    #[error("{limit} casts through this key are already in flight")]
    TooManyConcurrentForKey { limit: usize },
    #[error(transparent)]
    Sandbox(SandboxError),
    #[error(transparent)]
    Money(MoneyError),
}

impl From<MoneyError> for CastError {
    fn from(error: MoneyError) -> Self {
        match error {
            MoneyError::Refused { refusal, budgets } => CastError::Refused { refusal, budgets },
            // Concurrent casts kept taking what borrows granted: busy, not broken.
            MoneyError::Conflict => {
                tracing::warn!("a hold lost every borrow to concurrent casts");
                CastError::Overloaded
            }
            other => CastError::Money(other),
        }
    }
}

/// How an idempotent cast's answer is stored with its settlement: the request's reservation,
/// and the function that renders a settled cast as the status and body the client is told.
pub struct Answer {
    pub reservation: Arc<Reservation>,
    pub render: fn(&CastResult) -> (u16, Vec<u8>),
}

pub async fn cast(
    app: &App,
    caller: &Caller,
    request: CastRequest,
    answer: Option<Answer>,
) -> Result<CastResult, CastError> {
    let started = Instant::now();
    let Prepared {
        spell_name,
        resolved,
        limits,
        plan,
    } = prepare(app, caller, &request).await?;
    let cast_id = format!("cast_{}", uuid::Uuid::now_v7().simple());
    let hold_for = HoldFor {
        user_id: caller.user_id,
        key_id: caller.key_id.clone(),
        spell: spell_name,
        cast_id: cast_id.clone(),
    };
    let hold = app.money.hold(hold_for, plan).await.inspect_err(|error| {
        if let MoneyError::Refused { refusal, .. } = error {
            let code = match refusal.binding {
                money::Binding::Balance => "budget_exhausted",
                money::Binding::Budget(_) => "spend_limit_reached",
            };
            app.metrics.casts.with_label_values(&[code]).inc();
        }
    })?;
    app.metrics.active_holds.inc();
    let limits = blocked_budget(limits.with_fuel_at_most(hold.fuel_cap), &resolved, &hold);
    // A key with a limit of its own is a lane of its user's queue; it came with the cached
    // key row, so this costs no database work.
    let lane = caller.concurrent_casts_max.map(|max| Lane {
        id: caller.key_id.as_str().into(),
        limit: usize::try_from(max.get()).unwrap_or(usize::MAX),
    });
    // Right after the run, on the wasm thread that ran it, the settlement is priced and
    // queued for the money writer, before this task is even woken: it joins the next batch
    // without a detour through the HTTP runtime. Only an idempotent cast copies its report
    // (its output) into the answer it stores, made there with this request's trace id.
    let answer = answer.map(|answer| (answer, crate::error::trace_id()));
    let settle = {
        let app = Arc::clone(app);
        let (spell, version, digest) = (resolved.spell, resolved.version, resolved.digest);
        move |report: &RunReport| {
            let ended = Instant::now();
            let record = CastRecord {
                spell: &spell,
                version: &version,
                digest: &digest.hex(),
                outcome: report.outcome.as_str(),
                fuel_used: report.fuel_used,
                duration_us: u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
                blocked_ms: Pricing::billed_ms(report.blocked),
                output_bytes: report.output.len() as u64,
                output: kept_output(&app.config.cast_outputs, report),
            };
            let receipt = answer.map(|(answer, trace_id)| {
                let unsettled = CastResult {
                    cast_id: hold.request.cast_id.clone(),
                    spell: spell.clone(),
                    version: version.clone(),
                    digest,
                    report: report.clone(),
                    cost: MicroUsd::ZERO,
                    breakdown: Cost::default(),
                    blocked_ms: record.blocked_ms.min(hold.blocked_ms_max),
                    balance_after: MicroUsd::ZERO,
                    budgets: Vec::new(),
                    timing: Timing::default(),
                };
                receipt(&app, answer, unsettled, trace_id)
            });
            // The names come back with the settlement: the answer needs them.
            (
                app.money.begin_settle(hold, &record, receipt),
                ended,
                spell,
                version,
            )
        }
    };
    let prepare = started.elapsed();
    let run = app
        .sandbox
        .run_then(
            RunFor {
                tenant: Tenant(caller.user_id),
                lane,
            },
            resolved.compiled.clone(),
            request.input,
            limits,
            settle,
        )
        .await;
    let (report, (pending, ended, spell, version)) = match run {
        Ok(ran) => ran,
        Err(error) => {
            // The run never happened: the hold, dropped with `settle`, went back to the lease
            // (in memory).
            app.metrics.active_holds.dec();
            let refused = match error {
                SandboxError::Busy => CastError::Overloaded,
                SandboxError::TooManyConcurrent { limit } => CastError::TooManyConcurrent { limit },
                SandboxError::TooManyConcurrentForKey { limit } => {
                    CastError::TooManyConcurrentForKey { limit }
                }
                other => return Err(CastError::Sandbox(other)),
            };
            let reason = match refused {
                CastError::Overloaded => "busy",
                _ => "too_many_concurrent_casts",
            };
            app.metrics.casts_refused.with_label_values(&[reason]).inc();
            return Err(refused);
        }
    };
    let settled = pending.finish().await;
    let timing = Timing {
        prepare,
        settle: ended.elapsed(),
    };
    app.metrics.active_holds.dec();
    // A settle that fails after the spell ran (every retry of its batch failed) is an internal
    // error, never a "402, nothing ran": nothing was charged, and the money held for it stays
    // leased until the lease is given back.
    let settlement = settled.map_err(CastError::Money)?;
    app.recharger.settled(caller.user_id);
    observe(app, &report, settlement.cost);
    app.metrics
        .budget_soft_limit_crossings
        .inc_by(settlement.soft_limits_crossed.len() as u64);
    tracing::debug!(cast.id = %cast_id, spell.digest = %resolved.digest, cast.outcome = report.outcome.as_str(),
        cast.fuel_used = report.fuel_used, cast.blocked_ms = settlement.blocked_ms,
        cast.cost_microusd = settlement.cost.get(), "cast settled");
    Ok(CastResult {
        cast_id,
        spell,
        version,
        digest: resolved.digest,
        report,
        cost: settlement.cost,
        breakdown: settlement.breakdown,
        blocked_ms: settlement.blocked_ms,
        balance_after: settlement.balance_after,
        budgets: settlement.budgets,
        timing,
    })
}

/// The run's blocked-time budget: what the hold pays for. A module that cannot block has none
/// held and is billed none (settlement charges at most the hold's `blocked_ms_max`); its meter
/// keeps only the wall limit, so that a host call that is momentarily pending (not a sleep: the
/// module has no way to ask for one) cannot end its run.
fn blocked_budget(limits: RunLimits, resolved: &Resolved, hold: &money::LeaseHold) -> RunLimits {
    if resolved.compiled.may_block() {
        limits.with_blocked_ms_at_most(hold.blocked_ms_max)
    } else {
        limits
    }
}

/// What of a cast's output is kept with its record for the caster (`GET /v1/casts/{id}`):
/// a successful run's whole output, if it is within the configured size.
fn kept_output(config: &CastOutputConfig, report: &RunReport) -> Option<KeptOutput> {
    let output = &report.output;
    if report.outcome != Outcome::Ok
        || config.retention_ms <= 0
        || output.len() as u64 > config.bytes_max
    {
        return None;
    }
    let (text, encoding) = match std::str::from_utf8(output) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(output),
            "base64",
        ),
    };
    Some(KeptOutput {
        text,
        encoding,
        retention_ms: config.retention_ms,
    })
}

/// Inputs up to this size are checked against a schema on the reactor; larger ones (up to
/// the 4 MiB input limit) on the blocking pool, so that a big document never stalls it.
const INLINE_SCHEMA_CHECK_BYTES_MAX: usize = 64 * 1024;

/// Checks a cast's input against its version's input schema.
async fn check_input(schema: &SpellSchema, input: &[u8]) -> Result<(), CastError> {
    fn check(schema: &SpellSchema, input: &[u8]) -> Vec<SchemaViolation> {
        match serde_json::from_slice::<serde_json::Value>(input) {
            Ok(value) => schema.violations(&value),
            Err(error) => vec![SchemaViolation {
                instance_path: String::new(),
                message: format!("the input is not JSON ({error}); this spell takes JSON"),
            }],
        }
    }
    let violations = if input.len() <= INLINE_SCHEMA_CHECK_BYTES_MAX {
        check(schema, input)
    } else {
        let (schema, input) = (schema.clone(), input.to_vec());
        tokio::task::spawn_blocking(move || check(&schema, &input))
            .await
            .map_err(|e| CastError::Registry(RegistryError::Internal(e.to_string())))?
    };
    if violations.is_empty() {
        Ok(())
    } else {
        Err(CastError::InvalidInput(violations))
    }
}

/// A cast checked and planned, before any money is held: what a real cast and a dry run share.
struct Prepared {
    spell_name: String,
    resolved: Resolved,
    limits: RunLimits,
    plan: Plan,
}

/// Everything a cast checks before money: the key may cast the spell, the input fits and
/// matches the version's schema, the caps make a plan.
async fn prepare(
    app: &AppState,
    caller: &Caller,
    request: &CastRequest,
) -> Result<Prepared, CastError> {
    let spell_name = format!("{}/{}", request.spell.owner, request.spell.name);
    if !caller
        .allowed_spells
        .allows(&request.spell.owner, &request.spell.name)
    {
        return Err(CastError::NotAllowed(spell_name));
    }
    // Refused before anything is written: an oversize input costs no hold.
    let input_bytes_max = app.sandbox.host_limits().input_bytes_max;
    if request.input.len() as u64 > input_bytes_max {
        return Err(CastError::InputTooLarge {
            actual: request.input.len(),
            limit: input_bytes_max,
        });
    }
    let resolved = app.registry.resolve(&request.spell).await?;
    // Before any money moves: an input the spell declares it cannot take costs nothing.
    if let Some(schema) = &resolved.input_schema {
        check_input(schema, &request.input).await?;
    }
    let limits = app.sandbox.limits_for(&resolved.limits);
    let plan = quote::plan(
        Caps {
            spell_fuel_max: limits.fuel,
            caller_fuel_max: request.max_fuel,
            caller_cost_max: request.max_cost,
            // A module that cannot block is never billed blocked time: none is held.
            blocked_ms_max: if resolved.compiled.may_block() {
                limits.wall_ms
            } else {
                0
            },
        },
        &app.config.pricing,
    )?;
    Ok(Prepared {
        spell_name,
        resolved,
        limits,
        plan,
    })
}

/// A dry run's answer: what a real cast with the same request would hold and likely cost,
/// and whether it would be refused for money.
pub struct Quote {
    pub spell: String,
    pub version: String,
    pub digest: ModuleDigest,
    pub plan: Plan,
    /// The worst case by component.
    pub worst_case: Cost,
    /// What the balance has free for casts, as a client should see it.
    pub available: MicroUsd,
    /// The version's statistics priced now (`casts` 0 when it has none).
    pub usage: Usage,
    /// `Some` when a real cast would be refused (402), with what the refusal would say.
    pub refusal: Option<Box<Refusal>>,
    pub in_flight: InFlight,
}

/// `POST /v1/cast` with `"dry_run": true`: every check a cast makes (key, scope, allowed
/// spells, input and its schema, version, caps, balance and budgets), and the quote, without
/// running, holding or charging anything. Nothing is written.
pub async fn dry_run(
    app: &AppState,
    caller: &Caller,
    request: &CastRequest,
) -> Result<Quote, CastError> {
    let Prepared {
        spell_name,
        resolved,
        plan,
        ..
    } = prepare(app, caller, request).await?;
    let pricing = &app.config.pricing;
    let balance = money::balance(&app.db, caller.user_id).await?;
    // The same view of casts in flight a 402 gives: this instance's holds and what other
    // instances lease; the unused part of this instance's own leases is the user's to spend.
    let in_flight = app.money.in_flight(&app.db, caller.user_id).await?;
    let available = MicroUsd::new(
        balance
            .balance
            .get()
            .saturating_sub(in_flight.balance.get())
            .max(0),
    );
    let budgets: Vec<Budget> = money::budgets::list(&app.db, caller.user_id, app.db.now_ms())
        .await?
        .into_iter()
        .filter(|budget| budget.applies_to(&caller.key_id, &spell_name))
        .map(|budget| in_flight.show(&budget))
        .collect();
    let refusal = quote::check(&plan, available, &budgets, pricing).err();
    let histogram = app
        .registry
        .usage(&resolved.spell, Some(&resolved.version))
        .await?
        .remove(&resolved.version)
        .unwrap_or_default();
    Ok(Quote {
        spell: resolved.spell,
        version: resolved.version,
        digest: resolved.digest,
        worst_case: pricing.charge(plan.fuel_cap, plan.blocked_ms_max),
        plan,
        available,
        usage: Usage::of(&histogram, pricing),
        refusal,
        in_flight,
    })
}

/// The answer of an idempotent cast, rendered in the settlement's transaction once the charge
/// is known, with the trace id of the request that ran it (read on the cast's task: the
/// receipt is made on the wasm thread).
fn receipt(app: &AppState, answer: Answer, unsettled: CastResult, trace_id: String) -> Receipt {
    let render = answer.render;
    app.idempotency
        .receipt(&answer.reservation, move |settled: &Settled| {
            let mut result = unsettled.clone();
            result.cost = settled.cost;
            result.breakdown = settled.breakdown;
            result.balance_after = settled.balance_after;
            result.budgets = settled.budgets.clone();
            crate::error::TRACE_ID.sync_scope(trace_id.clone(), || render(&result))
        })
}

fn observe(app: &AppState, report: &RunReport, cost: MicroUsd) {
    let metrics = &app.metrics;
    metrics
        .casts
        .with_label_values(&[report.outcome.as_str()])
        .inc();
    metrics.cast_duration.observe(report.duration.as_secs_f64());
    metrics.queue_wait.observe(report.queue_wait.as_secs_f64());
    metrics.fuel_consumed.inc_by(report.fuel_used);
    metrics
        .charged_microusd
        .inc_by(u64::try_from(cost.get()).unwrap_or(0));
}
