//! Privacy rights (GDPR): a user's export of everything spellhost holds about them, and the
//! erasure of their account.
//!
//! **Export** (`GET /v1/users/me/export`): one JSON document, streamed: the small sections
//! (profile, keys, signers, spells, budgets, billing records, auto-recharge) first, then the
//! casts, the ledger entries and the idempotency records page by page, so memory stays bounded
//! whatever the history. Never secrets: no key hashes, no stored answers (sealed under keys only
//! the client holds), no module bytes. The pages are read one after another, not in one
//! snapshot: a cast settled during the export may be in the ledger section and not in the casts.
//! The document ends with `"complete": true`; a failure half-way cuts the stream short, which
//! leaves the JSON unterminated (a client can tell).
//!
//! **Erasure** (`DELETE /v1/users/me`), in one transaction: the handle becomes `deleted-<id>`
//! (the old one is retired, as a hash, so nobody can publish under it again), the email, the
//! GitHub id (retired as a hash too: that GitHub account can never log in again) and the
//! Stripe customer id are cleared; keys, sessions, signers, budgets, spells (their versions, and
//! module bytes no other version uses), saved card details, auto-recharge settings and
//! idempotency records are deleted. Financial records stay, pseudonymized by the tombstone
//! (GDPR art. 17(3)(b)): ledger entries, casts, checkout sessions, recharges, payment
//! intents, refunds and disputes. The ledger's hash chain covers the user id, amounts and
//! references (cast ids, Stripe object ids, an operator's grant reason), never a handle or
//! an email, so it is untouched and still verifies.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;

use crate::AppState;
use crate::store::Db;

/// Rows per page of a streamed section: bounds the export's memory, whatever the history.
pub const PAGE_ROWS: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// The erasure was not confirmed with the caller's own handle.
    #[error("confirm the deletion with {{\"confirm\":\"<your handle>\"}}")]
    NotConfirmed,
    #[error("no such user")]
    UnknownUser,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A row as a JSON object, by column name: integers, text or null (the schema has no other
/// types in the columns an export reads).
fn row_json(row: &AnyRow) -> Map<String, Value> {
    use sqlx::{Column as _, Row as _};
    let mut object = Map::new();
    for (i, column) in row.columns().iter().enumerate() {
        let value = if let Ok(value) = row.try_get::<Option<i64>, _>(i) {
            value.map_or(Value::Null, Value::from)
        } else if let Ok(value) = row.try_get::<Option<String>, _>(i) {
            value.map_or(Value::Null, Value::from)
        } else {
            Value::Null
        };
        object.insert(column.name().to_owned(), value);
    }
    object
}

async fn rows(db: &Db, sql: &'static str, user_id: i64) -> Result<Value, PrivacyError> {
    let rows = sqlx::query(sql)
        .bind(user_id)
        .fetch_all(db.reader())
        .await?;
    Ok(Value::Array(
        rows.iter()
            .map(|row| Value::Object(row_json(row)))
            .collect(),
    ))
}

/// The small sections of an export, each a list of rows (bounded by the limits on what a
/// user can create, or small by nature).
const SECTIONS: &[(&str, &str)] = &[
    (
        "api_keys",
        "SELECT 'spk_' || id AS prefix, name, scopes, allowed_spells, created_at_ms, expires_at_ms, \
         last_used_at_ms, deleted_at_ms FROM api_keys WHERE user_id = $1 ORDER BY created_at_ms, id",
    ),
    (
        "sessions",
        "SELECT 'sps_' || id AS prefix, created_at_ms, expires_at_ms, last_used_at_ms, \
         revoked_at_ms FROM sessions WHERE user_id = $1 ORDER BY created_at_ms, id",
    ),
    (
        "signers",
        "SELECT id, name, public_key_pem, issuer, identity, identity_regex, sigstore_instance, \
         created_at_ms, removed_at_ms FROM signers WHERE user_id = $1 ORDER BY id",
    ),
    (
        "spell_versions",
        "SELECT name, version, digest, manifest, signer_id, sigstore_instance, signed_identity, \
         signed_issuer, tlog_index, tlog_integrated_time, sbom_format, sbom_components, \
         created_at_ms, yanked_at_ms FROM spell_versions WHERE owner_id = $1 ORDER BY name, id",
    ),
    (
        "budgets",
        "SELECT id, scope_type, scope_value, period, hard_limit_microusd, soft_limit_microusd, \
         period_start_ms, used_microusd, held_microusd, created_at_ms, updated_at_ms \
         FROM budgets WHERE user_id = $1 ORDER BY created_at_ms, id",
    ),
    (
        "checkout_sessions",
        "SELECT id, amount_cents, payment_intent_id, created_at_ms, credited_at_ms \
         FROM checkout_sessions WHERE user_id = $1 ORDER BY created_at_ms, id",
    ),
    (
        "payment_intents",
        "SELECT id, checkout_session_id FROM payment_intents WHERE user_id = $1 ORDER BY id",
    ),
    (
        "recharges",
        "SELECT id, amount_cents, state, customer_id, payment_method_id, payment_intent_id, \
         failure_reason, created_at_ms, attempted_at_ms, credited_at_ms \
         FROM recharges WHERE user_id = $1 ORDER BY created_at_ms, id",
    ),
    (
        "auto_recharge",
        "SELECT enabled, threshold_microusd, amount_cents, max_per_day, day, day_count, \
         payment_method_id, disabled_reason, disabled_at_ms, updated_at_ms \
         FROM auto_recharge WHERE user_id = $1",
    ),
    (
        "payment_methods",
        "SELECT id, brand, last4, exp_month, exp_year, detached_at_ms \
         FROM stripe_payment_methods WHERE user_id = $1 ORDER BY id",
    ),
    (
        "refunded_charges",
        "SELECT id, refunded_cents, debited_cents FROM stripe_charges WHERE user_id = $1 ORDER BY id",
    ),
    (
        "disputes",
        "SELECT id, charge_id, amount_cents, withdrawn, reinstated, debited_cents \
         FROM stripe_disputes WHERE user_id = $1 ORDER BY id",
    ),
];

/// The head of an export: the profile and every small section.
pub async fn export_head(db: &Db, user_id: i64) -> Result<Map<String, Value>, PrivacyError> {
    let profile = sqlx::query(
        "SELECT id, handle, email, is_admin, balance_microusd, held_microusd, \
         stripe_customer_id, github_id, created_at_ms FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_optional(db.reader())
    .await?
    .ok_or(PrivacyError::UnknownUser)?;
    let mut head = Map::new();
    head.insert("format".into(), "spellhost-export/1".into());
    head.insert("generated_at_ms".into(), db.now_ms().into());
    head.insert("profile".into(), Value::Object(row_json(&profile)));
    for (name, sql) in SECTIONS {
        head.insert((*name).to_owned(), rows(db, sql, user_id).await?);
    }
    Ok(head)
}

/// A section streamed page by page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paged {
    Casts,
    Ledger,
    Idempotency,
}

impl Paged {
    pub const ALL: [Paged; 3] = [Paged::Casts, Paged::Ledger, Paged::Idempotency];

    pub fn name(self) -> &'static str {
        match self {
            Paged::Casts => "casts",
            Paged::Ledger => "ledger",
            Paged::Idempotency => "idempotency_keys",
        }
    }
}

/// Where the next page of a section starts (after this row's ordering key).
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    number: i64,
    text: String,
}

impl Cursor {
    pub fn start() -> Cursor {
        Cursor {
            number: i64::MIN,
            text: String::new(),
        }
    }
}

/// One page of a section, and the cursor after it (`None` at the end).
pub async fn page(
    db: &Db,
    user_id: i64,
    section: Paged,
    cursor: &Cursor,
) -> Result<(Vec<Map<String, Value>>, Option<Cursor>), PrivacyError> {
    let query = match section {
        // In settlement order (`casts_user_time`).
        Paged::Casts => sqlx::query(
            "SELECT id, spell, version, digest, outcome, fuel_used, cost_microusd, duration_us, \
             ledger_seq, CASE WHEN substr(key_id, 1, 4) = 'sps_' THEN key_id \
             ELSE 'spk_' || key_id END AS key_prefix, created_at_ms, output, output_encoding, \
             output_expires_at_ms FROM casts \
             WHERE user_id = $1 AND (created_at_ms > $2 OR (created_at_ms = $3 AND id > $4)) \
             ORDER BY created_at_ms, id LIMIT $5",
        )
        .bind(user_id)
        .bind(cursor.number)
        .bind(cursor.number)
        .bind(&cursor.text),
        Paged::Ledger => sqlx::query(
            "SELECT seq, kind, amount_microusd, balance_after_microusd, reference, created_at_ms, \
             hash FROM ledger WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(user_id)
        .bind(cursor.number),
        Paged::Idempotency => sqlx::query(
            "SELECT key_hash, route, status, created_at_ms, expires_at_ms, completed_at_ms \
             FROM idempotency_keys WHERE user_id = $1 AND key_hash > $2 ORDER BY key_hash LIMIT $3",
        )
        .bind(user_id)
        .bind(&cursor.text),
    };
    let rows = query.bind(PAGE_ROWS).fetch_all(db.reader()).await?;
    let mut objects: Vec<Map<String, Value>> = rows.iter().map(row_json).collect();
    let next = objects.last_mut().map(|last| {
        let int = |name: &str| last.get(name).and_then(Value::as_i64).unwrap_or(i64::MAX);
        let text = |name: &str| {
            last.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match section {
            Paged::Casts => Cursor {
                number: int("created_at_ms"),
                text: text("id"),
            },
            Paged::Ledger => Cursor {
                number: int("seq"),
                text: String::new(),
            },
            Paged::Idempotency => Cursor {
                number: 0,
                text: text("key_hash"),
            },
        }
    });
    if section == Paged::Idempotency {
        // The row's key: a hash of the client's key, only good as a cursor.
        for object in &mut objects {
            object.remove("key_hash");
        }
    }
    let next = next.filter(|_| objects.len() as i64 == PAGE_ROWS);
    Ok((objects, next))
}

/// What an erasure did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Erased {
    pub user_id: i64,
    /// The tombstone that replaces the handle.
    pub handle: String,
    /// What the account still holds: spellhost keeps it (a financial record) and refunds it
    /// on request.
    pub balance_microusd: i64,
    /// Held by casts that were in flight; they settle, and the rest comes back within seconds.
    pub held_microusd: i64,
    pub deleted_keys: u64,
    pub deleted_spell_versions: u64,
    pub deleted_signers: u64,
    pub deleted_budgets: u64,
}

/// The tombstone of an erased user's handle: not a handle anyone can register
/// (`crate::auth::create_user` refuses the `deleted-` prefix).
pub fn tombstone(user_id: i64) -> String {
    format!("deleted-{user_id}")
}

/// How an erased handle is remembered: enough to refuse it, not to show it.
pub fn retired_handle_hash(handle: &str) -> String {
    hex::encode(Sha256::digest(handle.as_bytes()))
}

#[derive(sqlx::FromRow)]
struct LockedUser {
    handle: String,
    deleted_at_ms: Option<i64>,
    github_id: Option<i64>,
}

/// Erases a user's account (see the module documentation), if `confirm` is their handle.
/// The money they hold stays theirs and is reported; casts in flight settle; every instance
/// stops accepting their keys within a poll of the cache epochs (this one at once).
pub async fn erase(
    app: &AppState,
    user_id: i64,
    confirm: Option<&str>,
) -> Result<Erased, PrivacyError> {
    let db = &app.db;
    let now = db.now_ms();
    let mut tx = db.begin().await?;
    // The money path's lock order: the auto-recharge row, recharges, the user, budgets, leases.
    sqlx::query("DELETE FROM auto_recharge WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    // A recharge whose creation is unknown is not retried (it would charge the card of a
    // deleted account); if Stripe did create it, its webhook still credits the balance.
    sqlx::query(
        "UPDATE recharges SET state = 'abandoned', failure_reason = 'account deleted' \
         WHERE user_id = $1 AND state = 'creating'",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    let user: LockedUser = sqlx::query_as(db.pick(
        "SELECT handle, deleted_at_ms, github_id FROM users WHERE id = $1",
        "SELECT handle, deleted_at_ms, github_id FROM users WHERE id = $1 FOR UPDATE",
    ))
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(PrivacyError::UnknownUser)?;
    if user.deleted_at_ms.is_some() {
        return Err(PrivacyError::UnknownUser);
    }
    if confirm != Some(user.handle.as_str()) {
        return Err(PrivacyError::NotConfirmed);
    }
    let handle = tombstone(user_id);
    sqlx::query(
        "UPDATE users SET handle = $1, email = '', stripe_customer_id = NULL, is_admin = 0, \
         github_id = NULL, deleted_at_ms = $2, budgets_version = budgets_version + 1 WHERE id = $3",
    )
    .bind(&handle)
    .bind(now)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO retired_handles (handle_sha256, retired_at_ms) VALUES ($1, $2)")
        .bind(retired_handle_hash(&user.handle))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    // The GitHub account can never log in again (`crate::auth::github::login`).
    if let Some(github_id) = user.github_id {
        sqlx::query(
            "INSERT INTO retired_github_ids (github_id_sha256, retired_at_ms) VALUES ($1, $2)",
        )
        .bind(crate::auth::github::retired_github_id_hash(github_id))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    // Budget leases go with their budgets; balance leases are revoked, and their owners give
    // back what casts in flight do not hold at their next upkeep (half a second).
    let deleted_budgets =
        delete(&mut tx, "DELETE FROM budgets WHERE user_id = $1", user_id).await?;
    sqlx::query("UPDATE leases SET revoked = 1 WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let deleted_keys = delete(&mut tx, "DELETE FROM api_keys WHERE user_id = $1", user_id).await?;
    delete(&mut tx, "DELETE FROM sessions WHERE user_id = $1", user_id).await?;
    let digests: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT digest FROM spell_versions WHERE owner_id = $1")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
    let deleted_spell_versions = delete(
        &mut tx,
        "DELETE FROM spell_versions WHERE owner_id = $1",
        user_id,
    )
    .await?;
    // Their module bytes, unless another version names them (content-addressed: another
    // author may have published the same bytes).
    for (digest,) in &digests {
        sqlx::query(
            "DELETE FROM modules WHERE digest = $1 AND NOT EXISTS \
             (SELECT 1 FROM spell_versions v WHERE v.digest = $2)",
        )
        .bind(digest)
        .bind(digest)
        .execute(&mut *tx)
        .await?;
    }
    let deleted_signers =
        delete(&mut tx, "DELETE FROM signers WHERE user_id = $1", user_id).await?;
    for sql in [
        "DELETE FROM stripe_payment_methods WHERE user_id = $1",
        "DELETE FROM idempotency_keys WHERE user_id = $1",
        // Kept outputs are the user's data, not a financial record: the cast records stay.
        "UPDATE casts SET output = NULL WHERE user_id = $1 AND output IS NOT NULL",
    ] {
        delete(&mut tx, sql, user_id).await?;
    }
    let keys_epoch =
        crate::store::bump_cache_epoch(&mut tx, crate::store::CacheEpoch::Keys).await?;
    let spells_epoch =
        crate::store::bump_cache_epoch(&mut tx, crate::store::CacheEpoch::Spells).await?;
    tx.commit().await?;
    // This instance forgets the keys and spells at once; others at their next epoch poll.
    app.auth.on_epoch(keys_epoch);
    app.registry.on_epoch(spells_epoch);
    app.money.invalidate(user_id);
    let balance = crate::money::balance(db, user_id)
        .await
        .map_err(|_| PrivacyError::UnknownUser)?;
    tracing::info!(user.id = user_id, "account erased");
    Ok(Erased {
        user_id,
        handle,
        balance_microusd: balance.balance.get(),
        held_microusd: balance.held.get(),
        deleted_keys,
        deleted_spell_versions,
        deleted_signers,
        deleted_budgets,
    })
}

async fn delete(
    tx: &mut crate::store::Tx,
    sql: &'static str,
    user_id: i64,
) -> Result<u64, PrivacyError> {
    Ok(sqlx::query(sql)
        .bind(user_id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_not_registrable_handles() {
        let tombstone = tombstone(42);
        assert_eq!(tombstone, "deleted-42");
        assert!(crate::auth::is_reserved_handle(&tombstone));
        assert!(!crate::auth::is_reserved_handle("ada"));
    }

    #[test]
    fn retired_handles_are_kept_as_hashes() {
        let hash = retired_handle_hash("ada");
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains("ada"));
        assert_ne!(hash, retired_handle_hash("bob"));
    }
}
