//! The append-only, gapless, hash-chained ledger.
//!
//! `hash = sha256(prev_hash ‖ canonical entry)` where the canonical entry is the JSON array
//! `[seq, user_id, kind, amount_microusd, balance_after_microusd, reference, created_at_ms]`,
//! with `wall_microusd` appended for the entries that carry it (casts settled since migration
//! 0008: the part of the amount that paid for blocked time). Entries without it hash exactly
//! as before, so an older chain still verifies; one with it cannot lose it unnoticed.
//! Appends lock the single `ledger_head` row, which makes `seq` gapless under concurrency: a
//! rolled-back transaction takes its increment with it.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{MicroUsd, MoneyError};
use crate::store::{Db, Tx};

/// What moved the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credit granted by an operator (`spellhost credits grant`, demo credit).
    Grant,
    /// A settled cast (debit).
    Cast,
    /// An operator's correction, either sign.
    Adjustment,
    /// A Stripe Checkout top-up (credit).
    Topup,
    /// A Stripe refund (debit).
    Refund,
    /// A Stripe dispute (debit).
    Dispute,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Cast => "cast",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Topup => "topup",
            EntryKind::Refund => "refund",
            EntryKind::Dispute => "dispute",
        }
    }
}

/// The columns of [`LedgerEntry`], for every `SELECT` of entries: one forgotten would fail
/// to decode rather than be hashed as absent.
pub const LEDGER_COLUMNS: &str = "seq, user_id, kind, amount_microusd, balance_after_microusd, \
     reference, created_at_ms, wall_microusd, prev_hash, hash";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LedgerEntry {
    pub seq: i64,
    pub user_id: i64,
    pub kind: String,
    pub amount_microusd: i64,
    pub balance_after_microusd: i64,
    pub reference: String,
    pub created_at_ms: i64,
    /// A cast's charge for blocked time (µ$, part of `-amount_microusd`); `None` on every
    /// other entry and on casts settled before wall-time pricing.
    pub wall_microusd: Option<i64>,
    pub prev_hash: String,
    pub hash: String,
}

impl LedgerEntry {
    /// The hash this entry must carry, given its fields and `prev_hash`.
    pub fn expected_hash(&self) -> String {
        let fields = (
            self.seq,
            self.user_id,
            self.kind.as_str(),
            self.amount_microusd,
            self.balance_after_microusd,
            self.reference.as_str(),
            self.created_at_ms,
        );
        match self.wall_microusd {
            None => entry_hash(&self.prev_hash, &fields),
            Some(wall) => {
                let (seq, user, kind, amount, after, reference, at) = fields;
                let extended = (seq, user, kind, amount, after, reference, at, wall);
                entry_hash(&self.prev_hash, &extended)
            }
        }
    }
}

fn entry_hash(prev_hash: &str, canonical: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    // The previous hash is chained as its 32 raw bytes; a malformed one (never written by us)
    // is chained as its text, which still never matches a correct chain.
    match hex::decode(prev_hash) {
        Ok(bytes) => hasher.update(bytes),
        Err(_) => hasher.update(prev_hash.as_bytes()),
    }
    hasher.update(serde_json::to_vec(canonical).unwrap_or_default());
    hex::encode(hasher.finalize())
}

/// Appends one entry inside the caller's transaction, which must also hold the balance change.
/// `created_at_ms` comes from the clock that decides money ([`Db::now_ms`]).
pub async fn append_entry(
    tx: &mut Tx,
    user_id: i64,
    kind: EntryKind,
    amount: MicroUsd,
    balance_after: MicroUsd,
    reference: &str,
    created_at_ms: i64,
) -> Result<LedgerEntry, MoneyError> {
    // UPDATE first: it takes the row lock on PostgreSQL, so concurrent appends serialize here.
    let (seq, prev_hash): (i64, String) =
        sqlx::query_as("UPDATE ledger_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
            .fetch_one(&mut **tx)
            .await?;
    let mut entry = LedgerEntry {
        seq,
        user_id,
        kind: kind.as_str().to_owned(),
        amount_microusd: amount.get(),
        balance_after_microusd: balance_after.get(),
        reference: reference.to_owned(),
        created_at_ms,
        wall_microusd: None,
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.expected_hash();
    sqlx::query(
        "INSERT INTO ledger (seq, user_id, kind, amount_microusd, balance_after_microusd, \
         reference, created_at_ms, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry.seq)
    .bind(entry.user_id)
    .bind(&entry.kind)
    .bind(entry.amount_microusd)
    .bind(entry.balance_after_microusd)
    .bind(&entry.reference)
    .bind(entry.created_at_ms)
    .bind(&entry.prev_hash)
    .bind(&entry.hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE ledger_head SET hash = $1 WHERE id = 1")
        .bind(&entry.hash)
        .execute(&mut **tx)
        .await?;
    Ok(entry)
}

/// What `spellhost ledger verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    Intact {
        entries: u64,
    },
    /// The first entry whose seq, link, hash or running balance is wrong.
    Broken {
        seq: i64,
        reason: String,
    },
}

/// Page size when walking the ledger: bounds memory on large ledgers.
const VERIFY_PAGE: i64 = 10_000;

/// The hash before the first entry.
const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A point of the chain, `HASH@SEQ`: the hash of entry `seq` (seq 0: the genesis hash). An
/// operator who keeps one outside the database can later prove that no entry up to `seq` was
/// rewritten or removed, since each hash chains every entry before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected HASH@SEQ: 64 lowercase hex characters, @, a sequence number ≥ 0")]
pub struct AnchorError;

impl std::str::FromStr for Anchor {
    type Err = AnchorError;

    fn from_str(text: &str) -> Result<Self, AnchorError> {
        let (hash, seq) = text.trim().split_once('@').ok_or(AnchorError)?;
        let hex = hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let seq: i64 = seq.parse().map_err(|_| AnchorError)?;
        if !hex || seq < 0 {
            return Err(AnchorError);
        }
        Ok(Anchor {
            seq,
            hash: hash.to_owned(),
        })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.hash, self.seq)
    }
}

/// The head of the chain: the last entry's seq and hash (read-only).
pub async fn head(db: &Db) -> Result<Anchor, MoneyError> {
    let (seq, hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM ledger_head WHERE id = 1")
            .fetch_one(db.reader())
            .await?;
    Ok(Anchor { seq, hash })
}

/// Recomputes the whole chain: gapless seq from 1, each `prev_hash` equal to the previous
/// hash, each hash recomputed, each user's running balance (which must not overflow), the
/// head, and every user's balance equal to the sum of their entries.
pub async fn verify_chain(db: &Db) -> Result<ChainCheck, MoneyError> {
    verify_chain_anchored(db, None).await
}

/// [`verify_chain`], and the chain still passes through `anchor` (exported earlier with
/// `spellhost ledger head`): no entry up to it was rewritten or removed.
pub async fn verify_chain_anchored(
    db: &Db,
    anchor: Option<&Anchor>,
) -> Result<ChainCheck, MoneyError> {
    if let Some(anchor) = anchor
        && anchor.seq == 0
        && anchor.hash != GENESIS_HASH
    {
        return Ok(ChainCheck::Broken {
            seq: 0,
            reason: "an anchor at seq 0 must carry the genesis hash".into(),
        });
    }
    // One snapshot for the whole walk, so appends made meanwhile by a running service are not
    // mistaken for breaks.
    let mut snapshot = db
        .reader()
        .begin_with(db.pick("BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        .await?;
    let mut expected_seq = 1i64;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut running: std::collections::HashMap<i64, i64> = Default::default();
    loop {
        let page: Vec<LedgerEntry> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq >= $1 ORDER BY seq LIMIT $2"
        )))
        .bind(expected_seq)
        .bind(VERIFY_PAGE)
        .fetch_all(&mut *snapshot)
        .await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            if let Some(reason) = check_entry(&entry, expected_seq, &prev_hash, &mut running) {
                return Ok(ChainCheck::Broken {
                    seq: entry.seq.min(expected_seq),
                    reason,
                });
            }
            if let Some(anchor) = anchor
                && anchor.seq == entry.seq
                && anchor.hash != entry.hash
            {
                return Ok(ChainCheck::Broken {
                    seq: entry.seq,
                    reason: format!(
                        "the hash differs from the anchor {anchor}: an entry up to seq {} was rewritten",
                        entry.seq
                    ),
                });
            }
            prev_hash = entry.hash;
            expected_seq += 1;
        }
    }
    let entries = expected_seq - 1;
    if let Some(anchor) = anchor
        && anchor.seq > entries
    {
        return Ok(ChainCheck::Broken {
            seq: entries + 1,
            reason: format!(
                "the ledger ends at seq {entries}, before the anchor {anchor}: entries were removed"
            ),
        });
    }
    let (head_seq, head_hash): (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM ledger_head WHERE id = 1")
            .fetch_one(&mut *snapshot)
            .await?;
    if head_seq != entries || head_hash != prev_hash {
        return Ok(ChainCheck::Broken {
            seq: entries + 1,
            reason: format!("the head says seq {head_seq}, the ledger ends at {entries}"),
        });
    }
    let balances: Vec<(i64, i64)> = sqlx::query_as("SELECT id, balance_microusd FROM users")
        .fetch_all(&mut *snapshot)
        .await?;
    for (user_id, balance) in balances {
        let sum = running.get(&user_id).copied().unwrap_or(0);
        if sum != balance {
            return Ok(ChainCheck::Broken {
                seq: entries + 1,
                reason: format!("user {user_id} has balance {balance} but entries sum to {sum}"),
            });
        }
    }
    Ok(ChainCheck::Intact {
        entries: u64::try_from(entries).unwrap_or(0),
    })
}

fn check_entry(
    entry: &LedgerEntry,
    expected_seq: i64,
    prev_hash: &str,
    running: &mut std::collections::HashMap<i64, i64>,
) -> Option<String> {
    if entry.seq != expected_seq {
        return Some(format!("seq {expected_seq} is missing"));
    }
    if entry.prev_hash != prev_hash {
        return Some("prev_hash does not link to the previous entry".into());
    }
    if entry.hash != entry.expected_hash() {
        return Some("hash does not match the entry".into());
    }
    let balance = running.entry(entry.user_id).or_insert(0);
    let Some(sum) = balance.checked_add(entry.amount_microusd) else {
        return Some(format!(
            "the running total of user {} overflows a 64-bit micro-dollar amount",
            entry.user_id
        ));
    };
    *balance = sum;
    if *balance != entry.balance_after_microusd {
        return Some(format!(
            "balance_after is {}, the running sum is {}",
            entry.balance_after_microusd, balance
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_parse_from_hash_at_seq_and_print_back() {
        let text = format!("{}@42", "ab".repeat(32));
        let anchor: Anchor = text.parse().expect("valid");
        assert_eq!(anchor.seq, 42);
        assert_eq!(anchor.to_string(), text);
        for bad in [
            "",
            "@1",
            &format!("{}@-1", "ab".repeat(32)),
            &format!("{}@1", "AB".repeat(32)),
            &format!("{}@1", "ab".repeat(31)),
            &format!("{}@x", "ab".repeat(32)),
        ] {
            assert_eq!(bad.parse::<Anchor>(), Err(AnchorError), "{bad}");
        }
    }

    #[test]
    fn entries_without_a_wall_part_hash_as_before_and_the_wall_part_is_chained() {
        let mut entry = LedgerEntry {
            seq: 1,
            user_id: 7,
            kind: "cast".into(),
            amount_microusd: -5,
            balance_after_microusd: 95,
            reference: "cast_x".into(),
            created_at_ms: 1_000,
            wall_microusd: None,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        // The hash of this entry as every version before wall-time pricing computed it.
        let mut hasher = Sha256::new();
        hasher.update([0u8; 32]);
        hasher.update(br#"[1,7,"cast",-5,95,"cast_x",1000]"#);
        assert_eq!(entry.expected_hash(), hex::encode(hasher.finalize()));
        let before = entry.expected_hash();
        entry.wall_microusd = Some(3);
        let with_wall = entry.expected_hash();
        assert_ne!(with_wall, before);
        entry.wall_microusd = Some(4);
        assert_ne!(entry.expected_hash(), with_wall, "the wall part is chained");
        entry.wall_microusd = Some(0);
        assert_ne!(entry.expected_hash(), before, "zero is not absent");
    }

    #[test]
    fn a_running_total_that_overflows_breaks_the_chain() {
        let mut running = std::collections::HashMap::from([(1, i64::MAX)]);
        let mut entry = LedgerEntry {
            seq: 2,
            user_id: 1,
            kind: "grant".into(),
            amount_microusd: 1,
            balance_after_microusd: i64::MIN,
            reference: "x".into(),
            created_at_ms: 0,
            wall_microusd: None,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        entry.hash = entry.expected_hash();
        let reason = check_entry(&entry, 2, GENESIS_HASH, &mut running).expect("broken");
        assert!(reason.contains("overflows"), "{reason}");
    }
}
