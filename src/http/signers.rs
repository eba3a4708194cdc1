use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;

#[derive(Deserialize)]
pub struct NewSigner {
    name: String,
    public_key_pem: String,
}

/// `POST /v1/signers`
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<NewSigner>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let signer = app
        .registry
        .add_signer(caller.user_id, &body.name, &body.public_key_pem)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(json!(signer))))
}

/// `GET /v1/signers`
pub async fn list(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        json!({ "signers": app.registry.signers(caller.user_id).await? }),
    ))
}
