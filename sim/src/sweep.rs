//! Sweeps (`handyman-sim sweep`): the grid of policies × settings × seeds, run in parallel
//! on all cores, summarised with means and 95% confidence intervals over seeds, and plotted.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use handyman_core::PolicyKind;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use crate::metrics::{self, Summary};
use crate::output;
use crate::scenario::Scenario;
use crate::sim::{self, Options};
use crate::workload::SizeClass;

/// One cell of the grid: a policy and one value per `--set` key.
#[derive(Clone, Debug)]
pub struct Config {
    pub policy: PolicyKind,
    pub settings: Vec<(String, String)>,
}

impl Config {
    pub fn label(&self) -> String {
        let mut s = self.policy.name().to_string();
        for (k, v) in &self.settings {
            let _ = write!(s, " {k}={v}");
        }
        s
    }
}

/// The grid: every policy with every combination of `--set` values.
pub fn grid(policies: &[PolicyKind], sets: &[(String, Vec<String>)]) -> Vec<Config> {
    let mut configs: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in sets {
        configs = configs
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    policies
        .iter()
        .flat_map(|p| {
            configs.iter().map(|settings| Config {
                policy: *p,
                settings: settings.clone(),
            })
        })
        .collect()
}

/// What a sweep keeps of one run (not its tasks: sweeps can be large).
pub struct RunPoint {
    pub config: usize,
    pub summary: Summary,
    /// 201 quantiles of the wait, in ms.
    pub wait_quantiles: Vec<f64>,
    /// Queued tasks at each window boundary.
    pub queue: Vec<f64>,
    /// Per window, the share of run time of each group size class (small, medium, large, other).
    pub class_share: Vec<[f64; 4]>,
}

fn point(config: usize, scenario: &Scenario, seed: u64, policy: PolicyKind) -> RunPoint {
    let out = sim::run(
        scenario,
        Options {
            seed,
            policy: Some(policy),
            ..Options::default()
        },
    );
    let summary = metrics::summarise(&out, &scenario.name);
    let mut waits: Vec<u64> = out.tasks.iter().filter_map(metrics::wait_of).collect();
    waits.sort_unstable();
    let wait_quantiles = output::cdf_points(&waits)
        .into_iter()
        .map(|(s, _)| s * 1e3)
        .collect();
    let queue = out
        .queue_samples
        .iter()
        .map(|(_, q, _)| *q as f64)
        .collect();
    let windows = out
        .groups
        .iter()
        .map(|g| g.service.len())
        .max()
        .unwrap_or(0);
    let mut class_share = vec![[0.0; 4]; windows];
    for g in &out.groups {
        let c = match g.size {
            SizeClass::Small => 0,
            SizeClass::Medium => 1,
            SizeClass::Large => 2,
            SizeClass::Other => 3,
        };
        for (w, s) in g.service.iter().enumerate() {
            class_share[w][c] += s;
        }
    }
    for w in &mut class_share {
        let total: f64 = w.iter().sum();
        if total > 0.0 {
            w.iter_mut().for_each(|x| *x /= total);
        }
    }
    RunPoint {
        config,
        summary,
        wait_quantiles,
        queue,
        class_share,
    }
}

/// Runs the grid in parallel with a progress bar (hidden when stdout is not a terminal or
/// `CI` is set). Returns the points in (config, seed) order.
pub fn run_grid(
    scenario: &Scenario,
    configs: &[Config],
    seeds: std::ops::Range<u64>,
) -> Result<Vec<RunPoint>, String> {
    let mut scenarios = Vec::with_capacity(configs.len());
    for c in configs {
        let mut s = scenario.clone();
        for (k, v) in &c.settings {
            s.set(k, v)?;
        }
        scenarios.push(s);
    }
    let jobs: Vec<(usize, u64)> = (0..configs.len())
        .flat_map(|c| seeds.clone().map(move |s| (c, s)))
        .collect();
    let bar = ProgressBar::new(jobs.len() as u64);
    let hidden =
        std::env::var_os("CI").is_some() || !std::io::IsTerminal::is_terminal(&io::stdout());
    if hidden {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} ({eta} left)")
    {
        bar.set_style(style);
    }
    let points: Vec<RunPoint> = jobs
        .par_iter()
        .map(|&(c, seed)| {
            let p = point(c, &scenarios[c], seed, configs[c].policy);
            bar.inc(1);
            p
        })
        .collect();
    bar.finish_and_clear();
    Ok(points)
}

/// Mean and half-width of the 95% confidence interval (Student's t).
pub fn mean_ci(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, t975(n - 1) * (var / n as f64).sqrt())
}

fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(1.96)
}

/// The metrics of the summary table: (column, value of a run).
type Metric = (&'static str, fn(&Summary) -> f64);

pub const METRICS: [Metric; 10] = [
    ("wait_p50_ms", |s| s.wait_ms.p50 as f64),
    ("wait_p99_ms", |s| s.wait_ms.p99 as f64),
    ("wait_max_ms", |s| s.wait_ms.max as f64),
    ("turnaround_p50_ms", |s| s.turnaround_ms.p50 as f64),
    ("bounded_slowdown", |s| s.bounded_slowdown.mean),
    ("jain_index", |s| s.jain_index),
    ("starvation_count", |s| s.starvation_count as f64),
    ("utilisation", |s| s.utilisation),
    ("throughput_per_hour", |s| s.throughput_per_hour),
    ("invariant_violations", |s| {
        s.invariant_violations.len() as f64
    }),
];

/// Writes runs.csv, summary.csv and the plots; returns the printed table.
pub fn write_sweep(dir: &Path, configs: &[Config], points: &[RunPoint]) -> io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let mut runs = String::from("config,policy,seed");
    for (name, _) in METRICS {
        runs += ",";
        runs += name;
    }
    runs += ",journal_hash,wall_ms\n";
    for p in points {
        let _ = write!(
            runs,
            "\"{}\",{},{}",
            configs[p.config].label(),
            p.summary.policy,
            p.summary.seed
        );
        for (_, f) in METRICS {
            let _ = write!(runs, ",{}", f(&p.summary));
        }
        let _ = writeln!(runs, ",{},{:.1}", p.summary.journal_hash, p.summary.wall_ms);
    }
    std::fs::write(dir.join("runs.csv"), runs)?;

    let mut csv = String::from("config,runs");
    for (name, _) in METRICS {
        let _ = write!(csv, ",{name}_mean,{name}_ci95");
    }
    csv += "\n";
    let mut table = format!("{:<40} {:>4}", "config", "runs");
    let shown = [0usize, 1, 2, 5, 6, 7];
    for &m in &shown {
        let _ = write!(table, " {:>24}", METRICS[m].0);
    }
    table += "\n";
    for (c, config) in configs.iter().enumerate() {
        let mine: Vec<&RunPoint> = points.iter().filter(|p| p.config == c).collect();
        let _ = write!(csv, "\"{}\",{}", config.label(), mine.len());
        let _ = write!(table, "{:<40} {:>4}", config.label(), mine.len());
        for (m, (_, f)) in METRICS.iter().enumerate() {
            let xs: Vec<f64> = mine.iter().map(|p| f(&p.summary)).collect();
            let (mean, ci) = mean_ci(&xs);
            let _ = write!(csv, ",{mean},{ci}");
            if shown.contains(&m) {
                let _ = write!(table, " {:>24}", format!("{mean:.3} ± {ci:.3}"));
            }
        }
        csv += "\n";
        table += "\n";
    }
    std::fs::write(dir.join("summary.csv"), csv)?;

    // Plots: wait CDF per config (quantiles averaged over seeds), queue length, class share.
    let mut cdfs = Vec::new();
    let mut queues = Vec::new();
    let mut shares = Vec::new();
    for (c, config) in configs.iter().enumerate() {
        let mine: Vec<&RunPoint> = points.iter().filter(|p| p.config == c).collect();
        if mine.is_empty() {
            continue;
        }
        let n = mine.len() as f64;
        let q = mine[0].wait_quantiles.len();
        let cdf: Vec<(f64, f64)> = (0..q)
            .map(|i| {
                let v: f64 = mine
                    .iter()
                    .map(|p| p.wait_quantiles.get(i).copied().unwrap_or(0.0))
                    .sum();
                (v / n / 1e3, i as f64 / (q.max(2) - 1) as f64)
            })
            .collect();
        cdfs.push((config.label(), cdf));
        let len = mine.iter().map(|p| p.queue.len()).max().unwrap_or(0);
        let window_h = 1.0; // one point per window; labelled in windows
        let queue: Vec<(f64, f64)> = (0..len)
            .map(|w| {
                let v: f64 = mine
                    .iter()
                    .map(|p| p.queue.get(w).copied().unwrap_or(0.0))
                    .sum();
                (w as f64 * window_h, v / n)
            })
            .collect();
        queues.push((config.label(), queue));
        let len = mine.iter().map(|p| p.class_share.len()).max().unwrap_or(0);
        for (k, class) in ["small", "medium", "large"].iter().enumerate() {
            let pts: Vec<(f64, f64)> = (0..len)
                .map(|w| {
                    let v: f64 = mine
                        .iter()
                        .map(|p| p.class_share.get(w).map_or(0.0, |s| s[k]))
                        .sum();
                    (w as f64, v / n)
                })
                .collect();
            if pts.iter().any(|(_, v)| *v > 0.0) {
                shares.push((format!("{} {class}", config.label()), pts));
            }
        }
    }
    output::line_chart(
        &dir.join("wait_cdf.svg"),
        "Wait-time CDF per configuration (mean over seeds)",
        "wait (s)",
        "fraction of tasks",
        &cdfs,
    )?;
    output::line_chart(
        &dir.join("queue_length.svg"),
        "Queued tasks (mean over seeds)",
        "window",
        "tasks",
        &queues,
    )?;
    output::line_chart(
        &dir.join("group_share.svg"),
        "Share of run time per group size class",
        "window",
        "share",
        &shares,
    )?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_the_product_of_policies_and_settings() {
        let g = grid(
            &[PolicyKind::Handyman, PolicyKind::Fifo],
            &[
                ("scale".into(), vec!["0.1".into(), "0.2".into()]),
                ("slots.default".into(), vec!["4".into()]),
            ],
        );
        assert_eq!(g.len(), 4);
        assert_eq!(g[3].label(), "fifo scale=0.2 slots.default=4");
    }

    #[test]
    fn ci_of_constant_samples_is_zero() {
        assert_eq!(mean_ci(&[2.0, 2.0, 2.0]), (2.0, 0.0));
        let (m, ci) = mean_ci(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (ci - 4.303 / 3f64.sqrt()).abs() < 1e-9);
    }
}
