//! Budgets: spending limits of one user over one scope (the account, one API key, one spell)
//! and one calendar period in UTC. A cast is governed by every budget that applies to it, and
//! its worst case is held against each of them exactly as against the balance.
//!
//! What a cast spends counts in the period in which it settled: `used_microusd` belongs to the
//! period that starts at `period_start_ms` and counts from zero again in the next one, while
//! `held_microusd` is money set aside for casts in flight, whatever the period.

use serde::Serialize;
use time::{Date, Month, OffsetDateTime, Time};

use super::{MicroUsd, MoneyError};
use crate::store::{Db, Tx, is_unique_violation};

const DAY_MS: i64 = 86_400_000;

/// A budget's calendar period (UTC). Weeks are ISO weeks, starting on Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Week,
    Month,
    /// One period for all time: the budget never resets.
    Total,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    pub fn parse(text: &str) -> Option<Period> {
        Some(match text {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            "total" => Period::Total,
            _ => return None,
        })
    }

    /// The start (Unix ms) of the period that contains `now_ms`.
    pub fn start_ms(self, now_ms: i64) -> i64 {
        let date = utc_date(now_ms);
        let start = match self {
            Period::Total => return 0,
            Period::Day => date,
            Period::Week => {
                let back = i64::from(date.weekday().number_days_from_monday());
                date.checked_sub(time::Duration::days(back)).unwrap_or(date)
            }
            Period::Month => date.replace_day(1).unwrap_or(date),
        };
        midnight_ms(start)
    }

    /// When the period that starts at `start_ms` ends (Unix ms); `None` for `total`.
    pub fn end_ms(self, start_ms: i64) -> Option<i64> {
        match self {
            Period::Total => None,
            Period::Day => Some(start_ms + DAY_MS),
            Period::Week => Some(start_ms + 7 * DAY_MS),
            Period::Month => {
                let date = utc_date(start_ms);
                let (year, month) = match date.month() {
                    Month::December => (date.year() + 1, Month::January),
                    other => (date.year(), other.next()),
                };
                Date::from_calendar_date(year, month, 1)
                    .ok()
                    .map(midnight_ms)
            }
        }
    }
}

fn utc_date(ms: i64) -> Date {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .date()
}

fn midnight_ms(date: Date) -> i64 {
    let at = date.with_time(Time::MIDNIGHT).assume_utc();
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// What a budget limits. Key scopes name the key by its id (shown as the `spk_<id>` prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Account,
    Key { key_id: String },
    Spell { spell: String },
}

impl Scope {
    pub fn type_str(&self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Key { .. } => "key",
            Scope::Spell { .. } => "spell",
        }
    }

    /// The stored `scope_value`: `''`, the key id, or `owner/name`.
    pub fn value(&self) -> &str {
        match self {
            Scope::Account => "",
            Scope::Key { key_id } => key_id,
            Scope::Spell { spell } => spell,
        }
    }

    fn from_stored(scope_type: &str, value: String) -> Option<Scope> {
        Some(match scope_type {
            "account" => Scope::Account,
            "key" => Scope::Key { key_id: value },
            "spell" => Scope::Spell { spell: value },
            _ => return None,
        })
    }

    /// The scope as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Scope::Account => serde_json::json!({"type": "account"}),
            Scope::Key { key_id } => {
                serde_json::json!({"type": "key", "key_prefix": crate::auth::keys::prefix_of(key_id)})
            }
            Scope::Spell { spell } => serde_json::json!({"type": "spell", "spell": spell}),
        }
    }
}

/// A budget's limits, validated: `0 < soft ≤ hard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    hard: MicroUsd,
    soft: Option<MicroUsd>,
}

/// Why limits are not valid, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidLimits {
    pub field: &'static str,
    pub message: &'static str,
}

impl Limits {
    pub fn new(hard: i64, soft: Option<i64>) -> Result<Limits, InvalidLimits> {
        if hard <= 0 {
            return Err(InvalidLimits {
                field: "hard_limit_microusd",
                message: "must be positive",
            });
        }
        match soft {
            Some(soft) if soft <= 0 => Err(InvalidLimits {
                field: "soft_limit_microusd",
                message: "must be positive",
            }),
            Some(soft) if soft > hard => Err(InvalidLimits {
                field: "soft_limit_microusd",
                message: "must not exceed hard_limit_microusd",
            }),
            _ => Ok(Limits {
                hard: MicroUsd::new(hard),
                soft: soft.map(MicroUsd::new),
            }),
        }
    }

    pub fn hard(&self) -> MicroUsd {
        self.hard
    }

    pub fn soft(&self) -> Option<MicroUsd> {
        self.soft
    }
}

#[derive(Debug, sqlx::FromRow)]
struct BudgetRow {
    id: String,
    user_id: i64,
    scope_type: String,
    scope_value: String,
    period: String,
    hard_limit_microusd: i64,
    soft_limit_microusd: Option<i64>,
    period_start_ms: i64,
    used_microusd: i64,
    held_microusd: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
}

pub(crate) const BUDGET_COLUMNS: &str = "id, user_id, scope_type, scope_value, period, hard_limit_microusd, \
     soft_limit_microusd, period_start_ms, used_microusd, held_microusd, created_at_ms, updated_at_ms";

/// A budget as of one instant: `used` is the current period's (zero if nothing settled in it
/// yet), so `used + held ≤ hard` is what every hold keeps (unless the limit was lowered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub id: String,
    pub user_id: i64,
    pub scope: Scope,
    pub period: Period,
    pub hard: MicroUsd,
    pub soft: Option<MicroUsd>,
    pub used: MicroUsd,
    pub held: MicroUsd,
    pub period_start_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Budget {
    fn from_row(row: BudgetRow, now_ms: i64) -> Result<Budget, MoneyError> {
        let corrupt =
            || MoneyError::Corrupt(format!("budget {} has an unknown scope or period", row.id));
        let period = Period::parse(&row.period).ok_or_else(corrupt)?;
        let scope =
            Scope::from_stored(&row.scope_type, row.scope_value.clone()).ok_or_else(corrupt)?;
        let period_start_ms = period.start_ms(now_ms);
        // What was used in an earlier period does not count in this one.
        let used = if row.period_start_ms == period_start_ms {
            row.used_microusd
        } else {
            0
        };
        Ok(Budget {
            id: row.id,
            user_id: row.user_id,
            scope,
            period,
            hard: MicroUsd::new(row.hard_limit_microusd),
            soft: row.soft_limit_microusd.map(MicroUsd::new),
            used: MicroUsd::new(used),
            held: MicroUsd::new(row.held_microusd),
            period_start_ms,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
        })
    }

    /// A budget read through the money path's own connection ([`super::store::Conn`]).
    pub(crate) fn from_money_row(
        row: &super::store::Row,
        now_ms: i64,
    ) -> Result<Budget, MoneyError> {
        let stored = BudgetRow {
            id: row.text("id")?,
            user_id: row.int("user_id")?,
            scope_type: row.text("scope_type")?,
            scope_value: row.text("scope_value")?,
            period: row.text("period")?,
            hard_limit_microusd: row.int("hard_limit_microusd")?,
            soft_limit_microusd: row.opt_int("soft_limit_microusd")?,
            period_start_ms: row.int("period_start_ms")?,
            used_microusd: row.int("used_microusd")?,
            held_microusd: row.int("held_microusd")?,
            created_at_ms: row.int("created_at_ms")?,
            updated_at_ms: row.int("updated_at_ms")?,
        };
        Budget::from_row(stored, now_ms)
    }

    /// What the budget can still hold: `hard − used − held`, negative when a lowered limit
    /// is already exceeded.
    pub fn remaining(&self) -> MicroUsd {
        MicroUsd::new(
            self.hard
                .get()
                .saturating_sub(self.used.get())
                .saturating_sub(self.held.get()),
        )
    }

    pub fn soft_limit_reached(&self) -> bool {
        self.soft.is_some_and(|soft| self.used >= soft)
    }

    /// When the current period ends and `used` starts again from zero; `None` for `total`.
    pub fn resets_at_ms(&self) -> Option<i64> {
        self.period.end_ms(self.period_start_ms)
    }

    /// The budget as the API (and the CLI's `--json`) shows it. `remaining_microusd` is never
    /// shown below zero; `period_end` is `null` for `total`.
    pub fn to_json(&self) -> serde_json::Value {
        use crate::store::rfc3339;
        serde_json::json!({
            "id": self.id,
            "scope": self.scope.to_json(),
            "period": self.period.as_str(),
            "hard_limit_microusd": self.hard.get(),
            "soft_limit_microusd": self.soft.map(MicroUsd::get),
            "used_microusd": self.used.get(),
            "held_microusd": self.held.get(),
            "remaining_microusd": self.remaining().get().max(0),
            "period_start": rfc3339(self.period_start_ms),
            "period_end": self.resets_at_ms().map(rfc3339),
            "soft_limit_reached": self.soft_limit_reached(),
            "created_at": rfc3339(self.created_at_ms),
            "updated_at": rfc3339(self.updated_at_ms),
        })
    }

    /// Whether a cast with this key and spell is governed by this budget.
    pub fn applies_to(&self, key_id: &str, spell: &str) -> bool {
        match &self.scope {
            Scope::Account => true,
            Scope::Key { key_id: own } => own == key_id,
            Scope::Spell { spell: own } => own == spell,
        }
    }
}

/// Every budget of a user.
pub async fn list(db: &Db, user_id: i64, now_ms: i64) -> Result<Vec<Budget>, MoneyError> {
    let rows: Vec<BudgetRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BUDGET_COLUMNS} FROM budgets WHERE user_id = $1 ORDER BY created_at_ms, id"
    )))
    .bind(user_id)
    .fetch_all(db.reader())
    .await?;
    rows.into_iter()
        .map(|row| Budget::from_row(row, now_ms))
        .collect()
}

async fn find_in(
    tx: &mut Tx,
    user_id: i64,
    condition: &Condition<'_>,
    now_ms: i64,
) -> Result<Option<Budget>, MoneyError> {
    let row: Option<BudgetRow> = match condition {
        Condition::Id(id) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {BUDGET_COLUMNS} FROM budgets WHERE user_id = $1 AND id = $2"
            )))
            .bind(user_id)
            .bind(*id)
            .fetch_optional(&mut **tx)
            .await?
        }
        Condition::ScopePeriod(scope, period) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {BUDGET_COLUMNS} FROM budgets WHERE user_id = $1 AND scope_type = $2 \
                 AND scope_value = $3 AND period = $4"
            )))
            .bind(user_id)
            .bind(scope.type_str())
            .bind(scope.value())
            .bind(period.as_str())
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    row.map(|row| Budget::from_row(row, now_ms)).transpose()
}

/// How a budget is named in an update or a deletion.
pub enum Condition<'a> {
    Id(&'a str),
    ScopePeriod(&'a Scope, Period),
}

/// Creates the budget for (scope, period), or updates its limits if it exists. Returns the
/// budget and whether it was created.
pub async fn upsert(
    db: &Db,
    user_id: i64,
    scope: &Scope,
    period: Period,
    limits: Limits,
    now_ms: i64,
) -> Result<(Budget, bool), MoneyError> {
    let mut tx = db.begin().await?;
    let condition = Condition::ScopePeriod(scope, period);
    if find_in(&mut tx, user_id, &condition, now_ms)
        .await?
        .is_some()
    {
        let budget = update_in(&mut tx, user_id, &condition, limits, now_ms).await?;
        tx.commit().await?;
        return Ok((budget.ok_or(MoneyError::UnknownBudget)?, false));
    }
    let id = format!("bud_{}", uuid::Uuid::now_v7().simple());
    let inserted = sqlx::query(
        "INSERT INTO budgets (id, user_id, scope_type, scope_value, period, hard_limit_microusd, \
         soft_limit_microusd, period_start_ms, used_microusd, held_microusd, created_at_ms, \
         updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, $9)",
    )
    .bind(&id)
    .bind(user_id)
    .bind(scope.type_str())
    .bind(scope.value())
    .bind(period.as_str())
    .bind(limits.hard.get())
    .bind(limits.soft.map(MicroUsd::get))
    .bind(period.start_ms(now_ms))
    .bind(now_ms)
    .execute(&mut *tx)
    .await;
    match inserted {
        // A concurrent creation of the same budget won; the caller may retry as an update.
        Err(error) if is_unique_violation(&error) => return Err(MoneyError::Conflict),
        other => other?,
    };
    let budget = find_in(&mut tx, user_id, &Condition::Id(&id), now_ms)
        .await?
        .ok_or(MoneyError::UnknownBudget)?;
    tx.commit().await?;
    Ok((budget, true))
}

async fn update_in(
    tx: &mut Tx,
    user_id: i64,
    condition: &Condition<'_>,
    limits: Limits,
    now_ms: i64,
) -> Result<Option<Budget>, MoneyError> {
    let Some(existing) = find_in(tx, user_id, condition, now_ms).await? else {
        return Ok(None);
    };
    sqlx::query(
        "UPDATE budgets SET hard_limit_microusd = $1, soft_limit_microusd = $2, \
         updated_at_ms = $3 WHERE id = $4",
    )
    .bind(limits.hard.get())
    .bind(limits.soft.map(MicroUsd::get))
    .bind(now_ms)
    .bind(&existing.id)
    .execute(&mut **tx)
    .await?;
    // Slices of the budget leased under the old limit must not admit casts under the new
    // one: their owners give back what they do not hold and borrow again.
    sqlx::query("UPDATE leases SET revoked = 1 WHERE budget_id = $1")
        .bind(&existing.id)
        .execute(&mut **tx)
        .await?;
    find_in(tx, user_id, &Condition::Id(&existing.id), now_ms).await
}

/// Replaces a budget's limits. Lowering the hard limit below what is already used is allowed:
/// it blocks further casts in that period. `None` if the user has no such budget.
pub async fn update(
    db: &Db,
    user_id: i64,
    condition: Condition<'_>,
    limits: Limits,
    now_ms: i64,
) -> Result<Option<Budget>, MoneyError> {
    let mut tx = db.begin().await?;
    changing(db, &mut tx, user_id).await?;
    let budget = update_in(&mut tx, user_id, &condition, limits, now_ms).await?;
    tx.commit().await?;
    Ok(budget)
}

/// Starts a change of a user's budgets: locks the user first (the money path's lock order:
/// user, budgets, leases) and bumps their budgets version, which tells every instance to
/// re-read them.
async fn changing(db: &Db, tx: &mut Tx, user_id: i64) -> Result<(), MoneyError> {
    super::lock_balance(db, tx, user_id).await?;
    sqlx::query("UPDATE users SET budgets_version = budgets_version + 1 WHERE id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes a budget; `false` if the user has no such budget. Holds taken against it simply no
/// longer count against it.
pub async fn delete(db: &Db, user_id: i64, condition: Condition<'_>) -> Result<bool, MoneyError> {
    let mut tx = db.begin().await?;
    changing(db, &mut tx, user_id).await?;
    // Its leases go with it (ON DELETE CASCADE); casts in flight on them settle as late ones.
    let deleted =
        match condition {
            Condition::Id(id) => {
                sqlx::query("DELETE FROM budgets WHERE user_id = $1 AND id = $2")
                    .bind(user_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
            }
            Condition::ScopePeriod(scope, period) => sqlx::query(
                "DELETE FROM budgets WHERE user_id = $1 AND scope_type = $2 AND scope_value = $3 \
                 AND period = $4",
            )
            .bind(user_id)
            .bind(scope.type_str())
            .bind(scope.value())
            .bind(period.as_str())
            .execute(&mut *tx)
            .await?,
        };
    tx.commit().await?;
    Ok(deleted.rows_affected() == 1)
}

/// One row of spend, by group or in total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Spend {
    pub cast_count: i64,
    pub fuel_used: i64,
    /// Blocked time billed, in ms.
    pub blocked_ms: i64,
    /// Everything charged, the blocked time's part included.
    pub cost_microusd: i64,
    /// The part of `cost_microusd` that paid for blocked time.
    pub wall_microusd: i64,
}

impl Spend {
    fn add(&mut self, other: &Spend) {
        self.cast_count += other.cast_count;
        self.fuel_used = self.fuel_used.saturating_add(other.fuel_used);
        self.blocked_ms = self.blocked_ms.saturating_add(other.blocked_ms);
        self.cost_microusd = self.cost_microusd.saturating_add(other.cost_microusd);
        self.wall_microusd = self.wall_microusd.saturating_add(other.wall_microusd);
    }
}

/// Spend of one group (a day, a spell or a key), in total and by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UsageGroup {
    #[serde(flatten)]
    pub spend: Spend,
    pub by_outcome: std::collections::BTreeMap<String, Spend>,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Spell,
    Key,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        Some(match text {
            "day" => GroupBy::Day,
            "spell" => GroupBy::Spell,
            "key" => GroupBy::Key,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Spell => "spell",
            GroupBy::Key => "key",
        }
    }
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    group_key: String,
    outcome: String,
    cast_count: i64,
    fuel_used: i64,
    blocked_ms: i64,
    cost_microusd: i64,
    wall_microusd: i64,
}

/// A user's spend over `[from_ms, to_ms)`, from the durable cast records (each written in the
/// same transaction as its ledger entry, with the same time), so it adds up exactly to the
/// ledger's cast entries over the same range. Groups are keyed by `YYYY-MM-DD` (UTC), by
/// `owner/name`, or by key prefix (`spk_…`; casts from before keys were recorded: `unknown`).
pub async fn usage(
    db: &Db,
    user_id: i64,
    from_ms: i64,
    to_ms: i64,
    group_by: GroupBy,
) -> Result<Usage, MoneyError> {
    // The group expression is one of three static strings, never client text.
    let group = match group_by {
        GroupBy::Day => "CAST(created_at_ms / 86400000 AS TEXT)",
        GroupBy::Spell => "spell",
        GroupBy::Key => "COALESCE(key_id, '')",
    };
    let rows: Vec<UsageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {group} AS group_key, outcome, CAST(COUNT(*) AS BIGINT) AS cast_count, \
         CAST(COALESCE(SUM(fuel_used), 0) AS BIGINT) AS fuel_used, \
         CAST(COALESCE(SUM(blocked_ms), 0) AS BIGINT) AS blocked_ms, \
         CAST(COALESCE(SUM(cost_microusd), 0) AS BIGINT) AS cost_microusd, \
         CAST(COALESCE(SUM(wall_microusd), 0) AS BIGINT) AS wall_microusd \
         FROM casts WHERE user_id = $1 AND created_at_ms >= $2 AND created_at_ms < $3 \
         GROUP BY {group}, outcome"
    )))
    .bind(user_id)
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(db.reader())
    .await?;
    let mut total = UsageGroup::default();
    let mut groups: std::collections::BTreeMap<String, UsageGroup> = Default::default();
    for row in rows {
        let key = match group_by {
            GroupBy::Day => row
                .group_key
                .parse::<i64>()
                .map(|day| day_label(day * DAY_MS))
                .unwrap_or(row.group_key),
            GroupBy::Spell => row.group_key,
            GroupBy::Key if row.group_key.is_empty() => "unknown".to_owned(),
            GroupBy::Key => crate::auth::keys::prefix_of(&row.group_key),
        };
        let spend = Spend {
            cast_count: row.cast_count,
            fuel_used: row.fuel_used,
            blocked_ms: row.blocked_ms,
            cost_microusd: row.cost_microusd,
            wall_microusd: row.wall_microusd,
        };
        for group in [&mut total, groups.entry(key).or_default()] {
            group.spend.add(&spend);
            group
                .by_outcome
                .entry(row.outcome.clone())
                .or_default()
                .add(&spend);
        }
    }
    Ok(Usage {
        from_ms,
        to_ms,
        group_by,
        total,
        groups: groups.into_iter().collect(),
    })
}

/// A user's spend over a time range, in total and per group.
#[derive(Debug, Clone)]
pub struct Usage {
    pub from_ms: i64,
    pub to_ms: i64,
    pub group_by: GroupBy,
    pub total: UsageGroup,
    pub groups: Vec<(String, UsageGroup)>,
}

impl Usage {
    /// The default range: the current calendar month (UTC).
    pub fn current_month(now_ms: i64) -> (i64, i64) {
        let start = Period::Month.start_ms(now_ms);
        (start, Period::Month.end_ms(start).unwrap_or(now_ms))
    }

    /// As the API (and the CLI's `--json`) shows it.
    pub fn to_json(&self) -> serde_json::Value {
        use crate::store::rfc3339;
        let groups: Vec<serde_json::Value> = self
            .groups
            .iter()
            .map(|(group, usage)| {
                let mut row = serde_json::json!(usage);
                row["group"] = group.clone().into();
                row
            })
            .collect();
        serde_json::json!({
            "from": rfc3339(self.from_ms),
            "to": rfc3339(self.to_ms),
            "group_by": self.group_by.as_str(),
            "total": self.total,
            "groups": groups,
        })
    }
}

/// `YYYY-MM-DD` of a UTC instant.
fn day_label(ms: i64) -> String {
    let date = utc_date(ms);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02T10:30:00Z, a Wednesday.
    const WEDNESDAY: i64 = 1_796_207_400_000;

    fn at(text: &str) -> i64 {
        let parsed = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
        i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).expect("fits")
    }

    #[test]
    fn periods_start_at_utc_calendar_boundaries() {
        assert_eq!(WEDNESDAY, at("2026-12-02T10:30:00Z"));
        assert_eq!(Period::Day.start_ms(WEDNESDAY), at("2026-12-02T00:00:00Z"));
        assert_eq!(Period::Week.start_ms(WEDNESDAY), at("2026-11-30T00:00:00Z"));
        assert_eq!(
            Period::Month.start_ms(WEDNESDAY),
            at("2026-12-01T00:00:00Z")
        );
        assert_eq!(Period::Total.start_ms(WEDNESDAY), 0);
    }

    #[test]
    fn periods_end_where_the_next_one_starts() {
        let december = Period::Month.start_ms(WEDNESDAY);
        assert_eq!(
            Period::Month.end_ms(december),
            Some(at("2027-01-01T00:00:00Z"))
        );
        let february = at("2028-02-10T00:00:00Z");
        assert_eq!(
            Period::Month.end_ms(Period::Month.start_ms(february)),
            Some(at("2028-03-01T00:00:00Z"))
        );
        let week = Period::Week.start_ms(WEDNESDAY);
        assert_eq!(Period::Week.end_ms(week), Some(at("2026-12-07T00:00:00Z")));
        assert_eq!(Period::Total.end_ms(0), None);
        for period in [Period::Day, Period::Week, Period::Month] {
            let start = period.start_ms(WEDNESDAY);
            let end = period.end_ms(start).expect("ends");
            assert_eq!(period.start_ms(end - 1), start, "{period:?}");
            assert_eq!(period.start_ms(end), end, "{period:?}");
        }
    }

    #[test]
    fn a_monday_starts_its_own_week() {
        let monday = at("2026-11-30T00:00:00Z");
        assert_eq!(Period::Week.start_ms(monday), monday);
        assert_eq!(
            Period::Week.start_ms(monday - 1),
            at("2026-11-23T00:00:00Z")
        );
    }

    #[test]
    fn limits_need_zero_below_soft_below_hard() {
        assert!(Limits::new(10, Some(10)).is_ok());
        assert!(Limits::new(10, None).is_ok());
        assert_eq!(
            Limits::new(0, None).expect_err("zero").field,
            "hard_limit_microusd"
        );
        assert_eq!(
            Limits::new(-5, None).expect_err("negative").field,
            "hard_limit_microusd"
        );
        assert_eq!(
            Limits::new(10, Some(11)).expect_err("soft > hard").field,
            "soft_limit_microusd"
        );
        assert_eq!(
            Limits::new(10, Some(0)).expect_err("zero soft").field,
            "soft_limit_microusd"
        );
    }

    #[test]
    fn days_are_labelled_in_utc() {
        assert_eq!(day_label(WEDNESDAY), "2026-12-02");
        assert_eq!(day_label(0), "1970-01-01");
    }
}
