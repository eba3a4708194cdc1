//! Sandbox benchmarks (criterion).
//!
//! - `hello/instantiate_and_run`: one op = fresh store + instantiate (pooled, cached
//!   `InstancePre`) + run of the `hello` example. Target ≤ 30 µs median on 2 cores.
//! - `primes/fuel_on` vs `primes/fuel_off`: the CPU-bound example with and without fuel
//!   metering, to report the metering overhead ratio. Target ≤ 1.3×.
//!
//! Run: `cargo bench --bench sandbox`. Figures are recorded in `benches/README.md`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use spellhost::sandbox::{Outcome, Sandbox, SandboxConfig};
use spellhost::supply_chain::{
    SignaturePolicy, Signer, SignerKey, SpellBundle, TrustedRoots, Verifier,
};

fn example(name: &str) -> spellhost::supply_chain::VerifiedModule {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let key = std::fs::read_to_string(root.join("spells/demo-key/spell.pub")).expect("demo key");
    let key = Signer::Key(SignerKey::from_pem(&key).expect("key"));
    let bundle = SpellBundle::read_dir(&root.join("spells").join(name)).expect("spell");
    Verifier::verify(
        &bundle,
        SignaturePolicy::AnyOf(&[key], TrustedRoots::public_good()),
    )
    .expect("verifies")
}

fn single_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn hello(c: &mut Criterion) {
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let module = example("hello");
    let (spell, _) = sandbox.prepare(&module).expect("compiles");
    let limits = sandbox.limits_for(&module.manifest().limits);
    let runtime = single_thread_runtime();
    let input = br#"{"name":"Ada"}"#;
    c.bench_function("hello/instantiate_and_run", |b| {
        b.iter(|| {
            let report = runtime.block_on(sandbox.run_on_this_thread(&spell, input, limits));
            assert_eq!(report.outcome, Outcome::Ok);
        })
    });
    // The same as the server runs it: a slot from the fair scheduler, then a task on the wasm
    // runtime (adds the queue's bookkeeping and a thread hand-off each way).
    c.bench_function("hello/via_scheduler", |b| {
        b.iter(|| {
            let report = sandbox
                .run_blocking(spell.clone(), input.to_vec(), limits)
                .expect("runs");
            assert_eq!(report.outcome, Outcome::Ok);
        })
    });
}

fn fuel_overhead(c: &mut Criterion) {
    let module = example("primes");
    let input = br#"{"below":200000}"#;
    let mut group = c.benchmark_group("primes");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));

    let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
    let (spell, _) = sandbox.prepare(&module).expect("compiles");
    let limits = sandbox.limits_for(&module.manifest().limits);
    let runtime = single_thread_runtime();
    group.bench_function("fuel_on", |b| {
        b.iter(|| runtime.block_on(sandbox.run_on_this_thread(&spell, input, limits)))
    });

    // The same module and WASI setup in an engine without fuel metering (wasmtime directly:
    // the product never runs without fuel, so the sandbox has no such switch).
    let mut config = wasmtime::Config::new();
    config.consume_fuel(false);
    let engine = wasmtime::Engine::new(&config).expect("engine");
    let compiled = wasmtime::Module::new(&engine, module.bytes()).expect("compiles");
    let mut linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx> = wasmtime::Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx| ctx).expect("linker");
    let pre = linker.instantiate_pre(&compiled).expect("pre");
    group.bench_function("fuel_off", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let wasi = wasmtime_wasi::WasiCtxBuilder::new()
                    .stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(
                        input.to_vec(),
                    ))
                    .stdout(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20))
                    .build_p1();
                let mut store = wasmtime::Store::new(&engine, wasi);
                let instance = pre.instantiate_async(&mut store).await.expect("instance");
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .expect("_start");
                start.call_async(&mut store, ()).await.expect("runs");
            })
        })
    });
    group.finish();
}

criterion_group!(benches, hello, fuel_overhead);
criterion_main!(benches);
