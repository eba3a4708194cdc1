//! Requests to Stripe whose answers are read as plain JSON, through the SDK's client (its
//! authentication, `Stripe-Version`, idempotency keys and timeouts) but not its typing:
//! events are rendered in the API version of the account when they were created, which may be
//! one the SDK cannot type.

use serde::Serialize;
use serde_json::Value;
use stripe::{IdempotencyKey, RequestStrategy, StripeError};
use stripe_client_core::{RequestBuilder, StripeMethod};

/// `GET /v1{path}?{query}`, or without a query.
pub async fn get(
    client: &stripe::Client,
    path: &str,
    query: Option<&impl Serialize>,
) -> Result<Value, StripeError> {
    let mut request = RequestBuilder::new(StripeMethod::Get, path);
    if let Some(query) = query {
        request = request.query(query);
    }
    send(client, request, RequestStrategy::Once).await
}

/// `POST /v1{path}` with a form body and an `Idempotency-Key`: sending it again with the same
/// key returns what the first request did (for 24 hours) instead of doing it twice.
pub async fn post_idempotent(
    client: &stripe::Client,
    path: &str,
    form: &impl Serialize,
    idempotency_key: &str,
) -> Result<Value, StripeError> {
    let key = IdempotencyKey::new(idempotency_key)
        .map_err(|e| StripeError::ClientError(e.to_string()))?;
    let request = RequestBuilder::new(StripeMethod::Post, path).form(form);
    send(client, request, RequestStrategy::Idempotent(key)).await
}

async fn send(
    client: &stripe::Client,
    request: RequestBuilder,
    strategy: RequestStrategy,
) -> Result<Value, StripeError> {
    let value: miniserde::json::Value = request
        .customize()
        .request_strategy(strategy)
        .send(client)
        .await?;
    serde_json::from_str(&miniserde::json::to_string(&value))
        .map_err(|e| StripeError::JSONDeserialize(e.to_string()))
}
