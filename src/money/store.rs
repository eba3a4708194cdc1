//! The money path's own database access: one transaction interface ([`Conn`]) over both
//! backends, so that every money operation — borrowing, renewing and returning leases,
//! settling batches of casts, sweeping expired leases — is written once.
//!
//! - **SQLite**: one writer thread owns a rusqlite connection and runs every money transaction
//!   in turn (`BEGIN IMMEDIATE`). sqlx's SQLite driver hands each statement to a worker thread
//!   and back (≈30 µs per statement here); on the writer's own connection a whole settlement
//!   batch costs about as much as one such hand-off. Settlements queued while a batch runs are
//!   committed together in the next one: group commit that forms by itself under load and adds
//!   nothing at concurrency 1.
//! - **PostgreSQL**: transactions on the sqlx pool; settlements go through one committer task
//!   per instance, batched the same way. Row locks serialize instances: every money
//!   transaction locks users (by id), then budgets (by id), then leases, then the ledger head.
//!
//! A money transaction reads its time with [`Conn::now_ms`]: the database's clock on
//! PostgreSQL (one clock for every instance), the host's on SQLite (one host), plus the test
//! offset of [`crate::store::Clock`].

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::MoneyError;
use super::batch::{self, SettleRequest, Settled};
use crate::store::{Backend, Clock, Db};

/// Settlements committed in one transaction at most; also bounds a batch's statement size
/// (SQLite allows 32 766 parameters; a cast row takes 13).
pub const BATCH_MAX: usize = 256;

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Text(String),
    /// A NULL in a text column.
    NullText,
    /// A NULL in an integer column.
    NullInt,
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Arg::Int(value)
    }
}
impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Arg::Text(value.to_owned())
    }
}
impl From<String> for Arg {
    fn from(value: String) -> Self {
        Arg::Text(value)
    }
}
impl From<Option<i64>> for Arg {
    fn from(value: Option<i64>) -> Self {
        value.map_or(Arg::NullInt, Arg::Int)
    }
}
impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        value.map_or(Arg::NullText, Arg::Text)
    }
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Arg::Int(value) => ToSqlOutput::Borrowed(ValueRef::Integer(*value)),
            Arg::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Arg::NullText | Arg::NullInt => ToSqlOutput::Borrowed(ValueRef::Null),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Int(i64),
    Text(String),
    Null,
}

/// One result row, read by column name (so a reordered column is an error, not a swap).
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    fn value(&self, name: &str) -> Result<&Value, MoneyError> {
        self.columns
            .iter()
            .position(|c| c == name)
            .and_then(|i| self.values.get(i))
            .ok_or_else(|| MoneyError::Corrupt(format!("no column {name} in the result")))
    }

    pub fn int(&self, name: &str) -> Result<i64, MoneyError> {
        match self.value(name)? {
            Value::Int(value) => Ok(*value),
            other => Err(MoneyError::Corrupt(format!(
                "{name} is {other:?}, not an integer"
            ))),
        }
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>, MoneyError> {
        match self.value(name)? {
            Value::Null => Ok(None),
            Value::Int(value) => Ok(Some(*value)),
            other => Err(MoneyError::Corrupt(format!(
                "{name} is {other:?}, not an integer"
            ))),
        }
    }

    pub fn text(&self, name: &str) -> Result<String, MoneyError> {
        match self.value(name)? {
            Value::Text(text) => Ok(text.clone()),
            other => Err(MoneyError::Corrupt(format!(
                "{name} is {other:?}, not text"
            ))),
        }
    }

    pub fn opt_text(&self, name: &str) -> Result<Option<String>, MoneyError> {
        match self.value(name)? {
            Value::Null => Ok(None),
            Value::Text(text) => Ok(Some(text.clone())),
            other => Err(MoneyError::Corrupt(format!(
                "{name} is {other:?}, not text"
            ))),
        }
    }
}

/// One money transaction. Dropping it without [`Conn::commit`] rolls it back. SQL uses `$1,
/// $2, …` in order of first appearance (both backends read them that way) and lowercase
/// column names.
pub trait Conn: Send {
    fn backend(&self) -> Backend;
    fn query<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<Row>, MoneyError>>;
    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<u64, MoneyError>>;
    fn commit(&mut self) -> BoxFuture<'_, Result<(), MoneyError>>;
    /// Now, in Unix ms, on the clock that decides money.
    fn now_ms(&mut self) -> BoxFuture<'_, Result<i64, MoneyError>>;

    /// ` FOR UPDATE` on PostgreSQL (row locks); nothing on SQLite, whose write transactions
    /// are already exclusive.
    fn for_update(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
}

/// Work done on the database by the money path, exported as metrics: statements and
/// transactions per cast are the figure the design is judged by.
#[derive(Debug, Default)]
pub struct DbCounters {
    pub statements: AtomicU64,
    pub transactions: AtomicU64,
    pub batches: AtomicU64,
    pub settlements: AtomicU64,
    /// SQLite only: the writer's own WAL checkpoints, and the time they held it up (see
    /// `money::wal`).
    pub checkpoints: AtomicU64,
    pub checkpoint_microseconds: AtomicU64,
    /// SQLite only: flushes of the WAL ahead of its checkpoint, on a thread of their own.
    pub wal_flushes: AtomicU64,
    /// SQLite only: the checkpoints run off the writer, on that thread, and their time.
    pub background_checkpoints: AtomicU64,
    pub background_checkpoint_microseconds: AtomicU64,
}

/// Failures injected into settlement batches, for tests of the retry path: each counter is
/// the number of upcoming batch attempts to fail at that point.
#[derive(Debug, Default)]
pub struct FailPoints {
    /// Fail after all writes, before the commit (the transaction rolls back).
    pub before_commit: std::sync::atomic::AtomicU32,
    /// Fail after the commit, as a lost acknowledgement would (the writes are durable).
    pub after_commit: std::sync::atomic::AtomicU32,
}

impl FailPoints {
    /// Whether to fail here now (consumes one).
    pub fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

type TxJob = Box<dyn for<'c> FnOnce(Box<dyn Conn + 'c>) -> BoxFuture<'c, ()> + Send>;

/// Where a queued settlement's outcome arrives.
pub type SettleReply = tokio::sync::oneshot::Receiver<Result<Settled, MoneyError>>;

struct SettleJob {
    request: SettleRequest,
    reply: tokio::sync::oneshot::Sender<Result<Settled, MoneyError>>,
}

enum Job {
    Transact(TxJob),
    Settle(Box<SettleJob>),
}

/// The money path's database handle: the SQLite writer thread, or the PostgreSQL pool and its
/// settlement committer.
pub struct Store {
    kind: Kind,
    counters: Arc<DbCounters>,
    failpoints: Arc<FailPoints>,
}

enum Kind {
    Sqlite(std::sync::mpsc::Sender<Job>),
    Postgres {
        pool: sqlx::AnyPool,
        clock: Clock,
        settlements: tokio::sync::mpsc::UnboundedSender<SettleJob>,
    },
}

impl Store {
    /// Opens the money path's connection (SQLite: a writer thread; PostgreSQL: the pool's).
    /// Must be called inside a tokio runtime.
    pub fn open(db: &Db, url: &str) -> Result<Store, MoneyError> {
        let counters = Arc::new(DbCounters::default());
        let failpoints = Arc::new(FailPoints::default());
        let kind = match db.backend() {
            Backend::Sqlite => Kind::Sqlite(spawn_sqlite_writer(
                url,
                db.clock().clone(),
                counters.clone(),
                failpoints.clone(),
            )?),
            Backend::Postgres => {
                let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(postgres_committer(
                    db.writer().clone(),
                    db.clock().clone(),
                    counters.clone(),
                    failpoints.clone(),
                    receiver,
                ));
                Kind::Postgres {
                    pool: db.writer().clone(),
                    clock: db.clock().clone(),
                    settlements: sender,
                }
            }
        };
        Ok(Store {
            kind,
            counters,
            failpoints,
        })
    }

    pub fn counters(&self) -> &DbCounters {
        &self.counters
    }

    pub fn failpoints(&self) -> &FailPoints {
        &self.failpoints
    }

    /// Runs `op` in a money transaction; `op` commits (or returns an error, which rolls back).
    pub async fn transact<T, F>(&self, op: F) -> Result<T, MoneyError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(Box<dyn Conn + 'c>) -> BoxFuture<'c, Result<T, MoneyError>>
            + Send
            + 'static,
    {
        match &self.kind {
            Kind::Sqlite(writer) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let job: TxJob = Box::new(move |conn| {
                    Box::pin(async move {
                        let _ = reply.send(op(conn).await);
                    })
                });
                writer
                    .send(Job::Transact(job))
                    .map_err(|_| MoneyError::WriterGone)?;
                answer.await.map_err(|_| MoneyError::WriterGone)?
            }
            Kind::Postgres { pool, clock, .. } => {
                let conn = PgConn::begin(pool, clock, &self.counters).await?;
                op(Box::new(conn)).await
            }
        }
    }

    /// Queues a settlement for the next batch without waiting: its outcome arrives on the
    /// returned channel once the batch has committed (or failed for good). It neither blocks
    /// nor takes a lock, so any thread may call it.
    pub fn enqueue(&self, request: SettleRequest) -> Result<SettleReply, MoneyError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = SettleJob { request, reply };
        let sent = match &self.kind {
            Kind::Sqlite(writer) => writer.send(Job::Settle(Box::new(job))).is_ok(),
            Kind::Postgres { settlements, .. } => settlements.send(job).is_ok(),
        };
        if sent {
            Ok(answer)
        } else {
            Err(MoneyError::WriterGone)
        }
    }
}

// --- SQLite: the writer thread -----------------------------------------------------------

/// How long a money transaction waits for SQLite's write lock held by another connection
/// (sqlx's writer in this process, or an admin command in another).
const SQLITE_BUSY_TIMEOUT_MS: u64 = 10_000;

fn sqlite_path(url: &str) -> String {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    path.split('?').next().unwrap_or(path).to_owned()
}

fn spawn_sqlite_writer(
    url: &str,
    clock: Clock,
    counters: Arc<DbCounters>,
    failpoints: Arc<FailPoints>,
) -> Result<std::sync::mpsc::Sender<Job>, MoneyError> {
    let path = sqlite_path(url);
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};"
    ))?;
    conn.set_prepared_statement_cache_capacity(256);
    let mut wal = super::wal::WalCare::start(&conn, &path, counters.clone())
        .map_err(|e| MoneyError::Corrupt(format!("starting the WAL thread: {e}")))?;
    let (sender, receiver) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("spellhost-money".into())
        .spawn(move || {
            let writer = SqliteWriter {
                clock,
                counters,
                failpoints,
                numbering_checked: Default::default(),
            };
            writer.run(&mut conn, &receiver, &mut wal);
        })
        .map_err(|e| MoneyError::Corrupt(format!("starting the money writer: {e}")))?;
    Ok(sender)
}

/// Statement texts remembered as checked; see [`SqliteWriter::numbering_checked`].
const NUMBERING_CHECKED_MAX: usize = 1024;

struct SqliteWriter {
    clock: Clock,
    counters: Arc<DbCounters>,
    failpoints: Arc<FailPoints>,
    /// Statements whose `$N` numbering was checked (see [`SqliteConn::prepare`]): the check
    /// looks up each parameter's name, a linear scan in SQLite, so a batch's multi-row insert
    /// of a few hundred parameters cost more than running it; once per statement text is
    /// enough, as the text decides the numbering.
    numbering_checked: std::sync::Mutex<HashSet<String>>,
}

impl SqliteWriter {
    fn run(
        &self,
        conn: &mut rusqlite::Connection,
        jobs: &std::sync::mpsc::Receiver<Job>,
        wal: &mut super::wal::WalCare,
    ) {
        // The loop ends when every sender (the `Store`) is gone.
        while let Ok(job) = jobs.recv() {
            // A panic in one job (a bug) must not take the money path down with it: its
            // callers see their job unanswered, the writer carries on.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run_one(conn, jobs, job);
            }));
            if outcome.is_err() {
                tracing::error!("a money transaction panicked; the writer continues");
                Self::finish(conn);
            }
            // The job's callers have their answers: a checkpoint its commits made due no
            // longer delays them.
            wal.after_job(conn);
        }
    }

    fn run_one(
        &self,
        conn: &mut rusqlite::Connection,
        jobs: &std::sync::mpsc::Receiver<Job>,
        job: Job,
    ) {
        match job {
            Job::Transact(op) => self.transact(conn, op),
            Job::Settle(first) => {
                // Everything queued meanwhile goes into this batch; a transaction job met
                // on the way waits until the batch is committed.
                let mut batch = vec![*first];
                let mut deferred = None;
                while batch.len() < BATCH_MAX && deferred.is_none() {
                    match jobs.try_recv() {
                        Ok(Job::Settle(job)) => batch.push(*job),
                        Ok(Job::Transact(op)) => deferred = Some(op),
                        Err(_) => break,
                    }
                }
                self.settle(conn, batch);
                if let Some(op) = deferred {
                    self.transact(conn, op);
                }
            }
        }
    }

    fn begin<'c>(
        &'c self,
        conn: &'c mut rusqlite::Connection,
    ) -> Result<SqliteConn<'c>, MoneyError> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(SqliteConn {
            conn,
            clock: &self.clock,
            counters: &self.counters,
            numbering_checked: &self.numbering_checked,
        })
    }

    /// Rolls back whatever a job left open (it returned an error or never committed).
    fn finish(conn: &mut rusqlite::Connection) {
        if !conn.is_autocommit()
            && let Err(error) = conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %error, "rolling back a money transaction failed");
        }
    }

    fn transact(&self, conn: &mut rusqlite::Connection, op: TxJob) {
        match self.begin(conn) {
            Ok(tx) => futures::executor::block_on(op(Box::new(tx))),
            Err(error) => {
                // The job is dropped unanswered; its caller sees the writer as gone for this
                // one transaction and reports the error.
                tracing::error!(error = %error, "starting a money transaction failed");
            }
        }
        Self::finish(conn);
    }

    fn settle(&self, conn: &mut rusqlite::Connection, jobs: Vec<SettleJob>) {
        let requests: Vec<SettleRequest> = jobs.iter().map(|j| j.request.clone()).collect();
        let outcome = retry_blocking(|| {
            let result = self.begin(conn).and_then(|tx| {
                futures::executor::block_on(batch::settle_batch(
                    Box::new(tx),
                    &requests,
                    &self.failpoints,
                ))
            });
            Self::finish(conn);
            result
        });
        match outcome {
            Ok(results) => {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .settlements
                    .fetch_add(results.len() as u64, Ordering::Relaxed);
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            // The batch keeps failing: settle one by one, so one bad settlement cannot take
            // the others down with it.
            Err(_) if jobs.len() > 1 => {
                for job in jobs {
                    self.settle(conn, vec![job]);
                }
            }
            Err(error) => {
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(MoneyError::SettlementFailed(error.to_string())));
                }
            }
        }
    }
}

/// Attempts of one batch before it is split (or, alone, failed).
const BATCH_ATTEMPTS: u32 = 3;

fn backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(5 * u64::from(attempt) * u64::from(attempt))
}

fn retry_blocking<T>(mut attempt: impl FnMut() -> Result<T, MoneyError>) -> Result<T, MoneyError> {
    let mut last = None;
    for n in 0..BATCH_ATTEMPTS {
        std::thread::sleep(backoff(n));
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) => {
                tracing::warn!(error = %error, attempt = n + 1, "a settlement batch failed; retrying");
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or(MoneyError::WriterGone))
}

struct SqliteConn<'c> {
    conn: &'c mut rusqlite::Connection,
    clock: &'c Clock,
    counters: &'c DbCounters,
    numbering_checked: &'c std::sync::Mutex<HashSet<String>>,
}

impl SqliteConn<'_> {
    fn prepare(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<rusqlite::CachedStatement<'_>, MoneyError> {
        self.counters.statements.fetch_add(1, Ordering::Relaxed);
        let statement = self.conn.prepare_cached(sql)?;
        // `$N` are named parameters to SQLite, numbered by first appearance: make sure that
        // numbering is the one the arguments are in (the count every time, the names once per
        // statement text).
        let count = statement.parameter_count();
        // Only this writer's thread takes the lock.
        let mut checked = self
            .numbering_checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = checked.contains(sql);
        let in_order = count == args.len()
            && (known
                || (1..=count)
                    .all(|i| statement.parameter_name(i) == Some(format!("${i}").as_str())));
        if !in_order {
            return Err(MoneyError::Corrupt(format!(
                "statement parameters out of order or miscounted: {sql}"
            )));
        }
        if !known {
            // The texts are the program's own (a batch's vary only with its size): a bound
            // in case that ever changes.
            if checked.len() >= NUMBERING_CHECKED_MAX {
                checked.clear();
            }
            checked.insert(sql.to_owned());
        }
        drop(checked);
        Ok(statement)
    }

    fn query_now(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<Row>, MoneyError> {
        let mut statement = self.prepare(sql, args)?;
        let columns: Arc<[String]> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut rows = statement.query(rusqlite::params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                use rusqlite::types::ValueRef;
                values.push(match row.get_ref(i)? {
                    ValueRef::Integer(value) => Value::Int(value),
                    ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
                    ValueRef::Null => Value::Null,
                    other => {
                        return Err(MoneyError::Corrupt(format!(
                            "unexpected {:?} in column {}",
                            other.data_type(),
                            columns[i]
                        )));
                    }
                });
            }
            out.push(Row {
                columns: columns.clone(),
                values,
            });
        }
        Ok(out)
    }
}

impl Conn for SqliteConn<'_> {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn query<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<Row>, MoneyError>> {
        let result = self.query_now(sql, &args);
        Box::pin(std::future::ready(result))
    }

    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<u64, MoneyError>> {
        let result = self.prepare(sql, &args).and_then(|mut statement| {
            Ok(statement.execute(rusqlite::params_from_iter(args.iter()))? as u64)
        });
        Box::pin(std::future::ready(result))
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), MoneyError>> {
        self.counters.statements.fetch_add(1, Ordering::Relaxed);
        let result = self.conn.execute_batch("COMMIT").map_err(MoneyError::from);
        Box::pin(std::future::ready(result))
    }

    fn now_ms(&mut self) -> BoxFuture<'_, Result<i64, MoneyError>> {
        // One host: its clock is the database's.
        Box::pin(std::future::ready(Ok(self.clock.now_ms())))
    }
}

// --- PostgreSQL ------------------------------------------------------------------------------

struct PgConn {
    tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
    clock: Clock,
    counters: Arc<DbCounters>,
}

impl PgConn {
    async fn begin(
        pool: &sqlx::AnyPool,
        clock: &Clock,
        counters: &Arc<DbCounters>,
    ) -> Result<PgConn, MoneyError> {
        let tx = pool.begin().await?;
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(PgConn {
            tx: Some(tx),
            clock: clock.clone(),
            counters: counters.clone(),
        })
    }

    fn tx(&mut self) -> Result<&mut sqlx::Transaction<'static, sqlx::Any>, MoneyError> {
        self.tx
            .as_mut()
            .ok_or_else(|| MoneyError::Corrupt("the transaction is already committed".into()))
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for arg in args {
        query = match arg {
            Arg::Int(value) => query.bind(value),
            Arg::Text(text) => query.bind(text),
            Arg::NullText => query.bind(None::<String>),
            Arg::NullInt => query.bind(None::<i64>),
        };
    }
    query
}

fn decode(row: &sqlx::any::AnyRow, columns: &Arc<[String]>) -> Result<Row, MoneyError> {
    use sqlx::Row as _;
    let mut values = Vec::with_capacity(columns.len());
    for i in 0..columns.len() {
        let value = if let Ok(value) = row.try_get::<Option<i64>, _>(i) {
            value.map_or(Value::Null, Value::Int)
        } else {
            row.try_get::<Option<String>, _>(i)?
                .map_or(Value::Null, Value::Text)
        };
        values.push(value);
    }
    Ok(Row {
        columns: columns.clone(),
        values,
    })
}

impl Conn for PgConn {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn query<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<Vec<Row>, MoneyError>> {
        Box::pin(async move {
            use sqlx::{Column as _, Row as _};
            self.counters.statements.fetch_add(1, Ordering::Relaxed);
            let query = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())), args);
            let rows = query.fetch_all(&mut **self.tx()?).await?;
            let Some(first) = rows.first() else {
                return Ok(Vec::new());
            };
            let columns: Arc<[String]> = first
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect();
            rows.iter().map(|row| decode(row, &columns)).collect()
        })
    }

    fn execute<'a>(
        &'a mut self,
        sql: &'a str,
        args: Vec<Arg>,
    ) -> BoxFuture<'a, Result<u64, MoneyError>> {
        Box::pin(async move {
            self.counters.statements.fetch_add(1, Ordering::Relaxed);
            let query = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())), args);
            Ok(query.execute(&mut **self.tx()?).await?.rows_affected())
        })
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), MoneyError>> {
        Box::pin(async move {
            self.counters.statements.fetch_add(1, Ordering::Relaxed);
            match self.tx.take() {
                Some(tx) => Ok(tx.commit().await?),
                None => Err(MoneyError::Corrupt("committed twice".into())),
            }
        })
    }

    fn now_ms(&mut self) -> BoxFuture<'_, Result<i64, MoneyError>> {
        Box::pin(async move {
            // The database's clock: every instance agrees on it, whatever their own say.
            let rows = self
                .query(
                    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms",
                    Vec::new(),
                )
                .await?;
            let now = rows
                .first()
                .ok_or_else(|| MoneyError::Corrupt("no time from the database".into()))?
                .int("now_ms")?;
            Ok(now.saturating_add(self.clock.offset_ms()))
        })
    }
}

async fn postgres_committer(
    pool: sqlx::AnyPool,
    clock: Clock,
    counters: Arc<DbCounters>,
    failpoints: Arc<FailPoints>,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<SettleJob>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A panic (a bug) fails this batch's casts, not the committer.
        let settled = std::panic::AssertUnwindSafe(settle_postgres(
            &pool,
            &clock,
            &counters,
            &failpoints,
            batch,
        ))
        .catch_unwind()
        .await;
        if settled.is_err() {
            tracing::error!("a settlement batch panicked; the committer continues");
        }
    }
}

async fn settle_postgres(
    pool: &sqlx::AnyPool,
    clock: &Clock,
    counters: &Arc<DbCounters>,
    failpoints: &FailPoints,
    jobs: Vec<SettleJob>,
) {
    let requests: Vec<SettleRequest> = jobs.iter().map(|j| j.request.clone()).collect();
    let mut last = None;
    for attempt in 0..BATCH_ATTEMPTS {
        tokio::time::sleep(backoff(attempt)).await;
        let result = match PgConn::begin(pool, clock, counters).await {
            Ok(conn) => batch::settle_batch(Box::new(conn), &requests, failpoints).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(results) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters
                    .settlements
                    .fetch_add(results.len() as u64, Ordering::Relaxed);
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
                return;
            }
            Err(error) => {
                tracing::warn!(error = %error, attempt = attempt + 1, "a settlement batch failed; retrying");
                last = Some(error);
            }
        }
    }
    if jobs.len() > 1 {
        for job in jobs {
            Box::pin(settle_postgres(
                pool,
                clock,
                counters,
                failpoints,
                vec![job],
            ))
            .await;
        }
        return;
    }
    let message = last.map_or_else(|| "unknown".to_owned(), |e| e.to_string());
    for job in jobs {
        let _ = job
            .reply
            .send(Err(MoneyError::SettlementFailed(message.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite://./data/spellhost.db"),
            "./data/spellhost.db"
        );
        assert_eq!(sqlite_path("sqlite:///tmp/x.db?mode=rwc"), "/tmp/x.db");
        assert_eq!(sqlite_path("sqlite:x.db"), "x.db");
    }
}
