//! One tenant cannot take the service from another: sleeping spells hold no worker, a user's
//! own concurrency limit answers 429 to that user only, and the refusals are counted.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{TestApp, error_code, spawn_app_with};
use crate::helpers::hostile_wat;
use crate::on_both_databases;

/// How long a test waits for a condition: it only bounds a broken test, on a busy machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// The value of a metric line (`name` with its labels, as exposed) in `/metrics`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    app.exposition()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

async fn wait_for_metric(app: &TestApp, name: &str, at_least: f64) {
    let deadline = Instant::now() + PATIENCE;
    while metric(app, name).await < at_least {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name} ≥ {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_databases! {
    async fn a_tenant_flooding_sleeping_spells_cannot_keep_another_from_being_served(backend) {
        // One worker thread, as on the smallest machine: before runs were async, a single
        // sleeping cast held it and everyone else waited, then got 503.
        let app = spawn_app_with(&backend, &[
            ("SPELLHOST_WORKERS", "1"),
            ("SPELLHOST_RUNS_MAX", "4"),
            ("SPELLHOST_USER_CONCURRENT_CASTS_MAX", "2"),
            ("SPELLHOST_QUEUE_WAIT_MS_MAX", "500"),
            ("SPELLHOST_WALL_MS_MAX", "60000"),
        ]).await;
        let mallory = app.user("mallory", 100_000_000).await;
        app.publish_wat(&mallory, "sleeper", &hostile_wat("sleeper"), "wall_ms_max = 60000\nfuel_max = 1000000").await;
        let ada = app.user("ada", 10_000_000).await;
        app.publish_examples(&ada, &["hello"]).await;

        // Mallory floods: two casts sleep in their slots, the rest wait behind them.
        let flood: Vec<_> = (0..8)
            .map(|_| {
                let request = app.client.post(app.url("/v1/cast")).bearer_auth(&mallory.key)
                    .json(&json!({"spell": "mallory/sleeper"}));
                tokio::spawn(request.send())
            })
            .collect();
        wait_for_metric(&app, "spellhost_sandbox_runs_in_flight", 2.0).await;

        // Ada is served, every time, while Mallory's sleepers hold their slots.
        for _ in 0..10 {
            let (status, body) = app.cast(&ada, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["output"]["greeting"], "Hello, Ada!");
        }
        assert!(metric(&app, "spellhost_sandbox_runs_in_flight").await >= 2.0, "still sleeping");

        // Mallory's six waiting casts are refused as Mallory's own load, with a time to retry;
        // the two sleepers sleep on.
        let deadline = Instant::now() + PATIENCE;
        while flood.iter().filter(|cast| cast.is_finished()).count() < 6 {
            assert!(Instant::now() < deadline, "the waiting casts were never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (answered, sleeping): (Vec<_>, Vec<_>) = flood.into_iter().partition(|cast| cast.is_finished());
        assert_eq!(sleeping.len(), 2);
        for cast in answered {
            let response = cast.await.expect("joins").expect("sent");
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.expect("json");
            assert_eq!(error_code(&body), "too_many_concurrent_casts", "{body}");
            assert!(body["error"]["trace_id"].is_string(), "{body}");
        }
        assert_eq!(
            metric(&app, "spellhost_casts_refused_total{reason=\"too_many_concurrent_casts\"}").await,
            6.0
        );
        // Nothing was charged for a refused cast, and Ada's money adds up.
        app.assert_money_invariants(&ada).await;
    }
}

on_both_databases! {
    async fn a_keys_own_concurrency_limit_binds_that_key_only(backend) {
        let app = spawn_app_with(&backend, &[
            ("SPELLHOST_WORKERS", "1"),
            ("SPELLHOST_RUNS_MAX", "4"),
            ("SPELLHOST_USER_CONCURRENT_CASTS_MAX", "3"),
            ("SPELLHOST_QUEUE_WAIT_MS_MAX", "500"),
        ]).await;
        let ada = app.user("ada", 100_000_000).await;
        app.publish_wat(&ada, "sleeper", &hostile_wat("sleeper"), "wall_ms_max = 5000\nfuel_max = 1000000").await;
        app.publish_examples(&ada, &["hello"]).await;

        // The field is a positive integer, listed with the key, and a limited key cannot make
        // a key without a limit or with a higher one.
        for bad in [json!(0), json!(-1), json!("2"), json!(1.5)] {
            let (status, body) = app.post("/v1/keys", Some(&ada.key), json!({"name": "bad", "concurrent_casts_max": bad})).await;
            assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {status} {body}");
        }
        let ci = app.key_for(&ada, json!({"name": "ci", "concurrent_casts_max": 1})).await;
        let (status, keys) = app.get("/v1/keys", Some(&ada.key)).await;
        assert_eq!(status, StatusCode::OK, "{keys}");
        let limits: Vec<&Value> = keys["keys"].as_array().expect("keys").iter().map(|k| &k["concurrent_casts_max"]).collect();
        assert_eq!(limits, [&Value::Null, &json!(1)], "{keys}");
        for escalation in [json!({"name": "more"}), json!({"name": "more", "concurrent_casts_max": 2})] {
            let (status, body) = app.post("/v1/keys", Some(&ci.key), escalation).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert_eq!(error_code(&body), "insufficient_scope", "{body}");
        }
        let (status, body) = app.post("/v1/keys", Some(&ci.key), json!({"name": "same", "concurrent_casts_max": 1})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        // The CI key's one cast sleeps in its slot ...
        let sleeping = tokio::spawn(
            app.client.post(app.url("/v1/cast")).bearer_auth(&ci.key)
                .json(&json!({"spell": "ada/sleeper"})).send(),
        );
        wait_for_metric(&app, "spellhost_sandbox_runs_in_flight", 1.0).await;
        // ... so its next waits behind it, then is refused as the key's own load ...
        let refused = app.client.post(app.url("/v1/cast")).bearer_auth(&ci.key)
            .json(&json!({"spell": "ada/hello", "input": {"name": "CI"}})).send().await.expect("sent");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().contains_key("retry-after"));
        let body: Value = refused.json().await.expect("json");
        assert_eq!(error_code(&body), "too_many_concurrent_casts", "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("key")), "{body}");
        // ... while the same user's other key is served, far below the user's limit.
        for _ in 0..3 {
            let (status, body) = app.cast(&ada, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        assert!(!sleeping.is_finished(), "the CI key's cast still sleeps");
        assert_eq!(
            metric(&app, "spellhost_casts_refused_total{reason=\"too_many_concurrent_casts\"}").await,
            1.0
        );
        // Once the sleeper ends, the key casts again.
        let finished = sleeping.await.expect("joins").expect("sent");
        assert_eq!(finished.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let (status, body) = app.cast(&ci, json!({"spell": "ada/hello", "input": {"name": "CI"}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        app.assert_money_invariants(&ada).await;
    }
}
