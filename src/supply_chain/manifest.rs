//! `spell.toml`: a spell's name, version, its own (optional) limits, and the JSON Schemas of
//! its input and output (optional, written as TOML tables).

use std::sync::Arc;

use serde::Deserialize;

use super::{GateError, MANIFEST_BYTES_MAX};

/// A parsed, validated `spell.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    pub description: String,
    pub limits: ManifestLimits,
    /// `[input_schema]`: what a cast's `input` must be; checked before any money is held.
    pub input_schema: Option<SpellSchema>,
    /// `[output_schema]`: what the spell promises to write (documentation for callers).
    pub output_schema: Option<SpellSchema>,
}

/// A JSON Schema from a manifest, compiled: holding one means it compiled, without fetching
/// anything (no `$ref` outside the schema itself) and with linear-time patterns.
#[derive(Clone)]
pub struct SpellSchema {
    json: Arc<serde_json::Value>,
    validator: Arc<jsonschema::Validator>,
}

/// One way an instance fails a schema, as a client is told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaViolation {
    /// A JSON pointer into the instance (`""` for the whole of it).
    pub instance_path: String,
    pub message: String,
}

/// The most violations reported for one instance: enough to fix a request, bounded work.
pub const SCHEMA_VIOLATIONS_MAX: usize = 10;

/// The longest violation message kept, in bytes.
const VIOLATION_MESSAGE_BYTES_MAX: usize = 300;

/// Refuses every remote or file reference: a schema is self-contained.
struct NoRetrieval;

impl jsonschema::Retrieve for NoRetrieval {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!(
            "{} is outside the schema; references must be local (#/...)",
            uri.as_str()
        )
        .into())
    }
}

impl SpellSchema {
    /// Compiles a schema; the error names the problem.
    pub fn compile(json: serde_json::Value) -> Result<Self, String> {
        let validator = jsonschema::options()
            .with_retriever(NoRetrieval)
            // `pattern` is matched by a linear-time engine: a caller's input must not be able
            // to make a hostile author's pattern backtrack for seconds.
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .build(&json)
            .map_err(|e| e.to_string())?;
        Ok(SpellSchema {
            json: Arc::new(json),
            validator: Arc::new(validator),
        })
    }

    /// The schema as JSON.
    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }

    /// Checks an instance: the first [`SCHEMA_VIOLATIONS_MAX`] violations, or none. Messages
    /// do not quote the instance's values.
    pub fn violations(&self, instance: &serde_json::Value) -> Vec<SchemaViolation> {
        self.validator
            .iter_errors(instance)
            .take(SCHEMA_VIOLATIONS_MAX)
            .map(|error| {
                let mut message = error.masked().to_string();
                if message.len() > VIOLATION_MESSAGE_BYTES_MAX {
                    let mut end = VIOLATION_MESSAGE_BYTES_MAX;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                    message.push('…');
                }
                SchemaViolation {
                    instance_path: error.instance_path().to_string(),
                    message,
                }
            })
            .collect()
    }
}

impl std::fmt::Debug for SpellSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SpellSchema").field(&self.json).finish()
    }
}

impl PartialEq for SpellSchema {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for SpellSchema {}

/// The author's own limits. Each is optional; the host's maxima always cap them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub fuel_max: Option<u64>,
    pub wall_ms_max: Option<u64>,
    pub memory_bytes_max: Option<u64>,
    pub output_bytes_max: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    limits: ManifestLimits,
    input_schema: Option<toml::Table>,
    output_schema: Option<toml::Table>,
}

/// The longest description kept, in bytes: enough for a sentence or two in listings.
const DESCRIPTION_BYTES_MAX: usize = 1024;

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, GateError> {
        let invalid = |message: String| GateError::ManifestInvalid(message);
        if text.len() > MANIFEST_BYTES_MAX {
            return Err(invalid(format!("larger than {MANIFEST_BYTES_MAX} bytes")));
        }
        let raw: RawManifest = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        if !is_valid_name(&raw.name) {
            return Err(invalid(format!(
                "name {:?} must match [a-z0-9-]{{1,64}}",
                raw.name
            )));
        }
        let version = semver::Version::parse(&raw.version)
            .map_err(|e| invalid(format!("version {:?} is not semver: {e}", raw.version)))?;
        if raw.description.len() > DESCRIPTION_BYTES_MAX {
            return Err(invalid(format!(
                "description is longer than {DESCRIPTION_BYTES_MAX} bytes"
            )));
        }
        let limits = raw.limits;
        for (field, value) in [
            ("fuel_max", limits.fuel_max),
            ("wall_ms_max", limits.wall_ms_max),
            ("memory_bytes_max", limits.memory_bytes_max),
            ("output_bytes_max", limits.output_bytes_max),
        ] {
            if value == Some(0) {
                return Err(invalid(format!("limits.{field} must be positive")));
            }
        }
        Ok(Manifest {
            name: raw.name,
            version,
            description: raw.description,
            limits,
            input_schema: schema("input_schema", raw.input_schema)?,
            output_schema: schema("output_schema", raw.output_schema)?,
        })
    }
}

/// A manifest's schema table as JSON, compiled.
fn schema(field: &str, table: Option<toml::Table>) -> Result<Option<SpellSchema>, GateError> {
    let Some(table) = table else {
        return Ok(None);
    };
    let json = serde_json::to_value(&table)
        .map_err(|e| GateError::ManifestInvalid(format!("{field}: {e}")))?;
    SpellSchema::compile(json)
        .map(Some)
        .map_err(|e| GateError::ManifestInvalid(format!("{field} is not a valid JSON Schema: {e}")))
}

/// Spell names: `[a-z0-9-]{1,64}`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
name = "hello"
version = "1.0.0"
description = "Greets by name"
[limits]
fuel_max = 50000000
wall_ms_max = 2000
"#;

    #[test]
    fn a_complete_manifest_parses() {
        let manifest = Manifest::parse(HELLO).expect("valid");
        assert_eq!(manifest.name, "hello");
        assert_eq!(manifest.version, semver::Version::new(1, 0, 0));
        assert_eq!(manifest.limits.fuel_max, Some(50_000_000));
        assert_eq!(manifest.limits.memory_bytes_max, None);
    }

    #[test]
    fn bad_names_versions_and_fields_are_manifest_invalid() {
        for text in [
            "name = \"Hello\"\nversion = \"1.0.0\"",
            "name = \"\"\nversion = \"1.0.0\"",
            &format!("name = \"{}\"\nversion = \"1.0.0\"", "a".repeat(65)),
            "name = \"hello\"\nversion = \"1.0\"",
            "name = \"hello\"\nversion = \"1.0.0\"\nsurprise = 1",
            "name = \"hello\"\nversion = \"1.0.0\"\n[limits]\nfuel_max = 0",
            "name = \"hello\"\nversion = \"1.0.0\"\n[limits]\nfuel_max = -5",
            "not toml at all",
        ] {
            let error = Manifest::parse(text).expect_err(text);
            assert_eq!(error.code(), "manifest_invalid", "{text}");
        }
    }

    const GREETER: &str = r#"
name = "greeter"
version = "1.0.0"
[input_schema]
type = "object"
required = ["name"]
[input_schema.properties.name]
type = "string"
maxLength = 8
[output_schema]
type = "object"
"#;

    #[test]
    fn schemas_written_in_toml_compile_and_check_instances() {
        let manifest = Manifest::parse(GREETER).expect("valid");
        let input = manifest.input_schema.expect("input schema");
        assert_eq!(input.json()["required"], serde_json::json!(["name"]));
        assert!(manifest.output_schema.is_some());
        assert!(
            input
                .violations(&serde_json::json!({"name": "Ada"}))
                .is_empty()
        );
        let violations = input.violations(&serde_json::json!({"name": "Ada Lovelace"}));
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].instance_path, "/name");
        assert!(
            !violations[0].message.contains("Lovelace"),
            "{violations:?}"
        );
        let missing = input.violations(&serde_json::json!({}));
        assert_eq!(missing[0].instance_path, "");
    }

    #[test]
    fn a_schema_that_does_not_compile_or_reaches_outside_is_manifest_invalid() {
        for schema in [
            "[input_schema]\ntype = \"objekt\"",
            "[input_schema]\nminLength = -1",
            "[input_schema]\n\"$ref\" = \"https://example.com/schema.json\"",
            "[output_schema]\ntype = 5",
        ] {
            let text = format!("name = \"a\"\nversion = \"1.0.0\"\n{schema}");
            let error = Manifest::parse(&text).expect_err(&text);
            assert_eq!(error.code(), "manifest_invalid", "{text}");
            assert!(
                error
                    .to_string()
                    .contains("_schema is not a valid JSON Schema"),
                "{error}"
            );
        }
    }
}
