//! The discrete-event driver: a virtual clock, a seeded event queue, simulated workers and
//! faults around the real `handyman-core`.
//!
//! The driver follows the core's rule: after every input it drains the journal and the
//! interrupts, hands out assignments while slots are free, and sleeps until the next event
//! or [`Core::next_wakeup`], whichever is first. It never decides what runs: the core does.
//!
//! Invariants are checked twice: by the core's own `check_invariants` (adaptively often),
//! and by a **mirror** the driver builds from the journal alone (every event, cheaply), so a
//! core that lies about its own state is caught too.

use std::collections::{BinaryHeap, VecDeque};
use std::hash::Hasher;
use std::sync::mpsc;
use std::thread;

use handyman_core::{
    AttemptOutcome, CancelOutcome, Core, CoreConfig, DepRef, Event, EventKind, GroupConfig,
    InjectedBug, InterruptReason, Millis, PolicyKind, PoolId, Report, ReportOutcome, SubmitOutcome,
    TaskId, TaskSpec, TaskState, TimeoutMode,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::arrivals::{Action, Arrival, Arrivals, Planned, Setup};
use crate::fasthash::{journal_hash, FxMap, JournalHasher};
use crate::scenario::{Faults, Scenario};
use crate::workload::{self, Kind, SizeClass};

/// How one run is done.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub seed: u64,
    /// Overrides the scenario's policy.
    pub policy: Option<PolicyKind>,
    /// Overrides the scenario's faults (the fuzzer's swarm draw).
    pub faults: Option<Faults>,
    /// Run the core's O(tasks) `check_invariants` every this many steps (None: adaptive).
    pub check_every: Option<u64>,
    /// Keep every journal event (for divergence reports); kept anyway when hosts crash.
    pub keep_journal: bool,
    /// Keep the hash of every journal event (for comparing two runs event by event).
    pub keep_hashes: bool,
    /// Hash the journal, and free its events, on a second thread. A lone run then uses the
    /// machine's other core; sweeps and checks, which fill every core already, leave it off.
    /// The hash is the same either way: the thread takes the events in journal order.
    pub hash_on_thread: bool,
    /// Draw the workload's arrivals on a second thread, ahead of the simulation (see
    /// `arrivals`). Like `hash_on_thread`, for lone runs; the draws are the same either way.
    pub arrivals_on_thread: bool,
    pub injected_bug: Option<InjectedBug>,
}

/// A broken invariant, where it was seen.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ViolationRecord {
    /// Its number in DESIGN.md.
    pub invariant: u8,
    pub at_ms: Millis,
    /// The journal event being checked, or the last one when the check is not per event.
    pub seq: u64,
    pub task: Option<TaskId>,
    pub message: String,
}

const NONE: Millis = Millis::MAX;

/// Open attempts as (deadline + grace, task, attempt), in assignment order.
type DeadlineQueue = VecDeque<(Millis, TaskId, u32)>;
const MAX_VIOLATIONS: usize = 100;

/// A task as the mirror sees it (from the journal) plus its simulated worker.
#[derive(Clone, Debug)]
pub struct TaskRec {
    pub group: u32,
    pub kind: u16,
    pub pool: u16,
    pub priority: i32,
    pub state: TaskState,
    pub submit: Millis,
    /// When it first became queued.
    pub ready: Millis,
    pub queued_since: Millis,
    /// First assignment.
    pub start: Millis,
    pub finish: Millis,
    pub attempts: u32,
    pub failures: u32,
    pub max_retries: u32,
    pub max_runtime: Millis,
    /// Run time over all attempts.
    pub ran_ms: Millis,
    /// When the open attempt (see `Sim::open_attempts`) was assigned.
    pub assigned_at: Millis,
    pending_failure: bool,
    pub deps: Box<[TaskId]>,
    // The simulated worker.
    work_ms: Millis,
    done_ms: Millis,
    worker_attempt: u32,
    worker: Worker,
    worker_speed: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Worker {
    Idle,
    /// Working, answers interrupts.
    Alive,
    /// Reported its end; ignores interrupts.
    Done,
    /// Hung handler or stuck worker: never answers.
    Hung,
}

/// A group as the mirror sees it.
#[derive(Clone, Debug)]
pub struct GroupRec {
    pub name: String,
    pub config: GroupConfig,
    pub size: SizeClass,
    pub running: u32,
    pub queued: u32,
    backlog_since: Millis,
    /// Run time received in each window.
    pub service: Vec<f64>,
    /// How long it had queued work in each window (ms).
    pub backlogged: Vec<f64>,
}

/// A pool as the mirror sees it.
#[derive(Clone, Debug)]
pub struct PoolRec {
    pub name: String,
    pub base_slots: u32,
    pub slots: u32,
    pub running: u32,
    slots_since: Millis,
    /// Integral of slots over time (slot-ms).
    pub slot_ms: f64,
    slow: f32,
}

#[derive(Clone, Copy, Debug)]
enum What {
    Started,
    Success,
    Transient,
    Fatal,
    Interrupted,
    Lost,
}

enum Ev {
    /// An arrival of the workload; a duplicate carries its spec (none if its batch was
    /// refused, when the arrival is only taken off the stream).
    Arrival(Arrival, Option<Box<TaskSpec>>),
    Deliver {
        id: TaskId,
        attempt: u32,
        what: What,
        epoch: u32,
    },
    Cancel(TaskId),
    HostCrash,
    SlowStart(u16),
    SlowEnd(u16),
    SlotChange(u16),
    SafetyEnd,
    Sample,
}

struct Queued {
    at: Millis,
    seq: u64,
    ev: Ev,
}
impl Queued {
    /// Time, then push order, as one number: compared without a branch, which the heap's
    /// sifting would mispredict at every other level.
    fn key(&self) -> u128 {
        (u128::from(self.at) << 64) | u128::from(self.seq)
    }
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.key().cmp(&self.key())
    }
}

/// Everything a run produced.
pub struct RunOutput {
    pub seed: u64,
    pub policy: PolicyKind,
    pub faults: Faults,
    pub tasks: Vec<TaskRec>,
    pub groups: Vec<GroupRec>,
    pub pools: Vec<PoolRec>,
    pub kind_names: Vec<String>,
    pub violations: Vec<ViolationRecord>,
    pub journal_hash: u64,
    pub events: u64,
    pub event_hashes: Vec<u64>,
    pub journal: Vec<Event>,
    /// (time, queued, running) at each window boundary.
    pub queue_samples: Vec<(Millis, u64, u64)>,
    pub simulated_ms: Millis,
    pub wall_ms: f64,
    pub window_ms: Millis,
    pub starvation_threshold_ms: Millis,
    pub accepted: u64,
    pub duplicates: u64,
    pub stale_reports: u64,
    pub host_crashes: u64,
    pub core_checks: u64,
}

/// One simulation run.
pub struct Sim<'s> {
    scenario: &'s Scenario,
    opts: Options,
    config: CoreConfig,
    core: Core,
    kinds: Vec<Kind>,
    /// The workload's arrivals, drawn apart (see `arrivals`).
    arrivals: Arrivals,
    /// Taken by `setup`.
    arrival_setup: Option<Setup>,
    heap: BinaryHeap<Queued>,
    next_seq: u64,
    real_events: u64,
    now: Millis,
    rng_fault: ChaCha8Rng,
    faults: Faults,
    report_faults: bool,
    safety: bool,
    epoch: u32,
    // Mirror.
    tasks: Vec<TaskRec>,
    groups: Vec<GroupRec>,
    group_ids: FxMap<String, u32>,
    /// The group and pool found last, tried before the maps.
    last_group: u32,
    last_pool: u16,
    /// The core's handles of `pools`, resolved on first use (a replayed core keeps them).
    core_pools: Vec<Option<PoolId>>,
    pools: Vec<PoolRec>,
    pool_ids: FxMap<String, u16>,
    kind_ids: FxMap<String, u16>,
    /// Open attempts by (deadline + grace), one FIFO per max run time: attempts are
    /// assigned in time order, so each FIFO is sorted.
    deadline_checks: Vec<(Millis, DeadlineQueue)>,
    /// Each task's open attempt (0: none), apart from its `TaskRec`: the deadline check
    /// reads it for every attempt, mostly long after the task ended, and 4 bytes a task
    /// stay in cache where a whole record would be a miss.
    open_attempts: Vec<u32>,
    violations: Vec<ViolationRecord>,
    hasher: JournalHasher,
    hash_thread: Option<HashThread>,
    events: u64,
    last_seq: u64,
    event_hashes: Vec<u64>,
    journal: Vec<Event>,
    /// Reused by every drain, so that draining after each input allocates nothing.
    drained: Vec<Event>,
    keep_journal: bool,
    queue_samples: Vec<(Millis, u64, u64)>,
    accepted: u64,
    duplicates: u64,
    stale_reports: u64,
    host_crashes: u64,
    steps_since_check: u64,
    core_checks: u64,
    liveness_deadline: Millis,
}

/// A stable uniform draw in [0, 1) from (seed, task, attempt, salt): per-attempt fates do
/// not depend on the order in which a policy ran the tasks.
fn draw(seed: u64, id: TaskId, attempt: u32, salt: u64) -> f64 {
    let mut z = seed
        ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (u64::from(attempt) << 40)
        ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl<'s> Sim<'s> {
    pub fn new(scenario: &'s Scenario, opts: Options) -> Sim<'s> {
        let policy = opts.policy.unwrap_or(scenario.policy);
        let faults = opts
            .faults
            .clone()
            .unwrap_or_else(|| scenario.faults.clone());
        let config = CoreConfig {
            policy,
            seed: opts.seed,
            interrupt_grace_ms: scenario.interrupt_grace_ms,
            share_half_life_ms: scenario.share_half_life_ms,
            default_group: scenario.default_group.unwrap_or_default(),
            injected_bug: opts.injected_bug,
            ..CoreConfig::default()
        };
        let mut rng_fault = ChaCha8Rng::seed_from_u64(opts.seed);
        rng_fault.set_stream(2);
        let kinds: Vec<Kind> = scenario.kinds.iter().cloned().map(Kind::new).collect();
        let (arrivals, arrival_setup) = Arrivals::new(scenario, opts.seed, opts.arrivals_on_thread);
        let report_faults = faults.report_loss_p > 0.0
            || faults.report_dup_p > 0.0
            || faults.report_delay_max_ms > 0
            || faults.report_late_p > 0.0;
        let keep_journal = opts.keep_journal || faults.host_crash_every_ms > 0;
        let kind_ids = scenario
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (k.name.clone(), i as u16))
            .collect();
        Sim {
            scenario,
            core: Core::new(config.clone()),
            config,
            kinds,
            arrivals,
            arrival_setup: Some(arrival_setup),
            heap: BinaryHeap::new(),
            next_seq: 0,
            real_events: 0,
            now: 0,
            rng_fault,
            report_faults,
            faults,
            safety: true,
            epoch: 0,
            tasks: Vec::new(),
            groups: Vec::new(),
            group_ids: FxMap::default(),
            last_group: 0,
            last_pool: 0,
            core_pools: Vec::new(),
            pools: Vec::new(),
            pool_ids: FxMap::default(),
            kind_ids,
            deadline_checks: Vec::new(),
            open_attempts: Vec::new(),
            violations: Vec::new(),
            hasher: JournalHasher::default(),
            hash_thread: if opts.hash_on_thread && !keep_journal {
                HashThread::start(opts.keep_hashes)
            } else {
                None
            },
            events: 0,
            last_seq: 0,
            event_hashes: Vec::new(),
            journal: Vec::new(),
            drained: Vec::new(),
            keep_journal,
            queue_samples: Vec::new(),
            accepted: 0,
            duplicates: 0,
            stale_reports: 0,
            host_crashes: 0,
            steps_since_check: 0,
            core_checks: 0,
            liveness_deadline: scenario.duration_ms.saturating_add(scenario.liveness_ms),
            opts,
        }
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        if !matches!(ev, Ev::Sample) {
            self.real_events += 1;
        }
        self.heap.push(Queued {
            at,
            seq: self.next_seq,
            ev,
        });
        self.next_seq += 1;
    }

    fn violation(&mut self, invariant: u8, task: Option<TaskId>, message: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(ViolationRecord {
                invariant,
                at_ms: self.now,
                seq: self.last_seq,
                task,
                message,
            });
        }
    }

    /// Runs to the end of the liveness phase.
    pub fn run(mut self) -> RunOutput {
        let wall = std::time::Instant::now();
        self.setup();
        let mut stalled = 0u32;
        loop {
            let next_at = self.heap.peek().map(|q| q.at);
            let wake = self.core.next_wakeup();
            if self.real_events == 0 && wake.is_none() {
                break;
            }
            match (wake, next_at) {
                (Some(w), n) if w <= n.unwrap_or(NONE) => {
                    if w <= self.core.now() && w <= self.now {
                        stalled += 1;
                        if stalled > 1_000 {
                            self.violation(
                                8,
                                None,
                                format!("next_wakeup stays at {w} after a tick at {}", self.now),
                            );
                            break;
                        }
                    } else {
                        stalled = 0;
                    }
                    self.now = self.now.max(w);
                    self.core.tick(self.now);
                }
                _ => {
                    let Some(q) = self.heap.pop() else { break };
                    if !matches!(q.ev, Ev::Sample) {
                        self.real_events -= 1;
                    }
                    self.now = self.now.max(q.at);
                    self.handle(q.ev);
                }
            }
            self.step_done();
            if self.now > self.liveness_deadline {
                let left = self.core.counts().unfinished();
                if left > 0 {
                    self.violation(
                        8,
                        None,
                        format!(
                            "liveness: {left} tasks not terminal {} ms after the safety phase",
                            self.scenario.liveness_ms
                        ),
                    );
                }
                break;
            }
        }
        self.finish(wall)
    }

    fn setup(&mut self) {
        let s = self.scenario;
        for p in &s.pools {
            self.core.set_pool_slots(0, &p.name, p.slots);
        }
        for g in &s.groups {
            let cfg = GroupConfig {
                weight: g.weight,
                cap: g.cap,
                floor: g.floor,
            };
            self.core.configure_group(0, &g.name, cfg);
        }
        let Some(arrival_setup) = self.arrival_setup.take() else {
            return;
        };
        for (name, cfg, size) in arrival_setup.groups {
            if let Some(cfg) = cfg {
                self.core.configure_group(0, &name, cfg);
            }
            let g = self.group_index(&name);
            self.groups[g as usize].size = size;
        }
        self.drain();
        for (at, arrival) in arrival_setup.first {
            self.push(at, Ev::Arrival(arrival, None));
        }
        let expected = arrival_setup.expected_tasks;
        self.tasks.reserve(expected.min(50_000_000) as usize);
        self.open_attempts
            .reserve(expected.min(50_000_000) as usize);
        self.core.reserve_tasks(expected.min(50_000_000) as usize);
        let f = self.faults.clone();
        if f.host_crash_every_ms > 0 {
            let at = self.exp_fault(f.host_crash_every_ms);
            self.push(at, Ev::HostCrash);
        }
        for p in 0..self.pools.len() as u16 {
            if f.slow_pool_every_ms > 0 {
                let at = self.exp_fault(f.slow_pool_every_ms);
                self.push(at, Ev::SlowStart(p));
            }
            if f.slot_change_every_ms > 0 {
                let at = self.exp_fault(f.slot_change_every_ms);
                self.push(at, Ev::SlotChange(p));
            }
        }
        self.push(s.duration_ms, Ev::SafetyEnd);
        self.push(s.window_ms, Ev::Sample);
        self.dispatch();
    }

    fn exp_fault(&mut self, mean_ms: Millis) -> Millis {
        self.now + workload::exp_gap(&mut self.rng_fault, 1.0 / mean_ms as f64)
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Arrival(arrival, duplicate) => match self.arrivals.take_next() {
                Some(Action::Submit(planned)) => self.submit(arrival, planned),
                Some(Action::Duplicate { work }) => {
                    if let Some(spec) = duplicate {
                        self.submit_duplicate(*spec, work);
                    }
                }
                None => self.violation(
                    8,
                    None,
                    format!("arrival {arrival:?} at {now} ms has nothing drawn for it"),
                ),
            },
            Ev::Deliver {
                id,
                attempt,
                what,
                epoch,
            } => {
                if epoch == self.epoch {
                    self.deliver(id, attempt, what);
                }
            }
            Ev::Cancel(id) => {
                let r = self.core.cancel(now, id, "cancelled by its submitter");
                if let Ok(CancelOutcome::AlreadyTerminal(s)) = r {
                    let mirror = self.tasks.get(id as usize - 1).map(|t| t.state);
                    if mirror != Some(s) {
                        self.violation(
                            1,
                            Some(id),
                            format!("cancel says task {id} is {s}, the journal says {mirror:?}"),
                        );
                    }
                }
            }
            Ev::HostCrash => {
                if self.safety {
                    self.host_crash();
                    let at = self.exp_fault(self.faults.host_crash_every_ms);
                    self.push(at, Ev::HostCrash);
                }
            }
            Ev::SlowStart(p) => {
                if self.safety {
                    let factor = self.faults.slow_factor.max(1.0) as f32;
                    self.pools[p as usize].slow = factor;
                    let at = self.exp_fault((self.faults.slow_pool_every_ms / 4).max(1));
                    self.push(at, Ev::SlowEnd(p));
                }
            }
            Ev::SlowEnd(p) => {
                self.pools[p as usize].slow = 1.0;
                if self.safety {
                    let at = self.exp_fault(self.faults.slow_pool_every_ms);
                    self.push(at, Ev::SlowStart(p));
                }
            }
            Ev::SlotChange(p) => {
                if self.safety {
                    let base = self.pools[p as usize].base_slots;
                    let slots = self
                        .rng_fault
                        .random_range(0..=base.saturating_mul(2).max(1));
                    let name = self.pools[p as usize].name.clone();
                    self.core.set_pool_slots(now, &name, slots);
                    let at = self.exp_fault(self.faults.slot_change_every_ms);
                    self.push(at, Ev::SlotChange(p));
                }
            }
            Ev::SafetyEnd => {
                self.safety = false;
                for p in 0..self.pools.len() {
                    self.pools[p].slow = 1.0;
                    if self.pools[p].slots != self.pools[p].base_slots {
                        let (name, base) = (self.pools[p].name.clone(), self.pools[p].base_slots);
                        self.core.set_pool_slots(now, &name, base);
                    }
                }
            }
            Ev::Sample => {
                let c = self.core.counts();
                self.queue_samples.push((now, c.queued, c.running));
                if self.real_events > 0 || self.core.next_wakeup().is_some() {
                    self.push(now + self.scenario.window_ms, Ev::Sample);
                }
            }
        }
    }

    /// Submits a batch drawn by `arrivals`, then queues what follows from it.
    fn submit(&mut self, arrival: Arrival, planned: Planned) {
        let Planned {
            specs,
            works,
            follow_ups,
            next,
        } = planned;
        match self.core.submit_batch(self.now, specs) {
            Ok(outcomes) => {
                self.drain();
                for (j, o) in outcomes.iter().enumerate() {
                    match o {
                        SubmitOutcome::Created(id) => {
                            self.accepted += 1;
                            if let Some(t) = self.tasks.get_mut(*id as usize - 1) {
                                t.work_ms = works.get(j).copied().unwrap_or(1);
                            }
                        }
                        SubmitOutcome::Duplicate(_) => self.duplicates += 1,
                    }
                }
                for (j, follow) in follow_ups.into_iter().enumerate() {
                    if let Some((at, mut spec)) = follow.duplicate {
                        for d in &mut spec.depends_on {
                            if let DepRef::Batch(b) = *d {
                                if let Some(o) = outcomes.get(b) {
                                    *d = DepRef::Task(o.id());
                                }
                            }
                        }
                        self.push(at, Ev::Arrival(Arrival::Duplicate, Some(Box::new(spec))));
                    }
                    if let (Some(at), Some(o)) = (follow.cancel, outcomes.get(j)) {
                        self.push(at, Ev::Cancel(o.id()));
                    }
                }
            }
            Err(e) => {
                self.violation(1, None, format!("the workload's submit was refused: {e}"));
                // The duplicates were drawn all the same: keep the stream in step.
                for follow in follow_ups {
                    if let Some((at, _)) = follow.duplicate {
                        self.push(at, Ev::Arrival(Arrival::Duplicate, None));
                    }
                }
            }
        }
        if let Some(at) = next {
            self.push(at, Ev::Arrival(arrival, None));
        }
    }

    fn submit_duplicate(&mut self, spec: TaskSpec, work: Option<Millis>) {
        let now = self.now;
        match self.core.submit(now, spec) {
            Ok(SubmitOutcome::Duplicate(id)) => {
                self.drain();
                self.duplicates += 1;
                let state = self.tasks.get(id as usize - 1).map(|t| t.state);
                if state.is_none_or(|s| s.is_terminal()) {
                    self.violation(
                        1,
                        Some(id),
                        format!("a duplicate submit returned task {id}, which is {state:?}"),
                    );
                }
            }
            Ok(SubmitOutcome::Created(id)) => {
                self.drain();
                self.accepted += 1;
                if let Some(t) = self.tasks.get_mut(id as usize - 1) {
                    t.work_ms = work.unwrap_or(1);
                }
            }
            Err(e) => self.violation(1, None, format!("a duplicate submit failed: {e}")),
        }
    }

    /// Hands out assignments while slots are free, in every pool.
    fn dispatch(&mut self) {
        for p in 0..self.pools.len() {
            let Some(pool) = self.core_pool(p) else {
                continue;
            };
            loop {
                if self.core.free_slots_in(pool) == 0 {
                    break;
                }
                match self.core.next_assignment_in(self.now, pool) {
                    Some(a) => {
                        self.drain();
                        self.start_attempt(a.id, a.attempt, p as u16)
                    }
                    None => break,
                }
            }
        }
        self.drain();
    }

    fn core_pool(&mut self, p: usize) -> Option<PoolId> {
        if self.core_pools.len() <= p {
            self.core_pools.resize(p + 1, None);
        }
        if self.core_pools[p].is_none() {
            self.core_pools[p] = self.core.pool_id(&self.pools[p].name);
        }
        self.core_pools[p]
    }

    fn start_attempt(&mut self, id: TaskId, attempt: u32, pool: u16) {
        let now = self.now;
        let seed = self.opts.seed;
        let safety = self.safety;
        let f = &self.faults;
        let (stuck_p, hang_p, crash_p) = if safety {
            (f.stuck_worker_p, f.hang_p, f.worker_crash_p)
        } else {
            (0.0, 0.0, 0.0)
        };
        let slow = self.pools[pool as usize].slow;
        let Some(t) = self.tasks.get_mut(id as usize - 1) else {
            return;
        };
        let Some(kind) = self.kinds.get(t.kind as usize) else {
            return;
        };
        let k = &kind.spec;
        t.worker_attempt = attempt;
        t.worker_speed = slow;
        let run = ((t.work_ms.saturating_sub(t.done_ms)) as f64 * f64::from(slow)) as Millis;
        let max_runtime = t.max_runtime;
        if draw(seed, id, attempt, 1) < stuck_p {
            t.worker = Worker::Hung;
            return;
        }
        t.worker = Worker::Alive;
        let hung = draw(seed, id, attempt, 2) < hang_p;
        let crashed = draw(seed, id, attempt, 3) < crash_p;
        let u = draw(seed, id, attempt, 4);
        let (transient_p, fatal_p) = (k.transient_p, k.fatal_p);
        let cut = draw(seed, id, attempt, 5);
        self.send(id, attempt, What::Started, now);
        if hung {
            self.tasks[id as usize - 1].worker = Worker::Hung;
        } else if crashed {
            let at = now + (cut * run.min(max_runtime) as f64) as Millis;
            self.send(id, attempt, What::Lost, at);
        } else if run > max_runtime {
            // Overruns: the core's timeout interrupt will come.
        } else if u < fatal_p {
            self.send(id, attempt, What::Fatal, now + (cut * run as f64) as Millis);
        } else if u < fatal_p + transient_p {
            self.send(
                id,
                attempt,
                What::Transient,
                now + (cut * run as f64) as Millis,
            );
        } else {
            self.send(id, attempt, What::Success, now + run);
        }
    }

    /// A worker sends a report at `at`; the network may lose, duplicate, delay it.
    fn send(&mut self, id: TaskId, attempt: u32, what: What, at: Millis) {
        let epoch = self.epoch;
        if !self.report_faults || !self.safety {
            if matches!(what, What::Started) {
                self.deliver(id, attempt, what);
            } else {
                self.push(
                    at,
                    Ev::Deliver {
                        id,
                        attempt,
                        what,
                        epoch,
                    },
                );
            }
            return;
        }
        let f = &self.faults;
        let r = &mut self.rng_fault;
        if r.random::<f64>() < f.report_loss_p {
            return;
        }
        let mut at = at;
        if f.report_delay_max_ms > 0 {
            at += r.random_range(0..=f.report_delay_max_ms);
        }
        if r.random::<f64>() < f.report_late_p {
            // Past the attempt's deadline and grace: it must be fenced.
            let t = &self.tasks[id as usize - 1];
            at = at.max(t.assigned_at + t.max_runtime + self.scenario.interrupt_grace_ms + 1)
                + r.random_range(0..60_000);
        }
        let dup = r.random::<f64>() < f.report_dup_p;
        let again = at + r.random_range(0..=1_000);
        let ev = |_at: Millis| Ev::Deliver {
            id,
            attempt,
            what,
            epoch,
        };
        let first = ev(at);
        self.push(at, first);
        if dup {
            let second = ev(again);
            self.push(again, second);
        }
    }

    fn deliver(&mut self, id: TaskId, attempt: u32, what: What) {
        let report = match what {
            What::Started => Report::Started,
            What::Success => Report::Finished(AttemptOutcome::Success { output: Vec::new() }),
            What::Transient => Report::Finished(AttemptOutcome::Transient {
                message: "transient error".into(),
            }),
            What::Fatal => Report::Finished(AttemptOutcome::Fatal {
                message: "fatal error".into(),
            }),
            What::Interrupted => Report::Finished(AttemptOutcome::Interrupted),
            What::Lost => Report::Lost {
                why: "worker crashed".into(),
            },
        };
        let open = self.open_attempts.get(id as usize - 1) == Some(&attempt) && attempt != 0;
        let Some(t) = self.tasks.get_mut(id as usize - 1) else {
            return;
        };
        if !matches!(what, What::Started) && t.worker_attempt == attempt {
            t.worker = Worker::Done;
        }
        match self.core.report(self.now, id, attempt, report) {
            Ok(ReportOutcome::Accepted) if !open => self.violation(
                9,
                Some(id),
                format!("fencing: a report for attempt {attempt} of task {id}, which is not the open attempt, was accepted"),
            ),
            Ok(ReportOutcome::Stale) if open => self.violation(
                9,
                Some(id),
                format!("fencing: a report for the open attempt {attempt} of task {id} was called stale"),
            ),
            Err(e) => self.violation(1, Some(id), format!("report refused: {e}")),
            _ => {}
        }
    }

    fn on_interrupt(&mut self, id: TaskId, attempt: u32, reason: InterruptReason) {
        let now = self.now;
        let half_grace = (self.scenario.interrupt_grace_ms / 2).max(1);
        let respond = now + self.rng_fault.random_range(0..half_grace);
        let Some(t) = self.tasks.get_mut(id as usize - 1) else {
            return;
        };
        if t.worker_attempt != attempt || t.worker != Worker::Alive {
            return;
        }
        t.worker = Worker::Done;
        let continues = self
            .kinds
            .get(t.kind as usize)
            .is_some_and(|k| k.spec.on_timeout == TimeoutMode::Continue);
        if reason == InterruptReason::Timeout && continues {
            let worked =
                (now.saturating_sub(t.assigned_at) as f64 / f64::from(t.worker_speed)) as Millis;
            t.done_ms = (t.done_ms + worked).min(t.work_ms);
        }
        self.send(id, attempt, What::Interrupted, respond);
    }

    /// The host dies: the core is rebuilt from its journal by the replay code the host
    /// uses, must have the same digest, and every running attempt is reported lost.
    fn host_crash(&mut self) {
        self.host_crashes += 1;
        self.drain();
        let before = self.core.digest();
        match Core::replay(self.config.clone(), &self.journal) {
            Ok(core) => {
                let after = core.digest();
                if after != before {
                    self.violation(
                        8,
                        None,
                        format!("replay of {} events gives digest {after:016x}, the live core had {before:016x}", self.journal.len()),
                    );
                }
                self.core = core;
            }
            Err(e) => {
                self.violation(8, None, format!("the journal does not replay: {e}"));
                return;
            }
        }
        self.epoch += 1;
        for (id, attempt) in self.core.running_attempts() {
            if let Some(t) = self.tasks.get_mut(id as usize - 1) {
                t.worker = Worker::Idle;
                t.worker_attempt = 0;
            }
            let _ = self.core.report(
                self.now,
                id,
                attempt,
                Report::Lost {
                    why: "host restarted".into(),
                },
            );
        }
        self.drain();
    }

    fn step_done(&mut self) {
        self.drain();
        self.dispatch();
        // Cheap checks, every step.
        let counts = self.core.counts();
        if counts.total() != self.tasks.len() as u64 {
            self.violation(
                1,
                None,
                format!(
                    "the core counts {} tasks, the journal created {}",
                    counts.total(),
                    self.tasks.len()
                ),
            );
        }
        for p in 0..self.pools.len() {
            let Some(pool) = self.core_pool(p) else {
                continue;
            };
            if self.core.free_slots_in(pool) > 0 && self.core.has_eligible_work_in(pool) {
                let name = &self.pools[p].name;
                let message =
                    format!("pool {name} has a free slot and eligible work after dispatch");
                self.violation(5, None, message);
            }
        }
        for q in 0..self.deadline_checks.len() {
            while let Some(&(due, id, attempt)) = self.deadline_checks[q].1.front() {
                if due > self.now {
                    break;
                }
                self.deadline_checks[q].1.pop_front();
                if self.open_attempts[id as usize - 1] == attempt {
                    self.violation(
                        9,
                        Some(id),
                        format!("attempt {attempt} of task {id} still runs at {} ms, past its max run time and grace ({due} ms)", self.now),
                    );
                }
            }
        }
        // The core's own O(tasks) check, adaptively often.
        self.steps_since_check += 1;
        let every = self
            .opts
            .check_every
            .unwrap_or_else(|| (self.tasks.len() as u64 / 2).max(256));
        if self.steps_since_check >= every {
            self.core_check();
        }
    }

    fn core_check(&mut self) {
        self.steps_since_check = 0;
        self.core_checks += 1;
        for v in self.core.check_invariants() {
            self.violation(v.invariant, v.task, format!("core check: {}", v.message));
        }
    }

    fn group_index(&mut self, name: &str) -> u32 {
        // A pipeline's tasks arrive together: one comparison usually spares a hash lookup.
        if let Some(g) = self.groups.get(self.last_group as usize) {
            if g.name == name {
                return self.last_group;
            }
        }
        if let Some(&g) = self.group_ids.get(name) {
            self.last_group = g;
            return g;
        }
        let g = self.groups.len() as u32;
        self.groups.push(GroupRec {
            name: name.to_string(),
            config: self.config.default_group,
            size: SizeClass::Other,
            running: 0,
            queued: 0,
            backlog_since: NONE,
            service: Vec::new(),
            backlogged: Vec::new(),
        });
        self.group_ids.insert(name.to_string(), g);
        g
    }

    fn pool_index(&mut self, name: &str) -> u16 {
        if let Some(p) = self.pools.get(self.last_pool as usize) {
            if p.name == name {
                return self.last_pool;
            }
        }
        if let Some(&p) = self.pool_ids.get(name) {
            self.last_pool = p;
            return p;
        }
        let p = self.pools.len() as u16;
        self.pools.push(PoolRec {
            name: name.to_string(),
            base_slots: self.config.default_pool_slots,
            slots: self.config.default_pool_slots,
            running: 0,
            slots_since: self.now,
            slot_ms: 0.0,
            slow: 1.0,
        });
        self.pool_ids.insert(name.to_string(), p);
        p
    }

    /// Takes the core's outputs: journal events into the mirror, interrupts to workers.
    fn drain(&mut self) {
        if self.core.pending_events() > 0 {
            if let Some(mut thread) = self.hash_thread.take() {
                // Straight into the batch the hash thread gets next: each event is copied
                // once, not into a staging list first (3.65 M events of ~70 bytes a day).
                let start = thread.batch.len();
                self.core.drain_journal_into(&mut thread.batch);
                for e in &thread.batch[start..] {
                    self.on_event(e);
                }
                if thread.batch.len() >= HASH_BATCH {
                    thread.send();
                }
                self.hash_thread = Some(thread);
            } else {
                let mut events = std::mem::take(&mut self.drained);
                self.core.drain_journal_into(&mut events);
                for e in events.drain(..) {
                    self.on_event(&e);
                    self.hash_inline(&e);
                    if self.keep_journal {
                        self.journal.push(e);
                    }
                }
                self.drained = events;
            }
        }
        for i in self.core.drain_interrupts() {
            self.on_interrupt(i.id, i.attempt, i.reason);
        }
    }

    fn queued_delta(&mut self, g: u32, up: bool, at: Millis) {
        let w = self.scenario.window_ms;
        let grp = &mut self.groups[g as usize];
        if up {
            grp.queued += 1;
            if grp.queued == 1 {
                grp.backlog_since = at;
            }
        } else {
            grp.queued = grp.queued.saturating_sub(1);
            if grp.queued == 0 && grp.backlog_since != NONE {
                if at > grp.backlog_since {
                    mark_backlog(grp, grp.backlog_since, at, w);
                }
                grp.backlog_since = NONE;
            }
        }
    }

    fn hash_inline(&mut self, e: &Event) {
        let h = journal_hash(e);
        self.hasher.write_u64(h);
        if self.opts.keep_hashes {
            self.event_hashes.push(h);
        }
    }

    fn on_event(&mut self, e: &Event) {
        self.events += 1;
        if e.seq != self.last_seq + 1 {
            let message = format!(
                "journal event {} follows {}: sequence numbers must have no gaps",
                e.seq, self.last_seq
            );
            self.violation(7, None, message);
        }
        self.last_seq = e.seq;
        let at = e.at;
        if let Some(id) = e.kind.task() {
            let known = (id as usize).wrapping_sub(1) < self.tasks.len();
            let submitted = matches!(e.kind, EventKind::Submitted { .. });
            if !known && !submitted {
                self.violation(
                    1,
                    Some(id),
                    format!("event {} about unknown task {id}", e.seq),
                );
                return;
            }
            if known && !submitted && !matches!(e.kind, EventKind::StaleReport { .. }) {
                let s = self.tasks[id as usize - 1].state;
                if s.is_terminal() {
                    self.violation(
                        1,
                        Some(id),
                        format!("event {} changes task {id}, already {s}", e.seq),
                    );
                    return;
                }
            }
        }
        match &e.kind {
            EventKind::PoolConfigured { pool, slots } => {
                let p = self.pool_index(pool) as usize;
                let rec = &mut self.pools[p];
                rec.slot_ms += f64::from(rec.slots) * at.saturating_sub(rec.slots_since) as f64;
                rec.slots_since = at;
                rec.slots = *slots;
                if at == 0 {
                    rec.base_slots = *slots;
                }
            }
            EventKind::GroupConfigured { group, config } => {
                let g = self.group_index(group) as usize;
                self.groups[g].config = *config;
            }
            EventKind::Submitted { id, spec, .. } => {
                if *id != self.tasks.len() as TaskId + 1 {
                    let message =
                        format!("task id {id} submitted, expected {}", self.tasks.len() + 1);
                    self.violation(1, Some(*id), message);
                    return;
                }
                let group = self.group_index(&spec.group);
                let pool = self.pool_index(&spec.pool);
                let kind = self
                    .kind_ids
                    .get(spec.kind.as_str())
                    .copied()
                    .unwrap_or(u16::MAX);
                let deps: Box<[TaskId]> = spec
                    .depends_on
                    .iter()
                    .filter_map(|d| match d {
                        DepRef::Task(t) => Some(*t),
                        DepRef::Batch(_) => None,
                    })
                    .collect();
                self.open_attempts.push(0);
                self.tasks.push(TaskRec {
                    group,
                    kind,
                    pool,
                    priority: spec.priority,
                    state: TaskState::Waiting,
                    submit: at,
                    ready: NONE,
                    queued_since: NONE,
                    start: NONE,
                    finish: NONE,
                    attempts: 0,
                    failures: 0,
                    max_retries: spec.max_retries,
                    max_runtime: spec.max_runtime_ms,
                    ran_ms: 0,
                    assigned_at: NONE,
                    pending_failure: false,
                    deps,
                    work_ms: 1,
                    done_ms: 0,
                    worker_attempt: 0,
                    worker: Worker::Idle,
                    worker_speed: 1.0,
                });
            }
            EventKind::Released { id } | EventKind::Requeued { id } => {
                let t = &mut self.tasks[*id as usize - 1];
                if matches!(e.kind, EventKind::Requeued { .. }) && t.pending_failure {
                    // A "continue" re-run does not count against max_retries.
                    t.pending_failure = false;
                }
                t.state = TaskState::Queued;
                t.queued_since = at;
                if t.ready == NONE {
                    t.ready = at;
                }
                let g = t.group;
                self.queued_delta(g, true, at);
            }
            EventKind::Blocked { id } => {
                let t = &mut self.tasks[*id as usize - 1];
                t.state = TaskState::Waiting;
                let g = t.group;
                self.queued_delta(g, false, at);
            }
            EventKind::Assigned { id, attempt, .. } => self.on_assigned(e.seq, *id, *attempt, at),
            EventKind::Started { .. } | EventKind::InterruptRequested { .. } => {}
            EventKind::AttemptEnded {
                id,
                attempt,
                outcome,
                ran_ms,
            } => {
                let window = self.scenario.window_ms;
                let open = &mut self.open_attempts[*id as usize - 1];
                if *open != *attempt {
                    let message = format!(
                        "attempt {attempt} of task {id} ended, but the open attempt is {open}"
                    );
                    self.violation(1, Some(*id), message);
                    return;
                }
                *open = 0;
                let t = &mut self.tasks[*id as usize - 1];
                t.ran_ms += ran_ms;
                t.pending_failure = outcome.counts_as_failure();
                let (g, p, from) = (t.group as usize, t.pool as usize, t.assigned_at);
                self.groups[g].running = self.groups[g].running.saturating_sub(1);
                self.pools[p].running = self.pools[p].running.saturating_sub(1);
                add_service(&mut self.groups[g], from, at, window);
            }
            EventKind::RetryScheduled { id, .. } => {
                let t = &mut self.tasks[*id as usize - 1];
                t.state = TaskState::Retrying;
                self.count_failure(*id);
            }
            EventKind::Succeeded { id }
            | EventKind::Failed { id, .. }
            | EventKind::Cancelled { id, .. } => {
                let state = match e.kind {
                    EventKind::Succeeded { .. } => TaskState::Succeeded,
                    EventKind::Failed { .. } => TaskState::Failed,
                    _ => TaskState::Cancelled,
                };
                if state == TaskState::Failed {
                    self.count_failure(*id);
                }
                let t = &mut self.tasks[*id as usize - 1];
                let was = t.state;
                t.state = state;
                t.finish = at;
                t.pending_failure = false;
                let open = self.open_attempts[*id as usize - 1];
                let g = t.group;
                if state == TaskState::Succeeded && open != 0 {
                    let message = format!("task {id} succeeded with attempt {open} still open");
                    self.violation(1, Some(*id), message);
                }
                if was == TaskState::Queued {
                    self.queued_delta(g, false, at);
                }
            }
            EventKind::StaleReport { .. } => self.stale_reports += 1,
        }
    }

    fn count_failure(&mut self, id: TaskId) {
        let t = &mut self.tasks[id as usize - 1];
        if t.pending_failure {
            t.pending_failure = false;
            t.failures += 1;
            if t.failures > t.max_retries + 1 {
                let message = format!(
                    "task {id} failed {} attempts with max_retries {}",
                    t.failures, t.max_retries
                );
                self.violation(4, Some(id), message);
            }
        }
    }

    fn on_assigned(&mut self, seq: u64, id: TaskId, attempt: u32, at: Millis) {
        let grace = self.scenario.interrupt_grace_ms;
        let max_wait = self.scenario.max_wait_ms;
        let t = &self.tasks[id as usize - 1];
        let mut problems: Vec<(u8, String)> = Vec::new();
        if t.state != TaskState::Queued {
            problems.push((1, format!("task {id} assigned while {}", t.state)));
        }
        if attempt != t.attempts + 1 {
            problems.push((
                1,
                format!("task {id} assigned attempt {attempt} after {}", t.attempts),
            ));
        }
        for &d in t.deps.iter() {
            let ds = self.tasks.get(d as usize - 1).map(|x| x.state);
            if ds != Some(TaskState::Succeeded) {
                problems.push((
                    3,
                    format!("task {id} started while its dependency {d} is {ds:?}"),
                ));
            }
        }
        if let Some(max) = max_wait {
            let waited = at.saturating_sub(t.queued_since);
            if t.queued_since != NONE && waited > max {
                problems.push((
                    6,
                    format!("task {id} waited {waited} ms in the queue, over max_wait_ms {max}"),
                ));
            }
        }
        let (g, p) = (t.group as usize, t.pool as usize);
        let grp = &self.groups[g];
        if grp.running + 1 > grp.config.cap {
            problems.push((
                2,
                format!(
                    "group {} runs {} attempts, over its cap {} (event {seq})",
                    grp.name,
                    grp.running + 1,
                    grp.config.cap
                ),
            ));
        }
        let pool = &self.pools[p];
        if pool.running + 1 > pool.slots {
            problems.push((
                2,
                format!(
                    "pool {} runs {} attempts with {} slots",
                    pool.name,
                    pool.running + 1,
                    pool.slots
                ),
            ));
        }
        for (inv, m) in problems {
            self.violation(inv, Some(id), m);
        }
        let t = &mut self.tasks[id as usize - 1];
        t.state = TaskState::Running;
        t.attempts = attempt;
        self.open_attempts[id as usize - 1] = attempt;
        t.assigned_at = at;
        if t.start == NONE {
            t.start = at;
        }
        let due = at.saturating_add(t.max_runtime).saturating_add(grace);
        let runtime = t.max_runtime;
        let q = match self.deadline_checks.iter().position(|(r, _)| *r == runtime) {
            Some(q) => q,
            None => {
                self.deadline_checks.push((runtime, VecDeque::new()));
                self.deadline_checks.len() - 1
            }
        };
        self.deadline_checks[q].1.push_back((due, id, attempt));
        self.groups[g].running += 1;
        self.pools[p].running += 1;
        self.queued_delta(g as u32, false, at);
    }

    fn finish(mut self, wall: std::time::Instant) -> RunOutput {
        self.drain();
        self.core_check();
        let now = self.now;
        let w = self.scenario.window_ms;
        for g in &mut self.groups {
            if g.backlog_since != NONE {
                let since = g.backlog_since;
                mark_backlog(g, since, now, w);
            }
        }
        for p in &mut self.pools {
            p.slot_ms += f64::from(p.slots) * now.saturating_sub(p.slots_since) as f64;
            p.slots_since = now;
        }
        let not_terminal = self.tasks.iter().filter(|t| !t.state.is_terminal()).count();
        if not_terminal > 0
            && !self
                .violations
                .iter()
                .any(|v| v.message.starts_with("liveness"))
        {
            self.violation(
                8,
                None,
                format!(
                    "liveness: {not_terminal} tasks are not terminal and nothing is left to happen"
                ),
            );
        }
        if let Some(thread) = self.hash_thread.take() {
            (self.hasher, self.event_hashes) = thread.finish();
            // Freeing a day's worth of core tasks takes tens of milliseconds that the
            // caller need not wait for: the other core does it (or this one, without it).
            let core = std::mem::replace(&mut self.core, Core::new(self.config.clone()));
            let _ = thread::Builder::new()
                .name("core-drop".into())
                .spawn(move || drop(core));
        }
        let policy = self.config.policy;
        RunOutput {
            seed: self.opts.seed,
            policy,
            faults: self.faults.clone(),
            kind_names: self.scenario.kinds.iter().map(|k| k.name.clone()).collect(),
            tasks: self.tasks,
            groups: self.groups,
            pools: self.pools,
            violations: self.violations,
            journal_hash: self.hasher.finish(),
            events: self.events,
            event_hashes: self.event_hashes,
            journal: self.journal,
            queue_samples: self.queue_samples,
            simulated_ms: now,
            wall_ms: wall.elapsed().as_secs_f64() * 1e3,
            window_ms: w,
            starvation_threshold_ms: self.scenario.starvation_threshold_ms,
            accepted: self.accepted,
            duplicates: self.duplicates,
            stale_reports: self.stale_reports,
            host_crashes: self.host_crashes,
            core_checks: self.core_checks,
        }
    }
}

/// Events travel to the hashing thread in batches this long: one hand-over per this many
/// events keeps the channel's cost out of the per-event budget.
const HASH_BATCH: usize = 16384;

/// The journal hash computed on a second thread (see [`Options::hash_on_thread`]). Full
/// batches go one way and emptied ones come back, so a run allocates only a few batches.
struct HashThread {
    batch: Vec<Event>,
    full: Option<mpsc::SyncSender<Vec<Event>>>,
    emptied: mpsc::Receiver<Vec<Event>>,
    worker: thread::JoinHandle<(JournalHasher, Vec<u64>)>,
}

impl HashThread {
    /// None when no thread can be had: the run then hashes on its own thread.
    fn start(keep_hashes: bool) -> Option<HashThread> {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<Event>>(4);
        let (emptied_tx, emptied_rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("journal-hash".into())
            .spawn(move || {
                let mut hasher = JournalHasher::default();
                let mut hashes = Vec::new();
                for mut batch in full_rx {
                    for e in batch.drain(..) {
                        let h = journal_hash(&e);
                        hasher.write_u64(h);
                        if keep_hashes {
                            hashes.push(h);
                        }
                    }
                    // The run may have finished and gone: then the batch is simply freed.
                    let _ = emptied_tx.send(batch);
                }
                (hasher, hashes)
            });
        Some(HashThread {
            batch: Vec::with_capacity(HASH_BATCH),
            full: Some(full_tx),
            emptied: emptied_rx,
            worker: worker.ok()?,
        })
    }

    fn send(&mut self) {
        let next = self
            .emptied
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(HASH_BATCH));
        let batch = std::mem::replace(&mut self.batch, next);
        if let Some(full) = &self.full {
            if full.send(batch).is_err() {
                // Only a panic ends the thread early, and `finish` passes that panic on.
                self.full = None;
            }
        }
    }

    /// Waits for the thread to hash every event sent, and returns its hasher and hashes.
    fn finish(mut self) -> (JournalHasher, Vec<u64>) {
        if !self.batch.is_empty() {
            self.send();
        }
        self.full = None;
        match self.worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn grow<T: Clone>(v: &mut Vec<T>, len: usize, fill: T) {
    if v.len() < len {
        v.resize(len, fill);
    }
}

fn mark_backlog(g: &mut GroupRec, from: Millis, to: Millis, window: Millis) {
    if to <= from {
        return;
    }
    let (a, b) = ((from / window) as usize, ((to - 1) / window) as usize);
    grow(&mut g.backlogged, b + 1, 0.0);
    for w in a..=b {
        let ws = w as Millis * window;
        g.backlogged[w] += (to.min(ws + window) - from.max(ws)) as f64;
    }
}

fn add_service(g: &mut GroupRec, from: Millis, to: Millis, window: Millis) {
    if to <= from {
        return;
    }
    let (a, b) = ((from / window) as usize, ((to - 1) / window) as usize);
    grow(&mut g.service, b + 1, 0.0);
    for w in a..=b {
        let ws = w as Millis * window;
        let lo = from.max(ws);
        let hi = to.min(ws + window);
        g.service[w] += hi.saturating_sub(lo) as f64;
    }
}

/// Runs one scenario.
pub fn run(scenario: &Scenario, opts: Options) -> RunOutput {
    Sim::new(scenario, opts).run()
}
