//! The fuzzer in CI: a few hundred swarm seeds of the chaos scenario, each run twice with
//! the core's invariant check after every step; and a deliberate bug that it must catch.

use handyman_core::InjectedBug;
use handyman_sim::check::{self, CheckOptions};
use handyman_sim::Scenario;

fn chaos() -> Scenario {
    let path = format!("{}/scenarios/chaos.toml", env!("CARGO_MANIFEST_DIR"));
    Scenario::load(std::path::Path::new(&path)).expect("chaos parses")
}

#[test]
fn two_hundred_swarm_seeds_pass() {
    let opts = CheckOptions {
        injected_bug: None,
        check_every: Some(1),
    };
    let summary = check::check_seeds(&chaos(), 0..200, &opts, |_| {});
    if let Some(r) = &summary.failed {
        panic!("{}", check::failure_report(r));
    }
    assert_eq!(summary.seeds, 200);
}

#[test]
fn check_catches_a_core_that_ignores_group_caps_and_shrinks_it() {
    let s = chaos();
    let opts = CheckOptions {
        injected_bug: Some(InjectedBug::IgnoreGroupCaps),
        check_every: Some(1),
    };
    let summary = check::check_seeds(&s, 0..20, &opts, |_| {});
    let failed = summary.failed.expect("the injected bug is caught");
    assert!(
        failed.violations.iter().any(|v| v.invariant == 2),
        "{}",
        check::failure_report(&failed)
    );
    assert!(failed.first_bad_event.is_some());
    let shrunk = check::shrink(&s, failed.seed, &opts, 12);
    assert!(!shrunk.swarm);
    assert!(shrunk.scale <= s.scale && shrunk.duration_ms <= s.duration_ms);
    let again = check::check_seed(&shrunk, failed.seed, &opts);
    assert!(again.failed(), "the shrunk scenario still fails");
}

#[test]
fn check_catches_a_core_that_ignores_dependencies() {
    let opts = CheckOptions {
        injected_bug: Some(InjectedBug::IgnoreDependencies),
        check_every: Some(1),
    };
    let summary = check::check_seeds(&chaos(), 0..20, &opts, |_| {});
    let failed = summary.failed.expect("the injected bug is caught");
    assert!(failed.violations.iter().any(|v| v.invariant == 3));
}
