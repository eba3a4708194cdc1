//! Readiness (`GET /readyz`): whether this instance should be sent traffic. Unlike liveness
//! (`/healthz`, "the process answers"), it is false while the database does not answer within
//! [`DATABASE_TIMEOUT`] — or, for SQLite, while the database file at the configured path is
//! not the one the server opened — and while the sandbox queue is full.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::files::{FileIdentity, sqlite_file};
use crate::AppState;
use crate::config::Config;

/// How long the database may take to answer a readiness probe. Fly.io's check times out
/// after 2 s; a healthy database answers in milliseconds, so 1 s only fails a database that
/// is gone, locked up or overloaded.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(1);

/// What readiness remembers from start-up: the identity of the SQLite file that was opened.
pub struct Readiness {
    sqlite: Option<(PathBuf, FileIdentity)>,
}

impl Readiness {
    /// Call after the database is connected, so that the file it opened is the one recorded.
    pub fn new(config: &Config) -> anyhow::Result<Readiness> {
        use anyhow::Context as _;
        let sqlite = match sqlite_file(&config.database_url) {
            Some(path) => {
                let identity = FileIdentity::of(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Some((path, identity))
            }
            None => None,
        };
        Ok(Readiness { sqlite })
    }
}

/// One check's verdict.
pub struct Check {
    pub name: &'static str,
    pub ready: bool,
    /// What a person reading the probe needs (never credentials or paths of secrets).
    pub detail: Value,
}

/// Every check, in a fixed order.
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|check| check.ready)
    }

    /// The names of the checks that failed.
    pub fn not_ready(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|check| !check.ready)
            .map(|check| check.name)
            .collect()
    }

    pub fn checks_json(&self) -> Value {
        let mut checks = serde_json::Map::new();
        for check in &self.checks {
            let mut detail = match &check.detail {
                Value::Object(map) => map.clone(),
                _ => serde_json::Map::new(),
            };
            detail.insert("ready".into(), check.ready.into());
            checks.insert(check.name.into(), Value::Object(detail));
        }
        Value::Object(checks)
    }
}

pub async fn check(app: &AppState) -> Report {
    Report {
        checks: vec![database(app).await, sandbox(app)],
    }
}

async fn database(app: &AppState) -> Check {
    let name = "database";
    if let Some((path, opened)) = &app.readiness.sqlite {
        let now = FileIdentity::of(path).ok();
        if now != Some(*opened) {
            tracing::warn!(path = %path.display(), "the SQLite database file is missing or was replaced");
            return Check {
                name,
                ready: false,
                detail: json!({"reason": "the database file is missing or was replaced"}),
            };
        }
    }
    // A table the migrations create: an empty database at the configured place is not ready.
    let probe = sqlx::query_as::<_, (i64,)>("SELECT seq FROM ledger_head WHERE id = 1")
        .fetch_one(app.db.reader());
    match tokio::time::timeout(DATABASE_TIMEOUT, probe).await {
        Ok(Ok(_)) => Check {
            name,
            ready: true,
            detail: json!({}),
        },
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness: the database query failed");
            Check {
                name,
                ready: false,
                detail: json!({"reason": "the database query failed"}),
            }
        }
        Err(_) => Check {
            name,
            ready: false,
            detail: json!({"reason": format!(
                "no answer within {} ms",
                DATABASE_TIMEOUT.as_millis()
            )}),
        },
    }
}

fn sandbox(app: &AppState) -> Check {
    let depth = app.sandbox.queue_depth();
    let capacity = app.config.sandbox.queue_depth;
    let ready = has_capacity(depth, capacity);
    let mut detail = json!({"queue_depth": depth, "queue_capacity": capacity});
    if !ready {
        detail["reason"] = "the sandbox queue is full".into();
    }
    Check {
        name: "sandbox",
        ready,
        detail,
    }
}

/// A new run would be accepted: the queue has room.
fn has_capacity(queue_depth: usize, queue_capacity: usize) -> bool {
    queue_depth < queue_capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_has_no_capacity() {
        assert!(has_capacity(0, 1));
        assert!(has_capacity(63, 64));
        assert!(!has_capacity(64, 64));
        assert!(!has_capacity(0, 0));
    }
}
