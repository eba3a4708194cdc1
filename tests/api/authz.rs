//! The authorization matrix: every route × every kind of caller, against a table of expected
//! statuses. The callers act on user A's resources: A herself, user B, an admin, A's revoked,
//! expired and under-scoped keys, and nobody. Whatever B (or the admin, or a refused key) does,
//! A's account is untouched: checked by comparing what A sees before and after.
//!
//! To add a route, add a row to `ROUTES`; to add a kind of caller, a variant to `Caller`, a
//! column to every row, and its key in `Fixture::key`. A test below checks that the table
//! covers every operation of the OpenAPI document.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::app::{Backend, TestApp, TestUser, spawn_app};
use crate::helpers::{example_bundle, key_signer_body, new_signer};

/// Who calls. `NoScope` is one of A's keys with every scope but the route's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    A,
    B,
    Revoked,
    Expired,
    NoScope,
    Admin,
    /// A session of B's (a GitHub login), as a bearer token: B's rights, and only B's.
    BSession,
}

/// The order of the columns of `ROUTES`. A comes last: her own requests change her resources
/// (deleting her spare key, yanking her version), so every other caller acts first.
const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::B,
    Caller::Revoked,
    Caller::Expired,
    Caller::NoScope,
    Caller::Admin,
    Caller::BSession,
    Caller::A,
];

/// A request body. Templates name A's resources: `{a}` (her handle), `{a_key}` (her main
/// key's prefix), `{a_spare_key}`, `{a_signer}` (a spare signer's id), `{a_budget}`.
#[derive(Debug, Clone, Copy)]
enum Body {
    None,
    Json(&'static str),
    /// A key signer with its proof of possession for A's handle.
    SignerForA,
    /// The `primes` example (signed by the demo signer, which A registered).
    Publish,
}

/// The scope a route needs (the `NoScope` key lacks it); `None` for anonymous routes.
use spellhost::auth::KeyScope::{Cast, Manage, Publish, Read};

struct Row {
    method: &'static str,
    path: &'static str,
    body: Body,
    scope: Option<spellhost::auth::KeyScope>,
    /// Expected statuses, in the order of `CALLERS`:
    /// anonymous, B, revoked, expired, no scope, admin, B's session, A.
    expect: [u16; 8],
}

const fn row(
    method: &'static str,
    path: &'static str,
    body: Body,
    scope: Option<spellhost::auth::KeyScope>,
    expect: [u16; 8],
) -> Row {
    Row {
        method,
        path,
        body,
        scope,
        expect,
    }
}

const BUDGET_OF_A_KEY: &str = r#"{"scope":{"type":"key","key_prefix":"{a_key}"},"period":"month","hard_limit_microusd":1000000}"#;
const BUDGET_OF_A_KEY_RAISED: &str = r#"{"scope":{"type":"key","key_prefix":"{a_key}"},"period":"month","hard_limit_microusd":2000000}"#;

/// Every route × every caller. Billing is not configured in tests: its routes answer 404
/// `billing_disabled` once the caller is authenticated and has the scope.
#[rustfmt::skip]
const ROUTES: &[Row] = &[
    //                                                                                       anon  B    revok expir noscp admin Bses A
    row("GET",    "/healthz",                          Body::None, None,                   [200, 200, 200, 200, 200, 200, 200, 200]),
    row("GET",    "/readyz",                           Body::None, None,                   [200, 200, 200, 200, 200, 200, 200, 200]),
    row("GET",    "/metrics",                          Body::None, None,                   [200, 200, 200, 200, 200, 200, 200, 200]),
    row("GET",    "/openapi.json",                     Body::None, None,                   [200, 200, 200, 200, 200, 200, 200, 200]),
    row("GET",    "/v1/users/me",                      Body::None, Some(Read),             [401, 200, 401, 401, 403, 200, 200, 200]),
    row("GET",    "/v1/users/me/export",               Body::None, Some(Manage),           [401, 200, 401, 401, 403, 200, 200, 200]),
    row("POST",   "/v1/keys",                          Body::Json(r#"{"name":"authz"}"#), Some(Manage), [401, 201, 401, 401, 403, 201, 201, 201]),
    row("GET",    "/v1/keys",                          Body::None, Some(Manage),           [401, 200, 401, 401, 403, 200, 200, 200]),
    row("DELETE", "/v1/keys/{a_spare_key}",            Body::None, Some(Manage),           [401, 404, 401, 401, 403, 404, 404, 204]),
    row("POST",   "/v1/signers",                       Body::SignerForA, Some(Manage),     [401, 422, 401, 401, 403, 422, 422, 201]),
    row("GET",    "/v1/signers",                       Body::None, Some(Manage),           [401, 200, 401, 401, 403, 200, 200, 200]),
    row("DELETE", "/v1/signers/{a_signer}",            Body::None, Some(Manage),           [401, 404, 401, 401, 403, 404, 404, 204]),
    row("POST",   "/v1/spells",                        Body::Publish, Some(Publish),       [401, 422, 401, 401, 403, 422, 422, 201]),
    row("GET",    "/v1/spells",                        Body::None, Some(Read),             [401, 200, 401, 401, 403, 200, 200, 200]),
    row("GET",    "/v1/spells/{a}/hello",              Body::None, Some(Read),             [401, 200, 401, 401, 403, 200, 200, 200]),
    row("POST",   "/v1/cast",                          Body::Json(r#"{"spell":"{a}/hello","input":{"name":"Ada"}}"#), Some(Cast), [401, 200, 401, 401, 403, 200, 200, 200]),
    row("POST",   "/v1/spells/{a}/wordfreq/versions/1.0.0/yank", Body::None, Some(Publish), [401, 403, 401, 401, 403, 403, 403, 200]),
    row("GET",    "/v1/casts/{a_cast}",                Body::None, Some(Read),             [401, 404, 401, 401, 403, 404, 404, 200]),
    row("GET",    "/v1/ledger",                        Body::None, Some(Read),             [401, 200, 401, 401, 403, 200, 200, 200]),
    row("GET",    "/v1/budgets",                       Body::None, Some(Manage),           [401, 200, 401, 401, 403, 200, 200, 200]),
    row("POST",   "/v1/budgets",                       Body::Json(BUDGET_OF_A_KEY), Some(Manage),        [401, 422, 401, 401, 403, 422, 422, 201]),
    row("PUT",    "/v1/budgets",                       Body::Json(BUDGET_OF_A_KEY_RAISED), Some(Manage), [401, 422, 401, 401, 403, 422, 422, 200]),
    row("GET",    "/v1/budgets/usage",                 Body::None, Some(Read),             [401, 200, 401, 401, 403, 200, 200, 200]),
    row("PUT",    "/v1/budgets/{a_budget}",            Body::Json(r#"{"hard_limit_microusd":3000000}"#), Some(Manage), [401, 404, 401, 401, 403, 404, 404, 200]),
    row("DELETE", "/v1/budgets/{a_budget}",            Body::None, Some(Manage),           [401, 404, 401, 401, 403, 404, 404, 204]),
    row("DELETE", "/v1/budgets?scope=key&key_prefix={a_key}&period=month", Body::None, Some(Manage), [401, 422, 401, 401, 403, 422, 422, 204]),
    row("GET",    "/v1/admin/ledger/verify",           Body::None, Some(Manage),           [401, 403, 401, 401, 403, 200, 403, 403]),
    row("POST",   "/v1/billing/checkout",              Body::Json(r#"{"amount_usd_cents":500}"#), Some(Manage), [401, 404, 401, 401, 403, 404, 404, 404]),
    row("POST",   "/v1/billing/portal",                Body::None, Some(Manage),           [401, 404, 401, 401, 403, 404, 404, 404]),
    row("GET",    "/v1/billing",                       Body::None, Some(Manage),           [401, 404, 401, 401, 403, 404, 404, 404]),
    row("PUT",    "/v1/billing/auto-recharge",         Body::Json(r#"{"enabled":false}"#), Some(Manage), [401, 404, 401, 401, 403, 404, 404, 404]),
    row("POST",   "/v1/billing/payment-method",        Body::None, Some(Manage),           [401, 404, 401, 401, 403, 404, 404, 404]),
    row("POST",   "/webhooks/stripe",                  Body::Json("{}"), None,             [404, 404, 404, 404, 404, 404, 404, 404]),
    // GitHub login is not configured here.
    row("GET",    "/auth/github",                      Body::None, None,                   [404, 404, 404, 404, 404, 404, 404, 404]),
    row("GET",    "/auth/callback",                    Body::None, None,                   [404, 404, 404, 404, 404, 404, 404, 404]),
    // Ends the session it is called with (a key has no session: 404); B's session is
    // revoked from here on.
    row("DELETE", "/v1/sessions/current",              Body::None, Some(Manage),           [401, 404, 401, 401, 403, 404, 200, 404]),
    // Last: A erases her account.
    row("DELETE", "/v1/users/me",                      Body::Json(r#"{"confirm":"{a}"}"#), Some(Manage), [401, 422, 401, 401, 403, 422, 401, 200]),
];

/// What only A's own answers may contain: her email and her spare key's name.
const A_EMAIL: &str = "ada-authz@example.com";
const A_SPARE_KEY_NAME: &str = "ada-private-spare";

/// A's resources and every caller's key.
struct Fixture {
    a: TestUser,
    b: TestUser,
    admin: TestUser,
    b_session: String,
    revoked: String,
    expired: String,
    /// A's keys lacking one scope each: cast, publish, read, manage.
    no_scope: Vec<(spellhost::auth::KeyScope, String)>,
    values: Vec<(&'static str, String)>,
}

impl Fixture {
    fn key(&self, caller: Caller, scope: Option<spellhost::auth::KeyScope>) -> Option<&str> {
        match caller {
            Caller::Anonymous => None,
            Caller::A => Some(&self.a.key),
            Caller::B => Some(&self.b.key),
            Caller::Admin => Some(&self.admin.key),
            Caller::BSession => Some(&self.b_session),
            Caller::Revoked => Some(&self.revoked),
            Caller::Expired => Some(&self.expired),
            Caller::NoScope => {
                let lacking = scope.unwrap_or(Read);
                self.no_scope
                    .iter()
                    .find(|(scope, _)| *scope == lacking)
                    .map(|(_, key)| key.as_str())
            }
        }
    }

    fn fill(&self, template: &str) -> String {
        self.values
            .iter()
            .fold(template.to_owned(), |text, (name, value)| {
                text.replace(&format!("{{{name}}}"), value)
            })
    }
}

fn prefix_of(key: &Value) -> String {
    key["prefix"].as_str().expect("prefix").to_owned()
}

async fn fixture(app: &TestApp) -> Fixture {
    let a = app.user("ada", 10_000_000).await;
    sqlx::query("UPDATE users SET email = $1 WHERE id = $2")
        .bind(A_EMAIL)
        .bind(a.id)
        .execute(app.app.db.writer())
        .await
        .expect("email");
    let b = app.user("bob", 10_000_000).await;
    let admin = app.user("root", 10_000_000).await;
    sqlx::query("UPDATE users SET is_admin = 1 WHERE id = $1")
        .bind(admin.id)
        .execute(app.app.db.writer())
        .await
        .expect("admin");
    app.publish_examples(&a, &["hello", "wordfreq"]).await;
    let (private_pem, _, public_pem) = new_signer();
    app.register_key_signer(&a, "spare", &private_pem, &public_pem)
        .await;
    let (_, signers) = app.get("/v1/signers", Some(&a.key)).await;
    let spare_signer = signers["signers"]
        .as_array()
        .expect("signers")
        .iter()
        .find(|s| s["name"] == "spare")
        .expect("spare signer")["id"]
        .to_string();
    let (status, spare) = app
        .post(
            "/v1/keys",
            Some(&a.key),
            json!({ "name": A_SPARE_KEY_NAME }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spare}");
    let (status, revoked) = app
        .post("/v1/keys", Some(&a.key), json!({"name": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{revoked}");
    let (status, body) = app
        .delete(&format!("/v1/keys/{}", prefix_of(&revoked)), &a.key)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let mut spec = spellhost::auth::KeySpec::unrestricted("expired");
    spec.expires_at_ms = Some(app.app.db.now_ms() - 60_000);
    let (expired, _) = app
        .app
        .auth
        .create_key(a.id, &spec)
        .await
        .expect("expired key");
    let mut no_scope = Vec::new();
    for lacking in spellhost::auth::KeyScope::ALL {
        let scopes: Vec<&str> = spellhost::auth::KeyScope::ALL
            .iter()
            .filter(|scope| **scope != lacking)
            .map(|scope| scope.as_str())
            .collect();
        let key = app
            .key_for(
                &a,
                json!({"name": format!("no-{}", lacking.as_str()), "scopes": scopes}),
            )
            .await;
        no_scope.push((lacking, key.key));
    }
    let (status, budget) = app
        .post(
            "/v1/budgets",
            Some(&a.key),
            json!({"scope": {"type": "account"}, "period": "month", "hard_limit_microusd": 5_000_000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{budget}");
    let (_, keys) = app.get("/v1/keys", Some(&a.key)).await;
    let a_key = keys["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "test")
        .map(prefix_of)
        .expect("A's main key");
    let (status, cast) = app
        .cast(
            &a,
            json!({"spell": format!("{}/hello", a.handle), "input": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    let b_session = app
        .app
        .auth
        .create_session(b.id, 3_600_000)
        .await
        .expect("B's session");
    let values = vec![
        (
            "a_cast",
            cast["cast_id"].as_str().expect("cast_id").to_owned(),
        ),
        ("a_spare_key", prefix_of(&spare)),
        ("a_signer", spare_signer),
        ("a_budget", budget["id"].as_str().expect("id").to_owned()),
        ("a_key", a_key),
        ("a", a.handle.clone()),
    ];
    Fixture {
        a,
        b,
        admin,
        b_session: b_session.token.expose().to_owned(),
        revoked: revoked["key"].as_str().expect("key").to_owned(),
        expired: expired.expose().to_owned(),
        no_scope,
        values,
    }
}

/// Sends one row's request as `caller`; the status and the body's text.
async fn send(app: &TestApp, fixture: &Fixture, row: &Row, caller: Caller) -> (u16, String) {
    let method = Method::from_bytes(row.method.as_bytes()).expect("method");
    let mut request = app.client.request(method, app.url(&fixture.fill(row.path)));
    if let Some(key) = fixture.key(caller, row.scope) {
        request = request.bearer_auth(key);
    }
    request = match row.body {
        Body::None => request,
        Body::Json(template) => request
            .header("content-type", "application/json")
            .body(fixture.fill(template)),
        Body::SignerForA => {
            let (private_pem, _, public_pem) = new_signer();
            request.json(&key_signer_body(
                "authz",
                &private_pem,
                &public_pem,
                &fixture.a.handle,
            ))
        }
        Body::Publish => {
            let bundle = example_bundle("primes");
            // Only A sends the real module. A refused request's body is not read, and the
            // server closes the connection after its answer: a client still sending 70 KB
            // may see the connection reset before it reads the 401 (no lingering close).
            let module = match caller {
                Caller::A => bundle.module.clone(),
                _ => b"\0asm\x01\0\0\0".to_vec(),
            };
            let part = |bytes: &[u8]| reqwest::multipart::Part::bytes(bytes.to_vec());
            let mut form = reqwest::multipart::Form::new()
                .part("module", part(&module))
                .part("manifest", part(bundle.manifest.as_bytes()))
                .part("sbom", part(&bundle.sbom));
            if let Some(spellhost::supply_chain::Signature::Detached(signature)) = &bundle.signature
            {
                form = form.part("signature", part(signature));
            }
            request.multipart(form)
        }
    };
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("{} {} as {caller:?}: {error}", row.method, row.path));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// What A sees of her account, less what her own reads change (keys' last use, trace ids).
async fn state_of_a(app: &TestApp, fixture: &Fixture) -> Value {
    let key = Some(fixture.a.key.as_str());
    let mut state = json!({});
    for path in [
        "/v1/users/me",
        "/v1/keys",
        "/v1/signers",
        "/v1/budgets",
        "/v1/ledger",
        "/v1/spells/ada/hello",
        "/v1/spells/ada/wordfreq",
        "/v1/spells/ada/primes",
    ] {
        let (_, mut body) = app.get(path, key).await;
        if let Some(keys) = body.get_mut("keys").and_then(Value::as_array_mut) {
            for key in keys {
                key["last_used_at"] = Value::Null;
            }
        }
        // A spell's usage statistics count everyone's casts of it: others casting A's
        // published spell is what publishing is for, not a change to her account.
        if let Some(versions) = body.get_mut("versions").and_then(Value::as_array_mut) {
            for version in versions.iter_mut().filter_map(Value::as_object_mut) {
                version.remove("usage");
            }
        }
        if let Some(error) = body.get_mut("error").and_then(Value::as_object_mut) {
            error.remove("trace_id");
        }
        state[path] = body;
    }
    state
}

async fn matrix(backend: Backend) {
    let app = spawn_app(&backend).await;
    let fixture = fixture(&app).await;
    let before = state_of_a(&app, &fixture).await;
    let mut mismatches = Vec::new();
    let mut cells = 0;
    for (column, caller) in CALLERS.iter().enumerate() {
        if *caller == Caller::A {
            // Nothing anyone else did changed anything of A's.
            let after = state_of_a(&app, &fixture).await;
            assert_eq!(before, after, "A's account changed under other callers");
        }
        for row in ROUTES {
            let (status, body) = send(&app, &fixture, row, *caller).await;
            cells += 1;
            let expected = row.expect[column];
            if status != expected {
                mismatches.push(format!(
                    "{} {} as {caller:?}: {status}, expected {expected}: {body}",
                    row.method, row.path
                ));
            }
            // B, the admin and nobody are other people; A's refused keys show nothing either.
            if *caller != Caller::A {
                assert!(
                    !body.contains(A_EMAIL) && !body.contains(A_SPARE_KEY_NAME),
                    "{} {} as {caller:?} shows A's data: {body}",
                    row.method,
                    row.path
                );
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert_eq!(cells, ROUTES.len() * CALLERS.len());
    eprintln!(
        "authorization matrix: {} routes × {} callers = {cells} requests",
        ROUTES.len(),
        CALLERS.len()
    );
    app.assert_money_invariants(&fixture.b).await;
    app.shutdown().await;
}

crate::on_both_databases! {
    async fn authorization_matrix(backend) {
        matrix(backend).await;
    }
}

/// Every operation of the OpenAPI document has a row, and every row an operation.
#[test]
fn the_matrix_covers_every_documented_route() {
    let document: Value = serde_json::from_str(spellhost::http::openapi_json()).expect("JSON");
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let mut rows: Vec<String> = ROUTES
        .iter()
        .map(|row| {
            let path = row.path.split('?').next().unwrap_or(row.path);
            let path = path
                .replace("{a_spare_key}", "{prefix}")
                .replace("{a_signer}", "{id}")
                .replace("{a_budget}", "{id}")
                .replace("{a_cast}", "{cast_id}")
                .replace("{a}/hello", "{owner}/{name}")
                .replace(
                    "{a}/wordfreq/versions/1.0.0",
                    "{owner}/{name}/versions/{version}",
                );
            format!("{} {path}", row.method)
        })
        .collect();
    documented.sort();
    rows.sort();
    rows.dedup();
    assert_eq!(
        rows, documented,
        "the matrix's rows and the document's operations"
    );
}
