//! cosign-compatible key-based signatures: ECDSA P-256 over SHA-256 of the module bytes, the
//! signature file being the base64 of the ASN.1 DER signature — exactly what `cosign sign-blob
//! --key` or `openssl dgst -sha256 -sign key.pem module.wasm | base64 -w0` produce. Keys are
//! SPKI PEM (public) and PKCS#8 PEM (private).

use base64::Engine as _;
use sigstore_verify::crypto::{KeyPair, SigningScheme, VerificationKey};
use sigstore_verify::types::{DerPublicKey, SignatureBytes};

use super::GateError;

/// The largest signature file accepted, in bytes. A base64 DER P-256 signature is ≤ 96 bytes;
/// the slack allows line breaks and whitespace from other tools.
const SIGNATURE_BYTES_MAX: usize = 4096;

/// A public key a publisher registered to sign their spells.
#[derive(Clone)]
pub struct SignerKey {
    key: std::sync::Arc<VerificationKey>,
    der: DerPublicKey,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM-encoded public key: {0}")]
    Unparseable(String),
    #[error("only ECDSA P-256 keys are accepted")]
    UnsupportedAlgorithm,
    #[error("key generation or signing failed: {0}")]
    Crypto(String),
}

/// The one PEM block of `text` with tag `tag`; anything else around it (a second block, other
/// text) is refused rather than ignored.
pub(crate) fn single_pem_block(text: &str, tag: &str) -> Result<Vec<u8>, KeyError> {
    let blocks = pem::parse_many(text).map_err(|e| KeyError::Unparseable(e.to_string()))?;
    let [block] = blocks.as_slice() else {
        return Err(KeyError::Unparseable(format!(
            "expected exactly one {tag} PEM block, found {}",
            blocks.len()
        )));
    };
    if block.tag() != tag {
        return Err(KeyError::Unparseable(format!(
            "expected a {tag} PEM block, got {}",
            block.tag()
        )));
    }
    let end = format!("-----END {tag}-----");
    let trailing = text.split_once(end.as_str()).map_or("", |(_, rest)| rest);
    if !trailing.trim().is_empty() {
        return Err(KeyError::Unparseable(format!("text after the {tag} block")));
    }
    Ok(block.contents().to_vec())
}

impl SignerKey {
    /// Parses an SPKI PEM public key; only ECDSA P-256 is accepted.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = DerPublicKey::new(single_pem_block(pem, "PUBLIC KEY")?);
        let key =
            VerificationKey::from_spki(&der).map_err(|e| KeyError::Unparseable(e.to_string()))?;
        if key.scheme() != SigningScheme::EcdsaP256Sha256 {
            return Err(KeyError::UnsupportedAlgorithm);
        }
        Ok(SignerKey {
            key: std::sync::Arc::new(key),
            der,
        })
    }

    /// The key as DER SPKI (what a Sigstore managed-key policy takes).
    pub fn der(&self) -> &DerPublicKey {
        &self.der
    }

    /// Whether `signature` (base64 DER, surrounding whitespace allowed) is this key's
    /// signature over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(signature.trim_ascii()) else {
            return false;
        };
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(text) else {
            return false;
        };
        self.key.verify(message, &SignatureBytes::new(der)).is_ok()
    }
}

/// Checks that `signature` verifies under one of `keys`; the position of the first that it does.
pub fn verify_any<'a>(
    keys: impl IntoIterator<Item = &'a SignerKey>,
    message: &[u8],
    signature: &[u8],
) -> Result<usize, GateError> {
    if signature.len() > SIGNATURE_BYTES_MAX {
        return Err(GateError::SignatureInvalid(
            "signature file is too large".into(),
        ));
    }
    let mut keys = keys.into_iter().peekable();
    if keys.peek().is_none() {
        return Err(GateError::SignatureInvalid(
            "the publisher has no registered signer".into(),
        ));
    }
    keys.position(|key| key.verifies(message, signature))
        .ok_or_else(|| {
            GateError::SignatureInvalid(
                "not a signature over these module bytes by any registered signer".into(),
            )
        })
}

/// What a key signs to prove, when it is registered as a signer of `handle`'s spells, that
/// whoever registers it holds it: bound to the account, so that a proof made for one user is
/// worth nothing to another.
pub fn registration_message(handle: &str) -> String {
    format!("spellhost signer registration\nuser: {handle}\n")
}

/// A new P-256 key pair as (PKCS#8 private PEM, SPKI public PEM).
pub fn generate_key_pair() -> Result<(String, String), KeyError> {
    let crypto = |e: sigstore_verify::crypto::Error| KeyError::Crypto(e.to_string());
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .map_err(|e| KeyError::Crypto(e.to_string()))?;
    let pair = KeyPair::from_pkcs8_der(pkcs8.as_ref()).map_err(crypto)?;
    let public = pair.public_key_der().map_err(crypto)?;
    let private_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref()));
    Ok((private_pem, public.to_pem()))
}

/// Signs `message` with a PKCS#8 PEM P-256 private key; returns the base64 DER signature.
pub fn sign(private_key_pem: &str, message: &[u8]) -> Result<String, KeyError> {
    let der = single_pem_block(private_key_pem, "PRIVATE KEY")?;
    let pair = KeyPair::from_pkcs8_der(&der).map_err(|e| KeyError::Unparseable(e.to_string()))?;
    if pair.default_scheme() != SigningScheme::EcdsaP256Sha256 {
        return Err(KeyError::UnsupportedAlgorithm);
    }
    let signature = pair
        .sign(message)
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(signature.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_over_its_own_bytes_and_key() {
        let (private_pem, public_pem) = generate_key_pair().expect("keygen");
        let (_, other_public) = generate_key_pair().expect("keygen");
        let key = SignerKey::from_pem(&public_pem).expect("parses");
        let other = SignerKey::from_pem(&other_public).expect("parses");
        let signature = sign(&private_pem, b"module bytes").expect("signs");

        assert!(key.verifies(b"module bytes", signature.as_bytes()));
        assert!(key.verifies(b"module bytes", format!("{signature}\n").as_bytes()));
        assert!(!key.verifies(b"module bytez", signature.as_bytes()));
        assert!(!other.verifies(b"module bytes", signature.as_bytes()));
        assert_eq!(
            verify_any(&[other.clone(), key], b"module bytes", signature.as_bytes()).ok(),
            Some(1)
        );
        let error = verify_any(&[other], b"module bytes", signature.as_bytes()).unwrap_err();
        assert_eq!(error.code(), "signature_invalid");
    }

    #[test]
    fn garbage_signatures_are_refused_without_panicking() {
        let (_, public_pem) = generate_key_pair().expect("keygen");
        let key = SignerKey::from_pem(&public_pem).expect("parses");
        for junk in [&b""[..], b"!!!", b"AAAA", &[0xff; 200]] {
            assert!(!key.verifies(b"m", junk));
        }
    }

    #[test]
    fn non_p256_and_malformed_keys_are_refused() {
        assert!(SignerKey::from_pem("not a key").is_err());
        let (_, public_pem) = generate_key_pair().expect("keygen");
        assert!(SignerKey::from_pem(&format!("{public_pem}trailing junk")).is_err());
        assert!(SignerKey::from_pem(&format!("{public_pem}{public_pem}")).is_err());
        // An Ed25519 SPKI public key.
        let ed25519 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            SignerKey::from_pem(ed25519),
            Err(KeyError::UnsupportedAlgorithm)
        ));
    }
}
