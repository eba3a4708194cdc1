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
pub mod idempotency;
pub mod money;
pub mod ops;
pub mod privacy;
pub mod registry;
pub mod sandbox;
pub mod store;
pub mod supply_chain;
pub mod telemetry;
pub mod threads;

use std::sync::Arc;

use anyhow::Context as _;

/// Everything a request handler may need. Built once per process by [`AppState::build`].
pub struct AppState {
    pub config: config::Config,
    pub db: store::Db,
    /// Leases, holds and group-committed settlements: the money path of this instance.
    pub money: money::Money,
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
    /// What `GET /readyz` compares against (the database file that was opened).
    pub readiness: ops::Readiness,
    /// `Idempotency-Key` reservations and stored answers.
    pub idempotency: idempotency::Idempotency,
    /// Requests per API key and per client address.
    pub rate_limits: http::RateLimits,
    /// GitHub login, when configured.
    pub github: Option<auth::github::GitHub>,
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
        // The data directory 0700, the SQLite files 0600; errors name their paths.
        ops::files::prepare(&config)?;
        let db = store::Db::connect(&config.database_url, config.database_max_connections).await?;
        db.migrate().await?;
        let money = money::Money::new(
            &db,
            &config.database_url,
            config.pricing,
            config.lease_ttl_ms,
        )
        .context("starting the money path")?;
        let readiness = ops::Readiness::new(&config)?;
        let sandbox = Arc::new(
            sandbox::Sandbox::new(config.sandbox.clone()).context("starting the sandbox")?,
        );
        // Every pinned Sigstore root is read and checked now, not at the first publish.
        let trusted_roots = supply_chain::TrustedRoots::public_good_and(
            &config.sigstore_trusted_roots,
        )
        .map_err(|message| anyhow::anyhow!("SPELLHOST_SIGSTORE_TRUSTED_ROOTS: {message}"))?;
        // The advisory database too: a directory that cannot be read stops the start.
        let advisories = supply_chain::advisory::Advisories::open(
            config.advisories.dir.clone(),
            config.advisories.severity_min,
        )
        .map_err(|e| anyhow::anyhow!("SPELLHOST_ADVISORY_DB: {e}"))?;
        let registry = registry::Registry::new(
            db.clone(),
            sandbox.clone(),
            Arc::new(trusted_roots),
            Arc::new(advisories),
        )
        .with_limits(config.creation);
        let auth = auth::Authenticator::new(db.clone(), config.derived_key("verified api keys"))
            .with_keys_per_user_max(config.creation.keys_per_user);
        let rate_limits = http::RateLimits::new(&config.http);
        let metrics = telemetry::Metrics::new().context("registering metrics")?;
        let billing = billing::Billing::from_config(&config)?;
        let recharger = match &billing {
            Some(_) => billing::Recharger::new(metrics.recharge_notices_dropped.clone()),
            None => billing::Recharger::disabled(),
        };
        let idempotency = idempotency::Idempotency::new(db.clone());
        let github = match &config.github {
            Some(github) => Some(
                auth::github::GitHub::new(
                    github.clone(),
                    &config.public_url,
                    config.derived_key("oauth state cookie"),
                )
                .context("starting the GitHub login client")?,
            ),
            None => None,
        };
        Ok(Arc::new(AppState {
            config,
            db,
            money,
            sandbox,
            registry,
            auth,
            metrics,
            billing,
            recharger,
            casts_in_flight: tokio_util::task::TaskTracker::new(),
            readiness,
            idempotency,
            rate_limits,
            github,
        }))
    }
}

/// How often this instance looks after its leases: renewals, returns of idle leases, revoked
/// leases given back, changed budgets noticed.
const LEASE_TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting, lets requests in
/// flight finish, waits for every cast in flight to settle and gives back this instance's
/// leases. Also runs the lease upkeep, the sweeper of expired leases and (with billing) the
/// recharge worker.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    sweep_once(&app).await;
    let background = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_TICK);
            // Leases live their TTL without renewal; sweeping every third of it gives money
            // leased by a crashed process back within 4/3 of the TTL.
            let ttl = u64::try_from(app.config.lease_ttl_ms / 3).unwrap_or(5_000);
            let mut sweep = tokio::time::interval(std::time::Duration::from_millis(ttl));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(error) = app.money.tick().await {
                            tracing::warn!(error = %error, "lease upkeep failed");
                        }
                        poll_epochs(&app).await;
                    }
                    _ = sweep.tick() => sweep_once(&app).await,
                }
            }
        })
    };
    let private_metrics = match app.config.http.metrics_listen {
        Some(address) => Some(serve_private_metrics(&app, address).await?),
        None => None,
    };
    let recharger = billing::spawn_recharger(&app);
    let self_check = ops::selfcheck::spawn(app.clone());
    let advisories = spawn_advisory_reload(&app);
    let idempotency_upkeep = idempotency::spawn_upkeep(app.clone());
    http::server::serve(app.clone(), listener, shutdown)
        .await
        .context("serving HTTP")?;
    app.casts_in_flight.close();
    app.casts_in_flight.wait().await;
    background.abort();
    if let Some(recharger) = recharger {
        recharger.abort();
    }
    if let Err(error) = app.money.return_all().await {
        tracing::warn!(error = %error, "giving back leases at shutdown failed; they expire");
    }
    self_check.abort();
    idempotency_upkeep.abort();
    if let Some(private_metrics) = private_metrics {
        private_metrics.abort();
    }
    advisories.abort();
    app.db.close().await;
    Ok(())
}

/// `GET /metrics` without the token on `address`, for a scraper on a private network.
async fn serve_private_metrics(
    app: &App,
    address: std::net::SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding SPELLHOST_METRICS_LISTEN {address}"))?;
    let router = http::metrics_router(app.clone());
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(error = %error, "the metrics listener stopped");
        }
    }))
}

/// Reloads the advisory database when its directory changed (a poll reads file metadata only).
fn spawn_advisory_reload(app: &App) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    if app.config.advisories.dir.is_none() {
        return tokio::spawn(async {});
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(app.config.advisories.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let advisories = app.registry.advisories().clone();
            let refreshed = tokio::task::spawn_blocking(move || {
                let refreshed = advisories.refresh();
                (
                    refreshed,
                    advisories.current().map(|db| db.snapshot().clone()),
                )
            })
            .await;
            match refreshed {
                Ok((Ok(true), Some(snapshot))) => tracing::info!(
                    advisories.snapshot = %snapshot.id,
                    advisories.count = snapshot.advisories,
                    "advisory database reloaded"
                ),
                Ok((Ok(_), _)) => {}
                Ok((Err(error), _)) => tracing::warn!(
                    error = %error,
                    "reloading the advisory database failed; the previous one stays in force"
                ),
                Err(error) => tracing::warn!(error = %error, "advisory reload task failed"),
            }
        }
    })
}

/// Drops cached API keys and spell versions that changed in any process (their epochs move in
/// the changing transaction): one indexed read per tick.
async fn poll_epochs(app: &AppState) {
    let epochs: Result<Vec<(String, i64)>, sqlx::Error> =
        sqlx::query_as("SELECT name, epoch FROM cache_epochs")
            .fetch_all(app.db.reader())
            .await;
    match epochs {
        Ok(epochs) => {
            for (name, epoch) in epochs {
                match name.as_str() {
                    "keys" => app.auth.on_epoch(epoch),
                    "spells" => app.registry.on_epoch(epoch),
                    _ => {}
                }
            }
        }
        Err(error) => tracing::warn!(error = %error, "reading cache epochs failed"),
    }
}

async fn sweep_once(app: &AppState) {
    // Cast outputs past their retention (`SPELLHOST_CAST_OUTPUT_RETENTION_SECONDS`).
    if let Err(error) = money::records::sweep_expired_outputs(&app.db).await {
        tracing::warn!(error = %error, "sweeping expired cast outputs failed");
    }
    match app.money.sweep().await {
        Ok(0) => {}
        Ok(swept) => app.metrics.holds_voided.inc_by(swept),
        Err(error) => {
            app.metrics.hold_sweep_failures.inc();
            tracing::warn!(error = %error, "sweeping expired leases failed");
        }
    }
}
