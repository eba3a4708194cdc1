//! Sigstore bundles: arbitrary bytes as a bundle, verified over the conformance suite's artifact
//! with its keyless identity against the embedded public-good trusted root. No input may panic;
//! a bundle that verifies over the artifact's bytes must verify over its digest too, and must
//! never verify over other bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spellhost::supply_chain::ModuleDigest;
use spellhost::supply_chain::bundle::{Signer, Subject, production_trusted_root, verify};

const ARTIFACT: &[u8] = include_bytes!("../../tests/fixtures/sigstore/a.txt");
const SIGNER: Signer<'static> = Signer::Identity {
    identity: "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main",
    issuer: "https://token.actions.githubusercontent.com",
};

fuzz_target!(|bundle: &[u8]| {
    let root = production_trusted_root();
    if verify(bundle, Subject::Bytes(ARTIFACT), &SIGNER, root).is_ok() {
        let digest = ModuleDigest::of(ARTIFACT);
        assert!(
            verify(bundle, Subject::Sha256(digest), &SIGNER, root).is_ok(),
            "verified over the bytes but not over their digest"
        );
        assert!(
            verify(bundle, Subject::Bytes(b"other bytes"), &SIGNER, root).is_err(),
            "verified over bytes it does not sign"
        );
    }
});
