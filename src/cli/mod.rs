//! Command definitions (clap) and dispatch. Each group of commands lives in its own file.

mod admin;
mod billing;
mod budget;
mod demo;
mod ops;
mod remote;
mod sigstore;
mod spell;
mod spell_build;
mod spell_new;
mod spell_run;
mod spell_schema;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "spellhost",
    version,
    about = "Runs signed WebAssembly spells and bills them by the instruction"
)]
pub struct Cli {
    #[command(flatten)]
    config: admin::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (applies migrations first).
    Serve {
        /// A newcomer's setup: demo user with $1.00, demo signer, example spells, a curl line.
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations.
    Migrate,
    /// Users.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// API keys.
    #[command(subcommand)]
    Key(admin::KeyCommand),
    /// Credit.
    #[command(subcommand)]
    Credits(admin::CreditsCommand),
    /// Signing keys allowed to publish a user's spells.
    #[command(subcommand)]
    Signer(admin::SignerCommand),
    /// The ledger.
    #[command(subcommand)]
    Ledger(admin::LedgerCommand),
    /// Spending limits per account, API key or spell, and calendar period.
    #[command(subcommand)]
    Budget(budget::BudgetCommand),
    /// A user's spend over a time range.
    Usage(budget::UsageArgs),
    /// Stripe recovery: apply events that were never applied, or one again.
    #[command(subcommand)]
    Billing(billing::BillingCommand),
    /// Copy the SQLite database to a new file while the server runs (consistent snapshot).
    Backup(ops::BackupArgs),
    /// Replace the SQLite database with a backup (refused while the database is in use).
    Restore(ops::RestoreArgs),
    /// Migrate PostgreSQL before a deploy (fly.toml's release_command); SQLite: nothing.
    Release(ops::ReleaseArgs),
    /// Exit 0 when the local server answers 200 on /readyz (Docker HEALTHCHECK).
    Healthcheck(ops::HealthcheckArgs),
    /// Spell authoring: keys, SBOMs, signatures, local runs, publishing.
    #[command(subcommand)]
    Spell(spell::SpellCommand),
    /// Sigstore bundles: verify one offline (the sigstore-conformance client protocol).
    #[command(subcommand)]
    Sigstore(sigstore::SigstoreCommand),
    /// Print the HTTP API's OpenAPI 3.1 document (`docs/openapi.json`).
    Openapi,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.config.as_deref();
    match cli.command {
        Command::Serve { demo } => admin::serve(config, demo),
        Command::Migrate => admin::migrate(config),
        Command::User(command) => admin::user(config, command),
        Command::Key(command) => admin::key(config, command),
        Command::Credits(command) => admin::credits(config, command),
        Command::Signer(command) => admin::signer(config, command),
        Command::Ledger(command) => admin::ledger(config, command),
        Command::Budget(command) => budget::budget(config, command),
        Command::Usage(args) => budget::usage(config, args),
        Command::Billing(command) => billing::run(config, command),
        Command::Backup(args) => ops::backup(config, args),
        Command::Restore(args) => ops::restore(config, args),
        Command::Release(args) => ops::release(config, args),
        Command::Healthcheck(args) => ops::healthcheck(config, args),
        Command::Spell(command) => spell::run(command, config),
        Command::Sigstore(command) => sigstore::run(command),
        Command::Openapi => {
            print!("{}", spellhost::http::openapi_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
