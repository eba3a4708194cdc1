//! A hostile fixture from `spells/hostile/`, compiled from WAT, signed with a fresh key and
//! verified: shared by the binaries that cannot use `tests/api/helpers.rs` (the peak-RSS test
//! and the benches), through `#[path]`.

use spellhost::supply_chain::{
    Manifest, ModuleDigest, Signature, SignaturePolicy, Signer, SignerKey, SpellBundle,
    TrustedRoots, VerifiedModule, Verifier, sbom, signature,
};

pub fn fixture(name: &str) -> VerifiedModule {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wat =
        std::fs::read_to_string(root.join(format!("spells/hostile/{name}.wat"))).expect("fixture");
    let module = wat::parse_str(&wat).expect("wat");
    let (private_pem, public_pem) = signature::generate_key_pair().expect("keygen");
    let manifest = format!(
        "name = \"{}\"\nversion = \"1.0.0\"\n",
        name.replace('_', "-")
    );
    let parsed = Manifest::parse(&manifest).expect("manifest");
    let bundle = SpellBundle {
        sbom: sbom::generate(&parsed, &ModuleDigest::of(&module), None).expect("sbom"),
        signature: Some(Signature::Detached(
            signature::sign(&private_pem, &module)
                .expect("sign")
                .into_bytes(),
        )),
        module,
        manifest,
        sbom_attestation: None,
    };
    let key = Signer::Key(SignerKey::from_pem(&public_pem).expect("key"));
    Verifier::verify(
        &bundle,
        SignaturePolicy::AnyOf(&[key], TrustedRoots::public_good()),
    )
    .expect("verifies")
}
