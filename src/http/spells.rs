use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::registry::CatalogQuery;
use crate::supply_chain::{Signature, SpellBundle};

/// `POST /v1/spells` (multipart: `module`, `manifest`, `sbom`, and `signature` or a Sigstore
/// `bundle`; `sbom_attestation`, a signed SBOM, when the signer requires one).
pub async fn publish(
    State(app): State<App>,
    caller: Caller,
    multipart: Multipart,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let bundle = read_bundle(multipart).await?;
    let published = app
        .registry
        .publish(caller.user_id, &caller.handle, bundle)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(published))))
}

async fn read_bundle(mut multipart: Multipart) -> Result<SpellBundle, ApiError> {
    let (mut module, mut manifest, mut sbom, mut signature, mut sigstore, mut attestation) =
        (None, None, None, None, None, None);
    while let Some(field) = multipart.next_field().await.map_err(|e| {
        ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
    })? {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| {
                ApiError::bad_request(format!("reading part {name:?}: {}", e.body_text()))
            })?
            .to_vec();
        let slot = match name.as_str() {
            "module" => &mut module,
            "manifest" => &mut manifest,
            "sbom" => &mut sbom,
            "signature" => &mut signature,
            "bundle" => &mut sigstore,
            "sbom_attestation" => &mut attestation,
            other => return Err(ApiError::bad_request(format!("unexpected part {other:?}"))),
        };
        if slot.replace(bytes).is_some() {
            return Err(ApiError::bad_request(format!("part {name:?} given twice")));
        }
    }
    let missing = |part: &str| {
        ApiError::bad_request(format!(
            "missing part {part:?}: send module, manifest, sbom (or sbom_attestation), and signature or bundle"
        ))
    };
    // A signed SBOM may come alone: its predicate is then the SBOM.
    let sbom = match (sbom, &attestation) {
        (Some(sbom), _) => sbom,
        (None, Some(attestation)) => crate::supply_chain::signer::sbom_of_attestation(attestation)?,
        (None, None) => return Err(missing("sbom")),
    };
    let signature = match (signature, sigstore) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send a signature or a Sigstore bundle, not both",
            ));
        }
        (Some(signature), None) => Some(Signature::Detached(signature)),
        (None, Some(bundle)) => Some(Signature::Sigstore(bundle)),
        // Refused by the gate as `unsigned`, after the parts are known to be complete.
        (None, None) => None,
    };
    let manifest = String::from_utf8(manifest.ok_or_else(|| missing("manifest"))?)
        .map_err(|_| ApiError::bad_request("the manifest must be UTF-8 TOML"))?;
    Ok(SpellBundle {
        module: module.ok_or_else(|| missing("module"))?,
        manifest,
        sbom,
        signature,
        sbom_attestation: attestation,
    })
}

/// `GET /v1/spells/{owner}/{name}`: versions, newest first, with digests, limits, schemas and
/// usage statistics priced at the current prices.
pub async fn versions(
    State(app): State<App>,
    _caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let versions = app
        .registry
        .details(&owner, &name, &app.config.pricing)
        .await?;
    Ok(axum::Json(
        json!({ "spell": format!("{owner}/{name}"), "versions": versions }),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogParams {
    owner: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/spells?owner=&q=&cursor=&limit=`: published spells by owner and name, a page at a
/// time.
pub async fn catalog(
    State(app): State<App>,
    _caller: Caller,
    Query(params): Query<CatalogParams>,
) -> Result<axum::Json<Value>, ApiError> {
    let query = CatalogQuery::parse(params.owner, params.q, params.cursor, params.limit)?;
    let page = app.registry.catalog(&query).await?;
    Ok(axum::Json(json!(page)))
}

/// `POST /v1/spells/{owner}/{name}/versions/{version}/yank` (the owner only).
pub async fn yank(
    State(app): State<App>,
    caller: Caller,
    Path((owner, name, version)): Path<(String, String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let version = semver::Version::parse(&version)
        .map_err(|e| ApiError::bad_request(format!("version {version:?} is not semver: {e}")))?;
    let yanked = app
        .registry
        .yank(&caller.handle, &owner, &name, &version)
        .await?;
    Ok(axum::Json(json!(yanked)))
}
