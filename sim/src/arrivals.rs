//! The workload's arrivals, decided apart from the simulation that consumes them.
//!
//! What arrives, and when, depends only on the scenario and the seed (the workload's own RNG
//! stream), never on what the scheduler did: policies are compared on identical work. So
//! the specs, their amounts of work and the duplicate and cancel requests can be drawn ahead,
//! on the machine's other core, while the simulating thread runs the scheduler.
//!
//! The simulation keeps a placeholder event in its queue for each arrival, pushed exactly
//! where it always was, and takes the next [`Action`] when it pops one. Arrivals are drawn
//! here in the order the simulation pops them: by time, then by the order they were pushed,
//! which among arrivals only arrivals decide. The draws are therefore the ones an inline
//! run makes, and so is the journal.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

use handyman_core::{Millis, TaskSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::fasthash::FxMap;
use crate::scenario::Scenario;
use crate::workload::{self, GroupToConfigure, Kind, Source};

/// Actions go over in batches: a hand-over that wakes the other thread costs microseconds.
const BATCH: usize = 512;
/// Batches drawn ahead of the simulation, at most.
const AHEAD: usize = 4;

/// A placeholder the simulation queues for an arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arrival {
    /// The next arrival of source `i` (a pipeline run or a Poisson arrival).
    Source(u32),
    /// One burst of burst source `i`.
    Burst(u32),
    /// A duplicate submit requested by an earlier batch.
    Duplicate,
}

/// What the simulation does when it pops an arrival.
pub enum Action {
    Submit(Planned),
    /// A duplicate submit: the work its task would need if it is created.
    Duplicate {
        work: Option<Millis>,
    },
}

/// One batch to submit.
pub struct Planned {
    pub specs: Vec<TaskSpec>,
    /// The work each spec's task needs, in spec order.
    pub works: Vec<Millis>,
    /// Per spec (or empty, when the workload never duplicates or cancels): the duplicate
    /// and the cancellation its submitter will send. Push them in this order, and resolve a
    /// duplicate's batch dependencies to the batch's task ids.
    pub follow_ups: Vec<FollowUp>,
    /// When this source arrives next, if it does (pushed after the follow-ups).
    pub next: Option<Millis>,
}

pub struct FollowUp {
    pub duplicate: Option<(Millis, TaskSpec)>,
    pub cancel: Option<Millis>,
}

/// What the simulation needs before its first event.
pub struct Setup {
    /// The arrivals to queue, in this order.
    pub first: Vec<(Millis, Arrival)>,
    pub groups: Vec<GroupToConfigure>,
    /// Roughly how many tasks will arrive (to size buffers once).
    pub expected_tasks: u64,
}

/// Hands out arrivals in order, drawing them inline or on a second thread.
pub struct Arrivals {
    inline: Option<Draws>,
    ahead: Option<Receiver<Vec<Action>>>,
    /// The batch being handed out, reversed (so that `pop` gives the next action).
    batch: Vec<Action>,
}

impl Arrivals {
    pub fn new(scenario: &Scenario, seed: u64, on_thread: bool) -> (Arrivals, Setup) {
        let (mut draws, setup) = Draws::new(scenario, seed);
        if on_thread {
            let (tx, rx) = sync_channel(AHEAD);
            let spawned = thread::Builder::new()
                .name("arrivals".into())
                .spawn(move || loop {
                    let mut batch: Vec<Action> = (0..BATCH).map_while(|_| draws.draw()).collect();
                    if batch.is_empty() {
                        return;
                    }
                    batch.reverse();
                    if tx.send(batch).is_err() {
                        return;
                    }
                });
            match spawned {
                Ok(_) => {
                    return (
                        Arrivals {
                            inline: None,
                            ahead: Some(rx),
                            batch: Vec::new(),
                        },
                        setup,
                    );
                }
                // No thread to be had: the simulation draws for itself. `draws` went into
                // the closure that was not run, so start over from the seed.
                Err(_) => draws = Draws::new(scenario, seed).0,
            }
        }
        (
            Arrivals {
                inline: Some(draws),
                ahead: None,
                batch: Vec::new(),
            },
            setup,
        )
    }

    /// The action of the arrival just popped; `None` only if the simulation popped more
    /// arrivals than it queued (a bug).
    pub fn take_next(&mut self) -> Option<Action> {
        if let Some(draws) = &mut self.inline {
            return draws.draw();
        }
        if self.batch.is_empty() {
            self.batch = self.ahead.as_ref()?.recv().ok()?;
        }
        self.batch.pop()
    }
}

/// (time, push order, arrival, the kind of a duplicate's spec), earliest first.
type PendingArrival = Reverse<(Millis, u64, Arrival, Option<usize>)>;

/// The workload's RNG stream and its own queue of pending arrivals.
struct Draws {
    scenario: Scenario,
    kinds: Vec<Kind>,
    kind_ids: FxMap<String, usize>,
    kind_ids_by_workload: Vec<Vec<usize>>,
    binlog_by_workload: Vec<Option<usize>>,
    sources: Vec<Source>,
    rng: ChaCha8Rng,
    pending: BinaryHeap<PendingArrival>,
    pushed: u64,
}

impl Draws {
    fn new(scenario: &Scenario, seed: u64) -> (Draws, Setup) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        let (sources, groups) = workload::build_sources(scenario, &mut rng);
        let kind_ids_by_workload = scenario
            .workload
            .iter()
            .map(|w| {
                w.kinds
                    .iter()
                    .filter_map(|k| scenario.kind_index(k))
                    .collect()
            })
            .collect();
        let binlog_by_workload = scenario
            .workload
            .iter()
            .map(|w| {
                w.binlog_kind
                    .as_deref()
                    .and_then(|k| scenario.kind_index(k))
            })
            .collect();
        let mut draws = Draws {
            scenario: scenario.clone(),
            kinds: scenario.kinds.iter().cloned().map(Kind::new).collect(),
            kind_ids: scenario
                .kinds
                .iter()
                .enumerate()
                .map(|(i, k)| (k.name.clone(), i))
                .collect(),
            kind_ids_by_workload,
            binlog_by_workload,
            sources: Vec::new(),
            rng,
            pending: BinaryHeap::new(),
            pushed: 0,
        };
        let mut first = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            match src {
                Source::Pipeline(p) => {
                    if p.first_ms < p.end_ms {
                        first.push((p.first_ms, Arrival::Source(i as u32)));
                    }
                }
                Source::Poisson {
                    workload,
                    per_ms,
                    end_ms,
                } => {
                    let start = scenario.workload[*workload].start_ms;
                    let at = start + workload::exp_gap(&mut draws.rng, *per_ms);
                    if at < *end_ms {
                        first.push((at, Arrival::Source(i as u32)));
                    }
                }
                Source::Burst { workload } => {
                    for at in &scenario.workload[*workload].at_ms {
                        first.push((*at, Arrival::Burst(i as u32)));
                    }
                }
            }
        }
        for &(at, arrival) in &first {
            draws.push(at, arrival, None);
        }
        let expected_tasks = workload::expected_tasks(scenario, &sources);
        draws.sources = sources;
        let setup = Setup {
            first,
            groups,
            expected_tasks,
        };
        (draws, setup)
    }

    fn push(&mut self, at: Millis, arrival: Arrival, kind: Option<usize>) {
        self.pending.push(Reverse((at, self.pushed, arrival, kind)));
        self.pushed += 1;
    }

    /// The action of the earliest pending arrival.
    fn draw(&mut self) -> Option<Action> {
        let Reverse((now, _, arrival, kind)) = self.pending.pop()?;
        Some(match arrival {
            Arrival::Source(i) => {
                let (planned, next) = match &self.sources[i as usize] {
                    Source::Pipeline(p) => {
                        let (w, group, jobs, every, end) =
                            (p.workload, p.group.clone(), p.jobs, p.every_ms, p.end_ms);
                        let planned = self.plan(w, &group, jobs, now);
                        (planned, (now + every < end).then_some(now + every))
                    }
                    Source::Poisson {
                        workload,
                        per_ms,
                        end_ms,
                    } => {
                        let (w, per_ms, end) = (*workload, *per_ms, *end_ms);
                        let group = self.scenario.workload[w]
                            .group
                            .clone()
                            .unwrap_or_else(|| "default".into());
                        let planned = self.plan(w, &group, 1, now);
                        let at = now + workload::exp_gap(&mut self.rng, per_ms);
                        (planned, (at < end).then_some(at))
                    }
                    Source::Burst { .. } => (Planned::empty(), None),
                };
                if let Some(at) = next {
                    self.push(at, Arrival::Source(i), None);
                }
                Action::Submit(Planned { next, ..planned })
            }
            Arrival::Burst(i) => match self.sources[i as usize] {
                Source::Burst { workload } => {
                    let w = &self.scenario.workload[workload];
                    let count = ((f64::from(w.count) * self.scenario.scale).round() as u32).max(1);
                    let group = w.group.clone().unwrap_or_else(|| "default".into());
                    Action::Submit(self.plan(workload, &group, count, now))
                }
                _ => Action::Submit(Planned::empty()),
            },
            Arrival::Duplicate => Action::Duplicate {
                work: kind.map(|k| self.kinds[k].sample_work(&mut self.rng)),
            },
        })
    }

    /// One batch of `count` tasks of workload `wi` for `group`, arriving at `now`.
    fn plan(&mut self, wi: usize, group: &str, count: u32, now: Millis) -> Planned {
        let w = &self.scenario.workload[wi];
        let (mut specs, kinds_of) = workload::batch(
            w,
            &self.kinds,
            &self.kind_ids_by_workload[wi],
            self.binlog_by_workload[wi],
            group,
            count,
            &mut self.rng,
        );
        let works = kinds_of
            .iter()
            .map(|k| self.kinds[*k].sample_work(&mut self.rng))
            .collect();
        let (dup_p, cancel_p, cancel_after) = (w.duplicate_p, w.cancel_p, w.cancel_after_ms);
        if dup_p > 0.0 {
            for (j, s) in specs.iter_mut().enumerate() {
                s.dedup_key = Some(format!("{group}/{now}/{j}").into());
            }
        }
        let mut follow_ups = Vec::new();
        if dup_p > 0.0 || cancel_p > 0.0 {
            for spec in &specs {
                let mut duplicate = None;
                if dup_p > 0.0 && self.rng.random::<f64>() < dup_p {
                    let at = now + self.rng.random_range(0..60_000);
                    let kind = self.kind_ids.get(spec.kind.as_str()).copied();
                    self.push(at, Arrival::Duplicate, kind);
                    duplicate = Some((at, spec.clone()));
                }
                let mut cancel = None;
                if cancel_p > 0.0 && self.rng.random::<f64>() < cancel_p {
                    cancel = Some(now + self.rng.random_range(0..=cancel_after));
                }
                follow_ups.push(FollowUp { duplicate, cancel });
            }
        }
        Planned {
            specs,
            works,
            follow_ups,
            next: None,
        }
    }
}

impl Planned {
    fn empty() -> Planned {
        Planned {
            specs: Vec::new(),
            works: Vec::new(),
            follow_ups: Vec::new(),
            next: None,
        }
    }
}
