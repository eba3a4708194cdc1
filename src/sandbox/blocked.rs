//! The time a run spends blocked in host calls: what wall-time pricing bills.
//!
//! Compute is priced by fuel. Pricing raw wall time as well would bill a CPU-bound cast for its
//! neighbours: with time-slicing, its wall time grows with the host's load. What a run costs the
//! host besides fuel is the slot it holds while it waits in a host call (a sleep in
//! `poll_oneoff`), so that is what is measured, and only that:
//!
//! - a wait counts only while the run is inside a host call (the store's call hook marks entry
//!   and exit);
//! - the run's own turns are not waits: an epoch slice (the epoch callback marks it) and a fuel
//!   yield (wasmtime wakes the task before it returns pending — any wait whose wake came
//!   during the poll that started it is a yield, not a block);
//! - a wait ends when the task is *woken* (a [`WakeClock`] wraps the task's waker), not when it
//!   is next polled: the time a woken run then waits for a thread behind other runs is the
//!   neighbours' load, not this run's doing.
//!
//! [`Metered`] also bounds a wait: a host call still blocked at the run's wall deadline, or
//! when the run's blocked-time budget (what the caller's `max_cost_microusd` pays for) is
//! spent, ends the run there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What the run's store tells the meter; set from the call hook and the epoch callback.
#[derive(Debug, Default)]
pub struct HostCallState {
    /// Between a call into the host and its return: WASI calls, and wasmtime's libcalls, which
    /// the hook cannot tell apart (a libcall never waits, except for the yields below).
    pub in_host: AtomicBool,
    /// The epoch callback is yielding the thread for a turn: the run waits, but is not
    /// blocked.
    pub yielding: AtomicBool,
}

/// No wake recorded since the last poll.
const NOT_WOKEN: u64 = u64::MAX;

/// Wakes the run's task, and records when it first did so since the last poll.
struct WakeClock {
    origin: Instant,
    /// Nanoseconds since `origin`, or [`NOT_WOKEN`].
    woke_at_ns: AtomicU64,
    task: Mutex<Waker>,
}

impl WakeClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

impl Wake for WakeClock {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woke_at_ns.fetch_min(self.now_ns(), Ordering::Relaxed);
        self.task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .wake_by_ref();
    }
}

/// A run ended by the meter: a host call was still blocked at the wall deadline, or the
/// blocked-time budget was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedPastLimit;

/// The run's future, with its blocked time measured into `total` (written when it is dropped,
/// also when a timeout drops it mid-wait; at most the wall limit and the budget).
pub struct Metered<'a, F> {
    inner: F,
    host: Arc<HostCallState>,
    clock: Arc<WakeClock>,
    waker: Waker,
    /// When the run went pending in a blocking host call, and the timer that ends the wait at
    /// the deadline or when the budget is spent.
    open: Option<(u64, Pin<Box<Sleep>>)>,
    blocked_ns: u64,
    /// The wall deadline, in nanoseconds since the clock's origin.
    deadline_ns: u64,
    budget_ns: u64,
    total: &'a mut Duration,
}

impl<'a, F: Future + Unpin> Metered<'a, F> {
    /// Meters `inner`, whose host calls `host` reports. A wait may last until `wall` from now,
    /// and all waits together `budget`.
    pub fn new(
        inner: F,
        host: Arc<HostCallState>,
        wall: Duration,
        budget: Duration,
        total: &'a mut Duration,
    ) -> Self {
        let clock = Arc::new(WakeClock {
            origin: Instant::now(),
            woke_at_ns: AtomicU64::new(NOT_WOKEN),
            task: Mutex::new(Waker::noop().clone()),
        });
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2);
        Metered {
            inner,
            host,
            waker: Waker::from(Arc::clone(&clock)),
            clock,
            open: None,
            blocked_ns: 0,
            deadline_ns: nanos(wall),
            budget_ns: nanos(budget),
            total,
        }
    }

    /// Ends the open wait at `end` (no earlier than it began).
    fn close(&mut self, end_ns: u64) {
        if let Some((since, _)) = self.open.take() {
            self.blocked_ns = self.blocked_ns.saturating_add(end_ns.saturating_sub(since));
        }
    }

    /// Opens a wait now, with its timer; `true` if the run may not wait at all any more.
    fn open(&mut self, cx: &mut Context<'_>) -> bool {
        let now = self.clock.now_ns();
        let budget_end = now.saturating_add(self.budget_ns.saturating_sub(self.blocked_ns));
        let end = budget_end.min(self.deadline_ns).max(now);
        let at = self.clock.origin + Duration::from_nanos(end);
        let mut timer = Box::pin(tokio::time::sleep_until(at));
        let expired = timer.as_mut().poll(cx).is_ready();
        self.open = Some((now, timer));
        expired
    }
}

impl<F: Future + Unpin> Future for Metered<'_, F> {
    type Output = Result<F::Output, BlockedPastLimit>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let woke_at = this.clock.woke_at_ns.swap(NOT_WOKEN, Ordering::Relaxed);
        if let Some((_, timer)) = &mut this.open {
            if woke_at != NOT_WOKEN {
                this.close(woke_at);
            } else if timer.as_mut().poll(cx).is_ready() {
                // Still blocked at the deadline, or the budget is spent: the run ends here.
                this.close(this.clock.now_ns());
                return Poll::Ready(Err(BlockedPastLimit));
            }
            // Otherwise a poll the run did not ask for: the wait goes on.
        }
        {
            let mut task = this
                .clock
                .task
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !task.will_wake(cx.waker()) {
                task.clone_from(cx.waker());
            }
        }
        this.host.yielding.store(false, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker));
        if let Poll::Ready(output) = polled {
            this.close(this.clock.now_ns());
            return Poll::Ready(Ok(output));
        }
        let own_turn = this.host.yielding.swap(false, Ordering::Relaxed);
        let woken_already = this.clock.woke_at_ns.load(Ordering::Relaxed) != NOT_WOKEN;
        let blocking = this.host.in_host.load(Ordering::Relaxed) && !own_turn && !woken_already;
        if this.open.is_none() && blocking && this.open(cx) {
            this.close(this.clock.now_ns());
            return Poll::Ready(Err(BlockedPastLimit));
        }
        Poll::Pending
    }
}

impl<F> Drop for Metered<'_, F> {
    fn drop(&mut self) {
        if let Some((since, _)) = self.open.take() {
            let woke_at = self.clock.woke_at_ns.load(Ordering::Relaxed);
            let end = if woke_at == NOT_WOKEN {
                self.clock.now_ns()
            } else {
                woke_at
            };
            self.blocked_ns = self.blocked_ns.saturating_add(end.saturating_sub(since));
        }
        // The timer that ends a wait fires on a millisecond tick, a little after its instant:
        // that overshoot is the host's, never more than the run's limits.
        let bound = self.budget_ns.min(self.deadline_ns);
        *self.total = Duration::from_nanos(self.blocked_ns.min(bound));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a run: each step enters the host (or not), then does one thing.
    enum Step {
        /// Sleeps in a host call, as `poll_oneoff` does.
        Sleep(Duration),
        /// Yields for an epoch slice.
        Slice,
        /// Yields for an epoch slice and gets its next turn only later (a busy host).
        LateSlice(Duration),
        /// Yields for fuel (wakes itself before it returns pending).
        FuelYield,
        /// Waits outside any host call (never happens in a run; must not count).
        WaitInWasm(Duration),
    }

    async fn play(host: Arc<HostCallState>, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Sleep(duration) => {
                    host.in_host.store(true, Ordering::Relaxed);
                    tokio::time::sleep(duration).await;
                    host.in_host.store(false, Ordering::Relaxed);
                }
                Step::Slice => {
                    host.in_host.store(true, Ordering::Relaxed);
                    host.yielding.store(true, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    host.in_host.store(false, Ordering::Relaxed);
                }
                Step::LateSlice(duration) => {
                    host.in_host.store(true, Ordering::Relaxed);
                    host.yielding.store(true, Ordering::Relaxed);
                    tokio::time::sleep(duration).await;
                    host.in_host.store(false, Ordering::Relaxed);
                }
                Step::FuelYield => {
                    host.in_host.store(true, Ordering::Relaxed);
                    let mut yielded = false;
                    std::future::poll_fn(|cx| {
                        if yielded {
                            return Poll::Ready(());
                        }
                        yielded = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    })
                    .await;
                    host.in_host.store(false, Ordering::Relaxed);
                }
                Step::WaitInWasm(duration) => tokio::time::sleep(duration).await,
            }
        }
    }

    /// Plays `steps` under the meter (paused clock: time moves only when everything waits).
    async fn blocked(
        steps: Vec<Step>,
        wall: Duration,
        budget: Duration,
    ) -> (Result<(), BlockedPastLimit>, Duration) {
        let host = Arc::new(HostCallState::default());
        let mut total = Duration::ZERO;
        let run = Box::pin(play(Arc::clone(&host), steps));
        let result = Metered::new(run, host, wall, budget, &mut total).await;
        (result, total)
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_sleep_in_a_host_call_counts_and_yields_and_waits_in_wasm_do_not() {
        let ms = Duration::from_millis;
        let steps = vec![
            Step::Slice,
            Step::Sleep(ms(30)),
            Step::FuelYield,
            Step::WaitInWasm(ms(500)),
            Step::LateSlice(ms(7)),
            Step::Slice,
            Step::Sleep(ms(12)),
        ];
        let (result, total) = blocked(steps, LONG, LONG).await;
        assert_eq!(result, Ok(()));
        assert_eq!(total, ms(42));
    }

    #[tokio::test(start_paused = true)]
    async fn yields_alone_are_never_blocked_time() {
        let steps = (0..100)
            .map(|i| {
                if i % 2 == 0 {
                    Step::Slice
                } else {
                    Step::FuelYield
                }
            })
            .collect();
        let (result, total) = blocked(steps, LONG, LONG).await;
        assert_eq!(result, Ok(()));
        assert_eq!(total, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_call_blocked_at_the_wall_deadline_ends_the_run_there() {
        let ms = Duration::from_millis;
        let steps = vec![Step::WaitInWasm(ms(40)), Step::Sleep(LONG)];
        let (result, total) = blocked(steps, ms(100), LONG).await;
        assert_eq!(result, Err(BlockedPastLimit));
        // Blocked from 40 ms to the deadline at 100 ms.
        assert_eq!(total, ms(60));
    }

    #[tokio::test(start_paused = true)]
    async fn the_blocked_budget_ends_the_run_once_spent_across_calls() {
        let ms = Duration::from_millis;
        let steps = vec![Step::Sleep(ms(30)), Step::Slice, Step::Sleep(ms(30))];
        let (result, total) = blocked(steps, LONG, ms(50)).await;
        assert_eq!(result, Err(BlockedPastLimit));
        assert_eq!(total, ms(50));
        let (result, total) = blocked(vec![Step::Sleep(ms(1))], LONG, Duration::ZERO).await;
        assert_eq!((result, total), (Err(BlockedPastLimit), Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_dropped_by_a_timeout_still_counts_up_to_the_drop() {
        let ms = Duration::from_millis;
        let host = Arc::new(HostCallState::default());
        let mut total = Duration::ZERO;
        let run = Box::pin(play(Arc::clone(&host), vec![Step::Sleep(LONG)]));
        let metered = Metered::new(run, host, LONG, LONG, &mut total);
        assert!(tokio::time::timeout(ms(25), metered).await.is_err());
        assert_eq!(total, ms(25));
    }
}
