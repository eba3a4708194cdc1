//! Every route, in one place.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::{
    billing, budgets, cast, casts, hygiene, idempotency, keys, ledger, middleware, oauth, ops,
    signers, spells, users,
};
use crate::App;
use crate::auth::KeyScope;
use crate::supply_chain::bundle::BUNDLE_BYTES_MAX;
use crate::supply_chain::{MODULE_BYTES_MAX, SBOM_BYTES_MAX};

/// A body limit for one route: requests whose Content-Length is over it are answered 413
/// before their body is read; streamed bodies are cut off at the limit.
fn limited(route: MethodRouter<App>, bytes_max: usize) -> MethodRouter<App> {
    route
        .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(bytes_max))
        .layer::<_, std::convert::Infallible>(tower_http::limit::RequestBodyLimitLayer::new(
            bytes_max,
        ))
}

/// An authenticated route: the caller's key must have `scope`. Every route that takes a
/// `Caller` goes through here; the extractor refuses to serve one that does not.
/// Its responses are never stored by caches (`Cache-Control: no-store`).
fn scoped(route: MethodRouter<App>, app: &App, scope: KeyScope) -> MethodRouter<App> {
    route
        .route_layer(axum::middleware::from_fn_with_state(
            (app.clone(), scope),
            middleware::authorize,
        ))
        .route_layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ))
}

/// A route that honours `Idempotency-Key` (inside the scope layer, which authenticates).
fn idempotent(route: MethodRouter<App>, app: &App) -> MethodRouter<App> {
    route.route_layer(axum::middleware::from_fn_with_state(
        app.clone(),
        idempotency::idempotent,
    ))
}

/// Stripe events are a few KiB; 1 MiB bounds what an unauthenticated caller can send.
const WEBHOOK_BYTES_MAX: usize = 1024 * 1024;

/// Room for JSON framing and base64 (4/3) around the largest input.
fn cast_body_bytes_max(app: &App) -> usize {
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

pub fn router(app: App) -> Router {
    let publish_bytes_max = MODULE_BYTES_MAX
        + SBOM_BYTES_MAX
        + BUNDLE_BYTES_MAX
        + crate::supply_chain::bundle::ATTESTATION_BYTES_MAX
        + 256 * 1024;
    use KeyScope::{Cast, Manage, Publish, Read};
    let a = &app;
    let router = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route(
            "/v1/users/me",
            scoped(get(users::me), a, Read).merge(scoped(delete(users::delete), a, Manage)),
        )
        .route("/v1/users/me/export", scoped(get(users::export), a, Manage))
        .route(
            "/v1/keys",
            scoped(idempotent(post(keys::create), a).get(keys::list), a, Manage),
        )
        .route("/v1/keys/{prefix}", scoped(delete(keys::delete), a, Manage))
        .route(
            "/v1/signers",
            scoped(post(signers::create).get(signers::list), a, Manage),
        )
        .route(
            "/v1/signers/{id}",
            scoped(delete(signers::remove), a, Manage),
        )
        .route(
            "/v1/spells",
            limited(
                scoped(idempotent(post(spells::publish), a), a, Publish),
                publish_bytes_max,
            )
            .merge(scoped(get(spells::catalog), a, Read)),
        )
        .route(
            "/v1/spells/{owner}/{name}",
            scoped(get(spells::versions), a, Read),
        )
        .route(
            "/v1/spells/{owner}/{name}/versions/{version}/yank",
            scoped(post(spells::yank), a, Publish),
        )
        .route(
            "/v1/cast",
            limited(
                scoped(idempotent(post(cast::cast), a), a, Cast),
                cast_body_bytes_max(a),
            ),
        )
        .route("/v1/casts/{cast_id}", scoped(get(casts::show), a, Read))
        .route("/v1/ledger", scoped(get(ledger::list), a, Read))
        .route(
            "/v1/budgets",
            scoped(
                get(budgets::list)
                    .post(budgets::create)
                    .put(budgets::update_by_scope)
                    .delete(budgets::delete_by_scope),
                a,
                Manage,
            ),
        )
        .route("/v1/budgets/usage", scoped(get(budgets::usage), a, Read))
        .route(
            "/v1/budgets/{id}",
            scoped(put(budgets::update).delete(budgets::delete), a, Manage),
        )
        .route(
            "/v1/admin/ledger/verify",
            scoped(get(ops::verify_ledger), a, Manage),
        )
        .route(
            "/v1/billing/checkout",
            scoped(idempotent(post(billing::checkout), a), a, Manage),
        )
        .route(
            "/v1/billing/portal",
            scoped(post(billing::portal), a, Manage),
        )
        .route("/v1/billing", scoped(get(billing::show), a, Manage))
        .route(
            "/v1/billing/auto-recharge",
            scoped(put(billing::auto_recharge), a, Manage),
        )
        .route(
            "/v1/billing/payment-method",
            scoped(post(billing::payment_method), a, Manage),
        )
        .route("/auth/github", get(oauth::start))
        .route("/auth/callback", get(oauth::callback))
        .route(
            "/v1/sessions/current",
            scoped(delete(oauth::logout), a, Manage),
        )
        .route(
            "/webhooks/stripe",
            limited(post(billing::webhook), WEBHOOK_BYTES_MAX),
        )
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
