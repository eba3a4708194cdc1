//! Group commit: many casts settled in one transaction. The reads lock what the batch touches
//! (users, budgets, leases, the ledger head, in that order); [`plan`] decides every charge,
//! ledger entry and new state in memory, as a pure function; the writes apply it with a few
//! multi-row statements. Settlement is idempotent on the cast id: a cast already recorded (a
//! retry after a lost acknowledgement) is answered from its record and never charged twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::budgets::Budget;
use super::ledger::{EntryKind, LedgerEntry};
use super::store::{Arg, Conn, FailPoints, Row};
use super::{Cost, MicroUsd, MoneyError};

/// A lease a cast's worst case was held on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub lease_id: String,
    /// `None` for a slice of the balance.
    pub budget_id: Option<String>,
}

/// One cast to settle: what it ran, what it costs, and where its worst case was held.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    pub cast_id: String,
    pub user_id: i64,
    pub key_id: String,
    pub spell: String,
    pub version: String,
    pub digest: String,
    pub outcome: String,
    pub fuel_used: u64,
    pub duration_us: u64,
    /// Blocked time billed, in ms.
    pub blocked_ms: u64,
    /// What the run costs, by component: in total at most its worst case.
    pub cost: Cost,
    pub leases: Vec<LeaseRef>,
    /// Every budget that governs the cast, held on or not.
    pub budget_ids: Vec<String>,
    /// The answer to store with the charge (a request with an `Idempotency-Key`).
    pub receipt: Option<Receipt>,
    /// The output's size in bytes, and the output itself when it is kept for the caster.
    pub output_bytes: u64,
    pub output: Option<KeptOutput>,
}

/// A cast's output kept with its record, for `GET /v1/casts/{id}`.
#[derive(Debug, Clone)]
pub struct KeptOutput {
    pub text: String,
    /// `utf8` (the bytes as text) or `base64`.
    pub encoding: &'static str,
    /// How long it is kept after the settlement.
    pub retention_ms: i64,
}

/// Renders a settled cast's answer: its status and the stored (sealed) response.
pub type RenderReceipt = dyn Fn(&Settled) -> (u16, String) + Send + Sync;

/// An idempotent request's answer, stored in the transaction that settles its cast: once the
/// charge is durable, so is what the client is told about it, and a retry after any crash
/// replays it instead of running the cast again (`crate::idempotency`).
#[derive(Clone)]
pub struct Receipt {
    pub user_id: i64,
    /// The row of the reservation, and the token that proves it is still this request's.
    pub key_hash: String,
    pub lock_token: String,
    /// The status and the stored (sealed) response, given what the settlement charged.
    pub render: Arc<RenderReceipt>,
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// A stored answer, as written by a batch.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub user_id: i64,
    pub key_hash: String,
    pub lock_token: String,
    pub status: u16,
    pub response: String,
    pub completed_at_ms: i64,
}

/// A committed settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// What was charged: the cost, or less when a lease had expired and the money left
    /// could not pay all of it (never an overdraft).
    pub cost: MicroUsd,
    /// `cost` by component (what was forgiven comes off blocked time first, then fuel).
    pub breakdown: Cost,
    pub balance_after: MicroUsd,
    pub ledger_seq: i64,
    /// The budgets that govern the cast, as they are after it.
    pub budgets: Vec<Budget>,
    pub soft_limits_crossed: Vec<String>,
    /// Some lease it was held on was gone (expired and swept) when it settled.
    pub late: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserMoney {
    pub balance: i64,
    pub held: i64,
}

/// What a batch reads, under lock.
#[derive(Debug, Clone)]
pub struct State {
    pub now_ms: i64,
    pub users: BTreeMap<i64, UserMoney>,
    pub budgets: BTreeMap<String, Budget>,
    /// Lease id → amount it still holds.
    pub leases: BTreeMap<String, i64>,
    pub head_seq: i64,
    pub head_hash: String,
    /// Casts already settled: id → their answer.
    pub done: HashMap<String, Settled>,
}

/// What a batch writes, decided by [`plan`].
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub entries: Vec<LedgerEntry>,
    pub casts: Vec<CastRow>,
    pub users: BTreeMap<i64, UserMoney>,
    pub budgets: BTreeMap<String, Budget>,
    pub leases: BTreeMap<String, i64>,
    pub receipts: Vec<ReceiptRow>,
    pub results: Vec<Settled>,
    /// `(spell, version, fuel bucket)` → casts this batch adds to the usage statistics.
    pub histogram: BTreeMap<(String, String, u32), i64>,
}

#[derive(Debug, Clone)]
pub struct CastRow {
    pub request: SettleRequest,
    /// What was charged, by component.
    pub cost: Cost,
    pub ledger_seq: i64,
    /// The batch's time, as on its ledger entry: usage by time range then adds up exactly to
    /// the ledger's cast entries over the same range.
    pub created_at_ms: i64,
}

/// Decides every charge of a batch against the state it read. For each cast, in order: its
/// live leases give up what it costs (their money was set aside for it); where a lease is
/// gone, the charge is capped by what the balance and that budget have free, so a late settle
/// never overdraws; the charge counts in each governing budget's current period.
pub fn plan(mut state: State, requests: &[SettleRequest]) -> Result<Plan, MoneyError> {
    let mut out = Plan::default();
    let mut touched_users = HashSet::new();
    let mut touched_budgets = HashSet::new();
    let mut touched_leases = HashSet::new();
    for request in requests {
        if let Some(done) = state.done.get(&request.cast_id) {
            out.results.push(done.clone());
            continue;
        }
        let user = *state
            .users
            .get(&request.user_id)
            .ok_or(MoneyError::UnknownUser)?;
        let cost = request.cost.total().get();
        // What pools whose lease is gone can still take.
        let mut cap = cost;
        let mut late = false;
        let live = |lease: &LeaseRef| {
            state
                .leases
                .get(&lease.lease_id)
                .is_some_and(|&a| a >= cost)
        };
        let live_balance = request
            .leases
            .iter()
            .any(|l| l.budget_id.is_none() && live(l));
        if !live_balance {
            late = true;
            cap = cap.min((user.balance - user.held).max(0));
        }
        for id in &request.budget_ids {
            let held_here = request
                .leases
                .iter()
                .any(|l| l.budget_id.as_deref() == Some(id) && live(l));
            if let (false, Some(budget)) = (held_here, state.budgets.get(id)) {
                late = true;
                cap = cap.min(budget.remaining().get().max(0));
            }
        }
        let charge = cost.min(cap);
        debug_assert!((0..=cost).contains(&charge));
        let breakdown = request.cost.at_most(MicroUsd::new(charge));
        debug_assert_eq!(breakdown.total().get(), charge);
        // The live leases give up the charge; the rest of their hold stays leased.
        let user = state.users.entry(request.user_id).or_insert(user);
        for lease in &request.leases {
            if let Some(amount) = state
                .leases
                .get_mut(&lease.lease_id)
                .filter(|a| **a >= cost)
            {
                *amount -= charge;
                touched_leases.insert(lease.lease_id.clone());
                match &lease.budget_id {
                    None => user.held -= charge,
                    Some(id) => {
                        if let Some(budget) = state.budgets.get_mut(id) {
                            budget.held = MicroUsd::new(budget.held.get() - charge);
                        }
                    }
                }
            }
        }
        user.balance -= charge;
        touched_users.insert(request.user_id);
        debug_assert!(user.held >= 0, "held went negative: {user:?}");
        let mut after = Vec::new();
        let mut soft_limits_crossed = Vec::new();
        for id in &request.budget_ids {
            let Some(budget) = state.budgets.get_mut(id) else {
                continue; // deleted since the hold
            };
            let period_start = budget.period.start_ms(state.now_ms);
            let used_before = if budget.period_start_ms == period_start {
                budget.used
            } else {
                MicroUsd::ZERO
            };
            budget.used = MicroUsd::new(used_before.get() + charge);
            budget.period_start_ms = period_start;
            if budget
                .soft
                .is_some_and(|soft| used_before < soft && budget.used >= soft)
            {
                soft_limits_crossed.push(id.clone());
            }
            touched_budgets.insert(id.clone());
            after.push(budget.clone());
        }
        let mut entry = LedgerEntry {
            seq: state.head_seq + 1,
            user_id: request.user_id,
            kind: EntryKind::Cast.as_str().to_owned(),
            amount_microusd: -charge,
            balance_after_microusd: user.balance,
            reference: request.cast_id.clone(),
            created_at_ms: state.now_ms,
            wall_microusd: Some(breakdown.wall.get()),
            prev_hash: state.head_hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.expected_hash();
        state.head_seq = entry.seq;
        state.head_hash = entry.hash.clone();
        out.casts.push(CastRow {
            request: request.clone(),
            cost: breakdown,
            ledger_seq: entry.seq,
            created_at_ms: state.now_ms,
        });
        let settled = Settled {
            cost: MicroUsd::new(charge),
            breakdown,
            balance_after: MicroUsd::new(user.balance),
            ledger_seq: entry.seq,
            budgets: after,
            soft_limits_crossed,
            late,
        };
        // A cast already settled (the `done` branch above) stored its answer then.
        if let Some(receipt) = &request.receipt {
            let (status, response) = (receipt.render)(&settled);
            out.receipts.push(ReceiptRow {
                user_id: receipt.user_id,
                key_hash: receipt.key_hash.clone(),
                lock_token: receipt.lock_token.clone(),
                status,
                response,
                completed_at_ms: state.now_ms,
            });
        }
        out.results.push(settled);
        out.entries.push(entry);
    }
    // Only casts this batch records count: one already settled (a retry) counted then.
    out.histogram = super::fuel_histogram::aggregate(out.casts.iter().map(|row| {
        let r = &row.request;
        (r.spell.as_str(), r.version.as_str(), r.fuel_used)
    }));
    debug_assert_eq!(
        out.histogram.values().sum::<i64>(),
        i64::try_from(out.casts.len()).unwrap_or(i64::MAX)
    );
    out.users = touched_users
        .into_iter()
        .filter_map(|id| state.users.get(&id).map(|u| (id, *u)))
        .collect();
    out.budgets = touched_budgets
        .into_iter()
        .filter_map(|id| state.budgets.get(&id).map(|b| (id, b.clone())))
        .collect();
    out.leases = touched_leases
        .into_iter()
        .filter_map(|id| state.leases.get(&id).map(|a| (id, *a)))
        .collect();
    Ok(out)
}

/// `$start, $start+1, …` for `count` values.
pub(crate) fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows for a multi-row `VALUES` list of `width` columns each.
fn values_rows(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(1 + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn read(
    conn: &mut Box<dyn Conn + '_>,
    requests: &[SettleRequest],
) -> Result<State, MoneyError> {
    let now_ms = conn.now_ms().await?;
    let ids: Vec<Arg> = requests
        .iter()
        .map(|r| Arg::from(r.cast_id.as_str()))
        .collect();
    let done_rows = conn
        .query(
            &format!(
                "SELECT c.id AS id, c.cost_microusd AS cost_microusd, c.ledger_seq AS ledger_seq, \
                 c.base_microusd AS base_microusd, c.wall_microusd AS wall_microusd, \
                 l.balance_after_microusd AS balance_after_microusd FROM casts c \
                 JOIN ledger l ON l.seq = c.ledger_seq WHERE c.id IN ({})",
                placeholders(1, ids.len())
            ),
            ids,
        )
        .await?;
    let user_ids: Vec<i64> = requests
        .iter()
        .map(|r| r.user_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let lock = conn.for_update();
    let user_rows = conn
        .query(
            &format!(
                "SELECT id, balance_microusd, held_microusd FROM users WHERE id IN ({}) ORDER BY id{lock}",
                placeholders(1, user_ids.len())
            ),
            user_ids.iter().map(|&id| Arg::Int(id)).collect(),
        )
        .await?;
    let budget_ids: Vec<String> = requests
        .iter()
        .flat_map(|r| r.budget_ids.iter().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let budget_rows = if budget_ids.is_empty() {
        Vec::new()
    } else {
        conn.query(
            &format!(
                "SELECT {} FROM budgets WHERE id IN ({}) ORDER BY id{lock}",
                super::budgets::BUDGET_COLUMNS,
                placeholders(1, budget_ids.len())
            ),
            budget_ids.iter().map(|id| Arg::from(id.as_str())).collect(),
        )
        .await?
    };
    let lease_ids: Vec<String> = requests
        .iter()
        .flat_map(|r| r.leases.iter().map(|l| l.lease_id.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let lease_rows = if lease_ids.is_empty() {
        Vec::new()
    } else {
        conn.query(
            &format!(
                "SELECT id, amount_microusd FROM leases WHERE id IN ({}) ORDER BY id{lock}",
                placeholders(1, lease_ids.len())
            ),
            lease_ids.iter().map(|id| Arg::from(id.as_str())).collect(),
        )
        .await?
    };
    let head = conn
        .query(
            &format!("SELECT seq, hash FROM ledger_head WHERE id = 1{lock}"),
            Vec::new(),
        )
        .await?;
    let head = head
        .first()
        .ok_or_else(|| MoneyError::Corrupt("no ledger head".into()))?;
    Ok(State {
        now_ms,
        users: user_rows
            .iter()
            .map(|row| {
                Ok((
                    row.int("id")?,
                    UserMoney {
                        balance: row.int("balance_microusd")?,
                        held: row.int("held_microusd")?,
                    },
                ))
            })
            .collect::<Result<_, MoneyError>>()?,
        budgets: budget_rows
            .iter()
            .map(|row| Ok((row.text("id")?, Budget::from_money_row(row, now_ms)?)))
            .collect::<Result<_, MoneyError>>()?,
        leases: lease_rows
            .iter()
            .map(|row| Ok((row.text("id")?, row.int("amount_microusd")?)))
            .collect::<Result<_, MoneyError>>()?,
        head_seq: head.int("seq")?,
        head_hash: head.text("hash")?,
        done: done_rows
            .iter()
            .map(|row| already_settled(row, requests))
            .collect::<Result<_, MoneyError>>()?,
    })
}

fn already_settled(row: &Row, requests: &[SettleRequest]) -> Result<(String, Settled), MoneyError> {
    let id = row.text("id")?;
    debug_assert!(requests.iter().any(|r| r.cast_id == id));
    let cost = row.int("cost_microusd")?;
    // Casts recorded before the breakdown (0008) were base fee and fuel: all of it is shown
    // as fuel.
    let base = row.opt_int("base_microusd")?.unwrap_or(0);
    let wall = row.opt_int("wall_microusd")?.unwrap_or(0);
    Ok((
        id,
        Settled {
            cost: MicroUsd::new(cost),
            breakdown: Cost {
                base: MicroUsd::new(base),
                fuel: MicroUsd::new(cost - base - wall),
                wall: MicroUsd::new(wall),
            },
            balance_after: MicroUsd::new(row.int("balance_after_microusd")?),
            ledger_seq: row.int("ledger_seq")?,
            budgets: Vec::new(),
            soft_limits_crossed: Vec::new(),
            late: false,
        },
    ))
}

/// Rows per INSERT: 10 parameters each for the ledger, 20 for casts, well inside SQLite's
/// limit.
const ROWS_PER_INSERT: usize = 64;

async fn write(
    conn: &mut Box<dyn Conn + '_>,
    plan: &Plan,
    head: Option<&LedgerEntry>,
) -> Result<(), MoneyError> {
    for chunk in plan.entries.chunks(ROWS_PER_INSERT) {
        let args: Vec<Arg> = chunk
            .iter()
            .flat_map(|e| {
                [
                    Arg::Int(e.seq),
                    Arg::Int(e.user_id),
                    Arg::from(e.kind.as_str()),
                    Arg::Int(e.amount_microusd),
                    Arg::Int(e.balance_after_microusd),
                    Arg::from(e.reference.as_str()),
                    Arg::Int(e.created_at_ms),
                    Arg::from(e.wall_microusd),
                    Arg::from(e.prev_hash.as_str()),
                    Arg::from(e.hash.as_str()),
                ]
            })
            .collect();
        conn.execute(
            &format!(
                "INSERT INTO ledger (seq, user_id, kind, amount_microusd, balance_after_microusd, \
                 reference, created_at_ms, wall_microusd, prev_hash, hash) VALUES {}",
                values_rows(chunk.len(), 10)
            ),
            args,
        )
        .await?;
    }
    for chunk in plan.casts.chunks(ROWS_PER_INSERT) {
        let args: Vec<Arg> = chunk.iter().flat_map(cast_args).collect();
        conn.execute(
            &format!(
                "INSERT INTO casts (id, user_id, spell, version, digest, outcome, fuel_used, \
                 cost_microusd, duration_us, ledger_seq, created_at_ms, key_id, blocked_ms, \
                 base_microusd, fuel_microusd, wall_microusd, output, output_encoding, \
                 output_bytes, output_expires_at_ms) VALUES {}",
                values_rows(chunk.len(), 20)
            ),
            args,
        )
        .await?;
    }
    // The usage statistics: one upsert for the whole batch (at most one row per version and
    // bucket, at most BATCH_MAX rows of 4 parameters).
    if !plan.histogram.is_empty() {
        let args: Vec<Arg> = plan
            .histogram
            .iter()
            .flat_map(|((spell, version, bucket), casts)| {
                [
                    Arg::from(spell.as_str()),
                    Arg::from(version.as_str()),
                    Arg::Int(i64::from(*bucket)),
                    Arg::Int(*casts),
                ]
            })
            .collect();
        conn.execute(
            &format!(
                "INSERT INTO spell_fuel_histogram (spell, version, bucket, casts) VALUES {} \
                 ON CONFLICT (spell, version, bucket) \
                 DO UPDATE SET casts = spell_fuel_histogram.casts + excluded.casts",
                values_rows(plan.histogram.len(), 4)
            ),
            args,
        )
        .await?;
    }
    for (id, user) in &plan.users {
        conn.execute(
            "UPDATE users SET balance_microusd = $1, held_microusd = $2 WHERE id = $3",
            vec![Arg::Int(user.balance), Arg::Int(user.held), Arg::Int(*id)],
        )
        .await?;
    }
    for (id, budget) in &plan.budgets {
        conn.execute(
            "UPDATE budgets SET used_microusd = $1, held_microusd = $2, period_start_ms = $3 \
             WHERE id = $4",
            vec![
                Arg::Int(budget.used.get()),
                Arg::Int(budget.held.get()),
                Arg::Int(budget.period_start_ms),
                Arg::from(id.as_str()),
            ],
        )
        .await?;
    }
    for (id, amount) in &plan.leases {
        conn.execute(
            "UPDATE leases SET amount_microusd = $1 WHERE id = $2",
            vec![Arg::Int(*amount), Arg::from(id.as_str())],
        )
        .await?;
    }
    for receipt in &plan.receipts {
        let stored = conn
            .execute(
                "UPDATE idempotency_keys SET status = $1, response = $2, completed_at_ms = $3 \
                 WHERE user_id = $4 AND key_hash = $5 AND lock_token = $6 AND status IS NULL",
                vec![
                    Arg::Int(i64::from(receipt.status)),
                    Arg::from(receipt.response.as_str()),
                    Arg::Int(receipt.completed_at_ms),
                    Arg::Int(receipt.user_id),
                    Arg::from(receipt.key_hash.as_str()),
                    Arg::from(receipt.lock_token.as_str()),
                ],
            )
            .await?;
        // Only if the reservation is gone: its lock ran out unrenewed (this instance lost the
        // database for longer than the lock) and another request took the key, or the account
        // was erased. The cast is charged all the same (it ran); the key answers for the
        // request that holds it.
        if stored == 0 {
            tracing::warn!(
                user.id = receipt.user_id,
                "an idempotent cast settled after its reservation was taken over or erased"
            );
        }
    }
    if let Some(head) = head {
        conn.execute(
            "UPDATE ledger_head SET seq = $1, hash = $2 WHERE id = 1",
            vec![Arg::Int(head.seq), Arg::from(head.hash.as_str())],
        )
        .await?;
    }
    Ok(())
}

fn cast_args(row: &CastRow) -> [Arg; 20] {
    let r = &row.request;
    let int = |value: u64| Arg::Int(i64::try_from(value).unwrap_or(i64::MAX));
    [
        Arg::from(r.cast_id.as_str()),
        Arg::Int(r.user_id),
        Arg::from(r.spell.as_str()),
        Arg::from(r.version.as_str()),
        Arg::from(r.digest.as_str()),
        Arg::from(r.outcome.as_str()),
        int(r.fuel_used),
        Arg::Int(row.cost.total().get()),
        int(r.duration_us),
        Arg::Int(row.ledger_seq),
        Arg::Int(row.created_at_ms),
        Arg::from(r.key_id.as_str()),
        int(r.blocked_ms),
        Arg::Int(row.cost.base.get()),
        Arg::Int(row.cost.fuel.get()),
        Arg::Int(row.cost.wall.get()),
        Arg::from(r.output.as_ref().map(|o| o.text.clone())),
        Arg::from(r.output.as_ref().map(|o| o.encoding.to_owned())),
        int(r.output_bytes),
        Arg::from(
            r.output
                .as_ref()
                .map(|o| row.created_at_ms.saturating_add(o.retention_ms)),
        ),
    ]
}

/// Settles a batch in the given transaction and commits it.
pub async fn settle_batch(
    mut conn: Box<dyn Conn + '_>,
    requests: &[SettleRequest],
    failpoints: &FailPoints,
) -> Result<Vec<Settled>, MoneyError> {
    let state = read(&mut conn, requests).await?;
    let plan = plan(state, requests)?;
    write(&mut conn, &plan, plan.entries.last()).await?;
    if FailPoints::take(&failpoints.before_commit) {
        return Err(MoneyError::Injected("before commit"));
    }
    conn.commit().await?;
    if FailPoints::take(&failpoints.after_commit) {
        return Err(MoneyError::Injected("after commit"));
    }
    Ok(plan.results)
}
