//! A cast is hold → run → settle. The hold sets aside what the largest run could cost, with
//! one conditional statement; settling charges the fuel actually burned, releases the rest and
//! appends the ledger entry in one transaction. Holds carry an expiry; a sweeper voids those
//! whose settle never came (a crash), so money is never stuck and never charged twice.

use super::{Balance, EntryKind, MicroUsd, MoneyError, Pricing, ledger, lock_balance};
use crate::store::{Db, now_ms};

/// What decided a run's fuel cap: this tells a fuel-exhausted run's 402 (the budget ran out)
/// from its 422 (the caller's or the spell's own cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuelBound {
    /// The caller's `max_fuel`.
    Caller,
    /// The manifest's `fuel_max` or the host's maximum.
    Spell,
    /// What the available balance could pay for.
    Budget,
}

/// What a cast asks to reserve.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub user_id: i64,
    pub cast_id: String,
    /// The cap from the manifest and the host.
    pub spell_fuel_max: u64,
    /// The caller's own cap, if any.
    pub caller_fuel_max: Option<u64>,
    /// How long the hold may live before the sweeper may void it, in milliseconds.
    pub ttl_ms: i64,
}

/// Money set aside for one cast. It must be settled or voided; dropping it leaves the money
/// held until the sweeper voids it at expiry.
#[derive(Debug)]
#[must_use = "a hold must be settled or voided"]
pub struct Hold {
    pub id: String,
    pub user_id: i64,
    pub amount: MicroUsd,
    pub fuel_cap: u64,
    pub bound: FuelBound,
}

/// The result of settling a cast.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub cost: MicroUsd,
    pub balance_after: MicroUsd,
    pub ledger_seq: i64,
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

/// The fuel cap and its bound for this balance, or the amount that would have been needed.
fn fuel_cap(
    request: &HoldRequest,
    available: MicroUsd,
    pricing: &Pricing,
) -> Result<(u64, FuelBound), MicroUsd> {
    let (mut cap, mut bound) = (request.spell_fuel_max, FuelBound::Spell);
    if let Some(caller) = request.caller_fuel_max
        && caller < cap
    {
        (cap, bound) = (caller, FuelBound::Caller);
    }
    // A minimal run: the base fee plus one unit of fuel.
    let minimal_fuel = cap.min(1);
    let minimal = pricing.cost(minimal_fuel);
    let affordable = pricing.affordable_fuel(available).ok_or(minimal)?;
    if affordable < minimal_fuel {
        return Err(minimal);
    }
    if affordable < cap {
        (cap, bound) = (affordable, FuelBound::Budget);
    }
    Ok((cap, bound))
}

/// Reserves the cost of the largest run this balance allows. Fails with
/// [`MoneyError::InsufficientFunds`] before anything runs when not even the base fee and a
/// minimal run can be paid.
pub async fn reserve(
    db: &Db,
    request: &HoldRequest,
    pricing: &Pricing,
) -> Result<Hold, MoneyError> {
    let mut tx = db.begin().await?;
    let current = lock_balance(db, &mut tx, request.user_id).await?;
    let available = current.available();
    let (fuel_cap, bound) = fuel_cap(request, available, pricing).map_err(|required| {
        MoneyError::InsufficientFunds {
            required,
            available,
        }
    })?;
    let amount = pricing.cost(fuel_cap);
    debug_assert!(amount <= available);
    // The condition re-checks what the lock already guarantees: never hold more than is
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
        return Err(MoneyError::InsufficientFunds {
            required: amount,
            available,
        });
    }
    let now = now_ms();
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
    tx.commit().await?;
    Ok(Hold {
        id: request.cast_id.clone(),
        user_id: request.user_id,
        amount,
        fuel_cap,
        bound,
    })
}

/// Charges `fuel_used` (capped at what was held), releases the rest of the hold, appends the
/// ledger entry and records the cast — one transaction. If the sweeper already voided the hold
/// (the settle came after its expiry), the charge is still taken, but only if the available
/// balance covers it: never an overdraft.
pub async fn settle(
    db: &Db,
    hold: Hold,
    pricing: &Pricing,
    cast: &CastRecord<'_>,
) -> Result<Settlement, MoneyError> {
    let cost = pricing
        .cost(cast.fuel_used.min(hold.fuel_cap))
        .min(hold.amount);
    let mut tx = db.begin().await?;
    let current: Balance = lock_balance(db, &mut tx, hold.user_id).await?;
    let released = sqlx::query("DELETE FROM holds WHERE id = $1")
        .bind(&hold.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let held_after = if released == 1 {
        current.held.checked_sub(hold.amount)
    } else {
        tracing::warn!(cast.id = %hold.id, "settling a cast whose hold had expired");
        if current.available() < cost {
            return Err(MoneyError::InsufficientFunds {
                required: cost,
                available: current.available(),
            });
        }
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
    let negative = MicroUsd::new(-cost.get());
    let entry = ledger::append_entry(
        &mut tx,
        hold.user_id,
        EntryKind::Cast,
        negative,
        balance_after,
        &hold.id,
    )
    .await?;
    sqlx::query(
        "INSERT INTO casts (id, user_id, spell, version, digest, outcome, fuel_used, \
         cost_microusd, duration_us, ledger_seq, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Settlement {
        cost,
        balance_after,
        ledger_seq: entry.seq,
    })
}

/// Releases a hold without charging (the run never happened: queue full, worker lost).
pub async fn void(db: &Db, hold: Hold) -> Result<(), MoneyError> {
    let mut tx = db.begin().await?;
    release(db, &mut tx, &hold.id).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes one hold and gives its amount back; a no-op if it is already gone. Locks the user
/// before the hold, in the same order as `settle`.
async fn release(db: &Db, tx: &mut crate::store::Tx, hold_id: &str) -> Result<bool, MoneyError> {
    let owner: Option<(i64,)> = sqlx::query_as("SELECT user_id FROM holds WHERE id = $1")
        .bind(hold_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((owner,)) = owner else {
        return Ok(false);
    };
    lock_balance(db, tx, owner).await?;
    let removed: Option<(i64, i64)> =
        sqlx::query_as("DELETE FROM holds WHERE id = $1 RETURNING user_id, amount_microusd")
            .bind(hold_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((user_id, amount)) = removed else {
        return Ok(false);
    };
    sqlx::query("UPDATE users SET held_microusd = held_microusd - $1 WHERE id = $2")
        .bind(amount)
        .bind(user_id)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(spell: u64, caller: Option<u64>) -> HoldRequest {
        HoldRequest {
            user_id: 1,
            cast_id: "c".into(),
            spell_fuel_max: spell,
            caller_fuel_max: caller,
            ttl_ms: 1000,
        }
    }

    #[test]
    fn the_smallest_cap_wins_and_names_its_bound() {
        let pricing = Pricing::default();
        let rich = MicroUsd::new(1_000_000_000);
        assert_eq!(
            fuel_cap(&request(100, None), rich, &pricing),
            Ok((100, FuelBound::Spell))
        );
        assert_eq!(
            fuel_cap(&request(100, Some(50)), rich, &pricing),
            Ok((50, FuelBound::Caller))
        );
        // 11 µ$ buys the base fee and 10 µ$ of fuel: 100 000 fuel at the default price.
        let poor = MicroUsd::new(11);
        assert_eq!(
            fuel_cap(&request(1_000_000, Some(500_000)), poor, &pricing),
            Ok((100_000, FuelBound::Budget))
        );
    }

    #[test]
    fn a_balance_below_a_minimal_run_gets_no_cap() {
        let pricing = Pricing::default();
        assert_eq!(
            fuel_cap(&request(100, None), MicroUsd::new(1), &pricing),
            Err(MicroUsd::new(2))
        );
        assert_eq!(
            fuel_cap(&request(100, None), MicroUsd::new(-50), &pricing),
            Err(MicroUsd::new(2))
        );
        assert!(fuel_cap(&request(100, None), MicroUsd::new(2), &pricing).is_ok());
    }
}
