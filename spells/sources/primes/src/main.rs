//! primes spell: counts the primes below `n` by trial division (CPU-bound on
//! purpose: fuel grows with `n`, roughly as n^1.5 / ln n).
//!
//! Input:  `{"below": n}` with 0 <= n <= 10_000_000
//! Output: `{"below":n,"count":k,"largest":p}` (`largest` is null when k = 0)
//!
//! Invalid input or n out of range: message on stderr, exit code 2.
//! Deterministic: no clocks, no randomness, integer arithmetic only.

use std::io::{Read, Write};
use std::process::exit;

use serde::Serialize;
use serde_json::Value;

const MAX_BELOW: u64 = 10_000_000;

#[derive(Serialize)]
struct Output {
    below: u64,
    count: u64,
    largest: Option<u32>,
}

fn fail(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "primes: {msg}");
    exit(2)
}

/// Counts primes in [2, below) by trial division with the primes found so far,
/// up to sqrt(candidate). Only primes <= sqrt(below) are kept as divisors.
fn count_primes(below: u32) -> (u64, Option<u32>) {
    if below <= 2 {
        return (0, None);
    }
    let mut divisors: Vec<u32> = Vec::new(); // odd primes p with p*p < below
    let mut count: u64 = 1; // 2
    let mut largest: u32 = 2;
    let mut n: u32 = 3;
    while n < below {
        let mut is_prime = true;
        for &p in &divisors {
            if p * p > n {
                break;
            }
            if n.is_multiple_of(p) {
                is_prime = false;
                break;
            }
        }
        if is_prime {
            count += 1;
            largest = n;
            if (n as u64) * (n as u64) < below as u64 {
                divisors.push(n);
            }
        }
        n += 2;
    }
    (count, Some(largest))
}

fn main() {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() {
        fail("could not read stdin");
    }
    let value: Value = match serde_json::from_slice(&input) {
        Ok(v) => v,
        Err(e) => fail(&format!("input is not valid JSON: {e}")),
    };
    let below = match value.get("below") {
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_BELOW => n,
            Some(_) => fail("\"below\" must be at most 10000000"),
            None => fail("\"below\" must be a non-negative integer"),
        },
        None => fail("missing \"below\" (expected {\"below\": n})"),
    };
    let (count, largest) = count_primes(below as u32);
    let out = Output {
        below,
        count,
        largest,
    };
    let bytes = match serde_json::to_vec(&out) {
        Ok(b) => b,
        Err(e) => fail(&format!("could not encode output: {e}")),
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&bytes)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        fail("could not write stdout");
    }
}
