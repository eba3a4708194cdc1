//! Operator endpoints: liveness, readiness, metrics, ledger verification.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::money::{self, ChainCheck};
use crate::telemetry::Metrics;

/// `GET /healthz`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct Health {
    /// Always `ok`.
    status: String,
    version: String,
}

/// `GET /readyz`'s answer when ready.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct Ready {
    /// Always `ready`.
    status: String,
    /// Each check's detail, by name.
    #[schema(value_type = Object)]
    checks: serde_json::Value,
}

/// `GET /v1/admin/ledger/verify`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct ChainReport {
    intact: bool,
    /// Entries checked, when intact.
    entries: Option<i64>,
    /// The first entry whose hash does not chain, when broken.
    first_bad_seq: Option<i64>,
    reason: Option<String>,
}

/// `GET /healthz`: the process is up (no dependency is checked).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "Up.", body = Health)),
)]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /readyz`: 200 when this instance should get traffic; 503 in the one error shape,
/// naming what is not ready (`not_ready`) beside every check's detail (`checks`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Ready for traffic.", body = Ready),
        (status = 503, description = "`not_ready`: names what is not ready (`not_ready`) beside every check (`checks`).", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn readyz(State(app): State<App>) -> Response {
    let report = crate::ops::readiness::check(&app).await;
    if report.is_ready() {
        return axum::Json(json!({"status": "ready", "checks": report.checks_json()}))
            .into_response();
    }
    let not_ready = report.not_ready();
    ApiError::new(
        Code::NotReady,
        format!("not ready: {}", not_ready.join(", ")),
    )
    .with("not_ready", not_ready)
    .with("checks", report.checks_json())
    .retry_after(5)
    .into_response()
}

/// `GET /metrics`. With `SPELLHOST_METRICS_TOKEN` set, only for `Authorization: Bearer
/// <token>` (compared in constant time).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "The Prometheus text exposition.", content_type = "text/plain", body = String),
        (status = 401, description = "`unauthorized`: `SPELLHOST_METRICS_TOKEN` is set and was not presented.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn metrics(State(app): State<App>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &app.config.http.metrics_token {
        use secrecy::ExposeSecret as _;
        use subtle::ConstantTimeEq as _;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = token.expose_secret();
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            return ApiError::new(
                Code::Unauthorized,
                "the metrics token is required: Authorization: Bearer <SPELLHOST_METRICS_TOKEN>",
            )
            .into_response();
        }
    }
    render_metrics(&app)
}

/// `GET /metrics` on the private listener (`SPELLHOST_METRICS_LISTEN`): no token.
pub async fn private_metrics(State(app): State<App>) -> Response {
    render_metrics(&app)
}

fn render_metrics(app: &App) -> Response {
    let metrics = &app.metrics;
    Metrics::sync_counter(&metrics.module_cache_hits, app.sandbox.cache_hits());
    Metrics::sync_counter(&metrics.module_cache_misses, app.sandbox.cache_misses());
    Metrics::sync_counter(&metrics.api_key_verifications, app.auth.verifications());
    let money = app.money.store().counters();
    for (counter, value) in [
        (&metrics.money_db_statements, &money.statements),
        (&metrics.money_db_transactions, &money.transactions),
        (&metrics.settlement_batches, &money.batches),
        (&metrics.settlements, &money.settlements),
        (&metrics.sqlite_checkpoints, &money.checkpoints),
        (
            &metrics.sqlite_background_checkpoints,
            &money.background_checkpoints,
        ),
        (&metrics.sqlite_wal_flushes, &money.wal_flushes),
    ] {
        Metrics::sync_counter(counter, value.load(std::sync::atomic::Ordering::Relaxed));
    }
    for (counter, micros) in [
        (
            &metrics.sqlite_checkpoint_seconds,
            &money.checkpoint_microseconds,
        ),
        (
            &metrics.sqlite_background_checkpoint_seconds,
            &money.background_checkpoint_microseconds,
        ),
    ] {
        Metrics::sync_seconds(counter, micros.load(std::sync::atomic::Ordering::Relaxed));
    }
    metrics
        .queue_depth
        .set(i64::try_from(app.sandbox.queue_depth()).unwrap_or(i64::MAX));
    metrics
        .runs_in_flight
        .set(i64::try_from(app.sandbox.runs_in_flight()).unwrap_or(i64::MAX));
    metrics
        .queue_capacity
        .set(i64::try_from(app.config.sandbox.queue_depth).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// `GET /v1/admin/ledger/verify`: recomputes the hash chain (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/ledger/verify",
    tag = "admin",
    responses(
        (status = 200, description = "Whether the ledger's hash chain is intact.", body = ChainReport),
        (status = 403, description = "`forbidden`: admins only (or `insufficient_scope`).", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn verify_ledger(
    State(app): State<App>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    if !caller.is_admin {
        return Err(ApiError::new(Code::Forbidden, "admins only"));
    }
    Ok(axum::Json(match money::verify_chain(&app.db).await? {
        ChainCheck::Intact { entries } => json!({"intact": true, "entries": entries}),
        ChainCheck::Broken { seq, reason } => {
            json!({"intact": false, "first_bad_seq": seq, "reason": reason})
        }
    }))
}
