//! Stripe billing against a fake Stripe API on loopback and signed webhook deliveries.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{Backend, TestApp, TestUser, error_code, spawn_app, spawn_app_with};
use crate::on_both_databases;
use crate::stripe_fake::{
    FakeStripe, completed_session, dispute, event, now, refunded_charge, signature_header, v1,
};

const SECRET_KEY: &str = "sk_test_fake_key_0123456789";
const OLD_SECRET: &str = "whsec_old_0123456789";
const NEW_SECRET: &str = "whsec_new_0123456789";
const PUBLIC_URL: &str = "https://spellhost.example";

async fn billing_app(backend: &Backend, trailing_slash: bool) -> (TestApp, FakeStripe) {
    let (fake, base) = FakeStripe::start().await;
    let base = if trailing_slash {
        format!("{base}/")
    } else {
        base
    };
    let secrets = format!("{OLD_SECRET},{NEW_SECRET}");
    let app = spawn_app_with(
        backend,
        &[
            ("SPELLHOST_STRIPE_SECRET_KEY", SECRET_KEY),
            ("SPELLHOST_STRIPE_WEBHOOK_SECRET", secrets.as_str()),
            ("SPELLHOST_STRIPE_API_BASE", base.as_str()),
            ("SPELLHOST_PUBLIC_URL", PUBLIC_URL),
        ],
    )
    .await;
    (app, fake)
}

async fn deliver(app: &TestApp, payload: &str, header: Option<String>) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url("/webhooks/stripe"))
        .body(payload.to_owned());
    if let Some(header) = header {
        request = request.header("Stripe-Signature", header);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn deliver_signed(app: &TestApp, payload: &str) -> (StatusCode, Value) {
    deliver(
        app,
        payload,
        Some(signature_header(payload, NEW_SECRET, now())),
    )
    .await
}

/// A user who started a $5 checkout; returns (user, session id, customer id).
async fn checked_out(app: &TestApp, handle: &str) -> (TestUser, String, String) {
    let user = app.user(handle, 0).await;
    let (status, body) = app
        .post(
            "/v1/billing/checkout",
            Some(&user.key),
            json!({"amount_usd_cents": 500}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let session = body["session_id"].as_str().expect("session").to_owned();
    let customer = spellhost::auth::user_by_id(&app.app.db, user.id)
        .await
        .expect("user")
        .expect("exists")
        .stripe_customer_id
        .expect("customer recorded");
    (user, session, customer)
}

async fn balance(app: &TestApp, user: &TestUser) -> i64 {
    app.me(user).await["balance_microusd"]
        .as_i64()
        .expect("balance")
}

on_both_databases! {
    async fn checkout_creates_the_customer_once_and_a_payment_session(backend) {
        let (app, fake) = billing_app(&backend, false).await;
        let user = app.user("ada", 0).await;
        let (status, body) = app.post("/v1/billing/checkout", Some(&user.key), json!({"amount_usd_cents": 500})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(body["checkout_url"].as_str().is_some_and(|u| u.starts_with("https://checkout.stripe.com/")));
        let session_id = body["session_id"].as_str().expect("session id");

        let customers = fake.requests_to("/v1/customers");
        assert_eq!(customers.len(), 1);
        assert_eq!(customers[0].authorization, format!("Bearer {SECRET_KEY}"));
        assert_eq!(customers[0].field("email"), Some("ada@example.com"));
        assert_eq!(customers[0].field("metadata[spellhost_user_id]"), Some(user.id.to_string().as_str()));

        let sessions = fake.requests_to("/v1/checkout/sessions");
        assert_eq!(sessions.len(), 1);
        let session = &sessions[0];
        assert_eq!(session.authorization, format!("Bearer {SECRET_KEY}"));
        assert_eq!(session.field("mode"), Some("payment"));
        assert_eq!(session.field("customer"), Some("cus_fake1"));
        assert_eq!(session.field("client_reference_id"), Some(user.id.to_string().as_str()));
        assert_eq!(session.field("metadata[spellhost_user_id]"), Some(user.id.to_string().as_str()));
        assert_eq!(session.field("line_items[0][price_data][currency]"), Some("usd"));
        assert_eq!(session.field("line_items[0][price_data][unit_amount]"), Some("500"));
        assert_eq!(session.field("line_items[0][quantity]"), Some("1"));
        assert!(session.field("success_url").is_some_and(|u| u.starts_with(PUBLIC_URL)));
        assert!(session.field("cancel_url").is_some_and(|u| u.starts_with(PUBLIC_URL)));
        assert!(session_id.starts_with("cs_test_"));

        // The customer is created once; the second checkout reuses it.
        let (status, _) = app.post("/v1/billing/checkout", Some(&user.key), json!({"amount_usd_cents": 1000})).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(fake.requests_to("/v1/customers").len(), 1);
        assert_eq!(fake.requests_to("/v1/checkout/sessions")[1].field("customer"), Some("cus_fake1"));

        for cents in [0, 49, 1_000_000_000] {
            let (status, body) = app.post("/v1/billing/checkout", Some(&user.key), json!({"amount_usd_cents": cents})).await;
            assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "amount_out_of_range"), "{cents}");
        }
        app.shutdown().await;
    }

    async fn the_portal_needs_a_billing_account(backend) {
        let (app, fake) = billing_app(&backend, true).await;
        let newcomer = app.user("bob", 0).await;
        let (status, body) = app.post("/v1/billing/portal", Some(&newcomer.key), json!({})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "no_billing_account"));
        let (user, _, customer) = checked_out(&app, "ada").await;
        let (status, body) = app.post("/v1/billing/portal", Some(&user.key), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["url"], "https://billing.stripe.com/p/session/fake");
        let portal = &fake.requests_to("/v1/billing_portal/sessions")[0];
        assert_eq!(portal.field("customer"), Some(customer.as_str()));
        assert!(portal.field("return_url").is_some_and(|u| u.starts_with(PUBLIC_URL)));
        assert_eq!(portal.authorization, format!("Bearer {SECRET_KEY}"));
        app.shutdown().await;
    }

    async fn without_stripe_keys_billing_is_disabled(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        for path in ["/v1/billing/checkout", "/v1/billing/portal"] {
            let (status, body) = app.post(path, Some(&user.key), json!({"amount_usd_cents": 500})).await;
            assert_eq!((status, error_code(&body)), (StatusCode::SERVICE_UNAVAILABLE, "billing_disabled"), "{path}");
        }
        let (status, _) = deliver(&app, "{}", Some("t=1,v1=00".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        app.shutdown().await;
    }

    async fn webhook_signatures_are_checked_before_anything_else(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        let (user, session, customer) = checked_out(&app, "ada").await;
        let payload = event("evt_sig", "checkout.session.completed", completed_session(&session, user.id, &customer, "pi_sig", 500, "usd"));
        let t = now();
        let mut changed = payload.clone();
        changed.replace_range(changed.len() - 2..changed.len() - 1, " ");
        let refused = [
            ("wrong secret", Some(signature_header(&payload, "whsec_wrong_0123456789", t))),
            ("body changed by one byte", Some(signature_header(&payload, NEW_SECRET, t))),
            ("301 s old", Some(signature_header(&payload, NEW_SECRET, t - 301))),
            ("301 s ahead", Some(signature_header(&payload, NEW_SECRET, t + 301))),
            ("missing", None),
            ("garbage", Some("t=abc,v1=zz".to_owned())),
        ];
        for (case, header) in refused {
            let body = if case == "body changed by one byte" { changed.as_str() } else { payload.as_str() };
            let (status, response) = deliver(&app, body, header).await;
            assert_eq!((status, error_code(&response)), (StatusCode::BAD_REQUEST, "signature_invalid"), "{case}");
        }
        let (recorded,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM stripe_events").fetch_one(app.app.db.reader()).await.expect("count");
        assert_eq!(recorded, 0, "nothing recorded for a bad signature");
        assert_eq!(balance(&app, &user).await, 0);

        // Two v1 signatures, one valid; and the old secret of a rotation still accepted.
        let two = format!("t={t},v1={},v1={}", v1(&payload, "whsec_wrong_0123456789", t), v1(&payload, OLD_SECRET, t));
        let (status, response) = deliver(&app, &payload, Some(two)).await;
        assert_eq!(status, StatusCode::OK, "{response}");
        assert_eq!(response["result"], "applied");
        assert_eq!(balance(&app, &user).await, 5_000_000);
        // The same event again (signed with the new secret): no effect.
        let (status, response) = deliver_signed(&app, &payload).await;
        assert_eq!((status, response["result"].as_str()), (StatusCode::OK, Some("duplicate")));
        assert_eq!(balance(&app, &user).await, 5_000_000);
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn one_event_delivered_twenty_times_at_once_credits_once(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        let (user, session, customer) = checked_out(&app, "ada").await;
        let payload = event("evt_dup", "checkout.session.completed", completed_session(&session, user.id, &customer, "pi_dup", 500, "usd"));
        let deliveries = (0..20).map(|_| deliver_signed(&app, &payload));
        let results = futures::future::join_all(deliveries).await;
        assert!(results.iter().all(|(status, _)| *status == StatusCode::OK), "{results:?}");
        let applied = results.iter().filter(|(_, body)| body["result"] == "applied").count();
        assert_eq!(applied, 1, "{results:?}");
        assert_eq!(balance(&app, &user).await, 5_000_000);
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn completion_refund_and_dispute_end_at_the_same_balance_in_every_order(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        let orders: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        for (n, order) in orders.iter().enumerate() {
            let (user, session, customer) = checked_out(&app, &format!("user{n}")).await;
            let pi = format!("pi_order{n}");
            let charge = format!("ch_order{n}");
            let events = [
                event(&format!("evt_c{n}"), "checkout.session.completed", completed_session(&session, user.id, &customer, &pi, 500, "usd")),
                event(&format!("evt_r{n}"), "charge.refunded", refunded_charge(&charge, &pi, 200)),
                event(&format!("evt_d{n}"), "charge.dispute.created", dispute(&format!("dp_order{n}"), &charge, &pi, 100)),
            ];
            for index in order {
                let (status, body) = deliver_signed(&app, &events[*index]).await;
                assert_eq!(status, StatusCode::OK, "{order:?}: {body}");
            }
            // $5.00 paid, $2.00 refunded, $1.00 disputed.
            assert_eq!(balance(&app, &user).await, 2_000_000, "order {order:?}");
            // A later partial refund carries the running total: only the new $0.50 is debited.
            let later = event(&format!("evt_r2_{n}"), "charge.refunded", refunded_charge(&charge, &pi, 250));
            assert_eq!(deliver_signed(&app, &later).await.0, StatusCode::OK);
            assert_eq!(balance(&app, &user).await, 1_500_000, "order {order:?}");
            app.assert_money_invariants(&user).await;
        }
        let kinds: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT kind FROM ledger ORDER BY kind").fetch_all(app.app.db.reader()).await.expect("kinds");
        assert_eq!(kinds.into_iter().map(|(k,)| k).collect::<Vec<_>>(), ["dispute", "refund", "topup"]);
        app.shutdown().await;
    }

    async fn other_currencies_and_unknown_events_are_recorded_not_credited(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        let (user, session, customer) = checked_out(&app, "ada").await;
        let euros = event("evt_eur", "checkout.session.completed", completed_session(&session, user.id, &customer, "pi_eur", 500, "eur"));
        let (status, body) = deliver_signed(&app, &euros).await;
        assert_eq!((status, body["result"].as_str()), (StatusCode::OK, Some("not_credited")));
        let unknown = event("evt_unknown", "invoice.created", json!({"id": "in_1", "object": "invoice"}));
        let (status, body) = deliver_signed(&app, &unknown).await;
        assert_eq!((status, body["result"].as_str()), (StatusCode::OK, Some("ignored")));
        let (recorded,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM stripe_events").fetch_one(app.app.db.reader()).await.expect("count");
        assert_eq!(recorded, 2);
        assert_eq!(balance(&app, &user).await, 0);
        app.shutdown().await;
    }

    async fn the_402_body_points_at_the_checkout_endpoint(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        let publisher = app.user("ada", 0).await;
        app.publish_examples(&publisher, &["hello"]).await;
        let (status, body) = app.cast(&publisher, json!({"spell": "ada/hello", "input": {"name": "Ada"}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::PAYMENT_REQUIRED, "budget_exhausted"));
        // A request the client can send as is: the shortfall, within the top-up bounds.
        assert_eq!(body["error"]["topup"]["method"], "POST");
        assert_eq!(body["error"]["topup"]["url"], format!("{PUBLIC_URL}/v1/billing/checkout"));
        assert_eq!(body["error"]["topup"]["body"]["amount_usd_cents"], 500, "{body}");
        app.shutdown().await;
    }
}
