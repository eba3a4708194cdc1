//! Operating the service as an operator would: readiness while the database or the sandbox
//! is not there for us, the in-server ledger self-check, private file permissions, start-up
//! errors that name their paths, and online backup and restore.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use spellhost::ops::files::{sqlite_file, with_suffix};

use crate::app::{Backend, TestApp, TestUser, error_code, spawn_app, spawn_app_with};
use crate::helpers::hostile_wat;
use crate::on_both_databases;

const BINARY: &str = env!("CARGO_BIN_EXE_spellhost");

/// How long a test waits for a condition: it only bounds a broken test, on a busy machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// Polls `condition` until it holds, failing after [`PATIENCE`].
async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled metric in `/metrics`.
async fn metric(app: &TestApp, name: &str) -> i64 {
    app.exposition()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as i64)
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Registers a fresh signer for `user` and publishes a spell signed by it.
async fn hello(app: &TestApp, user: &TestUser) -> (StatusCode, Value) {
    // Every test user here has the handle `ada`.
    app.cast(
        user,
        json!({"spell": "ada/hello", "input": {"name": "Ada"}}),
    )
    .await
}

/// Runs the binary with `vars` (and nothing else of ours from the environment).
fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).env("RUST_LOG", "warn");
    for (name, _) in std::env::vars() {
        if name.starts_with("SPELLHOST_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command.output().expect("the binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

on_both_databases! {
    async fn readyz_is_ready_when_the_database_answers_and_the_sandbox_has_room(backend) {
        let app = spawn_app(&backend).await;
        let (status, body) = app.get("/readyz", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["checks"]["database"]["ready"], true, "{body}");
        assert_eq!(body["checks"]["sandbox"]["ready"], true, "{body}");
        assert_eq!(body["checks"]["sandbox"]["queue_depth"], 0, "{body}");
        app.shutdown().await;
    }

    async fn readyz_is_503_naming_the_database_when_it_disappears_under_a_running_server(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        app.publish_examples(&user, &["hello"]).await;
        assert_eq!(hello(&app, &user).await.0, StatusCode::OK);

        let url = app.app.config.database_url.clone();
        let moved = match &backend {
            Backend::Sqlite => {
                let database = sqlite_file(&url).expect("an SQLite file");
                let gone = with_suffix(&database, ".gone");
                for suffix in ["-wal", "-shm", ""] {
                    let _ = std::fs::rename(with_suffix(&database, suffix), with_suffix(&gone, suffix));
                }
                Some((database, gone))
            }
            Backend::Postgres(base) => {
                use sqlx::Connection as _;
                let name = url.rsplit_once('/').expect("a database name").1;
                let mut admin = sqlx::PgConnection::connect(base).await.expect("PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
                    .execute(&mut admin).await.expect("drop the database");
                None
            }
        };

        // Liveness is unchanged: the process answers.
        let (status, body) = app.get("/healthz", None).await;
        assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")));
        // Readiness names the database, in the one error shape.
        let (status, body) = app.get("/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(error_code(&body), "not_ready");
        assert_eq!(body["error"]["not_ready"], json!(["database"]), "{body}");
        assert_eq!(body["error"]["checks"]["database"]["ready"], false);
        assert_eq!(body["error"]["checks"]["sandbox"]["ready"], true);

        if let Some((database, gone)) = moved {
            for suffix in ["-wal", "-shm", ""] {
                let _ = std::fs::rename(with_suffix(&gone, suffix), with_suffix(&database, suffix));
            }
            let (status, body) = app.get("/readyz", None).await;
            assert_eq!(status, StatusCode::OK, "ready again once the file is back: {body}");
            app.shutdown().await;
        }
    }

    async fn readyz_is_503_naming_the_sandbox_while_its_queue_is_full(backend) {
        let app = spawn_app_with(&backend, &[
            ("SPELLHOST_WORKERS", "1"),
            ("SPELLHOST_RUNS_MAX", "1"),
            ("SPELLHOST_USER_CONCURRENT_CASTS_MAX", "1"),
            ("SPELLHOST_QUEUE_DEPTH", "1"),
            ("SPELLHOST_WALL_MS_MAX", "30000"),
        ]).await;
        let user = app.user("ada", 10_000_000).await;
        app.publish_wat(&user, "sleeper", &hostile_wat("sleeper"), "wall_ms_max = 30000\nfuel_max = 1000000").await;
        // One sleeper holds the only slot and one waits in the queue of one. Casts that
        // arrive while the queue is still taken are refused at once and replaced.
        let deadline = Instant::now() + PATIENCE;
        let mut casts: Vec<tokio::task::JoinHandle<_>> = Vec::new();
        let body = loop {
            let (status, body) = app.get("/readyz", None).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                break body;
            }
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(Instant::now() < deadline, "the queue never filled");
            casts.retain(|cast| !cast.is_finished());
            if casts.len() < 2 {
                let request = app.client.post(app.url("/v1/cast")).bearer_auth(&user.key)
                    .json(&json!({"spell": "ada/sleeper"}));
                casts.push(tokio::spawn(request.send()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(error_code(&body), "not_ready");
        assert_eq!(body["error"]["not_ready"], json!(["sandbox"]), "{body}");
        assert_eq!(body["error"]["checks"]["sandbox"]["queue_depth"], 1, "{body}");
        assert_eq!(body["error"]["checks"]["sandbox"]["queue_capacity"], 1, "{body}");
        assert_eq!(app.get("/healthz", None).await.0, StatusCode::OK);
        // The sleepers are left to their wall-time limit; they burn no CPU meanwhile.
    }

    async fn healthcheck_and_release_do_what_the_image_and_fly_toml_expect(backend) {
        let app = spawn_app(&backend).await;
        let listen = app.address.to_string();
        let url = app.app.config.database_url.clone();
        let vars = [("SPELLHOST_LISTEN", listen.as_str()), ("SPELLHOST_DATABASE_URL", url.as_str())];
        let probe = |args: Vec<&'static str>| {
            let vars = vars.map(|(k, v)| (k.to_owned(), v.to_owned()));
            tokio::task::spawn_blocking(move || {
                let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run(&args, &vars)
            })
        };
        let ready = probe(vec!["healthcheck"]).await.expect("runs");
        assert!(ready.status.success(), "{}", stderr(&ready));
        let missing = probe(vec!["healthcheck", "--path", "/nowhere"]).await.expect("runs");
        assert!(!missing.status.success(), "a 404 is not healthy");
        let release = probe(vec!["release"]).await.expect("runs");
        assert!(release.status.success(), "{}", stderr(&release));
        let said = String::from_utf8_lossy(&release.stdout).into_owned();
        match backend {
            Backend::Sqlite => assert!(said.contains("nothing to do"), "{said}"),
            Backend::Postgres(_) => assert!(said.contains("migrations applied"), "{said}"),
        }
        app.shutdown().await;
        let stopped = run(&["healthcheck"], &vars);
        assert!(!stopped.status.success(), "nothing listens any more");
    }

    async fn the_self_check_verifies_new_entries_and_counts_a_broken_chain(backend) {
        let app = spawn_app_with(&backend, &[("SPELLHOST_SELF_CHECK_INTERVAL_MS", "20")]).await;
        let user = app.user("ada", 1_000_000).await;
        app.publish_examples(&user, &["hello"]).await;
        for _ in 0..3 {
            assert_eq!(hello(&app, &user).await.0, StatusCode::OK);
        }
        // The grant and three casts.
        wait_for("the self-check has verified the whole ledger", || async {
            metric(&app, "spellhost_ledger_verified_seq").await == 4
        }).await;
        assert_eq!(metric(&app, "spellhost_ledger_head_seq").await, 4);
        assert_eq!(metric(&app, "spellhost_ledger_verify_failures_total").await, 0);
        assert_eq!(metric(&app, "spellhost_holds_expired").await, 0);

        // Someone edits an entry behind the service's back.
        let db = &app.app.db;
        let disable = match &backend {
            Backend::Sqlite => "DROP TRIGGER ledger_no_update",
            Backend::Postgres(_) => "ALTER TABLE ledger DISABLE TRIGGER ledger_no_update_or_delete",
        };
        sqlx::query(disable).execute(db.writer()).await.expect("disable the trigger");
        sqlx::query("UPDATE ledger SET amount_microusd = amount_microusd - 1 WHERE seq = 3")
            .execute(db.writer()).await.expect("tamper");
        wait_for("the self-check has counted the break", || async {
            metric(&app, "spellhost_ledger_verify_failures_total").await >= 1
        }).await;

        // Entries appended after the break are not reported as verified.
        assert_eq!(hello(&app, &user).await.0, StatusCode::OK);
        let failures = metric(&app, "spellhost_ledger_verify_failures_total").await;
        wait_for("a pass has seen the new head", || async {
            metric(&app, "spellhost_ledger_head_seq").await == 5
                && metric(&app, "spellhost_ledger_verify_failures_total").await > failures
        }).await;
        assert_eq!(metric(&app, "spellhost_ledger_verified_seq").await, 4);
        app.shutdown().await;
    }

    async fn the_data_directory_is_0700_and_the_database_files_0600(backend) {
        let outer = tempfile::tempdir().expect("tempdir");
        let data = outer.path().join("fresh").join("data");
        let database = data.join("spellhost.db");
        let url = format!("sqlite://{}", database.display());
        let mut extra = vec![("SPELLHOST_DATA_DIR", text(&data))];
        if matches!(backend, Backend::Sqlite) {
            extra.push(("SPELLHOST_DATABASE_URL", url.as_str()));
        }
        let app = spawn_app_with(&backend, &extra).await;
        let user = app.user("ada", 1_000_000).await;
        assert!(app.me(&user).await["balance_microusd"] == 1_000_000);
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("artifacts")), 0o700);
        if matches!(backend, Backend::Sqlite) {
            // The server is running and has written: the WAL and shared memory exist.
            for file in [database.clone(), with_suffix(&database, "-wal"), with_suffix(&database, "-shm")] {
                assert_eq!(mode(&file), 0o600, "{}", file.display());
            }
        }
        app.shutdown().await;

        // Files left readable by others (an older version, a careless copy) are tightened.
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if matches!(backend, Backend::Sqlite) {
            std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let app = spawn_app_with(&backend, &extra).await;
        assert_eq!(mode(&data), 0o700);
        if matches!(backend, Backend::Sqlite) {
            assert_eq!(mode(&database), 0o600);
        }
        app.shutdown().await;
    }

    async fn backup_while_casts_run_then_restore_gives_a_ledger_that_verifies(backend) {
        let app = Arc::new(spawn_app(&backend).await);
        let url = app.app.config.database_url.clone();
        let work = tempfile::tempdir().expect("tempdir");
        let backup = work.path().join("spellhost-backup.db");
        let vars = [("SPELLHOST_DATABASE_URL", url.as_str()), ("SPELLHOST_DATA_DIR", text(work.path()))];
        if let Backend::Postgres(_) = backend {
            for args in [["backup", "--to", text(&backup)], ["restore", "--from", text(&backup)]] {
                let output = run(&args, &vars);
                assert!(!output.status.success());
                assert!(stderr(&output).contains("pg_dump"), "{}", stderr(&output));
            }
            return;
        }
        let user = app.user("ada", 10_000_000).await;
        app.publish_examples(&user, &["hello"]).await;

        // Casts keep coming while the backup is taken.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let caster = tokio::spawn({
            let (app, stop, done) = (app.clone(), stop.clone(), done.clone());
            let user = user.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = hello(&app, &user).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        wait_for("a few casts have settled", || async { done.load(Ordering::Relaxed) >= 3 }).await;
        let before = done.load(Ordering::Relaxed);
        let output = {
            let args = ["backup", "--to", text(&backup), "--json"].map(str::to_owned);
            let vars = vars.map(|(k, v)| (k.to_owned(), v.to_owned()));
            tokio::task::spawn_blocking(move || {
                let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run(&args.each_ref().map(String::as_str), &vars)
            }).await.expect("backup ran")
        };
        stop.store(true, Ordering::Relaxed);
        caster.await.expect("every cast during the backup succeeded");
        assert!(output.status.success(), "{}", stderr(&output));
        let report: Value = serde_json::from_slice(&output.stdout).expect("json");
        let entries = report["ledger_entries"].as_u64().expect("entries");
        assert!(entries > before as u64, "the grant and at least {before} casts: {report}");
        assert_eq!(mode(&backup), 0o600);

        // An existing backup is never overwritten; the live database is never replaced.
        let again = run(&["backup", "--to", text(&backup)], &vars);
        assert!(!again.status.success());
        assert!(stderr(&again).contains(text(&backup)), "{}", stderr(&again));
        let refused = run(&["restore", "--from", text(&backup)], &vars);
        assert!(!refused.status.success());
        assert!(stderr(&refused).contains("in use"), "{}", stderr(&refused));
        assert_eq!(hello(&app, &user).await.0, StatusCode::OK, "the live database is untouched");
        app.assert_money_invariants(&user).await;

        // Restored on a new machine: the ledger verifies, entry for entry.
        let restored = work.path().join("restored");
        let restored_vars = [("SPELLHOST_DATA_DIR", text(&restored))];
        let output = run(&["restore", "--from", text(&backup), "--json"], &restored_vars);
        assert!(output.status.success(), "{}", stderr(&output));
        let verified = run(&["ledger", "verify", "--json"], &restored_vars);
        assert!(verified.status.success(), "{}", stderr(&verified));
        let verified: Value = serde_json::from_slice(&verified.stdout).expect("json");
        assert_eq!(verified, json!({"intact": true, "entries": entries}));
        assert_eq!(mode(&restored.join("spellhost.db")), 0o600);

        // Restoring over a database nobody uses keeps the one it replaces.
        let output = run(&["restore", "--from", text(&backup), "--json"], &restored_vars);
        assert!(output.status.success(), "{}", stderr(&output));
        let report: Value = serde_json::from_slice(&output.stdout).expect("json");
        let previous = PathBuf::from(report["previous"].as_str().expect("previous"));
        assert!(previous.exists(), "{report}");
    }
}

#[test]
fn a_data_directory_below_a_file_is_an_error_naming_the_path() {
    let outer = tempfile::tempdir().expect("tempdir");
    std::fs::write(outer.path().join("file"), "").expect("write");
    let data = outer.path().join("file").join("data");
    let output = run(&["migrate"], &[("SPELLHOST_DATA_DIR", text(&data))]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(text(&data)), "{}", stderr(&output));
}

#[test]
fn a_database_path_that_is_a_directory_is_an_error_naming_the_path() {
    let outer = tempfile::tempdir().expect("tempdir");
    let database = outer.path().join("spellhost.db");
    std::fs::create_dir(&database).expect("mkdir");
    let url = format!("sqlite://{}", database.display());
    let output = run(
        &["migrate"],
        &[
            ("SPELLHOST_DATA_DIR", text(outer.path())),
            ("SPELLHOST_DATABASE_URL", &url),
        ],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains(text(&database)),
        "{}",
        stderr(&output)
    );
}

/// A data directory the service's user cannot write, as a fresh Fly.io volume is (owned by
/// root): as root, the binary runs as `nobody` against a root-owned directory; otherwise the
/// directory is made read-only.
#[test]
fn an_unwritable_data_directory_is_an_error_naming_the_path() {
    let outer = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = outer.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let as_root = std::fs::metadata(&data).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid() == 0
    });
    let run_as_service_user = |extra: &[(&str, &str)]| {
        let mut command = if as_root {
            let mut command = Command::new("setpriv");
            command.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BINARY,
                "serve",
            ]);
            command
        } else {
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).expect("chmod");
            let mut command = Command::new(BINARY);
            command.arg("serve");
            command
        };
        for (name, _) in std::env::vars() {
            if name.starts_with("SPELLHOST_") {
                command.env_remove(name);
            }
        }
        command
            .env("SPELLHOST_DATA_DIR", &data)
            .env("SPELLHOST_LISTEN", "127.0.0.1:0")
            .envs(extra.iter().copied())
            .output()
            .expect("the binary runs")
    };
    // No secret configured: it would be generated into the data directory.
    let output = run_as_service_user(&[]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(text(&data.join("secret.key"))),
        "{message}"
    );
    assert!(message.contains("Permission denied"), "{message}");
    // A configured secret: the next thing written there is named instead.
    let output = run_as_service_user(&[(
        "SPELLHOST_SECRET_KEY",
        "test-secret-test-secret-test-secret-0123",
    )]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains(text(&data)), "{message}");
    assert!(message.contains("Permission denied"), "{message}");
}

/// The dashboard and the alert rules may only use metrics that `/metrics` exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_use_only_metrics_that_exist() {
    let app = spawn_app(&Backend::Sqlite).await;
    // Per-route series exist from a route's first request.
    assert_eq!(app.get("/healthz", None).await.0, StatusCode::OK);
    let exposition = app.exposition().await;
    let mut exported = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    for file in ["ops/grafana-dashboard.json", "ops/prometheus-rules.yml"] {
        let text = std::fs::read_to_string(crate::helpers::repo_path(file)).expect("ops file");
        let mut used = 0;
        for (at, _) in text.match_indices("spellhost_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which /metrics does not export"
            );
            used += 1;
        }
        assert!(used > 10, "{file} uses spellhost metrics");
    }
    app.shutdown().await;
}
