//! The core's inputs and outputs besides specs and events: configuration, views, errors.

use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::journal::{AttemptOutcome, InterruptReason};
use crate::policy::PolicyKind;
use crate::spec::GroupConfig;
use crate::{Millis, TaskId};

/// Settings of a core. Part of what makes a journal replay to the same state: replay with
/// the config the journal was written with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreConfig {
    pub policy: PolicyKind,
    /// Seed of the retry-jitter draws.
    pub seed: u64,
    /// How long a worker has to answer an interrupt before its attempt is declared lost.
    pub interrupt_grace_ms: Millis,
    /// Half-life of the decayed run time that fair share compares.
    pub share_half_life_ms: Millis,
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Settings of groups that were never configured.
    pub default_group: GroupConfig,
    /// Slots of pools that were never configured.
    pub default_pool_slots: u32,
    /// For testing checkers only: makes the core break one of its own rules.
    pub injected_bug: Option<InjectedBug>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            policy: PolicyKind::Handyman,
            seed: 0,
            interrupt_grace_ms: 5_000,
            share_half_life_ms: 3_600_000,
            max_payload_bytes: 1 << 20,
            default_group: GroupConfig::default(),
            default_pool_slots: 0,
            injected_bug: None,
        }
    }
}

/// Deliberate bugs, so that tests can show the invariant checkers catch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InjectedBug {
    /// Dispatch ignores group caps.
    IgnoreGroupCaps,
    /// Dispatch ignores pool slots.
    IgnorePoolSlots,
    /// A task is released before its dependencies succeed.
    IgnoreDependencies,
}

/// A task's state. Terminal states are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Waiting,
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Waiting,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Waiting => "waiting",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!("unknown state {s:?}; expected one of: waiting, queued, running, retrying, succeeded, failed, cancelled")
            })
    }
}

/// What a submit did with one spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmitOutcome {
    /// A new task with this id.
    Created(TaskId),
    /// A task with the same dedup key is not terminal yet: this is its id.
    Duplicate(TaskId),
}

impl SubmitOutcome {
    pub fn id(self) -> TaskId {
        match self {
            SubmitOutcome::Created(id) | SubmitOutcome::Duplicate(id) => id,
        }
    }
}

/// Why a spec was refused. Each variant names the field that was wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "code")]
pub enum SubmitError {
    #[error("field `{field}` must not be empty")]
    EmptyField { field: &'static str },
    #[error("field `depends_on`: task {id} does not exist")]
    UnknownDependency { id: TaskId },
    #[error(
        "field `depends_on`: batch entry {index} does not exist (the batch has {len} entries)"
    )]
    UnknownBatchEntry { index: usize, len: usize },
    #[error("field `depends_on`: a task cannot depend on itself (batch entry {index})")]
    SelfDependency { index: usize },
    #[error("field `depends_on`: dependency cycle through batch entries {entries:?}")]
    DependencyCycle { entries: Vec<usize> },
    #[error("field `payload`: {size} bytes is more than the limit of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("field `ageing`: {reason}")]
    InvalidAgeing { reason: String },
    #[error("field `backoff`: {reason}")]
    InvalidBackoff { reason: String },
    #[error("field `max_runtime_ms` must be > 0")]
    ZeroMaxRuntime,
    #[error(
        "field `{field}`: follow-up tasks may depend only on existing tasks, not on batch entries"
    )]
    BatchRefInFollowUp { field: &'static str },
    #[error("follow-up tasks nested deeper than {max} levels")]
    FollowUpsTooDeep { max: usize },
    #[error("batch entry {index}: {error}")]
    InBatch {
        index: usize,
        error: Box<SubmitError>,
    },
}

/// A worker's report about an attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "report")]
pub enum Report {
    /// The handler started running.
    Started,
    /// The attempt ended.
    Finished(AttemptOutcome),
    /// The worker lost the attempt (crashed, disconnected).
    Lost { why: String },
}

/// What became of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportOutcome {
    Accepted,
    /// The report was for an attempt that is no longer current, and was ignored.
    Stale,
}

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The task is now `cancelled`.
    Cancelled,
    /// The task is running: an interrupt was requested; it becomes `cancelled` when the worker
    /// confirms or the grace period ends.
    Interrupting,
    /// The task had already ended in this state.
    AlreadyTerminal(TaskState),
}

/// Errors of inputs that name a task.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TaskError {
    #[error("task {0} does not exist")]
    UnknownTask(TaskId),
}

/// Why a journal could not be replayed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("journal event {seq}: expected sequence number {expected}")]
    Gap { seq: u64, expected: u64 },
    #[error("journal event {seq}: {problem}")]
    Inconsistent { seq: u64, problem: String },
}

/// A pool's handle from [`Core::pool_id`], for callers that ask about the same pools after
/// every step: resolving a name costs a hash and a string compare each time. A handle stays
/// valid for the core it came from and for replays of that core's journal (pools are numbered
/// in the order the journal names them, and never removed).
///
/// [`Core::pool_id`]: crate::Core::pool_id
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolId(pub(crate) crate::queue::PoolIdx);

/// Work for a worker of a pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub id: TaskId,
    /// Report with this number: reports for any other attempt are ignored.
    pub attempt: u32,
    pub kind: CompactString,
    pub pool: CompactString,
    pub group: CompactString,
    pub payload: Arc<[u8]>,
    pub assigned_at: Millis,
    /// The core requests an interrupt at this time.
    pub deadline: Millis,
}

/// A request to interrupt a running attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupt {
    pub id: TaskId,
    pub attempt: u32,
    pub reason: InterruptReason,
}

/// A running attempt, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningView {
    pub attempt: u32,
    pub assigned_at: Millis,
    pub started_at: Option<Millis>,
    pub deadline: Millis,
    pub interrupt: Option<InterruptReason>,
}

/// A task, as seen from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: TaskId,
    pub kind: String,
    pub pool: String,
    pub group: String,
    pub priority: i32,
    pub state: TaskState,
    /// Number of the latest attempt (0 before the first).
    pub attempt: u32,
    /// Attempts that failed (counted against `max_retries`).
    pub failures: u32,
    /// Attempts that ended in "continue" (not counted).
    pub continues: u32,
    pub max_retries: u32,
    pub max_runtime_ms: Millis,
    pub submitted_at: Millis,
    /// When it first became `queued`.
    pub ready_since: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub depends_on: Vec<TaskId>,
    pub dependency_group: Option<String>,
    pub rank: i32,
    pub dedup_key: Option<String>,
    pub running: Option<RunningView>,
    pub retry_due: Option<Millis>,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    pub parent: Option<TaskId>,
}

/// A group, as seen from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub config: GroupConfig,
    pub running: u32,
    pub queued: u32,
    /// Run time charged to the group, decayed to `now`, in ms.
    pub usage_ms: f64,
}

/// A pool, as seen from outside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub slots: u32,
    pub running: u32,
    pub queued: u32,
}

/// How many tasks are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub waiting: u64,
    pub queued: u64,
    pub running: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl StateCounts {
    pub fn get(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Waiting => self.waiting,
            TaskState::Queued => self.queued,
            TaskState::Running => self.running,
            TaskState::Retrying => self.retrying,
            TaskState::Succeeded => self.succeeded,
            TaskState::Failed => self.failed,
            TaskState::Cancelled => self.cancelled,
        }
    }

    pub(crate) fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Waiting => &mut self.waiting,
            TaskState::Queued => &mut self.queued,
            TaskState::Running => &mut self.running,
            TaskState::Retrying => &mut self.retrying,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Cancelled => &mut self.cancelled,
        }
    }

    pub fn total(&self) -> u64 {
        TaskState::ALL.iter().map(|s| self.get(*s)).sum()
    }

    pub fn unfinished(&self) -> u64 {
        self.waiting + self.queued + self.running + self.retrying
    }
}
