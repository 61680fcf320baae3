//! "Why is this task not running?": the answer an operator wants in an incident.

use serde::{Deserialize, Serialize};

use crate::journal::InterruptReason;
use crate::policy::Policy;
use crate::scheduler::{idx, Core};
use crate::types::{TaskError, TaskState};
use crate::{Millis, TaskId};

/// The answer to `explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub id: TaskId,
    pub state: TaskState,
    pub reasons: Vec<Reason>,
}

/// One reason a task is where it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// Dependencies that have not succeeded yet.
    WaitingOnDependencies { pending: Vec<(TaskId, TaskState)> },
    /// Unfinished tasks of a higher rank in the same dependency group run first.
    OutrankedInDependencyGroup {
        dependency_group: String,
        rank: i32,
        higher_rank_tasks: Vec<TaskId>,
    },
    /// Its group runs as many attempts as its hard cap allows.
    GroupAtCap {
        group: String,
        running: u32,
        cap: u32,
    },
    /// Its group already runs its weighted share of the pool; it gets a slot only when no
    /// group below its share has work.
    GroupAtShare {
        group: String,
        running_in_pool: u32,
        share: f64,
    },
    /// Every slot of its pool is taken.
    PoolFull {
        pool: String,
        running: u32,
        slots: u32,
    },
    /// Queued tasks that the policy serves first.
    TasksAhead {
        /// In its own group: higher aged priority, or as high and older.
        in_group: u64,
        /// In other groups at a higher level.
        higher_level: u64,
        /// In other groups at its level whose group is further below its fair share (or
        /// whose head is older).
        same_level_other_groups: u64,
    },
    /// It is the next task this pool will start.
    NextInLine,
    /// Backing off after a failed attempt.
    RetryBackoff {
        due: Millis,
        failures: u32,
        max_retries: u32,
    },
    Running {
        attempt: u32,
        since: Millis,
        deadline: Millis,
        interrupt: Option<InterruptReason>,
    },
    Finished {
        at: Option<Millis>,
        reason: Option<String>,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::WaitingOnDependencies { pending } => {
                let list: Vec<String> = pending.iter().map(|(id, s)| format!("{id} ({s})")).collect();
                write!(f, "waiting on {} dependencies: {}", pending.len(), list.join(", "))
            }
            Reason::OutrankedInDependencyGroup {
                dependency_group,
                rank,
                higher_rank_tasks,
            } => write!(
                f,
                "dependency group {dependency_group}: {} unfinished tasks of rank above {rank} run first (e.g. {:?})",
                higher_rank_tasks.len(),
                &higher_rank_tasks[..higher_rank_tasks.len().min(5)]
            ),
            Reason::GroupAtCap { group, running, cap } => {
                write!(f, "group {group} is at its cap: {running} of {cap} running")
            }
            Reason::GroupAtShare {
                group,
                running_in_pool,
                share,
            } => write!(
                f,
                "group {group} runs {running_in_pool} attempts, at or over its share of {share:.2}; it borrows a slot only when no group below its share waits"
            ),
            Reason::PoolFull { pool, running, slots } => {
                write!(f, "pool {pool} is full: {running} of {slots} slots busy")
            }
            Reason::TasksAhead {
                in_group,
                higher_level,
                same_level_other_groups,
            } => write!(
                f,
                "{} tasks ahead: {in_group} in its group (higher aged priority or older), {higher_level} of other groups at a higher level, {same_level_other_groups} of other groups at its level served first by fair share",
                in_group + higher_level + same_level_other_groups
            ),
            Reason::NextInLine => write!(f, "next in line: it starts when a slot of its pool frees"),
            Reason::RetryBackoff {
                due,
                failures,
                max_retries,
            } => write!(f, "retrying at {due} after {failures} failed attempts (max retries {max_retries})"),
            Reason::Running {
                attempt,
                since,
                deadline,
                interrupt,
            } => match interrupt {
                Some(r) => write!(f, "running attempt {attempt} since {since}; interrupt requested ({r:?})"),
                None => write!(f, "running attempt {attempt} since {since}, deadline {deadline}"),
            },
            Reason::Finished { at, reason } => match reason {
                Some(r) => write!(f, "finished at {}: {r}", at.unwrap_or_default()),
                None => write!(f, "finished at {}", at.unwrap_or_default()),
            },
        }
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "task {} is {}", self.id, self.state)?;
        for reason in &self.reasons {
            writeln!(f, "- {reason}")?;
        }
        Ok(())
    }
}

impl Core {
    /// Why task `id` is in its state, and (when queued) what is ahead of it.
    pub fn explain(&self, now: Millis, id: TaskId) -> Result<Explanation, TaskError> {
        let i = crate::scheduler::idx_checked(id)
            .filter(|&i| i < self.tasks.len())
            .ok_or(TaskError::UnknownTask(id))?;
        let t = &self.tasks[i];
        let now = now.max(self.now);
        let mut reasons = Vec::new();
        match t.state {
            TaskState::Waiting => {
                let pending: Vec<(TaskId, TaskState)> = t
                    .deps()
                    .iter()
                    .map(|&d| (d, self.tasks[idx(d)].state))
                    .filter(|(_, s)| *s != TaskState::Succeeded)
                    .collect();
                if !pending.is_empty() {
                    reasons.push(Reason::WaitingOnDependencies { pending });
                }
                if let Some(g) = t.dep_group() {
                    if self.outranked(id) {
                        let higher: Vec<TaskId> = self.dep_groups[g]
                            .members
                            .range(t.rank() + 1..)
                            .flat_map(|(_, ids)| ids.iter().copied())
                            .collect();
                        reasons.push(Reason::OutrankedInDependencyGroup {
                            dependency_group: g.to_string(),
                            rank: t.rank(),
                            higher_rank_tasks: higher,
                        });
                    }
                }
            }
            TaskState::Queued => self.explain_queued(now, id, &mut reasons),
            TaskState::Running => {
                if let Some(r) = self.attempts.get(t.running) {
                    reasons.push(Reason::Running {
                        attempt: t.attempt,
                        since: r.assigned_at,
                        deadline: r.deadline,
                        interrupt: r.interrupt.map(|(x, _)| x),
                    });
                }
            }
            TaskState::Retrying => reasons.push(Reason::RetryBackoff {
                due: t.retry_due.unwrap_or(0),
                failures: t.failures,
                max_retries: t.max_retries,
            }),
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
                reasons.push(Reason::Finished {
                    at: t.finished_at.get(),
                    reason: t.reason().map(|r| r.to_string()),
                })
            }
        }
        Ok(Explanation {
            id,
            state: t.state,
            reasons,
        })
    }

    fn explain_queued(&self, now: Millis, id: TaskId, reasons: &mut Vec<Reason>) {
        let t = &self.tasks[idx(id)];
        let pool = &self.pools[t.pool as usize];
        let group = &self.groups[t.group as usize];
        if group.running >= group.config.cap {
            reasons.push(Reason::GroupAtCap {
                group: group.name.to_string(),
                running: group.running,
                cap: group.config.cap,
            });
        }
        if pool.running >= pool.slots {
            reasons.push(Reason::PoolFull {
                pool: self.pool_name(t.pool).to_string(),
                running: pool.running,
                slots: pool.slots,
            });
        }
        let lane = self.lane_of(id);
        if self.policy.uses_share_tiers() {
            let total = pool.contending_weight.max(1) as f64;
            let share = (f64::from(pool.slots) * f64::from(group.config.weight) / total)
                .max(f64::from(group.config.floor));
            if f64::from(lane.running) >= share {
                reasons.push(Reason::GroupAtShare {
                    group: self.group_name(t.group).to_string(),
                    running_in_pool: lane.running,
                    share,
                });
            }
        }
        let my_score = self.policy.base_score(t.priority)
            + self
                .ageings
                .get(t.ageing)
                .boost(now.saturating_sub(t.ready_since.unwrap_or(now)));
        let my_ready = t.ready_since.unwrap_or(now);
        let mut in_group = 0;
        for (score, ready, other) in lane.scored_tasks(now, self.ageings.values()) {
            if other != id
                && (score > my_score || (score == my_score && (ready, other) < (my_ready, id)))
            {
                in_group += 1;
            }
        }
        let my_bonus = self
            .policy
            .group_bonus(group.usage_at_charge, group.config.weight);
        let my_level = self.policy.level_of(my_score + my_bonus);
        let my_key = pool.index.key(lane.slot);
        let (mut higher_level, mut same_level) = (0, 0);
        for (other, key) in pool.index.entries() {
            let other = &self.lanes[other as usize];
            if other.group == t.group {
                continue;
            }
            let og = &self.groups[other.group as usize];
            let bonus = self
                .policy
                .group_bonus(og.usage_at_charge, og.config.weight);
            let lane_ahead = my_key.is_none_or(|k| key < k);
            for (score, _, _) in other.scored_tasks(now, self.ageings.values()) {
                let level = self.policy.level_of(score + bonus);
                if level > my_level {
                    higher_level += 1;
                } else if level == my_level && lane_ahead {
                    same_level += 1;
                }
            }
        }
        let next = in_group == 0
            && self.choose_lane_for_explain(t.pool) == Some(t.lane)
            && lane
                .head(now, self.ageings.values())
                .is_some_and(|h| h.id == id);
        if next {
            reasons.push(Reason::NextInLine);
        } else {
            reasons.push(Reason::TasksAhead {
                in_group,
                higher_level,
                same_level_other_groups: same_level,
            });
        }
    }
}
