//! Handyman's scheduler as a pure state machine.
//!
//! The core never reads a clock, does no I/O, spawns no thread and draws no unseeded random
//! number: every input carries `now` (milliseconds since the driver's epoch). The simulator
//! drives it with virtual time, the host with wall time.
//!
//! The rule for drivers (as in str0m): after every input, drain the outputs
//! ([`Core::drain_journal`], [`Core::drain_interrupts`]) and ask for assignments while slots
//! are free; then sleep until [`Core::next_wakeup`] or the next input.
//!
//! ```
//! use handyman_core::{Core, CoreConfig, TaskSpec, AttemptOutcome, TaskState};
//! let mut core = Core::new(CoreConfig::default());
//! core.set_pool_slots(0, "default", 2);
//! let id = core.submit(0, TaskSpec::new("echo")).unwrap().id();
//! let work = core.next_assignment(1, "default").expect("a free slot and a queued task");
//! assert_eq!(work.id, id);
//! core.report(5, work.id, work.attempt, Report::Finished(AttemptOutcome::Success { output: vec![] })).unwrap();
//! assert_eq!(core.task(id).unwrap().state, TaskState::Succeeded);
//! # use handyman_core::Report;
//! ```

pub mod ageing;
mod digest;
mod explain;
mod group_names;
mod invariants;
pub mod journal;
mod lane_index;
pub mod policy;
mod prefetch;
mod queue;
mod scheduler;
pub mod spec;
mod task_table;
mod types;

pub use ageing::Ageing;
/// The string type of a spec's names (kind, pool, group, …): names of up to 24 bytes live
/// inline, so building and dropping a spec costs no allocation for them.
pub use compact_str::CompactString;
pub use explain::{Explanation, Reason};
pub use invariants::Violation;
pub use journal::{stable_hash, AttemptOutcome, Event, EventKind, InterruptReason, StableHasher};
pub use policy::{Policy, PolicyKind};
pub use scheduler::Core;
pub use spec::{Backoff, DepRef, GroupConfig, TaskSpec, TimeoutMode, DEFAULT_GROUP, DEFAULT_POOL};
pub use types::*;

/// Milliseconds since the driver's epoch.
pub type Millis = u64;
/// A task's id: 1, 2, 3, … in submit order.
pub type TaskId = u64;
