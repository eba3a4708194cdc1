//! Stripe billing against a fake Stripe API on loopback and signed webhook deliveries: top-ups,
//! refunds and disputes in both directions, in every order, duplicated and concurrent.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{Backend, TestApp, TestUser, error_code, spawn_app, spawn_app_with};
use crate::on_both_databases;
use crate::stripe_fake::{
    FakeStripe, completed_session, dispute, event, now, refund, refunded_charge, signature_header,
    v1,
};

pub const SECRET_KEY: &str = "sk_test_fake_key_0123456789";
const OLD_SECRET: &str = "whsec_old_0123456789";
const NEW_SECRET: &str = "whsec_new_0123456789";
pub const PUBLIC_URL: &str = "https://spellhost.example";

/// The server's Stripe settings, pointing at `base` (the fake).
pub fn stripe_vars(base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SPELLHOST_STRIPE_SECRET_KEY", SECRET_KEY.to_owned()),
        (
            "SPELLHOST_STRIPE_WEBHOOK_SECRET",
            format!("{OLD_SECRET},{NEW_SECRET}"),
        ),
        ("SPELLHOST_STRIPE_API_BASE", base.to_owned()),
        ("SPELLHOST_PUBLIC_URL", PUBLIC_URL.to_owned()),
    ]
}

/// The app with Stripe pointed at a fresh fake, and `extra` settings.
pub async fn billing_app_with(backend: &Backend, extra: &[(&str, &str)]) -> (TestApp, FakeStripe) {
    let (fake, base) = FakeStripe::start().await;
    let stripe = stripe_vars(&base);
    let mut vars: Vec<(&str, &str)> = stripe.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend_from_slice(extra);
    (spawn_app_with(backend, &vars).await, fake)
}

async fn billing_app(backend: &Backend, trailing_slash: bool) -> (TestApp, FakeStripe) {
    let (fake, base) = FakeStripe::start().await;
    let base = if trailing_slash {
        format!("{base}/")
    } else {
        base
    };
    let stripe = stripe_vars(&base);
    let vars: Vec<(&str, &str)> = stripe.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (spawn_app_with(backend, &vars).await, fake)
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

pub async fn deliver_signed(app: &TestApp, payload: &str) -> (StatusCode, Value) {
    deliver(
        app,
        payload,
        Some(signature_header(payload, NEW_SECRET, now())),
    )
    .await
}

/// Delivers and expects a 200 with `result`.
pub async fn delivered(app: &TestApp, payload: &str, result: &str) {
    let (status, body) = deliver_signed(app, payload).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some(result)),
        "{body}"
    );
}

/// A user who started a $5 checkout; returns (user, session id, customer id).
pub async fn checked_out(app: &TestApp, handle: &str) -> (TestUser, String, String) {
    let user = app.user(handle, 0).await;
    let (session, customer) = checkout(app, &user, 500).await;
    (user, session, customer)
}

/// A checkout of `cents` by `user`; returns (session id, customer id).
pub async fn checkout(app: &TestApp, user: &TestUser, cents: i64) -> (String, String) {
    let (status, body) = app
        .post(
            "/v1/billing/checkout",
            Some(&user.key),
            json!({"amount_usd_cents": cents}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let session = body["session_id"].as_str().expect("session").to_owned();
    (session, customer_of(app, user).await)
}

pub async fn customer_of(app: &TestApp, user: &TestUser) -> String {
    spellhost::auth::user_by_id(&app.app.db, user.id)
        .await
        .expect("user")
        .expect("exists")
        .stripe_customer_id
        .expect("customer recorded")
}

pub async fn balance(app: &TestApp, user: &TestUser) -> i64 {
    app.me(user).await["balance_microusd"]
        .as_i64()
        .expect("balance")
}

/// The recorded status and reason of an event, if it was recorded.
pub async fn recorded(app: &TestApp, id: &str) -> Option<(String, Option<String>)> {
    sqlx::query_as("SELECT status, reason FROM stripe_events WHERE id = $1")
        .bind(id)
        .fetch_optional(app.app.db.reader())
        .await
        .expect("query")
}

/// The value of one exported metric series, e.g. `spellhost_billing_alerts_total{reason="rejected"}`.
pub async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.exposition().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub use crate::helpers::eventually;

/// Every permutation of `0..n` (Heap's algorithm).
pub fn orders(n: usize) -> Vec<Vec<usize>> {
    fn heap(k: usize, items: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, items, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(n, &mut (0..n).collect(), &mut out);
    out
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
        assert_eq!(session.stripe_version.as_deref(), Some(crate::stripe_fake::API_VERSION));
        assert_eq!(session.field("mode"), Some("payment"));
        assert_eq!(session.field("customer"), Some("cus_fake1"));
        assert_eq!(session.field("line_items[0][price_data][currency]"), Some("usd"));
        assert_eq!(session.field("line_items[0][price_data][unit_amount]"), Some("500"));
        assert_eq!(session.field("line_items[0][quantity]"), Some("1"));
        // What was paid is what is credited: never presented in another currency.
        assert_eq!(session.field("adaptive_pricing[enabled]"), Some("false"));
        assert_eq!(session.field("payment_intent_data[setup_future_usage]"), None);
        assert!(session.field("success_url").is_some_and(|u| u.starts_with(PUBLIC_URL)));
        assert!(session.field("cancel_url").is_some_and(|u| u.starts_with(PUBLIC_URL)));
        assert!(session_id.starts_with("cs_test_"));

        // The customer is created once; the second checkout reuses it and may keep the card.
        let (status, _) = app.post("/v1/billing/checkout", Some(&user.key),
            json!({"amount_usd_cents": 1000, "save_payment_method": true})).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(fake.requests_to("/v1/customers").len(), 1);
        let second = &fake.requests_to("/v1/checkout/sessions")[1];
        assert_eq!(second.field("customer"), Some("cus_fake1"));
        assert_eq!(second.field("payment_intent_data[setup_future_usage]"), Some("off_session"));

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
        for path in ["/v1/billing/checkout", "/v1/billing/portal", "/v1/billing/payment-method"] {
            let (status, body) = app.post(path, Some(&user.key), json!({"amount_usd_cents": 500})).await;
            assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "billing_disabled"), "{path}");
        }
        let (status, body) = app.get("/v1/billing", Some(&user.key)).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "billing_disabled"));
        let (status, _) = deliver(&app, "{}", Some("t=1,v1=00".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
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
            // Well past the 300 s tolerance on either side, so that however long a busy machine
            // takes between here and the server's clock reading, the case stays what it says
            // (at t + 301, a delay of 1 s made the "ahead" case valid under load).
            ("400 s old", Some(signature_header(&payload, NEW_SECRET, t - 400))),
            ("400 s ahead", Some(signature_header(&payload, NEW_SECRET, t + 400))),
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
        delivered(&app, &payload, "duplicate").await;
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
        for (n, order) in orders(3).iter().enumerate() {
            let (user, session, customer) = checked_out(&app, &format!("user{n}")).await;
            let pi = format!("pi_order{n}");
            let charge = format!("ch_order{n}");
            let events = [
                event(&format!("evt_c{n}"), "checkout.session.completed", completed_session(&session, user.id, &customer, &pi, 500, "usd")),
                event(&format!("evt_r{n}"), "charge.refunded", refunded_charge(&charge, &pi, 200)),
                event(&format!("evt_d{n}"), "charge.dispute.created", dispute(&format!("dp_order{n}"), &charge, &pi, 100, "needs_response", &[-100])),
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
        delivered(&app, &euros, "not_credited").await;
        let unknown = event("evt_unknown", "invoice.created", json!({"id": "in_1", "object": "invoice"}));
        delivered(&app, &unknown, "ignored").await;
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

    async fn only_sessions_spellhost_created_are_credited(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        let (user, session, customer) = checked_out(&app, "ada").await;
        // A Payment Link (or any other product on the account) can name the user in
        // client_reference_id and metadata and use the user's customer: not a top-up.
        let foreign = event("evt_link", "checkout.session.completed",
            completed_session("cs_live_payment_link", user.id, &customer, "pi_link", 90_000, "usd"));
        delivered(&app, &foreign, "ignored").await;
        let async_foreign = event("evt_link_async", "checkout.session.async_payment_succeeded",
            completed_session("cs_live_payment_link", user.id, &customer, "pi_link", 90_000, "usd"));
        delivered(&app, &async_foreign, "ignored").await;
        assert_eq!(balance(&app, &user).await, 0);
        // Its refund is recorded and moves nothing.
        let foreign_refund = event("evt_link_refund", "charge.refunded", refunded_charge("ch_link", "pi_link", 90_000));
        delivered(&app, &foreign_refund, "pending").await;
        // spellhost's own session: unpaid first (an async payment method), then paid, credited once.
        let mut unpaid = completed_session(&session, user.id, &customer, "pi_own", 500, "usd");
        unpaid["payment_status"] = json!("unpaid");
        delivered(&app, &event("evt_own_unpaid", "checkout.session.completed", unpaid), "not_credited").await;
        let paid = completed_session(&session, user.id, &customer, "pi_own", 500, "usd");
        delivered(&app, &event("evt_own_paid", "checkout.session.async_payment_succeeded", paid.clone()), "applied").await;
        delivered(&app, &event("evt_own_again", "checkout.session.completed", paid), "ignored").await;
        assert_eq!(balance(&app, &user).await, 5_000_000);
        assert_eq!(recorded(&app, "evt_link_refund").await.map(|(s, _)| s).as_deref(), Some("pending"));
        // A session of another amount than asked for is not credited blindly.
        let (other, _) = checkout(&app, &user, 1000).await;
        let tampered = event("evt_tampered", "checkout.session.completed",
            completed_session(&other, user.id, &customer, "pi_tampered", 100_000, "usd"));
        delivered(&app, &tampered, "rejected").await;
        assert_eq!(balance(&app, &user).await, 5_000_000);
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn disputes_move_money_when_funds_move_in_every_order(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        // Won: withdrawn, then reinstated. Every order of its four events, each sent twice,
        // and the completion they depend on at every position.
        for (n, order) in orders(4).iter().enumerate() {
            let (user, session, customer) = checked_out(&app, &format!("won{n}")).await;
            let (pi, charge, dp) = (format!("pi_won{n}"), format!("ch_won{n}"), format!("dp_won{n}"));
            let events = [
                event(&format!("evt_won_created{n}"), "charge.dispute.created", dispute(&dp, &charge, &pi, 300, "needs_response", &[-300])),
                event(&format!("evt_won_withdrawn{n}"), "charge.dispute.funds_withdrawn", dispute(&dp, &charge, &pi, 300, "needs_response", &[-300])),
                event(&format!("evt_won_reinstated{n}"), "charge.dispute.funds_reinstated", dispute(&dp, &charge, &pi, 300, "won", &[-300, 300])),
                event(&format!("evt_won_closed{n}"), "charge.dispute.closed", dispute(&dp, &charge, &pi, 300, "won", &[-300, 300])),
            ];
            let completion = event(&format!("evt_won_c{n}"), "checkout.session.completed", completed_session(&session, user.id, &customer, &pi, 500, "usd"));
            let mut sequence: Vec<&String> = order.iter().map(|i| &events[*i]).collect();
            sequence.insert(n % 5, &completion);
            for payload in sequence.iter().chain(sequence.iter()) {
                let (status, body) = deliver_signed(&app, payload).await;
                assert_eq!(status, StatusCode::OK, "{order:?}: {body}");
            }
            assert_eq!(balance(&app, &user).await, 5_000_000, "won, order {order:?}");
            app.assert_money_invariants(&user).await;
        }
        // Lost: withdrawn and never returned, in every order.
        for (n, order) in orders(3).iter().enumerate() {
            let (user, session, customer) = checked_out(&app, &format!("lost{n}")).await;
            let (pi, charge, dp) = (format!("pi_lost{n}"), format!("ch_lost{n}"), format!("dp_lost{n}"));
            let events = [
                event(&format!("evt_lost_created{n}"), "charge.dispute.created", dispute(&dp, &charge, &pi, 200, "needs_response", &[-200])),
                event(&format!("evt_lost_withdrawn{n}"), "charge.dispute.funds_withdrawn", dispute(&dp, &charge, &pi, 200, "needs_response", &[-200])),
                event(&format!("evt_lost_closed{n}"), "charge.dispute.closed", dispute(&dp, &charge, &pi, 200, "lost", &[-200])),
            ];
            delivered(&app, &event(&format!("evt_lost_c{n}"), "checkout.session.completed", completed_session(&session, user.id, &customer, &pi, 500, "usd")), "applied").await;
            for index in order {
                assert_eq!(deliver_signed(&app, &events[*index]).await.0, StatusCode::OK);
            }
            assert_eq!(balance(&app, &user).await, 3_000_000, "lost, order {order:?}");
        }
        // An inquiry withdraws nothing and moves nothing.
        let (user, session, customer) = checked_out(&app, "inquiry").await;
        delivered(&app, &event("evt_inq_c", "checkout.session.completed", completed_session(&session, user.id, &customer, "pi_inq", 500, "usd")), "applied").await;
        delivered(&app, &event("evt_inq_created", "charge.dispute.created", dispute("dp_inq", "ch_inq", "pi_inq", 500, "warning_needs_response", &[])), "ignored").await;
        delivered(&app, &event("evt_inq_closed", "charge.dispute.closed", dispute("dp_inq", "ch_inq", "pi_inq", 500, "warning_closed", &[])), "ignored").await;
        assert_eq!(balance(&app, &user).await, 5_000_000);
        app.assert_money_invariants(&user).await;
        let references: Vec<(String, i64)> = sqlx::query_as(
            "SELECT reference, amount_microusd FROM ledger WHERE reference LIKE 'stripe:dp_won0:%' ORDER BY seq")
            .fetch_all(app.app.db.reader()).await.expect("entries");
        assert_eq!(references, [("stripe:dp_won0:withdrawn".to_owned(), -3_000_000), ("stripe:dp_won0:reinstated".to_owned(), 3_000_000)]);
        app.shutdown().await;
    }

    async fn a_refund_that_fails_after_its_debit_is_credited_back_in_every_order(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        for (n, order) in orders(3).iter().enumerate() {
            let (user, session, customer) = checked_out(&app, &format!("user{n}")).await;
            let (pi, charge) = (format!("pi_rf{n}"), format!("ch_rf{n}"));
            let events = [
                event(&format!("evt_rf_c{n}"), "checkout.session.completed", completed_session(&session, user.id, &customer, &pi, 500, "usd")),
                event(&format!("evt_rf_r{n}"), "charge.refunded", refunded_charge(&charge, &pi, 200)),
                event(&format!("evt_rf_failed{n}"), "charge.refund.updated", refund(&format!("re_rf{n}"), &charge, &pi, 200, "failed")),
            ];
            for index in order {
                assert_eq!(deliver_signed(&app, &events[*index]).await.0, StatusCode::OK, "{order:?}");
            }
            for payload in &events {
                delivered(&app, payload, "duplicate").await;
            }
            assert_eq!(balance(&app, &user).await, 5_000_000, "order {order:?}");
            // A second refund, of $1.00, that succeeds: the charge's total counts both.
            delivered(&app, &event(&format!("evt_rf_ok{n}"), "charge.refund.updated", refund(&format!("re_ok{n}"), &charge, &pi, 100, "succeeded")), "ignored").await;
            delivered(&app, &event(&format!("evt_rf_r2{n}"), "charge.refunded", refunded_charge(&charge, &pi, 300)), "applied").await;
            assert_eq!(balance(&app, &user).await, 4_000_000, "order {order:?}");
            // A canceled refund is credited back like a failed one.
            delivered(&app, &event(&format!("evt_rf_canceled{n}"), "charge.refund.updated", refund(&format!("re_ok{n}"), &charge, &pi, 100, "canceled")), "applied").await;
            assert_eq!(balance(&app, &user).await, 5_000_000, "order {order:?}");
            app.assert_money_invariants(&user).await;
        }
        app.shutdown().await;
    }

    async fn every_event_at_once_ends_at_the_same_balance(backend) {
        let (app, _fake) = billing_app(&backend, false).await;
        let (user, session, customer) = checked_out(&app, "ada").await;
        let (pi, charge) = ("pi_storm", "ch_storm");
        let events = [
            event("evt_s_c", "checkout.session.completed", completed_session(&session, user.id, &customer, pi, 500, "usd")),
            event("evt_s_async", "checkout.session.async_payment_succeeded", completed_session(&session, user.id, &customer, pi, 500, "usd")),
            event("evt_s_r1", "charge.refunded", refunded_charge(charge, pi, 100)),
            event("evt_s_r2", "charge.refunded", refunded_charge(charge, pi, 150)),
            event("evt_s_failed", "charge.refund.updated", refund("re_storm", charge, pi, 50, "failed")),
            event("evt_s_dc", "charge.dispute.created", dispute("dp_storm", charge, pi, 100, "needs_response", &[-100])),
            event("evt_s_dw", "charge.dispute.funds_withdrawn", dispute("dp_storm", charge, pi, 100, "needs_response", &[-100])),
        ];
        // Each event five times, all at once.
        let deliveries = events.iter().cycle().take(events.len() * 5).map(|payload| deliver_signed(&app, payload));
        let results = futures::future::join_all(deliveries).await;
        assert!(results.iter().all(|(status, _)| *status == StatusCode::OK), "{results:?}");
        // $5.00 − ($1.50 refunded − $0.50 failed) − $1.00 disputed.
        assert_eq!(balance(&app, &user).await, 3_000_000);
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }
}
