//! `spellhost spell new`: a ready-to-build spell project from a template embedded in the
//! binary (so that an installed `spellhost` needs no source checkout).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde_json::json;

use spellhost::supply_chain::manifest::is_valid_name;

use super::print_json;

#[derive(Args)]
pub struct NewArgs {
    /// The spell's name (`[a-z0-9-]{1,64}`); the project is created in `./NAME`.
    name: String,
    /// The project's language and layout.
    #[arg(long, value_enum, default_value_t = Template::Rust)]
    template: Template,
    /// Create the project in this directory instead of `./NAME` (it must not exist or be
    /// empty).
    #[arg(long)]
    path: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Template {
    /// Rust for `wasm32-wasip1`: serde types in and out, the small-module release profile.
    Rust,
}

/// The `rust` template: (path in the project, text with `{{name}}` placeholders).
const RUST_TEMPLATE: [(&str, &str); 6] = [
    ("Cargo.toml", include_str!("templates/rust/Cargo.toml.tmpl")),
    // serde and serde_json at the versions the example spells are built and tested with.
    ("Cargo.lock", include_str!("templates/rust/Cargo.lock.tmpl")),
    (
        "src/main.rs",
        include_str!("templates/rust/src/main.rs.tmpl"),
    ),
    ("spell.toml", include_str!("templates/rust/spell.toml.tmpl")),
    ("README.md", include_str!("templates/rust/README.md.tmpl")),
    (".gitignore", include_str!("templates/rust/gitignore.tmpl")),
];

/// The files of `template` for a spell called `name`.
pub fn template_files(template: Template, name: &str) -> Vec<(&'static str, String)> {
    let files = match template {
        Template::Rust => &RUST_TEMPLATE,
    };
    files
        .iter()
        .map(|(path, text)| (*path, text.replace("{{name}}", name)))
        .collect()
}

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        is_valid_name(&args.name),
        "{:?} is not a spell name: use 1 to 64 of a-z, 0-9 and -",
        args.name
    );
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    ensure_empty(&dir)?;
    for (relative, text) in template_files(args.template, &args.name) {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        print_json(&json!({"name": args.name, "path": dir}));
    } else {
        let shown = dir.display();
        println!("created the spell {} in {shown}", args.name);
        println!("next:");
        println!("  rustup target add wasm32-wasip1     # once, if missing");
        println!("  spellhost spell build {shown}");
        println!("  echo '{{\"name\":\"Ada\"}}' | spellhost spell run {shown} --input -");
        println!("  (see {shown}/README.md for signing and publishing)");
    }
    Ok(ExitCode::SUCCESS)
}

/// A new project goes into a directory that does not exist yet, or is empty.
fn ensure_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => anyhow::ensure!(
            entries.next().is_none(),
            "{} exists and is not empty",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spellhost::supply_chain::Manifest;

    #[test]
    fn the_rust_template_names_the_spell_everywhere_and_its_manifest_parses() {
        let files = template_files(Template::Rust, "my-spell");
        for (path, text) in &files {
            assert!(!text.contains("{{"), "{path} keeps a placeholder");
        }
        let text = |wanted: &str| {
            files
                .iter()
                .find(|(path, _)| *path == wanted)
                .map(|(_, text)| text.clone())
                .expect("file in the template")
        };
        let manifest = Manifest::parse(&text("spell.toml")).expect("the manifest parses");
        assert_eq!(manifest.name, "my-spell");
        assert!(manifest.limits.fuel_max.is_some());
        let cargo: toml::Table = toml::from_str(&text("Cargo.toml")).expect("Cargo.toml parses");
        assert_eq!(cargo["package"]["name"].as_str(), Some("my-spell"));
        assert_eq!(cargo["profile"]["release"]["opt-level"].as_str(), Some("z"));
        let lock: toml::Table = toml::from_str(&text("Cargo.lock")).expect("Cargo.lock parses");
        assert!(lock["package"].as_array().is_some_and(|packages| {
            packages
                .iter()
                .any(|p| p["name"].as_str() == Some("my-spell"))
        }));
    }

    #[test]
    fn the_template_release_profile_is_the_example_spells_one() {
        let examples: toml::Table = toml::from_str(include_str!("../../spells/Cargo.toml"))
            .expect("spells/Cargo.toml parses");
        let files = template_files(Template::Rust, "x");
        let cargo: toml::Table = toml::from_str(&files[0].1).expect("parses");
        assert_eq!(
            cargo["profile"]["release"], examples["profile"]["release"],
            "keep the template's release profile equal to spells/Cargo.toml's"
        );
    }

    #[test]
    fn a_project_is_not_written_over_a_non_empty_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_empty(dir.path()).expect("empty is fine");
        ensure_empty(&dir.path().join("missing")).expect("missing is fine");
        std::fs::write(dir.path().join("file"), "x").expect("write");
        assert!(ensure_empty(dir.path()).is_err());
    }
}
