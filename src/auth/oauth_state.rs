//! The state of a GitHub login between `GET /auth/github` and `GET /auth/callback`: the
//! random `state`, the PKCE verifier and where to send the browser afterwards, carried by the
//! browser in a cookie signed with a key derived from the server secret (HMAC-SHA256), so
//! the server keeps nothing per login attempt. The signature makes it unforgeable, the
//! expiry short-lived, and the callback records each `state` it accepts so that a replayed
//! callback is refused (see `crate::auth::github::consume_state`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::{Digest, Sha256};

/// How long a login may take from the redirect to GitHub to the callback: long enough to
/// type a password and a second factor, short enough that a leaked cookie soon expires.
pub const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// The longest `?redirect=` path accepted (a URL path, not a document).
const REDIRECT_BYTES_MAX: usize = 1024;
/// The largest cookie value opened: a state, a verifier, a redirect and a signature.
const COOKIE_BYTES_MAX: usize = 4096;

/// Why a callback's `state` was refused (all answered `400 invalid_oauth_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("no login in progress (the state cookie is missing)")]
    Missing,
    #[error("the state cookie is not one this server signed")]
    Invalid,
    #[error("the login took too long; start again")]
    Expired,
    #[error("the state does not match this browser's login")]
    Mismatch,
    #[error("this login was already completed")]
    Replayed,
}

impl StateError {
    /// A stable word for the error body's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            StateError::Missing => "missing",
            StateError::Invalid => "invalid",
            StateError::Expired => "expired",
            StateError::Mismatch => "mismatch",
            StateError::Replayed => "replayed",
        }
    }
}

/// A same-origin path to send the browser to after a login (`/`, `/spells?x=1`): never a
/// URL of another origin (`//evil.example`, `https://…`, `/\evil.example`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocalRedirect(String);

impl LocalRedirect {
    pub fn parse(text: &str) -> Option<LocalRedirect> {
        let local = text.starts_with('/')
            && !text.starts_with("//")
            && text.len() <= REDIRECT_BYTES_MAX
            && !text.contains('\\')
            && !text.chars().any(|c| c.is_control() || c.is_whitespace());
        local.then(|| LocalRedirect(text.to_owned()))
    }

    pub fn root() -> LocalRedirect {
        LocalRedirect("/".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A login in progress. `Debug` shows neither the state nor the verifier.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingLogin {
    state: String,
    verifier: String,
    redirect: LocalRedirect,
    expires_at_ms: i64,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("redirect", &self.redirect)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes, base64url: 256 bits for `state`, and a 43-character PKCE verifier (RFC
/// 7636 asks for 43 to 128 characters of high entropy).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

impl PendingLogin {
    pub fn begin(now_ms: i64, redirect: LocalRedirect) -> PendingLogin {
        PendingLogin {
            state: random_token(),
            verifier: random_token(),
            redirect,
            expires_at_ms: now_ms.saturating_add(STATE_TTL_MS),
        }
    }

    /// The `state` parameter sent to GitHub.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The PKCE verifier, sent with the code to the token endpoint.
    pub fn verifier(&self) -> &str {
        &self.verifier
    }

    /// The S256 PKCE challenge: base64url(SHA-256(verifier)).
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }

    pub fn redirect(&self) -> &LocalRedirect {
        &self.redirect
    }

    pub fn expires_at_ms(&self) -> i64 {
        self.expires_at_ms
    }

    /// The cookie value: base64url(JSON) "." base64url(HMAC-SHA256(key, JSON)).
    pub fn seal(&self, key: &[u8; 32]) -> String {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let signature = sign(key, &payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// The login a cookie carries, if this server signed it and it has not expired, and if
    /// the callback's `state` is its own.
    pub fn open(
        cookie: Option<&str>,
        key: &[u8; 32],
        now_ms: i64,
        state: Option<&str>,
    ) -> Result<PendingLogin, StateError> {
        let cookie = cookie.ok_or(StateError::Missing)?;
        if cookie.len() > COOKIE_BYTES_MAX {
            return Err(StateError::Invalid);
        }
        let (payload, signature) = cookie.split_once('.').ok_or(StateError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| StateError::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| StateError::Invalid)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&payload);
        mac.verify_slice(&signature)
            .map_err(|_| StateError::Invalid)?;
        let pending: PendingLogin =
            serde_json::from_slice(&payload).map_err(|_| StateError::Invalid)?;
        if now_ms >= pending.expires_at_ms {
            return Err(StateError::Expired);
        }
        let state = state.ok_or(StateError::Mismatch)?;
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(state.as_bytes(), pending.state.as_bytes()).into();
        if !same {
            return Err(StateError::Mismatch);
        }
        Ok(pending)
    }

    /// What the database records of a used state (never the state itself).
    pub fn state_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.state.as_bytes()))
    }
}

fn sign(key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(payload);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn a_sealed_login_opens_with_its_own_state_only() {
        let pending = PendingLogin::begin(1_000, LocalRedirect::root());
        let cookie = pending.seal(&KEY);
        let opened =
            PendingLogin::open(Some(&cookie), &KEY, 2_000, Some(pending.state())).expect("opens");
        assert_eq!(opened.verifier(), pending.verifier());
        assert_eq!(
            PendingLogin::open(Some(&cookie), &KEY, 2_000, Some("other")).map(|_| ()),
            Err(StateError::Mismatch)
        );
        assert_eq!(
            PendingLogin::open(Some(&cookie), &KEY, 2_000, None).map(|_| ()),
            Err(StateError::Mismatch)
        );
        assert_eq!(
            PendingLogin::open(None, &KEY, 2_000, Some(pending.state())).map(|_| ()),
            Err(StateError::Missing)
        );
    }

    #[test]
    fn a_login_expires_and_a_changed_cookie_is_refused() {
        let pending = PendingLogin::begin(1_000, LocalRedirect::root());
        let cookie = pending.seal(&KEY);
        let late = 1_000 + STATE_TTL_MS;
        assert_eq!(
            PendingLogin::open(Some(&cookie), &KEY, late, Some(pending.state())).map(|_| ()),
            Err(StateError::Expired)
        );
        assert_eq!(
            PendingLogin::open(Some(&cookie), &[8; 32], 2_000, Some(pending.state())).map(|_| ()),
            Err(StateError::Invalid)
        );
        let mut forged = pending.clone();
        forged.expires_at_ms = i64::MAX;
        let (_, signature) = cookie.split_once('.').expect("two parts");
        let forged = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"))
        );
        assert_eq!(
            PendingLogin::open(Some(&forged), &KEY, 2_000, Some(pending.state())).map(|_| ()),
            Err(StateError::Invalid)
        );
        for garbage in ["", ".", "abc", "a.b.c", "%%%.%%%"] {
            assert_eq!(
                PendingLogin::open(Some(garbage), &KEY, 2_000, Some(pending.state())).map(|_| ()),
                Err(StateError::Invalid),
                "{garbage}"
            );
        }
    }

    #[test]
    fn the_challenge_is_rfc_7636_s256() {
        // RFC 7636, appendix B.
        let pending = PendingLogin {
            state: "s".into(),
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            redirect: LocalRedirect::root(),
            expires_at_ms: 0,
        };
        assert_eq!(
            pending.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let fresh = PendingLogin::begin(0, LocalRedirect::root());
        assert_eq!(fresh.verifier().len(), 43);
        assert_ne!(fresh.state(), fresh.verifier());
    }

    #[test]
    fn redirects_stay_on_this_origin() {
        for local in ["/", "/spells", "/a/b?c=d#e"] {
            assert!(LocalRedirect::parse(local).is_some(), "{local}");
        }
        for foreign in [
            "",
            "//evil.example",
            "https://evil.example/",
            "/\\evil.example",
            "evil",
            "/a b",
            "/\r\nSet-Cookie:x",
        ] {
            assert!(LocalRedirect::parse(foreign).is_none(), "{foreign:?}");
        }
        let long = format!("/{}", "a".repeat(REDIRECT_BYTES_MAX));
        assert!(LocalRedirect::parse(&long).is_none());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let pending = PendingLogin::begin(0, LocalRedirect::root());
        let shown = format!("{pending:?}");
        assert!(!shown.contains(pending.state()) && !shown.contains(pending.verifier()));
    }
}
