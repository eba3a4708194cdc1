//! One run of one spell: a fresh `Store`, WASI p1 with captured stdio, limits, and the typed
//! outcome.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, InstancePre, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use super::output::{CappedPipe, OnOverflow};
use super::{CompiledSpell, HostLimits, Outcome, RunLimits, RunReport};

/// Fuel between two yields of a running spell to its executor. Yields let the wall-clock
/// timeout fire even for a spell that never calls the host, and they bound how much fuel can
/// go uncounted when a spell traps (wasmtime issue 13802). 2²⁰ fuel is ~1 ms of compute, so
/// yielding costs well under 1 % of throughput.
pub const FUEL_YIELD_INTERVAL: u64 = 1 << 20;

/// Extra time granted to the executor-level timeout beyond the epoch deadline. The epoch trap
/// fires first for compute; this backstop only ends runs stuck in a host call.
const HOST_CALL_GRACE: Duration = Duration::from_millis(5);

pub struct SpellState {
    wasi: WasiP1Ctx,
    limiter: SpellLimiter,
}

impl SpellState {
    pub fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }
}

/// Enforces memory and table limits per store and remembers whether it refused a growth.
struct SpellLimiter {
    memory_bytes_max: usize,
    table_elements_max: usize,
    refused: bool,
}

impl ResourceLimiter for SpellLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_bytes_max;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.table_elements_max;
        self.refused |= !allowed;
        Ok(allowed)
    }

    // A spell is one core module: one instance, one memory, one table.
    fn instances(&self) -> usize {
        1
    }
    fn memories(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        1
    }
}

/// Total fuel the replays of one run may burn to make `fuel_used` exact after a trap that
/// wasmtime does not account precisely (see [`exact_fuel_after_trap`]). 64·10⁶ fuel is ~30 ms
/// of CPU, so replays can never cost much more than the run they correct.
const REPLAY_FUEL_BUDGET: u64 = 64_000_000;

/// Runs `spell` on the current thread, which must not be a tokio reactor thread.
pub async fn execute(
    engine: &Engine,
    spell: &CompiledSpell,
    input: &[u8],
    limits: RunLimits,
    host: &HostLimits,
) -> RunReport {
    let (mut report, trap) = run_once(engine, spell, input, limits, host).await;
    if let Some(trap) = trap
        && fuel_may_be_unaccounted(trap)
    {
        report.fuel_used =
            exact_fuel_after_trap(engine, spell, input, limits, host, report.fuel_used).await;
    }
    report
}

/// Traps raised by an instruction in the middle of a basic block leave that block's fuel (and
/// everything since the function last called out or yielded) unaccounted (wasmtime issue
/// 13802). `unreachable` and calls flush the counter first; a stack overflow happens at a
/// callee's entry, after its caller flushed.
fn fuel_may_be_unaccounted(trap: Trap) -> bool {
    !matches!(
        trap,
        Trap::UnreachableCodeReached | Trap::StackOverflow | Trap::OutOfFuel | Trap::Interrupt
    )
}

/// The fuel a trapping run really burned, found by deterministic replay: fuel is exact at
/// every fuel check, so the smallest cap under which the spell still reaches its trap (rather
/// than running out of fuel) is the fuel burned up to its last check before the trap — exact
/// but for the straight-line instructions after that check. The uncounted gap is at most
/// [`FUEL_YIELD_INTERVAL`]; a galloping then binary search over it needs ~2·log₂(gap)
/// replays. If the replays would exceed [`REPLAY_FUEL_BUDGET`] or the host's
/// `trap_replay_wall_ms_max` (fuel alone would not bound them: a spell can sleep in a host
/// call before trapping), the upper bound is charged:
/// never less than was burned, at most one yield interval more.
async fn exact_fuel_after_trap(
    engine: &Engine,
    spell: &CompiledSpell,
    input: &[u8],
    limits: RunLimits,
    host: &HostLimits,
    reported: u64,
) -> u64 {
    let upper = reported
        .saturating_add(FUEL_YIELD_INTERVAL + 1)
        .min(limits.fuel);
    let mut budget = REPLAY_FUEL_BUDGET;
    let deadline = Instant::now() + Duration::from_millis(host.trap_replay_wall_ms_max);
    let mut reaches_trap = async |cap: u64| -> Option<bool> {
        budget = budget.checked_sub(cap)?;
        let remaining_ms =
            u64::try_from(deadline.checked_duration_since(Instant::now())?.as_millis()).ok()?;
        let replay = limits
            .with_fuel_at_most(cap)
            .with_wall_ms_at_most(remaining_ms.max(1));
        let (report, _) = run_once(engine, spell, input, replay, host).await;
        match report.outcome {
            Outcome::OutOfFuel => Some(false),
            Outcome::Trapped(_) => Some(true),
            // A deadline during a replay says nothing about fuel; stop and charge the bound.
            _ => None,
        }
    };
    // Gallop up from the reported value until a cap reaches the trap ...
    let mut low = reported;
    let mut step = 1u64;
    let mut high = loop {
        let probe = reported.saturating_add(step).min(upper);
        match reaches_trap(probe).await {
            None => return upper,
            Some(true) => break probe,
            Some(false) if probe >= upper => return upper,
            Some(false) => low = probe,
        }
        step = step.saturating_mul(2);
    };
    // ... then bisect between the last cap that ran out and the first that reached it.
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        match reaches_trap(middle).await {
            None => return high,
            Some(true) => high = middle,
            Some(false) => low = middle,
        }
    }
    high
}

async fn run_once(
    engine: &Engine,
    spell: &CompiledSpell,
    input: &[u8],
    limits: RunLimits,
    host: &HostLimits,
) -> (RunReport, Option<Trap>) {
    let stdout = CappedPipe::new(to_usize(limits.output_bytes), OnOverflow::Trap);
    let stderr = CappedPipe::new(to_usize(host.stderr_bytes_max), OnOverflow::Truncate);
    let Some(pre) = spell
        .pre
        .as_ref()
        .filter(|_| spell.declared_memory_bytes <= limits.memory_bytes)
    else {
        // The module's declared minimum memory exceeds what this run may use.
        let report = RunReport {
            outcome: Outcome::MemoryLimitExceeded,
            fuel_used: 0,
            output: Vec::new(),
            stderr: Vec::new(),
            duration: Duration::ZERO,
        };
        return (report, None);
    };
    let mut store = new_store(engine, spell, input, limits, host, &stdout, &stderr);

    let started = Instant::now();
    let wall = Duration::from_millis(limits.wall_ms) + HOST_CALL_GRACE;
    let result = tokio::time::timeout(wall, call_start(pre, &mut store)).await;
    let duration = started.elapsed();

    let remaining = store.get_fuel().unwrap_or(0);
    let fuel_used = limits.fuel.saturating_sub(remaining);
    let refused = store.data().limiter.refused;
    let trap = match &result {
        Ok(Err(error)) => error.downcast_ref::<Trap>().copied(),
        _ => None,
    };
    let outcome = match result {
        Err(_elapsed) => Outcome::DeadlineExceeded,
        Ok(result) => classify(result, refused, stdout.overflowed()),
    };
    let report = RunReport {
        outcome,
        fuel_used,
        output: stdout.take(),
        stderr: stderr.take(),
        duration,
    };
    (report, trap)
}

fn new_store(
    engine: &Engine,
    spell: &CompiledSpell,
    input: &[u8],
    limits: RunLimits,
    host: &HostLimits,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
) -> Store<SpellState> {
    // Randomness is seeded from the module and its input, so a run is reproducible: the same
    // module and input burn the same fuel, every time (Rust's HashMap seeds itself from it).
    let seed: [u8; 32] = Sha256::new()
        .chain_update(spell.digest.as_bytes())
        .chain_update(input)
        .finalize()
        .into();
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(input.to_vec()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .args(&["spell"])
        .secure_random(super::seeded_rng(seed))
        .insecure_random(super::seeded_rng(seed))
        .insecure_random_seed(u128::from_le_bytes(
            seed[..16].try_into().unwrap_or_default(),
        ))
        .build_p1();
    let limiter = SpellLimiter {
        memory_bytes_max: to_usize(limits.memory_bytes),
        table_elements_max: to_usize(host.table_elements_max),
        refused: false,
    };
    let mut store = Store::new(engine, SpellState { wasi, limiter });
    store.limiter(|state| &mut state.limiter);
    // Both calls only fail when fuel is disabled in the engine, which it never is.
    let _ = store.set_fuel(limits.fuel);
    let _ = store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL));
    // One tick more than the limit: the first tick may come at once, so `n + 1` ticks take at
    // least `n` tick intervals and a spell is never stopped before its limit.
    store.set_epoch_deadline((limits.wall_ms / EPOCH_TICK_MS).max(1) + 1);
    store.epoch_deadline_trap();
    store
}

const EPOCH_TICK_MS: u64 = super::engine::EPOCH_TICK.as_millis() as u64;

async fn call_start(
    pre: &InstancePre<SpellState>,
    store: &mut Store<SpellState>,
) -> wasmtime::Result<()> {
    let instance = pre.instantiate_async(&mut *store).await?;
    let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
    start.call_async(&mut *store, ()).await
}

fn classify(
    result: wasmtime::Result<()>,
    growth_refused: bool,
    output_overflowed: bool,
) -> Outcome {
    let error = match result {
        Ok(()) => return Outcome::Ok,
        Err(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => Outcome::Ok,
            code => Outcome::ExitCode(code),
        };
    }
    if output_overflowed {
        return Outcome::OutputTooLarge;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        Some(Trap::Interrupt) => Outcome::DeadlineExceeded,
        _ if growth_refused => Outcome::MemoryLimitExceeded,
        Some(trap) => Outcome::Trapped(trap.to_string()),
        None => Outcome::Trapped(root_message(&error)),
    }
}

fn root_message(error: &wasmtime::Error) -> String {
    error
        .chain()
        .last()
        .map_or_else(|| error.to_string(), |cause| cause.to_string())
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
