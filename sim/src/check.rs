//! The fuzzer (`handyman-sim check`): swarm testing in the manner of TigerBeetle's VOPR.
//!
//! Each seed draws its own mix of faults (each fault on or off, and how hard), runs the
//! scenario twice with the core's invariant check after every step, and compares the two
//! journals event by event (FoundationDB / madsim style re-runs catch non-determinism).
//! A failing seed is shrunk: faults are switched off, the workload scaled down and the
//! safety phase shortened while it still fails; the smallest failing scenario is printed.

use handyman_core::{Event, InjectedBug, Millis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scenario::{Faults, Scenario};
use crate::sim::{self, Options, RunOutput, ViolationRecord};

/// The fault mix of one seed: every fault is on in about half the seeds, with an intensity
/// drawn up to a bound.
pub fn swarm(seed: u64) -> Faults {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(3);
    let on = |r: &mut ChaCha8Rng| r.random_bool(0.5);
    let mut f = Faults::default();
    if on(&mut r) {
        f.worker_crash_p = r.random_range(0.0..0.1);
    }
    if on(&mut r) {
        f.host_crash_every_ms = r.random_range(120_000..1_800_000);
    }
    if on(&mut r) {
        f.report_loss_p = r.random_range(0.0..0.1);
    }
    if on(&mut r) {
        f.report_dup_p = r.random_range(0.0..0.2);
    }
    if on(&mut r) {
        f.report_delay_max_ms = r.random_range(1..10_000);
    }
    if on(&mut r) {
        f.report_late_p = r.random_range(0.0..0.05);
    }
    if on(&mut r) {
        f.stuck_worker_p = r.random_range(0.0..0.05);
    }
    if on(&mut r) {
        f.hang_p = r.random_range(0.0..0.1);
    }
    if on(&mut r) {
        f.slow_pool_every_ms = r.random_range(60_000..1_200_000);
        f.slow_factor = r.random_range(1.5..10.0);
    }
    if on(&mut r) {
        f.slot_change_every_ms = r.random_range(30_000..900_000);
    }
    f
}

/// One line describing a fault mix (only the faults that are on).
pub fn describe(f: &Faults) -> String {
    let mut parts = Vec::new();
    let mut p = |name: &str, v: f64| {
        if v > 0.0 {
            parts.push(format!("{name}={}", (v * 1000.0).round() / 1000.0));
        }
    };
    p("worker_crash_p", f.worker_crash_p);
    p("host_crash_every_ms", f.host_crash_every_ms as f64);
    p("report_loss_p", f.report_loss_p);
    p("report_dup_p", f.report_dup_p);
    p("report_delay_max_ms", f.report_delay_max_ms as f64);
    p("report_late_p", f.report_late_p);
    p("stuck_worker_p", f.stuck_worker_p);
    p("hang_p", f.hang_p);
    p("slow_pool_every_ms", f.slow_pool_every_ms as f64);
    p(
        "slow_factor",
        if f.slow_pool_every_ms > 0 {
            f.slow_factor
        } else {
            0.0
        },
    );
    p("slot_change_every_ms", f.slot_change_every_ms as f64);
    if parts.is_empty() {
        "no faults".into()
    } else {
        parts.join(" ")
    }
}

/// Where two runs of one seed first differ.
#[derive(Clone, Debug)]
pub struct Divergence {
    /// 0-based index of the first differing journal event.
    pub index: usize,
    pub first: Option<Event>,
    pub second: Option<Event>,
}

/// The result of checking one seed.
pub struct SeedReport {
    pub seed: u64,
    pub faults: Faults,
    pub violations: Vec<ViolationRecord>,
    pub divergence: Option<Divergence>,
    pub first_bad_event: Option<Event>,
    pub events: u64,
    pub tasks: u64,
    pub journal_hash: u64,
}

impl SeedReport {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty() || self.divergence.is_some()
    }
}

/// How `check` runs a seed.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub injected_bug: Option<InjectedBug>,
    /// Run the core's O(tasks) check every this many steps (1 for small scenarios).
    pub check_every: Option<u64>,
}

fn faults_for(scenario: &Scenario, seed: u64) -> Faults {
    if scenario.swarm {
        swarm(seed)
    } else {
        scenario.faults.clone()
    }
}

fn run_once(scenario: &Scenario, seed: u64, faults: &Faults, opts: &CheckOptions) -> RunOutput {
    sim::run(
        scenario,
        Options {
            seed,
            faults: Some(faults.clone()),
            check_every: opts.check_every,
            keep_journal: true,
            keep_hashes: true,
            injected_bug: opts.injected_bug,
            ..Options::default()
        },
    )
}

/// Runs one seed twice and compares.
pub fn check_seed(scenario: &Scenario, seed: u64, opts: &CheckOptions) -> SeedReport {
    let faults = faults_for(scenario, seed);
    check_with(scenario, seed, &faults, opts)
}

fn check_with(scenario: &Scenario, seed: u64, faults: &Faults, opts: &CheckOptions) -> SeedReport {
    let a = run_once(scenario, seed, faults, opts);
    let b = run_once(scenario, seed, faults, opts);
    let divergence = first_difference(&a.event_hashes, &b.event_hashes).map(|index| Divergence {
        index,
        first: a.journal.get(index).cloned(),
        second: b.journal.get(index).cloned(),
    });
    let first_bad_event = a
        .violations
        .first()
        .and_then(|v| v.seq.checked_sub(1))
        .and_then(|i| a.journal.get(i as usize).cloned());
    SeedReport {
        seed,
        faults: faults.clone(),
        violations: a.violations,
        divergence,
        first_bad_event,
        events: a.events,
        tasks: a.tasks.len() as u64,
        journal_hash: a.journal_hash,
    }
}

/// Index of the first differing element, or of the end of the shorter list.
pub fn first_difference(a: &[u64], b: &[u64]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

/// Shrinks a failing (scenario, seed, faults): each step keeps a smaller variant that still
/// fails. Returns the scenario with its faults written in and `swarm = false`.
pub fn shrink(scenario: &Scenario, seed: u64, opts: &CheckOptions, budget: usize) -> Scenario {
    let mut best = scenario.clone();
    best.faults = faults_for(scenario, seed);
    best.swarm = false;
    let fails = |s: &Scenario| check_with(s, seed, &s.faults, opts).failed();
    let mut runs = 0;
    let try_keep = |best: &mut Scenario, candidate: Scenario, runs: &mut usize| -> bool {
        if *runs >= budget {
            return false;
        }
        *runs += 1;
        if fails(&candidate) {
            *best = candidate;
            true
        } else {
            false
        }
    };
    // 1. Switch faults off one at a time.
    let fault_off: [fn(&mut Faults); 10] = [
        |f| f.worker_crash_p = 0.0,
        |f| f.host_crash_every_ms = 0,
        |f| f.report_loss_p = 0.0,
        |f| f.report_dup_p = 0.0,
        |f| f.report_delay_max_ms = 0,
        |f| f.report_late_p = 0.0,
        |f| f.stuck_worker_p = 0.0,
        |f| f.hang_p = 0.0,
        |f| {
            f.slow_pool_every_ms = 0;
            f.slow_factor = 0.0
        },
        |f| f.slot_change_every_ms = 0,
    ];
    for off in fault_off {
        let mut c = best.clone();
        off(&mut c.faults);
        if c.faults != best.faults {
            try_keep(&mut best, c, &mut runs);
        }
    }
    // 2. Drop workload entries.
    let mut i = 0;
    while i < best.workload.len() && best.workload.len() > 1 {
        let mut c = best.clone();
        c.workload.remove(i);
        if !try_keep(&mut best, c, &mut runs) {
            i += 1;
        }
    }
    // 3. Scale the workload down and shorten the safety phase.
    loop {
        let mut c = best.clone();
        c.scale /= 2.0;
        if c.scale < 1e-3 || !try_keep(&mut best, c, &mut runs) {
            break;
        }
    }
    loop {
        let mut c = best.clone();
        c.duration_ms /= 2;
        if c.duration_ms < 1_000 || !try_keep(&mut best, c, &mut runs) {
            break;
        }
        for w in &mut best.workload {
            w.end_ms = w.end_ms.map(|e| e.min(best.duration_ms));
        }
    }
    best
}

/// Summary of a `check` over seeds.
pub struct CheckSummary {
    pub seeds: u64,
    pub failed: Option<SeedReport>,
    pub events: u64,
    pub wall_ms: f64,
}

/// Checks seeds in parallel (results are printed in seed order through `print`); stops
/// reporting at the first failing seed.
pub fn check_seeds(
    scenario: &Scenario,
    seeds: std::ops::Range<u64>,
    opts: &CheckOptions,
    mut print: impl FnMut(&SeedReport),
) -> CheckSummary {
    use rayon::prelude::*;
    let wall = std::time::Instant::now();
    let mut events = 0;
    let mut count = 0;
    let all: Vec<u64> = seeds.collect();
    // Chunks keep memory bounded and let the first failure stop the run early.
    for chunk in all.chunks(64) {
        let reports: Vec<SeedReport> = chunk
            .par_iter()
            .map(|&seed| check_seed(scenario, seed, opts))
            .collect();
        for r in reports {
            count += 1;
            events += r.events;
            print(&r);
            if r.failed() {
                return CheckSummary {
                    seeds: count,
                    failed: Some(r),
                    events,
                    wall_ms: wall.elapsed().as_secs_f64() * 1e3,
                };
            }
        }
    }
    CheckSummary {
        seeds: count,
        failed: None,
        events,
        wall_ms: wall.elapsed().as_secs_f64() * 1e3,
    }
}

/// The fuzzer's one-line-per-seed report.
pub fn seed_line(r: &SeedReport) -> String {
    let status = if r.failed() { "FAIL" } else { "ok" };
    format!(
        "seed {:>6} {status:<4} tasks={:<5} events={:<6} hash={:016x} faults: {}",
        r.seed,
        r.tasks,
        r.events,
        r.journal_hash,
        describe(&r.faults)
    )
}

/// What a failing seed prints: the seed, the violations, the first bad event.
pub fn failure_report(r: &SeedReport) -> String {
    let mut s = format!("seed {} failed (faults: {})\n", r.seed, describe(&r.faults));
    if let Some(d) = &r.divergence {
        s += &format!(
            "  non-determinism: the two runs differ at journal event {} (seq {})\n    first run:  {:?}\n    second run: {:?}\n",
            d.index,
            d.index + 1,
            d.first,
            d.second
        );
    }
    for v in r.violations.iter().take(10) {
        s += &format!(
            "  invariant {} at {} ms (event {}): {}\n",
            v.invariant, v.at_ms, v.seq, v.message
        );
    }
    if r.violations.len() > 10 {
        s += &format!("  … and {} more\n", r.violations.len() - 10);
    }
    if let Some(e) = &r.first_bad_event {
        s += &format!("  first bad event: {e:?}\n");
    }
    s
}

/// Milliseconds, for printing.
pub fn fmt_ms(ms: Millis) -> String {
    format!("{:.1} s", ms as f64 / 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_draws_differ_between_seeds_and_repeat_for_one() {
        assert_eq!(swarm(3), swarm(3));
        let distinct: std::collections::HashSet<String> =
            (0..20).map(|s| describe(&swarm(s))).collect();
        assert!(distinct.len() > 15);
    }

    #[test]
    fn first_difference_finds_the_index() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 5, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
    }
}
