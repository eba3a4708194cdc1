//! A bounded pool of threads that compiles modules, so that compiling (which cannot be
//! interrupted) never runs on a reactor nor takes a thread that runs wasm.

use std::panic::AssertUnwindSafe;

use crossbeam_channel::{Receiver, Sender, TrySendError};

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime) + Send>;

/// A fixed set of worker threads, each with its own single-threaded tokio runtime for the
/// async WASI host calls, fed by a bounded queue. A full queue is refused at once rather than
/// letting latency grow without bound.
pub struct WorkerPool {
    sender: Sender<Job>,
}

#[derive(Debug, thiserror::Error)]
#[error("all sandbox workers are busy and the queue is full")]
pub struct QueueFull;

impl WorkerPool {
    /// `name` prefixes the threads' names (`spellhost-wasm-0`, `spellhost-compile-0`, …).
    pub fn new(
        name: &str,
        workers: usize,
        queue_depth: usize,
        policy: super::ThreadPolicy,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(queue_depth);
        for index in 0..workers.max(1) {
            let receiver = receiver.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            std::thread::Builder::new()
                .name(format!("spellhost-{name}-{index}"))
                .spawn(move || {
                    policy.apply_to_this_thread();
                    work(&runtime, &receiver);
                })?;
        }
        Ok(WorkerPool { sender })
    }

    pub fn try_submit(&self, job: Job) -> Result<(), QueueFull> {
        self.sender.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => QueueFull,
        })
    }
}

fn work(runtime: &tokio::runtime::Runtime, receiver: &Receiver<Job>) {
    // The loop ends when the pool (the only sender) is dropped.
    while let Ok(job) = receiver.recv() {
        // A panic in one job must not take the worker down with it; the job's reply channel
        // is dropped, which its caller sees as a lost worker.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(runtime))).is_err() {
            tracing::error!("a sandbox job panicked; the worker continues");
        }
    }
}
