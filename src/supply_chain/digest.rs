use sha2::{Digest, Sha256};

/// The SHA-256 digest of a module's bytes; displayed as `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleDigest([u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("a digest is `sha256:` followed by 64 hex characters")]
pub struct DigestParseError;

impl ModuleDigest {
    pub fn of(bytes: &[u8]) -> Self {
        ModuleDigest(Sha256::digest(bytes).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex characters (either case), nothing more.
    pub fn from_hex(text: &str) -> Result<Self, DigestParseError> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestParseError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(|_| DigestParseError)?;
        Ok(ModuleDigest(out))
    }
}

impl std::str::FromStr for ModuleDigest {
    type Err = DigestParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_hex(text.strip_prefix("sha256:").ok_or(DigestParseError)?)
    }
}

impl std::fmt::Display for ModuleDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for ModuleDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_its_text_form() {
        let digest = ModuleDigest::of(b"spell");
        let parsed: ModuleDigest = digest.to_string().parse().expect("parses");
        assert_eq!(parsed, digest);
    }

    #[test]
    fn digest_text_must_be_exactly_64_hex_characters() {
        let hex = ModuleDigest::of(b"x").hex();
        assert!(ModuleDigest::from_hex(&hex[..63]).is_err());
        assert!(ModuleDigest::from_hex(&format!("{hex}0")).is_err());
        assert!(ModuleDigest::from_hex(&format!("{}g", &hex[..63])).is_err());
        assert!(ModuleDigest::from_hex(&hex.to_uppercase()).is_ok());
        assert!(hex.parse::<ModuleDigest>().is_err(), "prefix is required");
    }
}
