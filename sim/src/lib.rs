//! The Handyman deterministic simulator.
//!
//! It drives the real `handyman-core` with a virtual clock and seeded `rand_chacha` RNGs:
//! workloads from scenario files ([`scenario`], [`workload`]), simulated workers and faults
//! ([`sim`]), metrics ([`metrics`]), outputs and plots ([`output`]), parameter sweeps
//! ([`sweep`]) and the fuzzer ([`check`]). See `sim/README.md`.

pub mod arrivals;
pub mod check;
pub mod fasthash;
pub mod metrics;
pub mod output;
pub mod prefault;
pub mod scenario;
pub mod sim;
pub mod sweep;
pub mod workload;

pub use scenario::{Faults, Scenario, ScenarioError};
pub use sim::{run, Options, RunOutput, ViolationRecord};
