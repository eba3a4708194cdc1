//! `spellhost spell …`: what a spell author runs on their own machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use spellhost::supply_chain::{
    self, GateError, IdentityPolicy, Manifest, ModuleDigest, SignaturePolicy, Signer, SignerKey,
    SpellBundle, TrustedRoots, Verifier,
};

use super::print_json;

#[derive(Subcommand)]
pub enum SpellCommand {
    /// Write a new P-256 signing key pair: DIR/spell.key (PKCS#8, mode 0600) and DIR/spell.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write DIR/sbom.cdx.json (CycloneDX 1.5) binding module.wasm to spell.toml.
    Sbom {
        dir: PathBuf,
        /// Keep this document's components and bind its metadata component to the spell.
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write DIR/module.wasm.sig: base64 ECDSA P-256 signature, as `cosign sign-blob --key`.
    Sign {
        dir: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a spell directory exactly as the server does (its `module.wasm.sigstore.json`,
    /// else its `module.wasm.sig`); prints `sha256:<hex>`.
    Verify {
        dir: PathBuf,
        #[command(flatten)]
        signer: SignerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Run a spell directory or a bare .wasm locally, under the server's configured limits,
    /// and report fuel, wall time, peak memory, output size and the cost at its prices.
    Run(super::spell_run::RunArgs),
    /// Publish a spell directory: over HTTP to `--server` with your API key (multipart
    /// `POST /v1/spells`), or, for operators, straight into the database for `--user`.
    Publish {
        dir: PathBuf,
        /// The server's base URL, e.g. `https://spells.example.com`.
        #[arg(long, required_unless_present = "user", conflicts_with = "user")]
        server: Option<String>,
        /// Your API key for `--server`.
        #[arg(long, env = "SPELLHOST_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Operators: publish for this user on the configured database (same verification as
        /// `POST /v1/spells`).
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Create a ready-to-build spell project (`--template rust`): Cargo.toml, src/main.rs
    /// with typed JSON input and output, spell.toml, README.
    New(super::spell_new::NewArgs),
    /// Build a spell project into a publishable spell directory: module.wasm (cargo, release,
    /// wasm32-wasip1), a CycloneDX SBOM of every crate compiled in, and with `--key` its
    /// signature.
    Build(super::spell_build::BuildArgs),
}

/// The signer a local check expects: a key, or a keyless identity and issuer.
#[derive(Args)]
pub struct SignerArgs {
    /// An SPKI PEM public key: the signature or the bundle's managed key must be this one.
    #[arg(long, conflicts_with_all = ["identity", "identity_regex"])]
    public_key: Option<PathBuf>,
    /// A keyless bundle's certificate identity (SAN), exactly.
    #[arg(long, requires = "issuer", conflicts_with = "identity_regex")]
    identity: Option<String>,
    /// A keyless bundle's certificate identity, by an anchored pattern (`^…$`).
    #[arg(long, requires = "issuer")]
    identity_regex: Option<String>,
    /// A keyless bundle's OIDC issuer, exactly.
    #[arg(long)]
    issuer: Option<String>,
    /// A private Sigstore deployment's `trusted_root.json` (`[name=]path`; named by its file
    /// stem otherwise), accepted besides the public-good root (repeatable).
    #[arg(long)]
    trusted_root: Vec<PathBuf>,
    /// With --issuer: the instance whose certificates count, a --trusted-root's name
    /// (default: the public-good instance), as a signer's `sigstore_instance` on the server.
    #[arg(long, requires = "issuer")]
    sigstore_instance: Option<String>,
}

impl SignerArgs {
    /// The signer asked for, if any, and the roots to verify bundles against.
    pub(super) fn signers(&self) -> anyhow::Result<Option<(Signer, TrustedRoots)>> {
        let signer = match (&self.public_key, &self.issuer) {
            (Some(path), None) => Signer::Key(read_key(path)?),
            (None, Some(issuer)) => Signer::Identity(
                IdentityPolicy::new(
                    self.identity.as_deref(),
                    self.identity_regex.as_deref(),
                    issuer,
                )
                .context("--identity/--identity-regex/--issuer")?
                .on_instance(
                    self.sigstore_instance
                        .as_deref()
                        .unwrap_or(supply_chain::bundle::PUBLIC_GOOD),
                ),
            ),
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => anyhow::bail!("give --public-key or --issuer, not both"),
        };
        let roots = TrustedRoots::public_good_and(&self.trusted_root)
            .map_err(|message| anyhow::anyhow!("--trusted-root {message}"))?;
        Ok(Some((signer, roots)))
    }
}

pub fn run(command: SpellCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    match command {
        SpellCommand::Keygen { out, json } => keygen(&out, json),
        SpellCommand::Sbom { dir, from, json } => sbom(&dir, from.as_deref(), json),
        SpellCommand::Sign { dir, key, json } => sign(&dir, &key, json),
        SpellCommand::Verify { dir, signer, json } => verify(&dir, &signer, json),
        SpellCommand::Run(args) => super::spell_run::run_local(args, config),
        SpellCommand::Publish {
            dir,
            server,
            api_key,
            user,
            json,
        } => match (server, user) {
            (Some(server), _) => super::remote::publish(&server, api_key.as_deref(), &dir, json),
            (None, Some(user)) => super::admin::publish(config, &dir, &user, json),
            (None, None) => anyhow::bail!("give --server URL (or, for operators, --user)"),
        },
        SpellCommand::New(args) => super::spell_new::new(args),
        SpellCommand::Build(args) => super::spell_build::build(args),
    }
}

fn keygen(out: &Path, json: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (private_pem, public_pem) = supply_chain::signature::generate_key_pair()?;
    let key_path = out.join("spell.key");
    let pub_path = out.join("spell.pub");
    write_private(&key_path, private_pem.as_bytes())?;
    std::fs::write(&pub_path, public_pem)
        .with_context(|| format!("writing {}", pub_path.display()))?;
    if json {
        print_json(&json!({"private_key": key_path, "public_key": pub_path}));
    } else {
        println!(
            "wrote {} (keep it secret) and {}",
            key_path.display(),
            pub_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates a file readable only by its owner, refusing to overwrite an existing key.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(contents)?;
    Ok(())
}

fn read_manifest_and_module(dir: &Path) -> anyhow::Result<(Manifest, Vec<u8>)> {
    let manifest_path = dir.join(supply_chain::MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest = Manifest::parse(&text)?;
    let module_path = dir.join(supply_chain::MODULE_FILE);
    let module = std::fs::read(&module_path)
        .with_context(|| format!("reading {}", module_path.display()))?;
    Ok((manifest, module))
}

fn sbom(dir: &Path, from: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let (manifest, module) = read_manifest_and_module(dir)?;
    let digest = ModuleDigest::of(&module);
    let base = from
        .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
        .transpose()?;
    let document = supply_chain::sbom::generate(&manifest, &digest, base.as_deref())?;
    let path = dir.join(supply_chain::SBOM_FILE);
    std::fs::write(&path, document).with_context(|| format!("writing {}", path.display()))?;
    if json {
        print_json(&json!({"sbom": path, "digest": digest.to_string()}));
    } else {
        println!("wrote {} for {digest}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn sign(dir: &Path, key: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (_, module) = read_manifest_and_module(dir)?;
    let private_pem =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let signature = supply_chain::signature::sign(&private_pem, &module)?;
    let path = dir.join(supply_chain::SIGNATURE_FILE);
    std::fs::write(&path, &signature).with_context(|| format!("writing {}", path.display()))?;
    let digest = ModuleDigest::of(&module);
    if json {
        print_json(&json!({"signature": path, "digest": digest.to_string()}));
    } else {
        println!("wrote {} for {digest}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn read_key(path: &Path) -> anyhow::Result<SignerKey> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SignerKey::from_pem(&pem)
        .with_context(|| format!("{} is not a usable public key", path.display()))
}

fn verify(dir: &Path, signer: &SignerArgs, json: bool) -> anyhow::Result<ExitCode> {
    let Some((signer, roots)) = signer.signers()? else {
        anyhow::bail!("give the expected signer: --public-key, or --identity and --issuer");
    };
    let bundle = SpellBundle::read_dir(dir)?;
    match Verifier::verify(
        &bundle,
        SignaturePolicy::AnyOf(std::slice::from_ref(&signer), &roots),
    ) {
        Ok(module) => {
            let evidence = module
                .signed_by()
                .map(|s| s.evidence.clone())
                .unwrap_or_default();
            if json {
                print_json(&json!({"ok": true, "digest": module.digest().to_string(),
                    "name": module.manifest().name, "version": module.manifest().version.to_string(),
                    "identity": evidence.identity, "issuer": evidence.issuer,
                    "tlog_index": evidence.log_index, "tlog_integrated_time": evidence.integrated_time}));
            } else {
                println!("{}", module.digest());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            print_rejection(&error, json);
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(super) fn print_rejection(error: &GateError, json: bool) {
    if json {
        print_json(&json!({"ok": false, "code": error.code(), "message": error.to_string()}));
    } else {
        println!("{}", error.code());
        eprintln!("{error}");
    }
}
