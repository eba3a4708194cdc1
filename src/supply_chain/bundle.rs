//! Sigstore bundles, verified completely and offline with `sigstore-verify`: the signature over
//! the artifact (hashedrekord) or the DSSE envelope, the Fulcio chain at the verified time and
//! its SCTs, the Rekor entry's inclusion proof against a signed checkpoint or its signed entry
//! timestamp, and RFC 3161 timestamps, all against a trusted root (the Sigstore public-good root
//! embedded in the binary unless another is given). Nothing here talks to the network.

use sigstore_verify::trust_root::{SIGSTORE_PRODUCTION_TRUSTED_ROOT, TrustedRoot};
use sigstore_verify::types::{Artifact, ArtifactDigest, Bundle, DerPublicKey, Sha256Hash};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

/// The largest bundle accepted, in bytes (real bundles are a few KiB).
pub const BUNDLE_BYTES_MAX: usize = 1 << 20;

/// Who must have signed.
pub enum Signer<'a> {
    /// A keyless signature: the certificate's identity (SAN) and OIDC issuer, both exact.
    Identity { identity: &'a str, issuer: &'a str },
    /// A managed key (SPKI PEM).
    Key { public_key_pem: &'a str },
}

/// What is signed: the artifact's bytes, or only its SHA-256 digest.
pub enum Subject<'a> {
    Bytes(&'a [u8]),
    Sha256([u8; 32]),
}

impl Subject<'_> {
    /// Parses `sha256:<64 hex digits>`.
    pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
        let hex_digits = text.strip_prefix("sha256:")?;
        let bytes = hex::decode(hex_digits).ok()?;
        bytes.try_into().ok()
    }
}

/// Why a bundle was refused; `reason()` is a stable word for each kind of failure.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is larger than {BUNDLE_BYTES_MAX} bytes")]
    TooLarge,
    #[error("malformed bundle: {0}")]
    Malformed(String),
    #[error("malformed trusted root: {0}")]
    TrustedRoot(String),
    #[error("malformed public key: {0}")]
    Key(String),
    #[error("{0}")]
    Verification(#[from] sigstore_verify::Error),
}

impl BundleError {
    /// A stable name for the reason, for tests, logs and error bodies.
    pub fn reason(&self) -> &'static str {
        use sigstore_verify::{CertificateError as C, Error as E, TransparencyLogError as T};
        match self {
            BundleError::TooLarge | BundleError::Malformed(_) => "bundle_malformed",
            BundleError::TrustedRoot(_) => "trusted_root_invalid",
            BundleError::Key(_) => "key_invalid",
            BundleError::Verification(error) => match error {
                E::IdentityMismatch { .. } => "identity_mismatch",
                E::IssuerMismatch { .. } => "issuer_mismatch",
                E::ArtifactMismatch { .. } => "artifact_mismatch",
                E::SignatureInvalid(_) => "signature_invalid",
                E::TransparencyLog(T::InclusionProof(_)) => "inclusion_proof_invalid",
                E::TransparencyLog(T::Checkpoint(_)) => "checkpoint_invalid",
                E::TransparencyLog(T::InclusionPromise(_)) => "set_invalid",
                E::TransparencyLog(T::UnknownLog { .. }) => "unknown_log",
                E::TransparencyLog(_) => "transparency_log_invalid",
                E::Certificate(C::Expired { .. }) | E::Certificate(C::NotYetValid { .. }) => {
                    "certificate_outside_validity"
                }
                E::Certificate(C::ChainInvalid(_)) => "certificate_chain_invalid",
                E::Certificate(_) => "certificate_invalid",
                E::Timestamp(_) => "timestamp_invalid",
                E::InvalidBundle(_) => "bundle_malformed",
                E::InvalidTrustRoot(_) => "trusted_root_invalid",
                _ => "verification_failed",
            },
        }
    }
}

/// The public-good trusted root embedded in the binary.
pub fn production_trusted_root() -> &'static str {
    SIGSTORE_PRODUCTION_TRUSTED_ROOT
}

/// Verifies `bundle_json` over `subject` for `signer` against `trusted_root_json`.
pub fn verify(
    bundle_json: &[u8],
    subject: Subject<'_>,
    signer: &Signer<'_>,
    trusted_root_json: &str,
) -> Result<(), BundleError> {
    if bundle_json.len() > BUNDLE_BYTES_MAX {
        return Err(BundleError::TooLarge);
    }
    let text =
        std::str::from_utf8(bundle_json).map_err(|_| BundleError::Malformed("not UTF-8".into()))?;
    let bundle = Bundle::from_json(text).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let root = TrustedRoot::from_json(trusted_root_json)
        .map_err(|e| BundleError::TrustedRoot(e.to_string()))?;
    let verifier = Verifier::new(&root)?;
    let artifact: Artifact<'_> = match subject {
        Subject::Bytes(bytes) => Artifact::Blob(bytes),
        Subject::Sha256(digest) => Artifact::Digest(ArtifactDigest::from(Sha256Hash::new(digest))),
    };
    match signer {
        Signer::Identity { identity, issuer } => {
            let policy = VerificationPolicy::new(*identity, *issuer);
            verifier.verify(artifact, &bundle, &policy)?;
        }
        Signer::Key { public_key_pem } => {
            let key = DerPublicKey::from_pem(public_key_pem)
                .map_err(|e| BundleError::Key(e.to_string()))?;
            let policy = PublicKeyVerificationPolicy::new(key);
            verifier.verify(artifact, &bundle, &policy)?;
        }
    }
    Ok(())
}
