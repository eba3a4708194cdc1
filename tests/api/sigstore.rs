//! Publishing with Sigstore bundles: keyless identities and managed keys as signers, bundles
//! verified offline at publish (against the public-good root and an operator's private one)
//! and never again at cast time, and each way a bundle can fail to prove its signer refused
//! with its own code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use spellhost::AppState;
use spellhost::registry::SpellRef;
use spellhost::supply_chain::{Signature, SpellBundle};

use crate::app::{TestApp, TestUser, error_code, spawn_app, spawn_app_with};
use crate::helpers::{key_signer_body, manifest_text, new_signer, repo_path, signed_bundle};
use crate::on_both_databases;
use crate::sigstore_fake::FakeSigstore;

/// The identity and issuer the conformance suite's keyless bundles were signed with (GitHub
/// Actions OIDC, as in a release workflow).
const IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

const NOOP: &str = "(module (memory (export \"memory\") 1) (func (export \"_start\")))";

fn fixture(path: &str) -> Vec<u8> {
    let full = repo_path(&format!("tests/fixtures/sigstore/{path}"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// An app that trusts `fake`'s private Sigstore instance besides the public-good one.
async fn app_trusting(
    backend: &crate::app::Backend,
    fake: &FakeSigstore,
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("trusted_root.json");
    std::fs::write(&root, fake.trusted_root()).expect("write root");
    let app = spawn_app_with(
        backend,
        &[(
            "SPELLHOST_SIGSTORE_TRUSTED_ROOTS",
            root.to_str().expect("utf-8"),
        )],
    )
    .await;
    (app, dir)
}

async fn add_signer(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.post("/v1/signers", Some(&user.key), body).await
}

/// A NOOP spell named `name`, signed by `private_pem` with a bundle from `fake`.
fn bundled(fake: &FakeSigstore, name: &str, private_pem: &str, public_pem: &str) -> SpellBundle {
    let mut spell = signed_bundle(
        wat::parse_str(NOOP).expect("wat"),
        &manifest_text(name, ""),
        private_pem,
    );
    spell.signature = Some(Signature::Sigstore(fake.sign_with_key(
        private_pem,
        public_pem,
        &spell.module,
    )));
    spell
}

/// The NOOP spell at `version`, with a detached signature by `private_pem`.
fn noop_at(version: &str, private_pem: &str) -> SpellBundle {
    let manifest = manifest_text("noop", "").replace("1.0.0", version);
    signed_bundle(wat::parse_str(NOOP).expect("wat"), &manifest, private_pem)
}

/// `a.txt` of the conformance suite presented as a module, with the suite's keyless bundle
/// over it: the signature stage can be passed, and the wasm check then refuses the text.
fn keyless_over_a_txt() -> SpellBundle {
    let (private_pem, _, _) = new_signer();
    let mut spell = signed_bundle(fixture("a.txt"), &manifest_text("text", ""), &private_pem);
    spell.signature = Some(Signature::Sigstore(fixture(
        "happy-path-v0.1/bundle.sigstore.json",
    )));
    spell
}

/// Publishes `spell`, expects a 422 in the one error shape, and returns its code and message.
async fn refusal(app: &TestApp, user: &TestUser, spell: &SpellBundle) -> (String, String) {
    let (status, body) = app.publish(user, spell).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let code = error_code(&body).to_owned();
    (
        code,
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// An in-toto statement about `module` with `predicate` of `predicate_type`.
fn statement(module: &[u8], predicate_type: &str, predicate: &Value) -> Vec<u8> {
    let digest = spellhost::supply_chain::ModuleDigest::of(module).hex();
    serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "module.wasm", "digest": {"sha256": digest}}],
        "predicateType": predicate_type,
        "predicate": predicate
    }))
    .expect("JSON")
}

on_both_databases! {
    async fn a_keyless_signed_module_publishes_and_casts_over_http_and_other_identities_are_refused(backend) {
        // A private instance (Fulcio CA + CT log + Rekor), pinned by the operator; the signer
        // names it, as a CI workflow's identity at that instance.
        let fake = FakeSigstore::new();
        let (app, _root) = app_trusting(&backend, &fake).await;
        let user = app.user("ada", 1_000_000).await;
        let workflow = "https://github.com/ada/noop/.github/workflows/release.yml@refs/heads/main";
        let (status, body) = add_signer(&app, &user, json!({
            "name": "ci", "identity": workflow, "issuer": ISSUER, "sigstore_instance": "trusted_root"
        })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (private_pem, _, _) = new_signer();
        let keyless = |identity: &str, issuer: &str, version: &str| {
            let mut spell = noop_at(version, &private_pem);
            spell.signature = Some(Signature::Sigstore(fake.sign_keyless(identity, issuer, &spell.module)));
            spell
        };
        let refused = |spell: SpellBundle| {
            let (app, user) = (&app, &user);
            async move { refusal(app, user, &spell).await.0 }
        };
        // Another workflow of the same issuer, and the same workflow name under another issuer.
        let other_workflow = "https://github.com/mallory/noop/.github/workflows/release.yml@refs/heads/main";
        assert_eq!(refused(keyless(other_workflow, ISSUER, "1.0.0")).await, "signer_identity_mismatch");
        assert_eq!(refused(keyless(workflow, "https://accounts.example.com", "1.0.0")).await, "signer_issuer_mismatch");
        // A genuine keyless bundle for other bytes.
        let mut spell = keyless(workflow, ISSUER, "1.0.0");
        spell.signature = Some(Signature::Sigstore(fake.sign_keyless(workflow, ISSUER, b"other bytes")));
        assert_eq!(refused(spell).await, "bundle_artifact_mismatch");
        // A certificate from a CA the roots do not trust (another instance's Fulcio).
        let stranger = FakeSigstore::new();
        let mut spell = keyless(workflow, ISSUER, "1.0.0");
        spell.signature = Some(Signature::Sigstore(stranger.sign_keyless(workflow, ISSUER, &spell.module)));
        assert_eq!(refused(spell).await, "bundle_evidence_invalid");

        let (status, body) = app.publish(&user, &keyless(workflow, ISSUER, "1.0.0")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        // A workflow signer that requires signed SBOMs: the attestation must come from the
        // same identity policy (here the workflow itself, keyless), not merely any identity.
        let (status, body) = add_signer(&app, &user, json!({
            "name": "ci-attested", "identity": workflow, "issuer": "https://token.example.com",
            "sigstore_instance": "trusted_root", "require_signed_sbom": true
        })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let strict = "https://token.example.com";
        let attested_by = |identity: &str, version: &str| {
            let mut spell = keyless(workflow, strict, version);
            let sbom: Value = serde_json::from_slice(&spell.sbom).expect("sbom");
            let statement = statement(&spell.module, "https://cyclonedx.org/bom", &sbom);
            spell.sbom_attestation = Some(fake.attest_keyless(identity, strict, &statement));
            spell
        };
        assert_eq!(refused(keyless(workflow, strict, "1.1.0")).await, "sbom_unsigned");
        assert_eq!(refused(attested_by(other_workflow, "1.1.0")).await, "sbom_attestation_invalid");
        let (status, body) = app.publish(&user, &attested_by(workflow, "1.1.0")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["versions"][0]["sbom"]["signed"], true, "{body}");
        assert_eq!(body["versions"][1]["sbom"]["signed"], false, "{body}");
        let (status, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let signed = &body["versions"][1]["signed_by"];
        assert_eq!((signed["signer"].as_str(), signed["signed_with"].as_str()), (Some("ci"), Some("sigstore_bundle")), "{body}");
        assert_eq!((signed["identity"].as_str(), signed["issuer"].as_str()), (Some(workflow), Some(ISSUER)), "{body}");
        assert_eq!(signed["sigstore_instance"], "trusted_root", "{body}");
        assert!(signed["tlog_index"].as_i64().is_some(), "{body}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        app.shutdown().await;
    }

    async fn a_signer_that_requires_a_signed_sbom_gets_one_verified_under_its_own_key(backend) {
        let fake = FakeSigstore::new();
        let (app, _root) = app_trusting(&backend, &fake).await;
        let user = app.user("ada", 1_000_000).await;
        let (private_pem, _, public_pem) = new_signer();
        let mut body = key_signer_body("release", &private_pem, &public_pem, &user.handle);
        body["require_signed_sbom"] = json!(true);
        let (status, body) = add_signer(&app, &user, body).await;
        assert_eq!((status, body["require_signed_sbom"].clone()), (StatusCode::CREATED, json!(true)), "{body}");
        let spell = bundled(&fake, "noop", &private_pem, &public_pem);
        let sbom: Value = serde_json::from_slice(&spell.sbom).expect("sbom JSON");
        let attested = |predicate_type: &str, predicate: &Value, key: (&str, &str)| {
            let mut spell = spell.clone();
            spell.sbom_attestation = Some(fake.attest_with_key(key.0, key.1, &statement(&spell.module, predicate_type, predicate)));
            spell
        };
        let refused = |spell: SpellBundle| {
            let (app, user) = (&app, &user);
            async move { refusal(app, user, &spell).await }
        };
        // No signed SBOM at all.
        let (code, _) = refused(spell.clone()).await;
        assert_eq!(code, "sbom_unsigned");
        // The attested predicate is another SBOM.
        let mut other = sbom.clone();
        other["metadata"]["component"]["description"] = json!("something else");
        let (code, message) = refused(attested("https://cyclonedx.org/bom", &other, (&private_pem, &public_pem))).await;
        assert_eq!(code, "sbom_attestation_invalid");
        assert!(message.contains("predicate is not the SBOM"), "{message}");
        // Not an SBOM predicate.
        let (code, message) = refused(attested("https://slsa.dev/provenance/v1", &sbom, (&private_pem, &public_pem))).await;
        assert_eq!(code, "sbom_attestation_invalid");
        assert!(message.contains("predicate type"), "{message}");
        // Attested by a key that did not sign the module.
        let (stranger_private, _, stranger_public) = new_signer();
        let (code, _) = refused(attested("https://cyclonedx.org/bom", &sbom, (&stranger_private, &stranger_public))).await;
        assert_eq!(code, "sbom_attestation_invalid");
        // A statement about other bytes.
        let mut wrong_subject = spell.clone();
        wrong_subject.sbom_attestation = Some(fake.attest_with_key(&private_pem, &public_pem, &statement(b"other bytes", "https://cyclonedx.org/bom", &sbom)));
        let (code, _) = refused(wrong_subject).await;
        assert_eq!(code, "sbom_attestation_invalid");
        // A message signature is not an attestation.
        let mut not_dsse = spell.clone();
        not_dsse.sbom_attestation = Some(fake.sign_with_key(&private_pem, &public_pem, &spell.module));
        let (code, _) = refused(not_dsse).await;
        assert_eq!(code, "sbom_attestation_invalid");

        let (status, body) = app.publish(&user, &attested("https://cyclonedx.org/bom", &sbom, (&private_pem, &public_pem))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(body["versions"][0]["sbom"]["signed"], true, "{body}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // The signed SBOM alone: its predicate is the SBOM.
        let mut alone = noop_at("1.0.1", &private_pem);
        alone.signature = Some(Signature::Sigstore(fake.sign_with_key(&private_pem, &public_pem, &alone.module)));
        let mut predicate: Value = serde_json::from_slice(&alone.sbom).expect("sbom JSON");
        // Many components: the attestation is larger than a signature bundle may be (64 KiB).
        predicate["components"] = (0..800)
            .map(|i| json!({"type": "library", "name": format!("dependency-{i}"), "version": "1.0.0", "purl": format!("pkg:cargo/dependency-{i}@1.0.0")}))
            .collect();
        alone.sbom_attestation = Some(fake.attest_with_key(&private_pem, &public_pem, &statement(&alone.module, "https://cyclonedx.org/bom", &predicate)));
        alone.sbom = Vec::new();
        let (status, body) = app.publish(&user, &alone).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(body["versions"][0]["sbom"], json!({"format": "CycloneDX 1.5", "components": 800, "signed": true}), "{body}");
        // Neither an SBOM nor an attestation is a malformed request.
        let mut neither = noop_at("1.0.2", &private_pem);
        neither.sbom = Vec::new();
        let (status, body) = app.publish(&user, &neither).await;
        assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "bad_request"), "{body}");
        app.shutdown().await;
    }

    async fn a_bundle_signed_with_a_registered_key_publishes_and_casts_without_verifying_again(backend) {
        let fake = FakeSigstore::new();
        let (app, _root) = app_trusting(&backend, &fake).await;
        let user = app.user("ada", 1_000_000).await;
        let (private_pem, _, public_pem) = new_signer();
        let (status, body) = add_signer(&app, &user, key_signer_body("release", &private_pem, &public_pem, &user.handle)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["kind"], "key", "{body}");

        let spell = bundled(&fake, "noop", &private_pem, &public_pem);
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let signed = &body["versions"][0]["signed_by"];
        assert_eq!(signed["signer"], "release", "{body}");
        assert_eq!(signed["signed_with"], "sigstore_bundle", "{body}");
        assert!(signed["tlog_index"].as_i64().is_some_and(|i| i >= 1), "{body}");
        assert_eq!(body["versions"][0]["sbom"], json!({"format": "CycloneDX 1.5", "components": 0, "signed": false}), "{body}");
        let logged = signed["tlog_integrated_time"].as_i64().expect("integrated time");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
        assert!((now - 3600..=now).contains(&logged), "{logged} vs {now}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // Another instance on the same database that trusts no private root (as after the
        // operator removed it) still loads and compiles the version: the bundle was verified
        // at publish, and a load checks only that the bytes hash to the digest verified then.
        let mut config = app.app.config.clone();
        config.sigstore_trusted_roots.clear();
        let other = AppState::build(config).await.expect("builds");
        let spell_ref: SpellRef = "ada/noop".parse().expect("spell ref");
        let resolved = other.registry.resolve(&spell_ref).await.expect("resolves without the root");
        assert_eq!(resolved.version, "1.0.0");
        app.shutdown().await;
    }

    async fn bundles_that_do_not_prove_a_registered_signer_are_refused_each_with_its_code(backend) {
        let fake = FakeSigstore::new();
        let (app, _root) = app_trusting(&backend, &fake).await;
        let user = app.user("ada", 0).await;
        let (private_pem, _, public_pem) = new_signer();
        let (status, body) = add_signer(&app, &user, key_signer_body("release", &private_pem, &public_pem, &user.handle)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let refused = |spell: SpellBundle| {
            let app = &app;
            let user = &user;
            async move {
                let (status, body) = app.publish(user, &spell).await;
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
                assert!(body["error"]["trace_id"].is_string(), "{body}");
                error_code(&body).to_owned()
            }
        };

        // Unsigned: neither a signature nor a bundle.
        let mut spell = bundled(&fake, "noop", &private_pem, &public_pem);
        spell.signature = None;
        assert_eq!(refused(spell).await, "unsigned");
        // A genuine bundle, for other bytes.
        let mut spell = bundled(&fake, "noop", &private_pem, &public_pem);
        spell.signature = Some(Signature::Sigstore(fake.sign_with_key(&private_pem, &public_pem, b"other bytes")));
        assert_eq!(refused(spell).await, "bundle_artifact_mismatch");
        // Signed and logged, by a key the publisher never registered.
        let (stranger_private, _, stranger_public) = new_signer();
        assert_eq!(refused(bundled(&fake, "noop", &stranger_private, &stranger_public)).await, "signature_invalid");
        // Forged evidence: the entry's signed timestamp taken from another entry of the same
        // log (a genuine signature, over something else).
        let mut spell = bundled(&fake, "noop", &private_pem, &public_pem);
        let Some(Signature::Sigstore(json)) = &spell.signature else { unreachable!() };
        let mut forged: Value = serde_json::from_slice(json).expect("JSON");
        let other: Value = serde_json::from_slice(&fake.sign_with_key(&private_pem, &public_pem, b"x")).expect("JSON");
        let set = "/verificationMaterial/tlogEntries/0/inclusionPromise/signedEntryTimestamp";
        *forged.pointer_mut(set).expect("SET") = other.pointer(set).expect("SET").clone();
        spell.signature = Some(Signature::Sigstore(serde_json::to_vec(&forged).expect("JSON")));
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "bundle_evidence_invalid"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("(set_invalid)")), "{body}");
        // A log the server does not trust: a genuine bundle from another private instance.
        let elsewhere = FakeSigstore::new();
        let (status, body) = app.publish(&user, &bundled(&elsewhere, "noop", &private_pem, &public_pem)).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "bundle_evidence_invalid"), "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("(set_invalid)") || message.contains("(unknown_log)") || message.contains("(checkpoint_invalid)"), "{body}");
        // Not a bundle at all.
        let mut spell = bundled(&fake, "noop", &private_pem, &public_pem);
        spell.signature = Some(Signature::Sigstore(b"{\"mediaType\": 7}".to_vec()));
        assert_eq!(refused(spell).await, "bundle_malformed");
        // Nothing was published by any of them.
        let (status, _) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        app.shutdown().await;
    }

    async fn keyless_bundles_are_matched_against_the_registered_identity_and_issuer(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        // No keyless signer yet: the issuer is not one the publisher named.
        let (status, body) = app.publish(&user, &keyless_over_a_txt()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "signer_issuer_mismatch"), "{body}");
        // The right issuer, another workflow.
        let other_workflow = IDENTITY.replace("extremely-dangerous-oidc-beacon.yml", "release.yml");
        let (status, body) = add_signer(&app, &user, json!({"name": "ci", "identity": other_workflow, "issuer": ISSUER})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!((body["kind"].clone(), body["identity"].clone(), body["issuer"].clone()), (json!("identity"), json!(other_workflow), json!(ISSUER)), "{body}");
        let (status, body) = app.publish(&user, &keyless_over_a_txt()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "signer_identity_mismatch"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(IDENTITY)), "{body}");
        // The identity by an anchored pattern for any workflow of that repository: the
        // signature stage passes, and the bytes (a text file) are then refused as a module.
        let pattern = r"^https://github\.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/\.github/workflows/[^/]+@refs/heads/main$";
        let (status, body) = add_signer(&app, &user, json!({"name": "any-workflow", "identity_regex": pattern, "issuer": ISSUER})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = app.publish(&user, &keyless_over_a_txt()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "module_invalid"), "{body}");
        // An in-toto attestation (a DSSE envelope) about the artifact is not a signature of it.
        let mut attested = keyless_over_a_txt();
        attested.module = fixture("intoto-set-outside-signing-cert-validity_fail/artifact");
        attested.signature = Some(Signature::Sigstore(fixture("intoto-set-outside-signing-cert-validity_fail/bundle.sigstore.json")));
        let (status, body) = app.publish(&user, &attested).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "bundle_malformed"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("DSSE")), "{body}");
        // A managed-key bundle, for a publisher whose only signers are identities.
        let fake = FakeSigstore::new();
        let (private_pem, _, public_pem) = new_signer();
        let (status, body) = app.publish(&user, &bundled(&fake, "noop", &private_pem, &public_pem)).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "signature_invalid"), "{body}");
        app.shutdown().await;
    }

    async fn a_keyless_bundle_for_a_publisher_with_only_keys_names_the_issuer(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        let (private_pem, _, public_pem) = new_signer();
        let (status, body) = add_signer(&app, &user, key_signer_body("release", &private_pem, &public_pem, &user.handle)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = app.publish(&user, &keyless_over_a_txt()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "signer_issuer_mismatch"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains(ISSUER)), "{body}");
        app.shutdown().await;
    }

    async fn a_pinned_root_certifies_only_the_signers_that_name_it(backend) {
        let fake = FakeSigstore::new();
        let (app, _root) = app_trusting(&backend, &fake).await;
        let user = app.user("ada", 0).await;
        // The operator's root is named by its file stem.
        let (status, body) = add_signer(&app, &user, json!({"name": "corp", "identity": IDENTITY, "issuer": ISSUER, "sigstore_instance": "trusted_root"})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["sigstore_instance"], "trusted_root", "{body}");
        // The public-good instance's bundle does not count for a signer of another instance.
        let (status, body) = app.publish(&user, &keyless_over_a_txt()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "bundle_evidence_invalid"), "{body}");
        app.shutdown().await;
    }

    async fn signers_are_keys_their_holder_registers_or_anchored_identities(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        let (private_pem, _, public_pem) = new_signer();
        let (other_private, _, _) = new_signer();
        let genuine = key_signer_body("key", &private_pem, &public_pem, "ada");
        let mut no_proof = genuine.clone();
        no_proof.as_object_mut().expect("object").remove("proof");
        // A proof made by another key, and one this key made for another account.
        let mut stolen = genuine.clone();
        stolen["proof"] = key_signer_body("key", &other_private, &public_pem, "ada")["proof"].clone();
        let mut elsewhere = genuine.clone();
        elsewhere["proof"] = key_signer_body("key", &private_pem, &public_pem, "bob")["proof"].clone();
        let mut trailing = genuine.clone();
        trailing["public_key_pem"] = json!(format!("{public_pem}\nmore text"));
        let invalid = [
            json!({"name": "loose", "identity_regex": "https://github.com/acme/.*", "issuer": ISSUER}),
            json!({"name": "half", "identity_regex": "^https://github.com/acme/.*", "issuer": ISSUER}),
            json!({"name": "escape", "identity_regex": "^x)|(.*$", "issuer": ISSUER}),
            json!({"name": "both", "public_key_pem": public_pem, "issuer": ISSUER, "identity": IDENTITY}),
            json!({"name": "no-issuer", "identity": IDENTITY}),
            json!({"name": "two-identities", "identity": IDENTITY, "identity_regex": "^a$", "issuer": ISSUER}),
            json!({"name": "bad\nname", "identity": IDENTITY, "issuer": ISSUER}),
            json!({"name": "elsewhere", "identity": IDENTITY, "issuer": ISSUER, "sigstore_instance": "corp"}),
            json!({"name": "nothing"}),
            no_proof,
            stolen,
            elsewhere,
            trailing,
        ];
        for body in invalid {
            let (status, response) = add_signer(&app, &user, body.clone()).await;
            assert_eq!((status, error_code(&response)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_signer"), "{body} → {response}");
        }
        let (status, body) = add_signer(&app, &user, genuine).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _) = add_signer(&app, &user, json!({"name": "ci", "identity": IDENTITY, "issuer": ISSUER})).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = add_signer(&app, &user, json!({"name": "ci", "identity": IDENTITY, "issuer": ISSUER})).await;
        assert_eq!(status, StatusCode::CONFLICT, "names are unique per publisher");
        let (status, body) = app.get("/v1/signers", Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK);
        let signers = body["signers"].as_array().expect("signers");
        assert_eq!(signers.len(), 2, "{body}");
        assert_eq!((signers[0]["kind"].clone(), signers[0]["public_key_pem"].clone()), (json!("key"), json!(public_pem)));
        assert_eq!((signers[1]["kind"].clone(), signers[1]["identity"].clone(), signers[1]["issuer"].clone()), (json!("identity"), json!(IDENTITY), json!(ISSUER)));
        assert_eq!(signers[1]["sigstore_instance"], "public-good", "{body}");
        assert!(signers[1].get("public_key_pem").is_none(), "{body}");
        app.shutdown().await;
    }

    async fn a_removed_signer_authorizes_nothing_new_and_what_it_signed_stays(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        let other = app.user("bob", 0).await;
        let (private_pem, _, public_pem) = new_signer();
        let (status, signer) = add_signer(&app, &user, key_signer_body("laptop", &private_pem, &public_pem, "ada")).await;
        assert_eq!(status, StatusCode::CREATED, "{signer}");
        let id = signer["id"].as_i64().expect("id");
        let spell = |version: &str| noop_at(version, &private_pem);
        let (status, body) = app.publish(&user, &spell("1.0.0")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // Only its owner can remove it.
        let (status, body) = app.delete(&format!("/v1/signers/{id}"), &other.key).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
        let (status, _) = app.delete(&format!("/v1/signers/{id}"), &user.key).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, body) = app.delete(&format!("/v1/signers/{id}"), &user.key).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
        let (_, body) = app.get("/v1/signers", Some(&user.key)).await;
        assert_eq!(body["signers"], json!([]), "{body}");
        // Nothing new under the removed key; the published version stays, naming it.
        let (status, body) = app.publish(&user, &spell("1.1.0")).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "signature_invalid"), "{body}");
        let (_, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(body["versions"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(body["versions"][0]["signed_by"]["signer"], format!("laptop (removed {id})"), "{body}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // The name is free again, and the key can come back under it.
        let (status, body) = add_signer(&app, &user, key_signer_body("laptop", &private_pem, &public_pem, "ada")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = app.publish(&user, &spell("1.1.0")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        app.shutdown().await;
    }

    async fn versions_only_go_up_and_a_yanked_one_is_skipped_or_gone(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        let other = app.user("bob", 0).await;
        let (private_pem, _, public_pem) = new_signer();
        let (status, body) = add_signer(&app, &user, key_signer_body("laptop", &private_pem, &public_pem, "ada")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let spell = |version: &str| noop_at(version, &private_pem);
        let publish = |version: &'static str| {
            let (app, user, bundle) = (&app, &user, spell(version));
            async move { app.publish(user, &bundle).await }
        };
        assert_eq!(publish("1.0.0").await.0, StatusCode::CREATED);
        assert_eq!(publish("1.1.0").await.0, StatusCode::CREATED);
        // Rollback protection: nothing at or below the highest published version.
        let (status, body) = publish("1.0.5").await;
        assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "version_not_newer"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("1.1.0")), "{body}");
        let (status, body) = publish("1.1.0").await;
        assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "version_exists"), "{body}");
        let version_of = |body: &Value| body["version"].as_str().map(str::to_owned);
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!((status, version_of(&body).as_deref()), (StatusCode::OK, Some("1.1.0")), "{body}");

        // Only the owner yanks.
        let yank = |key: &str, version: &str| {
            let (app, key, path) = (&app, key.to_owned(), format!("/v1/spells/ada/noop/versions/{version}/yank"));
            async move { app.post(&path, Some(&key), json!({})).await }
        };
        let (status, body) = yank(&other.key, "1.1.0").await;
        assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, "forbidden"), "{body}");
        let (status, body) = yank(&user.key, "9.9.9").await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "spell_not_found"), "{body}");
        let (status, first) = yank(&user.key, "1.1.0").await;
        assert_eq!(status, StatusCode::OK, "{first}");
        let (status, again) = yank(&user.key, "1.1.0").await;
        assert_eq!((status, again["yanked_at_ms"].clone()), (StatusCode::OK, first["yanked_at_ms"].clone()), "idempotent");
        // Unpinned casts take the highest version left; a pin on the yanked one is refused.
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!((status, version_of(&body).as_deref()), (StatusCode::OK, Some("1.0.0")), "{body}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop@1.1.0", "input": {}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::GONE, "version_yanked"), "{body}");
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop@1.0.0", "input": {}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // A yanked version still counts: it cannot be published again, nor anything below it.
        let (status, body) = publish("1.0.9").await;
        assert_eq!((status, error_code(&body)), (StatusCode::CONFLICT, "version_not_newer"), "{body}");
        let (_, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(body["versions"][0]["version"], "1.1.0", "{body}");
        assert!(body["versions"][0]["yanked_at_ms"].is_i64(), "{body}");
        assert!(body["versions"][1].get("yanked_at_ms").is_none(), "{body}");
        // Every version yanked: nothing to cast.
        assert_eq!(yank(&user.key, "1.0.0").await.0, StatusCode::OK);
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!((status, error_code(&body)), (StatusCode::GONE, "version_yanked"), "{body}");
        app.shutdown().await;
    }

    async fn versions_resolve_as_cargo_resolves_them(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 1_000_000).await;
        let (private_pem, _, public_pem) = new_signer();
        let (status, body) = add_signer(&app, &user, key_signer_body("laptop", &private_pem, &public_pem, "ada")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        for version in ["0.1.0", "0.1.3", "0.2.0", "1.0.0", "1.0.4", "1.1.0", "2.0.0-rc.1"] {
            let (status, body) = app.publish(&user, &noop_at(version, &private_pem)).await;
            assert_eq!(status, StatusCode::CREATED, "{version}: {body}");
        }
        let cast = |spell: String| {
            let (app, user) = (&app, &user);
            async move { app.cast(user, json!({"spell": spell, "input": {}})).await }
        };
        for (wanted, resolved) in [
            // Unpinned: the highest release, never a pre-release.
            ("", "1.1.0"),
            ("@^0.1", "0.1.3"),
            ("@0.2", "0.2.0"),
            ("@1", "1.1.0"),
            ("@~1.0", "1.0.4"),
            ("@>=0.1.1, <1", "0.2.0"),
            ("@=1.0.0", "1.0.0"),
            // A full version pins, also a pre-release; a requirement names one to match it.
            ("@1.0.0", "1.0.0"),
            ("@2.0.0-rc.1", "2.0.0-rc.1"),
            ("@^2.0.0-rc.1", "2.0.0-rc.1"),
        ] {
            let (status, body) = cast(format!("ada/noop{wanted}")).await;
            assert_eq!(status, StatusCode::OK, "{wanted}: {body}");
            assert_eq!(body["version"], resolved, "{wanted}: {body}");
        }
        // `^2` does not match a pre-release of 2.0.0, as in cargo.
        let (status, body) = cast("ada/noop@^2".into()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "spell_not_found"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("ada/noop@^2")), "{body}");
        // Syntax no requirement has is a 400 that names the problem.
        let (status, body) = cast("ada/noop@1.x.y!".into()).await;
        assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "bad_request"), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("1.x.y!")), "{body}");
        // A yanked version leaves its requirement to the next one that matches.
        let (status, _) = app.post("/v1/spells/ada/noop/versions/1.1.0/yank", Some(&user.key), json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = cast("ada/noop@^1".into()).await;
        assert_eq!((status, body["version"].as_str()), (StatusCode::OK, Some("1.0.4")), "{body}");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_pinned_trusted_root_that_cannot_be_read_stops_the_start_naming_the_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let bad = data.path().join("not-a-root.json");
    std::fs::write(&bad, "{\"mediaType\": 1}").expect("write");
    let missing = data.path().join("missing.json");
    for path in [&bad, &missing] {
        let dir = data.path().display().to_string();
        let config = spellhost::config::Config::from_vars(&[
            ("SPELLHOST_DATA_DIR", dir.as_str()),
            (
                "SPELLHOST_SECRET_KEY",
                "test-secret-test-secret-test-secret-0123",
            ),
            (
                "SPELLHOST_SIGSTORE_TRUSTED_ROOTS",
                path.to_str().expect("utf-8"),
            ),
        ])
        .expect("config");
        let error = AppState::build(config).await.err().expect("must not start");
        let message = format!("{error:#}");
        assert!(
            message.contains("SPELLHOST_SIGSTORE_TRUSTED_ROOTS")
                && message.contains(&path.display().to_string()),
            "{message}"
        );
    }
}

/// `spellhost spell verify` checks a directory's bundle with the server's code: a key, a pinned
/// root named on the command line, and the reason on refusal.
#[test]
fn spell_verify_checks_a_directorys_bundle_like_the_server() {
    let fake = FakeSigstore::new();
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("corp.json");
    std::fs::write(&root, fake.trusted_root()).expect("root");
    let (private_pem, _, public_pem) = new_signer();
    let public = work.path().join("spell.pub");
    std::fs::write(&public, &public_pem).expect("key");
    let dir = work.path().join("noop");
    bundled(&fake, "noop", &private_pem, &public_pem)
        .write_dir(&dir)
        .expect("spell dir");
    assert!(
        dir.join("module.wasm.sigstore.json").exists() && !dir.join("module.wasm.sig").exists()
    );
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "spell",
            "verify",
            dir.to_str().expect("utf-8"),
            "--public-key",
            public.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_spellhost"))
            .args(&args)
            .output()
            .expect("runs")
    };
    let root_arg = format!("corp={}", root.display());
    let ok = verify(&["--trusted-root", &root_arg]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let module = std::fs::read(dir.join("module.wasm")).expect("module");
    let digest = spellhost::supply_chain::ModuleDigest::of(&module).to_string();
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), digest);
    // Without the private root, the log is not one this machine trusts.
    let refused = verify(&[]);
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stdout).trim(),
        "bundle_evidence_invalid"
    );
}

/// Issue 13's figure: the publish latency of a keyless-signed `hello` (HTTP, bundle
/// verification, SBOM and wasm checks, compile, store), over 20 publishes, each of a module
/// made new by a custom section so that every one is verified and compiled. A measurement, not
/// a check (it asserts only that each publish succeeds); run it on a quiet machine with
/// `cargo test --release --test api -- --ignored --nocapture publish_latency_of_a_keyless_signed_hello`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in a release build on a quiet machine"]
async fn publish_latency_of_a_keyless_signed_hello() {
    use spellhost::supply_chain::{Manifest, ModuleDigest, sbom};
    let fake = FakeSigstore::new();
    let (app, _root) = app_trusting(&crate::app::Backend::Sqlite, &fake).await;
    let user = app.user("ada", 0).await;
    let workflow = "https://github.com/ada/hello/.github/workflows/release.yml@refs/heads/main";
    let (status, body) = add_signer(
        &app,
        &user,
        json!({"name": "ci", "identity": workflow, "issuer": ISSUER, "sigstore_instance": "trusted_root"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hello = crate::helpers::example_bundle("hello");
    let mut samples = Vec::new();
    for run in 0..20u8 {
        let mut module = hello.module.clone();
        // A custom section `run` holding the run's number: a new digest every time.
        module.extend_from_slice(&[0, 5, 3, b'r', b'u', b'n', run]);
        let manifest = hello
            .manifest
            .replace("version = \"1.0.0\"", &format!("version = \"1.0.{run}\""));
        let parsed = Manifest::parse(&manifest).expect("manifest");
        let spell = SpellBundle {
            sbom: sbom::generate(&parsed, &ModuleDigest::of(&module), None).expect("sbom"),
            signature: Some(Signature::Sigstore(
                fake.sign_keyless(workflow, ISSUER, &module),
            )),
            module,
            manifest,
            sbom_attestation: None,
        };
        let started = std::time::Instant::now();
        let (status, body) = app.publish(&user, &spell).await;
        samples.push(started.elapsed());
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    samples.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "keyless publish of hello, 20 runs: median {:.1} ms (min {:.1}, max {:.1}); sorted: {:?}",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples
            .iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
    );
    app.shutdown().await;
}
