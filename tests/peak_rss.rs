//! Peak memory of the host while hostile spells run, measured in a process of its own (the
//! main test binary runs many servers in parallel, which would drown the figure).

use spellhost::sandbox::{Outcome, Sandbox, SandboxConfig};

#[path = "support/hostile.rs"]
mod hostile;
use hostile::fixture;

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[test]
fn hostile_spells_at_the_host_maxima_keep_peak_rss_bounded() {
    let sandbox = Sandbox::new(SandboxConfig {
        workers: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let before = peak_rss_bytes();
    for name in [
        "memory_grow_loop",
        "huge_data_segment",
        "table_growth",
        "stdout_flood",
        "deep_recursion",
        "infinite_loop",
    ] {
        let module = fixture(name);
        let (spell, _) = sandbox.prepare(&module).expect("compiles");
        // The host's own maxima: 128 MiB of memory, 8 MiB of output, 5·10⁹ fuel.
        let limits = sandbox
            .limits_for(&module.manifest().limits)
            .with_wall_ms_at_most(2_000);
        for _ in 0..3 {
            let report = sandbox
                .run_blocking(spell.clone(), Vec::new(), limits)
                .expect("runs");
            assert!(!matches!(report.outcome, Outcome::Ok), "{name}: {report:?}");
        }
    }
    let peak = peak_rss_bytes();
    eprintln!(
        "peak RSS: {} MiB before the hostile runs, {} MiB after",
        before >> 20,
        peak >> 20
    );
    // memory.grow only reserves address space; what a spell touches is bounded by the
    // 128 MiB memory limit and the 8 MiB output cap, per worker.
    assert!(
        peak < before + (2 * 128 + 64) * 1024 * 1024,
        "peak RSS {} MiB",
        peak >> 20
    );
}
