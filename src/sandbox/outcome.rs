//! What a run ended in, as a typed value.

use std::time::Duration;

/// How a spell run ended. `fuel_used` is reported beside it in [`RunReport`], always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `_start` returned or the spell called `proc_exit(0)`.
    Ok,
    /// The spell called `proc_exit` with a non-zero code.
    ExitCode(i32),
    /// The fuel cap was reached.
    OutOfFuel,
    /// The wall-clock limit was reached.
    DeadlineExceeded,
    /// A memory or table growth was refused by the limits (even if the spell then trapped), or
    /// the module declares more memory or table than allowed.
    MemoryLimitExceeded,
    /// The spell wrote past the stdout cap; it was stopped at that write.
    OutputTooLarge,
    /// Any other trap (unreachable, stack overflow, out-of-bounds access, …).
    Trapped(String),
}

impl Outcome {
    /// The stable snake_case name used in JSON (`"outcome"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ExitCode(_) => "exit_code",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::MemoryLimitExceeded => "memory_limit_exceeded",
            Outcome::OutputTooLarge => "output_too_large",
            Outcome::Trapped(_) => "trapped",
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    /// Fuel burned, exact also after traps and deadlines.
    pub fuel_used: u64,
    /// stdout, at most the run's output cap.
    pub output: Vec<u8>,
    /// stderr, truncated to the host's stderr cap.
    pub stderr: Vec<u8>,
    /// Wall time of the run itself, from instantiation to its end.
    pub duration: Duration,
    /// Time the run spent blocked in host calls (sleeping in `poll_oneoff`), not counting its
    /// turns on a shared thread nor the time a woken run waited for one (see `blocked.rs`):
    /// what wall-time pricing bills. At most the wall time, and the run's blocked-time budget
    /// but for the moment it takes to stop.
    pub blocked: Duration,
    /// Time the run waited for a slot before it started (zero outside the scheduler).
    pub queue_wait: Duration,
    /// Time from the grant of its slot to its start on a wasm thread: how long the run waited
    /// for a thread of the wasm runtime to take it up (zero outside the scheduler).
    pub dispatch_wait: Duration,
    /// The most linear memory the run held, in bytes: its initial size or the largest size a
    /// `memory.grow` was allowed to reach (a refused growth does not count).
    pub memory_bytes_peak: u64,
}
