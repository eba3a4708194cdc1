//! The one `wasmtime::Engine` of the process and its epoch ticker.

use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use super::HostLimits;

/// How often the epoch advances. Wall-clock deadlines are counted in these ticks, so this is
/// the precision of a deadline; 1 ms costs one atomic increment per millisecond.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Finished instances whose memory is returned to the OS together (see `build`).
pub const DECOMMIT_BATCH: usize = 4;

/// How a finished instance's memory and table are reset for the next cast in their slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Linux's `PAGEMAP_SCAN` ioctl (6.7+) finds the pages a cast touched, and only those are
    /// reset in place: they stay mapped, so the next cast takes no page fault and no TLB
    /// shootdown for them, and much more can be kept resident at no cost to a small cast.
    PagemapScan,
    /// Without it, the lowest bytes of each are `memset` (what a small cast touches) and the
    /// rest is returned to the OS.
    Memset,
}

impl Reset {
    /// Bytes of each linear memory kept resident between casts. With `memset` every byte
    /// kept is zeroed every cast: 1 MiB cost `hello` 62 µs, none 40 µs (page faults), 64 KiB
    /// was the best of those tried. With the scan only touched pages are reset, so 1 MiB
    /// costs `hello` nothing and saves a larger spell its faults.
    fn memory_keep_resident(self) -> usize {
        match self {
            Reset::PagemapScan => 1024 * 1024,
            Reset::Memset => 64 * 1024,
        }
    }
}

/// Builds the engine: fuel metering, epoch interruption, pooling allocator, bounded stack;
/// threads, shared memory, memory64, GC, exceptions and components off. Resets slots with
/// `PAGEMAP_SCAN` where the kernel has it, by `memset` elsewhere.
pub fn build(host: &HostLimits, instance_slots: u32) -> wasmtime::Result<(Engine, Reset)> {
    match Engine::new(&config(host, instance_slots, Reset::PagemapScan)) {
        Ok(engine) => Ok((engine, Reset::PagemapScan)),
        Err(_) => Ok((
            Engine::new(&config(host, instance_slots, Reset::Memset))?,
            Reset::Memset,
        )),
    }
}

fn config(host: &HostLimits, instance_slots: u32, reset: Reset) -> Config {
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
        // What a cast touches is reset in place and kept resident instead of returned to the
        // OS and faulted in again on the next cast (see `Reset`). A page faulted in after it
        // was returned is first mapped read-only (the zero page, or the module's image), and
        // the write that follows replaces it and shoots down the TLB of every core the
        // process runs on: that IPI was a tenth of the server's CPU at 64 connections. The
        // table (`hello`'s lazily initialised function references) is reset the same way.
        .linear_memory_keep_resident(reset.memory_keep_resident())
        .table_keep_resident(64 * 1024)
        .async_stack_keep_resident(64 * 1024)
        .pagemap_scan(match reset {
            Reset::PagemapScan => Enabled::Yes,
            Reset::Memset => Enabled::No,
        })
        // Returning pages to the OS costs a TLB shootdown across cores per call; batching the
        // decommits of several finished casts took `hello` from 35 µs to 29 µs.
        .decommit_batch_size(DECOMMIT_BATCH);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
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
