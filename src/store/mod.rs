//! Database access: one schema, two dialects (SQLite embedded, PostgreSQL for many instances),
//! through sqlx's `Any` driver with runtime queries that both dialects accept (`$N`
//! placeholders, `RETURNING`, `ON CONFLICT`). Queries are grouped per aggregate in the modules
//! that own them (`money`, `auth`, `registry`); this module owns connections and migrations.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a statement waits for SQLite's write lock (another process, e.g. an admin command)
/// before failing. Within one process writes are already serialized by the single-connection
/// writer pool, so this only covers other processes.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: a writer pool and a reader pool. For SQLite the writer has one connection, so
/// writes queue in-process instead of failing with SQLITE_BUSY; readers run in parallel (WAL).
/// For PostgreSQL both are the same pool.
#[derive(Clone)]
pub struct Db {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
    clock: Clock,
}

/// The clock that decides money: hold expiry, budget periods, ledger times. Tests move it with
/// [`Clock::advance`] instead of sleeping.
#[derive(Clone, Default)]
pub struct Clock {
    offset_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        now_ms().saturating_add(self.offset_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// What tests moved this clock by, in ms (added to the database's clock too).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves this clock (and every clone of it) forward by `ms`; for tests.
    pub fn advance(&self, ms: i64) {
        self.offset_ms
            .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

pub type Tx = Transaction<'static, Any>;

/// The caches that other instances drop when their epoch moves (`cache_epochs`, polled by
/// `poll_epochs`).
#[derive(Debug, Clone, Copy)]
pub enum CacheEpoch {
    /// API keys and sessions.
    Keys,
    /// Spell versions and their resolution.
    Spells,
}

/// Moves a cache's epoch in `tx` and returns the new one: once it commits, every instance
/// drops its copy within a poll (this one at once, given the epoch: `on_epoch`).
pub async fn bump_cache_epoch(tx: &mut Tx, cache: CacheEpoch) -> sqlx::Result<i64> {
    let name = match cache {
        CacheEpoch::Keys => "keys",
        CacheEpoch::Spells => "spells",
    };
    let (epoch,): (i64,) =
        sqlx::query_as("UPDATE cache_epochs SET epoch = epoch + 1 WHERE name = $1 RETURNING epoch")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
    Ok(epoch)
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            return Ok(Db {
                backend: Backend::Postgres,
                writer: pool.clone(),
                reader: pool,
                clock: Clock::default(),
            });
        }
        let writer = sqlite_pool(url, 1).await?;
        let reader = sqlite_pool(url, max_connections.max(2)).await?;
        Ok(Db {
            backend: Backend::Sqlite,
            writer,
            reader,
            clock: Clock::default(),
        })
    }

    /// Now, on the clock that decides money.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.writer)
            .await
            .context("applying database migrations")
    }

    /// A write transaction. On SQLite it runs on the single writer connection and starts with
    /// `BEGIN IMMEDIATE`, so it holds the write lock from its first read: another process (an
    /// admin command) can never make its read-then-write fail half-way.
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
    }

    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// `sql` with ` FOR UPDATE` on PostgreSQL (row lock); SQLite's write transactions are
    /// already exclusive. Both strings are static, chosen by the caller.
    pub fn pick(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        }
    }

    /// Locks a user's row for the rest of `tx` (PostgreSQL; SQLite's write transaction is
    /// exclusive already), so that checks counting the user's rows run one after the other.
    pub async fn lock_user(&self, tx: &mut Tx, user_id: i64) -> sqlx::Result<()> {
        sqlx::query(self.pick(
            "SELECT id FROM users WHERE id = $1",
            "SELECT id FROM users WHERE id = $1 FOR UPDATE",
        ))
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Per-connection SQLite settings. WAL lets readers run beside the writer; `synchronous =
/// NORMAL` in WAL mode is durable across process crashes (what we promise clients), only an OS
/// crash or power loss may lose the last transactions.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
    PRAGMA foreign_keys = ON; PRAGMA busy_timeout = ";

fn sqlite_options(url: &str) -> anyhow::Result<AnyConnectOptions> {
    use sqlx::ConnectOptions as _;
    let url = if url.contains('?') {
        url.to_owned()
    } else {
        format!("{url}?mode=rwc")
    };
    let options = AnyConnectOptions::from_str(&url).context("parsing the SQLite URL")?;
    Ok(options.log_statements(tracing::log::LevelFilter::Trace))
}

async fn sqlite_pool(url: &str, max_connections: u32) -> anyhow::Result<AnyPool> {
    let options = sqlite_options(url)?;
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|connection, _| {
            Box::pin(async move {
                use sqlx::Executor as _;
                let pragmas = format!("{SQLITE_PRAGMAS}{};", SQLITE_BUSY_TIMEOUT.as_millis());
                connection.execute(sqlx::AssertSqlSafe(pragmas)).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("opening the SQLite database {url}"))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Whether an error is a unique-constraint violation (both dialects).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() || db.code().as_deref() == Some("2067") // SQLITE_CONSTRAINT_UNIQUE
        }
        _ => false,
    }
}

/// A Unix-millisecond time as RFC 3339 in UTC (`2026-12-02T10:30:00.000Z`), as the API shows
/// times.
pub fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// An RFC 3339 time as Unix milliseconds; `None` if it does not parse or is out of range.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}
