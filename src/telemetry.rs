//! Logging setup and the one documented set of metrics (Prometheus, names `spellhost_*`).

use prometheus::{
    Counter, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

/// Installs the tracing subscriber: human-readable text by default, JSON lines for log
/// collectors. `RUST_LOG` filters (default `info`).
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Every metric the service exports. Register once per process (or per test app).
pub struct Metrics {
    pub registry: Registry,
    /// Casts by outcome (`ok`, `out_of_fuel`, …, and `budget_exhausted` / `spend_limit_reached`
    /// for 402s, which are always answered before a run).
    pub casts: IntCounterVec,
    /// Wall time of the sandbox run, seconds.
    pub cast_duration: Histogram,
    /// Fuel burned by settled casts.
    pub fuel_consumed: IntCounter,
    /// Micro-dollars charged by settled casts.
    pub charged_microusd: IntCounter,
    /// HTTP requests by route template and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route template, seconds.
    pub http_duration: HistogramVec,
    /// Holds taken and not yet settled or voided, in this process.
    pub active_holds: IntGauge,
    /// Module cache lookups (compiled `InstancePre` by digest).
    pub module_cache_hits: IntCounter,
    pub module_cache_misses: IntCounter,
    /// Runs waiting for a sandbox worker.
    pub queue_depth: IntGauge,
    /// Expired holds voided by the sweeper.
    pub holds_voided: IntCounter,
    /// Stripe webhook events by type and result.
    pub webhook_events: IntCounterVec,
    /// Settled casts that took a budget over its soft limit (one per budget crossed).
    pub budget_soft_limit_crossings: IntCounter,
    /// Statements and transactions the money path ran (leases, settlements, sweeps): divided
    /// by casts, the database work per cast.
    pub money_db_statements: IntCounter,
    pub money_db_transactions: IntCounter,
    /// Settlement batches committed, and the settlements in them (group commit: their ratio is
    /// the mean batch size).
    pub settlement_batches: IntCounter,
    pub settlements: IntCounter,
    /// SQLite: the money writer's own WAL checkpoints and the time they held it up (a
    /// settlement queued meanwhile waits for the checkpoint); the checkpoints that did the bulk
    /// of the work off the writer, and their time; and the flushes of the WAL made ahead of
    /// them (`money::wal`).
    pub sqlite_checkpoints: IntCounter,
    pub sqlite_checkpoint_seconds: Counter,
    pub sqlite_background_checkpoints: IntCounter,
    pub sqlite_background_checkpoint_seconds: Counter,
    pub sqlite_wal_flushes: IntCounter,
    /// Billing events that need an operator: `unparseable` and `api_version_unsupported`
    /// (answered 5xx, retried by Stripe), `rejected` (recorded, not applied; replay after review).
    pub billing_alerts: IntCounterVec,
    /// Automatic recharge creations by what Stripe said: `created`, `failed`, `unknown`.
    pub recharges: IntCounterVec,
    /// Settlement notices dropped because the recharge queue was full (the scan catches up).
    pub recharge_notices_dropped: IntCounter,
    /// How many runs the sandbox queue holds before refusing new ones (503): the denominator
    /// of queue saturation. Set from the configuration when `/metrics` is scraped.
    pub queue_capacity: IntGauge,
    /// Time a cast's run waited for a sandbox slot before it started, seconds.
    pub queue_wait: Histogram,
    /// Runs holding a sandbox slot (computing or sleeping in a host call).
    pub runs_in_flight: IntGauge,
    /// Casts refused before they ran because the sandbox could not take them, by reason:
    /// `busy` (503, the host is full) and `too_many_concurrent_casts` (429, the caller's own
    /// share is full). No per-user label: the cardinality would grow with the users.
    pub casts_refused: IntCounterVec,
    /// The highest ledger `seq` up to which the in-server self-check has verified the hash
    /// chain (links, hashes, running balances) without a break. Lags the head by at most one
    /// check interval while the chain is intact; stops moving at the first break.
    pub ledger_verified_seq: IntGauge,
    /// The ledger head's `seq` as the self-check last read it, to measure its lag.
    pub ledger_head_seq: IntGauge,
    /// Self-check passes that found the ledger chain broken. Any increase is an incident.
    pub ledger_verify_failures: IntCounter,
    /// Holds still in the database more than a minute past their expiry: the sweeper is not
    /// keeping up or is failing, and that money is stuck. Read by the self-check.
    pub holds_expired: IntGauge,
    /// Sweeper passes that failed (database errors); expired holds stay until one succeeds.
    pub hold_sweep_failures: IntCounter,
    /// Requests with an `Idempotency-Key`, by what the key decided: `run` (first use, or a
    /// dead reservation taken over), `replayed`, `in_use` (409), `reused` (422), `error` (the
    /// database could not be asked: 500).
    pub idempotent_requests: IntCounterVec,
    /// Requests refused `429 rate_limited`, by the limit that refused them: `key` (an API
    /// key's) or `address` (a client address's, for requests without a verified key). No
    /// per-user or per-address label: the cardinality would grow with the clients.
    pub rate_limited: IntCounterVec,
    /// Connections the server closed or refused, by reason: `connections_total`,
    /// `connections_per_address` (over a cap, answered and closed), `header_read_timeout`,
    /// `idle_timeout`, `unparseable` (a request hyper could not read).
    pub http_connections_closed: IntCounterVec,
    /// Open HTTP connections.
    pub http_connections_open: IntGauge,
    /// argon2 verifications of API keys not verified recently (each ~15 ms of CPU).
    pub api_key_verifications: IntCounter,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let metrics = Metrics {
            casts: IntCounterVec::new(
                Opts::new("spellhost_casts_total", "Casts by outcome"),
                &["outcome"],
            )?,
            cast_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "spellhost_cast_duration_seconds",
                    "Wall time of sandbox runs",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            fuel_consumed: IntCounter::new(
                "spellhost_fuel_consumed_total",
                "Fuel burned by settled casts",
            )?,
            charged_microusd: IntCounter::new(
                "spellhost_charged_microusd_total",
                "Micro-dollars charged by settled casts",
            )?,
            http_requests: IntCounterVec::new(
                Opts::new(
                    "spellhost_http_requests_total",
                    "HTTP requests by route and status",
                ),
                &["route", "method", "status"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "spellhost_http_request_duration_seconds",
                    "HTTP request latency by route",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
                &["route"],
            )?,
            active_holds: IntGauge::new(
                "spellhost_active_holds",
                "Holds taken and not yet settled or voided",
            )?,
            module_cache_hits: IntCounter::new(
                "spellhost_module_cache_hits_total",
                "Compiled module cache hits",
            )?,
            module_cache_misses: IntCounter::new(
                "spellhost_module_cache_misses_total",
                "Compiled module cache misses",
            )?,
            queue_depth: IntGauge::new(
                "spellhost_sandbox_queue_depth",
                "Runs waiting for a sandbox worker",
            )?,
            holds_voided: IntCounter::new(
                "spellhost_holds_voided_total",
                "Expired holds voided by the sweeper",
            )?,
            webhook_events: IntCounterVec::new(
                Opts::new(
                    "spellhost_stripe_webhook_events_total",
                    "Stripe webhook events by type and result",
                ),
                &["type", "result"],
            )?,
            budget_soft_limit_crossings: IntCounter::new(
                "spellhost_budget_soft_limit_crossings_total",
                "Casts whose charge took a budget over its soft limit",
            )?,
            money_db_statements: IntCounter::new(
                "spellhost_money_db_statements_total",
                "Statements run by the money path",
            )?,
            money_db_transactions: IntCounter::new(
                "spellhost_money_db_transactions_total",
                "Transactions run by the money path",
            )?,
            settlement_batches: IntCounter::new(
                "spellhost_settlement_batches_total",
                "Settlement batches committed",
            )?,
            settlements: IntCounter::new(
                "spellhost_settlements_total",
                "Cast settlements committed",
            )?,
            sqlite_checkpoints: IntCounter::new(
                "spellhost_sqlite_checkpoints_total",
                "WAL checkpoints run by the money writer itself (SQLite)",
            )?,
            sqlite_checkpoint_seconds: Counter::new(
                "spellhost_sqlite_checkpoint_seconds_total",
                "Time the money writer spent in WAL checkpoints, settlements waiting (SQLite)",
            )?,
            sqlite_background_checkpoints: IntCounter::new(
                "spellhost_sqlite_background_checkpoints_total",
                "WAL checkpoints run off the money writer while it commits, failed ones too (SQLite)",
            )?,
            sqlite_background_checkpoint_seconds: Counter::new(
                "spellhost_sqlite_background_checkpoint_seconds_total",
                "Time spent in WAL checkpoints off the money writer (SQLite)",
            )?,
            sqlite_wal_flushes: IntCounter::new(
                "spellhost_sqlite_wal_flushes_total",
                "Flushes of the WAL to disk ahead of its checkpoint, off the money writer (SQLite)",
            )?,
            billing_alerts: IntCounterVec::new(
                Opts::new(
                    "spellhost_billing_alerts_total",
                    "Billing events that need an operator, by reason",
                ),
                &["reason"],
            )?,
            recharges: IntCounterVec::new(
                Opts::new(
                    "spellhost_recharges_total",
                    "Automatic recharge creations by Stripe's answer",
                ),
                &["result"],
            )?,
            recharge_notices_dropped: IntCounter::new(
                "spellhost_recharge_notices_dropped_total",
                "Settlement notices dropped because the recharge queue was full",
            )?,
            queue_capacity: IntGauge::new(
                "spellhost_sandbox_queue_capacity",
                "Runs the sandbox queue holds before refusing new ones",
            )?,
            queue_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "spellhost_sandbox_queue_wait_seconds",
                    "Time runs waited for a sandbox slot",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
                ]),
            )?,
            runs_in_flight: IntGauge::new(
                "spellhost_sandbox_runs_in_flight",
                "Runs holding a sandbox slot, computing or sleeping",
            )?,
            casts_refused: IntCounterVec::new(
                Opts::new(
                    "spellhost_casts_refused_total",
                    "Casts the sandbox could not take, by reason",
                ),
                &["reason"],
            )?,
            ledger_verified_seq: IntGauge::new(
                "spellhost_ledger_verified_seq",
                "Highest ledger seq verified intact by the in-server self-check",
            )?,
            ledger_head_seq: IntGauge::new(
                "spellhost_ledger_head_seq",
                "Ledger head seq as last read by the self-check",
            )?,
            ledger_verify_failures: IntCounter::new(
                "spellhost_ledger_verify_failures_total",
                "Self-check passes that found the ledger chain broken",
            )?,
            holds_expired: IntGauge::new(
                "spellhost_holds_expired",
                "Holds more than a minute past their expiry, not yet voided",
            )?,
            hold_sweep_failures: IntCounter::new(
                "spellhost_hold_sweep_failures_total",
                "Hold sweeper passes that failed",
            )?,
            idempotent_requests: IntCounterVec::new(
                Opts::new(
                    "spellhost_idempotent_requests_total",
                    "Requests with an Idempotency-Key, by what the key decided",
                ),
                &["outcome"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "spellhost_rate_limited_total",
                    "Requests refused by a rate limit, by limit",
                ),
                &["limit"],
            )?,
            http_connections_closed: IntCounterVec::new(
                Opts::new(
                    "spellhost_http_connections_closed_total",
                    "Connections the server refused or closed, by reason",
                ),
                &["reason"],
            )?,
            http_connections_open: IntGauge::new(
                "spellhost_http_connections_open",
                "Open HTTP connections",
            )?,
            api_key_verifications: IntCounter::new(
                "spellhost_api_key_verifications_total",
                "argon2 verifications of API keys",
            )?,
            registry,
        };
        // Every outcome is exported from the start, at zero, so dashboards and alerts see the
        // series before the first cast of each kind.
        for outcome in [
            "ok",
            "exit_code",
            "out_of_fuel",
            "deadline_exceeded",
            "memory_limit_exceeded",
            "output_too_large",
            "trapped",
            "budget_exhausted",
            "spend_limit_reached",
        ] {
            metrics.casts.with_label_values(&[outcome]);
        }
        for reason in ["unparseable", "api_version_unsupported", "rejected"] {
            metrics.billing_alerts.with_label_values(&[reason]);
        }
        for result in ["created", "failed", "unknown"] {
            metrics.recharges.with_label_values(&[result]);
        }
        metrics
            .webhook_events
            .with_label_values(&["unknown", "signature_invalid"]);
        let r = &metrics.registry;
        r.register(Box::new(metrics.casts.clone()))?;
        r.register(Box::new(metrics.cast_duration.clone()))?;
        r.register(Box::new(metrics.fuel_consumed.clone()))?;
        r.register(Box::new(metrics.charged_microusd.clone()))?;
        r.register(Box::new(metrics.http_requests.clone()))?;
        r.register(Box::new(metrics.http_duration.clone()))?;
        r.register(Box::new(metrics.active_holds.clone()))?;
        r.register(Box::new(metrics.module_cache_hits.clone()))?;
        r.register(Box::new(metrics.module_cache_misses.clone()))?;
        r.register(Box::new(metrics.queue_depth.clone()))?;
        r.register(Box::new(metrics.holds_voided.clone()))?;
        r.register(Box::new(metrics.webhook_events.clone()))?;
        r.register(Box::new(metrics.budget_soft_limit_crossings.clone()))?;
        r.register(Box::new(metrics.money_db_statements.clone()))?;
        r.register(Box::new(metrics.money_db_transactions.clone()))?;
        r.register(Box::new(metrics.settlement_batches.clone()))?;
        r.register(Box::new(metrics.settlements.clone()))?;
        r.register(Box::new(metrics.sqlite_checkpoints.clone()))?;
        r.register(Box::new(metrics.sqlite_checkpoint_seconds.clone()))?;
        r.register(Box::new(metrics.sqlite_background_checkpoints.clone()))?;
        r.register(Box::new(
            metrics.sqlite_background_checkpoint_seconds.clone(),
        ))?;
        r.register(Box::new(metrics.sqlite_wal_flushes.clone()))?;
        r.register(Box::new(metrics.billing_alerts.clone()))?;
        r.register(Box::new(metrics.recharges.clone()))?;
        r.register(Box::new(metrics.recharge_notices_dropped.clone()))?;
        r.register(Box::new(metrics.queue_capacity.clone()))?;
        r.register(Box::new(metrics.queue_wait.clone()))?;
        r.register(Box::new(metrics.runs_in_flight.clone()))?;
        r.register(Box::new(metrics.casts_refused.clone()))?;
        r.register(Box::new(metrics.ledger_verified_seq.clone()))?;
        r.register(Box::new(metrics.ledger_head_seq.clone()))?;
        r.register(Box::new(metrics.ledger_verify_failures.clone()))?;
        r.register(Box::new(metrics.holds_expired.clone()))?;
        r.register(Box::new(metrics.hold_sweep_failures.clone()))?;
        r.register(Box::new(metrics.idempotent_requests.clone()))?;
        for outcome in ["run", "replayed", "in_use", "reused", "error"] {
            metrics.idempotent_requests.with_label_values(&[outcome]);
        }
        r.register(Box::new(metrics.rate_limited.clone()))?;
        r.register(Box::new(metrics.http_connections_closed.clone()))?;
        r.register(Box::new(metrics.http_connections_open.clone()))?;
        r.register(Box::new(metrics.api_key_verifications.clone()))?;
        Ok(metrics)
    }

    /// Brings counters kept elsewhere (the sandbox's atomics) up to their current values.
    pub fn sync_counter(counter: &IntCounter, current: u64) {
        let seen = counter.get();
        if current > seen {
            counter.inc_by(current - seen);
        }
    }

    /// Brings a counter of seconds up to `micros`, a running total kept elsewhere.
    pub fn sync_seconds(counter: &Counter, micros: u64) {
        // Micro-second totals fit an f64 exactly for 285 years of checkpointing.
        let behind = micros as f64 / 1e6 - counter.get();
        if behind > 0.0 {
            counter.inc_by(behind);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut buffer = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}
