//! `spellhost serve`, `migrate` and the operator's admin commands. Admin commands work on the
//! database directly, with the same configuration as the server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use spellhost::auth::{self, Authenticator};
use spellhost::config::Config;
use spellhost::money::{self, ChainCheck, EntryKind, MicroUsd};
use spellhost::registry::NewSigner;
use spellhost::store::Db;
use spellhost::supply_chain::SpellBundle;
use spellhost::{AppState, telemetry};

use super::print_json;

#[derive(Args)]
pub struct ConfigArgs {
    /// A TOML file of settings (keys are the SPELLHOST_* names without the prefix, in lower
    /// case); environment variables override it.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        #[arg(long)]
        handle: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key for a user; the key is printed once.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CreditsCommand {
    /// Grant credit (a ledger `grant` entry).
    Grant {
        #[arg(long)]
        user: String,
        #[arg(long)]
        amount_microusd: i64,
        #[arg(long, default_value = "operator grant")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SignerCommand {
    /// Register who may sign a user's spells: a public key, or a keyless identity (the OIDC
    /// issuer, and the certificate identity exactly or by an anchored pattern).
    Add {
        /// Operators: register for this user on the configured database.
        #[arg(long, required_unless_present = "server", conflicts_with = "server")]
        user: Option<String>,
        /// Register over HTTP on this server (`POST /v1/signers`) with your API key.
        #[arg(long)]
        server: Option<String>,
        /// Your API key for `--server`.
        #[arg(long, env = "SPELLHOST_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// With --server and --public-key: the matching private key, to sign the proof of
        /// possession the server asks for (it is not sent).
        #[arg(long, requires = "public_key")]
        key: Option<PathBuf>,
        #[arg(long, required_unless_present = "issuer", conflicts_with = "issuer")]
        public_key: Option<PathBuf>,
        #[arg(long, requires = "issuer", conflicts_with = "identity_regex")]
        identity: Option<String>,
        #[arg(long, requires = "issuer")]
        identity_regex: Option<String>,
        #[arg(long)]
        issuer: Option<String>,
        /// For --issuer: the Sigstore instance (a root pinned with
        /// SPELLHOST_SIGSTORE_TRUSTED_ROOTS) whose certificates count; default public-good.
        #[arg(long, requires = "issuer")]
        sigstore_instance: Option<String>,
        /// Every version this signer signs must come with a signed SBOM (an in-toto
        /// attestation whose predicate is the SBOM), verified under the same key or identity.
        #[arg(long)]
        require_signed_sbom: bool,
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Recompute the hash chain, the running totals and every balance: exit 0 with the entry
    /// count when intact.
    Verify {
        /// Also prove the chain still passes through this head, exported earlier with `ledger
        /// head` and kept outside the database: no entry up to it was rewritten or removed.
        #[arg(long, value_name = "HASH@SEQ")]
        expect_head: Option<money::ledger::Anchor>,
        #[arg(long)]
        json: bool,
    },
    /// Print the head of the chain (`HASH@SEQ`), to keep outside the database.
    Head {
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = Config::from_env(path)?;
    config.ensure_secret()?;
    Ok(config)
}

/// Connects and migrates, for admin commands.
pub(super) async fn database(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&config.database_url, 2).await?;
    db.migrate().await?;
    Ok(db)
}

pub(super) async fn user_id(db: &Db, handle: &str) -> anyhow::Result<i64> {
    Ok(auth::user_by_handle(db, handle)
        .await?
        .with_context(|| format!("no user {handle:?}"))?
        .id)
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

pub fn serve(config_path: Option<&Path>, demo: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    telemetry::init_logging(config.log_json);
    tracing::info!(?config, "starting");
    // Before any thread is started: they all inherit it, and the wasm and compile threads
    // give it back as they start (src/threads.rs).
    if let Some(slice) = config.service_thread_slice
        && let Err(error) = spellhost::threads::set_slice_of_this_thread(Some(slice))
    {
        tracing::warn!(%error, "could not set the service threads' time slice");
    }
    runtime()?.block_on(async move {
        let listen = config.listen;
        let app = AppState::build(config).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let address = listener.local_addr()?;
        if demo {
            super::demo::setup(&app, address).await?;
        }
        eprintln!("spellhost listening on http://{address}");
        spellhost::serve(app, listener, shutdown_signal()).await?;
        eprintln!("spellhost stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGTERM (Fly.io, systemd) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing casts in flight");
}

pub fn migrate(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    runtime()?.block_on(async move {
        database(&config).await?;
        println!("migrations applied");
        Ok(ExitCode::SUCCESS)
    })
}

pub fn user(config_path: Option<&Path>, command: UserCommand) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let UserCommand::Create {
        handle,
        email,
        admin,
        json,
    } = command;
    runtime()?.block_on(async move {
        let db = database(&config).await?;
        let user = auth::create_user(&db, &handle, &email, admin).await?;
        if json {
            print_json(&json!({"id": user.id, "handle": user.handle, "is_admin": user.is_admin}));
        } else {
            println!("created user {}", user.handle);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn key(config_path: Option<&Path>, command: KeyCommand) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let KeyCommand::Create { user, name, json } = command;
    runtime()?.block_on(async move {
        let db = database(&config).await?;
        let user_id = user_id(&db, &user).await?;
        let authenticator = Authenticator::new(db, config.derived_key("verified api keys"));
        let (key, info) = authenticator
            .create_key(user_id, &auth::KeySpec::unrestricted(&name))
            .await?;
        if json {
            print_json(&json!({"id": info.prefix, "key": key.expose()}));
        } else {
            println!("{}", key.expose());
            eprintln!("this key is shown once; store it now");
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn credits(config_path: Option<&Path>, command: CreditsCommand) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let CreditsCommand::Grant {
        user,
        amount_microusd,
        reason,
        json,
    } = command;
    anyhow::ensure!(amount_microusd > 0, "--amount-microusd must be positive");
    runtime()?.block_on(async move {
        let db = database(&config).await?;
        let user_id = user_id(&db, &user).await?;
        let entry = money::post(
            &db,
            user_id,
            EntryKind::Grant,
            MicroUsd::new(amount_microusd),
            &reason,
        )
        .await?;
        if json {
            print_json(
                &json!({"seq": entry.seq, "balance_microusd": entry.balance_after_microusd}),
            );
        } else {
            println!(
                "granted {} to {user}; balance {}",
                MicroUsd::new(amount_microusd),
                MicroUsd::new(entry.balance_after_microusd)
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn signer(config_path: Option<&Path>, command: SignerCommand) -> anyhow::Result<ExitCode> {
    let SignerCommand::Add {
        user,
        server,
        api_key,
        key,
        public_key,
        identity,
        identity_regex,
        issuer,
        sigstore_instance,
        require_signed_sbom,
        name,
        json,
    } = command;
    let new_signer = match (public_key, issuer) {
        (Some(path), _) => NewSigner::Key {
            public_key_pem: std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        },
        (None, Some(issuer)) => NewSigner::Identity {
            identity,
            identity_regex,
            issuer,
            sigstore_instance,
        },
        (None, None) => anyhow::bail!("give --public-key, or --issuer with --identity"),
    };
    let user = match (server, user) {
        (Some(server), _) => {
            let remote = super::remote::Remote::new(&server, api_key.as_deref())?;
            let signer = remote_signer(new_signer, key.as_deref())?;
            return super::remote::add_signer(remote, &name, signer, require_signed_sbom, json);
        }
        (None, Some(user)) => user,
        (None, None) => anyhow::bail!("give --server URL (or, for operators, --user)"),
    };
    let config = load_config(config_path)?;
    runtime()?.block_on(async move {
        let app = AppState::build(config).await?;
        let user_id = user_id(&app.db, &user).await?;
        let signer = app
            .registry
            .add_signer(user_id, &name, new_signer, require_signed_sbom)
            .await?;
        if json {
            print_json(&json!({"id": signer.id, "name": signer.name}));
        } else {
            println!("registered signer {:?} for {user}", signer.name);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A signer to register over HTTP: a key signer needs its private key for the proof.
fn remote_signer(
    signer: NewSigner,
    key: Option<&Path>,
) -> anyhow::Result<super::remote::RemoteSigner> {
    use super::remote::RemoteSigner;
    Ok(match signer {
        NewSigner::Key { public_key_pem } => {
            let key = key.context(
                "with --server, a key signer needs --key (the private key, to prove possession)",
            )?;
            let private_key_pem = std::fs::read_to_string(key)
                .with_context(|| format!("reading {}", key.display()))?;
            RemoteSigner::Key {
                public_key_pem,
                private_key_pem,
            }
        }
        NewSigner::Identity {
            identity,
            identity_regex,
            issuer,
            sigstore_instance,
        } => RemoteSigner::Identity {
            identity,
            identity_regex,
            issuer,
            sigstore_instance,
        },
    })
}

pub fn publish(
    config_path: Option<&Path>,
    dir: &Path,
    user: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let bundle = SpellBundle::read_dir(dir)?;
    runtime()?.block_on(async move {
        let app = AppState::build(config).await?;
        let owner = auth::user_by_handle(&app.db, user)
            .await?
            .with_context(|| format!("no user {user:?}"))?;
        match app.registry.publish(owner.id, &owner.handle, bundle).await {
            Ok(published) => {
                if json {
                    print_json(&json!(published));
                } else {
                    println!(
                        "published {}@{} {}",
                        published.spell, published.version, published.digest
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(spellhost::registry::RegistryError::Gate(error)) => {
                if json {
                    print_json(&json!({"code": error.code(), "message": error.to_string()}));
                } else {
                    println!("{}", error.code());
                    eprintln!("{error}");
                }
                Ok(ExitCode::FAILURE)
            }
            Err(error) => Err(error.into()),
        }
    })
}

pub fn ledger(config_path: Option<&Path>, command: LedgerCommand) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    runtime()?.block_on(async move {
        let db = database(&config).await?;
        match command {
            LedgerCommand::Head { json } => {
                let head = money::ledger::head(&db).await?;
                if json {
                    print_json(
                        &json!({"seq": head.seq, "hash": head.hash, "anchor": head.to_string()}),
                    );
                } else {
                    println!("{head}");
                }
                Ok(ExitCode::SUCCESS)
            }
            LedgerCommand::Verify { expect_head, json } => {
                let check = money::ledger::verify_chain_anchored(&db, expect_head.as_ref()).await?;
                Ok(report_check(check, json))
            }
        }
    })
}

fn report_check(check: ChainCheck, json: bool) -> ExitCode {
    match check {
        ChainCheck::Intact { entries } => {
            if json {
                print_json(&json!({"intact": true, "entries": entries}));
            } else {
                println!("ledger intact: {entries} entries");
            }
            ExitCode::SUCCESS
        }
        ChainCheck::Broken { seq, reason } => {
            if json {
                print_json(&json!({"intact": false, "first_bad_seq": seq, "reason": reason}));
            } else {
                println!("ledger broken at seq {seq}: {reason}");
            }
            ExitCode::FAILURE
        }
    }
}
