//! `spell.toml`: a spell's name, version and its own (optional) limits.

use serde::Deserialize;

use super::{GateError, MANIFEST_BYTES_MAX};

/// A parsed, validated `spell.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    pub description: String,
    pub limits: ManifestLimits,
}

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
        })
    }
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
}
