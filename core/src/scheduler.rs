//! The scheduler: commands decide, events record, `apply` changes state.
//!
//! Every public input first advances time to its `now` (firing due timeouts and retries),
//! then decides, emitting events through [`Core::emit`], which journals each event and applies
//! it. `apply` is the only code that mutates the task state, and replay runs nothing else:
//! that is why a replayed core equals the core that wrote the journal.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

// Lookups only: no decision ever iterates these maps, so a fast non-DoS-resistant hash is
// fine (names come from the operator's own submitters).
type HashMap<K, V> = rustc_hash::FxHashMap<K, V>;
use std::sync::Arc;

use compact_str::CompactString;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smallvec::SmallVec;

use crate::ageing::{Ageing, AgeingClassKey, WaitMemo};
use crate::group_names::GroupNames;
use crate::journal::{AttemptOutcome, Event, EventKind, InterruptReason};
use crate::lane_index::LaneIndex;
use crate::policy::{BuiltInPolicy, Policy};
use crate::prefetch::{prefetch, prefetch_bytes};
use crate::queue::{order_bits, GroupIdx, HeadsSpan, Lane, LaneIdx, LaneKey, PoolIdx, Removal};
use crate::spec::{Backoff, DepRef, GroupConfig, TaskSpec, TimeoutMode};
use crate::task_table::TaskTable;
use crate::types::*;
use crate::{Millis, TaskId};

/// Follow-up specs are validated with their parent; this bounds their nesting.
const MAX_FOLLOW_UP_DEPTH: usize = 8;
/// Decayed usage is stored multiplied by `2^((t - base) / half_life)`; past this exponent the
/// stored values are rescaled so that they never overflow.
const MAX_SHARE_EXPONENT: f64 = 256.0;

/// (when, task, the attempt's slot): ordered as the timers fire, by time, then task.
pub(crate) type DeadlineEntry = (Millis, TaskId, u32);

#[derive(Debug, Clone, Copy)]
pub(crate) struct RunningAttempt {
    /// The task it belongs to; 0 once its slot is free.
    pub task: TaskId,
    pub assigned_at: Millis,
    pub started_at: Option<Millis>,
    pub deadline: Millis,
    pub interrupt: Option<(InterruptReason, Millis)>,
}

/// Values that many tasks share (ageing functions, backoffs), stored once: a task keeps a
/// 4-byte number instead of 32 bytes. Numbers follow first use, so a replay numbers alike,
/// and only `get` reads them back: no decision depends on them.
#[derive(Debug, Clone)]
pub(crate) struct Shared<T, K> {
    values: Vec<T>,
    /// Each value's identity, by number: the first few are searched in turn.
    keys: Vec<K>,
    numbers: HashMap<K, u32>,
}

impl<T, K> Default for Shared<T, K> {
    fn default() -> Self {
        Shared {
            values: Vec::new(),
            keys: Vec::new(),
            numbers: HashMap::default(),
        }
    }
}

impl<T: Copy, K: std::hash::Hash + Eq + Copy> Shared<T, K> {
    /// The number of `value`, whose identity is `key`.
    fn number(&mut self, value: T, key: K) -> u32 {
        let known = if self.keys.len() <= FEW_NAMES {
            self.keys.iter().position(|k| *k == key).map(|n| n as u32)
        } else {
            self.numbers.get(&key).copied()
        };
        match known {
            Some(n) => n,
            None => self.add(value, key),
        }
    }

    /// Once per distinct value: out of the code every submit runs.
    #[cold]
    #[inline(never)]
    fn add(&mut self, value: T, key: K) -> u32 {
        let n = self.values.len() as u32;
        self.values.push(value);
        self.keys.push(key);
        self.numbers.insert(key, n);
        n
    }

    pub fn get(&self, number: u32) -> T {
        self.values[number as usize]
    }

    /// Every value, indexed by its number.
    pub fn values(&self) -> &[T] {
        &self.values
    }
}

/// A backoff's bit-exact identity.
type BackoffKey = (Millis, u64, Millis, u64);

fn backoff_key(b: &Backoff) -> BackoffKey {
    (
        b.initial_ms,
        b.multiplier.to_bits(),
        b.max_ms,
        b.jitter.to_bits(),
    )
}

/// Where a task's running attempt is kept in [`Attempts`], if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptSlot(u32);

impl AttemptSlot {
    pub const NONE: AttemptSlot = AttemptSlot(u32::MAX);

    pub fn is_some(self) -> bool {
        self != AttemptSlot::NONE
    }
}

/// The running attempts, out of line: only as many tasks run at once as there are slots,
/// while every byte in [`Task`] is paid by every task ever submitted. Slot numbers are reused
/// and never reach a decision.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempts {
    slots: Vec<RunningAttempt>,
    free: Vec<u32>,
}

impl Attempts {
    fn insert(&mut self, attempt: RunningAttempt) -> AttemptSlot {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = attempt;
                AttemptSlot(slot)
            }
            None => {
                self.slots.push(attempt);
                AttemptSlot(self.slots.len() as u32 - 1)
            }
        }
    }

    pub fn get(&self, slot: AttemptSlot) -> Option<&RunningAttempt> {
        if slot.is_some() {
            self.slots.get(slot.0 as usize)
        } else {
            None
        }
    }

    fn get_mut(&mut self, slot: AttemptSlot) -> Option<&mut RunningAttempt> {
        if slot.is_some() {
            self.slots.get_mut(slot.0 as usize)
        } else {
            None
        }
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Empties `slot` and returns what it held.
    fn take(&mut self, slot: &mut AttemptSlot) -> Option<RunningAttempt> {
        let attempt = *self.get(*slot)?;
        self.slots[slot.0 as usize].task = 0;
        self.free.push(slot.0);
        *slot = AttemptSlot::NONE;
        Some(attempt)
    }
}

/// Exactly two cache lines, aligned to them: assigning a task and ending its attempt read
/// and write most of it, long after it was queued. What only some tasks need lives in
/// `extra`.
#[derive(Debug, Clone)]
#[repr(align(64))]
pub(crate) struct Task {
    /// In [`Core::kinds`].
    pub kind: u32,
    pub pool: PoolIdx,
    pub group: GroupIdx,
    pub lane: LaneIdx,
    pub priority: i32,
    /// The ageing the policy applies (not necessarily the one the spec asked for), in
    /// [`Core::ageings`].
    pub ageing: u32,
    pub state: TaskState,
    pub attempt: u32,
    pub failures: u32,
    pub continues: u32,
    pub submitted_at: Millis,
    pub ready_since: Maybe,
    pub finished_at: Maybe,
    pub deps_pending: u32,
    /// Tasks waiting for this one. Boxed, as most tasks have none: 8 bytes per task here
    /// instead of 24, for a second allocation in the few tasks that have dependents.
    #[allow(clippy::box_collection)]
    pub dependents: Option<Box<Vec<TaskId>>>,
    pub max_runtime_ms: Millis,
    pub on_timeout: TimeoutMode,
    pub max_retries: u32,
    /// In [`Core::backoffs`].
    pub backoff: u32,
    /// What few tasks have, out of line: every byte here is paid by every task.
    pub extra: Option<Box<TaskExtra>>,
    pub payload: Arc<[u8]>,
    /// The current attempt, while one runs (in [`Core::attempts`]).
    pub running: AttemptSlot,
    pub retry_due: Maybe,
    pub cancel_requested: bool,
}

// Keeps the "two cache lines" above true as fields come and go.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Task>() == 128);

/// The core's clock stops here, one short of `Millis::MAX`, so that [`Maybe`] can use that
/// value for "none". A driver's `now` beyond it is taken as this.
pub(crate) const END_OF_TIME: Millis = Millis::MAX - 1;

/// An `Option<u64>` in 8 bytes instead of 16, for the times and ids every task carries:
/// `u64::MAX` stands for none. Times never reach it (see [`END_OF_TIME`]) and task ids count
/// up from 1.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Maybe(u64);

impl Default for Maybe {
    fn default() -> Self {
        Maybe::NONE
    }
}

impl Maybe {
    pub const NONE: Maybe = Maybe(u64::MAX);

    pub fn some(value: u64) -> Maybe {
        debug_assert!(value != u64::MAX, "Maybe cannot hold u64::MAX");
        Maybe(value)
    }

    pub fn get(self) -> Option<u64> {
        (self != Maybe::NONE).then_some(self.0)
    }

    pub fn is_some(self) -> bool {
        self != Maybe::NONE
    }

    pub fn is_none(self) -> bool {
        self == Maybe::NONE
    }

    pub fn take(&mut self) -> Option<u64> {
        std::mem::replace(self, Maybe::NONE).get()
    }

    /// Sets the value unless one is set already.
    pub fn get_or_insert(&mut self, value: u64) {
        if self.is_none() {
            *self = Maybe::some(value);
        }
    }

    pub fn unwrap_or(self, default: u64) -> u64 {
        self.get().unwrap_or(default)
    }
}

// As the `Option` it stands for, so that digests do not depend on the packing.
impl std::hash::Hash for Maybe {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.get().hash(state)
    }
}

impl std::fmt::Debug for Maybe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TaskExtra {
    pub deps: Box<[TaskId]>,
    /// A dependency that failed or was cancelled: this task is doomed.
    pub failed_dependency: Maybe,
    pub dep_group: Option<Arc<str>>,
    pub rank: i32,
    pub dedup_key: Option<Box<str>>,
    pub on_success: Vec<TaskSpec>,
    pub on_failure: Vec<TaskSpec>,
    pub reason: Option<Box<str>>,
    pub parent: Option<TaskId>,
}

/// What the name table holds for a group: its number, and its lane in the first pool it had
/// work in. A submit to that pool (nearly every submit) then has the lane's number from the
/// name lookup itself, and fetches the group's and the lane's cache lines side by side; read
/// through the group's list, the lane's line waited for the group's (~7% of a lifecycle at
/// 100k queued, where both are mostly misses).
///
/// It also says where that lane's bucket heads are (a hint, for [`crate::prefetch`] only,
/// never read through), so that a submit asks for the group's record, the lane and its heads
/// all at once, as soon as the table names them. (Kept in a per-lane array instead, the
/// heads' address was one more miss that the heads' own fetch waited for.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupRef {
    pub group: GroupIdx,
    /// `PoolIdx::MAX` until the group has a lane.
    pub first_pool: PoolIdx,
    pub first_lane: LaneIdx,
    first_heads_bytes: u32,
    first_heads_addr: u64,
}

impl GroupRef {
    /// Where the bucket heads of the group's first lane are, as last filed.
    pub fn first_heads(&self) -> HeadsSpan {
        HeadsSpan {
            addr: self.first_heads_addr as usize,
            bytes: self.first_heads_bytes as usize,
        }
    }

    fn file_first_heads(&mut self, heads: HeadsSpan) {
        self.first_heads_addr = heads.addr as u64;
        // The heads of a lane are a few hundred bytes: no lane has four billion buckets.
        self.first_heads_bytes = u32::try_from(heads.bytes).unwrap_or(u32::MAX);
    }
}

/// How many buckets `Core::unsettled` holds at most: a decision settles two or so.
const UNSETTLED_BUCKETS: usize = 64;

/// How many entries a lazily filed heap (deadlines, level timers, the fair-share floor's
/// groups) may hold before the ones left behind are dropped, for `owners` things that each
/// have at most one counted entry: never more than twice theirs, and some room so that a few
/// owners do not compact at every step.
pub(crate) fn lazy_heap_bound(owners: usize) -> usize {
    2 * owners + 1024
}

/// How many bytes of a lane's bucket heads a submit asks for ahead (eight lines: 16 buckets).
const HEADS_PREFETCHED: usize = 512;

/// How many lanes a group keeps inline; a group in more pools finds its lanes in
/// `Core::lane_ids`.
const GROUP_LANES_INLINE: usize = 4;

#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub name: CompactString,
    pub config: GroupConfig,
    pub running: u32,
    pub queued: u32,
    /// Tasks queued, running or retrying: the group is active while this is above zero.
    pub active_tasks: u32,
    /// Decayed run time, stored scaled (see `Core::share_scale`).
    pub usage: f64,
    /// Decayed run time as of the group's last charge: a value that depends only on the
    /// journal, for policies that must not read `now`.
    pub usage_at_charge: f64,
    /// The key of this group's entry in `Core::active_usage`, if it has one: its stored usage
    /// as of when it was filed there, which later charges may have outgrown. An active group
    /// always has one; an idle group keeps its own until it comes up.
    pub usage_key: Maybe,
    /// One per pool the group has had work in; nearly always one or two, kept inline so that
    /// finding the lane of a submitted task reads no memory of its own.
    pub lanes: SmallVec<[LaneIdx; GROUP_LANES_INLINE]>,
    /// An attempt was assigned while the group was at its cap (only with an injected bug).
    pub over_cap_assignment: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub name: CompactString,
    pub slots: u32,
    pub running: u32,
    pub queued: u32,
    pub index: LaneIndex,
    /// Sum of the weights of the groups with queued or running work in this pool.
    pub contending_weight: u64,
    /// An attempt was assigned while every slot was taken (never, unless a bug is injected).
    /// Running above `slots` is otherwise legitimate after slots were lowered.
    pub over_slots_assignment: bool,
}

/// Ranks order a dependency group's members: a member starts only when no member of a
/// higher rank that could run (its dependencies succeeded) is unfinished. Members still
/// waiting on dependencies do not block lower ranks: otherwise a task that depends on a
/// lower-ranked member of its own group would deadlock the group.
#[derive(Debug, Clone, Default)]
pub(crate) struct DepGroup {
    /// Unfinished members by rank.
    pub members: BTreeMap<i32, BTreeSet<TaskId>>,
    /// How many unfinished members of each rank have all their dependencies done.
    pub ready: BTreeMap<i32, u32>,
}

impl DepGroup {
    fn top_ready_rank(&self) -> Option<i32> {
        self.ready.keys().next_back().copied()
    }

    fn add_ready(&mut self, rank: i32) {
        *self.ready.entry(rank).or_default() += 1;
    }

    fn remove_ready(&mut self, rank: i32) {
        if let Some(n) = self.ready.get_mut(&rank) {
            *n -= 1;
            if *n == 0 {
                self.ready.remove(&rank);
            }
        }
    }
}

impl Task {
    /// All dependencies succeeded (a member that counts for its dependency group's ranks).
    fn dependencies_done(&self) -> bool {
        self.deps_pending == 0 && self.failed_dependency().is_none()
    }

    pub fn deps(&self) -> &[TaskId] {
        self.extra.as_ref().map_or(&[], |e| &e.deps)
    }

    /// A dependency that failed or was cancelled: this task is doomed.
    pub fn failed_dependency(&self) -> Maybe {
        self.extra
            .as_ref()
            .map_or(Maybe::NONE, |e| e.failed_dependency)
    }

    pub fn dependents(&self) -> &[TaskId] {
        self.dependents.as_deref().map_or(&[], |d| d.as_slice())
    }

    pub fn dep_group(&self) -> Option<&Arc<str>> {
        self.extra.as_ref()?.dep_group.as_ref()
    }

    pub fn rank(&self) -> i32 {
        self.extra.as_ref().map_or(0, |e| e.rank)
    }

    pub fn dedup_key(&self) -> Option<&str> {
        self.extra.as_ref()?.dedup_key.as_deref()
    }

    pub fn reason(&self) -> Option<&str> {
        self.extra.as_ref()?.reason.as_deref()
    }

    pub fn parent(&self) -> Option<TaskId> {
        self.extra.as_ref()?.parent
    }
}

/// How an attempt's end counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptEffect {
    Success,
    /// Run again at once; not a retry.
    Continue,
    /// Counted against `max_retries`.
    Failure,
    /// Stopped because the task was cancelled.
    Cancelled,
}

pub(crate) fn attempt_effect(
    outcome: &AttemptOutcome,
    interrupt: Option<InterruptReason>,
    on_timeout: TimeoutMode,
) -> AttemptEffect {
    match outcome {
        AttemptOutcome::Success { .. } => AttemptEffect::Success,
        AttemptOutcome::ContinueLater => AttemptEffect::Continue,
        AttemptOutcome::Interrupted | AttemptOutcome::Lost { .. } => match interrupt {
            Some(InterruptReason::Cancel) => AttemptEffect::Cancelled,
            Some(InterruptReason::Timeout) if on_timeout == TimeoutMode::Continue => {
                AttemptEffect::Continue
            }
            _ => AttemptEffect::Failure,
        },
        AttemptOutcome::Transient { .. }
        | AttemptOutcome::Fatal { .. }
        | AttemptOutcome::RetryAfter { .. } => AttemptEffect::Failure,
    }
}

/// Handyman's scheduler. See the crate documentation.
#[derive(Debug)]
pub struct Core {
    pub(crate) config: CoreConfig,
    pub(crate) policy: BuiltInPolicy,
    pub(crate) tasks: TaskTable,
    pub(crate) attempts: Attempts,
    pub(crate) ageings: Shared<Ageing, AgeingClassKey>,
    /// Answers of the ageing functions' inverse, for the lanes' level timers.
    level_waits: WaitMemo,
    backoffs: Shared<Backoff, BackoffKey>,
    pub(crate) next_seq: u64,
    pub(crate) now: Millis,
    journal: Vec<Event>,
    interrupts: Vec<Interrupt>,
    pub(crate) pools: Vec<Pool>,
    /// Name lookups keep the names inline (up to 24 bytes), so that a hit compares within
    /// the table instead of following a pointer to a name no longer in cache.
    pool_ids: HashMap<CompactString, PoolIdx>,
    pub(crate) groups: Vec<Group>,
    pub(crate) group_ids: GroupNames,
    pub(crate) lanes: Vec<Lane>,
    /// Every lane by pool and group; asked only for groups with more lanes than they keep
    /// inline.
    lane_ids: HashMap<(PoolIdx, GroupIdx), LaneIdx>,
    /// Handler names, numbered by first use.
    pub(crate) kinds: Vec<CompactString>,
    kind_numbers: HashMap<CompactString, u32>,
    pub(crate) dedup: HashMap<Box<str>, TaskId>,
    pub(crate) dep_groups: HashMap<Arc<str>, DepGroup>,
    /// Running attempts by the time the core acts on them: the deadline, or (once
    /// interrupted) the end of the grace period. An attempt that ends or is interrupted
    /// leaves its entry behind rather than searching a tree for it (the search and the
    /// rebalance at every attempt's end were ~3% of a simulated day): an entry counts only
    /// while its slot still holds that task's attempt with that timer
    /// ([`Core::deadline_is_live`]), and stale entries are dropped as they reach the top, so
    /// that the top, which `next_wakeup` reads, is always live.
    pub(crate) deadlines: BinaryHeap<Reverse<DeadlineEntry>>,
    pub(crate) retries: BTreeSet<(Millis, TaskId)>,
    /// When lanes' levels change, earliest first. A lane's timer moves on nearly every
    /// change to the lane, mostly later (its head was served, a younger task leads). Such a
    /// move leaves the lane's entry where it is; when that entry comes due it is put back at
    /// the lane's timer of then. Only a timer that moves earlier pushes an entry, and leaves
    /// its old one behind: an entry counts only while it equals its lane's `timer_entry`.
    /// (Pushing every moved timer, and dropping the entries left behind as they came up, cost
    /// two heap operations a lifecycle in the core bench.)
    level_timers: BinaryHeap<Reverse<(Millis, LaneIdx)>>,
    /// Lanes whose key may be stale (see `mark_dirty`).
    dirty_lanes: Vec<LaneIdx>,
    /// Buckets (lane, bucket) a task joined or was taken from, whose deques' memory was asked
    /// for then: settled at the next decision, when it has come in (see `Bucket::settle`).
    /// Only a hint: a bucket that moved in its lane since settles when it is next touched.
    unsettled: Vec<(LaneIdx, u32)>,
    /// Shared by every task without a payload, to save an allocation per task.
    empty_payload: Arc<[u8]>,
    /// Active groups by stored usage, least first, for "an idle group cannot bank credit".
    /// Filed lazily, as a heap: a charge leaves its group's entry where it was, and so does a
    /// group that goes idle; `least_active_usage` deals with such entries only when they
    /// reach the top. Usage only grows between rebases, so an entry is never later than its
    /// group's true place. An entry counts while it is its group's `usage_key`; others are
    /// left behind by a group that came back with more usage. (It was a `BTreeSet`, from
    /// which every group that went idle was removed and to which it was added back: two
    /// searches of a tree of 10,000 groups, mostly cache misses. Here a group that comes back
    /// usually finds its entry still filed, and the core bench's lifecycle is 5% faster at
    /// 100k queued, 13% at 1k, where groups come and go every lifecycle.)
    pub(crate) active_usage: BinaryHeap<Reverse<(u64, GroupIdx)>>,
    share_base: Millis,
    pub(crate) counts: StateCounts,
    /// Events that `apply` refused while the core was deciding: always a bug; reported by
    /// `check_invariants`.
    pub(crate) internal_errors: Vec<String>,
}

impl Core {
    /// An empty core.
    pub fn new(config: CoreConfig) -> Core {
        let policy = config.policy.built_in();
        Core {
            config,
            policy,
            tasks: TaskTable::default(),
            attempts: Attempts::default(),
            ageings: Shared::default(),
            level_waits: WaitMemo::default(),
            backoffs: Shared::default(),
            next_seq: 1,
            now: 0,
            journal: Vec::new(),
            interrupts: Vec::new(),
            pools: Vec::new(),
            pool_ids: HashMap::default(),
            groups: Vec::new(),
            group_ids: GroupNames::default(),
            lanes: Vec::new(),
            lane_ids: HashMap::default(),
            kinds: Vec::new(),
            kind_numbers: HashMap::default(),
            dedup: HashMap::default(),
            dep_groups: HashMap::default(),
            deadlines: BinaryHeap::new(),
            retries: BTreeSet::new(),
            level_timers: BinaryHeap::new(),
            dirty_lanes: Vec::new(),
            unsettled: Vec::new(),
            empty_payload: Arc::from(Vec::new()),
            active_usage: BinaryHeap::new(),
            share_base: 0,
            counts: StateCounts::default(),
            internal_errors: Vec::new(),
        }
    }

    /// Rebuilds a core from its journal. `config` must be the one the journal was written
    /// with. The result has an empty journal outbox: the events are already stored.
    pub fn replay<'a>(
        config: CoreConfig,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Core, ReplayError> {
        let mut core = Core::new(config);
        for event in events {
            core.replay_event(event)?;
        }
        Ok(core)
    }

    /// Applies one stored event, for drivers that stream their journal.
    pub fn replay_event(&mut self, event: &Event) -> Result<(), ReplayError> {
        if event.seq != self.next_seq {
            return Err(ReplayError::Gap {
                seq: event.seq,
                expected: self.next_seq,
            });
        }
        self.apply(event.at, &event.kind)
            .map_err(|problem| ReplayError::Inconsistent {
                seq: event.seq,
                problem,
            })?;
        self.next_seq += 1;
        Ok(())
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    pub fn policy(&self) -> &dyn Policy {
        &self.policy
    }

    /// The latest `now` seen.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Sequence number of the latest event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Takes the events produced since the last call, in order.
    pub fn drain_journal(&mut self) -> Vec<Event> {
        // The next batch likely looks like this one: start it at this one's size (within
        // reason) rather than growing it from nothing by doubling, one copy per doubling.
        let capacity = self.journal.len().min(1024);
        std::mem::replace(&mut self.journal, Vec::with_capacity(capacity))
    }

    /// Moves the events produced since the last call to the end of `out`, in order. A driver
    /// that drains after every input and reuses `out` saves an allocation per input.
    pub fn drain_journal_into(&mut self, out: &mut Vec<Event>) {
        if out.is_empty() {
            // Swapping keeps both buffers' capacity.
            std::mem::swap(&mut self.journal, out);
        } else {
            out.append(&mut self.journal);
        }
    }

    /// Makes room for `additional` more tasks, for drivers that know how many will come.
    /// The task table grows by chunks and never copies its records, so this only sizes its
    /// directory of chunks.
    pub fn reserve_tasks(&mut self, additional: usize) {
        self.tasks.reserve(additional);
    }

    /// Number of events waiting to be drained.
    pub fn pending_events(&self) -> usize {
        self.journal.len()
    }

    /// Takes the interrupt requests produced since the last call.
    pub fn drain_interrupts(&mut self) -> Vec<Interrupt> {
        std::mem::take(&mut self.interrupts)
    }

    // ----------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------

    /// Sets how many attempts a pool runs at once. Takes effect for the next assignment; a
    /// pool that shrinks below its running count lets its attempts finish.
    pub fn set_pool_slots(&mut self, now: Millis, pool: &str, slots: u32) {
        self.advance(now);
        self.emit(EventKind::PoolConfigured {
            pool: pool.to_string(),
            slots,
        });
    }

    /// Sets a group's weight, cap and floor (a weight of 0 is taken as 1).
    pub fn configure_group(&mut self, now: Millis, group: &str, config: GroupConfig) {
        self.advance(now);
        let config = GroupConfig {
            weight: config.weight.max(1),
            ..config
        };
        self.emit(EventKind::GroupConfigured {
            group: group.to_string(),
            config,
        });
    }

    /// Accepts one task (dependencies by id only). See [`Core::submit_batch`].
    pub fn submit(&mut self, now: Millis, spec: TaskSpec) -> Result<SubmitOutcome, SubmitError> {
        self.advance(now);
        self.validate(&spec, Some((0, 1)), 0)?;
        if let Some(&existing) = spec.dedup_key.as_deref().and_then(|k| self.dedup.get(k)) {
            return Ok(SubmitOutcome::Duplicate(existing));
        }
        let id = self.tasks.len() as TaskId + 1;
        self.emit(EventKind::Submitted {
            id,
            spec: Box::new(spec),
            parent: None,
        });
        self.after_submit(id);
        Ok(SubmitOutcome::Created(id))
    }

    /// Accepts several tasks at once, all or none: entries may depend on each other through
    /// [`DepRef::Batch`] (a pipeline's DAG in one call), and a cycle among them is refused.
    pub fn submit_batch(
        &mut self,
        now: Millis,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<SubmitOutcome>, SubmitError> {
        self.advance(now);
        for (index, spec) in specs.iter().enumerate() {
            self.validate(spec, Some((index, specs.len())), 0)
                .map_err(|error| SubmitError::InBatch {
                    index,
                    error: Box::new(error),
                })?;
        }
        check_batch_cycles(&specs)?;

        // Decide ids first, so that batch references can be resolved to them.
        let mut outcomes = Vec::with_capacity(specs.len());
        let mut next_id = self.tasks.len() as TaskId + 1;
        let mut batch_keys: HashMap<&str, TaskId> = HashMap::default();
        for spec in &specs {
            let existing = spec.dedup_key.as_deref().and_then(|key| {
                self.dedup
                    .get(key)
                    .copied()
                    .or_else(|| batch_keys.get(key).copied())
            });
            match existing {
                Some(id) => outcomes.push(SubmitOutcome::Duplicate(id)),
                None => {
                    if let Some(key) = spec.dedup_key.as_deref() {
                        batch_keys.insert(key, next_id);
                    }
                    outcomes.push(SubmitOutcome::Created(next_id));
                    next_id += 1;
                }
            }
        }
        let mut created = Vec::new();
        for (index, mut spec) in specs.into_iter().enumerate() {
            let SubmitOutcome::Created(id) = outcomes[index] else {
                continue;
            };
            for dep in &mut spec.depends_on {
                if let DepRef::Batch(i) = *dep {
                    *dep = DepRef::Task(outcomes[i].id());
                }
            }
            self.emit(EventKind::Submitted {
                id,
                spec: Box::new(spec),
                parent: None,
            });
            created.push(id);
        }
        for id in created {
            self.after_submit(id);
        }
        Ok(outcomes)
    }

    /// Cancels a task: at once if it is not running; a running one gets an interrupt request
    /// and is cancelled when its worker confirms or the grace period ends. Its dependents are
    /// cancelled with it.
    pub fn cancel(
        &mut self,
        now: Millis,
        id: TaskId,
        reason: &str,
    ) -> Result<CancelOutcome, TaskError> {
        self.advance(now);
        let state = self.task_ref(id)?.state;
        Ok(match state {
            s if s.is_terminal() => CancelOutcome::AlreadyTerminal(s),
            TaskState::Running => {
                let t = &self.tasks[idx(id)];
                if !t.cancel_requested {
                    if let Some(r) = self.attempts.get(t.running) {
                        let attempt = t.attempt;
                        let already_interrupted = r.interrupt.is_some();
                        self.emit(EventKind::InterruptRequested {
                            id,
                            attempt,
                            reason: InterruptReason::Cancel,
                        });
                        if !already_interrupted {
                            self.interrupts.push(Interrupt {
                                id,
                                attempt,
                                reason: InterruptReason::Cancel,
                            });
                        }
                    }
                }
                CancelOutcome::Interrupting
            }
            _ => {
                self.finish_task(
                    id,
                    EventKind::Cancelled {
                        id,
                        reason: reason.to_string(),
                    },
                );
                CancelOutcome::Cancelled
            }
        })
    }

    /// Gives a worker of `pool` the next task, if a slot is free and a task is eligible.
    pub fn next_assignment(&mut self, now: Millis, pool: &str) -> Option<Assignment> {
        let pool = self.pool_id(pool);
        match pool {
            Some(pool) => self.next_assignment_in(now, pool),
            None => {
                self.advance(now);
                None
            }
        }
    }

    /// [`Core::next_assignment`] for a pool already resolved with [`Core::pool_id`].
    pub fn next_assignment_in(&mut self, now: Millis, pool: PoolId) -> Option<Assignment> {
        self.advance(now);
        let p = pool.0;
        self.pools.get(p as usize)?;
        self.flush_lanes();
        // The task the pool's first lane names is most often the one assigned: its record,
        // and the bucket it leaves, are asked for while the lane's share is checked.
        if let Some(key) = self.pools[p as usize].index.first_key() {
            if let Some(task) = self.tasks.get(idx(key.head_id)) {
                prefetch(task);
            }
        }
        if let Some(lane) = self.pools[p as usize].index.first() {
            self.lanes[lane as usize].prefetch_head_bucket();
        }
        let pool_ref = &self.pools[p as usize];
        if pool_ref.running >= pool_ref.slots
            && self.config.injected_bug != Some(InjectedBug::IgnorePoolSlots)
        {
            return None;
        }
        let lane = self.choose_lane(p)?;
        let l = &self.lanes[lane as usize];
        // A lane re-keyed at this very time has its head in its key: about half the time in
        // the core bench, the chosen lane is one a new task just came to lead. An older key
        // may name a head that another bucket's ageing has overtaken within its level.
        let id = match self.pools[p as usize].index.key(l.slot) {
            Some(key) if l.keyed_at == self.now => key.head_id,
            _ => l.head(self.now, self.ageings.values())?.id,
        };
        let attempt = self.tasks[idx(id)].attempt + 1;
        let pool = self.pools[p as usize].name.clone();
        self.emit(EventKind::Assigned { id, attempt, pool });
        let t = &self.tasks[idx(id)];
        let running = self.attempts.get(t.running)?;
        Some(Assignment {
            id,
            attempt,
            kind: self.kinds[t.kind as usize].clone(),
            pool: self.pools[t.pool as usize].name.clone(),
            group: self.groups[t.group as usize].name.clone(),
            payload: t.payload.clone(),
            assigned_at: running.assigned_at,
            deadline: running.deadline,
        })
    }

    /// A worker's report about attempt `attempt` of task `id`. Reports for any attempt but
    /// the current running one are journaled as stale and ignored (fencing).
    pub fn report(
        &mut self,
        now: Millis,
        id: TaskId,
        attempt: u32,
        report: Report,
    ) -> Result<ReportOutcome, TaskError> {
        self.advance(now);
        let t = self.task_ref(id)?;
        let current = t.attempt;
        let live = t.state == TaskState::Running && t.running.is_some() && attempt == current;
        if !live {
            self.emit(EventKind::StaleReport {
                id,
                attempt,
                current,
            });
            return Ok(ReportOutcome::Stale);
        }
        match report {
            Report::Started => {
                if self
                    .attempts
                    .get(self.tasks[idx(id)].running)
                    .is_some_and(|r| r.started_at.is_none())
                {
                    self.emit(EventKind::Started { id, attempt });
                }
            }
            Report::Finished(outcome) => self.end_attempt(id, outcome),
            Report::Lost { why } => self.end_attempt(id, AttemptOutcome::Lost { why }),
        }
        Ok(ReportOutcome::Accepted)
    }

    /// Advances time: fires due timeouts, grace expiries and retries.
    pub fn tick(&mut self, now: Millis) {
        self.advance(now);
    }

    /// The earliest time at which [`Core::tick`] would change anything: a timeout, the end of
    /// an interrupt's grace period, or a retry's backoff. Ageing needs no wakeup: levels are
    /// brought up to date at each dispatch.
    pub fn next_wakeup(&self) -> Option<Millis> {
        let deadline = self.deadlines.peek().map(|Reverse((t, _, _))| *t);
        let retry = self.retries.first().map(|(t, _)| *t);
        match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----------------------------------------------------------------------------------
    // Queries
    // ----------------------------------------------------------------------------------

    pub fn task_count(&self) -> u64 {
        self.tasks.len() as u64
    }

    pub fn counts(&self) -> StateCounts {
        self.counts
    }

    pub fn state_of(&self, id: TaskId) -> Option<TaskState> {
        self.tasks.get(idx_checked(id)?).map(|t| t.state)
    }

    /// When the task first became `queued`, without building a whole [`TaskView`].
    pub fn ready_since(&self, id: TaskId) -> Option<Millis> {
        self.tasks.get(idx_checked(id)?)?.ready_since.get()
    }

    /// The task's aged score under the policy at `now`, while it is queued.
    pub fn effective_priority(&self, id: TaskId, now: Millis) -> Option<f64> {
        let t = self.tasks.get(idx_checked(id)?)?;
        let wait = now.saturating_sub(t.ready_since.get()?);
        Some(self.policy.base_score(t.priority) + self.ageings.get(t.ageing).boost(wait))
    }

    pub fn task(&self, id: TaskId) -> Option<TaskView> {
        let t = self.tasks.get(idx_checked(id)?)?;
        Some(TaskView {
            id,
            kind: self.kinds[t.kind as usize].to_string(),
            pool: self.pools[t.pool as usize].name.to_string(),
            group: self.groups[t.group as usize].name.to_string(),
            priority: t.priority,
            state: t.state,
            attempt: t.attempt,
            failures: t.failures,
            continues: t.continues,
            max_retries: t.max_retries,
            max_runtime_ms: t.max_runtime_ms,
            submitted_at: t.submitted_at,
            ready_since: t.ready_since.get(),
            finished_at: t.finished_at.get(),
            depends_on: t.deps().to_vec(),
            dependency_group: t.dep_group().map(|g| g.to_string()),
            rank: t.rank(),
            dedup_key: t.dedup_key().map(|k| k.to_string()),
            running: self.attempts.get(t.running).map(|r| RunningView {
                attempt: t.attempt,
                assigned_at: r.assigned_at,
                started_at: r.started_at,
                deadline: r.deadline,
                interrupt: r.interrupt.map(|(reason, _)| reason),
            }),
            retry_due: t.retry_due.get(),
            reason: t.reason().map(|r| r.to_string()),
            parent: t.parent(),
        })
    }

    /// Ids of the tasks in `state`, in id order (a scan: for operators and tests).
    pub fn tasks_in(&self, state: TaskState) -> Vec<TaskId> {
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == state)
            .map(|(i, _)| i as TaskId + 1)
            .collect()
    }

    /// Attempts currently running, as (task, attempt): after a crash the host reports each
    /// as lost.
    pub fn running_attempts(&self) -> Vec<(TaskId, u32)> {
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.running.is_some())
            .map(|(i, t)| (i as TaskId + 1, t.attempt))
            .collect()
    }

    /// Groups by name.
    pub fn groups(&self, now: Millis) -> Vec<GroupView> {
        let scale = self.share_scale(now.max(self.now));
        let mut views: Vec<GroupView> = self
            .groups
            .iter()
            .map(|g| GroupView {
                name: g.name.to_string(),
                config: g.config,
                running: g.running,
                queued: g.queued,
                usage_ms: g.usage / scale,
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Pools by name.
    pub fn pools(&self) -> Vec<PoolView> {
        let mut views: Vec<PoolView> = self
            .pools
            .iter()
            .map(|p| PoolView {
                name: p.name.to_string(),
                slots: p.slots,
                running: p.running,
                queued: p.queued,
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Slots of `pool` not in use.
    pub fn free_slots(&self, pool: &str) -> u32 {
        self.pool_id(pool).map_or(0, |p| self.free_slots_in(p))
    }

    /// The handle of a pool the core knows (one that a task or a slot setting has named).
    pub fn pool_id(&self, pool: &str) -> Option<PoolId> {
        self.find_pool(pool).map(PoolId)
    }

    fn find_pool(&self, name: &str) -> Option<PoolIdx> {
        find_name(self.pools.iter().map(|p| &p.name), &self.pool_ids, name)
    }

    /// [`Core::free_slots`] for a pool already resolved with [`Core::pool_id`].
    pub fn free_slots_in(&self, pool: PoolId) -> u32 {
        self.pools
            .get(pool.0 as usize)
            .map_or(0, |p| p.slots.saturating_sub(p.running))
    }

    /// Whether `pool` has a queued task that a free slot could take now.
    pub fn has_eligible_work(&self, pool: &str) -> bool {
        self.pool_id(pool)
            .is_some_and(|p| self.has_eligible_work_in(p))
    }

    /// [`Core::has_eligible_work`] for a pool already resolved with [`Core::pool_id`].
    pub fn has_eligible_work_in(&self, pool: PoolId) -> bool {
        let p = pool.0;
        if self.pools.get(p as usize).is_none() {
            return false;
        }
        let eligible = |lane: &Lane| {
            let group = &self.groups[lane.group as usize];
            lane.pool == p && lane.queued > 0 && group.running < group.config.cap
        };
        !self.pools[p as usize].index.is_empty()
            || self
                .dirty_lanes
                .iter()
                .any(|&l| eligible(&self.lanes[l as usize]))
    }

    // ----------------------------------------------------------------------------------
    // Deciding
    // ----------------------------------------------------------------------------------

    fn task_ref(&self, id: TaskId) -> Result<&Task, TaskError> {
        idx_checked(id)
            .and_then(|i| self.tasks.get(i))
            .ok_or(TaskError::UnknownTask(id))
    }

    /// Journals an event and applies it.
    fn emit(&mut self, kind: EventKind) {
        let (seq, at) = (self.next_seq, self.now);
        self.next_seq += 1;
        // Applied through a reference, and assembled into an event only after: the caller
        // has just written `kind` field by field, and copying it whole right away waited for
        // those stores to reach the cache (a load wider than the stores it needs cannot take
        // its data from them). That wait was a fifth of this function's samples.
        if let Err(problem) = self.apply(at, &kind) {
            debug_assert!(false, "core emitted an event it cannot apply: {problem}");
            self.internal_errors.push(format!("event {seq}: {problem}"));
        }
        self.journal.push(Event { seq, at, kind });
    }

    /// Fires every timer due by `now` in time order, each at its own time (as if the driver
    /// had ticked exactly then), so that journal times are exact and never go backwards.
    fn advance(&mut self, now: Millis) {
        let now = now.max(self.now).min(END_OF_TIME);
        loop {
            let deadline = self
                .deadlines
                .peek()
                .map(|&Reverse((t, id, _))| (t, id))
                .filter(|(t, _)| *t <= now);
            let retry = self.retries.first().copied().filter(|(t, _)| *t <= now);
            let due = match (deadline, retry) {
                (Some(d), Some(r)) => d.0.min(r.0),
                (Some(d), None) => d.0,
                (None, Some(r)) => r.0,
                (None, None) => break,
            };
            self.now = self.now.max(due);
            match (deadline, retry) {
                (Some(d), Some(r)) if r.0 < d.0 => self.fire_retry(r.1),
                (Some(d), _) => self.fire_deadline(d.1),
                (None, Some(r)) => self.fire_retry(r.1),
                (None, None) => break,
            }
        }
        self.now = now;
        while let Some(&Reverse((t, lane))) = self.level_timers.peek() {
            if t > now {
                break;
            }
            self.level_timers.pop();
            let l = &mut self.lanes[lane as usize];
            if l.timer_entry != Maybe::some(t) {
                continue;
            }
            l.timer_entry = Maybe::NONE;
            match l.level_timer.get() {
                Some(due) if due <= t => {
                    l.level_timer = Maybe::NONE;
                    self.refresh_lane(lane);
                }
                Some(due) => {
                    l.timer_entry = Maybe::some(due);
                    self.level_timers.push(Reverse((due, lane)));
                }
                None => {}
            }
        }
    }

    /// When the core acts on task `id`'s running attempt, if one runs: its deadline, or
    /// (once interrupted) the end of the grace period.
    pub(crate) fn attempt_timer(&self, id: TaskId) -> Option<Millis> {
        let task = self.tasks.get(idx_checked(id)?)?;
        self.attempts.get(task.running).map(|a| self.timer_of(a))
    }

    pub(crate) fn timer_of(&self, attempt: &RunningAttempt) -> Millis {
        match attempt.interrupt {
            Some((_, since)) => since.saturating_add(self.config.interrupt_grace_ms),
            None => attempt.deadline,
        }
    }

    /// Whether `entry` still counts. Read from the attempts' slab alone, which is as small
    /// as the number of running attempts, rather than from the task: the check runs for
    /// every entry left behind, and a task record is mostly a cache miss by then.
    pub(crate) fn deadline_is_live(&self, entry: DeadlineEntry) -> bool {
        let (at, id, slot) = entry;
        self.attempts
            .get(AttemptSlot(slot))
            .is_some_and(|a| a.task == id && self.timer_of(a) == at)
    }

    fn push_deadline(&mut self, at: Millis, id: TaskId, slot: AttemptSlot) {
        self.deadlines.push(Reverse((at, id, slot.0)));
        if self.deadlines.len() > lazy_heap_bound(self.attempts.len()) {
            let mut entries = std::mem::take(&mut self.deadlines).into_vec();
            entries.retain(|e| self.deadline_is_live(e.0));
            self.deadlines = BinaryHeap::from(entries);
        }
    }

    fn drop_stale_deadlines_on_top(&mut self) {
        while let Some(&Reverse(entry)) = self.deadlines.peek() {
            if self.deadline_is_live(entry) {
                break;
            }
            self.deadlines.pop();
        }
    }

    /// The deadline entries that count, in the order they fire.
    pub(crate) fn live_deadlines(&self) -> BTreeSet<(Millis, TaskId)> {
        self.deadlines
            .iter()
            .filter(|e| self.deadline_is_live(e.0))
            .map(|&Reverse((at, id, _))| (at, id))
            .collect()
    }

    fn fire_deadline(&mut self, id: TaskId) {
        let t = &self.tasks[idx(id)];
        let attempt = t.attempt;
        match self.attempts.get(t.running).map(|r| r.interrupt) {
            Some(None) => {
                self.emit(EventKind::InterruptRequested {
                    id,
                    attempt,
                    reason: InterruptReason::Timeout,
                });
                self.interrupts.push(Interrupt {
                    id,
                    attempt,
                    reason: InterruptReason::Timeout,
                });
            }
            Some(Some(_)) => {
                let why = format!(
                    "no answer within {} ms of the interrupt request",
                    self.config.interrupt_grace_ms
                );
                self.end_attempt(id, AttemptOutcome::Lost { why });
            }
            None => {
                // A timer with no running attempt behind it would fire forever.
                self.deadlines.pop();
                self.internal_errors.push(format!(
                    "deadline timer for task {id} without a running attempt"
                ));
            }
        }
    }

    fn fire_retry(&mut self, id: TaskId) {
        self.emit(EventKind::Requeued { id });
        self.block_if_outranked(id);
    }

    /// Ends the current attempt of a running task and decides what becomes of the task.
    fn end_attempt(&mut self, id: TaskId, outcome: AttemptOutcome) {
        let t = &self.tasks[idx(id)];
        let Some(running) = self.attempts.get(t.running) else {
            return;
        };
        let attempt = t.attempt;
        let ran_ms = self.now.saturating_sub(running.assigned_at);
        let effect = attempt_effect(&outcome, running.interrupt.map(|(r, _)| r), t.on_timeout);
        let failure_message = match &outcome {
            AttemptOutcome::Transient { message } | AttemptOutcome::Fatal { message } => {
                message.clone()
            }
            AttemptOutcome::Lost { why } => format!("attempt lost: {why}"),
            AttemptOutcome::Interrupted => "interrupted at its max run time".to_string(),
            AttemptOutcome::RetryAfter { delay_ms } => {
                format!("handler asked to retry after {delay_ms} ms")
            }
            _ => String::new(),
        };
        let fatal = matches!(outcome, AttemptOutcome::Fatal { .. });
        let retry_after = match outcome {
            AttemptOutcome::RetryAfter { delay_ms } => Some(delay_ms),
            _ => None,
        };
        self.emit(EventKind::AttemptEnded {
            id,
            attempt,
            outcome,
            ran_ms,
        });
        let t = &self.tasks[idx(id)];
        if t.cancel_requested && effect != AttemptEffect::Success {
            self.finish_task(
                id,
                EventKind::Cancelled {
                    id,
                    reason: "cancelled while running".to_string(),
                },
            );
            return;
        }
        match effect {
            AttemptEffect::Success => self.finish_task(id, EventKind::Succeeded { id }),
            AttemptEffect::Continue => {
                self.emit(EventKind::Requeued { id });
                self.block_if_outranked(id);
            }
            AttemptEffect::Cancelled => self.finish_task(
                id,
                EventKind::Cancelled {
                    id,
                    reason: "cancelled while running".to_string(),
                },
            ),
            AttemptEffect::Failure => self.after_failure(id, fatal, failure_message, retry_after),
        }
    }

    /// A failed attempt's sequel: a retry after its backoff, or the task's failure. Out of
    /// line, as most attempts succeed.
    #[cold]
    #[inline(never)]
    fn after_failure(
        &mut self,
        id: TaskId,
        fatal: bool,
        failure_message: String,
        retry_after: Option<Millis>,
    ) {
        let t = &self.tasks[idx(id)];
        let failures = t.failures;
        if fatal {
            self.finish_task(
                id,
                EventKind::Failed {
                    id,
                    reason: failure_message,
                },
            );
        } else if failures <= t.max_retries {
            let backoff = self.backoffs.get(t.backoff);
            let delay = retry_after.unwrap_or_else(|| self.backoff_delay(id, failures, &backoff));
            let due = self.now.saturating_add(delay).min(END_OF_TIME);
            self.emit(EventKind::RetryScheduled { id, due });
        } else {
            let reason =
                format!("gave up after {failures} failed attempts; last: {failure_message}");
            self.finish_task(id, EventKind::Failed { id, reason });
        }
    }

    /// Retry delay for the `failures`-th failure, with jitter drawn from the seeded RNG. The
    /// draw depends only on (seed, task, failure count), so replays and re-runs agree.
    fn backoff_delay(&self, id: TaskId, failures: u32, backoff: &Backoff) -> Millis {
        let exponent = failures.saturating_sub(1).min(1_000) as i32;
        let base = (backoff.initial_ms as f64 * backoff.multiplier.powi(exponent))
            .min(backoff.max_ms as f64);
        let stream = id
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(17)
            .wrapping_add(u64::from(failures));
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ stream);
        let draw: f64 = rng.random();
        let factor = 1.0 + backoff.jitter * (2.0 * draw - 1.0);
        (base * factor).round().max(0.0) as Millis
    }

    /// Emits a terminal event and everything that follows from it: dependents released or
    /// cancelled, lower ranks released, follow-up tasks submitted.
    fn finish_task(&mut self, id: TaskId, terminal: EventKind) {
        if self.tasks[idx(id)].state.is_terminal() {
            return;
        }
        // A running task ends its attempt first, so that its slot is released.
        if self.tasks[idx(id)].running.is_some() {
            self.end_attempt(
                id,
                AttemptOutcome::Lost {
                    why: "task ended while running".into(),
                },
            );
            if self.tasks[idx(id)].state.is_terminal() {
                return;
            }
        }
        let succeeded = matches!(terminal, EventKind::Succeeded { .. });
        self.emit(terminal);
        let t = &self.tasks[idx(id)];
        if t.dependents.is_some() || t.extra.is_some() {
            self.after_terminal(id, succeeded);
        }
    }

    /// What a task's end sets off: dependents released or cancelled, lower ranks of its
    /// dependency group released, follow-up tasks submitted. Out of line: most tasks have
    /// none of these, and the code every task's end runs stays short.
    #[cold]
    #[inline(never)]
    fn after_terminal(&mut self, id: TaskId, succeeded: bool) {
        let dependents: Vec<TaskId> = self.tasks[idx(id)].dependents().to_vec();
        if succeeded {
            for d in dependents {
                if self.tasks[idx(d)].state == TaskState::Waiting {
                    if self.tasks[idx(d)].dependencies_done() {
                        self.block_lower_ranks(d);
                    }
                    self.try_release(d);
                }
            }
        } else {
            let state = self.tasks[idx(id)].state;
            for d in dependents {
                if !self.tasks[idx(d)].state.is_terminal() {
                    self.finish_task(
                        d,
                        EventKind::Cancelled {
                            id: d,
                            reason: format!("dependency {id} {state}"),
                        },
                    );
                }
            }
        }
        if let Some(group) = self.tasks[idx(id)].dep_group().cloned() {
            self.release_top_rank(&group);
        }
        let follow_ups = self.tasks[idx(id)].extra.as_ref().map(|f| {
            if succeeded {
                f.on_success.clone()
            } else {
                f.on_failure.clone()
            }
        });
        for spec in follow_ups.into_iter().flatten() {
            self.submit_follow_up(id, spec);
        }
    }

    fn submit_follow_up(&mut self, parent: TaskId, spec: TaskSpec) {
        if let Some(existing) = spec.dedup_key.as_deref().and_then(|k| self.dedup.get(k)) {
            let _ = existing;
            return;
        }
        let id = self.tasks.len() as TaskId + 1;
        self.emit(EventKind::Submitted {
            id,
            spec: Box::new(spec),
            parent: Some(parent),
        });
        self.after_submit(id);
    }

    fn after_submit(&mut self, id: TaskId) {
        if self.tasks[idx(id)].dependencies_done() {
            self.block_lower_ranks(id);
        }
        self.try_release(id);
    }

    /// A member became able to run: queued members of lower ranks wait for it.
    fn block_lower_ranks(&mut self, id: TaskId) {
        let t = &self.tasks[idx(id)];
        if let Some(group) = t.dep_group().cloned() {
            let rank = t.rank();
            let lower_queued: Vec<TaskId> = self.dep_groups[&group]
                .members
                .range(..rank)
                .flat_map(|(_, ids)| ids.iter().copied())
                .filter(|m| self.tasks[idx(*m)].state == TaskState::Queued)
                .collect();
            for m in lower_queued {
                self.emit(EventKind::Blocked { id: m });
            }
        }
    }

    fn try_release(&mut self, id: TaskId) {
        let t = &self.tasks[idx(id)];
        if t.state != TaskState::Waiting {
            return;
        }
        if let Some(dep) = t.failed_dependency().get() {
            let state = self.tasks[idx(dep)].state;
            self.finish_task(
                id,
                EventKind::Cancelled {
                    id,
                    reason: format!("dependency {dep} {state}"),
                },
            );
            return;
        }
        let deps_done = t.deps_pending == 0
            || self.config.injected_bug == Some(InjectedBug::IgnoreDependencies);
        if deps_done && !self.outranked(id) {
            self.emit(EventKind::Released { id });
        }
    }

    /// Whether an unfinished task of a higher rank shares this task's dependency group.
    pub(crate) fn outranked(&self, id: TaskId) -> bool {
        let t = &self.tasks[idx(id)];
        match t.dep_group() {
            Some(g) => self
                .dep_groups
                .get(g)
                .and_then(|dg| dg.top_ready_rank())
                .is_some_and(|top| top > t.rank()),
            None => false,
        }
    }

    fn block_if_outranked(&mut self, id: TaskId) {
        if self.tasks[idx(id)].state == TaskState::Queued && self.outranked(id) {
            self.emit(EventKind::Blocked { id });
        }
    }

    fn release_top_rank(&mut self, group: &Arc<str>) {
        let Some(dg) = self.dep_groups.get(group) else {
            return;
        };
        // Members below the top ready rank stay blocked; only those at or above it may go.
        let from = dg.top_ready_rank().unwrap_or(i32::MIN);
        let waiting: Vec<TaskId> = dg
            .members
            .range(from..)
            .flat_map(|(_, ids)| ids.iter().copied())
            .filter(|m| {
                let t = &self.tasks[idx(*m)];
                t.state == TaskState::Waiting && t.dependencies_done()
            })
            .collect();
        for m in waiting {
            self.try_release(m);
        }
    }

    /// The lane a free slot of pool `p` goes to.
    fn choose_lane(&self, p: PoolIdx) -> Option<LaneIdx> {
        let pool = &self.pools[p as usize];
        if !self.policy.uses_share_tiers() {
            return pool.index.first();
        }
        let total_weight = pool.contending_weight.max(1) as f64;
        let below_share = |lane: LaneIdx| {
            let lane = &self.lanes[lane as usize];
            let config = &self.groups[lane.group as usize].config;
            let share = (f64::from(pool.slots) * f64::from(config.weight) / total_weight)
                .max(f64::from(config.floor));
            f64::from(lane.running) < share
        };
        // Nearly always the first lane is below its share: no walk, and no walk's frontier.
        let first = pool.index.first()?;
        if below_share(first) {
            return Some(first);
        }
        // Lanes at or over their share are skipped while a lane below its share has work;
        // at most one lane per running attempt can be over its share, so this walk is
        // bounded by the pool's slots.
        pool.index
            .iter()
            .map(|(lane, _)| lane)
            .find(|&lane| below_share(lane))
            .or(Some(first))
    }

    // ----------------------------------------------------------------------------------
    // Validating
    // ----------------------------------------------------------------------------------

    fn validate(
        &self,
        spec: &TaskSpec,
        batch: Option<(usize, usize)>,
        depth: usize,
    ) -> Result<(), SubmitError> {
        if depth > MAX_FOLLOW_UP_DEPTH {
            return Err(SubmitError::FollowUpsTooDeep {
                max: MAX_FOLLOW_UP_DEPTH,
            });
        }
        for (field, value) in [
            ("kind", &spec.kind),
            ("pool", &spec.pool),
            ("group", &spec.group),
        ] {
            // Same as `trim().is_empty()`, but stops at the first visible character.
            if value.chars().all(char::is_whitespace) {
                return Err(SubmitError::EmptyField { field });
            }
        }
        if spec
            .dependency_group
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(SubmitError::EmptyField {
                field: "dependency_group",
            });
        }
        if spec.dedup_key.as_deref().is_some_and(|k| k.is_empty()) {
            return Err(SubmitError::EmptyField { field: "dedup_key" });
        }
        if spec.payload.len() > self.config.max_payload_bytes {
            return Err(SubmitError::PayloadTooLarge {
                size: spec.payload.len(),
                max: self.config.max_payload_bytes,
            });
        }
        spec.ageing
            .validate()
            .map_err(|reason| SubmitError::InvalidAgeing { reason })?;
        validate_backoff(&spec.backoff).map_err(|reason| SubmitError::InvalidBackoff { reason })?;
        if spec.max_runtime_ms == 0 {
            return Err(SubmitError::ZeroMaxRuntime);
        }
        for dep in &spec.depends_on {
            match (*dep, batch) {
                (DepRef::Task(id), _) => {
                    if idx_checked(id).is_none_or(|i| i >= self.tasks.len()) {
                        return Err(SubmitError::UnknownDependency { id });
                    }
                }
                (DepRef::Batch(i), Some((index, len))) => {
                    if i >= len {
                        return Err(SubmitError::UnknownBatchEntry { index: i, len });
                    }
                    if i == index {
                        return Err(SubmitError::SelfDependency { index });
                    }
                }
                (DepRef::Batch(_), None) => {
                    return Err(SubmitError::BatchRefInFollowUp {
                        field: "depends_on",
                    })
                }
            }
        }
        for follow_up in spec.on_success.iter().chain(&spec.on_failure) {
            self.validate(follow_up, None, depth + 1)?;
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // Applying: the only code that changes state
    // ----------------------------------------------------------------------------------

    fn apply(&mut self, at: Millis, kind: &EventKind) -> Result<(), String> {
        if at > END_OF_TIME {
            return Err(refused(format_args!(
                "event time {at} is past the core's clock"
            )));
        }
        if at > self.now {
            self.now = at;
        }
        match kind {
            EventKind::PoolConfigured { pool, slots } => {
                let p = self.intern_pool(pool);
                self.pools[p as usize].slots = *slots;
            }
            EventKind::GroupConfigured { group, config } => {
                self.apply_group_configured(group, config);
            }
            EventKind::Submitted { id, spec, parent } => {
                self.apply_submitted(*id, spec, *parent, at)?
            }
            EventKind::Released { id } => {
                let t = self.task_mut(*id, &[TaskState::Waiting])?;
                t.ready_since.get_or_insert(at);
                self.set_state(*id, TaskState::Queued);
                self.enqueue(*id);
            }
            EventKind::Blocked { id } => self.apply_blocked(*id)?,
            EventKind::Assigned { id, attempt, pool } => {
                let t = self.task_mut(*id, &[TaskState::Queued])?;
                if *attempt != t.attempt + 1 {
                    return Err(refused(format_args!(
                        "task {id}: assigned attempt {attempt}, expected {}",
                        t.attempt + 1
                    )));
                }
                let deadline = at.saturating_add(t.max_runtime_ms);
                let (lane, task_pool) = (t.lane, t.pool);
                if *self.pools[task_pool as usize].name != **pool {
                    return Err(refused(format_args!(
                        "task {id} assigned in pool {pool}, not its own"
                    )));
                }
                // The lane counts the attempt before the task leaves its queue, so that it
                // never stops contending in between.
                self.lanes[lane as usize].running += 1;
                self.dequeue(*id);
                let t = &mut self.tasks[idx(*id)];
                t.attempt = *attempt;
                t.running = self.attempts.insert(RunningAttempt {
                    task: *id,
                    assigned_at: at,
                    started_at: None,
                    deadline,
                    interrupt: None,
                });
                let (g, slot) = (t.group, t.running);
                self.set_state(*id, TaskState::Running);
                let group = &mut self.groups[g as usize];
                if group.running >= group.config.cap {
                    group.over_cap_assignment = true;
                }
                group.running += 1;
                let pool = &mut self.pools[task_pool as usize];
                if pool.running >= pool.slots {
                    pool.over_slots_assignment = true;
                }
                pool.running += 1;
                self.push_deadline(deadline, *id, slot);
                self.refresh_group_lanes(g);
            }
            EventKind::Started { id, attempt } => {
                let t = self.task_mut(*id, &[TaskState::Running])?;
                check_attempt(*id, t.attempt, *attempt)?;
                let slot = t.running;
                let r = self
                    .attempts
                    .get_mut(slot)
                    .ok_or_else(|| refused(format_args!("task {id}: not running")))?;
                r.started_at = Some(at);
            }
            EventKind::InterruptRequested {
                id,
                attempt,
                reason,
            } => self.apply_interrupt_requested(*id, *attempt, *reason, at)?,
            EventKind::AttemptEnded {
                id,
                attempt,
                outcome,
                ran_ms,
            } => {
                let t = task_in(&mut self.tasks, *id, &[TaskState::Running])?;
                check_attempt(*id, t.attempt, *attempt)?;
                let r = self
                    .attempts
                    .take(&mut t.running)
                    .ok_or_else(|| refused(format_args!("task {id}: not running")))?;
                match attempt_effect(outcome, r.interrupt.map(|(x, _)| x), t.on_timeout) {
                    AttemptEffect::Failure => t.failures += 1,
                    AttemptEffect::Continue => t.continues += 1,
                    AttemptEffect::Success | AttemptEffect::Cancelled => {}
                }
                let (lane, g, p) = (t.lane, t.group, t.pool);
                self.drop_stale_deadlines_on_top();
                self.release_slot(lane, g, p);
                self.charge(g, *ran_ms, at);
                self.refresh_group_lanes(g);
            }
            EventKind::RetryScheduled { id, due } => self.apply_retry_scheduled(*id, *due)?,
            EventKind::Requeued { id } => self.apply_requeued(*id)?,
            EventKind::Succeeded { id } => {
                self.apply_terminal(*id, TaskState::Succeeded, None, at)?
            }
            EventKind::Failed { id, reason } => {
                self.apply_terminal(*id, TaskState::Failed, Some(reason), at)?
            }
            EventKind::Cancelled { id, reason } => {
                self.apply_terminal(*id, TaskState::Cancelled, Some(reason), at)?
            }
            EventKind::StaleReport { id, .. } => {
                self.task_ref(*id).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    // The events of a task's less usual paths (blocked by a rank, interrupted, retried,
    // re-queued) and group settings are applied out of line: the code every lifecycle's
    // events run stays short.
    #[cold]
    #[inline(never)]
    fn apply_group_configured(&mut self, group: &str, config: &GroupConfig) {
        let g = self.intern_group_ref(group).group;
        let old_weight = u64::from(self.groups[g as usize].config.weight);
        self.groups[g as usize].config = *config;
        for lane in self.groups[g as usize].lanes.clone() {
            let l = &self.lanes[lane as usize];
            if l.contends() {
                let pool = &mut self.pools[l.pool as usize];
                pool.contending_weight =
                    pool.contending_weight - old_weight + u64::from(config.weight);
            }
            self.mark_dirty(lane);
        }
    }

    #[cold]
    #[inline(never)]
    fn apply_blocked(&mut self, id: TaskId) -> Result<(), String> {
        self.task_mut(id, &[TaskState::Queued])?;
        self.dequeue(id);
        self.set_state(id, TaskState::Waiting);
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn apply_interrupt_requested(
        &mut self,
        id: TaskId,
        attempt: u32,
        reason: InterruptReason,
        at: Millis,
    ) -> Result<(), String> {
        let grace = self.config.interrupt_grace_ms;
        let t = self.task_mut(id, &[TaskState::Running])?;
        check_attempt(id, t.attempt, attempt)?;
        if reason == InterruptReason::Cancel {
            t.cancel_requested = true;
        }
        let slot = t.running;
        let r = self
            .attempts
            .get_mut(slot)
            .ok_or_else(|| refused(format_args!("task {id}: not running")))?;
        if r.interrupt.is_none() {
            let old = r.deadline;
            r.interrupt = Some((reason, at));
            let timer = at.saturating_add(grace);
            if timer != old {
                self.push_deadline(timer, id, slot);
                self.drop_stale_deadlines_on_top();
            }
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn apply_retry_scheduled(&mut self, id: TaskId, due: Millis) -> Result<(), String> {
        let t = self.task_mut(id, &[TaskState::Running])?;
        if t.running.is_some() {
            return Err(refused(format_args!(
                "task {id}: retry scheduled while its attempt runs"
            )));
        }
        if due > END_OF_TIME {
            return Err(refused(format_args!(
                "task {id}: retry due at {due}, past the core's clock"
            )));
        }
        t.retry_due = Maybe::some(due);
        self.retries.insert((due, id));
        self.set_state(id, TaskState::Retrying);
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn apply_requeued(&mut self, id: TaskId) -> Result<(), String> {
        let t = self.task_mut(id, &[TaskState::Running, TaskState::Retrying])?;
        if t.running.is_some() {
            return Err(refused(format_args!(
                "task {id}: requeued while its attempt runs"
            )));
        }
        if let Some(due) = t.retry_due.take() {
            self.retries.remove(&(due, id));
        }
        self.set_state(id, TaskState::Queued);
        self.enqueue(id);
        Ok(())
    }

    fn apply_submitted(
        &mut self,
        id: TaskId,
        spec: &TaskSpec,
        parent: Option<TaskId>,
        at: Millis,
    ) -> Result<(), String> {
        if id != self.tasks.len() as TaskId + 1 {
            return Err(format!(
                "submitted task {id}, expected id {}",
                self.tasks.len() + 1
            ));
        }
        let (deps, deps_pending, failed_dependency) = if spec.depends_on.is_empty() {
            (Vec::new(), 0, Maybe::NONE)
        } else {
            self.resolve_dependencies(id, &spec.depends_on)?
        };
        let pool = self.intern_pool(&spec.pool);
        let group_ref = self.intern_group_ref(&spec.group);
        let group = group_ref.group;
        let lane = if group_ref.first_pool == pool {
            group_ref.first_lane
        } else {
            self.intern_lane(pool, group)
        };
        let kind = self.intern_kind(&spec.kind);
        let ageing = self.policy.ageing_for(spec.ageing);
        let ageing = self.ageings.number(ageing, ageing.class_key());
        let backoff = self
            .backoffs
            .number(spec.backoff, backoff_key(&spec.backoff));
        let rare = !deps.is_empty()
            || spec.dependency_group.is_some()
            || spec.rank != 0
            || spec.dedup_key.is_some()
            || !spec.on_success.is_empty()
            || !spec.on_failure.is_empty()
            || parent.is_some();
        let extra = rare.then(|| {
            let ready = deps_pending == 0 && failed_dependency.is_none();
            self.file_rare_parts(id, spec, parent, deps, failed_dependency, ready)
        });
        self.tasks.push(Task {
            kind,
            pool,
            group,
            lane,
            priority: spec.priority,
            ageing,
            state: TaskState::Waiting,
            attempt: 0,
            failures: 0,
            continues: 0,
            submitted_at: at,
            ready_since: Maybe::NONE,
            finished_at: Maybe::NONE,
            deps_pending,
            dependents: None,
            max_runtime_ms: spec.max_runtime_ms,
            on_timeout: spec.on_timeout,
            max_retries: spec.max_retries,
            backoff,
            extra,
            payload: if spec.payload.is_empty() {
                self.empty_payload.clone()
            } else {
                Arc::from(spec.payload.as_slice())
            },
            running: AttemptSlot::NONE,
            retry_due: Maybe::NONE,
            cancel_requested: false,
        });
        self.counts.waiting += 1;
        // The lane asked for above has had the time of the task's filing to come in; the
        // bucket the task joins, once released, is found through it.
        self.lanes[lane as usize].prefetch_bucket_for(ageing, spec.priority);
        Ok(())
    }

    /// A new task's dependencies as ids, how many of them are unfinished, and one that
    /// failed, if any; registers the task as a dependent of the unfinished ones. Out of line
    /// (as is [`Core::file_rare_parts`]): most tasks have none, and the code every task runs
    /// stays short.
    #[cold]
    #[inline(never)]
    fn resolve_dependencies(
        &mut self,
        id: TaskId,
        depends_on: &[DepRef],
    ) -> Result<(Vec<TaskId>, u32, Maybe), String> {
        let mut deps = Vec::with_capacity(depends_on.len());
        for dep in depends_on {
            match *dep {
                DepRef::Task(d) if idx_checked(d).is_some_and(|i| i < self.tasks.len()) => {
                    deps.push(d)
                }
                other => return Err(format!("task {id}: unresolved dependency {other:?}")),
            }
        }
        deps.sort_unstable();
        deps.dedup();
        let mut deps_pending = 0;
        let mut failed_dependency = Maybe::NONE;
        for &d in &deps {
            let dep = &mut self.tasks[idx(d)];
            match dep.state {
                TaskState::Succeeded => {}
                TaskState::Failed | TaskState::Cancelled => {
                    failed_dependency.get_or_insert(d);
                }
                _ => {
                    deps_pending += 1;
                    dep.dependents.get_or_insert_with(Box::default).push(id);
                }
            }
        }
        Ok((deps, deps_pending, failed_dependency))
    }

    /// Files a new task in its dependency group (among the ready members if
    /// `dependencies_done`) and under its dedup key, and builds the part of its record that
    /// only some tasks have.
    #[cold]
    #[inline(never)]
    fn file_rare_parts(
        &mut self,
        id: TaskId,
        spec: &TaskSpec,
        parent: Option<TaskId>,
        deps: Vec<TaskId>,
        failed_dependency: Maybe,
        dependencies_done: bool,
    ) -> Box<TaskExtra> {
        let dep_group: Option<Arc<str>> = spec.dependency_group.as_deref().map(Arc::from);
        if let Some(g) = &dep_group {
            let dg = self.dep_groups.entry(g.clone()).or_default();
            dg.members.entry(spec.rank).or_default().insert(id);
            if dependencies_done {
                dg.add_ready(spec.rank);
            }
        }
        if let Some(key) = &spec.dedup_key {
            self.dedup.insert(key.as_str().into(), id);
        }
        Box::new(TaskExtra {
            deps: deps.into_boxed_slice(),
            failed_dependency,
            dep_group,
            rank: spec.rank,
            dedup_key: spec.dedup_key.as_deref().map(Box::from),
            on_success: spec.on_success.clone(),
            on_failure: spec.on_failure.clone(),
            reason: None,
            parent,
        })
    }

    fn apply_terminal(
        &mut self,
        id: TaskId,
        state: TaskState,
        reason: Option<&String>,
        at: Millis,
    ) -> Result<(), String> {
        let t = self.task_mut(
            id,
            &[
                TaskState::Waiting,
                TaskState::Queued,
                TaskState::Running,
                TaskState::Retrying,
            ],
        )?;
        if t.running.is_some() {
            return Err(format!("task {id}: ended while its attempt runs"));
        }
        let previous = t.state;
        t.finished_at = Maybe::some(at);
        if let Some(reason) = reason {
            t.extra.get_or_insert_with(Box::default).reason = Some(reason.as_str().into());
        }
        if let Some(due) = t.retry_due.take() {
            self.retries.remove(&(due, id));
        }
        if previous == TaskState::Queued {
            self.dequeue(id);
        }
        self.set_state(id, state);
        let t = &self.tasks[idx(id)];
        if let Some(key) = t.dedup_key() {
            if self.dedup.get(key) == Some(&id) {
                self.dedup.remove(key);
            }
        }
        if let Some(g) = t.dep_group() {
            if let Some(dg) = self.dep_groups.get_mut(g) {
                let rank = t.rank();
                if t.dependencies_done() {
                    dg.remove_ready(rank);
                }
                if let Some(members) = dg.members.get_mut(&rank) {
                    members.remove(&id);
                    if members.is_empty() {
                        dg.members.remove(&rank);
                    }
                }
            }
        }
        let dependents = self.tasks[idx(id)].dependents.take();
        for &d in dependents.iter().flat_map(|d| d.iter()) {
            let dep = &mut self.tasks[idx(d)];
            if state == TaskState::Succeeded {
                dep.deps_pending = dep.deps_pending.saturating_sub(1);
                if dep.dependencies_done() && !dep.state.is_terminal() {
                    if let Some(g) = dep.dep_group() {
                        let rank = dep.rank();
                        if let Some(dg) = self.dep_groups.get_mut(g) {
                            dg.add_ready(rank);
                        }
                    }
                }
            } else {
                dep.extra
                    .get_or_insert_with(Box::default)
                    .failed_dependency
                    .get_or_insert(id);
            }
        }
        // Kept: finish_task reads them to cascade, and views show them.
        self.tasks[idx(id)].dependents = dependents;
        Ok(())
    }

    fn task_mut(&mut self, id: TaskId, allowed: &[TaskState]) -> Result<&mut Task, String> {
        task_in(&mut self.tasks, id, allowed)
    }

    /// Moves a task's state, keeping counts and group activity in step.
    fn set_state(&mut self, id: TaskId, new: TaskState) {
        let t = &mut self.tasks[idx(id)];
        let old = std::mem::replace(&mut t.state, new);
        let g = t.group;
        *self.counts.slot(old) -= 1;
        *self.counts.slot(new) += 1;
        let active = |s: TaskState| {
            matches!(
                s,
                TaskState::Queued | TaskState::Running | TaskState::Retrying
            )
        };
        match (active(old), active(new)) {
            (false, true) => {
                let group = &mut self.groups[g as usize];
                group.active_tasks += 1;
                if group.active_tasks == 1 {
                    self.activate_group(g);
                }
            }
            (true, false) => {
                let group = &mut self.groups[g as usize];
                group.active_tasks -= 1;
                // An idle group's entry stays where it is: see `least_active_usage`.
            }
            _ => {}
        }
    }

    /// A group that had nothing to do starts no lower than the least-served active group,
    /// so that being idle never banks credit against groups that kept working.
    fn activate_group(&mut self, g: GroupIdx) {
        if let Some(floor) = self.least_active_usage(g) {
            let group = &mut self.groups[g as usize];
            if group.usage < floor {
                group.usage = floor;
            }
        }
        let key = order_bits(self.groups[g as usize].usage);
        // An entry the group kept while idle still counts if its usage has not grown since.
        if self.groups[g as usize].usage_key != Maybe::some(key) {
            self.file_usage(g, key);
        }
        self.refresh_group_lanes(g);
    }

    /// Files group `g` under `key`, leaving any entry it had behind.
    fn file_usage(&mut self, g: GroupIdx, key: u64) {
        self.groups[g as usize].usage_key = Maybe::some(key);
        self.active_usage.push(Reverse((key, g)));
        if self.active_usage.len() > lazy_heap_bound(self.groups.len()) {
            let groups = &self.groups;
            self.active_usage
                .retain(|&Reverse((key, g))| groups[g as usize].usage_key == Maybe::some(key));
        }
    }

    /// The least stored usage of an active group other than `except` (the one being
    /// activated), as order bits read back.
    fn least_active_usage(&mut self, except: GroupIdx) -> Option<f64> {
        while let Some(&Reverse((key, g))) = self.active_usage.peek() {
            let group = &self.groups[g as usize];
            if group.usage_key != Maybe::some(key) {
                // Left behind by a group filed again since.
                self.active_usage.pop();
                continue;
            }
            if group.active_tasks == 0 || g == except {
                // Idle (or not yet counted): it is filed again when it becomes active.
                self.active_usage.pop();
                self.groups[g as usize].usage_key = Maybe::NONE;
                continue;
            }
            let current = order_bits(group.usage);
            if current == key {
                return Some(f64::from_bits(key));
            }
            // Charged since it was filed: move it to where it belongs and look again.
            self.active_usage.pop();
            self.file_usage(g, current);
        }
        None
    }

    /// Adds `ran_ms` of run time to a group's decayed usage.
    fn charge(&mut self, g: GroupIdx, ran_ms: Millis, at: Millis) {
        let half_life = self.config.share_half_life_ms.max(1) as f64;
        if (at.saturating_sub(self.share_base)) as f64 / half_life > MAX_SHARE_EXPONENT {
            self.rebase_shares(at);
        }
        let scale = self.share_scale(at);
        let group = &mut self.groups[g as usize];
        group.usage += ran_ms as f64 * scale;
        group.usage_at_charge = group.usage / scale;
    }

    fn share_scale(&self, at: Millis) -> f64 {
        let half_life = self.config.share_half_life_ms.max(1) as f64;
        (at.saturating_sub(self.share_base) as f64 / half_life).exp2()
    }

    fn rebase_shares(&mut self, at: Millis) {
        let scale = self.share_scale(at);
        for group in &mut self.groups {
            group.usage /= scale;
            group.usage_key = if group.active_tasks > 0 {
                Maybe::some(order_bits(group.usage))
            } else {
                Maybe::NONE
            };
        }
        self.share_base = at;
        self.active_usage = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| Some(Reverse((g.usage_key.get()?, i as GroupIdx))))
            .collect();
        for lane in 0..self.lanes.len() as LaneIdx {
            self.mark_dirty(lane);
        }
    }

    fn release_slot(&mut self, lane: LaneIdx, g: GroupIdx, p: PoolIdx) {
        self.lanes[lane as usize].running -= 1;
        self.groups[g as usize].running -= 1;
        self.pools[p as usize].running -= 1;
        self.update_contention(lane, true);
    }

    fn enqueue(&mut self, id: TaskId) {
        let t = &self.tasks[idx(id)];
        let (lane, priority, score) = (t.lane, t.priority, self.policy.base_score(t.priority));
        let (ageing, g, p) = (t.ageing, t.group, t.pool);
        let ready = t.ready_since.unwrap_or(self.now);
        let was = self.lanes[lane as usize].contends();
        let heads_before = self.lanes[lane as usize].heads_span();
        let insertion = self.lanes[lane as usize].insert(
            ageing,
            priority,
            score,
            ready,
            id,
            self.ageings.values(),
        );
        if let Some(bucket) = insertion.unsettled {
            self.leave_unsettled(lane, bucket);
        }
        // The heads move only when a bucket is added, which only an insert does.
        if self.lanes[lane as usize].heads_span() != heads_before {
            self.refile_first_heads(lane);
        }
        self.groups[g as usize].queued += 1;
        self.pools[p as usize].queued += 1;
        self.update_contention(lane, was);
        // A task that joins behind a bucket's front changes neither the lane's head nor its
        // level timer: its key stays as an untouched lane's does, stale within its level
        // until a timer or a change of its fronts or its group re-keys it. (A re-key here
        // searched the lane's heads again: skipping it saved a tenth of a lifecycle's
        // instructions at 1M queued, where lanes are long.)
        if insertion.fronts_moved {
            self.mark_dirty(lane);
        }
    }

    fn dequeue(&mut self, id: TaskId) {
        let t = &self.tasks[idx(id)];
        let (lane, priority, ageing) = (t.lane, t.priority, t.ageing);
        let (g, p) = (t.group, t.pool);
        let ready = t.ready_since.unwrap_or(self.now);
        let was = self.lanes[lane as usize].contends();
        let removal = self.lanes[lane as usize].remove(ageing, priority, ready, id);
        if let Removal::RemovedUnsettled(bucket) = removal {
            self.leave_unsettled(lane, bucket);
        }
        if removal.was_queued() {
            self.groups[g as usize].queued -= 1;
            self.pools[p as usize].queued -= 1;
        } else {
            self.internal_errors
                .push(format!("task {id} was not in its queue"));
        }
        self.update_contention(lane, was);
        self.mark_dirty(lane);
    }

    /// Lists a bucket for the next decision to settle, or, past the list's bound (a driver
    /// that queues or takes out many tasks without deciding, or a replay), settles it now.
    fn leave_unsettled(&mut self, lane: LaneIdx, bucket: u32) {
        if self.unsettled.len() < UNSETTLED_BUCKETS {
            self.unsettled.push((lane, bucket));
        } else {
            self.lanes[lane as usize].settle(bucket);
        }
    }

    /// Keeps the pool's contending weight in step with whether `lane` has work.
    fn update_contention(&mut self, lane: LaneIdx, was: bool) {
        let l = &self.lanes[lane as usize];
        let now = l.contends();
        if was == now {
            return;
        }
        let weight = u64::from(self.groups[l.group as usize].config.weight);
        let pool = &mut self.pools[l.pool as usize];
        if now {
            pool.contending_weight += weight;
        } else {
            pool.contending_weight -= weight;
        }
    }

    /// Lanes are re-keyed lazily, once per decision, however many events touched them.
    fn mark_dirty(&mut self, lane: LaneIdx) {
        let l = &mut self.lanes[lane as usize];
        if !l.dirty {
            l.dirty = true;
            self.dirty_lanes.push(lane);
        }
    }

    /// Brings every lane touched since the last decision up to date in its pool's index.
    pub(crate) fn flush_lanes(&mut self) {
        // Their deques' memory was asked for when they were left unsettled, a decision ago.
        for &(lane, bucket) in &self.unsettled {
            self.lanes[lane as usize].settle(bucket);
        }
        self.unsettled.clear();
        while let Some(lane) = self.dirty_lanes.pop() {
            self.lanes[lane as usize].dirty = false;
            self.refresh_lane(lane);
        }
    }

    fn refresh_group_lanes(&mut self, g: GroupIdx) {
        for i in 0..self.groups[g as usize].lanes.len() {
            let lane = self.groups[g as usize].lanes[i];
            self.mark_dirty(lane);
        }
    }

    /// Puts a lane where it belongs in its pool's index (or out of it), at `self.now`.
    pub(crate) fn refresh_lane(&mut self, lane_idx: LaneIdx) {
        let now = self.now;
        let lane = &mut self.lanes[lane_idx as usize];
        let pool = lane.pool as usize;
        let old_key = self.pools[pool].index.key(lane.slot);
        let group = &self.groups[lane.group as usize];
        let under_cap = group.running < group.config.cap
            || self.config.injected_bug == Some(InjectedBug::IgnoreGroupCaps);
        let mut new_key = None;
        let mut new_timer = None;
        lane.keyed_at = now;
        if lane.queued > 0 && under_cap {
            if let Some(head) = lane.head(now, self.ageings.values()) {
                lane.head_bucket = u8::try_from(head.bucket).unwrap_or(u8::MAX);
                let bonus = self
                    .policy
                    .group_bonus(group.usage_at_charge, group.config.weight);
                let level = self.policy.level_of(head.score + bonus);
                let share = if self.policy.orders_groups_by_share() {
                    order_bits(group.usage / f64::from(group.config.weight.max(1)))
                } else {
                    0
                };
                new_key = Some(LaneKey {
                    neg_level: -level,
                    share,
                    head_ready_since: head.ready_since,
                    head_id: head.id,
                });
                let next_level_score = self.policy.level_start(level + 1) - bonus;
                new_timer = lane.next_level_change(
                    now,
                    next_level_score,
                    self.ageings.values(),
                    &mut self.level_waits,
                );
            }
        }
        lane.level_timer = new_timer.map_or(Maybe::NONE, Maybe::some);
        // Many refreshes leave the key as it was (a task joined the back of a bucket): the
        // index is then not touched at all.
        if old_key != new_key {
            self.pools[pool].index.set(lane.slot, new_key);
        }
        if let Some(t) = new_timer {
            if lane.timer_entry.get().is_none_or(|entry| t < entry) {
                lane.timer_entry = Maybe::some(t);
                self.level_timers.push(Reverse((t, lane_idx)));
                if self.level_timers.len() > lazy_heap_bound(self.lanes.len()) {
                    self.drop_stale_level_timers();
                }
            }
        }
    }

    /// The entries of the level-timer heap, counted or not, in no particular order.
    pub(crate) fn level_timer_entries(&self) -> impl Iterator<Item = (Millis, LaneIdx)> + '_ {
        self.level_timers.iter().map(|&Reverse(entry)| entry)
    }

    /// Keeps the left-behind entries of `level_timers` from outnumbering the live ones.
    fn drop_stale_level_timers(&mut self) {
        let lanes = &self.lanes;
        self.level_timers
            .retain(|&Reverse((t, lane))| lanes[lane as usize].timer_entry == Maybe::some(t));
    }

    fn intern_pool(&mut self, name: &str) -> PoolIdx {
        match self.find_pool(name) {
            Some(p) => p,
            None => self.add_pool(name),
        }
    }

    // The `add_*` functions run once per name or lane, and are kept out of the code every
    // submit runs.
    #[cold]
    #[inline(never)]
    fn add_pool(&mut self, name: &str) -> PoolIdx {
        let p = self.pools.len() as PoolIdx;
        self.pool_ids.insert(CompactString::from(name), p);
        self.pools.push(Pool {
            name: CompactString::from(name),
            slots: self.config.default_pool_slots,
            running: 0,
            queued: 0,
            index: LaneIndex::default(),
            contending_weight: 0,
            over_slots_assignment: false,
        });
        p
    }

    fn intern_group_ref(&mut self, name: &str) -> GroupRef {
        let (groups, lanes) = (&self.groups, &self.lanes);
        // What queuing a task reads (its group's record, its lane, the lane's bucket heads;
        // the heads only up to a few lines, all a lane of ordinary size has) is asked for
        // together as soon as the table names them, rather than found one through the other.
        let found = self.group_ids.find(name, groups, |candidate| {
            prefetch(&groups[candidate.group as usize]);
            if let Some(lane) = lanes.get(candidate.first_lane as usize) {
                prefetch(lane);
            }
            let heads = candidate.first_heads();
            prefetch_bytes(heads.addr, heads.bytes.min(HEADS_PREFETCHED));
        });
        match found {
            Some(found) => found,
            None => self.add_group(name),
        }
    }

    #[cold]
    #[inline(never)]
    fn add_group(&mut self, name: &str) -> GroupRef {
        let g = self.groups.len() as GroupIdx;
        let group_ref = GroupRef {
            group: g,
            first_pool: PoolIdx::MAX,
            first_lane: 0,
            first_heads_bytes: 0,
            first_heads_addr: 0,
        };
        self.groups.push(Group {
            name: CompactString::from(name),
            config: self.config.default_group,
            running: 0,
            queued: 0,
            active_tasks: 0,
            usage: 0.0,
            usage_at_charge: 0.0,
            usage_key: Maybe::NONE,
            lanes: SmallVec::new(),
            over_cap_assignment: false,
        });
        self.group_ids.insert(group_ref, &self.groups);
        group_ref
    }

    /// Files where lane `lane`'s heads are now, if it is its group's first lane. Once per
    /// bucket a lane gains: out of the code every submit runs.
    #[cold]
    #[inline(never)]
    fn refile_first_heads(&mut self, lane: LaneIdx) {
        let l = &self.lanes[lane as usize];
        let group = &self.groups[l.group as usize];
        if group.lanes.first() == Some(&lane) {
            let heads = l.heads_span();
            if let Some(group_ref) = self.group_ids.get_mut(&group.name, &self.groups) {
                group_ref.file_first_heads(heads);
            }
        }
    }

    fn intern_lane(&mut self, pool: PoolIdx, group: GroupIdx) -> LaneIdx {
        let lanes = &self.groups[group as usize].lanes;
        let known = if lanes.len() <= GROUP_LANES_INLINE {
            lanes
                .iter()
                .copied()
                .find(|&l| self.lanes[l as usize].pool == pool)
        } else {
            self.lane_ids.get(&(pool, group)).copied()
        };
        match known {
            Some(l) => l,
            None => self.add_lane(pool, group),
        }
    }

    #[cold]
    #[inline(never)]
    fn add_lane(&mut self, pool: PoolIdx, group: GroupIdx) -> LaneIdx {
        let l = self.lanes.len() as LaneIdx;
        let slot = self.pools[pool as usize].index.add_slot(l);
        let new_lane = Lane::new(pool, group, slot);
        self.lanes.push(new_lane);
        self.lane_ids.insert((pool, group), l);
        if self.groups[group as usize].lanes.is_empty() {
            let name = &self.groups[group as usize].name;
            let heads = self.lanes[l as usize].heads_span();
            if let Some(group_ref) = self.group_ids.get_mut(name, &self.groups) {
                (group_ref.first_pool, group_ref.first_lane) = (pool, l);
                group_ref.file_first_heads(heads);
            }
        }
        self.groups[group as usize].lanes.push(l);
        l
    }

    fn intern_kind(&mut self, kind: &str) -> u32 {
        match find_name(self.kinds.iter(), &self.kind_numbers, kind) {
            Some(k) => k,
            None => self.add_kind(kind),
        }
    }

    #[cold]
    #[inline(never)]
    fn add_kind(&mut self, kind: &str) -> u32 {
        let k = self.kinds.len() as u32;
        self.kinds.push(CompactString::from(kind));
        self.kind_numbers.insert(CompactString::from(kind), k);
        k
    }

    pub(crate) fn pool_name(&self, p: PoolIdx) -> &str {
        &self.pools[p as usize].name
    }

    pub(crate) fn group_name(&self, g: GroupIdx) -> &str {
        &self.groups[g as usize].name
    }

    pub(crate) fn lane_of(&self, id: TaskId) -> &Lane {
        &self.lanes[self.tasks[idx(id)].lane as usize]
    }

    pub(crate) fn choose_lane_for_explain(&self, p: PoolIdx) -> Option<LaneIdx> {
        self.choose_lane(p)
    }
}

/// Task `id` of `tasks`, if it is in one of the `allowed` states. Borrows only the task
/// table, so that the caller can still reach the rest of the core.
fn task_in<'a>(
    tasks: &'a mut TaskTable,
    id: TaskId,
    allowed: &[TaskState],
) -> Result<&'a mut Task, String> {
    let Some(t) = idx_checked(id).and_then(|i| tasks.get_mut(i)) else {
        return Err(refused(format_args!("task {id} does not exist")));
    };
    if !allowed.contains(&t.state) {
        return Err(refused(format_args!(
            "task {id} is {}, expected one of {allowed:?}",
            t.state
        )));
    }
    Ok(t)
}

// The messages of events `apply` refuses are built out of line: they are never needed in a
// healthy run, and their formatting code, inlined at every check, made the code every event
// runs longer.
#[cold]
#[inline(never)]
fn refused(message: std::fmt::Arguments) -> String {
    message.to_string()
}

fn check_attempt(id: TaskId, current: u32, reported: u32) -> Result<(), String> {
    if current == reported {
        Ok(())
    } else {
        Err(refused(format_args!(
            "task {id}: event for attempt {reported}, current is {current}"
        )))
    }
}

fn validate_backoff(b: &Backoff) -> Result<(), String> {
    if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
        return Err(format!(
            "multiplier must be a finite number >= 1, got {}",
            b.multiplier
        ));
    }
    if !(b.jitter.is_finite() && (0.0..1.0).contains(&b.jitter)) {
        return Err(format!("jitter must be in [0, 1), got {}", b.jitter));
    }
    if b.max_ms < b.initial_ms {
        return Err(format!(
            "max_ms ({}) must be >= initial_ms ({})",
            b.max_ms, b.initial_ms
        ));
    }
    Ok(())
}

/// Refuses a batch whose entries depend on each other in a cycle, naming the entries.
fn check_batch_cycles(specs: &[TaskSpec]) -> Result<(), SubmitError> {
    use petgraph::graphmap::DiGraphMap;
    let mut graph: DiGraphMap<usize, ()> = DiGraphMap::new();
    let mut any = false;
    for (i, spec) in specs.iter().enumerate() {
        for dep in &spec.depends_on {
            if let DepRef::Batch(j) = *dep {
                graph.add_edge(j, i, ());
                any = true;
            }
        }
    }
    if !any {
        return Ok(());
    }
    if petgraph::algo::toposort(&graph, None).is_ok() {
        return Ok(());
    }
    let mut entries: Vec<usize> = petgraph::algo::tarjan_scc(&graph)
        .into_iter()
        .find(|scc| scc.len() > 1)
        .unwrap_or_default();
    entries.sort_unstable();
    Err(SubmitError::DependencyCycle { entries })
}

/// Up to this many pools, handler kinds, ageings or backoffs, one is found by comparing it
/// with each in turn: cheaper than hashing it and probing a table, and a core seldom knows
/// more. (Five lookups a lifecycle: the pool twice, the kind, the ageing and the backoff.)
const FEW_NAMES: usize = 8;

/// The number of `name` among `names` (numbered in order, and also filed in `numbers`).
fn find_name<'a>(
    mut names: impl ExactSizeIterator<Item = &'a CompactString>,
    numbers: &HashMap<CompactString, u32>,
    name: &str,
) -> Option<u32> {
    if names.len() <= FEW_NAMES {
        return names.position(|n| n == name).map(|i| i as u32);
    }
    numbers.get(name).copied()
}

/// Index of a task id in `Core::tasks`.
pub(crate) fn idx(id: TaskId) -> usize {
    (id - 1) as usize
}

pub(crate) fn idx_checked(id: TaskId) -> Option<usize> {
    id.checked_sub(1).map(|i| i as usize)
}
