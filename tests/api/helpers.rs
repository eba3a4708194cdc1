//! Typed helpers shared by the black-box tests: signed bundles, example spells, sandboxes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use spellhost::sandbox::{CompiledSpell, HostLimits, Sandbox, SandboxConfig};
use spellhost::supply_chain::{
    Manifest, ModuleDigest, Signature, SignaturePolicy, Signer, SignerKey, SpellBundle,
    TrustedRoots, VerifiedModule, Verifier, sbom, signature,
};

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A fresh signing key pair: (private PEM, the key as a signer, public PEM).
pub fn new_signer() -> (String, Signer, String) {
    let (private_pem, public_pem) = signature::generate_key_pair().expect("keygen");
    let key = SignerKey::from_pem(&public_pem).expect("public key parses");
    (private_pem, Signer::Key(key), public_pem)
}

/// The body of `POST /v1/signers` for a key, with its proof of possession for `handle`.
pub fn key_signer_body(
    name: &str,
    private_pem: &str,
    public_pem: &str,
    handle: &str,
) -> serde_json::Value {
    let message = signature::registration_message(handle);
    let proof = signature::sign(private_pem, message.as_bytes()).expect("signs");
    serde_json::json!({"name": name, "public_key_pem": public_pem, "proof": proof})
}

/// The gate's policy for `signers`, with bundles checked against the public-good root.
pub fn any_of(signers: &[Signer]) -> SignaturePolicy<'_> {
    SignaturePolicy::AnyOf(signers, TrustedRoots::public_good())
}

pub fn manifest_text(name: &str, limits: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\ndescription = \"test spell\"\n[limits]\n{limits}\n"
    )
}

/// A complete, correctly signed bundle for arbitrary module bytes.
pub fn signed_bundle(module: Vec<u8>, manifest: &str, private_pem: &str) -> SpellBundle {
    let parsed = Manifest::parse(manifest).expect("manifest parses");
    let digest = ModuleDigest::of(&module);
    let sbom = sbom::generate(&parsed, &digest, None).expect("sbom");
    let signature = signature::sign(private_pem, &module).expect("signs");
    SpellBundle {
        module,
        manifest: manifest.to_owned(),
        sbom,
        signature: Some(Signature::Detached(signature.into_bytes())),
        sbom_attestation: None,
    }
}

/// The WAT text of a hostile fixture in `spells/hostile/`.
pub fn hostile_wat(name: &str) -> String {
    std::fs::read_to_string(repo_path(&format!("spells/hostile/{name}.wat")))
        .expect("fixture exists")
}

/// A spell that sleeps `ms` milliseconds in `poll_oneoff` (one relative monotonic clock
/// subscription, as `sleeper.wat`), then exits 0 having written nothing.
pub fn napper_wat(ms: u64) -> String {
    let nanos = ms * 1_000_000;
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const {nanos}))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#
    )
}

/// A hostile fixture from `spells/hostile/`, compiled from WAT, signed and verified.
pub fn fixture(name: &str) -> VerifiedModule {
    verified_wat(&name.replace('_', "-"), &hostile_wat(name), "")
}

pub fn verified_wat(name: &str, wat: &str, limits: &str) -> VerifiedModule {
    let module = wat::parse_str(wat).expect("valid WAT");
    let (private_pem, key, _) = new_signer();
    let bundle = signed_bundle(module, &manifest_text(name, limits), &private_pem);
    Verifier::verify(&bundle, any_of(&[key])).expect("verifies")
}

/// The demo signer's public key, committed in `spells/demo-key/`.
pub fn demo_signer() -> Signer {
    let pem = std::fs::read_to_string(repo_path("spells/demo-key/spell.pub")).expect("demo key");
    Signer::Key(SignerKey::from_pem(&pem).expect("demo key parses"))
}

pub fn example_bundle(name: &str) -> SpellBundle {
    SpellBundle::read_dir(&repo_path(&format!("spells/{name}"))).expect("example spell")
}

pub fn example(name: &str) -> VerifiedModule {
    Verifier::verify(&example_bundle(name), any_of(&[demo_signer()])).expect("example verifies")
}

/// A sandbox for tests: two workers, and budgets that only bound a runaway test rather than
/// decide an answer on a busy machine (a queue wait of a minute, trap replays of a minute).
pub fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        workers: 2,
        queue_depth: 64,
        queue_wait_max: std::time::Duration::from_secs(60),
        limits: HostLimits {
            trap_replay_wall_ms_max: 60_000,
            ..HostLimits::default()
        },
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

pub fn compile(sandbox: &Sandbox, module: &VerifiedModule) -> Arc<CompiledSpell> {
    sandbox.prepare(module).expect("compiles").0
}

/// A tiny deterministic generator for test parameters (seeds make failures reproducible).
pub struct Seeded(pub u64);

impl Seeded {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Waits until `condition` holds, polling; panics with `what` after five generous
/// minutes (a bound for a broken test, not a figure any passing run depends on: how fast
/// things happen is measured in benches/).
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
