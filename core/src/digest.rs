//! A digest of the core's logical state, for comparing a live core with its replay.
//!
//! It covers what the journal determines (tasks, groups, pools, dedup keys, timers) and
//! leaves out what depends on when the dispatch index was last brought up to date.

use std::hash::{Hash, Hasher};

use crate::journal::StableHasher;
use crate::scheduler::Core;

impl Core {
    /// A stable 64-bit digest of the state: two cores with equal digests hold the same tasks
    /// in the same states with the same counters, timers and fair-share usage.
    pub fn digest(&self) -> u64 {
        let mut h = StableHasher::default();
        self.next_seq.hash(&mut h);
        self.tasks.len().hash(&mut h);
        for t in &self.tasks {
            t.state.hash(&mut h);
            self.kinds[t.kind as usize].hash(&mut h);
            t.pool.hash(&mut h);
            t.group.hash(&mut h);
            t.priority.hash(&mut h);
            t.attempt.hash(&mut h);
            t.failures.hash(&mut h);
            t.continues.hash(&mut h);
            t.submitted_at.hash(&mut h);
            t.ready_since.hash(&mut h);
            t.finished_at.hash(&mut h);
            t.deps().hash(&mut h);
            t.deps_pending.hash(&mut h);
            t.failed_dependency().hash(&mut h);
            t.dependents().hash(&mut h);
            t.retry_due.hash(&mut h);
            t.cancel_requested.hash(&mut h);
            t.reason().hash(&mut h);
            t.payload.hash(&mut h);
            match self.attempts.get(t.running) {
                Some(r) => {
                    1u8.hash(&mut h);
                    r.assigned_at.hash(&mut h);
                    r.started_at.hash(&mut h);
                    r.deadline.hash(&mut h);
                    r.interrupt.hash(&mut h);
                }
                None => 0u8.hash(&mut h),
            }
        }
        for g in &self.groups {
            g.name.hash(&mut h);
            g.config.hash(&mut h);
            g.running.hash(&mut h);
            g.queued.hash(&mut h);
            g.active_tasks.hash(&mut h);
            g.usage.to_bits().hash(&mut h);
            g.usage_at_charge.to_bits().hash(&mut h);
        }
        for p in &self.pools {
            p.name.hash(&mut h);
            p.slots.hash(&mut h);
            p.running.hash(&mut h);
            p.queued.hash(&mut h);
            p.contending_weight.hash(&mut h);
        }
        let mut dedup: Vec<_> = self.dedup.iter().collect();
        dedup.sort();
        dedup.hash(&mut h);
        let mut dep_groups: Vec<_> = self.dep_groups.iter().collect();
        dep_groups.sort_by(|a, b| a.0.cmp(b.0));
        for (name, dg) in dep_groups {
            name.hash(&mut h);
            dg.members.hash(&mut h);
            dg.ready.hash(&mut h);
        }
        self.live_deadlines().hash(&mut h);
        self.retries.hash(&mut h);
        h.finish()
    }
}
