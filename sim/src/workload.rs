//! Workload models: arrival processes and task kinds, turned into task specs.
//!
//! Everything here draws from the workload's own RNG stream, so that a seed gives the same
//! tasks whatever the policy and the faults: policies are compared on identical work.

use handyman_core::{GroupConfig, Millis, TaskSpec};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};

use crate::scenario::{Arrival, Dag, Duration, KindSpec, Scenario, Workload};

/// A task kind ready to sample from.
pub struct Kind {
    pub spec: KindSpec,
    lognormal: Option<LogNormal<f64>>,
}

impl Kind {
    pub fn new(spec: KindSpec) -> Kind {
        let lognormal = match spec.duration {
            Duration::Lognormal {
                median_ms, sigma, ..
            } => LogNormal::new(median_ms.ln(), sigma).ok(),
            _ => None,
        };
        Kind { spec, lognormal }
    }

    /// The total work of one task of this kind.
    pub fn sample_work(&self, rng: &mut ChaCha8Rng) -> Millis {
        match &self.spec.duration {
            Duration::Fixed { ms } => *ms,
            Duration::Lognormal { min_ms, max_ms, .. } => {
                let v = self.lognormal.as_ref().map_or(1.0, |d| d.sample(rng));
                (v.round() as Millis).clamp(*min_ms, (*max_ms).max(*min_ms))
            }
            Duration::Empirical { ms } => ms[rng.random_range(0..ms.len())],
        }
    }

    pub fn task_spec(&self, group: &str, priority: Option<i32>) -> TaskSpec {
        let k = &self.spec;
        TaskSpec {
            kind: k.name.as_str().into(),
            pool: k.pool.as_str().into(),
            group: group.into(),
            priority: priority.unwrap_or(k.priority),
            ageing: k.ageing,
            depends_on: Vec::new(),
            dependency_group: None,
            rank: 0,
            max_runtime_ms: k.max_runtime_ms,
            on_timeout: k.on_timeout,
            max_retries: k.max_retries,
            backoff: k.backoff,
            dedup_key: None,
            on_success: Vec::new(),
            on_failure: Vec::new(),
            payload: Vec::new(),
        }
    }
}

/// Size classes of groups, for wait metrics (the seed's chart: <10 jobs, 10–100, >100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SizeClass {
    Small,
    Medium,
    Large,
    Other,
}

impl SizeClass {
    /// Every class, in declaration order (so `ALL[c as usize] == c`).
    pub const ALL: [SizeClass; 4] = [
        SizeClass::Small,
        SizeClass::Medium,
        SizeClass::Large,
        SizeClass::Other,
    ];

    pub fn of_jobs(jobs: u32) -> SizeClass {
        match jobs {
            0..=9 => SizeClass::Small,
            10..=100 => SizeClass::Medium,
            _ => SizeClass::Large,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SizeClass::Small => "small",
            SizeClass::Medium => "medium",
            SizeClass::Large => "large",
            SizeClass::Other => "other",
        }
    }
}

/// A group a workload uses: its name, its settings (if the workload sets them), its size class.
pub type GroupToConfigure = (String, Option<GroupConfig>, SizeClass);

/// A scheduled pipeline: its group and how many jobs each run submits.
pub struct Pipeline {
    pub workload: usize,
    pub group: String,
    pub jobs: u32,
    pub every_ms: Millis,
    pub first_ms: Millis,
    pub end_ms: Millis,
}

/// An arrival source the driver keeps one pending event for.
pub enum Source {
    Pipeline(Pipeline),
    Poisson {
        workload: usize,
        per_ms: f64,
        end_ms: Millis,
    },
    Burst {
        workload: usize,
    },
}

/// Expands a scenario's workload entries into sources, and the groups to configure
/// (name, config, size class).
pub fn build_sources(
    scenario: &Scenario,
    rng: &mut ChaCha8Rng,
) -> (Vec<Source>, Vec<GroupToConfigure>) {
    let mut sources = Vec::new();
    let mut groups = Vec::new();
    for (wi, w) in scenario.workload.iter().enumerate() {
        let end_ms = w.end_ms.unwrap_or(scenario.duration_ms);
        match w.arrival {
            Arrival::Pipelines => {
                let n = ((f64::from(w.pipelines) * scenario.scale).round() as u32).max(1);
                let class_weights: Vec<f64> = w.jobs.iter().map(|c| c.weight).collect();
                for p in 0..n {
                    let jobs = match (p, w.largest) {
                        (0, Some(largest)) => largest.max(1),
                        _ => {
                            let c = &w.jobs[pick(rng, &class_weights, w.jobs.len())];
                            rng.random_range(c.min..=c.max)
                        }
                    };
                    let every_ms = w.every_ms[pick(rng, &w.every_weights, w.every_ms.len())];
                    let first_ms = w.start_ms + rng.random_range(0..every_ms);
                    let group = format!("{}{p}", w.group_prefix);
                    groups.push((group.clone(), w.group_config, SizeClass::of_jobs(jobs)));
                    sources.push(Source::Pipeline(Pipeline {
                        workload: wi,
                        group,
                        jobs,
                        every_ms,
                        first_ms,
                        end_ms,
                    }));
                }
            }
            Arrival::Poisson => {
                let per_ms = w.per_minute * scenario.scale / 60_000.0;
                if let Some(g) = &w.group {
                    groups.push((g.clone(), None, SizeClass::Other));
                }
                sources.push(Source::Poisson {
                    workload: wi,
                    per_ms,
                    end_ms,
                });
            }
            Arrival::Burst => {
                if let Some(g) = &w.group {
                    groups.push((g.clone(), None, SizeClass::Other));
                }
                sources.push(Source::Burst { workload: wi });
            }
        }
    }
    (sources, groups)
}

/// An index below `n` drawn by weight (uniform if `weights` is empty or sums to zero).
pub fn pick(rng: &mut ChaCha8Rng, weights: &[f64], n: usize) -> usize {
    let total: f64 = weights.iter().sum();
    if weights.is_empty() || total <= 0.0 || !total.is_finite() {
        return rng.random_range(0..n.max(1));
    }
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Draws an exponential inter-arrival time with mean `1 / per_ms`.
pub fn exp_gap(rng: &mut ChaCha8Rng, per_ms: f64) -> Millis {
    let u: f64 = rng.random::<f64>().max(1e-12);
    ((-u.ln() / per_ms).ceil() as Millis).max(1)
}

/// The specs of one submit: a pipeline run (optionally binlog-first) or `count` tasks of a
/// named group. Returns the specs and, apart, each spec's kind index (the specs go to the
/// core as they are).
pub fn batch(
    w: &Workload,
    kinds: &[Kind],
    kind_ids: &[usize],
    binlog: Option<usize>,
    group: &str,
    count: u32,
    rng: &mut ChaCha8Rng,
) -> (Vec<TaskSpec>, Vec<usize>) {
    let mut specs = Vec::with_capacity(count as usize + 1);
    let mut kinds_of = Vec::with_capacity(count as usize + 1);
    let first = if w.dag == Dag::BinlogFirst {
        binlog.map(|b| {
            specs.push(kinds[b].task_spec(group, w.priority));
            kinds_of.push(b);
            0usize
        })
    } else {
        None
    };
    for _ in 0..count {
        let k = kind_ids[pick(rng, &w.kind_weights, kind_ids.len())];
        let mut spec = kinds[k].task_spec(group, w.priority);
        if let Some(first) = first {
            spec = spec.after_batch_entry(first);
        }
        specs.push(spec);
        kinds_of.push(k);
    }
    (specs, kinds_of)
}

/// Roughly how many tasks the sources will submit (to size buffers once).
pub fn expected_tasks(scenario: &Scenario, sources: &[Source]) -> u64 {
    sources
        .iter()
        .map(|s| match s {
            Source::Pipeline(p) => {
                let runs = p.end_ms.saturating_sub(p.first_ms).div_ceil(p.every_ms);
                let binlog = u64::from(scenario.workload[p.workload].dag == Dag::BinlogFirst);
                runs * (u64::from(p.jobs) + binlog)
            }
            Source::Poisson {
                workload,
                per_ms,
                end_ms,
            } => {
                let start = scenario.workload[*workload].start_ms;
                (end_ms.saturating_sub(start) as f64 * per_ms) as u64
            }
            Source::Burst { workload } => {
                let w = &scenario.workload[*workload];
                w.at_ms.len() as u64 * (f64::from(w.count) * scenario.scale) as u64
            }
        })
        .sum()
}
