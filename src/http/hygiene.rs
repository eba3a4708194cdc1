//! HTTP hygiene around the router: security headers on every response (errors and 404s
//! included), CORS for configured origins only, request targets of bounded length, and
//! `408` for a body that did not arrive in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::App;
use crate::config::HttpConfig;
use crate::error::{ApiError, Code};

/// The longest request target (path and query) the router reads. Every route's target is
/// short; hyper itself refuses targets over 65 534 bytes before the router sees them (that
/// answer is rewritten into the one error shape in `server.rs`).
pub const URI_BYTES_MAX: usize = 8 * 1024;

/// A JSON API renders nothing and embeds nothing: no source is allowed, no framing.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// A year, without `includeSubDomains`: the operator's other hosts are not ours to pin.
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// The headers every response carries (`Strict-Transport-Security` only when configured).
pub fn security_headers(config: &HttpConfig) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
    ];
    if config.hsts {
        headers.push((
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(STRICT_TRANSPORT_SECURITY),
        ));
    }
    headers
}

/// The layers inside the trace/metrics layer, outermost first: CORS (preflights are
/// answered before they count against a rate limit), the bound on request targets, rate
/// limits (which also resolve the client's address), the body timeout's answer.
pub fn inner(router: Router<App>, app: &App) -> Router<App> {
    let config = &app.config.http;
    let mut router = router
        .layer(axum::middleware::from_fn(body_timed_out))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::rate_limit::limit,
        ))
        .layer(axum::middleware::from_fn(bounded_target));
    if !config.cors_origins.is_empty() {
        router = router
            .layer(cors(config))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(config.cors_origins.clone()),
                refuse_foreign_preflight,
            ));
    }
    router
}

/// The layers outside the trace/metrics layer: the security headers, so that every response
/// carries them, whoever made it.
pub fn outer(router: Router<App>, app: &App) -> Router<App> {
    let mut router = router;
    for (name, value) in security_headers(&app.config.http) {
        router = router.layer(SetResponseHeaderLayer::overriding(name, value));
    }
    router
}

/// Browsers on the configured origins may call the API with a bearer key (no cookies:
/// credentials stay off) and read the headers a client needs.
fn cors(config: &HttpConfig) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(config.cors_origins.clone()))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("x-trace-id"),
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
            HeaderName::from_static("spellhost-budget-warning"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// A preflight from an origin that is not allowed is answered `403` (tower-http's layer
/// would answer `200` without allowing anything, which browsers also refuse, but tells a
/// person reading it nothing).
async fn refuse_foreign_preflight(
    axum::extract::State(origins): axum::extract::State<Arc<Vec<HeaderValue>>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let preflight = request.method() == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight
        && let Some(origin) = headers.get(header::ORIGIN)
        && !origins.contains(origin)
    {
        return ApiError::new(
            Code::Forbidden,
            "this origin may not call the API from a browser (SPELLHOST_CORS_ORIGINS)",
        )
        .into_response();
    }
    next.run(request).await
}

/// `414 uri_too_long` for targets over [`URI_BYTES_MAX`].
async fn bounded_target(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if length > URI_BYTES_MAX {
        return ApiError::new(
            Code::UriTooLong,
            format!("the request target is {length} bytes; at most {URI_BYTES_MAX} are read"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Set by the connection's body wrapper when the request body did not arrive within
/// `SPELLHOST_HTTP_BODY_READ_TIMEOUT_SECS` (see `server.rs`).
#[derive(Debug, Clone, Default)]
pub struct BodyTimedOut(pub Arc<AtomicBool>);

impl BodyTimedOut {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whatever the handler made of a body that timed out (a 400 about an unreadable body), the
/// client hears `408 request_timeout`, and the connection closes.
async fn body_timed_out(request: Request, next: Next) -> Response {
    let flag = request.extensions().get::<BodyTimedOut>().cloned();
    let response = next.run(request).await;
    match flag {
        Some(flag) if flag.is_set() => {
            let mut response = ApiError::new(
                Code::RequestTimeout,
                "the request body did not arrive in time",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => response,
    }
}
