//! Leases: an instance borrows a slice of a user's available balance, and of each budget that
//! applies, in one transaction, and then takes the holds of that user's casts from it in
//! memory. A cast costs the database no work before it runs, and a fraction of one batched
//! transaction after.
//!
//! - **Borrow** (`borrow_in`): when a slot cannot hold a cast's worst case. Locks the user, their
//!   budgets and leases; grants each pool at least what the cast lacks and up to what recent
//!   casts will need for a couple of seconds, or refuses with the quote (402) if what the user
//!   has outside other instances' leases cannot pay. The lease's expiry comes from the
//!   database's clock.
//! - **Hold / settle**: in memory; the settlement goes to the group-committed batch
//!   ([`super::batch`]), which takes the charge out of the lease.
//! - **Tick** (every 500 ms): renews leases in use before they expire, returns leases idle for
//!   a couple of seconds, gives back the free part of leases that were revoked (a debit, a
//!   changed budget, another instance reclaiming), and notices changed budgets.
//! - **Sweep** (every 5 s, any instance): gives back leases past their expiry — those of an
//!   instance that died — so money set aside for casts that never settled comes back on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;

use super::batch::{KeptOutput, LeaseRef, Receipt, SettleRequest, Settled};
use super::budgets::Budget;
use super::quote::{self, FuelBound, Plan, Refusal};
use super::store::{Arg, Conn, Row, Store};
use super::{Cost, MicroUsd, MoneyError, Pricing};
use crate::store::Db;

/// How long a lease lives without renewal, by default (`SPELLHOST_LEASE_TTL_MS`). Short enough
/// that money leased by an instance that died comes back within a minute (this plus the sweep
/// interval, a third of it); long enough that renewals (once a third of it has passed) are
/// rare. It must outlast the longest pause a live instance may have between upkeeps.
pub const DEFAULT_LEASE_TTL_MS: i64 = 15_000;
/// A user with no cast for this long gets their leases returned: money is not kept away from
/// other instances by one that no longer needs it.
const IDLE_RETURN: Duration = Duration::from_secs(2);
/// How long [`Money::return_all`] waits at shutdown for settlements of cancelled casts: far
/// more than a settlement batch takes, well inside the lease TTL and a deployment's kill
/// timeout.
const SETTLING_WAIT_MAX: Duration = Duration::from_secs(5);
/// A lease is sized so that its free part can take as many worst cases as this user's casts
/// held at once lately (their peak), plus what they were charged over this long (and at least
/// [`WORST_CASES_MIN`] worst cases): a steady stream of casts borrows about once per horizon
/// rather than once per cast. Held worst cases come back at settlement; only charges use a
/// lease up, so the turnover of worst cases (a cast holding 1 000 times what it costs, many
/// times a second) says nothing of what a lease needs.
const HORIZON_MS: i64 = 2_000;
const WORST_CASES_MIN: i64 = 4;
/// Borrow attempts for one hold before it is refused: each either grants new money or refuses,
/// so more than a couple only happen when concurrent casts keep taking what was granted.
const BORROW_ATTEMPTS: usize = 8;
/// How long a refused cast waits for other instances to give back what it asked them to.
const RECLAIM_WAIT: Duration = Duration::from_millis(750);

/// What a lease is a slice of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pool {
    Balance,
    Budget(String),
}

impl Pool {
    fn budget_id(&self) -> Option<String> {
        match self {
            Pool::Balance => None,
            Pool::Budget(id) => Some(id.clone()),
        }
    }
}

/// How one pool's leased money is used, over the last whole second and the current one: the
/// charges taken from it (µ$) and the peak of what casts in flight held at once.
#[derive(Debug, Clone)]
struct Rate {
    window_start: Instant,
    charged: i64,
    charged_last: i64,
    peak_held: i64,
    peak_held_last: i64,
}

impl Rate {
    fn new(now: Instant) -> Rate {
        Rate {
            window_start: now,
            charged: 0,
            charged_last: 0,
            peak_held: 0,
            peak_held_last: 0,
        }
    }

    /// Moves the window to the second `now` is in.
    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Duration::from_secs(2) {
            (self.charged_last, self.peak_held_last) = (0, 0);
            (self.charged, self.peak_held) = (0, 0);
            self.window_start = now;
        } else if elapsed >= Duration::from_secs(1) {
            (self.charged_last, self.peak_held_last) = (self.charged, self.peak_held);
            (self.charged, self.peak_held) = (0, 0);
            self.window_start += Duration::from_secs(1);
        }
    }

    fn record_held(&mut self, held: i64, now: Instant) {
        self.roll(now);
        self.peak_held = self.peak_held.max(held);
    }

    fn record_charge(&mut self, amount: i64, now: Instant) {
        self.roll(now);
        self.charged = self.charged.saturating_add(amount.max(0));
    }

    /// What the free part of the lease should be after a borrow: room for the recent peak of
    /// worst cases in flight, and for what casts are charged over the horizon.
    fn desired_free(&self, worst: i64) -> i64 {
        let charged_per_second = self.charged_last.max(self.charged);
        let peak_held = self.peak_held_last.max(self.peak_held);
        (worst.saturating_mul(WORST_CASES_MIN))
            .max(peak_held.saturating_add(charged_per_second.saturating_mul(HORIZON_MS) / 1000))
    }
}

/// This instance's lease on one pool, as it stands in memory.
#[derive(Debug, Clone)]
struct Slot {
    lease_id: String,
    /// What the lease holds, less the charges of settlements already sent to the batch.
    amount: i64,
    /// Worst cases of this instance's casts in flight on this pool.
    held: i64,
    /// Settlements sent and not yet answered: the lease is never deleted under them.
    pending: u32,
    revoked: bool,
    expires_at_ms: i64,
    /// When to renew the lease (local clock: renewal must not depend on clock skew).
    renew_at: Instant,
    rate: Rate,
}

/// When a lease granted or renewed now should be renewed: once a third of its life has passed.
fn renew_at(now: Instant, ttl_ms: i64) -> Instant {
    now + Duration::from_millis(u64::try_from(ttl_ms / 3).unwrap_or(0))
}

impl Slot {
    fn free(&self) -> i64 {
        if self.revoked {
            0
        } else {
            (self.amount - self.held).max(0)
        }
    }
}

#[derive(Debug)]
struct UserState {
    /// All the user's budgets as of the last borrow (applicability is decided per cast).
    budgets: Vec<Budget>,
    budgets_version: i64,
    slots: HashMap<Pool, Slot>,
    last_activity: Instant,
    /// The next hold must borrow (and so re-read the budgets).
    stale: bool,
    /// One borrow at a time per user in this instance.
    borrowing: Arc<tokio::sync::Mutex<()>>,
}

impl UserState {
    fn new(now: Instant) -> UserState {
        UserState {
            budgets: Vec::new(),
            budgets_version: -1,
            slots: HashMap::new(),
            last_activity: now,
            stale: true,
            borrowing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn pools(&self, key_id: &str, spell: &str) -> Vec<(Pool, Option<&Budget>)> {
        std::iter::once((Pool::Balance, None))
            .chain(
                self.budgets
                    .iter()
                    .filter(|b| b.applies_to(key_id, spell))
                    .map(|b| (Pool::Budget(b.id.clone()), Some(b))),
            )
            .collect()
    }

    fn idle(&self) -> bool {
        self.slots.values().all(|s| s.held == 0 && s.pending == 0)
    }
}

#[derive(Default)]
struct Book {
    users: HashMap<i64, UserState>,
}

/// Who is casting what.
#[derive(Debug, Clone)]
pub struct HoldFor {
    pub user_id: i64,
    pub key_id: String,
    /// `owner/name`.
    pub spell: String,
    pub cast_id: String,
}

struct Inner {
    store: Store,
    instance_id: String,
    pricing: Pricing,
    ttl_ms: i64,
    book: Mutex<Book>,
    /// The runtime `Money` was made on (the HTTP runtime in the server), where a dropped
    /// settlement's outcome is awaited.
    runtime: tokio::runtime::Handle,
    /// The waits of dropped settlements (see [`PendingSettlement`]'s `Drop`): no cast task
    /// is left to wait for them, so [`Money::return_all`] does before it gives leases back.
    settling: tokio_util::task::TaskTracker,
}

/// The money path of one instance: its leases, holds and settlements.
#[derive(Clone)]
pub struct Money {
    inner: Arc<Inner>,
}

/// A cast's worst case, held in memory on this instance's leases. Settle it with
/// [`Money::settle`]; dropped unsettled (the run never happened), it is released.
#[must_use = "a hold must be settled or released"]
pub struct LeaseHold {
    inner: Arc<Inner>,
    pub request: HoldFor,
    pub amount: MicroUsd,
    pub fuel_cap: u64,
    pub bound: FuelBound,
    /// The most blocked time the run may be billed for (and may spend).
    pub blocked_ms_max: u64,
    /// The budgets that govern the cast, as this instance knows them.
    pub budgets: Vec<Budget>,
    leases: Vec<(Pool, String)>,
    released: bool,
}

impl std::fmt::Debug for LeaseHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseHold")
            .field("cast_id", &self.request.cast_id)
            .field("amount", &self.amount)
            .finish_non_exhaustive()
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        if !self.released {
            let inner = Arc::clone(&self.inner);
            inner.release(self, 0, false);
        }
    }
}

/// A settlement queued for the writer ([`Money::begin_settle`]), not yet known to be durable.
///
/// Its hold stays counted in the slots until [`finish`](Self::finish) releases it, so a lease
/// is never given back or shrunk under a settlement on its way. Releasing after the settlement
/// was queued (even after it committed) is safe: until then the slot counts the whole hold as
/// held and the charge as still leased, which makes less of the lease usable, never more; the
/// release then takes both off together.
#[derive(Debug)]
pub struct PendingSettlement {
    /// The hold and where the settlement's outcome arrives; taken when released.
    queued: Option<(LeaseHold, Result<super::store::SettleReply, MoneyError>)>,
    /// What the settlement charges (µ$).
    cost: i64,
    blocked_ms: u64,
}

impl PendingSettlement {
    /// Gives the hold back to its slots, less what the settlement charges (which comes out of
    /// the leases), and waits until the settlement is committed.
    pub async fn finish(mut self) -> Result<Settlement, MoneyError> {
        let Some(outcome) = self.release() else {
            return Err(MoneyError::Corrupt(
                "a settlement was finished twice".into(),
            ));
        };
        let settled = outcome.await?;
        Ok(Settlement {
            cost: settled.cost,
            breakdown: settled.breakdown,
            blocked_ms: self.blocked_ms,
            balance_after: settled.balance_after,
            ledger_seq: settled.ledger_seq,
            budgets: settled.budgets,
            soft_limits_crossed: settled.soft_limits_crossed,
        })
    }

    /// Gives the hold back to its slots as charged, and counts the settlement as pending
    /// there until the returned future has its outcome: a lease with a settlement on its way
    /// is never idle, so the upkeep never gives it back from under it (the settlement would
    /// be late, charged only out of what is free then). `None` once released.
    ///
    /// Queued or not, the hold is released as charged (as before the settlement was queued
    /// from the wasm thread): one that fails for good leaves its charge in the lease in
    /// memory, which only makes less of it usable until the lease is given back.
    fn release(
        &mut self,
    ) -> Option<impl Future<Output = Result<Settled, MoneyError>> + Send + 'static> {
        let (mut hold, reply) = self.queued.take()?;
        let inner = Arc::clone(&hold.inner);
        inner.release(&mut hold, self.cost, true);
        let leases = std::mem::take(&mut hold.leases);
        // The hold is spent: its cast id moves into the wait rather than being copied.
        let (user_id, cast_id) = (
            hold.request.user_id,
            std::mem::take(&mut hold.request.cast_id),
        );
        let cost = self.cost;
        Some(async move {
            let settled = match reply {
                Ok(answer) => answer.await.unwrap_or(Err(MoneyError::WriterGone)),
                Err(error) => Err(error),
            };
            let late = settled.as_ref().is_ok_and(|s: &Settled| s.late);
            inner.settled(user_id, &leases, late);
            if let Ok(settled) = &settled
                && late
            {
                tracing::warn!(cast.id = %cast_id, cast.cost_microusd = cost,
                    cast.charged_microusd = settled.cost.get(), "settled a cast whose lease had expired");
            }
            settled
        })
    }
}

impl Drop for PendingSettlement {
    /// Dropped unfinished (its task was cancelled): the settlement was queued all the same,
    /// so it is released as [`finish`](Self::finish) does, and its outcome is awaited on the
    /// runtime `Money` was made on (not the wasm runtime it is usually dropped on, whose
    /// threads are busy with runs and may run at idle priority).
    fn drop(&mut self) {
        let inner = self
            .queued
            .as_ref()
            .map(|(hold, _)| Arc::clone(&hold.inner));
        if let (Some(inner), Some(outcome)) = (inner, self.release()) {
            inner.settling.spawn_on(outcome, &inner.runtime);
        }
    }
}

/// What settling a cast did.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// What was charged: `breakdown.total()`.
    pub cost: MicroUsd,
    pub breakdown: Cost,
    /// The blocked time billed, in ms (at most the hold's `blocked_ms_max`).
    pub blocked_ms: u64,
    pub balance_after: MicroUsd,
    pub ledger_seq: i64,
    pub budgets: Vec<Budget>,
    pub soft_limits_crossed: Vec<String>,
}

/// The record of a cast, settled with it.
#[derive(Debug, Clone)]
pub struct CastRecord<'a> {
    pub spell: &'a str,
    pub version: &'a str,
    pub digest: &'a str,
    pub outcome: &'a str,
    pub fuel_used: u64,
    pub duration_us: u64,
    /// Time blocked in host calls, in whole ms rounded up ([`Pricing::billed_ms`]).
    pub blocked_ms: u64,
    /// The output's size, and the output when it is kept for the caster.
    pub output_bytes: u64,
    pub output: Option<KeptOutput>,
}

impl Inner {
    /// Takes a hold from the slots if every pool has room, else `None`.
    fn try_hold(self: &Arc<Self>, request: &HoldFor, plan: &Plan) -> Option<LeaseHold> {
        let now = Instant::now();
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let user = book.users.get_mut(&request.user_id)?;
        if user.stale {
            return None;
        }
        let worst = plan.worst_case.get();
        let pools: Vec<(Pool, Option<Budget>)> = user
            .pools(&request.key_id, &request.spell)
            .into_iter()
            .map(|(p, b)| (p, b.cloned()))
            .collect();
        let fits = pools
            .iter()
            .all(|(pool, _)| user.slots.get(pool).is_some_and(|s| s.free() >= worst));
        if !fits {
            return None;
        }
        let mut leases = Vec::with_capacity(pools.len());
        for (pool, _) in &pools {
            if let Some(slot) = user.slots.get_mut(pool) {
                slot.held += worst;
                slot.rate.record_held(slot.held, now);
                leases.push((pool.clone(), slot.lease_id.clone()));
            }
        }
        user.last_activity = now;
        Some(LeaseHold {
            inner: Arc::clone(self),
            request: request.clone(),
            amount: plan.worst_case,
            fuel_cap: plan.fuel_cap,
            bound: plan.bound,
            blocked_ms_max: plan.blocked_ms_max,
            budgets: pools.into_iter().filter_map(|(_, b)| b).collect(),
            leases,
            released: false,
        })
    }

    /// Gives a hold's worst case back to its slots; `charged` comes off the lease amounts
    /// (the settlement takes it from the lease in the database).
    fn release(&self, hold: &mut LeaseHold, charged: i64, pending: bool) {
        hold.released = true;
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let Some(user) = book.users.get_mut(&hold.request.user_id) else {
            return;
        };
        let now = Instant::now();
        user.last_activity = now;
        for (pool, lease_id) in &hold.leases {
            if let Some(slot) = user.slots.get_mut(pool) {
                slot.held -= hold.amount.get();
                debug_assert!(slot.held >= 0);
                if &slot.lease_id == lease_id {
                    slot.amount -= charged;
                }
                slot.rate.record_charge(charged, now);
                if pending {
                    slot.pending += 1;
                }
            }
        }
    }

    fn settled(&self, user_id: i64, leases: &[(Pool, String)], late: bool) {
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let Some(user) = book.users.get_mut(&user_id) else {
            return;
        };
        for (pool, _) in leases {
            if let Some(slot) = user.slots.get_mut(pool) {
                slot.pending = slot.pending.saturating_sub(1);
            }
        }
        if late {
            user.stale = true;
        }
    }
}

/// One of a user's leases, as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub id: String,
    pub instance_id: String,
    pub pool: Pool,
    pub amount: i64,
    pub revoked: bool,
    pub expires_at_ms: i64,
}

impl LeaseRow {
    fn from_row(row: &Row) -> Result<LeaseRow, MoneyError> {
        Ok(LeaseRow {
            id: row.text("id")?,
            instance_id: row.text("instance_id")?,
            pool: row
                .opt_text("budget_id")?
                .map_or(Pool::Balance, Pool::Budget),
            amount: row.int("amount_microusd")?,
            revoked: row.int("revoked")? != 0,
            expires_at_ms: row.int("expires_at_ms")?,
        })
    }
}

/// What this instance has of one pool, for a borrow.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Own {
    /// What its slot can still hold (zero if revoked).
    pub free: i64,
    /// What a revoked slot must give back before it is used again (its unheld part).
    pub give_back: i64,
    /// How much it would like to have free after the borrow.
    pub desired: i64,
}

/// One pool's part of a granted borrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub pool: Pool,
    /// The existing lease to extend, or `None` for a new one.
    pub lease_id: Option<String>,
    pub delta: i64,
    pub give_back: i64,
}

/// The pure part of a borrow: what each applicable pool grants, or the quote if one cannot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide_borrow(
    instance_id: &str,
    balance: i64,
    held: i64,
    budgets: &[Budget],
    leases: &[LeaseRow],
    key_id: &str,
    spell: &str,
    plan: &Plan,
    pricing: &Pricing,
    own: &HashMap<Pool, Own>,
    default_desired: i64,
) -> Result<Vec<Grant>, Box<Refusal>> {
    let worst = plan.worst_case.get();
    let applicable: Vec<(Pool, Option<&Budget>)> = std::iter::once((Pool::Balance, None))
        .chain(
            budgets
                .iter()
                .filter(|b| b.applies_to(key_id, spell))
                .map(|b| (Pool::Budget(b.id.clone()), Some(b))),
        )
        .collect();
    let mut grants = Vec::new();
    let mut refused = false;
    let mut balance_available = 0;
    let mut adjusted = Vec::new();
    for (pool, budget) in &applicable {
        let mut mine = own.get(pool).copied().unwrap_or(Own {
            free: 0,
            give_back: 0,
            desired: default_desired,
        });
        let row = leases
            .iter()
            .find(|l| l.instance_id == instance_id && &l.pool == pool);
        match row {
            // The slot's lease is gone (swept): nothing of it can be used or given back.
            None => (mine.free, mine.give_back) = (0, 0),
            Some(row) => {
                // A lease revoked in the database (a debit, a changed budget, a reclaim) that
                // this instance has not noticed yet gives back its unheld part first.
                if row.revoked && mine.give_back == 0 {
                    (mine.free, mine.give_back) = (0, mine.free);
                }
                mine.free = mine.free.min(row.amount);
                mine.give_back = mine.give_back.min(row.amount);
            }
        }
        let db_free = match budget {
            None => balance - held,
            Some(b) => b.remaining().get(),
        } + mine.give_back;
        let need = (worst - mine.free).max(0);
        match budget {
            None => balance_available = mine.free + db_free,
            Some(b) => {
                let mut b = (*b).clone();
                // What this cast can get: its own slot's free part and what is not leased.
                b.held = MicroUsd::new(b.hard.get() - b.used.get() - (mine.free + db_free));
                adjusted.push(b);
            }
        }
        if db_free < need {
            refused = true;
            continue;
        }
        let delta = (mine.desired - mine.free).clamp(need, db_free.max(need));
        let lease_id = row.map(|l| l.id.clone());
        grants.push(Grant {
            pool: pool.clone(),
            lease_id,
            delta,
            give_back: mine.give_back,
        });
    }
    if !refused {
        return Ok(grants);
    }
    let mut refusal = match quote::check(plan, MicroUsd::new(balance_available), &adjusted, pricing)
    {
        Err(refusal) => refusal,
        // Both say "fits" in the same terms; reaching this is a bug, answered as a refusal of
        // the whole worst case rather than an overdraft.
        Ok(()) => Box::new(Refusal {
            required: plan.worst_case,
            available: MicroUsd::ZERO,
            affordable_max_fuel: None,
            binding: quote::Binding::Balance,
            leased_elsewhere: MicroUsd::ZERO,
            leases_return_by_ms: None,
        }),
    };
    let binding = match &refusal.binding {
        quote::Binding::Balance => Pool::Balance,
        quote::Binding::Budget(b) => Pool::Budget(b.id.clone()),
    };
    // Show the budget as it is, not as adjusted for this instance's slot.
    if let Pool::Budget(id) = &binding
        && let Some(real) = budgets.iter().find(|real| &real.id == id)
    {
        refusal.binding = quote::Binding::Budget(real.clone());
    }
    let elsewhere: Vec<&LeaseRow> = leases
        .iter()
        .filter(|l| l.instance_id != instance_id && l.pool == binding)
        .collect();
    refusal.leased_elsewhere = MicroUsd::new(elsewhere.iter().map(|l| l.amount).sum());
    refusal.leases_return_by_ms = elsewhere.iter().map(|l| l.expires_at_ms).max();
    Err(refusal)
}

/// What a borrow transaction found and did.
struct Borrowed {
    budgets: Vec<Budget>,
    budgets_version: i64,
    outcome: Result<Vec<(Grant, String, i64)>, Box<Refusal>>,
}

struct BorrowArgs {
    instance_id: String,
    user_id: i64,
    key_id: String,
    spell: String,
    plan: Plan,
    pricing: Pricing,
    own: HashMap<Pool, Own>,
    /// What a pool this instance has no slot on yet would like to have.
    default_desired: i64,
    ttl_ms: i64,
}

async fn read_user(
    conn: &mut Box<dyn Conn + '_>,
    user_id: i64,
) -> Result<(i64, i64, i64), MoneyError> {
    let lock = conn.for_update();
    let rows = conn
        .query(
            &format!(
                "SELECT balance_microusd, held_microusd, budgets_version FROM users WHERE id = $1{lock}"
            ),
            vec![Arg::Int(user_id)],
        )
        .await?;
    let row = rows.first().ok_or(MoneyError::UnknownUser)?;
    Ok((
        row.int("balance_microusd")?,
        row.int("held_microusd")?,
        row.int("budgets_version")?,
    ))
}

async fn read_budgets(
    conn: &mut Box<dyn Conn + '_>,
    user_id: i64,
    now_ms: i64,
) -> Result<Vec<Budget>, MoneyError> {
    let lock = conn.for_update();
    let rows = conn
        .query(
            &format!(
                "SELECT {} FROM budgets WHERE user_id = $1 ORDER BY id{lock}",
                super::budgets::BUDGET_COLUMNS
            ),
            vec![Arg::Int(user_id)],
        )
        .await?;
    rows.iter()
        .map(|r| Budget::from_money_row(r, now_ms))
        .collect()
}

const LEASE_COLUMNS: &str = "id, instance_id, budget_id, amount_microusd, revoked, expires_at_ms";

async fn read_leases(
    conn: &mut Box<dyn Conn + '_>,
    user_id: i64,
) -> Result<Vec<LeaseRow>, MoneyError> {
    let lock = conn.for_update();
    let rows = conn
        .query(
            &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE user_id = $1 ORDER BY id{lock}"),
            vec![Arg::Int(user_id)],
        )
        .await?;
    rows.iter().map(LeaseRow::from_row).collect()
}

/// The borrow transaction: lock the user, their budgets and leases; decide; write.
async fn borrow_in(mut conn: Box<dyn Conn + '_>, args: BorrowArgs) -> Result<Borrowed, MoneyError> {
    let now = conn.now_ms().await?;
    let (balance, held, budgets_version) = read_user(&mut conn, args.user_id).await?;
    let budgets = read_budgets(&mut conn, args.user_id, now).await?;
    let leases = read_leases(&mut conn, args.user_id).await?;
    let decided = decide_borrow(
        &args.instance_id,
        balance,
        held,
        &budgets,
        &leases,
        &args.key_id,
        &args.spell,
        &args.plan,
        &args.pricing,
        &args.own,
        args.default_desired,
    );
    let grants = match decided {
        Ok(grants) => grants,
        Err(refusal) => {
            return Ok(Borrowed {
                budgets,
                budgets_version,
                outcome: Err(refusal),
            });
        }
    };
    let expires_at = now + args.ttl_ms;
    let mut user_held = held;
    let mut granted = Vec::with_capacity(grants.len());
    for grant in grants {
        let net = grant.delta - grant.give_back;
        match &grant.pool {
            Pool::Balance => user_held += net,
            Pool::Budget(id) => {
                let budget = budgets
                    .iter()
                    .find(|b| &b.id == id)
                    .ok_or(MoneyError::UnknownBudget)?;
                conn.execute(
                    "UPDATE budgets SET held_microusd = $1, used_microusd = $2, period_start_ms = $3 \
                     WHERE id = $4",
                    vec![
                        Arg::Int(budget.held.get() + net),
                        Arg::Int(budget.used.get()),
                        Arg::Int(budget.period_start_ms),
                        Arg::from(id.as_str()),
                    ],
                )
                .await?;
            }
        }
        let lease_id = match &grant.lease_id {
            Some(id) => {
                conn.execute(
                    "UPDATE leases SET amount_microusd = amount_microusd + $1, expires_at_ms = $2, \
                     revoked = 0 WHERE id = $3",
                    vec![Arg::Int(net), Arg::Int(expires_at), Arg::from(id.as_str())],
                )
                .await?;
                id.clone()
            }
            None => {
                let id = format!("lease_{}", uuid::Uuid::now_v7().simple());
                conn.execute(
                    "INSERT INTO leases (id, instance_id, user_id, budget_id, amount_microusd, \
                     revoked, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, 0, $6, $7)",
                    vec![
                        Arg::from(id.as_str()),
                        Arg::from(args.instance_id.as_str()),
                        Arg::Int(args.user_id),
                        Arg::from(grant.pool.budget_id()),
                        Arg::Int(net),
                        Arg::Int(now),
                        Arg::Int(expires_at),
                    ],
                )
                .await?;
                id
            }
        };
        granted.push((grant, lease_id, expires_at));
    }
    debug_assert!(
        user_held <= balance.max(held),
        "a borrow leased more than the balance"
    );
    conn.execute(
        "UPDATE users SET held_microusd = $1 WHERE id = $2",
        vec![Arg::Int(user_held), Arg::Int(args.user_id)],
    )
    .await?;
    conn.commit().await?;
    Ok(Borrowed {
        budgets,
        budgets_version,
        outcome: Ok(granted),
    })
}

/// Gives back `amount` of a lease (all of it, and deletes it, when `delete`): the money stops
/// being held on its pool. The caller holds the user's lock.
async fn give_back(
    conn: &mut Box<dyn Conn + '_>,
    lease: &LeaseRow,
    user_id: i64,
    amount: i64,
    delete: bool,
) -> Result<(), MoneyError> {
    let amount = if delete {
        lease.amount
    } else {
        amount.clamp(0, lease.amount)
    };
    if delete {
        conn.execute(
            "DELETE FROM leases WHERE id = $1",
            vec![Arg::from(lease.id.as_str())],
        )
        .await?;
    } else if amount > 0 {
        conn.execute(
            "UPDATE leases SET amount_microusd = amount_microusd - $1 WHERE id = $2",
            vec![Arg::Int(amount), Arg::from(lease.id.as_str())],
        )
        .await?;
    }
    if amount == 0 {
        return Ok(());
    }
    match &lease.pool {
        Pool::Balance => {
            conn.execute(
                "UPDATE users SET held_microusd = held_microusd - $1 WHERE id = $2",
                vec![Arg::Int(amount), Arg::Int(user_id)],
            )
            .await?
        }
        Pool::Budget(id) => {
            conn.execute(
                "UPDATE budgets SET held_microusd = held_microusd - $1 WHERE id = $2",
                vec![Arg::Int(amount), Arg::from(id.as_str())],
            )
            .await?
        }
    };
    Ok(())
}

/// What the tick asks of the database for one lease of this instance.
#[derive(Debug, Clone)]
struct Upkeep {
    user_id: i64,
    lease_id: String,
    /// What the slot does not hold for casts in flight: given back if the lease is revoked.
    unheld: i64,
    /// Give it all back and delete the lease (the user is idle).
    delete: bool,
    renew: bool,
}

/// What the database says of this instance's leases, and what the tick gave back.
struct Status {
    leases: HashMap<String, LeaseRow>,
    versions: HashMap<i64, i64>,
    given_back: HashMap<String, i64>,
}

async fn upkeep_in(
    mut conn: Box<dyn Conn + '_>,
    ttl_ms: i64,
    instance_id: String,
    users: Vec<i64>,
    work: Vec<Upkeep>,
) -> Result<Status, MoneyError> {
    let now = conn.now_ms().await?;
    let lock = conn.for_update();
    let mut versions = HashMap::new();
    // The lock order: users (by id), then leases.
    for &user_id in &users {
        let rows = conn
            .query(
                &format!("SELECT budgets_version FROM users WHERE id = $1{lock}"),
                vec![Arg::Int(user_id)],
            )
            .await?;
        if let Some(row) = rows.first() {
            versions.insert(user_id, row.int("budgets_version")?);
        }
    }
    let rows = conn
        .query(
            &format!("SELECT {LEASE_COLUMNS}, user_id FROM leases WHERE instance_id = $1 ORDER BY id{lock}"),
            vec![Arg::from(instance_id.as_str())],
        )
        .await?;
    let mut leases = HashMap::new();
    let mut owners = HashMap::new();
    for row in &rows {
        let lease = LeaseRow::from_row(row)?;
        owners.insert(lease.id.clone(), row.int("user_id")?);
        leases.insert(lease.id.clone(), lease);
    }
    let mut given_back = HashMap::new();
    for item in &work {
        let Some(lease) = leases.get(&item.lease_id).cloned() else {
            continue;
        };
        if owners.get(&item.lease_id) != Some(&item.user_id) {
            continue;
        }
        if item.delete {
            give_back(&mut conn, &lease, item.user_id, 0, true).await?;
            leases.remove(&item.lease_id);
            given_back.insert(item.lease_id.clone(), lease.amount);
            continue;
        }
        if lease.revoked {
            // Revoked (a debit, a changed budget, a reclaim): what no cast holds goes back.
            let amount = item.unheld.clamp(0, lease.amount);
            give_back(&mut conn, &lease, item.user_id, amount, false).await?;
            given_back.insert(item.lease_id.clone(), amount);
            if let Some(lease) = leases.get_mut(&item.lease_id) {
                lease.amount -= amount;
            }
        } else if item.renew {
            conn.execute(
                "UPDATE leases SET expires_at_ms = $1 WHERE id = $2",
                vec![Arg::Int(now + ttl_ms), Arg::from(item.lease_id.as_str())],
            )
            .await?;
            if let Some(lease) = leases.get_mut(&item.lease_id) {
                lease.expires_at_ms = now + ttl_ms;
            }
        }
    }
    conn.commit().await?;
    Ok(Status {
        leases,
        versions,
        given_back,
    })
}

/// Gives back every lease past its expiry (at most a few hundred per call); returns how many.
async fn sweep_in(mut conn: Box<dyn Conn + '_>) -> Result<u64, MoneyError> {
    let now = conn.now_ms().await?;
    let expired = conn
        .query(
            "SELECT DISTINCT user_id FROM leases WHERE expires_at_ms < $1 ORDER BY user_id LIMIT 200",
            vec![Arg::Int(now)],
        )
        .await?;
    let mut swept = 0;
    for row in &expired {
        let user_id = row.int("user_id")?;
        read_user(&mut conn, user_id).await?;
        read_budgets(&mut conn, user_id, now).await?;
        for lease in read_leases(&mut conn, user_id).await? {
            if lease.expires_at_ms < now {
                give_back(&mut conn, &lease, user_id, 0, true).await?;
                swept += 1;
            }
        }
    }
    conn.commit().await?;
    Ok(swept)
}

/// Revokes other instances' leases on a user's pool, so that they give back what they do not
/// hold for casts in flight (their next tick does).
async fn reclaim_in(
    mut conn: Box<dyn Conn + '_>,
    instance_id: String,
    user_id: i64,
) -> Result<u64, MoneyError> {
    read_user(&mut conn, user_id).await?;
    let revoked = conn
        .execute(
            "UPDATE leases SET revoked = 1 WHERE user_id = $1 AND instance_id <> $2 AND revoked = 0",
            vec![Arg::Int(user_id), Arg::from(instance_id.as_str())],
        )
        .await?;
    conn.commit().await?;
    Ok(revoked)
}

impl Money {
    /// The money path of this process, on `db` (its own connection for SQLite; the pool for
    /// PostgreSQL). Must be called inside a tokio runtime.
    pub fn new(db: &Db, url: &str, pricing: Pricing, ttl_ms: i64) -> Result<Money, MoneyError> {
        Ok(Money {
            inner: Arc::new(Inner {
                store: Store::open(db, url)?,
                instance_id: format!("inst_{}", uuid::Uuid::now_v7().simple()),
                pricing,
                ttl_ms,
                book: Mutex::new(Book::default()),
                runtime: tokio::runtime::Handle::current(),
                settling: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    pub fn lease_ttl_ms(&self) -> i64 {
        self.inner.ttl_ms
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Holds a cast's worst case on this instance's leases, borrowing first if they cannot
    /// hold it; refuses with the quote ([`MoneyError::Refused`]) if the user's money outside
    /// other instances' casts in flight cannot pay it.
    pub async fn hold(&self, request: HoldFor, plan: Plan) -> Result<LeaseHold, MoneyError> {
        if let Some(hold) = self.inner.try_hold(&request, &plan) {
            return Ok(hold);
        }
        let lock = {
            let mut book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            book.users
                .entry(request.user_id)
                .or_insert_with(|| UserState::new(now))
                .borrowing
                .clone()
        };
        let _single_flight = lock.lock().await;
        let mut reclaimed = false;
        for _ in 0..BORROW_ATTEMPTS {
            // Another cast of this user may have borrowed while this one waited.
            if let Some(hold) = self.inner.try_hold(&request, &plan) {
                return Ok(hold);
            }
            match self.borrow(&request, &plan).await? {
                Ok(()) => continue,
                Err(refusal) if !reclaimed && refusal.leased_elsewhere.get() > 0 => {
                    // Before answering 402, ask the instances that lease this user's money
                    // to give back what they do not use, and try once more.
                    reclaimed = true;
                    let (instance_id, user_id) = (self.inner.instance_id.clone(), request.user_id);
                    self.inner
                        .store
                        .transact(move |conn| reclaim_in(conn, instance_id, user_id).boxed())
                        .await?;
                    tokio::time::sleep(RECLAIM_WAIT).await;
                }
                Err(refusal) => {
                    let budgets = self.budgets_of(request.user_id, &request);
                    return Err(MoneyError::Refused { refusal, budgets });
                }
            }
        }
        Err(MoneyError::Conflict)
    }

    fn budgets_of(&self, user_id: i64, request: &HoldFor) -> Vec<Budget> {
        let book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
        book.users.get(&user_id).map_or_else(Vec::new, |u| {
            u.budgets
                .iter()
                .filter(|b| b.applies_to(&request.key_id, &request.spell))
                .cloned()
                .collect()
        })
    }

    /// One borrow transaction for a hold, and its result applied to the slots.
    async fn borrow(
        &self,
        request: &HoldFor,
        plan: &Plan,
    ) -> Result<Result<(), Box<Refusal>>, MoneyError> {
        let worst = plan.worst_case.get();
        let own: HashMap<Pool, Own> = {
            let book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
            book.users
                .get(&request.user_id)
                .map(|user| {
                    user.slots
                        .iter()
                        .map(|(pool, slot)| {
                            let desired = slot.rate.desired_free(worst);
                            let give_back = if slot.revoked {
                                (slot.amount - slot.held).max(0)
                            } else {
                                0
                            };
                            (
                                pool.clone(),
                                Own {
                                    free: slot.free(),
                                    give_back,
                                    desired,
                                },
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        // Pools without a slot yet want a few worst cases.
        let args = BorrowArgs {
            instance_id: self.inner.instance_id.clone(),
            user_id: request.user_id,
            key_id: request.key_id.clone(),
            spell: request.spell.clone(),
            plan: *plan,
            pricing: self.inner.pricing,
            own,
            default_desired: worst * WORST_CASES_MIN,
            ttl_ms: self.inner.ttl_ms,
        };
        let borrowed = self
            .inner
            .store
            .transact(move |conn| borrow_in(conn, args).boxed())
            .await?;
        let mut book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let user = book
            .users
            .entry(request.user_id)
            .or_insert_with(|| UserState::new(now));
        user.budgets = borrowed.budgets;
        user.budgets_version = borrowed.budgets_version;
        user.stale = false;
        let grants = match borrowed.outcome {
            Ok(grants) => grants,
            Err(refusal) => return Ok(Err(refusal)),
        };
        for (grant, lease_id, expires_at_ms) in grants {
            let slot = user
                .slots
                .entry(grant.pool.clone())
                .or_insert_with(|| Slot {
                    lease_id: lease_id.clone(),
                    amount: 0,
                    held: 0,
                    pending: 0,
                    revoked: false,
                    expires_at_ms,
                    renew_at: renew_at(now, self.inner.ttl_ms),
                    rate: Rate::new(now),
                });
            if slot.lease_id != lease_id {
                // The old lease is gone (swept): casts still held on it settle late, and the
                // new one holds only what was just granted.
                slot.lease_id = lease_id;
                slot.amount = 0;
            }
            slot.amount += grant.delta - grant.give_back;
            slot.revoked = false;
            slot.expires_at_ms = expires_at_ms;
            slot.renew_at = renew_at(now, self.inner.ttl_ms);
        }
        let known: Vec<Pool> = std::iter::once(Pool::Balance)
            .chain(user.budgets.iter().map(|b| Pool::Budget(b.id.clone())))
            .collect();
        user.slots
            .retain(|pool, slot| known.contains(pool) || slot.held > 0 || slot.pending > 0);
        Ok(Ok(()))
    }

    /// Settles a cast: its worst case goes back to the slots, what it cost comes out of the
    /// leases, and the settlement is committed in the next batch. Returns once it is durable.
    pub async fn settle(
        &self,
        hold: LeaseHold,
        record: &CastRecord<'_>,
    ) -> Result<Settlement, MoneyError> {
        self.begin_settle(hold, record, None).finish().await
    }

    /// Prices a run and queues its settlement for the writer's next batch, without waiting and
    /// without taking a lock: the wasm thread that ran the cast calls it before it wakes the
    /// cast's task (`Sandbox::run_then`), so the settlement joins a batch while that task is
    /// still being scheduled. [`PendingSettlement::finish`] then gives the hold back to its
    /// slots and waits until the settlement is durable. With a `receipt`, an idempotent
    /// request's answer is stored in the settlement's transaction.
    pub fn begin_settle(
        &self,
        hold: LeaseHold,
        record: &CastRecord<'_>,
        receipt: Option<Receipt>,
    ) -> PendingSettlement {
        let blocked_ms = record.blocked_ms.min(hold.blocked_ms_max);
        let charge = self
            .inner
            .pricing
            .charge(record.fuel_used.min(hold.fuel_cap), blocked_ms);
        debug_assert!(charge.total() <= hold.amount, "{charge:?} > {hold:?}");
        let charge = charge.at_most(hold.amount);
        let request = SettleRequest {
            cast_id: hold.request.cast_id.clone(),
            user_id: hold.request.user_id,
            key_id: hold.request.key_id.clone(),
            spell: record.spell.to_owned(),
            version: record.version.to_owned(),
            digest: record.digest.to_owned(),
            outcome: record.outcome.to_owned(),
            fuel_used: record.fuel_used,
            duration_us: record.duration_us,
            blocked_ms,
            cost: charge,
            leases: hold
                .leases
                .iter()
                .map(|(pool, lease_id)| LeaseRef {
                    lease_id: lease_id.clone(),
                    budget_id: pool.budget_id(),
                })
                .collect(),
            budget_ids: hold.budgets.iter().map(|b| b.id.clone()).collect(),
            receipt,
            output_bytes: record.output_bytes,
            output: record.output.clone(),
        };
        let reply = self.inner.store.enqueue(request);
        PendingSettlement {
            queued: Some((hold, reply)),
            cost: charge.total().get(),
            blocked_ms,
        }
    }

    /// What casts in flight hold of a user's money, as a client should see it: this instance's
    /// casts (exact, from memory) and what other instances lease (from the database: their
    /// casts in flight, or money they give back once idle). The unused part of this instance's
    /// own leases is not shown as held: it is the user's to spend.
    pub async fn in_flight(&self, db: &Db, user_id: i64) -> Result<InFlight, MoneyError> {
        let elsewhere: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT budget_id, CAST(SUM(amount_microusd) AS BIGINT) FROM leases \
             WHERE user_id = $1 AND instance_id <> $2 GROUP BY budget_id",
        )
        .bind(user_id)
        .bind(&self.inner.instance_id)
        .fetch_all(db.reader())
        .await?;
        let mut view = InFlight::default();
        {
            let book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(user) = book.users.get(&user_id) {
                for (pool, slot) in &user.slots {
                    view.add(pool.budget_id(), slot.held);
                }
            }
        }
        for (budget_id, amount) in elsewhere {
            view.add(budget_id, amount);
        }
        Ok(view)
    }

    /// The next hold of this user borrows again, re-reading their budgets (after a change made
    /// in this process).
    pub fn invalidate(&self, user_id: i64) {
        let mut book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user) = book.users.get_mut(&user_id) {
            user.stale = true;
        }
    }

    /// The periodic upkeep of this instance's leases (see the module documentation).
    pub async fn tick(&self) -> Result<(), MoneyError> {
        self.upkeep(false).await
    }

    /// Gives back every lease of this instance (at shutdown, after casts in flight settled).
    ///
    /// Settlements of cancelled casts are waited for first (at most [`SETTLING_WAIT_MAX`]): a
    /// lease given back under one would leave it to be settled late, out of what is free then.
    /// A lease that still carries a hold or a settlement is neither given back nor renewed (a
    /// cast whose task was dropped has its run go on on the wasm runtime): it expires with
    /// the process, and what it does not settle goes back to the user then.
    pub async fn return_all(&self) -> Result<(), MoneyError> {
        let settling = &self.inner.settling;
        settling.close();
        if tokio::time::timeout(SETTLING_WAIT_MAX, settling.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                settlements = settling.len(),
                "settlements of cancelled casts still on their way at shutdown; their leases expire"
            );
        }
        settling.reopen();
        self.upkeep(true).await
    }

    async fn upkeep(&self, everything: bool) -> Result<(), MoneyError> {
        let now = Instant::now();
        let (users, work) = {
            let book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
            let mut work = Vec::new();
            for (&user_id, user) in &book.users {
                let idle = user.idle() && now.duration_since(user.last_activity) >= IDLE_RETURN;
                for slot in user.slots.values() {
                    work.push(Upkeep {
                        user_id,
                        lease_id: slot.lease_id.clone(),
                        unheld: (slot.amount - slot.held).max(0),
                        delete: idle || (everything && slot.held == 0 && slot.pending == 0),
                        renew: !everything && now >= slot.renew_at,
                    });
                }
            }
            let mut users: Vec<i64> = book.users.keys().copied().collect();
            users.sort_unstable();
            (users, work)
        };
        let (instance_id, sent) = (self.inner.instance_id.clone(), work.clone());
        let ttl_ms = self.inner.ttl_ms;
        let status = self
            .inner
            .store
            .transact(move |conn| upkeep_in(conn, ttl_ms, instance_id, users, sent).boxed())
            .await?;
        let mut book = self.inner.book.lock().unwrap_or_else(|p| p.into_inner());
        for item in work {
            let Some(user) = book.users.get_mut(&item.user_id) else {
                continue;
            };
            if item.delete {
                user.slots
                    .retain(|_, s| s.lease_id != item.lease_id || s.held > 0 || s.pending > 0);
            }
            let given = status.given_back.get(&item.lease_id).copied().unwrap_or(0);
            for slot in user
                .slots
                .values_mut()
                .filter(|s| s.lease_id == item.lease_id)
            {
                slot.amount -= given;
                if item.renew {
                    slot.renew_at = renew_at(now, self.inner.ttl_ms);
                }
            }
        }
        for (user_id, user) in &mut book.users {
            if status
                .versions
                .get(user_id)
                .is_some_and(|v| *v != user.budgets_version)
            {
                user.stale = true;
            }
            for slot in user.slots.values_mut() {
                match status.leases.get(&slot.lease_id) {
                    Some(lease) => {
                        slot.revoked |= lease.revoked;
                        slot.expires_at_ms = lease.expires_at_ms;
                    }
                    // Swept (this instance was away too long) or given back: nothing more may
                    // be held on it; casts in flight on it settle late.
                    None => {
                        slot.revoked = true;
                        slot.amount = 0;
                    }
                }
            }
        }
        // Users with nothing left are forgotten; their next cast borrows afresh.
        book.users.retain(|_, user| {
            !(user.slots.is_empty() && now.duration_since(user.last_activity) >= IDLE_RETURN)
        });
        Ok(())
    }

    /// Gives back leases of any instance past their expiry; returns how many.
    pub async fn sweep(&self) -> Result<u64, MoneyError> {
        self.inner
            .store
            .transact(|conn| sweep_in(conn).boxed())
            .await
    }
}

/// What casts in flight hold of a user's balance and budgets (see [`Money::in_flight`]).
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    pub balance: MicroUsd,
    budgets: HashMap<String, MicroUsd>,
}

impl InFlight {
    fn add(&mut self, budget_id: Option<String>, amount: i64) {
        let slot = match budget_id {
            None => &mut self.balance,
            Some(id) => self.budgets.entry(id).or_default(),
        };
        *slot = MicroUsd::new(slot.get().saturating_add(amount));
    }

    /// The budget with `held` as casts in flight hold it.
    pub fn show(&self, budget: &Budget) -> Budget {
        let mut shown = budget.clone();
        shown.held = self.budgets.get(&budget.id).copied().unwrap_or_default();
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_sized_by_what_casts_hold_at_once_and_are_charged_not_by_their_turnover() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        // 64 casts in flight, each holding a worst case of 1 000 000 and costing 2, turned
        // over 10 000 times in a second.
        let worst = 1_000_000;
        for i in 0..10_000u32 {
            let now = start + Duration::from_micros(u64::from(i) * 90);
            rate.record_held(64 * worst, now);
            rate.record_charge(2, now);
        }
        let desired = rate.desired_free(worst);
        // Room for the peak in flight and two seconds of charges: not 10 000 worst cases a
        // second for two seconds.
        assert_eq!(desired, 64 * worst + 2 * 10_000 * 2);
        assert!(desired < 100 * worst);
    }

    #[test]
    fn a_quiet_pool_wants_a_few_worst_cases_and_forgets_old_peaks() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        assert_eq!(rate.desired_free(500), 500 * WORST_CASES_MIN);
        rate.record_held(100_000, start);
        assert_eq!(rate.desired_free(500), 100_000);
        // A second later the peak is last second's; two seconds later it is gone.
        rate.record_charge(0, start + Duration::from_millis(1_500));
        assert_eq!(rate.desired_free(500), 100_000);
        rate.record_charge(0, start + Duration::from_millis(4_000));
        assert_eq!(rate.desired_free(500), 500 * WORST_CASES_MIN);
    }

    #[test]
    fn sizing_saturates_instead_of_overflowing() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        rate.record_held(i64::MAX, start);
        rate.record_charge(i64::MAX, start);
        rate.record_charge(i64::MAX, start);
        assert_eq!(rate.desired_free(i64::MAX), i64::MAX);
        // A negative charge (never sent) counts as nothing.
        let mut rate = Rate::new(start);
        rate.record_charge(-5, start);
        assert_eq!(rate.desired_free(1), WORST_CASES_MIN);
    }
}
