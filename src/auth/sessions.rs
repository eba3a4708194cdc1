//! Sessions: what a GitHub login hands out. `sps_<id>_<secret><checksum>`, the API keys'
//! format (see [`super::keys`]) with its own prefix, so a session never parses as a key.
//!
//! A session authenticates like an unrestricted API key (every scope, every spell) until it
//! expires or is revoked (`DELETE /v1/sessions/current`, or the user's erasure). The database
//! stores a SHA-256 of the whole token: the secret has ~190 random bits, so a fast hash is as
//! good as argon2 against a stolen table, and a request costs no argon2.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{AuthError, Authenticator, Caller, KeyScopes, keys};
use crate::auth::AllowedSpells;

/// The prefix of session tokens (API keys have `spk_`).
pub const PREFIX: &str = "sps_";

/// How long a session's row is served from memory. Revocations in this process, and in others
/// through the `keys` cache epoch, drop it at once; this only bounds what a missed epoch could
/// leave stale.
const SESSION_ROW_TTL: Duration = Duration::from_secs(60);
/// How long an unknown session id is remembered as unknown: a flood of well-formed made-up
/// tokens costs no database reads.
const UNKNOWN_SESSION_TTL: Duration = Duration::from_secs(10);
/// Entries kept in memory; past this the map is cleared (cheap, and rare).
const SESSION_CACHE_MAX: usize = 100_000;
/// How stale a session's recorded last use may get before a request writes it again.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// A well-formed session token (format and checksum checked), not yet authenticated.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionToken({}_…)", self.prefix())
    }
}

impl SessionToken {
    pub fn generate() -> SessionToken {
        SessionToken(keys::generate_token(PREFIX))
    }

    /// Checks format and checksum only; cheap, no I/O.
    pub fn parse(text: &str) -> Option<SessionToken> {
        keys::is_well_formed(PREFIX, text).then(|| SessionToken(text.to_owned()))
    }

    /// The public id used for lookup.
    pub fn id(&self) -> &str {
        keys::token_id(PREFIX, &self.0)
    }

    /// `sps_<id>`: how exports and rate limits name the session.
    pub fn prefix(&self) -> String {
        prefix_of(self.id())
    }

    /// The whole token, to show once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database stores.
    fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// `sps_<id>`.
pub fn prefix_of(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// A new session, as shown once to its owner.
#[derive(Debug)]
pub struct NewSession {
    pub token: SessionToken,
    pub expires_at_ms: i64,
}

#[derive(Clone, sqlx::FromRow)]
pub(super) struct SessionRow {
    user_id: i64,
    token_sha256: String,
    expires_at_ms: i64,
    revoked_at_ms: Option<i64>,
    last_used_at_ms: Option<i64>,
    handle: String,
    is_admin: i64,
}

impl Authenticator {
    /// Opens a session for a user, valid for `ttl_ms`.
    pub async fn create_session(&self, user_id: i64, ttl_ms: i64) -> Result<NewSession, AuthError> {
        debug_assert!(ttl_ms > 0, "a session must outlive its creation");
        let token = SessionToken::generate();
        let created_at_ms = self.db.now_ms();
        let expires_at_ms = created_at_ms.saturating_add(ttl_ms);
        sqlx::query(
            "INSERT INTO sessions (id, user_id, token_sha256, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.id())
        .bind(user_id)
        .bind(token.sha256())
        .bind(created_at_ms)
        .bind(expires_at_ms)
        .execute(self.db.writer())
        .await?;
        self.session_rows().remove(token.id());
        Ok(NewSession {
            token,
            expires_at_ms,
        })
    }

    /// Authenticates a session token (`gate` as in [`Authenticator::authenticate`]: asked
    /// before a database read or for a token that fails).
    pub async fn authenticate_session(
        &self,
        text: &str,
        gate: impl FnOnce() -> Result<(), AuthError>,
    ) -> Result<Caller, AuthError> {
        let Some(token) = SessionToken::parse(text) else {
            gate()?;
            return Err(AuthError::Unauthorized);
        };
        let mut gate = Some(gate);
        let cached = self.cached_session(token.id());
        let row = match cached {
            Some(row) => row,
            None => {
                if let Some(gate) = gate.take() {
                    gate()?;
                }
                self.read_session(token.id()).await?
            }
        };
        let now = self.db.now_ms();
        let valid = row.filter(|row| {
            row.revoked_at_ms.is_none()
                && now < row.expires_at_ms
                && subtle::ConstantTimeEq::ct_eq(
                    row.token_sha256.as_bytes(),
                    token.sha256().as_bytes(),
                )
                .into()
        });
        let Some(row) = valid else {
            if let Some(gate) = gate.take() {
                gate()?;
            }
            return Err(AuthError::Unauthorized);
        };
        if row
            .last_used_at_ms
            .is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MS)
        {
            self.record_session_use(token.id(), now);
        }
        Ok(Caller {
            user_id: row.user_id,
            key_id: token.prefix(),
            handle: row.handle,
            is_admin: row.is_admin != 0,
            scopes: KeyScopes::ALL,
            allowed_spells: AllowedSpells::ANY,
            // The session's own expiry is checked above; keys made through it may outlive it
            // (a browser session creating a key for a CI job).
            expires_at_ms: None,
            concurrent_casts_max: None,
            session_id: Some(token.id().to_owned()),
        })
    }

    /// Revokes one of the user's sessions; `false` if it was not live.
    pub async fn revoke_session(&self, user_id: i64, session_id: &str) -> Result<bool, AuthError> {
        let mut tx = self.db.begin().await?;
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked_at_ms = $1 \
             WHERE id = $2 AND user_id = $3 AND revoked_at_ms IS NULL",
        )
        .bind(self.db.now_ms())
        .bind(session_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Every instance drops its copy of the session's row within a poll of the epochs.
        crate::store::bump_cache_epoch(&mut tx, crate::store::CacheEpoch::Keys).await?;
        tx.commit().await?;
        self.session_rows().remove(session_id);
        Ok(revoked == 1)
    }

    fn session_rows(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Option<SessionRow>, Instant)>>
    {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session's row from memory, if read recently (`Some(None)`: known not to exist).
    fn cached_session(&self, id: &str) -> Option<Option<SessionRow>> {
        let rows = self.session_rows();
        let (row, at) = rows.get(id)?;
        let ttl = if row.is_some() {
            SESSION_ROW_TTL
        } else {
            UNKNOWN_SESSION_TTL
        };
        (at.elapsed() < ttl).then(|| row.clone())
    }

    async fn read_session(&self, id: &str) -> Result<Option<SessionRow>, AuthError> {
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT s.user_id, s.token_sha256, s.expires_at_ms, s.revoked_at_ms, \
             s.last_used_at_ms, u.handle, u.is_admin \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND u.deleted_at_ms IS NULL",
        )
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        let mut rows = self.session_rows();
        if rows.len() >= SESSION_CACHE_MAX {
            rows.clear();
        }
        rows.insert(id.to_owned(), (row.clone(), Instant::now()));
        Ok(row)
    }

    /// Records a session's last use in the background (see `record_use` for keys).
    fn record_session_use(&self, id: &str, now_ms: i64) {
        if let Some((Some(row), _)) = self.session_rows().get_mut(id) {
            row.last_used_at_ms = Some(now_ms);
        }
        let (db, id) = (self.db.clone(), id.to_owned());
        tokio::spawn(async move {
            let written = sqlx::query("UPDATE sessions SET last_used_at_ms = $1 WHERE id = $2")
                .bind(now_ms)
                .bind(&id)
                .execute(db.writer())
                .await;
            if let Err(error) = written {
                tracing::debug!(error = %error, "recording a session's last use failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_parse_and_are_never_api_keys() {
        let token = SessionToken::generate();
        assert!(token.expose().starts_with("sps_"));
        assert_eq!(SessionToken::parse(token.expose()), Some(token.clone()));
        assert!(super::super::ApiKey::parse(token.expose()).is_err());
        // The checksum covers the prefix: renaming it does not make a key.
        let renamed = token.expose().replacen("sps_", "spk_", 1);
        assert!(super::super::ApiKey::parse(&renamed).is_err());
        let key = super::super::ApiKey::generate();
        assert_eq!(SessionToken::parse(key.expose()), None);
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let token = SessionToken::generate();
        let shown = format!("{token:?}");
        assert!(!shown.contains(&token.expose()[17..]), "{shown}");
        assert!(shown.contains(&token.prefix()));
    }

    #[test]
    fn the_stored_hash_is_the_sha256_of_the_whole_token() {
        let token = SessionToken::generate();
        assert_eq!(token.sha256().len(), 64);
        assert_ne!(token.sha256(), SessionToken::generate().sha256());
    }
}
