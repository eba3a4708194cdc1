//! Money: units, pricing, budgets, leases and group-committed settlements, and the
//! hash-chained ledger.
//!
//! Every change of a balance is a ledger entry written in the same transaction as the balance
//! update. Invariants (checked by tests after every operation): a user's balance equals the
//! sum of their entries; `held` equals the sum of their balance leases, and each budget's
//! `held` the sum of its leases; `available = balance − held ≥ 0` unless a refund or dispute
//! took it lower, which blocks casts; a budget's `used + held ≤ hard` unless its limit was
//! lowered.

pub mod batch;
pub mod budgets;
pub mod fuel_histogram;
pub mod leases;
pub mod ledger;
mod pricing;
pub mod quote;
pub mod records;
pub mod store;
mod units;
mod wal;

pub use budgets::{Budget, Period, Scope};
pub use leases::{CastRecord, HoldFor, InFlight, LeaseHold, Money, PendingSettlement, Settlement};
pub use ledger::{ChainCheck, EntryKind, LedgerEntry, append_entry, verify_chain};
pub use pricing::{Cost, DEFAULT_PRICE_MICROUSD_PER_WALL_MS, Pricing};
pub use quote::{Binding, Caps, FuelBound, Plan, Refusal};
pub use units::MicroUsd;

use crate::store::{Db, Tx};

#[derive(Debug, thiserror::Error)]
pub enum MoneyError {
    #[error("insufficient funds: {required} required, {available} available")]
    InsufficientFunds {
        required: MicroUsd,
        available: MicroUsd,
    },
    /// The balance or a budget cannot hold a cast's worst case: refused before it ran.
    #[error("the cast's worst case ({}) cannot be held", refusal.required)]
    Refused {
        refusal: Box<Refusal>,
        /// Every budget that applies, as read (for soft-limit warnings).
        budgets: Vec<Budget>,
    },
    #[error("no such user")]
    UnknownUser,
    #[error("no such budget")]
    UnknownBudget,
    /// A concurrent request created or changed the same record; retrying may succeed.
    #[error("a concurrent change conflicted")]
    Conflict,
    /// Stored money data that breaks an invariant: never expected, always logged.
    #[error("inconsistent money data: {0}")]
    Corrupt(String),
    /// Every attempt to commit a settlement failed; nothing was charged.
    #[error("the settlement could not be committed: {0}")]
    SettlementFailed(String),
    /// The money writer (SQLite) or committer (PostgreSQL) is not running.
    #[error("the money writer is not running")]
    WriterGone,
    /// A failure injected by a test ([`store::FailPoints`]).
    #[error("injected failure {0}")]
    Injected(&'static str),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("amount out of range")]
    AmountOutOfRange,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A user's money at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub balance: MicroUsd,
    pub held: MicroUsd,
}

impl Balance {
    pub fn available(&self) -> MicroUsd {
        MicroUsd::new(self.balance.get().saturating_sub(self.held.get()))
    }
}

pub async fn balance(db: &Db, user_id: i64) -> Result<Balance, MoneyError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT balance_microusd, held_microusd FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(db.reader())
            .await?;
    let (balance, held) = row.ok_or(MoneyError::UnknownUser)?;
    Ok(Balance {
        balance: MicroUsd::new(balance),
        held: MicroUsd::new(held),
    })
}

/// Reads and locks (PostgreSQL: `FOR UPDATE`) a user's balance inside a write transaction.
pub(crate) async fn lock_balance(
    db: &Db,
    tx: &mut Tx,
    user_id: i64,
) -> Result<Balance, MoneyError> {
    let sql = db.pick(
        "SELECT balance_microusd, held_microusd FROM users WHERE id = $1",
        "SELECT balance_microusd, held_microusd FROM users WHERE id = $1 FOR UPDATE",
    );
    let row: Option<(i64, i64)> = sqlx::query_as(sql)
        .bind(user_id)
        .fetch_optional(&mut **tx)
        .await?;
    let (balance, held) = row.ok_or(MoneyError::UnknownUser)?;
    Ok(Balance {
        balance: MicroUsd::new(balance),
        held: MicroUsd::new(held),
    })
}

/// Credits or debits a balance with its ledger entry, in one transaction. Credits (grants,
/// top-ups) are positive; refunds and disputes are negative and may take the balance below
/// zero. Returns the ledger entry.
pub async fn post(
    db: &Db,
    user_id: i64,
    kind: EntryKind,
    amount: MicroUsd,
    reference: &str,
) -> Result<LedgerEntry, MoneyError> {
    let mut tx = db.begin().await?;
    let entry = post_in(db, &mut tx, user_id, kind, amount, reference).await?;
    tx.commit().await?;
    Ok(entry)
}

/// [`post`] inside a caller's transaction (e.g. with an idempotency record).
pub async fn post_in(
    db: &Db,
    tx: &mut Tx,
    user_id: i64,
    kind: EntryKind,
    amount: MicroUsd,
    reference: &str,
) -> Result<LedgerEntry, MoneyError> {
    let current = lock_balance(db, tx, user_id).await?;
    let balance_after = current
        .balance
        .checked_add(amount)
        .ok_or(MoneyError::AmountOutOfRange)?;
    sqlx::query("UPDATE users SET balance_microusd = $1 WHERE id = $2")
        .bind(balance_after.get())
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    if amount.get() < 0 {
        // A debit (refund, dispute) may leave less than instances have leased: they must stop
        // admitting casts on those leases and give back what they do not hold (at their next
        // upkeep, within half a second).
        sqlx::query("UPDATE leases SET revoked = 1 WHERE user_id = $1 AND budget_id IS NULL")
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
    }
    let entry = append_entry(
        tx,
        user_id,
        kind,
        amount,
        balance_after,
        reference,
        db.now_ms(),
    )
    .await?;
    Ok(entry)
}
