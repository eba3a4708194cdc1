//! The sandbox against real example spells and hostile fixtures: exact outcomes, exact fuel,
//! and a host that stays healthy.

use std::time::Duration;

use spellhost::sandbox::{HOST_FUEL_PER_BYTE, Outcome, RunLimits, RunReport, Sandbox, Tenant};

use crate::helpers::{compile, example, fixture, napper_wat, sandbox, verified_wat};

fn run(
    sandbox: &Sandbox,
    module: &spellhost::supply_chain::VerifiedModule,
    input: &[u8],
    limits: impl FnOnce(RunLimits) -> RunLimits,
) -> spellhost::sandbox::RunReport {
    let spell = compile(sandbox, module);
    let limits = limits(sandbox.limits_for(&module.manifest().limits));
    sandbox
        .run_blocking(spell, input.to_vec(), limits)
        .expect("runs")
}

fn assert_host_healthy(sandbox: &Sandbox) {
    let report = run(sandbox, &example("hello"), br#"{"name":"Ada"}"#, |l| l);
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(report.output, br#"{"greeting":"Hello, Ada!"}"#);
}

#[test]
fn hello_greets_by_name() {
    let sandbox = sandbox();
    let report = run(&sandbox, &example("hello"), br#"{"name":"Ada"}"#, |l| l);
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(
        String::from_utf8_lossy(&report.output),
        r#"{"greeting":"Hello, Ada!"}"#
    );
    assert!(report.fuel_used > 0);
}

#[test]
fn hello_without_a_name_exits_with_code_2_and_explains_on_stderr() {
    let sandbox = sandbox();
    let report = run(&sandbox, &example("hello"), b"{}", |l| l);
    assert_eq!(report.outcome, Outcome::ExitCode(2));
    assert!(!report.stderr.is_empty());
}

#[test]
fn each_hostile_fixture_ends_in_its_exact_outcome_and_the_host_stays_healthy() {
    let sandbox = sandbox();
    let small = |_: RunLimits| RunLimits {
        fuel: 50_000_000,
        wall_ms: 1_000,
        memory_bytes: 16 << 20,
        output_bytes: 1 << 20,
        blocked_ms: None,
    };
    let cases: [(&str, Outcome); 8] = [
        ("infinite_loop", Outcome::OutOfFuel),
        ("memory_grow_loop", Outcome::MemoryLimitExceeded),
        ("table_growth", Outcome::MemoryLimitExceeded),
        ("huge_data_segment", Outcome::MemoryLimitExceeded),
        ("stdout_flood", Outcome::OutputTooLarge),
        ("proc_exit_3", Outcome::ExitCode(3)),
        ("unreachable", Outcome::Trapped(String::new())),
        ("deep_recursion", Outcome::Trapped(String::new())),
    ];
    for (name, expected) in cases {
        let report = run(&sandbox, &fixture(name), b"", small);
        match (&expected, &report.outcome) {
            (Outcome::Trapped(_), Outcome::Trapped(message)) => {
                assert!(!message.is_empty(), "{name}")
            }
            _ => assert_eq!(report.outcome, expected, "{name}: {report:?}"),
        }
        assert!(report.fuel_used <= 50_000_000, "{name}");
        if name == "stdout_flood" {
            assert!(report.output.len() <= 1 << 20, "output is capped");
        }
        assert_host_healthy(&sandbox);
    }
    // Peak RSS under the same fixtures is measured alone, in tests/peak_rss.rs.
}

#[test]
fn deep_recursion_is_a_stack_overflow_trap() {
    let sandbox = sandbox();
    let report = run(&sandbox, &fixture("deep_recursion"), b"", |l| l);
    let Outcome::Trapped(message) = &report.outcome else {
        panic!("{report:?}")
    };
    assert!(message.contains("call stack exhausted"), "{message}");
}

#[test]
fn host_calls_in_a_loop_end_at_the_deadline_or_the_fuel_cap() {
    let sandbox = sandbox();
    let report = run(&sandbox, &fixture("busy_host_calls"), b"", |l| RunLimits {
        wall_ms: 200,
        ..l
    });
    assert!(
        matches!(
            report.outcome,
            Outcome::DeadlineExceeded | Outcome::OutOfFuel
        ),
        "{report:?}"
    );
    // Stopped by its limits, well before it could run for long (a generous bound: this test
    // must pass on a busy machine).
    assert!(
        report.duration < Duration::from_secs(10),
        "{:?}",
        report.duration
    );
}

#[test]
fn fuel_is_deterministic_over_100_runs() {
    let sandbox = sandbox();
    for (name, input) in [
        ("hello", &br#"{"name":"Ada"}"#[..]),
        (
            "wordfreq",
            &br#"{"text":"the quick brown fox jumps over the lazy dog the end","top":3}"#[..],
        ),
        ("primes", &br#"{"below":20000}"#[..]),
    ] {
        let module = example(name);
        let first = run(&sandbox, &module, input, |l| l);
        assert_eq!(first.outcome, Outcome::Ok, "{name}");
        for _ in 0..99 {
            let again = run(&sandbox, &module, input, |l| l);
            assert_eq!(again.fuel_used, first.fuel_used, "{name}");
            assert_eq!(again.output, first.output, "{name}");
        }
    }
}

#[test]
fn fuel_grows_with_the_input_of_the_cpu_bound_spell() {
    let sandbox = sandbox();
    let module = example("primes");
    let small = run(&sandbox, &module, br#"{"below":1000}"#, |l| l).fuel_used;
    let large = run(&sandbox, &module, br#"{"below":100000}"#, |l| l).fuel_used;
    assert!(large > 20 * small, "{small} → {large}");
}

/// A loop of `iterations` with no calls in it, then either a normal return or a trap from the
/// same function: the case where wasmtime's fuel counter is not flushed before the trap
/// (wasmtime issue 13802).
fn burn_then(ending: &str, iterations: u32) -> String {
    format!(
        r#"(module
          (memory (export "memory") 1)
          (func (export "_start") (local $n i32)
            (local.set $n (i32.const {iterations}))
            (block $done
              (loop $again
                (br_if $done (i32.eqz (local.get $n)))
                (local.set $n (i32.sub (local.get $n) (i32.const 1)))
                (br $again)))
            {ending}))"#
    )
}

#[test]
fn fuel_after_a_trap_counts_the_work_done_before_it() {
    let sandbox = sandbox();
    for iterations in [10, 1_000, 10_000] {
        let returns = verified_wat(
            "burn-return",
            &burn_then("(drop (i32.const 0))", iterations),
            "",
        );
        let divides = verified_wat(
            "burn-trap",
            &burn_then("(drop (i32.div_s (i32.const 1) (i32.const 0)))", iterations),
            "",
        );
        let clean = run(&sandbox, &returns, b"", |l| l);
        let trapped = run(&sandbox, &divides, b"", |l| l);
        assert_eq!(clean.outcome, Outcome::Ok);
        assert!(
            matches!(trapped.outcome, Outcome::Trapped(_)),
            "{trapped:?}"
        );
        // The trapping version executes the same loop plus a few cheaper instructions.
        let difference = trapped.fuel_used.abs_diff(clean.fuel_used);
        assert!(
            difference <= 8,
            "{iterations}: {} vs {}",
            trapped.fuel_used,
            clean.fuel_used
        );
    }
}

#[test]
fn fuel_after_a_long_trapping_run_is_never_less_than_burned_and_at_most_one_interval_more() {
    // Beyond the replay budget the upper bound is charged: never an undercharge.
    let sandbox = sandbox();
    let iterations = 5_000_000;
    let returns = verified_wat(
        "burn-return",
        &burn_then("(drop (i32.const 0))", iterations),
        "",
    );
    let divides = verified_wat(
        "burn-trap",
        &burn_then("(drop (i32.div_s (i32.const 1) (i32.const 0)))", iterations),
        "",
    );
    let clean = run(&sandbox, &returns, b"", |l| l).fuel_used;
    let trapped = run(&sandbox, &divides, b"", |l| l).fuel_used;
    assert!(trapped + 8 >= clean, "{trapped} < {clean}");
    assert!(
        trapped <= clean + spellhost::sandbox::FUEL_YIELD_INTERVAL + 8,
        "{trapped} vs {clean}"
    );
}

#[test]
fn fuel_at_the_deadline_is_what_was_burned_until_then() {
    let sandbox = sandbox();
    let module = fixture("infinite_loop");
    let report = run(&sandbox, &module, b"", |l| RunLimits {
        fuel: u64::MAX / 4,
        wall_ms: 50,
        ..l
    });
    assert_eq!(report.outcome, Outcome::DeadlineExceeded);
    // ~50 ms of a tight loop is tens of millions of instructions, far below the cap.
    assert!(report.fuel_used > 1_000_000, "{}", report.fuel_used);
    assert!(report.fuel_used < u64::MAX / 8);
}

#[test]
fn running_out_of_fuel_uses_exactly_the_cap() {
    let sandbox = sandbox();
    let report = run(&sandbox, &fixture("infinite_loop"), b"", |l| RunLimits {
        fuel: 123_456,
        ..l
    });
    assert_eq!(report.outcome, Outcome::OutOfFuel);
    assert_eq!(report.fuel_used, 123_456);
}

/// How precisely a deadline stops a spell is a figure for `cargo bench --bench deadline`; the
/// properties here hold however busy the machine is.
#[test]
fn deadlines_stop_spells_never_before_the_wall_limit() {
    let sandbox = sandbox();
    let module = fixture("infinite_loop");
    let wall_ms = 30;
    for _ in 0..10 {
        let report = run(&sandbox, &module, b"", |l| RunLimits {
            fuel: u64::MAX / 4,
            wall_ms,
            ..l
        });
        assert_eq!(report.outcome, Outcome::DeadlineExceeded, "{report:?}");
        assert!(
            report.duration >= Duration::from_millis(wall_ms),
            "stopped before its limit: {:?}",
            report.duration
        );
        // A generous bound: the spell is stopped, not left to run to its fuel cap (which
        // would take hours).
        assert!(report.duration < Duration::from_secs(10), "{report:?}");
    }
}

/// One worker, one run at a time, a queue of one.
fn one_slot_sandbox() -> Sandbox {
    Sandbox::new(spellhost::sandbox::SandboxConfig {
        workers: 1,
        runs_max: 1,
        tenant_runs_max: 1,
        queue_depth: 1,
        ..Default::default()
    })
    .expect("sandbox")
}

/// A spell that loops until its 300 ms wall limit, and those limits.
fn endless(sandbox: &Sandbox) -> (std::sync::Arc<spellhost::sandbox::CompiledSpell>, RunLimits) {
    let module = fixture("infinite_loop");
    let limits = RunLimits {
        fuel: u64::MAX / 4,
        wall_ms: 300,
        ..sandbox.limits_for(&module.manifest().limits)
    };
    (compile(sandbox, &module), limits)
}

#[test]
fn the_queue_refuses_work_beyond_its_depth_instead_of_growing() {
    let sandbox = one_slot_sandbox();
    let (spell, limits) = endless(&sandbox);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let results = runtime.block_on(async {
        // Three users: one runs, one waits in the queue of one, one is refused.
        let a = sandbox.run(Tenant(1), spell.clone(), vec![], limits);
        let b = sandbox.run(Tenant(2), spell.clone(), vec![], limits);
        let c = sandbox.run(Tenant(3), spell.clone(), vec![], limits);
        tokio::join!(a, b, c)
    });
    let busy = [&results.0, &results.1, &results.2]
        .iter()
        .filter(|r| matches!(r, Err(spellhost::sandbox::SandboxError::Busy)))
        .count();
    assert!(busy >= 1, "{results:?}");
}

#[test]
fn what_follows_a_run_runs_on_the_wasm_thread_with_its_report_and_never_for_a_refused_run() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let sandbox = one_slot_sandbox();
    let hello = example("hello");
    let spell = compile(&sandbox, &hello);
    let limits = sandbox.limits_for(&hello.manifest().limits);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (report, (thread, fuel_seen)) = runtime
        .block_on(sandbox.run_then(
            Tenant(1),
            spell,
            br#"{"name":"Ada"}"#.to_vec(),
            limits,
            |report: &RunReport| {
                let thread = std::thread::current().name().map(str::to_owned);
                (thread, report.fuel_used)
            },
        ))
        .expect("runs");
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(
        fuel_seen, report.fuel_used,
        "`then` saw the run's own report"
    );
    let thread = thread.expect("a named thread");
    assert!(thread.starts_with("spellhost-wasm"), "{thread}");

    // Refused runs never call it: a run fills the only slot, one waits in the queue of one,
    // and the third is refused; what would follow it is dropped uncalled.
    let (looping, limits) = endless(&sandbox);
    let called = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let results = runtime.block_on(async {
        let runs = (1..=3).map(|tenant| {
            let (called, guard) = (called.clone(), Counted(dropped.clone()));
            sandbox.run_then(Tenant(tenant), looping.clone(), vec![], limits, move |_| {
                let _guard = guard;
                called.fetch_add(1, SeqCst);
            })
        });
        futures::future::join_all(runs).await
    });
    let ran = results.iter().filter(|r| r.is_ok()).count();
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(spellhost::sandbox::SandboxError::Busy)))
        .count();
    assert!(busy >= 1, "{results:?}");
    assert_eq!(ran + busy, 3, "{results:?}");
    assert_eq!(called.load(SeqCst), ran, "once per run that ran");
    assert_eq!(dropped.load(SeqCst), 3, "every one dropped once");
}

#[test]
fn input_larger_than_the_host_limit_is_refused_before_running() {
    let sandbox = sandbox();
    let module = example("hello");
    let spell = compile(&sandbox, &module);
    let limits = sandbox.limits_for(&module.manifest().limits);
    let huge = vec![b' '; (sandbox.host_limits().input_bytes_max + 1) as usize];
    assert!(matches!(
        sandbox.run_blocking(spell, huge, limits),
        Err(spellhost::sandbox::SandboxError::InputTooLarge { .. })
    ));
}

/// A spell that writes `calls` times `bytes` bytes of zeros to stderr (whose cap truncates
/// quietly, so every call is pure host work).
fn stderr_writer(calls: u32, bytes: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $i i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const {bytes}))
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (i32.const {calls})))
        (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))))"#
    )
}

/// A spell that asks `random_get` for `bytes` bytes, once.
fn random_reader(bytes: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "random_get"
    (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 64)
  (func (export "_start")
    (if (call $random_get (i32.const 0) (i32.const {bytes})) (then unreachable))))"#
    )
}

fn fuel_of(sandbox: &Sandbox, name: &str, wat: &str) -> RunReport {
    let module = verified_wat(name, wat, "");
    run(sandbox, &module, b"", |l| l)
}

#[test]
fn bytes_moved_by_host_calls_are_charged_as_fuel() {
    let sandbox = sandbox();
    // The same loop, writing nothing or 64 KiB per call: the difference is the host's work.
    let empty = fuel_of(&sandbox, "quiet", &stderr_writer(64, 0));
    let loud = fuel_of(&sandbox, "loud", &stderr_writer(64, 65536));
    assert_eq!(
        (empty.outcome.clone(), loud.outcome.clone()),
        (Outcome::Ok, Outcome::Ok)
    );
    let moved = 64 * 65536 * HOST_FUEL_PER_BYTE;
    assert_eq!(
        loud.fuel_used - empty.fuel_used,
        moved,
        "{} fuel without output, {} with 4 MiB written to stderr",
        empty.fuel_used,
        loud.fuel_used
    );
    // Randomness is charged for what the host generates (a word per byte asked for).
    let none = fuel_of(&sandbox, "no-random", &random_reader(0));
    let some = fuel_of(&sandbox, "random", &random_reader(512 * 1024));
    assert_eq!(
        (none.outcome.clone(), some.outcome.clone()),
        (Outcome::Ok, Outcome::Ok)
    );
    assert_eq!(
        some.fuel_used - none.fuel_used,
        4 * 512 * 1024 * HOST_FUEL_PER_BYTE
    );
}

#[test]
fn host_work_the_fuel_cannot_pay_for_ends_the_run_as_out_of_fuel() {
    let sandbox = sandbox();
    let module = verified_wat("loud", &stderr_writer(1000, 65536), "");
    let report = run(&sandbox, &module, b"", |l| l.with_fuel_at_most(1_000_000));
    assert_eq!(report.outcome, Outcome::OutOfFuel, "{report:?}");
    assert_eq!(report.fuel_used, 1_000_000, "all of the fuel, never more");
}

#[test]
fn one_random_get_is_bounded_so_that_no_host_call_runs_long() {
    let sandbox = sandbox();
    let report = fuel_of(&sandbox, "greedy", &random_reader(2 * 1024 * 1024));
    assert!(matches!(report.outcome, Outcome::Trapped(_)), "{report:?}");
    assert_host_healthy(&sandbox);
}

/// Starts a run of `module` for `tenant` on the sandbox's runtime and returns its handle.
fn start(
    sandbox: &std::sync::Arc<Sandbox>,
    runtime: &tokio::runtime::Runtime,
    tenant: i64,
    module: &spellhost::supply_chain::VerifiedModule,
    limits: RunLimits,
) -> tokio::task::JoinHandle<Result<RunReport, spellhost::sandbox::SandboxError>> {
    let spell = compile(sandbox, module);
    let sandbox = std::sync::Arc::clone(sandbox);
    runtime.spawn(async move { sandbox.run(Tenant(tenant), spell, Vec::new(), limits).await })
}

#[test]
fn a_spell_that_computes_or_sleeps_does_not_keep_the_only_worker_from_others() {
    // One worker thread: before runs were async, either of these held it for its whole wall
    // time and every other cast waited or was refused.
    let sandbox = std::sync::Arc::new(
        Sandbox::new(spellhost::sandbox::SandboxConfig {
            workers: 1,
            queue_wait_max: Duration::from_secs(60),
            ..Default::default()
        })
        .expect("sandbox"),
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let long = RunLimits {
        fuel: u64::MAX / 4,
        wall_ms: 600_000,
        ..sandbox.limits_for(&Default::default())
    };
    let spinner = start(&sandbox, &runtime, 1, &fixture("infinite_loop"), long);
    let sleeper = start(&sandbox, &runtime, 2, &fixture("sleeper"), long);
    while sandbox.runs_in_flight() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..20 {
        assert_host_healthy(&sandbox);
    }
    assert!(
        !spinner.is_finished() && !sleeper.is_finished(),
        "both still run meanwhile"
    );
    assert_eq!(sandbox.runs_in_flight(), 2);
    // Dropping the sandbox abandons them at their next yield.
    spinner.abort();
    sleeper.abort();
}

#[test]
fn a_user_at_their_concurrency_limit_is_refused_while_others_run() {
    let sandbox = std::sync::Arc::new(
        Sandbox::new(spellhost::sandbox::SandboxConfig {
            workers: 1,
            runs_max: 4,
            tenant_runs_max: 2,
            queue_wait_max: Duration::from_millis(200),
            ..Default::default()
        })
        .expect("sandbox"),
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let sleeper = fixture("sleeper");
    let limits = RunLimits {
        wall_ms: 600_000,
        ..sandbox.limits_for(&Default::default())
    };
    let held = [
        start(&sandbox, &runtime, 1, &sleeper, limits),
        start(&sandbox, &runtime, 1, &sleeper, limits),
    ];
    while sandbox.runs_in_flight() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The third waits behind its own two, then is refused as the user's own load.
    let third = runtime.block_on(start(&sandbox, &runtime, 1, &sleeper, limits));
    assert!(
        matches!(
            third,
            Ok(Err(spellhost::sandbox::SandboxError::TooManyConcurrent {
                limit: 2
            }))
        ),
        "{third:?}"
    );
    // Another user is served at once.
    assert_host_healthy(&sandbox);
    for run in held {
        run.abort();
    }
}

#[test]
fn a_sleep_in_a_host_call_is_blocked_time_and_computing_or_quick_host_calls_are_not() {
    let sandbox = sandbox();
    let napper = verified_wat("napper", &napper_wat(30), "");
    // A timer never fires early, so the whole nap can be blocked time, and never more than the
    // run took. The wait is counted from when the run goes pending, a moment after the host
    // call armed its timer: a thread preempted in between (a busy machine) is billed less of
    // the nap, never more. So of a few naps, one at least is counted whole.
    let mut naps = Vec::new();
    while naps.len() < 5 {
        let report = run(&sandbox, &napper, b"", |l| l);
        assert_eq!(report.outcome, Outcome::Ok, "{report:?}");
        assert!(report.blocked <= report.duration, "{report:?}");
        let whole = report.blocked >= Duration::from_millis(30);
        naps.push(report);
        if whole {
            break;
        }
    }
    assert!(
        naps.iter().any(|r| r.blocked >= Duration::from_millis(30)),
        "{naps:?}"
    );
    // Computing, and host calls that return at once, are never blocked: turns on the thread
    // and fuel yields are not waits.
    for name in ["infinite_loop", "busy_host_calls"] {
        let report = run(&sandbox, &fixture(name), b"", |l| RunLimits {
            fuel: u64::MAX / 4,
            wall_ms: 100,
            ..l
        });
        assert_eq!(
            report.outcome,
            Outcome::DeadlineExceeded,
            "{name}: {report:?}"
        );
        assert_eq!(report.blocked, Duration::ZERO, "{name}: {report:?}");
    }
}

#[test]
fn a_host_call_blocked_past_the_wall_limit_or_the_blocked_budget_ends_the_run() {
    let sandbox = sandbox();
    // An hour's sleep ends at the wall limit, blocked for (almost) all of it.
    let report = run(&sandbox, &fixture("sleeper"), b"", |l| RunLimits {
        wall_ms: 150,
        ..l
    });
    assert_eq!(report.outcome, Outcome::DeadlineExceeded, "{report:?}");
    assert!(report.blocked > Duration::ZERO, "{report:?}");
    assert!(report.blocked <= Duration::from_millis(150), "{report:?}");
    // With a minute of wall time but 40 ms of blocked time paid for, it ends when the 40 ms
    // are spent.
    let report = run(&sandbox, &fixture("sleeper"), b"", |l| {
        RunLimits {
            wall_ms: 60_000,
            ..l
        }
        .with_blocked_ms_at_most(40)
    });
    assert_eq!(report.outcome, Outcome::DeadlineExceeded, "{report:?}");
    assert!(report.blocked >= Duration::from_millis(40), "{report:?}");
    assert!(report.blocked < Duration::from_secs(30), "{report:?}");
}

#[test]
fn a_run_reports_its_peak_linear_memory_initial_size_and_allowed_growth_included() {
    let sandbox = sandbox();
    // Two pages declared, grown by three: five pages (64 KiB each) at the peak.
    let grows = r#"(module
  (memory (export "memory") 2)
  (func (export "_start") (drop (memory.grow (i32.const 3)))))"#;
    let report = run(&sandbox, &verified_wat("grows", grows, ""), b"", |l| l);
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(report.memory_bytes_peak, 5 * 65_536);
    // A refused growth does not count: the peak is the last size the limiter allowed.
    let report = run(&sandbox, &fixture("memory_grow_loop"), b"", |l| {
        l.with_memory_bytes_at_most(4 * 65_536)
    });
    assert_eq!(report.outcome, Outcome::MemoryLimitExceeded);
    assert_eq!(report.memory_bytes_peak, 4 * 65_536);
}
