//! `spellhost spell run`: one local run (or two, with `--compare`) under the server's own
//! sandbox, limits and prices, reported with what a cast of it would cost.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde_json::json;

use spellhost::config::Config;
use spellhost::money::{Cost, Pricing};
use spellhost::sandbox::{Outcome, RunLimits, RunReport, Sandbox, SandboxConfig};
use spellhost::supply_chain::{
    self, GateError, Manifest, ModuleDigest, Signature, SignaturePolicy, Signer, SpellBundle,
    TrustedRoots, VerifiedModule, Verifier,
};

use super::print_json;
use super::spell::{SignerArgs, print_rejection};

#[derive(Args)]
pub struct RunArgs {
    /// A spell directory (module.wasm and spell.toml; its SBOM and signature when present), or
    /// a bare `.wasm` module (run under the host's maxima).
    path: PathBuf,
    /// The input (the spell's stdin), as raw bytes: a file, or `-` for this command's stdin.
    #[arg(
        long,
        value_name = "FILE|-",
        alias = "input-file",
        conflicts_with = "input_json"
    )]
    input: Option<PathBuf>,
    /// The input as JSON text on the command line.
    #[arg(long, value_name = "JSON")]
    input_json: Option<String>,
    /// Also run this module (a `.wasm` or a spell directory) on the same input under the same
    /// limits, and show the difference in fuel and cost.
    #[arg(long, value_name = "OTHER.wasm")]
    compare: Option<PathBuf>,
    /// Lower the fuel cap.
    #[arg(long)]
    fuel: Option<u64>,
    /// Lower the wall-clock limit, in milliseconds.
    #[arg(long)]
    wall_ms: Option<u64>,
    /// Lower the memory limit, in bytes.
    #[arg(long)]
    memory_bytes: Option<u64>,
    /// Who must have signed (without any of these, the signature is not checked, and a bare
    /// module or a directory without an SBOM runs too).
    #[command(flatten)]
    signer: SignerArgs,
    /// One JSON object on stdout (with `--compare`: both runs and the difference).
    #[arg(long)]
    json: bool,
}

/// One finished local run and what a cast of it would be charged.
struct LocalRun {
    label: String,
    digest: ModuleDigest,
    limits: RunLimits,
    report: RunReport,
    cost: Cost,
}

pub fn run_local(args: RunArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    // The server's configuration, from the same loader: its host maxima and its prices.
    let config = Config::from_env(config_path)?;
    let input = read_input(&args)?;
    let expected = args.signer.signers()?;
    if expected.is_none() && !args.json {
        eprintln!(
            "note: no --public-key or --identity/--issuer given; the signature is not checked"
        );
    }
    let module = match load(&args.path, expected.as_ref())? {
        Ok(module) => module,
        Err(error) => {
            print_rejection(&error, args.json);
            return Ok(ExitCode::FAILURE);
        }
    };
    let other = match &args.compare {
        Some(path) => match load(path, None)? {
            Ok(other) => Some(other),
            Err(error) => {
                print_rejection(&error, args.json);
                return Ok(ExitCode::FAILURE);
            }
        },
        None => None,
    };
    // One worker: exactly the server's engine and limits, sized for one run at a time, with
    // no precompiled artifacts (those belong to the server's data directory).
    let sandbox = Sandbox::new(SandboxConfig {
        workers: 1,
        runs_max: 1,
        tenant_runs_max: 1,
        queue_depth: 1,
        artifacts: None,
        ..config.sandbox.clone()
    })?;
    let mut limits = sandbox.limits_for(&module.manifest().limits);
    if let Some(fuel) = args.fuel {
        limits = limits.with_fuel_at_most(fuel);
    }
    if let Some(wall_ms) = args.wall_ms {
        limits = limits.with_wall_ms_at_most(wall_ms);
    }
    if let Some(memory_bytes) = args.memory_bytes {
        limits = limits.with_memory_bytes_at_most(memory_bytes);
    }
    let first = execute(
        &sandbox,
        &config.pricing,
        &module,
        &args.path,
        &input,
        limits,
    )?;
    let Some((other, path)) = other.zip(args.compare.as_ref()) else {
        print_run(&first, &config.pricing, args.json);
        return Ok(exit_code(&[&first]));
    };
    // The same limits for both, so that the difference is the modules' alone.
    let second = execute(&sandbox, &config.pricing, &other, path, &input, limits)?;
    print_comparison(&first, &second, &config.pricing, args.json);
    Ok(exit_code(&[&first, &second]))
}

fn exit_code(runs: &[&LocalRun]) -> ExitCode {
    if runs.iter().all(|run| run.report.outcome.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn read_input(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
    match (&args.input, &args.input_json) {
        (_, Some(text)) => {
            serde_json::from_str::<serde_json::Value>(text).context("--input-json must be JSON")?;
            Ok(text.clone().into_bytes())
        }
        (Some(path), None) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the input from stdin")?;
            Ok(bytes)
        }
        (Some(path), None) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// Compiles and runs `module` once, and prices the run as the server prices a cast.
fn execute(
    sandbox: &Sandbox,
    pricing: &Pricing,
    module: &VerifiedModule,
    path: &Path,
    input: &[u8],
    limits: RunLimits,
) -> anyhow::Result<LocalRun> {
    let (spell, _) = sandbox.prepare(module)?;
    let report = sandbox.run_blocking(spell, input.to_vec(), limits)?;
    let cost = pricing.charge(report.fuel_used, Pricing::billed_ms(report.blocked));
    Ok(LocalRun {
        label: path.display().to_string(),
        digest: *module.digest(),
        limits,
        report,
        cost,
    })
}

/// Reads a spell directory or a bare module and puts it through the gate. Without an expected
/// signer, a missing SBOM is made up on the spot (bound to the module, as `spell sbom` would
/// write it) and the signature is not checked; with one, the signature must verify, and a
/// directory must hold its SBOM.
fn load(
    path: &Path,
    expected: Option<&(Signer, TrustedRoots)>,
) -> anyhow::Result<Result<VerifiedModule, GateError>> {
    let mut bundle = if path.is_dir() {
        anyhow::ensure!(
            path.join(supply_chain::MODULE_FILE).exists(),
            "{} has no {}: build it with `spellhost spell build {}`",
            path.display(),
            supply_chain::MODULE_FILE,
            path.display()
        );
        read_dir_lenient(path, expected.is_some())?
    } else {
        read_bare_module(path)?
    };
    if bundle.sbom.is_empty() {
        let manifest = match Manifest::parse(&bundle.manifest) {
            Ok(manifest) => manifest,
            Err(error) => return Ok(Err(error)),
        };
        bundle.sbom =
            supply_chain::sbom::generate(&manifest, &ModuleDigest::of(&bundle.module), None)?;
    }
    let policy = match expected {
        Some((signer, roots)) => SignaturePolicy::AnyOf(std::slice::from_ref(signer), roots),
        None => SignaturePolicy::SkipForLocalRun,
    };
    Ok(Verifier::verify(&bundle, policy))
}

fn read_dir_lenient(dir: &Path, complete: bool) -> anyhow::Result<SpellBundle> {
    if complete || dir.join(supply_chain::SBOM_FILE).exists() {
        return Ok(SpellBundle::read_dir(dir)?);
    }
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(SpellBundle {
        module: read(supply_chain::MODULE_FILE)?,
        manifest: String::from_utf8_lossy(&read(supply_chain::MANIFEST_FILE)?).into_owned(),
        sbom: Vec::new(),
        signature: None,
        sbom_attestation: None,
    })
}

/// A bare module: named after its file (version 0.0.0, no limits of its own), signed by
/// `FILE.sigstore.json` or `FILE.sig` beside it, if either exists.
fn read_bare_module(path: &Path) -> anyhow::Result<SpellBundle> {
    let module = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sibling = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let read_sibling = |suffix: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let path = sibling(suffix);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    let signature = match read_sibling(".sigstore.json")? {
        Some(bundle) => Some(Signature::Sigstore(bundle)),
        None => read_sibling(".sig")?.map(Signature::Detached),
    };
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(SpellBundle {
        module,
        manifest: format!(
            "name = \"{}\"\nversion = \"0.0.0\"\n",
            spell_name_from(&stem)
        ),
        sbom: Vec::new(),
        signature,
        sbom_attestation: None,
    })
}

/// A valid spell name (`[a-z0-9-]{1,64}`) made from a file name.
fn spell_name_from(stem: &str) -> String {
    let name: String = stem
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "module".to_owned()
    } else {
        name
    }
}

/// The JSON shape of a local run (also used by scripts).
fn run_json(run: &LocalRun, pricing: &Pricing) -> serde_json::Value {
    let report = &run.report;
    let mut value = json!({
        "module": run.label,
        "digest": run.digest.to_string(),
        "outcome": report.outcome.as_str(),
        "exit_code": match report.outcome {
            Outcome::Ok => Some(0),
            Outcome::ExitCode(code) => Some(code),
            _ => None,
        },
        "stderr": String::from_utf8_lossy(&report.stderr),
        "fuel_used": report.fuel_used,
        "duration_us": u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX),
        // What the server would bill as blocked time (whole ms, rounded up).
        "blocked_ms": Pricing::billed_ms(report.blocked),
        "memory_bytes_peak": report.memory_bytes_peak,
        "output_bytes": report.output.len(),
        "cost_microusd": run.cost.total().get(),
        "cost": {
            "base_microusd": run.cost.base.get(),
            "fuel_microusd": run.cost.fuel.get(),
            "wall_microusd": run.cost.wall.get(),
        },
        "prices": {
            "price_per_billion_fuel_microusd": pricing.price_per_billion_fuel_microusd,
            "cast_base_fee_microusd": pricing.cast_base_fee_microusd,
            "price_microusd_per_wall_ms": pricing.price_microusd_per_wall_ms,
        },
        "limits": {
            "fuel": run.limits.fuel,
            "wall_ms": run.limits.wall_ms,
            "memory_bytes": run.limits.memory_bytes,
            "output_bytes": run.limits.output_bytes,
        },
    });
    match serde_json::from_slice::<serde_json::Value>(&report.output) {
        Ok(output) => value["output"] = output,
        Err(_) => {
            value["output_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&report.output)
                .into();
        }
    }
    if let Outcome::Trapped(message) = &report.outcome {
        value["trap"] = message.clone().into();
    }
    value
}

fn print_run(run: &LocalRun, pricing: &Pricing, json: bool) {
    if json {
        print_json(&run_json(run, pricing));
        return;
    }
    use std::io::Write as _;
    let report = &run.report;
    let _ = std::io::stdout().write_all(&report.output);
    if !report.output.ends_with(b"\n") && !report.output.is_empty() {
        println!();
    }
    let _ = std::io::stderr().write_all(&report.stderr);
    eprint!("{}", summary(run, pricing));
}

/// The human report, one line per resource, each against its limit.
fn summary(run: &LocalRun, pricing: &Pricing) -> String {
    let report = &run.report;
    let detail = match &report.outcome {
        Outcome::ExitCode(code) => format!(" (exit code {code})"),
        Outcome::Trapped(message) => format!(" ({message})"),
        _ => String::new(),
    };
    let cost = run.cost;
    format!(
        "--- {} {}\n\
         outcome      {}{detail}\n\
         fuel         {} of {}\n\
         wall time    {} µs of {} ms (blocked in host calls: {} ms billed)\n\
         peak memory  {} bytes of {}\n\
         output       {} bytes of {}\n\
         cost         {} µ$ ({}) = base fee {} + fuel {} + blocked time {}\n\
         prices       {} µ$ per 10⁹ fuel, {} µ$ per blocked ms, {} µ$ per cast\n",
        run.label,
        run.digest,
        report.outcome.as_str(),
        grouped(report.fuel_used),
        grouped(run.limits.fuel),
        grouped(u64::try_from(report.duration.as_micros()).unwrap_or(u64::MAX)),
        grouped(run.limits.wall_ms),
        Pricing::billed_ms(report.blocked),
        grouped(report.memory_bytes_peak),
        grouped(run.limits.memory_bytes),
        grouped(report.output.len() as u64),
        grouped(run.limits.output_bytes),
        cost.total().get(),
        cost.total(),
        cost.base.get(),
        cost.fuel.get(),
        cost.wall.get(),
        pricing.price_per_billion_fuel_microusd,
        pricing.price_microusd_per_wall_ms,
        pricing.cast_base_fee_microusd,
    )
}

fn print_comparison(first: &LocalRun, second: &LocalRun, pricing: &Pricing, json: bool) {
    let fuel_difference = i128::from(second.report.fuel_used) - i128::from(first.report.fuel_used);
    let cost_difference =
        i128::from(second.cost.total().get()) - i128::from(first.cost.total().get());
    if json {
        print_json(&json!({
            "runs": [run_json(first, pricing), run_json(second, pricing)],
            "difference": {
                "fuel": fuel_difference,
                "cost_microusd": cost_difference,
                "fuel_per_mille": per_mille(fuel_difference, first.report.fuel_used),
            },
        }));
        return;
    }
    eprint!("{}", summary(first, pricing));
    eprint!("{}", summary(second, pricing));
    if first.report.output != second.report.output {
        eprintln!("note: the two outputs differ");
    }
    let relative = per_mille(fuel_difference, first.report.fuel_used)
        .map(|p| {
            format!(
                " ({}{}.{}%)",
                if p < 0 { "-" } else { "+" },
                p.abs() / 10,
                p.abs() % 10
            )
        })
        .unwrap_or_default();
    eprintln!(
        "difference   fuel {fuel_difference:+}{relative}; cost {cost_difference:+} µ$ per cast"
    );
}

/// `difference / base` in tenths of a percent, in integers (`None` when `base` is zero).
fn per_mille(difference: i128, base: u64) -> Option<i128> {
    (base > 0).then(|| difference * 1000 / i128::from(base))
}

/// `1234567` → `1 234 567`.
fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_become_valid_spell_names() {
        assert_eq!(spell_name_from("My_Spell.v2"), "my-spell-v2");
        assert_eq!(spell_name_from(""), "module");
        assert_eq!(spell_name_from(&"a".repeat(100)).len(), 64);
        assert!(supply_chain::manifest::is_valid_name(&spell_name_from(
            "Ünïcode name"
        )));
    }

    #[test]
    fn a_bare_module_runs_unsigned_and_is_verified_by_its_sibling_signature_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("My Module.wasm");
        let module =
            wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
                .expect("wat");
        std::fs::write(&path, &module).expect("write");
        let verified = load(&path, None).expect("reads").expect("passes the gate");
        assert_eq!(verified.manifest().name, "my-module");
        assert_eq!(*verified.digest(), ModuleDigest::of(&module));

        let (private_pem, public_pem) =
            supply_chain::signature::generate_key_pair().expect("keygen");
        let key = supply_chain::SignerKey::from_pem(&public_pem).expect("key");
        let roots = TrustedRoots::public_good_and(&[]).expect("roots");
        let expected = (Signer::Key(key), roots);
        let refused = load(&path, Some(&expected)).expect("reads");
        assert_eq!(refused.expect_err("unsigned").code(), "unsigned");
        let signature = supply_chain::signature::sign(&private_pem, &module).expect("signs");
        std::fs::write(dir.path().join("My Module.wasm.sig"), signature).expect("write");
        load(&path, Some(&expected))
            .expect("reads")
            .expect("verifies with the signature beside it");
    }

    #[test]
    fn a_directory_without_a_module_says_to_build_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = load(dir.path(), None).expect_err("no module");
        assert!(
            error.to_string().contains("spellhost spell build"),
            "{error}"
        );
    }

    #[test]
    fn numbers_are_grouped_by_thousands_and_differences_in_tenths_of_a_percent() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1 000");
        assert_eq!(grouped(1_234_567), "1 234 567");
        assert_eq!(per_mille(50, 1_000), Some(50));
        assert_eq!(per_mille(-1, 3), Some(-333));
        assert_eq!(per_mille(5, 0), None);
    }
}
