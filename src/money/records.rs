//! Settled casts as their casters read them back (`GET /v1/casts/{id}`), and the sweep of
//! outputs past their retention. The records themselves are written by the settlement batch
//! ([`super::batch`]), outputs with them.

use crate::store::Db;

use super::{Cost, MicroUsd, MoneyError};

/// What became of a cast's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputState {
    /// Kept until `expires_at_ms`: the bytes, as stored.
    Kept { output: Vec<u8>, expires_at_ms: i64 },
    /// It was kept and its retention ran out: swept (or about to be).
    Expired { expired_at_ms: i64 },
    /// Larger than the server keeps, or settled when none were kept.
    NotKept,
    /// The run failed: there is no output to keep.
    None,
}

/// A settled cast's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CastView {
    pub cast_id: String,
    pub spell: String,
    pub version: String,
    pub digest: String,
    pub outcome: String,
    pub fuel_used: i64,
    pub duration_us: i64,
    pub blocked_ms: i64,
    pub cost: MicroUsd,
    pub breakdown: Cost,
    pub created_at_ms: i64,
    /// The output's size in bytes (`None` for casts settled before it was recorded).
    pub output_bytes: Option<i64>,
    pub output: OutputState,
}

#[derive(sqlx::FromRow)]
struct CastRow {
    id: String,
    spell: String,
    version: String,
    digest: String,
    outcome: String,
    fuel_used: i64,
    duration_us: i64,
    blocked_ms: Option<i64>,
    cost_microusd: i64,
    base_microusd: Option<i64>,
    wall_microusd: Option<i64>,
    created_at_ms: i64,
    output: Option<String>,
    output_encoding: Option<String>,
    output_bytes: Option<i64>,
    output_expires_at_ms: Option<i64>,
}

/// A cast of `user_id`'s; `None` if there is none by that id (or it is someone else's: a
/// caller cannot tell the two apart).
pub async fn cast_record(
    db: &Db,
    user_id: i64,
    cast_id: &str,
) -> Result<Option<CastView>, MoneyError> {
    let row: Option<CastRow> = sqlx::query_as(
        "SELECT id, spell, version, digest, outcome, fuel_used, duration_us, blocked_ms, \
         cost_microusd, base_microusd, wall_microusd, created_at_ms, output, output_encoding, \
         output_bytes, output_expires_at_ms FROM casts WHERE id = $1 AND user_id = $2",
    )
    .bind(cast_id)
    .bind(user_id)
    .fetch_optional(db.reader())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let now_ms = db.now_ms();
    let output = match (row.output, row.output_expires_at_ms) {
        (Some(text), Some(expires_at_ms)) if expires_at_ms > now_ms => OutputState::Kept {
            output: decode(&text, row.output_encoding.as_deref())?,
            expires_at_ms,
        },
        (_, Some(expired_at_ms)) => OutputState::Expired { expired_at_ms },
        _ if row.outcome != "ok" => OutputState::None,
        _ => OutputState::NotKept,
    };
    // Casts recorded before the breakdown (0008) were base fee and fuel: all of it is fuel.
    let base = row.base_microusd.unwrap_or(0);
    let wall = row.wall_microusd.unwrap_or(0);
    Ok(Some(CastView {
        cast_id: row.id,
        spell: row.spell,
        version: row.version,
        digest: row.digest,
        outcome: row.outcome,
        fuel_used: row.fuel_used,
        duration_us: row.duration_us,
        blocked_ms: row.blocked_ms.unwrap_or(0),
        cost: MicroUsd::new(row.cost_microusd),
        breakdown: Cost {
            base: MicroUsd::new(base),
            fuel: MicroUsd::new(row.cost_microusd - base - wall),
            wall: MicroUsd::new(wall),
        },
        created_at_ms: row.created_at_ms,
        output_bytes: row.output_bytes,
        output,
    }))
}

fn decode(text: &str, encoding: Option<&str>) -> Result<Vec<u8>, MoneyError> {
    use base64::Engine as _;
    match encoding {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| MoneyError::Corrupt(format!("a kept output is not base64: {e}"))),
        _ => Ok(text.as_bytes().to_vec()),
    }
}

/// Outputs dropped per statement: bounded transactions, however many expire at once.
pub const SWEEP_BATCH: i64 = 500;

/// Drops outputs whose retention ran out, in batches of [`SWEEP_BATCH`] until none is left;
/// the records stay. Returns how many were dropped.
pub async fn sweep_expired_outputs(db: &Db) -> Result<u64, MoneyError> {
    let mut swept = 0;
    loop {
        let done = sqlx::query(
            "UPDATE casts SET output = NULL WHERE id IN \
             (SELECT id FROM casts WHERE output IS NOT NULL AND output_expires_at_ms <= $1 LIMIT $2)",
        )
        .bind(db.now_ms())
        .bind(SWEEP_BATCH)
        .execute(db.writer())
        .await?
        .rows_affected();
        swept += done;
        if done < SWEEP_BATCH as u64 {
            return Ok(swept);
        }
        tokio::task::yield_now().await;
    }
}
