use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::{self, Caller, User};
use crate::billing::{self, AutoRecharge, Billing, ReceiveError};
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

#[derive(Deserialize, utoipa::ToSchema)]
pub struct TopUp {
    amount_usd_cents: i64,
    /// Keep the card for automatic recharges.
    #[serde(default)]
    save_payment_method: bool,
}

/// `POST /v1/billing/portal`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct Portal {
    /// Stripe's customer portal, for this customer.
    url: String,
}

/// `POST /webhooks/stripe`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct Received {
    received: bool,
    /// What applying the event did (`credited`, `duplicate`, `ignored`, …).
    result: String,
}

/// `POST /v1/billing/checkout`
#[utoipa::path(
    post,
    path = "/v1/billing/checkout",
    tag = "billing",
    request_body = TopUp,
    responses(
        (status = 201, description = "A Stripe Checkout session for the top-up: send the person to `checkout_url`.", body = crate::billing::Checkout),
        (status = 422, description = "`amount_out_of_range` (with `min_cents` and `max_cents`), or `idempotency_key_reused`.", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "`payment_provider_error`: Stripe could not be reached; try again.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`billing_disabled`: billing is not configured on this server.", body = crate::http::openapi::ErrorBody),
    ),
)]
/// `POST /v1/billing/checkout {"amount_usd_cents":500,"save_payment_method":false}` → 201
/// `{"checkout_url","session_id"}`.
pub async fn checkout(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<TopUp>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let billing = enabled(&app)?;
    let user = current_user(&app, &caller).await?;
    let checkout = billing
        .checkout(
            &app.db,
            &user,
            body.amount_usd_cents,
            body.save_payment_method,
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(checkout))))
}

/// `POST /v1/billing/payment-method` → 201 `{"checkout_url","session_id"}`: a Checkout in setup
/// mode that saves a card for automatic recharges.
#[utoipa::path(
    post,
    path = "/v1/billing/payment-method",
    tag = "billing",
    responses(
        (status = 201, description = "A Checkout in setup mode that saves a card.", body = crate::billing::Checkout),
        (status = 502, description = "`payment_provider_error`: Stripe could not be reached; try again.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`billing_disabled`: billing is not configured on this server.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn payment_method(
    State(app): State<App>,
    caller: Caller,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let billing = enabled(&app)?;
    let user = current_user(&app, &caller).await?;
    let checkout = billing.save_payment_method(&app.db, &user).await?;
    Ok((StatusCode::CREATED, axum::Json(json!(checkout))))
}

/// `POST /v1/billing/portal` → 201 `{"url"}`.
#[utoipa::path(
    post,
    path = "/v1/billing/portal",
    tag = "billing",
    responses(
        (status = 201, description = "A customer-portal session.", body = Portal),
        (status = 409, description = "`no_billing_account`: the caller never paid through Stripe.", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "`payment_provider_error`: Stripe could not be reached; try again.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`billing_disabled`: billing is not configured on this server.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn portal(
    State(app): State<App>,
    caller: Caller,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let billing = enabled(&app)?;
    let user = current_user(&app, &caller).await?;
    let url = billing.portal(&user).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "url": url }))))
}

/// `GET /v1/billing`: balance, auto-recharge settings and state, the saved card, last top-ups.
#[utoipa::path(
    get,
    path = "/v1/billing",
    tag = "billing",
    responses(
        (status = 200, description = "Balance, auto-recharge, the saved card, last top-ups.", body = crate::billing::BillingView),
        (status = 404, description = "`billing_disabled`: billing is not configured on this server.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn show(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    enabled(&app)?;
    let view = billing::view(&app.db, caller.user_id).await?;
    Ok(axum::Json(json!(view)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AutoRechargeBody {
    enabled: bool,
    threshold_microusd: Option<i64>,
    amount_usd_cents: Option<i64>,
    max_per_day: Option<i64>,
}

/// `PUT /v1/billing/auto-recharge {"enabled","threshold_microusd","amount_usd_cents",
/// "max_per_day"}` → 200 with the same view as `GET /v1/billing`.
#[utoipa::path(
    put,
    path = "/v1/billing/auto-recharge",
    tag = "billing",
    request_body = AutoRechargeBody,
    responses(
        (status = 200, description = "Saved; the same view as `GET /v1/billing`.", body = crate::billing::BillingView),
        (status = 409, description = "`no_payment_method`: enabling needs a saved card.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_auto_recharge`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`billing_disabled`: billing is not configured on this server.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn auto_recharge(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<AutoRechargeBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let billing = enabled(&app)?;
    let settings = AutoRecharge::parse(
        body.enabled,
        body.threshold_microusd,
        body.amount_usd_cents,
        body.max_per_day,
        billing.topup_cents(),
    )?;
    billing::set_auto_recharge(&app.db, caller.user_id, &settings).await?;
    // The balance may already be below the new threshold.
    app.recharger.settled(caller.user_id);
    let view = billing::view(&app.db, caller.user_id).await?;
    Ok(axum::Json(json!(view)))
}

/// `POST /webhooks/stripe`: the signature is checked over the raw body before anything is
/// parsed; the event id is recorded, then the event is applied exactly once. A money event that
/// cannot be read is not recorded and answers 5xx, so Stripe retries it.
#[utoipa::path(
    post,
    path = "/webhooks/stripe",
    tag = "billing",
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature over the raw body.")),
    request_body(content = Object, description = "A Stripe event, as Stripe sends it."),
    responses(
        (status = 200, description = "Recorded and applied (once).", body = Received),
        (status = 400, description = "`signature_invalid`: not signed by Stripe with a configured secret.", body = crate::http::openapi::ErrorBody),
        (status = 500, description = "`event_unparseable` or `event_api_version_unsupported`: a signed money event that cannot be read; not recorded, so Stripe retries it.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`billing_disabled`: billing is not configured on this server.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn webhook(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    let billing = enabled(&app)?;
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let payload =
        billing::verify_signature(&body, header, billing.webhook_secrets()).map_err(|error| {
            app.metrics
                .webhook_events
                .with_label_values(&["unknown", "signature_invalid"])
                .inc();
            ApiError::new(Code::SignatureInvalid, error.to_string())
        })?;
    let received = billing::receive(&app.db, &billing.rules(), payload)
        .await
        .map_err(|error| refused(&app, error))?;
    observe(&app, &received);
    Ok(axum::Json(
        json!({ "received": true, "result": received.outcome.as_str() }),
    ))
}

fn observe(app: &App, received: &billing::Received) {
    let outcome = received.outcome.as_str();
    app.metrics
        .webhook_events
        .with_label_values(&[received.type_.as_str(), outcome])
        .inc();
    app.metrics
        .billing_alerts
        .with_label_values(&["rejected"])
        .inc_by(u64::from(received.rejected));
    tracing::info!(stripe.event = %received.id, stripe.event_type = %received.type_, stripe.result = outcome, "stripe webhook");
}

fn refused(app: &App, error: ReceiveError) -> ApiError {
    match error {
        ReceiveError::Unreadable(error) => {
            app.metrics
                .billing_alerts
                .with_label_values(&[error.label()])
                .inc();
            app.metrics
                .webhook_events
                .with_label_values(&["unknown", error.label()])
                .inc();
            tracing::error!(error = %error, "a signed stripe event was refused; Stripe will retry it");
            error.into()
        }
        ReceiveError::Billing(error) => error.into(),
    }
}
