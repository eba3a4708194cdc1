//! Command definitions (clap) and dispatch. Each command lives in its own file.

mod spell;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "spellhost",
    version,
    about = "Runs signed WebAssembly spells and bills them by the instruction"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Spell authoring: keys, SBOMs, signatures, local runs.
    #[command(subcommand)]
    Spell(spell::SpellCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Spell(command) => spell::run(command),
    }
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
