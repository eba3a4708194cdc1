//! SBOM formats and the vulnerability policy at publish: CycloneDX 1.6 and SPDX 2.3 accepted,
//! components matched against an offline OSV database (`tests/fixtures/osv/`), refusals with
//! `vulnerable_component` unless a VEX statement says `not_affected`, the check's result shown
//! per version, and the database reloaded when its directory changes.

use reqwest::StatusCode;
use serde_json::{Value, json};
use spellhost::supply_chain::{Manifest, ModuleDigest, SpellBundle, sbom, signature};

use crate::app::{TestApp, TestUser, error_code, spawn_app, spawn_app_with};
use crate::helpers::{eventually, manifest_text, new_signer, repo_path};
use crate::on_both_databases;

const NOOP: &str = "(module (memory (export \"memory\") 1) (func (export \"_start\")))";

fn osv_fixture() -> String {
    repo_path("tests/fixtures/osv").display().to_string()
}

/// A NOOP spell at `version` whose CycloneDX 1.6 SBOM lists `components` (purls) and carries
/// `vulnerabilities` (VEX statements), signed by `private_pem`.
fn spell_with(
    version: &str,
    components: &[&str],
    vulnerabilities: Value,
    private_pem: &str,
) -> SpellBundle {
    let module = wat::parse_str(NOOP).expect("wat");
    let manifest = manifest_text("noop", "").replace("1.0.0", version);
    let parsed = Manifest::parse(&manifest).expect("manifest");
    let digest = ModuleDigest::of(&module);
    let mut document: Value =
        serde_json::from_slice(&sbom::generate(&parsed, &digest, None).expect("sbom"))
            .expect("json");
    document["specVersion"] = json!("1.6");
    document["components"] = components
        .iter()
        .map(|purl| {
            let (name, version) = purl
                .rsplit_once('/')
                .and_then(|(_, rest)| rest.split_once('@'))
                .expect("purl with a version");
            json!({"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl})
        })
        .collect();
    document["vulnerabilities"] = vulnerabilities;
    let signature = signature::sign(private_pem, &module).expect("signs");
    SpellBundle {
        module,
        manifest,
        sbom: serde_json::to_vec(&document).expect("json"),
        signature: Some(spellhost::supply_chain::Signature::Detached(
            signature.into_bytes(),
        )),
        sbom_attestation: None,
    }
}

fn not_affected(id: &str, component: &str) -> Value {
    json!({
        "id": id,
        "analysis": {"state": "not_affected", "justification": "code_not_reachable"},
        "affects": [{"ref": component}]
    })
}

async fn publisher(app: &TestApp) -> (TestUser, String) {
    let user = app.user("ada", 1_000_000).await;
    let (private_pem, _, public_pem) = new_signer();
    app.register_key_signer(&user, "laptop", &private_pem, &public_pem)
        .await;
    (user, private_pem)
}

on_both_databases! {
    async fn vulnerable_components_are_refused_unless_vex_says_not_affected(backend) {
        let osv = osv_fixture();
        let app = spawn_app_with(&backend, &[("SPELLHOST_ADVISORY_DB", osv.as_str())]).await;
        let (user, key) = publisher(&app).await;

        // Critical (database_specific.severity), in the affected range.
        let spell = spell_with("1.0.0", &["pkg:cargo/evil-crate@1.1.0"], json!([]), &key);
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "vulnerable_component"), "{body}");
        assert_eq!(body["error"]["component"], "pkg:cargo/evil-crate@1.1.0", "{body}");
        assert_eq!(body["error"]["advisory"], "GHSA-spel-0001-crit", "{body}");
        assert_eq!(body["error"]["severity"], "critical", "{body}");
        // High by its CVSS v3.1 vector (7.5), inside an ECOSYSTEM range with last_affected.
        let spell = spell_with("1.0.0", &["pkg:cargo/leaky@0.3.5"], json!([]), &key);
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "vulnerable_component"), "{body}");
        assert_eq!((body["error"]["advisory"].as_str(), body["error"]["severity"].as_str()), (Some("RUSTSEC-2099-0002"), Some("high")), "{body}");
        // A VEX statement for another component does not cover this one.
        let spell = spell_with("1.0.0", &["pkg:cargo/evil-crate@1.1.0"], json!([not_affected("GHSA-spel-0001-crit", "pkg:cargo/other@1.0.0")]), &key);
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "vulnerable_component"), "{body}");
        // Nothing of the spell was stored by the refusals.
        let (status, _) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Fixed versions, versions past last_affected, and withdrawn advisories do not match;
        // below the threshold (moderate) is allowed and shown; VEX by id and by alias.
        let components = [
            "pkg:cargo/evil-crate@1.2.0",
            "pkg:cargo/leaky@0.3.6",
            "pkg:cargo/fine-crate@3.0.0",
            "pkg:npm/left-pad@1.0.1",
        ];
        let (status, body) = app.publish(&user, &spell_with("1.0.0", &components, json!([]), &key)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let vex = json!([
            not_affected("GHSA-spel-0001-crit", "pkg:cargo/evil-crate@1.0.0"),
            not_affected("CVE-2099-1234", "pkg:cargo/leaky@0.3.1"),
        ]);
        let spell = spell_with("1.1.0", &["pkg:cargo/evil-crate@1.0.0", "pkg:cargo/leaky@0.3.1"], vex, &key);
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        let (status, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let newest = &body["versions"][0];
        assert_eq!(newest["sbom"], json!({"format": "CycloneDX 1.6", "components": 2, "signed": false}), "{body}");
        let check = &newest["advisory_check"];
        assert_eq!(check["status"], "findings_allowed", "{body}");
        assert_eq!(check["severity_min"], "high", "{body}");
        assert_eq!(check["database"]["advisories"], 3, "the withdrawn record is not counted: {body}");
        assert!(check["database"]["id"].as_str().is_some_and(|id| id.starts_with("sha256:")), "{body}");
        assert_eq!(check["database"]["modified"], "2026-12-01T08:00:00Z", "{body}");
        let mut findings: Vec<(String, String, String, String)> = check["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| {
                let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
                (text("advisory"), text("component"), text("severity"), text("vex"))
            })
            .collect();
        findings.sort();
        assert_eq!(findings, [
            ("GHSA-spel-0001-crit".into(), "pkg:cargo/evil-crate@1.0.0".into(), "critical".into(), "not_affected".into()),
            ("RUSTSEC-2099-0002".into(), "pkg:cargo/leaky@0.3.1".into(), "high".into(), "not_affected".into()),
        ], "{body}");
        let older = &body["versions"][1]["advisory_check"];
        assert_eq!(older["findings"][0]["advisory"], "GHSA-spel-0004-moderate", "{body}");
        assert_eq!(older["findings"][0]["severity"], "medium", "{body}");
        assert!(older["findings"][0].get("vex").is_none_or(Value::is_null), "{body}");
        app.shutdown().await;
    }

    async fn without_a_database_each_version_says_so_and_spdx_publishes(backend) {
        let app = spawn_app(&backend).await;
        let (user, key) = publisher(&app).await;
        let spell = spell_with("1.0.0", &["pkg:cargo/evil-crate@1.1.0"], json!([]), &key);
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        // An SPDX 2.3 document describing the module's package.
        let mut spell = spell_with("1.1.0", &[], json!([]), &key);
        let digest = ModuleDigest::of(&spell.module).hex();
        spell.sbom = serde_json::to_vec(&json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": "noop",
            "documentNamespace": "https://example.com/spdx/noop-1.1.0",
            "creationInfo": {"created": "2026-12-06T10:00:00Z", "creators": ["Tool: test"]},
            "documentDescribes": ["SPDXRef-Package-noop"],
            "packages": [
                {"SPDXID": "SPDXRef-Package-noop", "name": "noop", "versionInfo": "1.1.0", "downloadLocation": "NOASSERTION",
                 "checksums": [{"algorithm": "SHA256", "checksumValue": digest}]},
                {"SPDXID": "SPDXRef-Package-serde", "name": "serde", "versionInfo": "1.0.200", "downloadLocation": "NOASSERTION",
                 "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": "pkg:cargo/serde@1.0.200"}]}
            ]
        })).expect("json");
        let (status, body) = app.publish(&user, &spell).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, body) = app.get("/v1/spells/ada/noop", Some(&user.key)).await;
        assert_eq!(body["versions"][0]["sbom"], json!({"format": "SPDX 2.3", "components": 1, "signed": false}), "{body}");
        for version in [0, 1] {
            let check = &body["versions"][version]["advisory_check"];
            assert_eq!(check["status"], "no_database_configured", "{body}");
            assert!(check["database"].is_null(), "{body}");
        }
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        app.shutdown().await;
    }

    async fn a_stored_sbom_is_not_checked_again_when_its_module_is_loaded(backend) {
        let app = spawn_app(&backend).await;
        let (user, key) = publisher(&app).await;
        let (status, body) = app.publish(&user, &spell_with("1.0.0", &[], json!([]), &key)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // As a version published under older rules (CycloneDX 1.3, accepted before) is stored.
        let old = json!({"bomFormat": "CycloneDX", "specVersion": "1.3", "version": 1});
        sqlx::query("UPDATE spell_versions SET sbom = $1")
            .bind(serde_json::to_vec(&old).expect("json"))
            .execute(app.app.db.writer())
            .await
            .expect("update");
        // Another instance on the same database loads and compiles it from storage.
        let other = spellhost::AppState::build(app.app.config.clone()).await.expect("builds");
        let spell_ref: spellhost::registry::SpellRef = "ada/noop".parse().expect("spell ref");
        let resolved = other.registry.resolve(&spell_ref).await.expect("loads without re-checking the SBOM");
        assert_eq!(resolved.version, "1.0.0");
        app.shutdown().await;
    }

    async fn the_database_is_reloaded_when_its_directory_changes(backend) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            repo_path("tests/fixtures/osv/npm/GHSA-spel-0004-moderate.json"),
            dir.path().join("moderate.json"),
        )
        .expect("copy");
        let path = dir.path().display().to_string();
        let app = spawn_app_with(&backend, &[
            ("SPELLHOST_ADVISORY_DB", path.as_str()),
            ("SPELLHOST_ADVISORY_RELOAD_INTERVAL_MS", "100"),
        ])
        .await;
        let (user, key) = publisher(&app).await;
        let spell = |version: &str| spell_with(version, &["pkg:cargo/evil-crate@1.1.0"], json!([]), &key);
        let (status, body) = app.publish(&user, &spell("1.0.0")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let loaded = |app: &TestApp| app.app.registry.advisories().current().map(|db| db.snapshot().clone()).expect("loaded");
        let before = loaded(&app);
        assert_eq!(before.advisories, 1);

        // The operator adds an advisory: the server picks it up without a restart.
        std::fs::copy(
            repo_path("tests/fixtures/osv/crates.io/GHSA-spel-0001-crit.json"),
            dir.path().join("critical.json"),
        )
        .expect("copy");
        eventually("the new advisory to be loaded", || {
            let app = &app;
            async move { loaded(app).advisories == 2 }
        })
        .await;
        assert_ne!(loaded(&app).id, before.id);
        let (status, body) = app.publish(&user, &spell("1.1.0")).await;
        assert_eq!((status, error_code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, "vulnerable_component"), "{body}");
        // The version published before the advisory still casts: the check is at publish only.
        let (status, body) = app.cast(&user, json!({"spell": "ada/noop", "input": {}})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn an_advisory_database_that_cannot_be_read_stops_the_start_naming_the_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let osv = data.path().join("osv");
    std::fs::create_dir(&osv).expect("mkdir");
    let bad = osv.join("GHSA-bad.json");
    std::fs::write(&bad, "{\"id\": 7}").expect("write");
    let missing = data.path().join("missing");
    for (dir, named) in [(&osv, &bad), (&missing, &missing)] {
        let data_dir = data.path().display().to_string();
        let config = spellhost::config::Config::from_vars(&[
            ("SPELLHOST_DATA_DIR", data_dir.as_str()),
            (
                "SPELLHOST_SECRET_KEY",
                "test-secret-test-secret-test-secret-0123",
            ),
            ("SPELLHOST_ADVISORY_DB", dir.to_str().expect("utf-8")),
        ])
        .expect("config");
        let error = spellhost::AppState::build(config)
            .await
            .err()
            .expect("must not start");
        let message = format!("{error:#}");
        assert!(
            message.contains("SPELLHOST_ADVISORY_DB")
                && message.contains(&named.display().to_string()),
            "{message}"
        );
    }
    let refused =
        spellhost::config::Config::from_vars(&[("SPELLHOST_ADVISORY_SEVERITY_MIN", "severe")]);
    assert!(
        refused
            .err()
            .is_some_and(|e| e.to_string().contains("SPELLHOST_ADVISORY_SEVERITY_MIN"))
    );
}
