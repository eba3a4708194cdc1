use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, Code};
use crate::registry::{NewSigner, RegistryError};
use crate::supply_chain::SignerKey;
use crate::supply_chain::signature::registration_message;

/// A key signer `{"name", "public_key_pem", "proof"}`, or a keyless one `{"name", "issuer",
/// "identity" | "identity_regex"}`. `proof` is the key's signature over
/// [`registration_message`] for the caller's handle: whoever registers a key holds it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSignerBody {
    name: String,
    public_key_pem: Option<String>,
    proof: Option<String>,
    identity: Option<String>,
    identity_regex: Option<String>,
    issuer: Option<String>,
    sigstore_instance: Option<String>,
    /// Every version this signer signs must come with a signed SBOM.
    #[serde(default)]
    require_signed_sbom: bool,
}

/// `GET /v1/signers`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct SignerList {
    signers: Vec<crate::registry::SignerInfo>,
}

/// `POST /v1/signers`
#[utoipa::path(
    post,
    path = "/v1/signers",
    tag = "signers",
    request_body = NewSignerBody,
    responses(
        (status = 201, description = "Registered.", body = crate::registry::SignerInfo),
        (status = 409, description = "`signer_exists`: the caller has a signer of that name or key.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_signer` (a bad key, a missing or wrong `proof`, a bad identity), or `limit_reached` (`signers_per_user`).", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<NewSignerBody>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let signer = match (body.public_key_pem, body.issuer) {
        (Some(public_key_pem), None)
            if body.identity.is_none()
                && body.identity_regex.is_none()
                && body.sigstore_instance.is_none() =>
        {
            let key = SignerKey::from_pem(&public_key_pem)
                .map_err(|e| RegistryError::InvalidSigner(format!("public_key_pem: {e}")))?;
            let message = registration_message(&caller.handle);
            match body.proof {
                Some(proof) if key.verifies(message.as_bytes(), proof.as_bytes()) => {}
                Some(_) => {
                    return Err(RegistryError::InvalidSigner(format!(
                        "proof is not this key's signature over {message:?}"
                    ))
                    .into());
                }
                None => {
                    return Err(RegistryError::InvalidSigner(format!(
                        "a key signer needs proof: the key's signature (base64 DER, as for modules) over {message:?}"
                    ))
                    .into());
                }
            }
            NewSigner::Key { public_key_pem }
        }
        (None, Some(issuer)) => NewSigner::Identity {
            identity: body.identity,
            identity_regex: body.identity_regex,
            issuer,
            sigstore_instance: body.sigstore_instance,
        },
        _ => {
            return Err(RegistryError::InvalidSigner(
                "give public_key_pem (a key signer), or issuer with identity or identity_regex (a keyless signer)".into(),
            )
            .into());
        }
    };
    let signer = app
        .registry
        .add_signer(caller.user_id, &body.name, signer, body.require_signed_sbom)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(signer))))
}

/// `DELETE /v1/signers/{id}`: the signer authorizes nothing new; what it signed stays.
#[utoipa::path(
    delete,
    path = "/v1/signers/{id}",
    tag = "signers",
    params(("id" = i64, Path, description = "The signer's id, as listed.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 404, description = "`not_found`: the caller has no such signer.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn remove(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if app.registry.remove_signer(caller.user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            Code::NotFound,
            format!("you have no signer {id}"),
        ))
    }
}

/// `GET /v1/signers`
#[utoipa::path(
    get,
    path = "/v1/signers",
    tag = "signers",
    responses((status = 200, description = "The caller's signers.", body = SignerList)),
)]
pub async fn list(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        json!({ "signers": app.registry.signers(caller.user_id).await? }),
    ))
}
