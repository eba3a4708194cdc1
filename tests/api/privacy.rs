//! Privacy rights: the export (everything of the caller, nothing of anyone else's, no secrets,
//! streamed in pages) and the erasure of an account (confirmed, keys refused everywhere,
//! spells unpublished, the ledger intact and still verifying, the balance reported).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{Backend, TestApp, TestUser, error_code, spawn_app};
use crate::helpers::eventually;
use crate::on_both_databases;

const HELLO: &str = "ada/hello";

async fn export(app: &TestApp, user: &TestUser) -> (String, Value) {
    let response = app
        .client
        .get(app.url("/v1/users/me/export"))
        .bearer_auth(&user.key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("body");
    let document = serde_json::from_str(&text).expect("one JSON document");
    (text, document)
}

async fn erase(app: &TestApp, user: &TestUser, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = app
        .client
        .delete(app.url("/v1/users/me"))
        .bearer_auth(&user.key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `ada` publishes hello, has a budget, a second key and casts; `bob` casts ada's spell.
async fn two_users(backend: &Backend) -> (TestApp, TestUser, TestUser) {
    let app = spawn_app(backend).await;
    let ada = app.user("ada", 1_000_000).await;
    let bob = app.user("bob", 1_000_000).await;
    app.publish_examples(&ada, &["hello"]).await;
    let (status, _) = app
        .post(
            "/v1/budgets",
            Some(&ada.key),
            json!({"scope": {"type": "account"}, "period": "day", "hard_limit_microusd": 500_000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for user in [&ada, &bob] {
        let (status, body) = app
            .cast(user, json!({"spell": HELLO, "input": {"name": "x"}}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    (app, ada, bob)
}

fn section<'a>(document: &'a Value, name: &str) -> &'a Vec<Value> {
    document[name]
        .as_array()
        .unwrap_or_else(|| panic!("section {name}: {document}"))
}

on_both_databases! {
    async fn the_export_holds_the_callers_things_and_nothing_else(backend) {
        let (app, ada, bob) = two_users(&backend).await;
        let second = app.key_for(&ada, json!({"name": "ci", "scopes": ["cast"]})).await;
        let (status, _) = app.client.post(app.url("/v1/cast")).bearer_auth(&ada.key)
            .header("idempotency-key", "export-me").json(&json!({"spell": HELLO, "input": {"name": "y"}}))
            .send().await.map(|r| (r.status(), ())).expect("cast");
        assert_eq!(status, StatusCode::OK);
        let (text, document) = export(&app, &ada).await;
        assert_eq!(document["complete"], true);
        assert_eq!(document["profile"]["handle"], "ada");
        assert_eq!(document["profile"]["email"], "ada@example.com");
        let prefixes: Vec<&str> = section(&document, "api_keys").iter().filter_map(|k| k["prefix"].as_str()).collect();
        assert_eq!(prefixes.len(), 2);
        for key in [&ada.key, &second.key] {
            assert!(prefixes.iter().any(|p| key.starts_with(&format!("{p}_"))), "{prefixes:?}");
        }
        assert!(section(&document, "casts").iter().all(|c| c["key_prefix"].as_str().is_some_and(|p| p.starts_with("spk_"))));
        assert_eq!(section(&document, "signers").len(), 1);
        assert_eq!(section(&document, "spell_versions")[0]["name"], "hello");
        assert_eq!(section(&document, "budgets").len(), 1);
        assert_eq!(section(&document, "casts").len(), 2);
        let kinds: Vec<&str> = section(&document, "ledger").iter().filter_map(|e| e["kind"].as_str()).collect();
        assert_eq!(kinds, ["grant", "cast", "cast"]);
        assert_eq!(section(&document, "idempotency_keys").len(), 1);
        assert!(section(&document, "idempotency_keys")[0].get("key_hash").is_none());
        // No secrets: neither key, no key hash, no stored answer.
        for secret in [&ada.key, &second.key, &bob.key] {
            assert!(!text.contains(secret.as_str()));
        }
        assert!(!text.contains("argon2"), "no key hashes");
        assert!(!text.contains("secret_hash") && !text.contains("\"response\""));
        // Nothing of bob's, though he cast ada's spell.
        assert!(!text.contains("bob@example.com") && !text.contains("\"bob\""), "{text}");
        let (_, bobs) = export(&app, &bob).await;
        assert_eq!(section(&bobs, "casts").len(), 1);
        let bobs_cast = section(&bobs, "casts")[0]["id"].as_str().expect("cast id");
        assert!(!text.contains(bobs_cast));
        assert!(section(&bobs, "spell_versions").is_empty());
        app.shutdown().await;
    }

    async fn a_long_history_is_exported_in_pages(backend) {
        let app = spawn_app(&backend).await;
        let ada = app.user("ada", 0).await;
        let entries = spellhost::privacy::PAGE_ROWS + 20;
        for n in 0..entries {
            spellhost::money::post(&app.app.db, ada.id, spellhost::money::EntryKind::Grant,
                spellhost::money::MicroUsd::new(1), &format!("grant {n}")).await.expect("grant");
        }
        let (_, document) = export(&app, &ada).await;
        let ledger = section(&document, "ledger");
        assert_eq!(ledger.len() as i64, entries, "every entry, across pages");
        let seqs: Vec<i64> = ledger.iter().filter_map(|e| e["seq"].as_i64()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
        assert_eq!(document["complete"], true);
        app.shutdown().await;
    }

    async fn erasure_needs_the_callers_handle_as_confirmation(backend) {
        let (app, ada, bob) = two_users(&backend).await;
        for body in [None, Some(json!({})), Some(json!({"confirm": "ADA"})), Some(json!({"confirm": bob.handle})), Some(json!(["ada"]))] {
            let (status, answer) = erase(&app, &ada, body.clone()).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
            assert_eq!(error_code(&answer), "confirmation_required");
        }
        assert_eq!(app.me(&ada).await["handle"], "ada", "nothing happened");
        // A key without the manage scope may not erase the account.
        let caster = app.key_for(&ada, json!({"name": "cast-only", "scopes": ["cast"]})).await;
        let (status, _) = erase(&app, &caster, Some(json!({"confirm": "ada"}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        app.shutdown().await;
    }

    async fn erasure_pseudonymizes_the_account_and_keeps_the_ledger(backend) {
        let (app, ada, bob) = two_users(&backend).await;
        let second = app.key_for(&ada, json!({"name": "ci"})).await;
        // Another instance knows ada's key (verified and cached) before the erasure.
        let other = app.second_instance().await;
        let seen = app.client.get(other.url("/v1/users/me")).bearer_auth(&ada.key).send().await.expect("request");
        assert_eq!(seen.status(), StatusCode::OK);
        let balance = app.me(&ada).await["balance_microusd"].as_i64().expect("balance");
        let (status, erased) = erase(&app, &ada, Some(json!({"confirm": "ada"}))).await;
        assert_eq!(status, StatusCode::OK, "{erased}");
        assert_eq!(erased["balance_microusd"], balance, "the balance left over is reported");
        assert_eq!(erased["handle"], format!("deleted-{}", ada.id));
        assert_eq!(erased["deleted_keys"], 2);
        assert_eq!(erased["deleted_spell_versions"], 1);
        // Its keys are refused at once here, and on the other instance within a poll.
        for key in [&ada, &second] {
            let (status, _) = app.get("/v1/users/me", Some(&key.key)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        eventually("the other instance refuses the key", || async {
            let response = app.client.get(other.url("/v1/users/me")).bearer_auth(&ada.key).send().await.expect("request");
            response.status() == StatusCode::UNAUTHORIZED
        }).await;
        // Its spell no longer resolves, for anyone, on any instance.
        let (status, body) = app.cast(&bob, json!({"spell": HELLO})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        eventually("the other instance forgets the spell", || async {
            let response = app.client.post(other.url("/v1/cast")).bearer_auth(&bob.key)
                .json(&json!({"spell": HELLO})).send().await.expect("request");
            response.status() == StatusCode::NOT_FOUND
        }).await;
        other.stop().await;
        // The row stays, pseudonymized; the ledger is untouched and verifies.
        #[derive(sqlx::FromRow)]
        struct Row { handle: String, email: String, stripe_customer_id: Option<String>, balance_microusd: i64 }
        let row: Row = sqlx::query_as("SELECT handle, email, stripe_customer_id, balance_microusd FROM users WHERE id = $1")
            .bind(ada.id).fetch_one(app.app.db.reader()).await.expect("row");
        assert_eq!((row.handle.as_str(), row.email.as_str(), row.stripe_customer_id, row.balance_microusd),
            (format!("deleted-{}", ada.id).as_str(), "", None, balance));
        let (entries,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ledger WHERE user_id = $1")
            .bind(ada.id).fetch_one(app.app.db.reader()).await.expect("count");
        assert_eq!(entries, 2, "the grant and the cast stay");
        for table in ["api_keys", "signers", "budgets"] {
            let (left,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table} WHERE user_id = $1")))
                .bind(ada.id).fetch_one(app.app.db.reader()).await.expect("count");
            assert_eq!(left, 0, "{table}");
        }
        app.assert_money_invariants(&bob).await;
        app.assert_money_invariants(&ada).await;
        // No money stuck: what casts held comes back.
        eventually("the erased user's leases are given back", || async {
            spellhost::money::balance(&app.app.db, ada.id).await.expect("balance").held.get() == 0
        }).await;
        if matches!(backend, Backend::Sqlite) {
            let broken: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
                .fetch_all(app.app.db.reader()).await.expect("check");
            assert!(broken.is_empty(), "foreign keys intact: {broken:?}");
        }
        // Nobody takes the handle (and with it ada's spell names) again; the tombstone either.
        for handle in ["ada".to_owned(), format!("deleted-{}", ada.id)] {
            let again = spellhost::auth::create_user(&app.app.db, &handle, "new@example.com", false).await;
            assert!(again.is_err(), "{handle} is retired");
        }
        app.shutdown().await;
    }
}
