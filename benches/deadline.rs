//! How precisely a wall-time deadline stops a spell: the overshoot (time from the start of the
//! run to its stop, minus the limit) of a spell that loops forever, over many runs.
//!
//! Run: `cargo bench --bench deadline [-- RUNS WALL_MS]` (defaults 200 runs of a 30 ms limit).
//! Prints p50, p99 and the maximum; figures are recorded in `benches/README.md`. This was a
//! timed unit test once; a figure that depends on how busy the machine is belongs here.

use spellhost::sandbox::{Outcome, RunLimits, Sandbox, SandboxConfig};

#[path = "../tests/support/hostile.rs"]
mod hostile;

fn percentile(sorted: &[i64], p: usize) -> i64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; positional numbers after `--` override the defaults.
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = numbers.first().copied().unwrap_or(200) as usize;
    let wall_ms = numbers.get(1).copied().unwrap_or(30);
    let sandbox = Sandbox::new(SandboxConfig {
        workers: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let module = hostile::fixture("infinite_loop");
    let (spell, _) = sandbox.prepare(&module).expect("compiles");
    let limits = RunLimits {
        fuel: u64::MAX / 4,
        wall_ms,
        ..sandbox.limits_for(&module.manifest().limits)
    };
    let mut overshoot_us: Vec<i64> = (0..runs)
        .map(|_| {
            let report = sandbox
                .run_blocking(spell.clone(), Vec::new(), limits)
                .expect("runs");
            assert_eq!(report.outcome, Outcome::DeadlineExceeded);
            i64::try_from(report.duration.as_micros()).unwrap_or(i64::MAX)
                - i64::try_from(wall_ms * 1000).unwrap_or(i64::MAX)
        })
        .collect();
    overshoot_us.sort_unstable();
    println!(
        "deadline overshoot, {runs} runs of a {wall_ms} ms limit: min {} µs, p50 {} µs, p99 {} µs, max {} µs",
        overshoot_us[0],
        percentile(&overshoot_us, 50),
        percentile(&overshoot_us, 99),
        overshoot_us[overshoot_us.len() - 1]
    );
}
