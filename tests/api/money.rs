//! Money under pressure: concurrent casts against one balance, a model-checked sequence of
//! money operations, and hold expiry.

use reqwest::StatusCode;
use serde_json::json;

use spellhost::money::budgets::{GroupBy, Limits};
use spellhost::money::quote::{self, Caps};
use spellhost::money::{
    self, CastRecord, EntryKind, HoldRequest, MicroUsd, MoneyError, Period, Pricing, Scope,
};
use spellhost::store::Db;

use crate::app::{Backend, spawn_app};
use crate::helpers::Seeded;
use crate::on_both_databases;

on_both_databases! {
    async fn sixty_four_simultaneous_casts_never_overdraw(backend) {
        let app = spawn_app(&backend).await;
        let publisher = app.user("ada", 0).await;
        app.publish_examples(&publisher, &["primes"]).await;
        for seed in [1u64, 7, 42, 1234] {
            let mut random = Seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let credit = 20 + random.next(2_000) as i64;
            let caster = app.user(&format!("caster-{seed}"), credit).await;
            let casts = (0..64).map(|i| {
                let below = 1000 + random.next(60_000);
                let max_fuel = if i % 4 == 0 { None } else { Some(1_000_000 + random.next(20_000_000)) };
                let mut body = json!({"spell": "ada/primes", "input": {"below": below}});
                if let Some(max_fuel) = max_fuel {
                    body["max_fuel"] = max_fuel.into();
                }
                let app = &app;
                let caster = &caster;
                async move { app.cast(caster, body).await }
            });
            let results = futures::future::join_all(casts).await;
            let mut charged = 0i64;
            for (status, body) in &results {
                match *status {
                    StatusCode::OK => charged += body["cost_microusd"].as_i64().expect("cost"),
                    StatusCode::PAYMENT_REQUIRED | StatusCode::UNPROCESSABLE_ENTITY => {
                        charged += body["error"]["cost_microusd"].as_i64().unwrap_or(0);
                    }
                    other => panic!("seed {seed}: unexpected {other}: {body}"),
                }
            }
            let me = app.me(&caster).await;
            let balance = me["balance_microusd"].as_i64().expect("balance");
            assert_eq!(me["held_microusd"], 0, "seed {seed}");
            assert!(balance >= 0, "seed {seed}: overdrawn to {balance}");
            assert_eq!(credit - balance, charged, "seed {seed}: Σ charges = balance change");
            app.assert_money_invariants(&caster).await;
            assert!(charged > 0, "seed {seed}: something ran and was charged");
            let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
            eprintln!("seed {seed}: credit {credit} µ$, {ok}/64 casts ok, {charged} µ$ charged, balance {balance}");
        }
        app.shutdown().await;
    }

    async fn expired_holds_are_voided_and_never_charged(backend) {
        let app = spawn_app(&backend).await;
        let db = &app.app.db;
        let user = app.user("ada", 1_000).await;
        let request = hold_request(user.id, "cast_crashed", 1_000_000, None, "k1", "m/a", 50);
        let hold = money::reserve(db, &request, &Pricing::default()).await.expect("hold");
        assert_eq!(money::balance(db, user.id).await.expect("b").held, hold.amount);
        std::mem::forget(hold); // the process "crashed" before settling
        // The sweeper is given the time instead of the test sleeping until it comes.
        let now = db.now_ms();
        assert_eq!(money::sweep_expired(db, now).await.expect("sweep"), 0, "not before its expiry");
        assert_eq!(money::sweep_expired(db, now + 1_000).await.expect("sweep"), 1);
        assert_eq!(money::sweep_expired(db, now + 1_000).await.expect("sweep"), 0);
        let balance = money::balance(db, user.id).await.expect("balance");
        assert_eq!((balance.balance.get(), balance.held.get()), (1_000, 0));
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn money_operations_match_a_model(backend) {
        // proptest drives the sequences; each case runs against a fresh database.
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let cases = if matches!(backend, Backend::Sqlite) { 24 } else { 8 };
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let handle = tokio::runtime::Handle::current();
        let operations = proptest::collection::vec(operation(), 1..24);
        runner
            .run(&operations, |ops| {
                let backend = backend.clone();
                let result = std::thread::scope(|scope| {
                    scope.spawn(|| handle.block_on(check_against_model(&backend, ops))).join()
                });
                result.map_err(|_| TestCaseError::fail("a model check panicked"))?;
                Ok(())
            })
            .expect("money operations match the model");
    }
}

/// A hold request for `spell_fuel_max` (and the caller's cap), as `cast::cast` builds one.
fn hold_request(
    user_id: i64,
    cast_id: &str,
    spell_fuel_max: u64,
    caller_fuel_max: Option<u64>,
    key_id: &str,
    spell: &str,
    ttl_ms: i64,
) -> HoldRequest {
    let caps = Caps {
        spell_fuel_max,
        caller_fuel_max,
        caller_cost_max: None,
    };
    HoldRequest {
        user_id,
        key_id: key_id.into(),
        spell: spell.into(),
        cast_id: cast_id.into(),
        plan: quote::plan(caps, &Pricing::default()).expect("plan"),
        ttl_ms,
    }
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
enum Operation {
    Grant(i64),
    Refund(i64),
    Hold {
        spell_fuel_max: u64,
        caller_fuel_max: Option<u64>,
        key: usize,
        spell: usize,
    },
    Settle {
        which: usize,
        fuel_used: u64,
    },
    Void {
        which: usize,
    },
    Expire {
        which: usize,
    },
    SetBudget {
        scope: usize,
        daily: bool,
        hard: i64,
    },
    /// Moves the clock past the next day boundary: daily budgets start a new period.
    NextDay,
}

fn operation() -> impl proptest::strategy::Strategy<Value = Operation> {
    use proptest::prelude::*;
    prop_oneof![
        (1i64..5_000).prop_map(Operation::Grant),
        (1i64..3_000).prop_map(Operation::Refund),
        (
            1u64..100_000_000,
            proptest::option::of(1u64..50_000_000),
            0usize..2,
            0usize..2
        )
            .prop_map(
                |(spell_fuel_max, caller_fuel_max, key, spell)| Operation::Hold {
                    spell_fuel_max,
                    caller_fuel_max,
                    key,
                    spell,
                }
            ),
        (0usize..8, 0u64..120_000_000)
            .prop_map(|(which, fuel_used)| Operation::Settle { which, fuel_used }),
        (0usize..8).prop_map(|which| Operation::Void { which }),
        (0usize..8).prop_map(|which| Operation::Expire { which }),
        (0usize..5, any::<bool>(), 1i64..8_000)
            .prop_map(|(scope, daily, hard)| Operation::SetBudget { scope, daily, hard }),
        Just(Operation::NextDay),
    ]
}

/// The model of one budget.
#[derive(Debug)]
struct ModelBudget {
    scope: Scope,
    period: Period,
    hard: i64,
    used: i64,
    period_start_ms: i64,
    held: i64,
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
    hold: money::Hold,
    key: &'static str,
    spell: &'static str,
    /// Indexes into the model's budgets that the hold was taken against.
    budgets: Vec<usize>,
}

/// Applies `ops` to a fresh database and to a model, comparing after every step: balance,
/// held, every budget's used and held, `used + held ≤ hard` unless lowered, balance = Σ
/// entries, and the usage API = Σ ledger cast entries.
async fn check_against_model(backend: &Backend, ops: Vec<Operation>) {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let database = backend.fresh_database(data_dir.path()).await;
    let db = Db::connect(&database.url, 4).await.expect("db");
    db.migrate().await.expect("migrate");
    let user = spellhost::auth::create_user(&db, "model", "m@example.com", false)
        .await
        .expect("user");
    let pricing = Pricing::default();
    let (mut balance, mut held) = (0i64, 0i64);
    let mut holds: Vec<ModelHold> = Vec::new();
    let mut budgets: Vec<ModelBudget> = Vec::new();
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
                balance += amount;
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
                balance -= amount;
            }
            Operation::Hold {
                spell_fuel_max,
                caller_fuel_max,
                key,
                spell,
            } => {
                let (key, spell) = (KEYS[key], SPELLS[spell]);
                let request = hold_request(
                    user.id,
                    &format!("cast_{step}"),
                    spell_fuel_max,
                    caller_fuel_max,
                    key,
                    spell,
                    60_000,
                );
                let worst = request.plan.worst_case.get();
                let applying: Vec<usize> = (0..budgets.len())
                    .filter(|&i| budgets[i].applies(key, spell))
                    .collect();
                let fits = balance - held >= worst
                    && applying.iter().all(|&i| {
                        let b = &budgets[i];
                        b.hard - b.used_now(now) - b.held >= worst
                    });
                match money::reserve(&db, &request, &pricing).await {
                    Ok(hold) => {
                        assert!(fits, "step {step}: held {worst} although it does not fit");
                        assert_eq!(hold.amount.get(), worst, "step {step}");
                        held += worst;
                        for &i in &applying {
                            let budget = &mut budgets[i];
                            budget.used = budget.used_now(now);
                            budget.period_start_ms = budget.period.start_ms(now);
                            budget.held += worst;
                        }
                        holds.push(ModelHold {
                            hold,
                            key,
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
            Operation::Settle { which, fuel_used } if which < holds.len() => {
                let ModelHold {
                    hold,
                    key,
                    spell,
                    budgets: held_on,
                } = holds.remove(which);
                let (amount, cap) = (hold.amount.get(), hold.fuel_cap);
                let record = CastRecord {
                    spell,
                    version: "1.0.0",
                    digest: "00",
                    outcome: "ok",
                    fuel_used,
                    duration_us: 1,
                };
                let settled = money::settle(&db, hold, &pricing, &record)
                    .await
                    .expect("settle");
                let expected = pricing.cost(fuel_used.min(cap)).get().min(amount);
                assert_eq!(settled.cost.get(), expected, "step {step}");
                balance -= expected;
                held -= amount;
                for (i, budget) in budgets.iter_mut().enumerate() {
                    if held_on.contains(&i) {
                        budget.held -= amount;
                    }
                    if budget.applies(key, spell) {
                        budget.used = budget.used_now(now) + expected;
                        budget.period_start_ms = budget.period.start_ms(now);
                        // A budget made after the hold was taken counts the charge without
                        // having held it, and may go over its limit.
                        budget.lowered |=
                            !held_on.contains(&i) && budget.used + budget.held > budget.hard;
                    }
                }
            }
            Operation::Void { which } if which < holds.len() => {
                let model = holds.remove(which);
                release(&mut held, &mut budgets, &model);
                money::void(&db, model.hold).await.expect("void");
            }
            Operation::Expire { which } if which < holds.len() => {
                let model = holds.remove(which);
                sqlx::query("UPDATE holds SET expires_at_ms = 0 WHERE id = $1")
                    .bind(&model.hold.id)
                    .execute(db.writer())
                    .await
                    .expect("expire");
                release(&mut held, &mut budgets, &model);
                std::mem::forget(model.hold);
                money::sweep_expired(&db, now).await.expect("sweep");
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
                match budgets
                    .iter_mut()
                    .find(|b| b.scope == scope && b.period == period)
                {
                    Some(budget) => {
                        budget.hard = hard;
                        budget.lowered |= budget.used_now(now) + budget.held > hard;
                    }
                    None => budgets.push(ModelBudget {
                        scope,
                        period,
                        hard,
                        used: 0,
                        period_start_ms: period.start_ms(now),
                        held: 0,
                        lowered: false,
                    }),
                }
            }
            Operation::NextDay => {
                let tomorrow = Period::Day.end_ms(Period::Day.start_ms(now)).expect("ends");
                db.clock().advance(tomorrow - now + 1);
                let later = db.now_ms();
                for budget in &mut budgets {
                    if budget.period.start_ms(later) != budget.period_start_ms {
                        budget.lowered = false;
                    }
                }
            }
            _ => {}
        }
        assert_matches_model(&db, user.id, step, balance, held, &budgets).await;
    }
    // What the usage API reports is what the ledger's cast entries say, over the same range.
    let end = db.now_ms() + 1;
    let usage = money::budgets::usage(&db, user.id, started - 1, end, GroupBy::Spell)
        .await
        .expect("usage");
    let (ledger_casts,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT) FROM ledger \
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
    assert!(matches!(
        money::verify_chain(&db).await.expect("verify"),
        money::ChainCheck::Intact { .. }
    ));
    db.close().await;
}

/// A hold given back without a charge, in the model.
fn release(held: &mut i64, budgets: &mut [ModelBudget], model: &ModelHold) {
    let amount = model.hold.amount.get();
    *held -= amount;
    for &i in &model.budgets {
        budgets[i].held -= amount;
    }
}

async fn assert_matches_model(
    db: &Db,
    user_id: i64,
    step: usize,
    balance: i64,
    held: i64,
    budgets: &[ModelBudget],
) {
    let now = db.now_ms();
    let actual = money::balance(db, user_id).await.expect("balance");
    assert_eq!(
        (actual.balance.get(), actual.held.get()),
        (balance, held),
        "step {step}"
    );
    let (sum,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT) FROM ledger WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(db.reader())
    .await
    .expect("sum");
    assert_eq!(sum, balance, "step {step}: balance = Σ entries");
    assert!(held >= 0);
    let stored = money::budgets::list(db, user_id, now)
        .await
        .expect("budgets");
    assert_eq!(stored.len(), budgets.len(), "step {step}");
    for model in budgets {
        let budget = stored
            .iter()
            .find(|b| b.scope == model.scope && b.period == model.period)
            .expect("budget exists");
        let used = model.used_now(now);
        assert_eq!(
            (budget.used.get(), budget.held.get(), budget.hard.get()),
            (used, model.held, model.hard),
            "step {step}: {model:?}"
        );
        if !model.lowered {
            assert!(
                used + model.held <= model.hard,
                "step {step}: over the hard limit: {model:?}"
            );
        }
    }
}
