//! The HTTP API as a client sees it.

use reqwest::StatusCode;
use serde_json::json;

use crate::app::{error_code, spawn_app, spawn_app_with};
use crate::billing::metric;
use crate::helpers::eventually;
use crate::helpers::{manifest_text, new_signer, signed_bundle};
use crate::on_both_databases;

/// `promtool check metrics` on the exposition, when promtool is installed (CI installs it;
/// a newcomer's machine may not have it, and then this check is skipped with a note).
fn promtool_accepts(exposition: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipped: promtool is not installed");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

on_both_databases! {
    async fn health_and_metrics_answer(backend) {
        let app = spawn_app(&backend).await;
        let (status, body) = app.get("/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}));
        let text = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        for name in ["spellhost_casts_total", "spellhost_cast_duration_seconds", "spellhost_fuel_consumed_total",
                     "spellhost_charged_microusd_total", "spellhost_http_requests_total", "spellhost_active_holds",
                     "spellhost_module_cache_hits_total", "spellhost_module_cache_misses_total", "spellhost_sandbox_queue_depth"] {
            assert!(text.contains(name), "{name} missing from /metrics");
        }
        promtool_accepts(&text);
        app.shutdown().await;
    }

    async fn keys_are_required_and_checked(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        for key in [None, Some("nonsense"), Some("spk_aaaaaaaaaaaa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000")] {
            let (status, body) = app.get("/v1/users/me", key).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
            assert_eq!(error_code(&body), "unauthorized");
        }
        // A well-formed key that does not exist.
        let stranger = spellhost::auth::ApiKey::generate();
        let (status, _) = app.get("/v1/users/me", Some(stranger.expose())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let me = app.me(&user).await;
        assert_eq!(me["handle"], "ada");
        assert_eq!(me["balance_microusd"], 0);
        app.shutdown().await;
    }

    async fn keys_are_shown_once_listed_without_secrets_and_deleted_at_once(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        let (status, created) = app.post("/v1/keys", Some(&user.key), json!({"name": "ci"})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let second = created["key"].as_str().expect("key shown").to_owned();
        let prefix = created["prefix"].as_str().expect("prefix").to_owned();
        assert!(second.starts_with(&prefix));
        let (_, listed) = app.get("/v1/keys", Some(&second)).await;
        let text = listed.to_string();
        assert!(!text.contains(&second[prefix.len()..]), "no secrets in listings: {text}");
        assert_eq!(listed["keys"].as_array().map(Vec::len), Some(2));
        // The key works (and is now in the verified cache) until it is deleted.
        assert_eq!(app.get("/v1/users/me", Some(&second)).await.0, StatusCode::OK);
        let (status, _) = app.delete(&format!("/v1/keys/{prefix}"), &user.key).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(app.get("/v1/users/me", Some(&second)).await.0, StatusCode::UNAUTHORIZED);
        let (status, body) = app.delete(&format!("/v1/keys/{prefix}"), &user.key).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        app.shutdown().await;
    }

    async fn publishing_verifies_and_versions_are_immutable(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        app.register_demo_signer(&user).await;
        let hello = crate::helpers::example_bundle("hello");
        let (status, body) = app.publish(&user, &hello).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["spell"], "ada/hello");
        assert_eq!(body["version"], "1.0.0");
        let digest = spellhost::supply_chain::ModuleDigest::of(&hello.module).to_string();
        assert_eq!(body["digest"], digest.as_str());
        let (status, body) = app.publish(&user, &hello).await;
        assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "version_exists"));
        let (status, body) = app.get("/v1/spells/ada/hello", Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["versions"][0]["digest"], digest.as_str());

        // Signed by a key the publisher never registered.
        let (private_pem, _, _) = new_signer();
        let wat = "(module (memory (export \"memory\") 1) (func (export \"_start\")))";
        let stranger = signed_bundle(wat::parse_str(wat).expect("wat"), &manifest_text("noop", ""), &private_pem);
        let (status, body) = app.publish(&user, &stranger).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "signature_invalid"));
        // A tampered SBOM.
        let mut tampered = hello.clone();
        tampered.sbom = b"{}".to_vec();
        let (status, body) = app.publish(&user, &tampered).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "sbom_invalid"));
        // A missing part.
        let form = reqwest::multipart::Form::new().part("module", reqwest::multipart::Part::bytes(hello.module.clone()));
        let response = app.client.post(app.url("/v1/spells")).bearer_auth(&user.key).multipart(form).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        app.shutdown().await;
    }

    async fn a_module_that_compiles_too_slowly_is_refused_and_never_published(backend) {
        // Compiling is the gate's last check. No module compiles within 1 ms, so every
        // publish here meets the limit: refused with its code, and nothing is stored.
        let app = spawn_app_with(&backend, &[("SPELLHOST_COMPILE_TIME_MS_MAX", "1")]).await;
        let user = app.user("ada", 1_000_000).await;
        app.register_demo_signer(&user).await;
        let (status, body) = app.publish(&user, &crate::helpers::example_bundle("hello")).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "module_too_complex"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("compiling")), "{body}");
        let (status, body) = app.get("/v1/spells/ada/hello", Some(&user.key)).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "spell_not_found"), "{body}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/hello", "input": {}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "spell_not_found"), "{body}");
        app.shutdown().await;
    }

    async fn a_module_the_engine_cannot_compile_is_refused_at_publish(backend) {
        // Both pass the gate's validator (found by fuzzing, fuzz/README.md); the engine refuses
        // them. Compiling at publish answers 422 instead of storing a version whose every
        // cast would fail.
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        let (private_pem, _, public_pem) = new_signer();
        app.register_key_signer(&user, "ci", &private_pem, &public_pem).await;
        for (name, functions) in [
            ("externref", "(func (param externref))"),
            ("tables", "(table 1 funcref) (table 1 funcref)"),
        ] {
            let wat = format!("(module (memory (export \"memory\") 1) {functions} (func (export \"_start\")))");
            let bundle = signed_bundle(wat::parse_str(&wat).expect("wat"), &manifest_text(name, ""), &private_pem);
            let (status, body) = app.publish(&user, &bundle).await;
            assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "module_invalid"), "{name}: {body}");
            let (status, _) = app.get(&format!("/v1/spells/ada/{name}"), Some(&user.key)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{name} was not published");
        }
        app.shutdown().await;
    }

    async fn a_cast_runs_charges_and_reports(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        app.publish_examples(&user, &["hello", "primes"]).await;
        let (status, body) = app.cast(&user, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["output"], json!({"greeting": "Hello, Ada!"}));
        assert_eq!(body["outcome"], "ok");
        assert_eq!(body["spell"], "ada/hello");
        assert_eq!(body["version"], "1.0.0");
        let fuel = body["fuel_used"].as_u64().expect("fuel");
        let cost = body["cost_microusd"].as_i64().expect("cost");
        assert_eq!(cost, spellhost::money::Pricing::default().cost(fuel).get());
        assert_eq!(body["balance_microusd"], 1_000_000 - cost);
        assert!(body["cast_id"].as_str().is_some_and(|id| id.starts_with("cast_")));
        // Raw input, raw output.
        let (status, body) = app.cast(&user, json!({"spell": "ada/hello@1.0.0", "input_base64": "eyJuYW1lIjoiQm9iIn0="})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["output"]["greeting"], "Hello, Bob!");
        let me = app.me(&user).await;
        assert_eq!(me["held_microusd"], 0);
        app.assert_money_invariants(&user).await;
        // The ledger lists the grant and both casts, paginated.
        let (_, page) = app.get("/v1/ledger?limit=2", Some(&user.key)).await;
        assert_eq!(page["entries"].as_array().map(Vec::len), Some(2));
        let after = page["next_after"].as_i64().expect("more pages");
        let (_, rest) = app.get(&format!("/v1/ledger?after={after}"), Some(&user.key)).await;
        assert_eq!(rest["entries"].as_array().map(Vec::len), Some(1));
        assert_eq!(rest["entries"][0]["kind"], "cast");
        assert_eq!(rest["next_after"], serde_json::Value::Null);
        app.shutdown().await;
    }

    async fn every_answer_says_how_long_the_server_took_and_a_cast_where_the_time_went(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        let poor = app.user("bob", 0).await;
        app.publish_examples(&user, &["hello"]).await;
        /// The `Server-Timing` entries of an answer, in order, as (name, ms).
        async fn timed(request: reqwest::RequestBuilder) -> (StatusCode, Vec<(String, f64)>, serde_json::Value) {
            let response = request.send().await.expect("request");
            let status = response.status();
            let entries = response.headers().get_all("server-timing").iter()
                .flat_map(|value| value.to_str().expect("ascii").split(", ").map(str::to_owned).collect::<Vec<_>>())
                .map(|entry| {
                    let (name, duration) = entry.split_once(";dur=").unwrap_or_else(|| panic!("{entry}"));
                    (name.to_owned(), duration.parse::<f64>().unwrap_or_else(|_| panic!("{entry}")))
                })
                .collect();
            (status, entries, response.json().await.unwrap_or_default())
        }
        let (status, entries, _) = timed(app.client.get(app.url("/healthz"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].0, "total");
        let cast = |key: &str| app.client.post(app.url("/v1/cast")).bearer_auth(key)
            .json(&json!({"spell": "ada/hello", "input": {"name": "Ada"}}));
        let (status, entries, body) = timed(cast(&user.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["prepare", "queue", "dispatch", "run", "settle", "total"]);
        assert!(entries.iter().all(|(_, ms)| *ms >= 0.0), "{entries:?}");
        // The run's entry is the answer's own duration: the header rounds to the nearest µs,
        // `duration_us` rounds down. The stages follow one another inside the request:
        // together they are no longer than it.
        let run_us = (entries[3].1 * 1000.0).round() as u64;
        let duration_us = body["duration_us"].as_u64().expect("duration_us");
        assert!(run_us == duration_us || run_us == duration_us + 1, "{run_us} µs against {duration_us}");
        let stages: f64 = entries[..5].iter().map(|(_, ms)| ms).sum();
        assert!(stages <= entries[5].1 + 0.005, "{entries:?}");
        // A refused key is told nothing of the server's time.
        let (status, entries, _) = timed(app.client.get(app.url("/v1/users/me")).bearer_auth("nonsense")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(entries.is_empty(), "{entries:?}");
        // A cast refused before it ran has no stages to tell, only its total.
        let (status, entries, body) = timed(cast(&poor.key)).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
        let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["total"]);
        app.shutdown().await;
    }

    async fn each_version_runs_under_its_own_manifest_limits(backend) {
        // Two versions of one module (same digest, one compiled module) with different limits.
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        app.publish_examples(&user, &["hello"]).await;
        let demo_key = std::fs::read_to_string(crate::helpers::repo_path("spells/demo-key/spell.key")).expect("demo key");
        let module = crate::helpers::example_bundle("hello").module;
        let tight = signed_bundle(module, "name = \"hello\"\nversion = \"1.1.0\"\n[limits]\nfuel_max = 1000\n", &demo_key);
        let (status, body) = app.publish(&user, &tight).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "fuel_exhausted"), "the highest version, 1.1.0");
        assert_eq!(body["error"]["fuel_used"], 1000);
        let (status, body) = app.cast(&user, json!({"spell": "ada/hello@1.0.0", "input": {"name": "Ada"}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["version"], "1.0.0");
        app.shutdown().await;
    }

    async fn spell_failures_are_422_with_their_code_and_still_charged(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        app.publish_examples(&user, &["hello", "primes"]).await;
        let (status, body) = app.cast(&user, json!({"spell": "ada/hello", "input": {}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "spell_failed"));
        assert_eq!(body["error"]["exit_code"], 2);
        assert!(body["error"]["cost_microusd"].as_i64().is_some_and(|c| c > 0));
        // The caller's own max_fuel ran out: 422 fuel_exhausted, charged for what burned.
        let (status, body) = app.cast(&user, json!({"spell": "ada/primes", "input": {"below": 1000000}, "max_fuel": 100000})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "fuel_exhausted"));
        assert_eq!(body["error"]["fuel_used"], 100000);
        assert_eq!(body["error"]["cost_microusd"], spellhost::money::Pricing::default().cost(100000).get());
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn an_unaffordable_cast_is_402_before_anything_runs(backend) {
        let app = spawn_app(&backend).await;
        let publisher = app.user("ada", 0).await;
        app.publish_examples(&publisher, &["hello"]).await;
        // hello's manifest allows 5·10⁷ fuel: its worst case is 5 001 µ$.
        let broke = app.user("bob", 1).await;
        let (status, body) = app.cast(&broke, json!({"spell": "ada/hello", "input": {"name": "Bob"}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::PAYMENT_REQUIRED, "budget_exhausted"));
        assert_eq!(body["error"]["available_microusd"], 1);
        assert_eq!(body["error"]["required_microusd"], 5_001);
        assert_eq!(body["error"]["affordable_max_fuel"], serde_json::Value::Null, "not even a minimal run fits");
        assert_eq!(body["error"]["binding"], json!({"type": "balance"}));
        assert_eq!(body["error"]["topup"], serde_json::Value::Null, "billing is not configured");
        assert!(body["error"].get("fuel_used").is_none(), "nothing ran");
        assert_eq!(app.me(&broke).await["balance_microusd"], 1);
        let (casts,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM casts").fetch_one(app.app.db.reader()).await.expect("count");
        assert_eq!(casts, 0);
        app.shutdown().await;
    }

    async fn a_cast_whose_worst_case_does_not_fit_is_quoted_and_the_quote_works(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 20).await;
        app.publish_examples(&user, &["primes"]).await;
        // Tried as a new user would: 20 µ$ of credit and one primes cast. Its worst case (the
        // host's 5·10⁹ fuel) cannot be held, so nothing runs and nothing is charged ...
        let (status, body) = app.cast(&user, json!({"spell": "ada/primes", "input": {"below": 1000}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::PAYMENT_REQUIRED, "budget_exhausted"));
        assert_eq!(body["error"]["required_microusd"], spellhost::money::Pricing::default().cost(5_000_000_000).get());
        assert_eq!(body["error"]["available_microusd"], 20);
        // ... and the quote says what fits: the base fee plus 19 µ$ of fuel.
        assert_eq!(body["error"]["affordable_max_fuel"], 190_000);
        assert_eq!(app.me(&user).await["balance_microusd"], 20);
        let (status, body) = app.cast(&user, json!({"spell": "ada/primes", "input": {"below": 1000}, "max_fuel": 190_000})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["cost_microusd"].as_i64().is_some_and(|c| c <= 20));
        // A cost cap bounds the charge the same way (5 µ$ buys 40 000 fuel, too little here),
        // and one that cannot buy a minimal run is a bad request.
        let (status, body) = app.cast(&user, json!({"spell": "ada/primes", "input": {"below": 1000}, "max_cost_microusd": 5})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "fuel_exhausted"), "{body}");
        assert_eq!((body["error"]["fuel_used"].as_u64(), body["error"]["cost_microusd"].as_i64()), (Some(40_000), Some(5)));
        let (status, body) = app.cast(&user, json!({"spell": "ada/primes", "input": {"below": 10}, "max_cost_microusd": 1})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "bad_request"));
        let me = app.me(&user).await;
        assert_eq!(me["held_microusd"], 0);
        assert!(me["balance_microusd"].as_i64().is_some_and(|b| b >= 0));
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn bad_requests_get_the_one_error_shape(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 100).await;
        for (body, expected) in [
            (json!({"spell": "ada/nope"}), (StatusCode::NOT_FOUND, "spell_not_found")),
            (json!({"spell": "not a spell"}), (StatusCode::BAD_REQUEST, "bad_request")),
            (json!({"spell": "ada/hello@latest"}), (StatusCode::BAD_REQUEST, "bad_request")),
            (json!({"spell": "ada/hello", "input": {}, "input_base64": ""}), (StatusCode::BAD_REQUEST, "bad_request")),
            (json!({"spell": "ada/hello", "input_base64": "!!"}), (StatusCode::BAD_REQUEST, "bad_request")),
            (json!({"spell": "ada/hello", "surprise": 1}), (StatusCode::BAD_REQUEST, "bad_request")),
        ] {
            let (status, response) = app.cast(&user, body.clone()).await;
            assert_eq!((status, error_code(&response)), expected, "{body}");
        }
        let response = app.client.post(app.url("/v1/cast")).bearer_auth(&user.key)
            .header("content-type", "application/json").body("{not json").send().await.expect("request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = response.json().await.expect("json error");
        assert_eq!(error_code(&body), "bad_request");
        let (status, body) = app.get("/v1/nowhere", None).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        let response = app.client.put(app.url("/v1/cast")).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body: serde_json::Value = response.json().await.expect("json error");
        assert_eq!(error_code(&body), "method_not_allowed");
        // A body over the limit is refused from its Content-Length, before it is read. (Sent by
        // hand: a client still writing 8 MiB may see the connection close before the answer.)
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(app.address).await.expect("connect");
        let head = format!(
            "POST /v1/cast HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 9000000\r\n\r\n",
            user.key
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), stream.read(&mut answer))
            .await
            .expect("answered before the body was sent")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("\"payload_too_large\""), "{answer}");
        app.shutdown().await;
    }
}

/// On SQLite the money writer's care of the WAL shows in `/metrics`: casts enough to write a
/// few thousand WAL frames, and the checkpoints (most of their work off the writer) are
/// counted as they happen. (Flushes are not asserted: the thread folds a flush asked while it
/// checkpoints into the checkpoint.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_checkpoints_on_sqlite_show_in_the_metrics() {
    let app = spawn_app(&crate::app::Backend::Sqlite).await;
    let user = app.user("ada", 100_000_000).await;
    app.publish_examples(&user, &["hello"]).await;
    let before = app.exposition().await;
    for name in [
        "spellhost_sqlite_checkpoints_total",
        "spellhost_sqlite_checkpoint_seconds_total",
        "spellhost_sqlite_background_checkpoints_total",
        "spellhost_sqlite_background_checkpoint_seconds_total",
        "spellhost_sqlite_wal_flushes_total",
    ] {
        assert!(
            before.contains(&format!("\n{name} ")),
            "{name} missing from /metrics"
        );
    }
    // One cast at a time: each commits on its own, about a dozen WAL frames (the cast's row
    // and its indexes, the ledger's, the user, the lease, the chain's head), so 300 of them
    // write ~3 600 frames, over three times the mark at which a checkpoint starts.
    for round in 0..300 {
        let (status, body) = app
            .cast(
                &user,
                json!({"spell": "ada/hello", "input": {"name": round.to_string()}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The thread works in its own time: wait (not a timing assertion) for its first checkpoint.
    let background = "spellhost_sqlite_background_checkpoints_total";
    eventually("a checkpoint off the writer", || async {
        metric(&app, background).await >= 1.0
    })
    .await;
    assert!(metric(&app, "spellhost_sqlite_background_checkpoint_seconds_total").await > 0.0);
    app.assert_money_invariants(&user).await;
    app.shutdown().await;
}
