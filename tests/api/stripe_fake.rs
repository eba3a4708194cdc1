//! A fake of Stripe's API on loopback, speaking its protocol: form-encoded requests with a
//! bearer key, `Idempotency-Key` (a repeat answers what the first request did; other
//! parameters under the same key are refused), paginated lists, the event log (`GET
//! /v1/events`, with `created[gte]`, `delivery_success`, `starting_after`), customers,
//! Checkout Sessions (payment and setup mode), the billing portal, payment intents created
//! off-session (succeeding, declined, asking for authentication, or hanging as if the network
//! died after Stripe acted) and setup intents. Objects start from Stripe's own examples
//! (`tests/fixtures/stripe/`) with the fields a test is about overridden. Every request is
//! recorded so tests can assert what spellhost sent.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The API version events are rendered in: the SDK's, which the server accepts by default.
pub const API_VERSION: &str = "2026-09-30.endive";

static FIXTURES: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../fixtures/stripe/fixtures.json")).expect("fixtures")
});

/// Stripe's example object of `kind` with `fields` overridden.
fn fixture(kind: &str, fields: Value) -> Value {
    let mut object = FIXTURES[kind].clone();
    assert!(object.is_object(), "no fixture {kind}");
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    object
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    /// Form fields of a POST, query parameters of a GET.
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

/// How the fake answers `POST /v1/payment_intents` (off-session, confirmed at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentMode {
    Succeed,
    /// `processing` (a bank debit): the outcome comes later, by webhook.
    Processing,
    /// 402 `card_declined` (`insufficient_funds`).
    Decline,
    /// 402 `authentication_required`: the bank wants the customer on-session.
    AuthenticationRequired,
    /// Creates the payment intent (a repeat of the key gets it) and never answers.
    Hang,
}

struct Stored {
    event: Value,
    delivered: bool,
}

/// What the first request under an idempotency key sent (its sorted form) and was answered.
struct FirstRequest {
    form: Vec<(String, String)>,
    status: StatusCode,
    answer: Value,
}

struct StateInner {
    requests: Vec<Recorded>,
    idempotent: HashMap<String, FirstRequest>,
    payment_intents: Vec<Value>,
    setup_intents: HashMap<String, Value>,
    events: Vec<Stored>,
    intent_mode: IntentMode,
    counter: u64,
}

#[derive(Clone)]
pub struct FakeStripe {
    state: Arc<Mutex<StateInner>>,
}

impl FakeStripe {
    /// Starts the fake; returns it and its base URL (`http://127.0.0.1:PORT`).
    pub async fn start() -> (FakeStripe, String) {
        let fake = FakeStripe {
            state: Arc::new(Mutex::new(StateInner {
                requests: Vec::new(),
                idempotent: HashMap::new(),
                payment_intents: Vec::new(),
                setup_intents: HashMap::new(),
                events: Vec::new(),
                intent_mode: IntentMode::Succeed,
                counter: 0,
            })),
        };
        let app = Router::new()
            .route("/v1/customers", post(customer))
            .route("/v1/checkout/sessions", post(checkout_session))
            .route("/v1/billing_portal/sessions", post(portal_session))
            .route("/v1/payment_intents", post(create_payment_intent))
            .route("/v1/events", get(list_events))
            .route("/v1/{collection}/{id}", get(object_by_id))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake stripe") });
        (fake, format!("http://{address}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        self.state.lock().expect("lock")
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn set_intent_mode(&self, mode: IntentMode) {
        self.lock().intent_mode = mode;
    }

    /// Every payment intent created, oldest first.
    pub fn payment_intents(&self) -> Vec<Value> {
        self.lock().payment_intents.clone()
    }

    /// Adds an event to Stripe's event log (`GET /v1/events`); `delivered`: whether its
    /// webhook delivery succeeded.
    pub fn publish(&self, payload: &str, delivered: bool) {
        let event = serde_json::from_str(payload).expect("an event");
        self.lock().events.push(Stored { event, delivered });
    }

    fn next(&self, prefix: &str) -> String {
        let mut state = self.lock();
        state.counter += 1;
        format!("{prefix}{}", state.counter)
    }

    fn record(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Recorded {
        let source = if method == Method::GET {
            uri.query().unwrap_or_default().as_bytes()
        } else {
            body
        };
        let form = form_urlencoded::parse(source)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let recorded = Recorded {
            method: method.to_string(),
            path: uri.path().to_owned(),
            authorization: header("authorization").unwrap_or_default(),
            idempotency_key: header("idempotency-key"),
            stripe_version: header("stripe-version"),
            form,
        };
        self.lock().requests.push(recorded.clone());
        recorded
    }
}

fn metadata_of(request: &Recorded) -> Value {
    let metadata: serde_json::Map<String, Value> = request
        .form
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((key.to_owned(), Value::String(v.clone())))
        })
        .collect();
    Value::Object(metadata)
}

fn stripe_error(status: StatusCode, error: Value) -> Response {
    (status, axum::Json(json!({ "error": error }))).into_response()
}

async fn customer(
    State(fake): State<FakeStripe>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let request = fake.record(&method, &uri, &headers, &body);
    let id = fake.next("cus_fake");
    axum::Json(fixture(
        "customer",
        json!({"id": id, "email": request.field("email"), "metadata": metadata_of(&request)}),
    ))
}

async fn checkout_session(
    State(fake): State<FakeStripe>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let request = fake.record(&method, &uri, &headers, &body);
    let id = fake.next("cs_test_fake");
    let mode = request.field("mode").unwrap_or("payment").to_owned();
    let amount = request
        .field("line_items[0][price_data][unit_amount]")
        .and_then(|a| a.parse::<i64>().ok());
    let setup_intent = (mode == "setup").then(|| {
        let id = fake.next("seti_fake");
        let intent = setup_intent(
            &id,
            request.field("customer").unwrap_or_default(),
            None,
            "requires_payment_method",
        );
        fake.lock().setup_intents.insert(id.clone(), intent);
        id
    });
    axum::Json(fixture(
        "checkout.session",
        json!({"id": id, "mode": mode, "customer": request.field("customer"),
               "client_reference_id": request.field("client_reference_id"), "metadata": metadata_of(&request),
               "amount_total": amount, "amount_subtotal": amount, "currency": "usd",
               "payment_intent": null, "setup_intent": setup_intent,
               "payment_status": if mode == "setup" { "no_payment_required" } else { "unpaid" },
               "status": "open", "success_url": request.field("success_url"), "cancel_url": request.field("cancel_url"),
               "url": format!("https://checkout.stripe.com/c/pay/{id}")}),
    ))
}

async fn portal_session(
    State(fake): State<FakeStripe>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let request = fake.record(&method, &uri, &headers, &body);
    axum::Json(fixture(
        "billing_portal.session",
        json!({"id": "bps_fake", "customer": request.field("customer"), "return_url": request.field("return_url"),
               "url": "https://billing.stripe.com/p/session/fake", "flow": null}),
    ))
}

async fn create_payment_intent(
    State(fake): State<FakeStripe>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = fake.record(&method, &uri, &headers, &body);
    let mut form = request.form.clone();
    form.sort();
    if let Some(key) = &request.idempotency_key {
        let seen = fake
            .lock()
            .idempotent
            .get(key)
            .map(|first| (first.form.clone(), first.status, first.answer.clone()));
        if let Some((first, status, answer)) = seen {
            if first != form {
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    json!({"type": "idempotency_error", "message": format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request.")}),
                );
            }
            let mut response = (status, axum::Json(answer)).into_response();
            response.headers_mut().insert(
                "idempotent-replayed",
                axum::http::HeaderValue::from_static("true"),
            );
            return response;
        }
    }
    let mode = fake.lock().intent_mode;
    let (status, answer) = intent_answer(&fake, &request, mode);
    {
        let mut state = fake.lock();
        if let Some(key) = &request.idempotency_key {
            let first = FirstRequest {
                form,
                status,
                answer: answer.clone(),
            };
            state.idempotent.insert(key.clone(), first);
        }
    }
    if mode == IntentMode::Hang {
        std::future::pending::<()>().await;
    }
    (status, axum::Json(answer)).into_response()
}

/// Creates the payment intent and the answer to its creation.
fn intent_answer(fake: &FakeStripe, request: &Recorded, mode: IntentMode) -> (StatusCode, Value) {
    let id = fake.next("pi_fake");
    let charge = fake.next("ch_fake");
    let amount: i64 = request
        .field("amount")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let customer = request.field("customer").unwrap_or_default();
    let method = request.field("payment_method").unwrap_or_default();
    let metadata = metadata_of(request);
    let (status, decline) = match mode {
        IntentMode::Succeed | IntentMode::Hang => ("succeeded", None),
        IntentMode::Processing => ("processing", None),
        IntentMode::Decline => (
            "requires_payment_method",
            Some(
                json!({"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                        "message": "Your card has insufficient funds.", "charge": charge}),
            ),
        ),
        IntentMode::AuthenticationRequired => (
            "requires_payment_method",
            Some(
                json!({"type": "card_error", "code": "authentication_required", "decline_code": "authentication_required",
                        "message": "Your card was declined. This transaction requires authentication.", "charge": charge}),
            ),
        ),
    };
    let mut intent = payment_intent_object(&id, customer, method, amount, status, metadata, None);
    intent["latest_charge"] = json!(charge);
    if let Some(decline) = &decline {
        intent["last_payment_error"] = decline.clone();
        intent["amount_received"] = json!(0);
    }
    fake.lock().payment_intents.push(intent.clone());
    match decline {
        None => (StatusCode::OK, intent),
        Some(mut error) => {
            error["payment_intent"] = intent;
            error["doc_url"] = json!("https://docs.stripe.com/error-codes/card-declined");
            (StatusCode::PAYMENT_REQUIRED, json!({ "error": error }))
        }
    }
}

fn found_or_missing(found: Option<Value>, kind: &str, id: &str) -> Response {
    match found {
        Some(object) => axum::Json(object).into_response(),
        None => stripe_error(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error", "code": "resource_missing", "param": "id",
                   "message": format!("No such {}: '{id}'", kind.trim_end_matches('s'))}),
        ),
    }
}

/// `GET /v1/events`: newest first, `limit` (default 10, at most 100), `starting_after`,
/// `created[gte]`, `delivery_success`.
async fn list_events(
    State(fake): State<FakeStripe>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let request = fake.record(&method, &uri, &headers, &[]);
    let limit = request
        .field("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "param": "limit", "message": "limit must be between 1 and 100"}),
        );
    }
    let since = request
        .field("created[gte]")
        .and_then(|c| c.parse::<i64>().ok());
    let delivered = request.field("delivery_success").map(|d| d == "true");
    let state = fake.lock();
    let matching: Vec<&Value> = state
        .events
        .iter()
        .rev()
        .filter(|e| since.is_none_or(|since| e.event["created"].as_i64() >= Some(since)))
        .filter(|e| delivered.is_none_or(|d| e.delivered == d))
        .map(|e| &e.event)
        .collect();
    let start = match request.field("starting_after") {
        Some(after) => match matching.iter().position(|e| e["id"] == after) {
            Some(index) => index + 1,
            None => {
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    json!({"type": "invalid_request_error", "param": "starting_after",
                           "message": format!("No such event: '{after}'")}),
                );
            }
        },
        None => 0,
    };
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|e| (*e).clone())
        .collect();
    let has_more = matching.len() > start + page.len();
    axum::Json(json!({"object": "list", "data": page, "has_more": has_more, "url": "/v1/events"}))
        .into_response()
}

/// `GET /v1/{payment_intents,setup_intents,events}/{id}`.
async fn object_by_id(
    State(fake): State<FakeStripe>,
    Path((collection, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    fake.record(&method, &uri, &headers, &[]);
    let found = {
        let state = fake.lock();
        match collection.as_str() {
            "payment_intents" => state
                .payment_intents
                .iter()
                .find(|p| p["id"] == id.as_str())
                .cloned(),
            "setup_intents" => state.setup_intents.get(&id).cloned(),
            "events" => state
                .events
                .iter()
                .find(|e| e.event["id"] == id.as_str())
                .map(|e| e.event.clone()),
            _ => None,
        }
    };
    found_or_missing(found, &collection, &id)
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

/// An event envelope as Stripe sends it, created now.
pub fn event(id: &str, type_: &str, object: Value) -> String {
    event_at(id, type_, object, now())
}

/// An event envelope created at `created` (Unix seconds), from Stripe's example event.
pub fn event_at(id: &str, type_: &str, object: Value, created: i64) -> String {
    fixture(
        "event",
        json!({"id": id, "api_version": API_VERSION, "created": created, "pending_webhooks": 1,
               "data": {"object": object}, "type": type_}),
    )
    .to_string()
}

/// A completed Checkout Session. `user_id` goes where a Payment Link could put it too
/// (`client_reference_id`, metadata): spellhost must not trust it.
pub fn completed_session(
    session: &str,
    user_id: i64,
    customer: &str,
    payment_intent: &str,
    cents: i64,
    currency: &str,
) -> Value {
    fixture(
        "checkout.session",
        json!({"id": session, "amount_total": cents, "amount_subtotal": cents, "currency": currency,
               "client_reference_id": user_id.to_string(), "customer": customer,
               "metadata": {"spellhost_user_id": user_id.to_string()}, "mode": "payment",
               "payment_intent": payment_intent, "payment_status": "paid", "status": "complete", "url": null}),
    )
}

/// A completed setup-mode Checkout Session.
pub fn completed_setup_session(session: &str, customer: &str, setup_intent: &str) -> Value {
    fixture(
        "checkout.session",
        json!({"id": session, "amount_total": null, "amount_subtotal": null, "currency": null, "customer": customer,
               "mode": "setup", "payment_intent": null, "setup_intent": setup_intent,
               "payment_status": "no_payment_required", "status": "complete", "url": null}),
    )
}

pub fn refunded_charge(charge: &str, payment_intent: &str, refunded_cents: i64) -> Value {
    fixture(
        "charge",
        json!({"id": charge, "amount": 500, "amount_captured": 500, "amount_refunded": refunded_cents,
               "captured": true, "payment_intent": payment_intent, "refunded": refunded_cents >= 500}),
    )
}

pub fn refund(id: &str, charge: &str, payment_intent: &str, cents: i64, status: &str) -> Value {
    fixture(
        "refund",
        json!({"id": id, "amount": cents, "charge": charge, "payment_intent": payment_intent, "status": status,
               "failure_reason": if status == "failed" { json!("expired_or_canceled_card") } else { Value::Null }}),
    )
}

/// A dispute; `balance_transactions` are the amounts of its balance transactions (negative:
/// funds withdrawn, positive: reinstated).
pub fn dispute(
    id: &str,
    charge: &str,
    payment_intent: &str,
    cents: i64,
    status: &str,
    balance_transactions: &[i64],
) -> Value {
    let transactions: Vec<Value> = balance_transactions
        .iter()
        .enumerate()
        .map(|(n, amount)| {
            json!({"id": format!("txn_{id}_{n}"), "object": "balance_transaction", "amount": amount,
                   "currency": "usd", "fee": if *amount < 0 { 1500 } else { 0 }, "net": amount,
                   "reporting_category": if *amount < 0 { "dispute" } else { "dispute_reversal" },
                   "status": "available", "type": "adjustment"})
        })
        .collect();
    fixture(
        "dispute",
        json!({"id": id, "amount": cents, "charge": charge, "payment_intent": payment_intent,
               "status": status, "balance_transactions": transactions}),
    )
}

/// A payment intent as the API reference shows it.
pub fn payment_intent_object(
    id: &str,
    customer: &str,
    payment_method: &str,
    cents: i64,
    status: &str,
    metadata: Value,
    setup_future_usage: Option<&str>,
) -> Value {
    let received = if status == "succeeded" { cents } else { 0 };
    json!({"id": id, "object": "payment_intent", "amount": cents, "amount_capturable": 0,
           "amount_details": {"tip": {}}, "amount_received": received, "application": null,
           "application_fee_amount": null, "automatic_payment_methods": null, "canceled_at": null,
           "cancellation_reason": null, "capture_method": "automatic", "client_secret": format!("{id}_secret_fake"),
           "confirmation_method": "automatic", "created": 1700000000, "currency": "usd", "customer": customer,
           "description": "spellhost automatic recharge", "last_payment_error": null, "latest_charge": null,
           "livemode": false, "metadata": metadata, "next_action": null, "on_behalf_of": null,
           "payment_method": payment_method, "payment_method_configuration_details": null,
           "payment_method_options": {}, "payment_method_types": ["card"], "processing": null,
           "receipt_email": null, "review": null, "setup_future_usage": setup_future_usage, "shipping": null,
           "source": null, "statement_descriptor": null, "statement_descriptor_suffix": null,
           "status": status, "transfer_data": null, "transfer_group": null})
}

pub fn setup_intent(id: &str, customer: &str, payment_method: Option<&str>, status: &str) -> Value {
    json!({"id": id, "object": "setup_intent", "application": null, "automatic_payment_methods": null,
           "cancellation_reason": null, "client_secret": format!("{id}_secret_fake"), "created": 1700000000,
           "customer": customer, "description": null, "flow_directions": null, "last_setup_error": null,
           "latest_attempt": null, "livemode": false, "mandate": null, "metadata": {}, "next_action": null,
           "on_behalf_of": null, "payment_method": payment_method, "payment_method_options": {},
           "payment_method_types": ["card"], "single_use_mandate": null, "status": status, "usage": "off_session"})
}

pub fn payment_method(id: &str, customer: Option<&str>, brand: &str, last4: &str) -> Value {
    json!({"id": id, "object": "payment_method", "allow_redisplay": "always",
           "billing_details": {"address": null, "email": null, "name": null, "phone": null},
           "card": {"brand": brand, "checks": {"cvc_check": "pass"}, "country": "US", "exp_month": 8,
                    "exp_year": 2030, "fingerprint": "fakefingerprint", "funding": "credit", "last4": last4,
                    "networks": {"available": [brand], "preferred": null}},
           "created": 1700000000, "customer": customer, "livemode": false, "metadata": {}, "type": "card"})
}
