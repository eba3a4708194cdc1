use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::registry::{NewSigner, RegistryError};

/// A key signer `{"name", "public_key_pem"}`, or a keyless one `{"name", "issuer",
/// "identity" | "identity_regex"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSignerBody {
    name: String,
    public_key_pem: Option<String>,
    identity: Option<String>,
    identity_regex: Option<String>,
    issuer: Option<String>,
}

/// `POST /v1/signers`
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<NewSignerBody>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let signer = match (body.public_key_pem, body.issuer) {
        (Some(public_key_pem), None)
            if body.identity.is_none() && body.identity_regex.is_none() =>
        {
            NewSigner::Key { public_key_pem }
        }
        (None, Some(issuer)) => NewSigner::Identity {
            identity: body.identity,
            identity_regex: body.identity_regex,
            issuer,
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
        .add_signer(caller.user_id, &body.name, signer)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(signer))))
}

/// `GET /v1/signers`
pub async fn list(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        json!({ "signers": app.registry.signers(caller.user_id).await? }),
    ))
}
