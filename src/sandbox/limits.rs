//! Every limit a spell runs under, with its unit and the reason for its default.

use crate::supply_chain::ManifestLimits;

/// The host's maxima: no manifest and no request can raise a run above these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// Fuel units (≈ one per wasm instruction). 5·10⁹ is a few seconds of compute here and
    /// $0.50 at the default price: the most one cast may ever burn.
    pub fuel_max: u64,
    /// Wall-clock milliseconds for a whole run, host calls included. Ten seconds keeps a
    /// worker from being held longer than an HTTP client will sensibly wait.
    pub wall_ms_max: u64,
    /// Linear memory bytes. 128 MiB fits real text/JSON work, and with one instance per worker
    /// thread keeps the host's resident memory small and predictable.
    pub memory_bytes_max: u64,
    /// Bytes a spell may write to stdout. 8 MiB bounds what we buffer and send back.
    pub output_bytes_max: u64,
    /// Bytes of stderr kept for diagnostics; the rest is dropped, not fatal. 64 KiB is plenty
    /// for a panic message and a backtrace.
    pub stderr_bytes_max: u64,
    /// Bytes of input (stdin). 4 MiB: requests bigger than this are not "casts".
    pub input_bytes_max: u64,
    /// Elements per table. Rust modules use a few hundred to a few thousand for function
    /// pointers; 100 000 leaves room while bounding host memory (8 bytes each).
    pub table_elements_max: u64,
    /// Bytes of native stack wasm may use. 512 KiB (wasmtime's default) allows deep but
    /// finite recursion; overflow is a trap, never a host crash.
    pub wasm_stack_bytes_max: usize,
    /// Wall-clock milliseconds that the deterministic replays of one trapping run may take
    /// together to make its `fuel_used` exact (wasmtime issue 13802; see `run.rs`). 100 ms
    /// keeps a worker's extra time per trapping cast small; past it the upper bound is
    /// charged (never less than was burned, at most one fuel-yield interval more). Tests that
    /// assert the exact figure raise it so that a busy machine cannot change their answer.
    pub trap_replay_wall_ms_max: u64,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            fuel_max: 5_000_000_000,
            wall_ms_max: 10_000,
            memory_bytes_max: 128 * 1024 * 1024,
            output_bytes_max: 8 * 1024 * 1024,
            stderr_bytes_max: 64 * 1024,
            input_bytes_max: 4 * 1024 * 1024,
            table_elements_max: 100_000,
            wasm_stack_bytes_max: 512 * 1024,
            trap_replay_wall_ms_max: 100,
        }
    }
}

impl HostLimits {
    /// The first of a manifest's limits above this host's maximum: `(field, value, maximum)`.
    /// Publishing refuses such a manifest rather than lowering the limit silently.
    pub fn first_above(&self, manifest: &ManifestLimits) -> Option<(&'static str, u64, u64)> {
        [
            ("fuel_max", manifest.fuel_max, self.fuel_max),
            ("wall_ms_max", manifest.wall_ms_max, self.wall_ms_max),
            (
                "memory_bytes_max",
                manifest.memory_bytes_max,
                self.memory_bytes_max,
            ),
            (
                "output_bytes_max",
                manifest.output_bytes_max,
                self.output_bytes_max,
            ),
        ]
        .into_iter()
        .find_map(|(field, own, max)| own.filter(|&v| v > max).map(|v| (field, v, max)))
    }
}

/// The limits of one run: the smallest of the host's maxima, the manifest's limits and (for
/// fuel) the caller's and the budget's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    pub fuel: u64,
    pub wall_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
    /// Milliseconds the run may spend blocked in host calls, all together: what the caller's
    /// `max_cost_microusd` pays for at the wall-time price. `None`: only the wall limit bounds
    /// it. A host call still blocked when it is spent ends the run (`deadline_exceeded`).
    pub blocked_ms: Option<u64>,
}

impl RunLimits {
    /// The limits for a spell with these manifest limits on this host.
    pub fn for_spell(host: &HostLimits, manifest: &ManifestLimits) -> Self {
        let capped = |own: Option<u64>, host_max: u64| own.map_or(host_max, |v| v.min(host_max));
        RunLimits {
            fuel: capped(manifest.fuel_max, host.fuel_max),
            wall_ms: capped(manifest.wall_ms_max, host.wall_ms_max),
            memory_bytes: capped(manifest.memory_bytes_max, host.memory_bytes_max),
            output_bytes: capped(manifest.output_bytes_max, host.output_bytes_max),
            blocked_ms: None,
        }
    }

    /// Lowers (never raises) the fuel cap.
    pub fn with_fuel_at_most(mut self, fuel: u64) -> Self {
        self.fuel = self.fuel.min(fuel);
        self
    }

    /// Lowers (never raises) the blocked-time budget.
    pub fn with_blocked_ms_at_most(mut self, blocked_ms: u64) -> Self {
        self.blocked_ms = Some(
            self.blocked_ms
                .map_or(blocked_ms, |own| own.min(blocked_ms)),
        );
        self
    }

    pub fn with_wall_ms_at_most(mut self, wall_ms: u64) -> Self {
        self.wall_ms = self.wall_ms.min(wall_ms);
        self
    }

    pub fn with_memory_bytes_at_most(mut self, memory_bytes: u64) -> Self {
        self.memory_bytes = self.memory_bytes.min(memory_bytes);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_limits_never_raise_the_host_maxima() {
        let host = HostLimits::default();
        let manifest = ManifestLimits {
            fuel_max: Some(u64::MAX),
            wall_ms_max: Some(5),
            memory_bytes_max: None,
            output_bytes_max: Some(10),
        };
        let limits = RunLimits::for_spell(&host, &manifest);
        assert_eq!(limits.fuel, host.fuel_max);
        assert_eq!(limits.wall_ms, 5);
        assert_eq!(limits.memory_bytes, host.memory_bytes_max);
        assert_eq!(limits.output_bytes, 10);
        assert_eq!(limits.with_fuel_at_most(7).fuel, 7);
        assert_eq!(limits.with_fuel_at_most(u64::MAX).fuel, host.fuel_max);
    }

    #[test]
    fn the_first_limit_above_the_host_maximum_is_named_with_the_maximum() {
        let host = HostLimits::default();
        let mut manifest = ManifestLimits {
            fuel_max: Some(host.fuel_max),
            wall_ms_max: Some(host.wall_ms_max + 1),
            memory_bytes_max: None,
            output_bytes_max: Some(u64::MAX),
        };
        assert_eq!(
            host.first_above(&manifest),
            Some(("wall_ms_max", host.wall_ms_max + 1, host.wall_ms_max))
        );
        manifest.wall_ms_max = None;
        manifest.output_bytes_max = Some(1);
        assert_eq!(
            host.first_above(&manifest),
            None,
            "at the maximum is allowed"
        );
    }
}
