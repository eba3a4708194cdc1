//! GitHub login (`GET /auth/github`, `GET /auth/callback`), logout
//! (`DELETE /v1/sessions/current`), and the session cookie: how it is read, and the CSRF
//! defence of requests it authenticates.
//!
//! Cookies are `__Host-` cookies (Secure, `Path=/`, no `Domain`: a sibling subdomain cannot
//! plant one), HttpOnly and SameSite=Lax. A state-changing request authenticated by the
//! session cookie must also prove it comes from this origin (`Sec-Fetch-Site: same-origin`,
//! or else an `Origin` equal to `SPELLHOST_PUBLIC_URL`'s); a request with an `Authorization`
//! header needs no such proof, since a browser never adds one on its own.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::App;
use crate::auth::Caller;
use crate::auth::github::{self, GitHub, GithubError};
use crate::auth::oauth_state::{LocalRedirect, PendingLogin, STATE_TTL_MS, StateError};
use crate::error::{ApiError, Code};

/// Carries the signed login state between `/auth/github` and `/auth/callback`.
pub const STATE_COOKIE: &str = "__Host-spellhost_oauth";
/// Carries the session token for browsers.
pub const SESSION_COOKIE: &str = "__Host-spellhost_session";

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The session token of a request authenticated by cookie (no `Authorization` header).
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    cookie(headers, SESSION_COOKIE)
}

/// Whether the request carries credentials (a header or the session cookie): such requests
/// are rate-limited by their key or session once verified, not by address first.
pub fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || cookie(headers, SESSION_COOKIE).is_some()
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

/// The CSRF defence of cookie-authenticated state-changing requests: the browser says the
/// request comes from this origin (Fetch Metadata), or, from browsers without it, its
/// `Origin` is this service's public origin. Anything else (another site, a sibling subdomain,
/// no evidence at all) is refused.
pub fn is_same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    headers
        .get(header::ORIGIN)
        .is_some_and(|origin| origin.as_bytes() == origin_of(public_url).as_bytes())
}

pub fn csrf_refusal() -> ApiError {
    ApiError::new(
        Code::CsrfRejected,
        "a state-changing request authenticated by the session cookie must come from this site \
         (Sec-Fetch-Site: same-origin or a matching Origin); scripts and CLIs send \
         Authorization: Bearer <token> instead",
    )
}

fn enabled(app: &App) -> Result<&GitHub, ApiError> {
    app.github.as_ref().ok_or_else(|| {
        ApiError::new(
            Code::LoginDisabled,
            "GitHub login is not enabled on this server; use an API key",
        )
    })
}

fn set_cookie(name: &str, value: &str, max_age_seconds: i64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={max_age_seconds}; Path=/; HttpOnly; Secure; SameSite=Lax"
    ))
    .map_err(ApiError::internal)
}

#[derive(Deserialize)]
pub struct StartQuery {
    redirect: Option<String>,
}

/// `GET /auth/github[?redirect=/path]`: to GitHub, with a signed state cookie.
#[utoipa::path(
    get,
    path = "/auth/github",
    tag = "login",
    params(("redirect" = Option<String>, Query, description = "A path on this site to return to after login.")),
    responses(
        (status = 302, description = "To GitHub's authorize URL, with `state` and a PKCE challenge; sets the signed state cookie."),
        (status = 400, description = "`bad_request`: a `redirect` that is not a path on this site.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`login_disabled`: GitHub login is not configured.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn start(
    State(app): State<App>,
    Query(query): Query<StartQuery>,
) -> Result<Response, ApiError> {
    let github = enabled(&app)?;
    let redirect = match query.redirect.as_deref() {
        None => LocalRedirect::root(),
        Some(text) => LocalRedirect::parse(text).ok_or_else(|| {
            ApiError::bad_request("redirect must be a path on this site, such as /spells")
        })?,
    };
    let pending = PendingLogin::begin(app.db.now_ms(), redirect);
    let location =
        HeaderValue::from_str(&github.authorize_url(&pending)).map_err(ApiError::internal)?;
    let cookie = set_cookie(
        STATE_COOKIE,
        &pending.seal(github.cookie_key()),
        STATE_TTL_MS / 1000,
    )?;
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::SET_COOKIE, cookie);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// A new session (shown once), as `GET /auth/callback` answers a client asking for JSON.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built by the handler")]
pub struct NewSession {
    /// The bearer token (`sps_…`): shown this once.
    session_token: String,
    session: serde_json::Value,
    /// RFC 3339.
    expires_at: String,
    user: serde_json::Value,
}

/// `GET /auth/callback?code=&state=`: checks the state, signs in, opens a session. JSON for
/// clients that ask for it (`Accept: application/json`), a cookie and a redirect otherwise.
#[utoipa::path(
    get,
    path = "/auth/callback",
    tag = "login",
    params(
        ("code" = Option<String>, Query, description = "GitHub's authorization code."),
        ("state" = Option<String>, Query, description = "The `state` sent to GitHub."),
        ("error" = Option<String>, Query, description = "GitHub's refusal (e.g. `access_denied`)."),
    ),
    responses(
        (status = 200, description = "Signed in (`Accept: application/json`).", body = NewSession),
        (status = 303, description = "Signed in (a browser): the session cookie is set."),
        (status = 400, description = "`invalid_oauth_state` or `oauth_code_rejected`.", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`email_unverified` or `account_deleted`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`login_disabled`.", body = crate::http::openapi::ErrorBody),
        (status = 502, description = "`github_unavailable`.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn callback(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let github = enabled(&app)?;
    let pending = PendingLogin::open(
        cookie(&headers, STATE_COOKIE),
        github.cookie_key(),
        app.db.now_ms(),
        query.state.as_deref(),
    )
    .map_err(state_refusal)?;
    if !github::consume_state(&app.db, &pending).await? {
        return Err(state_refusal(StateError::Replayed));
    }
    if let Some(error) = query.error {
        return Err(GithubError::Denied(error.chars().take(64).collect()).into());
    }
    let code = query
        .code
        .filter(|code| !code.is_empty() && code.len() <= 512)
        .ok_or_else(|| ApiError::bad_request("the callback has no code"))?;
    let (user, session) = github::sign_in(
        &app.db,
        &app.auth,
        github,
        &code,
        &pending,
        app.config.session_ttl_ms,
    )
    .await?;
    let clear_state = set_cookie(STATE_COOKIE, "", 0)?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    let mut response = if wants_json {
        axum::Json(json!({
            "session_token": session.token.expose(),
            "session": session.token.prefix(),
            "expires_at": crate::store::rfc3339(session.expires_at_ms),
            "user": {"handle": user.handle, "email": user.email, "is_admin": user.is_admin},
        }))
        .into_response()
    } else {
        let mut response = StatusCode::SEE_OTHER.into_response();
        let location =
            HeaderValue::from_str(pending.redirect().as_str()).map_err(ApiError::internal)?;
        response.headers_mut().insert(header::LOCATION, location);
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                SESSION_COOKIE,
                session.token.expose(),
                app.config.session_ttl_ms / 1000,
            )?,
        );
        response
    };
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, clear_state);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /v1/sessions/current`'s answer.
#[derive(utoipa::ToSchema)]
#[expect(dead_code, reason = "a schema: the body is built by the handler")]
pub struct RevokedSession {
    /// The revoked session's prefix (`sps_…`).
    revoked: String,
}

/// `DELETE /v1/sessions/current`: ends the session the request is authenticated with.
#[utoipa::path(
    delete,
    path = "/v1/sessions/current",
    tag = "login",
    responses(
        (status = 200, description = "The session is revoked (`revoked`: its prefix) and its cookie cleared.", body = RevokedSession),
        (status = 404, description = "`not_found`: the request is authenticated with an API key, not a session.", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`csrf_rejected`: a cookie-authenticated request without proof of this origin.", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn logout(State(app): State<App>, caller: Caller) -> Result<Response, ApiError> {
    // A request authenticated by an API key has no current session: the resource it names
    // does not exist (404), as for any other thing the caller does not have.
    let Some(session_id) = caller.session_id else {
        return Err(ApiError::new(
            Code::NotFound,
            "this request is authenticated by an API key, not a session; \
             delete keys with DELETE /v1/keys/{prefix}",
        ));
    };
    app.auth
        .revoke_session(caller.user_id, &session_id)
        .await
        .map_err(ApiError::internal)?;
    let mut response = axum::Json(json!({
        "revoked": crate::auth::sessions::prefix_of(&session_id),
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0)?);
    Ok(response)
}

fn state_refusal(error: StateError) -> ApiError {
    ApiError::new(
        Code::InvalidOauthState,
        format!("{error}; start the login again at /auth/github"),
    )
    .with("reason", error.reason())
}

impl From<GithubError> for ApiError {
    fn from(error: GithubError) -> Self {
        match error {
            GithubError::CodeRejected(ref code) | GithubError::Denied(ref code) => {
                let code = code.clone();
                ApiError::new(Code::OauthCodeRejected, error.to_string()).with("github_error", code)
            }
            GithubError::EmailUnverified => ApiError::new(
                Code::EmailUnverified,
                "your GitHub account needs a verified primary email address; verify it on GitHub \
                 and log in again",
            ),
            GithubError::AccountDeleted => ApiError::new(Code::AccountDeleted, error.to_string()),
            GithubError::Unavailable(message) => {
                tracing::warn!(trace_id = %crate::error::trace_id(), error = %message,
                    "GitHub login failed");
                ApiError::new(
                    Code::GithubUnavailable,
                    "GitHub could not be reached or answered unexpectedly; try again",
                )
            }
            GithubError::NoHandle(_) => ApiError::new(Code::Conflict, error.to_string()),
            GithubError::Database(error) => ApiError::internal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn cookies_are_found_by_exact_name_across_headers() {
        let map = headers(&[
            ("cookie", "a=1; __Host-spellhost_sessionx=no"),
            ("cookie", "__Host-spellhost_session=sps_tok ; b=2"),
        ]);
        assert_eq!(cookie(&map, SESSION_COOKIE), Some("sps_tok"));
        assert_eq!(cookie(&map, "b"), Some("2"));
        assert_eq!(cookie(&map, "c"), None);
        let with_header = headers(&[
            ("cookie", "__Host-spellhost_session=sps_tok"),
            ("authorization", "Bearer x"),
        ]);
        assert_eq!(session_cookie(&with_header), None);
        assert!(has_credentials(&with_header) && has_credentials(&map));
    }

    #[test]
    fn only_this_origin_passes_the_csrf_check() {
        let public = "https://spellhost.example/base";
        assert_eq!(origin_of(public), "https://spellhost.example");
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        for (pairs, allowed) in [
            (vec![("sec-fetch-site", "same-origin")], true),
            (vec![("origin", "https://spellhost.example")], true),
            (vec![("sec-fetch-site", "same-site")], false),
            (vec![("sec-fetch-site", "cross-site")], false),
            (vec![("sec-fetch-site", "none")], false),
            (
                vec![
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "https://spellhost.example"),
                ],
                false,
            ),
            (vec![("origin", "https://evil.example")], false),
            (vec![("origin", "null")], false),
            (vec![], false),
        ] {
            assert_eq!(
                is_same_origin(&headers(&pairs), public),
                allowed,
                "{pairs:?}"
            );
        }
    }
}
