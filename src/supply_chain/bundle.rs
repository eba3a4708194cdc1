//! Sigstore bundles, verified completely and offline with `sigstore-verify`: the signature over
//! the artifact (hashedrekord) or the DSSE envelope, the Fulcio chain at the verified time and
//! its SCTs, the Rekor entry's inclusion proof against a signed checkpoint or its signed entry
//! timestamp, and RFC 3161 timestamps, all against a trusted root (the Sigstore public-good root
//! embedded in the binary unless another is given). Nothing here talks to the network.

use sigstore_verify::trust_root::{SIGSTORE_PRODUCTION_TRUSTED_ROOT, TrustedRoot};
use sigstore_verify::types::bundle::{SignatureContent, VerificationMaterialContent};
use sigstore_verify::types::{Artifact, ArtifactDigest, Bundle, DerPublicKey, Sha256Hash};
use sigstore_verify::{
    PublicKeyVerificationPolicy, VerificationPolicy, VerificationResult, Verifier,
};

use super::ModuleDigest;
use super::signature::single_pem_block;

/// The largest bundle accepted, in bytes: real bundles are 3–10 KiB (a certificate chain and
/// one or two log entries); this bounds what parsing and verification can be made to cost.
pub const BUNDLE_BYTES_MAX: usize = 64 * 1024;

/// The largest attestation bundle accepted (a signed SBOM): its payload is the SBOM, base64 in
/// the envelope, so the SBOM's own bound with base64's 4/3 and room for the rest of the bundle.
pub const ATTESTATION_BYTES_MAX: usize = super::SBOM_BYTES_MAX / 3 * 4 + BUNDLE_BYTES_MAX;

/// The most transparency-log entries a bundle may carry (Sigstore clients write one; each
/// costs signature checks).
pub const TLOG_ENTRIES_MAX: usize = 4;

/// The name of the public-good instance among [`TrustedRoots`].
pub const PUBLIC_GOOD: &str = "public-good";

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
    Sha256(ModuleDigest),
}

/// Why a bundle was refused; `reason()` is a stable word for each kind of failure.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is larger than {0} bytes")]
    TooLarge(usize),
    #[error("bundle carries {0} transparency-log entries; at most {TLOG_ENTRIES_MAX} are accepted")]
    TooManyEntries(usize),
    #[error("no trusted root is named {0:?}")]
    UnknownInstance(String),
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
        use sigstore_verify::bundle::Error as B;
        use sigstore_verify::{CertificateError as C, Error as E, TransparencyLogError as T};
        match self {
            BundleError::TooLarge(_)
            | BundleError::TooManyEntries(_)
            | BundleError::Malformed(_) => "bundle_malformed",
            BundleError::UnknownInstance(_) => "unknown_instance",
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
                E::TransparencyLog(T::EntryMismatch(_)) => "log_entry_mismatch",
                E::TransparencyLog(_) => "transparency_log_invalid",
                E::Certificate(C::Expired { .. }) | E::Certificate(C::NotYetValid { .. }) => {
                    "certificate_outside_validity"
                }
                E::Certificate(C::ChainInvalid(_)) => "certificate_chain_invalid",
                E::Certificate(_) => "certificate_invalid",
                E::Timestamp(_) => "timestamp_invalid",
                E::Bundle(B::CheckpointRootMismatch) => "checkpoint_root_mismatch",
                E::Bundle(B::MissingCheckpoint) => "checkpoint_missing",
                E::Bundle(B::MissingInclusionProof(_)) => "inclusion_proof_missing",
                E::Bundle(_) | E::InvalidBundle(_) | E::UnsupportedBundle(_) => "bundle_invalid",
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

/// The Sigstore instances whose bundles are accepted, each prepared once (keys parsed, windows
/// checked): the public-good instance, and any an operator pinned for a private deployment.
pub struct TrustedRoots {
    roots: Vec<PreparedRoot>,
}

struct PreparedRoot {
    /// The instance's name: `public-good`, or the operator's (`name=path`, else the file stem).
    name: String,
    /// The key ids of its transparency logs: a bundle is "from" the root that knows its log.
    log_key_ids: Vec<Vec<u8>>,
    verifier: Verifier,
}

impl TrustedRoots {
    /// The public-good root alone, prepared once per process.
    pub fn public_good() -> &'static TrustedRoots {
        static ROOTS: std::sync::LazyLock<TrustedRoots> = std::sync::LazyLock::new(|| {
            // The embedded root is part of the binary, covered by the tests below: failing to
            // read it is a build defect, not an input error.
            #[allow(clippy::expect_used)]
            TrustedRoots::from_json(PUBLIC_GOOD, production_trusted_root())
                .expect("the embedded public-good trusted root is valid")
        });
        &ROOTS
    }

    /// One root, from its `trusted_root.json` text.
    pub fn from_json(name: &str, json: &str) -> Result<Self, BundleError> {
        Ok(TrustedRoots {
            roots: vec![PreparedRoot::new(name, json)?],
        })
    }

    /// The public-good root and the operator's, in that order. Each entry is `name=path` or a
    /// path (named by its file stem); an unreadable or invalid file, or a name used twice, is
    /// an error naming it.
    pub fn public_good_and(entries: &[std::path::PathBuf]) -> Result<Self, String> {
        let mut roots = vec![
            PreparedRoot::new(PUBLIC_GOOD, production_trusted_root())
                .map_err(|e| format!("the embedded public-good trusted root: {e}"))?,
        ];
        for entry in entries {
            let text = entry.display().to_string();
            let (name, path) = match text.split_once('=') {
                Some((name, path)) => (name.to_owned(), std::path::PathBuf::from(path)),
                None => {
                    let stem = entry.file_stem().map(|s| s.to_string_lossy().into_owned());
                    (stem.unwrap_or_default(), entry.clone())
                }
            };
            let shown = path.display().to_string();
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !valid_name {
                return Err(format!(
                    "{shown}: the instance name {name:?} must be 1 to 64 of [A-Za-z0-9._-] (write name=path)"
                ));
            }
            if roots.iter().any(|root| root.name == name) {
                return Err(format!("{shown}: the instance name {name:?} is used twice"));
            }
            let json = std::fs::read_to_string(&path).map_err(|e| format!("{shown}: {e}"))?;
            roots.push(PreparedRoot::new(&name, &json).map_err(|e| format!("{shown}: {e}"))?);
        }
        Ok(TrustedRoots { roots })
    }

    /// Whether an instance of this name is trusted.
    pub fn contains(&self, name: &str) -> bool {
        self.roots.iter().any(|root| root.name == name)
    }

    /// The names of the roots, in the order they are tried.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.roots.iter().map(|root| root.name.as_str())
    }
}

impl PreparedRoot {
    fn new(name: &str, json: &str) -> Result<Self, BundleError> {
        let root =
            TrustedRoot::from_json(json).map_err(|e| BundleError::TrustedRoot(e.to_string()))?;
        let log_key_ids = root
            .tlogs
            .iter()
            .map(|log| log.log_id.key_id.as_bytes().to_vec())
            .collect();
        let verifier = Verifier::new(&root).map_err(|e| BundleError::TrustedRoot(e.to_string()))?;
        Ok(PreparedRoot {
            name: name.to_owned(),
            log_key_ids,
            verifier,
        })
    }

    fn knows_log_of(&self, bundle: &Bundle) -> bool {
        bundle
            .verification_material
            .tlog_entries
            .iter()
            .any(|entry| {
                self.log_key_ids
                    .iter()
                    .any(|id| id.as_slice() == entry.log_id.key_id.as_bytes())
            })
    }
}

/// What a verified bundle proves, beyond "this signer signed these bytes".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The Sigstore instance (trusted root) the bundle verified against.
    pub instance: String,
    /// The signing certificate's identity (SAN) and OIDC issuer (keyless bundles).
    pub identity: Option<String>,
    pub issuer: Option<String>,
    /// The transparency-log entry's index and the time it was logged (Unix seconds; for
    /// Rekor v2 entries the earliest verified RFC 3161 time).
    pub log_index: Option<i64>,
    pub integrated_time: Option<i64>,
}

/// What a bundle is checked against.
pub enum Check<'a> {
    /// A keyless signature by this exact identity and issuer.
    Identity { identity: &'a str, issuer: &'a str },
    /// A keyless signature by any identity the roots' Fulcio CAs certified; the caller
    /// authorizes [`Evidence::identity`] and [`Evidence::issuer`] itself.
    AnyIdentity,
    /// A managed key (DER SPKI).
    Key(&'a DerPublicKey),
}

/// Parses a bundle (bounded in size and in log entries).
pub fn parse(bundle_json: &[u8]) -> Result<Bundle, BundleError> {
    parse_at_most(bundle_json, BUNDLE_BYTES_MAX)
}

/// Parses a bundle of at most `bytes_max` bytes (an attestation carries its predicate, an
/// SBOM, and is bounded by [`ATTESTATION_BYTES_MAX`] instead).
pub fn parse_at_most(bundle_json: &[u8], bytes_max: usize) -> Result<Bundle, BundleError> {
    if bundle_json.len() > bytes_max {
        return Err(BundleError::TooLarge(bytes_max));
    }
    let text =
        std::str::from_utf8(bundle_json).map_err(|_| BundleError::Malformed("not UTF-8".into()))?;
    let bundle = Bundle::from_json(text).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let entries = bundle.verification_material.tlog_entries.len();
    if entries > TLOG_ENTRIES_MAX {
        return Err(BundleError::TooManyEntries(entries));
    }
    Ok(bundle)
}

/// Whether the bundle signs the artifact itself (`messageSignature`, a hashedrekord entry)
/// rather than carrying a DSSE envelope (an in-toto statement *about* artifacts).
pub fn is_message_signature(bundle: &Bundle) -> bool {
    matches!(bundle.content, SignatureContent::MessageSignature(_))
}

/// Whether the bundle's signer is a certificate (keyless) rather than a managed key.
pub fn is_keyless(bundle: &Bundle) -> bool {
    !matches!(
        bundle.verification_material.content,
        VerificationMaterialContent::PublicKey(_)
    )
}

/// Verifies `bundle` over `subject` against each root in turn (only the one named `instance`,
/// if given); the first that verifies wins. When none does, the error is the one from the root
/// that knows the bundle's log (the bundle's own instance), or else from the first root.
pub fn verify_parsed(
    bundle: &Bundle,
    subject: &Subject<'_>,
    check: &Check<'_>,
    roots: &TrustedRoots,
    instance: Option<&str>,
) -> Result<Evidence, BundleError> {
    if let Some(name) = instance
        && !roots.contains(name)
    {
        return Err(BundleError::UnknownInstance(name.to_owned()));
    }
    let mut refusal: Option<(bool, BundleError)> = None;
    let chosen = roots
        .roots
        .iter()
        .filter(|root| instance.is_none_or(|name| root.name == name));
    for root in chosen {
        let artifact: Artifact<'_> = match subject {
            Subject::Bytes(bytes) => Artifact::Blob(bytes),
            Subject::Sha256(digest) => {
                Artifact::Digest(ArtifactDigest::from(Sha256Hash::new(*digest.as_bytes())))
            }
        };
        let verified = match check {
            Check::Identity { identity, issuer } => root.verifier.verify(
                artifact,
                bundle,
                &VerificationPolicy::new(*identity, *issuer),
            ),
            Check::AnyIdentity => {
                root.verifier
                    .verify(artifact, bundle, &VerificationPolicy::any_identity())
            }
            Check::Key(key) => root.verifier.verify(
                artifact,
                bundle,
                &PublicKeyVerificationPolicy::new((*key).clone()),
            ),
        };
        match verified {
            Ok(result) => return Ok(evidence(&root.name, bundle, &result)),
            Err(error) => {
                let own = root.knows_log_of(bundle);
                if refusal.as_ref().is_none_or(|(had_own, _)| own && !had_own) {
                    refusal = Some((own, error.into()));
                }
            }
        }
    }
    Err(refusal.map_or_else(
        || BundleError::TrustedRoot("no trusted root is configured".into()),
        |(_, error)| error,
    ))
}

fn evidence(instance: &str, bundle: &Bundle, result: &VerificationResult) -> Evidence {
    let entry = bundle.verification_material.tlog_entries.first();
    let logged = result
        .integrated_time()
        .or_else(|| result.verified_timestamps().iter().min().copied());
    Evidence {
        instance: instance.to_owned(),
        identity: result.identity().map(|san| san.as_str().to_owned()),
        issuer: result.issuer().map(str::to_owned),
        log_index: entry.map(|entry| entry.log_index.as_i64()),
        integrated_time: logged.map(|time| time.as_second()),
    }
}

/// Verifies `bundle_json` over `subject` for `signer` against `trusted_root_json`.
pub fn verify(
    bundle_json: &[u8],
    subject: Subject<'_>,
    signer: &Signer<'_>,
    trusted_root_json: &str,
) -> Result<Evidence, BundleError> {
    let bundle = parse(bundle_json)?;
    let roots = TrustedRoots::from_json("--trusted-root", trusted_root_json)?;
    match signer {
        Signer::Identity { identity, issuer } => verify_parsed(
            &bundle,
            &subject,
            &Check::Identity { identity, issuer },
            &roots,
            None,
        ),
        Signer::Key { public_key_pem } => {
            // The same strict PEM reading as registered signer keys (one block, nothing after).
            let key = single_pem_block(public_key_pem, "PUBLIC KEY")
                .map_err(|e| BundleError::Key(e.to_string()))?;
            verify_parsed(
                &bundle,
                &subject,
                &Check::Key(&DerPublicKey::new(key)),
                &roots,
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identity and issuer the conformance suite's keyless bundles were signed with.
    const IDENTITY: &str = "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main";
    const ISSUER: &str = "https://token.actions.githubusercontent.com";
    const KEYLESS: Signer<'static> = Signer::Identity {
        identity: IDENTITY,
        issuer: ISSUER,
    };

    fn fixture_path(path: &str) -> String {
        format!(
            "{}/tests/fixtures/sigstore/{path}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn fixture(path: &str) -> Vec<u8> {
        let full = fixture_path(path);
        std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    fn text(path: &str) -> String {
        String::from_utf8(fixture(path)).expect("UTF-8 fixture")
    }

    /// The case's bundle over `a.txt` (or the case's own artifact), against the case's trusted
    /// root or the embedded public-good one.
    fn verify_case(case: &str, signer: &Signer<'_>) -> Result<Evidence, BundleError> {
        let dir = fixture_path(case);
        let artifact =
            std::fs::read(format!("{dir}/artifact")).unwrap_or_else(|_| fixture("a.txt"));
        let root = std::fs::read_to_string(format!("{dir}/trusted_root.json"))
            .unwrap_or_else(|_| production_trusted_root().to_owned());
        let bundle = fixture(&format!("{case}/bundle.sigstore.json"));
        verify(&bundle, Subject::Bytes(&artifact), signer, &root)
    }

    fn reason(case: &str) -> &'static str {
        verify_case(case, &KEYLESS)
            .expect_err(&format!("{case} must be refused"))
            .reason()
    }

    #[test]
    fn genuine_bundles_verify_over_the_bytes_and_over_the_digest() {
        for case in ["happy-path-v0.1", "rekor2-checkpoint-cosigned"] {
            verify_case(case, &KEYLESS).unwrap_or_else(|e| panic!("{case}: {e}"));
        }
        let digest = ModuleDigest::of(&fixture("a.txt"));
        let bundle = fixture("happy-path-v0.1/bundle.sigstore.json");
        verify(
            &bundle,
            Subject::Sha256(digest),
            &KEYLESS,
            production_trusted_root(),
        )
        .expect("verifies over the digest");
        let key = text("managed-key-and-trusted-root/key.pub");
        let signer = Signer::Key {
            public_key_pem: &key,
        };
        verify_case("managed-key-and-trusted-root", &signer).expect("managed key verifies");
    }

    #[test]
    fn forged_transparency_evidence_is_refused_for_its_own_reason() {
        assert_eq!(
            reason("checkpoint-wrong-roothash_fail"),
            "checkpoint_root_mismatch"
        );
        assert_eq!(reason("checkpoint-bad-keyhint_fail"), "checkpoint_invalid");
        assert_eq!(
            reason("rekor2-checkpoint-no-matching-signature_fail"),
            "checkpoint_invalid"
        );
        assert_eq!(reason("set-invalid-signature_fail"), "set_invalid");
        // A bundle logged by another Sigstore instance: no log key of this root signed its SET.
        assert_eq!(reason("bundle-from-wrong-instance_fail"), "set_invalid");
        // The suite's corrupted v0.1 inclusion proof carries no checkpoint to prove it against;
        // refused for that before the corruption is reached (the next test corrupts a proof that
        // has one).
        assert_eq!(reason("invalid-inclusion-proof_fail"), "checkpoint_missing");
    }

    #[test]
    fn a_corrupted_inclusion_proof_is_refused_as_such() {
        let mut bundle: serde_json::Value =
            serde_json::from_slice(&fixture("rekor2-checkpoint-cosigned/bundle.sigstore.json"))
                .expect("JSON");
        let hashes =
            &mut bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["hashes"];
        // Another sibling hash on the path (a valid base64 SHA-256, just the wrong one).
        hashes[0] = serde_json::Value::String(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            [7u8; 32],
        ));
        let root = text("rekor2-checkpoint-cosigned/trusted_root.json");
        let error = verify(
            &serde_json::to_vec(&bundle).expect("JSON"),
            Subject::Bytes(&fixture("a.txt")),
            &KEYLESS,
            &root,
        )
        .expect_err("a corrupted proof must be refused");
        assert_eq!(error.reason(), "inclusion_proof_invalid", "{error}");
    }

    #[test]
    fn certificates_identities_and_artifacts_are_each_checked() {
        assert_eq!(
            reason("intoto-set-outside-signing-cert-validity_fail"),
            "certificate_chain_invalid"
        );
        assert_eq!(reason("message-digest-mismatch_fail"), "artifact_mismatch");
        let wrong_identity = Signer::Identity {
            identity: "https://github.com/someone-else/repo/.github/workflows/release.yml@refs/heads/main",
            issuer: ISSUER,
        };
        let error = verify_case("happy-path-v0.1", &wrong_identity).expect_err("wrong identity");
        assert_eq!(error.reason(), "identity_mismatch");
        let wrong_issuer = Signer::Identity {
            identity: IDENTITY,
            issuer: "https://accounts.google.com",
        };
        let error = verify_case("happy-path-v0.1", &wrong_issuer).expect_err("wrong issuer");
        assert_eq!(error.reason(), "issuer_mismatch");
        let bundle = fixture("happy-path-v0.1/bundle.sigstore.json");
        let error = verify(
            &bundle,
            Subject::Bytes(b"another artifact"),
            &KEYLESS,
            production_trusted_root(),
        )
        .expect_err("another artifact");
        assert_eq!(error.reason(), "artifact_mismatch");
    }

    #[test]
    fn pinned_roots_are_named_by_stem_or_explicitly_and_each_name_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = text("managed-key-and-trusted-root/trusted_root.json");
        let staging = dir.path().join("staging.json");
        std::fs::write(&staging, &root).expect("write");
        let roots = TrustedRoots::public_good_and(&[
            staging.clone(),
            format!("corp={}", staging.display()).into(),
        ])
        .expect("valid roots");
        assert_eq!(
            roots.names().collect::<Vec<_>>(),
            [PUBLIC_GOOD, "staging", "corp"]
        );
        for bad in [
            format!("staging={}", staging.display()),
            format!("{PUBLIC_GOOD}={}", staging.display()),
            format!("bad name={}", staging.display()),
            dir.path().join("missing.json").display().to_string(),
        ] {
            let entries = [staging.clone(), bad.clone().into()];
            let error = TrustedRoots::public_good_and(&entries)
                .err()
                .unwrap_or_else(|| panic!("{bad} must be refused"));
            assert!(error.contains(".json"), "{bad}: {error}");
        }
        // A managed-key bundle verifies against the named instance only.
        let bundle = parse(&fixture(
            "managed-key-and-trusted-root/bundle.sigstore.json",
        ))
        .expect("parses");
        let key = single_pem_block(&text("managed-key-and-trusted-root/key.pub"), "PUBLIC KEY")
            .expect("key");
        let key = DerPublicKey::new(key);
        let artifact = fixture("a.txt");
        let subject = Subject::Bytes(&artifact);
        let evidence = verify_parsed(&bundle, &subject, &Check::Key(&key), &roots, Some("corp"))
            .expect("verifies against corp");
        assert_eq!(evidence.instance, "corp");
        assert!(evidence.log_index.is_some() && evidence.integrated_time.is_some());
        let refused = verify_parsed(
            &bundle,
            &subject,
            &Check::Key(&key),
            &roots,
            Some(PUBLIC_GOOD),
        )
        .expect_err("not a public-good bundle");
        assert_ne!(refused.reason(), "unknown_instance");
        let unknown = verify_parsed(&bundle, &subject, &Check::Key(&key), &roots, Some("nope"))
            .expect_err("no such instance");
        assert_eq!(unknown.reason(), "unknown_instance");
    }

    #[test]
    fn bundles_with_too_many_log_entries_are_refused_before_verification() {
        let mut bundle: serde_json::Value =
            serde_json::from_slice(&fixture("happy-path-v0.1/bundle.sigstore.json")).expect("JSON");
        let entry = bundle["verificationMaterial"]["tlogEntries"][0].clone();
        bundle["verificationMaterial"]["tlogEntries"] =
            serde_json::Value::Array(vec![entry; TLOG_ENTRIES_MAX + 1]);
        let error = parse(&serde_json::to_vec(&bundle).expect("JSON")).expect_err("too many");
        assert_eq!(error.reason(), "bundle_malformed");
        assert!(
            error.to_string().contains("transparency-log entries"),
            "{error}"
        );
    }

    #[test]
    fn malformed_input_is_refused_without_panicking() {
        for junk in [&b""[..], b"{}", b"[]", b"\xff\xfe", b"{\"mediaType\": 7}"] {
            let error = verify(
                junk,
                Subject::Bytes(b"a"),
                &KEYLESS,
                production_trusted_root(),
            )
            .expect_err("junk");
            assert_eq!(error.reason(), "bundle_malformed");
        }
        let bundle = fixture("happy-path-v0.1/bundle.sigstore.json");
        let error =
            verify(&bundle, Subject::Bytes(b"a"), &KEYLESS, "{not a root").expect_err("bad root");
        assert_eq!(error.reason(), "trusted_root_invalid");
    }
}
