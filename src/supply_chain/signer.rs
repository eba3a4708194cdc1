//! Who may sign a publisher's modules, and deciding which registered signer signed one.
//!
//! A signer is a managed key (a cosign-style detached signature, or a Sigstore bundle naming
//! the key) or a keyless identity: the OIDC issuer exactly, and the certificate identity (SAN)
//! exactly or by an anchored regular expression. A Sigstore bundle is verified cryptographically
//! first (signature, transparency log, certificate chain); only then are its claims matched
//! against the signers, so that "forged" and "not yours" are told apart.

use super::GateError;
use super::bundle::{self, BundleError, Check, Evidence, PUBLIC_GOOD, Subject, TrustedRoots};
use super::digest::ModuleDigest;
use super::signature::{self, SignerKey};

/// The longest identity, issuer or identity pattern accepted, in bytes.
const POLICY_TEXT_MAX: usize = 1024;

/// The compiled size limit of an identity pattern (the `regex` crate's own bound on the
/// automaton; matching is linear in the identity's length whatever the pattern).
const REGEX_SIZE_MAX: usize = 256 * 1024;

/// A signer a publisher registered.
#[derive(Clone)]
pub enum Signer {
    Key(SignerKey),
    Identity(IdentityPolicy),
}

/// A keyless signer: the OIDC issuer exactly and the identity exactly or by pattern, as
/// certified by one Sigstore instance (the public-good one unless another is named: a root an
/// operator pins for one tenant's private deployment must not certify everyone's identities).
#[derive(Clone, Debug)]
pub struct IdentityPolicy {
    identity: IdentityRule,
    issuer: String,
    instance: String,
}

#[derive(Clone, Debug)]
enum IdentityRule {
    Exact(String),
    /// As registered, and as compiled (anchored as a whole).
    Pattern {
        written: String,
        compiled: regex::Regex,
    },
}

/// Why a signer registration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SignerError(pub String);

impl IdentityPolicy {
    /// An identity signer; exactly one of `identity` and `identity_regex`, and an issuer. A
    /// pattern must be anchored at both ends (`^…$`): an unanchored one lets through every
    /// identity that merely contains a match.
    pub fn new(
        identity: Option<&str>,
        identity_regex: Option<&str>,
        issuer: &str,
    ) -> Result<Self, SignerError> {
        let text = |what: &str, value: &str| {
            if value.is_empty() || value.len() > POLICY_TEXT_MAX {
                Err(SignerError(format!(
                    "{what} must be 1 to {POLICY_TEXT_MAX} bytes"
                )))
            } else if value.chars().any(char::is_control) {
                Err(SignerError(format!(
                    "{what} must not contain control characters"
                )))
            } else {
                Ok(())
            }
        };
        text("issuer", issuer)?;
        let identity = match (identity, identity_regex) {
            (Some(exact), None) => {
                text("identity", exact)?;
                IdentityRule::Exact(exact.to_owned())
            }
            (None, Some(pattern)) => {
                text("identity_regex", pattern)?;
                if !pattern.starts_with('^') || !is_anchored_at_end(pattern) {
                    return Err(SignerError(
                        "identity_regex must be anchored: start with ^ and end with $ (an unanchored pattern accepts any identity containing a match)".into(),
                    ));
                }
                // The pattern must be a regex on its own (so that it cannot close the group
                // below, as `^x)|(.*$` would), and is then compiled as one group between
                // anchors, so that a top-level alternation (`^a|b$`) cannot leave a branch
                // unanchored.
                let build = |text: &str| {
                    regex::RegexBuilder::new(text)
                        .size_limit(REGEX_SIZE_MAX)
                        .build()
                        .map_err(|e| SignerError(format!("identity_regex: {e}")))
                };
                build(pattern)?;
                let compiled = build(&format!("^(?:{pattern})$"))?;
                IdentityRule::Pattern {
                    written: pattern.to_owned(),
                    compiled,
                }
            }
            (Some(_), Some(_)) => {
                return Err(SignerError(
                    "give identity or identity_regex, not both".into(),
                ));
            }
            (None, None) => {
                return Err(SignerError(
                    "a keyless signer needs identity (or identity_regex) and issuer".into(),
                ));
            }
        };
        Ok(IdentityPolicy {
            identity,
            issuer: issuer.to_owned(),
            instance: PUBLIC_GOOD.to_owned(),
        })
    }

    /// The same policy, for identities certified by the named Sigstore instance.
    pub fn on_instance(mut self, instance: &str) -> Self {
        instance.clone_into(&mut self.instance);
        self
    }

    /// The Sigstore instance whose certificates this signer accepts.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The exact identity, if this is not a pattern.
    pub fn identity(&self) -> Option<&str> {
        match &self.identity {
            IdentityRule::Exact(exact) => Some(exact),
            IdentityRule::Pattern { .. } => None,
        }
    }

    /// The identity pattern, if this is one.
    pub fn identity_regex(&self) -> Option<&str> {
        match &self.identity {
            IdentityRule::Exact(_) => None,
            IdentityRule::Pattern { written, .. } => Some(written),
        }
    }

    fn matches_identity(&self, identity: &str) -> bool {
        match &self.identity {
            IdentityRule::Exact(exact) => exact == identity,
            IdentityRule::Pattern { compiled, .. } => compiled.is_match(identity),
        }
    }
}

/// `$` last, and not an escaped `\$`.
fn is_anchored_at_end(pattern: &str) -> bool {
    let Some(body) = pattern.strip_suffix('$') else {
        return false;
    };
    let escapes = body.chars().rev().take_while(|c| *c == '\\').count();
    escapes % 2 == 0
}

/// How a module arrived signed.
#[derive(Clone, Debug)]
pub enum Signature {
    /// `cosign sign-blob --key` output: base64 DER ECDSA over the module (`module.wasm.sig`).
    Detached(Vec<u8>),
    /// A Sigstore bundle (`module.wasm.sigstore.json`), keyless or with a managed key.
    Sigstore(Vec<u8>),
}

/// Which registered signer signed, and what the bundle proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    /// The index of the signer in the list the gate was given.
    pub signer: usize,
    pub evidence: Evidence,
}

/// Finds the signer, among `signers`, whose signature `signature` is over the module with
/// `digest` (and `bytes`). Refusals say why, each kind with its own code.
pub fn authenticate(
    signature: Option<&Signature>,
    bytes: &[u8],
    digest: &ModuleDigest,
    signers: &[Signer],
    roots: &TrustedRoots,
) -> Result<SignedBy, GateError> {
    let keys = indexed(signers, |signer| match signer {
        Signer::Key(key) => Some(key),
        Signer::Identity(_) => None,
    });
    match signature {
        None => Err(GateError::Unsigned),
        Some(Signature::Detached(signature)) => {
            // One verification per key, and the first that verifies names the signer.
            let found = signature::verify_any(keys.iter().map(|(_, key)| *key), bytes, signature)?;
            Ok(SignedBy {
                signer: keys[found].0,
                evidence: Evidence::default(),
            })
        }
        Some(Signature::Sigstore(json)) => {
            let bundle = bundle::parse(json).map_err(refusal)?;
            if !bundle::is_message_signature(&bundle) {
                return Err(GateError::BundleMalformed(
                    "the bundle carries a DSSE envelope (an attestation about artifacts), not a signature over the module: sign it with cosign sign-blob".into(),
                ));
            }
            if bundle::is_keyless(&bundle) {
                keyless(&bundle, bytes, signers, roots)
            } else {
                managed_key(&bundle, digest, &keys, roots)
            }
        }
    }
}

/// The predicate of a signed SBOM, as the SBOM itself: a publisher may send the attestation
/// alone. Not verified here; [`attested_sbom`] verifies the attestation, whose predicate then
/// equals this SBOM by construction.
pub fn sbom_of_attestation(attestation: &[u8]) -> Result<Vec<u8>, GateError> {
    let invalid = |message: String| GateError::SbomAttestationInvalid(message);
    let bundle = bundle::parse_at_most(attestation, bundle::ATTESTATION_BYTES_MAX)
        .map_err(|e| invalid(e.to_string()))?;
    let sigstore_verify::types::bundle::SignatureContent::DsseEnvelope(envelope) = &bundle.content
    else {
        return Err(invalid("not an attestation (no DSSE envelope)".into()));
    };
    let statement: serde_json::Value = serde_json::from_slice(envelope.payload.as_bytes())
        .map_err(|e| invalid(format!("the payload is not an in-toto statement: {e}")))?;
    let predicate = statement
        .get("predicate")
        .ok_or_else(|| invalid("the statement has no predicate".into()))?;
    serde_json::to_vec(predicate).map_err(|e| invalid(e.to_string()))
}

/// The in-toto predicate types of a signed SBOM: CycloneDX as `cosign attest-blob --type
/// cyclonedx` writes it (versioned forms too), and SPDX.
const SBOM_PREDICATE_TYPES: [&str; 2] = ["https://cyclonedx.org/bom", "https://spdx.dev/Document"];

/// Checks a signed SBOM: an in-toto attestation bundle (DSSE) that `signer` signed — under the
/// same key or identity policy as the module, against the same trusted roots — whose subject
/// is the module's digest, whose predicate type is an SBOM's and whose predicate is `sbom`.
pub fn attested_sbom(
    attestation: &[u8],
    sbom: &[u8],
    digest: &ModuleDigest,
    signer: &Signer,
    roots: &TrustedRoots,
) -> Result<Evidence, GateError> {
    let invalid = |message: String| GateError::SbomAttestationInvalid(message);
    let bundle = bundle::parse_at_most(attestation, bundle::ATTESTATION_BYTES_MAX)
        .map_err(|e| invalid(e.to_string()))?;
    let sigstore_verify::types::bundle::SignatureContent::DsseEnvelope(envelope) = &bundle.content
    else {
        return Err(invalid(
            "not an attestation: the bundle signs a message, not an in-toto statement (cosign attest-blob)".into(),
        ));
    };
    // The subject is checked by sigstore-verify against the in-toto statement's subjects.
    let subject = Subject::Sha256(*digest);
    let evidence = match signer {
        Signer::Key(key) => {
            bundle::verify_parsed(&bundle, &subject, &Check::Key(key.der()), roots, None)
                .map_err(|e| invalid(format!("{} ({})", e, e.reason())))?
        }
        Signer::Identity(policy) => {
            let evidence = bundle::verify_parsed(
                &bundle,
                &subject,
                &Check::AnyIdentity,
                roots,
                Some(policy.instance()),
            )
            .map_err(|e| invalid(format!("{} ({})", e, e.reason())))?;
            authorize_identity(evidence, [(0, policy)].iter())
                .map_err(|e| invalid(format!("not signed by the module's signer: {e}")))?
                .evidence
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Statement {
        predicate_type: String,
        predicate: Option<serde_json::Value>,
        #[serde(default)]
        subject: Vec<StatementSubject>,
    }
    #[derive(serde::Deserialize)]
    struct StatementSubject {
        #[serde(default)]
        digest: std::collections::HashMap<String, String>,
    }
    let statement: Statement = serde_json::from_slice(envelope.payload.as_bytes())
        .map_err(|e| invalid(format!("the payload is not an in-toto statement: {e}")))?;
    let sbom_type = SBOM_PREDICATE_TYPES.iter().any(|known| {
        statement.predicate_type == *known
            || statement
                .predicate_type
                .strip_prefix(known)
                .is_some_and(|rest| rest.starts_with("/v"))
    });
    if !sbom_type {
        return Err(invalid(format!(
            "predicate type {:?} is not an SBOM's (https://cyclonedx.org/bom)",
            statement.predicate_type
        )));
    }
    // Checked again here, whatever the verifier did: the statement is about this module.
    let names_module = statement.subject.iter().any(|subject| {
        subject
            .digest
            .get("sha256")
            .is_some_and(|hex| ModuleDigest::from_hex(hex).is_ok_and(|d| d == *digest))
    });
    if !names_module {
        return Err(invalid(format!("no subject of the statement is {digest}")));
    }
    let uploaded: serde_json::Value =
        serde_json::from_slice(sbom).map_err(|e| invalid(format!("the SBOM is not JSON: {e}")))?;
    if statement.predicate.as_ref() != Some(&uploaded) {
        return Err(invalid(
            "the attested predicate is not the SBOM that was sent".into(),
        ));
    }
    Ok(evidence)
}

/// The signers of one kind, with their positions in `signers`.
fn indexed<'a, T>(
    signers: &'a [Signer],
    kind: impl Fn(&'a Signer) -> Option<&'a T>,
) -> Vec<(usize, &'a T)> {
    signers
        .iter()
        .enumerate()
        .filter_map(|(i, signer)| kind(signer).map(|one| (i, one)))
        .collect()
}

/// A keyless bundle: verified against each Sigstore instance the identity signers name (the
/// public-good one when there are none, so that a refusal still says what is wrong), then
/// authorized against the signers of the instance that certified it.
fn keyless(
    bundle: &sigstore_verify::types::Bundle,
    bytes: &[u8],
    signers: &[Signer],
    roots: &TrustedRoots,
) -> Result<SignedBy, GateError> {
    let identities = indexed(signers, |signer| match signer {
        Signer::Identity(policy) => Some(policy),
        Signer::Key(_) => None,
    });
    let mut instances: Vec<&str> = Vec::new();
    for (_, policy) in &identities {
        if !instances.contains(&policy.instance()) {
            instances.push(policy.instance());
        }
    }
    if instances.is_empty() {
        instances.push(PUBLIC_GOOD);
    }
    // The bytes, not the digest: keyless certificates may use P-384 or Ed25519 keys, whose
    // signatures are checked over the message itself.
    let subject = Subject::Bytes(bytes);
    let (mut mismatch, mut broken) = (None, None);
    for instance in instances {
        match bundle::verify_parsed(bundle, &subject, &Check::AnyIdentity, roots, Some(instance)) {
            Ok(evidence) => {
                let candidates = identities
                    .iter()
                    .filter(|(_, policy)| policy.instance() == instance);
                match authorize_identity(evidence, candidates) {
                    Ok(signed) => return Ok(signed),
                    Err(error) => {
                        mismatch.get_or_insert(error);
                    }
                }
            }
            Err(error) => {
                broken.get_or_insert(error);
            }
        }
    }
    // A bundle that some instance verified is "not yours" rather than "forged".
    Err(match (mismatch, broken) {
        (Some(mismatch), _) => mismatch,
        (None, Some(error)) => refusal(error),
        (None, None) => GateError::SignatureInvalid("no trusted root to verify against".into()),
    })
}

/// A managed-key bundle: verified under each of the publisher's keys until one signed it.
fn managed_key(
    bundle: &sigstore_verify::types::Bundle,
    digest: &ModuleDigest,
    keys: &[(usize, &SignerKey)],
    roots: &TrustedRoots,
) -> Result<SignedBy, GateError> {
    if keys.is_empty() {
        return Err(GateError::SignatureInvalid(
            "the bundle names a managed key and the publisher has registered no key signer".into(),
        ));
    }
    // Registered keys are P-256 with SHA-256: the digest is all the check needs, computed once.
    let subject = Subject::Sha256(*digest);
    // Under a key that is not the signer's, the signature (or the log entry's key) does not
    // match; any other refusal is about the bundle itself, whichever key.
    let mut other = None;
    for (signer, key) in keys {
        match bundle::verify_parsed(bundle, &subject, &Check::Key(key.der()), roots, None) {
            Ok(evidence) => {
                return Ok(SignedBy {
                    signer: *signer,
                    evidence,
                });
            }
            Err(error) if matches!(error.reason(), "signature_invalid" | "log_entry_mismatch") => {}
            Err(error) => {
                other.get_or_insert(error);
            }
        }
    }
    Err(other.map_or_else(
        || {
            GateError::SignatureInvalid(
                "the bundle is not signed by any key the publisher registered".into(),
            )
        },
        refusal,
    ))
}

/// Matches a verified keyless bundle's identity and issuer against the identity signers:
/// the issuer first (a wrong issuer is `signer_issuer_mismatch`), then the identity.
fn authorize_identity<'a>(
    evidence: Evidence,
    policies: impl Iterator<Item = &'a (usize, &'a IdentityPolicy)>,
) -> Result<SignedBy, GateError> {
    let (Some(identity), Some(issuer)) = (&evidence.identity, &evidence.issuer) else {
        return Err(GateError::BundleEvidenceInvalid {
            reason: "certificate_invalid",
            message: "the signing certificate names no identity or no OIDC issuer".into(),
        });
    };
    let mut issuer_known = false;
    for &(signer, policy) in policies {
        if policy.issuer != *issuer {
            continue;
        }
        issuer_known = true;
        if policy.matches_identity(identity) {
            return Ok(SignedBy { signer, evidence });
        }
    }
    if issuer_known {
        Err(GateError::SignerIdentityMismatch(format!(
            "signed by {identity} (issuer {issuer}), which no registered signer's identity matches"
        )))
    } else {
        Err(GateError::SignerIssuerMismatch(format!(
            "signed by {identity} with a token from issuer {issuer}, which no registered signer names"
        )))
    }
}

/// A bundle's refusal as the gate reports it.
fn refusal(error: BundleError) -> GateError {
    let reason = error.reason();
    match reason {
        "bundle_malformed" | "bundle_invalid" => GateError::BundleMalformed(error.to_string()),
        "artifact_mismatch" => GateError::BundleArtifactMismatch(error.to_string()),
        "signature_invalid" => GateError::SignatureInvalid(error.to_string()),
        "identity_mismatch" => GateError::SignerIdentityMismatch(error.to_string()),
        "issuer_mismatch" => GateError::SignerIssuerMismatch(error.to_string()),
        _ => GateError::BundleEvidenceInvalid {
            reason,
            message: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_patterns_must_be_anchored_at_both_ends() {
        let issuer = "https://token.actions.githubusercontent.com";
        for pattern in [
            "https://github.com/acme/.*",
            "^https://github.com/acme/.*",
            "https://github.com/acme/.*$",
            r"^https://github.com/acme/.*\$",
        ] {
            let error = IdentityPolicy::new(None, Some(pattern), issuer).expect_err(pattern);
            assert!(error.0.contains("anchored"), "{pattern}: {error}");
        }
        // Patterns that would close the anchoring group and open an unanchored branch.
        for pattern in ["^x)|(.*$", "^a)|(?:.*$"] {
            IdentityPolicy::new(None, Some(pattern), issuer).expect_err(pattern);
        }
        let policy =
            IdentityPolicy::new(None, Some(r"^https://github\.com/acme/[^/]+/.*$"), issuer)
                .expect("anchored");
        assert!(policy.matches_identity("https://github.com/acme/app/.github/workflows/x.yml"));
        assert!(!policy.matches_identity("https://github.com/acme.evil/app/x"));
        assert!(!policy.matches_identity("https://evil.example/?https://github.com/acme/app/x"));
        // Written as `^a|b$`, an alternation would anchor each branch at one end only; the
        // whole pattern is anchored, so neither branch matches inside a longer identity.
        let policy = IdentityPolicy::new(None, Some("^a|b$"), issuer).expect("alternation");
        assert!(policy.matches_identity("a") && policy.matches_identity("b"));
        assert!(!policy.matches_identity("ax") && !policy.matches_identity("xb"));
    }

    #[test]
    fn exactly_one_kind_of_identity_and_no_control_characters() {
        let issuer = "https://accounts.google.com";
        assert!(IdentityPolicy::new(Some("a@b.c"), Some("^a$"), issuer).is_err());
        assert!(IdentityPolicy::new(None, None, issuer).is_err());
        assert!(IdentityPolicy::new(Some("a@b.c\n"), None, issuer).is_err());
        assert!(IdentityPolicy::new(Some("a@b.c"), None, "").is_err());
        assert!(IdentityPolicy::new(None, Some("^(unclosed$"), issuer).is_err());
        let policy = IdentityPolicy::new(Some("a@b.c"), None, issuer).expect("exact");
        assert!(policy.matches_identity("a@b.c") && !policy.matches_identity("xa@b.c"));
        assert_eq!(policy.identity(), Some("a@b.c"));
        assert_eq!(policy.identity_regex(), None);
    }
}
