//! `docs/spell.schema.json`, the JSON Schema of `spell.toml`, is checked here against the
//! manifests it describes and against the [`Manifest`] struct the server parses them with.

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;
    use spellhost::supply_chain::{Manifest, ManifestLimits};

    use crate::cli::spell_new::{Template, template_files};

    const SCHEMA: &str = include_str!("../../docs/spell.schema.json");

    fn validator() -> jsonschema::Validator {
        let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        jsonschema::options()
            .build(&schema)
            .expect("the schema compiles")
    }

    fn as_json(toml_text: &str) -> Value {
        let table: toml::Table = toml::from_str(toml_text).expect("TOML");
        serde_json::to_value(table).expect("TOML as JSON")
    }

    fn assert_valid(validator: &jsonschema::Validator, what: &str, text: &str) {
        let errors: Vec<String> = validator
            .iter_errors(&as_json(text))
            .map(|error| format!("{}: {error}", error.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{what}: {errors:?}");
    }

    #[test]
    fn every_example_manifest_and_the_template_validate_against_the_schema() {
        let validator = validator();
        let spells = Path::new(env!("CARGO_MANIFEST_DIR")).join("spells");
        let mut checked = 0;
        for entry in std::fs::read_dir(&spells).expect("spells/") {
            let path = entry.expect("entry").path().join("spell.toml");
            if let Ok(text) = std::fs::read_to_string(&path) {
                assert_valid(&validator, &path.display().to_string(), &text);
                checked += 1;
            }
        }
        assert!(checked >= 3, "the examples were found ({checked})");
        let files = template_files(Template::Rust, "my-spell");
        let (_, template) = files
            .iter()
            .find(|(path, _)| *path == "spell.toml")
            .expect("the template has a manifest");
        assert_valid(&validator, "the template", template);
        // It declares its input and output schemas (the server checks casts against the first).
        let json = as_json(template);
        assert_eq!(json["input_schema"]["required"][0], "name", "{template}");
        assert_eq!(
            json["output_schema"]["required"][0], "greeting",
            "{template}"
        );
    }

    #[test]
    fn the_schema_refuses_what_the_server_refuses() {
        let validator = validator();
        for text in [
            "name = \"Hello\"\nversion = \"1.0.0\"",
            "name = \"hello\"\nversion = \"1.0\"",
            "name = \"hello\"\nversion = \"1.0.0\"\nsurprise = 1",
            "name = \"hello\"\nversion = \"1.0.0\"\n[limits]\nfuel_max = 0",
            "name = \"hello\"\nversion = \"1.0.0\"\n[limits]\nfuel = 5",
            "version = \"1.0.0\"",
        ] {
            assert!(!validator.is_valid(&as_json(text)), "{text}");
            assert!(Manifest::parse(text).is_err(), "{text}");
        }
    }

    /// Every field of [`Manifest`] and [`ManifestLimits`] is documented in the schema, with a
    /// description. The patterns below are exhaustive: a new field fails to compile here
    /// until it is added to the schema and to this list.
    #[test]
    fn every_manifest_field_is_documented_in_the_schema() {
        let manifest = Manifest::parse(
            "name = \"x\"\nversion = \"1.0.0\"\ndescription = \"d\"\n[limits]\nfuel_max = 1\nwall_ms_max = 1\nmemory_bytes_max = 1\noutput_bytes_max = 1\n",
        )
        .expect("every documented field parses");
        let Manifest {
            name: _,
            version: _,
            description: _,
            limits,
            input_schema: _,
            output_schema: _,
        } = manifest;
        let ManifestLimits {
            fuel_max: _,
            wall_ms_max: _,
            memory_bytes_max: _,
            output_bytes_max: _,
        } = limits;
        let top = [
            "name",
            "version",
            "description",
            "limits",
            "input_schema",
            "output_schema",
        ];
        let in_limits = [
            "fuel_max",
            "wall_ms_max",
            "memory_bytes_max",
            "output_bytes_max",
        ];
        let schema: Value = serde_json::from_str(SCHEMA).expect("JSON");
        let properties = &schema["properties"];
        for field in top {
            assert!(
                properties[field]["description"].is_string(),
                "spell.toml's {field} is not documented"
            );
        }
        for field in in_limits {
            let documented = &properties["limits"]["properties"][field];
            assert!(documented["description"].is_string(), "limits.{field}");
            assert!(
                documented["x-unit"].is_string(),
                "limits.{field} has no unit"
            );
            assert!(
                documented["x-host-maximum-default"].is_u64(),
                "limits.{field} has no host maximum"
            );
        }
        // input_schema and output_schema (issue 14) are documented ahead of the server's
        // support for them; once Manifest has them, they join the patterns above.
        for field in ["input_schema", "output_schema"] {
            assert!(properties[field]["description"].is_string(), "{field}");
        }
    }

    /// The host maxima the schema gives are the server's defaults.
    #[test]
    fn the_documented_host_maxima_are_the_defaults() {
        let host = spellhost::sandbox::HostLimits::default();
        let schema: Value = serde_json::from_str(SCHEMA).expect("JSON");
        let limits = &schema["properties"]["limits"]["properties"];
        for (field, value) in [
            ("fuel_max", host.fuel_max),
            ("wall_ms_max", host.wall_ms_max),
            ("memory_bytes_max", host.memory_bytes_max),
            ("output_bytes_max", host.output_bytes_max),
        ] {
            assert_eq!(limits[field]["x-host-maximum-default"], value, "{field}");
        }
    }
}
