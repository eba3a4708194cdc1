//! Wall time is not free: the time a cast is blocked in host calls is charged at
//! `SPELLHOST_PRICE_MICROUSD_PER_WALL_MS`, shown in the response and the ledger, held at its
//! worst case (the whole wall limit) against the balance and every budget, and bounded by the
//! wall limit; computing is billed by fuel only, and a module that cannot block (it does not
//! import `poll_oneoff`) holds no blocked time at all.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, TestUser, error_code, spawn_app_with};
use crate::helpers::{hostile_wat, napper_wat};
use crate::on_both_databases;

/// µ$ per blocked millisecond in these tests: small, so that the amounts stay readable.
const PRICE: i64 = 5;

async fn priced_app(backend: &crate::app::Backend) -> TestApp {
    spawn_app_with(backend, &[("SPELLHOST_PRICE_MICROUSD_PER_WALL_MS", "5")]).await
}

/// The charge fields of a cast's answer (a 200's body, or a 4xx's `error`).
fn charged(status: StatusCode, body: &Value) -> &Value {
    if status == StatusCode::OK {
        body
    } else {
        &body["error"]
    }
}

/// The breakdown adds up to the total, and the wall part is the billed blocked time's price.
fn assert_breakdown(fields: &Value) -> (i64, i64) {
    let cost = &fields["cost"];
    let (base, fuel, wall) = (
        cost["base_microusd"].as_i64().expect("base"),
        cost["fuel_microusd"].as_i64().expect("fuel"),
        cost["wall_microusd"].as_i64().expect("wall"),
    );
    assert_eq!(
        fields["cost_microusd"].as_i64(),
        Some(base + fuel + wall),
        "{fields}"
    );
    let blocked_ms = fields["blocked_ms"].as_i64().expect("blocked_ms");
    assert_eq!(wall, blocked_ms * PRICE, "{fields}");
    assert!(
        fields["wall_ms"]
            .as_i64()
            .is_some_and(|wall_ms| wall_ms >= blocked_ms),
        "{fields}"
    );
    (blocked_ms, wall)
}

/// The caller's ledger entry for `cast_id`.
async fn ledger_entry(app: &TestApp, user: &TestUser, cast_id: &str) -> Value {
    let (status, ledger) = app.get("/v1/ledger?limit=500", Some(&user.key)).await;
    assert_eq!(status, StatusCode::OK, "{ledger}");
    ledger["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|entry| entry["reference"] == cast_id)
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {cast_id}: {ledger}"))
}

on_both_databases! {
    async fn a_sleeping_spell_pays_for_its_blocked_time_and_a_computing_one_does_not(backend) {
        let app = priced_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_wat(&ada, "napper", &napper_wat(30), "wall_ms_max = 1000\nfuel_max = 1000000").await;
        app.publish_examples(&ada, &["primes"]).await;

        let (status, nap) = app.cast(&ada, json!({"spell": "ada/napper"})).await;
        assert_eq!(status, StatusCode::OK, "{nap}");
        let (blocked_ms, wall) = assert_breakdown(&nap);
        // A timer never fires early: the whole 30 ms nap is billed, and at most the wall limit.
        assert!((30..=1_000).contains(&blocked_ms), "{nap}");
        // The ledger entry carries the wall part of the charge.
        let cast_id = nap["cast_id"].as_str().expect("cast id");
        let entry = ledger_entry(&app, &ada, cast_id).await;
        assert_eq!(entry["kind"], "cast", "{entry}");
        assert_eq!(entry["amount_microusd"].as_i64(), nap["cost_microusd"].as_i64().map(|c| -c), "{entry}");
        assert_eq!(entry["wall_microusd"].as_i64(), Some(wall), "{entry}");

        // Computing is billed by fuel: primes' blocked time is below what its nap billed.
        let (status, primes) = app.cast(&ada, json!({"spell": "ada/primes", "input": {"below": 200_000}})).await;
        assert_eq!(status, StatusCode::OK, "{primes}");
        let (primes_blocked_ms, primes_wall) = assert_breakdown(&primes);
        assert!(primes_blocked_ms < blocked_ms && primes_wall < wall, "{primes} vs {nap}");
        assert!(primes["cost"]["fuel_microusd"].as_i64().is_some_and(|fuel| fuel > 0), "{primes}");

        // Usage adds the wall parts up as the ledger does.
        let (status, usage) = app.get("/v1/budgets/usage", Some(&ada.key)).await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        assert_eq!(usage["total"]["wall_microusd"].as_i64(), Some(wall + primes_wall), "{usage}");
        assert_eq!(usage["total"]["blocked_ms"].as_i64(), Some(blocked_ms + primes_blocked_ms), "{usage}");
        let charged_total = nap["cost_microusd"].as_i64().expect("cost") + primes["cost_microusd"].as_i64().expect("cost");
        assert_eq!(usage["total"]["cost_microusd"].as_i64(), Some(charged_total), "{usage}");
        // The chain, now with entries that carry a wall part, still verifies.
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_host_call_sleeping_past_the_wall_limit_ends_there_and_pays_up_to_it(backend) {
        let app = priced_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        // An hour's sleep in poll_oneoff under a 300 ms wall limit.
        app.publish_wat(&ada, "sleeper", &hostile_wat("sleeper"), "wall_ms_max = 300\nfuel_max = 1000000").await;
        let (status, body) = app.cast(&ada, json!({"spell": "ada/sleeper"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(error_code(&body), "deadline_exceeded", "{body}");
        let fields = charged(status, &body);
        let (blocked_ms, wall) = assert_breakdown(fields);
        assert!((1..=300).contains(&blocked_ms), "{body}");
        let entry = ledger_entry(&app, &ada, fields["cast_id"].as_str().expect("cast id")).await;
        assert_eq!(entry["wall_microusd"].as_i64(), Some(wall), "{entry}");
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_spell_that_cannot_block_holds_no_wall_time_and_one_that_can_holds_its_wall_limit(backend) {
        let app = priced_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_wat(&ada, "napper", &napper_wat(30), "wall_ms_max = 1000\nfuel_max = 1000000").await;
        app.publish_examples(&ada, &["hello"]).await;
        // The napper imports poll_oneoff: its whole wall limit is held, 1 000 ms × 5 µ$.
        let (status, quote) = app.cast(&ada, json!({"spell": "ada/napper", "dry_run": true})).await;
        assert_eq!(status, StatusCode::OK, "{quote}");
        assert_eq!(quote["worst_case"]["blocked_ms_max"], 1_000, "{quote}");
        assert_eq!(quote["worst_case"]["cost"]["wall_microusd"], 5_000, "{quote}");
        // hello imports no way to wait: its worst case is its fuel cap alone, 1 µ$ base fee +
        // 5 000 µ$ for 5·10⁷ fuel (its 2 s wall limit would add 10 000 µ$).
        let hello = json!({"spell": "ada/hello", "input": {"name": "Ada"}});
        let mut dry = hello.clone();
        dry["dry_run"] = json!(true);
        let (status, quote) = app.cast(&ada, dry).await;
        assert_eq!(status, StatusCode::OK, "{quote}");
        assert_eq!(quote["worst_case"]["blocked_ms_max"], 0, "{quote}");
        assert_eq!(quote["worst_case"]["cost"]["wall_microusd"], 0, "{quote}");
        assert_eq!(quote["worst_case"]["hold_microusd"], 5_001, "{quote}");
        // A balance of exactly that casts it, and is charged no wall time.
        let bob = app.user("bob", 5_001).await;
        let (status, body) = app.cast(&bob, hello).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(assert_breakdown(&body), (0, 0), "{body}");
        let cost = body["cost_microusd"].as_i64().expect("cost");
        assert_eq!(app.me(&bob).await["balance_microusd"].as_i64(), Some(5_001 - cost));
        app.assert_money_invariants(&ada).await;
        app.assert_money_invariants(&bob).await;
        app.shutdown().await;
    }

    async fn the_balance_and_budgets_hold_the_whole_wall_limit_or_refuse_before_anything_runs(backend) {
        let app = priced_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        // Worst case: 1 µ$ base fee + 100 µ$ for 10⁶ fuel + 1 000 ms × 5 µ$ = 5 101 µ$.
        app.publish_wat(&ada, "napper", &napper_wat(30), "wall_ms_max = 1000\nfuel_max = 1000000").await;
        let (status, budget) = app.post("/v1/budgets", Some(&ada.key), json!({
            "scope": {"type": "account"}, "period": "day", "hard_limit_microusd": 5_000,
        })).await;
        assert_eq!(status, StatusCode::CREATED, "{budget}");
        let (status, body) = app.cast(&ada, json!({"spell": "ada/napper"})).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
        assert_eq!(error_code(&body), "spend_limit_reached", "{body}");
        assert_eq!(body["error"]["required_microusd"], 5_101, "{body}");
        assert_eq!(body["error"]["available_microusd"], 5_000, "{body}");
        // The wall part alone takes what the budget has: no max_fuel would fit.
        assert_eq!(body["error"]["affordable_max_fuel"], Value::Null, "{body}");
        // A cost cap shrinks the blocked time it holds with the fuel: 2 000 µ$ leaves the nap
        // 391 ms of it, plenty for 30.
        let (status, body) = app.cast(&ada, json!({"spell": "ada/napper", "max_cost_microusd": 2_000})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (blocked_ms, _) = assert_breakdown(&body);
        assert!(blocked_ms >= 30, "{body}");
        assert!(body["cost_microusd"].as_i64().is_some_and(|cost| cost <= 2_000), "{body}");

        // The balance too: 3 000 µ$ cannot hold 5 101.
        let bob = app.user("bob", 3_000).await;
        let (status, body) = app.cast(&bob, json!({"spell": "ada/napper"})).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
        assert_eq!(error_code(&body), "budget_exhausted", "{body}");
        assert_eq!(body["error"]["required_microusd"], 5_101, "{body}");
        // Nothing ran, nothing was charged.
        assert_eq!(app.me(&bob).await["balance_microusd"], 3_000);
        app.assert_money_invariants(&ada).await;
        app.assert_money_invariants(&bob).await;
        app.shutdown().await;
    }
}
