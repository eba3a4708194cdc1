//! `Idempotency-Key` on the four routes that take it: replays (same status and body, charged
//! once), a reused key, concurrent requests with one key, per-user scoping, what is stored
//! and what releases the key, a settlement whose caller never heard of it, an abandoned
//! reservation, and expiry.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::app::{Backend, TestApp, TestUser, error_code, spawn_app};
use crate::helpers::example_bundle;
use crate::leases::cast_entries;
use crate::on_both_databases;
use spellhost::idempotency::{IdempotencyKey, RequestFingerprint, Reserved};

/// A response: status, headers, the body's exact bytes.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

/// `POST path` with a JSON body sent as exactly `body`, and an `Idempotency-Key`.
async fn post_with_key(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    key: &str,
    body: &str,
) -> Answer {
    post_to(app, &app.url(path), user, key, body).await
}

async fn post_to(app: &TestApp, url: &str, user: &TestUser, key: &str, body: &str) -> Answer {
    let response = app
        .client
        .post(url)
        .bearer_auth(&user.key)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.expect("body").to_vec(),
    }
}

async fn balance(app: &TestApp, user: &TestUser) -> i64 {
    app.me(user).await["balance_microusd"]
        .as_i64()
        .expect("balance")
}

/// Exactly one of `answers` ran (the others are replays of it or `409`); returns it.
fn the_one_that_ran(answers: &[Answer]) -> &Answer {
    let ran: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != StatusCode::CONFLICT && !a.replayed())
        .collect();
    assert_eq!(ran.len(), 1, "exactly one ran");
    assert_eq!(ran[0].status, StatusCode::OK, "{}", ran[0].json());
    for answer in answers {
        if answer.status == StatusCode::CONFLICT {
            assert_eq!(error_code(&answer.json()), "idempotency_key_in_use");
            assert!(answer.headers.contains_key("retry-after"));
        } else {
            assert_eq!(answer.bytes, ran[0].bytes, "a replay of the one that ran");
        }
    }
    let in_use = answers
        .iter()
        .filter(|a| a.status == StatusCode::CONFLICT)
        .count();
    eprintln!(
        "{} requests: 1 ran, {in_use} found it running, {} replayed it",
        answers.len(),
        answers.len() - 1 - in_use
    );
    ran[0]
}

const HELLO: &str = r#"{"spell":"ada/hello","input":{"name":"Ada"}}"#;

/// A publisher `ada` with `hello` (and `primes`) published, and a caster with $1.
async fn casting_app(backend: &Backend) -> (TestApp, TestUser) {
    let app = spawn_app(backend).await;
    let ada = app.user("ada", 1_000_000).await;
    app.publish_examples(&ada, &["hello", "primes"]).await;
    (app, ada)
}

on_both_databases! {
    async fn a_retried_cast_replays_its_answer_and_is_charged_once(backend) {
        let (app, ada) = casting_app(&backend).await;
        let before = balance(&app, &ada).await;
        let first = post_with_key(&app, &ada, "/v1/cast", "retry-1", HELLO).await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.json());
        assert!(!first.replayed());
        let cost = first.json()["cost_microusd"].as_i64().expect("cost");
        assert!(cost > 0);
        let again = post_with_key(&app, &ada, "/v1/cast", "retry-1", HELLO).await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.replayed(), "a replay says so");
        assert_eq!(again.bytes, first.bytes, "the same body, byte for byte");
        assert_eq!(cast_entries(&app, &ada).await, 1, "one ledger entry");
        let exposition = app.exposition().await;
        for (outcome, count) in [("run", 1), ("replayed", 1), ("in_use", 0)] {
            let line = format!("spellhost_idempotent_requests_total{{outcome=\"{outcome}\"}} {count}");
            assert!(exposition.contains(&line), "{line}");
        }
        assert_eq!(balance(&app, &ada).await, before - cost, "charged once");
        // Without the header, the same body is a new cast.
        let (status, fresh) = app.cast(&ada, serde_json::from_str(HELLO).expect("json")).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(fresh["cast_id"], first.json()["cast_id"]);
        assert_eq!(cast_entries(&app, &ada).await, 2);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_spell_failure_is_stored_and_replayed_with_its_charge(backend) {
        let (app, ada) = casting_app(&backend).await;
        // Too little fuel for primes below 50 000: 422 fuel_exhausted, charged what it burned.
        let body = r#"{"spell":"ada/primes","input":{"below":50000},"max_fuel":20000}"#;
        let first = post_with_key(&app, &ada, "/v1/cast", "fails", body).await;
        assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", first.json());
        assert_eq!(error_code(&first.json()), "fuel_exhausted");
        let again = post_with_key(&app, &ada, "/v1/cast", "fails", body).await;
        assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(again.replayed());
        assert_eq!(again.bytes, first.bytes, "the trace id and the charge included");
        assert_eq!(cast_entries(&app, &ada).await, 1);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn a_key_reused_for_a_different_request_is_refused(backend) {
        let (app, ada) = casting_app(&backend).await;
        let first = post_with_key(&app, &ada, "/v1/cast", "k", HELLO).await;
        assert_eq!(first.status, StatusCode::OK);
        let other_body = r#"{"spell":"ada/hello","input":{"name":"Bob"}}"#;
        let reused = post_with_key(&app, &ada, "/v1/cast", "k", other_body).await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error_code(&reused.json()), "idempotency_key_reused");
        // The same key on another route is another request too.
        let reused = post_with_key(&app, &ada, "/v1/keys", "k", r#"{"name":"x"}"#).await;
        assert_eq!(error_code(&reused.json()), "idempotency_key_reused");
        assert_eq!(cast_entries(&app, &ada).await, 1);
        app.shutdown().await;
    }

    async fn invalid_keys_are_refused_before_anything_runs(backend) {
        let (app, ada) = casting_app(&backend).await;
        for key in [String::new(), "k".repeat(256)] {
            let answer = post_with_key(&app, &ada, "/v1/cast", &key, HELLO).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{key:?}");
            assert_eq!(error_code(&answer.json()), "idempotency_key_invalid");
        }
        let longest = post_with_key(&app, &ada, "/v1/cast", &"k".repeat(255), HELLO).await;
        assert_eq!(longest.status, StatusCode::OK);
        assert_eq!(cast_entries(&app, &ada).await, 1);
        app.shutdown().await;
    }

    async fn concurrent_requests_with_one_key_run_once(backend) {
        let (app, ada) = casting_app(&backend).await;
        let before = balance(&app, &ada).await;
        // Long enough that the others arrive while the first runs.
        let body = r#"{"spell":"ada/primes","input":{"below":60000}}"#;
        let answers = futures::future::join_all(
            (0..8).map(|_| post_with_key(&app, &ada, "/v1/cast", "together", body)),
        )
        .await;
        let ran = the_one_that_ran(&answers);
        let cost = ran.json()["cost_microusd"].as_i64().expect("cost");
        assert_eq!(cast_entries(&app, &ada).await, 1);
        assert_eq!(balance(&app, &ada).await, before - cost);
        // Once it has finished, every retry replays it.
        let later = post_with_key(&app, &ada, "/v1/cast", "together", body).await;
        assert!(later.replayed());
        assert_eq!(later.bytes, ran.bytes);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn two_instances_on_one_database_run_a_key_once(backend) {
        let (app, ada) = casting_app(&backend).await;
        let before = balance(&app, &ada).await;
        let other = app.second_instance().await;
        let body = r#"{"spell":"ada/primes","input":{"below":60000}}"#;
        let urls: Vec<String> = (0..8)
            .map(|i| if i % 2 == 0 { app.url("/v1/cast") } else { other.url("/v1/cast") })
            .collect();
        let answers = futures::future::join_all(urls.iter().map(|url| post_to(&app, url, &ada, "both", body))).await;
        let ran = the_one_that_ran(&answers);
        let cost = ran.json()["cost_microusd"].as_i64().expect("cost");
        assert_eq!(cast_entries(&app, &ada).await, 1);
        let replay = post_to(&app, &other.url("/v1/cast"), &ada, "both", body).await;
        assert!(replay.replayed());
        other.stop().await;
        assert_eq!(balance(&app, &ada).await, before - cost);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn keys_are_scoped_per_user(backend) {
        let (app, ada) = casting_app(&backend).await;
        let bob = app.user("bob", 1_000_000).await;
        let by_ada = post_with_key(&app, &ada, "/v1/cast", "shared", HELLO).await;
        let by_bob = post_with_key(&app, &bob, "/v1/cast", "shared", HELLO).await;
        assert_eq!(by_ada.status, StatusCode::OK);
        assert_eq!(by_bob.status, StatusCode::OK);
        assert!(!by_bob.replayed(), "bob's key is his own");
        assert_ne!(by_ada.json()["cast_id"], by_bob.json()["cast_id"]);
        assert_eq!(cast_entries(&app, &ada).await, 1);
        assert_eq!(cast_entries(&app, &bob).await, 1);
        // A different body under bob's key is refused for bob, not for ada.
        let other = r#"{"spell":"ada/hello","input":{"name":"Bob"}}"#;
        let reused = post_with_key(&app, &bob, "/v1/cast", "shared", other).await;
        assert_eq!(error_code(&reused.json()), "idempotency_key_reused");
        let replay = post_with_key(&app, &ada, "/v1/cast", "shared", HELLO).await;
        assert!(replay.replayed());
        assert_eq!(replay.bytes, by_ada.bytes);
        app.shutdown().await;
    }

    async fn a_refusal_before_anything_ran_releases_the_key(backend) {
        let (app, ada) = casting_app(&backend).await;
        let poor = app.user("poor", 0).await;
        let refused = post_with_key(&app, &poor, "/v1/cast", "topup-then-retry", HELLO).await;
        assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
        spellhost::money::post(&app.app.db, poor.id, spellhost::money::EntryKind::Grant,
            spellhost::money::MicroUsd::new(1_000_000), "test credit").await.expect("grant");
        let retried = post_with_key(&app, &poor, "/v1/cast", "topup-then-retry", HELLO).await;
        assert_eq!(retried.status, StatusCode::OK, "{}", retried.json());
        assert!(!retried.replayed(), "the 402 was not stored: the retry ran");
        // A spell that does not exist: not stored either.
        let missing = r#"{"spell":"ada/nope"}"#;
        assert_eq!(post_with_key(&app, &ada, "/v1/cast", "m", missing).await.status, StatusCode::NOT_FOUND);
        assert!(!post_with_key(&app, &ada, "/v1/cast", "m", missing).await.replayed());
        app.assert_money_invariants(&poor).await;
        app.shutdown().await;
    }

    async fn a_settled_cast_replays_even_when_its_caller_saw_an_error(backend) {
        let (app, ada) = casting_app(&backend).await;
        let before = balance(&app, &ada).await;
        // Every attempt of the batch fails after its commit: the first commits the charge and
        // the answer, and the caller hears 500, as after a crash between commit and answer.
        app.app.money.store().failpoints().after_commit.store(3, std::sync::atomic::Ordering::Relaxed);
        let lost = post_with_key(&app, &ada, "/v1/cast", "lost-ack", HELLO).await;
        assert_eq!(lost.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", lost.json());
        assert_eq!(cast_entries(&app, &ada).await, 1, "the charge committed");
        let retried = post_with_key(&app, &ada, "/v1/cast", "lost-ack", HELLO).await;
        assert_eq!(retried.status, StatusCode::OK, "{}", retried.json());
        assert!(retried.replayed(), "the real result, not a second run");
        let cost = retried.json()["cost_microusd"].as_i64().expect("cost");
        assert_eq!(cast_entries(&app, &ada).await, 1);
        assert_eq!(balance(&app, &ada).await, before - cost);
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn an_abandoned_reservation_expires_and_the_key_can_be_used(backend) {
        let (app, ada) = casting_app(&backend).await;
        let key = IdempotencyKey::parse("crashed").expect("key");
        let fingerprint = RequestFingerprint { method: "POST", path: "/v1/cast", body: HELLO.as_bytes() };
        let lock_ms = app.app.idempotency.lock_ms();
        // A request that runs longer than the lock keeps its key: its process renews it.
        let running = app.app.idempotency.reserve(ada.id, &key, "POST /v1/cast", &fingerprint).await.expect("reserve");
        assert!(matches!(running, Reserved::Run(_)), "{running:?}");
        app.app.db.clock().advance(lock_ms + 1);
        assert!(app.app.idempotency.renew().await.expect("renew") >= 1);
        let blocked = post_with_key(&app, &ada, "/v1/cast", "crashed", HELLO).await;
        assert_eq!(blocked.status, StatusCode::CONFLICT);
        assert_eq!(error_code(&blocked.json()), "idempotency_key_in_use");
        // Its process dies before the cast settled: nothing stored, nobody renews the lock.
        drop(running);
        let blocked = post_with_key(&app, &ada, "/v1/cast", "crashed", HELLO).await;
        assert_eq!(blocked.status, StatusCode::CONFLICT, "until the lock runs out");
        assert_eq!(cast_entries(&app, &ada).await, 0);
        app.app.db.clock().advance(lock_ms + 1);
        let ran = post_with_key(&app, &ada, "/v1/cast", "crashed", HELLO).await;
        assert_eq!(ran.status, StatusCode::OK, "{}", ran.json());
        assert!(!ran.replayed());
        assert_eq!(cast_entries(&app, &ada).await, 1);
        let replay = post_with_key(&app, &ada, "/v1/cast", "crashed", HELLO).await;
        assert!(replay.replayed());
        app.assert_money_invariants(&ada).await;
        app.shutdown().await;
    }

    async fn answers_expire_after_a_day_and_are_purged(backend) {
        let (app, ada) = casting_app(&backend).await;
        assert_eq!(post_with_key(&app, &ada, "/v1/cast", "old", HELLO).await.status, StatusCode::OK);
        assert_eq!(app.app.idempotency.purge_expired(1000).await.expect("purge"), 0, "not yet");
        app.app.db.clock().advance(spellhost::idempotency::RETENTION_MS + 1);
        // Expired but not purged yet: the key is free again, for any request.
        let other = r#"{"spell":"ada/hello","input":{"name":"Bob"}}"#;
        let fresh = post_with_key(&app, &ada, "/v1/cast", "old", other).await;
        assert_eq!(fresh.status, StatusCode::OK);
        assert!(!fresh.replayed());
        assert_eq!(post_with_key(&app, &ada, "/v1/cast", "old2", HELLO).await.status, StatusCode::OK);
        app.app.db.clock().advance(spellhost::idempotency::RETENTION_MS + 1);
        assert_eq!(app.app.idempotency.purge_expired(1).await.expect("purge"), 1, "bounded batches");
        assert_eq!(app.app.idempotency.purge_expired(1000).await.expect("purge"), 1);
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM idempotency_keys")
            .fetch_one(app.app.db.reader()).await.expect("count");
        assert_eq!(left, 0);
        app.shutdown().await;
    }

    async fn a_created_key_is_replayed_not_made_twice(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        let body = r#"{"name":"ci","scopes":["cast"]}"#;
        let first = post_with_key(&app, &ada, "/v1/keys", "new-key", body).await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.json());
        let again = post_with_key(&app, &ada, "/v1/keys", "new-key", body).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert!(again.replayed());
        assert_eq!(again.bytes, first.bytes, "the same key, shown again to its creator");
        let (_, keys) = app.get("/v1/keys", Some(&ada.key)).await;
        assert_eq!(keys["keys"].as_array().expect("keys").len(), 2, "the test key and one more");
        // The secret is not in the database in the clear.
        let secret = first.json()["key"].as_str().expect("key").to_owned();
        let (stored,): (String,) = sqlx::query_as("SELECT response FROM idempotency_keys")
            .fetch_one(app.app.db.reader()).await.expect("row");
        assert!(!stored.contains(&secret));
        app.shutdown().await;
    }

    async fn a_publish_is_replayed_not_refused_as_a_duplicate(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        app.register_demo_signer(&ada).await;
        let bundle = example_bundle("hello");
        let boundary = "spellhost-test-boundary";
        let mut body = Vec::new();
        let signature = match &bundle.signature {
            Some(spellhost::supply_chain::Signature::Detached(bytes)) => bytes.clone(),
            _ => panic!("the example is signed with a key"),
        };
        for (name, bytes) in [("module", bundle.module.clone()), ("manifest", bundle.manifest.clone().into_bytes()),
                              ("sbom", bundle.sbom.clone()), ("signature", signature)] {
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes());
            body.extend_from_slice(&bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let publish = || async {
            let response = app.client.post(app.url("/v1/spells")).bearer_auth(&ada.key)
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .header("idempotency-key", "publish-1")
                .body(body.clone()).send().await.expect("request");
            let replayed = response.headers().contains_key("idempotent-replayed");
            (response.status(), replayed, response.bytes().await.expect("body"))
        };
        let (status, replayed, first) = publish().await;
        assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&first));
        assert!(!replayed);
        let (status, replayed, again) = publish().await;
        assert_eq!(status, StatusCode::CREATED, "not 409 version_exists");
        assert!(replayed);
        assert_eq!(again, first);
        app.shutdown().await;
    }

    async fn a_checkout_is_replayed_not_created_twice(backend) {
        let (app, fake) = crate::billing::billing_app_with(&backend, &[]).await;
        let ada = app.user("ada", 0).await;
        let body = r#"{"amount_usd_cents":500}"#;
        let first = post_with_key(&app, &ada, "/v1/billing/checkout", "topup-1", body).await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.json());
        let again = post_with_key(&app, &ada, "/v1/billing/checkout", "topup-1", body).await;
        assert!(again.replayed());
        assert_eq!(again.bytes, first.bytes);
        assert_eq!(fake.requests_to("/v1/checkout/sessions").len(), 1, "one session at Stripe");
        let other = post_with_key(&app, &ada, "/v1/billing/checkout", "topup-1", r#"{"amount_usd_cents":600}"#).await;
        assert_eq!(error_code(&other.json()), "idempotency_key_reused");
        app.shutdown().await;
    }
}
