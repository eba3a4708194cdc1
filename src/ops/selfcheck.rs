//! The server's periodic self-check: re-verifies the newest ledger entries (and every entry
//! appended since the last pass) and counts leases stuck past their expiry, exporting
//! `spellhost_ledger_verified_seq`, `spellhost_ledger_head_seq`,
//! `spellhost_ledger_verify_failures_total` and `spellhost_holds_expired`.
//!
//! A pass checks what `spellhost ledger verify` checks over a window: gapless `seq`, each
//! `prev_hash` linking to the entry before, each hash recomputed, each user's running
//! balance from their previous entry in the window, and the head. The first entry of the
//! window anchors the links (its own hash is still recomputed). The full walk from seq 1
//! stays with `spellhost ledger verify`.
//!
//! A lease past its expiry belongs to an instance that died; the sweeper (every third of the
//! lease TTL) gives its money back. One still there a minute later means the sweeper is
//! failing, and that customer's money is stuck: `spellhost_holds_expired` counts them (the
//! name predates leases; dashboards and alerts use it).

use std::collections::HashMap;
use std::time::Duration;

use crate::App;
use crate::money::LedgerEntry;
use crate::money::ledger::LEDGER_COLUMNS;
use crate::store::Db;
use crate::telemetry::Metrics;

/// Entries re-verified on every pass even if verified before: an entry edited after it was
/// checked is caught while it is among the newest thousand.
const WINDOW_ENTRIES: i64 = 1_000;
/// The most entries one pass verifies (≈ 100 ms of hashing here); a ledger growing faster
/// than this per interval makes the verified seq lag, which the lag alert shows.
const PASS_ENTRIES_MAX: i64 = 100_000;
/// Rows per query, to bound memory.
const PAGE_ENTRIES: i64 = 5_000;
/// A lease this long past its expiry should have been swept (every third of the TTL, ≤ 20 s).
const HOLD_STUCK_AFTER: Duration = Duration::from_secs(60);

/// Starts the self-check loop; it runs until the task is aborted.
pub fn spawn(app: App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut verified_seq = 0i64;
        let mut interval = tokio::time::interval(app.config.self_check_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            run_once(&app.db, &app.metrics, &mut verified_seq).await;
        }
    })
}

/// One pass; `verified_seq` carries what earlier passes verified.
pub async fn run_once(db: &Db, metrics: &Metrics, verified_seq: &mut i64) {
    match verify_tail(db, *verified_seq).await {
        Ok(TailCheck::Intact { head_seq, through }) => {
            *verified_seq = through;
            metrics.ledger_head_seq.set(head_seq);
            metrics.ledger_verified_seq.set(through);
        }
        Ok(TailCheck::Broken {
            head_seq,
            seq,
            reason,
        }) => {
            metrics.ledger_head_seq.set(head_seq);
            metrics.ledger_verify_failures.inc();
            tracing::error!(
                ledger.seq = seq,
                reason,
                "ledger self-check: the chain is broken"
            );
        }
        Err(error) => tracing::warn!(error = %error, "ledger self-check could not read the ledger"),
    }
    let stuck_before_ms = db.now_ms() - i64::try_from(HOLD_STUCK_AFTER.as_millis()).unwrap_or(0);
    match sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM leases WHERE expires_at_ms < $1")
        .bind(stuck_before_ms)
        .fetch_one(db.reader())
        .await
    {
        Ok((count,)) => metrics.holds_expired.set(count),
        Err(error) => tracing::warn!(error = %error, "self-check could not count expired leases"),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TailCheck {
    /// Every entry checked was intact, up to and including `through`.
    Intact { head_seq: i64, through: i64 },
    Broken {
        head_seq: i64,
        seq: i64,
        reason: String,
    },
}

/// Verifies the entries after `verified_seq` (at most [`PASS_ENTRIES_MAX`] of them) and the
/// newest [`WINDOW_ENTRIES`], in one snapshot.
pub async fn verify_tail(db: &Db, verified_seq: i64) -> Result<TailCheck, sqlx::Error> {
    let mut snapshot = db
        .reader()
        .begin_with(db.pick("BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        .await?;
    let (head_seq, head_hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM ledger_head WHERE id = 1")
            .fetch_one(&mut *snapshot)
            .await?;
    let from = (verified_seq + 1).min(head_seq - WINDOW_ENTRIES + 1).max(1);
    let through = head_seq.min(from + PASS_ENTRIES_MAX - 1);
    let mut walk = Walk::new(from);
    let mut next = from;
    while next <= through {
        let page: Vec<LedgerEntry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq >= $1 AND seq <= $2 \
             ORDER BY seq LIMIT $3"
        )))
        .bind(next)
        .bind(through)
        .bind(PAGE_ENTRIES)
        .fetch_all(&mut *snapshot)
        .await?;
        if page.is_empty() {
            break;
        }
        for entry in &page {
            if let Err(reason) = walk.step(entry) {
                return Ok(TailCheck::Broken {
                    head_seq,
                    seq: entry.seq.min(walk.expected_seq),
                    reason,
                });
            }
        }
        next = walk.expected_seq;
    }
    if walk.expected_seq <= through {
        return Ok(TailCheck::Broken {
            head_seq,
            seq: walk.expected_seq,
            reason: format!("seq {} is missing", walk.expected_seq),
        });
    }
    if through == head_seq && head_seq > 0 && walk.last_hash.as_deref() != Some(&head_hash) {
        return Ok(TailCheck::Broken {
            head_seq,
            seq: head_seq,
            reason: "the head's hash is not the newest entry's".into(),
        });
    }
    Ok(TailCheck::Intact {
        head_seq,
        through: through.max(0),
    })
}

/// The state of one walk over consecutive entries.
struct Walk {
    expected_seq: i64,
    last_hash: Option<String>,
    /// Each user's balance after their latest entry seen in this walk.
    balances: HashMap<i64, i64>,
    /// The walk starts at seq 1, so every user starts at zero.
    from_genesis: bool,
}

impl Walk {
    fn new(from: i64) -> Walk {
        Walk {
            expected_seq: from,
            // Seq 1 links to the genesis hash; a later window start anchors on its own link.
            last_hash: (from == 1).then(|| "0".repeat(64)),
            balances: HashMap::new(),
            from_genesis: from == 1,
        }
    }

    fn step(&mut self, entry: &LedgerEntry) -> Result<(), String> {
        if entry.seq != self.expected_seq {
            return Err(format!("seq {} is missing", self.expected_seq));
        }
        if let Some(last) = &self.last_hash
            && entry.prev_hash != *last
        {
            return Err("prev_hash does not link to the previous entry".into());
        }
        if entry.hash != entry.expected_hash() {
            return Err("hash does not match the entry".into());
        }
        let before = match self.balances.get(&entry.user_id) {
            Some(balance) => Some(*balance),
            None if self.from_genesis => Some(0),
            None => None,
        };
        if let Some(before) = before {
            let expected = before.checked_add(entry.amount_microusd);
            if expected != Some(entry.balance_after_microusd) {
                return Err(format!(
                    "balance_after is {}, the previous balance plus the amount is {expected:?}",
                    entry.balance_after_microusd
                ));
            }
        }
        self.balances
            .insert(entry.user_id, entry.balance_after_microusd);
        self.last_hash = Some(entry.hash.clone());
        self.expected_seq += 1;
        Ok(())
    }
}
