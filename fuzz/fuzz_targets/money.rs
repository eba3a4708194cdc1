//! Differential fuzzing of the money path: sequences of grants, refunds, holds, settles,
//! releases, lease upkeep, returns, crashes, expiries, budget changes and day boundaries,
//! applied to a fresh SQLite database through the real `Money` service and to the model the
//! property tests use (`tests/support/money_model.rs`), compared after every step. A panic is
//! a disagreement: an overdraft, a cast admitted or refused against the rule, a charge that
//! differs, a broken ledger chain.
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/money_model.rs"]
mod money_model;
use money_model::{Operation, check_against_model};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
});

/// One operation, with the property test's ranges and weights (`tests/api/money.rs`).
fn operation(u: &mut Unstructured) -> Result<Operation> {
    Ok(match u.int_in_range(0u8..=14)? {
        0 => Operation::Grant(u.int_in_range(1..=4_999)?),
        1 => Operation::Refund(u.int_in_range(1..=2_999)?),
        2..=4 => Operation::Hold {
            spell_fuel_max: u.int_in_range(1..=99_999_999)?,
            caller_fuel_max: if u.arbitrary()? {
                Some(u.int_in_range(1..=49_999_999)?)
            } else {
                None
            },
            wall_ms: u.int_in_range(0..=1_999)?,
            key: u.int_in_range(0..=1)?,
            spell: u.int_in_range(0..=1)?,
        },
        5 | 6 => Operation::Settle {
            which: u.int_in_range(0..=7)?,
            fuel_used: u.int_in_range(0..=119_999_999)?,
            blocked_ms: u.int_in_range(0..=2_999)?,
        },
        7 => Operation::Release {
            which: u.int_in_range(0..=7)?,
        },
        8 => Operation::Tick,
        9 => Operation::ReturnAll,
        10 => Operation::Crash,
        11 => Operation::Expire,
        12 => Operation::SetBudget {
            scope: u.int_in_range(0..=4)?,
            daily: u.arbitrary()?,
            hard: u.int_in_range(1..=7_999)?,
        },
        _ => Operation::NextDay,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while ops.len() < 48 {
        match operation(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
        if u.is_empty() {
            break;
        }
    }
    if ops.is_empty() {
        return;
    }
    RUNTIME.block_on(async {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", data_dir.path().join("money.db").display());
        check_against_model(&url, ops).await;
    });
});
