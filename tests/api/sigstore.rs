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
use crate::helpers::{manifest_text, new_signer, repo_path, signed_bundle};
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

on_both_databases! {
    async fn a_bundle_signed_with_a_registered_key_publishes_and_casts_without_verifying_again(backend) {
        let fake = FakeSigstore::new();
        let (app, _root) = app_trusting(&backend, &fake).await;
        let user = app.user("ada", 1_000_000).await;
        let (private_pem, _, public_pem) = new_signer();
        let (status, body) = add_signer(&app, &user, json!({"name": "release", "public_key_pem": public_pem})).await;
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
        let (status, body) = add_signer(&app, &user, json!({"name": "release", "public_key_pem": public_pem})).await;
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
        assert_eq!(refused(spell).await, "bundle_evidence_invalid");
        // A log the server does not trust: a genuine bundle from another private instance.
        let elsewhere = FakeSigstore::new();
        assert_eq!(refused(bundled(&elsewhere, "noop", &private_pem, &public_pem)).await, "bundle_evidence_invalid");
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
        app.shutdown().await;
    }

    async fn signers_are_keys_or_anchored_identities_and_are_listed_with_their_kind(backend) {
        let app = spawn_app(&backend).await;
        let user = app.user("ada", 0).await;
        let (_, _, public_pem) = new_signer();
        let invalid = [
            json!({"name": "loose", "identity_regex": "https://github.com/acme/.*", "issuer": ISSUER}),
            json!({"name": "half", "identity_regex": "^https://github.com/acme/.*", "issuer": ISSUER}),
            json!({"name": "both", "public_key_pem": public_pem, "issuer": ISSUER, "identity": IDENTITY}),
            json!({"name": "no-issuer", "identity": IDENTITY}),
            json!({"name": "two-identities", "identity": IDENTITY, "identity_regex": "^a$", "issuer": ISSUER}),
            json!({"name": "bad\nname", "identity": IDENTITY, "issuer": ISSUER}),
            json!({"name": "trailing", "public_key_pem": format!("{public_pem}\nmore text")}),
            json!({"name": "nothing"}),
        ];
        for body in invalid {
            let (status, response) = add_signer(&app, &user, body.clone()).await;
            assert_eq!((status, error_code(&response)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_signer"), "{body} → {response}");
        }
        let (status, _) = add_signer(&app, &user, json!({"name": "key", "public_key_pem": public_pem})).await;
        assert_eq!(status, StatusCode::CREATED);
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
        assert!(signers[1].get("public_key_pem").is_none(), "{body}");
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
