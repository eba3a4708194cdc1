//! The real binary as an operator runs it: admin commands, a kill -9 between hold and settle,
//! and a graceful shutdown with a cast in flight.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{Backend, TestDatabase};
use crate::helpers::{eventually, manifest_text, new_signer, repo_path, signed_bundle};
use crate::on_both_databases;

const BINARY: &str = env!("CARGO_BIN_EXE_spellhost");

struct Env {
    vars: Vec<(String, String)>,
    /// Dropped (PostgreSQL) when the test ends, also when it fails.
    _database: TestDatabase,
}

impl Env {
    async fn new(backend: &Backend, data_dir: &Path) -> Env {
        let database = backend.fresh_database(data_dir).await;
        let url = database.url.clone();
        Env {
            _database: database,
            vars: vec![
                ("SPELLHOST_DATA_DIR".into(), data_dir.display().to_string()),
                ("SPELLHOST_DATABASE_URL".into(), url),
                ("SPELLHOST_LISTEN".into(), "127.0.0.1:0".into()),
                ("SPELLHOST_WORKERS".into(), "2".into()),
                // Fuel never ends the slow spell first, however fast the machine: it runs
                // until its wall-time limit (its manifest allows 10¹¹ fuel, 4 s).
                ("SPELLHOST_FUEL_MAX".into(), "1000000000000".into()),
                // Credits here are sized to fuel worst cases (as in `spawn_app`): blocked time
                // is free unless a test prices it.
                ("SPELLHOST_PRICE_MICROUSD_PER_WALL_MS".into(), "0".into()),
                // These tests cast as fast as they can with one key from one address.
                (
                    "SPELLHOST_RATE_LIMIT_AUTHENTICATED_PER_MINUTE".into(),
                    "0".into(),
                ),
                (
                    "SPELLHOST_RATE_LIMIT_ANONYMOUS_PER_MINUTE".into(),
                    "0".into(),
                ),
                ("RUST_LOG".into(), "warn".into()),
            ],
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs an admin command and parses its `--json` output.
    fn admin(&self, args: &[&str]) -> Value {
        let output = self.command(args).output().expect("runs");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
    }

    /// Starts `spellhost serve` and returns it with its address.
    fn serve(&self) -> (Child, String) {
        let mut child = self
            .command(&["serve"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawns");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("server printed its address")
                .expect("line");
            if let Some(address) = line.strip_prefix("spellhost listening on ") {
                break address.to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (child, address)
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A spell that burns fuel in a loop for about `wall_ms` (it never finishes on its own).
fn write_slow_spell(dir: &Path, private_pem: &str, wall_ms: u64) {
    let wat =
        std::fs::read_to_string(repo_path("spells/hostile/infinite_loop.wat")).expect("fixture");
    let limits = format!("wall_ms_max = {wall_ms}\nfuel_max = 100000000000");
    let bundle = signed_bundle(
        wat::parse_str(&wat).expect("wat"),
        &manifest_text("slow", &limits),
        private_pem,
    );
    bundle.write_dir(dir).expect("write the spell directory");
}

/// The credit `provision` grants: $100, room for the slow cast's worst case (10¹¹ fuel, $10).
const CREDIT: i64 = 100_000_000;

/// Sets up a user `ada` with $100, the demo signer and a key, plus `ada/slow` and `ada/hello`,
/// all through the admin CLI. Returns the API key.
fn provision(env: &Env, work: &Path) -> String {
    env.admin(&[
        "user",
        "create",
        "--handle",
        "ada",
        "--email",
        "ada@example.com",
        "--json",
    ]);
    env.admin(&[
        "credits",
        "grant",
        "--user",
        "ada",
        "--amount-microusd",
        "100000000",
        "--json",
    ]);
    let (private_pem, _, public_pem) = new_signer();
    let public_path = work.join("signer.pub");
    std::fs::write(&public_path, public_pem).expect("write");
    env.admin(&[
        "signer",
        "add",
        "--user",
        "ada",
        "--public-key",
        public_path.to_str().expect("utf-8"),
        "--name",
        "mine",
        "--json",
    ]);
    env.admin(&[
        "signer",
        "add",
        "--user",
        "ada",
        "--public-key",
        repo_path("spells/demo-key/spell.pub")
            .to_str()
            .expect("utf-8"),
        "--name",
        "demo",
        "--json",
    ]);
    let slow = work.join("slow");
    write_slow_spell(&slow, &private_pem, 4_000);
    env.admin(&[
        "spell",
        "publish",
        slow.to_str().expect("utf-8"),
        "--user",
        "ada",
        "--json",
    ]);
    env.admin(&[
        "spell",
        "publish",
        repo_path("spells/hello").to_str().expect("utf-8"),
        "--user",
        "ada",
        "--json",
    ]);
    let key = env.admin(&["key", "create", "--user", "ada", "--json"]);
    key["key"].as_str().expect("key").to_owned()
}

/// Starts a cast of `ada/slow` whose answer the caller awaits later.
fn cast_slow_in_background(
    client: &reqwest::Client,
    address: &str,
    key: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let request = client
        .post(format!("{address}/v1/cast"))
        .bearer_auth(key)
        .json(&json!({"spell": "ada/slow"}));
    tokio::spawn(request.send())
}

/// Waits until the slow cast in flight has taken its hold.
async fn wait_for_hold(client: &reqwest::Client, address: &str, key: &str) {
    eventually("the slow cast to take its hold", || async {
        me(client, address, key).await["held_microusd"] != 0
    })
    .await;
}

/// Kills the server (SIGKILL) once the cast in flight has taken its hold, and checks that its
/// client was told nothing.
async fn kill_during(
    server: &mut Child,
    in_flight: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    client: &reqwest::Client,
    address: &str,
    key: &str,
) {
    wait_for_hold(client, address, key).await;
    signal(server, "-KILL");
    server.wait().expect("killed");
    assert!(
        in_flight.await.expect("task").is_err(),
        "the client was told nothing"
    );
}

async fn me(client: &reqwest::Client, address: &str, key: &str) -> Value {
    client
        .get(format!("{address}/v1/users/me"))
        .bearer_auth(key)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("json")
}

on_both_databases! {
    async fn a_kill_between_hold_and_settle_loses_and_doubles_nothing(backend) {
        let work = tempfile::tempdir().expect("tempdir");
        let env = Env::new(&backend, work.path()).await;
        let key = provision(&env, work.path());
        // Budgets are held and charged like the balance, and recover the same way.
        let budget = env.admin(&["budget", "set", "--user", "ada", "--period", "month", "--hard", "50000000", "--json"]);
        assert_eq!(budget["hard_limit_microusd"], 50_000_000, "{budget}");
        env.admin(&["budget", "set", "--user", "ada", "--spell", "ada/slow", "--period", "day", "--hard", "20000000", "--json"]);
        let client = reqwest::Client::new();

        let (mut server, address) = env.serve();
        // A cast that completes before the crash: charged exactly once, before and after.
        let done: Value = client.post(format!("{address}/v1/cast")).bearer_auth(&key)
            .json(&json!({"spell": "ada/hello", "input": {"name": "Ada"}})).send().await.expect("cast").json().await.expect("json");
        let charged = done["cost_microusd"].as_i64().expect("charged");
        // A cast in flight when the process dies: its money is held, its client never answered.
        let in_flight = cast_slow_in_background(&client, &address, &key);
        kill_during(&mut server, in_flight, &client, &address, &key).await;

        let (mut server, address) = env.serve();
        // The money comes back on its own, with no operator (how soon is a figure, printed).
        let started = Instant::now();
        eventually("the held money to come back", || async {
            me(&client, &address, &key).await["held_microusd"] == 0
        }).await;
        eprintln!("held money released {:?} after restart", started.elapsed());
        let after = me(&client, &address, &key).await;
        assert_eq!(after["balance_microusd"], CREDIT - charged, "{after}");
        assert_eq!(after["available_microusd"], CREDIT - charged);
        let verified = env.admin(&["ledger", "verify", "--json"]);
        assert_eq!(verified, json!({"intact": true, "entries": 2}));
        // The budgets count the completed cast once and hold nothing for the lost one.
        let listed = env.admin(&["budget", "list", "--user", "ada", "--json"]);
        let budgets = listed["budgets"].as_array().expect("budgets");
        let used_held = |scope: &str| budgets.iter().find(|b| b["scope"]["type"] == scope)
            .map(|b| (b["used_microusd"].as_i64(), b["held_microusd"].as_i64())).expect("budget");
        assert_eq!(used_held("account"), (Some(charged), Some(0)), "{listed}");
        assert_eq!(used_held("spell"), (Some(0), Some(0)), "{listed}");
        let usage = env.admin(&["usage", "--user", "ada", "--group-by", "spell", "--json"]);
        assert_eq!(usage["total"]["cost_microusd"], charged, "{usage}");
        signal(&server, "-TERM");
        assert!(server.wait().expect("stops").success());
    }

    async fn sigterm_finishes_and_settles_casts_in_flight(backend) {
        let work = tempfile::tempdir().expect("tempdir");
        let env = Env::new(&backend, work.path()).await;
        let key = provision(&env, work.path());
        let client = reqwest::Client::new();
        let (mut server, address) = env.serve();
        let in_flight = cast_slow_in_background(&client, &address, &key);
        wait_for_hold(&client, &address, &key).await;
        signal(&server, "-TERM");
        let response = in_flight.await.expect("task").expect("answered despite the shutdown");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
        let cost = body["error"]["cost_microusd"].as_i64().expect("charged");
        assert!(server.wait().expect("stops").success());
        let verified = env.admin(&["ledger", "verify", "--json"]);
        assert_eq!(verified, json!({"intact": true, "entries": 2}), "the settled cast is in the ledger");
        let (mut server, address) = env.serve();
        assert_eq!(me(&client, &address, &key).await["balance_microusd"], CREDIT - cost);
        signal(&server, "-TERM");
        assert!(server.wait().expect("stops").success());
    }

    async fn a_kill_while_an_idempotent_cast_runs_frees_its_key_and_charges_once(backend) {
        let work = tempfile::tempdir().expect("tempdir");
        let env = Env::new(&backend, work.path()).await;
        let key = provision(&env, work.path());
        let client = reqwest::Client::new();
        let send = |address: String| {
            client.post(format!("{address}/v1/cast")).bearer_auth(&key)
                .header("idempotency-key", "survives-kill").json(&json!({"spell": "ada/slow"})).send()
        };
        let (mut server, address) = env.serve();
        let in_flight = tokio::spawn(send(address.clone()));
        kill_during(&mut server, in_flight, &client, &address, &key).await;
        // Nothing was charged and nothing stored: the key is in use until its lock, which nobody
        // renews any more, runs out; then the cast runs, once.
        let (mut server, address) = env.serve();
        let started = Instant::now();
        let ran = std::sync::Mutex::new(None);
        eventually("the key to be free again", || async {
            let response = send(address.clone()).await.expect("answered");
            if response.status() == reqwest::StatusCode::CONFLICT {
                return false;
            }
            assert!(!response.headers().contains_key("idempotent-replayed"), "nothing was stored");
            *ran.lock().expect("lock") = Some(response.text().await.expect("body"));
            true
        }).await;
        eprintln!("the key was free {:?} after the restart", started.elapsed());
        let ran = ran.into_inner().expect("lock").expect("ran");
        let body: Value = serde_json::from_str(&ran).expect("json");
        assert_eq!(body["error"]["code"], "deadline_exceeded", "{body}");
        let cost = body["error"]["cost_microusd"].as_i64().expect("charged");
        let replay = send(address.clone()).await.expect("answered");
        assert_eq!(replay.headers().get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
        assert_eq!(replay.text().await.expect("body"), ran, "the stored answer");
        eventually("the dead instance's lease to come back", || async {
            me(&client, &address, &key).await["held_microusd"] == 0
        }).await;
        assert_eq!(me(&client, &address, &key).await["balance_microusd"], CREDIT - cost, "charged once");
        signal(&server, "-TERM");
        assert!(server.wait().expect("stops").success());
        let verified = env.admin(&["ledger", "verify", "--json"]);
        assert_eq!(verified, json!({"intact": true, "entries": 2}), "the grant and one cast");
    }
}

#[test]
fn ledger_verify_names_the_first_tampered_entry() {
    let work = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let env = runtime.block_on(Env::new(&Backend::Sqlite, work.path()));
    env.admin(&[
        "user",
        "create",
        "--handle",
        "ada",
        "--email",
        "ada@example.com",
        "--json",
    ]);
    for amount in ["100", "200", "300"] {
        env.admin(&[
            "credits",
            "grant",
            "--user",
            "ada",
            "--amount-microusd",
            amount,
            "--json",
        ]);
    }
    assert_eq!(
        env.admin(&["ledger", "verify", "--json"]),
        json!({"intact": true, "entries": 3})
    );
    // Tamper behind the application's back (the append-only trigger has to go first).
    runtime.block_on(async {
        let db = spellhost::store::Db::connect(&env.vars[1].1, 1)
            .await
            .expect("db");
        sqlx::query("DROP TRIGGER ledger_no_update")
            .execute(db.writer())
            .await
            .expect("drop trigger");
        sqlx::query("UPDATE ledger SET amount_microusd = 250 WHERE seq = 2")
            .execute(db.writer())
            .await
            .expect("tamper");
        db.close().await;
    });
    let output = env
        .command(&["ledger", "verify", "--json"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["first_bad_seq"], 2, "{report}");
}

#[test]
fn the_ledger_refuses_updates_and_deletes() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let work = tempfile::tempdir().expect("tempdir");
        let database = Backend::Sqlite.fresh_database(work.path()).await;
        let db = spellhost::store::Db::connect(&database.url, 1)
            .await
            .expect("db");
        db.migrate().await.expect("migrate");
        let user = spellhost::auth::create_user(&db, "ada", "a@example.com", false)
            .await
            .expect("user");
        spellhost::money::post(
            &db,
            user.id,
            spellhost::money::EntryKind::Grant,
            spellhost::money::MicroUsd::new(5),
            "g",
        )
        .await
        .expect("grant");
        assert!(
            sqlx::query("UPDATE ledger SET amount_microusd = 6")
                .execute(db.writer())
                .await
                .is_err()
        );
        assert!(
            sqlx::query("DELETE FROM ledger")
                .execute(db.writer())
                .await
                .is_err()
        );
    });
}

/// Makes a user `bob` with `credit` µ$ and a key, and returns the key.
fn caster(env: &Env, credit: i64) -> String {
    env.admin(&[
        "user",
        "create",
        "--handle",
        "bob",
        "--email",
        "bob@example.com",
        "--json",
    ]);
    let credit = credit.to_string();
    env.admin(&[
        "credits",
        "grant",
        "--user",
        "bob",
        "--amount-microusd",
        &credit,
        "--json",
    ]);
    let key = env.admin(&["key", "create", "--user", "bob", "--json"]);
    key["key"].as_str().expect("key").to_owned()
}

/// The charge a client was told about: a 200 or 422 with a cast id and a cost.
fn acknowledged(status: reqwest::StatusCode, body: &Value) -> Option<(String, i64)> {
    let fields = if status == reqwest::StatusCode::OK {
        body
    } else {
        &body["error"]
    };
    Some((
        fields["cast_id"].as_str()?.to_owned(),
        fields["cost_microusd"].as_i64()?,
    ))
}

/// Every acknowledged cast is in the database exactly once, with the cost the client was told,
/// and the chain and every balance verify.
async fn assert_acknowledged_casts_recorded_once(env: &Env, acked: &[(String, i64)]) {
    let db = spellhost::store::Db::connect(&env.vars[1].1, 2)
        .await
        .expect("db");
    for (cast_id, cost) in acked {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT cost_microusd FROM casts WHERE id = $1")
            .bind(cast_id)
            .fetch_all(db.reader())
            .await
            .expect("casts");
        assert_eq!(
            rows,
            vec![(*cost,)],
            "{cast_id}: recorded once, at the cost told"
        );
        let (entries,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ledger WHERE reference = $1")
            .bind(cast_id)
            .fetch_one(db.reader())
            .await
            .expect("ledger");
        assert_eq!(entries, 1, "{cast_id}: one ledger entry");
    }
    db.close().await;
    let verified = env.admin(&["ledger", "verify", "--json"]);
    assert_eq!(verified["intact"], true, "{verified}");
}

/// Waits until nothing of `key`'s user is held: every lease returned or swept. How soon that
/// happens (within a lease's TTL plus a sweep, seconds here) is printed, not asserted: on a
/// loaded machine the wait is the machine's, and `eventually` bounds a broken sweeper.
async fn wait_until_nothing_held(client: &reqwest::Client, address: &str, key: &str) -> Value {
    let started = Instant::now();
    let last = std::sync::Mutex::new(Value::Null);
    eventually("held money to come back on its own", || async {
        let body = me(client, address, key).await;
        let done = body["held_microusd"] == 0;
        *last.lock().expect("lock") = body;
        done
    })
    .await;
    eprintln!(
        "held money came back {:?} after the restart",
        started.elapsed()
    );
    last.into_inner().expect("lock")
}

on_both_databases! {
    async fn several_server_processes_on_one_database_never_overdraw(backend) {
        // Several instances share the work on PostgreSQL; SQLite is one instance's database.
        if matches!(backend, Backend::Sqlite) {
            return;
        }
        for (instances, seed) in [(2usize, 3u64), (3, 7), (3, 11)] {
            let work = tempfile::tempdir().expect("tempdir");
            let env = Env::new(&backend, work.path()).await;
            provision(&env, work.path());
            // Enough for a few concurrent hellos (worst case 5 001 µ$ each), not all 64.
            let credit = 20_000 + 3_000 * seed as i64;
            let key = caster(&env, credit);
            let servers: Vec<(Child, String)> = (0..instances).map(|_| env.serve()).collect();
            let client = reqwest::Client::new();
            let casts = (0..64).map(|i| {
                let (client, key) = (client.clone(), key.clone());
                let address = servers[i % instances].1.clone();
                async move {
                    let response = client.post(format!("{address}/v1/cast")).bearer_auth(&key)
                        .json(&json!({"spell": "ada/hello", "input": {"name": "Bob"}})).send().await.expect("cast");
                    let status = response.status();
                    (status, response.json::<Value>().await.expect("json"))
                }
            });
            let results = futures::future::join_all(casts).await;
            let mut acked = Vec::new();
            for (status, body) in &results {
                match status.as_u16() {
                    200 | 422 => acked.push(acknowledged(*status, body).expect("charge fields")),
                    402 => assert!(body["error"].get("cost_microusd").is_none(), "refused before running"),
                    other => panic!("{instances} instances: unexpected {other}: {body}"),
                }
            }
            assert!(!acked.is_empty(), "some casts ran");
            for (server, _) in &servers {
                signal(server, "-TERM");
            }
            for (mut server, _) in servers {
                assert!(server.wait().expect("stops").success());
            }
            let (mut server, address) = env.serve();
            let after = wait_until_nothing_held(&client, &address, &key).await;
            let balance = after["balance_microusd"].as_i64().expect("balance");
            assert!(balance >= 0, "overdrawn: {after}");
            let charged: i64 = acked.iter().map(|(_, cost)| cost).sum();
            assert_eq!(credit - balance, charged, "{instances} instances: Σ charges = balance change");
            assert_acknowledged_casts_recorded_once(&env, &acked).await;
            eprintln!("{instances} instances: {} of 64 casts ran, {charged} µ$ charged", acked.len());
            signal(&server, "-TERM");
            assert!(server.wait().expect("stops").success());
        }
    }

    async fn kill_9_under_load_loses_no_acknowledged_charge_and_doubles_none(backend) {
        let work = tempfile::tempdir().expect("tempdir");
        let mut env = Env::new(&backend, work.path()).await;
        // Short leases, so that what the killed processes leased comes back quickly at the end.
        env.vars.push(("SPELLHOST_LEASE_TTL_MS".into(), "2000".into()));
        provision(&env, work.path());
        let key = caster(&env, 5_000_000);
        let client = reqwest::Client::new();
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut random = crate::helpers::Seeded(0x5EED_1234_ABCD_0001);
        for round in 0..20 {
            let (mut server, address) = env.serve();
            let casters: Vec<_> = (0..6).map(|_| {
                let (client, key, address, acked) = (client.clone(), key.clone(), address.clone(), acked.clone());
                tokio::spawn(async move {
                    loop {
                        let sent = client.post(format!("{address}/v1/cast")).bearer_auth(&key)
                            .json(&json!({"spell": "ada/hello", "input": {"name": "Bob"}})).send().await;
                        // The process died: whatever was in flight was never acknowledged.
                        let Ok(response) = sent else { return };
                        let status = response.status();
                        let Ok(body) = response.json::<Value>().await else { return };
                        if let Some(charge) = acknowledged(status, &body) {
                            acked.lock().expect("lock").push(charge);
                        }
                    }
                })
            }).collect();
            // Once casts flow, kill the process at an arbitrary moment.
            let before = acked.lock().expect("lock").len();
            eventually(&format!("round {round}: a cast answered"), || async {
                acked.lock().expect("lock").len() > before
            }).await;
            tokio::time::sleep(Duration::from_millis(random.next(300))).await;
            signal(&server, "-KILL");
            server.wait().expect("killed");
            for caster in casters {
                caster.await.expect("caster");
            }
            eprintln!("round {round}: {} casts acknowledged so far", acked.lock().expect("lock").len());
        }
        let (mut server, address) = env.serve();
        let after = wait_until_nothing_held(&client, &address, &key).await;
        let acked = acked.lock().expect("lock").clone();
        assert!(acked.len() >= 20, "the load ran: {}", acked.len());
        let charged: i64 = acked.iter().map(|(_, cost)| cost).sum();
        let balance = after["balance_microusd"].as_i64().expect("balance");
        // Casts in flight when a process died may have been charged without the client hearing
        // of it (it never got the answer): at least what was acknowledged, never more than
        // the ledger says.
        assert!(5_000_000 - balance >= charged, "an acknowledged charge was lost: {after}");
        assert_acknowledged_casts_recorded_once(&env, &acked).await;
        signal(&server, "-TERM");
        assert!(server.wait().expect("stops").success());
    }
}
