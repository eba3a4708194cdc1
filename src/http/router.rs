//! Every route, in one place.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::{
    billing, budgets, cast, casts, hygiene, idempotency, keys, ledger, middleware, oauth, openapi,
    ops, signers, spells, users,
};
use crate::App;
use crate::auth::KeyScope;
use crate::supply_chain::bundle::BUNDLE_BYTES_MAX;
use crate::supply_chain::{MODULE_BYTES_MAX, SBOM_BYTES_MAX};

/// A route: its handler with the handler's own OpenAPI description (`#[utoipa::path]`), to
/// which the helpers below add what they decide (layers on the handler, and in the document
/// its security requirement and the errors those layers answer). Without an app (when only
/// the document is wanted) no layer is added.
type Route = UtoipaMethodRouter<App>;

/// A body limit for one route: requests whose Content-Length is over it are answered 413
/// before their body is read; streamed bodies are cut off at the limit.
fn limited((schemas, mut paths, route): Route, bytes_max: usize) -> Route {
    openapi::limited(&mut paths);
    let route = route
        .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(bytes_max))
        .layer::<_, std::convert::Infallible>(tower_http::limit::RequestBodyLimitLayer::new(
            bytes_max,
        ));
    (schemas, paths, route)
}

/// An anonymous route; `rate_limited` as `rate_limit::limit` decides (health, readiness,
/// metrics and Stripe's webhook are exempt).
fn public((schemas, mut paths, route): Route, rate_limited: bool) -> Route {
    openapi::common(&mut paths, rate_limited);
    (schemas, paths, route)
}

/// An authenticated route: the caller's key must have `scope`. Every route that takes a
/// `Caller` goes through here; the extractor refuses to serve one that does not.
/// Its responses are never stored by caches (`Cache-Control: no-store`).
fn scoped((schemas, mut paths, route): Route, app: Option<&App>, scope: KeyScope) -> Route {
    openapi::secured(&mut paths, scope);
    openapi::common(&mut paths, true);
    let Some(app) = app else {
        return (schemas, paths, route);
    };
    let route = route
        .route_layer(axum::middleware::from_fn_with_state(
            (app.clone(), scope),
            middleware::authorize,
        ))
        .route_layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ));
    (schemas, paths, route)
}

/// A route that honours `Idempotency-Key` (inside the scope layer, which authenticates).
fn idempotent((schemas, mut paths, route): Route, app: Option<&App>) -> Route {
    openapi::idempotent(&mut paths);
    let Some(app) = app else {
        return (schemas, paths, route);
    };
    let route = route.route_layer(axum::middleware::from_fn_with_state(
        app.clone(),
        idempotency::idempotent,
    ));
    (schemas, paths, route)
}

/// Stripe events are a few KiB; 1 MiB bounds what an unauthenticated caller can send.
const WEBHOOK_BYTES_MAX: usize = 1024 * 1024;

/// Room for JSON framing and base64 (4/3) around the largest input.
fn cast_body_bytes_max(app: Option<&App>) -> usize {
    let Some(app) = app else { return usize::MAX };
    let input = usize::try_from(app.config.sandbox.limits.input_bytes_max).unwrap_or(usize::MAX);
    input.saturating_mul(4) / 3 + 64 * 1024
}

/// The private metrics listener's only route (`SPELLHOST_METRICS_LISTEN`).
pub fn metrics_router(app: App) -> Router {
    let router = Router::new()
        .route("/metrics", get(ops::private_metrics))
        .fallback(middleware::not_found);
    hygiene::outer(router, &app).with_state(app)
}

/// Every route of the public listener and its description, in one list: `router` serves it,
/// `document` describes it. A new route is one `.routes(…)` line here, with its handler's
/// `#[utoipa::path]`.
fn api(app: Option<&App>) -> OpenApiRouter<App> {
    let publish_bytes_max = MODULE_BYTES_MAX
        + SBOM_BYTES_MAX
        + BUNDLE_BYTES_MAX
        + crate::supply_chain::bundle::ATTESTATION_BYTES_MAX
        + 256 * 1024;
    use KeyScope::{Cast, Manage, Publish, Read};
    let a = app;
    let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(public(routes!(ops::healthz), false))
        .routes(public(routes!(ops::readyz), false))
        .routes(public(routes!(ops::metrics), false))
        .routes(public(routes!(openapi::serve), true))
        .routes(scoped(routes!(users::me), a, Read))
        .routes(scoped(routes!(users::delete), a, Manage))
        .routes(scoped(routes!(users::export), a, Manage))
        .routes(scoped(idempotent(routes!(keys::create), a), a, Manage))
        .routes(scoped(routes!(keys::list), a, Manage))
        .routes(scoped(routes!(keys::delete), a, Manage))
        .routes(scoped(routes!(signers::create), a, Manage))
        .routes(scoped(routes!(signers::list), a, Manage))
        .routes(scoped(routes!(signers::remove), a, Manage))
        .routes(limited(
            scoped(idempotent(routes!(spells::publish), a), a, Publish),
            publish_bytes_max,
        ))
        .routes(scoped(routes!(spells::catalog), a, Read))
        .routes(scoped(routes!(spells::versions), a, Read))
        .routes(scoped(routes!(spells::yank), a, Publish))
        .routes(limited(
            scoped(idempotent(routes!(cast::cast), a), a, Cast),
            cast_body_bytes_max(a),
        ))
        .routes(scoped(routes!(casts::show), a, Read))
        .routes(scoped(routes!(ledger::list), a, Read))
        .routes(scoped(routes!(budgets::list), a, Manage))
        .routes(scoped(routes!(budgets::create), a, Manage))
        .routes(scoped(routes!(budgets::update_by_scope), a, Manage))
        .routes(scoped(routes!(budgets::delete_by_scope), a, Manage))
        .routes(scoped(routes!(budgets::usage), a, Read))
        .routes(scoped(routes!(budgets::update), a, Manage))
        .routes(scoped(routes!(budgets::delete), a, Manage))
        .routes(scoped(routes!(ops::verify_ledger), a, Manage))
        .routes(scoped(idempotent(routes!(billing::checkout), a), a, Manage))
        .routes(scoped(routes!(billing::portal), a, Manage))
        .routes(scoped(routes!(billing::show), a, Manage))
        .routes(scoped(routes!(billing::auto_recharge), a, Manage))
        .routes(scoped(routes!(billing::payment_method), a, Manage))
        .routes(public(routes!(oauth::start), true))
        .routes(public(routes!(oauth::callback), true))
        .routes(scoped(routes!(oauth::logout), a, Manage))
        .routes(limited(
            public(routes!(billing::webhook), false),
            WEBHOOK_BYTES_MAX,
        ));
    openapi::name_operations(api.get_openapi_mut());
    api
}

/// The OpenAPI document of [`router`] (see `openapi.rs`).
pub fn document() -> utoipa::openapi::OpenApi {
    api(None).into_openapi()
}

pub fn router(app: App) -> Router {
    let (router, _document) = api(Some(&app)).split_for_parts();
    let router = router
        .fallback(middleware::not_found)
        // A handler that panics answers the opaque 500 in the one error shape; the connection
        // and the process live on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panicked,
        ));
    // CORS, request-target bound, rate limits, body timeouts; then trace ids and metrics;
    // then the security headers on everything.
    let router = hygiene::inner(router, &app).layer(axum::middleware::from_fn_with_state(
        app.clone(),
        middleware::observe,
    ));
    hygiene::outer(router, &app).with_state(app)
}
