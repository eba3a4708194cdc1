//! SBOMs: CycloneDX 1.4–1.6 and SPDX 2.3 JSON documents, each validated against the official JSON
//! schema of its format and version (vendored in `schemas/`, every `$ref` resolved offline), then
//! bound to the module: the document's subject names this spell and version and carries exactly
//! this module's SHA-256 digest. What the gate keeps of a document is its [`SbomSummary`]: the
//! components it lists (with their package URLs, for the advisory check) and its VEX statements.
//!
//! Generation (`spellhost spell sbom`) still writes CycloneDX 1.5 with `cyclonedx-bom`.

use std::sync::LazyLock;

use cyclonedx_bom::models::bom::{Bom, SpecVersion};
use cyclonedx_bom::models::component::{Classification, Component as CdxComponent};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::metadata::Metadata;
use cyclonedx_bom::prelude::{DateTime, NormalizedString};
use cyclonedx_bom::validation::Validate;
use serde::Deserialize;
use serde_json::Value;

use super::{GateError, Manifest, ModuleDigest, SBOM_BYTES_MAX};

/// What a checked SBOM says, as the registry shows it per version and the advisory check reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomSummary {
    /// `CycloneDX 1.6`, `SPDX 2.3`, …
    pub format: String,
    /// Top-level components (CycloneDX) or packages besides the module's own (SPDX).
    pub components: usize,
    /// Every component the document lists, nested ones included.
    pub inventory: Vec<Component>,
    /// CycloneDX `vulnerabilities[]` with an analysis: what the author states about advisories.
    pub vex: Vec<VexStatement>,
}

impl SbomSummary {
    /// The summary of a module loaded back from storage, whose SBOM was checked at publish
    /// (and is not read again).
    pub fn checked_at_publish() -> Self {
        SbomSummary {
            format: "checked at publish".into(),
            components: 0,
            inventory: Vec::new(),
            vex: Vec::new(),
        }
    }
}

/// One component of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub version: Option<String>,
    /// Its package URL (`pkg:cargo/serde@1.0.0`), if the document gives one.
    pub purl: Option<String>,
    /// Its CycloneDX `bom-ref` (or SPDX `SPDXID`): what VEX statements point at.
    pub bom_ref: Option<String>,
}

impl Component {
    /// `name@version` (or the purl), for messages.
    pub fn label(&self) -> String {
        match (&self.purl, &self.version) {
            (Some(purl), _) => purl.clone(),
            (None, Some(version)) => format!("{}@{version}", self.name),
            (None, None) => self.name.clone(),
        }
    }
}

/// A CycloneDX VEX statement: vulnerability `id` has analysis `state` for the components `refs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VexStatement {
    pub id: String,
    /// `not_affected`, `exploitable`, `in_triage`, …
    pub state: String,
    pub refs: Vec<String>,
}

/// The formats and versions the gate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    CycloneDx14,
    CycloneDx15,
    CycloneDx16,
    Spdx23,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::CycloneDx14 => "CycloneDX 1.4",
            Format::CycloneDx15 => "CycloneDX 1.5",
            Format::CycloneDx16 => "CycloneDX 1.6",
            Format::Spdx23 => "SPDX 2.3",
        }
    }

    /// Which format a document claims to be (before any validation).
    fn of(document: &Value) -> Result<Format, GateError> {
        let invalid = |message: String| GateError::SbomInvalid(message);
        if let Some(format) = document.get("bomFormat") {
            if format.as_str() != Some("CycloneDX") {
                return Err(invalid("bomFormat must be \"CycloneDX\"".into()));
            }
            return match document.get("specVersion").and_then(Value::as_str) {
                Some("1.4") => Ok(Format::CycloneDx14),
                Some("1.5") => Ok(Format::CycloneDx15),
                Some("1.6") => Ok(Format::CycloneDx16),
                other => Err(invalid(format!(
                    "CycloneDX specVersion {} is not accepted: send 1.4, 1.5 or 1.6",
                    other.map_or_else(|| "(missing)".to_owned(), |v| format!("{v:?}"))
                ))),
            };
        }
        match document.get("spdxVersion").and_then(Value::as_str) {
            Some("SPDX-2.3") => Ok(Format::Spdx23),
            Some(other) => Err(invalid(format!(
                "spdxVersion {other:?} is not accepted: send SPDX-2.3 (JSON)"
            ))),
            None => Err(invalid(
                "neither a CycloneDX document (bomFormat) nor an SPDX one (spdxVersion)".into(),
            )),
        }
    }
}

/// The vendored schemas, by the `$id` other schemas reference them with.
const SCHEMAS: [(&str, &str); 6] = [
    (
        "http://cyclonedx.org/schema/bom-1.4.schema.json",
        include_str!("schemas/bom-1.4.schema.json"),
    ),
    (
        "http://cyclonedx.org/schema/bom-1.5.schema.json",
        include_str!("schemas/bom-1.5.schema.json"),
    ),
    (
        "http://cyclonedx.org/schema/bom-1.6.schema.json",
        include_str!("schemas/bom-1.6.schema.json"),
    ),
    (
        "http://cyclonedx.org/schema/spdx.schema.json",
        include_str!("schemas/spdx.schema.json"),
    ),
    (
        "http://cyclonedx.org/schema/jsf-0.82.schema.json",
        include_str!("schemas/jsf-0.82.schema.json"),
    ),
    (
        "http://spdx.org/rdf/terms/2.3",
        include_str!("schemas/spdx-2.3.schema.json"),
    ),
];

/// Resolves `$ref`s to the vendored schemas only: nothing is fetched, from the network or disk.
struct Vendored;

impl jsonschema::Retrieve for Vendored {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let wanted = uri.as_str().trim_end_matches('#');
        let (_, text) = SCHEMAS
            .iter()
            .find(|(id, _)| *id == wanted)
            .ok_or_else(|| format!("{wanted} is not a vendored schema"))?;
        Ok(serde_json::from_str(text)?)
    }
}

fn build_validator(id: &str) -> Result<jsonschema::Validator, String> {
    let (_, text) = SCHEMAS
        .iter()
        .find(|(known, _)| *known == id)
        .ok_or_else(|| format!("{id} is not a vendored schema"))?;
    let schema: Value = serde_json::from_str(text).map_err(|e| format!("{id}: {e}"))?;
    jsonschema::options()
        .with_retriever(Vendored)
        // Formats (date-time, iri-reference, email…) are checked too: a gate is strict.
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| format!("{id}: {e}"))
}

/// The validators, compiled once per process on first use. A vendored schema that does not
/// compile is a build defect (the unit tests compile every one), reported as a refusal rather
/// than a panic.
static VALIDATORS: LazyLock<Vec<(Format, Result<jsonschema::Validator, String>)>> =
    LazyLock::new(|| {
        [
            (Format::CycloneDx14, SCHEMAS[0].0),
            (Format::CycloneDx15, SCHEMAS[1].0),
            (Format::CycloneDx16, SCHEMAS[2].0),
            (Format::Spdx23, SCHEMAS[5].0),
        ]
        .into_iter()
        .map(|(format, id)| (format, build_validator(id)))
        .collect()
    });

/// At most this many schema violations are reported in a refusal.
const SCHEMA_ERRORS_SHOWN: usize = 5;

fn validate(format: Format, document: &Value) -> Result<(), GateError> {
    let validator = VALIDATORS
        .iter()
        .find(|(known, _)| *known == format)
        .map(|(_, validator)| validator.as_ref())
        .ok_or_else(|| GateError::SbomInvalid(format!("no schema for {}", format.name())))?
        .map_err(|e| GateError::SbomInvalid(format!("the schema does not compile: {e}")))?;
    let errors: Vec<String> = validator
        .iter_errors(document)
        .take(SCHEMA_ERRORS_SHOWN + 1)
        .map(|error| {
            let at = error.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            format!("at {at}: {error}")
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let more = if errors.len() > SCHEMA_ERRORS_SHOWN {
        "; …"
    } else {
        ""
    };
    let shown = errors
        .iter()
        .take(SCHEMA_ERRORS_SHOWN)
        .map(|e| truncate(e, 300))
        .collect::<Vec<_>>()
        .join("; ");
    Err(GateError::SbomInvalid(format!(
        "not a valid {} document: {shown}{more}",
        format.name()
    )))
}

/// `text` cut to at most `max` bytes on a character boundary (schema errors quote the value).
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Checks that `sbom` is a CycloneDX 1.4–1.6 or SPDX 2.3 JSON document, valid under the official
/// schema of its version, whose subject names this spell and carries exactly this module's
/// SHA-256 digest: CycloneDX's `metadata.component`; SPDX's package that the document describes
/// (`documentDescribes` or a `DESCRIBES` relationship) named as the manifest.
pub fn check(
    sbom: &[u8],
    manifest: &Manifest,
    digest: &ModuleDigest,
) -> Result<SbomSummary, GateError> {
    let invalid = |message: String| GateError::SbomInvalid(message);
    if sbom.len() > SBOM_BYTES_MAX {
        return Err(invalid(format!("larger than {SBOM_BYTES_MAX} bytes")));
    }
    let document: Value =
        serde_json::from_slice(sbom).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let format = Format::of(&document)?;
    validate(format, &document)?;
    match format {
        Format::Spdx23 => spdx(&document, manifest, digest),
        cyclonedx => cyclonedx_summary(cyclonedx, &document, manifest, digest),
    }
}

/// The name, version and SHA-256 values a document gives its subject, checked against the
/// manifest and the module's digest.
fn bind(
    name: &str,
    version: Option<&str>,
    sha256_values: &[&str],
    manifest: &Manifest,
    digest: &ModuleDigest,
) -> Result<(), GateError> {
    if name != manifest.name {
        return Err(GateError::SbomComponentMismatch(format!(
            "component name {name:?}, manifest name {:?}",
            manifest.name
        )));
    }
    if version != Some(manifest.version.to_string().as_str()) {
        return Err(GateError::SbomComponentMismatch(format!(
            "component version {:?}, manifest version \"{}\"",
            version.unwrap_or_default(),
            manifest.version
        )));
    }
    if sha256_values.is_empty() {
        return Err(GateError::SbomDigestMismatch {
            expected: digest.to_string(),
            found: "no SHA-256 hash".into(),
        });
    }
    for value in sha256_values {
        // Every SHA-256 value names this module: exactly 64 hex characters, this digest.
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
    Ok(())
}

/// The parts of a CycloneDX document the gate reads (the schema has checked their shapes).
#[derive(Deserialize)]
struct CdxDocument {
    metadata: Option<CdxMetadata>,
    #[serde(default)]
    components: Vec<CdxItem>,
    #[serde(default)]
    vulnerabilities: Vec<CdxVulnerability>,
}

#[derive(Deserialize)]
struct CdxMetadata {
    component: Option<CdxItem>,
}

#[derive(Deserialize)]
struct CdxItem {
    name: String,
    version: Option<String>,
    purl: Option<String>,
    #[serde(rename = "bom-ref")]
    bom_ref: Option<String>,
    #[serde(default)]
    hashes: Vec<CdxHash>,
    #[serde(default)]
    components: Vec<CdxItem>,
}

#[derive(Deserialize)]
struct CdxHash {
    alg: String,
    content: String,
}

#[derive(Deserialize)]
struct CdxVulnerability {
    id: Option<String>,
    analysis: Option<CdxAnalysis>,
    #[serde(default)]
    affects: Vec<CdxAffects>,
}

#[derive(Deserialize)]
struct CdxAnalysis {
    state: Option<String>,
}

#[derive(Deserialize)]
struct CdxAffects {
    #[serde(rename = "ref")]
    reference: String,
}

/// The most components read from one document (nested ones included): far more than any real
/// module has, and a bound on the advisory check's work.
const COMPONENTS_MAX: usize = 20_000;

fn cyclonedx_summary(
    format: Format,
    document: &Value,
    manifest: &Manifest,
    digest: &ModuleDigest,
) -> Result<SbomSummary, GateError> {
    let parsed = CdxDocument::deserialize(document)
        .map_err(|e| GateError::SbomInvalid(format!("unreadable CycloneDX document: {e}")))?;
    let subject = parsed
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.component.as_ref())
        .ok_or_else(|| GateError::SbomInvalid("metadata.component is missing".into()))?;
    let sha256: Vec<&str> = subject
        .hashes
        .iter()
        .filter(|hash| hash.alg == "SHA-256")
        .map(|hash| hash.content.as_str())
        .collect();
    bind(
        &subject.name,
        subject.version.as_deref(),
        &sha256,
        manifest,
        digest,
    )?;
    let mut inventory = Vec::new();
    let mut pending: Vec<&CdxItem> = parsed.components.iter().collect();
    while let Some(item) = pending.pop() {
        if inventory.len() == COMPONENTS_MAX {
            return Err(GateError::SbomInvalid(format!(
                "more than {COMPONENTS_MAX} components"
            )));
        }
        inventory.push(Component {
            name: item.name.clone(),
            version: item.version.clone(),
            purl: item.purl.clone(),
            bom_ref: item.bom_ref.clone(),
        });
        pending.extend(item.components.iter());
    }
    let vex = parsed
        .vulnerabilities
        .into_iter()
        .filter_map(|vulnerability| {
            Some(VexStatement {
                id: vulnerability.id?,
                state: vulnerability.analysis?.state?,
                refs: vulnerability
                    .affects
                    .into_iter()
                    .map(|affects| affects.reference)
                    .collect(),
            })
        })
        .collect();
    Ok(SbomSummary {
        format: format.name().to_owned(),
        components: parsed.components.len(),
        inventory,
        vex,
    })
}

/// The parts of an SPDX 2.3 document the gate reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpdxDocument {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    #[serde(default)]
    document_describes: Vec<String>,
    #[serde(default)]
    packages: Vec<SpdxPackage>,
    #[serde(default)]
    relationships: Vec<SpdxRelationship>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    version_info: Option<String>,
    #[serde(default)]
    checksums: Vec<SpdxChecksum>,
    #[serde(default)]
    external_refs: Vec<SpdxExternalRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpdxChecksum {
    algorithm: String,
    checksum_value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpdxExternalRef {
    reference_type: String,
    reference_locator: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpdxRelationship {
    spdx_element_id: String,
    relationship_type: String,
    related_spdx_element: String,
}

fn spdx(
    document: &Value,
    manifest: &Manifest,
    digest: &ModuleDigest,
) -> Result<SbomSummary, GateError> {
    let parsed = SpdxDocument::deserialize(document)
        .map_err(|e| GateError::SbomInvalid(format!("unreadable SPDX document: {e}")))?;
    // What the document describes: its `documentDescribes` and its DESCRIBES relationships.
    let mut described: Vec<&str> = parsed
        .document_describes
        .iter()
        .map(String::as_str)
        .collect();
    described.extend(
        parsed
            .relationships
            .iter()
            .filter(|r| r.spdx_element_id == parsed.spdx_id && r.relationship_type == "DESCRIBES")
            .map(|r| r.related_spdx_element.as_str()),
    );
    if described.is_empty() {
        return Err(GateError::SbomInvalid(
            "the SPDX document describes nothing: name the module's package in documentDescribes or a DESCRIBES relationship".into(),
        ));
    }
    let subjects: Vec<&SpdxPackage> = parsed
        .packages
        .iter()
        .filter(|package| described.contains(&package.spdx_id.as_str()))
        .collect();
    let subject = subjects
        .iter()
        .find(|package| package.name == manifest.name)
        .or(subjects.first())
        .ok_or_else(|| {
            GateError::SbomInvalid("the SPDX document describes no package (the module's)".into())
        })?;
    let sha256: Vec<&str> = subject
        .checksums
        .iter()
        .filter(|checksum| checksum.algorithm == "SHA256")
        .map(|checksum| checksum.checksum_value.as_str())
        .collect();
    bind(
        &subject.name,
        subject.version_info.as_deref(),
        &sha256,
        manifest,
        digest,
    )?;
    if parsed.packages.len() > COMPONENTS_MAX {
        return Err(GateError::SbomInvalid(format!(
            "more than {COMPONENTS_MAX} packages"
        )));
    }
    let inventory: Vec<Component> = parsed
        .packages
        .iter()
        .filter(|package| package.spdx_id != subject.spdx_id)
        .map(|package| Component {
            name: package.name.clone(),
            version: package.version_info.clone(),
            purl: package
                .external_refs
                .iter()
                .find(|r| r.reference_type == "purl")
                .map(|r| r.reference_locator.clone()),
            bom_ref: Some(package.spdx_id.clone()),
        })
        .collect();
    Ok(SbomSummary {
        format: Format::Spdx23.name().to_owned(),
        components: inventory.len(),
        inventory,
        // SPDX 2.3 carries no VEX statements.
        vex: Vec::new(),
    })
}

/// Writes a CycloneDX 1.5 SBOM binding this module to its manifest. With `base` (CycloneDX
/// 1.3–1.5), that document's components (dependencies, licences…) are kept and its metadata
/// component is replaced by this spell's.
pub fn generate(
    manifest: &Manifest,
    digest: &ModuleDigest,
    base: Option<&[u8]>,
) -> Result<Vec<u8>, GateError> {
    let mut bom = match base {
        Some(bytes) => parse_base(bytes)?,
        None => Bom::default(),
    };
    let mut component = CdxComponent::new(
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

/// A base document for [`generate`], read with `cyclonedx-bom` (CycloneDX 1.3–1.5).
fn parse_base(sbom: &[u8]) -> Result<Bom, GateError> {
    let invalid = |message: String| GateError::SbomInvalid(message);
    if sbom.len() > SBOM_BYTES_MAX {
        return Err(invalid(format!("larger than {SBOM_BYTES_MAX} bytes")));
    }
    let json: Value =
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn manifest() -> Manifest {
        Manifest::parse("name = \"noop\"\nversion = \"1.2.3\"\n").expect("manifest")
    }

    fn digest() -> ModuleDigest {
        ModuleDigest::of(b"the module")
    }

    fn cyclonedx(spec: &str) -> Value {
        json!({
            "bomFormat": "CycloneDX",
            "specVersion": spec,
            "version": 1,
            "metadata": {
                "timestamp": "2026-12-06T10:00:00Z",
                "component": {
                    "type": "application",
                    "bom-ref": "spell:noop@1.2.3",
                    "name": "noop",
                    "version": "1.2.3",
                    "hashes": [{"alg": "SHA-256", "content": digest().hex()}]
                }
            },
            "components": [{
                "type": "library",
                "bom-ref": "pkg:cargo/serde@1.0.200",
                "name": "serde",
                "version": "1.0.200",
                "purl": "pkg:cargo/serde@1.0.200",
                "components": [{"type": "library", "name": "inner", "version": "0.1.0"}]
            }],
            "vulnerabilities": [{
                "id": "RUSTSEC-2099-0001",
                "analysis": {"state": "not_affected", "justification": "code_not_reachable"},
                "affects": [{"ref": "pkg:cargo/serde@1.0.200"}]
            }]
        })
    }

    fn spdx_document() -> Value {
        json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": "noop",
            "documentNamespace": "https://example.com/spdx/noop-1.2.3",
            "creationInfo": {"created": "2026-12-06T10:00:00Z", "creators": ["Tool: test"]},
            "packages": [
                {
                    "SPDXID": "SPDXRef-Package-noop",
                    "name": "noop",
                    "versionInfo": "1.2.3",
                    "downloadLocation": "NOASSERTION",
                    "checksums": [{"algorithm": "SHA256", "checksumValue": digest().hex()}]
                },
                {
                    "SPDXID": "SPDXRef-Package-serde",
                    "name": "serde",
                    "versionInfo": "1.0.200",
                    "downloadLocation": "NOASSERTION",
                    "externalRefs": [{
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": "pkg:cargo/serde@1.0.200"
                    }]
                }
            ],
            "relationships": [{
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": "SPDXRef-Package-noop"
            }]
        })
    }

    fn checked(document: &Value) -> Result<SbomSummary, GateError> {
        check(
            &serde_json::to_vec(document).expect("JSON"),
            &manifest(),
            &digest(),
        )
    }

    #[test]
    fn every_vendored_schema_compiles_offline() {
        for (format, validator) in VALIDATORS.iter() {
            assert!(
                validator.is_ok(),
                "{format:?}: {:?}",
                validator.as_ref().err()
            );
        }
        // A reference to anything not vendored is refused, never fetched.
        let error = jsonschema::options()
            .with_retriever(Vendored)
            .build(&json!({"$ref": "http://cyclonedx.org/schema/bom-1.7.schema.json"}))
            .expect_err("not vendored");
        assert!(
            error.to_string().contains("not a vendored schema"),
            "{error}"
        );
    }

    #[test]
    fn cyclonedx_1_4_to_1_6_are_accepted_with_their_inventory_and_vex() {
        for spec in ["1.4", "1.5", "1.6"] {
            let summary = checked(&cyclonedx(spec)).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(summary.format, format!("CycloneDX {spec}"));
            assert_eq!(summary.components, 1);
            let names: Vec<&str> = summary.inventory.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["serde", "inner"], "nested components count");
            assert_eq!(
                summary.inventory[0].purl.as_deref(),
                Some("pkg:cargo/serde@1.0.200")
            );
            assert_eq!(
                summary.vex,
                [VexStatement {
                    id: "RUSTSEC-2099-0001".into(),
                    state: "not_affected".into(),
                    refs: vec!["pkg:cargo/serde@1.0.200".into()],
                }]
            );
        }
    }

    #[test]
    fn other_versions_and_schema_violations_are_sbom_invalid_naming_the_place() {
        for spec in ["1.3", "1.7", "2.0"] {
            let error = checked(&cyclonedx(spec)).expect_err(spec);
            assert_eq!(error.code(), "sbom_invalid", "{spec}: {error}");
        }
        let mut document = cyclonedx("1.6");
        document["components"][0]["type"] = json!("banana");
        let error = checked(&document).expect_err("unknown component type");
        assert_eq!(error.code(), "sbom_invalid");
        assert!(error.to_string().contains("/components/0/type"), "{error}");
        let mut document = cyclonedx("1.5");
        document["unexpected"] = json!(true);
        assert_eq!(
            checked(&document).expect_err("extra").code(),
            "sbom_invalid"
        );
        // 1.4 requires `version` (1.5 and 1.6 do not), as the official schemas say.
        let mut document = cyclonedx("1.4");
        document.as_object_mut().expect("object").remove("version");
        assert_eq!(
            checked(&document).expect_err("1.4 version").code(),
            "sbom_invalid"
        );
        let mut document = cyclonedx("1.6");
        document["metadata"]["timestamp"] = json!("yesterday");
        assert_eq!(
            checked(&document).expect_err("format").code(),
            "sbom_invalid"
        );
    }

    #[test]
    fn cyclonedx_is_bound_to_the_spell_and_its_digest() {
        let mut document = cyclonedx("1.6");
        document["metadata"]["component"]["hashes"][0]["content"] =
            json!(ModuleDigest::of(b"other").hex());
        assert_eq!(
            checked(&document).expect_err("digest").code(),
            "sbom_digest_mismatch"
        );
        let mut document = cyclonedx("1.6");
        document["metadata"]["component"]["version"] = json!("1.2.4");
        assert_eq!(
            checked(&document).expect_err("version").code(),
            "sbom_component_mismatch"
        );
        let mut document = cyclonedx("1.6");
        document["metadata"]["component"]["hashes"] = json!([]);
        assert_eq!(
            checked(&document).expect_err("no hash").code(),
            "sbom_digest_mismatch"
        );
    }

    #[test]
    fn spdx_2_3_is_accepted_and_bound_to_the_described_package() {
        let summary = checked(&spdx_document()).expect("SPDX 2.3");
        assert_eq!(summary.format, "SPDX 2.3");
        assert_eq!(summary.components, 1);
        assert_eq!(
            summary.inventory[0].purl.as_deref(),
            Some("pkg:cargo/serde@1.0.200")
        );
        // documentDescribes names the subject as well as a relationship does.
        let mut document = spdx_document();
        document
            .as_object_mut()
            .expect("object")
            .remove("relationships");
        document["documentDescribes"] = json!(["SPDXRef-Package-noop"]);
        checked(&document).expect("documentDescribes");

        let mut document = spdx_document();
        document["packages"][0]["checksums"][0]["checksumValue"] =
            json!(ModuleDigest::of(b"other").hex());
        assert_eq!(
            checked(&document).expect_err("digest").code(),
            "sbom_digest_mismatch"
        );
        let mut document = spdx_document();
        document["packages"][0]["versionInfo"] = json!("9.9.9");
        assert_eq!(
            checked(&document).expect_err("version").code(),
            "sbom_component_mismatch"
        );
        let mut document = spdx_document();
        document
            .as_object_mut()
            .expect("object")
            .remove("relationships");
        assert_eq!(
            checked(&document).expect_err("describes nothing").code(),
            "sbom_invalid"
        );
        let mut document = spdx_document();
        document
            .as_object_mut()
            .expect("object")
            .remove("dataLicense");
        let error = checked(&document).expect_err("schema");
        assert!(error.to_string().contains("dataLicense"), "{error}");
        let mut document = spdx_document();
        document["spdxVersion"] = json!("SPDX-2.2");
        assert_eq!(checked(&document).expect_err("2.2").code(), "sbom_invalid");
    }

    #[test]
    fn generated_sboms_pass_the_official_schema() {
        let sbom = generate(&manifest(), &digest(), None).expect("generates");
        let summary = check(&sbom, &manifest(), &digest()).expect("valid");
        assert_eq!(summary.format, "CycloneDX 1.5");
    }
}
