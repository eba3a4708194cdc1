//! Leases and group commit under failure: batches that fail and are retried, a lost
//! acknowledgement, a settle after its lease expired, several instances on one database, and
//! caches that follow changes made elsewhere.

use std::sync::atomic::Ordering;

use reqwest::StatusCode;
use serde_json::json;

use spellhost::money::leases::DEFAULT_LEASE_TTL_MS;
use spellhost::money::{self, Caps, CastRecord, HoldFor, Money, MoneyError, Pricing, quote};
use spellhost::store::Tx;

use crate::app::{Backend, TestApp, TestUser, error_code, spawn_app};
use crate::helpers::Seeded;
use crate::on_both_databases;

fn hello() -> serde_json::Value {
    json!({"spell": "ada/hello", "input": {"name": "Ada"}})
}

fn plan(fuel_cap: u64) -> money::Plan {
    let caps = Caps {
        spell_fuel_max: fuel_cap,
        caller_fuel_max: None,
        caller_cost_max: None,
        blocked_ms_max: 0,
    };
    quote::plan(caps, &Pricing::default()).expect("plan")
}

fn record(fuel_used: u64) -> CastRecord<'static> {
    CastRecord {
        spell: "ada/x",
        version: "1.0.0",
        digest: "00",
        outcome: "ok",
        fuel_used,
        duration_us: 1,
        blocked_ms: 0,
        output_bytes: 0,
        output: None,
    }
}

fn hold_for(user: &TestUser, cast_id: &str) -> HoldFor {
    HoldFor {
        user_id: user.id,
        key_id: user.key[4..16].to_owned(),
        spell: "ada/x".into(),
        cast_id: cast_id.into(),
    }
}

pub async fn cast_entries(app: &TestApp, user: &TestUser) -> i64 {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM ledger WHERE user_id = $1 AND kind = 'cast'")
            .bind(user.id)
            .fetch_one(app.app.db.reader())
            .await
            .expect("count");
    count
}

/// Gives back every lease `money` holds, checks that `user` has `balance` with nothing held and
/// that the money invariants hold, and shuts the app down: how a test of the money path ends.
async fn return_all_and_check(app: TestApp, money: &Money, user: &TestUser, balance: i64) {
    money.return_all().await.expect("return");
    let me = app.me(user).await;
    let seen = (
        me["balance_microusd"].as_i64(),
        me["held_microusd"].as_i64(),
    );
    assert_eq!(seen, (Some(balance), Some(0)), "{me}");
    app.assert_money_invariants(user).await;
    app.shutdown().await;
}

/// A second instance of the money path on the app's database, as another process would run.
fn second_instance(app: &TestApp) -> Money {
    Money::new(
        &app.app.db,
        &app.database_url(),
        Pricing::default(),
        DEFAULT_LEASE_TTL_MS,
    )
    .expect("second instance")
}

/// Keeps `user`'s settlements from committing until the returned transaction ends: it holds
/// SQLite's write lock, or on PostgreSQL the user's row, which a batch locks first.
async fn block_settlements(app: &TestApp, backend: &Backend, user: &TestUser) -> Tx {
    let mut blocker = app.app.db.begin().await.expect("begin");
    if matches!(backend, Backend::Postgres(_)) {
        sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
            .bind(user.id)
            .fetch_all(&mut *blocker)
            .await
            .expect("lock the user");
    }
    blocker
}

/// Settles a cast `cast_dropped` of `user` (1 000 000 fuel) on `money` and drops the
/// settlement unfinished, as when a cast's task is cancelled after its run: it is queued all the
/// same, but cannot commit until the returned blocker ends.
async fn settlement_dropped_and_held_back(
    app: &TestApp,
    backend: &Backend,
    money: &Money,
    user: &TestUser,
) -> Tx {
    let hold = money
        .hold(hold_for(user, "cast_dropped"), plan(5_000_000))
        .await
        .expect("hold");
    let blocker = block_settlements(app, backend, user).await;
    drop(money.begin_settle(hold, &record(1_000_000), None));
    blocker
}

/// Polls `future` once, so that it decides what to do while `blocker` keeps settlements
/// waiting, then ends `blocker` and runs `future` to its end.
async fn first_polled_while_blocked<T>(future: impl Future<Output = T>, blocker: Tx) -> T {
    let mut future = std::pin::pin!(future);
    let first = futures::poll!(&mut future);
    blocker.rollback().await.expect("unlock");
    match first {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => future.await,
    }
}

async fn lease_rows(app: &TestApp, user: &TestUser) -> i64 {
    let (leases,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM leases WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(app.app.db.reader())
        .await
        .expect("leases");
    leases
}

/// What the cast `cast_id` was charged, from its record.
async fn charged(app: &TestApp, cast_id: &str) -> i64 {
    let (charged,): (i64,) = sqlx::query_as("SELECT cost_microusd FROM casts WHERE id = $1")
        .bind(cast_id)
        .fetch_one(app.app.db.reader())
        .await
        .expect("cast");
    charged
}

on_both_databases! {
    async fn a_batch_that_fails_before_its_commit_is_retried_and_charges_once(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        app.app.money.store().failpoints().before_commit.store(2, Ordering::Relaxed);
        let casts = (0..8).map(|_| app.cast(&ada, hello()));
        let results = futures::future::join_all(casts).await;
        let mut charged = 0;
        for (status, body) in &results {
            assert_eq!(*status, StatusCode::OK, "{body}");
            charged += body["cost_microusd"].as_i64().expect("cost");
        }
        assert_eq!(app.app.money.store().failpoints().before_commit.load(Ordering::Relaxed), 0, "the failures happened");
        assert_eq!(cast_entries(&app, &ada).await, 8, "each cast in the ledger once");
        assert_eq!(app.me(&ada).await["balance_microusd"], 10_000_000 - charged);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_lost_acknowledgement_is_answered_from_the_record_not_charged_again(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        // The batch commits, then its acknowledgement is "lost": the retry finds the cast
        // recorded and answers from the record.
        app.app.money.store().failpoints().after_commit.store(1, Ordering::Relaxed);
        let (status, body) = app.cast(&ada, hello()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let cost = body["cost_microusd"].as_i64().expect("cost");
        assert_eq!(body["balance_microusd"], 10_000_000 - cost);
        assert_eq!(cast_entries(&app, &ada).await, 1);
        assert_eq!(app.me(&ada).await["balance_microusd"], 10_000_000 - cost);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_settlement_queued_from_the_run_and_never_waited_for_still_charges_once_and_leaves_the_lease_with_it(backend) {
        let app = spawn_app(&backend).await;
        let pricing = Pricing::default();
        let worst = pricing.charge(5_000_000, 0).total().get();
        // Room for two worst cases: the first hold leases all of it.
        let ada = app.user("ada", 2 * worst).await;
        let money = second_instance(&app);
        // Queued from the run's thread, then its task is gone before it waits (a cancelled
        // cast): the settlement commits all the same, and its charge leaves the lease in
        // memory as it does in the database.
        let dropped = money.hold(hold_for(&ada, "cast_dropped"), plan(5_000_000)).await.expect("hold");
        drop(money.begin_settle(dropped, &record(1_000_000), None));
        let first = pricing.charge(1_000_000, 0).total().get();
        // What is left (2 worst cases less the charge) holds one more worst case, not two.
        let second = money.hold(hold_for(&ada, "cast_second"), plan(5_000_000)).await.expect("hold");
        let third = money.hold(hold_for(&ada, "cast_third"), plan(5_000_000)).await;
        assert!(matches!(third, Err(MoneyError::Refused { .. })), "{third:?}");
        let settled = money
            .begin_settle(second, &record(2_000_000), None)
            .finish()
            .await
            .expect("settle");
        assert_eq!(settled.cost.get(), pricing.charge(2_000_000, 0).total().get());
        // Settlements commit in the order they were queued: the dropped one came first.
        assert_eq!(settled.balance_after.get(), 2 * worst - first - settled.cost.get());
        assert_eq!(cast_entries(&app, &ada).await, 2, "each cast in the ledger once");
        return_all_and_check(app, &money, &ada, 2 * worst - first - settled.cost.get()).await;
    }

    async fn a_lease_is_not_given_back_as_idle_while_a_dropped_settlement_is_on_its_way(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        let money = second_instance(&app);
        let blocker = settlement_dropped_and_held_back(&app, &backend, &money, &ada).await;
        // Past the idle time (2 s): nothing is held on the lease, only that settlement is on
        // its way. The upkeep decides what to give back when first polled, while it still waits.
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        first_polled_while_blocked(money.tick(), blocker).await.expect("tick");
        crate::helpers::eventually("the settlement", || async { cast_entries(&app, &ada).await == 1 }).await;
        assert_eq!(lease_rows(&app, &ada).await, 1, "the lease stays while its settlement is on its way");
        // Charged in full, out of its lease (a settlement that finds its lease gone is charged
        // only out of what is free then).
        let cost = Pricing::default().charge(1_000_000, 0).total().get();
        assert_eq!(charged(&app, "cast_dropped").await, cost);
        return_all_and_check(app, &money, &ada, 10_000_000 - cost).await;
    }

    async fn at_shutdown_leases_are_given_back_only_after_dropped_settlements_commit(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        let money = second_instance(&app);
        let blocker = settlement_dropped_and_held_back(&app, &backend, &money, &ada).await;
        // The server shuts down: no cast is in flight any more.
        first_polled_while_blocked(money.return_all(), blocker).await.expect("return");
        // Once the leases are given back, the settlement is committed (no waiting here), and
        // charged in full out of its lease.
        assert_eq!(cast_entries(&app, &ada).await, 1, "settled before the leases went back");
        let cost = Pricing::default().charge(1_000_000, 0).total().get();
        assert_eq!(charged(&app, "cast_dropped").await, cost);
        assert_eq!(lease_rows(&app, &ada).await, 0, "given back");
        return_all_and_check(app, &money, &ada, 10_000_000 - cost).await;
    }

    async fn at_shutdown_a_lease_that_a_run_still_holds_is_kept_for_its_settlement(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        let money = second_instance(&app);
        // Bob's lease carries nothing any more; Ada's carries a run that goes on while the
        // leases are given back (its cast's task was dropped).
        let bob = app.user("bob", 10_000_000).await;
        drop(money.hold(hold_for(&bob, "cast_bob"), plan(5_000_000)).await.expect("hold"));
        let hold = money.hold(hold_for(&ada, "cast_running"), plan(5_000_000)).await.expect("hold");
        money.return_all().await.expect("return");
        assert_eq!(lease_rows(&app, &bob).await, 0, "the lease nothing holds is given back");
        assert_eq!(lease_rows(&app, &ada).await, 1, "the lease under the run stays");
        // The run ends and settles: out of its lease, in full (not late).
        let settled = money.begin_settle(hold, &record(1_000_000), None).finish().await.expect("settle");
        assert_eq!(settled.cost, Pricing::default().charge(1_000_000, 0).total());
        money.return_all().await.expect("return");
        assert_eq!(lease_rows(&app, &ada).await, 0, "given back once nothing holds it");
        return_all_and_check(app, &money, &ada, 10_000_000 - settled.cost.get()).await;
    }

    async fn a_settlement_whose_retry_loses_its_acknowledgement_is_answered_from_the_record_and_charges_once(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        let money = second_instance(&app);
        // The first attempt fails before its commit; the retry commits and then loses its
        // acknowledgement; the last attempt finds the cast recorded and answers from the
        // record. Three attempts in all, all that a batch gets.
        let failpoints = money.store().failpoints();
        failpoints.before_commit.store(1, Ordering::Relaxed);
        failpoints.after_commit.store(1, Ordering::Relaxed);
        let hold = money.hold(hold_for(&ada, "cast_retried"), plan(5_000_000)).await.expect("hold");
        let settled = money.begin_settle(hold, &record(1_000_000), None).finish().await.expect("settle");
        assert_eq!(settled.cost, Pricing::default().charge(1_000_000, 0).total());
        let failpoints = money.store().failpoints();
        let left = (failpoints.before_commit.load(Ordering::Relaxed), failpoints.after_commit.load(Ordering::Relaxed));
        assert_eq!(left, (0, 0), "the failures happened");
        assert_eq!(money.store().counters().settlements.load(Ordering::Relaxed), 1);
        assert_eq!(cast_entries(&app, &ada).await, 1, "in the ledger once");
        return_all_and_check(app, &money, &ada, 10_000_000 - settled.cost.get()).await;
    }

    async fn settlements_begun_on_many_threads_at_once_beside_lease_transactions_are_each_committed_once(backend) {
        let app = spawn_app(&backend).await;
        let start = 1_000_000_000;
        let ada = app.user("ada", start).await;
        let money = std::sync::Arc::new(second_instance(&app));
        // Eight tasks, each holding, then queueing its settlement from a blocking thread as a
        // wasm thread does: settlements queued at once from many threads, beside the lease
        // transactions that holds start when a lease runs dry.
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let money = money.clone();
                let holds: Vec<_> = (0..25).map(|i| hold_for(&ada, &format!("cast_{task}_{i}"))).collect();
                tokio::spawn(async move {
                    let mut charged = 0;
                    for (i, hold_for) in holds.into_iter().enumerate() {
                        let hold = money.hold(hold_for, plan(5_000_000)).await.expect("hold");
                        let settling = money.clone();
                        let fuel = 1_000 * (i as u64 + 1);
                        let pending = tokio::task::spawn_blocking(move || settling.begin_settle(hold, &record(fuel), None))
                            .await
                            .expect("begin");
                        charged += pending.finish().await.expect("settle").cost.get();
                    }
                    charged
                })
            })
            .collect();
        let mut charged = 0;
        for task in tasks {
            charged += task.await.expect("task");
        }
        let counters = money.store().counters();
        assert_eq!(counters.settlements.load(Ordering::Relaxed), 200);
        assert_eq!(cast_entries(&app, &ada).await, 200, "each cast in the ledger once");
        return_all_and_check(app, &money, &ada, start - charged).await;
    }

    async fn a_settlement_that_keeps_failing_charges_nothing_and_blocks_nothing(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        let failpoints = app.app.money.store().failpoints();
        failpoints.before_commit.store(1_000, Ordering::Relaxed);
        let (status, body) = app.cast(&ada, hello()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::INTERNAL_SERVER_ERROR, "internal"));
        failpoints.before_commit.store(0, Ordering::Relaxed);
        assert_eq!(cast_entries(&app, &ada).await, 0, "nothing was charged");
        // The money held for it was never lost: the next cast runs, and everything adds up.
        let (status, body) = app.cast(&ada, hello()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(cast_entries(&app, &ada).await, 1);
        app.app.money.return_all().await.expect("return");
        let me = app.me(&ada).await;
        assert_eq!(me["held_microusd"], 0, "{me}");
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_settle_after_its_lease_expired_is_charged_only_what_is_still_there(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 1_000).await;
        let pricing = Pricing::default();
        let (a, b) = (second_instance(&app), second_instance(&app));
        // A holds 501 µ$ for a cast, then loses its lease: it stalls past the expiry and the
        // sweeper gives the lease back.
        let late = a.hold(hold_for(&ada, "cast_late"), plan(5_000_000)).await.expect("hold");
        app.app.db.clock().advance(a.lease_ttl_ms() + 1);
        // (The app's own sweeper may get there first; either way the lease is gone.)
        app.app.money.sweep().await.expect("sweep");
        assert_eq!(money::balance(&app.app.db, ada.id).await.expect("balance").held.get(), 0);
        // Meanwhile B's cast uses the money and settles.
        let other = b.hold(hold_for(&ada, "cast_other"), plan(9_000_000)).await.expect("hold");
        let settled = b.settle(other, &record(9_000_000)).await.expect("settle");
        assert_eq!(settled.cost.get(), pricing.cost(9_000_000).get());
        b.return_all().await.expect("return");
        let left = 1_000 - settled.cost.get();
        // A's settle comes late: it can only be charged what is left, never an overdraft.
        let charged = a.settle(late, &record(5_000_000)).await.expect("late settle");
        assert_eq!(charged.cost.get(), left, "capped by what was left");
        assert_eq!(charged.balance_after.get(), 0);
        // With the money still there, a late settle is charged in full.
        spellhost::money::post(&app.app.db, ada.id, money::EntryKind::Grant, money::MicroUsd::new(10_000), "more").await.expect("grant");
        let late = a.hold(hold_for(&ada, "cast_late_2"), plan(1_000_000)).await.expect("hold");
        app.app.db.clock().advance(a.lease_ttl_ms() + 1);
        app.app.money.sweep().await.expect("sweep");
        let charged = a.settle(late, &record(1_000_000)).await.expect("late settle");
        assert_eq!(charged.cost, pricing.cost(1_000_000));
        a.return_all().await.expect("return");
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn instances_sharing_a_database_never_overdraw_a_balance_or_a_budget(backend) {
        let app = spawn_app(&backend).await;
        let instances = [app.app.money.clone(), second_instance(&app), second_instance(&app)];
        for seed in [5u64, 17, 333] {
            let mut random = Seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let credit = 2_000 + random.next(20_000) as i64;
            let user = app.user(&format!("user-{seed}"), credit).await;
            let budget_hard = 1_000 + random.next(20_000) as i64;
            money::budgets::upsert(&app.app.db, user.id, &money::Scope::Account, money::Period::Month,
                money::budgets::Limits::new(budget_hard, None).expect("limits"), app.app.db.now_ms()).await.expect("budget");
            let casts = (0..64).map(|i| {
                let money = instances[i % instances.len()].clone();
                let fuel_cap = 1_000_000 + random.next(20_000_000);
                let fuel_used = random.next(fuel_cap + 1);
                let request = hold_for(&user, &format!("cast_{seed}_{i}"));
                async move {
                    match money.hold(request, plan(fuel_cap)).await {
                        Ok(hold) => Some(money.settle(hold, &record(fuel_used)).await.expect("settle").cost.get()),
                        Err(spellhost::money::MoneyError::Refused { .. }) => None,
                        Err(other) => panic!("{other}"),
                    }
                }
            });
            let charged: i64 = futures::future::join_all(casts).await.into_iter().flatten().sum();
            for money in &instances {
                money.return_all().await.expect("return");
            }
            let balance = money::balance(&app.app.db, user.id).await.expect("balance");
            assert!(balance.balance.get() >= 0, "seed {seed}: overdrawn: {balance:?}");
            assert_eq!(credit - balance.balance.get(), charged, "seed {seed}: Σ charges = balance change");
            assert_eq!(balance.held.get(), 0, "seed {seed}: every lease given back");
            let budget = &money::budgets::list(&app.app.db, user.id, app.app.db.now_ms()).await.expect("budgets")[0];
            assert!(budget.used.get() <= budget_hard, "seed {seed}: over the budget: {budget:?}");
            assert_eq!(budget.used.get(), charged, "seed {seed}");
            assert_eq!(budget.held.get(), 0);
            app.assert_money_invariants(&user).await;
        }
        app.shutdown().await;
    }

    async fn deleted_keys_and_new_versions_take_effect_at_once(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        let ci = app.key_for(&ada, json!({"name": "ci"})).await;
        assert_eq!(app.cast(&ci, hello()).await.0, StatusCode::OK, "cached now");
        let (status, _) = app.delete(&format!("/v1/keys/{}", &ci.key[..16]), &ada.key).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, body) = app.cast(&ci, hello()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "a deleted key is refused at once");
        // A new version is cast as soon as it is published, though the old one was cached.
        let (_, first) = app.cast(&ada, hello()).await;
        assert_eq!(first["version"], "1.0.0");
        let mut bundle = crate::helpers::example_bundle("hello");
        bundle.manifest = bundle.manifest.replace("version = \"1.0.0\"", "version = \"1.1.0\"");
        bundle.sbom = spellhost::supply_chain::sbom::generate(
            &spellhost::supply_chain::Manifest::parse(&bundle.manifest).expect("manifest"),
            &spellhost::supply_chain::ModuleDigest::of(&bundle.module),
            None,
        )
        .expect("sbom");
        let (status, body) = app.publish(&ada, &bundle).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, second) = app.cast(&ada, hello()).await;
        assert_eq!(second["version"], "1.1.0", "{second}");
        app.shutdown().await;
    }
}
