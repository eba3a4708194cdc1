//! The supply-chain gate: every rejection code, and authenticated precompiled artifacts.

use spellhost::sandbox::{ModuleSource, Outcome, Sandbox, SandboxConfig};
use spellhost::supply_chain::{ModuleDigest, Signature, Signer, SpellBundle, Verifier, signature};

use crate::helpers::{
    any_of, demo_signer, example_bundle, manifest_text, new_signer, repo_path, signed_bundle,
};

fn rejection(bundle: &SpellBundle, signers: &[Signer]) -> &'static str {
    Verifier::verify(bundle, any_of(signers))
        .expect_err("must be rejected")
        .code()
}

fn set_sbom_field(bundle: &mut SpellBundle, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut sbom: serde_json::Value = serde_json::from_slice(&bundle.sbom).expect("json");
    edit(&mut sbom);
    bundle.sbom = serde_json::to_vec(&sbom).expect("json");
}

#[test]
fn the_examples_verify_under_the_demo_key() {
    for name in ["hello", "wordfreq", "primes"] {
        let module = Verifier::verify(&example_bundle(name), any_of(&[demo_signer()]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(module.manifest().name, name);
        assert_eq!(*module.digest(), ModuleDigest::of(module.bytes()));
    }
}

#[test]
fn a_signature_over_other_bytes_is_signature_invalid() {
    let mut bundle = example_bundle("hello");
    let (private_pem, _, _) = new_signer();
    let demo_private =
        std::fs::read_to_string(repo_path("spells/demo-key/spell.key")).expect("demo key");
    bundle.signature = Some(Signature::Detached(
        signature::sign(&demo_private, b"other bytes")
            .expect("signs")
            .into_bytes(),
    ));
    assert_eq!(rejection(&bundle, &[demo_signer()]), "signature_invalid");
    // And a signature by a key that is not the signer's.
    let mut bundle = example_bundle("hello");
    bundle.signature = Some(Signature::Detached(
        signature::sign(&private_pem, &bundle.module)
            .expect("signs")
            .into_bytes(),
    ));
    assert_eq!(rejection(&bundle, &[demo_signer()]), "signature_invalid");
}

#[test]
fn a_key_that_is_not_the_signers_is_signature_invalid() {
    let (_, stranger, _) = new_signer();
    assert_eq!(
        rejection(&example_bundle("hello"), &[stranger]),
        "signature_invalid"
    );
    assert_eq!(
        rejection(&example_bundle("hello"), &[]),
        "signature_invalid"
    );
}

#[test]
fn one_flipped_module_byte_is_signature_invalid() {
    let mut bundle = example_bundle("hello");
    let last = bundle.module.len() - 1;
    bundle.module[last] ^= 1;
    assert_eq!(rejection(&bundle, &[demo_signer()]), "signature_invalid");
}

#[test]
fn an_sbom_for_another_digest_is_sbom_digest_mismatch() {
    let mut bundle = example_bundle("hello");
    let other = ModuleDigest::of(b"another module").hex();
    set_sbom_field(&mut bundle, |sbom| {
        sbom["metadata"]["component"]["hashes"][0]["content"] = other.into();
    });
    assert_eq!(rejection(&bundle, &[demo_signer()]), "sbom_digest_mismatch");
    // No SHA-256 hash at all is a mismatch too: the SBOM does not name the module.
    let mut bundle = example_bundle("hello");
    set_sbom_field(&mut bundle, |sbom| {
        sbom["metadata"]["component"]["hashes"] = serde_json::json!([]);
    });
    assert_eq!(rejection(&bundle, &[demo_signer()]), "sbom_digest_mismatch");
}

#[test]
fn malformed_hash_values_are_sbom_invalid() {
    let digest = ModuleDigest::of(&example_bundle("hello").module).hex();
    for bad in [
        format!("{digest}0"),
        format!("{digest} "),
        digest[..63].to_owned(),
        format!("{}zz", &digest[..62]),
    ] {
        let mut bundle = example_bundle("hello");
        set_sbom_field(&mut bundle, |sbom| {
            sbom["metadata"]["component"]["hashes"][0]["content"] = bad.clone().into();
        });
        assert_eq!(
            rejection(&bundle, &[demo_signer()]),
            "sbom_invalid",
            "{bad:?}"
        );
    }
}

#[test]
fn an_sbom_naming_another_spell_or_version_is_sbom_component_mismatch() {
    let mut bundle = example_bundle("hello");
    set_sbom_field(&mut bundle, |sbom| {
        sbom["metadata"]["component"]["name"] = "goodbye".into()
    });
    assert_eq!(
        rejection(&bundle, &[demo_signer()]),
        "sbom_component_mismatch"
    );
    let mut bundle = example_bundle("hello");
    set_sbom_field(&mut bundle, |sbom| {
        sbom["metadata"]["component"]["version"] = "9.9.9".into()
    });
    assert_eq!(
        rejection(&bundle, &[demo_signer()]),
        "sbom_component_mismatch"
    );
}

#[test]
fn documents_that_are_not_cyclonedx_are_sbom_invalid() {
    for sbom in [
        &b"not json"[..],
        b"{}",
        br#"{"bomFormat":"SPDX","specVersion":"1.5"}"#,
        br#"{"bomFormat":"CycloneDX","specVersion":"0.9"}"#,
    ] {
        let mut bundle = example_bundle("hello");
        bundle.sbom = sbom.to_vec();
        assert_eq!(rejection(&bundle, &[demo_signer()]), "sbom_invalid");
    }
    let mut bundle = example_bundle("hello");
    set_sbom_field(&mut bundle, |sbom| {
        sbom["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("component");
    });
    assert_eq!(rejection(&bundle, &[demo_signer()]), "sbom_invalid");
}

#[test]
fn cyclonedx_1_4_documents_are_accepted() {
    let mut bundle = example_bundle("hello");
    set_sbom_field(&mut bundle, |sbom| {
        sbom["specVersion"] = "1.4".into();
        sbom["metadata"]["component"]
            .as_object_mut()
            .expect("component")
            .remove("bom-ref");
    });
    Verifier::verify(&bundle, any_of(&[demo_signer()])).expect("1.4 verifies");
}

#[test]
fn a_bad_manifest_is_manifest_invalid() {
    let mut bundle = example_bundle("hello");
    bundle.manifest = "name = \"Hello World\"\nversion = \"1.0.0\"\n".into();
    assert_eq!(rejection(&bundle, &[demo_signer()]), "manifest_invalid");
}

#[test]
fn bytes_that_are_not_wasm_are_module_invalid() {
    let (private_pem, key, _) = new_signer();
    let bundle = signed_bundle(
        b"\0asm but not really".to_vec(),
        &manifest_text("junk", ""),
        &private_pem,
    );
    assert_eq!(
        rejection(&bundle, std::slice::from_ref(&key)),
        "module_invalid"
    );
    // A valid module that is not a WASI command (no `_start`).
    let reactor = wat::parse_str("(module (func (export \"run\")))").expect("wat");
    let bundle = signed_bundle(reactor, &manifest_text("reactor", ""), &private_pem);
    assert_eq!(rejection(&bundle, &[key]), "module_invalid");
}

#[test]
fn an_unknown_import_is_import_not_allowed() {
    let (private_pem, key, _) = new_signer();
    let wat =
        std::fs::read_to_string(repo_path("spells/hostile/unknown_import.wat")).expect("fixture");
    let bundle = signed_bundle(
        wat::parse_str(&wat).expect("wat"),
        &manifest_text("evil", ""),
        &private_pem,
    );
    assert_eq!(
        rejection(&bundle, std::slice::from_ref(&key)),
        "import_not_allowed"
    );
    let sockets = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
           (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .expect("wat");
    let bundle = signed_bundle(sockets, &manifest_text("net", ""), &private_pem);
    assert_eq!(rejection(&bundle, &[key]), "import_not_allowed");
}

#[test]
fn threads_are_refused_before_compile() {
    let (private_pem, key, _) = new_signer();
    let shared =
        wat::parse_str(r#"(module (memory 1 1 shared) (func (export "_start")))"#).expect("wat");
    let bundle = signed_bundle(shared, &manifest_text("threads", ""), &private_pem);
    assert_eq!(rejection(&bundle, &[key]), "module_invalid");
}

#[test]
fn modules_built_to_be_expensive_to_compile_are_module_too_complex() {
    use spellhost::supply_chain::{
        DEFINED_FUNCTIONS_MAX, FUNCTION_BODY_BYTES_MAX, FUNCTION_LOCALS_MAX,
    };
    let (private_pem, key, _) = new_signer();
    let command = |functions: &str| {
        wat::parse_str(format!(
            "(module (memory (export \"memory\") 1) {functions} (func (export \"_start\")))"
        ))
        .expect("wat")
    };
    let locals = |n: u64| format!("(func (local {}))", "i64 ".repeat(n as usize));
    let verdict = |module: Vec<u8>| {
        let bundle = signed_bundle(module, &manifest_text("heavy", ""), &private_pem);
        Verifier::verify(&bundle, any_of(std::slice::from_ref(&key))).map_err(|e| e.code())
    };

    // One function more than the limit (`_start` is one of them).
    let functions = "(func)".repeat(DEFINED_FUNCTIONS_MAX as usize);
    assert_eq!(
        verdict(command(&functions)).err(),
        Some("module_too_complex")
    );
    let functions = "(func)".repeat(DEFINED_FUNCTIONS_MAX as usize - 1);
    assert!(verdict(command(&functions)).is_ok(), "at the limit");

    assert_eq!(
        verdict(command(&locals(FUNCTION_LOCALS_MAX + 1))).err(),
        Some("module_too_complex")
    );
    assert!(
        verdict(command(&locals(FUNCTION_LOCALS_MAX))).is_ok(),
        "at the limit"
    );

    // A body of `nop`s one byte per instruction, just over the limit.
    let body = format!("(func {})", "nop ".repeat(FUNCTION_BODY_BYTES_MAX));
    assert_eq!(verdict(command(&body)).err(), Some("module_too_complex"));
}

fn artifact_sandbox(dir: &std::path::Path, key: [u8; 32]) -> Sandbox {
    Sandbox::new(SandboxConfig {
        workers: 1,
        artifacts: Some((dir.to_path_buf(), key)),
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

#[test]
fn precompiled_artifacts_are_reused_only_when_authentic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = crate::helpers::example("hello");
    let key = [7u8; 32];

    let first = artifact_sandbox(dir.path(), key);
    assert_eq!(
        first.prepare(&module).expect("compiles").1,
        ModuleSource::Compiled
    );
    assert_eq!(
        first.prepare(&module).expect("cached").1,
        ModuleSource::Memory
    );
    drop(first);

    let second = artifact_sandbox(dir.path(), key);
    assert_eq!(
        second.prepare(&module).expect("loads").1,
        ModuleSource::Artifact
    );
    drop(second);

    // A tampered artifact is discarded and rebuilt from the verified bytes, never loaded.
    let path = dir.path().join(format!("{}.cwasm", module.digest().hex()));
    let mut bytes = std::fs::read(&path).expect("artifact written");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).expect("tamper");
    let third = artifact_sandbox(dir.path(), key);
    let (spell, source) = third.prepare(&module).expect("rebuilds");
    assert_eq!(source, ModuleSource::Compiled);
    assert_eq!(third.artifacts_rejected(), 1);
    let report = third
        .run_blocking(
            spell.clone(),
            br#"{"name":"Ada"}"#.to_vec(),
            third.limits_for(&module.manifest().limits),
        )
        .expect("runs");
    assert_eq!(report.outcome, Outcome::Ok);
    drop(third);

    // An artifact authenticated under another server's key is foreign: also discarded.
    let foreign = artifact_sandbox(dir.path(), [8u8; 32]);
    assert_eq!(
        foreign.prepare(&module).expect("rebuilds").1,
        ModuleSource::Compiled
    );
    assert_eq!(foreign.artifacts_rejected(), 1);
}
