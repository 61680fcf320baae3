//! `handyman-sim`: run, sweep and check scenarios. See `sim/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handyman_core::{InjectedBug, PolicyKind};
use handyman_sim::check::{self, CheckOptions};
use handyman_sim::{metrics, output, prefault, sweep, Options, Scenario};

// A day of simulated work allocates and frees millions of small task specs, events and
// names: mimalloc spends far fewer instructions on that than the system allocator. The big
// task tables' pages are faulted in by a second thread (see `prefault`).
#[global_allocator]
static ALLOCATOR: prefault::Prefaulting<mimalloc::MiMalloc> =
    prefault::Prefaulting(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(
    name = "handyman-sim",
    about = "Handyman's deterministic simulator",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run of a scenario.
    Run {
        scenario: PathBuf,
        #[arg(long)]
        seed: u64,
        /// handyman, multifactor, strict-priority or fifo (default: the scenario's).
        #[arg(long)]
        policy: Option<PolicyKind>,
        /// Print the JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Also write tasks.csv, summary.json, shares.csv, queue.csv and SVG plots here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Set a scenario key, e.g. `--set scale=0.01` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// The grid of runs: policies × settings × seeds, in parallel.
    Sweep {
        scenario: PathBuf,
        /// Seeds as A..B (B excluded).
        #[arg(long)]
        seeds: String,
        /// Policies to compare, comma-separated (default: the scenario's).
        #[arg(long, value_delimiter = ',')]
        policy: Vec<PolicyKind>,
        /// `key=v1,v2,…` (repeatable): every combination is run.
        #[arg(long = "set", value_name = "KEY=V1,V2")]
        set: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The fuzzer: swarm-drawn faults per seed, every run done twice, shrunk on failure.
    Check {
        /// Defaults to the built-in chaos scenario (sim/scenarios/chaos.toml).
        scenario: Option<PathBuf>,
        /// Seeds as A..B (B excluded).
        #[arg(long)]
        seeds: String,
        /// Make the core break a rule on purpose (to see the checkers catch it):
        /// ignore-group-caps, ignore-pool-slots, ignore-dependencies.
        #[arg(long, value_parser = parse_bug)]
        inject_bug: Option<InjectedBug>,
        /// Run the core's full invariant check every N steps (default: every step).
        #[arg(long, default_value_t = 1)]
        check_every: u64,
        /// Set a scenario key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Write the shrunk scenario of a failing seed here.
        #[arg(long)]
        shrunk_out: Option<PathBuf>,
    },
}

/// The scenario `check` uses when none is given.
pub const CHAOS: &str = include_str!("../scenarios/chaos.toml");

fn parse_bug(s: &str) -> Result<InjectedBug, String> {
    match s {
        "ignore-group-caps" => Ok(InjectedBug::IgnoreGroupCaps),
        "ignore-pool-slots" => Ok(InjectedBug::IgnorePoolSlots),
        "ignore-dependencies" => Ok(InjectedBug::IgnoreDependencies),
        _ => Err(format!(
            "unknown bug {s:?}; expected ignore-group-caps, ignore-pool-slots or ignore-dependencies"
        )),
    }
}

fn parse_seeds(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("--seeds {s:?}: expected A..B, e.g. 0..100"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("--seeds {s:?}: {a:?} is not a number"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("--seeds {s:?}: {b:?} is not a number"))?;
    if b <= a {
        return Err(format!("--seeds {s:?}: the range is empty (B is excluded)"));
    }
    Ok(a..b)
}

fn load(path: &std::path::Path, sets: &[String]) -> Result<Scenario, String> {
    let mut s = Scenario::load(path).map_err(|e| e.to_string())?;
    apply_sets(&mut s, sets)?;
    Ok(s)
}

fn apply_sets(s: &mut Scenario, sets: &[String]) -> Result<(), String> {
    for kv in sets {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        s.set(k.trim(), v.trim())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    prefault::start();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Run {
            scenario,
            seed,
            policy,
            json,
            out,
            set,
        } => {
            let s = load(&scenario, &set)?;
            let run = handyman_sim::run(
                &s,
                Options {
                    seed,
                    policy,
                    hash_on_thread: true,
                    arrivals_on_thread: true,
                    ..Options::default()
                },
            );
            let summary = metrics::summarise(&run, &s.name);
            if let Some(dir) = &out {
                output::write_run(dir, &run, &summary)
                    .map_err(|e| format!("writing {}: {e}", dir.display()))?;
            }
            if json {
                let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                println!(
                    "{} seed {} policy {}: {} tasks ({} succeeded, {} failed, {} cancelled, {} lost), \
                     wait p50 {} ms p99 {} ms max {} ms, jain {:.3}, {} events in {:.0} ms wall \
                     ({:.0} events/s, {:.0}x real time), journal {}",
                    s.name, seed, summary.policy, summary.tasks_submitted, summary.tasks_succeeded,
                    summary.tasks_failed, summary.tasks_cancelled, summary.tasks_lost,
                    summary.wait_ms.p50, summary.wait_ms.p99, summary.wait_ms.max,
                    summary.jain_index, summary.events, summary.wall_ms, summary.events_per_s,
                    summary.speedup, summary.journal_hash
                );
                for v in &summary.invariant_violations {
                    println!(
                        "  invariant {} at {} ms (event {}): {}",
                        v.invariant, v.at_ms, v.seq, v.message
                    );
                }
            }
            Ok(
                if summary.invariant_violations.is_empty() && summary.tasks_lost == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        Command::Sweep {
            scenario,
            seeds,
            policy,
            set,
            out,
        } => {
            let s = load(&scenario, &[])?;
            let seeds = parse_seeds(&seeds)?;
            let policies = if policy.is_empty() {
                vec![s.policy]
            } else {
                policy
            };
            let mut sets = Vec::new();
            for kv in &set {
                let (k, vs) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--set {kv:?}: expected KEY=V1,V2"))?;
                sets.push((
                    k.trim().to_string(),
                    vs.split(',').map(|v| v.trim().to_string()).collect(),
                ));
            }
            let configs = sweep::grid(&policies, &sets);
            let points = sweep::run_grid(&s, &configs, seeds)?;
            let table = sweep::write_sweep(&out, &configs, &points)
                .map_err(|e| format!("writing {}: {e}", out.display()))?;
            print!("{table}");
            println!(
                "wrote {}/summary.csv, runs.csv, wait_cdf.svg, group_share.svg, queue_length.svg",
                out.display()
            );
            let bad = points
                .iter()
                .filter(|p| !p.summary.invariant_violations.is_empty())
                .count();
            if bad > 0 {
                println!("{bad} runs broke invariants: see runs.csv");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            scenario,
            seeds,
            inject_bug,
            check_every,
            set,
            shrunk_out,
        } => {
            let mut s = match &scenario {
                Some(p) => Scenario::load(p).map_err(|e| e.to_string())?,
                None => {
                    Scenario::parse("chaos.toml (built in)", CHAOS).map_err(|e| e.to_string())?
                }
            };
            apply_sets(&mut s, &set)?;
            let seeds = parse_seeds(&seeds)?;
            let opts = CheckOptions {
                injected_bug: inject_bug,
                check_every: Some(check_every.max(1)),
            };
            let summary =
                check::check_seeds(&s, seeds, &opts, |r| println!("{}", check::seed_line(r)));
            let secs = summary.wall_ms / 1e3;
            println!(
                "checked {} seeds ({} events, each run twice) in {:.1} s: {:.1} seeds/s",
                summary.seeds,
                summary.events,
                secs,
                summary.seeds as f64 / secs.max(1e-9)
            );
            let Some(failed) = summary.failed else {
                return Ok(ExitCode::SUCCESS);
            };
            print!("{}", check::failure_report(&failed));
            println!("shrinking…");
            let shrunk = check::shrink(&s, failed.seed, &opts, 40);
            let text = toml::to_string(&shrunk).map_err(|e| e.to_string())?;
            println!(
                "a smaller scenario that still fails with seed {}:\n---\n{text}---",
                failed.seed
            );
            if let Some(path) = shrunk_out {
                std::fs::write(&path, &text)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                println!(
                    "wrote {}; reproduce with: handyman-sim check {} --seeds {}..{}",
                    path.display(),
                    path.display(),
                    failed.seed,
                    failed.seed + 1
                );
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
