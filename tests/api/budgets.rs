//! Budgets, usage and per-key spend controls, over HTTP on both databases: the contract of
//! `/v1/budgets`, enforcement under concurrency, period boundaries on an injected clock, soft
//! limits, and API key scopes and allow-lists.

use reqwest::StatusCode;
use serde_json::{Value, json};

use spellhost::money::{self, Caps, CastRecord, HoldFor, Pricing, quote};

use crate::app::{TestApp, TestUser, error_code, spawn_app};
use crate::helpers::Seeded;
use crate::on_both_databases;

/// What one cast of `primes` with `max_fuel` 10⁶ costs: it always runs out of that fuel, so
/// each is charged exactly its worst case, and a budget of K of them admits exactly K.
const EXHAUSTING: i64 = 101;

fn exhausting_cast() -> Value {
    json!({"spell": "ada/primes", "input": {"below": 10_000_000}, "max_fuel": 1_000_000})
}

/// `spk_<id>`: the part of a key that names it.
fn prefix(user: &TestUser) -> String {
    user.key[..16].to_owned()
}

async fn budget(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let (status, created) = app.post("/v1/budgets", Some(&user.key), body).await;
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "{status}: {created}"
    );
    created
}

async fn budgets(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let (status, body) = app.get("/v1/budgets", Some(&user.key)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["budgets"].as_array().expect("list").clone()
}

/// Milliseconds from the app's clock to just past the next midnight UTC.
fn to_next_midnight(app: &TestApp) -> i64 {
    let now = app.app.db.now_ms();
    let day = money::Period::Day;
    day.end_ms(day.start_ms(now)).expect("days end") - now + 1
}

/// Which pool is set to admit exactly K casts in a concurrency run.
#[derive(Debug, Clone, Copy)]
enum Tight {
    AccountBudget,
    /// A key budget tighter than a roomy account budget.
    KeyBudget,
    /// The balance, tighter than a roomy account budget.
    Balance,
}

/// 64 concurrent exhausting casts against a pool that admits exactly `k`: exactly `k` run and
/// are charged, the rest are refused before running, and nothing goes past a limit.
async fn exactly_k_of_64(app: &TestApp, handle: &str, k: i64, tight: Tight) {
    let credit = match tight {
        Tight::Balance => k * EXHAUSTING,
        _ => 1_000_000_000,
    };
    let caster = app.user(handle, credit).await;
    let roomy = 1_000 * EXHAUSTING;
    let (account, key) = match tight {
        Tight::AccountBudget => (k * EXHAUSTING, None),
        Tight::KeyBudget => (roomy, Some(k * EXHAUSTING)),
        Tight::Balance => (roomy, None),
    };
    budget(
        app,
        &caster,
        json!({"scope": {"type": "account"}, "period": "month", "hard_limit_microusd": account}),
    )
    .await;
    if let Some(hard) = key {
        let scope = json!({"type": "key", "key_prefix": prefix(&caster)});
        budget(
            app,
            &caster,
            json!({"scope": scope, "period": "day", "hard_limit_microusd": hard}),
        )
        .await;
    }
    let casts = (0..64).map(|_| app.cast(&caster, exhausting_cast()));
    let results = futures::future::join_all(casts).await;
    let expected_refusal = match tight {
        Tight::Balance => "budget_exhausted",
        _ => "spend_limit_reached",
    };
    let mut charged = 0;
    for (status, body) in &results {
        match (*status, error_code(body)) {
            (StatusCode::UNPROCESSABLE_ENTITY, "fuel_exhausted") => {
                assert_eq!(body["error"]["cost_microusd"], EXHAUSTING, "{body}");
                charged += 1;
            }
            (StatusCode::PAYMENT_REQUIRED, code) if code == expected_refusal => {
                assert!(
                    body["error"].get("fuel_used").is_none(),
                    "refused before running: {body}"
                );
            }
            other => panic!("{tight:?} k={k}: unexpected {other:?}: {body}"),
        }
    }
    assert_eq!(charged, k, "{tight:?}: exactly k casts ran");
    for listed in budgets(app, &caster).await {
        let (used, held, hard) = (
            listed["used_microusd"].as_i64().expect("used"),
            listed["held_microusd"].as_i64().expect("held"),
            listed["hard_limit_microusd"].as_i64().expect("hard"),
        );
        assert!(used <= hard, "{tight:?}: over the limit: {listed}");
        assert_eq!((used, held), (k * EXHAUSTING, 0), "{tight:?}: {listed}");
    }
    let me = app.me(&caster).await;
    assert_eq!(me["balance_microusd"], credit - k * EXHAUSTING);
    app.assert_money_invariants(&caster).await;
}

on_both_databases! {
    async fn budgets_are_created_listed_updated_and_deleted(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 1_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        let body = json!({"scope": {"type": "account"}, "period": "month", "hard_limit_microusd": 20_000_000, "soft_limit_microusd": 15_000_000});
        let (status, created) = app.post("/v1/budgets", Some(&ada.key), body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        for field in ["id", "scope", "period", "hard_limit_microusd", "soft_limit_microusd", "used_microusd",
                      "held_microusd", "remaining_microusd", "period_start", "period_end", "soft_limit_reached",
                      "created_at", "updated_at"] {
            assert!(created.get(field).is_some(), "{field}: {created}");
        }
        assert_eq!(created["scope"], json!({"type": "account"}));
        assert_eq!((created["used_microusd"].as_i64(), created["remaining_microusd"].as_i64()), (Some(0), Some(20_000_000)));
        assert!(created["period_start"].as_str().is_some_and(|t| t.ends_with("-01T00:00:00Z")), "{created}");
        assert_eq!(created["soft_limit_reached"], false);
        let id = created["id"].as_str().expect("id").to_owned();
        // The same scope and period again is an update, not a second budget.
        let again = json!({"scope": {"type": "account"}, "period": "month", "hard_limit_microusd": 30_000_000});
        let (status, updated) = app.post("/v1/budgets", Some(&ada.key), again).await;
        assert_eq!((status, updated["id"].as_str()), (StatusCode::OK, Some(id.as_str())));
        assert_eq!(updated["soft_limit_microusd"], Value::Null);
        // Key and spell scopes, and a period of its own.
        let key_scope = json!({"type": "key", "key_prefix": prefix(&ada)});
        budget(&app, &ada, json!({"scope": key_scope, "period": "day", "hard_limit_microusd": 1_000_000})).await;
        let spell_scope = json!({"type": "spell", "spell": "ada/hello"});
        let spell_budget = budget(&app, &ada, json!({"scope": spell_scope, "period": "total", "hard_limit_microusd": 500})).await;
        assert_eq!(spell_budget["period_end"], Value::Null, "a total budget never resets");
        assert_eq!(budgets(&app, &ada).await.len(), 3);
        // PUT by id and by scope + period replace the limits.
        let (status, put) = app.put(&format!("/v1/budgets/{id}"), &ada.key, json!({"hard_limit_microusd": 40_000_000, "soft_limit_microusd": 1})).await;
        assert_eq!((status, put["hard_limit_microusd"].as_i64()), (StatusCode::OK, Some(40_000_000)), "{put}");
        let (status, put) = app.put("/v1/budgets", &ada.key, json!({"scope": {"type": "spell", "spell": "ada/hello"}, "period": "total", "hard_limit_microusd": 600})).await;
        assert_eq!((status, put["hard_limit_microusd"].as_i64()), (StatusCode::OK, Some(600)), "{put}");
        let (status, body) = app.put("/v1/budgets", &ada.key, json!({"scope": {"type": "account"}, "period": "week", "hard_limit_microusd": 1})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        // Another user sees none of it and can change none of it.
        let bob = app.user("bob", 0).await;
        assert!(budgets(&app, &bob).await.is_empty());
        let (status, body) = app.put(&format!("/v1/budgets/{id}"), &bob.key, json!({"hard_limit_microusd": 1})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        let (status, body) = app.delete(&format!("/v1/budgets/{id}"), &bob.key).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        // DELETE by id, and by query for the account scope.
        let spell_id = spell_budget["id"].as_str().expect("id");
        assert_eq!(app.delete(&format!("/v1/budgets/{spell_id}"), &ada.key).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.delete("/v1/budgets?scope=account&period=month", &ada.key).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.delete("/v1/budgets?scope=account&period=month", &ada.key).await.0, StatusCode::NOT_FOUND);
        let left = budgets(&app, &ada).await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0]["scope"], json!({"type": "key", "key_prefix": prefix(&ada)}));
        app.shutdown().await;
    }

    async fn invalid_budgets_are_422_naming_the_field(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        let bob = app.user("bob", 0).await;
        let account = json!({"type": "account"});
        let cases = [
            (json!({"scope": {"type": "galaxy"}, "period": "month", "hard_limit_microusd": 1}), "scope.type"),
            (json!({"period": "month", "hard_limit_microusd": 1}), "scope"),
            (json!({"scope": {"type": "key", "key_prefix": prefix(&bob)}, "period": "month", "hard_limit_microusd": 1}), "scope.key_prefix"),
            (json!({"scope": {"type": "key", "key_prefix": "spk_nonsense"}, "period": "month", "hard_limit_microusd": 1}), "scope.key_prefix"),
            (json!({"scope": {"type": "key"}, "period": "month", "hard_limit_microusd": 1}), "scope.key_prefix"),
            (json!({"scope": {"type": "spell", "spell": "nobody/nothing"}, "period": "month", "hard_limit_microusd": 1}), "scope.spell"),
            (json!({"scope": {"type": "spell", "spell": "not a spell"}, "period": "month", "hard_limit_microusd": 1}), "scope.spell"),
            (json!({"scope": account, "period": "fortnight", "hard_limit_microusd": 1}), "period"),
            (json!({"scope": account, "hard_limit_microusd": 1}), "period"),
            (json!({"scope": account, "period": "month", "hard_limit_microusd": 0}), "hard_limit_microusd"),
            (json!({"scope": account, "period": "month", "hard_limit_microusd": -5}), "hard_limit_microusd"),
            (json!({"scope": account, "period": "month", "hard_limit_microusd": 1.5}), "hard_limit_microusd"),
            (json!({"scope": account, "period": "month"}), "hard_limit_microusd"),
            (json!({"scope": account, "period": "month", "hard_limit_microusd": 10, "soft_limit_microusd": 11}), "soft_limit_microusd"),
            (json!({"scope": account, "period": "month", "hard_limit_microusd": 10, "soft_limit_microusd": 0}), "soft_limit_microusd"),
        ];
        for (body, field) in cases {
            let (status, response) = app.post("/v1/budgets", Some(&ada.key), body.clone()).await;
            assert_eq!((status, error_code(&response)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_budget"), "{body}");
            assert_eq!(response["error"]["field"], field, "{body}: {response}");
        }
        assert!(budgets(&app, &ada).await.is_empty());
        app.shutdown().await;
    }

    async fn a_budget_admits_exactly_the_casts_it_covers_under_concurrency(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        app.publish_examples(&ada, &["primes"]).await;
        for seed in [3u64, 11, 99, 2026] {
            let mut random = Seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            for (index, tight) in [Tight::AccountBudget, Tight::KeyBudget, Tight::Balance].into_iter().enumerate() {
                let k = 1 + random.next(40) as i64;
                exactly_k_of_64(&app, &format!("caster-{seed}-{index}"), k, tight).await;
            }
        }
        app.shutdown().await;
    }

    async fn a_spend_limit_is_a_402_quote_before_anything_runs(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["primes", "hello"]).await;
        let created = budget(&app, &ada, json!({"scope": {"type": "spell", "spell": "ada/primes"}, "period": "day", "hard_limit_microusd": 150})).await;
        // primes' worst case (the host's fuel maximum) cannot be held by a 150 µ$ budget.
        let (status, body) = app.cast(&ada, json!({"spell": "ada/primes", "input": {"below": 1000}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::PAYMENT_REQUIRED, "spend_limit_reached"), "{body}");
        let error = &body["error"];
        assert_eq!(error["available_microusd"], 150);
        assert_eq!(error["affordable_max_fuel"], 1_490_000, "the base fee and 149 µ$ of fuel");
        assert_eq!(error["binding"]["type"], "budget");
        assert_eq!(error["binding"]["budget_id"], created["id"]);
        assert_eq!(error["budget"]["id"], created["id"]);
        assert_eq!(error["budget"]["scope"], json!({"type": "spell", "spell": "ada/primes"}));
        assert_eq!(error["budget"]["resets_at"], created["period_end"]);
        assert_eq!(error["topup"], Value::Null, "a top-up does not lift a spend limit");
        assert_eq!(app.me(&ada).await["balance_microusd"], 10_000_000, "nothing was charged");
        // The quote works, and other spells are not governed by this budget.
        let (status, body) = app.cast(&ada, json!({"spell": "ada/primes", "input": {"below": 1000}, "max_fuel": 1_490_000})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = app.cast(&ada, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!(status, StatusCode::OK);
        // Lowering the limit below what is used blocks further casts in the period.
        let id = created["id"].as_str().expect("id");
        let (status, _) = app.put(&format!("/v1/budgets/{id}"), &ada.key, json!({"hard_limit_microusd": 1})).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = app.cast(&ada, json!({"spell": "ada/primes", "input": {"below": 10}, "max_fuel": 1})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::PAYMENT_REQUIRED, "spend_limit_reached"));
        assert_eq!(body["error"]["affordable_max_fuel"], Value::Null);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn soft_limits_warn_on_every_cast_response_after_the_crossing(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["primes"]).await;
        let created = budget(&app, &ada, json!({"scope": {"type": "account"}, "period": "week",
            "hard_limit_microusd": 4 * EXHAUSTING, "soft_limit_microusd": 2 * EXHAUSTING})).await;
        let id = created["id"].as_str().expect("id").to_owned();
        let cast = |body: Value| {
            app.client.post(app.url("/v1/cast")).bearer_auth(&ada.key).json(&body).send()
        };
        let first = cast(exhausting_cast()).await.expect("cast");
        assert_eq!(first.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(first.headers().get("spellhost-budget-warning").is_none(), "below the soft limit");
        // The second cast crosses the soft limit; it and every response after it warn.
        for _ in 0..3 {
            let response = cast(exhausting_cast()).await.expect("cast");
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
            let warning = response.headers().get("spellhost-budget-warning").expect("warned").to_str().expect("ascii").to_owned();
            assert!(warning.starts_with(&id), "{warning}");
            assert!(warning.contains("scope=account") && warning.contains("soft_limit_microusd=202"), "{warning}");
        }
        // The hard limit is reached: the refusal warns too.
        let refused = cast(exhausting_cast()).await.expect("cast");
        assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
        assert!(refused.headers().get("spellhost-budget-warning").is_some());
        let listed = &budgets(&app, &ada).await[0];
        assert_eq!(listed["soft_limit_reached"], true);
        let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        assert!(metrics.contains("spellhost_budget_soft_limit_crossings_total 1"), "one crossing");
        app.shutdown().await;
    }

    async fn daily_budgets_count_from_zero_again_after_midnight_utc(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["primes"]).await;
        let created = budget(&app, &ada, json!({"scope": {"type": "account"}, "period": "day", "hard_limit_microusd": 2 * EXHAUSTING})).await;
        for _ in 0..2 {
            assert_eq!(app.cast(&ada, exhausting_cast()).await.0, StatusCode::UNPROCESSABLE_ENTITY);
        }
        let (status, body) = app.cast(&ada, exhausting_cast()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::PAYMENT_REQUIRED, "spend_limit_reached"));
        assert_eq!(body["error"]["budget"]["resets_at"], created["period_end"]);
        // The clock is moved, not slept on.
        app.app.db.clock().advance(to_next_midnight(&app));
        let listed = &budgets(&app, &ada).await[0];
        assert_eq!(listed["used_microusd"], 0, "{listed}");
        assert_eq!(listed["period_start"], created["period_end"]);
        assert_eq!(app.cast(&ada, exhausting_cast()).await.0, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(budgets(&app, &ada).await[0]["used_microusd"], EXHAUSTING);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_cast_held_across_midnight_counts_once_in_the_day_it_settled(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        let created = budget(&app, &ada, json!({"scope": {"type": "account"}, "period": "day", "hard_limit_microusd": 1_000_000})).await;
        let db = &app.app.db;
        let caps = Caps { spell_fuel_max: 1_000_000, caller_fuel_max: None, caller_cost_max: None, blocked_ms_max: 0 };
        let request = HoldFor {
            user_id: ada.id, key_id: ada.key[4..16].to_owned(), spell: "ada/slow".into(),
            cast_id: "cast_midnight".into(),
        };
        let hold = app.app.money.hold(request, quote::plan(caps, &Pricing::default()).expect("plan")).await.expect("hold");
        assert!(budgets(&app, &ada).await[0]["held_microusd"].as_i64().is_some_and(|h| h >= 101), "leased");
        let yesterday = db.now_ms();
        db.clock().advance(to_next_midnight(&app));
        let record = CastRecord { spell: "ada/slow", version: "1.0.0", digest: "00", outcome: "ok", fuel_used: 500_000, duration_us: 1, blocked_ms: 0, output_bytes: 0, output: None };
        let settled = app.app.money.settle(hold, &record).await.expect("settle");
        app.app.money.return_all().await.expect("leases given back");
        let listed = &budgets(&app, &ada).await[0];
        assert_eq!((listed["used_microusd"].as_i64(), listed["held_microusd"].as_i64()), (Some(settled.cost.get()), Some(0)));
        assert_eq!(listed["period_start"], created["period_end"], "counted in the day of the settle");
        // Usage by day agrees: nothing on the day of the hold, the charge on the day after.
        let day = money::Period::Day;
        let from = spellhost::store::rfc3339(day.start_ms(yesterday));
        let (status, usage) = app.get(&format!("/v1/budgets/usage?from={from}&group_by=day"), Some(&ada.key)).await;
        assert_eq!(status, StatusCode::OK, "{usage}");
        let groups = usage["groups"].as_array().expect("groups");
        assert_eq!(groups.len(), 1, "{usage}");
        assert_eq!(groups[0]["cost_microusd"], settled.cost.get());
        assert_ne!(groups[0]["group"], from[..10], "{usage}");
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn usage_groups_add_up_to_the_ledger(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello", "primes"]).await;
        let ci = app.key_for(&ada, json!({"name": "ci", "scopes": ["cast"]})).await;
        for (caster, body) in [
            (&ada, json!({"spell": "ada/hello", "input": {"name": "Ada"}})),
            (&ada, json!({"spell": "ada/hello", "input": {}})),
            (&ci, exhausting_cast()),
            (&ci, json!({"spell": "ada/primes", "input": {"below": 100}})),
        ] {
            app.cast(caster, body).await;
        }
        let (ledger,): (i64,) = sqlx::query_as("SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT) FROM ledger WHERE user_id = $1 AND kind = 'cast'")
            .bind(ada.id).fetch_one(app.app.db.reader()).await.expect("sum");
        for group_by in ["day", "spell", "key"] {
            let (status, usage) = app.get(&format!("/v1/budgets/usage?group_by={group_by}"), Some(&ada.key)).await;
            assert_eq!(status, StatusCode::OK, "{usage}");
            assert_eq!(usage["total"]["cast_count"], 4);
            assert_eq!(usage["total"]["cost_microusd"], -ledger, "{group_by}");
            let groups = usage["groups"].as_array().expect("groups");
            let sum: i64 = groups.iter().map(|g| g["cost_microusd"].as_i64().expect("cost")).sum();
            assert_eq!(sum, -ledger, "{group_by}: groups add up");
            let outcomes: i64 = usage["total"]["by_outcome"].as_object().expect("by outcome").values()
                .map(|o| o["cast_count"].as_i64().expect("count")).sum();
            assert_eq!(outcomes, 4);
        }
        let (_, by_key) = app.get("/v1/budgets/usage?group_by=key", Some(&ada.key)).await;
        let keys: Vec<&str> = by_key["groups"].as_array().expect("groups").iter().map(|g| g["group"].as_str().expect("key")).collect();
        assert!(keys.contains(&prefix(&ci).as_str()) && keys.contains(&prefix(&ada).as_str()), "{by_key}");
        let (_, by_spell) = app.get("/v1/budgets/usage?group_by=spell", Some(&ada.key)).await;
        assert_eq!(by_spell["groups"][0]["group"], "ada/hello");
        assert_eq!(by_spell["groups"][0]["by_outcome"]["exit_code"]["cast_count"], 1, "{by_spell}");
        for query in ["group_by=week", "from=yesterday", "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z"] {
            let (status, body) = app.get(&format!("/v1/budgets/usage?{query}"), Some(&ada.key)).await;
            assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "bad_request"), "{query}");
        }
        app.shutdown().await;
    }

    async fn keys_carry_scopes_allow_lists_and_expiry(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello", "primes"]).await;
        let hello = json!({"spell": "ada/hello", "input": {"name": "Ada"}});
        // A read-only key reads and cannot cast.
        let reader = app.key_for(&ada, json!({"name": "dashboard", "scopes": ["read"]})).await;
        assert_eq!(app.get("/v1/users/me", Some(&reader.key)).await.0, StatusCode::OK);
        let (status, body) = app.cast(&reader, hello.clone()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, "insufficient_scope"));
        assert_eq!(body["error"]["required_scope"], "cast");
        // A CI key casts one spell and nothing else, and manages nothing.
        let ci = app.key_for(&ada, json!({"name": "ci", "scopes": ["cast"], "allowed_spells": ["ada/hello"]})).await;
        assert_eq!(app.cast(&ci, hello.clone()).await.0, StatusCode::OK);
        let (status, body) = app.cast(&ci, json!({"spell": "ada/primes", "input": {"below": 10}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, "spell_not_allowed"));
        for (path, method) in [("/v1/users/me", "GET"), ("/v1/keys", "GET"), ("/v1/budgets", "GET"), ("/v1/ledger", "GET")] {
            let (status, body) = app.get(path, Some(&ci.key)).await;
            assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, "insufficient_scope"), "{method} {path}");
        }
        let (status, _) = app.post("/v1/keys", Some(&ci.key), json!({"name": "escape"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // A key never makes a key that may do more than itself.
        let manager = app.key_for(&ada, json!({"name": "agent", "scopes": ["cast", "manage"], "allowed_spells": ["ada/*"]})).await;
        for body in [
            json!({"name": "wider", "scopes": ["cast", "manage", "read"], "allowed_spells": ["ada/*"]}),
            json!({"name": "any spell", "scopes": ["cast"]}),
            json!({"name": "other owner", "scopes": ["cast"], "allowed_spells": ["bob/*"]}),
        ] {
            let (status, response) = app.post("/v1/keys", Some(&manager.key), body.clone()).await;
            assert_eq!((status, error_code(&response)), (StatusCode::FORBIDDEN, "insufficient_scope"), "{body}");
        }
        let narrower = app.key_for(&manager, json!({"name": "narrower", "scopes": ["cast"], "allowed_spells": ["ada/hello"]})).await;
        assert_eq!(app.cast(&narrower, hello.clone()).await.0, StatusCode::OK);
        for body in [
            json!({"name": "x", "scopes": ["admin"]}),
            json!({"name": "x", "allowed_spells": ["not a pattern"]}),
            json!({"name": "x", "expires_at": "tomorrow"}),
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            json!({"name": "x", "scopes": []}),
        ] {
            let (status, response) = app.post("/v1/keys", Some(&ada.key), body.clone()).await;
            assert_eq!((status, error_code(&response)), (StatusCode::BAD_REQUEST, "bad_request"), "{body}");
        }
        // Expiry, on the injected clock.
        let in_an_hour = spellhost::store::rfc3339(app.app.db.now_ms() + 3_600_000);
        let temporary = app.key_for(&ada, json!({"name": "temp", "expires_at": in_an_hour})).await;
        assert_eq!(app.cast(&temporary, hello.clone()).await.0, StatusCode::OK);
        // The listing shows what each key may do, and when it was last used.
        let (status, listed) = app.get("/v1/keys", Some(&ada.key)).await;
        assert_eq!(status, StatusCode::OK);
        let find = |listed: &Value, key: &TestUser| listed["keys"].as_array().expect("keys").iter()
            .find(|k| k["prefix"] == prefix(key)).cloned().expect("listed");
        let shown = find(&listed, &ci);
        assert_eq!(shown["scopes"], json!(["cast"]));
        assert_eq!(shown["allowed_spells"], json!(["ada/hello"]));
        assert_eq!(find(&listed, &temporary)["expires_at"], in_an_hour);
        let original = find(&listed, &ada);
        assert_eq!(original["scopes"], json!(["cast", "publish", "read", "manage"]), "existing keys keep every scope");
        assert_eq!(original["allowed_spells"], Value::Null);
        assert!(listed["keys"].as_array().expect("keys").iter().all(|k| k.get("key").is_none()), "never a secret");
        // Last use is recorded in the background: wait for it (generously), never sleep a fixed time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (_, listed) = app.get("/v1/keys", Some(&ada.key)).await;
            if find(&listed, &ci)["last_used_at"].is_string() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "last use never recorded");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        app.app.db.clock().advance(2 * 3_600_000);
        let (status, body) = app.cast(&temporary, hello).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "expired");
        app.shutdown().await;
    }
}
