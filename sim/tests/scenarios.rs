//! Every shipped scenario runs clean: no invariant broken, no task lost, every task ends.
//! The big ones run scaled down here (debug builds); the full hevo-day is the release bench.

use handyman_core::PolicyKind;
use handyman_sim::{metrics, run, Options, Scenario};

fn clean(name: &str, scale: &str, policy: Option<PolicyKind>) {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let mut s = Scenario::load(std::path::Path::new(&path)).expect("shipped scenario parses");
    s.set("scale", scale).expect("scale is settable");
    let out = run(
        &s,
        Options {
            seed: 1,
            policy,
            ..Options::default()
        },
    );
    let summary = metrics::summarise(&out, name);
    assert!(
        summary.invariant_violations.is_empty(),
        "{name}: {:#?}",
        &summary.invariant_violations[..summary.invariant_violations.len().min(5)]
    );
    assert_eq!(summary.tasks_lost, 0, "{name}");
    assert!(summary.tasks_submitted > 0, "{name} submitted nothing");
    assert_eq!(
        summary.tasks_succeeded + summary.tasks_failed + summary.tasks_cancelled,
        summary.tasks_submitted,
        "{name}: every task ends"
    );
}

#[test]
fn hevo_day_runs_clean() {
    clean("hevo-day", "0.01", None);
}

#[test]
fn noisy_neighbour_runs_clean_under_every_policy() {
    for p in PolicyKind::ALL {
        clean("noisy-neighbour", "0.05", Some(p));
    }
}

#[test]
fn dag_binlog_runs_clean() {
    clean("dag-binlog", "0.05", None);
}

#[test]
fn overload_runs_clean() {
    clean("overload", "0.1", None);
}

#[test]
fn chaos_runs_clean_with_every_fault_on() {
    clean("chaos", "1", None);
}

#[test]
fn fair_share_protects_small_pipelines_from_a_noisy_neighbour() {
    let path = format!(
        "{}/scenarios/noisy-neighbour.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut s = Scenario::load(std::path::Path::new(&path)).expect("parses");
    s.set("scale", "0.2").expect("settable");
    s.set("slots.default", "8").expect("settable");
    let small_p50 = |p: PolicyKind| {
        let out = run(
            &s,
            Options {
                seed: 2,
                policy: Some(p),
                ..Options::default()
            },
        );
        metrics::summarise(&out, "noisy").wait_ms_by_size["small"].p50
    };
    let (fair, fifo) = (small_p50(PolicyKind::Handyman), small_p50(PolicyKind::Fifo));
    assert!(fair * 10 < fifo, "handyman p50 {fair} ms vs fifo {fifo} ms");
}
