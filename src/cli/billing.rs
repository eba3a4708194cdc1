//! `spellhost billing reconcile|replay`: the operator's recovery tools for Stripe events. Both
//! apply events through the same code as the webhook, so running them twice changes nothing.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use spellhost::billing::{Billing, ReceiveError, ReconciledEvent};

use super::admin::{database, load_config, runtime};
use super::print_json;

/// Stripe lists events of the last 30 days: by default, reconcile all of them.
const EVENTS_KEPT_SECONDS: i64 = 30 * 24 * 3600;

#[derive(Subcommand)]
pub enum BillingCommand {
    /// List Stripe's events (`GET /v1/events`) and apply those never applied.
    Reconcile {
        /// Events created at or after this time: RFC 3339 (2026-11-20T00:00:00Z) or Unix
        /// seconds. Default: 30 days ago, all that Stripe keeps.
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Only events whose webhook delivery has not succeeded (`delivery_success=false`).
        #[arg(long)]
        undelivered: bool,
        #[arg(long)]
        json: bool,
    },
    /// Apply one event again (e.g. a rejected one, after review). Idempotent.
    Replay {
        /// The event id, `evt_…`.
        event_id: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("expected RFC 3339 or Unix seconds: {e}"))
}

pub fn run(config_path: Option<&Path>, command: BillingCommand) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let billing = Billing::from_config(&config)?
        .context("billing is not configured: set SPELLHOST_STRIPE_SECRET_KEY and SPELLHOST_STRIPE_WEBHOOK_SECRET")?;
    runtime()?.block_on(async move {
        let db = database(&config).await?;
        match command {
            BillingCommand::Reconcile {
                since,
                undelivered,
                json,
            } => {
                let since = since.unwrap_or_else(|| {
                    time::OffsetDateTime::now_utc().unix_timestamp() - EVENTS_KEPT_SECONDS
                });
                let report = billing.reconcile(&db, since, undelivered).await?;
                if json {
                    print_json(&json!(report));
                } else {
                    println!(
                        "{} events listed, {} not acted on, {} recorded before, {} applied now",
                        report.listed,
                        report.not_acted_on,
                        report.already_recorded.values().sum::<u64>(),
                        report.events.len()
                    );
                    for event in &report.events {
                        print_event(event);
                    }
                }
                // Refused (unreadable) or rejected events need the operator: exit non-zero.
                let attention = report.events.iter().any(|e| {
                    matches!(
                        e.result.as_str(),
                        "unparseable" | "api_version_unsupported" | "rejected"
                    )
                });
                Ok(exit(!attention))
            }
            BillingCommand::Replay { event_id, json } => match billing.replay(&db, &event_id).await
            {
                Ok(received) => {
                    let event = ReconciledEvent::from_received(&received);
                    if json {
                        print_json(&json!(event));
                    } else {
                        print_event(&event);
                    }
                    Ok(exit(event.result != "rejected"))
                }
                Err(ReceiveError::Unreadable(error)) => {
                    anyhow::bail!("{error}")
                }
                Err(ReceiveError::Billing(error)) => Err(error.into()),
            },
        }
    })
}

fn print_event(event: &ReconciledEvent) {
    match &event.reason {
        Some(reason) => println!("{} {} {}: {reason}", event.id, event.type_, event.result),
        None => println!("{} {} {}", event.id, event.type_, event.result),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
