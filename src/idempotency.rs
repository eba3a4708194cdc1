//! `Idempotency-Key`, with Stripe's semantics: the first request with a key runs; its answer
//! is stored once it took effect and replayed, for 24 hours, to every later request with the
//! same key from the same user. A different request with the key is refused
//! (`idempotency_key_reused`), and so is one that arrives while the first still runs
//! (`idempotency_key_in_use`).
//!
//! - **Reservation.** A row keyed by (user, hash of the key) is inserted before the request
//!   runs; the primary key makes it the one reservation across every instance on the database.
//! - **Answer.** A cast's answer is written by the batch that settles it, in the same
//!   transaction (`money::batch::Receipt`): a charged cast always replays, never runs twice.
//!   Other routes write theirs just after their effect (see `docs/ARCHITECTURE.md` for what a
//!   crash in between leaves).
//! - **Crashes.** A reservation is locked for [`LOCK_MS`], and the process that holds it renews
//!   the lock every [`RENEW_INTERVAL`] while its request runs. A reservation without an answer
//!   past its lock belongs to a process that died: the next request with the key takes it over.
//! - **Secrecy.** The key itself is never stored. Rows are found by a hash of it, requests are
//!   compared by an HMAC keyed by it, and answers are sealed (AES-256-GCM) under a key derived
//!   from it: the database alone cannot read a replayed API key or a cast's output.
//! - **Expiry.** Rows live 24 hours; a background task deletes expired ones in bounded batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::money::batch::{Receipt, Settled};
use crate::store::Db;

/// The request header.
pub const KEY_HEADER: &str = "idempotency-key";
/// Set on every replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long an answer is replayed (Stripe's 24 hours).
pub const RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Stripe's limit on a key's length.
pub const KEY_CHARS_MAX: usize = 255;
/// Expired rows deleted per statement: short transactions that never hold the writer long.
pub const PURGE_BATCH: i64 = 1_000;
/// How often expired rows are purged. Expired rows are ignored (and taken over) before that.
pub const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a reservation's lock lives without renewal: a key held by a process that died is
/// free again this long after its last renewal. Three renewal intervals, so that one late or
/// failed renewal never frees the key of a request still running.
pub const LOCK_MS: i64 = 30_000;
/// How often a process renews the locks of the requests it runs.
pub const RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Reservations renewed per statement (three parameters each).
const RENEW_BATCH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("the Idempotency-Key header must be 1 to {KEY_CHARS_MAX} printable ASCII characters")]
    InvalidKey,
    #[error("a stored answer could not be read: {0}")]
    Unreadable(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A client's `Idempotency-Key`: 1 to 255 printable ASCII characters.
#[derive(Clone)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(text: &str) -> Result<Self, IdempotencyError> {
        let printable = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if text.is_empty() || text.len() > KEY_CHARS_MAX || !printable {
            return Err(IdempotencyError::InvalidKey);
        }
        Ok(IdempotencyKey(text.to_owned()))
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(…)")
    }
}

/// What a request is, for telling a retry from a different request with the same key.
pub struct RequestFingerprint<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// The keys derived from one (user, Idempotency-Key).
struct Derived {
    /// Finds the row: SHA-256 of the key, scoped to the user.
    lookup: String,
    /// Keys the request's fingerprint (an HMAC, so the row does not reveal the body's hash).
    fingerprint: [u8; 32],
    /// Seals the stored answer.
    seal: [u8; 32],
}

fn derive(user_id: i64, key: &IdempotencyKey) -> Derived {
    let mut lookup = Sha256::new();
    lookup.update(b"spellhost idempotency lookup\0");
    lookup.update(user_id.to_be_bytes());
    lookup.update(key.0.as_bytes());
    let keyed = |purpose: &[u8]| -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.0.as_bytes()).expect("HMAC takes any key length");
        mac.update(purpose);
        mac.update(&user_id.to_be_bytes());
        mac.finalize().into_bytes().into()
    };
    Derived {
        lookup: hex::encode(lookup.finalize()),
        fingerprint: keyed(b"spellhost idempotency request\0"),
        seal: keyed(b"spellhost idempotency seal\0"),
    }
}

fn fingerprint(key: &[u8; 32], request: &RequestFingerprint<'_>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(request.method.as_bytes());
    mac.update(b"\n");
    mac.update(request.path.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(request.body));
    hex::encode(mac.finalize().into_bytes())
}

/// Seals and opens stored answers of one reservation. The row's identity is the associated
/// data: an answer copied to another row does not open.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
    aad: Vec<u8>,
}

impl Sealer {
    fn new(key: [u8; 32], user_id: i64, lookup: &str) -> Sealer {
        let mut aad = user_id.to_be_bytes().to_vec();
        aad.extend_from_slice(lookup.as_bytes());
        Sealer { key, aad }
    }

    fn cipher(&self) -> Result<LessSafeKey, IdempotencyError> {
        UnboundKey::new(&AES_256_GCM, &self.key)
            .map(LessSafeKey::new)
            .map_err(|_| IdempotencyError::Unreadable("key"))
    }

    /// `status ‖ body`, sealed with a random nonce: base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, status: u16, body: &[u8]) -> Result<String, IdempotencyError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| IdempotencyError::Unreadable("nonce"))?;
        let mut in_out = Vec::with_capacity(2 + body.len() + 16);
        in_out.extend_from_slice(&status.to_be_bytes());
        in_out.extend_from_slice(body);
        self.cipher()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad.as_slice()),
                &mut in_out,
            )
            .map_err(|_| IdempotencyError::Unreadable("seal"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&in_out);
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    pub fn open(&self, sealed: &str) -> Result<(u16, Vec<u8>), IdempotencyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| IdempotencyError::Unreadable("encoding"))?;
        if bytes.len() < NONCE_LEN + 2 {
            return Err(IdempotencyError::Unreadable("length"));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| IdempotencyError::Unreadable("nonce"))?;
        let mut in_out = sealed.to_vec();
        let plain = self
            .cipher()?
            .open_in_place(nonce, Aad::from(self.aad.as_slice()), &mut in_out)
            .map_err(|_| IdempotencyError::Unreadable("authentication"))?;
        let (status, body) = plain
            .split_first_chunk::<2>()
            .ok_or(IdempotencyError::Unreadable("length"))?;
        Ok((u16::from_be_bytes(*status), body.to_vec()))
    }
}

/// The reservations this process holds (lock token → user id, key hash): renewed until their
/// request ends.
type Held = Arc<Mutex<HashMap<String, (i64, String)>>>;

/// A request that holds its key: it runs, then stores or releases the reservation. Its lock
/// is renewed for as long as it lives.
pub struct Reservation {
    pub user_id: i64,
    key_hash: String,
    lock_token: String,
    sealer: Sealer,
    held: Held,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.lock_token);
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// What to do with a request that carries a key. (`Debug` leaves out a replayed body: it may
/// hold a new API key.)
pub enum Reserved {
    /// Run it: the key is this request's.
    Run(Reservation),
    /// The same request already took effect: answer this.
    Replay { status: u16, body: Vec<u8> },
    /// The same request is still running (here or on another instance).
    InUse,
    /// The key was used for a different request.
    Reused,
}

/// A reservation as written: inserted, or taking over a dead one.
struct Fresh<'a> {
    request_hash: &'a str,
    route: &'a str,
    lock_token: &'a str,
    now_ms: i64,
    locked_until_ms: i64,
    expires_at_ms: i64,
    user_id: i64,
    key_hash: &'a str,
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl<'a> Fresh<'a> {
    /// Binds `$1`…`$8` in the order of the fields.
    fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.request_hash)
            .bind(self.route)
            .bind(self.lock_token)
            .bind(self.now_ms)
            .bind(self.locked_until_ms)
            .bind(self.expires_at_ms)
            .bind(self.user_id)
            .bind(self.key_hash)
    }
}

impl std::fmt::Debug for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reserved::Run(reservation) => f.debug_tuple("Run").field(reservation).finish(),
            Reserved::Replay { status, .. } => f
                .debug_struct("Replay")
                .field("status", status)
                .finish_non_exhaustive(),
            Reserved::InUse => f.write_str("InUse"),
            Reserved::Reused => f.write_str("Reused"),
        }
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    request_hash: String,
    lock_token: String,
    locked_until_ms: i64,
    expires_at_ms: i64,
    response: Option<String>,
}

/// The idempotency records of one database, and the reservations this process holds.
pub struct Idempotency {
    db: Db,
    held: Held,
}

impl Idempotency {
    pub fn new(db: Db) -> Idempotency {
        Idempotency {
            db,
            held: Held::default(),
        }
    }

    /// How long a reservation without an answer keeps its key once nobody renews it.
    pub fn lock_ms(&self) -> i64 {
        LOCK_MS
    }

    /// Extends the locks of every reservation this process holds; returns how many. A lock
    /// renewed by nobody (its process died) runs out after [`LOCK_MS`].
    pub async fn renew(&self) -> Result<u64, IdempotencyError> {
        let held: Vec<(String, (i64, String))> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(token, row)| (token.clone(), row.clone()))
            .collect();
        let mut renewed = 0;
        for chunk in held.chunks(RENEW_BATCH) {
            // Each term is a primary-key lookup; the token proves the row is still ours.
            let terms: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = 2 + 3 * i;
                    format!(
                        "(user_id = ${} AND key_hash = ${} AND lock_token = ${})",
                        n,
                        n + 1,
                        n + 2
                    )
                })
                .collect();
            let sql = format!(
                "UPDATE idempotency_keys SET locked_until_ms = $1 WHERE status IS NULL AND ({})",
                terms.join(" OR ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(self.db.now_ms().saturating_add(LOCK_MS));
            for (token, (user_id, key_hash)) in chunk {
                query = query.bind(*user_id).bind(key_hash).bind(token);
            }
            renewed += query.execute(self.db.writer()).await?.rows_affected();
        }
        Ok(renewed)
    }

    /// Reserves `key` for this request, or says why not. One insert when the key is new.
    pub async fn reserve(
        &self,
        user_id: i64,
        key: &IdempotencyKey,
        route: &str,
        request: &RequestFingerprint<'_>,
    ) -> Result<Reserved, IdempotencyError> {
        let derived = derive(user_id, key);
        let request_hash = fingerprint(&derived.fingerprint, request);
        let sealer = Sealer::new(derived.seal, user_id, &derived.lookup);
        let reservation = |lock_token: String| {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(lock_token.clone(), (user_id, derived.lookup.clone()));
            Reservation {
                user_id,
                key_hash: derived.lookup.clone(),
                lock_token,
                sealer: sealer.clone(),
                held: self.held.clone(),
            }
        };
        // A row can vanish between the insert and the read (its request was released): try
        // again, a bounded number of times.
        for _ in 0..3 {
            let now = self.db.now_ms();
            let token = uuid::Uuid::new_v4().simple().to_string();
            let fresh = Fresh {
                request_hash: &request_hash,
                route,
                lock_token: &token,
                now_ms: now,
                locked_until_ms: now.saturating_add(LOCK_MS),
                expires_at_ms: now.saturating_add(RETENTION_MS),
                user_id,
                key_hash: &derived.lookup,
            };
            let inserted = fresh
                .bind(sqlx::query(
                    "INSERT INTO idempotency_keys (request_hash, route, lock_token, created_at_ms, \
                     locked_until_ms, expires_at_ms, user_id, key_hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, key_hash) DO NOTHING",
                ))
                .execute(self.db.writer())
                .await?
                .rows_affected();
            if inserted == 1 {
                return Ok(Reserved::Run(reservation(token)));
            }
            let row: Option<KeyRow> = sqlx::query_as(
                "SELECT request_hash, lock_token, locked_until_ms, expires_at_ms, response \
                 FROM idempotency_keys WHERE user_id = $1 AND key_hash = $2",
            )
            .bind(user_id)
            .bind(&derived.lookup)
            .fetch_optional(self.db.writer())
            .await?;
            let Some(row) = row else { continue };
            let expired = row.expires_at_ms <= now;
            if !expired && row.request_hash != request_hash {
                return Ok(Reserved::Reused);
            }
            if !expired && let Some(sealed) = &row.response {
                let (status, body) = sealer.open(sealed)?;
                return Ok(Reserved::Replay { status, body });
            }
            if !expired && row.locked_until_ms > now {
                return Ok(Reserved::InUse);
            }
            // Expired (not purged yet), or abandoned by a process that died before the request
            // took effect: take it over, unless another request just did.
            let taken = fresh
                .bind(sqlx::query(
                    "UPDATE idempotency_keys SET request_hash = $1, route = $2, lock_token = $3, \
                     created_at_ms = $4, locked_until_ms = $5, expires_at_ms = $6, status = NULL, \
                     response = NULL, completed_at_ms = NULL \
                     WHERE user_id = $7 AND key_hash = $8 AND lock_token = $9",
                ))
                .bind(&row.lock_token)
                .execute(self.db.writer())
                .await?
                .rows_affected();
            if taken == 1 {
                tracing::info!(user.id = user_id, expired, "took over an idempotency key");
                return Ok(Reserved::Run(reservation(token)));
            }
        }
        Ok(Reserved::InUse)
    }

    /// Stores the answer of a request that took effect. `false` if the reservation is no
    /// longer this request's (it outlived its lock and was taken over).
    pub async fn complete(
        &self,
        reservation: &Reservation,
        status: u16,
        body: &[u8],
    ) -> Result<bool, IdempotencyError> {
        let sealed = reservation.sealer.seal(status, body)?;
        let stored = sqlx::query(
            "UPDATE idempotency_keys SET status = $1, response = $2, completed_at_ms = $3 \
             WHERE user_id = $4 AND key_hash = $5 AND lock_token = $6 AND status IS NULL",
        )
        .bind(i64::from(status))
        .bind(&sealed)
        .bind(self.db.now_ms())
        .bind(reservation.user_id)
        .bind(&reservation.key_hash)
        .bind(&reservation.lock_token)
        .execute(self.db.writer())
        .await?;
        Ok(stored.rows_affected() == 1)
    }

    /// Gives the key back: the request took no effect, so a retry runs afresh. An answer
    /// already stored (a cast settled, even if its caller saw an error) stays.
    pub async fn release(&self, reservation: &Reservation) -> Result<(), IdempotencyError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND key_hash = $2 \
             AND lock_token = $3 AND status IS NULL",
        )
        .bind(reservation.user_id)
        .bind(&reservation.key_hash)
        .bind(&reservation.lock_token)
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// What the settlement of a cast writes for this reservation: `render` turns the
    /// settlement into the status and body the client is answered, which are sealed and stored
    /// in the settlement's transaction.
    pub fn receipt(
        &self,
        reservation: &Reservation,
        render: impl Fn(&Settled) -> (u16, Vec<u8>) + Send + Sync + 'static,
    ) -> Receipt {
        let sealer = reservation.sealer.clone();
        Receipt {
            user_id: reservation.user_id,
            key_hash: reservation.key_hash.clone(),
            lock_token: reservation.lock_token.clone(),
            render: Arc::new(move |settled| {
                let (status, body) = render(settled);
                // Sealing fails only if the system's random source does: the answer is then
                // stored unreadable, which replays as an internal error rather than a new run.
                let sealed = sealer.seal(status, &body).unwrap_or_default();
                (status, sealed)
            }),
        }
    }

    /// Deletes up to `batch` expired records; returns how many.
    pub async fn purge_expired(&self, batch: i64) -> Result<u64, IdempotencyError> {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (user_id, key_hash) IN \
             (SELECT user_id, key_hash FROM idempotency_keys WHERE expires_at_ms <= $1 LIMIT $2)",
        )
        .bind(self.db.now_ms())
        .bind(batch)
        .execute(self.db.writer())
        .await?;
        Ok(deleted.rows_affected())
    }
}

/// Renews this process's reservations every [`RENEW_INTERVAL`], and purges expired records
/// every [`PURGE_INTERVAL`], in batches of [`PURGE_BATCH`] until none is left: never per
/// request, never one long transaction.
pub fn spawn_upkeep(app: crate::App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut renew = tokio::time::interval(RENEW_INTERVAL);
        let mut purge = tokio::time::interval(PURGE_INTERVAL);
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    if let Err(error) = app.idempotency.renew().await {
                        tracing::warn!(error = %error, "renewing idempotency keys failed");
                    }
                    continue;
                }
                _ = purge.tick() => {}
            }
            loop {
                match app.idempotency.purge_expired(PURGE_BATCH).await {
                    Ok(deleted) if deleted < PURGE_BATCH as u64 => break,
                    Ok(_) => tokio::task::yield_now().await,
                    Err(error) => {
                        tracing::warn!(error = %error, "purging expired idempotency keys failed");
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("with space and ~!").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("tab\there").is_err());
        assert!(IdempotencyKey::parse("é").is_err());
    }

    #[test]
    fn a_sealed_answer_opens_only_under_its_own_key_and_row() {
        let key = IdempotencyKey::parse("key-1").expect("key");
        let derived = derive(7, &key);
        let sealer = Sealer::new(derived.seal, 7, &derived.lookup);
        let sealed = sealer
            .seal(201, b"{\"key\":\"spk_secret\"}")
            .expect("seals");
        assert!(!sealed.contains("spk_secret"));
        assert_eq!(
            sealer.open(&sealed).expect("opens"),
            (201, b"{\"key\":\"spk_secret\"}".to_vec())
        );
        // Another user's row with the same key, or another key: does not open.
        let other_user = derive(8, &key);
        let wrong = Sealer::new(other_user.seal, 8, &other_user.lookup);
        assert!(wrong.open(&sealed).is_err());
        let other_key = derive(7, &IdempotencyKey::parse("key-2").expect("key"));
        assert!(
            Sealer::new(other_key.seal, 7, &other_key.lookup)
                .open(&sealed)
                .is_err()
        );
    }

    #[test]
    fn requests_differ_by_method_path_or_body() {
        let key = [3u8; 32];
        let base = RequestFingerprint {
            method: "POST",
            path: "/v1/cast",
            body: b"{}",
        };
        let same = fingerprint(&key, &base);
        assert_eq!(same, fingerprint(&key, &base));
        for other in [
            RequestFingerprint {
                method: "PUT",
                ..base
            },
            RequestFingerprint {
                path: "/v1/keys",
                ..base
            },
            RequestFingerprint {
                body: b"{ }",
                ..base
            },
        ] {
            assert_ne!(same, fingerprint(&key, &other));
        }
    }
}
