//! Prometheus metrics, kept by the driver thread (no locks) and rendered on request.

use std::collections::BTreeMap;
use std::fmt::Write;

use handyman_core::{CompactString, Core, Millis, TaskState};

/// Upper bounds of the wait-time buckets, in seconds.
const WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: [u64; WAIT_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in WAIT_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Counters since the process started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Time from queued to first assignment, by (group, kind).
    wait: BTreeMap<(CompactString, CompactString), Histogram>,
    /// Attempts that ended in a failure, by (group, kind).
    failures: BTreeMap<(CompactString, CompactString), u64>,
    /// Interrupts requested, by reason.
    interrupts: BTreeMap<&'static str, u64>,
    retries: u64,
    submitted: u64,
    attempts: u64,
}

impl Metrics {
    pub fn observe_wait(&mut self, group: &CompactString, kind: &CompactString, wait_ms: Millis) {
        let key = (group.clone(), kind.clone());
        self.wait
            .entry(key)
            .or_default()
            .observe(wait_ms as f64 / 1000.0);
    }

    pub fn count_failure(&mut self, group: &CompactString, kind: &CompactString) {
        *self
            .failures
            .entry((group.clone(), kind.clone()))
            .or_default() += 1;
    }

    pub fn count_interrupt(&mut self, reason: &'static str) {
        *self.interrupts.entry(reason).or_default() += 1;
    }

    pub fn count_retry(&mut self) {
        self.retries += 1;
    }

    pub fn count_submitted(&mut self, n: u64) {
        self.submitted += n;
    }

    pub fn count_attempt(&mut self) {
        self.attempts += 1;
    }

    /// The Prometheus text exposition of these counters and of the core's gauges.
    pub fn render(&self, core: &Core, now: Millis) -> String {
        let mut out = String::new();
        let counts = core.counts();
        let _ = writeln!(out, "# HELP handyman_tasks Tasks by state.");
        let _ = writeln!(out, "# TYPE handyman_tasks gauge");
        for state in TaskState::ALL {
            let _ = writeln!(
                out,
                "handyman_tasks{{state=\"{state}\"}} {}",
                counts.get(state)
            );
        }
        let _ = writeln!(out, "# HELP handyman_running Attempts running, by pool.");
        let _ = writeln!(out, "# TYPE handyman_running gauge");
        for pool in core.pools() {
            let _ = writeln!(
                out,
                "handyman_running{{pool=\"{}\"}} {}",
                esc(&pool.name),
                pool.running
            );
        }
        let _ = writeln!(out, "# HELP handyman_pool_slots Slots, by pool.");
        let _ = writeln!(out, "# TYPE handyman_pool_slots gauge");
        for pool in core.pools() {
            let _ = writeln!(
                out,
                "handyman_pool_slots{{pool=\"{}\"}} {}",
                esc(&pool.name),
                pool.slots
            );
        }
        let groups = core.groups(now);
        let _ = writeln!(
            out,
            "# HELP handyman_group_running Attempts running, by group."
        );
        let _ = writeln!(out, "# TYPE handyman_group_running gauge");
        for g in &groups {
            let _ = writeln!(
                out,
                "handyman_group_running{{group=\"{}\"}} {}",
                esc(&g.name),
                g.running
            );
        }
        let _ = writeln!(out, "# HELP handyman_group_queued Tasks queued, by group.");
        let _ = writeln!(out, "# TYPE handyman_group_queued gauge");
        for g in &groups {
            let _ = writeln!(
                out,
                "handyman_group_queued{{group=\"{}\"}} {}",
                esc(&g.name),
                g.queued
            );
        }
        let _ = writeln!(
            out,
            "# HELP handyman_wait_seconds Time from queued to the first attempt, by group and kind."
        );
        let _ = writeln!(out, "# TYPE handyman_wait_seconds histogram");
        for ((group, kind), h) in &self.wait {
            let labels = format!("group=\"{}\",kind=\"{}\"", esc(group), esc(kind));
            for (bound, n) in WAIT_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "handyman_wait_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "handyman_wait_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "handyman_wait_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "handyman_wait_seconds_count{{{labels}}} {}", h.count);
        }
        let _ = writeln!(
            out,
            "# HELP handyman_failures_total Attempts that failed, by group and kind."
        );
        let _ = writeln!(out, "# TYPE handyman_failures_total counter");
        for ((group, kind), n) in &self.failures {
            let _ = writeln!(
                out,
                "handyman_failures_total{{group=\"{}\",kind=\"{}\"}} {n}",
                esc(group),
                esc(kind)
            );
        }
        let _ = writeln!(
            out,
            "# HELP handyman_interrupts_total Interrupts requested, by reason."
        );
        let _ = writeln!(out, "# TYPE handyman_interrupts_total counter");
        for reason in ["timeout", "cancel"] {
            let n = self.interrupts.get(reason).copied().unwrap_or(0);
            let _ = writeln!(out, "handyman_interrupts_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP handyman_retries_total Retries scheduled.");
        let _ = writeln!(out, "# TYPE handyman_retries_total counter");
        let _ = writeln!(out, "handyman_retries_total {}", self.retries);
        let _ = writeln!(out, "# HELP handyman_submitted_total Tasks accepted.");
        let _ = writeln!(out, "# TYPE handyman_submitted_total counter");
        let _ = writeln!(out, "handyman_submitted_total {}", self.submitted);
        let _ = writeln!(out, "# HELP handyman_attempts_total Attempts that ended.");
        let _ = writeln!(out, "# TYPE handyman_attempts_total counter");
        let _ = writeln!(out, "handyman_attempts_total {}", self.attempts);
        out
    }
}

/// Escapes a label value.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
