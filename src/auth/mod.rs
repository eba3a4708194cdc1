//! Who is calling: users, API keys, and the caches that keep argon2 and the database off the
//! hot path.

pub mod github;
pub mod keys;
pub mod oauth_state;
pub mod scopes;
pub mod sessions;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

pub use keys::{ApiKey, MalformedKey};
pub use scopes::{AllowedSpells, KeyScope, KeyScopes, SpellPattern};
pub use sessions::{NewSession, SessionToken};

use crate::store::{Db, is_unique_violation, now_ms};

/// How long a successful verification is trusted without argon2. The key's row (kept in
/// memory, dropped when the key is deleted in any process) is checked on every request, so a
/// deleted key is refused at once here and within an epoch poll elsewhere.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Entries kept in the verified-key cache; past this it is cleared (cheap, and rare).
const VERIFIED_CACHE_MAX: usize = 100_000;
/// How long a request waits for an argon2 slot before it is answered 503. Verifications of one
/// key id run one at a time (below), so the queue holds at most one request per distinct key
/// id: a flood of wrong secrets for a few ids delays a fresh key by a few verifications, and
/// only many distinct live ids at once (real load) can exhaust this.
const ARGON2_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a request waits for the verification of another request with the same key id
/// before it is refused (429): a flood of wrong secrets for one id queues behind itself.
const SAME_KEY_WAIT_MAX: Duration = Duration::from_secs(5);
/// How long a failed verification is remembered: repeating a wrong key costs no argon2.
const FAILED_TTL: Duration = Duration::from_secs(10);
/// How stale a key's recorded last use may get before a request writes it again: listings
/// show it to the minute, and a write per request would put the database on the hot path.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;
/// How long a key's row is served from memory. Deletions in this process, and in others
/// through the `keys` cache epoch, drop it at once; this only bounds what a missed epoch could
/// leave stale.
const KEY_ROW_TTL: Duration = Duration::from_secs(60);
/// How long an unknown key id is remembered as unknown: a flood of well-formed made-up keys
/// costs no database reads.
const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(10);

/// Concurrent argon2 verifications. Each takes ~15 ms of CPU and 19 MiB: two keeps a burst of
/// bad keys from starving the sandbox workers or the memory.
const ARGON2_CONCURRENCY: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or invalid API key")]
    Unauthorized,
    /// A key may not grant more than it has itself.
    #[error("a key cannot grant {0} it does not have itself")]
    Escalation(&'static str),
    #[error("too many key verifications in progress")]
    Busy,
    /// The caller's gate refused to spend a verification (the address is over its limit).
    #[error("too many unverified requests")]
    Throttled,
    /// Another request is verifying a secret for the same key id, and waited too long.
    #[error("too many verifications of this key at once")]
    KeyBusy,
    /// The user already has as many keys as they may.
    #[error("at most {max} {limit}")]
    LimitReached { limit: &'static str, max: i64 },
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no such user {0:?}")]
    UnknownUser(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An authenticated caller and what their key allows.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub key_id: String,
    pub handle: String,
    pub is_admin: bool,
    pub scopes: KeyScopes,
    pub allowed_spells: AllowedSpells,
    pub expires_at_ms: Option<i64>,
    /// The key's own limit on casts in flight, if it has one (the user's limit binds too).
    pub concurrent_casts_max: Option<NonZeroU32>,
    /// The session the caller authenticated with (`None`: an API key). A session's
    /// `key_id` is its `sps_<id>` prefix, which no API key id can equal.
    pub session_id: Option<String>,
}

impl Caller {
    /// What a new key made by this caller may have at most: never more than this key has.
    pub fn may_grant(&self, spec: &KeySpec) -> Result<(), AuthError> {
        if !spec.scopes.is_subset_of(self.scopes) {
            return Err(AuthError::Escalation("scopes"));
        }
        if !spec.allowed_spells.is_within(&self.allowed_spells) {
            return Err(AuthError::Escalation("spells"));
        }
        if let Some(own) = self.expires_at_ms
            && spec.expires_at_ms.is_none_or(|new| new > own)
        {
            return Err(AuthError::Escalation("a later expiry"));
        }
        if let Some(own) = self.concurrent_casts_max
            && spec.concurrent_casts_max.is_none_or(|new| new > own)
        {
            return Err(AuthError::Escalation("a higher concurrent_casts_max"));
        }
        Ok(())
    }
}

/// What a new key may do.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub name: String,
    pub scopes: KeyScopes,
    pub allowed_spells: AllowedSpells,
    pub expires_at_ms: Option<i64>,
    /// Casts in flight through this key at most (`None`: only the user's limit).
    pub concurrent_casts_max: Option<NonZeroU32>,
}

impl KeySpec {
    /// Every scope, every spell, no expiry: what existing keys and the admin CLI's keys have.
    pub fn unrestricted(name: &str) -> KeySpec {
        KeySpec {
            name: name.to_owned(),
            scopes: KeyScopes::ALL,
            allowed_spells: AllowedSpells::ANY,
            expires_at_ms: None,
            concurrent_casts_max: None,
        }
    }
}

#[derive(Clone, sqlx::FromRow)]
struct KeyRow {
    user_id: i64,
    secret_hash: String,
    deleted_at_ms: Option<i64>,
    handle: String,
    is_admin: i64,
    scopes: String,
    allowed_spells: Option<String>,
    expires_at_ms: Option<i64>,
    last_used_at_ms: Option<i64>,
    concurrent_casts_max: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub handle: String,
    pub email: String,
    pub is_admin: bool,
    pub balance_microusd: i64,
    pub held_microusd: i64,
    pub stripe_customer_id: Option<String>,
}

// Booleans are stored as integers 0/1 in both dialects (the `Any` driver decodes no bool
// from SQLite), so `User` is read by hand.
impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for User {
    fn from_row(row: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row as _;
        Ok(User {
            id: row.try_get("id")?,
            handle: row.try_get("handle")?,
            email: row.try_get("email")?,
            is_admin: row.try_get::<i64, _>("is_admin")? != 0,
            balance_microusd: row.try_get("balance_microusd")?,
            held_microusd: row.try_get("held_microusd")?,
            stripe_customer_id: row.try_get("stripe_customer_id")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub prefix: String,
    pub name: String,
    pub scopes: KeyScopes,
    pub allowed_spells: AllowedSpells,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
    pub concurrent_casts_max: Option<NonZeroU32>,
}

#[derive(sqlx::FromRow)]
struct KeyListRow {
    id: String,
    name: String,
    scopes: String,
    allowed_spells: Option<String>,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    last_used_at_ms: Option<i64>,
    concurrent_casts_max: Option<i64>,
}

/// A stored limit (a CHECK keeps it positive; anything else reads as no limit of its own).
fn stored_limit(value: Option<i64>) -> Option<NonZeroU32> {
    value
        .and_then(|v| u32::try_from(v).ok())
        .and_then(NonZeroU32::new)
}

type TurnLocks = Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>;

/// A request's place in the line of verifications of one key id. Dropping it (also when the
/// request is abandoned) removes the id's lock once nobody else holds or waits for it.
struct Turn<'a> {
    locks: &'a TurnLocks,
    key_id: &'a str,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(locks: &'a TurnLocks, key_id: &'a str) -> Self {
        let lock = locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key_id.to_owned())
            .or_default()
            .clone();
        Turn {
            locks,
            key_id,
            lock,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: no one else has a clone, and none can appear while the map is
        // locked.
        if std::sync::Arc::strong_count(&self.lock) <= 2 {
            locks.remove(self.key_id);
        }
    }
}

pub struct Authenticator {
    db: Db,
    cache_key: [u8; 32],
    verified: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    failed: Mutex<HashMap<[u8; 32], Instant>>,
    /// Key rows by key id (`None`: no such key), with when they were read: the cast path
    /// authenticates without the database.
    rows: Mutex<HashMap<String, (Option<KeyRow>, Instant)>>,
    /// The `keys` cache epoch the rows belong to.
    epoch: std::sync::atomic::AtomicI64,
    argon2_slots: std::sync::Arc<Semaphore>,
    /// One verification per key id at a time: the others with that id wait here, not in the
    /// argon2 queue. Entries live while someone holds or waits for them.
    verifying: TurnLocks,
    /// argon2 verifications run (`spellhost_api_key_verifications_total`).
    verifications: std::sync::atomic::AtomicU64,
    /// Live keys one user may have (`SPELLHOST_KEYS_PER_USER_MAX`).
    keys_per_user_max: i64,
    /// Session rows by session id (`None`: no such session), with when they were read.
    sessions: Mutex<HashMap<String, (Option<sessions::SessionRow>, Instant)>>,
}

impl Authenticator {
    pub fn new(db: Db, cache_key: [u8; 32]) -> Self {
        Authenticator {
            db,
            cache_key,
            verified: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            rows: Mutex::new(HashMap::new()),
            epoch: std::sync::atomic::AtomicI64::new(i64::MIN),
            argon2_slots: std::sync::Arc::new(Semaphore::new(ARGON2_CONCURRENCY)),
            verifying: Mutex::new(HashMap::new()),
            verifications: std::sync::atomic::AtomicU64::new(0),
            keys_per_user_max: crate::config::CreationLimits::default().keys_per_user,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Caps the live keys of one user.
    pub fn with_keys_per_user_max(mut self, max: i64) -> Self {
        self.keys_per_user_max = max;
        self
    }

    /// argon2 verifications run by this process since it started.
    pub fn verifications(&self) -> u64 {
        self.verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Authenticates an `Authorization` header value.
    ///
    /// A key verified in the last minutes costs two map lookups and an HMAC. No header at all
    /// is refused at once. Anything else first asks `gate` whether this request may spend work (the HTTP edge charges the
    /// caller's address): a malformed key, one that failed recently, one whose id does not
    /// exist (a database read at most every few seconds per id) and a fresh one (argon2,
    /// queued one per key id behind a bounded number of slots).
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        gate: impl FnOnce() -> Result<(), AuthError>,
    ) -> Result<Caller, AuthError> {
        // No credentials at all costs nothing to refuse (and the edge has counted it).
        let header = header.ok_or(AuthError::Unauthorized)?;
        if let Some(session) = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|token| token.starts_with(sessions::PREFIX))
        {
            return self.authenticate_session(session, gate).await;
        }
        let key = header
            .strip_prefix("Bearer ")
            .and_then(|token| ApiKey::parse(token.trim()).ok());
        let Some(key) = key else {
            gate()?;
            return Err(AuthError::Unauthorized);
        };
        let tag = self.tag(&key);
        let verified = self.recently_verified(&tag, key.id());
        if !verified {
            gate()?;
            if self.recently_failed(&tag) {
                return Err(AuthError::Unauthorized);
            }
        }
        let row = self.key_row(key.id()).await?;
        let now = self.db.now_ms();
        let Some(row) = row.filter(|row| {
            row.deleted_at_ms.is_none() && row.expires_at_ms.is_none_or(|at| now < at)
        }) else {
            return Err(AuthError::Unauthorized);
        };
        if !verified {
            self.verify(&key, tag, &row.secret_hash).await?;
        }
        if row
            .last_used_at_ms
            .is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MS)
        {
            self.record_use(key.id(), now);
        }
        Ok(Caller {
            user_id: row.user_id,
            key_id: key.id().to_owned(),
            handle: row.handle,
            is_admin: row.is_admin != 0,
            scopes: KeyScopes::from_stored(&row.scopes),
            allowed_spells: AllowedSpells::from_stored(row.allowed_spells.as_deref()),
            expires_at_ms: row.expires_at_ms,
            concurrent_casts_max: stored_limit(row.concurrent_casts_max),
            session_id: None,
        })
    }

    /// argon2 for a key not verified recently: one request per key id at a time, then one of
    /// the few argon2 slots. A burst of requests with one new key verifies it once: the
    /// others find it verified when their turn comes.
    async fn verify(&self, key: &ApiKey, tag: [u8; 32], stored: &str) -> Result<(), AuthError> {
        let turn = Turn::take(&self.verifying, key.id());
        let _held = tokio::time::timeout(SAME_KEY_WAIT_MAX, turn.lock.lock())
            .await
            .map_err(|_| AuthError::KeyBusy)?;
        if self.recently_verified(&tag, key.id()) {
            return Ok(());
        }
        if self.recently_failed(&tag) {
            return Err(AuthError::Unauthorized);
        }
        // The permit moves into the blocking task: a request whose client goes away frees
        // its slot only when its argon2 has finished, so the CPU bound holds.
        let slot = tokio::time::timeout(ARGON2_WAIT_MAX, self.argon2_slots.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        let (candidate, stored) = (key.clone(), stored.to_owned());
        self.verifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let matches = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            keys::verify(&candidate, &stored)
        })
        .await
        .unwrap_or(false);
        if matches {
            self.remember(tag, key.id());
            Ok(())
        } else {
            self.remember_failure(tag);
            Err(AuthError::Unauthorized)
        }
    }

    /// A key's row, from memory when it was read recently.
    async fn key_row(&self, key_id: &str) -> Result<Option<KeyRow>, AuthError> {
        {
            let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((row, at)) = rows.get(key_id) {
                let ttl = if row.is_some() {
                    KEY_ROW_TTL
                } else {
                    UNKNOWN_KEY_TTL
                };
                if at.elapsed() < ttl {
                    return Ok(row.clone());
                }
            }
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT k.user_id, k.secret_hash, k.deleted_at_ms, u.handle, u.is_admin, k.scopes, \
             k.allowed_spells, k.expires_at_ms, k.last_used_at_ms, k.concurrent_casts_max \
             FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.id = $1 AND u.deleted_at_ms IS NULL",
        )
        .bind(key_id)
        .fetch_optional(self.db.reader())
        .await?;
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if rows.len() >= VERIFIED_CACHE_MAX {
            rows.clear();
        }
        rows.insert(key_id.to_owned(), (row.clone(), Instant::now()));
        Ok(row)
    }

    /// Drops the key rows kept in memory when the `keys` epoch moved (a key was deleted or
    /// changed, in any process).
    pub fn on_epoch(&self, epoch: i64) {
        use std::sync::atomic::Ordering;
        if self.epoch.swap(epoch, Ordering::Relaxed) != epoch {
            self.rows.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
    }

    /// Records a key's last use in the background: the request does not wait for the write,
    /// and a failed write only leaves the listing a little stale.
    fn record_use(&self, key_id: &str, now_ms: i64) {
        if let Some((Some(row), _)) = self
            .rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(key_id)
        {
            row.last_used_at_ms = Some(now_ms);
        }
        let (db, key_id) = (self.db.clone(), key_id.to_owned());
        tokio::spawn(async move {
            let written = sqlx::query("UPDATE api_keys SET last_used_at_ms = $1 WHERE id = $2")
                .bind(now_ms)
                .bind(&key_id)
                .execute(db.writer())
                .await;
            if let Err(error) = written {
                tracing::debug!(error = %error, "recording a key's last use failed");
            }
        });
    }

    fn tag(&self, key: &ApiKey) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("HMAC takes any key length");
        mac.update(key.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn recently_verified(&self, tag: &[u8; 32], key_id: &str) -> bool {
        let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(tag)
            .is_some_and(|(id, at)| id == key_id && at.elapsed() < VERIFIED_TTL)
    }

    fn recently_failed(&self, tag: &[u8; 32]) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get(tag).is_some_and(|at| at.elapsed() < FAILED_TTL)
    }

    fn remember_failure(&self, tag: [u8; 32]) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.len() >= VERIFIED_CACHE_MAX {
            failed.retain(|_, at| at.elapsed() < FAILED_TTL);
            if failed.len() >= VERIFIED_CACHE_MAX {
                failed.clear();
            }
        }
        failed.insert(tag, Instant::now());
    }

    fn remember(&self, tag: [u8; 32], key_id: &str) {
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(tag, (key_id.to_owned(), Instant::now()));
    }

    fn forget(&self, key_id: &str) {
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (id, _)| id != key_id);
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key_id);
    }

    /// Creates a key for a user; the returned key is shown once and never stored.
    pub async fn create_key(
        &self,
        user_id: i64,
        spec: &KeySpec,
    ) -> Result<(ApiKey, KeyInfo), AuthError> {
        let name = valid_text("name", &spec.name, 100)?;
        if spec.scopes.is_empty() {
            return Err(AuthError::Invalid {
                field: "scopes",
                message: "a key needs at least one scope".into(),
            });
        }
        // Counted again under the lock below; this read keeps a caller at the limit from
        // costing an argon2 hash per attempt.
        self.check_keys_limit(self.db.reader(), user_id).await?;
        let key = ApiKey::generate();
        let hashed = {
            let key = key.clone();
            let slot = self
                .argon2_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| AuthError::Unauthorized)?;
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                keys::hash(&key)
            })
            .await
            .map_err(|e| AuthError::Invalid {
                field: "key",
                message: e.to_string(),
            })?
        };
        let created_at_ms = self.db.now_ms();
        let mut tx = self.db.begin().await?;
        // The user's row is locked so that concurrent creations count one after the other
        // (SQLite's writer is exclusive already).
        self.db.lock_user(&mut tx, user_id).await?;
        self.check_keys_limit(&mut *tx, user_id).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, secret_hash, created_at_ms, scopes, \
             allowed_spells, expires_at_ms, concurrent_casts_max) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(key.id())
        .bind(user_id)
        .bind(&name)
        .bind(&hashed)
        .bind(created_at_ms)
        .bind(spec.scopes.to_stored())
        .bind(spec.allowed_spells.to_stored())
        .bind(spec.expires_at_ms)
        .bind(spec.concurrent_casts_max.map(|max| i64::from(max.get())))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key.id());
        let info = KeyInfo {
            prefix: key.prefix(),
            name,
            scopes: spec.scopes,
            allowed_spells: spec.allowed_spells.clone(),
            created_at_ms,
            expires_at_ms: spec.expires_at_ms,
            last_used_at_ms: None,
            concurrent_casts_max: spec.concurrent_casts_max,
        };
        Ok((key, info))
    }

    async fn check_keys_limit<'c>(
        &self,
        executor: impl sqlx::Executor<'c, Database = sqlx::Any>,
        user_id: i64,
    ) -> Result<(), AuthError> {
        let (live,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM api_keys WHERE user_id = $1 AND deleted_at_ms IS NULL",
        )
        .bind(user_id)
        .fetch_one(executor)
        .await?;
        if live >= self.keys_per_user_max {
            return Err(AuthError::LimitReached {
                limit: "keys_per_user",
                max: self.keys_per_user_max,
            });
        }
        Ok(())
    }

    pub async fn list_keys(&self, user_id: i64) -> Result<Vec<KeyInfo>, AuthError> {
        let rows: Vec<KeyListRow> = sqlx::query_as(
            "SELECT id, name, scopes, allowed_spells, created_at_ms, expires_at_ms, \
             last_used_at_ms, concurrent_casts_max FROM api_keys \
             WHERE user_id = $1 AND deleted_at_ms IS NULL ORDER BY created_at_ms, id",
        )
        .bind(user_id)
        .fetch_all(self.db.reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| KeyInfo {
                prefix: keys::prefix_of(&row.id),
                name: row.name,
                scopes: KeyScopes::from_stored(&row.scopes),
                allowed_spells: AllowedSpells::from_stored(row.allowed_spells.as_deref()),
                created_at_ms: row.created_at_ms,
                expires_at_ms: row.expires_at_ms,
                last_used_at_ms: row.last_used_at_ms,
                concurrent_casts_max: stored_limit(row.concurrent_casts_max),
            })
            .collect())
    }

    /// The id of one of the user's live keys, named by its `spk_<id>` prefix.
    pub async fn key_id_of(&self, user_id: i64, prefix: &str) -> Result<Option<String>, AuthError> {
        let Some(id) = keys::id_from_prefix(prefix) else {
            return Ok(None);
        };
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM api_keys WHERE id = $1 AND user_id = $2 AND deleted_at_ms IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(self.db.reader())
        .await?;
        Ok(row.map(|(id,)| id))
    }

    /// Deletes one of the user's keys; `false` if they have no such key.
    pub async fn delete_key(&self, user_id: i64, prefix: &str) -> Result<bool, AuthError> {
        let Some(id) = keys::id_from_prefix(prefix) else {
            return Ok(false);
        };
        let mut tx = self.db.begin().await?;
        let deleted = sqlx::query(
            "UPDATE api_keys SET deleted_at_ms = $1 WHERE id = $2 AND user_id = $3 AND deleted_at_ms IS NULL",
        )
        .bind(self.db.now_ms())
        .bind(id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Every instance drops its copy of the key's row within a poll of the epochs.
        crate::store::bump_cache_epoch(&mut tx, crate::store::CacheEpoch::Keys).await?;
        tx.commit().await?;
        self.forget(id);
        Ok(deleted == 1)
    }
}

fn valid_text(field: &'static str, value: &str, max: usize) -> Result<String, AuthError> {
    let value = value.trim();
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(AuthError::Invalid {
            field,
            message: format!("must be 1 to {max} printable characters"),
        });
    }
    Ok(value.to_owned())
}

/// Handles that name erased accounts (`deleted-<id>`, see `crate::privacy`): nobody registers
/// one.
pub fn is_reserved_handle(handle: &str) -> bool {
    handle.starts_with("deleted-")
}

/// Handles: `[a-z0-9-]{1,39}`, starting with a letter or digit (like GitHub's).
pub fn is_valid_handle(handle: &str) -> bool {
    (1..=39).contains(&handle.len())
        && !handle.starts_with('-')
        && handle
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub async fn create_user(
    db: &Db,
    handle: &str,
    email: &str,
    is_admin: bool,
) -> Result<User, AuthError> {
    if !is_valid_handle(handle) {
        return Err(AuthError::Invalid {
            field: "handle",
            message: "must match [a-z0-9-]{1,39}".into(),
        });
    }
    if is_reserved_handle(handle) {
        return Err(AuthError::Invalid {
            field: "handle",
            message: "handles starting with deleted- are reserved".into(),
        });
    }
    // An erased account's handle stays retired: its spells' names must never come back
    // under another author.
    let retired: Option<(String,)> =
        sqlx::query_as("SELECT handle_sha256 FROM retired_handles WHERE handle_sha256 = $1")
            .bind(crate::privacy::retired_handle_hash(handle))
            .fetch_optional(db.reader())
            .await?;
    if retired.is_some() {
        return Err(AuthError::Conflict("handle"));
    }
    let email = valid_text("email", email, 254)?;
    if !email.contains('@') {
        return Err(AuthError::Invalid {
            field: "email",
            message: "must contain @".into(),
        });
    }
    let inserted = sqlx::query(
        "INSERT INTO users (handle, email, is_admin, created_at_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(handle)
    .bind(&email)
    .bind(i64::from(is_admin))
    .bind(now_ms())
    .execute(db.writer())
    .await;
    match inserted {
        Err(error) if is_unique_violation(&error) => return Err(AuthError::Conflict("handle")),
        other => other?,
    };
    user_by_handle(db, handle)
        .await?
        .ok_or_else(|| AuthError::UnknownUser(handle.to_owned()))
}

const USER_COLUMNS: &str = "SELECT id, handle, email, is_admin, balance_microusd, held_microusd, stripe_customer_id FROM users";

pub async fn user_by_handle(db: &Db, handle: &str) -> Result<Option<User>, AuthError> {
    let user = sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!(
        "{USER_COLUMNS} WHERE handle = $1"
    )))
    .bind(handle)
    .fetch_optional(db.reader())
    .await?;
    Ok(user)
}

pub async fn user_by_id(db: &Db, id: i64) -> Result<Option<User>, AuthError> {
    let user =
        sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!("{USER_COLUMNS} WHERE id = $1")))
            .bind(id)
            .fetch_optional(db.reader())
            .await?;
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_of_one_key_id_share_a_lock_that_is_dropped_with_the_last() {
        let locks = TurnLocks::default();
        let first = Turn::take(&locks, "abc");
        let second = Turn::take(&locks, "abc");
        let other = Turn::take(&locks, "xyz");
        assert!(std::sync::Arc::ptr_eq(&first.lock, &second.lock));
        assert!(!std::sync::Arc::ptr_eq(&first.lock, &other.lock));
        drop(first);
        assert_eq!(
            locks.lock().expect("lock").len(),
            2,
            "abc still has a waiter"
        );
        drop(second);
        drop(other);
        assert!(locks.lock().expect("lock").is_empty());
    }
}
