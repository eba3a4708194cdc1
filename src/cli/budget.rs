//! `spellhost budget {set,list,rm}` and `spellhost usage`: budgets and spend for operators,
//! on the database directly, through the same domain functions as the HTTP API.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use spellhost::auth::keys;
use spellhost::money::budgets::{self, Condition, GroupBy, Limits, Period, Scope, Usage};
use spellhost::money::{Budget, MicroUsd};
use spellhost::store::{Db, parse_rfc3339, rfc3339};

use super::admin::{database, load_config, runtime, user_id};
use super::print_json;

/// Which budget: the account's, one key's (`--key spk_…`) or one spell's (`--spell owner/name`).
#[derive(Args)]
pub struct ScopeArgs {
    #[arg(long, conflicts_with = "spell")]
    key: Option<String>,
    #[arg(long)]
    spell: Option<String>,
}

#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Create a budget, or replace the limits of the one for this scope and period.
    Set {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// day, week, month or total (calendar periods in UTC).
        #[arg(long)]
        period: String,
        /// The hard limit in micro-dollars: casts that could take the budget past it are
        /// refused with 402 before they run.
        #[arg(long)]
        hard: i64,
        /// The soft limit in micro-dollars: past it, cast responses carry a warning header.
        #[arg(long)]
        soft: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// List a user's budgets.
    List {
        #[arg(long)]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete the budget for this scope and period.
    Rm {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long)]
        period: String,
        #[arg(long)]
        json: bool,
    },
}

/// `spellhost usage`: a user's spend over a range (default: this month), by group.
#[derive(Args)]
pub struct UsageArgs {
    #[arg(long)]
    user: String,
    /// RFC 3339 start (inclusive).
    #[arg(long)]
    from: Option<String>,
    /// RFC 3339 end (exclusive).
    #[arg(long)]
    to: Option<String>,
    /// day, spell or key.
    #[arg(long, default_value = "day")]
    group_by: String,
    #[arg(long)]
    json: bool,
}

async fn scope(db: &Db, user_id: i64, args: &ScopeArgs) -> anyhow::Result<Scope> {
    if let Some(prefix) = &args.key {
        let id = keys::id_from_prefix(prefix)
            .with_context(|| format!("{prefix:?} is not a key prefix (spk_…)"))?;
        let owned: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM api_keys WHERE id = $1 AND user_id = $2 AND deleted_at_ms IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(db.reader())
        .await?;
        let (key_id,) = owned.with_context(|| format!("the user has no live key {prefix}"))?;
        return Ok(Scope::Key { key_id });
    }
    if let Some(spell) = &args.spell {
        let parsed: spellhost::registry::SpellRef =
            spell.parse().map_err(|e| anyhow::anyhow!("--spell: {e}"))?;
        anyhow::ensure!(
            parsed.version.is_none(),
            "--spell takes owner/name, without a version"
        );
        return Ok(Scope::Spell {
            spell: spell.clone(),
        });
    }
    Ok(Scope::Account)
}

fn period(text: &str) -> anyhow::Result<Period> {
    Period::parse(text)
        .with_context(|| format!("unknown period {text:?}: use day, week, month or total"))
}

fn show(budget: &Budget) -> String {
    let scope = match &budget.scope {
        Scope::Account => "account".to_owned(),
        Scope::Key { key_id } => format!("key {}", keys::prefix_of(key_id)),
        Scope::Spell { spell } => format!("spell {spell}"),
    };
    let soft = budget
        .soft
        .map_or_else(String::new, |s| format!(", soft {s}"));
    format!(
        "{}  {scope} per {}: used {} + held {} of {}{soft}",
        budget.id,
        budget.period.as_str(),
        budget.used,
        budget.held,
        budget.hard
    )
}

pub fn budget(config_path: Option<&Path>, command: BudgetCommand) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    runtime()?.block_on(async move {
        let db = database(&config).await?;
        let now = db.now_ms();
        match command {
            BudgetCommand::Set {
                user,
                scope: args,
                period: text,
                hard,
                soft,
                json,
            } => {
                let user_id = user_id(&db, &user).await?;
                let scope = scope(&db, user_id, &args).await?;
                let limits = Limits::new(hard, soft).map_err(|e| anyhow::anyhow!("--{}", e))?;
                let (budget, created) =
                    budgets::upsert(&db, user_id, &scope, period(&text)?, limits, now).await?;
                if json {
                    print_json(&budget.to_json());
                } else {
                    println!(
                        "{} {}",
                        if created { "created" } else { "updated" },
                        show(&budget)
                    );
                }
            }
            BudgetCommand::List { user, json } => {
                let user_id = user_id(&db, &user).await?;
                let list = budgets::list(&db, user_id, now).await?;
                if json {
                    let list: Vec<_> = list.iter().map(Budget::to_json).collect();
                    print_json(&json!({ "budgets": list }));
                } else {
                    list.iter().for_each(|b| println!("{}", show(b)));
                }
            }
            BudgetCommand::Rm {
                user,
                scope: args,
                period: text,
                json,
            } => {
                let user_id = user_id(&db, &user).await?;
                let scope = scope(&db, user_id, &args).await?;
                let condition = Condition::ScopePeriod(&scope, period(&text)?);
                let deleted = budgets::delete(&db, user_id, condition).await?;
                if json {
                    print_json(&json!({ "deleted": deleted }));
                } else if deleted {
                    println!("deleted");
                }
                if !deleted {
                    eprintln!("no such budget");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn usage(config_path: Option<&Path>, args: UsageArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    runtime()?.block_on(async move {
        let db = database(&config).await?;
        let user_id = user_id(&db, &args.user).await?;
        let (month_start, month_end) = Usage::current_month(db.now_ms());
        let time = |name: &str, value: &Option<String>, default: i64| -> anyhow::Result<i64> {
            value.as_deref().map_or(Ok(default), |text| {
                parse_rfc3339(text).with_context(|| format!("--{name}: not an RFC 3339 time"))
            })
        };
        let from = time("from", &args.from, month_start)?;
        let to = time("to", &args.to, month_end)?;
        let group_by = GroupBy::parse(&args.group_by)
            .with_context(|| format!("--group-by {:?}: use day, spell or key", args.group_by))?;
        let usage = budgets::usage(&db, user_id, from, to, group_by).await?;
        if args.json {
            print_json(&usage.to_json());
            return Ok(ExitCode::SUCCESS);
        }
        println!("{} to {}", rfc3339(usage.from_ms), rfc3339(usage.to_ms));
        for (group, row) in &usage.groups {
            println!(
                "{group:<24} {:>8} casts {:>16} fuel {:>16}",
                row.spend.cast_count,
                row.spend.fuel_used,
                MicroUsd::new(row.spend.cost_microusd).to_string()
            );
        }
        let total = &usage.total.spend;
        println!(
            "{:<24} {:>8} casts {:>16} fuel {:>16}",
            "total",
            total.cast_count,
            total.fuel_used,
            MicroUsd::new(total.cost_microusd).to_string()
        );
        Ok(ExitCode::SUCCESS)
    })
}
