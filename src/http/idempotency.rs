//! The `Idempotency-Key` layer of `POST /v1/cast`, `/v1/billing/checkout`, `/v1/spells` and
//! `/v1/keys` (`crate::idempotency` has the semantics). A request without the header passes
//! straight through: it costs nothing, and no database access.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::idempotency::{
    IdempotencyError, IdempotencyKey, KEY_HEADER, REPLAYED_HEADER, RequestFingerprint, Reservation,
    Reserved,
};

/// Set on a response whose answer was already stored with the cast's settlement.
#[derive(Clone, Copy)]
pub struct StoredWithSettlement;

impl From<IdempotencyError> for ApiError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::InvalidKey => {
                ApiError::new(Code::IdempotencyKeyInvalid, error.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

/// The route layer (inside the scope layer, which put the `Caller` in the extensions).
pub async fn idempotent(State(app): State<App>, request: Request, next: Next) -> Response {
    let Some(header) = request.headers().get(KEY_HEADER) else {
        return next.run(request).await;
    };
    let key = match header
        .to_str()
        .map_err(|_| IdempotencyError::InvalidKey)
        .and_then(IdempotencyKey::parse)
    {
        Ok(key) => key,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return ApiError::internal(anyhow::anyhow!("an idempotent route has no scope layer"))
            .into_response();
    };
    let (mut parts, body) = request.into_parts();
    // The body, within the route's limit (its `DefaultBodyLimit` travels in the extensions).
    let mut probe = Request::new(body);
    *probe.extensions_mut() = parts.extensions.clone();
    let body = match Bytes::from_request(probe, &()).await {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::new(Code::for_status(rejection.status()), rejection.body_text())
                .into_response();
        }
    };
    let route = format!("{} {}", parts.method, parts.uri.path());
    let fingerprint = RequestFingerprint {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        body: &body,
    };
    let reserved = app
        .idempotency
        .reserve(caller.user_id, &key, &route, &fingerprint)
        .await;
    let outcome = match &reserved {
        Ok(Reserved::Run(_)) => "run",
        Ok(Reserved::Replay { .. }) => "replayed",
        Ok(Reserved::InUse) => "in_use",
        Ok(Reserved::Reused) => "reused",
        Err(_) => "error",
    };
    app.metrics
        .idempotent_requests
        .with_label_values(&[outcome])
        .inc();
    match reserved {
        Err(error) => ApiError::from(error).into_response(),
        Ok(Reserved::Replay { status, body }) => replay(status, body),
        Ok(Reserved::InUse) => ApiError::new(
            Code::IdempotencyKeyInUse,
            "a request with this Idempotency-Key is still running; retry when it has finished",
        )
        .retry_after(1)
        .into_response(),
        Ok(Reserved::Reused) => ApiError::new(
            Code::IdempotencyKeyReused,
            "this Idempotency-Key was used for a different request (method, path or body); \
             use a new key for a new request",
        )
        .into_response(),
        Ok(Reserved::Run(reservation)) => {
            let reservation = Arc::new(reservation);
            parts.extensions.insert(reservation.clone());
            let request = Request::from_parts(parts, Body::from(body));
            // The request runs to its end, and its answer is stored or its key released, even
            // if the client goes away: a retry must find one or the other, never a lock held
            // until it expires.
            let trace_id = crate::error::trace_id();
            let task = app.casts_in_flight.spawn({
                let app = app.clone();
                crate::error::TRACE_ID.scope(trace_id, async move {
                    let response = next.run(request).await;
                    finish(&app, &reservation, response).await
                })
            });
            task.await.unwrap_or_else(|error| {
                // A panic: `finish` never ran. The key stays locked until it expires.
                ApiError::internal(anyhow::anyhow!("an idempotent request failed: {error}"))
                    .into_response()
            })
        }
    }
}

/// Stores what a request that took effect answered, or releases the key of one that did not.
///
/// Stored: successes (2xx) and casts that ran and were charged (their 422 spell outcomes
/// too; stored with the settlement). Released: everything refused before it took effect —
/// validation, 402, 404, 409, 429, 503, 5xx — so that a retry with the same key runs afresh.
async fn finish(app: &App, reservation: &Reservation, response: Response) -> Response {
    if response
        .extensions()
        .get::<StoredWithSettlement>()
        .is_some()
    {
        return response;
    }
    if !response.status().is_success() {
        if let Err(error) = app.idempotency.release(reservation).await {
            tracing::warn!(error = %error, "releasing an idempotency key failed; it expires");
        }
        return response;
    }
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => return ApiError::internal(error).into_response(),
    };
    match app
        .idempotency
        .complete(reservation, parts.status.as_u16(), &body)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!("an idempotent request outlived its reservation"),
        Err(error) => {
            tracing::warn!(error = %error, "storing an idempotent answer failed; the key expires");
        }
    }
    Response::from_parts(parts, Body::from(body))
}

fn replay(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}
