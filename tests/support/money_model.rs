//! The model of the money path that the property test (`tests/api/money.rs`) and the
//! differential fuzz target (`fuzz/fuzz_targets/money.rs`) check the real one against: a
//! sequence of grants, refunds, holds, settles, releases, lease upkeep, returns, crashes,
//! expiries, budget changes and day boundaries, applied to a fresh database and to a simple
//! model of the balance and the budgets, compared after every step. Shared through `#[path]`.

use spellhost::money::budgets::{GroupBy, Limits};
use spellhost::money::leases::DEFAULT_LEASE_TTL_MS as LEASE_TTL_MS;
use spellhost::money::quote::{self, Caps};
use spellhost::money::{
    self, CastRecord, EntryKind, HoldFor, LeaseHold, MicroUsd, Money, MoneyError, Period, Pricing,
    Scope,
};
use spellhost::store::Db;

pub fn hold_for(user_id: i64, cast_id: &str, key_id: &str, spell: &str) -> HoldFor {
    HoldFor {
        user_id,
        key_id: key_id.into(),
        spell: spell.into(),
        cast_id: cast_id.into(),
    }
}

/// The model's prices: the default fuel price and base fee, and blocked time at 2 µ$/ms, so
/// that the wall part of a worst case is of the order of the fuel part.
pub fn pricing() -> Pricing {
    Pricing {
        price_microusd_per_wall_ms: 2,
        ..Pricing::default()
    }
}

/// The plan of a cast with this fuel cap (and the caller's) and wall limit, as `cast::cast`
/// makes one.
pub fn plan(spell_fuel_max: u64, caller_fuel_max: Option<u64>, wall_ms: u64) -> money::Plan {
    let caps = Caps {
        spell_fuel_max,
        caller_fuel_max,
        caller_cost_max: None,
        blocked_ms_max: wall_ms,
    };
    quote::plan(caps, &pricing()).expect("plan")
}

/// The keys and spells the model's casts come with, and the budgets it may set.
const KEYS: [&str; 2] = ["k1", "k2"];
const SPELLS: [&str; 2] = ["m/a", "m/b"];

fn scope(which: usize) -> Scope {
    match which % 5 {
        0 => Scope::Account,
        1 | 2 => Scope::Key {
            key_id: KEYS[which % 5 - 1].into(),
        },
        _ => Scope::Spell {
            spell: SPELLS[which % 5 - 3].into(),
        },
    }
}

#[derive(Debug, Clone)]
pub enum Operation {
    Grant(i64),
    Refund(i64),
    Hold {
        spell_fuel_max: u64,
        caller_fuel_max: Option<u64>,
        /// The run's wall limit: the blocked time held at worst.
        wall_ms: u64,
        key: usize,
        spell: usize,
    },
    Settle {
        which: usize,
        fuel_used: u64,
        /// Blocked time the run reports (may exceed what was held: it is capped).
        blocked_ms: u64,
    },
    /// The run never happened: the hold goes back.
    Release {
        which: usize,
    },
    /// The lease upkeep (renewals, revoked leases given back, changed budgets noticed).
    Tick,
    /// Every lease given back (a graceful shutdown), when nothing is in flight.
    ReturnAll,
    /// The instance dies with its holds in flight; a new one takes over.
    Crash,
    /// Every lease expires and is swept (when nothing is in flight on the live instance).
    Expire,
    SetBudget {
        scope: usize,
        daily: bool,
        hard: i64,
    },
    /// Moves the clock past the next day boundary: daily budgets start a new period.
    NextDay,
}

/// The model of one budget.
#[derive(Debug)]
struct ModelBudget {
    scope: Scope,
    period: Period,
    hard: i64,
    used: i64,
    period_start_ms: i64,
    /// Set when a limit was lowered below what was used and held: `used + held ≤ hard` may
    /// then not hold until the period resets.
    lowered: bool,
}

impl ModelBudget {
    fn used_now(&self, now_ms: i64) -> i64 {
        if self.period.start_ms(now_ms) == self.period_start_ms {
            self.used
        } else {
            0
        }
    }

    fn applies(&self, key: &str, spell: &str) -> bool {
        match &self.scope {
            Scope::Account => true,
            Scope::Key { key_id } => key_id == key,
            Scope::Spell { spell: own } => own == spell,
        }
    }
}

struct ModelHold {
    hold: LeaseHold,
    spell: &'static str,
    /// Indexes into the model's budgets that govern the cast.
    budgets: Vec<usize>,
}

/// The model: the balance, each budget's use, and what casts in flight hold. A cast is
/// admitted exactly when its worst case fits what no cast in flight (here) and no lease of a
/// dead instance holds — the same rule as with per-cast holds: leases change where holds are
/// taken, not which casts are admitted.
#[derive(Default)]
struct Model {
    balance: i64,
    budgets: Vec<ModelBudget>,
    holds: Vec<ModelHold>,
    /// Money leased by dead instances, per pool (None: the balance), until swept.
    orphaned: std::collections::HashMap<Option<usize>, i64>,
    refunded: bool,
}

impl Model {
    fn in_flight(&self, pool: Option<usize>) -> i64 {
        self.holds
            .iter()
            .filter(|h| pool.is_none_or(|b| h.budgets.contains(&b)))
            .map(|h| h.hold.amount.get())
            .sum::<i64>()
            + self.orphaned.get(&pool).copied().unwrap_or(0)
    }
}

/// Applies `ops` to a fresh database and to a model, comparing after every step: balance,
/// every budget's use, which casts are admitted, and the invariants (held = Σ leases, used +
/// held ≤ hard unless lowered, balance = Σ entries, usage = Σ ledger cast entries).
pub async fn check_against_model(database_url: &str, ops: Vec<Operation>) {
    let db = Db::connect(database_url, 4).await.expect("db");
    db.migrate().await.expect("migrate");
    let user = spellhost::auth::create_user(&db, "model", "m@example.com", false)
        .await
        .expect("user");
    let pricing = pricing();
    let mut money = Money::new(&db, database_url, pricing, LEASE_TTL_MS).expect("money");
    let mut model = Model::default();
    let started = db.now_ms();
    for (step, op) in ops.into_iter().enumerate() {
        let now = db.now_ms();
        match op {
            Operation::Grant(amount) => {
                money::post(
                    &db,
                    user.id,
                    EntryKind::Grant,
                    MicroUsd::new(amount),
                    "grant",
                )
                .await
                .expect("grant");
                model.balance += amount;
            }
            Operation::Refund(amount) => {
                money::post(
                    &db,
                    user.id,
                    EntryKind::Refund,
                    MicroUsd::new(-amount),
                    "refund",
                )
                .await
                .expect("refund");
                model.balance -= amount;
                model.refunded = true;
                // A debit revokes the leases; the instance notices at its next upkeep.
                money.tick().await.expect("tick");
            }
            Operation::Hold {
                spell_fuel_max,
                caller_fuel_max,
                wall_ms,
                key,
                spell,
            } => {
                let (key, spell) = (KEYS[key], SPELLS[spell]);
                let plan = plan(spell_fuel_max, caller_fuel_max, wall_ms);
                let worst = plan.worst_case.get();
                let applying: Vec<usize> = (0..model.budgets.len())
                    .filter(|&i| model.budgets[i].applies(key, spell))
                    .collect();
                let fits = model.balance - model.in_flight(None) >= worst
                    && applying.iter().all(|&i| {
                        let b = &model.budgets[i];
                        b.hard - b.used_now(now) - model.in_flight(Some(i)) >= worst
                    });
                match money
                    .hold(hold_for(user.id, &format!("cast_{step}"), key, spell), plan)
                    .await
                {
                    Ok(hold) => {
                        assert!(fits, "step {step}: held {worst} although it does not fit");
                        assert_eq!(hold.amount.get(), worst, "step {step}");
                        for &i in &applying {
                            let budget = &mut model.budgets[i];
                            budget.used = budget.used_now(now);
                            budget.period_start_ms = budget.period.start_ms(now);
                        }
                        model.holds.push(ModelHold {
                            hold,
                            spell,
                            budgets: applying,
                        });
                    }
                    Err(MoneyError::Refused { refusal, .. }) => {
                        assert!(!fits, "step {step}: refused although it fits: {refusal:?}");
                        assert_eq!(refusal.required.get(), worst, "step {step}");
                    }
                    Err(other) => panic!("step {step}: {other}"),
                }
            }
            Operation::Settle {
                which,
                fuel_used,
                blocked_ms,
            } if which < model.holds.len() => {
                let ModelHold {
                    hold,
                    spell,
                    budgets,
                } = model.holds.remove(which);
                let (amount, cap, blocked_max) =
                    (hold.amount.get(), hold.fuel_cap, hold.blocked_ms_max);
                let record = CastRecord {
                    spell,
                    version: "1.0.0",
                    digest: "00",
                    outcome: "ok",
                    fuel_used,
                    duration_us: 1,
                    blocked_ms,
                    output_bytes: 0,
                    output: None,
                };
                let settled = money.settle(hold, &record).await.expect("settle");
                let charge = pricing.charge(fuel_used.min(cap), blocked_ms.min(blocked_max));
                let expected = charge.total().get().min(amount);
                assert_eq!(settled.cost.get(), expected, "step {step}");
                assert_eq!(settled.breakdown, charge, "step {step}: charged in full");
                model.balance -= expected;
                for &i in &budgets {
                    let budget = &mut model.budgets[i];
                    budget.used = budget.used_now(now) + expected;
                    budget.period_start_ms = budget.period.start_ms(now);
                }
            }
            Operation::Release { which } if which < model.holds.len() => {
                drop(model.holds.remove(which));
            }
            Operation::Tick => money.tick().await.expect("tick"),
            Operation::ReturnAll if model.holds.is_empty() => {
                money.return_all().await.expect("return");
                let (held,): (i64,) =
                    sqlx::query_as("SELECT held_microusd FROM users WHERE id = $1")
                        .bind(user.id)
                        .fetch_one(db.reader())
                        .await
                        .expect("held");
                assert_eq!(
                    held,
                    model.orphaned.get(&None).copied().unwrap_or(0),
                    "step {step}: everything given back"
                );
            }
            Operation::Crash => {
                let dead = std::mem::replace(
                    &mut money,
                    Money::new(&db, database_url, pricing, LEASE_TTL_MS).expect("money"),
                );
                for model_hold in model.holds.drain(..) {
                    std::mem::forget(model_hold.hold);
                }
                let leases: Vec<(Option<String>, i64)> = sqlx::query_as(
                    "SELECT budget_id, amount_microusd FROM leases WHERE instance_id = $1",
                )
                .bind(dead.instance_id())
                .fetch_all(db.reader())
                .await
                .expect("leases");
                // Stored budgets and the model's are both in creation order.
                let stored = money::budgets::list(&db, user.id, now)
                    .await
                    .expect("budgets");
                for (budget_id, amount) in leases {
                    let pool = budget_id.map(|id| {
                        stored
                            .iter()
                            .position(|b| b.id == id)
                            .expect("known budget")
                    });
                    *model.orphaned.entry(pool).or_default() += amount;
                }
                std::mem::forget(dead);
            }
            Operation::Expire if model.holds.is_empty() => {
                db.clock().advance(LEASE_TTL_MS + 1);
                money.sweep().await.expect("sweep");
                money.tick().await.expect("tick");
                model.orphaned.clear();
            }
            Operation::SetBudget {
                scope: which,
                daily,
                hard,
            } => {
                let scope = scope(which);
                let period = if daily { Period::Day } else { Period::Total };
                let limits = Limits::new(hard, None).expect("limits");
                money::budgets::upsert(&db, user.id, &scope, period, limits, now)
                    .await
                    .expect("budget");
                // A changed budget revokes its leases: the next upkeep gives back what no cast
                // holds, and the next hold borrows under the new limit.
                money.invalidate(user.id);
                money.tick().await.expect("tick");
                let in_flight: Vec<i64> = (0..model.budgets.len())
                    .map(|i| model.in_flight(Some(i)))
                    .collect();
                match model
                    .budgets
                    .iter()
                    .position(|b| b.scope == scope && b.period == period)
                {
                    Some(index) => {
                        let budget = &mut model.budgets[index];
                        budget.hard = hard;
                        budget.lowered |= budget.used_now(now) + in_flight[index] > hard;
                    }
                    None => model.budgets.push(ModelBudget {
                        scope,
                        period,
                        hard,
                        used: 0,
                        period_start_ms: period.start_ms(now),
                        lowered: false,
                    }),
                }
            }
            Operation::NextDay => {
                let tomorrow = Period::Day.end_ms(Period::Day.start_ms(now)).expect("ends");
                db.clock().advance(tomorrow - now + 1);
                let later = db.now_ms();
                let in_flight: Vec<i64> = (0..model.budgets.len())
                    .map(|i| model.in_flight(Some(i)))
                    .collect();
                for (budget, in_flight) in model.budgets.iter_mut().zip(in_flight) {
                    // A new period forgets what was used, not what casts in flight hold: a
                    // limit lowered below them stays exceeded until they settle.
                    if budget.period.start_ms(later) != budget.period_start_ms {
                        budget.lowered = in_flight > budget.hard;
                    }
                }
            }
            _ => {}
        }
        assert_matches_model(&db, user.id, step, &model).await;
    }
    for model_hold in model.holds.drain(..) {
        drop(model_hold);
    }
    // What the usage API reports is what the ledger's cast entries say, over the same range.
    let end = db.now_ms() + 1;
    let usage = money::budgets::usage(&db, user.id, started - 1, end, GroupBy::Spell)
        .await
        .expect("usage");
    let (ledger_casts, ledger_wall): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT), \
         CAST(COALESCE(SUM(wall_microusd), 0) AS BIGINT) FROM ledger \
         WHERE user_id = $1 AND kind = 'cast' AND created_at_ms >= $2 AND created_at_ms < $3",
    )
    .bind(user.id)
    .bind(started - 1)
    .bind(end)
    .fetch_one(db.reader())
    .await
    .expect("sum");
    assert_eq!(
        usage.total.spend.cost_microusd, -ledger_casts,
        "usage = Σ ledger cast entries"
    );
    assert_eq!(
        usage.total.spend.wall_microusd, ledger_wall,
        "usage's blocked-time charges = the ledger's"
    );
    assert!(matches!(
        money::verify_chain(&db).await.expect("verify"),
        money::ChainCheck::Intact { .. }
    ));
    db.close().await;
}

async fn assert_matches_model(db: &Db, user_id: i64, step: usize, model: &Model) {
    let now = db.now_ms();
    let actual = money::balance(db, user_id).await.expect("balance");
    assert_eq!(actual.balance.get(), model.balance, "step {step}");
    let (sum,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT) FROM ledger WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(db.reader())
    .await
    .expect("sum");
    assert_eq!(sum, model.balance, "step {step}: balance = Σ entries");
    let (leased,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT) FROM leases WHERE user_id = $1 AND budget_id IS NULL",
    )
    .bind(user_id)
    .fetch_one(db.reader())
    .await
    .expect("leased");
    assert_eq!(
        actual.held.get(),
        leased,
        "step {step}: held = Σ balance leases"
    );
    assert!(
        leased >= model.in_flight(None),
        "step {step}: the leases hold every cast in flight"
    );
    if !model.refunded {
        assert!(actual.available().get() >= 0, "step {step}: {actual:?}");
    }
    let stored = money::budgets::list(db, user_id, now)
        .await
        .expect("budgets");
    assert_eq!(stored.len(), model.budgets.len(), "step {step}");
    for (index, (budget, expected)) in stored.iter().zip(&model.budgets).enumerate() {
        assert_eq!(
            budget.scope, expected.scope,
            "step {step}: budgets in creation order"
        );
        let (leased,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT) FROM leases WHERE budget_id = $1",
        )
        .bind(&budget.id)
        .fetch_one(db.reader())
        .await
        .expect("leased");
        let used = expected.used_now(now);
        assert_eq!(
            (budget.used.get(), budget.held.get()),
            (used, leased),
            "step {step}: {expected:?}"
        );
        assert!(leased >= model.in_flight(Some(index)), "step {step}");
        if !expected.lowered {
            assert!(
                used + leased <= expected.hard,
                "step {step}: over the hard limit: {budget:?}"
            );
        }
    }
}
