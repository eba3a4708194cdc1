//! GitHub login: the OAuth web flow with PKCE against GitHub (or a fake speaking its protocol),
//! and the spellhost user a GitHub account maps to.
//!
//! GitHub's side, as documented for OAuth apps: the browser is sent to the authorize URL with
//! `client_id`, `redirect_uri`, `scope`, `state` and the S256 `code_challenge`; GitHub sends it
//! back with `code` and `state`; the code is exchanged by a form-encoded POST to the token URL
//! (`Accept: application/json`; a refused code is a 200 with `{"error": …}`); the user is read
//! from `GET /user` and `GET /user/emails` with the token as a Bearer.
//!
//! A GitHub account is a user by its numeric id, so a renamed login keeps its account. The
//! first login creates the user, its handle taken from the login (made unique by a suffix)
//! and its email the account's verified primary one.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest, Sha256};

use super::oauth_state::PendingLogin;
use super::{AuthError, USER_COLUMNS, User, is_reserved_handle, is_valid_handle};
use crate::config::GithubConfig;
use crate::store::{Db, is_unique_violation};

/// What the login asks GitHub for: the profile (id, login) and the email addresses, to find
/// the verified primary one. Nothing that grants access to repositories.
pub const SCOPE: &str = "read:user user:email";
/// Each request to GitHub, connection included; a login waits at most three of them.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// GitHub's answers here are a few KiB (a user with 100 emails is ~15 KiB).
const RESPONSE_BYTES_MAX: usize = 256 * 1024;
/// Handles tried with a numeric suffix before giving up (`ada`, `ada-2`, … `ada-50`).
const HANDLE_SUFFIXES_MAX: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// GitHub refused the code (`bad_verification_code`, `incorrect_client_credentials`, …).
    #[error("GitHub refused the authorization code ({0})")]
    CodeRejected(String),
    /// The user declined on GitHub (`?error=access_denied` at the callback).
    #[error("the GitHub authorization was declined ({0})")]
    Denied(String),
    /// The account has no verified primary email.
    #[error("the GitHub account has no verified primary email address")]
    EmailUnverified,
    /// The account's spellhost account was erased: it can never log in again.
    #[error("the spellhost account of this GitHub account was deleted")]
    AccountDeleted,
    /// GitHub could not be reached, or answered something unexpected.
    #[error("GitHub did not answer as expected: {0}")]
    Unavailable(String),
    #[error("no free handle for GitHub login {0:?}")]
    NoHandle(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<AuthError> for GithubError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Database(error) => GithubError::Database(error),
            other => GithubError::Unavailable(other.to_string()),
        }
    }
}

/// A GitHub user access token. `Debug` shows nothing of it.
pub struct AccessToken(SecretString);

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

/// Who logged in, as GitHub says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubUser {
    pub id: i64,
    pub login: String,
    /// The verified primary email.
    pub email: String,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct UserAnswer {
    id: i64,
    login: String,
}

#[derive(serde::Deserialize)]
struct EmailAnswer {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The GitHub OAuth client of this process.
pub struct GitHub {
    config: GithubConfig,
    http: HttpsClient,
    /// Signs the state cookie (derived from the server secret).
    cookie_key: [u8; 32],
    /// `{SPELLHOST_PUBLIC_URL}/auth/callback`.
    redirect_uri: String,
}

impl GitHub {
    /// A client speaking HTTPS (rustls, aws-lc-rs, the webpki roots) to GitHub; plain HTTP
    /// only to the loopback URLs the configuration allows for tests.
    pub fn new(
        config: GithubConfig,
        public_url: &str,
        cookie_key: [u8; 32],
    ) -> anyhow::Result<GitHub> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::aws_lc_rs::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(GitHub {
            config,
            http,
            cookie_key,
            redirect_uri: format!("{public_url}/auth/callback"),
        })
    }

    pub fn cookie_key(&self) -> &[u8; 32] {
        &self.cookie_key
    }

    /// Where to send the browser for this login.
    pub fn authorize_url(&self, pending: &PendingLogin) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", SCOPE)
            .append_pair("state", pending.state())
            .append_pair("code_challenge", &pending.challenge())
            .append_pair("code_challenge_method", "S256")
            .append_pair("allow_signup", "true")
            .finish();
        format!("{}?{query}", self.config.authorize_url)
    }

    /// Exchanges the callback's code (with the PKCE verifier) for a user access token.
    pub async fn exchange(&self, code: &str, verifier: &str) -> Result<AccessToken, GithubError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.config.client_id)
            .append_pair("client_secret", self.config.client_secret.expose_secret())
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("code_verifier", verifier)
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.config.token_url)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::USER_AGENT, "spellhost")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| GithubError::Unavailable(format!("token request: {e}")))?;
        let (status, body) = self.send(request).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            GithubError::Unavailable(format!("token endpoint answered {status} without JSON"))
        })?;
        match (answer.access_token, answer.error) {
            (_, Some(error)) => Err(GithubError::CodeRejected(printable(&error))),
            (Some(token), None) if status.is_success() && !token.is_empty() => {
                Ok(AccessToken(SecretString::from(token)))
            }
            _ => Err(GithubError::Unavailable(format!(
                "token endpoint answered {status} without a token"
            ))),
        }
    }

    /// The user behind a token: id and login from `/user`, the verified primary email from
    /// `/user/emails`.
    pub async fn user(&self, token: &AccessToken) -> Result<GithubUser, GithubError> {
        let user: UserAnswer = self.get_json(token, "/user").await?;
        let emails: Vec<EmailAnswer> = self.get_json(token, "/user/emails").await?;
        let email = emails
            .into_iter()
            .find(|email| email.primary && email.verified)
            .map(|email| email.email)
            .filter(|email| email.contains('@') && email.len() <= 254)
            .ok_or(GithubError::EmailUnverified)?;
        Ok(GithubUser {
            id: user.id,
            login: user.login,
            email,
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        token: &AccessToken,
        path: &str,
    ) -> Result<T, GithubError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{path}", self.config.api_url))
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header(header::USER_AGENT, "spellhost")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", token.0.expose_secret()),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|_| GithubError::Unavailable(format!("GET {path}: bad request")))?;
        let (status, body) = self.send(request).await?;
        if !status.is_success() {
            return Err(GithubError::Unavailable(format!(
                "GET {path} answered {status}"
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| GithubError::Unavailable(format!("GET {path}: unexpected answer: {e}")))
    }

    /// One request, bounded in time and in the size of its answer.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), GithubError> {
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| GithubError::Unavailable(format!("request failed: {e}")))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| GithubError::Unavailable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| GithubError::Unavailable("timed out".into()))?
    }
}

/// An error code from GitHub, as shown to a client: short and printable.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

/// Records a callback's `state` as used; `false` if it was used already (a replay). Rows of
/// states that have expired anyway are dropped on the way.
pub async fn consume_state(db: &Db, pending: &PendingLogin) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM oauth_states_used WHERE expires_at_ms < $1")
        .bind(db.now_ms())
        .execute(db.writer())
        .await?;
    let inserted =
        sqlx::query("INSERT INTO oauth_states_used (state_sha256, expires_at_ms) VALUES ($1, $2)")
            .bind(pending.state_sha256())
            .bind(pending.expires_at_ms())
            .execute(db.writer())
            .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(error) if is_unique_violation(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// How an erased account's GitHub id is remembered: enough to refuse its login.
pub fn retired_github_id_hash(github_id: i64) -> String {
    hex::encode(Sha256::digest(format!("github:{github_id}").as_bytes()))
}

/// The handle a GitHub login becomes: lowercase, `[a-z0-9-]`, at most 39 characters, not
/// starting with `-`, never a reserved (`deleted-…`) one.
pub fn handle_from_login(login: &str) -> String {
    let mut handle: String = login
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    handle = handle.trim_start_matches('-').to_owned();
    if is_reserved_handle(&handle) {
        handle = format!("gh-{handle}");
    }
    handle.truncate(39);
    if handle.is_empty() {
        handle = "user".to_owned();
    }
    debug_assert!(is_valid_handle(&handle), "{handle}");
    handle
}

/// The `n`th handle tried for a login: `base`, then `base-2`, `base-3`, … within 39 chars.
fn candidate(base: &str, n: u32) -> String {
    if n <= 1 {
        return base.to_owned();
    }
    let suffix = format!("-{n}");
    let mut stem = base.to_owned();
    stem.truncate(39 - suffix.len());
    let handle = format!("{}{suffix}", stem.trim_end_matches('-'));
    debug_assert!(is_valid_handle(&handle), "{handle}");
    handle
}

/// The spellhost user of a GitHub account: found by GitHub id (its email kept in step with
/// the verified primary one), or created on first login.
pub async fn login(db: &Db, github: &GithubUser) -> Result<User, GithubError> {
    let retired: Option<(String,)> = sqlx::query_as(
        "SELECT github_id_sha256 FROM retired_github_ids WHERE github_id_sha256 = $1",
    )
    .bind(retired_github_id_hash(github.id))
    .fetch_optional(db.reader())
    .await?;
    if retired.is_some() {
        return Err(GithubError::AccountDeleted);
    }
    if let Some(user) = user_by_github_id(db, github.id).await? {
        if user.email != github.email {
            sqlx::query("UPDATE users SET email = $1 WHERE id = $2")
                .bind(&github.email)
                .bind(user.id)
                .execute(db.writer())
                .await?;
        }
        return Ok(User {
            email: github.email.clone(),
            ..user
        });
    }
    let base = handle_from_login(&github.login);
    for n in 1..=HANDLE_SUFFIXES_MAX {
        let handle = candidate(&base, n);
        let retired: Option<(String,)> =
            sqlx::query_as("SELECT handle_sha256 FROM retired_handles WHERE handle_sha256 = $1")
                .bind(crate::privacy::retired_handle_hash(&handle))
                .fetch_optional(db.reader())
                .await?;
        if retired.is_some() {
            continue;
        }
        let inserted = sqlx::query(
            "INSERT INTO users (handle, email, is_admin, created_at_ms, github_id) \
             VALUES ($1, $2, 0, $3, $4)",
        )
        .bind(&handle)
        .bind(&github.email)
        .bind(db.now_ms())
        .bind(github.id)
        .execute(db.writer())
        .await;
        match inserted {
            Ok(_) => {
                tracing::info!(user.handle = %handle, "user created by GitHub login");
                break;
            }
            // Either the handle is taken (try the next) or a concurrent first login of the
            // same account created it (found below).
            Err(error) if is_unique_violation(&error) => {
                if user_by_github_id(db, github.id).await?.is_some() {
                    break;
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    user_by_github_id(db, github.id)
        .await?
        .ok_or_else(|| GithubError::NoHandle(github.login.clone()))
}

/// The end of a login, once the callback's `state` checked out and was consumed: the code
/// exchanged, the GitHub user read, the spellhost user found or created, a session opened.
pub async fn sign_in(
    db: &Db,
    auth: &super::Authenticator,
    github: &GitHub,
    code: &str,
    pending: &PendingLogin,
    session_ttl_ms: i64,
) -> Result<(User, super::NewSession), GithubError> {
    let token = github.exchange(code, pending.verifier()).await?;
    let github_user = github.user(&token).await?;
    let user = login(db, &github_user).await?;
    let session = auth.create_session(user.id, session_ttl_ms).await?;
    tracing::info!(user.id = user.id, "session opened by GitHub login");
    Ok((user, session))
}

async fn user_by_github_id(db: &Db, github_id: i64) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(sqlx::AssertSqlSafe(format!(
        "{USER_COLUMNS} WHERE github_id = $1 AND deleted_at_ms IS NULL"
    )))
    .bind(github_id)
    .fetch_optional(db.writer())
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_become_valid_handles() {
        for (login, handle) in [
            ("Octocat", "octocat"),
            ("ada-lovelace", "ada-lovelace"),
            ("-x", "x"),
            ("deleted-7", "gh-deleted-7"),
            ("Ünïcode_name", "n-code-name"),
            ("", "user"),
            ("---", "user"),
        ] {
            assert_eq!(handle_from_login(login), handle, "{login}");
        }
        let long = "a".repeat(60);
        assert_eq!(handle_from_login(&long).len(), 39);
    }

    #[test]
    fn suffixed_handles_stay_within_39_characters() {
        assert_eq!(candidate("ada", 1), "ada");
        assert_eq!(candidate("ada", 2), "ada-2");
        let long = "a".repeat(39);
        let suffixed = candidate(&long, 12);
        assert_eq!(suffixed.len(), 39);
        assert!(suffixed.ends_with("-12"));
        assert!(is_valid_handle(&candidate("ab-", 3)));
    }

    #[test]
    fn token_debug_shows_nothing() {
        let token = AccessToken(SecretString::from("gho_secret".to_owned()));
        assert!(!format!("{token:?}").contains("gho_secret"));
    }

    #[test]
    fn github_error_codes_are_shown_short_and_printable() {
        assert_eq!(printable("bad_verification_code"), "bad_verification_code");
        assert_eq!(printable("<script>x"), "scriptx");
    }
}
