use std::num::NonZeroU32;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::App;
use crate::auth::{
    AllowedSpells, AuthError, Caller, KeyInfo, KeyScope, KeyScopes, KeySpec, SpellPattern,
};
use crate::error::{ApiError, Code};
use crate::store::{parse_rfc3339, rfc3339};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    /// Every scope when absent (never more than the calling key's).
    #[schema(value_type = Option<Vec<ScopeName>>)]
    scopes: Option<Vec<String>>,
    /// `owner/name` or `owner/*`; every spell when absent.
    #[schema(value_type = Option<Vec<SpellPatternText>>)]
    allowed_spells: Option<Vec<String>>,
    /// RFC 3339, in the future; never expires when absent.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Casts in flight through this key at most; the user's limit binds as well.
    concurrent_casts_max: Option<u64>,
}

/// A key's scope.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[expect(dead_code, reason = "a schema: parsed by `KeyScope::parse`")]
pub enum ScopeName {
    Cast,
    Publish,
    Read,
    Manage,
}

/// `owner/name` or `owner/*`.
#[derive(utoipa::ToSchema)]
#[schema(pattern = "^[a-z0-9][a-z0-9-]{0,38}/([a-z0-9-]{1,64}|\\*)$")]
#[expect(dead_code, reason = "a schema: parsed by `SpellPattern::parse`")]
pub struct SpellPatternText(String);

fn auth_error(error: AuthError) -> ApiError {
    match error {
        AuthError::Invalid { .. } => ApiError::bad_request(error.to_string()),
        AuthError::Escalation(_) => ApiError::new(Code::InsufficientScope, error.to_string()),
        AuthError::LimitReached { limit, max } => crate::error::limit_reached(limit, max),
        other => ApiError::internal(other),
    }
}

/// The body as a key spec: every scope and every spell unless narrowed.
fn parse(body: NewKey, now_ms: i64) -> Result<KeySpec, ApiError> {
    let scopes = match body.scopes {
        None => KeyScopes::ALL,
        Some(names) => parse_each(&names, KeyScope::parse, |name| {
            format!("unknown scope {name:?}; scopes are cast, publish, read, manage")
        })?
        .into_iter()
        .collect(),
    };
    let allowed_spells = match body.allowed_spells {
        None => AllowedSpells::ANY,
        Some(patterns) => {
            AllowedSpells::only(parse_each(&patterns, SpellPattern::parse, |text| {
                format!("allowed_spells: {text:?} is not owner/name or owner/*")
            })?)
        }
    };
    let expires_at_ms = match body.expires_at {
        None => None,
        Some(text) => match parse_rfc3339(&text) {
            Some(at) if at > now_ms => Some(at),
            Some(_) => return Err(ApiError::bad_request("expires_at is in the past")),
            None => return Err(ApiError::bad_request("expires_at is not an RFC 3339 time")),
        },
    };
    let concurrent_casts_max = match body.concurrent_casts_max {
        None => None,
        Some(max) => Some(
            u32::try_from(max)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "concurrent_casts_max must be a positive integer up to {}",
                        u32::MAX
                    ))
                })?,
        ),
    };
    Ok(KeySpec {
        name: body.name,
        scopes,
        allowed_spells,
        expires_at_ms,
        concurrent_casts_max,
    })
}

/// Parses every item of a list, or names the first that does not parse.
fn parse_each<T>(
    items: &[String],
    parse: impl Fn(&str) -> Option<T>,
    explain: impl Fn(&str) -> String,
) -> Result<Vec<T>, ApiError> {
    items
        .iter()
        .map(|item| parse(item).ok_or_else(|| ApiError::bad_request(explain(item))))
        .collect()
}

/// An API key as listed (never its secret).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Names the key in `DELETE /v1/keys/{prefix}` and in budgets.
    prefix: String,
    name: String,
    scopes: Vec<String>,
    /// `null`: every spell.
    allowed_spells: Option<Vec<String>>,
    #[schema(format = DateTime)]
    created_at: String,
    created_at_ms: i64,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    concurrent_casts_max: Option<u32>,
}

/// `POST /v1/keys`'s answer: the key as listed, and its secret, shown this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[schema(inline)]
    #[serde(flatten)]
    listed: KeyView,
    /// The API key: `Authorization: Bearer <key>`. Shown in this response and never again.
    key: String,
}

/// `GET /v1/keys`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct KeyList {
    keys: Vec<KeyView>,
}

fn key_json(info: &KeyInfo) -> Value {
    json!({
        "prefix": info.prefix,
        "name": info.name,
        "scopes": info.scopes.names(),
        "allowed_spells": info.allowed_spells.to_json(),
        "created_at": rfc3339(info.created_at_ms),
        "created_at_ms": info.created_at_ms,
        "expires_at": info.expires_at_ms.map(rfc3339),
        "last_used_at": info.last_used_at_ms.map(rfc3339),
        "concurrent_casts_max": info.concurrent_casts_max.map(NonZeroU32::get),
    })
}

/// `POST /v1/keys` — the key is in this response and nowhere else, ever. A key never makes a
/// key that may do more than itself.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    request_body = NewKey,
    responses(
        (status = 201, description = "Created; `key` is shown this once.", body = CreatedKey),
        (status = 400, description = "`bad_request`: an unknown scope, a bad pattern, an `expires_at` in the past, or `idempotency_key_invalid`.", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`insufficient_scope`: the new key would do more than the calling key (or the calling key lacks `manage`).", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`limit_reached` (`keys_per_user`), or `idempotency_key_reused`.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    Json(body): Json<NewKey>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let spec = parse(body, app.db.now_ms())?;
    caller.may_grant(&spec).map_err(auth_error)?;
    let (key, info) = app
        .auth
        .create_key(caller.user_id, &spec)
        .await
        .map_err(auth_error)?;
    let mut body = key_json(&info);
    body["key"] = key.expose().into();
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// `GET /v1/keys` — never secrets.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    responses((status = 200, description = "The caller's live keys.", body = KeyList)),
)]
pub async fn list(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    let keys = app
        .auth
        .list_keys(caller.user_id)
        .await
        .map_err(auth_error)?;
    let keys: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(axum::Json(json!({ "keys": keys })))
}

/// `DELETE /v1/keys/{prefix}`
#[utoipa::path(
    delete,
    path = "/v1/keys/{prefix}",
    tag = "keys",
    params(("prefix" = String, Path, description = "The key's prefix, as listed.")),
    responses(
        (status = 204, description = "Revoked: it authenticates nothing from now on."),
        (status = 404, description = "`not_found`: the caller has no such key.", body = crate::http::openapi::ErrorBody),
    ),
)]
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
