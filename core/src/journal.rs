//! The journal: every state change of the core, in order, with a sequence number.
//!
//! Commands decide; events record what was decided; the core's private `apply` is the only code
//! that changes state. Replaying a journal into an empty core therefore rebuilds exactly the
//! state that produced it, which is how the host recovers after a crash and how the
//! simulator crashes and recovers cores.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::spec::{GroupConfig, TaskSpec};
use crate::{Millis, TaskId};

/// One journal entry.
#[derive(Clone, Debug, PartialEq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// When it took effect: the `now` of the input that produced it, or for a timeout, a
    /// grace expiry or a retry, the time that timer was due (never before an earlier event).
    pub at: Millis,
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum EventKind {
    /// A pool's slot count was set (at start, or changed at run time).
    PoolConfigured { pool: String, slots: u32 },
    /// A group's weight, cap or floor was set.
    GroupConfigured { group: String, config: GroupConfig },
    /// A task was accepted, in state `waiting`; dependencies are resolved to ids.
    /// `parent` is set for follow-up tasks submitted by a callback.
    Submitted {
        id: TaskId,
        spec: Box<TaskSpec>,
        parent: Option<TaskId>,
    },
    /// `waiting` → `queued`: dependencies succeeded and no higher rank is unfinished.
    Released { id: TaskId },
    /// `queued` → `waiting`: a task of higher rank in its dependency group arrived.
    Blocked { id: TaskId },
    /// `queued` → `running`: attempt `attempt` was given to a worker of `pool`.
    Assigned {
        id: TaskId,
        attempt: u32,
        pool: CompactString,
    },
    /// The worker reported that the attempt started.
    Started { id: TaskId, attempt: u32 },
    /// The core asked the worker to interrupt the attempt.
    InterruptRequested {
        id: TaskId,
        attempt: u32,
        reason: InterruptReason,
    },
    /// The attempt ended (the slot is free again); the next event says what becomes of the task.
    AttemptEnded {
        id: TaskId,
        attempt: u32,
        outcome: AttemptOutcome,
        /// Milliseconds between assignment and end, charged to the group's fair share.
        ran_ms: Millis,
    },
    /// `running` → `retrying` until `due`.
    RetryScheduled { id: TaskId, due: Millis },
    /// `running` or `retrying` → `queued` (a retry whose backoff elapsed, or a "continue").
    Requeued { id: TaskId },
    /// → `succeeded` (terminal).
    Succeeded { id: TaskId },
    /// → `failed` (terminal).
    Failed { id: TaskId, reason: String },
    /// → `cancelled` (terminal).
    Cancelled { id: TaskId, reason: String },
    /// A report for an attempt that is not the current one was ignored (fencing).
    StaleReport {
        id: TaskId,
        attempt: u32,
        current: u32,
    },
}

impl EventKind {
    /// The task this event is about, if any.
    pub fn task(&self) -> Option<TaskId> {
        use EventKind::*;
        match self {
            PoolConfigured { .. } | GroupConfigured { .. } => None,
            Submitted { id, .. }
            | Released { id }
            | Blocked { id }
            | Assigned { id, .. }
            | Started { id, .. }
            | InterruptRequested { id, .. }
            | AttemptEnded { id, .. }
            | RetryScheduled { id, .. }
            | Requeued { id }
            | Succeeded { id }
            | Failed { id, .. }
            | Cancelled { id, .. }
            | StaleReport { id, .. } => Some(*id),
        }
    }
}

/// Why the core asks a worker to interrupt an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptReason {
    /// The attempt reached its max run time.
    Timeout,
    /// The task was cancelled while running.
    Cancel,
}

/// How an attempt ended, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum AttemptOutcome {
    Success {
        #[serde(with = "crate::spec::bytes_as_text")]
        output: Vec<u8>,
    },
    /// Worth retrying.
    Transient { message: String },
    /// Retrying cannot help.
    Fatal { message: String },
    /// Saved a checkpoint; run again at once, not counted as a retry.
    ContinueLater,
    /// Run again after `delay_ms`; counted as a retry.
    RetryAfter { delay_ms: Millis },
    /// Stopped after an interrupt request (timeout or cancel).
    Interrupted,
    /// The worker vanished, crashed, or did not answer an interrupt within the grace period.
    Lost { why: String },
}

impl AttemptOutcome {
    /// Whether this ending counts against `max_retries`.
    pub fn counts_as_failure(&self) -> bool {
        !matches!(
            self,
            AttemptOutcome::Success { .. } | AttemptOutcome::ContinueLater
        )
    }
}

/// A hasher whose output never changes between runs, machines or Rust versions (FNV-1a, 64
/// bit), for journal hashes and state digests that tests compare byte for byte.
#[derive(Clone, Debug)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // usize hashes as 8 bytes on every platform, so that digests match across them.
    fn write_usize(&mut self, i: usize) {
        self.write(&(i as u64).to_le_bytes())
    }
}

/// A stable 64-bit hash of anything that implements `Hash` (events, specs).
pub fn stable_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut hasher = StableHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}
