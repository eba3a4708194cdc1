//! The author's loop with the real binary, as a new author runs it: `spell new` → `spell
//! build --key` → `spell run` → (server) `signer add --server` → `spell publish --server` → a
//! cast over HTTP, whose output and cost are the ones the local run showed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::app::{Backend, spawn_app};

const BINARY: &str = env!("CARGO_BIN_EXE_spellhost");

/// Guest builds share one target directory across runs, so that a re-run only recompiles the
/// generated crate itself (serde and serde_json stay built).
fn guest_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("author-loop-target")
}

/// Whether the toolchain has the standard library for wasm32-wasip1 (`.ci/run` installs it).
fn wasm_target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib/wasm32-wasip1/lib")
        .is_dir()
}

/// Runs the CLI off the async runtime (the server under test runs on it) and returns its
/// output, whatever the exit status.
async fn cli(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(&args)
            // Only the key a step is given.
            .env_remove("SPELLHOST_API_KEY")
            // The test app prices blocked time at 0; so does the local run, like the server.
            .env("SPELLHOST_PRICE_MICROUSD_PER_WALL_MS", "0")
            .env("CARGO_TARGET_DIR", guest_target_dir())
            .envs(env)
            .output()
            .expect("the CLI runs")
    })
    .await
    .expect("joins")
}

/// Runs the CLI, asserts success and parses its `--json` output.
async fn cli_json(args: &[&str], env: Vec<(&'static str, String)>) -> Value {
    let output = cli(args.iter().map(|a| a.to_string()).collect(), env).await;
    assert!(
        output.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_author_loop_from_spell_new_to_a_priced_cast_over_http() {
    if !wasm_target_installed() {
        eprintln!(
            "skipped: the wasm32-wasip1 target is not installed (rustup target add wasm32-wasip1)"
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let project = work.path().join("greeter");
    let keys = work.path().join("keys");
    let (key, public_key) = (keys.join("spell.key"), keys.join("spell.pub"));

    cli_json(
        &[
            "spell",
            "new",
            "greeter",
            "--path",
            text(&project),
            "--json",
        ],
        vec![],
    )
    .await;
    cli_json(&["spell", "keygen", "--out", text(&keys), "--json"], vec![]).await;
    let built = cli_json(
        &[
            "spell",
            "build",
            text(&project),
            "--key",
            text(&key),
            "--json",
        ],
        vec![],
    )
    .await;
    assert_eq!(built["signed"], true, "{built}");

    // The SBOM lists what serde_json compiles into the module, with purls and hashes.
    let sbom: Value = serde_json::from_slice(
        &std::fs::read(project.join("sbom.cdx.json")).expect("the SBOM was written"),
    )
    .expect("JSON");
    assert_eq!(sbom["specVersion"], "1.5");
    let components = sbom["components"].as_array().expect("components");
    for name in ["serde", "serde_json", "serde_core", "itoa", "memchr"] {
        let component = components
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} is in the SBOM: {sbom}"));
        let purl = component["purl"].as_str().expect("purl");
        assert!(purl.starts_with(&format!("pkg:cargo/{name}@")), "{purl}");
        assert_eq!(component["hashes"][0]["alg"], "SHA-256", "{component}");
    }
    assert!(
        !components
            .iter()
            .any(|c| c["name"] == "serde_derive" || c["name"] == "syn"),
        "proc-macros run in the compiler, not in the module: {sbom}"
    );

    // The author's cargo home (where the registry's sources are) is remapped out of the module.
    let module = std::fs::read(project.join("module.wasm")).expect("the module was written");
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    assert!(
        !module
            .windows(cargo_home.len())
            .any(|window| window == cargo_home.as_bytes()),
        "the module names the local cargo home {cargo_home}"
    );

    // A local run, verified with the author's key, priced as the server will price it.
    let input = work.path().join("input.json");
    std::fs::write(&input, r#"{"name":"Ada"}"#).expect("input");
    let local = cli_json(
        &[
            "spell",
            "run",
            text(&project),
            "--input",
            text(&input),
            "--public-key",
            text(&public_key),
            "--json",
        ],
        vec![],
    )
    .await;
    assert_eq!(local["outcome"], "ok", "{local}");
    assert_eq!(local["output"], json!({"greeting": "Hello, Ada!"}));
    assert!(local["memory_bytes_peak"].as_u64().expect("peak") >= 65_536);
    assert_eq!(
        local["limits"]["fuel"], 50_000_000,
        "the manifest's own limit"
    );

    // The server's configuration caps the manifest's limits, as on the server.
    let capped = cli(
        [
            "spell",
            "run",
            text(&project),
            "--input",
            text(&input),
            "--json",
        ]
        .map(str::to_owned)
        .to_vec(),
        vec![("SPELLHOST_FUEL_MAX", "1000".to_owned())],
    )
    .await;
    assert!(!capped.status.success());
    let capped: Value = serde_json::from_slice(&capped.stdout).expect("JSON");
    assert_eq!(capped["outcome"], "out_of_fuel", "{capped}");
    assert_eq!(capped["limits"]["fuel"], 1000);

    // Against a bare module (the hello example, the same greeting): the difference shown is
    // the difference of the two runs.
    let hello = crate::helpers::repo_path("spells/hello/module.wasm");
    let compared = cli_json(
        &[
            "spell",
            "run",
            text(&project),
            "--input",
            text(&input),
            "--compare",
            text(&hello),
            "--json",
        ],
        vec![],
    )
    .await;
    let runs = compared["runs"].as_array().expect("two runs");
    assert_eq!(runs[1]["output"], local["output"]);
    let fuel = |run: &Value| run["fuel_used"].as_i64().expect("fuel");
    let cost = |run: &Value| run["cost_microusd"].as_i64().expect("cost");
    assert_eq!(
        compared["difference"]["fuel"],
        fuel(&runs[1]) - fuel(&runs[0])
    );
    assert_eq!(
        compared["difference"]["cost_microusd"],
        cost(&runs[1]) - cost(&runs[0])
    );

    let app = spawn_app(&Backend::Sqlite).await;
    let user = app.user("ada", 1_000_000).await;
    let server = app.url("");
    let as_ada = || vec![("SPELLHOST_API_KEY", user.key.clone())];
    cli_json(
        &[
            "signer",
            "add",
            "--server",
            &server,
            "--public-key",
            text(&public_key),
            "--key",
            text(&key),
            "--name",
            "laptop",
            "--json",
        ],
        as_ada(),
    )
    .await;
    let published = cli_json(
        &[
            "spell",
            "publish",
            text(&project),
            "--server",
            &server,
            "--json",
        ],
        as_ada(),
    )
    .await;
    assert_eq!(published["spell"], "ada/greeter", "{published}");
    assert_eq!(published["digest"], built["digest"]);

    // Publishing the same version again: the server's code, and a failing exit.
    let again = cli(
        ["spell", "publish", text(&project), "--server", &server]
            .map(str::to_owned)
            .to_vec(),
        as_ada(),
    )
    .await;
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("version_exists"), "{stderr}");

    let (status, cast) = app
        .cast(
            &user,
            json!({"spell": "ada/greeter", "input": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cast}");
    assert_eq!(cast["output"], json!({"greeting": "Hello, Ada!"}));
    assert_eq!(
        cast["fuel_used"], local["fuel_used"],
        "fuel is deterministic"
    );
    assert_eq!(
        cast["cost_microusd"], local["cost_microusd"],
        "the local run's cost is the cast's"
    );
    // The template's input schema is enforced by the server before any money moves.
    let (status, refused) = app
        .cast(
            &user,
            json!({"spell": "ada/greeter", "input": {"nom": "Ada"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_input", "{refused}");
    app.assert_money_invariants(&user).await;
    app.shutdown().await;
}
