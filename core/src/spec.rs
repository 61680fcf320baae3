//! What a caller hands the core: a task spec, and the settings of groups and pools.

use serde::{Deserialize, Serialize};

use crate::ageing::Ageing;
use crate::{Millis, TaskId};

/// Everything needed to accept a task. Validated by [`crate::Core::submit`].
///
/// ```
/// use handyman_core::{TaskSpec, Ageing};
/// let spec = TaskSpec::new("table-copy")
///     .group("pipeline-42")
///     .priority(5)
///     .ageing(Ageing::Linear { per_minute: 1.0, cap: 10.0 })
///     .max_runtime_ms(60_000);
/// assert_eq!(spec.kind, "table-copy");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Hash)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSpec {
    /// The handler that runs this task.
    pub kind: String,
    /// The worker pool it runs in (namespaced by convention, e.g. `team/gpu`).
    pub pool: String,
    /// The fair-share unit (a pipeline, a customer source).
    pub group: String,
    /// Base priority: higher runs first. Ageing adds to it while the task waits.
    pub priority: i32,
    /// How the priority grows while the task waits.
    pub ageing: Ageing,
    /// Tasks that must succeed before this one may start.
    pub depends_on: Vec<DepRef>,
    /// Exclusive ordering inside a dependency group: a task starts only when no task of a
    /// higher rank in the same dependency group is still unfinished.
    pub dependency_group: Option<String>,
    /// See `dependency_group`. Higher rank runs first.
    pub rank: i32,
    /// Longest an attempt may run before it is interrupted.
    pub max_runtime_ms: Millis,
    /// What an interruption at `max_runtime_ms` means.
    pub on_timeout: TimeoutMode,
    /// How many failed attempts are retried (so at most `max_retries + 1` failed attempts).
    pub max_retries: u32,
    /// Delay before a retry.
    pub backoff: Backoff,
    /// A second submit with the same key, while the first task is not terminal, returns the
    /// first task's id instead of creating a task.
    pub dedup_key: Option<String>,
    /// Tasks submitted when this one succeeds.
    pub on_success: Vec<TaskSpec>,
    /// Tasks submitted when this one fails or is cancelled.
    pub on_failure: Vec<TaskSpec>,
    /// Opaque bytes handed to the handler.
    #[serde(with = "bytes_as_text")]
    pub payload: Vec<u8>,
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            kind: String::new(),
            pool: DEFAULT_POOL.to_string(),
            group: DEFAULT_GROUP.to_string(),
            priority: 0,
            ageing: Ageing::None,
            depends_on: Vec::new(),
            dependency_group: None,
            rank: 0,
            max_runtime_ms: 30_000,
            on_timeout: TimeoutMode::FailAndRetry,
            max_retries: 3,
            backoff: Backoff::default(),
            dedup_key: None,
            on_success: Vec::new(),
            on_failure: Vec::new(),
            payload: Vec::new(),
        }
    }
}

/// The pool a task runs in unless its spec names another.
pub const DEFAULT_POOL: &str = "default";
/// The group a task belongs to unless its spec names another.
pub const DEFAULT_GROUP: &str = "default";

impl TaskSpec {
    /// A spec with defaults for everything but the kind.
    pub fn new(kind: impl Into<String>) -> Self {
        TaskSpec {
            kind: kind.into(),
            ..TaskSpec::default()
        }
    }
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = pool.into();
        self
    }
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    pub fn ageing(mut self, ageing: Ageing) -> Self {
        self.ageing = ageing;
        self
    }
    pub fn after(mut self, dependency: TaskId) -> Self {
        self.depends_on.push(DepRef::Task(dependency));
        self
    }
    pub fn after_batch_entry(mut self, index: usize) -> Self {
        self.depends_on.push(DepRef::Batch(index));
        self
    }
    pub fn rank_in(mut self, dependency_group: impl Into<String>, rank: i32) -> Self {
        self.dependency_group = Some(dependency_group.into());
        self.rank = rank;
        self
    }
    pub fn max_runtime_ms(mut self, ms: Millis) -> Self {
        self.max_runtime_ms = ms;
        self
    }
    pub fn on_timeout(mut self, mode: TimeoutMode) -> Self {
        self.on_timeout = mode;
        self
    }
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }
    pub fn on_success(mut self, follow_up: TaskSpec) -> Self {
        self.on_success.push(follow_up);
        self
    }
    pub fn on_failure(mut self, follow_up: TaskSpec) -> Self {
        self.on_failure.push(follow_up);
        self
    }
}

/// A dependency: an accepted task, or another entry of the same batch submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepRef {
    Task(TaskId),
    /// Index into the batch passed to [`crate::Core::submit_batch`].
    Batch(usize),
}

/// What reaching `max_runtime_ms` means for a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeoutMode {
    /// The attempt failed: retry with backoff while retries remain.
    #[default]
    FailAndRetry,
    /// The attempt used its time slice: re-queue at once, keep the checkpoint, and do not
    /// count it as a retry (long tasks that save checkpoints).
    Continue,
}

/// Exponential backoff with jitter: the n-th retry (n from 1) waits
/// `min(max_ms, initial_ms * multiplier^(n-1))`, scaled by a factor drawn uniformly from
/// `[1 - jitter, 1 + jitter]` with the driver's seed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: Millis,
    pub multiplier: f64,
    pub max_ms: Millis,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 300_000,
            jitter: 0.2,
        }
    }
}

impl std::hash::Hash for Backoff {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.initial_ms.hash(state);
        self.multiplier.to_bits().hash(state);
        self.max_ms.hash(state);
        self.jitter.to_bits().hash(state);
    }
}

/// Fair-share and parallelism settings of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupConfig {
    /// Relative share of the machines while groups contend (≥ 1).
    pub weight: u32,
    /// Hard cap on attempts running at once, in all pools together.
    pub cap: u32,
    /// Attempts the group may always run (if slots are free), whatever the weights say.
    pub floor: u32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            weight: 1,
            cap: u32::MAX,
            floor: 1,
        }
    }
}

pub(crate) mod bytes_as_text {
    //! Payloads and outputs are bytes; in JSON they are written as a string when they are
    //! UTF-8 (the common case: JSON payloads), and as an array of numbers otherwise.
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => text.serialize(s),
            Err(_) => bytes.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(text) => text.into_bytes(),
            Repr::Bytes(bytes) => bytes,
        })
    }
}
