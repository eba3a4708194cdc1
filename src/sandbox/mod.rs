//! The spell runtime. Knows wasmtime and nothing of HTTP or SQL.
//!
//! One [`Sandbox`] per process owns the engine, the module cache, the fair run scheduler and
//! the runtime that runs wasm. A run takes a [`CompiledSpell`] (only obtainable from a
//! [`VerifiedModule`]), the input bytes and [`RunLimits`], and returns a [`RunReport`] whose
//! [`Outcome`] is typed and whose `fuel_used` is always set.
//!
//! Runs are async stores on a multi-threaded runtime of their own (`spellhost-wasm-*`, one
//! thread per core), apart from the HTTP runtime: a spell that computes yields to the others
//! every [`FUEL_YIELD_INTERVAL`] of fuel, and a spell that sleeps in a host call holds no
//! thread at all, only its slot. Slots are granted by the [`scheduler`]: at most `runs_max` at
//! once, `tenant_runs_max` per user, the next free one to the least-served waiting user.

mod blocked;
mod cache;
mod engine;
mod limits;
mod outcome;
mod output;
mod pool;
mod run;
pub mod scheduler;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::{Engine, InstancePre, Linker, Module};

pub use cache::ModuleSource;
pub use limits::{HostLimits, RunLimits};
pub use outcome::{Outcome, RunReport};
pub use run::{FUEL_YIELD_INTERVAL, HOST_FUEL_PER_BYTE};
pub use scheduler::{Lane, RunFor, Tenant};

use crate::supply_chain::{ManifestLimits, ModuleDigest, VerifiedModule};
use cache::{ArtifactStore, CacheCounters, LruMap};
use pool::WorkerPool;
use run::SpellState;
use scheduler::{Capacity, Refusal, Scheduler};

/// How the sandbox is set up; every field has a laptop-friendly default.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub limits: HostLimits,
    /// Threads that run wasm. Defaults to the number of cores: wasm is CPU-bound.
    pub workers: usize,
    /// Runs at once (slots), across users. Each holds an instance and up to the memory limit;
    /// computing runs share the worker threads, taking turns at every fuel yield, and sleeping
    /// ones hold no thread. 4 per worker lets short casts pass long ones while bounding memory
    /// to `runs_max × memory_bytes_max`.
    pub runs_max: usize,
    /// Runs at once for one user; their next casts wait in that user's own queue. One per
    /// worker: one user can keep every core busy but never holds more than a quarter of the
    /// slots, and a short cast of another waits behind at most one slice of theirs per thread
    /// (2 per worker doubled a light tenant's p99 under a CPU-bound neighbour).
    pub tenant_runs_max: usize,
    /// Runs allowed to wait for a slot. 64 per worker keeps the worst queueing delay near 64
    /// short casts. One user alone may fill it; when it is full, a run of a user with fewer
    /// waiting pushes out the newest of the user with the most (429 for that one).
    pub queue_depth: usize,
    /// Compiled modules kept in memory. Each costs its machine code (~1–3× the wasm size).
    pub cached_modules_max: usize,
    /// Where precompiled artifacts live, and the key that authenticates them.
    pub artifacts: Option<(PathBuf, [u8; 32])>,
    /// The longest a run may wait in the queue before it is refused (`Busy`, or
    /// `TooManyConcurrent` when it waited behind its own user's runs) instead of started.
    /// Bounds latency under overload, and bounds how long a cast's hold can live.
    pub queue_wait_max: Duration,
    /// Threads that compile modules (at publish and on a cache miss), apart from the wasm
    /// workers: a module that is slow to compile takes one of these, never a cast's worker.
    pub compile_workers: usize,
    /// The OS scheduling class of the threads that run wasm and compile modules.
    pub thread_policy: ThreadPolicy,
    /// How long a compile may take before the module is refused as `module_too_complex`.
    /// Cranelift cannot be interrupted: the compile runs on to its end on its thread, which
    /// the pool's size bounds; its result is cached (a refused publish never names it).
    pub compile_time_max: Duration,
}

/// The OS scheduling class of the sandbox's threads (`SPELLHOST_WASM_THREAD_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadPolicy {
    /// Like every other thread of the host.
    #[default]
    Normal,
    /// Linux's `SCHED_IDLE`: any other runnable thread preempts them at once, so the HTTP
    /// runtime and the money writer never wait behind a computing spell for a core. For hosts
    /// that run nothing else: beside another busy process an idle-class thread gets almost no
    /// CPU, and casts run into their wall limits. Measured with `benches/noisy_neighbour.sh`:
    /// a light tenant's p99 beside a CPU-bound one, median 1.46× its idle p99 over seven runs
    /// (1.12–2.99×) against 2.41× (1.97–3.07×) with `Normal` (benches/README.md).
    Idle,
}

impl std::str::FromStr for ThreadPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "normal" => Ok(ThreadPolicy::Normal),
            "idle" => Ok(ThreadPolicy::Idle),
            other => Err(format!("{other:?} is not one of normal, idle")),
        }
    }
}

impl ThreadPolicy {
    /// Gives the calling thread the kernel's default time slice back, then puts it in this
    /// class; a failure is logged, and the thread runs on as a normal one. The server's other
    /// threads ask for a short slice ([`crate::threads`]), which a thread started from them
    /// inherits (and keeps through a change of class), and a spell computing on a short slice
    /// would preempt others as eagerly as they preempt it.
    pub fn apply_to_this_thread(self) {
        if let Err(error) = crate::threads::set_slice_of_this_thread(None) {
            // Refused where the server's own request was refused too, which said so once.
            tracing::debug!(%error, "could not give a sandbox thread the default time slice");
        }
        if self == ThreadPolicy::Idle {
            #[cfg(target_os = "linux")]
            {
                use thread_priority::{
                    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
                };
                if let Err(error) = thread_priority::set_thread_priority_and_policy(
                    thread_priority::thread_native_id(),
                    ThreadPriority::Min,
                    ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
                ) {
                    tracing::warn!(?error, "could not put a sandbox thread in SCHED_IDLE");
                }
            }
            #[cfg(not(target_os = "linux"))]
            tracing::warn!("SCHED_IDLE is Linux's: the sandbox's threads stay normal");
        }
    }
}

/// Compiles allowed to wait for a compile thread before new ones are refused as `Busy`.
const COMPILE_QUEUE_DEPTH: usize = 16;
/// How long a compile may wait for a compile thread before it is refused as `Busy`.
const COMPILE_QUEUE_WAIT_MAX: Duration = Duration::from_secs(30);

impl Default for SandboxConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        SandboxConfig {
            limits: HostLimits::default(),
            workers,
            runs_max: workers * 4,
            tenant_runs_max: workers,
            queue_depth: workers * 64,
            cached_modules_max: 256,
            artifacts: None,
            queue_wait_max: Duration::from_secs(2),
            compile_workers: 1,
            // A debug build's cranelift is itself unoptimized and compiles ~10x slower
            // (`wordfreq`: ~4 s on a busy 2-core machine): `cargo run` must still publish the
            // examples.
            compile_time_max: Duration::from_secs(if cfg!(debug_assertions) { 120 } else { 20 }),
            thread_policy: ThreadPolicy::Normal,
        }
    }
}

/// Why the sandbox could not run a spell at all (as opposed to a spell that ran and failed,
/// which is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("all sandbox workers are busy")]
    Busy,
    /// The caller's own runs fill its share: it waited the queue-wait limit behind them, or
    /// its queue is full. Others are not affected.
    #[error("this caller already has {limit} runs in flight")]
    TooManyConcurrent { limit: usize },
    /// Like `TooManyConcurrent`, for the lane the run came through (an API key's own limit).
    #[error("this key already has {limit} runs in flight")]
    TooManyConcurrentForKey { limit: usize },
    #[error("input is {actual} bytes; the limit is {limit}")]
    InputTooLarge { actual: usize, limit: u64 },
    #[error("the module could not be compiled: {0}")]
    Compile(String),
    #[error("compiling the module took longer than the limit of {} ms", .0.as_millis())]
    CompileTimeLimit(Duration),
    #[error("the sandbox worker stopped before answering")]
    WorkerLost,
}

/// A verified module compiled and linked, ready to instantiate. Cached by digest, so it
/// carries nothing of any one version's manifest: limits come with each run.
pub struct CompiledSpell {
    digest: ModuleDigest,
    /// The largest initial memory the module declares, in bytes.
    declared_memory_bytes: u64,
    /// `None` when the module's declared memory or tables exceed the host's maxima: every run
    /// of it ends in `memory_limit_exceeded` without instantiating.
    pre: Option<InstancePre<SpellState>>,
    /// Whether a run can be blocked in a host call at all: see [`CompiledSpell::may_block`].
    may_block: bool,
}

/// The one WASI call that can leave a run blocked with nothing to do: a sleep, or a wait on a
/// clock or a descriptor. Every other call the gate allows returns at once under the host's
/// context (stdio is in memory, nothing is preopened, there are no sockets).
const BLOCKING_IMPORT: (&str, &str) = ("wasi_snapshot_preview1", "poll_oneoff");

impl CompiledSpell {
    pub fn digest(&self) -> &ModuleDigest {
        &self.digest
    }

    /// Whether a run of this module can spend time blocked in a host call: only if it imports
    /// `poll_oneoff`. A module that cannot block is never billed blocked time, so nothing is
    /// held for it: its worst case is its fuel (`hello` holds a few µ$, not its wall limit at
    /// the price of a blocked millisecond).
    pub fn may_block(&self) -> bool {
        self.may_block
    }
}

pub struct Sandbox {
    engine: Engine,
    linker: Linker<SpellState>,
    limits: HostLimits,
    modules: LruMap<Arc<CompiledSpell>>,
    counters: CacheCounters,
    artifacts: Option<ArtifactStore>,
    wasm: WasmRuntime,
    scheduler: Arc<Scheduler>,
    compiler: WorkerPool,
    compile_time_max: Duration,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        // Each run slot holds at most one live instance; the slack covers a store still being
        // torn down on each worker while the next run starts.
        // Slots also hold instances whose pages wait in a decommit batch: one batch per core.
        let parallelism = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(16);
        let runs_max = config.runs_max.max(1);
        let slots = runs_max + config.workers + 2 + parallelism * engine::DECOMMIT_BATCH;
        let instance_slots = u32::try_from(slots).unwrap_or(u32::MAX);
        let (engine, reset) = engine::build(&config.limits, instance_slots)?;
        tracing::debug!(?reset, "how finished instances are reset for the next cast");
        engine::spawn_epoch_ticker(&engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, SpellState::wasi)?;
        let artifacts = match config.artifacts {
            Some((dir, key)) => Some(ArtifactStore::new(dir, key)?),
            None => None,
        };
        Ok(Sandbox {
            engine,
            linker,
            limits: config.limits,
            modules: LruMap::new(config.cached_modules_max),
            counters: CacheCounters::default(),
            artifacts,
            wasm: WasmRuntime::new(config.workers, config.thread_policy)?,
            scheduler: Scheduler::new(
                Capacity {
                    slots: runs_max,
                    tenant_limit: config.tenant_runs_max,
                    queue_max: config.queue_depth,
                },
                config.queue_wait_max,
            ),
            compiler: WorkerPool::new(
                "compile",
                config.compile_workers,
                COMPILE_QUEUE_DEPTH,
                config.thread_policy,
            )?,
            compile_time_max: config.compile_time_max,
        })
    }

    pub fn host_limits(&self) -> &HostLimits {
        &self.limits
    }

    /// The limits for a version with these manifest limits, before any caller or budget cap.
    pub fn limits_for(&self, manifest: &ManifestLimits) -> RunLimits {
        RunLimits::for_spell(&self.limits, manifest)
    }

    /// The compiled module for `digest`, if it is in memory (counted as a cache hit).
    pub fn cached(&self, digest: &ModuleDigest) -> Option<Arc<CompiledSpell>> {
        let spell = self.modules.get(digest)?;
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(spell)
    }

    /// Finds the module in memory, or compiles it on the compile pool within the compile time
    /// limit. What the server uses, at publish and on a cast's cache miss; a full compile
    /// queue is `Busy`.
    pub async fn prepare_bounded(
        self: &Arc<Self>,
        module: &VerifiedModule,
    ) -> Result<(Arc<CompiledSpell>, ModuleSource), SandboxError> {
        if let Some(spell) = self.cached(module.digest()) {
            return Ok((spell, ModuleSource::Memory));
        }
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let sandbox = Arc::clone(self);
        let module = module.clone();
        self.compiler
            .try_submit(Box::new(move |_runtime| {
                // Nobody waits any more when the caller gave up: skip a compile that had not
                // started yet.
                if sender.is_closed() || started.send(()).is_err() {
                    return;
                }
                let _ = sender.send(sandbox.prepare(&module));
            }))
            .map_err(|_| SandboxError::Busy)?;
        // The time limit counts from the compile's start: waiting behind other compiles makes
        // the pool busy, not this module complex.
        match tokio::time::timeout(COMPILE_QUEUE_WAIT_MAX, has_started).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(SandboxError::WorkerLost),
            Err(_) => return Err(SandboxError::Busy),
        }
        match tokio::time::timeout(self.compile_time_max, receiver).await {
            Ok(answer) => answer.map_err(|_| SandboxError::WorkerLost)?,
            Err(_) => Err(SandboxError::CompileTimeLimit(self.compile_time_max)),
        }
    }

    /// Compiles (or finds) the module on the calling thread, unbounded in time. For the CLI
    /// and benchmarks, and for the compile pool's threads; never call it on the reactor.
    pub fn prepare(
        &self,
        module: &VerifiedModule,
    ) -> Result<(Arc<CompiledSpell>, ModuleSource), SandboxError> {
        let digest = *module.digest();
        if let Some(spell) = self.modules.get(&digest) {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((spell, ModuleSource::Memory));
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let declared = declared_sizes(module.bytes());
        let fits = declared.memory_bytes <= self.limits.memory_bytes_max
            && declared.table_elements <= self.limits.table_elements_max;
        let (pre, may_block, source) = if fits {
            let (compiled, source) = self.compile(&digest, module.bytes())?;
            let may_block = compiled
                .imports()
                .any(|import| (import.module(), import.name()) == BLOCKING_IMPORT);
            let pre = self
                .linker
                .instantiate_pre(&compiled)
                .map_err(|e| SandboxError::Compile(e.to_string()))?;
            (Some(pre), may_block, source)
        } else {
            // Never instantiated: every run ends before it could block.
            (None, false, ModuleSource::Compiled)
        };
        let spell = Arc::new(CompiledSpell {
            digest,
            declared_memory_bytes: declared.memory_bytes,
            pre,
            may_block,
        });
        self.modules.insert(digest, spell.clone());
        Ok((spell, source))
    }

    fn compile(
        &self,
        digest: &ModuleDigest,
        bytes: &[u8],
    ) -> Result<(Module, ModuleSource), SandboxError> {
        if let Some(module) = self
            .artifacts
            .as_ref()
            .and_then(|store| store.load(&self.engine, digest))
        {
            return Ok((module, ModuleSource::Artifact));
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| SandboxError::Compile(e.to_string()))?;
        if let Some(store) = &self.artifacts {
            store.store(digest, &module);
        }
        Ok((module, ModuleSource::Compiled))
    }

    /// Runs a spell for a tenant (through one of its lanes, or not) once the scheduler grants
    /// it a slot, on the wasm runtime, and waits for its report without blocking the caller's
    /// runtime. The run goes on to its end (and keeps its slot) even if the caller stops
    /// waiting.
    pub async fn run(
        &self,
        who: impl Into<RunFor>,
        spell: Arc<CompiledSpell>,
        input: Vec<u8>,
        limits: RunLimits,
    ) -> Result<RunReport, SandboxError> {
        self.run_then(who, spell, input, limits, |_| ())
            .await
            .map(|(report, ())| report)
    }

    /// [`run`](Self::run), then `then` with the report, on the wasm thread that ran it, before
    /// the caller is woken: what must follow every run (a cast queues its settlement for the
    /// money writer) starts from there, without a detour through the caller's runtime. `then`
    /// must be short, and must neither block nor take a lock that another runtime holds for
    /// long. If the run never starts (refused, or its wait for a slot ran out), `then` is
    /// dropped uncalled.
    pub async fn run_then<T: Send + 'static>(
        &self,
        who: impl Into<RunFor>,
        spell: Arc<CompiledSpell>,
        input: Vec<u8>,
        limits: RunLimits,
        then: impl FnOnce(&RunReport) -> T + Send + 'static,
    ) -> Result<(RunReport, T), SandboxError> {
        if input.len() as u64 > self.limits.input_bytes_max {
            return Err(SandboxError::InputTooLarge {
                actual: input.len(),
                limit: self.limits.input_bytes_max,
            });
        }
        let who = who.into();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let tenant_limit = self.scheduler.capacity().tenant_limit;
        let lane_limit = who.lane.as_ref().map_or(tenant_limit, |lane| lane.limit);
        let refused = move |refusal: Refusal| match refusal {
            Refusal::TenantLimit => SandboxError::TooManyConcurrent {
                limit: tenant_limit,
            },
            Refusal::LaneLimit => SandboxError::TooManyConcurrentForKey { limit: lane_limit },
            Refusal::Busy => SandboxError::Busy,
        };
        let tenant = who.tenant;
        let engine = self.engine.clone();
        let host = self.limits.clone();
        let wasm = self.wasm.handle().clone();
        // Called with the slot by whoever frees one (or at once): the run starts from there,
        // and keeps its slot to its end even if nobody waits for it any more.
        let job: scheduler::Job = Box::new(move |granted| match granted {
            Ok(slot) => {
                let granted = std::time::Instant::now();
                wasm.spawn(async move {
                    // A run started by the release of another is spawned from that wasm
                    // thread and takes its LIFO slot, ahead of runs that arrived meanwhile;
                    // yielding once puts it behind them.
                    if !slot.waited.is_zero() {
                        tokio::task::yield_now().await;
                    }
                    let dispatch_wait = granted.elapsed();
                    let mut report = run::execute(&engine, &spell, &input, limits, &host).await;
                    report.queue_wait = slot.waited;
                    report.dispatch_wait = dispatch_wait;
                    drop(slot);
                    let after = then(&report);
                    let _ = sender.send(Ok((report, after)));
                });
            }
            Err(refusal) => {
                let _ = sender.send(Err(refused(refusal)));
            }
        });
        let mut receiver = receiver;
        if let Some(ticket) = self.scheduler.submit(who, job) {
            // The ticket is given up after the wait limit, or when this future is dropped.
            let mut waiting = Waiting {
                scheduler: &self.scheduler,
                tenant,
                ticket: Some(ticket),
            };
            tokio::select! {
                biased;
                answer = &mut receiver => {
                    waiting.ticket = None;
                    return answer.map_err(|_| SandboxError::WorkerLost)?;
                }
                () = tokio::time::sleep(self.scheduler.wait_max()) => {}
            }
            if let Some(refusal) = waiting.give_up() {
                return Err(refused(refusal));
            }
        }
        // A panic in the run is contained in its task; the caller sees a lost worker.
        receiver.await.map_err(|_| SandboxError::WorkerLost)?
    }

    /// Like [`run`](Self::run), for callers outside any async runtime (the CLI), as
    /// [`Tenant::LOCAL`].
    pub fn run_blocking(
        &self,
        spell: Arc<CompiledSpell>,
        input: Vec<u8>,
        limits: RunLimits,
    ) -> Result<RunReport, SandboxError> {
        self.wasm
            .handle()
            .block_on(self.run(Tenant::LOCAL, spell, input, limits))
    }

    /// Runs on the current thread. Only for a thread that is not a reactor thread and that
    /// drives a single-threaded runtime (benchmarks); everything else uses the scheduler.
    pub async fn run_on_this_thread(
        &self,
        spell: &CompiledSpell,
        input: &[u8],
        limits: RunLimits,
    ) -> RunReport {
        run::execute(&self.engine, spell, input, limits, &self.limits).await
    }

    pub fn cache_hits(&self) -> u64 {
        self.counters.hits.load(Ordering::Relaxed)
    }
    pub fn cache_misses(&self) -> u64 {
        self.counters.misses.load(Ordering::Relaxed)
    }
    pub fn artifacts_rejected(&self) -> u64 {
        self.artifacts.as_ref().map_or(0, ArtifactStore::rejected)
    }
    /// Runs waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.scheduler.load().1
    }

    /// Runs holding a slot (running or sleeping in a host call).
    pub fn runs_in_flight(&self) -> usize {
        self.scheduler.load().0
    }
}

/// A ticket in the scheduler's queue, given up when its caller stops waiting.
struct Waiting<'a> {
    scheduler: &'a Arc<Scheduler>,
    tenant: Tenant,
    ticket: Option<scheduler::Ticket>,
}

impl Waiting<'_> {
    /// `Some(why)` if the run was still waiting (it will never start).
    fn give_up(&mut self) -> Option<Refusal> {
        let ticket = self.ticket.take()?;
        self.scheduler.give_up(self.tenant, ticket)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.give_up();
    }
}

/// The multi-threaded runtime that runs wasm, apart from the one that serves HTTP. Wasm polls
/// for up to one fuel-yield interval (~1 ms) at a time, which is fine here and would not be on
/// a reactor that also serves sockets.
struct WasmRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl WasmRuntime {
    fn new(workers: usize, policy: ThreadPolicy) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .on_thread_start(move || policy.apply_to_this_thread())
            .thread_name_fn(|| {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                format!("spellhost-wasm-{}", NEXT.fetch_add(1, Ordering::Relaxed))
            })
            // A run that arrives from the HTTP runtime lands in the shared queue: look there
            // every other poll (not every 61), or a new short cast would wait behind dozens
            // of slices of the long ones already running.
            .global_queue_interval(2)
            // Timers (sleeping spells, deadlines) are checked as often.
            .event_interval(2)
            .enable_time()
            .build()?;
        Ok(WasmRuntime {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the runtime is only taken when the sandbox is dropped"),
        }
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        // The sandbox may be dropped inside another runtime (tests, shutdown), where a
        // blocking shutdown would panic; runs still in flight are abandoned either way.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct DeclaredSizes {
    memory_bytes: u64,
    table_elements: u64,
}

/// The initial memory and table sizes a module declares (the gate has validated it; anything
/// unparseable counts as zero and is caught by the compiler).
fn declared_sizes(bytes: &[u8]) -> DeclaredSizes {
    use wasmparser::{Parser, Payload};
    let mut sizes = DeclaredSizes {
        memory_bytes: 0,
        table_elements: 0,
    };
    for payload in Parser::new(0).parse_all(bytes).flatten() {
        match payload {
            Payload::MemorySection(reader) => {
                for memory in reader.into_iter().flatten() {
                    let bytes = memory
                        .initial
                        .saturating_mul(1 << memory.page_size_log2.unwrap_or(16));
                    sizes.memory_bytes = sizes.memory_bytes.max(bytes);
                }
            }
            Payload::TableSection(reader) => {
                for table in reader.into_iter().flatten() {
                    sizes.table_elements = sizes.table_elements.max(table.ty.initial);
                }
            }
            _ => {}
        }
    }
    sizes
}

/// A deterministic random source for a run (see `run::new_store`).
fn seeded_rng(seed: [u8; 32]) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::from_seed(seed)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread, from `/proc/thread-self/stat` (field 41;
    /// 0 is `SCHED_OTHER`, 5 `SCHED_IDLE`).
    fn this_threads_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // The fields after the command's closing parenthesis start at field 3.
        let after_comm = &stat[stat.rfind(')').expect("comm") + 1..];
        let policy = after_comm.split_whitespace().nth(41 - 3).expect("policy");
        policy.parse().expect("a number")
    }

    /// What `probe` finds on a wasm thread and on a compile thread started under `policy`.
    fn on_sandbox_threads<T: Send + 'static>(policy: ThreadPolicy, probe: fn() -> T) -> (T, T) {
        let wasm = WasmRuntime::new(1, policy).expect("runtime");
        let handle = wasm.handle().clone();
        let on_wasm = handle
            .block_on(handle.spawn(async move { probe() }))
            .expect("task");
        let compiler = pool::WorkerPool::new("probe", 1, 1, policy).expect("pool");
        let (sender, receiver) = std::sync::mpsc::channel();
        compiler
            .try_submit(Box::new(move |_| {
                let _ = sender.send(probe());
            }))
            .map_err(|_| "queue full")
            .expect("submitted");
        (on_wasm, receiver.recv().expect("answer"))
    }

    #[test]
    fn the_idle_policy_puts_the_wasm_and_compile_threads_in_sched_idle() {
        for (policy, expected) in [(ThreadPolicy::Idle, 5), (ThreadPolicy::Normal, 0)] {
            let seen = on_sandbox_threads(policy, this_threads_policy);
            assert_eq!(
                seen,
                (expected, expected),
                "wasm, compile thread: {policy:?}"
            );
            // The test's own thread is untouched.
            assert_eq!(this_threads_policy(), 0);
        }
    }

    #[test]
    fn the_wasm_and_compile_threads_go_back_to_the_kernels_slice() {
        use crate::threads::{SLICE_MIN, set_slice_of_this_thread, slice_of_this_thread};
        // On a thread of its own, as `spellhost serve`'s main thread: it asks for a short slice
        // before it starts the runtimes, whose threads inherit it.
        std::thread::spawn(|| {
            set_slice_of_this_thread(None).expect("default");
            let default = slice_of_this_thread().expect("read");
            if default.is_zero() {
                // Before Linux 6.12 there are no per-thread slices.
                return;
            }
            set_slice_of_this_thread(Some(SLICE_MIN)).expect("short");
            // An idle-class thread keeps a custom slice through its change of class unless
            // it is given the default back first.
            for policy in [ThreadPolicy::Normal, ThreadPolicy::Idle] {
                let seen = on_sandbox_threads(policy, || slice_of_this_thread().expect("read"));
                assert_eq!(seen, (default, default), "wasm, compile thread: {policy:?}");
            }
            assert_eq!(
                slice_of_this_thread().expect("read"),
                SLICE_MIN,
                "the server's own"
            );
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn the_thread_policy_is_named_in_the_configuration() {
        assert_eq!("idle".parse(), Ok(ThreadPolicy::Idle));
        assert_eq!("normal".parse(), Ok(ThreadPolicy::Normal));
        assert!("realtime".parse::<ThreadPolicy>().is_err());
        assert_eq!(SandboxConfig::default().thread_policy, ThreadPolicy::Normal);
    }
}
