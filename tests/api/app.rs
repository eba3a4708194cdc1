//! `spawn_app`: the real server on port 0 with a fresh database (SQLite in a temporary
//! directory, or a fresh PostgreSQL database when `SPELLHOST_TEST_DATABASE_URL` is set), and
//! typed helpers to talk to it over HTTP.

use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::Value;
use spellhost::supply_chain::{Signature, SpellBundle};
use spellhost::{App, AppState};

use crate::helpers::{example_bundle, repo_path};

/// Which database a test runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL when `SPELLHOST_TEST_DATABASE_URL` is set.
    pub fn postgres() -> Option<Backend> {
        std::env::var("SPELLHOST_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }

    /// A fresh, empty database for this backend, dropped when the guard is dropped.
    pub async fn fresh_database(&self, data_dir: &std::path::Path) -> TestDatabase {
        let url = match self {
            Backend::Sqlite => format!("sqlite://{}", data_dir.join("spellhost.db").display()),
            Backend::Postgres(base) => {
                use sqlx::Connection as _;
                let name = format!("{}{}", database_prefix(), uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(base)
                    .await
                    .expect("PostgreSQL reachable");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("create database");
                let _ = admin.close().await;
                let (prefix, _) = base.rsplit_once('/').expect("URL has a database");
                format!("{prefix}/{name}")
            }
        };
        TestDatabase {
            backend: self.clone(),
            url,
        }
    }
}

/// The prefix of the PostgreSQL databases the tests create (`SPELLHOST_TEST_DATABASE_PREFIX`,
/// default `spellhost_test_`), so that tests can share a server with other users. Only
/// lowercase letters, digits and `_`: it becomes part of an SQL identifier.
fn database_prefix() -> String {
    let prefix = std::env::var("SPELLHOST_TEST_DATABASE_PREFIX")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "spellhost_test_".to_owned());
    assert!(
        prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "SPELLHOST_TEST_DATABASE_PREFIX must be [a-z][a-z0-9_]*, got {prefix:?}"
    );
    prefix
}

/// A test's own database. Dropping it drops the PostgreSQL database (SQLite files go with
/// their temporary directory), also when the test fails: a panicking test unwinds through
/// this guard, so runs leave the shared server as they found it.
pub struct TestDatabase {
    backend: Backend,
    pub url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Backend::Postgres(base) = &self.backend else {
            return;
        };
        let Some((_, name)) = self.url.rsplit_once('/') else {
            return;
        };
        if !name.starts_with(&database_prefix()) {
            return;
        }
        let (base, name) = (base.clone(), name.to_owned());
        // Drop may run inside a tokio runtime (or while one unwinds): use a runtime of our own
        // on a thread of our own. `WITH (FORCE)` ends connections a failed test left open.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&base).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop the test database {}", self.url);
        }
    }
}

/// Runs `$body` once on SQLite and once on PostgreSQL (skipped without a test database).
#[macro_export]
macro_rules! on_both_databases {
    ($(async fn $name:ident($backend:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                async fn case($backend: $crate::app::Backend) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    case($crate::app::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    match $crate::app::Backend::postgres() {
                        Some(backend) => case(backend).await,
                        None => {
                            // CI sets it: there a PostgreSQL case must run, never pass unrun.
                            assert!(
                                std::env::var("SPELLHOST_TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                                "SPELLHOST_TEST_REQUIRE_POSTGRES=1 but SPELLHOST_TEST_DATABASE_URL is not set"
                            );
                            eprintln!("skipped: set SPELLHOST_TEST_DATABASE_URL to run on PostgreSQL")
                        }
                    }
                }
            }
        )*
    };
}

pub struct TestApp {
    pub address: SocketAddr,
    pub app: App,
    pub client: reqwest::Client,
    /// The app's database; dropped (PostgreSQL) after the app, even if the test fails.
    _database: TestDatabase,
    /// Kept alive for the app's lifetime (the SQLite file and artifacts live here).
    _data_dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app(backend: &Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: &Backend, extra: &[(&str, &str)]) -> TestApp {
    // The server's logs, when asked for (`RUST_LOG=warn cargo test …`).
    if std::env::var_os("RUST_LOG").is_some() {
        spellhost::telemetry::init_logging(false);
    }
    let data_dir = tempfile::tempdir().expect("tempdir");
    let database = backend.fresh_database(data_dir.path()).await;
    let database_url = database.url.clone();
    let data = data_dir.path().display().to_string();
    let mut vars = vec![
        ("SPELLHOST_LISTEN", "127.0.0.1:0"),
        ("SPELLHOST_DATA_DIR", data.as_str()),
        ("SPELLHOST_DATABASE_URL", database_url.as_str()),
        (
            "SPELLHOST_SECRET_KEY",
            "test-secret-test-secret-test-secret-0123",
        ),
        ("SPELLHOST_WORKERS", "2"),
        // A cast that waits for a worker is refused after this long. On a busy machine the
        // default (2 s) would turn a slow test into a 503; here it only bounds a runaway test.
        ("SPELLHOST_QUEUE_WAIT_MS_MAX", "60000"),
        // Likewise a publish's compile: unoptimized cranelift on a loaded machine can take
        // seconds over `wordfreq`; the default (20 s) is a production bound.
        ("SPELLHOST_COMPILE_TIME_MS_MAX", "300000"),
        // Blocked time is free unless a test prices it (`tests/api/wall_pricing.rs`): the
        // other tests' amounts are fuel arithmetic, and the default price would hold hundreds
        // of thousands of µ$ of wall time for every cast.
        ("SPELLHOST_PRICE_MICROUSD_PER_WALL_MS", "0"),
        // Tests cast and poll as fast as they can, with one key, from one address, on many
        // connections: the rate limits and the per-address connection cap are off unless a
        // test is about them (tests/api/hardening.rs sets them).
        ("SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE", "0"),
        ("SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "0"),
        ("SPELLHOST_HTTP_CONNECTIONS_PER_IP_MAX", "4096"),
    ];
    vars.extend_from_slice(extra);
    let config = spellhost::config::Config::from_vars(&vars).expect("config");
    let app = AppState::build(config).await.expect("app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let app = app.clone();
        async move {
            spellhost::serve(app, listener, async move {
                let _ = on_shutdown.await;
            })
            .await
            .expect("serves");
        }
    });
    TestApp {
        address,
        app,
        client: reqwest::Client::new(),
        _database: database,
        _data_dir: data_dir,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// Another instance of the service on a test app's database, as after a restart elsewhere or
/// beside it behind a load balancer.
pub struct Instance {
    pub address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Instance {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops it gracefully (casts in flight settle, leases go back).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// A user, their API key and (once registered) their signing key.
#[derive(Clone)]
pub struct TestUser {
    pub id: i64,
    pub handle: String,
    pub key: String,
}

impl TestApp {
    /// The Prometheus text of `/metrics`.
    pub async fn exposition(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// A second instance of the service on this app's database and configuration.
    pub async fn second_instance(&self) -> Instance {
        let other: App = AppState::build(self.app.config.clone())
            .await
            .expect("builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            spellhost::serve(other, listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("serves");
        });
        Instance {
            address,
            stop,
            server,
        }
    }

    /// The app's database URL (for a second instance on the same database).
    pub fn database_url(&self) -> String {
        self._database.url.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops accepting, waits for casts in flight to settle.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.app.db.close().await;
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        read(request.send().await.expect("request")).await
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        read(request.send().await.expect("request")).await
    }

    pub async fn put(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        read(
            self.client
                .put(self.url(path))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// Creates a key for `user` over HTTP with `body` (`name`, `scopes`, `allowed_spells`,
    /// `expires_at`) and returns it as a user of its own.
    pub async fn key_for(&self, user: &TestUser, body: Value) -> TestUser {
        let (status, created) = self.post("/v1/keys", Some(&user.key), body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        TestUser {
            id: user.id,
            handle: user.handle.clone(),
            key: created["key"].as_str().expect("key").to_owned(),
        }
    }

    pub async fn delete(&self, path: &str, key: &str) -> (StatusCode, Value) {
        read(
            self.client
                .delete(self.url(path))
                .bearer_auth(key)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// A user with an API key and `credit_microusd` of granted credit (as the admin CLI does).
    pub async fn user(&self, handle: &str, credit_microusd: i64) -> TestUser {
        let user = spellhost::auth::create_user(
            &self.app.db,
            handle,
            &format!("{handle}@example.com"),
            false,
        )
        .await
        .expect("user");
        if credit_microusd > 0 {
            spellhost::money::post(
                &self.app.db,
                user.id,
                spellhost::money::EntryKind::Grant,
                spellhost::money::MicroUsd::new(credit_microusd),
                "test credit",
            )
            .await
            .expect("grant");
        }
        let (key, _) = self
            .app
            .auth
            .create_key(user.id, &spellhost::auth::KeySpec::unrestricted("test"))
            .await
            .expect("key");
        TestUser {
            id: user.id,
            handle: handle.to_owned(),
            key: key.expose().to_owned(),
        }
    }

    /// Registers the committed demo signer for `user` over HTTP.
    pub async fn register_demo_signer(&self, user: &TestUser) {
        let pem =
            std::fs::read_to_string(repo_path("spells/demo-key/spell.pub")).expect("demo key");
        let private =
            std::fs::read_to_string(repo_path("spells/demo-key/spell.key")).expect("demo key");
        self.register_key_signer(user, "demo", &private, &pem).await;
    }

    /// Registers a key signer for `user` over HTTP, with its proof of possession.
    pub async fn register_key_signer(
        &self,
        user: &TestUser,
        name: &str,
        private_pem: &str,
        public_pem: &str,
    ) {
        let body = crate::helpers::key_signer_body(name, private_pem, public_pem, &user.handle);
        let (status, body) = self.post("/v1/signers", Some(&user.key), body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Publishes a WAT module as `user/name` (version 1.0.0, manifest `[limits]` from
    /// `limits`), signed with a fresh key registered for `user` under `name`.
    pub async fn publish_wat(&self, user: &TestUser, name: &str, wat: &str, limits: &str) {
        let (private_pem, _, public_pem) = crate::helpers::new_signer();
        self.register_key_signer(user, name, &private_pem, &public_pem)
            .await;
        let module = wat::parse_str(wat).expect("valid WAT");
        let manifest = crate::helpers::manifest_text(name, limits);
        let bundle = crate::helpers::signed_bundle(module, &manifest, &private_pem);
        let (status, body) = self.publish(user, &bundle).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    pub async fn publish(&self, user: &TestUser, bundle: &SpellBundle) -> (StatusCode, Value) {
        let mut form = reqwest::multipart::Form::new()
            .part(
                "module",
                reqwest::multipart::Part::bytes(bundle.module.clone()),
            )
            .part(
                "manifest",
                reqwest::multipart::Part::text(bundle.manifest.clone()),
            );
        // An empty SBOM is left out (a signed SBOM may come alone).
        if !bundle.sbom.is_empty() {
            form = form.part("sbom", reqwest::multipart::Part::bytes(bundle.sbom.clone()));
        }
        form = match &bundle.signature {
            Some(Signature::Detached(bytes)) => {
                form.part("signature", reqwest::multipart::Part::bytes(bytes.clone()))
            }
            Some(Signature::Sigstore(json)) => form.part(
                "bundle",
                reqwest::multipart::Part::bytes(json.clone())
                    .file_name("module.wasm.sigstore.json"),
            ),
            None => form,
        };
        if let Some(attestation) = &bundle.sbom_attestation {
            form = form.part(
                "sbom_attestation",
                reqwest::multipart::Part::bytes(attestation.clone())
                    .file_name("sbom.cdx.json.sigstore.json"),
            );
        }
        let response = self
            .client
            .post(self.url("/v1/spells"))
            .bearer_auth(&user.key)
            .multipart(form)
            .send()
            .await
            .expect("request");
        read(response).await
    }

    /// Registers the demo signer and publishes the named examples for `user`.
    pub async fn publish_examples(&self, user: &TestUser, names: &[&str]) {
        self.register_demo_signer(user).await;
        for name in names {
            let (status, body) = self.publish(user, &example_bundle(name)).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }

    pub async fn cast(&self, user: &TestUser, body: Value) -> (StatusCode, Value) {
        self.post("/v1/cast", Some(&user.key), body).await
    }

    pub async fn me(&self, user: &TestUser) -> Value {
        let (status, body) = self.get("/v1/users/me", Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// The money invariants, checked straight in the database: balance = Σ the user's
    /// entries, available = balance − held ≥ 0, no hold left behind, the chain verifies.
    pub async fn assert_money_invariants(&self, user: &TestUser) {
        let db = &self.app.db;
        let balance = spellhost::money::balance(db, user.id)
            .await
            .expect("balance");
        let (sum,): (i64,) = sqlx::query_as("SELECT CAST(COALESCE(SUM(amount_microusd), 0) AS BIGINT) FROM ledger WHERE user_id = $1")
            .bind(user.id)
            .fetch_one(db.reader())
            .await
            .expect("sum");
        assert_eq!(balance.balance.get(), sum, "balance = Σ ledger entries");
        assert!(balance.available().get() >= 0, "available ≥ 0: {balance:?}");
        let check = spellhost::money::verify_chain(db).await.expect("verify");
        assert!(
            matches!(check, spellhost::money::ChainCheck::Intact { .. }),
            "{check:?}"
        );
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Asserts the one error shape and returns the code.
pub fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {body}"
    );
    assert!(
        error["trace_id"].as_str().is_some_and(|t| t.len() >= 16),
        "trace_id: {body}"
    );
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("code: {body}"))
}
