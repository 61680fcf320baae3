//! Random sequences of submit / cancel / assign / report / tick / crash-and-replay, with
//! every invariant of DESIGN.md checked after every step.

use handyman_core::*;
use proptest::prelude::*;

const POOLS: [&str; 2] = ["default", "io/slow"];

#[derive(Clone, Debug)]
enum Op {
    Submit {
        group: u8,
        pool: u8,
        priority: i8,
        ageing: u8,
        dep: Option<u16>,
        rank: Option<(u8, i8)>,
        max_retries: u8,
        continue_on_timeout: bool,
        max_runtime: u16,
        dedup: Option<u8>,
    },
    Cancel(u16),
    Report {
        pick: u16,
        kind: u8,
        stale: bool,
    },
    Tick(u16),
    Slots {
        pool: u8,
        slots: u8,
    },
    Group {
        group: u8,
        cap: u8,
        weight: u8,
    },
    CrashAndReplay,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, 0u8..2, -2i8..5, 0u8..4, proptest::option::of(0u16..64),
              proptest::option::of((0u8..2, 0i8..3)), 0u8..3, any::<bool>(), 1u16..3_000,
              proptest::option::weighted(0.2, 0u8..4))
            .prop_map(|(group, pool, priority, ageing, dep, rank, max_retries, continue_on_timeout, max_runtime, dedup)| Op::Submit {
                group, pool, priority, ageing, dep, rank, max_retries, continue_on_timeout, max_runtime, dedup,
            }),
        1 => (0u16..64).prop_map(Op::Cancel),
        4 => (any::<u16>(), 0u8..8, proptest::bool::weighted(0.1))
            .prop_map(|(pick, kind, stale)| Op::Report { pick, kind, stale }),
        3 => (0u16..4_000).prop_map(Op::Tick),
        1 => (0u8..2, 0u8..4).prop_map(|(pool, slots)| Op::Slots { pool, slots }),
        1 => (0u8..4, 1u8..4, 1u8..4).prop_map(|(group, cap, weight)| Op::Group { group, cap, weight }),
        1 => Just(Op::CrashAndReplay),
    ]
}

struct Harness {
    core: Core,
    journal: Vec<Event>,
    now: Millis,
}

impl Harness {
    fn new(policy: PolicyKind) -> Self {
        let mut core = Core::new(CoreConfig {
            policy,
            seed: 11,
            interrupt_grace_ms: 500,
            ..CoreConfig::default()
        });
        core.set_pool_slots(0, POOLS[0], 2);
        core.set_pool_slots(0, POOLS[1], 1);
        let mut h = Harness {
            core,
            journal: Vec::new(),
            now: 0,
        };
        h.drain();
        h
    }

    fn drain(&mut self) {
        self.journal.extend(self.core.drain_journal());
        self.core.drain_interrupts();
    }

    fn dispatch(&mut self) {
        for pool in POOLS {
            while self.core.next_assignment(self.now, pool).is_some() {}
        }
        self.drain();
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Submit {
                group,
                pool,
                priority,
                ageing,
                dep,
                rank,
                max_retries,
                continue_on_timeout,
                max_runtime,
                dedup,
            } => {
                let mut spec = TaskSpec::new("k")
                    .group(format!("g{group}"))
                    .pool(POOLS[pool as usize])
                    .priority(i32::from(priority))
                    .max_retries(u32::from(max_retries))
                    .max_runtime_ms(Millis::from(max_runtime))
                    .backoff(Backoff {
                        initial_ms: 100,
                        multiplier: 2.0,
                        max_ms: 2_000,
                        jitter: 0.5,
                    })
                    .ageing(match ageing {
                        0 => Ageing::None,
                        1 => Ageing::Linear {
                            per_minute: 30.0,
                            cap: 6.0,
                        },
                        2 => Ageing::Exponential {
                            doubling_ms: 2_000,
                            cap: 8.0,
                        },
                        _ => Ageing::Step {
                            every_ms: 1_000,
                            increment: 1.0,
                            cap: 4.0,
                        },
                    });
                if continue_on_timeout {
                    spec = spec.on_timeout(TimeoutMode::Continue);
                }
                let count = self.core.task_count();
                if let Some(d) = dep {
                    if count > 0 {
                        spec = spec.after(u64::from(d) % count + 1);
                    }
                }
                if let Some((g, r)) = rank {
                    spec = spec.rank_in(format!("dg{g}"), i32::from(r));
                }
                if let Some(k) = dedup {
                    spec = spec.dedup_key(format!("key{k}"));
                }
                let out = self.core.submit(self.now, spec);
                prop_assert!(out.is_ok(), "valid spec refused: {out:?}");
            }
            Op::Cancel(pick) => {
                let count = self.core.task_count();
                if count > 0 {
                    let id = u64::from(pick) % count + 1;
                    prop_assert!(self.core.cancel(self.now, id, "test").is_ok());
                }
            }
            Op::Report { pick, kind, stale } => {
                let running = self.core.running_attempts();
                if !running.is_empty() {
                    let (id, attempt) = running[pick as usize % running.len()];
                    let attempt = if stale {
                        attempt.saturating_sub(1)
                    } else {
                        attempt
                    };
                    let report = match kind {
                        0 => Report::Started,
                        1 | 2 => Report::Finished(AttemptOutcome::Success { output: vec![1] }),
                        3 => Report::Finished(AttemptOutcome::Transient {
                            message: "t".into(),
                        }),
                        4 => Report::Finished(AttemptOutcome::Fatal {
                            message: "f".into(),
                        }),
                        5 => Report::Finished(AttemptOutcome::ContinueLater),
                        6 => Report::Finished(AttemptOutcome::RetryAfter { delay_ms: 300 }),
                        _ => Report::Lost {
                            why: "worker crashed".into(),
                        },
                    };
                    let out = self.core.report(self.now, id, attempt, report);
                    prop_assert!(out.is_ok());
                    if stale {
                        prop_assert_eq!(out.ok(), Some(ReportOutcome::Stale));
                    }
                }
            }
            Op::Tick(delta) => {
                self.now += Millis::from(delta);
                self.core.tick(self.now);
            }
            Op::Slots { pool, slots } => {
                self.core
                    .set_pool_slots(self.now, POOLS[pool as usize], u32::from(slots))
            }
            Op::Group { group, cap, weight } => self.core.configure_group(
                self.now,
                &format!("g{group}"),
                GroupConfig {
                    weight: u32::from(weight),
                    cap: u32::from(cap),
                    floor: 1,
                },
            ),
            Op::CrashAndReplay => {
                self.drain();
                let replayed = Core::replay(self.core.config().clone(), &self.journal)
                    .map_err(|e| TestCaseError::fail(format!("replay failed: {e}")))?;
                prop_assert_eq!(replayed.digest(), self.core.digest(), "replay differs");
                self.core = replayed;
                // As the host does after a restart: attempts in flight are lost.
                for (id, attempt) in self.core.running_attempts() {
                    let out = self.core.report(
                        self.now,
                        id,
                        attempt,
                        Report::Lost {
                            why: "host crashed".into(),
                        },
                    );
                    prop_assert!(out.is_ok());
                }
            }
        }
        self.dispatch();
        let violations = self.core.check_invariants();
        prop_assert!(violations.is_empty(), "after {op:?}: {violations:#?}");
        Ok(())
    }

    /// Liveness: without faults, every task reaches a terminal state within a bound.
    fn finish_everything(&mut self) -> Result<(), TestCaseError> {
        for pool in POOLS {
            self.core.set_pool_slots(self.now, pool, 2);
        }
        for _ in 0..10_000 {
            self.dispatch();
            let violations = self.core.check_invariants();
            prop_assert!(violations.is_empty(), "{violations:#?}");
            if self.core.counts().unfinished() == 0 {
                return Ok(());
            }
            for (id, attempt) in self.core.running_attempts() {
                let ok = Report::Finished(AttemptOutcome::Success { output: vec![] });
                prop_assert!(self.core.report(self.now, id, attempt, ok).is_ok());
            }
            match self.core.next_wakeup() {
                Some(t) if self.core.running_attempts().is_empty() => self.now = self.now.max(t),
                _ => self.now += 1,
            }
            self.core.tick(self.now);
        }
        Err(TestCaseError::fail(format!(
            "tasks still unfinished after the liveness phase: {:?}",
            self.core.counts()
        )))
    }
}

fn run(policy: PolicyKind, ops: &[Op]) -> Result<u64, TestCaseError> {
    let mut h = Harness::new(policy);
    for op in ops {
        h.step(op)?;
    }
    h.finish_everything()?;
    h.drain();
    let total = h.core.counts().total();
    prop_assert_eq!(total, h.core.task_count(), "a task is in no state");
    Ok(stable_hash(&h.journal))
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.

    #[test]
    fn every_invariant_holds_after_every_step(ops in proptest::collection::vec(op(), 1..120), policy in 0usize..4) {
        run(PolicyKind::ALL[policy], &ops)?;
    }

    #[test]
    fn the_same_inputs_give_the_same_journal(ops in proptest::collection::vec(op(), 1..60)) {
        let a = run(PolicyKind::Handyman, &ops)?;
        let b = run(PolicyKind::Handyman, &ops)?;
        prop_assert_eq!(a, b);
    }
}

#[test]
fn the_checker_catches_an_injected_cap_bug() {
    let mut core = Core::new(CoreConfig {
        injected_bug: Some(InjectedBug::IgnoreGroupCaps),
        ..CoreConfig::default()
    });
    core.set_pool_slots(0, "default", 4);
    core.configure_group(
        0,
        "g",
        GroupConfig {
            weight: 1,
            cap: 1,
            floor: 1,
        },
    );
    for _ in 0..3 {
        core.submit(0, TaskSpec::new("k").group("g")).unwrap();
    }
    while core.next_assignment(0, "default").is_some() {}
    let violations = core.check_invariants();
    assert!(
        violations.iter().any(|v| v.invariant == 2),
        "{violations:#?}"
    );
}

#[test]
fn the_checker_catches_an_injected_dependency_bug() {
    let mut core = Core::new(CoreConfig {
        injected_bug: Some(InjectedBug::IgnoreDependencies),
        ..CoreConfig::default()
    });
    core.set_pool_slots(0, "default", 4);
    let a = core.submit(0, TaskSpec::new("k")).unwrap().id();
    core.submit(0, TaskSpec::new("k").after(a)).unwrap();
    while core.next_assignment(0, "default").is_some() {}
    let violations = core.check_invariants();
    assert!(
        violations.iter().any(|v| v.invariant == 3),
        "{violations:#?}"
    );
}
