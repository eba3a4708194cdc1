use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::money::LedgerEntry;
use crate::money::ledger::LEDGER_COLUMNS;

/// Entries per page when the client does not say; at most `PAGE_MAX`.
const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;

#[derive(Deserialize)]
pub struct Page {
    /// Return entries with `seq` greater than this (the previous page's `next_after`).
    after: Option<i64>,
    limit: Option<i64>,
}

/// A ledger entry as listed.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct EntryView {
    seq: i64,
    /// `grant`, `topup`, `charge`, …
    kind: String,
    /// Signed: credits are positive, charges negative.
    amount_microusd: i64,
    balance_after_microusd: i64,
    reference: String,
    created_at_ms: i64,
    /// A cast's charge for blocked time (part of `-amount_microusd`).
    wall_microusd: Option<i64>,
    /// The entry's link in the ledger's hash chain.
    hash: String,
}

/// `GET /v1/ledger`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct EntryPage {
    entries: Vec<EntryView>,
    /// `after` for the next page; `null` on the last one.
    next_after: Option<i64>,
}

/// `GET /v1/ledger?after=<seq>&limit=<n>`: the caller's entries, oldest first.
#[utoipa::path(
    get,
    path = "/v1/ledger",
    tag = "money",
    params(
        ("after" = Option<i64>, Query, description = "Entries with `seq` greater than this (the previous page's `next_after`)."),
        ("limit" = Option<i64>, Query, description = "Entries per page: 50 when absent, clamped to 1..=500."),
    ),
    responses((status = 200, description = "A page of the caller's entries, oldest first.", body = EntryPage)),
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    Query(page): Query<Page>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let entries: Vec<LedgerEntry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LEDGER_COLUMNS} FROM ledger WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    )))
    .bind(caller.user_id)
    .bind(page.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(app.db.reader())
    .await?;
    let next_after = if entries.len() as i64 == limit {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            json!({
                "seq": e.seq, "kind": e.kind, "amount_microusd": e.amount_microusd,
                "balance_after_microusd": e.balance_after_microusd, "reference": e.reference,
                "created_at_ms": e.created_at_ms, "wall_microusd": e.wall_microusd, "hash": e.hash,
            })
        })
        .collect();
    Ok(axum::Json(
        json!({ "entries": entries, "next_after": next_after }),
    ))
}
