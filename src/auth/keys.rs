//! API keys: `spk_<id>_<secret><checksum>`.
//!
//! - `id`: 12 lowercase alphanumerics, the public part used for lookup and shown in listings
//!   as the key's prefix `spk_<id>`;
//! - `secret`: 32 base62 characters (~190 bits);
//! - `checksum`: CRC32 of everything before it, 6 base62 characters, so a mistyped or
//!   truncated key is refused without touching the database or argon2.
//!
//! The database stores an argon2id hash (m = 19456 KiB, t = 2, p = 1: OWASP's recommendation)
//! of the whole key. Secrets are shown once and never logged (`Debug` is redacted).

use argon2::{Algorithm, Argon2, Params, Version};
use argon2::{PasswordHasher as _, PasswordVerifier as _};
use rand::RngExt as _;

const PREFIX: &str = "spk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const ID_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A well-formed API key (format and checksum checked), not yet authenticated.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}_…)", self.prefix())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed API key")]
pub struct MalformedKey;

impl ApiKey {
    /// A new random key.
    pub fn generate() -> ApiKey {
        ApiKey(generate_token(PREFIX))
    }

    /// Checks format and checksum only; cheap, no I/O.
    pub fn parse(text: &str) -> Result<ApiKey, MalformedKey> {
        if !is_well_formed(PREFIX, text) {
            return Err(MalformedKey);
        }
        Ok(ApiKey(text.to_owned()))
    }

    /// The public id used for lookup.
    pub fn id(&self) -> &str {
        token_id(PREFIX, &self.0)
    }

    /// `spk_<id>`: what listings show and `DELETE /v1/keys/{prefix}` takes.
    pub fn prefix(&self) -> String {
        prefix_of(self.id())
    }

    /// The whole key, to show once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A new random token `<prefix><id>_<secret><checksum>` (API keys, sessions).
pub(crate) fn generate_token(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut pick = |alphabet: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect()
    };
    let id = pick(ID_ALPHABET, ID_LEN);
    let secret = pick(BASE62, SECRET_LEN);
    let body = format!("{prefix}{id}_{secret}");
    let checksum = checksum(&body);
    format!("{body}{checksum}")
}

/// Whether `text` is a token of `prefix`'s kind with a valid checksum; cheap, no I/O.
pub(crate) fn is_well_formed(prefix: &str, text: &str) -> bool {
    let expected_len = prefix.len() + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
    if text.len() != expected_len || !text.is_ascii() || !text.starts_with(prefix) {
        return false;
    }
    let rest = &text[prefix.len()..];
    let (id, rest) = rest.split_at(ID_LEN);
    let (separator, rest) = rest.split_at(1);
    let (secret, sum) = rest.split_at(SECRET_LEN);
    separator == "_"
        && id.bytes().all(|b| ID_ALPHABET.contains(&b))
        && secret
            .bytes()
            .chain(sum.bytes())
            .all(|b| BASE62.contains(&b))
        && checksum(&text[..text.len() - CHECKSUM_LEN]) == sum
}

/// The id part of a well-formed token of `prefix`'s kind.
pub(crate) fn token_id<'a>(prefix: &str, text: &'a str) -> &'a str {
    &text[prefix.len()..prefix.len() + ID_LEN]
}

/// Whether `id` could be a token id (lowercase alphanumerics, the right length).
pub(crate) fn is_token_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b))
}

pub fn prefix_of(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// The id inside a `spk_<id>` prefix.
pub fn id_from_prefix(prefix: &str) -> Option<&str> {
    prefix.strip_prefix(PREFIX).filter(|id| is_token_id(id))
}

fn checksum(body: &str) -> String {
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn argon2() -> Argon2<'static> {
    // OWASP: argon2id, m = 19456 KiB, t = 2, p = 1 (~15 ms here).
    let params = Params::new(19_456, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string stored for a key. CPU-heavy: call off the reactor.
pub fn hash(key: &ApiKey) -> String {
    argon2()
        .hash_password(key.expose().as_bytes())
        .expect("argon2 hashing cannot fail with valid parameters and a system RNG")
        .to_string()
}

/// Whether `key` matches the stored hash. CPU-heavy: call off the reactor.
pub fn verify(key: &ApiKey, stored: &str) -> bool {
    argon2()
        .verify_password(key.expose().as_bytes(), stored)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_one_changed_character_does_not() {
        let key = ApiKey::generate();
        assert_eq!(ApiKey::parse(key.expose()), Ok(key.clone()));
        let text = key.expose();
        for index in [0, 5, 20, text.len() - 1] {
            let mut bytes = text.as_bytes().to_vec();
            bytes[index] = if bytes[index] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).expect("ascii");
            assert!(ApiKey::parse(&changed).is_err(), "{index}");
        }
        assert!(ApiKey::parse(&text[..text.len() - 1]).is_err());
        assert!(ApiKey::parse("").is_err());
        assert!(ApiKey::parse("spk_ünicode").is_err());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let key = ApiKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.expose()[17..]), "{shown}");
        assert!(shown.contains(&key.prefix()));
    }

    #[test]
    fn a_hash_verifies_its_key_only() {
        let key = ApiKey::generate();
        let stored = hash(&key);
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(&key, &stored));
        assert!(!verify(&ApiKey::generate(), &stored));
        assert!(!verify(&key, "not a hash"));
    }

    #[test]
    fn prefixes_round_trip_to_ids() {
        let key = ApiKey::generate();
        assert_eq!(id_from_prefix(&key.prefix()), Some(key.id()));
        assert_eq!(id_from_prefix("spk_short"), None);
    }
}
