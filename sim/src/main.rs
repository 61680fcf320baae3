use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use handyman_core::{InjectedBug, PolicyKind};
use handyman_sim::{metrics, Options, Scenario};

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
        #[arg(long)]
        policy: Option<PolicyKind>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Multiplies the workload's counts (e.g. 0.01 for a small hevo-day).
        #[arg(long)]
        scale: Option<f64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenario,
            seed,
            policy,
            json,
            out: _,
            scale,
        } => {
            let mut s = match Scenario::load(&scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(scale) = scale {
                s.scale = scale;
            }
            let _ = InjectedBug::IgnoreGroupCaps;
            let out = handyman_sim::run(
                &s,
                Options {
                    seed,
                    policy,
                    ..Options::default()
                },
            );
            let summary = metrics::summarise(&out, &s.name);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).unwrap_or_default()
                );
            }
            if summary.invariant_violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
