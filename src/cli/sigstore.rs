//! `spellhost sigstore verify-bundle`: the sigstore-conformance client protocol, so that the
//! verification the gate relies on is measured against the public conformance suite.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use spellhost::supply_chain::ModuleDigest;
use spellhost::supply_chain::bundle::{self, Signer, Subject};

#[derive(Subcommand)]
pub enum SigstoreCommand {
    /// Verify a Sigstore bundle offline; exit 0 only when it verifies.
    VerifyBundle(VerifyBundleArgs),
}

#[derive(Args)]
pub struct VerifyBundleArgs {
    /// The bundle (`.sigstore.json`).
    #[arg(long)]
    bundle: PathBuf,
    /// The certificate's exact identity (SAN) for a keyless signature.
    #[arg(long, requires = "certificate_oidc_issuer", conflicts_with = "key")]
    certificate_identity: Option<String>,
    /// The exact OIDC issuer of a keyless signature.
    #[arg(long, requires = "certificate_identity")]
    certificate_oidc_issuer: Option<String>,
    /// A public key file (SPKI PEM) for a managed-key signature.
    #[arg(long, required_unless_present = "certificate_identity")]
    key: Option<PathBuf>,
    /// A trusted root (JSON); without it, the Sigstore public-good root embedded here.
    #[arg(long)]
    trusted_root: Option<PathBuf>,
    /// The artifact's path, or `sha256:<hex>` of it.
    artifact: String,
}

pub fn run(command: SigstoreCommand) -> anyhow::Result<ExitCode> {
    match command {
        SigstoreCommand::VerifyBundle(args) => verify_bundle(args),
    }
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn verify_bundle(args: VerifyBundleArgs) -> anyhow::Result<ExitCode> {
    let bundle_json = read(&args.bundle)?;
    let trusted_root = match &args.trusted_root {
        Some(path) => String::from_utf8(read(path)?)
            .with_context(|| format!("{} is not UTF-8", path.display()))?,
        None => bundle::production_trusted_root().to_owned(),
    };
    let artifact_bytes;
    let subject = if args.artifact.starts_with("sha256:") {
        let digest: ModuleDigest = args
            .artifact
            .parse()
            .with_context(|| format!("artifact {}", args.artifact))?;
        Subject::Sha256(digest)
    } else {
        artifact_bytes = read(&PathBuf::from(&args.artifact))?;
        Subject::Bytes(&artifact_bytes)
    };
    let key_pem;
    let signer = match (
        &args.certificate_identity,
        &args.certificate_oidc_issuer,
        &args.key,
    ) {
        (Some(identity), Some(issuer), None) => Signer::Identity { identity, issuer },
        (None, None, Some(path)) => {
            key_pem = String::from_utf8(read(path)?)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            Signer::Key {
                public_key_pem: &key_pem,
            }
        }
        _ => anyhow::bail!("give --certificate-identity with --certificate-oidc-issuer, or --key"),
    };
    match bundle::verify(&bundle_json, subject, &signer, &trusted_root) {
        Ok(_) => {
            println!("OK");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("rejected ({}): {error}", error.reason());
            Ok(ExitCode::FAILURE)
        }
    }
}
