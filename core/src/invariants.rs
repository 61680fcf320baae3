//! The invariants of DESIGN.md, checked against the core's own state by recounting from
//! the tasks (not by trusting the counters the scheduler keeps).

use serde::{Deserialize, Serialize};

use crate::queue::{GroupIdx, LaneIdx, PoolIdx};
use crate::scheduler::{idx, Core};
use crate::types::TaskState;
use crate::{Millis, TaskId};

/// A broken invariant: its number in DESIGN.md and what was seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: u8,
    pub task: Option<TaskId>,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invariant {}: {}", self.invariant, self.message)
    }
}

impl Core {
    /// Checks invariants 1–5 in O(tasks). Call it after the driver has handed out
    /// assignments for every free slot: invariant 5 (work-conserving) holds only then.
    pub fn check_invariants(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut v = |invariant: u8, task: Option<TaskId>, message: String| {
            out.push(Violation {
                invariant,
                task,
                message,
            })
        };
        for e in &self.internal_errors {
            v(1, None, format!("internal: {e}"));
        }
        let mut counts = crate::types::StateCounts::default();
        // Sorted for binary search: a tree's allocations would cost more than the check,
        // which the simulator's fuzzer runs after every step.
        let mut deadline_entries: Vec<(crate::Millis, TaskId)> =
            self.deadlines.iter().map(|e| (e.0 .0, e.0 .1)).collect();
        deadline_entries.sort_unstable();
        // 9. the earliest deadline entry is live, since `next_wakeup` reads it as it is.
        if let Some(&std::cmp::Reverse(entry @ (at, id, _))) = self.deadlines.peek() {
            if !self.deadline_is_live(entry) || self.attempt_timer(id) != Some(at) {
                v(
                    9,
                    Some(id),
                    format!("the earliest deadline timer ({at}, task {id}) is stale"),
                );
            }
        }
        let mut group_running = vec![0u32; self.groups.len()];
        let mut pool_running = vec![0u32; self.pools.len()];
        let mut lane_queued = vec![0u32; self.lanes.len()];
        for (i, t) in self.tasks.iter().enumerate() {
            let id = i as TaskId + 1;
            *counts.slot(t.state) += 1;
            // 1. exactly one state, with the structures that state implies
            let in_queue = t
                .ready_since
                .get()
                .is_some_and(|r| self.lanes[t.lane as usize].contains(r, id));
            if (t.state == TaskState::Queued) != in_queue {
                v(
                    1,
                    Some(id),
                    format!("task {id} is {} but in_queue={in_queue}", t.state),
                );
            }
            if t.state == TaskState::Queued {
                lane_queued[t.lane as usize] += 1;
            }
            if (t.state == TaskState::Running) != t.running.is_some() {
                v(
                    1,
                    Some(id),
                    format!(
                        "task {id} is {} with running={}",
                        t.state,
                        t.running.is_some()
                    ),
                );
            }
            let retry_timer = t
                .retry_due
                .get()
                .is_some_and(|d| self.retries.contains(&(d, id)));
            if (t.state == TaskState::Retrying) != retry_timer {
                v(
                    1,
                    Some(id),
                    format!("task {id} is {} with retry timer={retry_timer}", t.state),
                );
            }
            if t.state.is_terminal() != t.finished_at.is_some() {
                v(
                    1,
                    Some(id),
                    format!(
                        "task {id} is {} with finished_at={:?}",
                        t.state, t.finished_at
                    ),
                );
            }
            if let Some(r) = self.attempts.get(t.running) {
                group_running[t.group as usize] += 1;
                pool_running[t.pool as usize] += 1;
                let timer = self.timer_of(r);
                if deadline_entries.binary_search(&(timer, id)).is_err() {
                    v(
                        9,
                        Some(id),
                        format!("running task {id} has no deadline timer at {timer}"),
                    );
                }
                // 9. every input fires due timers first, so an attempt is never seen past
                // its deadline plus the grace.
                let limit = r.deadline + self.config.interrupt_grace_ms;
                if self.now > limit {
                    v(
                        9,
                        Some(id),
                        format!(
                            "attempt {} of task {id} still runs at {} past its limit {limit}",
                            t.attempt, self.now
                        ),
                    );
                }
            }
            // 3. dependencies before start
            if matches!(
                t.state,
                TaskState::Queued | TaskState::Running | TaskState::Succeeded
            ) {
                for &d in t.deps().iter() {
                    let ds = self.tasks[idx(d)].state;
                    if ds != TaskState::Succeeded {
                        v(
                            3,
                            Some(id),
                            format!("task {id} is {} but its dependency {d} is {ds}", t.state),
                        );
                    }
                }
            }
            // 4. attempts bounded
            if t.failures > t.max_retries + 1 {
                v(
                    4,
                    Some(id),
                    format!(
                        "task {id} failed {} attempts with max_retries {}",
                        t.failures, t.max_retries
                    ),
                );
            }
        }
        if counts != self.counts {
            v(
                1,
                None,
                format!(
                    "state counts {:?} differ from recount {counts:?}",
                    self.counts
                ),
            );
        }
        // 2. caps and slots
        for (g, group) in self.groups.iter().enumerate() {
            if group_running[g] != group.running {
                v(
                    2,
                    None,
                    format!(
                        "group {} counts {} running, recount {}",
                        group.name, group.running, group_running[g]
                    ),
                );
            }
            if group_running[g] > group.config.cap && group.over_cap_assignment {
                v(
                    2,
                    None,
                    format!(
                        "group {} runs {} attempts, over its cap {}",
                        group.name, group_running[g], group.config.cap
                    ),
                );
            }
        }
        for (p, pool) in self.pools.iter().enumerate() {
            if pool_running[p] != pool.running {
                v(
                    2,
                    None,
                    format!(
                        "pool {} counts {} running, recount {}",
                        pool.name, pool.running, pool_running[p]
                    ),
                );
            }
            if pool_running[p] > pool.slots && pool.over_slots_assignment {
                v(
                    2,
                    None,
                    format!(
                        "pool {} runs {} attempts with {} slots",
                        pool.name, pool_running[p], pool.slots
                    ),
                );
            }
        }
        for (l, lane) in self.lanes.iter().enumerate() {
            if lane_queued[l] != lane.queued {
                v(
                    1,
                    None,
                    format!(
                        "lane {l} counts {} queued, recount {}",
                        lane.queued, lane_queued[l]
                    ),
                );
            }
            // Membership above is a binary search: it means something only while each
            // bucket stays sorted. A head search reads only the buckets' heads and
            // occupied bits, so they must agree with the buckets.
            if !lane.buckets_consistent() {
                let problem =
                    "a bucket out of order, or a head, occupied or crowded bit off its bucket";
                v(1, None, format!("lane {l} has {problem}"));
            }
        }
        // A decision reads the root of a pool's lane index alone: every node must name the
        // least key below it, and every lane's slot must be its own.
        for pool in self.pools.iter().filter(|pool| !pool.index.consistent()) {
            let problem = "a node that does not name the least key below it";
            v(
                1,
                None,
                format!("pool {}'s lane index has {problem}", pool.name),
            );
        }
        // A submit takes its lane from the name table when the task is for the group's first
        // pool: that must be the group's first lane.
        for (g, group) in self.groups.iter().enumerate() {
            let named = self.group_ids.get(&group.name, &self.groups);
            let consistent = named.is_some_and(|r| {
                r.group == g as GroupIdx
                    && match group.lanes.first() {
                        None => r.first_pool == PoolIdx::MAX,
                        Some(&l) => {
                            let lane = &self.lanes[l as usize];
                            // The heads are only a hint, but one that would silently stop
                            // working if a lane's heads moved without it.
                            r.first_lane == l
                                && lane.pool == r.first_pool
                                && r.first_heads() == lane.heads_span()
                        }
                    }
            });
            if !consistent {
                v(
                    1,
                    None,
                    format!(
                        "group {}'s entry in the name table is off: {named:?}",
                        group.name
                    ),
                );
            }
        }
        // A lane's level rises only when its level timer comes up: a lane with a timer must
        // have an entry in the heap, no later than the timer, and be the one it counts.
        let timer_entries: std::collections::BTreeSet<(Millis, LaneIdx)> =
            self.level_timer_entries().collect();
        for (l, lane) in self.lanes.iter().enumerate() {
            let Some(due) = lane.level_timer.get() else {
                continue;
            };
            let entry = lane.timer_entry.get();
            if !entry.is_some_and(|at| at <= due && timer_entries.contains(&(at, l as LaneIdx))) {
                v(
                    1,
                    None,
                    format!(
                        "lane {l}'s level timer at {due} has no heap entry by then ({entry:?})"
                    ),
                );
            }
        }
        for (l, lane) in self.lanes.iter().enumerate() {
            if self.pools[lane.pool as usize].index.lane(lane.slot) != Some(l as u32) {
                let slot = lane.slot;
                v(
                    1,
                    None,
                    format!("lane {l}'s slot {slot} names another lane"),
                );
            }
        }
        // The fair-share floor: every active group is filed, never past its usage, and the
        // entries left behind do not pile up.
        let filed: std::collections::BTreeSet<(u64, GroupIdx)> = self
            .active_usage
            .iter()
            .map(|&std::cmp::Reverse(entry)| entry)
            .collect();
        for (g, group) in self.groups.iter().enumerate() {
            if group.active_tasks == 0 {
                continue;
            }
            let filed_right = group.usage_key.get().is_some_and(|key| {
                filed.contains(&(key, g as GroupIdx))
                    && key <= crate::queue::order_bits(group.usage)
            });
            if !filed_right {
                v(
                    1,
                    None,
                    format!("group {} is not filed at or below its usage", group.name),
                );
            }
        }
        if self.active_usage.len() > crate::scheduler::lazy_heap_bound(self.groups.len()) {
            let entries = self.active_usage.len();
            v(
                1,
                None,
                format!("{entries} usage entries for {} groups", self.groups.len()),
            );
        }
        // 5. work-conserving: a free slot and an eligible task never coexist
        for t in self.tasks.iter().filter(|t| t.state == TaskState::Queued) {
            let pool = &self.pools[t.pool as usize];
            let group = &self.groups[t.group as usize];
            if pool_running[t.pool as usize] < pool.slots
                && group_running[t.group as usize] < group.config.cap
            {
                v(
                    5,
                    None,
                    format!(
                        "pool {} has a free slot while a task of group {} waits",
                        pool.name, group.name
                    ),
                );
                break;
            }
        }
        out
    }
}
