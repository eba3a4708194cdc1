//! A fake of Stripe's API on loopback: answers customer, Checkout Session and billing portal
//! creation with objects shaped like Stripe's own examples, and records every request (path,
//! bearer key, form fields) so tests can assert what spellhost sent.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: String,
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct FakeStripe {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeStripe {
    /// Starts the fake; returns it and its base URL (`http://127.0.0.1:PORT`).
    pub async fn start() -> (FakeStripe, String) {
        let fake = FakeStripe::default();
        let app = Router::new()
            .route("/v1/customers", post(customer))
            .route("/v1/checkout/sessions", post(checkout_session))
            .route("/v1/billing_portal/sessions", post(portal_session))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake stripe") });
        (fake, format!("http://{address}"))
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn record(&self, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> usize {
        let form = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut requests = self.requests.lock().expect("lock");
        requests.push(Recorded {
            path: uri.path().to_owned(),
            authorization,
            form,
        });
        requests.len()
    }
}

async fn customer(
    State(fake): State<FakeStripe>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let n = fake.record(&uri, &headers, &body);
    axum::Json(
        json!({"id": format!("cus_fake{n}"), "object": "customer", "created": 1700000000, "livemode": false,
                      "email": null, "metadata": {}}),
    )
}

async fn checkout_session(
    State(fake): State<FakeStripe>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let n = fake.record(&uri, &headers, &body);
    let id = format!("cs_test_fake{n}");
    axum::Json(json!({
        "id": id, "object": "checkout.session", "automatic_tax": {"enabled": false}, "created": 1700000000,
        "custom_fields": [], "custom_text": {}, "expires_at": 1700086400, "livemode": false, "mode": "payment",
        "payment_method_types": ["card"], "payment_status": "unpaid", "shipping_options": [],
        "url": format!("https://checkout.stripe.com/c/pay/{id}")
    }))
}

async fn portal_session(
    State(fake): State<FakeStripe>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    fake.record(&uri, &headers, &body);
    axum::Json(
        json!({"id": "bps_fake", "object": "billing_portal.session", "configuration": "bpc_fake",
                      "created": 1700000000, "customer": "cus_fake1", "livemode": false,
                      "return_url": null, "url": "https://billing.stripe.com/p/session/fake"}),
    )
}

/// Stripe's signature scheme, computed independently of the code under test:
/// `t=<unix seconds>,v1=hex(HMAC-SHA256(secret, "<t>.<payload>"))`.
pub fn signature_header(payload: &str, secret: &str, timestamp: i64) -> String {
    format!("t={timestamp},v1={}", v1(payload, secret, timestamp))
}

pub fn v1(payload: &str, secret: &str, timestamp: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An event envelope as Stripe sends it.
pub fn event(id: &str, type_: &str, object: Value) -> String {
    json!({"id": id, "object": "event", "api_version": "2026-09-30.endive", "created": 1700000000,
           "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
           "data": {"object": object}, "type": type_})
    .to_string()
}

pub fn completed_session(
    session: &str,
    user_id: i64,
    customer: &str,
    payment_intent: &str,
    cents: i64,
    currency: &str,
) -> Value {
    json!({"id": session, "object": "checkout.session", "amount_total": cents, "automatic_tax": {"enabled": false},
           "client_reference_id": user_id.to_string(), "created": 1700000000, "currency": currency, "custom_fields": [],
           "custom_text": {}, "customer": customer, "expires_at": 1700086400, "livemode": false,
           "metadata": {"spellhost_user_id": user_id.to_string()}, "mode": "payment", "payment_intent": payment_intent,
           "payment_method_types": ["card"], "payment_status": "paid", "shipping_options": [], "url": null})
}

pub fn refunded_charge(charge: &str, payment_intent: &str, refunded_cents: i64) -> Value {
    json!({"id": charge, "object": "charge", "amount": 500, "amount_captured": 500, "amount_refunded": refunded_cents,
           "billing_details": {}, "captured": true, "created": 1700000000, "currency": "usd", "customer": null,
           "disputed": false, "livemode": false, "metadata": {}, "paid": true, "payment_intent": payment_intent,
           "refunded": false, "status": "succeeded"})
}

pub fn dispute(id: &str, charge: &str, payment_intent: &str, cents: i64) -> Value {
    json!({"id": id, "object": "dispute", "amount": cents, "balance_transactions": [], "charge": charge,
           "created": 1700000000, "currency": "usd", "enhanced_eligibility_types": [],
           "evidence": {"enhanced_evidence": {}},
           "evidence_details": {"enhanced_eligibility": {}, "has_evidence": false, "past_due": false, "submission_count": 0},
           "is_charge_refundable": false, "livemode": false, "metadata": {}, "payment_intent": payment_intent,
           "reason": "fraudulent", "status": "needs_response"})
}
