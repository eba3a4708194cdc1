//! GitHub login and sessions, against a fake GitHub on loopback that speaks GitHub's OAuth
//! protocol: the authorize step (in-process: the fake mints a code for the URL spellhost
//! redirected to, remembering its PKCE challenge and redirect_uri), a form-encoded token
//! request answered in JSON (`{"error":"bad_verification_code"}` for a code it did not issue
//! or whose PKCE verifier does not match), and `GET /user`, `GET /user/emails` with the
//! token as a Bearer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::app::{Backend, TestApp, error_code, spawn_app, spawn_app_with};
use crate::on_both_databases;

const CLIENT_ID: &str = "Iv1.spellhosttest";
const CLIENT_SECRET: &str = "test-client-secret-do-not-log";
const PUBLIC_URL: &str = "https://spellhost.test";

#[derive(Clone)]
struct Account {
    id: i64,
    login: String,
    emails: Value,
}

struct Grant {
    account_id: i64,
    challenge: String,
    redirect_uri: String,
}

#[derive(Default)]
struct FakeState {
    accounts: HashMap<i64, Account>,
    codes: HashMap<String, Grant>,
    tokens: HashMap<String, i64>,
    /// Every token request's form, to check what spellhost sent.
    token_requests: Vec<HashMap<String, String>>,
    next: u64,
}

type Shared = Arc<Mutex<FakeState>>;

struct FakeGithub {
    address: std::net::SocketAddr,
    state: Shared,
}

impl FakeGithub {
    async fn start() -> FakeGithub {
        let state = Shared::default();
        let router = Router::new()
            .route("/login/oauth/access_token", post(token))
            .route("/user", get(user))
            .route("/user/emails", get(emails))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeGithub { address, state }
    }

    fn vars(&self) -> Vec<(String, String)> {
        let base = format!("http://{}", self.address);
        vec![
            ("SPELLHOST_GITHUB_CLIENT_ID".into(), CLIENT_ID.into()),
            (
                "SPELLHOST_GITHUB_CLIENT_SECRET".into(),
                CLIENT_SECRET.into(),
            ),
            (
                "SPELLHOST_GITHUB_AUTHORIZE_URL".into(),
                format!("{base}/login/oauth/authorize"),
            ),
            (
                "SPELLHOST_GITHUB_TOKEN_URL".into(),
                format!("{base}/login/oauth/access_token"),
            ),
            ("SPELLHOST_GITHUB_API_URL".into(), base),
            ("SPELLHOST_PUBLIC_URL".into(), PUBLIC_URL.into()),
        ]
    }

    fn add(&self, id: i64, login: &str, email: &str, verified: bool) {
        let emails = json!([
            {"email": format!("noreply-{id}@users.noreply.github.com"), "primary": false,
             "verified": true, "visibility": null},
            {"email": email, "primary": true, "verified": verified, "visibility": "private"},
        ]);
        self.lock().accounts.insert(
            id,
            Account {
                id,
                login: login.to_owned(),
                emails,
            },
        );
    }

    fn rename(&self, id: i64, login: &str) {
        self.lock().accounts.get_mut(&id).expect("account").login = login.to_owned();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake state")
    }

    /// The user approves on GitHub: checks the authorize URL spellhost redirected to and
    /// mints a code for it.
    fn approve(&self, authorize_url: &str, account_id: i64) -> String {
        let url = reqwest::Url::parse(authorize_url).expect("authorize URL");
        assert_eq!(url.path(), "/login/oauth/authorize");
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(query["client_id"], CLIENT_ID);
        assert_eq!(query["redirect_uri"], format!("{PUBLIC_URL}/auth/callback"));
        assert_eq!(query["scope"], "read:user user:email");
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["code_challenge"].len(), 43);
        assert!(query["state"].len() >= 32);
        let mut state = self.lock();
        state.next += 1;
        let code = format!("code{}", state.next);
        state.codes.insert(
            code.clone(),
            Grant {
                account_id,
                challenge: query["code_challenge"].clone(),
                redirect_uri: query["redirect_uri"].clone(),
            },
        );
        code
    }
}

async fn token(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut state = state.lock().expect("fake state");
    state.token_requests.push(form.clone());
    assert_eq!(
        headers.get("accept").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let refuse = |error: &str| axum::Json(json!({"error": error, "error_description": "x"}));
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return refuse("incorrect_client_credentials").into_response();
    }
    let Some(grant) = form.get("code").and_then(|code| state.codes.remove(code)) else {
        return refuse("bad_verification_code").into_response();
    };
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return refuse("redirect_uri_mismatch").into_response();
    }
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier));
    if challenge != grant.challenge {
        return refuse("bad_verification_code").into_response();
    }
    state.next += 1;
    let access_token = format!("gho_fake{}", state.next);
    state.tokens.insert(access_token.clone(), grant.account_id);
    axum::Json(json!({
        "access_token": access_token, "token_type": "bearer", "scope": "read:user,user:email",
    }))
    .into_response()
}

fn account_of(state: &Shared, headers: &HeaderMap) -> Option<Account> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let state = state.lock().expect("fake state");
    let id = state.tokens.get(token)?;
    state.accounts.get(id).cloned()
}

async fn user(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match account_of(&state, &headers) {
        Some(account) => axum::Json(json!({
            "login": account.login, "id": account.id, "type": "User", "name": null,
        }))
        .into_response(),
        None => (
            AxumStatus::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response(),
    }
}

async fn emails(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match account_of(&state, &headers) {
        Some(account) => axum::Json(account.emails).into_response(),
        None => (
            AxumStatus::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response(),
    }
}

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The `name=value` part of the response's `Set-Cookie` for `name`, and the whole header.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().unwrap_or_default().to_owned();
            (pair, v.to_owned())
        })
}

/// A login begun: the authorize URL and the state cookie (`name=value`).
struct Begun {
    location: String,
    cookie: String,
    state: String,
}

async fn begin(app: &TestApp, query: &str) -> Begun {
    let response = browser()
        .get(app.url(&format!("/auth/github{query}")))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let (cookie, whole) = set_cookie(&response, "__Host-spellhost_oauth").expect("state cookie");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(whole.contains(attribute), "{whole}");
    }
    let state = reqwest::Url::parse(&location)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    Begun {
        location,
        cookie,
        state,
    }
}

async fn callback(
    app: &TestApp,
    cookie: Option<&str>,
    code: &str,
    state: &str,
    json: bool,
) -> reqwest::Response {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("code", code)
        .append_pair("state", state)
        .finish();
    let mut request = browser().get(app.url(&format!("/auth/callback?{query}")));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if json {
        request = request.header("accept", "application/json");
    }
    request.send().await.expect("request")
}

/// A whole login of GitHub account `account_id` asking for JSON: the callback's answer.
async fn login(app: &TestApp, fake: &FakeGithub, account_id: i64) -> (StatusCode, Value) {
    let begun = begin(app, "").await;
    let code = fake.approve(&begun.location, account_id);
    let response = callback(app, Some(&begun.cookie), &code, &begun.state, true).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn with_github(backend: &Backend) -> (TestApp, FakeGithub) {
    let fake = FakeGithub::start().await;
    let vars = fake.vars();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (spawn_app_with(backend, &vars).await, fake)
}

fn token_of(body: &Value) -> String {
    body["session_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no session token in {body}"))
        .to_owned()
}

on_both_databases! {
    async fn a_github_login_creates_the_user_and_a_session_that_authenticates_v1(backend) {
        let (app, fake) = with_github(&backend).await;
        fake.add(583231, "Octo_Cat", "octo@example.com", true);
        let (status, body) = login(&app, &fake, 583231).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = token_of(&body);
        assert!(token.starts_with("sps_"), "{token}");
        assert_eq!(body["user"]["handle"], "octo-cat");
        assert_eq!(body["user"]["email"], "octo@example.com");
        assert!(body["expires_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{body}");
        // The fake checked the PKCE verifier against the challenge; spellhost sent it.
        let sent = fake.lock().token_requests.last().cloned().expect("token request");
        assert_eq!(sent["code_verifier"].len(), 43);
        // The session authenticates /v1 routes like an unrestricted key, any scope.
        let (status, me) = app.get("/v1/users/me", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["handle"], "octo-cat");
        let (status, created) = app.post("/v1/keys", Some(&token), json!({"name": "ci"})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        // The export lists the session, never its secret.
        let response = app
            .client
            .get(app.url("/v1/users/me/export"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("export");
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("text");
        assert!(!text.contains(&token[17..]), "the export shows the session secret");
        let document: Value = serde_json::from_str(&text).expect("json");
        let sessions = document["sessions"].as_array().expect("sessions");
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0]["prefix"], token[..16]);
        assert_eq!(document["profile"]["github_id"], 583231);
    }

    async fn a_browser_login_sets_the_session_cookie_and_redirects(backend) {
        let (app, fake) = with_github(&backend).await;
        fake.add(7, "ada", "ada@example.com", true);
        let begun = begin(&app, "?redirect=/spells%3Fx%3D1").await;
        let code = fake.approve(&begun.location, 7);
        let response = callback(&app, Some(&begun.cookie), &code, &begun.state, false).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()["location"], "/spells?x=1");
        let (session, whole) =
            set_cookie(&response, "__Host-spellhost_session").expect("session cookie");
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(whole.contains(attribute), "{whole}");
        }
        let (cleared, _) = set_cookie(&response, "__Host-spellhost_oauth").expect("cleared");
        assert_eq!(cleared, "__Host-spellhost_oauth=");
        let me = app
            .client
            .get(app.url("/v1/users/me"))
            .header("cookie", &session)
            .send()
            .await
            .expect("me");
        assert_eq!(me.status(), StatusCode::OK);
        // Only paths of this site are accepted as a redirect.
        for foreign in ["//evil.example", "https%3A%2F%2Fevil.example%2F"] {
            let response = browser()
                .get(app.url(&format!("/auth/github?redirect={foreign}")))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{foreign}");
        }
    }

    async fn a_missing_forged_mismatched_expired_or_replayed_state_is_refused(backend) {
        let (app, fake) = with_github(&backend).await;
        fake.add(1, "grace", "grace@example.com", true);
        let reason = |response: reqwest::Response| async move {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let body: Value = response.json().await.expect("json");
            assert_eq!(error_code(&body), "invalid_oauth_state", "{body}");
            body["error"]["reason"].as_str().expect("reason").to_owned()
        };
        let begun = begin(&app, "").await;
        let code = fake.approve(&begun.location, 1);
        assert_eq!(reason(callback(&app, None, &code, &begun.state, true).await).await, "missing");
        let wrong = callback(&app, Some(&begun.cookie), &code, "not-the-state", true).await;
        assert_eq!(reason(wrong).await, "mismatch");
        let mut forged = begun.cookie.clone();
        forged.insert(forged.len() - 2, 'A');
        forged.truncate(forged.len() - 1);
        assert_eq!(
            reason(callback(&app, Some(&forged), &code, &begun.state, true).await).await,
            "invalid"
        );
        // The real one goes through once; its replay is refused.
        let first = callback(&app, Some(&begun.cookie), &code, &begun.state, true).await;
        assert_eq!(first.status(), StatusCode::OK);
        let again = callback(&app, Some(&begun.cookie), &code, &begun.state, true).await;
        assert_eq!(reason(again).await, "replayed");
        // A login left for more than ten minutes expires.
        let late = begin(&app, "").await;
        let code = fake.approve(&late.location, 1);
        app.app.db.clock().advance(10 * 60 * 1000 + 1);
        assert_eq!(
            reason(callback(&app, Some(&late.cookie), &code, &late.state, true).await).await,
            "expired"
        );
    }

    async fn a_code_github_refuses_and_an_unverified_email_are_clear_errors(backend) {
        let (app, fake) = with_github(&backend).await;
        fake.add(2, "linus", "linus@example.com", false);
        let begun = begin(&app, "").await;
        let response = callback(&app, Some(&begun.cookie), "made-up", &begun.state, true).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.expect("json");
        assert_eq!(error_code(&body), "oauth_code_rejected", "{body}");
        assert_eq!(body["error"]["github_error"], "bad_verification_code");
        assert!(!body.to_string().contains(CLIENT_SECRET));
        let (status, body) = login(&app, &fake, 2).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(error_code(&body), "email_unverified");
        // Declined on GitHub: it sends the browser back with an error instead of a code.
        let begun = begin(&app, "").await;
        let declined = browser()
            .get(app.url(&format!(
                "/auth/callback?error=access_denied&state={}",
                begun.state
            )))
            .header("cookie", &begun.cookie)
            .send()
            .await
            .expect("request");
        assert_eq!(declined.status(), StatusCode::BAD_REQUEST);
        let body: Value = declined.json().await.expect("json");
        assert_eq!(error_code(&body), "oauth_code_rejected", "{body}");
        assert_eq!(body["error"]["github_error"], "access_denied");
        assert!(
            spellhost::auth::user_by_handle(&app.app.db, "linus").await.expect("db").is_none(),
            "no user without a verified email"
        );
    }

    async fn a_second_login_and_a_renamed_login_find_the_same_user(backend) {
        let (app, fake) = with_github(&backend).await;
        // A handle already taken makes the new one unique by a suffix.
        app.user("mona", 0).await;
        fake.add(9, "mona", "mona@example.com", true);
        let (_, first) = login(&app, &fake, 9).await;
        assert_eq!(first["user"]["handle"], "mona-2", "{first}");
        let (_, second) = login(&app, &fake, 9).await;
        assert_eq!(second["user"]["handle"], "mona-2");
        assert_ne!(token_of(&first), token_of(&second), "a new session");
        fake.rename(9, "mona-renamed");
        let (_, renamed) = login(&app, &fake, 9).await;
        assert_eq!(renamed["user"]["handle"], "mona-2", "the same user");
        // All three sessions are the one user's, and each works.
        for body in [&first, &second, &renamed] {
            let (status, me) = app.get("/v1/users/me", Some(&token_of(body))).await;
            assert_eq!((status, me["handle"].as_str()), (StatusCode::OK, Some("mona-2")));
        }
        assert!(
            spellhost::auth::user_by_handle(&app.app.db, "mona-renamed").await.expect("db").is_none()
        );
    }

    async fn logout_revokes_the_session_and_it_then_fails_401(backend) {
        let (app, fake) = with_github(&backend).await;
        fake.add(3, "ken", "ken@example.com", true);
        let (_, body) = login(&app, &fake, 3).await;
        let token = token_of(&body);
        let (_, other) = login(&app, &fake, 3).await;
        let (status, revoked) = app.delete("/v1/sessions/current", &token).await;
        assert_eq!(status, StatusCode::OK, "{revoked}");
        let (status, body) = app.get("/v1/users/me", Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        // Only that session ended.
        let (status, _) = app.get("/v1/users/me", Some(&token_of(&other))).await;
        assert_eq!(status, StatusCode::OK);
        // An API key is not a session.
        let user = app.user("keyholder", 0).await;
        let (status, body) = app.delete("/v1/sessions/current", &user.key).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        // A session expires after SPELLHOST_SESSION_TTL_SECS (30 days by default).
        app.app.db.clock().advance(30 * 24 * 3600 * 1000);
        let (status, _) = app.get("/v1/users/me", Some(&token_of(&other))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired session");
    }

    async fn sessions_are_rate_limited_each_on_its_own(backend) {
        let fake = FakeGithub::start().await;
        let mut vars = fake.vars();
        vars.push(("SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE".into(), "2".into()));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = spawn_app_with(&backend, &vars).await;
        fake.add(6, "rita", "rita@example.com", true);
        let (_, first) = login(&app, &fake, 6).await;
        let (_, second) = login(&app, &fake, 6).await;
        for _ in 0..2 {
            let (status, _) = app.get("/v1/users/me", Some(&token_of(&first))).await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, body) = app.get("/v1/users/me", Some(&token_of(&first))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(error_code(&body), "rate_limited");
        let (status, _) = app.get("/v1/users/me", Some(&token_of(&second))).await;
        assert_eq!(status, StatusCode::OK, "another session has its own limit");
    }

    async fn cookie_authenticated_writes_need_the_same_origin_and_bearer_ones_do_not(backend) {
        let (app, fake) = with_github(&backend).await;
        fake.add(4, "tim", "tim@example.com", true);
        let (_, body) = login(&app, &fake, 4).await;
        let token = token_of(&body);
        let cookie = format!("__Host-spellhost_session={token}");
        let post = |headers: &[(&str, &str)]| {
            let mut request = app
                .client
                .post(app.url("/v1/keys"))
                .header("cookie", &cookie)
                .json(&json!({"name": "k"}));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send()
        };
        for headers in [
            vec![],
            vec![("origin", "https://evil.example")],
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
        ] {
            let response = post(&headers).await.expect("request");
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(error_code(&body), "csrf_rejected");
        }
        for headers in [
            vec![("origin", PUBLIC_URL)],
            vec![("sec-fetch-site", "same-origin")],
        ] {
            let response = post(&headers).await.expect("request");
            assert_eq!(response.status(), StatusCode::CREATED, "{headers:?}");
        }
        // Reads need no proof; bearer writes need none either.
        let read = app.client.get(app.url("/v1/keys")).header("cookie", &cookie).send().await;
        assert_eq!(read.expect("read").status(), StatusCode::OK);
        let (status, _) = app.post("/v1/keys", Some(&token), json!({"name": "bearer"})).await;
        assert_eq!(status, StatusCode::CREATED);
        // Logging out by cookie is a write too.
        let logout = app
            .client
            .delete(app.url("/v1/sessions/current"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("logout");
        assert_eq!(logout.status(), StatusCode::FORBIDDEN);
    }

    async fn an_erased_user_can_never_log_in_again(backend) {
        let (app, fake) = with_github(&backend).await;
        fake.add(5, "erin", "erin@example.com", true);
        let (_, body) = login(&app, &fake, 5).await;
        let token = token_of(&body);
        let response = app
            .client
            .delete(app.url("/v1/users/me"))
            .bearer_auth(&token)
            .json(&json!({"confirm": "erin"}))
            .send()
            .await
            .expect("erase");
        assert_eq!(response.status(), StatusCode::OK);
        let (status, _) = app.get("/v1/users/me", Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the session died with the user");
        let (status, body) = login(&app, &fake, 5).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(error_code(&body), "account_deleted");
    }

    async fn without_github_configured_the_login_routes_answer_login_disabled(backend) {
        let app = spawn_app(&backend).await;
        for path in ["/auth/github", "/auth/callback?code=x&state=y"] {
            let response = browser().get(app.url(path)).send().await.expect("request");
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(error_code(&body), "login_disabled", "{path}");
        }
    }
}
