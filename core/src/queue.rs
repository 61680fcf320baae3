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
//! - Each pool keeps its lanes in a `BTreeSet` ordered by [`LaneKey`]: level (the best head's
//!   aged score, with the policy's group bonus), then usage per weight (fair share), then the
//!   head's age. A lane's level only changes at a time the index computes in advance from the
//!   inverse of the ageing function, so lanes are re-keyed lazily when such a time has passed
//!   ("level timers") and never rescanned.

use std::collections::VecDeque;

use crate::ageing::{Ageing, AgeingClassKey};
use crate::{Millis, TaskId};

pub(crate) type PoolIdx = u32;
pub(crate) type GroupIdx = u32;
pub(crate) type LaneIdx = u32;

/// Order of lanes in a pool's index: smaller is served first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LaneKey {
    /// Negated level, so that higher levels sort first.
    pub neg_level: i64,
    /// Usage per weight as order-preserving bits (0 when the policy ignores fair share).
    pub share: u64,
    pub head_ready_since: Millis,
    pub head_id: TaskId,
    pub lane: LaneIdx,
}

/// A lane's bucket. `repr(C)` keeps the fields that a lane's head search reads (`front`,
/// `base_score`, `ageing`, `wait_memo`) together at the start: with 100k tasks or more
/// queued, that search runs over every bucket of a lane that is no longer in cache, and it
/// should cost a line or two per bucket, not one for the struct plus one for the deque.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct Bucket {
    /// A copy of the deque's front (always live), kept so that reading a bucket's head does
    /// not reach into the deque's buffer.
    front: Option<(Millis, TaskId)>,
    pub base_score: f64,
    pub ageing: Ageing,
    /// The last `ageing.wait_to_reach` asked of this bucket, as (target bits, answer): a
    /// lane asks again after every change to it, nearly always for the same next level,
    /// and the inverse walks the ageing curve. A pure function's answer, so never stale.
    wait_memo: Option<(u64, Option<Millis>)>,
    pub priority: i32,
    /// `ageing.class_key()`, kept so that finding a task's bucket compares, not recomputes.
    pub class: AgeingClassKey,
    /// Sorted by (ready time, id), without duplicates; may hold tombstones, never at the
    /// front. Read it through [`Bucket::iter`].
    tasks: VecDeque<(Millis, TaskId)>,
    /// Entries of `tasks` that were removed. Only asked about, never iterated.
    removed: rustc_hash::FxHashSet<(Millis, TaskId)>,
}

impl Bucket {
    fn insert(&mut self, key: (Millis, TaskId)) -> bool {
        // The front is the least entry, and a tombstone brought back is never the least.
        if self.front.is_none_or(|front| key < front) {
            self.front = Some(key);
        }
        match self.tasks.back() {
            None => {
                self.tasks.push_back(key);
                true
            }
            Some(&last) if last < key => {
                self.tasks.push_back(key);
                true
            }
            Some(_) => match self.tasks.binary_search(&key) {
                Ok(_) => self.removed.remove(&key),
                Err(at) => {
                    self.tasks.insert(at, key);
                    true
                }
            },
        }
    }

    fn remove(&mut self, key: (Millis, TaskId)) -> bool {
        if self.front == Some(key) {
            self.tasks.pop_front();
            self.drop_front_tombstones();
            self.front = self.tasks.front().copied();
            return true;
        }
        if self.tasks.back() == Some(&key) {
            // Not the front, so something stays in front of it.
            self.tasks.pop_back();
            return true;
        }
        self.tasks.binary_search(&key).is_ok() && self.removed.insert(key)
    }

    fn drop_front_tombstones(&mut self) {
        if self.removed.is_empty() {
            return;
        }
        while let Some(front) = self.tasks.front() {
            if !self.removed.remove(front) {
                break;
            }
            self.tasks.pop_front();
        }
    }

    pub fn contains(&self, key: (Millis, TaskId)) -> bool {
        self.tasks.binary_search(&key).is_ok() && !self.removed.contains(&key)
    }

    /// The live entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Millis, TaskId)> {
        self.tasks.iter().filter(|k| !self.removed.contains(k))
    }

    /// Whether the deque keeps the order that binary searches rely on, its front is live and
    /// copied right, and every tombstone marks an entry it holds.
    pub fn is_strictly_sorted(&self) -> bool {
        self.tasks
            .iter()
            .zip(self.tasks.iter().skip(1))
            .all(|(a, b)| a < b)
            && self.tasks.front() == self.front.as_ref()
            && self.tasks.front().is_none_or(|f| !self.removed.contains(f))
            && self
                .removed
                .iter()
                .all(|k| self.tasks.binary_search(k).is_ok())
    }

    pub fn first(&self) -> Option<&(Millis, TaskId)> {
        self.front.as_ref()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Lane {
    pub pool: PoolIdx,
    pub group: GroupIdx,
    pub buckets: Vec<Bucket>,
    pub queued: u32,
    /// Attempts of this group running in this pool.
    pub running: u32,
    /// The key under which the lane sits in its pool's index, if it does.
    pub key: Option<LaneKey>,
    /// When the lane's level next changes, if it sits in the index and ages.
    pub level_timer: Option<Millis>,
    /// Touched since it was last re-keyed.
    pub dirty: bool,
}

/// The best task of a lane at some time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub score: f64,
    pub ready_since: Millis,
    pub id: TaskId,
}

impl Lane {
    pub fn new(pool: PoolIdx, group: GroupIdx) -> Self {
        Lane {
            pool,
            group,
            buckets: Vec::new(),
            queued: 0,
            running: 0,
            key: None,
            level_timer: None,
            dirty: false,
        }
    }

    pub fn contends(&self) -> bool {
        self.queued > 0 || self.running > 0
    }

    pub fn bucket_for(&mut self, ageing: Ageing, priority: i32, base_score: f64) -> usize {
        let class = ageing.class_key();
        if let Some(i) = self
            .buckets
            .iter()
            .position(|b| b.priority == priority && b.class == class)
        {
            return i;
        }
        self.buckets.push(Bucket {
            front: None,
            base_score,
            ageing,
            wait_memo: None,
            priority,
            class,
            tasks: VecDeque::new(),
            removed: Default::default(),
        });
        self.buckets.len() - 1
    }

    pub fn insert(
        &mut self,
        ageing: Ageing,
        priority: i32,
        base_score: f64,
        ready_since: Millis,
        id: TaskId,
    ) {
        let b = self.bucket_for(ageing, priority, base_score);
        if self.buckets[b].insert((ready_since, id)) {
            self.queued += 1;
        }
    }

    pub fn remove(
        &mut self,
        ageing: Ageing,
        priority: i32,
        ready_since: Millis,
        id: TaskId,
    ) -> bool {
        let class = ageing.class_key();
        for bucket in &mut self.buckets {
            if bucket.priority == priority
                && bucket.class == class
                && bucket.remove((ready_since, id))
            {
                self.queued -= 1;
                return true;
            }
        }
        false
    }

    /// The best task at `now`: highest score, then oldest, then lowest id.
    pub fn head(&self, now: Millis) -> Option<Head> {
        let mut best: Option<Head> = None;
        for bucket in &self.buckets {
            let Some(&(ready_since, id)) = bucket.first() else {
                continue;
            };
            let score = bucket.base_score + bucket.ageing.boost(now.saturating_sub(ready_since));
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
                });
            }
        }
        best
    }

    /// The earliest time after `now` at which some bucket head's score reaches
    /// `threshold - bonus`, i.e. at which the lane's level may rise.
    pub fn next_level_change(&mut self, now: Millis, next_level_score: f64) -> Option<Millis> {
        let mut earliest: Option<Millis> = None;
        for bucket in &mut self.buckets {
            let Some(&(ready_since, _)) = bucket.first() else {
                continue;
            };
            let needed = next_level_score - bucket.base_score;
            let wait = match bucket.wait_memo {
                Some((bits, wait)) if bits == needed.to_bits() => wait,
                _ => {
                    let wait = bucket.ageing.wait_to_reach(needed);
                    bucket.wait_memo = Some((needed.to_bits(), wait));
                    wait
                }
            };
            if let Some(wait) = wait {
                let at = ready_since.saturating_add(wait).max(now + 1);
                earliest = Some(earliest.map_or(at, |e: Millis| e.min(at)));
            }
        }
        earliest
    }
}

/// Maps a non-negative finite f64 to bits that sort like the number.
pub(crate) fn order_bits(x: f64) -> u64 {
    let x = if x.is_nan() { f64::MAX } else { x.max(0.0) };
    x.to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket() -> Bucket {
        Bucket {
            front: None,
            base_score: 0.0,
            ageing: Ageing::None,
            wait_memo: None,
            priority: 0,
            class: Ageing::None.class_key(),
            tasks: VecDeque::new(),
            removed: Default::default(),
        }
    }

    #[test]
    fn removals_in_the_middle_leave_tombstones_that_never_show() {
        let mut b = bucket();
        for id in 1..=10 {
            assert!(b.insert((id * 10, id)));
        }
        assert!(b.remove((50, 5)));
        assert!(!b.remove((50, 5)), "a second removal finds nothing");
        assert!(!b.contains((50, 5)));
        assert!(b.remove((20, 2)));
        assert!(b.remove((10, 1)), "removing the front");
        assert_eq!(
            b.first(),
            Some(&(30, 3)),
            "the tombstone behind the front left too"
        );
        let live: Vec<TaskId> = b.iter().map(|&(_, id)| id).collect();
        assert_eq!(live, vec![3, 4, 6, 7, 8, 9, 10]);
        assert!(b.insert((50, 5)), "a task may come back with the same key");
        assert!(b.contains((50, 5)));
        assert!(
            b.insert((35, 11)),
            "an insert in the middle keeps the order"
        );
        assert!(b.is_strictly_sorted());
        let live: Vec<TaskId> = b.iter().map(|&(_, id)| id).collect();
        assert_eq!(live, vec![3, 11, 4, 5, 6, 7, 8, 9, 10]);
    }

    /// The earliest level change computed from scratch, without the memo.
    fn fresh_level_change(lane: &Lane, now: Millis, next_level_score: f64) -> Option<Millis> {
        lane.buckets
            .iter()
            .filter_map(|b| {
                let &(ready_since, _) = b.first()?;
                let wait = b.ageing.wait_to_reach(next_level_score - b.base_score)?;
                Some(ready_since.saturating_add(wait).max(now + 1))
            })
            .min()
    }

    #[test]
    fn remembered_waits_agree_with_fresh_ones_as_thresholds_and_heads_change() {
        let mut lane = Lane::new(0, 0);
        let linear = Ageing::Linear {
            per_minute: 1.5,
            cap: 10.0,
        };
        let step = Ageing::Step {
            every_ms: 7_000,
            increment: 0.5,
            cap: 4.0,
        };
        lane.insert(linear, 0, 0.0, 1_000, 1);
        lane.insert(step, 2, 2.0, 2_000, 2);
        lane.insert(linear, 1, 1.0, 3_000, 3);
        let thresholds = [1.0, 3.0, 1.0, 2.5, 2.5, 12.0, 1.0];
        for (i, &threshold) in thresholds.iter().enumerate() {
            let now = 4_000 + i as Millis * 1_000;
            if i == 3 {
                // A new head in one bucket: the remembered wait is relative, so it holds.
                lane.buckets[0].remove((1_000, 1));
                lane.insert(linear, 0, 0.0, 5_500, 4);
            }
            let expected = fresh_level_change(&lane, now, threshold);
            assert_eq!(
                lane.next_level_change(now, threshold),
                expected,
                "threshold {threshold} at step {i}"
            );
        }
        assert!(
            fresh_level_change(&lane, 4_000, 12.0).is_none(),
            "above every cap, no level change comes"
        );
    }
}
