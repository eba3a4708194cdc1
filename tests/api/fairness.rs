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
