//! What the fuzz targets share: the project's fixtures, and the gate + sandbox pipeline with
//! small limits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use spellhost::sandbox::{HostLimits, Outcome, RunLimits, Sandbox, SandboxConfig};
use spellhost::supply_chain::{
    Manifest, ModuleDigest, SignaturePolicy, SpellBundle, Verifier, sbom,
};

/// A file of the main repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// The manifest every fuzzed module is published under.
pub const MANIFEST: &str = "name = \"fuzzed\"\nversion = \"1.0.0\"\n";

/// Small limits so that each input costs milliseconds: 10⁷ fuel, 200 ms, 16 MiB of memory,
/// 64 KiB of output. Hostile modules reach each limit quickly.
pub fn host_limits() -> HostLimits {
    HostLimits {
        fuel_max: 10_000_000,
        wall_ms_max: 200,
        memory_bytes_max: 16 * 1024 * 1024,
        output_bytes_max: 64 * 1024,
        stderr_bytes_max: 4 * 1024,
        input_bytes_max: 64 * 1024,
        table_elements_max: 10_000,
        trap_replay_wall_ms_max: 100,
        ..HostLimits::default()
    }
}

static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| {
    Sandbox::new(SandboxConfig {
        limits: host_limits(),
        workers: 1,
        queue_depth: 4,
        cached_modules_max: 8,
        artifacts: None,
        queue_wait_max: Duration::from_secs(60),
        ..SandboxConfig::default()
    })
    .expect("the sandbox starts")
});

static MANIFEST_PARSED: LazyLock<Manifest> =
    LazyLock::new(|| Manifest::parse(MANIFEST).expect("the fuzz manifest parses"));

/// The gate's codes for a module that is refused.
const MODULE_CODES: &[&str] = &["module_invalid", "module_too_complex", "import_not_allowed"];

/// Sends `module` through the gate (with an SBOM naming its digest, so that the wasm checks
/// are reached) and, if it passes, compiles and runs it with `input` under small limits.
/// Panics on anything that is not a typed answer: an unexpected gate code, a module the gate
/// accepts but the sandbox cannot compile, or fuel used past the cap.
pub fn gate_and_run(module: &[u8], input: &[u8]) {
    let digest = ModuleDigest::of(module);
    let sbom = sbom::generate(&MANIFEST_PARSED, &digest, None).expect("an SBOM is generated");
    let bundle = SpellBundle {
        module: module.to_vec(),
        manifest: MANIFEST.to_owned(),
        sbom,
        signature: None,
        sbom_attestation: None,
    };
    // Signatures have a target of their own; here the gate's module checks are the subject.
    let verified = match Verifier::verify(&bundle, SignaturePolicy::SkipForLocalRun) {
        Ok(verified) => verified,
        Err(error) => {
            assert!(
                MODULE_CODES.contains(&error.code()),
                "unexpected gate error: {error}"
            );
            return;
        }
    };
    let sandbox = &*SANDBOX;
    let compiled = match sandbox.prepare(&verified) {
        Ok((compiled, _)) => compiled,
        Err(error) if known_disagreement(module, &error.to_string()) => return,
        Err(error) => panic!("the gate accepted a module the sandbox refuses: {error}"),
    };
    let limits: RunLimits = sandbox.limits_for(&verified.manifest().limits);
    let report = sandbox
        .run_blocking(Arc::clone(&compiled), input.to_vec(), limits)
        .expect("the sandbox runs an accepted module");
    assert!(
        report.fuel_used <= limits.fuel,
        "fuel_used {} is past the cap {} ({:?})",
        report.fuel_used,
        limits.fuel,
        report.outcome
    );
    assert!(report.output.len() as u64 <= limits.output_bytes);
    if let Outcome::Trapped(message) = &report.outcome {
        assert!(!message.is_empty(), "a trap says what trapped");
    }
}

/// Modules the gate's static checks accept and the sandbox cannot compile, for reasons already
/// reported (see fuzz/README.md, "Findings"); skipped rather than reported on every run. A
/// publish refuses them (422 `module_invalid`: the registry compiles before it stores a
/// version), so no such version is ever stored.
///
/// 2. The pooling allocator allows one table and one memory per module (wasmtime's defaults,
///    which `sandbox::engine` keeps) and bounds each table, while the gate accepts several
///    tables (reference types): "module table does not fit in pooling allocator requirements".
fn known_disagreement(module: &[u8], error: &str) -> bool {
    uses_gc_types(module) || error.contains("does not fit in pooling allocator")
}

/// 1. Whether a module needs wasmparser's GC types (`externref` and other non-func references).
///
/// Known disagreement, found by `module_smith`: the gate validates with WebAssembly 2.0
/// features, which include `externref` (GC_TYPES), but wasmtime is built without its `gc`
/// feature and refuses such modules when compiling ("failed to parse WebAssembly module").
/// Nothing unsafe follows (the module never runs), but the gate accepts spells the sandbox
/// cannot compile; `supply_chain::wasm::features` should remove `WasmFeatures::GC_TYPES`.
/// Until it does, these inputs are skipped rather than reported on every run.
fn uses_gc_types(module: &[u8]) -> bool {
    use wasmparser::{Validator, WasmFeatures};
    let mut features = WasmFeatures::WASM2;
    for disabled in [
        WasmFeatures::THREADS,
        WasmFeatures::SHARED_EVERYTHING_THREADS,
        WasmFeatures::MEMORY64,
        WasmFeatures::GC,
        WasmFeatures::EXCEPTIONS,
        WasmFeatures::COMPONENT_MODEL,
        WasmFeatures::GC_TYPES,
    ] {
        features.remove(disabled);
    }
    Validator::new_with_features(features)
        .validate_all(module)
        .is_err()
}
