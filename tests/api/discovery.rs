//! Spells a client can discover and price (issue 14): schemas and host maxima at publish,
//! input validation before money, the catalog, usage statistics kept by the settlement batch,
//! dry runs, and cast records with their outputs.

use reqwest::StatusCode;
use serde_json::{Value, json};

use spellhost::money::fuel_histogram::{bounds_of, bucket_of};

use crate::app::{TestApp, TestUser, error_code, spawn_app, spawn_app_with};
use crate::helpers::example_bundle;
use crate::leases::cast_entries;
use crate::on_both_databases;

/// `hello`'s manifest as shipped, plus `extra` (tables after `[limits]`).
fn hello_manifest(limits: &str, extra: &str) -> String {
    format!(
        "name = \"hello\"\nversion = \"1.0.0\"\ndescription = \"Greets by name\"\n[limits]\n{limits}\n{extra}"
    )
}

/// What `hello` takes and gives, as JSON Schemas written in TOML.
const HELLO_SCHEMAS: &str = r#"
[input_schema]
type = "object"
required = ["name"]
additionalProperties = false
[input_schema.properties.name]
type = "string"
minLength = 1
maxLength = 40
[output_schema]
type = "object"
required = ["greeting"]
[output_schema.properties.greeting]
type = "string"
"#;

/// Publishes `hello`'s module under `manifest` (the demo signer must be registered).
async fn publish_hello(app: &TestApp, user: &TestUser, manifest: &str) -> (StatusCode, Value) {
    let mut bundle = example_bundle("hello");
    bundle.manifest = manifest.to_owned();
    app.publish(user, &bundle).await
}

/// `ada/hello` with its schemas, published by a new user `ada`.
async fn hello_with_schemas(app: &TestApp) -> TestUser {
    let ada = app.user("ada", 0).await;
    app.register_demo_signer(&ada).await;
    let manifest = hello_manifest("fuel_max = 50000000", HELLO_SCHEMAS);
    let (status, body) = publish_hello(app, &ada, &manifest).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    ada
}

/// A version's `typical` statistics when every one of its `casts` burned fuel (instructions,
/// a count) within one histogram bucket whose upper bound is `bucket_top` (`None`: no cast
/// yet): each percentile is that bound, priced at today's price.
fn typical(casts: u64, bucket_top: Option<u64>, pricing: &spellhost::money::Pricing) -> Value {
    let cost = bucket_top.map(|fuel| pricing.cost(fuel).get());
    json!({
        "casts": casts,
        "fuel_p50": bucket_top, "fuel_p90": bucket_top, "fuel_p99": bucket_top,
        "cost_p50_microusd": cost, "cost_p90_microusd": cost, "cost_p99_microusd": cost,
    })
}

async fn balance_and_held(app: &TestApp, user: &TestUser) -> (i64, i64) {
    let me = app.me(user).await;
    (
        me["balance_microusd"].as_i64().expect("balance"),
        me["held_microusd"].as_i64().expect("held"),
    )
}

async fn cast_rows(app: &TestApp, user: &TestUser) -> i64 {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM casts WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(app.app.db.reader())
        .await
        .expect("count");
    count
}

async fn details(app: &TestApp, user: &TestUser, spell: &str) -> Value {
    let (status, body) = app
        .get(&format!("/v1/spells/{spell}"), Some(&user.key))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The catalog's spells (`owner/name`) over every page of `limit`, following `next_cursor`.
async fn every_page(app: &TestApp, user: &TestUser, query: &str, limit: u32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/spells?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, body) = app.get(&path, Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let spells: Vec<String> = body["spells"]
            .as_array()
            .expect("spells")
            .iter()
            .map(|s| s["spell"].as_str().expect("spell").to_owned())
            .collect();
        pages.push(spells);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 20, "the pages end");
    }
}

on_both_databases! {
    async fn publishing_refuses_schemas_that_do_not_compile_and_limits_above_the_host_maxima(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        app.register_demo_signer(&ada).await;
        let broken = hello_manifest("fuel_max = 50000000", "[input_schema]\ntype = \"objekt\"\n");
        let (status, body) = publish_hello(&app, &ada, &broken).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "manifest_invalid"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("input_schema")), "{body}");
        // A reference outside the schema is refused, never fetched.
        let remote = hello_manifest("", "[output_schema]\n\"$ref\" = \"https://example.com/s.json\"\n");
        let (status, body) = publish_hello(&app, &ada, &remote).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "manifest_invalid"), "{body}");
        let host = app.app.sandbox.host_limits().clone();
        for (limits, field, max) in [
            (format!("fuel_max = {}", host.fuel_max + 1), "limits.fuel_max", host.fuel_max),
            (format!("wall_ms_max = {}", host.wall_ms_max * 2), "limits.wall_ms_max", host.wall_ms_max),
            (format!("memory_bytes_max = {}", host.memory_bytes_max + 1), "limits.memory_bytes_max", host.memory_bytes_max),
            (format!("output_bytes_max = {}", host.output_bytes_max + 1), "limits.output_bytes_max", host.output_bytes_max),
        ] {
            let (status, body) = publish_hello(&app, &ada, &hello_manifest(&limits, "")).await;
            assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "limit_above_host_max"), "{body}");
            assert_eq!(body["error"]["field"], field, "{body}");
            assert_eq!(body["error"]["max"], max, "{body}");
            assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(&max.to_string())), "{body}");
        }
        let (status, _) = app.get("/v1/spells/ada/hello", Some(&ada.key)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing was published");
        // At the maximum is allowed, and the schemas are shown per version.
        let at_max = hello_manifest(&format!("fuel_max = {}", host.fuel_max), HELLO_SCHEMAS);
        let (status, body) = publish_hello(&app, &ada, &at_max).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let shown = details(&app, &ada, "ada/hello").await;
        let version = &shown["versions"][0];
        assert_eq!(version["input_schema"]["required"], json!(["name"]), "{shown}");
        assert_eq!(version["output_schema"]["properties"]["greeting"]["type"], "string", "{shown}");
        assert_eq!(version["limits"]["fuel_max"], host.fuel_max, "{shown}");
        assert_eq!(version["description"], "Greets by name");
        app.shutdown().await;
    }

    async fn an_input_its_schema_refuses_is_422_before_any_money_moves(backend) {
        let app = spawn_app(&backend).await;
        hello_with_schemas(&app).await;
        let bob = app.user("bob", 1_000_000).await;
        for (input, path) in [
            (json!({"nom": "Ada"}), ""),
            (json!({"name": 5}), "/name"),
            (json!({"name": ""}), "/name"),
        ] {
            let (status, body) = app.cast(&bob, json!({"spell": "ada/hello", "input": input})).await;
            assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"), "{body}");
            let errors = body["error"]["errors"].as_array().expect("errors");
            assert!(!errors.is_empty() && errors.len() <= 10, "{body}");
            assert!(errors.iter().any(|e| e["instance_path"] == path), "{path}: {body}");
            assert!(errors.iter().all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())), "{body}");
        }
        // Input that is not JSON at all.
        let (status, body) = app.cast(&bob, json!({"spell": "ada/hello", "input_base64": "AAEC"})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"), "{body}");
        assert_eq!(balance_and_held(&app, &bob).await, (1_000_000, 0), "no hold, no charge");
        assert_eq!(cast_entries(&app, &bob).await, 0, "no ledger entry");
        assert_eq!(cast_rows(&app, &bob).await, 0, "nothing ran");
        let (status, body) = app.cast(&bob, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["output"]["greeting"], "Hello, Ada!");
        app.assert_money_invariants(&bob).await;
        app.shutdown().await;
    }

    async fn the_catalog_pages_by_owner_and_name_and_matches_q(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        app.publish_examples(&ada, &["hello", "primes"]).await;
        let bob = app.user("bob", 0).await;
        let noop = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
        for name in ["alpha", "beta", "gamma"] {
            app.publish_wat(&bob, name, noop, "fuel_max = 1000").await;
        }
        let everything = vec!["ada/hello", "ada/primes", "bob/alpha", "bob/beta", "bob/gamma"];
        let pages = every_page(&app, &bob, "", 2).await;
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1], "{pages:?}");
        assert_eq!(pages.concat(), everything);
        assert_eq!(every_page(&app, &bob, "", 100).await, vec![everything.clone()]);
        // q: case-insensitive, on names and descriptions; `%` and `_` are literal.
        assert_eq!(every_page(&app, &bob, "&q=GREETS", 10).await.concat(), vec!["ada/hello"]);
        assert_eq!(every_page(&app, &bob, "&q=prime", 10).await.concat(), vec!["ada/primes"]);
        assert_eq!(every_page(&app, &bob, "&q=test%20spell", 10).await.concat(), &everything[2..]);
        assert!(every_page(&app, &bob, "&q=%25", 10).await.concat().is_empty());
        assert_eq!(every_page(&app, &bob, "&owner=bob", 2).await.concat(), &everything[2..]);
        let (status, body) = app.get("/v1/spells?owner=ada", Some(&bob.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let hello = &body["spells"][0];
        assert_eq!((hello["spell"].as_str(), hello["latest_version"].as_str()), (Some("ada/hello"), Some("1.0.0")), "{body}");
        assert_eq!(hello["description"], "Greets by name");
        assert_eq!(hello["limits"]["fuel_max"], 50_000_000, "{body}");
        assert_eq!(hello["limits"]["wall_ms_max"], 2_000, "{body}");
        // Bounded and checked.
        for bad in ["cursor=junk", "limit=0", "limit=101", &format!("q={}", "x".repeat(101))] {
            let (status, body) = app.get(&format!("/v1/spells?{bad}"), Some(&bob.key)).await;
            assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "bad_request"), "{bad}: {body}");
        }
        let (status, _) = app.get("/v1/spells", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "authenticated like other reads");
        // A spell whose only version is yanked is listed without a latest version.
        let (status, body) = app.post("/v1/spells/ada/hello/versions/1.0.0/yank", Some(&ada.key), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, body) = app.get("/v1/spells?owner=ada&q=hello", Some(&bob.key)).await;
        assert_eq!(body["spells"][0]["latest_version"], Value::Null, "{body}");
        app.shutdown().await;
    }

    async fn usage_statistics_count_settled_casts_and_bound_their_percentiles(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        app.publish_examples(&ada, &["primes"]).await;
        let bob = app.user("bob", 10_000_000).await;
        let mut fuels = Vec::new();
        for below in [10, 100, 1_000, 2_000, 5_000, 10_000, 20_000] {
            let (status, body) = app.cast(&bob, json!({"spell": "ada/primes", "input": {"below": below}})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            fuels.push(body["fuel_used"].as_u64().expect("fuel"));
        }
        // A cast that fails is settled and counted too.
        let (status, body) = app.cast(&bob, json!({"spell": "ada/primes", "input": {"below": 1_000}, "max_fuel": 1_000})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        fuels.push(body["error"]["fuel_used"].as_u64().expect("fuel"));
        fuels.sort_unstable();
        let shown = details(&app, &bob, "ada/primes").await;
        let usage = &shown["versions"][0]["usage"];
        assert_eq!(usage["casts"], 8, "{shown}");
        let pricing = app.app.config.pricing;
        for (per_mille, field) in [(500u64, "p50"), (900, "p90"), (990, "p99")] {
            // Nearest rank: the k-th smallest, k = ⌈n·p⌉.
            let rank = (fuels.len() as u64 * per_mille).div_ceil(1000) as usize;
            let exact = fuels[rank - 1];
            let quoted = usage[format!("fuel_{field}")].as_u64().expect("percentile");
            let (low, high) = bounds_of(bucket_of(exact));
            assert!(low <= exact && exact <= quoted, "{field}: {exact} ≤ {quoted}");
            assert_eq!(quoted, high, "{field}: the bucket's upper bound");
            assert_eq!(usage[format!("cost_{field}_microusd")], pricing.cost(quoted).get(), "{field}");
        }
        // Another version's statistics are its own.
        let (status, body) = app.get("/v1/spells/ada/primes", Some(&bob.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        app.shutdown().await;
    }

    async fn a_retried_settlement_batch_counts_its_casts_once(backend) {
        use std::sync::atomic::Ordering;
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        let hello = json!({"spell": "ada/hello", "input": {"name": "Ada"}});
        let failpoints = app.app.money.store().failpoints();
        // Committed, then the acknowledgement is lost: the retry finds the cast recorded.
        failpoints.after_commit.store(1, Ordering::Relaxed);
        let (status, body) = app.cast(&ada, hello.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Rolled back, then retried: counted by the batch that commits.
        failpoints.before_commit.store(1, Ordering::Relaxed);
        let (status, body) = app.cast(&ada, hello.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(failpoints.after_commit.load(Ordering::Relaxed), 0, "the failures happened");
        assert_eq!(failpoints.before_commit.load(Ordering::Relaxed), 0);
        let shown = details(&app, &ada, "ada/hello").await;
        assert_eq!(shown["versions"][0]["usage"]["casts"], 2, "{shown}");
        assert_eq!(cast_entries(&app, &ada).await, 2);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_dry_run_quotes_what_a_cast_would_do_and_moves_no_money(backend) {
        let app = spawn_app(&backend).await;
        hello_with_schemas(&app).await;
        let bob = app.user("bob", 1_000_000).await;
        let dry = json!({"spell": "ada/hello", "input": {"name": "Ada"}, "dry_run": true});
        let (status, quote) = app.cast(&bob, dry.clone()).await;
        assert_eq!(status, StatusCode::OK, "{quote}");
        assert_eq!((quote["dry_run"].as_bool(), quote["spell"].as_str(), quote["version"].as_str()), (Some(true), Some("ada/hello"), Some("1.0.0")), "{quote}");
        let pricing = app.app.config.pricing;
        let worst = pricing.cost(50_000_000).get();
        assert_eq!(quote["worst_case"]["hold_microusd"], worst, "{quote}");
        assert_eq!(quote["worst_case"]["fuel_cap"], 50_000_000);
        assert_eq!(quote["worst_case"]["fuel_bound"], "spell");
        let cost = &quote["worst_case"]["cost"];
        assert_eq!(cost["base_microusd"].as_i64().unwrap_or(0) + cost["fuel_microusd"].as_i64().unwrap_or(0) + cost["wall_microusd"].as_i64().unwrap_or(0), worst, "{quote}");
        assert_eq!(quote["would_refuse"], Value::Null, "{quote}");
        assert_eq!(quote["typical"], typical(0, None, &pricing), "{quote}");
        assert_eq!(quote["available_microusd"], 1_000_000);
        assert_eq!(balance_and_held(&app, &bob).await, (1_000_000, 0));
        assert_eq!(cast_rows(&app, &bob).await, 0, "nothing ran");
        // After a real cast, the quote shows its typical cost.
        let (status, cast) = app.cast(&bob, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!(status, StatusCode::OK, "{cast}");
        let after_cast = balance_and_held(&app, &bob).await;
        let (status, quote) = app.cast(&bob, dry.clone()).await;
        assert_eq!(status, StatusCode::OK, "{quote}");
        // One cast: every statistic is the upper bound of the histogram bucket its fuel fell in.
        let fuel = cast["fuel_used"].as_u64().expect("fuel");
        let bucket_top = bounds_of(bucket_of(fuel)).1;
        assert_eq!(quote["typical"], typical(1, Some(bucket_top), &pricing), "{quote}");
        // Refusals that are not about money answer as the real cast would.
        let (status, body) = app.cast(&bob, json!({"spell": "ada/hello", "input": {"nom": "x"}, "dry_run": true})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"));
        assert_eq!(balance_and_held(&app, &bob).await, after_cast, "dry runs move no money");
        assert_eq!(cast_entries(&app, &bob).await, 1);

        // Would refuse on the balance: the quote carries the real cast's 402.
        let poor = app.user("poor", 1).await;
        let (status, quote) = app.cast(&poor, dry.clone()).await;
        assert_eq!(status, StatusCode::OK, "{quote}");
        let refusal = &quote["would_refuse"];
        assert_eq!(refusal["status"], 402, "{quote}");
        assert_eq!(refusal["body"]["error"]["code"], "budget_exhausted", "{quote}");
        assert_eq!(balance_and_held(&app, &poor).await, (1, 0));
        let (status, real) = app.cast(&poor, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!((status, error_code(&real)), (StatusCode::PAYMENT_REQUIRED, "budget_exhausted"));
        for field in ["required_microusd", "available_microusd", "affordable_max_fuel", "binding"] {
            assert_eq!(refusal["body"]["error"][field], real["error"][field], "{field}: {quote} vs {real}");
        }

        // Would refuse on a budget.
        let (status, body) = app.post("/v1/budgets", Some(&bob.key), json!({"scope": {"type": "account"}, "period": "month", "hard_limit_microusd": 3})).await;
        assert!(status.is_success(), "{body}");
        let before = balance_and_held(&app, &bob).await;
        let (status, quote) = app.cast(&bob, dry.clone()).await;
        assert_eq!(status, StatusCode::OK, "{quote}");
        assert_eq!(quote["would_refuse"]["status"], 402, "{quote}");
        assert_eq!(quote["would_refuse"]["body"]["error"]["code"], "spend_limit_reached", "{quote}");
        let (status, real) = app.cast(&bob, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!((status, error_code(&real)), (StatusCode::PAYMENT_REQUIRED, "spend_limit_reached"));
        assert_eq!(quote["would_refuse"]["body"]["error"]["required_microusd"], real["error"]["required_microusd"]);
        assert_eq!(balance_and_held(&app, &bob).await, before);
        assert_eq!(cast_entries(&app, &bob).await, 1);
        app.assert_money_invariants(&bob).await;
        app.assert_money_invariants(&poor).await;
        app.shutdown().await;
    }

    async fn a_cast_record_and_its_output_are_the_casters_alone(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        let (status, cast) = app.cast(&ada, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!(status, StatusCode::OK, "{cast}");
        let id = cast["cast_id"].as_str().expect("id");
        let (status, record) = app.get(&format!("/v1/casts/{id}"), Some(&ada.key)).await;
        assert_eq!(status, StatusCode::OK, "{record}");
        for field in ["cast_id", "spell", "version", "digest", "outcome", "fuel_used", "cost_microusd", "cost", "blocked_ms", "output"] {
            assert_eq!(record[field], cast[field], "{field}: {record} vs {cast}");
        }
        assert_eq!(record["output_status"], "kept");
        assert!(record["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{record}");
        assert!(record["output_expires_at"].is_string(), "{record}");
        // Another user cannot tell it from a cast that does not exist.
        let bob = app.user("bob", 0).await;
        let (status, body) = app.get(&format!("/v1/casts/{id}"), Some(&bob.key)).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        let (status, body) = app.get("/v1/casts/cast_nonexistent", Some(&ada.key)).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        // A failed run has no output to keep; its record says so.
        let (status, failed) = app.cast(&ada, json!({"spell": "ada/hello", "input": {}})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{failed}");
        let id = failed["error"]["cast_id"].as_str().expect("id");
        let (status, record) = app.get(&format!("/v1/casts/{id}"), Some(&ada.key)).await;
        assert_eq!(status, StatusCode::OK, "{record}");
        assert_eq!((record["outcome"].as_str(), record["output_status"].as_str()), (Some("exit_code"), Some("none")), "{record}");
        assert_eq!(record["cost_microusd"], failed["error"]["cost_microusd"]);
        app.shutdown().await;
    }

    async fn an_expired_output_is_swept_and_the_record_stays(backend) {
        let app = spawn_app_with(&backend, &[
            ("SPELLHOST_CAST_OUTPUT_RETENTION_SECONDS", "60"),
            ("SPELLHOST_CAST_OUTPUT_BYTES_MAX", "40"),
        ]).await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;
        let (status, cast) = app.cast(&ada, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!(status, StatusCode::OK, "{cast}");
        let id = cast["cast_id"].as_str().expect("id").to_owned();
        // Over the size cap: not kept, and the record says so.
        let (status, big) = app.cast(&ada, json!({"spell": "ada/hello", "input": {"name": "x".repeat(100)}})).await;
        assert_eq!(status, StatusCode::OK, "{big}");
        let (_, record) = app.get(&format!("/v1/casts/{}", big["cast_id"].as_str().expect("id")), Some(&ada.key)).await;
        assert_eq!(record["output_status"], "not_kept", "{record}");
        assert!(record["output_bytes"].as_u64().is_some_and(|b| b > 40), "{record}");
        let (_, record) = app.get(&format!("/v1/casts/{id}"), Some(&ada.key)).await;
        assert_eq!(record["output_status"], "kept", "{record}");
        let db = &app.app.db;
        db.clock().advance(61_000);
        // Past its time it is gone at once, swept or not.
        let (_, record) = app.get(&format!("/v1/casts/{id}"), Some(&ada.key)).await;
        assert_eq!(record["output_status"], "expired", "{record}");
        assert!(record.get("output").is_none(), "{record}");
        spellhost::money::records::sweep_expired_outputs(db).await.expect("sweep");
        let (kept,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM casts WHERE output IS NOT NULL")
            .fetch_one(db.reader())
            .await
            .expect("count");
        assert_eq!(kept, 0, "swept");
        let (status, record) = app.get(&format!("/v1/casts/{id}"), Some(&ada.key)).await;
        assert_eq!(status, StatusCode::OK, "the record stays: {record}");
        assert_eq!(record["output_status"], "expired");
        assert!(record["output_expired_at"].is_string(), "{record}");
        assert_eq!(record["cost_microusd"], cast["cost_microusd"]);
        assert_eq!(record["fuel_used"], cast["fuel_used"]);
        app.shutdown().await;
    }
}
