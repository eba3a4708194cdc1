//! spellhost: runs signed WebAssembly spells on demand and bills them by the instruction.
//!
//! Module list and the assembly of the application state; see `docs/ARCHITECTURE.md` for the
//! map and a walk through one cast.

pub mod auth;
pub mod billing;
pub mod cast;
pub mod config;
pub mod error;
pub mod http;
pub mod money;
pub mod registry;
pub mod sandbox;
pub mod store;
pub mod supply_chain;
pub mod telemetry;

use std::sync::Arc;

use anyhow::Context as _;

/// Everything a request handler may need. Built once per process by [`AppState::build`].
pub struct AppState {
    pub config: config::Config,
    pub db: store::Db,
    pub sandbox: Arc<sandbox::Sandbox>,
    pub registry: registry::Registry,
    pub auth: auth::Authenticator,
    pub metrics: telemetry::Metrics,
    /// Stripe, when configured.
    pub billing: Option<billing::Billing>,
    /// Told of every settlement, to recharge balances that fell below a threshold (inert
    /// without billing). Never waits.
    pub recharger: billing::Recharger,
    /// Casts in flight, so a graceful shutdown can wait for them to settle.
    pub casts_in_flight: tokio_util::task::TaskTracker,
}

pub type App = Arc<AppState>;

impl AppState {
    /// Connects and migrates the database, builds the sandbox. `config.secret` must be set
    /// (see [`config::Config::ensure_secret`]).
    pub async fn build(mut config: config::Config) -> anyhow::Result<App> {
        use secrecy::ExposeSecret as _;
        // Artifact and cache keys derive from the secret: an empty one would make them forgeable.
        anyhow::ensure!(
            config.secret.expose_secret().len() >= 32,
            "the server secret is not set (call Config::ensure_secret first)"
        );
        config.sandbox.artifacts = Some((
            config.data_dir.join("artifacts"),
            config.derived_key("precompiled artifacts"),
        ));
        let db = store::Db::connect(&config.database_url, config.database_max_connections).await?;
        db.migrate().await?;
        let sandbox = Arc::new(
            sandbox::Sandbox::new(config.sandbox.clone()).context("starting the sandbox")?,
        );
        let registry = registry::Registry::new(db.clone(), sandbox.clone());
        let auth = auth::Authenticator::new(db.clone(), config.derived_key("verified api keys"));
        let metrics = telemetry::Metrics::new().context("registering metrics")?;
        let billing = billing::Billing::from_config(&config)?;
        let recharger = match &billing {
            Some(_) => billing::Recharger::new(metrics.recharge_notices_dropped.clone()),
            None => billing::Recharger::disabled(),
        };
        Ok(Arc::new(AppState {
            config,
            db,
            sandbox,
            registry,
            auth,
            metrics,
            billing,
            recharger,
            casts_in_flight: tokio_util::task::TaskTracker::new(),
        }))
    }
}

/// How often expired holds are swept. With holds living at most a few seconds past their
/// cast's wall-time limit, money held by a crashed process is available again within
/// (hold TTL + this), well inside a minute.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting, lets requests in
/// flight finish and waits for every cast in flight to settle. Also runs the hold sweeper and
/// (with billing) the recharge worker.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    sweep_once(&app).await;
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                interval.tick().await;
                sweep_once(&app).await;
            }
        })
    };
    let recharger = billing::spawn_recharger(&app);
    axum::serve(listener, http::router(app.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    app.casts_in_flight.close();
    app.casts_in_flight.wait().await;
    sweeper.abort();
    if let Some(recharger) = recharger {
        recharger.abort();
    }
    app.db.close().await;
    Ok(())
}

async fn sweep_once(app: &AppState) {
    match money::sweep_expired(&app.db, store::now_ms()).await {
        Ok(0) => {}
        Ok(voided) => app.metrics.holds_voided.inc_by(voided),
        Err(error) => tracing::warn!(error = %error, "sweeping expired holds failed"),
    }
}
