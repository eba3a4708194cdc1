use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::extract::Json;
use super::idempotency::StoredWithSettlement;
use crate::App;
use crate::auth::Caller;
use crate::cast::{self, Answer, CastError, CastRequest, CastResult};
use crate::error::{ApiError, Code};
use crate::idempotency::Reservation;
use crate::money::{Binding, Budget, InFlight, MicroUsd, Refusal, Scope};
use crate::registry::SpellRef;
use crate::sandbox::Outcome;
use crate::store::rfc3339;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CastBody {
    /// `owner/name`, or `owner/name@version` to pin a version (a requirement such as
    /// `@^1.2` is accepted too).
    #[schema(
        pattern = "^[a-z0-9][a-z0-9-]{0,38}/[a-z0-9-]{1,64}(@(0|[1-9][0-9]{0,15})\\.(0|[1-9][0-9]{0,15})\\.(0|[1-9][0-9]{0,15}))?$"
    )]
    spell: String,
    /// The spell's input as JSON (or send `input_base64`).
    input: Option<Value>,
    /// The spell's input as bytes, base64 (or send `input`).
    #[schema(pattern = "^[A-Za-z0-9+/]*={0,2}$")]
    input_base64: Option<String>,
    /// At most this much fuel; the manifest's limit binds as well.
    #[schema(minimum = 1)]
    max_fuel: Option<u64>,
    /// Refuse (402) rather than risk more than this (µ$).
    #[schema(minimum = 1)]
    max_cost_microusd: Option<i64>,
    /// Check and quote without running, holding or charging anything.
    #[serde(default)]
    dry_run: bool,
}

/// Names a budget past its soft limit on every cast response that knows of it.
const BUDGET_WARNING: &str = "spellhost-budget-warning";

/// What a cast cost, by part (µ$).
#[derive(utoipa::ToSchema, serde::Serialize)]
pub struct CostBreakdown {
    base_microusd: i64,
    fuel_microusd: i64,
    wall_microusd: i64,
}

/// A settled cast's answer (200). A spell that failed answers 422 in the error shape, with
/// these fields (but `output`) beside `code` and `message`, and `stderr`.
#[derive(utoipa::ToSchema, serde::Serialize)]
pub struct CastAnswer {
    cast_id: String,
    /// `owner/name`.
    spell: String,
    version: String,
    /// The module's SHA-256 digest.
    digest: String,
    /// `ok` here.
    outcome: String,
    fuel_used: u64,
    wall_ms: u64,
    /// The part of `wall_ms` blocked in host calls that was billed (whole ms).
    blocked_ms: u64,
    cost_microusd: i64,
    cost: CostBreakdown,
    /// The balance after this cast's charge.
    balance_microusd: i64,
    duration_us: u64,
    /// The spell's output, when it is JSON.
    output: Option<Value>,
    /// The spell's output as base64, when it is not JSON.
    output_base64: Option<String>,
}

/// A dry run's answer (200 with `"dry_run": true`; see `quoted`): nothing ran, nothing was held
/// or charged.
#[derive(utoipa::ToSchema, serde::Serialize)]
pub struct DryRunQuote {
    /// Always `true`.
    dry_run: bool,
    /// `owner/name`.
    spell: String,
    /// The version a real cast would run.
    version: String,
    digest: String,
    worst_case: WorstCase,
    /// The version's usage statistics priced now (`casts` 0 before any).
    typical: crate::registry::catalog::Usage,
    available_microusd: i64,
    /// Null when a real cast would run; else `{status, body}`: the refusal it would get.
    would_refuse: Option<Value>,
}

/// What a cast would hold: its worst case.
#[derive(utoipa::ToSchema, serde::Serialize)]
pub struct WorstCase {
    hold_microusd: i64,
    fuel_cap: u64,
    /// `caller` (the cast's `max_fuel` or `max_cost_microusd`) or `spell` (its manifest).
    fuel_bound: String,
    blocked_ms_max: u64,
    cost: CostBreakdown,
}

/// `POST /v1/cast`'s 200: a cast that ran, or a dry run's quote.
#[derive(utoipa::ToSchema, serde::Serialize)]
#[serde(untagged)]
#[expect(
    dead_code,
    reason = "a schema: the bodies are built by `charge_fields` and `quoted`"
)]
pub enum CastOk {
    Ran(CastAnswer),
    Quoted(DryRunQuote),
}

/// `POST /v1/cast`: runs a spell for the caller and charges it.
#[utoipa::path(
    post,
    path = "/v1/cast",
    tag = "cast",
    request_body = CastBody,
    responses(
        (status = 200, description = "The spell ran and was charged; or, with `dry_run`, the quote of what a cast would do (nothing ran, nothing held).", body = CastOk,
            headers(("Spellhost-Budget-Warning" = String, description = "One per budget at or past its soft limit."),
                ("Server-Timing" = String, description = "Where the cast's time went on the server, in ms: `prepare` (resolve, price, hold), `queue` (waiting for a sandbox slot), `dispatch` (waiting for a wasm thread), `run`, `settle` (the charge's commit); and `total`, which every answer but a 401 carries."))),
        (status = 400, description = "`bad_request`: a malformed spell reference, both or bad inputs, a zero `max_fuel` or `max_cost_microusd`; or `idempotency_key_invalid`.", body = crate::http::openapi::ErrorBody),
        (status = 402, description = "`budget_exhausted` (the balance) or `spend_limit_reached` (a budget) cannot hold the cast's worst case; nothing ran. With `binding`, `required_microusd`, `available_microusd`, `affordable_max_fuel`, `topup` (and `budget`).", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`spell_not_allowed`: the key may not cast this spell (or `insufficient_scope`).", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`spell_not_found`.", body = crate::http::openapi::ErrorBody),
        (status = 410, description = "`version_yanked`: the version asked for was yanked.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`: the input or the body is over the limit.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "The spell ran, was charged and failed: `spell_failed` (with `exit_code`), `spell_trapped`, `fuel_exhausted`, `deadline_exceeded`, `memory_limit_exceeded` or `output_too_large`, with the charge's fields and `stderr`; or `idempotency_key_reused`.", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "`too_many_concurrent_casts` (the user's or the key's), or `rate_limited`; retry after `Retry-After` seconds.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`overloaded`: every sandbox worker is busy, or the spell is still being compiled; retry after `Retry-After` seconds.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn cast(
    State(app): State<App>,
    caller: Caller,
    reservation: Option<Extension<Arc<Reservation>>>,
    Json(body): Json<CastBody>,
) -> Result<Response, ApiError> {
    let dry_run = body.dry_run;
    let request = parse(body)?;
    if dry_run {
        let quote = cast::dry_run(&app, &caller, &request)
            .await
            .map_err(cast_error)?;
        return Ok(axum::Json(quoted(&app, &quote)).into_response());
    }
    // With an Idempotency-Key, the answer is stored in the settlement's transaction.
    let answer = reservation.map(|Extension(reservation)| Answer {
        reservation,
        render,
    });
    let stored = answer.is_some();
    // The cast runs to its settlement even if the client goes away: it is tracked so that a
    // graceful shutdown waits for it, and nothing that ran goes uncharged.
    let caller_id = caller.user_id;
    let task = {
        let app = app.clone();
        let trace_id = crate::error::trace_id();
        app.casts_in_flight
            .clone()
            .spawn(crate::error::TRACE_ID.scope(trace_id, async move {
                cast::cast(&app, &caller, request, answer).await
            }))
    };
    let result = task.await.map_err(ApiError::internal)?;
    let (mut response, budgets) = match result {
        Ok(mut result) => {
            let budgets = std::mem::take(&mut result.budgets);
            let mut response = respond(&result);
            if stored {
                response.extensions_mut().insert(StoredWithSettlement);
            }
            (response, budgets)
        }
        Err(CastError::Refused { refusal, budgets }) => {
            let in_flight = app
                .money
                .in_flight(&app.db, caller_id)
                .await
                .unwrap_or_default();
            (refused(&app, &refusal, &in_flight).into_response(), budgets)
        }
        Err(error) => return Err(cast_error(error)),
    };
    warn_of_soft_limits(&mut response, &budgets);
    Ok(response)
}

/// A dry run's answer. A cast that could not be paid is still a successful quote (200): its
/// `would_refuse` carries the status and the very body the real cast would get (402
/// `budget_exhausted` or `spend_limit_reached`, with the binding pool and the top-up), so a
/// client tells exactly what a real cast would do; `would_refuse` is null when it would run.
/// Refusals that are not about money (an unknown spell, a key that may not cast it, an input
/// its schema refuses) answer as the real cast would, with their error.
fn quoted(app: &App, quote: &cast::Quote) -> Value {
    let would_refuse = quote.refusal.as_ref().map(|refusal| {
        let error = refused(app, refusal, &quote.in_flight);
        json!({"status": error.code.status().as_u16(), "body": error.body()})
    });
    let plan = &quote.plan;
    json!({
        "dry_run": true,
        "spell": quote.spell,
        "version": quote.version,
        "digest": quote.digest.to_string(),
        "worst_case": {
            "hold_microusd": plan.worst_case.get(),
            "fuel_cap": plan.fuel_cap,
            "fuel_bound": match plan.bound {
                crate::money::FuelBound::Caller => "caller",
                crate::money::FuelBound::Spell => "spell",
            },
            "blocked_ms_max": plan.blocked_ms_max,
            "cost": {
                "base_microusd": quote.worst_case.base.get(),
                "fuel_microusd": quote.worst_case.fuel.get(),
                "wall_microusd": quote.worst_case.wall.get(),
            },
        },
        "typical": quote.usage,
        "available_microusd": quote.available.get(),
        "would_refuse": would_refuse,
    })
}

/// One `Spellhost-Budget-Warning` header per budget at or past its soft limit.
fn warn_of_soft_limits(response: &mut Response, budgets: &[Budget]) {
    for budget in budgets.iter().filter(|b| b.soft_limit_reached()) {
        let scope = match &budget.scope {
            Scope::Account => "account".to_owned(),
            Scope::Key { key_id } => format!("key:{}", crate::auth::keys::prefix_of(key_id)),
            Scope::Spell { spell } => format!("spell:{spell}"),
        };
        let value = format!(
            "{}; scope={scope}; period={}; used_microusd={}; soft_limit_microusd={}; hard_limit_microusd={}",
            budget.id,
            budget.period.as_str(),
            budget.used.get(),
            budget.soft.map_or(0, MicroUsd::get),
            budget.hard.get(),
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().append(BUDGET_WARNING, value);
        }
    }
}

fn parse(body: CastBody) -> Result<CastRequest, ApiError> {
    let spell: SpellRef = body.spell.parse().map_err(ApiError::bad_request)?;
    let input = match (body.input, body.input_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give input or input_base64, not both",
            ));
        }
        (Some(value), None) => serde_json::to_vec(&value).map_err(ApiError::internal)?,
        (None, Some(text)) => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| ApiError::bad_request(format!("input_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
    };
    if body.max_fuel == Some(0) {
        return Err(ApiError::bad_request("max_fuel must be positive"));
    }
    if body.max_cost_microusd.is_some_and(|max| max <= 0) {
        return Err(ApiError::bad_request("max_cost_microusd must be positive"));
    }
    Ok(CastRequest {
        spell,
        input,
        max_fuel: body.max_fuel,
        max_cost: body.max_cost_microusd.map(MicroUsd::new),
    })
}

/// The fields every settled cast reports, success or failure.
fn charge_fields(result: &CastResult) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("cast_id".into(), result.cast_id.clone().into());
    fields.insert("spell".into(), result.spell.clone().into());
    fields.insert("version".into(), result.version.clone().into());
    fields.insert("digest".into(), result.digest.to_string().into());
    fields.insert("outcome".into(), result.report.outcome.as_str().into());
    fields.insert("fuel_used".into(), result.report.fuel_used.into());
    // The run's wall time, and the part of it blocked in host calls that was billed (whole
    // ms, rounded up); computing is billed by fuel, never by time.
    let wall_ms = result.report.duration.as_nanos().div_ceil(1_000_000);
    fields.insert(
        "wall_ms".into(),
        u64::try_from(wall_ms).unwrap_or(u64::MAX).into(),
    );
    fields.insert("blocked_ms".into(), result.blocked_ms.into());
    fields.insert("cost_microusd".into(), result.cost.get().into());
    fields.insert(
        "cost".into(),
        json!({
            "base_microusd": result.breakdown.base.get(),
            "fuel_microusd": result.breakdown.fuel.get(),
            "wall_microusd": result.breakdown.wall.get(),
        }),
    );
    fields.insert("balance_microusd".into(), result.balance_after.get().into());
    fields.insert(
        "duration_us".into(),
        u64::try_from(result.report.duration.as_micros())
            .unwrap_or(u64::MAX)
            .into(),
    );
    fields
}

/// A settled cast's answer, as sent.
fn respond(result: &CastResult) -> Response {
    let (status, body) = render(result);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let report = &result.report;
    if let Some(timing) = super::middleware::server_timing(&[
        ("prepare", result.timing.prepare),
        ("queue", report.queue_wait),
        ("dispatch", report.dispatch_wait),
        ("run", report.duration),
        ("settle", result.timing.settle),
    ]) {
        response
            .headers_mut()
            .append(super::middleware::SERVER_TIMING, timing);
    }
    response
}

/// A settled cast's answer as status and JSON bytes: what is sent, and what an idempotent
/// cast stores with its settlement (byte for byte the same).
fn render(result: &CastResult) -> (u16, Vec<u8>) {
    let (status, body) = answer(result);
    let body = serde_json::to_vec(&body).unwrap_or_default();
    (status.as_u16(), body)
}

fn answer(result: &CastResult) -> (StatusCode, Value) {
    let mut fields = charge_fields(result);
    let report = &result.report;
    let (code, message) = match &report.outcome {
        Outcome::Ok => {
            match serde_json::from_slice::<Value>(&report.output) {
                Ok(output) => fields.insert("output".into(), output),
                Err(_) => fields.insert(
                    "output_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&report.output)
                        .into(),
                ),
            };
            return (StatusCode::OK, Value::Object(fields));
        }
        Outcome::OutOfFuel => (
            Code::FuelExhausted,
            "the spell used all the fuel it was allowed".to_owned(),
        ),
        Outcome::ExitCode(code) => {
            fields.insert("exit_code".into(), (*code).into());
            (
                Code::SpellFailed,
                format!("the spell exited with code {code}"),
            )
        }
        Outcome::Trapped(trap) => (Code::SpellTrapped, format!("the spell trapped: {trap}")),
        Outcome::DeadlineExceeded => (
            Code::DeadlineExceeded,
            "the spell ran past its wall-time limit".to_owned(),
        ),
        Outcome::MemoryLimitExceeded => (
            Code::MemoryLimitExceeded,
            "the spell needed more memory than allowed".to_owned(),
        ),
        Outcome::OutputTooLarge => (
            Code::OutputTooLarge,
            "the spell wrote more output than allowed".to_owned(),
        ),
    };
    fields.insert(
        "stderr".into(),
        String::from_utf8_lossy(&report.stderr).into_owned().into(),
    );
    let mut error = ApiError::new(code, message);
    error.extra.extend(fields);
    (error.code.status(), error.body())
}

/// The 402 quote: what had to be held, what binds and what the client can do about it.
fn refused(app: &App, refusal: &Refusal, in_flight: &InFlight) -> ApiError {
    let error = match &refusal.binding {
        Binding::Balance => ApiError::new(
            Code::BudgetExhausted,
            "the available balance cannot hold this cast's worst case; nothing ran",
        )
        .with("binding", json!({"type": "balance"}))
        .with("topup", topup(app, refusal)),
        Binding::Budget(budget) => {
            let budget = &in_flight.show(budget);
            let resets_at = budget.resets_at_ms().map(rfc3339);
            ApiError::new(
                Code::SpendLimitReached,
                format!(
                    "the {} {} budget cannot hold this cast's worst case; nothing ran",
                    budget.scope.type_str(),
                    budget.period.as_str()
                ),
            )
            .with(
                "binding",
                json!({"type": "budget", "budget_id": budget.id, "resets_at": resets_at}),
            )
            .with(
                "budget",
                json!({
                    "id": budget.id,
                    "scope": budget.scope.to_json(),
                    "period": budget.period.as_str(),
                    "hard_limit_microusd": budget.hard.get(),
                    "used_microusd": budget.used.get(),
                    "held_microusd": budget.held.get(),
                    "resets_at": resets_at,
                }),
            )
            // A top-up does not lift a spend limit.
            .with("topup", Value::Null)
        }
    };
    error
        .with("required_microusd", refusal.required.get())
        .with("available_microusd", refusal.available.get())
        .with("affordable_max_fuel", refusal.affordable_max_fuel)
}

/// A top-up request the client can send as is, for the shortfall (within the configured
/// bounds), or `null` when billing is not configured.
fn topup(app: &App, refusal: &Refusal) -> Value {
    if app.config.billing.is_none() {
        return Value::Null;
    }
    let shortfall = refusal
        .required
        .get()
        .saturating_sub(refusal.available.get())
        .max(0);
    // Whole cents, rounded up: 1 cent = 10 000 µ$.
    let cents = (shortfall / 10_000 + i64::from(shortfall % 10_000 != 0))
        .clamp(app.config.topup_min_cents, app.config.topup_max_cents);
    json!({
        "method": "POST",
        "url": format!("{}/v1/billing/checkout", app.config.public_url),
        "body": {"amount_usd_cents": cents},
    })
}

fn cast_error(error: CastError) -> ApiError {
    match error {
        CastError::Registry(error) => error.into(),
        CastError::NotAllowed(spell) => ApiError::new(
            Code::SpellNotAllowed,
            format!("this API key may not cast {spell}"),
        ),
        CastError::Plan(error) => ApiError::bad_request(error.to_string()),
        CastError::InputTooLarge { actual, limit } => ApiError::new(
            Code::PayloadTooLarge,
            format!("input is {actual} bytes; the limit is {limit}"),
        ),
        CastError::InvalidInput(violations) => ApiError::new(
            Code::InvalidInput,
            "the input does not match the spell's input_schema; nothing was held or run",
        )
        .with("errors", json!(violations)),
        // Answered by the caller with the quote; kept here so the match is total.
        CastError::Refused { .. } => ApiError::internal(error),
        CastError::Overloaded => ApiError::new(
            Code::Overloaded,
            "all sandbox workers are busy; retry shortly",
        )
        .retry_after(1),
        CastError::TooManyConcurrent { limit } => ApiError::new(
            Code::TooManyConcurrentCasts,
            format!(
                "you already have {limit} casts running, the most one user may; retry when one has finished"
            ),
        )
        .retry_after(1),
        CastError::TooManyConcurrentForKey { limit } => ApiError::new(
            Code::TooManyConcurrentCasts,
            format!(
                "this API key already has {limit} casts running, the most it may (its concurrent_casts_max); retry when one has finished"
            ),
        )
        .retry_after(1),
        CastError::Sandbox(error) => ApiError::internal(error),
        CastError::Money(error) => error.into(),
    }
}
