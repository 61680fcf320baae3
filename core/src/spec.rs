//! What a caller hands the core: a task spec, and the settings of groups and pools.

use compact_str::CompactString;
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
// Fields at their default are left out when written: a journal's submit events are mostly
// defaults, and a restart decodes every one of them. `default` fills them back in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Hash)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSpec {
    /// The handler that runs this task.
    pub kind: CompactString,
    /// The worker pool it runs in (namespaced by convention, e.g. `team/gpu`).
    #[serde(skip_serializing_if = "is_default_pool")]
    pub pool: CompactString,
    /// The fair-share unit (a pipeline, a customer source).
    #[serde(skip_serializing_if = "is_default_group")]
    pub group: CompactString,
    /// Base priority: higher runs first. Ageing adds to it while the task waits.
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// How the priority grows while the task waits.
    #[serde(skip_serializing_if = "is_default")]
    pub ageing: Ageing,
    /// Tasks that must succeed before this one may start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<DepRef>,
    /// Exclusive ordering inside a dependency group: a task starts only when no task of a
    /// higher rank in the same dependency group is still unfinished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dependency_group: Option<CompactString>,
    /// See `dependency_group`. Higher rank runs first.
    #[serde(skip_serializing_if = "is_zero")]
    pub rank: i32,
    /// Longest an attempt may run before it is interrupted.
    #[serde(skip_serializing_if = "is_default_max_runtime")]
    pub max_runtime_ms: Millis,
    /// What an interruption at `max_runtime_ms` means.
    #[serde(skip_serializing_if = "is_default")]
    pub on_timeout: TimeoutMode,
    /// How many failed attempts are retried (so at most `max_retries + 1` failed attempts).
    #[serde(skip_serializing_if = "is_default_max_retries")]
    pub max_retries: u32,
    /// Delay before a retry.
    #[serde(skip_serializing_if = "is_default")]
    pub backoff: Backoff,
    /// A second submit with the same key, while the first task is not terminal, returns the
    /// first task's id instead of creating a task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<CompactString>,
    /// Tasks submitted when this one succeeds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_success: Vec<TaskSpec>,
    /// Tasks submitted when this one fails or is cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<TaskSpec>,
    /// Opaque bytes handed to the handler.
    #[serde(with = "bytes_as_text", skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<u8>,
}

const DEFAULT_MAX_RUNTIME_MS: Millis = 30_000;
const DEFAULT_MAX_RETRIES: u32 = 3;

fn is_default_max_runtime(ms: &Millis) -> bool {
    *ms == DEFAULT_MAX_RUNTIME_MS
}

fn is_default_max_retries(n: &u32) -> bool {
    *n == DEFAULT_MAX_RETRIES
}

fn is_default_pool(pool: &str) -> bool {
    pool == DEFAULT_POOL
}

fn is_default_group(group: &str) -> bool {
    group == DEFAULT_GROUP
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            kind: CompactString::const_new(""),
            pool: CompactString::const_new(DEFAULT_POOL),
            group: CompactString::const_new(DEFAULT_GROUP),
            priority: 0,
            ageing: Ageing::None,
            depends_on: Vec::new(),
            dependency_group: None,
            rank: 0,
            max_runtime_ms: DEFAULT_MAX_RUNTIME_MS,
            on_timeout: TimeoutMode::FailAndRetry,
            max_retries: DEFAULT_MAX_RETRIES,
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
    pub fn new(kind: impl Into<CompactString>) -> Self {
        TaskSpec {
            kind: kind.into(),
            ..TaskSpec::default()
        }
    }
    pub fn pool(mut self, pool: impl Into<CompactString>) -> Self {
        self.pool = pool.into();
        self
    }
    pub fn group(mut self, group: impl Into<CompactString>) -> Self {
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
    pub fn rank_in(mut self, dependency_group: impl Into<CompactString>, rank: i32) -> Self {
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
    pub fn dedup_key(mut self, key: impl Into<CompactString>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_left_out_when_written_and_filled_in_when_read() {
        let plain = TaskSpec::new("noop");
        let text = serde_json::to_string(&plain).expect("encode");
        assert_eq!(text, r#"{"kind":"noop"}"#);
        assert_eq!(
            serde_json::from_str::<TaskSpec>(&text).expect("decode"),
            plain
        );
    }

    #[test]
    fn every_field_away_from_its_default_survives_a_round_trip() {
        let full = TaskSpec::new("table-copy")
            .pool("team/gpu")
            .group("customer-7")
            .priority(-3)
            .ageing(Ageing::Linear {
                per_minute: 1.5,
                cap: 10.0,
            })
            .after(41)
            .rank_in("binlog", 2)
            .max_runtime_ms(1)
            .on_timeout(TimeoutMode::Continue)
            .max_retries(0)
            .backoff(Backoff {
                initial_ms: 5,
                ..Backoff::default()
            })
            .dedup_key("k")
            .payload("p")
            .on_success(TaskSpec::new("echo"))
            .on_failure(TaskSpec::new("alert").priority(9));
        let text = serde_json::to_string(&full).expect("encode");
        assert_eq!(
            serde_json::from_str::<TaskSpec>(&text).expect("decode"),
            full
        );
    }
}
