//! The hardened HTTP edge, black-box: rate limits and client addresses, floods of invalid
//! keys, slow clients and connection caps (raw sockets), security headers, CORS, errors raised
//! below the router, creation limits, the metrics token.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::app::{Backend, TestApp, error_code, spawn_app_with};
use crate::helpers::{eventually, example_bundle};
use crate::on_both_databases;

/// How long a test waits for the server to close a connection or answer: generous, since
/// the suite runs on a loaded machine. No test asserts how fast it happened.
const PATIENCE: Duration = Duration::from_secs(60);

/// A well-formed key (`spk_<id>_<secret><crc>`) for `id` with a made-up secret: it passes the
/// format and checksum checks, so only the database and argon2 can tell it is wrong.
fn forged_key(id: &str, n: usize) -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let secret: String = format!("{n:032}")
        .bytes()
        .map(|b| BASE62[usize::from(b) % 62] as char)
        .collect();
    let body = format!("spk_{id}_{secret}");
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    format!("{body}{}", String::from_utf8_lossy(&sum))
}

fn key_id(key: &str) -> &str {
    &key[4..16]
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A request as a browser or proxy would send it, with extra headers.
async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

/// Sends `bytes` on a fresh connection and reads until the server closes it.
async fn raw_exchange(app: &TestApp, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(app.address).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&received).into_owned()
}

/// The status and JSON body of one raw HTTP/1.1 response.
fn parse_raw(response: &str) -> (u16, String, Value) {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    let json = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body: {response}"));
    (status, head.to_ascii_lowercase(), json)
}

fn assert_security_headers(head: &str) {
    for expected in [
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "x-frame-options: deny",
        "content-security-policy: default-src 'none'",
    ] {
        assert!(head.contains(expected), "{expected} missing in {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_key_gets_its_limit_then_429_with_retry_after_and_ratelimit_headers() {
    let app = spawn_app_with(
        &Backend::Sqlite,
        &[("SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE", "3")],
    )
    .await;
    let user = app.user("ada", 0).await;
    let other = app.user("bob", 0).await;
    for remaining in ["2", "1", "0"] {
        let response = app
            .client
            .get(app.url("/v1/users/me"))
            .bearer_auth(&user.key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-limit"), Some("3"));
        assert_eq!(header(&response, "ratelimit-remaining"), Some(remaining));
        assert!(header(&response, "ratelimit-reset").is_some());
    }
    let refused = app
        .client
        .get(app.url("/v1/users/me"))
        .bearer_auth(&user.key)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&refused, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&refused, "ratelimit-remaining"), Some("0"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(error_code(&body), "rate_limited");
    assert_eq!(body["error"]["limit"], "key");
    // Another key is counted apart; probes and scrapes are never limited.
    assert_eq!(
        app.get("/v1/users/me", Some(&other.key)).await.0,
        StatusCode::OK
    );
    for _ in 0..5 {
        let health = get_with(&app, "/healthz", &[]).await;
        assert_eq!(health.status(), StatusCode::OK);
        assert!(header(&health, "ratelimit-limit").is_none());
    }
    assert!(
        app.exposition()
            .await
            .contains("spellhost_rate_limited_total{limit=\"key\"} 1")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_requests_are_limited_per_client_address_and_forwarded_headers_only_count_from_trusted_proxies()
 {
    // Not a trusted proxy: X-Forwarded-For and Fly-Client-IP are the client's word, ignored.
    let app = spawn_app_with(
        &Backend::Sqlite,
        &[("SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "2")],
    )
    .await;
    let mut statuses = Vec::new();
    for n in 0..3 {
        let spoofed = format!("203.0.113.{n}");
        let response = get_with(
            &app,
            "/v1/nothing-here",
            &[("x-forwarded-for", &spoofed), ("fly-client-ip", &spoofed)],
        )
        .await;
        statuses.push(response.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Requests with a key that is not valid count against the address too.
    let (status, body) = app.get("/v1/users/me", Some("spk_garbage")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["limit"], "address");
    app.shutdown().await;

    // Behind a trusted proxy, each forwarded client has its own limit.
    let app = spawn_app_with(
        &Backend::Sqlite,
        &[
            ("SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "2"),
            ("SPELLHOST_TRUSTED_PROXIES", "127.0.0.0/8, ::1"),
        ],
    )
    .await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..2 {
            let response = get_with(&app, "/v1/nothing-here", &[("x-forwarded-for", client)]).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
        }
        // The client's own claim left of what the proxy saw changes nothing.
        let spoofed = format!("198.51.100.7, {client}");
        let response = get_with(&app, "/v1/nothing-here", &[("x-forwarded-for", &spoofed)]).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // A request without a key to an authenticated route counts once.
    for expected in [
        StatusCode::UNAUTHORIZED,
        StatusCode::UNAUTHORIZED,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let response = get_with(&app, "/v1/users/me", &[("x-forwarded-for", "203.0.113.5")]).await;
        assert_eq!(response.status(), expected);
    }
    let fly = get_with(
        &app,
        "/v1/nothing-here",
        &[("fly-client-ip", "203.0.113.9")],
    )
    .await;
    assert_eq!(fly.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&fly, "ratelimit-remaining"), Some("1"));
    app.shutdown().await;
}

on_both_databases! {
    async fn a_flood_of_wrong_keys_costs_no_argon2_per_request_and_never_starves_a_fresh_key(backend) {
        let app = spawn_app_with(&backend, &[
            ("SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "5"),
            ("SPELLHOST_TRUSTED_PROXIES", "127.0.0.0/8"),
        ]).await;
        let attacker = app.user("mallory", 0).await;
        let id = key_id(&attacker.key).to_owned();
        let before = app.app.auth.verifications();

        // Malformed keys and well-formed keys of ids that do not exist: no argon2 at all.
        let cheap: Vec<String> = (0..40)
            .map(|n| if n % 2 == 0 { format!("spk_{n}") } else { forged_key(&format!("{n:012}"), n) })
            .collect();
        let statuses = flood(&app, &cheap, |n| format!("198.51.100.{}", n % 200)).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
        assert_eq!(app.app.auth.verifications(), before, "unknown or malformed keys ran argon2");

        // Wrong secrets for a real key id from one address: its limit bounds the argon2 work.
        let wrong: Vec<String> = (0..60).map(|n| forged_key(&id, n)).collect();
        let statuses = flood(&app, &wrong, |_| "198.51.100.250".to_owned()).await;
        assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
        assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
        assert!(app.app.auth.verifications() - before <= 5, "argon2 ran past the address's limit");

        // The same from 200 addresses at once (each within its limit), while a user makes a
        // request with a key never verified before: that key is answered, never 503.
        let victim = app.user("ada", 0).await;
        let mark = app.app.auth.verifications();
        let wrong: Vec<String> = (100..300).map(|n| forged_key(&id, n)).collect();
        let flood_task = {
            let client = app.client.clone();
            let url = app.url("/v1/users/me");
            tokio::spawn(async move {
                let requests = wrong.into_iter().enumerate().map(|(n, key)| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        client.get(url).bearer_auth(key)
                            .header("x-forwarded-for", format!("10.1.{}.{}", n / 200, n % 200))
                            .send().await.expect("request").status()
                    }
                });
                futures::future::join_all(requests).await
            })
        };
        eventually("the flood to keep argon2 busy", || async {
            app.app.auth.verifications() >= mark + 2
        }).await;
        let fresh = app.client.get(app.url("/v1/users/me")).bearer_auth(&victim.key)
            .header("x-forwarded-for", "192.0.2.1").send().await.expect("request");
        assert_eq!(fresh.status(), StatusCode::OK);
        let statuses = flood_task.await.expect("flood");
        assert!(
            statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
            "{statuses:?}"
        );
        app.shutdown().await;
    }

    async fn creation_limits_answer_422_limit_reached_naming_the_limit(backend) {
        let app = spawn_app_with(&backend, &[
            ("SPELLHOST_KEYS_PER_USER_MAX", "2"),
            ("SPELLHOST_SIGNERS_PER_USER_MAX", "1"),
            ("SPELLHOST_SPELLS_PER_USER_MAX", "1"),
        ]).await;
        let user = app.user("ada", 0).await;
        let (status, created) = app.post("/v1/keys", Some(&user.key), json!({"name": "ci"})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let (status, body) = app.post("/v1/keys", Some(&user.key), json!({"name": "more"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(error_code(&body), "limit_reached");
        assert_eq!(body["error"]["limit"], "keys_per_user");
        assert_eq!(body["error"]["max"], 2);
        // Deleting one makes room again.
        let prefix = created["prefix"].as_str().expect("prefix").to_owned();
        assert_eq!(app.delete(&format!("/v1/keys/{prefix}"), &user.key).await.0, StatusCode::NO_CONTENT);
        let (status, _) = app.post("/v1/keys", Some(&user.key), json!({"name": "again"})).await;
        assert_eq!(status, StatusCode::CREATED);

        app.publish_examples(&user, &["hello"]).await;
        let (private_pem, _, public_pem) = crate::helpers::new_signer();
        let second = crate::helpers::key_signer_body("second", &private_pem, &public_pem, &user.handle);
        let (status, body) = app.post("/v1/signers", Some(&user.key), second).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["limit"], "signers_per_user");
        let (status, body) = app.publish(&user, &example_bundle("wordfreq")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(error_code(&body), "limit_reached");
        assert_eq!(body["error"]["limit"], "spells_per_user");
        app.shutdown().await;

        let app = spawn_app_with(&backend, &[("SPELLHOST_VERSIONS_PER_USER_MAX", "1")]).await;
        let user = app.user("ada", 0).await;
        app.publish_examples(&user, &["hello"]).await;
        let (status, body) = app.publish(&user, &example_bundle("wordfreq")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["limit"], "versions_per_user");
        app.shutdown().await;
    }
}

/// Sends `keys` at `/v1/users/me` at once, each from the address `from(n)` (through the
/// trusted loopback proxy), and returns the statuses.
async fn flood(app: &TestApp, keys: &[String], from: impl Fn(usize) -> String) -> Vec<StatusCode> {
    let requests = keys.iter().enumerate().map(|(n, key)| {
        app.client
            .get(app.url("/v1/users/me"))
            .bearer_auth(key)
            .header("x-forwarded-for", from(n))
            .send()
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|response| response.expect("request").status())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_headers_are_on_every_response_and_no_store_on_authenticated_ones() {
    let app = spawn_app_with(&Backend::Sqlite, &[]).await;
    let user = app.user("ada", 0).await;
    for (path, key, status) in [
        ("/healthz", None, StatusCode::OK),
        ("/no/such/route", None, StatusCode::NOT_FOUND),
        ("/v1/users/me", None, StatusCode::UNAUTHORIZED),
        ("/v1/users/me", Some(user.key.as_str()), StatusCode::OK),
    ] {
        let mut request = app.client.get(app.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), status, "{path}");
        let head: String = response
            .headers()
            .iter()
            .map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap_or("")))
            .collect::<String>()
            .to_ascii_lowercase();
        assert_security_headers(&head);
        assert!(
            !head.contains("strict-transport-security"),
            "off without TLS: {head}"
        );
        let no_store = header(&response, "cache-control") == Some("no-store");
        assert_eq!(no_store, path == "/v1/users/me", "{path}: {head}");
    }
    app.shutdown().await;

    let app = spawn_app_with(&Backend::Sqlite, &[("SPELLHOST_HSTS", "true")]).await;
    let response = get_with(&app, "/no/such/route", &[]).await;
    assert_eq!(
        header(&response, "strict-transport-security"),
        Some("max-age=31536000")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cors_is_off_by_default_and_allows_only_listed_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/cast"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let app = spawn_app_with(&Backend::Sqlite, &[]).await;
    let response = preflight(&app, "https://app.example.com")
        .await
        .expect("request");
    assert!(!response.status().is_success());
    assert!(header(&response, "access-control-allow-origin").is_none());
    app.shutdown().await;

    let app = spawn_app_with(
        &Backend::Sqlite,
        &[("SPELLHOST_CORS_ORIGINS", "https://app.example.com")],
    )
    .await;
    let allowed = preflight(&app, "https://app.example.com")
        .await
        .expect("request");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let methods = header(&allowed, "access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST"), "{methods}");
    let foreign = preflight(&app, "https://evil.example")
        .await
        .expect("request");
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert!(header(&foreign, "access-control-allow-origin").is_none());
    let body: Value = foreign.json().await.expect("json");
    assert_eq!(error_code(&body), "forbidden");
    let simple = get_with(&app, "/healthz", &[("origin", "https://app.example.com")]).await;
    assert_eq!(
        header(&simple, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_hyper_cannot_read_are_answered_in_the_one_error_shape() {
    let app = spawn_app_with(&Backend::Sqlite, &[]).await;
    let long = "a".repeat(70_000);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        // Past hyper's own limit on request targets (65 534 bytes).
        (
            format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            414,
            "uri_too_long",
        ),
        // Past ours (8 KiB): the router answers.
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &long[..10_000])
                .into_bytes(),
            414,
            "uri_too_long",
        ),
        (b"HELLO\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
            "bad_request",
        ),
        // More headers than hyper reads (100).
        (
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..120).map(|n| format!("X-H{n}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let response = raw_exchange(&app, &request).await;
        let (got, head, body) = parse_raw(&response);
        assert_eq!(got, status, "{response}");
        assert_eq!(error_code(&body), code, "{response}");
        assert_security_headers(&head);
        assert!(head.contains("content-type: application/json"), "{head}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_are_cut_off_partial_headers_stalled_bodies_idle_connections() {
    let app = spawn_app_with(
        &Backend::Sqlite,
        &[
            ("SPELLHOST_HTTP_HEADER_READ_TIMEOUT_SECS", "1"),
            ("SPELLHOST_HTTP_BODY_READ_TIMEOUT_SECS", "1"),
            ("SPELLHOST_HTTP_IDLE_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    // Half a request head, then nothing: closed without an answer.
    let partial = raw_exchange(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    assert!(partial.is_empty(), "{partial}");
    // A whole head and half a body: 408 in the one shape, then closed.
    let stalled = raw_exchange(
        &app,
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\":",
    )
    .await;
    let (status, head, body) = parse_raw(&stalled);
    assert_eq!(status, 408, "{stalled}");
    assert_eq!(error_code(&body), "request_timeout");
    assert!(head.contains("connection: close"), "{head}");
    // A keep-alive connection that goes quiet after its answer: closed.
    let idle = raw_exchange(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");
    let metrics = app.exposition().await;
    for reason in ["header_read_timeout", "idle_timeout"] {
        assert!(
            metrics.contains(&format!(
                "spellhost_http_connections_closed_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_caps_are_answered_and_closed() {
    // Per address: the third connection from one address is refused with 429.
    let app = spawn_app_with(
        &Backend::Sqlite,
        &[
            ("SPELLHOST_HTTP_CONNECTIONS_PER_IP_MAX", "2"),
            ("SPELLHOST_HTTP_CONNECTIONS_MAX", "10"),
        ],
    )
    .await;
    let first = TcpStream::connect(app.address).await.expect("connect");
    let mut second = TcpStream::connect(app.address).await.expect("connect");
    let refused = raw_exchange(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (status, head, body) = parse_raw(&refused);
    assert_eq!(status, 429, "{refused}");
    assert_eq!(error_code(&body), "rate_limited");
    assert!(head.contains("retry-after: 1"), "{head}");
    // The admitted ones are served; once one closes, a new one is admitted.
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let served = read_to_close(&mut second).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    eventually("a place freed by a closed connection", || async {
        let response = raw_exchange(
            &app,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        response.starts_with("HTTP/1.1 200")
    })
    .await;
    drop(first);
    app.shutdown().await;

    // In all: past the total, 503.
    let app = spawn_app_with(
        &Backend::Sqlite,
        &[
            ("SPELLHOST_HTTP_CONNECTIONS_PER_IP_MAX", "1"),
            ("SPELLHOST_HTTP_CONNECTIONS_MAX", "1"),
        ],
    )
    .await;
    let held = TcpStream::connect(app.address).await.expect("connect");
    let refused = raw_exchange(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (status, _, body) = parse_raw(&refused);
    assert_eq!(status, 503, "{refused}");
    assert_eq!(error_code(&body), "overloaded");
    drop(held);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_need_the_token_when_one_is_set_except_on_the_private_listener() {
    let token = "metrics-token-0123456789";
    let private = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let app = spawn_app_with(
        &Backend::Sqlite,
        &[
            ("SPELLHOST_METRICS_TOKEN", token),
            ("SPELLHOST_METRICS_LISTEN", &private),
        ],
    )
    .await;
    // The server binds it as it starts serving, after `spawn_app` returns.
    let url = format!("http://{private}/metrics");
    eventually("the private metrics listener", || async {
        app.client.get(&url).send().await.is_ok()
    })
    .await;
    let scraped = app.client.get(&url).send().await.expect("request");
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(scraped.text().await.expect("text").contains("spellhost_"));
    let other = app
        .client
        .get(format!("http://{private}/v1/users/me"))
        .send()
        .await
        .expect("request");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let (status, body) = app.get("/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthorized");
    let (status, _) = app.get("/metrics", Some("metrics-token-wrong-wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.expect("text").contains("spellhost_"));
    app.shutdown().await;
}
