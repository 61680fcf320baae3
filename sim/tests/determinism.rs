//! Invariant 7: the same seed gives the same journal, byte for byte; other seeds differ.

use handyman_sim::{run, Options, Scenario};

fn scenario(name: &str, scale: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let mut s = Scenario::load(std::path::Path::new(&path)).expect("shipped scenario parses");
    s.set("scale", scale).expect("scale is settable");
    s
}

fn hash(s: &Scenario, seed: u64) -> u64 {
    run(
        s,
        Options {
            seed,
            ..Options::default()
        },
    )
    .journal_hash
}

#[test]
fn the_same_seed_gives_the_same_journal_hash_with_every_fault_on() {
    let s = scenario("chaos", "1");
    assert_eq!(hash(&s, 7), hash(&s, 7));
}

#[test]
fn different_seeds_give_different_journals() {
    let s = scenario("chaos", "1");
    assert_ne!(hash(&s, 1), hash(&s, 2));
}

#[test]
fn a_small_hevo_day_is_deterministic_too() {
    let s = scenario("hevo-day", "0.01");
    let a = run(
        &s,
        Options {
            seed: 3,
            keep_hashes: true,
            ..Options::default()
        },
    );
    // The second run hashes and draws arrivals on threads of their own, as `handyman-sim
    // run` does.
    let b = run(
        &s,
        Options {
            seed: 3,
            keep_hashes: true,
            hash_on_thread: true,
            arrivals_on_thread: true,
            ..Options::default()
        },
    );
    assert!(a.event_hashes.len() > 10_000, "{}", a.event_hashes.len());
    assert_eq!(a.event_hashes.len() as u64, a.events);
    assert_eq!(a.event_hashes, b.event_hashes);
    assert_eq!(a.journal_hash, b.journal_hash);
}

#[test]
fn arrivals_drawn_ahead_on_a_thread_give_the_inline_journal_with_every_fault_on() {
    // Chaos has duplicate submits and cancellations, whose draws interleave with arrivals.
    let s = scenario("chaos", "1");
    let mut duplicates = 0;
    for seed in [1, 7, 11] {
        let inline = run(
            &s,
            Options {
                seed,
                keep_hashes: true,
                ..Options::default()
            },
        );
        let ahead = run(
            &s,
            Options {
                seed,
                keep_hashes: true,
                arrivals_on_thread: true,
                ..Options::default()
            },
        );
        assert!(inline.accepted > 100, "seed {seed}");
        assert_eq!(inline.event_hashes, ahead.event_hashes, "seed {seed}");
        duplicates += inline.duplicates;
    }
    assert!(duplicates > 0, "no duplicate submit was exercised");
}
