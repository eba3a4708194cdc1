//! `GET /v1/casts/{cast_id}`: a settled cast's record and output, for its caster.

use axum::extract::{Path, State};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::money::records::{self, CastView, OutputState};
use crate::store::rfc3339;

/// A settled cast as `GET /v1/casts/{cast_id}` shows it (see `render`).
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built by `render`")]
pub struct CastRecord {
    cast_id: String,
    /// `owner/name`.
    spell: String,
    version: String,
    digest: String,
    outcome: String,
    fuel_used: u64,
    wall_ms: u64,
    duration_us: u64,
    blocked_ms: u64,
    cost_microusd: i64,
    cost: crate::http::cast::CostBreakdown,
    /// RFC 3339.
    created_at: String,
    output_bytes: Option<u64>,
    /// `kept`, `expired`, `not_kept` or `none`.
    output_status: String,
    /// The output, when kept and JSON.
    output: Option<Value>,
    /// The output as base64, when kept and not JSON.
    output_base64: Option<String>,
    /// When a kept output goes (RFC 3339).
    output_expires_at: Option<String>,
    /// When an expired output went (RFC 3339).
    output_expired_at: Option<String>,
}

/// The caster's own cast; any other answers 404, as an unknown id does.
#[utoipa::path(
    get,
    path = "/v1/casts/{cast_id}",
    tag = "cast",
    params(("cast_id" = String, Path, description = "The `cast_id` of a cast's answer.")),
    responses(
        (status = 200, description = "The record, and the output while it is kept.", body = CastRecord),
        (status = 404, description = "`not_found`: no cast of the caller's with this id.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    Path(cast_id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let view = records::cast_record(&app.db, caller.user_id, &cast_id)
        .await?
        .ok_or_else(|| ApiError::new(Code::NotFound, format!("no cast {cast_id:?} of yours")))?;
    Ok(axum::Json(render(view)))
}

/// The record as the cast's own answer showed it, plus what became of the output:
/// `output_status` is `kept` (with `output` or `output_base64`, as the cast answered, and
/// `output_expires_at`), `expired` (with `output_expired_at`), `not_kept` (larger than the
/// server keeps, or none was kept then) or `none` (the run failed: it has no output).
fn render(view: CastView) -> Value {
    let mut body = json!({
        "cast_id": view.cast_id,
        "spell": view.spell,
        "version": view.version,
        "digest": format!("sha256:{}", view.digest),
        "outcome": view.outcome,
        "fuel_used": view.fuel_used,
        "wall_ms": (view.duration_us + 999) / 1000,
        "duration_us": view.duration_us,
        "blocked_ms": view.blocked_ms,
        "cost_microusd": view.cost.get(),
        "cost": {
            "base_microusd": view.breakdown.base.get(),
            "fuel_microusd": view.breakdown.fuel.get(),
            "wall_microusd": view.breakdown.wall.get(),
        },
        "created_at": rfc3339(view.created_at_ms),
        "output_bytes": view.output_bytes,
    });
    let Some(fields) = body.as_object_mut() else {
        return body;
    };
    let status = match view.output {
        OutputState::Kept {
            output,
            expires_at_ms,
        } => {
            match serde_json::from_slice::<Value>(&output) {
                Ok(output) => fields.insert("output".into(), output),
                Err(_) => fields.insert(
                    "output_base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&output)
                        .into(),
                ),
            };
            fields.insert("output_expires_at".into(), rfc3339(expires_at_ms).into());
            "kept"
        }
        OutputState::Expired { expired_at_ms } => {
            fields.insert("output_expired_at".into(), rfc3339(expired_at_ms).into());
            "expired"
        }
        OutputState::NotKept => "not_kept",
        OutputState::None => "none",
    };
    fields.insert("output_status".into(), status.into());
    body
}
