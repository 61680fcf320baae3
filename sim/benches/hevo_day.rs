//! The hevo-day benchmark: the seed's production day (~650,000 tasks, 24 simulated hours)
//! in release. Prints wall time, events/s and the speed-up over real time.
//!
//! `cargo bench -p handyman-sim --bench hevo_day` (set HEVO_SCALE=0.1 for a quick look).

use handyman_sim::{metrics, prefault, run, Options, Scenario};

// The allocator of `handyman-sim` itself, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: prefault::Prefaulting<mimalloc::MiMalloc> =
    prefault::Prefaulting(mimalloc::MiMalloc);

fn main() {
    prefault::start();
    // `cargo test --benches` runs bench binaries with no arguments too; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let path = format!("{}/scenarios/hevo-day.toml", env!("CARGO_MANIFEST_DIR"));
    let mut s = match Scenario::load(std::path::Path::new(&path)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let scale =
        std::env::var("HEVO_SCALE")
            .unwrap_or_else(|_| if quick { "0.01".into() } else { "1".into() });
    if let Err(e) = s.set("scale", &scale) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let runs = if quick { 1 } else { 3 };
    for seed in 1..=runs {
        let out = run(
            &s,
            Options {
                seed,
                hash_on_thread: true,
                arrivals_on_thread: true,
                ..Options::default()
            },
        );
        let m = metrics::summarise(&out, "hevo-day");
        println!(
            "hevo-day scale {scale} seed {seed}: {} tasks, {} events, {:.0} ms wall, {:.2} M events/s, {:.0}x real time, violations {}",
            m.tasks_submitted,
            m.events,
            m.wall_ms,
            m.events_per_s / 1e6,
            m.speedup,
            m.invariant_violations.len()
        );
    }
}
