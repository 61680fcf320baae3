//! The dispatch index: queued tasks grouped so that a decision costs
//! O(buckets-in-a-lane + log n), never a scan of the queue.
//!
//! - A **lane** is the queued work of one group in one pool.
//! - Inside a lane, a **bucket** holds the tasks that share an ageing class and a base
//!   priority, ordered by the time they became ready. Inside a bucket the oldest task is
//!   always the most aged, so a bucket's head is its best task and the order is static.
//!   A bucket is a sorted deque, not a tree: tasks become ready in time order, so inserts are
//!   nearly always at the back and assignments at the front, both O(1) without an
//!   allocation per task. The rare insert elsewhere (a retry keeps its old ready time) is a
//!   binary search and a shift of the shorter side. A removal elsewhere (a cancel) leaves a
//!   tombstone instead of shifting, so cancelling many tasks of a long bucket stays
//!   O(log n) each; tombstones leave as they reach the front.
//! - A lane keeps its buckets' heads (least entry, base score, ageing) in a compact array
//!   apart from the deques, with a bit per bucket that holds a task: a head search reads
//!   the heads of the occupied buckets only, a few cache lines per lane. A bucket's deque
//!   holds only the entries behind its front, and a second bit says whether there are any:
//!   queuing into an empty bucket and taking a bucket's only task touch its head alone.
//!   Buckets are kept in order of their ceiling (base score plus ageing cap), so a head
//!   search stops at the first bucket that cannot beat the best head found.
//! - A bucket (one cache line) keeps copies of its deque's two ends. Joining the back and
//!   taking the front decide from those alone, ask for the deque's line, and leave the
//!   write or the read to the next decision, which *settles* the buckets left so (or to
//!   whatever touches them first): with 1M tasks queued, the deque's memory is out of cache,
//!   and waiting for it was half of queuing's and of taking's time.
//! - Each pool keeps its lanes in a winner tree ([`crate::lane_index::LaneIndex`]) ordered
//!   by [`LaneKey`]: level (the best head's aged score, with the policy's group bonus), then
//!   usage per weight (fair share), then the head's age. A lane's level only changes at a
//!   time the index computes in advance from the inverse of the ageing function, so lanes
//!   are re-keyed lazily when such a time has passed ("level timers") and never rescanned.

use std::collections::VecDeque;

use crate::ageing::{Ageing, WaitMemo};
use crate::prefetch::prefetch;
use crate::scheduler::Maybe;
use crate::{Millis, TaskId};

pub(crate) type PoolIdx = u32;
pub(crate) type GroupIdx = u32;
pub(crate) type LaneIdx = u32;

/// Order of lanes in a pool's index: smaller is served first. Aligned to its 32 bytes, so
/// that a key the index's walk reads is one cache line, never two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(align(32))]
pub(crate) struct LaneKey {
    /// Negated level, so that higher levels sort first.
    pub neg_level: i64,
    /// Usage per weight as order-preserving bits (0 when the policy ignores fair share).
    pub share: u64,
    pub head_ready_since: Millis,
    /// Unique among the keys of a pool: a task heads one lane at most.
    pub head_id: TaskId,
}

/// What a lane's head search and level timer read of one bucket, kept apart from the deques:
/// 32 bytes a bucket, two to a cache line. With 100k tasks or more queued, that search runs
/// over buckets no longer in cache, and it should read a few lines per lane, not one or two
/// per bucket. Aligned to its size, so that no head straddles two lines: with the 8-byte
/// alignment of its fields, a lane's array often started mid-line, and every other head then
/// cost two lines (callgrind's cache model: 4 L1 misses a lifecycle fewer at 100k and at 1M
/// queued). (It once also kept the last wait-to-next-level answer: in a steady state that
/// saved no instructions and cost a third more lines.)
#[derive(Debug, Clone, Copy)]
#[repr(align(32))]
pub(crate) struct BucketHead {
    /// The bucket's least entry, always live: its ready time and id (0 while the bucket is
    /// empty; task ids start at 1).
    pub ready_since: Millis,
    pub id: TaskId,
    pub base_score: f64,
    /// The bucket's ageing, as its number in `Core::ageings`: equal numbers, equal ageing.
    pub ageing: u32,
    pub priority: i32,
}

impl BucketHead {
    fn new(ageing: u32, priority: i32, base_score: f64) -> Self {
        BucketHead {
            ready_since: 0,
            id: 0,
            base_score,
            ageing,
            priority,
        }
    }

    /// The score at `now` of a task of this bucket ready since `ready_since`.
    fn score_of(&self, ready_since: Millis, now: Millis, ageings: &[Ageing]) -> f64 {
        self.base_score + ageings[self.ageing as usize].boost(now.saturating_sub(ready_since))
    }

    fn entry(&self) -> Option<(Millis, TaskId)> {
        (self.id != 0).then_some((self.ready_since, self.id))
    }

    fn set_entry(&mut self, entry: Option<(Millis, TaskId)>) {
        (self.ready_since, self.id) = entry.unwrap_or((0, 0));
    }
}

/// A bucket entry: a task's ready time and id.
type Entry = (Millis, TaskId);

/// Set in the id of an entry of [`Bucket::rest`] that was removed (a tombstone). Task ids
/// are dense from 1 (`Core::apply_submitted` refuses any other), so no id has this bit.
const TOMBSTONE: TaskId = 1 << 63;

/// What [`Bucket::first`] and [`Bucket::last`] hold while `rest` is empty.
const NO_ENTRY: Entry = (0, 0);

/// What [`Bucket::first`] holds while `rest` still starts with the entry that became the
/// front (see [`Bucket::take_front`]). Never an entry: no entry has both.
const PENDING: Entry = (Millis::MAX, TOMBSTONE);

/// Set in the id of [`Bucket::last`] while that entry is not yet in `rest` (see
/// [`Bucket::insert`]). As with [`TOMBSTONE`], no task id has it.
const UNWRITTEN: TaskId = 1 << 62;

/// An entry's key, whether it is a tombstone or not.
fn key_of(entry: Entry) -> Entry {
    (entry.0, entry.1 & !TOMBSTONE)
}

fn is_tombstone(entry: Entry) -> bool {
    entry.1 & TOMBSTONE != 0
}

/// A lane's bucket: its tasks after the front, in order. The front (the bucket's least
/// entry) lives in the lane's [`BucketHead`] of the same index, so that a bucket of one task,
/// the usual case in a lane spread over many (priority, ageing) pairs, is queued and taken
/// without reading the bucket at all.
///
/// One cache line, aligned to it: the deque and copies of its two ends. With a million
/// tasks queued, a bucket and its deque's memory are both out of cache, and a task joining
/// the back or leaving the front read one after the other. The copies let both decide from
/// the bucket's line alone; the deque's memory is asked for then, and read or written at the
/// next decision, when it has come in ([`Bucket::settle`]), or before, if something needs
/// it. (The deque's loads were half of queuing's and of taking's time at 1M queued, and its
/// stores held up every store after them.)
#[derive(Debug, Clone)]
#[repr(align(64))]
pub(crate) struct Bucket {
    /// The entries behind the front, sorted by key, without duplicate keys, all greater than
    /// the front; while [`Bucket::first`] is [`PENDING`], preceded by the front itself.
    /// Removals in the middle (a cancel) leave tombstones ([`TOMBSTONE`]); never at the back,
    /// nor at the front once settled, as removals drop them along with the entries they
    /// uncover. Empty while the bucket is. Read it through [`Bucket::iter`].
    rest: VecDeque<Entry>,
    /// The first entry behind the front, [`NO_ENTRY`], or [`PENDING`].
    first: Entry,
    /// The last entry behind the front, or [`NO_ENTRY`]: whether a new task joins at the
    /// back. With [`UNWRITTEN`] set while it is not yet in `rest`, where it goes last.
    last: Entry,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            rest: VecDeque::new(),
            first: NO_ENTRY,
            last: NO_ENTRY,
        }
    }

    /// Where `key` is in `rest` (tombstone or not), or where it would go.
    fn find(&self, key: Entry) -> Result<usize, usize> {
        self.rest.binary_search_by(|&entry| key_of(entry).cmp(&key))
    }

    fn is_pending(&self) -> bool {
        self.first == PENDING
    }

    fn is_unwritten(&self) -> bool {
        self.last.1 & UNWRITTEN != 0
    }

    /// Whether [`Bucket::settle`] has anything to do.
    fn is_unsettled(&self) -> bool {
        self.is_pending() || self.is_unwritten()
    }

    /// `last` without [`UNWRITTEN`].
    fn last_entry(&self) -> Entry {
        (self.last.0, self.last.1 & !UNWRITTEN)
    }

    /// Finishes what [`Bucket::insert`] and [`Bucket::take_front`] left: writes the new back
    /// into `rest`, drops the old front from it, and finds the entry that now comes first.
    fn settle(&mut self) {
        self.write_back();
        if self.is_pending() {
            self.rest.pop_front();
            self.trim_front();
        }
    }

    /// Writes an unwritten `last` into `rest`.
    fn write_back(&mut self) {
        if self.is_unwritten() {
            self.last = self.last_entry();
            self.rest.push_back(self.last);
        }
    }

    /// After an entry left the front of `rest`: drops the tombstones that now lead it, and
    /// copies its new ends. The back stays unless nothing does.
    fn trim_front(&mut self) {
        while self.rest.front().is_some_and(|&e| is_tombstone(e)) {
            self.rest.pop_front();
        }
        self.first = self.rest.front().copied().unwrap_or(NO_ENTRY);
        if self.rest.is_empty() {
            self.last = NO_ENTRY;
        }
    }

    /// After an entry left the back of `rest`: as [`Bucket::trim_front`], at the back.
    fn trim_back(&mut self) {
        while self.rest.back().is_some_and(|&e| is_tombstone(e)) {
            self.rest.pop_back();
        }
        self.last = self.rest.back().copied().unwrap_or(NO_ENTRY);
        if self.rest.is_empty() {
            self.first = NO_ENTRY;
        }
    }

    /// Queues `key` in a bucket whose front is `head`'s entry. False if it was already
    /// queued.
    fn insert(&mut self, key: Entry, head: &mut BucketHead) -> bool {
        let Some(front) = head.entry() else {
            head.set_entry(Some(key));
            return true;
        };
        if key > front && (self.last == NO_ENTRY || self.last_entry() < key) {
            // The usual case: tasks become ready in time order. The new back is noted here
            // and written when the bucket settles; the line it goes to (most often that of
            // the back before it) is asked for now.
            self.write_back();
            if let Some(back) = self.rest.back() {
                prefetch(back);
            }
            if self.first == NO_ENTRY {
                self.first = key;
            }
            self.last = (key.0, key.1 | UNWRITTEN);
            return true;
        }
        if key == front {
            return false;
        }
        self.settle();
        if key < front {
            self.rest.push_front(front);
            self.first = front;
            if self.last == NO_ENTRY {
                self.last = front;
            }
            head.set_entry(Some(key));
            return true;
        }
        match self.find(key) {
            Ok(at) => {
                // Ends are never tombstones: a revived entry leaves both copies true.
                let entry = &mut self.rest[at];
                let revived = is_tombstone(*entry);
                entry.1 = key.1;
                revived
            }
            Err(at) => {
                // Before `last`, which stays; `first` only if it goes in front of it.
                self.rest.insert(at, key);
                if at == 0 {
                    self.first = key;
                }
                true
            }
        }
    }

    /// Takes `key` out of a bucket whose front is `head`'s entry. False if it was not
    /// queued there.
    fn remove(&mut self, key: Entry, head: &mut BucketHead) -> bool {
        if head.entry() == Some(key) {
            head.set_entry(self.take_front());
            return true;
        }
        self.settle();
        if self.last == NO_ENTRY {
            return false;
        }
        if key == self.last {
            self.rest.pop_back();
            self.trim_back();
            return true;
        }
        if key == self.first {
            self.rest.pop_front();
            self.trim_front();
            return true;
        }
        match self.find(key) {
            Ok(at) if !is_tombstone(self.rest[at]) => {
                self.rest[at].1 |= TOMBSTONE;
                true
            }
            _ => false,
        }
    }

    /// Removes and returns the least entry behind the front. It comes from the bucket's own
    /// line. The deque's memory is only asked for: its front stays there, and the bucket
    /// [`PENDING`], until the next decision settles it (see `Core::unsettled`) or something
    /// else needs it first.
    fn take_front(&mut self) -> Option<Entry> {
        self.settle();
        if self.first == NO_ENTRY {
            return None;
        }
        let front = self.first;
        if self.last == front {
            self.rest.clear();
            self.first = NO_ENTRY;
            self.last = NO_ENTRY;
        } else {
            self.first = PENDING;
            if let Some(next) = self.rest.get(1) {
                prefetch(next);
            }
        }
        Some(front)
    }

    fn has_rest(&self) -> bool {
        self.first != NO_ENTRY
    }

    /// The entries behind the front, tombstones included: `rest` without the old front a
    /// pending bucket still holds, and with the back not yet written.
    fn entries_behind_front(&self) -> impl Iterator<Item = Entry> + '_ {
        self.rest
            .iter()
            .copied()
            .skip(usize::from(self.is_pending()))
            .chain(self.is_unwritten().then(|| self.last_entry()))
    }

    /// (A pending bucket's old front is in `rest` too, but it is `head`'s entry: found either
    /// way.)
    fn contains(&self, key: Entry, head: &BucketHead) -> bool {
        head.entry() == Some(key)
            || (self.is_unwritten() && self.last_entry() == key)
            || matches!(self.find(key), Ok(at) if !is_tombstone(self.rest[at]))
    }

    /// The live entries, oldest first.
    fn iter<'a>(&'a self, head: &BucketHead) -> impl Iterator<Item = Entry> + 'a {
        head.entry().into_iter().chain(
            self.entries_behind_front()
                .filter(|&entry| !is_tombstone(entry)),
        )
    }

    /// Whether the entries behind the front keep the order that binary searches rely on and
    /// follow the front, an empty bucket holds nothing behind it, no tombstone sits where
    /// none may, and the copies of the ends are true.
    fn is_strictly_sorted(&self, head: &BucketHead) -> bool {
        let behind: Vec<Entry> = self.entries_behind_front().collect();
        let sorted = behind
            .iter()
            .zip(behind.iter().skip(1))
            .all(|(&a, &b)| key_of(a) < key_of(b));
        let front_is_right = if self.is_pending() {
            // The old front, kept until settled, and something behind it.
            self.rest.front().copied() == head.entry() && !behind.is_empty()
        } else {
            !behind.first().is_some_and(|&e| is_tombstone(e))
                && self.first == behind.first().copied().unwrap_or(NO_ENTRY)
        };
        let follows_front = match (head.entry(), behind.first()) {
            (Some(front), Some(&next)) => front < key_of(next),
            (None, Some(_)) => false,
            (_, None) => !self.is_pending(),
        };
        // Written or not, `last` is the last entry: `rest` ends just before it or with it.
        let back_is_right = !behind.last().is_some_and(|&e| is_tombstone(e))
            && self.last_entry() == behind.last().copied().unwrap_or(NO_ENTRY)
            && (self.last != NO_ENTRY || self.rest.is_empty());
        sorted && front_is_right && follows_front && back_is_right
    }
}

/// How many buckets [`Lane::occupied`] tracks; a lane's buckets past these (more than 64
/// pairs of priority and ageing in one group) are looked at one by one.
const TRACKED_BUCKETS: usize = u64::BITS as usize;

/// Exactly two cache lines, aligned to them: every lifecycle touches two lanes out of cache
/// (the one a task joins and the one it is assigned from), each in full.
#[derive(Debug, Clone)]
#[repr(align(64))]
pub(crate) struct Lane {
    pub pool: PoolIdx,
    pub group: GroupIdx,
    /// Per bucket, what a head search reads; `buckets` holds the rest, at the same index.
    /// Boxed slices, not vectors (8 bytes less each): a lane gains a bucket only for a
    /// (priority, ageing) pair it never had.
    heads: Box<[BucketHead]>,
    buckets: Box<[Bucket]>,
    /// Bit `i` is set while bucket `i` (of the first [`TRACKED_BUCKETS`]) holds a task: a
    /// lane of a few tasks spread over many (priority, ageing) pairs looks only at those.
    occupied: u64,
    /// Bit `i` is set while bucket `i` (of the first [`TRACKED_BUCKETS`]) holds entries
    /// behind its front: taking the front of a bucket without one needs only its head.
    crowded: u64,
    pub queued: u32,
    /// Attempts of this group running in this pool.
    pub running: u32,
    /// The lane's leaf in its pool's index ([`crate::lane_index::LaneIndex`]), which holds
    /// its key while it is in.
    pub slot: u32,
    /// When the lane's level next changes, if it sits in the index and ages.
    pub level_timer: Maybe,
    /// The time of this lane's entry in the core's heap of level timers, if it has one: never
    /// later than `level_timer`. A timer that moves later keeps its entry, which then fires
    /// early and is put back at the timer's time (see `Core::advance`).
    pub timer_entry: Maybe,
    /// When the lane was last re-keyed: while that is now, its key's head is its head.
    pub keyed_at: Millis,
    /// Touched since it was last re-keyed.
    pub dirty: bool,
    /// The bucket of the head found when the lane was last re-keyed ([`u8::MAX`] past the
    /// 255th): a hint for [`Lane::prefetch_head_bucket`], never relied on.
    pub head_bucket: u8,
    /// Per bucket (of the first [`TAGGED_BUCKETS`]), a byte of its ageing and priority
    /// ([`bucket_tag`]). Finding the bucket of a task compares these, in the lane's own lines,
    /// and reads only the heads whose byte matches: with 1M tasks queued, scanning the heads
    /// themselves read a line from memory for most new tasks.
    tags: [u8; TAGGED_BUCKETS],
}

/// How many buckets [`Lane::tags`] covers: what fits in the lane's two lines.
const TAGGED_BUCKETS: usize = 32;

/// A byte that tells most (ageing, priority) pairs of a lane apart: pairs that share one
/// are told apart by their heads.
fn bucket_tag(ageing: u32, priority: i32) -> u8 {
    (priority as u32 ^ ageing.wrapping_mul(0x9E37_79B9)) as u8
}

// Keeps the sizes the comments above give true as fields come and go.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(
    std::mem::size_of::<Lane>() == 128
        && std::mem::size_of::<BucketHead>() == 32
        && std::mem::size_of::<Bucket>() == 64
);

/// See [`Lane::heads_span`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadsSpan {
    pub addr: usize,
    pub bytes: usize,
}

/// What [`Lane::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insertion {
    /// Whether a bucket's front changed: if not, the task joined behind a front, and the
    /// lane's head and level timer are as they were.
    pub fronts_moved: bool,
    /// A bucket left to be settled ([`Lane::settle`]) once its memory is in.
    pub unsettled: Option<u32>,
}

/// What [`Lane::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    NotQueued,
    Removed,
    /// Removed, leaving bucket `.0` to be settled ([`Lane::settle`]) once its memory is in.
    RemovedUnsettled(u32),
}

impl Removal {
    pub fn was_queued(self) -> bool {
        self != Removal::NotQueued
    }
}

/// The best task of a lane at some time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub score: f64,
    pub ready_since: Millis,
    pub id: TaskId,
    /// Its bucket in the lane.
    pub bucket: usize,
}

/// The indexes of the buckets that may hold a task, in no particular order: the set bits of
/// a lane's occupied mask, then every untracked bucket (whose head says whether it holds
/// one).
struct Occupied {
    bits: u64,
    next_untracked: usize,
    buckets: usize,
}

impl Occupied {
    fn new(occupied: u64, buckets: usize) -> Self {
        Occupied {
            bits: occupied,
            next_untracked: TRACKED_BUCKETS,
            buckets,
        }
    }
}

impl Iterator for Occupied {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.bits != 0 {
            let b = self.bits.trailing_zeros() as usize;
            self.bits &= self.bits - 1;
            return Some(b);
        }
        (self.next_untracked < self.buckets).then(|| {
            self.next_untracked += 1;
            self.next_untracked - 1
        })
    }
}

impl Lane {
    pub fn new(pool: PoolIdx, group: GroupIdx, slot: u32) -> Self {
        Lane {
            pool,
            group,
            slot,
            heads: Box::default(),
            buckets: Box::default(),
            occupied: 0,
            crowded: 0,
            queued: 0,
            running: 0,
            level_timer: Maybe::NONE,
            timer_entry: Maybe::NONE,
            keyed_at: 0,
            dirty: false,
            head_bucket: u8::MAX,
            tags: [0; TAGGED_BUCKETS],
        }
    }

    /// Where this lane's bucket heads are in memory, and how many bytes they take: for
    /// [`crate::prefetch`] only, never read through.
    pub fn heads_span(&self) -> HeadsSpan {
        HeadsSpan {
            addr: self.heads.as_ptr() as usize,
            bytes: std::mem::size_of_val(&*self.heads),
        }
    }

    pub fn contends(&self) -> bool {
        self.queued > 0 || self.running > 0
    }

    /// Buckets stay in order of their ceiling (base score plus the ageing's cap: no task of
    /// theirs ever scores more), highest first, so that a head search stops at the first
    /// bucket that cannot beat the best head found so far. A lane of 100 tasks spread over 18
    /// (priority, ageing) pairs then scores about half of its buckets, not all.
    fn add_bucket(&mut self, head: BucketHead, ageings: &[Ageing]) -> usize {
        let ceiling = |h: &BucketHead| bucket_ceiling(h, &ageings[h.ageing as usize]);
        let new_ceiling = ceiling(&head);
        let at = self
            .heads
            .iter()
            .position(|h| ceiling(h) < new_ceiling)
            .unwrap_or(self.heads.len());
        if at < TAGGED_BUCKETS {
            // As with the bits below: the tags from `at` on move up by one, the last falls off.
            self.tags.copy_within(at..TAGGED_BUCKETS - 1, at + 1);
            self.tags[at] = bucket_tag(head.ageing, head.priority);
        }
        insert_boxed(&mut self.heads, at, head);
        insert_boxed(&mut self.buckets, at, Bucket::new());
        if at < TRACKED_BUCKETS {
            // The bits of the buckets from `at` on move up by one with them; the last tracked
            // one falls off, and is then looked at one by one like every bucket past it.
            let below = (1u64 << at) - 1;
            let shift = |bits: u64| (bits & below) | ((bits & !below) << 1);
            self.occupied = shift(self.occupied);
            self.crowded = shift(self.crowded);
        }
        at
    }

    fn find_bucket(&self, ageing: u32, priority: i32) -> Option<usize> {
        let is_it = |h: &BucketHead| h.priority == priority && h.ageing == ageing;
        let tag = bucket_tag(ageing, priority);
        let tagged = self.heads.len().min(TAGGED_BUCKETS);
        if let Some(b) = (0..tagged).find(|&b| self.tags[b] == tag && is_it(&self.heads[b])) {
            return Some(b);
        }
        self.heads[tagged..]
            .iter()
            .position(is_it)
            .map(|b| b + tagged)
    }

    fn mark_occupancy(&mut self, b: usize) {
        if b < TRACKED_BUCKETS {
            if self.heads[b].id != 0 {
                self.occupied |= 1 << b;
            } else {
                self.occupied &= !(1 << b);
            }
        }
    }

    fn mark_crowding(&mut self, b: usize) {
        if b < TRACKED_BUCKETS {
            if self.buckets[b].has_rest() {
                self.crowded |= 1 << b;
            } else {
                self.crowded &= !(1 << b);
            }
        }
    }

    /// Whether bucket `b` may hold entries behind its front.
    fn may_be_crowded(&self, b: usize) -> bool {
        b >= TRACKED_BUCKETS || self.crowded >> b & 1 == 1
    }

    /// Whether task `id`, ready since `ready_since`, is queued in this lane.
    pub fn contains(&self, ready_since: Millis, id: TaskId) -> bool {
        self.buckets
            .iter()
            .zip(&self.heads)
            .any(|(b, h)| b.contains((ready_since, id), h))
    }

    /// Queues task `id` in the bucket of its `ageing` (`ageing_number` in
    /// `Core::ageings`) and `priority`.
    pub fn insert(
        &mut self,
        ageing_number: u32,
        priority: i32,
        base_score: f64,
        ready_since: Millis,
        id: TaskId,
        ageings: &[Ageing],
    ) -> Insertion {
        let b = match self.find_bucket(ageing_number, priority) {
            Some(b) => b,
            None => self.add_bucket(
                BucketHead::new(ageing_number, priority, base_score),
                ageings,
            ),
        };
        let key = (ready_since, id);
        if self.heads[b].id == 0 {
            // An empty bucket holds nothing behind its front: only its head changes.
            self.heads[b].set_entry(Some(key));
            self.queued += 1;
            self.mark_occupancy(b);
            return Insertion {
                fronts_moved: true,
                unsettled: None,
            };
        }
        let front = self.heads[b].entry();
        let bucket = &mut self.buckets[b];
        if bucket.insert(key, &mut self.heads[b]) {
            self.queued += 1;
        }
        let unsettled = bucket.is_unsettled().then_some(b as u32);
        self.mark_crowding(b);
        Insertion {
            fronts_moved: self.heads[b].entry() != front,
            unsettled,
        }
    }

    /// Takes task `id` out of the bucket of its `ageing_number` and `priority`.
    pub fn remove(
        &mut self,
        ageing_number: u32,
        priority: i32,
        ready_since: Millis,
        id: TaskId,
    ) -> Removal {
        let Some(b) = self.find_bucket(ageing_number, priority) else {
            return Removal::NotQueued;
        };
        let key = (ready_since, id);
        if self.heads[b].entry() == Some(key) && !self.may_be_crowded(b) {
            self.heads[b].set_entry(None);
            self.queued -= 1;
            self.mark_occupancy(b);
            return Removal::Removed;
        }
        let bucket = &mut self.buckets[b];
        if !bucket.remove(key, &mut self.heads[b]) {
            return Removal::NotQueued;
        }
        let unsettled = bucket.is_unsettled();
        self.queued -= 1;
        self.mark_occupancy(b);
        self.mark_crowding(b);
        if unsettled {
            Removal::RemovedUnsettled(b as u32)
        } else {
            Removal::Removed
        }
    }

    /// Asks for the line of the bucket that a task of `ageing_number` and `priority` joins, if
    /// it will be read: with 1M tasks queued, it is out of cache, and found only through the
    /// lane, which the core asks for as soon as it knows the task's group.
    pub fn prefetch_bucket_for(&self, ageing_number: u32, priority: i32) {
        if let Some(b) = self.find_bucket(ageing_number, priority) {
            if self.heads[b].id != 0 {
                prefetch(&self.buckets[b]);
            }
        }
    }

    /// Asks for the line of the bucket of the head found at the last re-key, if taking that
    /// head will read it: the task the next decision takes is most often that one.
    pub fn prefetch_head_bucket(&self) {
        let b = usize::from(self.head_bucket);
        if self.may_be_crowded(b) {
            if let Some(bucket) = self.buckets.get(b) {
                prefetch(bucket);
            }
        }
    }

    /// Settles bucket `b` (see [`Bucket::settle`]) if it is unsettled; any other bucket, or
    /// an index past the last, is left as it is.
    pub fn settle(&mut self, b: u32) {
        if let Some(bucket) = self.buckets.get_mut(b as usize) {
            bucket.settle();
        }
    }

    /// The best task at `now`: highest score, then oldest, then lowest id. `ageings` is
    /// `Core::ageings`, which the buckets' ageing numbers index.
    pub fn head(&self, now: Millis, ageings: &[Ageing]) -> Option<Head> {
        let mut best: Option<Head> = None;
        for b in Occupied::new(self.occupied, self.heads.len()) {
            let h = &self.heads[b];
            if h.id == 0 {
                continue;
            }
            let ageing = &ageings[h.ageing as usize];
            // Buckets come in order of their ceilings (see `add_bucket`): no bucket from here
            // on can score as much as the best head found.
            if best.is_some_and(|best| bucket_ceiling(h, ageing) < best.score) {
                break;
            }
            let (ready_since, id) = (h.ready_since, h.id);
            let score = h.score_of(ready_since, now, ageings);
            let better = match best {
                None => true,
                Some(b) => {
                    score > b.score
                        || (score == b.score && (ready_since, id) < (b.ready_since, b.id))
                }
            };
            if better {
                best = Some(Head {
                    score,
                    ready_since,
                    id,
                    bucket: b,
                });
            }
        }
        best
    }

    /// The earliest time after `now` at which some bucket head's score reaches
    /// `next_level_score`, i.e. at which the lane's level may rise.
    pub fn next_level_change(
        &self,
        now: Millis,
        next_level_score: f64,
        ageings: &[Ageing],
        memo: &mut WaitMemo,
    ) -> Option<Millis> {
        let mut earliest: Option<Millis> = None;
        for b in Occupied::new(self.occupied, self.heads.len()) {
            let h = &self.heads[b];
            if h.id == 0 {
                continue;
            }
            let needed = next_level_score - h.base_score;
            let ageing = &ageings[h.ageing as usize];
            if let Some(wait) = memo.wait_to_reach(h.ageing, ageing, needed) {
                let at = h.ready_since.saturating_add(wait).max(now + 1);
                earliest = Some(earliest.map_or(at, |e: Millis| e.min(at)));
            }
        }
        earliest
    }

    /// Every queued task of the lane with its score at `now`, as (score, ready time, id), in
    /// no particular order. `ageings` is `Core::ageings`.
    pub fn scored_tasks<'a>(
        &'a self,
        now: Millis,
        ageings: &'a [Ageing],
    ) -> impl Iterator<Item = (f64, Millis, TaskId)> + 'a {
        self.buckets
            .iter()
            .zip(&self.heads)
            .flat_map(move |(b, h)| {
                b.iter(h)
                    .map(move |(ready, id)| (h.score_of(ready, now, ageings), ready, id))
            })
    }

    /// Whether every bucket is sorted behind its front (see [`Bucket::is_strictly_sorted`]),
    /// and the occupied and crowded bits and the tags match the buckets.
    pub fn buckets_consistent(&self) -> bool {
        self.buckets
            .iter()
            .zip(&self.heads)
            .all(|(b, h)| b.is_strictly_sorted(h))
            && self
                .heads
                .iter()
                .zip(&self.buckets)
                .enumerate()
                .all(|(i, (h, b))| {
                    (i >= TRACKED_BUCKETS
                        || ((self.occupied >> i & 1 == 1) == (h.id != 0)
                            && (self.crowded >> i & 1 == 1) == b.has_rest()))
                        && (i >= TAGGED_BUCKETS || self.tags[i] == bucket_tag(h.ageing, h.priority))
                })
    }
}

/// Inserts into a boxed slice (a reallocation: for the rare growth of a lane's buckets).
fn insert_boxed<T>(slice: &mut Box<[T]>, at: usize, item: T) {
    let mut items = std::mem::take(slice).into_vec();
    items.insert(at, item);
    *slice = items.into_boxed_slice();
}

/// The most a task of bucket `head` (whose ageing is `ageing`) can ever score: a boost never
/// exceeds its cap, and float addition is monotonic, so `base + boost <= base + cap` holds
/// for the computed values too.
fn bucket_ceiling(head: &BucketHead, ageing: &Ageing) -> f64 {
    head.base_score + ageing.cap()
}

/// Maps a non-negative finite f64 to bits that sort like the number.
pub(crate) fn order_bits(x: f64) -> u64 {
    let x = if x.is_nan() { f64::MAX } else { x.max(0.0) };
    x.to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket() -> (Bucket, BucketHead) {
        let head = BucketHead::new(0, 0, 0.0);
        (Bucket::new(), head)
    }

    #[test]
    fn removals_in_the_middle_leave_tombstones_that_never_show() {
        let (mut b, mut h) = bucket();
        for id in 1..=10 {
            assert!(b.insert((id * 10, id), &mut h));
        }
        assert!(b.remove((50, 5), &mut h));
        assert!(!b.remove((50, 5), &mut h), "a second removal finds nothing");
        assert!(!b.contains((50, 5), &h));
        assert!(b.remove((20, 2), &mut h));
        assert!(b.remove((10, 1), &mut h), "removing the front");
        assert_eq!(
            h.entry(),
            Some((30, 3)),
            "the tombstone behind the front left too"
        );
        let live: Vec<TaskId> = b.iter(&h).map(|(_, id)| id).collect();
        assert_eq!(live, vec![3, 4, 6, 7, 8, 9, 10]);
        assert!(
            b.insert((50, 5), &mut h),
            "a task may come back with the same key"
        );
        assert!(b.contains((50, 5), &h));
        assert!(
            b.insert((35, 11), &mut h),
            "an insert in the middle keeps the order"
        );
        assert!(b.is_strictly_sorted(&h));
        let live: Vec<TaskId> = b.iter(&h).map(|(_, id)| id).collect();
        assert_eq!(live, vec![3, 11, 4, 5, 6, 7, 8, 9, 10]);
    }

    /// The earliest level change computed from every head, occupied or not.
    fn fresh_level_change(
        lane: &Lane,
        now: Millis,
        next_level_score: f64,
        ageings: &[Ageing],
    ) -> Option<Millis> {
        lane.heads
            .iter()
            .filter_map(|h| {
                let (ready_since, _) = h.entry()?;
                let wait =
                    ageings[h.ageing as usize].wait_to_reach(next_level_score - h.base_score)?;
                Some(ready_since.saturating_add(wait).max(now + 1))
            })
            .min()
    }

    #[test]
    fn level_changes_agree_with_every_heads_as_thresholds_and_heads_change() {
        let mut lane = Lane::new(0, 0, 0);
        let linear = Ageing::Linear {
            per_minute: 1.5,
            cap: 10.0,
        };
        let step = Ageing::Step {
            every_ms: 7_000,
            increment: 0.5,
            cap: 4.0,
        };
        let ageings = [linear, step];
        lane.insert(0, 0, 0.0, 1_000, 1, &ageings);
        lane.insert(1, 2, 2.0, 2_000, 2, &ageings);
        lane.insert(0, 1, 1.0, 3_000, 3, &ageings);
        let thresholds = [1.0, 3.0, 1.0, 2.5, 2.5, 12.0, 1.0];
        let mut memo = WaitMemo::default();
        for (i, &threshold) in thresholds.iter().enumerate() {
            let now = 4_000 + i as Millis * 1_000;
            if i == 3 {
                // A new head in one bucket: its wait counts from its own ready time.
                assert!(lane.remove(0, 0, 1_000, 1).was_queued());
                lane.insert(0, 0, 0.0, 5_500, 4, &ageings);
            }
            let expected = fresh_level_change(&lane, now, threshold, &ageings);
            assert_eq!(
                lane.next_level_change(now, threshold, &ageings, &mut memo),
                expected,
                "threshold {threshold} at step {i}"
            );
        }
        assert!(
            fresh_level_change(&lane, 4_000, 12.0, &ageings).is_none(),
            "above every cap, no level change comes"
        );
    }

    /// The head found by reading every task of every bucket.
    fn brute_force_head(lane: &Lane, now: Millis, ageings: &[Ageing]) -> Option<TaskId> {
        lane.scored_tasks(now, ageings)
            .max_by(|a, b| a.0.total_cmp(&b.0).then((b.1, b.2).cmp(&(a.1, a.2))))
            .map(|(_, _, id)| id)
    }

    #[test]
    fn heads_past_the_tracked_buckets_are_found_too() {
        let linear = Ageing::Linear {
            per_minute: 60.0,
            cap: 100.0,
        };
        let ageings = [Ageing::None, linear];
        let mut lane = Lane::new(0, 0, 0);
        // 70 priorities, the oldest tasks in the lowest: ageing lets them overtake.
        let mut id = 0;
        for priority in 0..70 {
            for ready in 0..2 {
                id += 1;
                let number = (priority % 2) as u32;
                let ready_since = 1_000 * (70 - priority) as Millis + ready;
                lane.insert(
                    number,
                    priority,
                    f64::from(priority),
                    ready_since,
                    id,
                    &ageings,
                );
            }
        }
        assert!(lane.heads.len() > TRACKED_BUCKETS);
        assert!(lane.buckets_consistent());
        for now in [70_000, 100_000, 400_000] {
            assert_eq!(
                lane.head(now, &ageings).map(|h| h.id),
                brute_force_head(&lane, now, &ageings),
                "at {now}"
            );
        }
        // Empty the buckets one by one from the top, the untracked ones first.
        for priority in (0..70).rev() {
            let first = 2 * priority as TaskId + 1;
            let ready_since = 1_000 * (70 - priority) as Millis;
            let number = (priority % 2) as u32;
            assert!(lane
                .remove(number, priority, ready_since, first)
                .was_queued());
            assert!(lane
                .remove(number, priority, ready_since + 1, first + 1)
                .was_queued());
            assert!(
                lane.buckets_consistent(),
                "after emptying priority {priority}"
            );
            assert_eq!(
                lane.head(200_000, &ageings).map(|h| h.id),
                brute_force_head(&lane, 200_000, &ageings),
                "after emptying priority {priority}"
            );
        }
        assert_eq!(lane.queued, 0);
        assert!(lane.head(0, &ageings).is_none());
    }

    proptest::proptest! {
        /// Inserts and removals in any order, at the front, the back and the middle of
        /// buckets of one task and of many, agree with a plain set of the queued tasks.
        #[test]
        fn a_lane_agrees_with_a_set_of_its_tasks(
            ops in proptest::collection::vec((proptest::bool::ANY, 1u64..40), 1..300)
        ) {
            let ageings = [Ageing::None, Ageing::Linear { per_minute: 60.0, cap: 5.0 }];
            let mut lane = Lane::new(0, 0, 0);
            let mut model = std::collections::BTreeSet::new();
            // Before, between and after the ready times, and once every boost is at its cap.
            let times = [0, 4_000, 9_000, 90_000];
            for (insert, id) in ops {
                // A task's id fixes its bucket and its ready time, as in the core; ready times
                // out of id order make inserts land at the front and in the middle too.
                // Ready times half a second apart let ageing lift some tasks above others of a
                // higher priority, and not others, depending on when the head is asked for.
                let (ageing, priority) = ((id % 2) as u32, (id / 2 % 5) as i32);
                let ready_since = id * 7 % 23 * 500;
                if insert {
                    let was_new = model.insert((ready_since, id));
                    let before = lane.queued;
                    let mut memo = WaitMemo::default();
                    let seen = |lane: &Lane, memo: &mut WaitMemo| -> Vec<(Option<TaskId>, Option<Millis>)> {
                        times
                            .map(|now| {
                                let head = lane.head(now, &ageings).map(|h| h.id);
                                (head, lane.next_level_change(now, 3.5, &ageings, memo))
                            })
                            .to_vec()
                    };
                    let seen_before = seen(&lane, &mut memo);
                    let insertion =
                        lane.insert(ageing, priority, f64::from(priority), ready_since, id, &ageings);
                    let fronts_moved = insertion.fronts_moved;
                    if let Some(b) = insertion.unsettled {
                        if id % 2 == 0 {
                            lane.settle(b);
                        }
                    }
                    proptest::prop_assert_eq!(lane.queued, before + u32::from(was_new));
                    // The core skips the re-key of a lane whose fronts stayed: it must lose
                    // nothing a re-key would see.
                    if !fronts_moved {
                        proptest::prop_assert_eq!(seen(&lane, &mut memo), seen_before);
                    }
                } else {
                    let was_queued = model.remove(&(ready_since, id));
                    let removal = lane.remove(ageing, priority, ready_since, id);
                    proptest::prop_assert_eq!(removal.was_queued(), was_queued);
                    // Settled at once or left for later (as when the next decision comes
                    // before anything touches the bucket again): the lane must agree either way.
                    if let Removal::RemovedUnsettled(b) = removal {
                        if id % 3 == 0 {
                            lane.settle(b);
                        }
                    }
                }
                proptest::prop_assert!(lane.buckets_consistent());
                let queued: std::collections::BTreeSet<(Millis, TaskId)> =
                    lane.scored_tasks(0, &ageings).map(|(_, ready, id)| (ready, id)).collect();
                proptest::prop_assert_eq!(&queued, &model);
                proptest::prop_assert_eq!(lane.queued as usize, model.len());
                for &(ready, id) in &model {
                    proptest::prop_assert!(lane.contains(ready, id));
                }
                for now in times {
                    proptest::prop_assert_eq!(
                        lane.head(now, &ageings).map(|h| h.id),
                        brute_force_head(&lane, now, &ageings)
                    );
                }
            }
        }
    }
}
