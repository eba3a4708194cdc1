//! The supply-chain gate: nothing reaches the compiler unless its signature, SBOM, manifest and
//! wasm imports check out.
//!
//! [`VerifiedModule`] has exactly one constructor, [`Verifier::verify`], so code that holds one
//! knows every check below has passed for the exact bytes it carries. This module depends on
//! nothing else of ours: imports and complexity are checked with a wasm parser, not with the
//! sandbox (the registry compiles a verified module before it publishes it).

pub mod advisory;
pub mod bundle;
mod digest;
pub mod manifest;
pub mod sbom;
pub mod signature;
pub mod signer;
mod wasm;

use std::path::Path;
use std::sync::Arc;

pub use bundle::TrustedRoots;
pub use digest::{DigestParseError, ModuleDigest};
pub use manifest::{Manifest, ManifestLimits, SchemaViolation, SpellSchema};
pub use signature::SignerKey;
pub use signer::{IdentityPolicy, Signature, SignedBy, Signer};
pub use wasm::{DEFINED_FUNCTIONS_MAX, FUNCTION_BODY_BYTES_MAX, FUNCTION_LOCALS_MAX};

/// The largest module the gate accepts, in bytes. Real spells built with `opt-level = "s"` are
/// 50–500 KiB; 16 MiB leaves room for large interpreters while bounding the memory and compile
/// time one upload can cost.
pub const MODULE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The largest SBOM document the gate parses, in bytes. SBOMs of single modules are a few KiB;
/// this bounds the JSON parser's work on hostile input.
pub const SBOM_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The largest manifest (`spell.toml`) accepted, in bytes.
pub const MANIFEST_BYTES_MAX: usize = 64 * 1024;

/// The file names of a spell directory.
pub const MODULE_FILE: &str = "module.wasm";
pub const MANIFEST_FILE: &str = "spell.toml";
pub const SBOM_FILE: &str = "sbom.cdx.json";
pub const SIGNATURE_FILE: &str = "module.wasm.sig";
/// A Sigstore bundle over `module.wasm`, as `cosign sign-blob --bundle` writes it.
pub const SIGSTORE_BUNDLE_FILE: &str = "module.wasm.sigstore.json";
/// A signed SBOM: an in-toto attestation bundle over `module.wasm` whose predicate is the SBOM,
/// as `cosign attest-blob --type cyclonedx --predicate sbom.cdx.json --bundle …` writes it.
pub const SBOM_ATTESTATION_FILE: &str = "sbom.cdx.json.sigstore.json";

/// Why the gate refused a spell. Each variant has a stable [`code`](GateError::code).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    #[error("the module is not signed: send a signature or a Sigstore bundle")]
    Unsigned,
    #[error("signature does not verify: {0}")]
    SignatureInvalid(String),
    #[error("the Sigstore bundle is malformed: {0}")]
    BundleMalformed(String),
    #[error("the Sigstore bundle is for other bytes: {0}")]
    BundleArtifactMismatch(String),
    #[error("the Sigstore bundle's evidence does not verify ({reason}): {message}")]
    BundleEvidenceInvalid {
        reason: &'static str,
        message: String,
    },
    #[error("the signer's identity is not one the publisher registered: {0}")]
    SignerIdentityMismatch(String),
    #[error("the signer's OIDC issuer is not one the publisher registered: {0}")]
    SignerIssuerMismatch(String),
    #[error("SBOM is not valid: {0}")]
    SbomInvalid(String),
    #[error("the signed SBOM does not verify: {0}")]
    SbomAttestationInvalid(String),
    #[error(
        "the signer requires a signed SBOM: send an in-toto attestation bundle over the module whose predicate is the SBOM (part sbom_attestation; cosign attest-blob --type cyclonedx)"
    )]
    SbomUnsigned,
    #[error("SBOM names digest {found}, but the module is {expected}")]
    SbomDigestMismatch { expected: String, found: String },
    #[error("SBOM metadata component does not match the manifest: {0}")]
    SbomComponentMismatch(String),
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("limits.{field} = {value} is above this host's maximum of {max}")]
    LimitAboveHostMax {
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("module is invalid: {0}")]
    ModuleInvalid(String),
    #[error("module is too complex to compile: {0}")]
    ModuleTooComplex(String),
    #[error("import {module}::{name} is not allowed")]
    ImportNotAllowed { module: String, name: String },
    #[error(
        "component {component} is affected by advisory {advisory} ({severity}){others}: upgrade it, or state in the SBOM (CycloneDX VEX, analysis.state not_affected) why it is not affected"
    )]
    VulnerableComponent {
        component: String,
        advisory: String,
        severity: String,
        /// ` (and N more)` when other components or advisories block too.
        others: String,
    },
}

impl GateError {
    /// The stable, machine-readable code of this rejection.
    pub fn code(&self) -> &'static str {
        match self {
            GateError::Unsigned => "unsigned",
            GateError::SignatureInvalid(_) => "signature_invalid",
            GateError::BundleMalformed(_) => "bundle_malformed",
            GateError::BundleArtifactMismatch(_) => "bundle_artifact_mismatch",
            GateError::BundleEvidenceInvalid { .. } => "bundle_evidence_invalid",
            GateError::SignerIdentityMismatch(_) => "signer_identity_mismatch",
            GateError::SignerIssuerMismatch(_) => "signer_issuer_mismatch",
            GateError::SbomInvalid(_) => "sbom_invalid",
            GateError::SbomAttestationInvalid(_) => "sbom_attestation_invalid",
            GateError::SbomUnsigned => "sbom_unsigned",
            GateError::SbomDigestMismatch { .. } => "sbom_digest_mismatch",
            GateError::SbomComponentMismatch(_) => "sbom_component_mismatch",
            GateError::ManifestInvalid(_) => "manifest_invalid",
            GateError::LimitAboveHostMax { .. } => "limit_above_host_max",
            GateError::ModuleInvalid(_) => "module_invalid",
            GateError::ModuleTooComplex(_) => "module_too_complex",
            GateError::ImportNotAllowed { .. } => "import_not_allowed",
            GateError::VulnerableComponent { .. } => "vulnerable_component",
        }
    }
}

/// The parts of a published spell, as received (from a directory or a multipart upload).
#[derive(Clone)]
pub struct SpellBundle {
    pub module: Vec<u8>,
    pub manifest: String,
    pub sbom: Vec<u8>,
    /// `None` when neither a signature nor a Sigstore bundle came with the module.
    pub signature: Option<Signature>,
    /// A signed SBOM (an in-toto attestation bundle), if one came.
    pub sbom_attestation: Option<Vec<u8>>,
}

impl SpellBundle {
    /// Reads a spell directory (`module.wasm`, `spell.toml`, `sbom.cdx.json`, and
    /// `module.wasm.sigstore.json` or else `module.wasm.sig`; `sbom.cdx.json.sigstore.json` if
    /// present).
    pub fn read_dir(dir: &Path) -> std::io::Result<Self> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display()))
            })
        };
        let exists = |name: &str| dir.join(name).try_exists();
        let signature = if exists(SIGSTORE_BUNDLE_FILE)? {
            Some(Signature::Sigstore(read(SIGSTORE_BUNDLE_FILE)?))
        } else if exists(SIGNATURE_FILE)? {
            Some(Signature::Detached(read(SIGNATURE_FILE)?))
        } else {
            None
        };
        Ok(SpellBundle {
            module: read(MODULE_FILE)?,
            manifest: String::from_utf8_lossy(&read(MANIFEST_FILE)?).into_owned(),
            sbom: read(SBOM_FILE)?,
            signature,
            sbom_attestation: if exists(SBOM_ATTESTATION_FILE)? {
                Some(read(SBOM_ATTESTATION_FILE)?)
            } else {
                None
            },
        })
    }

    /// Writes a spell directory that [`read_dir`](Self::read_dir) reads back as this bundle
    /// (creating `dir` if needed; a signature file of the other kind is removed).
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.join(name), bytes).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display()))
            })
        };
        let remove = |name: &str| match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", dir.join(name).display()),
            )),
            _ => Ok(()),
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        write(MODULE_FILE, &self.module)?;
        write(MANIFEST_FILE, self.manifest.as_bytes())?;
        write(SBOM_FILE, &self.sbom)?;
        match &self.sbom_attestation {
            Some(bytes) => write(SBOM_ATTESTATION_FILE, bytes)?,
            None => remove(SBOM_ATTESTATION_FILE)?,
        }
        match &self.signature {
            Some(Signature::Detached(bytes)) => {
                remove(SIGSTORE_BUNDLE_FILE)?;
                write(SIGNATURE_FILE, bytes)
            }
            Some(Signature::Sigstore(json)) => {
                remove(SIGNATURE_FILE)?;
                write(SIGSTORE_BUNDLE_FILE, json)
            }
            None => {
                remove(SIGNATURE_FILE)?;
                remove(SIGSTORE_BUNDLE_FILE)
            }
        }
    }
}

/// A module that passed every check of the gate. Cheap to clone.
#[derive(Clone)]
pub struct VerifiedModule {
    inner: Arc<VerifiedInner>,
}

struct VerifiedInner {
    digest: ModuleDigest,
    bytes: Arc<[u8]>,
    manifest: Manifest,
    signed_by: Option<SignedBy>,
    sbom: sbom::SbomSummary,
    /// What the signed SBOM's bundle proved (`None`: no signed SBOM was verified).
    sbom_attested_by: Option<bundle::Evidence>,
}

impl VerifiedModule {
    pub fn digest(&self) -> &ModuleDigest {
        &self.inner.digest
    }
    /// The exact bytes that were hashed and whose signature was checked.
    pub fn bytes(&self) -> &[u8] {
        &self.inner.bytes
    }
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }
    /// The signer that signed, under [`SignaturePolicy::AnyOf`] (`None` for modules loaded
    /// back from storage and local runs).
    pub fn signed_by(&self) -> Option<&SignedBy> {
        self.inner.signed_by.as_ref()
    }
    /// The SBOM's format and component count.
    pub fn sbom(&self) -> &sbom::SbomSummary {
        &self.inner.sbom
    }
    /// The evidence of the signed SBOM, when one came and verified under the module's signer.
    pub fn sbom_attested_by(&self) -> Option<&bundle::Evidence> {
        self.inner.sbom_attested_by.as_ref()
    }
}

impl std::fmt::Debug for VerifiedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedModule")
            .field("digest", &self.inner.digest)
            .field("name", &self.inner.manifest.name)
            .field("version", &self.inner.manifest.version)
            .finish()
    }
}

/// Which signatures the gate accepts.
pub enum SignaturePolicy<'a> {
    /// The signature or Sigstore bundle must verify for one of these signers (the
    /// publisher's registered ones), bundles against these trusted roots.
    AnyOf(&'a [Signer], &'a TrustedRoots),
    /// The module was authenticated when it was published, for this digest: its bytes must
    /// hash to it. The registry's loads from its own storage use this, so that a module is
    /// never verified against a Sigstore root again at cast time (roots rotate; publishing
    /// checked the evidence at the time it was given).
    VerifiedAtPublish(&'a ModuleDigest),
    /// No signature check at all. Only the author's local runner (`spellhost spell run` without
    /// `--public-key`) uses this; the server never does.
    SkipForLocalRun,
}

/// The gate. Stateless; checks run cheapest-and-most-authenticating first, so unsigned input is
/// refused before its SBOM or wasm is parsed.
pub struct Verifier;

impl Verifier {
    pub fn verify(
        bundle: &SpellBundle,
        policy: SignaturePolicy<'_>,
    ) -> Result<VerifiedModule, GateError> {
        let manifest = Manifest::parse(&bundle.manifest)?;
        if bundle.module.len() > MODULE_BYTES_MAX {
            return Err(GateError::ModuleInvalid(format!(
                "module is {} bytes; the limit is {MODULE_BYTES_MAX}",
                bundle.module.len()
            )));
        }
        // Hash the exact bytes that will be compiled; the VerifiedModule keeps these bytes.
        let bytes: Arc<[u8]> = Arc::from(bundle.module.as_slice());
        let digest = ModuleDigest::of(&bytes);
        // A module loaded back from storage had its SBOM checked at publish, under the rules
        // of that day: a stricter check since (a schema, a version no longer accepted) must not
        // make a published version uncastable, so it is not checked again.
        let sbom_checked_at_publish = matches!(policy, SignaturePolicy::VerifiedAtPublish(_));
        let mut attestation = None;
        let signed_by = match policy {
            SignaturePolicy::AnyOf(signers, roots) => {
                let signed = signer::authenticate(
                    bundle.signature.as_ref(),
                    &bytes,
                    &digest,
                    signers,
                    roots,
                )?;
                attestation = bundle
                    .sbom_attestation
                    .as_deref()
                    .zip(signers.get(signed.signer))
                    .map(|(json, signer)| (json, signer, roots));
                Some(signed)
            }
            SignaturePolicy::VerifiedAtPublish(expected) => {
                if *expected != digest {
                    return Err(GateError::ModuleInvalid(format!(
                        "the stored module hashes to {digest}, not to the {expected} that was published"
                    )));
                }
                None
            }
            SignaturePolicy::SkipForLocalRun => None,
        };
        let sbom = if sbom_checked_at_publish {
            sbom::SbomSummary::checked_at_publish()
        } else {
            sbom::check(&bundle.sbom, &manifest, &digest)?
        };
        // A signed SBOM must verify under the signer that signed the module (its key, or its
        // identity policy), over this module, with this SBOM as its predicate.
        let sbom_attested_by = match attestation {
            Some((json, signer, roots)) => Some(signer::attested_sbom(
                json,
                &bundle.sbom,
                &digest,
                signer,
                roots,
            )?),
            None => None,
        };
        wasm::check(&bytes)?;
        Ok(VerifiedModule {
            inner: Arc::new(VerifiedInner {
                digest,
                bytes,
                manifest,
                signed_by,
                sbom,
                sbom_attested_by,
            }),
        })
    }
}
