//! Every route, in one place.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, post, put};

use super::{billing, cast, keys, ledger, middleware, ops, signers, spells, users};
use crate::App;
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

/// Stripe events are a few KiB; 1 MiB bounds what an unauthenticated caller can send.
const WEBHOOK_BYTES_MAX: usize = 1024 * 1024;

/// Room for JSON framing and base64 (4/3) around the largest input.
fn cast_body_bytes_max(app: &App) -> usize {
    let input = usize::try_from(app.config.sandbox.limits.input_bytes_max).unwrap_or(usize::MAX);
    input.saturating_mul(4) / 3 + 64 * 1024
}

pub fn router(app: App) -> Router {
    let publish_bytes_max = MODULE_BYTES_MAX + SBOM_BYTES_MAX + 256 * 1024;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/users/me", get(users::me))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{prefix}", delete(keys::delete))
        .route("/v1/signers", post(signers::create).get(signers::list))
        .route(
            "/v1/spells",
            limited(post(spells::publish), publish_bytes_max),
        )
        .route("/v1/spells/{owner}/{name}", get(spells::versions))
        .route(
            "/v1/cast",
            limited(post(cast::cast), cast_body_bytes_max(&app)),
        )
        .route("/v1/ledger", get(ledger::list))
        .route("/v1/admin/ledger/verify", get(ops::verify_ledger))
        .route("/v1/billing", get(billing::show))
        .route("/v1/billing/auto-recharge", put(billing::auto_recharge))
        .route("/v1/billing/payment-method", post(billing::payment_method))
        .route("/v1/billing/checkout", post(billing::checkout))
        .route("/v1/billing/portal", post(billing::portal))
        .route(
            "/webhooks/stripe",
            limited(post(billing::webhook), WEBHOOK_BYTES_MAX),
        )
        .fallback(middleware::not_found)
        // A handler that panics answers the opaque 500 in the one error shape; the connection
        // and the process live on.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panicked,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::observe,
        ))
        .with_state(app)
}
