//! CycloneDX SBOMs: parsing and validating with `cyclonedx-bom`, binding the document to the
//! module through `metadata.component` (name, version, SHA-256 hash).

use cyclonedx_bom::models::bom::{Bom, SpecVersion};
use cyclonedx_bom::models::component::{Classification, Component};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::metadata::Metadata;
use cyclonedx_bom::prelude::{DateTime, NormalizedString};
use cyclonedx_bom::validation::Validate;

use super::{GateError, Manifest, ModuleDigest, SBOM_BYTES_MAX};

/// What a checked SBOM says, as the registry shows it per version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomSummary {
    /// `CycloneDX 1.5`, …
    pub format: String,
    /// Top-level components (the crates and libraries compiled into the module).
    pub components: usize,
}

/// Checks that `sbom` is a valid CycloneDX JSON document (spec 1.3–1.5) whose metadata component
/// names this spell and carries exactly this module's SHA-256 digest.
pub fn check(
    sbom: &[u8],
    manifest: &Manifest,
    digest: &ModuleDigest,
) -> Result<SbomSummary, GateError> {
    let bom = parse(sbom)?;
    let summary = SbomSummary {
        format: format!("CycloneDX {}", bom.spec_version),
        components: bom.components.as_ref().map_or(0, |c| c.0.len()),
    };
    let component = bom
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.component.as_ref())
        .ok_or_else(|| GateError::SbomInvalid("metadata.component is missing".into()))?;

    let name = component.name.to_string();
    if name != manifest.name {
        return Err(GateError::SbomComponentMismatch(format!(
            "component name {name:?}, manifest name {:?}",
            manifest.name
        )));
    }
    let version: Option<String> = component.version.as_ref().map(|v| v.to_string());
    if version.as_deref() != Some(manifest.version.to_string().as_str()) {
        return Err(GateError::SbomComponentMismatch(format!(
            "component version {:?}, manifest version \"{}\"",
            version.unwrap_or_default(),
            manifest.version
        )));
    }

    let sha256_values: Vec<&str> = component
        .hashes
        .iter()
        .flat_map(|hashes| hashes.0.iter())
        .filter(|hash| hash.alg == HashAlgorithm::SHA_256)
        .map(|hash| hash.content.0.as_str())
        .collect();
    if sha256_values.is_empty() {
        return Err(GateError::SbomDigestMismatch {
            expected: digest.to_string(),
            found: "no SHA-256 hash".into(),
        });
    }
    for value in sha256_values {
        // The crate's own validation accepts malformed hash values (wrong length, trailing
        // junk), so every SHA-256 value is checked here: exactly 64 hex characters.
        let found = ModuleDigest::from_hex(value).map_err(|_| {
            GateError::SbomInvalid(format!(
                "SHA-256 hash value {value:?} is not 64 hex characters"
            ))
        })?;
        if found != *digest {
            return Err(GateError::SbomDigestMismatch {
                expected: digest.to_string(),
                found: found.to_string(),
            });
        }
    }
    Ok(summary)
}

fn parse(sbom: &[u8]) -> Result<Bom, GateError> {
    let invalid = |message: String| GateError::SbomInvalid(message);
    if sbom.len() > SBOM_BYTES_MAX {
        return Err(invalid(format!("larger than {SBOM_BYTES_MAX} bytes")));
    }
    let json: serde_json::Value =
        serde_json::from_slice(sbom).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if json.get("bomFormat").and_then(|f| f.as_str()) != Some("CycloneDX") {
        return Err(invalid("bomFormat must be \"CycloneDX\"".into()));
    }
    let bom = Bom::parse_json_value(json).map_err(|e| invalid(e.to_string()))?;
    let result = bom.validate_version(bom.spec_version);
    if result.has_errors() {
        return Err(invalid(format!("{result:?}")));
    }
    Ok(bom)
}

/// Writes a CycloneDX 1.5 SBOM binding this module to its manifest. With `base`, that
/// document's components (dependencies, licences…) are kept and its metadata component is
/// replaced by this spell's.
pub fn generate(
    manifest: &Manifest,
    digest: &ModuleDigest,
    base: Option<&[u8]>,
) -> Result<Vec<u8>, GateError> {
    let mut bom = match base {
        Some(bytes) => parse(bytes)?,
        None => Bom::default(),
    };
    let mut component = Component::new(
        Classification::Application,
        &manifest.name,
        &manifest.version.to_string(),
        Some(format!("spell:{}@{}", manifest.name, manifest.version)),
    );
    if !manifest.description.is_empty() {
        component.description = Some(NormalizedString::new(&manifest.description));
    }
    component.mime_type = Some(cyclonedx_bom::models::component::MimeType(
        "application/wasm".into(),
    ));
    component.hashes = Some(Hashes(vec![Hash {
        alg: HashAlgorithm::SHA_256,
        content: HashValue(digest.hex()),
    }]));
    let mut metadata = bom.metadata.take().unwrap_or(Metadata {
        timestamp: None,
        tools: None,
        authors: None,
        component: None,
        manufacture: None,
        supplier: None,
        licenses: None,
        properties: None,
        lifecycles: None,
    });
    metadata.timestamp = DateTime::now().ok();
    metadata.component = Some(component);
    bom.metadata = Some(metadata);
    bom.spec_version = SpecVersion::V1_5;
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out)
        .map_err(|e| GateError::SbomInvalid(e.to_string()))?;
    Ok(out)
}
