//! The SBOM check: any bytes are accepted only as a CycloneDX document naming the `hello`
//! example's name, version and exact digest, or refused with one of the SBOM codes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use spellhost::supply_chain::{Manifest, ModuleDigest, sbom};
use spellhost_fuzz::repo_path;

static HELLO: LazyLock<(Manifest, ModuleDigest)> = LazyLock::new(|| {
    let manifest = std::fs::read_to_string(repo_path("spells/hello/spell.toml")).expect("fixture");
    let module = std::fs::read(repo_path("spells/hello/module.wasm")).expect("fixture");
    (
        Manifest::parse(&manifest).expect("the example's manifest parses"),
        ModuleDigest::of(&module),
    )
});

const SBOM_CODES: &[&str] = &[
    "sbom_invalid",
    "sbom_digest_mismatch",
    "sbom_component_mismatch",
];

fuzz_target!(|document: &[u8]| {
    let (manifest, digest) = &*HELLO;
    if let Err(error) = sbom::check(document, manifest, digest) {
        assert!(SBOM_CODES.contains(&error.code()), "{error}");
    }
});
