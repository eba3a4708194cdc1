//! The spell runtime. Knows wasmtime and nothing of HTTP or SQL.
//!
//! One [`Sandbox`] per process owns the engine, the module cache and the worker pool. A run
//! takes a [`CompiledSpell`] (only obtainable from a [`VerifiedModule`]), the input bytes and
//! [`RunLimits`], and returns a [`RunReport`] whose [`Outcome`] is typed and whose `fuel_used`
//! is always set.

mod cache;
mod engine;
mod limits;
mod outcome;
mod output;
mod pool;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::{Engine, InstancePre, Linker, Module};

pub use cache::ModuleSource;
pub use limits::{HostLimits, RunLimits};
pub use outcome::{Outcome, RunReport};
pub use run::FUEL_YIELD_INTERVAL;

use crate::supply_chain::{ManifestLimits, ModuleDigest, VerifiedModule};
use cache::{ArtifactStore, CacheCounters, LruMap};
use pool::WorkerPool;
use run::SpellState;

/// How the sandbox is set up; every field has a laptop-friendly default.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub limits: HostLimits,
    /// Threads that run wasm. Defaults to the number of cores: wasm is CPU-bound.
    pub workers: usize,
    /// Runs allowed to wait for a worker before new ones are refused (503 with Retry-After).
    /// 64 per worker keeps the worst queueing delay near 64 short casts.
    pub queue_depth: usize,
    /// Compiled modules kept in memory. Each costs its machine code (~1–3× the wasm size).
    pub cached_modules_max: usize,
    /// Where precompiled artifacts live, and the key that authenticates them.
    pub artifacts: Option<(PathBuf, [u8; 32])>,
    /// The longest a run may wait in the queue before it is refused as `Busy` instead of
    /// started. Bounds latency under overload, and bounds how long a cast's hold can live.
    pub queue_wait_max: Duration,
    /// Threads that compile modules (at publish and on a cache miss), apart from the wasm
    /// workers: a module that is slow to compile takes one of these, never a cast's worker.
    pub compile_workers: usize,
    /// How long a compile may take before the module is refused as `module_too_complex`.
    /// Cranelift cannot be interrupted: the compile runs on to its end on its thread, which
    /// the pool's size bounds; its result is cached (a refused publish never names it).
    pub compile_time_max: Duration,
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
            queue_depth: workers * 64,
            cached_modules_max: 256,
            artifacts: None,
            queue_wait_max: Duration::from_secs(2),
            compile_workers: 1,
            // A debug build's cranelift is itself unoptimized and compiles ~10x slower
            // (`wordfreq`: ~4 s on a busy 2-core machine): `cargo run` must still publish the
            // examples.
            compile_time_max: Duration::from_secs(if cfg!(debug_assertions) { 120 } else { 20 }),
        }
    }
}

/// Why the sandbox could not run a spell at all (as opposed to a spell that ran and failed,
/// which is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("all sandbox workers are busy")]
    Busy,
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
}

impl CompiledSpell {
    pub fn digest(&self) -> &ModuleDigest {
        &self.digest
    }
}

pub struct Sandbox {
    engine: Engine,
    linker: Linker<SpellState>,
    limits: HostLimits,
    modules: LruMap<Arc<CompiledSpell>>,
    counters: CacheCounters,
    artifacts: Option<ArtifactStore>,
    pool: WorkerPool,
    queue_wait_max: Duration,
    compiler: WorkerPool,
    compile_time_max: Duration,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        // Each worker holds at most one live instance; the slack covers a store still being
        // torn down while the next run starts.
        // Slots also hold instances whose pages wait in a decommit batch: one batch per core.
        let parallelism = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(16);
        let slots = config.workers * 2 + 2 + parallelism * engine::DECOMMIT_BATCH;
        let instance_slots = u32::try_from(slots).unwrap_or(u32::MAX);
        let engine = engine::build(&config.limits, instance_slots)?;
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
            pool: WorkerPool::new("wasm", config.workers, config.queue_depth)?,
            queue_wait_max: config.queue_wait_max,
            compiler: WorkerPool::new("compile", config.compile_workers, COMPILE_QUEUE_DEPTH)?,
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
        let (pre, source) = if fits {
            let (compiled, source) = self.compile(&digest, module.bytes())?;
            let pre = self
                .linker
                .instantiate_pre(&compiled)
                .map_err(|e| SandboxError::Compile(e.to_string()))?;
            (Some(pre), source)
        } else {
            (None, ModuleSource::Compiled)
        };
        let spell = Arc::new(CompiledSpell {
            digest,
            declared_memory_bytes: declared.memory_bytes,
            pre,
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

    /// Runs a spell on the worker pool and waits for its report without blocking the reactor.
    pub async fn run(
        &self,
        spell: Arc<CompiledSpell>,
        input: Vec<u8>,
        limits: RunLimits,
    ) -> Result<RunReport, SandboxError> {
        let receiver = self.submit(spell, input, limits)?;
        receiver.await.map_err(|_| SandboxError::WorkerLost)?
    }

    /// Like [`run`](Self::run), for callers outside any async runtime (the CLI).
    pub fn run_blocking(
        &self,
        spell: Arc<CompiledSpell>,
        input: Vec<u8>,
        limits: RunLimits,
    ) -> Result<RunReport, SandboxError> {
        let receiver = self.submit(spell, input, limits)?;
        receiver
            .blocking_recv()
            .map_err(|_| SandboxError::WorkerLost)?
    }

    /// Runs on the current thread. Only for a thread that is not a reactor thread and that
    /// drives a single-threaded runtime (benchmarks); everything else uses the pool.
    pub async fn run_on_this_thread(
        &self,
        spell: &CompiledSpell,
        input: &[u8],
        limits: RunLimits,
    ) -> RunReport {
        run::execute(&self.engine, spell, input, limits, &self.limits).await
    }

    fn submit(
        &self,
        spell: Arc<CompiledSpell>,
        input: Vec<u8>,
        limits: RunLimits,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<RunReport, SandboxError>>, SandboxError> {
        if input.len() as u64 > self.limits.input_bytes_max {
            return Err(SandboxError::InputTooLarge {
                actual: input.len(),
                limit: self.limits.input_bytes_max,
            });
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let engine = self.engine.clone();
        let host = self.limits.clone();
        let start_by = Instant::now() + self.queue_wait_max;
        self.pool
            .try_submit(Box::new(move |runtime| {
                // A run that waited too long is refused rather than started late: the caller
                // has been told nothing yet and its hold must not outlive its limits.
                if Instant::now() > start_by {
                    let _ = sender.send(Err(SandboxError::Busy));
                    return;
                }
                let report = runtime.block_on(run::execute(&engine, &spell, &input, limits, &host));
                let _ = sender.send(Ok(report));
            }))
            .map_err(|_| SandboxError::Busy)?;
        Ok(receiver)
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
    pub fn queue_depth(&self) -> usize {
        self.pool.queue_depth()
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
