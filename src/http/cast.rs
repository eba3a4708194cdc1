use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::extract::Json;
use crate::App;
use crate::auth::Caller;
use crate::cast::{self, CastError, CastRequest, CastResult};
use crate::error::{ApiError, Code};
use crate::registry::SpellRef;
use crate::sandbox::Outcome;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CastBody {
    spell: String,
    input: Option<Value>,
    input_base64: Option<String>,
    max_fuel: Option<u64>,
}

/// `POST /v1/cast`
pub async fn cast(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<CastBody>,
) -> Result<Response, ApiError> {
    let request = parse(body)?;
    // The cast runs to its settlement even if the client goes away: it is tracked so that a
    // graceful shutdown waits for it, and nothing that ran goes uncharged.
    let task = {
        let app = app.clone();
        app.casts_in_flight
            .clone()
            .spawn(async move { cast::cast(&app, &caller, request).await })
    };
    let result = task.await.map_err(ApiError::internal)?;
    match result {
        Ok(result) => Ok(respond(&app, result)),
        Err(error) => Err(cast_error(&app, error)),
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
    Ok(CastRequest {
        spell,
        input,
        max_fuel: body.max_fuel,
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
    fields.insert("cost_microusd".into(), result.cost.get().into());
    fields.insert("balance_microusd".into(), result.balance_after.get().into());
    fields.insert(
        "duration_us".into(),
        u64::try_from(result.report.duration.as_micros())
            .unwrap_or(u64::MAX)
            .into(),
    );
    fields
}

fn respond(app: &App, result: CastResult) -> Response {
    let mut fields = charge_fields(&result);
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
            return axum::Json(Value::Object(fields)).into_response();
        }
        Outcome::OutOfFuel if cast::budget_ran_out(&result) => {
            let mut error = budget_exhausted(
                app,
                "the balance ran out during the cast; the fuel burned was charged",
            );
            error.extra.extend(fields);
            return error.into_response();
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
    error.into_response()
}

fn budget_exhausted(app: &App, message: &str) -> ApiError {
    let topup_url = app
        .config
        .billing
        .as_ref()
        .map(|_| format!("{}/v1/billing/checkout", app.config.public_url));
    ApiError::new(Code::BudgetExhausted, message).with("topup_url", topup_url)
}

fn cast_error(app: &App, error: CastError) -> ApiError {
    match error {
        CastError::Registry(error) => error.into(),
        CastError::BudgetExhausted {
            required,
            available,
        } => budget_exhausted(
            app,
            "the available balance cannot pay for this cast; nothing ran",
        )
        .with("required_microusd", required.get())
        .with("available_microusd", available.get()),
        CastError::Overloaded => ApiError::new(
            Code::Overloaded,
            "all sandbox workers are busy; retry shortly",
        )
        .retry_after(1),
        CastError::Sandbox(crate::sandbox::SandboxError::InputTooLarge { actual, limit }) => {
            ApiError::new(
                Code::PayloadTooLarge,
                format!("input is {actual} bytes; the limit is {limit}"),
            )
        }
        CastError::Sandbox(error) => ApiError::internal(error),
        CastError::Money(error) => error.into(),
    }
}
