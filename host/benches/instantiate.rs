//! Cost of one attempt of the `noop` plugin: instantiate from the kind's reused `InstancePre`
//! in a fresh `Store`, call `run`, tear down; the same for a minimal hand-written component. Also how far past its time limit an endless loop
//! runs before the epoch ticker stops it.
//!
//! ```text
//! HANDYMAN_PLUGINS_DIR=plugins/dist cargo bench -p handyman-host --bench instantiate
//! ```
//!
//! Criterion reports the mean and median; the custom loops print p50 / p99 / max.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

#[path = "../tests/support/mod.rs"]
mod support;
use handyman_host::runtime::{AttemptInput, AttemptOutcome, KindConfig, Runtime, RuntimeConfig};

fn plugins_dir() -> PathBuf {
    match std::env::var_os("HANDYMAN_PLUGINS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist"),
    }
}

fn runtime_with(kind: &str, config: KindConfig) -> Runtime {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(std::env::temp_dir().join("handyman-bench-cache")),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let path = plugins_dir().join(format!("{kind}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins or set HANDYMAN_PLUGINS_DIR",
            path.display()
        )
    });
    runtime
        .add_kind(kind, &bytes, config)
        .expect("plugin loads");
    runtime
}

fn input(attempt: u32) -> AttemptInput {
    AttemptInput {
        task_id: 1,
        attempt,
        payload: b"{}".to_vec(),
        ..AttemptInput::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
}

/// Warms up the pool's slots, then times 5,000 single attempts of `kind`, each checked.
fn time_attempts(
    runtime: &Runtime,
    kind: &str,
    expected: impl Fn(&AttemptOutcome) -> bool,
) -> Vec<Duration> {
    for i in 0..200 {
        let _ = runtime.run_attempt(kind, input(i));
    }
    (0..5_000)
        .map(|i| {
            let started = Instant::now();
            let result = runtime
                .run_attempt(kind, input(i))
                .expect("the attempt runs");
            let took = started.elapsed();
            assert!(expected(&result.outcome), "{kind}: {:?}", result.outcome);
            took
        })
        .collect()
}

fn noop_attempt(c: &mut Criterion) {
    let runtime = runtime_with("noop", KindConfig::default());
    let samples = time_attempts(&runtime, "noop", |o| matches!(o, AttemptOutcome::Done(_)));
    report("noop attempt (instantiate + run + teardown)", samples);

    c.bench_function("noop attempt", |b| {
        let mut attempt = 0;
        b.iter(|| {
            attempt += 1;
            runtime
                .run_attempt("noop", input(attempt))
                .expect("noop runs")
        })
    });
}

/// The same path for a hand-written component that allocates nothing: what the runtime costs
/// without a Rust guest's stack, data and heap to set up and reset.
fn minimal_attempt(_c: &mut Criterion) {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(std::env::temp_dir().join("handyman-bench-cache")),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    runtime
        .add_kind(
            "minimal",
            support::handler(support::CONTINUE_LATER).as_bytes(),
            KindConfig::default(),
        )
        .expect("the minimal component loads");
    let samples = time_attempts(&runtime, "minimal", |o| *o == AttemptOutcome::ContinueLater);
    report("minimal WAT component attempt", samples);
}

fn timeout_overshoot(_c: &mut Criterion) {
    let limit = Duration::from_millis(100);
    let config = KindConfig {
        max_runtime: limit,
        ..KindConfig::default()
    };
    let runtime = runtime_with("spin", config);
    let samples: Vec<Duration> = (0..30)
        .map(|i| {
            let started = Instant::now();
            let result = runtime.run_attempt("spin", input(i)).expect("spin runs");
            assert_eq!(result.outcome, AttemptOutcome::Timeout);
            started.elapsed().saturating_sub(limit)
        })
        .collect();
    report("spin: time past its 100 ms limit", samples);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = noop_attempt, minimal_attempt, timeout_overshoot
}
criterion_main!(benches);
