//! wordfreq spell: word frequencies of a text.
//!
//! Input:  `{"text":"...", "top": 3}` (`top` optional, default 10, capped at 100)
//! Output: `{"total_words":N,"unique_words":M,"top":[{"word":"the","count":3},...]}`
//!
//! Words are maximal runs of alphanumeric characters (Unicode), lowercased.
//! `top` is sorted by count descending, then word ascending. Invalid input:
//! message on stderr, exit code 2.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::exit;

use serde::Serialize;
use serde_json::Value;

const DEFAULT_TOP: u64 = 10;
const MAX_TOP: u64 = 100;

#[derive(Serialize)]
struct Entry<'a> {
    word: &'a str,
    count: u64,
}

#[derive(Serialize)]
struct Output<'a> {
    total_words: u64,
    unique_words: u64,
    top: Vec<Entry<'a>>,
}

fn fail(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "wordfreq: {msg}");
    exit(2)
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
    let Some(obj) = value.as_object() else {
        fail("input must be a JSON object like {\"text\":\"...\",\"top\":10}");
    };
    let text = match obj.get("text") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => fail("\"text\" must be a string"),
        None => fail("missing \"text\""),
    };
    let top = match obj.get("top") {
        None | Some(Value::Null) => DEFAULT_TOP,
        Some(v) => match v.as_u64() {
            Some(n) => n.min(MAX_TOP),
            None => fail("\"top\" must be a non-negative integer"),
        },
    };

    // BTreeMap rather than HashMap: no random seed (no random_get), deterministic.
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut total: u64 = 0;
    for raw in text.split(|c: char| !c.is_alphanumeric()) {
        if raw.is_empty() {
            continue;
        }
        total += 1;
        let word = raw.to_lowercase();
        *counts.entry(word).or_insert(0) += 1;
    }

    // BTreeMap iterates in word order; a stable sort by count keeps ties word-ascending.
    let mut entries: Vec<Entry<'_>> = counts
        .iter()
        .map(|(w, &c)| Entry {
            word: w.as_str(),
            count: c,
        })
        .collect();
    entries.sort_by_key(|e| Reverse(e.count));
    entries.truncate(top as usize);

    let out = Output {
        total_words: total,
        unique_words: counts.len() as u64,
        top: entries,
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
