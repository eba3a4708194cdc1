use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::{AuthError, Caller};
use crate::error::{ApiError, Code};

#[derive(Deserialize)]
pub struct NewKey {
    name: String,
}

fn auth_error(error: AuthError) -> ApiError {
    match error {
        AuthError::Invalid { .. } => ApiError::bad_request(error.to_string()),
        other => ApiError::internal(other),
    }
}

/// `POST /v1/keys` — the key is in this response and nowhere else, ever.
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<NewKey>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let (key, info) = app
        .auth
        .create_key(caller.user_id, &body.name)
        .await
        .map_err(auth_error)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "key": key.expose(),
            "prefix": info.prefix,
            "name": info.name,
            "created_at_ms": info.created_at_ms,
        })),
    ))
}

/// `GET /v1/keys` — never secrets.
pub async fn list(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    let keys = app
        .auth
        .list_keys(caller.user_id)
        .await
        .map_err(auth_error)?;
    Ok(axum::Json(json!({ "keys": keys })))
}

/// `DELETE /v1/keys/{prefix}`
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(prefix): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app
        .auth
        .delete_key(caller.user_id, &prefix)
        .await
        .map_err(auth_error)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(Code::NotFound, format!("no key {prefix:?}")))
    }
}
