use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::{self, Caller, User};
use crate::billing::{self, Billing};
use crate::error::{ApiError, Code};

fn enabled(app: &App) -> Result<&Billing, ApiError> {
    app.billing.as_ref().ok_or_else(|| {
        ApiError::new(
            Code::BillingDisabled,
            "billing is not configured on this server",
        )
    })
}

async fn current_user(app: &App, caller: &Caller) -> Result<User, ApiError> {
    auth::user_by_id(&app.db, caller.user_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(ApiError::unauthorized)
}

#[derive(Deserialize)]
pub struct TopUp {
    amount_usd_cents: i64,
}

/// `POST /v1/billing/checkout {"amount_usd_cents":500}` → 201 `{"checkout_url","session_id"}`.
pub async fn checkout(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<TopUp>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let billing = enabled(&app)?;
    let user = current_user(&app, &caller).await?;
    let checkout = billing
        .checkout(&app.db, &user, body.amount_usd_cents)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(checkout))))
}

/// `POST /v1/billing/portal` → 201 `{"url"}`.
pub async fn portal(
    State(app): State<App>,
    caller: Caller,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let billing = enabled(&app)?;
    let user = current_user(&app, &caller).await?;
    let url = billing.portal(&user).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "url": url }))))
}

/// `POST /webhooks/stripe`: the signature is checked over the raw body before anything is
/// parsed; the event id is recorded, then the event is applied exactly once.
pub async fn webhook(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let billing = enabled(&app)?;
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let verified =
        billing::verify_signature(&body, header, billing.webhook_secrets()).map_err(|error| {
            app.metrics
                .webhook_events
                .with_label_values(&["unknown", "signature_invalid"])
                .inc();
            ApiError::new(Code::SignatureInvalid, error.to_string())
        })?;
    let type_ = match &verified {
        billing::Verified::Event(event) => event.type_.as_str().to_owned(),
        billing::Verified::Untyped { type_, .. } => type_.clone(),
    };
    let payload = String::from_utf8_lossy(&body);
    let outcome = billing::apply_event(&app.db, verified, &payload).await?;
    app.metrics
        .webhook_events
        .with_label_values(&[type_.as_str(), outcome.as_str()])
        .inc();
    tracing::info!(stripe.event_type = %type_, stripe.result = outcome.as_str(), "stripe webhook");
    Ok(axum::Json(
        json!({ "received": true, "result": outcome.as_str() }),
    ))
}
