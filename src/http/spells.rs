use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::registry::CatalogQuery;
use crate::supply_chain::{Signature, SpellBundle};

/// `POST /v1/spells`'s multipart parts.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the parts are read by `read_bundle`")]
pub struct PublishForm {
    /// The WebAssembly module (WASI preview 1).
    #[schema(value_type = String, format = Binary)]
    module: Vec<u8>,
    /// `spell.toml`: name, version, limits (UTF-8 TOML).
    manifest: String,
    /// A CycloneDX or SPDX JSON SBOM of the module (may be left out when `sbom_attestation`
    /// is given).
    #[schema(value_type = Option<String>, format = Binary)]
    sbom: Option<Vec<u8>>,
    /// A detached signature of the module by a registered key signer (or send `bundle`).
    #[schema(value_type = Option<String>, format = Binary)]
    signature: Option<Vec<u8>>,
    /// A Sigstore bundle over the module (or send `signature`).
    #[schema(value_type = Option<String>, format = Binary)]
    bundle: Option<Vec<u8>>,
    /// A signed SBOM (an in-toto attestation as a Sigstore bundle), when the signer requires one.
    #[schema(value_type = Option<String>, format = Binary)]
    sbom_attestation: Option<Vec<u8>>,
}

/// `GET /v1/spells/{owner}/{name}`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct VersionList {
    /// `owner/name`.
    spell: String,
    /// Newest first.
    versions: Vec<crate::registry::VersionInfo>,
}

/// `POST /v1/spells` (multipart: `module`, `manifest`, `sbom`, and `signature` or a Sigstore
/// `bundle`; `sbom_attestation`, a signed SBOM, when the signer requires one).
#[utoipa::path(
    post,
    path = "/v1/spells",
    tag = "spells",
    request_body(content = PublishForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Published under the caller's handle.", body = crate::registry::Published),
        (status = 400, description = "`bad_request`: a malformed multipart body, a missing, repeated or unexpected part; or `idempotency_key_invalid`.", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`forbidden`: the manifest names another owner (or `insufficient_scope`).", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`version_exists` or `version_not_newer` (versions are immutable and increasing), or `idempotency_key_in_use`.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "The supply-chain gate's refusal (`unsigned`, `signature_invalid`, `bundle_malformed`, `bundle_artifact_mismatch`, `bundle_evidence_invalid`, `signer_identity_mismatch`, `signer_issuer_mismatch`, `sbom_invalid`, `sbom_attestation_invalid`, `sbom_unsigned`, `sbom_digest_mismatch`, `sbom_component_mismatch`, `manifest_invalid`, `module_invalid`, `module_too_complex`, `import_not_allowed`, `vulnerable_component` with `component`, `advisory` and `severity`), `limit_reached`, or `idempotency_key_reused`.", body = crate::http::openapi::ErrorBody),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/spells/{owner}/{name}",
    tag = "spells",
    params(
        ("owner" = String, Path, description = "The publisher's handle."),
        ("name" = String, Path, description = "The spell's name."),
    ),
    responses(
        (status = 200, description = "Every version, newest first (yanked ones too, with `yanked_at_ms`).", body = VersionList),
        (status = 404, description = "`spell_not_found`.", body = crate::http::openapi::ErrorBody),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/v1/spells",
    tag = "spells",
    params(
        ("owner" = Option<String>, Query, description = "Only this publisher's spells (a handle).", pattern = "^([a-z0-9][a-z0-9-]{0,38})?$"),
        ("q" = Option<String>, Query, description = "A case-insensitive substring of the name or description.", max_length = 100),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page."),
        ("limit" = Option<u32>, Query, description = "Spells per page (1–100, default 20).", minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "A page of published spells, by owner then name.", body = crate::registry::catalog::CatalogPage),
        (status = 400, description = "`bad_request`: a malformed cursor, a `q` too long, a bad limit or an unknown parameter.", body = crate::http::openapi::ErrorBody),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/v1/spells/{owner}/{name}/versions/{version}/yank",
    tag = "spells",
    params(
        ("owner" = String, Path, description = "The publisher's handle: the caller's."),
        ("name" = String, Path, description = "The spell's name."),
        ("version" = String, Path, description = "A published version (semver).", pattern = "^(0|[1-9][0-9]{0,15})\\.(0|[1-9][0-9]{0,15})\\.(0|[1-9][0-9]{0,15})(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\\+[0-9a-zA-Z-]+(\\.[0-9a-zA-Z-]+)*)?$"),
    ),
    responses(
        (status = 200, description = "Yanked: not cast unless pinned (see `version_yanked`).", body = crate::registry::YankedVersion),
        (status = 403, description = "`forbidden`: only the owner yanks (or `insufficient_scope`).", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`spell_not_found`: no such spell or version.", body = crate::http::openapi::ErrorBody),
    ),
)]
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
