//! `spellhost backup`, `restore` and `healthcheck`: the operator's commands for keeping the
//! embedded database safe and for container health checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use spellhost::config::Config;
use spellhost::ops::backup;

use super::admin::runtime;
use super::print_json;

#[derive(Args)]
pub struct BackupArgs {
    /// The backup file to create (it must not exist).
    #[arg(long)]
    to: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A file made by `spellhost backup`.
    #[arg(long)]
    from: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct HealthcheckArgs {
    /// The path to probe on the configured listen address.
    #[arg(long, default_value = "/readyz")]
    path: String,
}

#[derive(Args)]
pub struct ReleaseArgs {}

/// How long a health probe waits for an answer: Docker's HEALTHCHECK gives it 5 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub fn backup(config_path: Option<&Path>, args: BackupArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_env(config_path)?;
    let report = runtime()?.block_on(backup::backup(&config, &args.to))?;
    if args.json {
        print_json(&json!(report));
    } else {
        println!(
            "backed up to {} ({} bytes, {} ledger entries, chain intact)",
            report.path.display(),
            report.bytes,
            report.ledger_entries
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(config_path: Option<&Path>, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_env(config_path)?;
    let report = runtime()?.block_on(backup::restore(&config, &args.from))?;
    if args.json {
        print_json(&json!(report));
    } else {
        println!(
            "restored {} ({} ledger entries, chain intact)",
            report.path.display(),
            report.ledger_entries
        );
        if let Some(previous) = &report.previous {
            println!("the database it replaced is kept as {}", previous.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What fly.toml's `release_command` runs before a new version takes traffic: migrates
/// PostgreSQL. Release machines have no volume, so for SQLite it does nothing (`serve`
/// applies the migrations when it starts on the machine that has the volume).
pub fn release(config_path: Option<&Path>, _args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_env(config_path)?;
    if spellhost::ops::files::sqlite_file(&config.database_url).is_some() {
        println!(
            "SQLite: migrations are applied by `spellhost serve` at start; nothing to do here"
        );
        return Ok(ExitCode::SUCCESS);
    }
    runtime()?.block_on(async {
        let db = spellhost::store::Db::connect(&config.database_url, 1).await?;
        db.migrate().await?;
        db.close().await;
        println!("migrations applied");
        Ok(ExitCode::SUCCESS)
    })
}

/// Exit 0 when `GET <path>` on the configured listen address answers 200, 1 otherwise. For
/// images without curl (Docker's HEALTHCHECK).
pub fn healthcheck(config_path: Option<&Path>, args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let config = Config::from_env(config_path)?;
    let mut address = config.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let status = probe(address, &args.path)
        .with_context(|| format!("probing http://{address}{}", args.path))?;
    if status == 200 {
        println!("{} {status}", args.path);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} answered {status}", args.path);
        Ok(ExitCode::FAILURE)
    }
}

/// One HTTP/1.0 GET, returning the status code.
fn probe(address: std::net::SocketAddr, path: &str) -> anyhow::Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&address, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: spellhost-healthcheck\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..])?;
        anyhow::ensure!(n > 0, "the connection closed before a status line");
        read += n;
    }
    let line = std::str::from_utf8(&head[..read]).unwrap_or("");
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))
}
