//! Request middleware: trace ids, metrics and logging, and the one error shape for responses
//! that did not come from our handlers (unknown routes, wrong methods, body limits).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::client_ip::ClientIp;
use super::rate_limit;
use crate::App;
use crate::auth::{AuthError, KeyScope};
use crate::error::{ApiError, Code, TRACE_ID};

/// Gives every request a trace id (in responses as `x-trace-id` and in every error body),
/// and records its route, status and latency.
pub async fn observe(State(app): State<App>, request: Request, next: Next) -> Response {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let mut response = TRACE_ID
        .scope(trace_id.clone(), async move {
            normalize_errors(next.run(request).await)
        })
        .await;
    let status = response.status();
    let elapsed = started.elapsed();
    app.metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    app.metrics
        .http_duration
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&trace_id) {
        response.headers_mut().insert("x-trace-id", value);
    }
    // Not on a refused key: its time says nothing the caller may use, and a precise one
    // would only help guess keys.
    if status != axum::http::StatusCode::UNAUTHORIZED
        && let Some(timing) = server_timing(&[("total", elapsed)])
    {
        response.headers_mut().append(SERVER_TIMING, timing);
    }
    if status.is_server_error() {
        tracing::warn!(trace_id, http.route = %route, http.status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(trace_id, http.route = %route, http.status = status.as_u16(),
            http.duration_us = elapsed.as_micros() as u64, "request");
    }
    response
}

/// W3C Server Timing: every response (but a `401`) tells the client how long the server took
/// on it (`total`, from the request's arrival in the router to its answer), and a cast's answer also
/// where that time went (`prepare`, `queue`, `dispatch`, `run`, `settle`; see
/// `cast::Timing`), so a client can tell a slow spell from a slow server.
pub const SERVER_TIMING: header::HeaderName = header::HeaderName::from_static("server-timing");

/// A `Server-Timing` value: `name;dur=ms` per entry, in milliseconds with µs precision.
pub fn server_timing(entries: &[(&str, Duration)]) -> Option<HeaderValue> {
    let mut value = String::with_capacity(24 * entries.len());
    for (name, duration) in entries {
        let separator = if value.is_empty() { "" } else { ", " };
        let _ = write!(
            value,
            "{separator}{name};dur={:.3}",
            duration.as_secs_f64() * 1000.0
        );
    }
    // Names are ours (tokens) and numbers are digits: always a valid header value.
    HeaderValue::from_str(&value).ok()
}

/// Rewrites error responses that are not already JSON (axum's own rejections, 404 and 405
/// fallbacks, body-limit refusals) into the one error shape.
fn normalize_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = Code::for_status(status);
    let message = match code {
        Code::NotFound => "no such route".to_owned(),
        Code::MethodNotAllowed => "method not allowed on this route".to_owned(),
        Code::PayloadTooLarge => "request body too large".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let mut rewritten = ApiError::new(code, message).into_response();
    *rewritten.status_mut() = status;
    // Everything but the body's own headers (Allow, Retry-After, RateLimit-*, CORS, …).
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().append(name, value.clone());
        }
    }
    rewritten
}

/// The body for routes that match nothing.
pub async fn not_found() -> Response {
    ApiError::new(Code::NotFound, "no such route").into_response()
}

/// The response for a handler that panicked (logged with the trace id, never shown).
pub fn panicked(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

/// The route layer of every authenticated route: authenticates the caller, counts the
/// request against their key's rate limit (or, before the key is verified, their address's),
/// checks that their key has the route's scope, and hands the `Caller` to the handler through
/// the request's extensions. Scopes are declared per route in `router.rs`, in one place.
pub async fn authorize(
    State((app, scope)): State<(App, KeyScope)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let ip = parts
        .extensions
        .get::<ClientIp>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |ip| ip.0);
    let mut address = None;
    let gate = || {
        let decision = app.rate_limits.check_address(ip);
        address = decision;
        match decision {
            Some(decision) if !decision.allowed() => Err(AuthError::Throttled),
            _ => Ok(()),
        }
    };
    let authenticated = super::extract::authenticate(&app, &parts, gate).await;
    // Cookies ride along on cross-site requests: those that change state need proof of origin.
    let cross_site = !parts.method.is_safe()
        && super::oauth::session_cookie(&parts.headers).is_some()
        && !super::oauth::is_same_origin(&parts.headers, &app.config.public_url);
    let (mut response, limit) = match authenticated {
        Err(AuthError::Throttled) => match address {
            Some(decision) => (decision.refusal(&app), None),
            None => (ApiError::unauthorized().into_response(), None),
        },
        Err(error) => (super::extract::auth_failure(error).into_response(), address),
        Ok(caller) => match app.rate_limits.check_key(&caller.key_id) {
            Some(decision) if !decision.allowed() => (decision.refusal(&app), None),
            decision => {
                let response = if cross_site {
                    super::oauth::csrf_refusal().into_response()
                } else if caller.scopes.contains(scope) {
                    parts.extensions.insert(caller);
                    next.run(Request::from_parts(parts, body)).await
                } else {
                    ApiError::new(
                        Code::InsufficientScope,
                        format!("this API key lacks the {} scope", scope.as_str()),
                    )
                    .with("required_scope", scope.as_str())
                    .into_response()
                };
                (response, decision)
            }
        },
    };
    if let Some(decision) = limit {
        decision.apply(response.headers_mut());
    }
    response.extensions_mut().insert(rate_limit::Handled);
    response
}
