//! Extractors that turn request parts into domain values or the one error shape.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;

use crate::App;
use crate::auth::{AuthError, Caller};
use crate::error::ApiError;

/// JSON bodies; a bad body is a `bad_request` in the one error shape.
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(ApiError::new(
                crate::error::Code::for_status(rejection.status()),
                rejection.body_text(),
            )),
        }
    }
}

/// The caller, as authenticated and authorized by the route's scope layer
/// ([`super::middleware::authorize`]). A route without one is a bug in `router.rs`, answered
/// as an internal error rather than served unchecked.
impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _app: &App) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("route has no scope layer")))
    }
}

/// Authenticates an `Authorization` header, mapping failures to the one error shape.
/// `gate` is asked before any work a key not verified recently would cost (see
/// [`crate::auth::Authenticator::authenticate`]); its refusal is `AuthError::Throttled`, which
/// the caller answers.
pub async fn authenticate(
    app: &App,
    parts: &Parts,
    gate: impl FnOnce() -> Result<(), AuthError>,
) -> Result<Caller, AuthError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    // A browser's session cookie, when there is no Authorization header.
    if let Some(token) = super::oauth::session_cookie(&parts.headers) {
        return app.auth.authenticate_session(token, gate).await;
    }
    app.auth.authenticate(header, gate).await
}

/// The one error shape for an authentication failure other than `Throttled`.
pub fn auth_failure(error: AuthError) -> ApiError {
    match error {
        AuthError::Database(error) => ApiError::internal(error),
        AuthError::Busy => ApiError::new(
            crate::error::Code::Overloaded,
            "too many new keys are being checked; retry shortly",
        )
        .retry_after(1),
        AuthError::KeyBusy => ApiError::new(
            crate::error::Code::RateLimited,
            "too many requests are checking secrets for this key id at once; retry shortly",
        )
        .with("limit", "key_verification")
        .retry_after(1),
        _ => ApiError::unauthorized(),
    }
}
