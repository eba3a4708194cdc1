//! The one `wasmtime::Engine` of the process and its epoch ticker.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::HostLimits;

/// How often the epoch advances. Wall-clock deadlines are counted in these ticks, so this is
/// the precision of a deadline; 1 ms costs one atomic increment per millisecond.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Finished instances whose memory is returned to the OS together (see `build`).
pub const DECOMMIT_BATCH: usize = 4;

/// Builds the engine: fuel metering, epoch interruption, pooling allocator, bounded stack;
/// threads, shared memory, memory64, GC, exceptions and components off.
pub fn build(host: &HostLimits, instance_slots: u32) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(host.wasm_stack_bytes_max)
        // Fibers (async calls) need the wasm stack plus room for host frames.
        .async_stack_size(host.wasm_stack_bytes_max + 1024 * 1024)
        .wasm_memory64(false)
        .wasm_gc(false)
        .wasm_component_model(false)
        .cranelift_opt_level(OptLevel::Speed)
        // One compile takes one thread of the compile pool, not every core: a module that
        // is slow to compile must not slow the casts of others.
        .parallel_compilation(false);

    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(instance_slots)
        .total_memories(instance_slots)
        .total_tables(instance_slots)
        .total_stacks(instance_slots)
        .total_component_instances(0)
        .max_memory_size(usize::try_from(host.memory_bytes_max).unwrap_or(usize::MAX))
        .table_elements(usize::try_from(host.table_elements_max).unwrap_or(usize::MAX))
        // What a short cast touches is zeroed in place and kept resident instead of returned
        // to the OS and faulted in again on the next cast. Measured on `hello`: 1 MiB of
        // linear memory kept resident cost 62 µs per cast (the memset), none 40 µs; 64 KiB of
        // each is the best of those tried (benches/README.md).
        .linear_memory_keep_resident(64 * 1024)
        .async_stack_keep_resident(64 * 1024)
        // Returning pages to the OS costs a TLB shootdown across cores per call; batching the
        // decommits of several finished casts took `hello` from 35 µs to 29 µs.
        .decommit_batch_size(DECOMMIT_BATCH);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
pub fn spawn_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("spellhost-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })?;
    Ok(())
}
