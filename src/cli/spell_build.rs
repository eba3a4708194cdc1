//! `spellhost spell build`: from a Rust project to a publishable spell directory in one
//! command: the module (cargo, release, `wasm32-wasip1`), a CycloneDX SBOM listing every crate
//! compiled into it, and (with `--key`) its signature.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};

use spellhost::supply_chain::{
    self, Manifest, ModuleDigest, SignaturePolicy, SpellBundle, Verifier,
};

use super::print_json;

/// The only target spells are built for: WASI preview 1 command modules.
pub const WASM_TARGET: &str = "wasm32-wasip1";

#[derive(Args)]
pub struct BuildArgs {
    /// The spell project (Cargo.toml and spell.toml); the spell directory is written there.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Sign the module with this private key (PKCS#8 PEM, from `spell keygen`), writing
    /// `module.wasm.sig`. Without it, attach a Sigstore bundle from CI
    /// (`cosign sign-blob --bundle module.wasm.sigstore.json module.wasm`).
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Everything `spell build` writes, and so removes first: a failed build leaves no SBOM or
/// signature of an older module behind.
const OUTPUTS: [&str; 5] = [
    supply_chain::MODULE_FILE,
    supply_chain::SBOM_FILE,
    supply_chain::SIGNATURE_FILE,
    supply_chain::SIGSTORE_BUNDLE_FILE,
    supply_chain::SBOM_ATTESTATION_FILE,
];

pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let manifest_path = dir.join(supply_chain::MANIFEST_FILE);
    let manifest_text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&manifest_text)
        .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))?;
    // Read the key before building: a wrong path should not cost a build.
    let private_pem = args
        .key
        .as_ref()
        .map(|key| {
            std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))
        })
        .transpose()?;
    ensure_target_installed()?;
    for name in OUTPUTS {
        remove_if_present(&dir.join(name))?;
    }
    let cargo_toml = dir.join("Cargo.toml");
    let wasm_path = cargo_build(&cargo_toml, &manifest.name)?;
    let module =
        std::fs::read(&wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let digest = ModuleDigest::of(&module);
    let inventory = inventory(&cargo_toml)?;
    let sbom = sbom_document(&manifest, &digest, &inventory)?;
    let signature = private_pem
        .map(|pem| supply_chain::signature::sign(&pem, &module))
        .transpose()?;
    // Check the directory as the gate will (signature aside: its key is the server's to know).
    let bundle = SpellBundle {
        module,
        manifest: manifest_text,
        sbom,
        signature: None,
        sbom_attestation: None,
    };
    Verifier::verify(&bundle, SignaturePolicy::SkipForLocalRun)
        .map_err(|error| anyhow::anyhow!("the built spell does not pass the gate: {error}"))?;
    // The module goes last: an interrupted build leaves an incomplete directory, never a
    // module beside another module's SBOM or signature.
    write_atomically(&dir.join(supply_chain::SBOM_FILE), &bundle.sbom)?;
    if let Some(signature) = &signature {
        write_atomically(
            &dir.join(supply_chain::SIGNATURE_FILE),
            signature.as_bytes(),
        )?;
    }
    write_atomically(&dir.join(supply_chain::MODULE_FILE), &bundle.module)?;
    report(
        &args,
        &manifest,
        &digest,
        bundle.module.len(),
        &inventory,
        signature.is_some(),
    );
    Ok(ExitCode::SUCCESS)
}

fn report(
    args: &BuildArgs,
    manifest: &Manifest,
    digest: &ModuleDigest,
    module_bytes: usize,
    inventory: &[Crate],
    signed: bool,
) {
    if args.json {
        print_json(&json!({
            "name": manifest.name,
            "version": manifest.version.to_string(),
            "digest": digest.to_string(),
            "module_bytes": module_bytes,
            "components": inventory.len(),
            "signed": signed,
            "dir": args.dir,
        }));
        return;
    }
    println!(
        "built {}@{} {digest} ({module_bytes} bytes, {} crates in the SBOM)",
        manifest.name,
        manifest.version,
        inventory.len()
    );
    if signed {
        println!(
            "signed: {}",
            args.dir.join(supply_chain::SIGNATURE_FILE).display()
        );
    } else {
        println!(
            "not signed: pass --key, or sign in CI with `cosign sign-blob --bundle module.wasm.sigstore.json module.wasm`"
        );
    }
}

/// Whether the Rust toolchain cargo will use has the standard library for [`WASM_TARGET`].
pub fn target_installed() -> anyhow::Result<bool> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc (is a Rust toolchain installed? https://rustup.rs)")?;
    anyhow::ensure!(output.status.success(), "rustc --print sysroot failed");
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .join("lib")
        .is_dir())
}

fn ensure_target_installed() -> anyhow::Result<()> {
    anyhow::ensure!(
        target_installed()?,
        "the {WASM_TARGET} target is not installed: run `rustup target add {WASM_TARGET}`"
    );
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The caller's `RUSTFLAGS` plus a remapping of the cargo home (where the registry's sources
/// live) to `/cargo`, as `spells/build.sh` does: panic locations of dependencies would otherwise
/// carry the author's home directory into the published module, and its bytes would depend on
/// where the registry happens to be.
fn rustflags_without_local_paths() -> std::ffi::OsString {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let mut flags = std::env::var_os("RUSTFLAGS").unwrap_or_default();
    if let Some(cargo_home) = cargo_home {
        if !flags.is_empty() {
            flags.push(" ");
        }
        flags.push("--remap-path-prefix=");
        flags.push(cargo_home.as_os_str());
        flags.push("=/cargo");
    }
    flags
}

/// Runs `cargo build --release --target wasm32-wasip1` and returns the module it wrote: the
/// binary of the package at `cargo_toml` named like the spell (or its only binary).
fn cargo_build(cargo_toml: &Path, spell_name: &str) -> anyhow::Result<PathBuf> {
    let output = cargo()
        .args(["build", "--release", "--target", WASM_TARGET])
        .env("RUSTFLAGS", rustflags_without_local_paths())
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(cargo_toml)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    anyhow::ensure!(output.status.success(), "cargo build failed");
    let wanted = std::fs::canonicalize(cargo_toml)
        .with_context(|| format!("resolving {}", cargo_toml.display()))?;
    let mut modules = Vec::new();
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let is_bin = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        let (Some(manifest), Some(executable)) = (
            message["manifest_path"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && is_bin && Path::new(manifest) == wanted {
            let name = message["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            modules.push((name, PathBuf::from(executable)));
        }
    }
    match modules.iter().position(|(name, _)| name == spell_name) {
        Some(index) => Ok(modules.swap_remove(index).1),
        None if modules.len() == 1 => Ok(modules.swap_remove(0).1),
        None => anyhow::bail!(
            "cargo built {} binaries for {} and none is named {spell_name:?}: name the spell's binary like the spell",
            modules.len(),
            cargo_toml.display()
        ),
    }
}

/// A crate compiled into the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// `pkg:cargo/name@version` for crates from crates.io.
    pub purl: Option<String>,
    /// The SHA-256 of the `.crate` file, from Cargo.lock's `checksum`.
    pub sha256: Option<String>,
    /// The SPDX expression of its `license` field.
    pub license: Option<String>,
    /// The crates it depends on (normal dependencies that are in the inventory), by ref.
    pub depends_on: Vec<String>,
    /// Whether the spell's own package depends on it directly.
    pub direct: bool,
}

impl Crate {
    fn bom_ref(&self) -> String {
        self.purl
            .clone()
            .unwrap_or_else(|| format!("{}@{}", self.name, self.version))
    }
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetadataPackage>,
    resolve: Option<Resolve>,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct MetadataPackage {
    id: String,
    name: String,
    version: String,
    source: Option<String>,
    license: Option<String>,
    targets: Vec<MetadataTarget>,
}

#[derive(Deserialize)]
struct MetadataTarget {
    kind: Vec<String>,
}

#[derive(Deserialize)]
struct Resolve {
    root: Option<String>,
    nodes: Vec<ResolveNode>,
}

#[derive(Deserialize)]
struct ResolveNode {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Deserialize)]
struct DepKind {
    /// `None` for a normal dependency, `"build"` or `"dev"` otherwise.
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Lock {
    #[serde(default)]
    package: Vec<LockPackage>,
}

#[derive(Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    checksum: Option<String>,
}

/// Every crate compiled into the module: what the spell's package reaches through normal
/// dependencies for [`WASM_TARGET`] (`cargo metadata --filter-platform`), leaving out build and
/// dev dependencies and proc-macros (they run in the compiler, not in the module).
fn inventory(cargo_toml: &Path) -> anyhow::Result<Vec<Crate>> {
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            WASM_TARGET,
        ])
        .arg("--manifest-path")
        .arg(cargo_toml)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    anyhow::ensure!(output.status.success(), "cargo metadata failed");
    let metadata: Metadata =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata's output")?;
    let lock_path = metadata.workspace_root.join("Cargo.lock");
    let lock_text = std::fs::read_to_string(&lock_path)
        .with_context(|| format!("reading {}", lock_path.display()))?;
    let lock: Lock =
        toml::from_str(&lock_text).with_context(|| format!("reading {}", lock_path.display()))?;
    inventory_of(&metadata, &lock)
}

fn inventory_of(metadata: &Metadata, lock: &Lock) -> anyhow::Result<Vec<Crate>> {
    let resolve = metadata
        .resolve
        .as_ref()
        .context("cargo metadata resolved nothing")?;
    let root = resolve
        .root
        .as_ref()
        .context("the manifest is a virtual workspace: point at the spell's package")?;
    let packages: BTreeMap<&str, &MetadataPackage> = metadata
        .packages
        .iter()
        .map(|p| (p.id.as_str(), p))
        .collect();
    let nodes: BTreeMap<&str, &ResolveNode> =
        resolve.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let compiled_in = |id: &str| {
        packages.get(id).is_some_and(|package| {
            !package
                .targets
                .iter()
                .all(|target| target.kind.iter().any(|kind| kind == "proc-macro"))
        })
    };
    let normal_deps = |id: &str| -> Vec<String> {
        nodes
            .get(id)
            .map(|node| {
                node.deps
                    .iter()
                    .filter(|dep| dep.dep_kinds.iter().any(|kind| kind.kind.is_none()))
                    .filter(|dep| compiled_in(&dep.pkg))
                    .map(|dep| dep.pkg.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let direct: BTreeSet<String> = normal_deps(root).into_iter().collect();
    let mut seen = BTreeSet::new();
    let mut pending: Vec<String> = direct.iter().cloned().collect();
    while let Some(id) = pending.pop() {
        if seen.insert(id.clone()) {
            pending.extend(normal_deps(&id));
        }
    }
    let checksums: BTreeMap<(&str, &str), &str> = lock
        .package
        .iter()
        .filter_map(|p| {
            Some((
                (p.name.as_str(), p.version.as_str()),
                p.checksum.as_deref()?,
            ))
        })
        .collect();
    let mut crates: Vec<Crate> = seen
        .iter()
        .filter_map(|id| packages.get(id.as_str()))
        .map(|package| Crate {
            name: package.name.clone(),
            version: package.version.clone(),
            purl: package
                .source
                .as_deref()
                .filter(|source| is_crates_io(source))
                .map(|_| format!("pkg:cargo/{}@{}", package.name, package.version)),
            sha256: checksums
                .get(&(package.name.as_str(), package.version.as_str()))
                .filter(|checksum| is_sha256_hex(checksum))
                .map(|checksum| checksum.to_string()),
            license: package.license.clone(),
            depends_on: Vec::new(),
            direct: direct.contains(&package.id),
        })
        .collect();
    // Dependency edges, by the refs the document gives each crate.
    let refs: BTreeMap<&str, String> = seen
        .iter()
        .filter_map(|id| {
            let package = packages.get(id.as_str())?;
            let index = crates
                .iter()
                .position(|c| c.name == package.name && c.version == package.version)?;
            Some((id.as_str(), crates[index].bom_ref()))
        })
        .collect();
    for (id, reference) in &refs {
        let depends_on: Vec<String> = normal_deps(id)
            .iter()
            .filter_map(|dep| refs.get(dep.as_str()).cloned())
            .collect();
        if let Some(item) = crates.iter_mut().find(|c| c.bom_ref() == *reference) {
            item.depends_on = depends_on;
        }
    }
    crates.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(crates)
}

fn is_crates_io(source: &str) -> bool {
    source == "registry+https://github.com/rust-lang/crates.io-index"
        || source == "sparse+https://index.crates.io/"
}

/// Exactly 64 hex characters (the SBOM library accepts malformed values: check here).
fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The CycloneDX 1.5 document: the inventory as components with their dependency graph, its
/// subject bound to the manifest and the module's digest by [`supply_chain::sbom::generate`].
/// Licence fields the SBOM library refuses as SPDX expressions are left out.
fn sbom_document(
    manifest: &Manifest,
    digest: &ModuleDigest,
    inventory: &[Crate],
) -> anyhow::Result<Vec<u8>> {
    match supply_chain::sbom::generate(
        manifest,
        digest,
        Some(&base_document(manifest, inventory, true)),
    ) {
        Ok(document) => Ok(document),
        Err(_) => Ok(supply_chain::sbom::generate(
            manifest,
            digest,
            Some(&base_document(manifest, inventory, false)),
        )?),
    }
}

fn base_document(manifest: &Manifest, inventory: &[Crate], licenses: bool) -> Vec<u8> {
    let subject = format!("spell:{}@{}", manifest.name, manifest.version);
    let components: Vec<Value> = inventory
        .iter()
        .map(|item| {
            let mut component = json!({
                "type": "library",
                "bom-ref": item.bom_ref(),
                "name": item.name,
                "version": item.version,
            });
            if let Some(purl) = &item.purl {
                component["purl"] = purl.clone().into();
            }
            if let Some(sha256) = &item.sha256 {
                component["hashes"] = json!([{"alg": "SHA-256", "content": sha256}]);
            }
            if let Some(license) = item.license.as_ref().filter(|_| licenses) {
                component["licenses"] = json!([{"expression": license}]);
            }
            component
        })
        .collect();
    let mut dependencies = vec![json!({
        "ref": subject,
        "dependsOn": inventory.iter().filter(|c| c.direct).map(Crate::bom_ref).collect::<Vec<_>>(),
    })];
    dependencies.extend(
        inventory
            .iter()
            .map(|item| json!({"ref": item.bom_ref(), "dependsOn": item.depends_on})),
    );
    let document = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {
                "type": "application",
                "bom-ref": subject,
                "name": manifest.name,
                "version": manifest.version.to_string(),
            },
        },
        "components": components,
        "dependencies": dependencies,
    });
    document.to_string().into_bytes()
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Writes `path` through a temporary file in the same directory and a rename, so that a
/// reader sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .context("an output path has no file name")?
        .to_string_lossy();
    let temporary = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        let registry = "registry+https://github.com/rust-lang/crates.io-index";
        let package = |id: &str, kind: &str| {
            json!({"id": id, "name": id, "version": "1.0.0", "source": registry,
                "license": "MIT OR Apache-2.0", "targets": [{"kind": [kind]}]})
        };
        let normal = |pkg: &str| json!({"pkg": pkg, "dep_kinds": [{"kind": null, "target": null}]});
        let build =
            |pkg: &str| json!({"pkg": pkg, "dep_kinds": [{"kind": "build", "target": null}]});
        let dev = |pkg: &str| json!({"pkg": pkg, "dep_kinds": [{"kind": "dev", "target": null}]});
        serde_json::from_value(json!({
            "workspace_root": "/x",
            "packages": [
                {"id": "spell", "name": "spell", "version": "0.1.0", "source": null,
                    "license": null, "targets": [{"kind": ["bin"]}]},
                package("serde", "lib"), package("serde_derive", "proc-macro"),
                package("syn", "lib"), package("itoa", "lib"), package("cc", "lib"),
                package("proptest", "lib"),
            ],
            "resolve": {"root": "spell", "nodes": [
                {"id": "spell", "deps": [normal("serde"), dev("proptest")]},
                {"id": "serde", "deps": [normal("serde_derive"), normal("itoa"), build("cc")]},
                {"id": "serde_derive", "deps": [normal("syn")]},
                {"id": "itoa", "deps": []}, {"id": "syn", "deps": []},
                {"id": "cc", "deps": []}, {"id": "proptest", "deps": []},
            ]},
        }))
        .expect("metadata")
    }

    #[test]
    fn the_inventory_is_what_is_compiled_into_the_module() {
        let checksum = "a".repeat(64);
        let lock = Lock {
            package: vec![
                LockPackage {
                    name: "serde".into(),
                    version: "1.0.0".into(),
                    checksum: Some(checksum.clone()),
                },
                LockPackage {
                    name: "itoa".into(),
                    version: "1.0.0".into(),
                    checksum: Some("not-a-hash".into()),
                },
            ],
        };
        let crates = inventory_of(&metadata(), &lock).expect("inventory");
        let names: Vec<&str> = crates.iter().map(|c| c.name.as_str()).collect();
        // Not the proc-macro (nor what only it uses), the build or the dev dependency.
        assert_eq!(names, ["itoa", "serde"]);
        let serde = &crates[1];
        assert_eq!(serde.purl.as_deref(), Some("pkg:cargo/serde@1.0.0"));
        assert_eq!(serde.sha256.as_deref(), Some(checksum.as_str()));
        assert!(serde.direct);
        assert_eq!(serde.depends_on, ["pkg:cargo/itoa@1.0.0"]);
        assert_eq!(crates[0].sha256, None, "a malformed checksum is left out");
        assert!(!crates[0].direct);
    }

    #[test]
    fn the_sbom_lists_the_inventory_and_passes_the_gate() {
        let manifest = Manifest::parse("name = \"spell\"\nversion = \"0.1.0\"\n").expect("parses");
        let crates = inventory_of(
            &metadata(),
            &Lock {
                package: Vec::new(),
            },
        )
        .expect("inventory");
        let digest = ModuleDigest::of(b"module");
        let document = sbom_document(&manifest, &digest, &crates).expect("sbom");
        let summary = supply_chain::sbom::check(&document, &manifest, &digest).expect("accepted");
        assert_eq!(summary.format, "CycloneDX 1.5");
        let purls: Vec<_> = summary
            .inventory
            .iter()
            .filter_map(|c| c.purl.clone())
            .collect();
        assert_eq!(purls.len(), 2, "{purls:?}");
        let json: Value = serde_json::from_slice(&document).expect("json");
        assert_eq!(
            json["components"][0]["licenses"][0]["expression"],
            "MIT OR Apache-2.0"
        );
    }

    #[test]
    fn writes_replace_files_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("module.wasm");
        write_atomically(&path, b"one").expect("write");
        write_atomically(&path, b"two").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        remove_if_present(&path).expect("remove");
        remove_if_present(&path).expect("already gone is fine");
    }
}
