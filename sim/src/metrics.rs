//! Metrics of a run, computed from the journal mirror: waits, turnaround, bounded slowdown,
//! fairness (Jain's index of service received vs entitled), share lag, starvation,
//! utilisation and throughput.

use std::collections::BTreeMap;

use handyman_core::{Millis, TaskState};
use serde::Serialize;

use crate::sim::{GroupRec, RunOutput, TaskRec, ViolationRecord};
use crate::workload::SizeClass;

/// Bounded slowdown's floor on the run time (Feitelson's τ): 10 s.
pub const SLOWDOWN_TAU_MS: Millis = 10_000;

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Dist {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Dist {
    pub fn of(values: &mut [u64]) -> Dist {
        if values.is_empty() {
            return Dist::default();
        }
        let n = values.len();
        let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        let rank = |p: f64| (((n - 1) as f64) * p).round() as usize;
        // Two selections, not a sort: a day's run has 600k waits and the summary needs only
        // these ranks. The p50 search runs in the part left below p99.
        let max = values.iter().copied().max().unwrap_or(0);
        let (r50, r99) = (rank(0.5), rank(0.99));
        let (front, p99, _) = values.select_nth_unstable(r99);
        let p99 = *p99;
        let p50 = if r50 < r99 {
            *front.select_nth_unstable(r50).1
        } else {
            p99
        };
        Dist {
            count: n as u64,
            mean,
            p50,
            p99,
            max,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Slowdown {
    pub mean: f64,
    pub p99: f64,
}

impl Slowdown {
    fn of(slowdowns: &mut [f64]) -> Slowdown {
        if slowdowns.is_empty() {
            return Slowdown {
                mean: 1.0,
                p99: 1.0,
            };
        }
        let mean = slowdowns.iter().sum::<f64>() / slowdowns.len() as f64;
        let rank = ((slowdowns.len() - 1) as f64 * 0.99).round() as usize;
        let p99 = *slowdowns.select_nth_unstable_by(rank, f64::total_cmp).1;
        Slowdown { mean, p99 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ShareLag {
    /// Mean |received − entitled| per contending group and window, in ms.
    pub mean_abs: f64,
    pub max_abs: f64,
}

/// The JSON summary of a run (`handyman-sim run --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub seed: u64,
    pub policy: String,
    pub scenario: String,
    pub tasks_submitted: u64,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub tasks_cancelled: u64,
    pub tasks_lost: u64,
    pub invariant_violations: Vec<ViolationRecord>,
    pub journal_hash: String,
    pub events: u64,
    pub wait_ms: Dist,
    pub wait_ms_by_size: BTreeMap<String, Dist>,
    pub wait_ms_by_priority: BTreeMap<String, Dist>,
    pub turnaround_ms: Dist,
    pub bounded_slowdown: Slowdown,
    pub jain_index: f64,
    pub share_lag_ms: ShareLag,
    pub starvation_threshold_ms: Millis,
    pub starvation_count: u64,
    pub utilisation: f64,
    pub throughput_per_hour: f64,
    pub duplicates_returned: u64,
    pub stale_reports: u64,
    pub host_crashes: u64,
    pub core_checks: u64,
    pub faults: crate::scenario::Faults,
    pub simulated_ms: Millis,
    pub wall_ms: f64,
    pub events_per_s: f64,
    pub speedup: f64,
}

/// A task's wait: from when it first became queued (dependencies met) to its first start.
pub fn wait_of(t: &TaskRec) -> Option<Millis> {
    (t.start != Millis::MAX && t.ready != Millis::MAX).then(|| t.start.saturating_sub(t.ready))
}

/// Per-window service of contending groups and what each was entitled to.
///
/// A group contends in a window if it had queued work in it. The window's service among
/// contending groups is shared max-min fairly by weight (water-filling), each group capped
/// by its hard cap and by its demand: a group backlogged for less than 95% of the window
/// got what it asked for, so its demand is what it received; one backlogged all along
/// wanted more. Returns, per window, `(group, received, entitled)`.
pub fn shares(out: &RunOutput) -> Vec<Vec<(u32, f64, f64)>> {
    let windows = out
        .groups
        .iter()
        .map(|g| g.backlogged.len().max(g.service.len()))
        .max()
        .unwrap_or(0);
    let mut result = Vec::with_capacity(windows);
    for w in 0..windows {
        let contending: Vec<(u32, &GroupRec)> = out
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.backlogged.get(w).copied().unwrap_or(0.0) > 0.0)
            .map(|(i, g)| (i as u32, g))
            .collect();
        let service = |g: &GroupRec| g.service.get(w).copied().unwrap_or(0.0);
        let total: f64 = contending.iter().map(|(_, g)| service(g)).sum();
        // Water-filling: cap-limited groups get their cap, the rest share by weight.
        let limit: Vec<f64> = contending
            .iter()
            .map(|(_, g)| {
                let cap = f64::from(g.config.cap) * out.window_ms as f64;
                let backlog = g.backlogged.get(w).copied().unwrap_or(0.0);
                if backlog >= 0.95 * out.window_ms as f64 {
                    cap
                } else {
                    cap.min(service(g))
                }
            })
            .collect();
        let mut entitled = vec![0.0; contending.len()];
        let mut open: Vec<usize> = (0..contending.len()).collect();
        let mut left = total;
        while !open.is_empty() && left > 1e-9 {
            let weights: f64 = open
                .iter()
                .map(|&i| f64::from(contending[i].1.config.weight.max(1)))
                .sum();
            let mut capped = Vec::new();
            for &i in &open {
                let g = contending[i].1;
                let share = left * f64::from(g.config.weight.max(1)) / weights;
                if entitled[i] + share >= limit[i] {
                    capped.push(i);
                }
            }
            if capped.is_empty() {
                for &i in &open {
                    let g = contending[i].1;
                    entitled[i] += left * f64::from(g.config.weight.max(1)) / weights;
                }
                break;
            }
            for &i in &capped {
                left -= limit[i] - entitled[i];
                entitled[i] = limit[i];
            }
            open.retain(|i| !capped.contains(i));
        }
        result.push(
            contending
                .iter()
                .zip(entitled)
                .map(|((i, g), e)| (*i, service(g), e))
                .collect(),
        );
    }
    result
}

/// Jain's index of `received / entitled` over windows with at least two contending groups,
/// weighted by the window's service; 1.0 when groups never contend.
pub fn jain(shares: &[Vec<(u32, f64, f64)>]) -> (f64, ShareLag) {
    let (mut num, mut den) = (0.0, 0.0);
    let (mut lag_sum, mut lag_n, mut lag_max) = (0.0, 0u64, 0.0f64);
    for window in shares {
        for (_, got, entitled) in window {
            let lag = (got - entitled).abs();
            lag_sum += lag;
            lag_n += 1;
            lag_max = lag_max.max(lag);
        }
        let xs: Vec<f64> = window
            .iter()
            .filter(|(_, _, e)| *e > 0.0)
            .map(|(_, got, e)| got / e)
            .collect();
        if xs.len() < 2 {
            continue;
        }
        let s: f64 = xs.iter().sum();
        let s2: f64 = xs.iter().map(|x| x * x).sum();
        if s2 <= 0.0 {
            continue;
        }
        let j = s * s / (xs.len() as f64 * s2);
        let weight: f64 = window.iter().map(|(_, got, _)| got).sum();
        num += j * weight;
        den += weight;
    }
    let index = if den > 0.0 { num / den } else { 1.0 };
    let lag = ShareLag {
        mean_abs: if lag_n > 0 {
            lag_sum / lag_n as f64
        } else {
            0.0
        },
        max_abs: lag_max,
    };
    (index, lag)
}

/// What one pass over a run of tasks gathers; runs are gathered apart and joined in order,
/// so that every list (and every float sum over one) is as a single pass would give it.
#[derive(Default)]
struct Gathered {
    waits: Vec<u64>,
    /// By [`SizeClass`], as in [`SizeClass::ALL`].
    by_size: [Vec<u64>; SizeClass::ALL.len()],
    /// By priority, in order of first appearance.
    by_prio: Vec<(i32, Vec<u64>)>,
    turnaround: Vec<u64>,
    slowdowns: Vec<f64>,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    not_terminal: u64,
    starved: u64,
    /// Integer milliseconds: exact in any order, unlike a float sum.
    ran_total: u64,
}

impl Gathered {
    fn of(tasks: &[TaskRec], groups: &[GroupRec], starvation_threshold_ms: Millis) -> Gathered {
        let mut g = Gathered {
            waits: Vec::with_capacity(tasks.len()),
            turnaround: Vec::with_capacity(tasks.len()),
            slowdowns: Vec::with_capacity(tasks.len()),
            ..Gathered::default()
        };
        let mut last_prio = 0;
        for t in tasks {
            match t.state {
                TaskState::Succeeded => g.succeeded += 1,
                TaskState::Failed => g.failed += 1,
                TaskState::Cancelled => g.cancelled += 1,
                _ => g.not_terminal += 1,
            }
            g.ran_total += t.ran_ms;
            if let Some(w) = wait_of(t) {
                g.waits.push(w);
                g.by_size[groups[t.group as usize].size as usize].push(w);
                // Priorities are few and come in runs: the last one used usually matches.
                if g.by_prio
                    .get(last_prio)
                    .is_none_or(|(p, _)| *p != t.priority)
                {
                    last_prio = match g.by_prio.iter().position(|(p, _)| *p == t.priority) {
                        Some(i) => i,
                        None => {
                            g.by_prio.push((t.priority, Vec::new()));
                            g.by_prio.len() - 1
                        }
                    };
                }
                g.by_prio[last_prio].1.push(w);
                if w > starvation_threshold_ms {
                    g.starved += 1;
                }
            }
            if t.finish != Millis::MAX && t.start != Millis::MAX {
                let ta = t.finish.saturating_sub(t.submit);
                g.turnaround.push(ta);
                let run = t.ran_ms.max(SLOWDOWN_TAU_MS) as f64;
                g.slowdowns.push((ta as f64 / run).max(1.0));
            }
        }
        g
    }

    /// Appends `later`, gathered from the tasks after this one's.
    fn join(mut self, later: Gathered) -> Gathered {
        self.waits.extend_from_slice(&later.waits);
        for (mine, theirs) in self.by_size.iter_mut().zip(&later.by_size) {
            mine.extend_from_slice(theirs);
        }
        for (prio, waits) in later.by_prio {
            match self.by_prio.iter_mut().find(|(p, _)| *p == prio) {
                Some((_, mine)) => mine.extend_from_slice(&waits),
                None => self.by_prio.push((prio, waits)),
            }
        }
        self.turnaround.extend_from_slice(&later.turnaround);
        self.slowdowns.extend_from_slice(&later.slowdowns);
        self.succeeded += later.succeeded;
        self.failed += later.failed;
        self.cancelled += later.cancelled;
        self.not_terminal += later.not_terminal;
        self.starved += later.starved;
        self.ran_total += later.ran_total;
        self
    }
}

pub fn summarise(out: &RunOutput, scenario_name: &str) -> Summary {
    // A day's run has 600k tasks: the two halves are gathered, and the distributions
    // computed, on two threads (of the run's helpers only the one freeing the core may
    // still be at work by now).
    let (first, second) = out.tasks.split_at(out.tasks.len() / 2);
    let threshold = out.starvation_threshold_ms;
    let (gathered, (wait_ms, turnaround_ms)) = std::thread::scope(|scope| {
        let second = scope.spawn(|| Gathered::of(second, &out.groups, threshold));
        let first = Gathered::of(first, &out.groups, threshold);
        let mut gathered = match second.join() {
            Ok(second) => first.join(second),
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let mut waits = std::mem::take(&mut gathered.waits);
        let mut turnaround = std::mem::take(&mut gathered.turnaround);
        let dists = scope.spawn(move || (Dist::of(&mut waits), Dist::of(&mut turnaround)));
        let by_size = gathered.by_size.iter_mut().zip(SizeClass::ALL);
        let wait_ms_by_size: BTreeMap<String, Dist> = by_size
            .filter(|(waits, _)| !waits.is_empty())
            .map(|(waits, size)| (size.name().to_string(), Dist::of(waits)))
            .collect();
        let wait_ms_by_priority: BTreeMap<String, Dist> = gathered
            .by_prio
            .iter_mut()
            .map(|(prio, waits)| (prio.to_string(), Dist::of(waits)))
            .collect();
        let slowdown = Slowdown::of(&mut gathered.slowdowns);
        let dists = match dists.join() {
            Ok(dists) => dists,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (
            (gathered, wait_ms_by_size, wait_ms_by_priority, slowdown),
            dists,
        )
    });
    let (g, wait_ms_by_size, wait_ms_by_priority, slowdown) = gathered;
    let (succeeded, failed, cancelled, starved) = (g.succeeded, g.failed, g.cancelled, g.starved);
    // Tasks the workload submitted that the journal never showed count as lost too.
    let lost = g.not_terminal + out.accepted.saturating_sub(out.tasks.len() as u64);
    let ran_total = g.ran_total as f64;
    let (jain_index, share_lag_ms) = jain(&shares(out));
    let slot_ms: f64 = out.pools.iter().map(|p| p.slot_ms).sum();
    let hours = out.simulated_ms as f64 / 3_600_000.0;
    let secs = out.wall_ms / 1e3;
    Summary {
        seed: out.seed,
        policy: out.policy.name().to_string(),
        scenario: scenario_name.to_string(),
        tasks_submitted: out.tasks.len() as u64,
        tasks_succeeded: succeeded,
        tasks_failed: failed,
        tasks_cancelled: cancelled,
        tasks_lost: lost,
        invariant_violations: out.violations.clone(),
        journal_hash: format!("{:016x}", out.journal_hash),
        events: out.events,
        wait_ms,
        wait_ms_by_size,
        wait_ms_by_priority,
        turnaround_ms,
        bounded_slowdown: slowdown,
        jain_index,
        share_lag_ms,
        starvation_threshold_ms: out.starvation_threshold_ms,
        starvation_count: starved,
        utilisation: if slot_ms > 0.0 {
            ran_total / slot_ms
        } else {
            0.0
        },
        throughput_per_hour: if hours > 0.0 {
            (succeeded + failed + cancelled) as f64 / hours
        } else {
            0.0
        },
        duplicates_returned: out.duplicates,
        stale_reports: out.stale_reports,
        host_crashes: out.host_crashes,
        core_checks: out.core_checks,
        faults: out.faults.clone(),
        simulated_ms: out.simulated_ms,
        wall_ms: out.wall_ms,
        events_per_s: if secs > 0.0 {
            out.events as f64 / secs
        } else {
            0.0
        },
        speedup: if secs > 0.0 {
            out.simulated_ms as f64 / 1e3 / secs
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_tasks_gathered_apart_and_joined_give_one_pass() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/chaos.toml");
        let scenario = crate::Scenario::load(std::path::Path::new(path)).expect("chaos parses");
        let out = crate::run(&scenario, crate::Options::default());
        let (tasks, groups) = (&out.tasks, &out.groups);
        assert!(tasks.len() > 100, "chaos submits {} tasks", tasks.len());
        let whole = Gathered::of(tasks, groups, 1_000);
        assert!(whole.by_prio.len() > 1 && whole.slowdowns.len() > 100);
        for cut in [0, 1, tasks.len() / 3, tasks.len() / 2, tasks.len()] {
            let (a, b) = tasks.split_at(cut);
            let joined = Gathered::of(a, groups, 1_000).join(Gathered::of(b, groups, 1_000));
            assert_eq!(joined.waits, whole.waits, "cut at {cut}");
            assert_eq!(joined.by_size, whole.by_size, "cut at {cut}");
            let mut prios = joined.by_prio.clone();
            let mut whole_prios = whole.by_prio.clone();
            prios.sort_by_key(|(p, _)| *p);
            whole_prios.sort_by_key(|(p, _)| *p);
            assert_eq!(prios, whole_prios, "cut at {cut}");
            assert_eq!(joined.turnaround, whole.turnaround, "cut at {cut}");
            assert_eq!(joined.slowdowns, whole.slowdowns, "cut at {cut}");
            let counts = |g: &Gathered| {
                let c = (
                    g.succeeded,
                    g.failed,
                    g.cancelled,
                    g.not_terminal,
                    g.starved,
                );
                (c, g.ran_total)
            };
            assert_eq!(counts(&joined), counts(&whole), "cut at {cut}");
        }
    }

    #[test]
    fn percentiles_of_a_small_sample() {
        let d = Dist::of(&mut [5, 1, 3, 2, 4]);
        assert_eq!((d.p50, d.max, d.count), (3, 5, 5));
    }

    #[test]
    fn selected_percentiles_match_those_of_a_sorted_copy() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for n in [1usize, 2, 3, 99, 100, 101, 1000, 4097] {
            let mut values: Vec<u64> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x % 500
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let at = |p: f64| sorted[((n - 1) as f64 * p).round() as usize];
            let d = Dist::of(&mut values);
            assert_eq!(
                (d.p50, d.p99, d.max),
                (at(0.5), at(0.99), sorted[n - 1]),
                "n = {n}"
            );
        }
    }

    #[test]
    fn jain_is_one_when_shares_match_entitlement_and_half_when_one_of_two_gets_all() {
        let fair = vec![vec![(0, 10.0, 10.0), (1, 10.0, 10.0)]];
        assert!((jain(&fair).0 - 1.0).abs() < 1e-9);
        let unfair = vec![vec![(0, 20.0, 10.0), (1, 0.0, 10.0)]];
        assert!((jain(&unfair).0 - 0.5).abs() < 1e-9);
    }
}
