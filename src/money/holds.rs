//! A cast is hold → run → settle. The hold sets aside what the largest run could cost on the
//! balance and on every budget that applies, in one transaction; settling charges the fuel
//! actually burned, releases the rest and appends the ledger entry in one transaction. Holds
//! carry an expiry; a sweeper voids those whose settle never came (a crash), so money is never
//! stuck and never charged twice.

use super::budgets::{self, Budget};
use super::quote::{self, FuelBound, Plan};
use super::{Balance, EntryKind, MicroUsd, MoneyError, Pricing, ledger, lock_balance};
use crate::store::{Db, Tx};

/// What a cast asks to reserve.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub user_id: i64,
    /// The API key the cast came with (key budgets).
    pub key_id: String,
    /// `owner/name` (spell budgets).
    pub spell: String,
    pub cast_id: String,
    /// The fuel cap and its worst-case cost, from [`quote::plan`].
    pub plan: Plan,
    /// How long the hold may live before the sweeper may void it, in milliseconds.
    pub ttl_ms: i64,
}

/// Money set aside for one cast, on the balance and on every budget that applies. It must be
/// settled or voided; dropping it leaves the money held until the sweeper voids it at expiry.
#[derive(Debug)]
#[must_use = "a hold must be settled or voided"]
pub struct Hold {
    pub id: String,
    pub user_id: i64,
    pub key_id: String,
    pub spell: String,
    pub amount: MicroUsd,
    pub fuel_cap: u64,
    pub bound: FuelBound,
    /// The budgets it holds against, as they were just before it was taken.
    pub budgets: Vec<Budget>,
}

/// The result of settling a cast.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub cost: MicroUsd,
    pub balance_after: MicroUsd,
    pub ledger_seq: i64,
    /// The budgets that govern the cast, as they are after it.
    pub budgets: Vec<Budget>,
    /// Budgets whose soft limit this cast's charge crossed.
    pub soft_limits_crossed: Vec<String>,
}

/// The record of a cast, written with its settlement.
#[derive(Debug, Clone)]
pub struct CastRecord<'a> {
    pub spell: &'a str,
    pub version: &'a str,
    pub digest: &'a str,
    pub outcome: &'a str,
    pub fuel_used: u64,
    pub duration_us: u64,
}

/// Holds the cast's worst case against the balance and every budget that applies, in one
/// transaction, or refuses it with the quote ([`MoneyError::Refused`]) before anything runs.
pub async fn reserve(
    db: &Db,
    request: &HoldRequest,
    pricing: &Pricing,
) -> Result<Hold, MoneyError> {
    let now = db.now_ms();
    let mut tx = db.begin().await?;
    let current = lock_balance(db, &mut tx, request.user_id).await?;
    let budgets = budgets::applicable_in(
        db,
        &mut tx,
        request.user_id,
        &request.key_id,
        &request.spell,
        now,
    )
    .await?;
    quote::check(&request.plan, current.available(), &budgets, pricing).map_err(|refusal| {
        MoneyError::Refused {
            refusal,
            budgets: budgets.clone(),
        }
    })?;
    let amount = request.plan.worst_case;
    debug_assert!(amount <= current.available());
    // The conditions re-check what the lock already guarantees: never hold more than is
    // available, whatever happened between the read and the write.
    let updated = sqlx::query(
        "UPDATE users SET held_microusd = held_microusd + $1 \
         WHERE id = $2 AND balance_microusd - held_microusd >= $1",
    )
    .bind(amount.get())
    .bind(request.user_id)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(MoneyError::Corrupt(
            "the balance changed under its lock".into(),
        ));
    }
    sqlx::query(
        "INSERT INTO holds (id, user_id, amount_microusd, created_at_ms, expires_at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&request.cast_id)
    .bind(request.user_id)
    .bind(amount.get())
    .bind(now)
    .bind(now.saturating_add(request.ttl_ms))
    .execute(&mut *tx)
    .await?;
    for budget in &budgets {
        hold_on_budget(&mut tx, &request.cast_id, budget, amount).await?;
    }
    tx.commit().await?;
    Ok(Hold {
        id: request.cast_id.clone(),
        user_id: request.user_id,
        key_id: request.key_id.clone(),
        spell: request.spell.clone(),
        amount,
        fuel_cap: request.plan.fuel_cap,
        bound: request.plan.bound,
        budgets,
    })
}

/// Adds `amount` to a budget's held money (moving it into the current period first) and links
/// the hold to it.
async fn hold_on_budget(
    tx: &mut Tx,
    hold_id: &str,
    budget: &Budget,
    amount: MicroUsd,
) -> Result<(), MoneyError> {
    debug_assert!(budget.remaining() >= amount);
    let updated = sqlx::query(
        "UPDATE budgets SET held_microusd = held_microusd + $1, \
         used_microusd = CASE WHEN period_start_ms = $2 THEN used_microusd ELSE 0 END, \
         period_start_ms = $2 \
         WHERE id = $3 AND (CASE WHEN period_start_ms = $2 THEN used_microusd ELSE 0 END) \
         + held_microusd + $1 <= hard_limit_microusd",
    )
    .bind(amount.get())
    .bind(budget.period_start_ms)
    .bind(&budget.id)
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Err(MoneyError::Corrupt(format!(
            "budget {} changed under its lock",
            budget.id
        )));
    }
    sqlx::query("INSERT INTO hold_budgets (hold_id, budget_id) VALUES ($1, $2)")
        .bind(hold_id)
        .bind(&budget.id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Charges `fuel_used` (capped at what was held), releases the rest of the hold on the balance
/// and on its budgets, counts the charge in each budget's current period, appends the ledger
/// entry and records the cast — one transaction. If the sweeper already voided the hold (the
/// settle came after its expiry), the charge is still taken, but only if the available balance
/// and every budget cover it: never an overdraft.
pub async fn settle(
    db: &Db,
    hold: Hold,
    pricing: &Pricing,
    cast: &CastRecord<'_>,
) -> Result<Settlement, MoneyError> {
    let cost = pricing
        .cost(cast.fuel_used.min(hold.fuel_cap))
        .min(hold.amount);
    let now = db.now_ms();
    let mut tx = db.begin().await?;
    let current: Balance = lock_balance(db, &mut tx, hold.user_id).await?;
    let budgets =
        budgets::applicable_in(db, &mut tx, hold.user_id, &hold.key_id, &hold.spell, now).await?;
    let held_budgets: Vec<String> =
        sqlx::query_as::<_, (String,)>("SELECT budget_id FROM hold_budgets WHERE hold_id = $1")
            .bind(&hold.id)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
    let released = sqlx::query("DELETE FROM holds WHERE id = $1")
        .bind(&hold.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let held_after = if released == 1 {
        current.held.checked_sub(hold.amount)
    } else {
        tracing::warn!(cast.id = %hold.id, "settling a cast whose hold had expired");
        late_settle_fits(&current, &budgets, cost)?;
        Some(current.held)
    }
    .ok_or(MoneyError::AmountOutOfRange)?;
    let balance_after = current
        .balance
        .checked_sub(cost)
        .ok_or(MoneyError::AmountOutOfRange)?;
    sqlx::query("UPDATE users SET balance_microusd = $1, held_microusd = $2 WHERE id = $3")
        .bind(balance_after.get())
        .bind(held_after.get())
        .bind(hold.user_id)
        .execute(&mut *tx)
        .await?;
    let mut after = Vec::with_capacity(budgets.len());
    let mut soft_limits_crossed = Vec::new();
    for mut budget in budgets {
        let release = if held_budgets.contains(&budget.id) {
            hold.amount
        } else {
            MicroUsd::ZERO
        };
        charge_budget(&mut tx, &budget, release, cost).await?;
        let used_before = budget.used;
        budget.used = MicroUsd::new(budget.used.get().saturating_add(cost.get()));
        budget.held = MicroUsd::new(budget.held.get().saturating_sub(release.get()));
        if budget
            .soft
            .is_some_and(|soft| used_before < soft && budget.used >= soft)
        {
            soft_limits_crossed.push(budget.id.clone());
        }
        after.push(budget);
    }
    let negative = MicroUsd::new(-cost.get());
    let entry = ledger::append_entry(
        &mut tx,
        hold.user_id,
        EntryKind::Cast,
        negative,
        balance_after,
        &hold.id,
        now,
    )
    .await?;
    sqlx::query(
        "INSERT INTO casts (id, user_id, spell, version, digest, outcome, fuel_used, \
         cost_microusd, duration_us, ledger_seq, created_at_ms, key_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&hold.id)
    .bind(hold.user_id)
    .bind(cast.spell)
    .bind(cast.version)
    .bind(cast.digest)
    .bind(cast.outcome)
    .bind(i64::try_from(cast.fuel_used).unwrap_or(i64::MAX))
    .bind(cost.get())
    .bind(i64::try_from(cast.duration_us).unwrap_or(i64::MAX))
    .bind(entry.seq)
    .bind(entry.created_at_ms)
    .bind(&hold.key_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Settlement {
        cost,
        balance_after,
        ledger_seq: entry.seq,
        budgets: after,
        soft_limits_crossed,
    })
}

/// A settle whose hold was already swept may only charge what is still there.
fn late_settle_fits(
    current: &Balance,
    budgets: &[Budget],
    cost: MicroUsd,
) -> Result<(), MoneyError> {
    let short = budgets
        .iter()
        .map(Budget::remaining)
        .chain([current.available()])
        .min()
        .filter(|least| *least < cost);
    match short {
        Some(available) => Err(MoneyError::InsufficientFunds {
            required: cost,
            available,
        }),
        None => Ok(()),
    }
}

/// Releases `release` of a budget's held money and counts `cost` in its current period (the
/// period of the settle: a cast held across a boundary counts once, in the new period).
async fn charge_budget(
    tx: &mut Tx,
    budget: &Budget,
    release: MicroUsd,
    cost: MicroUsd,
) -> Result<(), MoneyError> {
    sqlx::query(
        "UPDATE budgets SET held_microusd = held_microusd - $1, \
         used_microusd = CASE WHEN period_start_ms = $2 THEN used_microusd ELSE 0 END + $3, \
         period_start_ms = $2 WHERE id = $4",
    )
    .bind(release.get())
    .bind(budget.period_start_ms)
    .bind(cost.get())
    .bind(&budget.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Releases a hold without charging (the run never happened: queue full, worker lost).
pub async fn void(db: &Db, hold: Hold) -> Result<(), MoneyError> {
    let mut tx = db.begin().await?;
    release(db, &mut tx, &hold.id).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes one hold and gives its amount back to the balance and its budgets; a no-op if it
/// is already gone. Locks the user before the hold, in the same order as `settle`.
async fn release(db: &Db, tx: &mut Tx, hold_id: &str) -> Result<bool, MoneyError> {
    let owner: Option<(i64,)> = sqlx::query_as("SELECT user_id FROM holds WHERE id = $1")
        .bind(hold_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((owner,)) = owner else {
        return Ok(false);
    };
    lock_balance(db, tx, owner).await?;
    let amount: Option<(i64,)> = sqlx::query_as("SELECT amount_microusd FROM holds WHERE id = $1")
        .bind(hold_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((amount,)) = amount else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE budgets SET held_microusd = held_microusd - $1 \
         WHERE id IN (SELECT budget_id FROM hold_budgets WHERE hold_id = $2)",
    )
    .bind(amount)
    .bind(hold_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM holds WHERE id = $1")
        .bind(hold_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE users SET held_microusd = held_microusd - $1 WHERE id = $2")
        .bind(amount)
        .bind(owner)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// Voids every hold past its expiry; returns how many. Run periodically and at start-up.
pub async fn sweep_expired(db: &Db, now_ms: i64) -> Result<u64, MoneyError> {
    let expired: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM holds WHERE expires_at_ms < $1 ORDER BY expires_at_ms LIMIT 1000",
    )
    .bind(now_ms)
    .fetch_all(db.reader())
    .await?;
    let mut voided = 0;
    for (id,) in expired {
        // One failure (a lock timeout, a settle winning the race) must not stop the batch.
        match void_if_expired(db, &id, now_ms).await {
            Ok(true) => {
                voided += 1;
                tracing::info!(cast.id = %id, "voided an expired hold");
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(cast.id = %id, error = %error, "could not void an expired hold")
            }
        }
    }
    Ok(voided)
}

async fn void_if_expired(db: &Db, id: &str, now_ms: i64) -> Result<bool, MoneyError> {
    let mut tx = db.begin().await?;
    // Re-checked inside the transaction: a settle may have won the race.
    let still_expired: Option<(i64,)> =
        sqlx::query_as("SELECT expires_at_ms FROM holds WHERE id = $1 AND expires_at_ms < $2")
            .bind(id)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
    let voided = still_expired.is_some() && release(db, &mut tx, id).await?;
    tx.commit().await?;
    Ok(voided)
}
