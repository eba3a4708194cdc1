//! Saving a card and automatic recharge, against the fake Stripe: one payment intent per
//! threshold crossing under concurrent casts, a credit only from the webhook and only once, a
//! decline that disables, the daily limit, and a crash between creation and webhook.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{Backend, TestApp, TestUser, error_code};
use crate::billing::{
    balance, billing_app_with, customer_of, delivered, eventually, orders, recorded,
};
use crate::on_both_databases;
use crate::stripe_fake::{
    FakeStripe, IntentMode, completed_setup_session, event, event_at, now, payment_intent_object,
    payment_method, setup_intent,
};

/// A user with `credit_microusd` and a saved card (`pm_<handle>`), saved the way a browser
/// would: a setup-mode Checkout, then Stripe's events.
async fn with_card(
    app: &TestApp,
    fake: &FakeStripe,
    handle: &str,
    credit_microusd: i64,
) -> TestUser {
    let user = app.user(handle, credit_microusd).await;
    let (status, body) = app
        .post("/v1/billing/payment-method", Some(&user.key), json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let session = body["session_id"].as_str().expect("session").to_owned();
    let request = fake
        .requests_to("/v1/checkout/sessions")
        .pop()
        .expect("session request");
    assert_eq!(request.field("mode"), Some("setup"));
    assert_eq!(request.field("currency"), Some("usd"));
    let customer = customer_of(app, &user).await;
    assert_eq!(request.field("customer"), Some(customer.as_str()));
    let (seti, pm) = (format!("seti_{handle}"), format!("pm_{handle}"));
    delivered(
        app,
        &event(
            &format!("evt_seti_{handle}"),
            "setup_intent.succeeded",
            setup_intent(&seti, &customer, Some(&pm), "succeeded"),
        ),
        "applied",
    )
    .await;
    delivered(
        app,
        &event(
            &format!("evt_pm_{handle}"),
            "payment_method.attached",
            payment_method(&pm, Some(&customer), "visa", "4242"),
        ),
        "applied",
    )
    .await;
    delivered(
        app,
        &event(
            &format!("evt_cs_{handle}"),
            "checkout.session.completed",
            completed_setup_session(&session, &customer, &seti),
        ),
        "ignored",
    )
    .await;
    user
}

async fn billing(app: &TestApp, user: &TestUser) -> Value {
    let (status, body) = app.get("/v1/billing", Some(&user.key)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn put_auto_recharge(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .put(app.url("/v1/billing/auto-recharge"))
        .bearer_auth(&user.key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn enable(
    app: &TestApp,
    user: &TestUser,
    threshold_microusd: i64,
    cents: i64,
    max_per_day: i64,
) {
    let (status, body) = put_auto_recharge(app, user, json!({"enabled": true,
        "threshold_microusd": threshold_microusd, "amount_usd_cents": cents, "max_per_day": max_per_day})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["auto_recharge"]["enabled"], true, "{body}");
}

/// The user's recharge attempts, oldest first: (state, payment intent).
async fn recharges(app: &TestApp, user: &TestUser) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT state, payment_intent_id FROM recharges WHERE user_id = $1 ORDER BY created_at_ms, id")
        .bind(user.id)
        .fetch_all(app.app.db.reader())
        .await
        .expect("recharges")
}

async fn cast(app: &TestApp, user: &TestUser) {
    let (status, body) = app
        .cast(
            user,
            json!({"spell": "ada/hello", "input": {"name": "Ada"}, "max_fuel": 1_000_000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A `payment_intent.succeeded` event for the fake's `n`th payment intent.
fn succeeded(fake: &FakeStripe, n: usize, event_id: &str) -> String {
    let intents = fake.payment_intents();
    let Some(intent) = intents.get(n) else {
        panic!(
            "payment intent {n} was never created at the fake ({} were)",
            intents.len()
        );
    };
    let mut intent = intent.clone();
    intent["status"] = json!("succeeded");
    intent["amount_received"] = intent["amount"].clone();
    event(event_id, "payment_intent.succeeded", intent)
}

async fn recharge_now(app: &TestApp, user: &TestUser) -> Option<String> {
    let billing = app.app.billing.as_ref().expect("billing");
    spellhost::billing::recharge_now(&app.app, billing, user.id)
        .await
        .expect("decides")
}

/// An app whose users can cast `ada/hello`, at `prices`.
async fn casting_app(backend: &Backend, prices: &[(&str, &str)]) -> (TestApp, FakeStripe) {
    let (app, fake) = billing_app_with(backend, prices).await;
    let publisher = app.user("ada", 0).await;
    app.publish_examples(&publisher, &["hello"]).await;
    (app, fake)
}

/// A user whose recharge Stripe created while the answer never arrived: as far as the
/// database knows, the instance crashed in the middle of the request. Returns the app, the
/// fake, the user and their balance then.
async fn hung_recharge(backend: &Backend) -> (TestApp, FakeStripe, TestUser, i64) {
    let (app, fake) = casting_app(backend, PRICES).await;
    let user = with_card(&app, &fake, "bob", 1_000_000).await;
    fake.set_intent_mode(IntentMode::Hang);
    enable(&app, &user, 1_000_000, 1000, 5).await;
    cast(&app, &user).await;
    eventually("the creation", || async {
        fake.requests_to("/v1/payment_intents").len() == 1
    })
    .await;
    assert_eq!(
        recharges(&app, &user).await,
        [("creating".to_owned(), None)]
    );
    let before = balance(&app, &user).await;
    (app, fake, user, before)
}

/// Costs: $0.001 a cast (the base fee; fuel is a rounding error), so balances stay readable.
const PRICES: &[(&str, &str)] = &[("SPELLHOST_CAST_BASE_FEE_MICROUSD", "1000")];

on_both_databases! {
    async fn a_card_is_saved_by_webhook_in_any_order_and_shown(backend) {
        let (app, fake) = billing_app_with(&backend, PRICES).await;
        let newcomer = app.user("newcomer", 0).await;
        let (status, body) = put_auto_recharge(&app, &newcomer, json!({"enabled": true,
            "threshold_microusd": 1_000_000, "amount_usd_cents": 1000, "max_per_day": 2})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "no_payment_method"));
        for (body, code) in [
            (json!({"enabled": true, "threshold_microusd": 1}), "invalid_auto_recharge"),
            (json!({"enabled": true, "threshold_microusd": -1, "amount_usd_cents": 1000, "max_per_day": 2}), "invalid_auto_recharge"),
            (json!({"enabled": true, "threshold_microusd": 1, "amount_usd_cents": 1000, "max_per_day": 0}), "invalid_auto_recharge"),
            (json!({"enabled": true, "threshold_microusd": 1, "amount_usd_cents": 10, "max_per_day": 1}), "amount_out_of_range"),
        ] {
            let (status, response) = put_auto_recharge(&app, &newcomer, body.clone()).await;
            assert_eq!((status, error_code(&response)), (StatusCode::UNPROCESSABLE_ENTITY, code), "{body}");
        }

        // The card's details and its confirmation, in both orders.
        for (n, order) in orders(2).iter().enumerate() {
            let user = app.user(&format!("user{n}"), 0).await;
            let (status, _) = app.post("/v1/billing/payment-method", Some(&user.key), json!({})).await;
            assert_eq!(status, StatusCode::CREATED);
            let customer = customer_of(&app, &user).await;
            let pm = format!("pm_order{n}");
            let events = [
                event(&format!("evt_seti{n}"), "setup_intent.succeeded", setup_intent(&format!("seti{n}"), &customer, Some(&pm), "succeeded")),
                event(&format!("evt_attached{n}"), "payment_method.attached", payment_method(&pm, Some(&customer), "mastercard", "4444")),
            ];
            for index in order {
                delivered(&app, &events[*index], "applied").await;
            }
            let view = billing(&app, &user).await;
            assert_eq!(view["payment_method"], json!({"brand": "mastercard", "last4": "4444", "exp_month": 8, "exp_year": 2030}), "{order:?}");
        }

        // The latest card wins whatever order its events come in; a detached card is dropped
        // and disables auto-recharge.
        let user = with_card(&app, &fake, "ada", 0).await;
        let customer = customer_of(&app, &user).await;
        let newer = event_at("evt_newer", "setup_intent.succeeded", setup_intent("seti_new", &customer, Some("pm_new"), "succeeded"), now() + 10);
        let older = event_at("evt_older", "setup_intent.succeeded", setup_intent("seti_old", &customer, Some("pm_old"), "succeeded"), now() - 10);
        delivered(&app, &newer, "applied").await;
        delivered(&app, &older, "applied").await;
        delivered(&app, &event("evt_new_attached", "payment_method.attached", payment_method("pm_new", Some(&customer), "amex", "0005")), "applied").await;
        assert_eq!(billing(&app, &user).await["payment_method"]["last4"], "0005");
        // A setup intent on another customer, or one that did not succeed, saves nothing.
        delivered(&app, &event("evt_foreign", "setup_intent.succeeded", setup_intent("seti_f", "cus_someone_else", Some("pm_f"), "succeeded")), "ignored").await;
        delivered(&app, &event("evt_failed_setup", "setup_intent.setup_failed", setup_intent("seti_x", &customer, None, "requires_payment_method")), "ignored").await;
        enable(&app, &user, 0, 1000, 2).await;
        delivered(&app, &event("evt_detached", "payment_method.detached", payment_method("pm_new", None, "amex", "0005")), "applied").await;
        let view = billing(&app, &user).await;
        assert_eq!(view["payment_method"], Value::Null, "{view}");
        assert_eq!(view["auto_recharge"]["enabled"], false, "{view}");
        assert_eq!(view["auto_recharge"]["disabled_reason"], "the saved payment method was removed");
        // A late event cannot bring a detached card back.
        delivered(&app, &event_at("evt_late", "setup_intent.succeeded", setup_intent("seti_new", &customer, Some("pm_new"), "succeeded"), now() + 20), "ignored").await;
        assert_eq!(billing(&app, &user).await["payment_method"], Value::Null);

        // A top-up that keeps its card saves it when its payment succeeds.
        let keeper = app.user("keeper", 0).await;
        let (status, _) = app.post("/v1/billing/checkout", Some(&keeper.key), json!({"amount_usd_cents": 500, "save_payment_method": true})).await;
        assert_eq!(status, StatusCode::CREATED);
        let keeper_customer = customer_of(&app, &keeper).await;
        let intent = payment_intent_object("pi_keep", &keeper_customer, "pm_keep", 500, "succeeded", json!({}), Some("off_session"));
        delivered(&app, &event("evt_keep", "payment_intent.succeeded", intent), "applied").await;
        delivered(&app, &event("evt_keep_pm", "payment_method.attached", payment_method("pm_keep", Some(&keeper_customer), "visa", "1881")), "applied").await;
        assert_eq!(billing(&app, &keeper).await["payment_method"]["last4"], "1881");
        assert_eq!(balance(&app, &keeper).await, 0, "only the session's completion credits a top-up");
        app.shutdown().await;
    }

    async fn crossing_the_threshold_under_64_concurrent_casts_creates_one_payment_intent(backend) {
        let (app, fake) = casting_app(&backend, PRICES).await;
        let user = with_card(&app, &fake, "bob", 10_000_000).await;
        // Just below $10: the first settlement crosses it.
        enable(&app, &user, 9_999_999, 1000, 5).await;
        let casts = (0..64).map(|_| cast(&app, &user));
        futures::future::join_all(casts).await;
        eventually("a recharge in flight", || async {
            recharges(&app, &user).await.first().is_some_and(|(state, _)| state == "pending")
        }).await;
        let requests = fake.requests_to("/v1/payment_intents");
        assert_eq!(requests.len(), 1, "one payment intent in flight per user");
        let request = &requests[0];
        let customer = customer_of(&app, &user).await;
        assert_eq!(request.field("amount"), Some("1000"));
        assert_eq!(request.field("currency"), Some("usd"));
        assert_eq!(request.field("customer"), Some(customer.as_str()));
        assert_eq!(request.field("payment_method"), Some("pm_bob"));
        assert_eq!(request.field("off_session"), Some("true"));
        assert_eq!(request.field("confirm"), Some("true"));
        let recharge_id = request.field("metadata[spellhost_recharge_id]").expect("recharge id");
        assert_eq!(request.idempotency_key, Some(format!("spellhost-recharge-{recharge_id}")));
        // Created is not paid: no credit before the webhook.
        let before = balance(&app, &user).await;
        assert!(before < 9_999_999, "{before}");
        assert_eq!(billing(&app, &user).await["auto_recharge"]["in_flight"], true);

        // The webhook credits once, delivered many times at once.
        let payload = succeeded(&fake, 0, "evt_recharged");
        let deliveries = (0..10).map(|_| crate::billing::deliver_signed(&app, &payload));
        let results = futures::future::join_all(deliveries).await;
        assert_eq!(results.iter().filter(|(_, body)| body["result"] == "applied").count(), 1, "{results:?}");
        delivered(&app, &succeeded(&fake, 0, "evt_recharged_again"), "ignored").await;
        assert_eq!(balance(&app, &user).await, before + 10_000_000);
        assert_eq!(fake.requests_to("/v1/payment_intents").len(), 1);
        let view = billing(&app, &user).await;
        assert_eq!(view["auto_recharge"]["in_flight"], false, "{view}");
        assert_eq!(view["auto_recharge"]["recharges_today"], 1, "{view}");
        assert_eq!(view["topups"][0]["kind"], "auto_recharge", "{view}");
        assert_eq!(view["topups"][0]["state"], "succeeded", "{view}");
        assert_eq!(recharges(&app, &user).await.len(), 1);
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn a_decline_or_a_card_asking_for_authentication_disables_and_says_why(backend) {
        let (app, fake) = casting_app(&backend, PRICES).await;
        let user = with_card(&app, &fake, "bob", 1_000_000).await;
        fake.set_intent_mode(IntentMode::Decline);
        enable(&app, &user, 1_000_000, 500, 5).await;
        cast(&app, &user).await;
        eventually("the decline", || async { billing(&app, &user).await["auto_recharge"]["enabled"] == false }).await;
        let view = billing(&app, &user).await;
        let reason = view["auto_recharge"]["disabled_reason"].as_str().expect("a reason").to_owned();
        assert!(reason.contains("card_declined") && reason.contains("insufficient_funds"), "{reason}");
        assert_eq!(view["topups"][0]["state"], "failed", "{view}");
        let declined = fake.payment_intents()[0]["id"].as_str().map(str::to_owned);
        assert_eq!(recharges(&app, &user).await[0].1, declined, "the declined payment intent is kept");
        // Disabled: nothing more is asked of Stripe.
        cast(&app, &user).await;
        assert_eq!(recharge_now(&app, &user).await, None);
        assert_eq!(fake.requests_to("/v1/payment_intents").len(), 1);
        let balance_now = balance(&app, &user).await;

        // Enabled again, the card asks for authentication: disabled again, with that reason.
        fake.set_intent_mode(IntentMode::AuthenticationRequired);
        enable(&app, &user, 1_000_000, 500, 5).await;
        eventually("the second refusal", || async { recharges(&app, &user).await.len() == 2
            && billing(&app, &user).await["auto_recharge"]["enabled"] == false }).await;
        let reason = billing(&app, &user).await["auto_recharge"]["disabled_reason"].as_str().unwrap_or_default().to_owned();
        assert!(reason.contains("authentication_required"), "{reason}");

        // A payment that fails later (a bank debit), by webhook: disabled, nothing credited.
        fake.set_intent_mode(IntentMode::Processing);
        enable(&app, &user, 1_000_000, 500, 5).await;
        eventually("a processing recharge", || async {
            recharges(&app, &user).await.get(2).is_some_and(|(state, _)| state == "pending")
        }).await;
        let mut intent = fake.payment_intents()[2].clone();
        intent["status"] = json!("requires_payment_method");
        intent["last_payment_error"] = json!({"type": "card_error", "code": "card_declined", "decline_code": "generic_decline", "message": "Your card was declined."});
        delivered(&app, &event("evt_pi_failed", "payment_intent.payment_failed", intent.clone()), "applied").await;
        delivered(&app, &event("evt_pi_failed_again", "payment_intent.payment_failed", intent), "ignored").await;
        let view = billing(&app, &user).await;
        assert_eq!(view["auto_recharge"]["enabled"], false);
        assert!(view["auto_recharge"]["disabled_reason"].as_str().is_some_and(|r| r.contains("generic_decline")), "{view}");
        assert_eq!(balance(&app, &user).await, balance_now);
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn no_more_recharges_a_day_than_allowed(backend) {
        // $1 a cast, so a few casts spend a recharge.
        let (app, fake) = casting_app(&backend, &[("SPELLHOST_CAST_BASE_FEE_MICROUSD", "1000000")]).await;
        let user = with_card(&app, &fake, "bob", 3_000_000).await;
        enable(&app, &user, 2_500_000, 500, 1).await;
        cast(&app, &user).await;
        // The recharge row is written before its payment intent is asked for: wait until the
        // intent is recorded (pending), or the fake may not have created it yet.
        eventually("the first recharge", || async {
            recharges(&app, &user).await.first().is_some_and(|(state, _)| state == "pending")
        }).await;
        delivered(&app, &succeeded(&fake, 0, "evt_first"), "applied").await;
        // Spend it: below the threshold again, and today's one recharge is used.
        while balance(&app, &user).await >= 2_500_000 {
            cast(&app, &user).await;
        }
        assert_eq!(recharge_now(&app, &user).await, None);
        assert_eq!(recharges(&app, &user).await.len(), 1);
        assert_eq!(billing(&app, &user).await["auto_recharge"]["recharges_today"], 1);
        // Allowed two a day: the second comes.
        enable(&app, &user, 2_500_000, 500, 2).await;
        // The recharge row is written before its payment intent is asked for: wait for both.
        let intent_keys = || -> std::collections::BTreeSet<_> {
            fake.requests_to("/v1/payment_intents").into_iter().map(|r| r.idempotency_key).collect()
        };
        eventually("the second recharge", || async {
            recharges(&app, &user).await.len() == 2 && intent_keys().len() >= 2
        }).await;
        // Two payment intents asked for (a creation retried on a busy machine repeats its
        // idempotency key: the same intent, not a third).
        assert_eq!(recharges(&app, &user).await.len(), 2);
        let keys = intent_keys();
        assert_eq!(keys.len(), 2, "{keys:?}");
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn a_crash_after_creation_retries_with_the_same_key_and_credits_once(backend) {
        let (app, fake, user, before) = hung_recharge(&backend).await;

        // Another instance starts: it retries the creation with the same idempotency key and
        // gets the same payment intent, not a second one.
        let other = app.second_instance().await;
        eventually("the retry", || async {
            recharges(&app, &user).await.first().is_some_and(|(state, _)| state == "pending")
        }).await;
        let requests = fake.requests_to("/v1/payment_intents");
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].idempotency_key, requests[1].idempotency_key);
        assert_eq!(fake.payment_intents().len(), 1, "one payment intent at Stripe");
        let intent_id = fake.payment_intents()[0]["id"].as_str().expect("id").to_owned();
        assert_eq!(recharges(&app, &user).await[0].1.as_deref(), Some(intent_id.as_str()));
        assert_eq!(balance(&app, &user).await, before, "nothing credited before the webhook");
        delivered(&app, &succeeded(&fake, 0, "evt_after_crash"), "applied").await;
        delivered(&app, &succeeded(&fake, 0, "evt_after_crash"), "duplicate").await;
        assert_eq!(balance(&app, &user).await, before + 10_000_000);
        other.stop().await;
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }

    async fn a_webhook_before_the_creation_was_recorded_credits_once(backend) {
        let (app, fake, user, before) = hung_recharge(&backend).await;
        // The payment succeeded and its webhook arrives while the creation is unrecorded: it
        // is recognised by the recharge id spellhost set as metadata.
        delivered(&app, &succeeded(&fake, 0, "evt_early"), "applied").await;
        assert_eq!(balance(&app, &user).await, before + 10_000_000);
        let intent_id = fake.payment_intents()[0]["id"].as_str().expect("id").to_owned();
        assert_eq!(recharges(&app, &user).await, [("succeeded".to_owned(), Some(intent_id))]);
        // A restart does not ask again, and nothing is credited twice.
        let other = app.second_instance().await;
        delivered(&app, &succeeded(&fake, 0, "evt_early"), "duplicate").await;
        delivered(&app, &succeeded(&fake, 0, "evt_early_resent"), "ignored").await;
        other.stop().await;
        assert_eq!(fake.requests_to("/v1/payment_intents").len(), 1);
        assert_eq!(balance(&app, &user).await, before + 10_000_000);
        // Metadata naming a recharge is trusted only with its customer.
        let mut forged = fake.payment_intents()[0].clone();
        forged["id"] = json!("pi_forged");
        forged["customer"] = json!("cus_someone_else");
        delivered(&app, &event("evt_forged", "payment_intent.succeeded", forged), "ignored").await;
        assert_eq!(recorded(&app, "evt_forged").await.map(|(s, _)| s).as_deref(), Some("ignored"));
        assert_eq!(balance(&app, &user).await, before + 10_000_000);
        app.assert_money_invariants(&user).await;
        app.shutdown().await;
    }
}
