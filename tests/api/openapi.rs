//! The OpenAPI document: served anonymously at `/openapi.json`, the same as
//! `spellhost openapi` prints and as the committed `docs/openapi.json`.

use reqwest::StatusCode;
use serde_json::Value;

use crate::app::{Backend, spawn_app};
use crate::helpers::repo_path;

#[test]
fn the_committed_document_is_current() {
    let committed = std::fs::read_to_string(repo_path("docs/openapi.json")).unwrap_or_default();
    assert!(
        committed == spellhost::http::openapi_json(),
        "docs/openapi.json is stale: regenerate it with `cargo run -- openapi > docs/openapi.json`"
    );
}

#[test]
fn the_document_is_openapi_3_1_with_every_route_secured_by_its_scope() {
    let document: Value = serde_json::from_str(spellhost::http::openapi_json()).expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            let responses = operation["responses"].as_object().expect("responses");
            assert!(
                // A redirect is the success of the login routes.
                responses
                    .keys()
                    .any(|status| status.starts_with('2') || status.starts_with('3')),
                "{method} {path} documents no success"
            );
            assert!(responses.contains_key("500"), "{method} {path}: no 500");
            if path.starts_with("/v1/") {
                let security = &operation["security"][0]["api_key"];
                assert!(
                    security.as_array().is_some_and(|scopes| scopes.len() == 1),
                    "{method} {path} names no scope: {security}"
                );
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
        }
    }
    // Every reference resolves.
    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(reference)) = object.get("$ref") {
                    found.push(reference.clone());
                }
                object.values().for_each(|v| references(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    references(&document, &mut found);
    for reference in found {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference}"));
        assert!(
            document["components"]["schemas"].get(name).is_some(),
            "unresolved {reference}"
        );
    }
    let codes = &document["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"];
    for code in [
        "unauthorized",
        "insufficient_scope",
        "spell_not_found",
        "sbom_invalid",
    ] {
        assert!(
            codes.as_array().is_some_and(|c| c.contains(&code.into())),
            "{code}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_anonymously() {
    let app = spawn_app(&Backend::Sqlite).await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[reqwest::header::CONTENT_TYPE]
            .as_bytes()
            .starts_with(b"application/json")
    );
    assert_eq!(
        response.text().await.expect("text"),
        spellhost::http::openapi_json()
    );
    app.shutdown().await;
}
