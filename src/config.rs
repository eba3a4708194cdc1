//! Typed configuration from `SPELLHOST_*` environment variables and an optional TOML file,
//! validated before anything listens. A bad value stops the process with a message naming the
//! variable. Defaults serve a newcomer on a laptop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::money::Pricing;
use crate::sandbox::{HostLimits, SandboxConfig};

/// The smallest accepted server secret, in bytes: HMAC-SHA256 keys derive from it.
const SECRET_BYTES_MIN: usize = 32;
const SECRET_FILE: &str = "secret.key";
/// The ledger self-check runs every 15 s: a broken chain is noticed well within one alert
/// evaluation, and one pass over the newest entries costs milliseconds.
const DEFAULT_SELF_CHECK_INTERVAL_MS: u64 = 15_000;

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

fn error(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.to_owned(),
        message: message.into(),
    }
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub database_max_connections: u32,
    pub pricing: Pricing,
    pub sandbox: SandboxConfig,
    /// The server's secret: HMAC keys for the verified-key cache and precompiled artifacts.
    pub secret: SecretString,
    /// How this service is reached from outside (links in responses, Stripe return URLs).
    pub public_url: String,
    pub log_json: bool,
    pub billing: Option<BillingConfig>,
    pub topup_min_cents: i64,
    pub topup_max_cents: i64,
    /// How long a lease lives without renewal (`SPELLHOST_LEASE_TTL_MS`).
    pub lease_ttl_ms: i64,
    /// How often the server re-verifies the newest ledger entries (`SPELLHOST_SELF_CHECK_INTERVAL_MS`).
    pub self_check_interval: std::time::Duration,
    /// Trusted roots of private Sigstore deployments whose bundles publishing accepts besides
    /// the public-good instance's (`SPELLHOST_SIGSTORE_TRUSTED_ROOTS`: comma-separated paths to
    /// `trusted_root.json` files, read and validated at start-up).
    pub sigstore_trusted_roots: Vec<PathBuf>,
    /// The HTTP edge: rate limits, client addresses, slow clients, headers, CORS, `/metrics`.
    pub http: HttpConfig,
    /// How much of each thing one user may create.
    pub creation: CreationLimits,
    /// The advisory check of published SBOMs (`SPELLHOST_ADVISORY_*`).
    pub advisories: AdvisoryConfig,
    /// GitHub login; present only when both the client id and secret are set.
    pub github: Option<GithubConfig>,
    /// How long a session lives (`SPELLHOST_SESSION_TTL_SECS`, default 30 days).
    pub session_ttl_ms: i64,
    /// Settled casts' outputs kept for `GET /v1/casts/{id}` (`SPELLHOST_CAST_OUTPUT_*`).
    pub cast_outputs: CastOutputConfig,
    /// The time slice `spellhost serve` asks the kernel for on its own threads, all but the
    /// wasm and compile threads (`SPELLHOST_SERVICE_THREAD_SLICE_US`; `None`: the kernel's
    /// default). See [`crate::threads`].
    pub service_thread_slice: Option<std::time::Duration>,
}

/// How long and how much of a cast's output is kept for its caster to fetch again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CastOutputConfig {
    /// Milliseconds an output is kept after its settlement
    /// (`SPELLHOST_CAST_OUTPUT_RETENTION_SECONDS`, default a day: long enough for a client that
    /// lost its connection to come back; 0 keeps none).
    pub retention_ms: i64,
    /// The largest output kept, in bytes (`SPELLHOST_CAST_OUTPUT_BYTES_MAX`, default 64 KiB:
    /// outputs are written in the settlement batch, the money path's one transaction, so big
    /// ones would slow every cast's charge; a larger output is not kept, and the record says so).
    pub bytes_max: u64,
}

impl Default for CastOutputConfig {
    fn default() -> Self {
        CastOutputConfig {
            retention_ms: 86_400_000,
            bytes_max: 64 * 1024,
        }
    }
}

/// The HTTP edge's settings (`SPELLHOST_RATE_LIMIT_*`, `SPELLHOST_TRUSTED_PROXIES`,
/// `SPELLHOST_HTTP_*`, `SPELLHOST_CORS_ORIGINS`, `SPELLHOST_HSTS`, `SPELLHOST_METRICS_TOKEN`).
#[derive(Clone)]
pub struct HttpConfig {
    /// Requests per minute per API key; 0 switches the limit off.
    pub rate_limit_authenticated_per_minute: u32,
    /// Requests per minute per client address without a verified key; 0 switches it off.
    pub rate_limit_anonymous_per_minute: u32,
    /// Peers whose `X-Forwarded-For` and `Fly-Client-IP` name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: std::time::Duration,
    /// From the end of a request's headers to the end of its body, plus the time what has
    /// arrived takes at 64 KiB/s (a large upload over a slow link is not cut off).
    pub body_read_timeout: std::time::Duration,
    /// How long a connection may stay open with no request in flight and no bytes moving.
    pub idle_timeout: std::time::Duration,
    /// Open connections in all.
    pub connections_max: usize,
    /// Open connections from one address (not counting trusted proxies).
    pub connections_per_ip_max: usize,
    /// Origins allowed to call the API from a browser; empty: CORS off.
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// Send `Strict-Transport-Security` (on when `SPELLHOST_PUBLIC_URL` is https).
    pub hsts: bool,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<SecretString>,
    /// A second listener that serves only `GET /metrics`, without the token: for a scraper
    /// on a private network that cannot send one (Fly.io's), on a port not published.
    pub metrics_listen: Option<SocketAddr>,
}

/// Caps on what one user may create (`422 limit_reached` names the one that binds). Each
/// bounds rows and the work done per request for them (signers are tried at every publish).
#[derive(Debug, Clone, Copy)]
pub struct CreationLimits {
    /// Live API keys per user (`SPELLHOST_KEYS_PER_USER_MAX`).
    pub keys_per_user: i64,
    /// Live signers per user (`SPELLHOST_SIGNERS_PER_USER_MAX`).
    pub signers_per_user: i64,
    /// Spells (names) per user (`SPELLHOST_SPELLS_PER_USER_MAX`).
    pub spells_per_user: i64,
    /// Versions per user, all spells together (`SPELLHOST_VERSIONS_PER_USER_MAX`).
    pub versions_per_user: i64,
}

impl Default for CreationLimits {
    /// Far above what a person or a CI pipeline needs, far below what fills a disk: 100 keys
    /// (one per machine or job), 50 signers (each is tried at every publish), 100 spells of
    /// up to 1000 versions in all (a version holds up to a module of a few MiB).
    fn default() -> Self {
        CreationLimits {
            keys_per_user: 100,
            signers_per_user: 50,
            spells_per_user: 100,
            versions_per_user: 1000,
        }
    }
}

/// Stripe settings; present only when both the secret key and a webhook secret are set.
#[derive(Clone)]
pub struct BillingConfig {
    pub stripe_secret_key: SecretString,
    /// Several secrets (comma-separated) so one can be rotated without downtime.
    pub webhook_secrets: Vec<SecretString>,
    pub api_base: Option<String>,
    /// The Stripe API versions events are accepted in (`SPELLHOST_STRIPE_API_VERSION`, comma-
    /// separated for the window of an upgrade): the webhook endpoint's pinned version. Money
    /// events rendered in another version are answered 5xx, unrecorded, so Stripe retries them.
    pub api_versions: Vec<String>,
    /// The largest amount one Stripe event may move (`SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS`);
    /// an event above it is recorded as rejected for the operator to review.
    pub event_amount_max_cents: i64,
    /// How often the recharge worker scans for users below their threshold whose notice was
    /// dropped and for creations of unknown outcome (`SPELLHOST_RECHARGE_SCAN_INTERVAL_SECONDS`).
    pub recharge_scan_interval: std::time::Duration,
}

/// The largest accepted `SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS`: $10 000 000 000, far above any
/// real payment and far below what would overflow micro-dollars (10¹⁰ cents = 10¹⁴ µ$).
const EVENT_AMOUNT_MAX_CENTS_LIMIT: i64 = 1_000_000_000_000;

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &redact_url(&self.database_url))
            .field("pricing", &self.pricing)
            .field("billing", &self.billing.is_some())
            .finish_non_exhaustive()
    }
}

/// A database URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Raw values by variable name: the TOML file first, the environment over it.
struct Source(HashMap<String, String>);

impl Source {
    fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut values = HashMap::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| error("--config", format!("{}: {e}", path.display())))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| error("--config", format!("{}: {}", path.display(), e.message())))?;
            for (key, value) in table {
                let text = match value {
                    toml::Value::String(text) => text,
                    other => other.to_string(),
                };
                values.insert(format!("SPELLHOST_{}", key.to_ascii_uppercase()), text);
            }
        }
        for (key, value) in env {
            if key.starts_with("SPELLHOST_") {
                values.insert(key, value);
            }
        }
        Ok(Source(values))
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.text(name) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|e| error(name, format!("invalid value {text:?}: {e}"))),
        }
    }
}

impl Config {
    /// Reads the process environment (and `file`, if given).
    pub fn from_env(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_source(Source::load(file, std::env::vars())?)
    }

    /// For tests: the given variables only.
    pub fn from_vars(vars: &[(&str, &str)]) -> Result<Self, ConfigError> {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Self::from_source(Source::load(None, env)?)
    }

    fn from_source(source: Source) -> Result<Self, ConfigError> {
        let listen = source.parse("SPELLHOST_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let data_dir: PathBuf =
            source.parse("SPELLHOST_DATA_DIR", PathBuf::from("./spellhost-data"))?;
        let database_url = match source.text("SPELLHOST_DATABASE_URL") {
            Some(url)
                if url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.starts_with("sqlite:") =>
            {
                url.to_owned()
            }
            Some(url) => {
                return Err(error(
                    "SPELLHOST_DATABASE_URL",
                    format!(
                        "expected a postgres:// or sqlite: URL, got {:?}",
                        redact_url(url)
                    ),
                ));
            }
            None => format!("sqlite://{}", data_dir.join("spellhost.db").display()),
        };
        let defaults = Pricing::default();
        let pricing = Pricing {
            price_per_billion_fuel_microusd: source.parse(
                "SPELLHOST_PRICE_PER_BILLION_FUEL_MICROUSD",
                defaults.price_per_billion_fuel_microusd,
            )?,
            cast_base_fee_microusd: source.parse(
                "SPELLHOST_CAST_BASE_FEE_MICROUSD",
                defaults.cast_base_fee_microusd,
            )?,
            price_microusd_per_wall_ms: source.parse(
                "SPELLHOST_PRICE_MICROUSD_PER_WALL_MS",
                defaults.price_microusd_per_wall_ms,
            )?,
        };
        let sandbox = sandbox_config(&source)?;
        let secret = match source.text("SPELLHOST_SECRET_KEY") {
            Some(secret) if secret.len() >= SECRET_BYTES_MIN => {
                SecretString::from(secret.to_owned())
            }
            Some(_) => {
                return Err(error(
                    "SPELLHOST_SECRET_KEY",
                    format!("must be at least {SECRET_BYTES_MIN} bytes"),
                ));
            }
            None => SecretString::from(String::new()), // generated by `ensure_secret`
        };
        let public_url = source
            .text("SPELLHOST_PUBLIC_URL")
            .map(|url| url.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{listen}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(error(
                "SPELLHOST_PUBLIC_URL",
                "must start with http:// or https://",
            ));
        }
        let log_json = match source.text("SPELLHOST_LOG_FORMAT").unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                return Err(error(
                    "SPELLHOST_LOG_FORMAT",
                    format!("expected text or json, got {other:?}"),
                ));
            }
        };
        let topup_min_cents = source.parse("SPELLHOST_TOPUP_MIN_CENTS", 500i64)?;
        let topup_max_cents = source.parse("SPELLHOST_TOPUP_MAX_CENTS", 50_000i64)?;
        if topup_min_cents < 50 || topup_max_cents < topup_min_cents {
            return Err(error(
                "SPELLHOST_TOPUP_MIN_CENTS",
                "needs 50 ≤ min ≤ SPELLHOST_TOPUP_MAX_CENTS (Stripe's minimum charge is 50 cents)",
            ));
        }
        let self_check_interval_ms: u64 = source.parse(
            "SPELLHOST_SELF_CHECK_INTERVAL_MS",
            DEFAULT_SELF_CHECK_INTERVAL_MS,
        )?;
        if !(10..=3_600_000).contains(&self_check_interval_ms) {
            return Err(error(
                "SPELLHOST_SELF_CHECK_INTERVAL_MS",
                "must be between 10 and 3600000 (an hour)",
            ));
        }
        let http = http_config(&source, &public_url)?;
        let creation = creation_limits(&source)?;
        Ok(Config {
            listen,
            data_dir,
            database_url,
            database_max_connections: source.parse("SPELLHOST_DATABASE_MAX_CONNECTIONS", 10u32)?,
            pricing,
            sandbox,
            secret,
            public_url,
            log_json,
            billing: billing_config(&source, topup_max_cents)?,
            topup_min_cents,
            topup_max_cents,
            lease_ttl_ms: lease_ttl_ms(&source)?,
            self_check_interval: std::time::Duration::from_millis(self_check_interval_ms),
            sigstore_trusted_roots: source
                .text("SPELLHOST_SIGSTORE_TRUSTED_ROOTS")
                .into_iter()
                .flat_map(|list| list.split(','))
                .map(str::trim)
                .filter(|path| !path.is_empty())
                .map(PathBuf::from)
                .collect(),
            http,
            creation,
            advisories: advisory_config(&source)?,
            github: github_config(&source)?,
            session_ttl_ms: session_ttl_ms(&source)?,
            cast_outputs: cast_output_config(&source)?,
            service_thread_slice: service_thread_slice(&source)?,
        })
    }

    /// Makes sure a server secret exists: the configured one, or one generated into the data
    /// directory (mode 0600) on first start and reused after.
    pub fn ensure_secret(&mut self) -> anyhow::Result<()> {
        if !self.secret.expose_secret().is_empty() {
            return Ok(());
        }
        use anyhow::Context as _;
        crate::ops::files::private_dir(&self.data_dir)?;
        let path = self.data_dir.join(SECRET_FILE);
        if !path.exists() {
            use rand::Rng as _;
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(hex::encode(bytes).as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let secret = secret.trim();
        anyhow::ensure!(
            secret.len() >= SECRET_BYTES_MIN,
            "{} is shorter than {SECRET_BYTES_MIN} bytes",
            path.display()
        );
        self.secret = SecretString::from(secret.to_owned());
        Ok(())
    }

    /// A key for one purpose, derived from the server secret (HMAC-SHA256(secret, purpose)).
    pub fn derived_key(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(self.secret.expose_secret().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn http_config(source: &Source, public_url: &str) -> Result<HttpConfig, ConfigError> {
    use std::time::Duration;
    let seconds = |name: &str, default: u64| -> Result<Duration, ConfigError> {
        let value: u64 = source.parse(name, default)?;
        if !(1..=3600).contains(&value) {
            return Err(error(name, "must be between 1 and 3600 (seconds)"));
        }
        Ok(Duration::from_secs(value))
    };
    let trusted_proxies = list(source, "SPELLHOST_TRUSTED_PROXIES")
        .map(|entry| {
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    error(
                        "SPELLHOST_TRUSTED_PROXIES",
                        format!("{entry:?} is not a CIDR (10.0.0.0/8, fdaa::/16) or an address"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let cors_origins = list(source, "SPELLHOST_CORS_ORIGINS")
        .map(|origin| {
            let origin = origin.trim_end_matches('/');
            let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
                && origin.split_once("://").is_some_and(|(_, host)| {
                    !host.is_empty() && !host.contains(['/', '*', '?', '#', '@'])
                });
            axum::http::HeaderValue::from_str(origin)
                .ok()
                .filter(|_| valid)
                .ok_or_else(|| {
                    error(
                        "SPELLHOST_CORS_ORIGINS",
                        format!("{origin:?} is not an origin (https://app.example.com)"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let connections_max: usize = source.parse("SPELLHOST_HTTP_CONNECTIONS_MAX", 4096)?;
    let connections_per_ip_max: usize =
        source.parse("SPELLHOST_HTTP_CONNECTIONS_PER_IP_MAX", 128)?;
    if connections_max == 0 || !(1..=connections_max).contains(&connections_per_ip_max) {
        return Err(error(
            "SPELLHOST_HTTP_CONNECTIONS_PER_IP_MAX",
            "needs 1 ≤ per-IP ≤ SPELLHOST_HTTP_CONNECTIONS_MAX",
        ));
    }
    let metrics_token = source.text("SPELLHOST_METRICS_TOKEN").map(str::trim);
    if metrics_token.is_some_and(|token| token.len() < 16) {
        return Err(error(
            "SPELLHOST_METRICS_TOKEN",
            "must be at least 16 characters",
        ));
    }
    Ok(HttpConfig {
        rate_limit_authenticated_per_minute: source
            .parse("SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE", 60)?,
        rate_limit_anonymous_per_minute: source
            .parse("SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE", 10)?,
        trusted_proxies,
        // Headers are a few hundred bytes: 10 s is ample on any link and short for a
        // slowloris. A body gets a minute, plus time for what has arrived (see server.rs).
        header_read_timeout: seconds("SPELLHOST_HTTP_HEADER_READ_TIMEOUT_SECS", 10)?,
        body_read_timeout: seconds("SPELLHOST_HTTP_BODY_READ_TIMEOUT_SECS", 60)?,
        // Above the 60 s idle timeouts of common proxies, so the proxy closes first.
        idle_timeout: seconds("SPELLHOST_HTTP_IDLE_TIMEOUT_SECS", 75)?,
        connections_max,
        connections_per_ip_max,
        cors_origins,
        hsts: source.parse("SPELLHOST_HSTS", public_url.starts_with("https://"))?,
        metrics_token: metrics_token.map(|token| SecretString::from(token.to_owned())),
        metrics_listen: source
            .text("SPELLHOST_METRICS_LISTEN")
            .map(|text| {
                text.trim().parse().map_err(|e| {
                    error(
                        "SPELLHOST_METRICS_LISTEN",
                        format!("invalid address {text:?}: {e}"),
                    )
                })
            })
            .transpose()?,
    })
}

fn creation_limits(source: &Source) -> Result<CreationLimits, ConfigError> {
    let defaults = CreationLimits::default();
    let limits = CreationLimits {
        keys_per_user: source.parse("SPELLHOST_KEYS_PER_USER_MAX", defaults.keys_per_user)?,
        signers_per_user: source
            .parse("SPELLHOST_SIGNERS_PER_USER_MAX", defaults.signers_per_user)?,
        spells_per_user: source.parse("SPELLHOST_SPELLS_PER_USER_MAX", defaults.spells_per_user)?,
        versions_per_user: source.parse(
            "SPELLHOST_VERSIONS_PER_USER_MAX",
            defaults.versions_per_user,
        )?,
    };
    for (name, value) in [
        ("SPELLHOST_KEYS_PER_USER_MAX", limits.keys_per_user),
        ("SPELLHOST_SIGNERS_PER_USER_MAX", limits.signers_per_user),
        ("SPELLHOST_SPELLS_PER_USER_MAX", limits.spells_per_user),
        ("SPELLHOST_VERSIONS_PER_USER_MAX", limits.versions_per_user),
    ] {
        if !(1..=1_000_000).contains(&value) {
            return Err(error(name, "must be between 1 and 1000000"));
        }
    }
    Ok(limits)
}

fn cast_output_config(source: &Source) -> Result<CastOutputConfig, ConfigError> {
    const RETENTION: &str = "SPELLHOST_CAST_OUTPUT_RETENTION_SECONDS";
    const BYTES: &str = "SPELLHOST_CAST_OUTPUT_BYTES_MAX";
    let defaults = CastOutputConfig::default();
    let seconds: i64 = source.parse(RETENTION, defaults.retention_ms / 1000)?;
    // A year at most: outputs are the caster's data, not an archive.
    if !(0..=366 * 86_400).contains(&seconds) {
        return Err(error(
            RETENTION,
            "must be between 0 and 31622400 (366 days)",
        ));
    }
    let bytes_max: u64 = source.parse(BYTES, defaults.bytes_max)?;
    if bytes_max > 8 * 1024 * 1024 {
        return Err(error(BYTES, "must be at most 8388608 (8 MiB)"));
    }
    Ok(CastOutputConfig {
        retention_ms: seconds * 1000,
        bytes_max,
    })
}

/// A comma-separated list, entries trimmed, empty ones dropped.
fn list<'a>(source: &'a Source, name: &str) -> impl Iterator<Item = &'a str> {
    source
        .text(name)
        .into_iter()
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

fn lease_ttl_ms(source: &Source) -> Result<i64, ConfigError> {
    let name = "SPELLHOST_LEASE_TTL_MS";
    let ttl: i64 = source.parse(name, crate::money::leases::DEFAULT_LEASE_TTL_MS)?;
    // Below a second, renewals (every third of it) would compete with casts for the writer;
    // above a minute, money of a dead instance would not come back within a minute.
    if !(1_000..=60_000).contains(&ttl) {
        return Err(error(name, "must be between 1000 and 60000 (milliseconds)"));
    }
    Ok(ttl)
}

fn sandbox_config(source: &Source) -> Result<SandboxConfig, ConfigError> {
    let defaults = SandboxConfig::default();
    let host = HostLimits::default();
    let limits = HostLimits {
        fuel_max: source.parse("SPELLHOST_FUEL_MAX", host.fuel_max)?,
        wall_ms_max: source.parse("SPELLHOST_WALL_MS_MAX", host.wall_ms_max)?,
        memory_bytes_max: source.parse("SPELLHOST_MEMORY_BYTES_MAX", host.memory_bytes_max)?,
        output_bytes_max: source.parse("SPELLHOST_OUTPUT_BYTES_MAX", host.output_bytes_max)?,
        input_bytes_max: source.parse("SPELLHOST_INPUT_BYTES_MAX", host.input_bytes_max)?,
        ..host
    };
    for (name, value) in [
        ("SPELLHOST_FUEL_MAX", limits.fuel_max),
        ("SPELLHOST_WALL_MS_MAX", limits.wall_ms_max),
        ("SPELLHOST_MEMORY_BYTES_MAX", limits.memory_bytes_max),
        ("SPELLHOST_OUTPUT_BYTES_MAX", limits.output_bytes_max),
        ("SPELLHOST_INPUT_BYTES_MAX", limits.input_bytes_max),
    ] {
        if value == 0 {
            return Err(error(name, "must be positive"));
        }
    }
    if limits.memory_bytes_max > 4 << 30 {
        return Err(error(
            "SPELLHOST_MEMORY_BYTES_MAX",
            "at most 4 GiB (32-bit wasm)",
        ));
    }
    let workers: usize = source.parse("SPELLHOST_WORKERS", defaults.workers)?;
    if workers == 0 || workers > 1024 {
        return Err(error("SPELLHOST_WORKERS", "must be between 1 and 1024"));
    }
    let queue_wait_max = duration_up_to_ten_minutes(
        source,
        "SPELLHOST_QUEUE_WAIT_MS_MAX",
        defaults.queue_wait_max,
    )?;
    let compile_workers: usize =
        source.parse("SPELLHOST_COMPILE_WORKERS", defaults.compile_workers)?;
    if compile_workers == 0 || compile_workers > 64 {
        return Err(error(
            "SPELLHOST_COMPILE_WORKERS",
            "must be between 1 and 64",
        ));
    }
    let compile_time_max = duration_up_to_ten_minutes(
        source,
        "SPELLHOST_COMPILE_TIME_MS_MAX",
        defaults.compile_time_max,
    )?;
    let runs_max: usize = source.parse("SPELLHOST_RUNS_MAX", workers * 4)?;
    if runs_max == 0 || runs_max > 4096 {
        return Err(error("SPELLHOST_RUNS_MAX", "must be between 1 and 4096"));
    }
    // One per worker, as `SandboxConfig::tenant_runs_max` explains (this default said two
    // per worker: the figure measured and kept was one, but the server ran with two).
    let tenant_runs_max: usize =
        source.parse("SPELLHOST_USER_CONCURRENT_CASTS_MAX", workers.min(runs_max))?;
    if tenant_runs_max == 0 || tenant_runs_max > runs_max {
        return Err(error(
            "SPELLHOST_USER_CONCURRENT_CASTS_MAX",
            "must be between 1 and SPELLHOST_RUNS_MAX",
        ));
    }
    Ok(SandboxConfig {
        limits,
        workers,
        runs_max,
        tenant_runs_max,
        compile_workers,
        compile_time_max,
        queue_depth: source.parse("SPELLHOST_QUEUE_DEPTH", workers * 64)?,
        queue_wait_max,
        thread_policy: source.parse("SPELLHOST_WASM_THREAD_POLICY", defaults.thread_policy)?,
        ..defaults
    })
}

/// A time limit given in milliseconds (`*_MS_MAX`), between 1 ms and ten minutes.
fn duration_up_to_ten_minutes(
    source: &Source,
    name: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let millis: u64 = source.parse(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX))?;
    if millis == 0 || millis > 600_000 {
        return Err(error(name, "must be between 1 and 600000 (ten minutes)"));
    }
    Ok(std::time::Duration::from_millis(millis))
}

/// Each configured API version must be one the SDK knows (so that requests and the version
/// the endpoint renders agree on names); the account's own default version cannot be read
/// offline, which is why events carry theirs and are checked one by one.
fn api_versions(source: &Source) -> Result<Vec<String>, ConfigError> {
    use std::str::FromStr as _;
    const NAME: &str = "SPELLHOST_STRIPE_API_VERSION";
    let sdk = stripe_shared::version::VERSION;
    let Some(text) = source.text(NAME) else {
        return Ok(vec![sdk.as_str().to_owned()]);
    };
    let versions: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if versions.is_empty() {
        return Err(error(NAME, "no version given"));
    }
    for version in &versions {
        if let Ok(stripe_shared::ApiVersion::Unknown(_)) | Err(_) =
            stripe_shared::ApiVersion::from_str(version)
        {
            return Err(error(
                NAME,
                format!(
                    "{version:?} is not a Stripe API version this build's SDK knows (it is pinned to {}); \
                     set the webhook endpoint to a known version",
                    sdk.as_str()
                ),
            ));
        }
    }
    Ok(versions)
}

fn billing_config(
    source: &Source,
    topup_max_cents: i64,
) -> Result<Option<BillingConfig>, ConfigError> {
    let key = source.text("SPELLHOST_STRIPE_SECRET_KEY");
    let secrets = source.text("SPELLHOST_STRIPE_WEBHOOK_SECRET");
    let api_base = source.text("SPELLHOST_STRIPE_API_BASE").map(str::to_owned);
    if let Some(base) = &api_base
        && !(base.starts_with("http://") || base.starts_with("https://"))
    {
        return Err(error("SPELLHOST_STRIPE_API_BASE", "must be an http(s) URL"));
    }
    let (key, secrets) = match (key, secrets) {
        (None, None) => return Ok(None),
        (Some(key), Some(secrets)) => (key, secrets),
        (Some(_), None) => {
            return Err(error(
                "SPELLHOST_STRIPE_WEBHOOK_SECRET",
                "required when SPELLHOST_STRIPE_SECRET_KEY is set",
            ));
        }
        (None, Some(_)) => {
            return Err(error(
                "SPELLHOST_STRIPE_SECRET_KEY",
                "required when SPELLHOST_STRIPE_WEBHOOK_SECRET is set",
            ));
        }
    };
    if !(key.starts_with("sk_") || key.starts_with("rk_")) {
        return Err(error(
            "SPELLHOST_STRIPE_SECRET_KEY",
            "must be a Stripe secret key (sk_… or rk_…)",
        ));
    }
    let webhook_secrets: Vec<SecretString> = secrets
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("whsec_") {
                Ok(SecretString::from(s.to_owned()))
            } else {
                Err(error(
                    "SPELLHOST_STRIPE_WEBHOOK_SECRET",
                    "each secret must start with whsec_",
                ))
            }
        })
        .collect::<Result<_, _>>()?;
    if webhook_secrets.is_empty() {
        return Err(error("SPELLHOST_STRIPE_WEBHOOK_SECRET", "no secret given"));
    }
    let event_amount_max_cents =
        source.parse("SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS", topup_max_cents)?;
    if !(1..=EVENT_AMOUNT_MAX_CENTS_LIMIT).contains(&event_amount_max_cents) {
        return Err(error(
            "SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS",
            format!("must be between 1 and {EVENT_AMOUNT_MAX_CENTS_LIMIT}"),
        ));
    }
    let scan_seconds: u64 = source.parse("SPELLHOST_RECHARGE_SCAN_INTERVAL_SECONDS", 60)?;
    if !(1..=3600).contains(&scan_seconds) {
        return Err(error(
            "SPELLHOST_RECHARGE_SCAN_INTERVAL_SECONDS",
            "must be between 1 and 3600",
        ));
    }
    Ok(Some(BillingConfig {
        stripe_secret_key: SecretString::from(key.to_owned()),
        webhook_secrets,
        api_base,
        api_versions: api_versions(source)?,
        event_amount_max_cents,
        recharge_scan_interval: std::time::Duration::from_secs(scan_seconds),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_a_laptop() {
        let config = Config::from_vars(&[]).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.database_url,
            "sqlite://./spellhost-data/spellhost.db"
        );
        assert_eq!(config.pricing, Pricing::default());
        assert!(config.billing.is_none());
        // The sandbox's shares are the ones its own defaults document (and the noisy-neighbour
        // figures were measured with): one run per worker per user, four slots per worker.
        let sandbox = SandboxConfig::default();
        assert_eq!(config.sandbox.workers, sandbox.workers);
        assert_eq!(config.sandbox.tenant_runs_max, sandbox.tenant_runs_max);
        assert_eq!(config.sandbox.runs_max, sandbox.runs_max);
        assert_eq!(config.sandbox.queue_depth, sandbox.queue_depth);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("SPELLHOST_LISTEN", "not-an-address"),
            ("SPELLHOST_PRICE_PER_BILLION_FUEL_MICROUSD", "-1"),
            ("SPELLHOST_CAST_BASE_FEE_MICROUSD", "1.5"),
            ("SPELLHOST_PRICE_MICROUSD_PER_WALL_MS", "-1"),
            ("SPELLHOST_SECRET_KEY", "short"),
            ("SPELLHOST_DATABASE_URL", "mysql://x"),
            ("SPELLHOST_WORKERS", "0"),
            ("SPELLHOST_RUNS_MAX", "0"),
            ("SPELLHOST_USER_CONCURRENT_CASTS_MAX", "0"),
            ("SPELLHOST_QUEUE_WAIT_MS_MAX", "0"),
            ("SPELLHOST_COMPILE_WORKERS", "0"),
            ("SPELLHOST_COMPILE_TIME_MS_MAX", "600001"),
            ("SPELLHOST_LEASE_TTL_MS", "100"),
            ("SPELLHOST_STRIPE_API_BASE", "ftp://x"),
            ("SPELLHOST_SELF_CHECK_INTERVAL_MS", "0"),
            ("SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE", "-1"),
            ("SPELLHOST_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("SPELLHOST_HTTP_HEADER_READ_TIMEOUT_SECS", "0"),
            ("SPELLHOST_HTTP_CONNECTIONS_PER_IP_MAX", "0"),
            ("SPELLHOST_CORS_ORIGINS", "https://app.example.com/path"),
            ("SPELLHOST_CORS_ORIGINS", "*"),
            ("SPELLHOST_METRICS_TOKEN", "short"),
            ("SPELLHOST_METRICS_LISTEN", "9091"),
            ("SPELLHOST_KEYS_PER_USER_MAX", "0"),
            ("SPELLHOST_WASM_THREAD_POLICY", "realtime"),
            ("SPELLHOST_SERVICE_THREAD_SLICE_US", "99"),
            ("SPELLHOST_SERVICE_THREAD_SLICE_US", "100001"),
        ] {
            let error = Config::from_vars(&[(name, value)]).expect_err(name);
            assert_eq!(error.variable, name, "{error}");
        }
        let stripe = [
            ("SPELLHOST_STRIPE_SECRET_KEY", "sk_test_x"),
            ("SPELLHOST_STRIPE_WEBHOOK_SECRET", "whsec_x"),
        ];
        for (name, value) in [
            ("SPELLHOST_STRIPE_API_VERSION", "2099-01-01.future"),
            ("SPELLHOST_STRIPE_API_VERSION", " , "),
            ("SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS", "0"),
            (
                "SPELLHOST_STRIPE_EVENT_AMOUNT_MAX_CENTS",
                "9223372036854775807",
            ),
            ("SPELLHOST_RECHARGE_SCAN_INTERVAL_SECONDS", "0"),
        ] {
            let mut vars = stripe.to_vec();
            vars.push((name, value));
            let error = Config::from_vars(&vars).expect_err(name);
            assert_eq!(error.variable, name, "{error}");
        }
    }

    #[test]
    fn the_service_threads_ask_for_the_shortest_slice_unless_told_otherwise() {
        use std::time::Duration;
        let slice = |vars: &[(&str, &str)]| {
            Config::from_vars(vars)
                .expect("config")
                .service_thread_slice
        };
        assert_eq!(slice(&[]), Some(Duration::from_micros(100)));
        assert_eq!(slice(&[("SPELLHOST_SERVICE_THREAD_SLICE_US", "0")]), None);
        assert_eq!(
            slice(&[("SPELLHOST_SERVICE_THREAD_SLICE_US", "3000")]),
            Some(Duration::from_millis(3))
        );
    }

    #[test]
    fn billing_defaults_pin_the_sdk_version_and_the_topup_maximum() {
        let config = Config::from_vars(&[
            ("SPELLHOST_STRIPE_SECRET_KEY", "sk_test_x"),
            ("SPELLHOST_STRIPE_WEBHOOK_SECRET", "whsec_x"),
            (
                "SPELLHOST_STRIPE_API_VERSION",
                "2026-09-30.endive, 2026-08-26.dahlia",
            ),
        ])
        .expect("valid");
        let billing = config.billing.expect("billing");
        assert_eq!(
            billing.api_versions,
            ["2026-09-30.endive", "2026-08-26.dahlia"]
        );
        assert_eq!(billing.event_amount_max_cents, config.topup_max_cents);
    }

    #[test]
    fn http_settings_parse_and_hsts_follows_an_https_public_url() {
        let config = Config::from_vars(&[
            (
                "SPELLHOST_TRUSTED_PROXIES",
                "172.16.0.0/12, fdaa::/16, 10.0.0.1",
            ),
            (
                "SPELLHOST_CORS_ORIGINS",
                "https://app.example.com/, http://localhost:3000",
            ),
            ("SPELLHOST_PUBLIC_URL", "https://api.example.com"),
            ("SPELLHOST_METRICS_LISTEN", "[::]:9091"),
        ])
        .expect("valid");
        let http = config.http;
        assert_eq!(http.trusted_proxies.len(), 3);
        assert_eq!(
            http.cors_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert!(http.hsts);
        assert_eq!(
            http.metrics_listen,
            Some("[::]:9091".parse().expect("addr"))
        );
        assert_eq!(http.rate_limit_authenticated_per_minute, 60);
        assert_eq!(http.rate_limit_anonymous_per_minute, 10);
        let plain = Config::from_vars(&[]).expect("defaults").http;
        assert!(!plain.hsts && plain.cors_origins.is_empty() && plain.metrics_token.is_none());
    }

    #[test]
    fn postgres_urls_are_redacted_in_debug_output() {
        let config =
            Config::from_vars(&[("SPELLHOST_DATABASE_URL", "postgres://app:hunter2@db/x")])
                .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

/// The offline advisory database publishing checks SBOM components against.
#[derive(Debug, Clone)]
pub struct AdvisoryConfig {
    /// A directory of OSV JSON records (`SPELLHOST_ADVISORY_DB`); `None`: no check, and each
    /// version says so.
    pub dir: Option<PathBuf>,
    /// Advisories at or above this severity refuse a publish (`SPELLHOST_ADVISORY_SEVERITY_MIN`,
    /// default high).
    pub severity_min: crate::supply_chain::advisory::Severity,
    /// How often the directory is looked at for changes (`SPELLHOST_ADVISORY_RELOAD_INTERVAL_MS`,
    /// default 60 000): a reload needs no restart, and a poll only reads file metadata.
    pub reload_interval: std::time::Duration,
}

fn advisory_config(source: &Source) -> Result<AdvisoryConfig, ConfigError> {
    let reload_ms: u64 = source.parse("SPELLHOST_ADVISORY_RELOAD_INTERVAL_MS", 60_000)?;
    if !(100..=86_400_000).contains(&reload_ms) {
        return Err(error(
            "SPELLHOST_ADVISORY_RELOAD_INTERVAL_MS",
            "must be between 100 and 86400000 (a day)",
        ));
    }
    Ok(AdvisoryConfig {
        dir: source.text("SPELLHOST_ADVISORY_DB").map(PathBuf::from),
        severity_min: source.parse(
            "SPELLHOST_ADVISORY_SEVERITY_MIN",
            crate::supply_chain::advisory::Severity::High,
        )?,
        reload_interval: std::time::Duration::from_millis(reload_ms),
    })
}

/// GitHub OAuth login (`SPELLHOST_GITHUB_*`). The state cookie is signed with a key derived
/// from the server secret (`SPELLHOST_SECRET_KEY`, or the one generated into the data
/// directory), so that every instance sharing the secret accepts it.
#[derive(Clone)]
pub struct GithubConfig {
    pub client_id: String,
    pub client_secret: SecretString,
    /// `https://github.com/login/oauth/authorize` unless set.
    pub authorize_url: String,
    /// `https://github.com/login/oauth/access_token` unless set.
    pub token_url: String,
    /// `https://api.github.com` unless set (`/user`, `/user/emails`).
    pub api_url: String,
}

impl std::fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .field("authorize_url", &self.authorize_url)
            .field("token_url", &self.token_url)
            .field("api_url", &self.api_url)
            .finish()
    }
}

/// A GitHub URL: https, or http to a loopback address only (a test's fake GitHub), so a
/// misconfiguration never sends the client secret or a user's token in clear text.
fn github_url(source: &Source, name: &str, default: &str) -> Result<String, ConfigError> {
    let url = source
        .text(name)
        .unwrap_or(default)
        .trim()
        .trim_end_matches('/');
    let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"];
    let valid = (url.starts_with("https://") && url.len() > "https://".len())
        || loopback.iter().any(|prefix| url.starts_with(prefix));
    if !valid || url.contains(['?', '#', ' ']) {
        return Err(error(
            name,
            "must be an https:// URL without query (http:// only to 127.0.0.1, localhost or [::1])",
        ));
    }
    Ok(url.to_owned())
}

fn github_config(source: &Source) -> Result<Option<GithubConfig>, ConfigError> {
    const ID: &str = "SPELLHOST_GITHUB_CLIENT_ID";
    const SECRET: &str = "SPELLHOST_GITHUB_CLIENT_SECRET";
    let (client_id, client_secret) = match (source.text(ID), source.text(SECRET)) {
        (None, None) => return Ok(None),
        (Some(id), Some(secret)) => (id.trim(), secret.trim()),
        (Some(_), None) => return Err(error(SECRET, format!("required when {ID} is set"))),
        (None, Some(_)) => return Err(error(ID, format!("required when {SECRET} is set"))),
    };
    if client_id.is_empty() || !client_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(error(ID, "must be printable ASCII"));
    }
    if client_secret.is_empty() || !client_secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(error(SECRET, "must be printable ASCII"));
    }
    Ok(Some(GithubConfig {
        client_id: client_id.to_owned(),
        client_secret: SecretString::from(client_secret.to_owned()),
        authorize_url: github_url(
            source,
            "SPELLHOST_GITHUB_AUTHORIZE_URL",
            "https://github.com/login/oauth/authorize",
        )?,
        token_url: github_url(
            source,
            "SPELLHOST_GITHUB_TOKEN_URL",
            "https://github.com/login/oauth/access_token",
        )?,
        api_url: github_url(source, "SPELLHOST_GITHUB_API_URL", "https://api.github.com")?,
    }))
}

fn session_ttl_ms(source: &Source) -> Result<i64, ConfigError> {
    const NAME: &str = "SPELLHOST_SESSION_TTL_SECS";
    // 30 days: a month between logins on one browser, as GitHub's own sessions; at most a
    // year, so a stolen token does not live forever.
    let seconds: i64 = source.parse(NAME, 30 * 24 * 3600)?;
    if !(60..=365 * 24 * 3600).contains(&seconds) {
        return Err(error(NAME, "must be between 60 and 31536000 (a year)"));
    }
    Ok(seconds * 1000)
}

fn service_thread_slice(source: &Source) -> Result<Option<std::time::Duration>, ConfigError> {
    use crate::threads::{SLICE_MAX, SLICE_MIN};
    const NAME: &str = "SPELLHOST_SERVICE_THREAD_SLICE_US";
    // The shortest slice the kernel grants: the HTTP runtime's and the money writer's turns
    // are short, and what matters is that they preempt a computing spell when they wake
    // (benches/README.md, "Noisy neighbour"). 0 leaves the kernel's default.
    let micros: u64 = source.parse(NAME, 100)?;
    if micros == 0 {
        return Ok(None);
    }
    let slice = std::time::Duration::from_micros(micros);
    if !(SLICE_MIN..=SLICE_MAX).contains(&slice) {
        return Err(error(
            NAME,
            "must be 0 (the kernel's default) or between 100 and 100000",
        ));
    }
    Ok(Some(slice))
}

#[cfg(test)]
mod github_tests {
    use super::*;

    #[test]
    fn github_login_needs_both_client_id_and_secret() {
        let config = Config::from_vars(&[]).expect("defaults");
        assert!(config.github.is_none());
        assert_eq!(config.session_ttl_ms, 30 * 24 * 3600 * 1000);
        for (set, missing) in [
            (
                "SPELLHOST_GITHUB_CLIENT_ID",
                "SPELLHOST_GITHUB_CLIENT_SECRET",
            ),
            (
                "SPELLHOST_GITHUB_CLIENT_SECRET",
                "SPELLHOST_GITHUB_CLIENT_ID",
            ),
        ] {
            let error = Config::from_vars(&[(set, "x")]).expect_err(set);
            assert_eq!(error.variable, missing, "{error}");
        }
        let both = [
            ("SPELLHOST_GITHUB_CLIENT_ID", "Iv1.abc"),
            ("SPELLHOST_GITHUB_CLIENT_SECRET", "hunter2-secret"),
        ];
        let github = Config::from_vars(&both)
            .expect("valid")
            .github
            .expect("github");
        assert_eq!(
            github.token_url,
            "https://github.com/login/oauth/access_token"
        );
        assert_eq!(github.api_url, "https://api.github.com");
        assert!(!format!("{github:?}").contains("hunter2"));
    }

    #[test]
    fn github_urls_are_https_or_loopback() {
        let both = [
            ("SPELLHOST_GITHUB_CLIENT_ID", "Iv1.abc"),
            ("SPELLHOST_GITHUB_CLIENT_SECRET", "secret"),
        ];
        for (name, value, ok) in [
            ("SPELLHOST_GITHUB_API_URL", "http://127.0.0.1:9999", true),
            (
                "SPELLHOST_GITHUB_API_URL",
                "https://ghe.example.com/api/v3/",
                true,
            ),
            ("SPELLHOST_GITHUB_API_URL", "http://ghe.example.com", false),
            (
                "SPELLHOST_GITHUB_TOKEN_URL",
                "http://127.0.0.1.evil.example/x",
                false,
            ),
            (
                "SPELLHOST_GITHUB_AUTHORIZE_URL",
                "https://github.com/x?y=1",
                false,
            ),
            ("SPELLHOST_SESSION_TTL_SECS", "0", false),
        ] {
            let mut vars = both.to_vec();
            vars.push((name, value));
            match Config::from_vars(&vars) {
                Ok(_) => assert!(ok, "{name}={value} accepted"),
                Err(error) => {
                    assert!(!ok, "{name}={value}: {error}");
                    assert_eq!(error.variable, name);
                }
            }
        }
    }
}
