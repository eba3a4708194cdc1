//! Fair admission of runs to the sandbox: who runs next when runs must wait.
//!
//! The sandbox runs at most `slots` spells at once (each holds an instance and its memory).
//! A tenant (a user) runs at most `tenant_limit` of them; its further runs wait in its own
//! queue. The queues share `queue_max` places: a tenant alone may use them all, and when they
//! are full an arriving run of a lighter tenant pushes out the newest waiting run of the
//! tenant with the most waiting, so a backlog can never lock others out. When a slot frees, it goes to the waiting tenant that has had the least service,
//! measured in microseconds of slot time: start-time fair queueing, where a tenant that
//! becomes active starts at the current virtual time, so idleness banks no credit and a long
//! past of heavy use is no penalty either. One tenant's backlog therefore delays another
//! tenant's cast by at most the time until the next run ends, never by the backlog's length.
//!
//! A run may also come through a *lane* of its tenant (an API key) with a limit of its own:
//! at most that many of the lane's runs at once, the tenant's limit binding as well. A run
//! whose lane is full waits in its tenant's queue like one over the tenant's limit, and the
//! tenant's other lanes pass it.
//!
//! [`FairQueue`] is the deterministic core (no clock of its own, no threads: every method takes
//! what it needs), unit-tested below; [`Scheduler`] wraps it for async callers with a
//! queue-wait limit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Whose run this is: a user id. The CLI and benchmarks run as [`Tenant::LOCAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(pub i64);

impl Tenant {
    /// The only tenant of a process that serves no users (the CLI, benchmarks).
    pub const LOCAL: Tenant = Tenant(0);
}

/// A tenant's sub-queue with a limit of its own (an API key's `concurrent_casts_max`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lane {
    /// Unique within the tenant.
    pub id: Arc<str>,
    /// Runs at once through this lane (at least 1); the tenant's limit binds too.
    pub limit: usize,
}

/// Whose run this is, and through which lane, if the tenant's limit is not the only one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunFor {
    pub tenant: Tenant,
    pub lane: Option<Lane>,
}

impl From<Tenant> for RunFor {
    fn from(tenant: Tenant) -> Self {
        RunFor { tenant, lane: None }
    }
}

/// How many runs may run and wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Runs at once, across tenants.
    pub slots: usize,
    /// Runs at once for one tenant.
    pub tenant_limit: usize,
    /// Runs waiting, across tenants.
    pub queue_max: usize,
}

/// A place in the queue, unique per [`FairQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A slot is taken for the run: start it.
    Run(Ticket),
    /// The run waits; a later [`FairQueue::finish`] grants it, or the caller gives up with
    /// [`FairQueue::cancel`]. The queue was full when `Some`: the run that was pushed out to
    /// make room (refused as [`Refusal::TenantLimit`]; its caller must be told).
    Wait(Ticket, Option<(Tenant, Ticket)>),
    /// Refused at once: the queue is full, and taking one of another tenant's places would
    /// not make the queues more even (this tenant has the most waiting: `TenantLimit`;
    /// they are even: `Busy`).
    Refused(Refusal),
}

/// Why a run was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tenant's own load: it had its limit of runs running for the whole wait, or the
    /// queue is full and it has the most runs waiting. Answered 429.
    TenantLimit,
    /// The lane's own load: it had its limit of runs running for the whole wait. Answered 429.
    LaneLimit,
    /// The host was full for everyone for the whole wait: answered 503.
    Busy,
}

#[derive(Debug, Default)]
struct TenantState {
    running: usize,
    /// Runs running per lane that has any.
    lanes: HashMap<Arc<str>, usize>,
    waiting: VecDeque<(Ticket, Option<Lane>)>,
    /// Slot time received, in µs, on the queue's virtual clock.
    service: u64,
}

impl TenantState {
    fn idle(&self) -> bool {
        self.running == 0 && self.waiting.is_empty()
    }

    fn lane_full(&self, lane: Option<&Lane>) -> bool {
        lane.is_some_and(|lane| self.lanes.get(&lane.id).copied().unwrap_or(0) >= lane.limit)
    }

    /// The first waiting run (oldest) that may start now, under a tenant limit of `limit`.
    fn next_eligible(&self, limit: usize) -> Option<(usize, Ticket)> {
        if self.running >= limit {
            return None;
        }
        self.waiting
            .iter()
            .position(|(_, lane)| !self.lane_full(lane.as_ref()))
            .map(|index| (index, self.waiting[index].0))
    }

    fn start(&mut self, lane: Option<&Lane>) {
        self.running += 1;
        if let Some(lane) = lane {
            *self.lanes.entry(Arc::clone(&lane.id)).or_default() += 1;
        }
    }

    fn end(&mut self, lane: Option<&Lane>) {
        self.running = self.running.saturating_sub(1);
        if let Some(lane) = lane
            && let Some(count) = self.lanes.get_mut(&lane.id)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.lanes.remove(&lane.id);
            }
        }
    }
}

#[derive(Debug)]
pub struct FairQueue {
    capacity: Capacity,
    running: usize,
    waiting: usize,
    /// Only active tenants (running or waiting) are kept: memory is bounded by the runs.
    tenants: HashMap<Tenant, TenantState>,
    /// The service of the tenant served last: where a newly active tenant starts.
    virtual_time: u64,
    next_ticket: u64,
}

impl FairQueue {
    pub fn new(capacity: Capacity) -> Self {
        FairQueue {
            capacity: Capacity {
                slots: capacity.slots.max(1),
                tenant_limit: capacity.tenant_limit.max(1),
                ..capacity
            },
            running: 0,
            waiting: 0,
            tenants: HashMap::new(),
            virtual_time: 0,
            next_ticket: 0,
        }
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Runs running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Runs waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// A run of a tenant (through a lane, or not) arrives.
    pub fn arrive(&mut self, who: impl Into<RunFor>) -> Admission {
        let RunFor { tenant, lane } = who.into();
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let virtual_time = self.virtual_time;
        let capacity = self.capacity;
        let state = self.tenants.entry(tenant).or_default();
        if state.idle() {
            state.service = state.service.max(virtual_time);
        }
        // A free slot means nobody eligible is waiting (`dispatch` fills free slots first).
        if self.running < capacity.slots
            && state.running < capacity.tenant_limit
            && !state.lane_full(lane.as_ref())
        {
            state.start(lane.as_ref());
            self.running += 1;
            return Admission::Run(ticket);
        }
        let mut evicted = None;
        if self.waiting >= capacity.queue_max {
            let mine = state.waiting.len();
            // The tenant with the most waiting (ties: the highest id, to be deterministic).
            let heaviest = self
                .tenants
                .iter()
                .filter(|(other, _)| **other != tenant)
                .map(|(other, state)| (state.waiting.len(), *other))
                .max();
            match heaviest {
                // Its newest waiting run makes room, when that leaves the queues more even.
                Some((theirs, heaviest)) if theirs > mine + 1 => {
                    if let Some((pushed_out, _)) = self
                        .tenants
                        .get_mut(&heaviest)
                        .and_then(|state| state.waiting.pop_back())
                    {
                        self.waiting -= 1;
                        evicted = Some((heaviest, pushed_out));
                    }
                }
                heaviest => {
                    let refusal = if mine > 0 && heaviest.is_none_or(|(theirs, _)| mine >= theirs) {
                        Refusal::TenantLimit
                    } else {
                        Refusal::Busy
                    };
                    if self.tenants.get(&tenant).is_some_and(TenantState::idle) {
                        self.tenants.remove(&tenant);
                    }
                    return Admission::Refused(refusal);
                }
            }
        }
        let state = self.tenants.entry(tenant).or_default();
        state.waiting.push_back((ticket, lane));
        self.waiting += 1;
        Admission::Wait(ticket, evicted)
    }

    /// A run (of a tenant, through its lane) ended after holding its slot for `service_us`.
    /// Returns the waiting runs that now take the freed slot (at most one, but a caller must
    /// not rely on it).
    pub fn finish(&mut self, who: impl Into<RunFor>, service_us: u64) -> Vec<(RunFor, Ticket)> {
        let RunFor { tenant, lane } = who.into();
        if let Some(state) = self.tenants.get_mut(&tenant) {
            state.end(lane.as_ref());
            state.service = state.service.saturating_add(service_us);
            self.running = self.running.saturating_sub(1);
            if state.idle() {
                self.tenants.remove(&tenant);
            }
        }
        self.dispatch()
    }

    /// The caller of `ticket` stops waiting. `Some(why)` if it was still waiting (it is
    /// removed); `None` if it is not waiting: it was granted a slot, which the caller now
    /// holds and must [`finish`](Self::finish).
    pub fn cancel(&mut self, tenant: Tenant, ticket: Ticket) -> Option<Refusal> {
        let state = self.tenants.get_mut(&tenant)?;
        let position = state.waiting.iter().position(|(t, _)| *t == ticket)?;
        let (_, lane) = state.waiting.remove(position)?;
        self.waiting -= 1;
        let why = if state.running >= self.capacity.tenant_limit {
            Refusal::TenantLimit
        } else if state.lane_full(lane.as_ref()) {
            Refusal::LaneLimit
        } else {
            Refusal::Busy
        };
        if state.idle() {
            self.tenants.remove(&tenant);
        }
        Some(why)
    }

    /// Fills free slots with the waiting runs of the least-served eligible tenants (a tenant's
    /// oldest run whose lane is not full).
    fn dispatch(&mut self) -> Vec<(RunFor, Ticket)> {
        let mut granted = Vec::new();
        while self.running < self.capacity.slots {
            let limit = self.capacity.tenant_limit;
            // Least service first; among equals the tenant with fewer runs, then the oldest
            // ticket (first come), so that the order is total and deterministic.
            let next = self
                .tenants
                .iter()
                .filter_map(|(tenant, state)| {
                    let (index, ticket) = state.next_eligible(limit)?;
                    Some(((state.service, state.running, ticket), *tenant, index))
                })
                .min_by_key(|(order, _, _)| *order)
                .map(|(_, tenant, index)| (tenant, index));
            let Some((tenant, index)) = next else { break };
            let Some(state) = self.tenants.get_mut(&tenant) else {
                break;
            };
            let Some((ticket, lane)) = state.waiting.remove(index) else {
                break;
            };
            state.start(lane.as_ref());
            self.running += 1;
            self.waiting -= 1;
            self.virtual_time = self.virtual_time.max(state.service);
            granted.push((RunFor { tenant, lane }, ticket));
        }
        granted
    }
}

/// The fair queue around jobs: a run waits in the queue as the job that starts it, and the
/// thread that frees a slot starts the next job itself (on the wasm runtime that is a local
/// spawn, with no round trip through the caller's task: measured, that hand-off cost a third
/// of `hello`'s throughput at 64 connections). A job is called exactly once with its slot or
/// its refusal, unless its caller gives up its ticket first ([`Scheduler::give_up`]).
pub struct Scheduler {
    inner: Mutex<Inner>,
    capacity: Capacity,
    wait_max: Duration,
}

/// Starts a run with its slot, or reports why it will not run.
pub type Job = Box<dyn FnOnce(Result<Slot, Refusal>) + Send>;

struct Inner {
    queue: FairQueue,
    jobs: HashMap<Ticket, (Job, Instant)>,
}

/// A slot held by one run; dropping it frees the slot, charges its time to the tenant and
/// starts the next job.
pub struct Slot {
    scheduler: Arc<Scheduler>,
    who: RunFor,
    since: Instant,
    /// How long the run waited for the slot: zero exactly when it started at once.
    pub waited: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let held = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        Scheduler::release(&self.scheduler, self.who.clone(), held);
    }
}

impl Scheduler {
    pub fn new(capacity: Capacity, wait_max: Duration) -> Arc<Self> {
        let queue = FairQueue::new(capacity);
        Arc::new(Scheduler {
            capacity: queue.capacity(),
            inner: Mutex::new(Inner {
                queue,
                jobs: HashMap::new(),
            }),
            wait_max,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is consistent after every method, so a panic elsewhere leaves it usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The limits it was made with (fixed: read without the lock).
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// How long a run may wait for its slot before its caller gives up.
    pub fn wait_max(&self) -> Duration {
        self.wait_max
    }

    /// Runs running and runs waiting, now.
    pub fn load(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.queue.running(), inner.queue.waiting())
    }

    /// Submits a run: `job` is called at once (with a slot, or refused), or later from
    /// whichever thread frees a slot. `Some(ticket)` while it waits: the caller gives the
    /// ticket up with [`give_up`](Self::give_up) after [`wait_max`](Self::wait_max).
    pub fn submit(self: &Arc<Self>, who: impl Into<RunFor>, job: Job) -> Option<Ticket> {
        let who = who.into();
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.queue.arrive(who.clone()) {
            Admission::Run(_) => {
                drop(inner);
                job(Ok(self.slot(who, None)));
                None
            }
            Admission::Refused(refusal) => {
                drop(inner);
                job(Err(refusal));
                None
            }
            Admission::Wait(ticket, evicted) => {
                let pushed_out = evicted.and_then(|(_, out)| inner.jobs.remove(&out));
                inner.jobs.insert(ticket, (job, now));
                drop(inner);
                if let Some((job, _)) = pushed_out {
                    job(Err(Refusal::TenantLimit));
                }
                Some(ticket)
            }
        }
    }

    /// Stops waiting: `Some(why)` if the ticket was still queued (its job is dropped, never
    /// called), `None` if its job was already called.
    pub fn give_up(&self, tenant: Tenant, ticket: Ticket) -> Option<Refusal> {
        let mut inner = self.lock();
        let refusal = inner.queue.cancel(tenant, ticket)?;
        let job = inner.jobs.remove(&ticket);
        drop(inner);
        drop(job);
        Some(refusal)
    }

    /// A slot for `who`; `arrived` is when it started waiting, `None` for no wait at all
    /// (`waited` is then exactly zero, which callers read as "started at once").
    fn slot(self: &Arc<Self>, who: RunFor, arrived: Option<Instant>) -> Slot {
        let since = Instant::now();
        let waited = arrived.map_or(Duration::ZERO, |arrived| {
            since
                .saturating_duration_since(arrived)
                .max(Duration::from_nanos(1))
        });
        Slot {
            scheduler: Arc::clone(self),
            who,
            since,
            waited,
        }
    }

    fn release(self: &Arc<Self>, who: RunFor, held_us: u64) {
        let granted: Vec<_> = {
            let mut inner = self.lock();
            let tickets = inner.queue.finish(who, held_us);
            tickets
                .into_iter()
                .map(|(next, ticket)| (next, inner.jobs.remove(&ticket)))
                .collect()
        };
        for (next, job) in granted {
            match job {
                // Started outside the lock: the job may free its slot at once (a refused
                // spawn), which comes back here.
                Some((job, since)) => job(Ok(self.slot(next, Some(since)))),
                // Every waiting ticket has its job; never leave a granted slot taken.
                None => Scheduler::release(self, next, 0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Tenant = Tenant(1);
    const B: Tenant = Tenant(2);
    const C: Tenant = Tenant(3);

    fn queue(slots: usize, tenant_limit: usize) -> FairQueue {
        FairQueue::new(Capacity {
            slots,
            tenant_limit,
            queue_max: 1000,
        })
    }

    fn waits(queue: &mut FairQueue, who: impl Into<RunFor>) -> Ticket {
        let who = who.into();
        match queue.arrive(who.clone()) {
            Admission::Wait(ticket, None) => ticket,
            other => panic!("expected {who:?} to wait, got {other:?}"),
        }
    }

    fn runs(queue: &mut FairQueue, who: impl Into<RunFor>) {
        let who = who.into();
        assert!(
            matches!(queue.arrive(who.clone()), Admission::Run(_)),
            "{who:?} runs at once"
        );
    }

    /// Plays a closed system: each granted run holds its slot for its tenant's service time,
    /// then ends (earliest end first); returns who was served, in order.
    fn serve(
        queue: &mut FairQueue,
        running: Vec<(Tenant, u64)>,
        cost: impl Fn(Tenant) -> u64,
        n: usize,
    ) -> Vec<Tenant> {
        let mut clock = 0u64;
        // (ends at, tenant, started at)
        let mut in_flight: Vec<(u64, Tenant, u64)> =
            running.into_iter().map(|(t, cost)| (cost, t, 0)).collect();
        let mut order = Vec::new();
        while order.len() < n {
            in_flight.sort();
            let (ends, tenant, started) = in_flight.remove(0);
            clock = clock.max(ends);
            for (next, _) in queue.finish(tenant, ends - started) {
                let next = next.tenant;
                order.push(next);
                in_flight.push((clock + cost(next), next, clock));
            }
        }
        order
    }

    #[test]
    fn under_the_limits_a_run_starts_at_once() {
        let mut queue = queue(4, 2);
        runs(&mut queue, A);
        runs(&mut queue, A);
        runs(&mut queue, B);
        assert_eq!((queue.running(), queue.waiting()), (3, 0));
    }

    #[test]
    fn a_tenant_at_its_limit_waits_even_while_slots_are_free() {
        let mut queue = queue(8, 2);
        runs(&mut queue, A);
        runs(&mut queue, A);
        let third = waits(&mut queue, A);
        runs(&mut queue, B);
        // One of A's runs ends: its waiting run takes the slot.
        assert_eq!(queue.finish(A, 100), vec![(RunFor::from(A), third)]);
        assert_eq!((queue.running(), queue.waiting()), (3, 0));
    }

    #[test]
    fn a_light_tenant_is_served_before_a_heavy_tenants_backlog() {
        // One slot; B has a backlog of ten, A arrives later with two.
        let mut queue = queue(1, 1);
        runs(&mut queue, B);
        for _ in 0..10 {
            waits(&mut queue, B);
        }
        waits(&mut queue, A);
        waits(&mut queue, A);
        // B's runs take 1000 µs, A's 10 µs: A is served at the first free slot and right
        // after its own run, before B's backlog resumes.
        let order = serve(
            &mut queue,
            vec![(B, 1000)],
            |t| if t == A { 10 } else { 1000 },
            4,
        );
        assert_eq!(order, vec![A, A, B, B]);
    }

    #[test]
    fn two_equal_tenants_alternate() {
        let mut queue = queue(1, 1);
        runs(&mut queue, A);
        for _ in 0..4 {
            waits(&mut queue, A);
            waits(&mut queue, B);
        }
        let order = serve(&mut queue, vec![(A, 50)], |_| 50, 8);
        assert_eq!(order, vec![B, A, B, A, B, A, B, A]);
    }

    #[test]
    fn three_tenants_share_by_service_not_by_count() {
        // B's runs cost 3× A's and C's: each tenant receives the same slot time, so B is
        // served a third as often.
        let mut queue = queue(1, 1);
        runs(&mut queue, A);
        for _ in 0..40 {
            waits(&mut queue, A);
            waits(&mut queue, B);
            waits(&mut queue, C);
        }
        let cost = |t: Tenant| if t == B { 300 } else { 100 };
        let mut order = vec![A];
        order.extend(serve(&mut queue, vec![(A, 100)], cost, 34));
        let count = |t: Tenant| order.iter().filter(|x| **x == t).count();
        assert_eq!((count(A), count(B), count(C)), (15, 5, 15), "{order:?}");
        let slot_time = [A, B, C].map(|t| count(t) as u64 * cost(t));
        assert_eq!(slot_time, [1500, 1500, 1500], "{order:?}");
        // And no tenant waits long: B is never more than six grants from its next turn.
        let gaps = order
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == B)
            .map(|(i, _)| i)
            .collect::<Vec<_>>();
        assert!(gaps.windows(2).all(|w| w[1] - w[0] <= 7), "{order:?}");
    }

    #[test]
    fn a_tenant_that_was_idle_banks_no_credit() {
        let mut queue = queue(1, 1);
        // A ran alone for a long time ...
        runs(&mut queue, A);
        assert!(queue.finish(A, 1_000_000).is_empty());
        // ... then B has the host alone for a long time.
        runs(&mut queue, B);
        waits(&mut queue, B);
        assert_eq!(queue.finish(B, 5_000_000).len(), 1);
        // A comes back while B is busy: neither is owed the other's idle time, they alternate.
        for _ in 0..3 {
            waits(&mut queue, A);
            waits(&mut queue, B);
        }
        let order = serve(&mut queue, vec![(B, 100)], |_| 100, 6);
        assert_eq!(order, vec![A, B, A, B, A, B]);
    }

    #[test]
    fn a_full_queue_pushes_out_the_heaviest_backlog_not_a_newcomer() {
        let mut queue = FairQueue::new(Capacity {
            slots: 1,
            tenant_limit: 1,
            queue_max: 3,
        });
        runs(&mut queue, A);
        // Alone, A may use every place in the queue ...
        waits(&mut queue, A);
        waits(&mut queue, A);
        let newest = waits(&mut queue, A);
        // ... and its next run is refused as its own load.
        assert_eq!(queue.arrive(A), Admission::Refused(Refusal::TenantLimit));
        // B arrives at a full queue: A's newest waiting run makes room.
        let Admission::Wait(b, Some(evicted)) = queue.arrive(B) else {
            panic!("B should wait, pushing one of A's out");
        };
        assert_eq!(evicted, (A, newest));
        // C too; now A and B have one each besides C's, and C's next is its own load again.
        assert!(matches!(queue.arrive(C), Admission::Wait(_, Some((A, _)))));
        assert_eq!(queue.waiting(), 3);
        assert_eq!(queue.arrive(B), Admission::Refused(Refusal::TenantLimit));
        // One waiting each: a fourth tenant finds the host full for everyone.
        assert_eq!(queue.arrive(Tenant(4)), Admission::Refused(Refusal::Busy));
        // B is served before A's remaining backlog when the slot frees.
        assert_eq!(queue.finish(A, 100), vec![(RunFor::from(B), b)]);
    }

    #[test]
    fn a_wait_that_ends_says_whether_the_tenant_or_the_host_was_full() {
        let mut queue = queue(2, 1);
        runs(&mut queue, A);
        runs(&mut queue, B);
        // A waits behind its own limit, C behind a full host.
        let a = waits(&mut queue, A);
        let c = waits(&mut queue, C);
        assert_eq!(queue.cancel(A, a), Some(Refusal::TenantLimit));
        assert_eq!(queue.cancel(C, c), Some(Refusal::Busy));
        assert_eq!(queue.cancel(C, c), None, "a ticket is cancelled once");
        assert_eq!((queue.running(), queue.waiting()), (2, 0));
    }

    #[test]
    fn a_cancelled_ticket_is_never_granted_and_idle_tenants_are_forgotten() {
        let mut queue = queue(1, 1);
        runs(&mut queue, A);
        let b = waits(&mut queue, B);
        let c = waits(&mut queue, C);
        assert!(queue.cancel(B, b).is_some());
        assert_eq!(queue.finish(A, 10), vec![(RunFor::from(C), c)]);
        assert!(queue.finish(C, 10).is_empty());
        assert!(queue.tenants.is_empty(), "{:?}", queue.tenants);
    }

    /// A run of `tenant` through the lane `key` of limit `limit`.
    fn via(tenant: Tenant, key: &str, limit: usize) -> RunFor {
        RunFor {
            tenant,
            lane: Some(Lane {
                id: key.into(),
                limit,
            }),
        }
    }

    #[test]
    fn a_key_at_its_own_limit_waits_while_its_users_other_keys_run() {
        let mut queue = queue(8, 4);
        let ci = via(A, "ci", 1);
        runs(&mut queue, ci.clone());
        let second = waits(&mut queue, ci.clone());
        // The user's other keys, limited or not, are not held up by the CI key's limit.
        runs(&mut queue, via(A, "app", 2));
        runs(&mut queue, A);
        assert_eq!((queue.running(), queue.waiting()), (3, 1));
        // The CI key's run ends: its waiting run takes the slot.
        assert_eq!(queue.finish(ci.clone(), 100), vec![(ci.clone(), second)]);
        // Given up while waiting behind its key's limit: the key's load, not the host's.
        let third = waits(&mut queue, ci.clone());
        assert_eq!(queue.cancel(A, third), Some(Refusal::LaneLimit));
    }

    #[test]
    fn the_users_limit_binds_a_key_whose_own_limit_is_higher() {
        let mut queue = queue(8, 2);
        let generous = via(A, "k", 5);
        runs(&mut queue, generous.clone());
        runs(&mut queue, generous.clone());
        let third = waits(&mut queue, generous.clone());
        assert_eq!(queue.cancel(A, third), Some(Refusal::TenantLimit));
    }

    #[test]
    fn a_freed_slot_goes_to_a_users_later_run_when_the_oldest_ones_key_is_full() {
        let mut queue = queue(2, 2);
        let ci = via(A, "ci", 1);
        runs(&mut queue, ci.clone());
        runs(&mut queue, B);
        // The host is full: A's next CI run (its key is full too) and A's other run wait.
        let blocked = waits(&mut queue, ci.clone());
        let other = waits(&mut queue, A);
        // B's slot frees: A's oldest run cannot take it, A's other one does.
        assert_eq!(queue.finish(B, 10), vec![(RunFor::from(A), other)]);
        // A's CI run ends: now the waiting CI run may start.
        assert_eq!(queue.finish(ci.clone(), 10), vec![(ci, blocked)]);
        assert_eq!((queue.running(), queue.waiting()), (2, 0));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashSet;

        /// The lanes a tenant's runs may come through (id, limit), or none.
        const LANES: [Option<(&str, usize)>; 3] = [None, Some(("k1", 1)), Some(("k2", 2))];

        fn run_for(tenant: i64, lane: usize) -> RunFor {
            RunFor {
                tenant: Tenant(tenant),
                lane: LANES[lane % LANES.len()].map(|(id, limit)| Lane {
                    id: id.into(),
                    limit,
                }),
            }
        }

        #[derive(Debug, Clone)]
        enum Op {
            /// A run of a tenant through one of [`LANES`].
            Arrive(i64, usize),
            /// Ends the n-th running run (modulo how many run), after that much service.
            Finish(usize, u64),
            /// Gives up the n-th waiting ticket (modulo how many wait).
            Cancel(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (1i64..5, 0usize..3).prop_map(|(t, lane)| Op::Arrive(t, lane)),
                2 => (any::<usize>(), 0u64..1000).prop_map(|(n, us)| Op::Finish(n, us)),
                1 => any::<usize>().prop_map(Op::Cancel),
            ]
        }

        proptest! {
            /// Whatever happens: the limits (host, tenant, lane) hold, counts add up, every
            /// ticket ends at most once, and the queue is work-conserving (a free slot means
            /// nobody eligible waits).
            #[test]
            fn the_limits_hold_and_no_slot_idles_while_someone_could_use_it(
                slots in 1usize..5,
                tenant_limit in 1usize..4,
                queue_max in 0usize..8,
                ops in proptest::collection::vec(op(), 1..200),
            ) {
                let mut queue = FairQueue::new(Capacity { slots, tenant_limit, queue_max });
                let mut running: Vec<(RunFor, Ticket)> = Vec::new();
                let mut waiting: Vec<(RunFor, Ticket)> = Vec::new();
                let mut ended: HashSet<Ticket> = HashSet::new();
                for op in ops {
                    match op {
                        Op::Arrive(t, lane) => {
                            let who = run_for(t, lane);
                            match queue.arrive(who.clone()) {
                                Admission::Run(ticket) => running.push((who, ticket)),
                                Admission::Wait(ticket, evicted) => {
                                    if let Some((tenant, out)) = evicted {
                                        let index = waiting.iter().position(|(_, w)| *w == out);
                                        prop_assert!(index.is_some(), "evicts a waiting run");
                                        let (evicted, _) = waiting.remove(index.unwrap_or(0));
                                        prop_assert_eq!(evicted.tenant, tenant);
                                        prop_assert!(tenant != Tenant(t));
                                        prop_assert!(ended.insert(out));
                                    }
                                    waiting.push((who, ticket));
                                }
                                Admission::Refused(_) => {}
                            }
                        }
                        Op::Finish(n, us) if !running.is_empty() => {
                            let (who, ticket) = running.remove(n % running.len());
                            prop_assert!(ended.insert(ticket));
                            for (granted_for, granted) in queue.finish(who, us) {
                                let index = waiting.iter().position(|(_, w)| *w == granted);
                                prop_assert!(index.is_some(), "grants a waiting run");
                                let run = waiting.remove(index.unwrap_or(0));
                                prop_assert_eq!(&run.0, &granted_for);
                                running.push(run);
                            }
                        }
                        Op::Cancel(n) if !waiting.is_empty() => {
                            let (who, ticket) = waiting.remove(n % waiting.len());
                            prop_assert!(queue.cancel(who.tenant, ticket).is_some());
                            prop_assert!(ended.insert(ticket));
                        }
                        _ => {}
                    }
                    prop_assert_eq!(queue.running(), running.len());
                    prop_assert_eq!(queue.waiting(), waiting.len());
                    prop_assert!(running.len() <= slots);
                    prop_assert!(waiting.len() <= queue_max);
                    let of_tenant = |t: Tenant| running.iter().filter(|(w, _)| w.tenant == t).count();
                    let of_lane = |who: &RunFor| {
                        running.iter().filter(|(w, _)| w.tenant == who.tenant && w.lane == who.lane).count()
                    };
                    for (who, _) in &running {
                        prop_assert!(of_tenant(who.tenant) <= tenant_limit);
                        if let Some(lane) = &who.lane {
                            prop_assert!(of_lane(who) <= lane.limit, "{who:?} over its lane's limit");
                        }
                    }
                    if running.len() < slots {
                        for (who, _) in &waiting {
                            let lane_full = who.lane.as_ref().is_some_and(|lane| of_lane(who) >= lane.limit);
                            prop_assert!(
                                of_tenant(who.tenant) >= tenant_limit || lane_full,
                                "{who:?} waits while a slot is free"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn jobs_start_with_their_slot_are_refused_or_dropped_and_free_slots_when_done() {
        use std::sync::mpsc;
        let scheduler = Scheduler::new(
            Capacity {
                slots: 2,
                tenant_limit: 1,
                queue_max: 10,
            },
            Duration::from_secs(1),
        );
        // Each job hands its outcome to the test; a slot is held until the test drops it.
        let (sender, outcomes) = mpsc::channel::<(i64, Result<Slot, Refusal>)>();
        let job = |id: i64| -> Job {
            let sender = sender.clone();
            Box::new(move |granted| {
                let _ = sender.send((id, granted));
            })
        };
        assert_eq!(scheduler.submit(A, job(1)), None, "started at once");
        let (id, first) = outcomes.try_recv().expect("called");
        let first = first.expect("a slot");
        assert_eq!(id, 1);
        // A's second waits behind A's own limit; B's starts.
        let second = scheduler.submit(A, job(2)).expect("waits");
        assert!(outcomes.try_recv().is_err(), "not called while it waits");
        assert_eq!(scheduler.submit(B, job(3)), None);
        let (_, b) = outcomes.try_recv().expect("called");
        assert_eq!(scheduler.load(), (2, 1));
        // Freeing A's slot starts A's waiting job, from the freeing thread.
        drop(first);
        let (id, granted) = outcomes.try_recv().expect("started by the release");
        assert_eq!(id, 2);
        assert!(granted.is_ok());
        assert_eq!(
            scheduler.give_up(A, second),
            None,
            "it is no longer waiting"
        );
        drop(granted);
        // A ticket given up is never called and leaves nothing behind.
        let b2 = scheduler.submit(B, job(4)).expect("waits behind B's own");
        assert_eq!(scheduler.give_up(B, b2), Some(Refusal::TenantLimit));
        drop(b);
        assert!(
            outcomes.try_recv().is_err(),
            "the job given up was dropped, not called"
        );
        assert_eq!(scheduler.load(), (0, 0));
    }
}
