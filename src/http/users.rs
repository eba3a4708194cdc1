use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::App;
use crate::auth::{self, Caller};
use crate::error::{ApiError, Code};
use crate::privacy::{self, Paged, PrivacyError};

/// `GET /v1/users/me`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built with `json!`")]
pub struct Me {
    handle: String,
    email: String,
    is_admin: bool,
    balance_microusd: i64,
    /// What casts in flight hold.
    held_microusd: i64,
    available_microusd: i64,
}

/// `DELETE /v1/users/me`'s body.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is read as JSON by hand")]
pub struct Confirmation {
    /// The caller's handle.
    confirm: String,
}

/// `DELETE /v1/users/me`'s answer: what the erasure did, and a message for a person.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Deleted {
    #[serde(flatten)]
    erased: privacy::Erased,
    message: String,
}

/// `GET /v1/users/me`
#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "users",
    responses((status = 200, description = "The caller's profile and balance (µ$).", body = Me)),
)]
pub async fn me(State(app): State<App>, caller: Caller) -> Result<axum::Json<Value>, ApiError> {
    let user = auth::user_by_id(&app.db, caller.user_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(ApiError::unauthorized)?;
    // What casts in flight hold, not the unused part of this instance's leases.
    let held = app
        .money
        .in_flight(&app.db, caller.user_id)
        .await?
        .balance
        .get();
    Ok(axum::Json(json!({
        "handle": user.handle,
        "email": user.email,
        "is_admin": user.is_admin,
        "balance_microusd": user.balance_microusd,
        "held_microusd": held,
        "available_microusd": user.balance_microusd - held,
    })))
}

impl From<PrivacyError> for ApiError {
    fn from(error: PrivacyError) -> Self {
        match error {
            PrivacyError::NotConfirmed => {
                ApiError::new(Code::ConfirmationRequired, error.to_string())
            }
            PrivacyError::UnknownUser => ApiError::unauthorized(),
            PrivacyError::Database(error) => ApiError::internal(error),
        }
    }
}

/// `GET /v1/users/me/export`: everything spellhost holds about the caller, one JSON document,
/// streamed (see `crate::privacy`).
#[utoipa::path(
    get,
    path = "/v1/users/me/export",
    tag = "users",
    responses((status = 200, description = "Everything spellhost holds about the caller (profile, keys without secrets, signers, spells, budgets, usage, ledger, checkout sessions), ending with `\"complete\":true`.", content_type = "application/json", body = Object)),
)]
pub async fn export(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    let head = privacy::export_head(&app.db, caller.user_id).await?;
    let stream = export_stream(app, caller.user_id, head);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"spellhost-export.json\""),
    );
    Ok(response)
}

/// Where an export's stream is.
enum Stage {
    Head(Map<String, Value>),
    /// A paged section: which one (index into [`Paged::ALL`]), where, whether a row was sent.
    Section(usize, privacy::Cursor, bool),
    Done,
}

/// The document: the head's sections, then each paged section page by page, then
/// `"complete":true`. A failure ends the stream early (the document stays unterminated).
fn export_stream(
    app: App,
    user_id: i64,
    head: Map<String, Value>,
) -> impl futures::Stream<Item = Result<Bytes, PrivacyError>> {
    futures::stream::try_unfold(Stage::Head(head), move |stage| {
        let app = app.clone();
        async move {
            let (chunk, next) = match stage {
                Stage::Head(head) => {
                    let mut text = Value::Object(head).to_string();
                    text.pop(); // the closing brace: the paged sections follow
                    text.push_str(&format!(",\"{}\":[", Paged::ALL[0].name()));
                    (text, Stage::Section(0, privacy::Cursor::start(), false))
                }
                Stage::Section(index, cursor, mut sent) => {
                    let section = Paged::ALL[index];
                    let (rows, next) = privacy::page(&app.db, user_id, section, &cursor).await?;
                    let mut text = String::new();
                    for row in rows {
                        if sent {
                            text.push(',');
                        }
                        sent = true;
                        text.push_str(&Value::Object(row).to_string());
                    }
                    match (next, Paged::ALL.get(index + 1)) {
                        (Some(cursor), _) => (text, Stage::Section(index, cursor, sent)),
                        (None, Some(following)) => {
                            text.push_str(&format!("],\"{}\":[", following.name()));
                            (
                                text,
                                Stage::Section(index + 1, privacy::Cursor::start(), false),
                            )
                        }
                        (None, None) => {
                            text.push_str("],\"complete\":true}");
                            (text, Stage::Done)
                        }
                    }
                }
                Stage::Done => return Ok(None),
            };
            Ok(Some((Bytes::from(chunk), next)))
        }
    })
}

/// `DELETE /v1/users/me` with `{"confirm":"<handle>"}`: erases the account (see
/// `crate::privacy`) and reports the balance left over.
#[utoipa::path(
    delete,
    path = "/v1/users/me",
    tag = "users",
    request_body(content = Confirmation, description = "Any body without the caller's handle as `confirm` is refused."),
    responses(
        (status = 200, description = "Erased; the balance left over is reported.", body = Deleted),
        (status = 422, description = "`confirmation_required`: `confirm` does not name the caller.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    body: Bytes,
) -> Result<axum::Json<Deleted>, ApiError> {
    // Any body without the caller's handle as `confirm` is an unconfirmed request.
    let confirm = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|body| {
            body.get("confirm")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let erased = privacy::erase(&app, caller.user_id, confirm.as_deref()).await?;
    let message = format!(
        "account deleted; {} µ$ is left on it: contact the operator for a refund",
        erased.balance_microusd
    );
    Ok(axum::Json(Deleted { erased, message }))
}
