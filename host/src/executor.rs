//! What the driver needs from whatever runs attempts: the WASM runtime in production, a fake
//! in unit tests.
//!
//! An executor runs one attempt on the calling (blocking) thread, calls the handler's cleanup
//! itself when the attempt was interrupted, and turns everything into the core's
//! [`AttemptOutcome`], so that the driver never looks at how a guest ended.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use handyman_core::{AttemptOutcome, CompactString, TaskId};

/// A kind the executor can run (or knows but could not load).
#[derive(Clone, Debug, PartialEq)]
pub struct KindInfo {
    pub name: String,
    /// The pool its tasks run in.
    pub pool: String,
    /// The longest an attempt of this kind may run.
    pub max_runtime: Duration,
    /// Why its component could not be loaded: its attempts fail with this reason.
    pub load_error: Option<String>,
}

/// One attempt to run.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: TaskId,
    pub attempt: u32,
    pub kind: CompactString,
    pub group: CompactString,
    pub payload: Arc<[u8]>,
    pub checkpoint: Option<Vec<u8>>,
    pub context: BTreeMap<String, String>,
    /// Until the core's deadline for this attempt.
    pub time_limit: Duration,
    /// The core's deadline (driver ms), so that a timeout is reported no earlier.
    pub deadline: u64,
}

/// How an attempt ended, for the core and for storage.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub outcome: AttemptOutcome,
    /// The executor stopped the attempt at its time limit.
    pub timed_out: bool,
    /// A checkpoint saved by this attempt (`None`: keep the previous one).
    pub checkpoint: Option<Vec<u8>>,
    pub context: BTreeMap<String, String>,
    pub progress: Option<f32>,
    /// What became of the cleanup called after an interruption (`None`: not called).
    pub cleanup: Option<String>,
    /// One line for the attempts table and the log.
    pub summary: String,
    pub elapsed: Duration,
}

impl JobResult {
    /// A result with nothing but an outcome.
    pub fn of(outcome: AttemptOutcome) -> JobResult {
        JobResult {
            summary: summary_of(&outcome),
            outcome,
            timed_out: false,
            checkpoint: None,
            context: BTreeMap::new(),
            progress: None,
            cleanup: None,
            elapsed: Duration::ZERO,
        }
    }
}

/// A short description of an outcome.
pub fn summary_of(outcome: &AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Success { output } => format!("success ({} bytes of output)", output.len()),
        AttemptOutcome::Transient { message } => format!("transient failure: {message}"),
        AttemptOutcome::Fatal { message } => format!("fatal failure: {message}"),
        AttemptOutcome::ContinueLater => "continue later".to_string(),
        AttemptOutcome::RetryAfter { delay_ms } => format!("retry after {delay_ms} ms"),
        AttemptOutcome::Interrupted => "interrupted".to_string(),
        AttemptOutcome::Lost { why } => format!("lost: {why}"),
    }
}

/// Why the driver stops a running attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The task was cancelled: the attempt ends as `Interrupted`, cleanup is called.
    Cancel,
    /// The host shuts down: the attempt ends as `ContinueLater`, cleanup is called.
    Shutdown,
}

/// Runs attempts. `Send + Sync`: the worker threads share one.
pub trait Executor: Send + Sync + 'static {
    /// Every kind it knows, sorted by name.
    fn kinds(&self) -> Vec<KindInfo>;
    /// Runs one attempt on this thread until it ends, then its cleanup if it was interrupted.
    fn run(&self, job: Job) -> JobResult;
    /// Stops the running attempt of task `id`, if any.
    fn stop(&self, id: TaskId, reason: StopReason);
    /// Stops every running attempt.
    fn stop_all(&self, reason: StopReason);
}

/// An executor for tests: each kind is a function of the job and a stop flag.
pub mod fake {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;

    /// A handler: gets the job and a way to ask whether it was stopped.
    pub type Handler =
        Arc<dyn Fn(&Job, &dyn Fn() -> Option<StopReason>) -> JobResult + Send + Sync>;

    #[derive(Default)]
    pub struct FakeExecutor {
        kinds: Vec<(KindInfo, Handler)>,
        stops: Mutex<HashMap<TaskId, StopReason>>,
        all: Mutex<Option<StopReason>>,
    }

    impl FakeExecutor {
        pub fn new() -> FakeExecutor {
            FakeExecutor::default()
        }

        pub fn with(mut self, name: &str, pool: &str, handler: Handler) -> FakeExecutor {
            self.kinds.push((
                KindInfo {
                    name: name.to_string(),
                    pool: pool.to_string(),
                    max_runtime: Duration::from_secs(3600),
                    load_error: None,
                },
                handler,
            ));
            self
        }

        /// A handler that succeeds at once with its payload as output.
        pub fn echo() -> Handler {
            Arc::new(|job, _| {
                JobResult::of(AttemptOutcome::Success {
                    output: job.payload.to_vec(),
                })
            })
        }

        /// A handler that runs until stopped or past its time limit.
        pub fn spin() -> Handler {
            Arc::new(|job, stopped| {
                let start = Instant::now();
                loop {
                    if let Some(reason) = stopped() {
                        let mut r = JobResult::of(match reason {
                            StopReason::Cancel => AttemptOutcome::Interrupted,
                            StopReason::Shutdown => AttemptOutcome::ContinueLater,
                        });
                        r.cleanup = Some("ok".to_string());
                        return r;
                    }
                    if start.elapsed() >= job.time_limit {
                        let mut r = JobResult::of(AttemptOutcome::Interrupted);
                        r.timed_out = true;
                        return r;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        }
    }

    impl Executor for FakeExecutor {
        fn kinds(&self) -> Vec<KindInfo> {
            let mut kinds: Vec<KindInfo> = self.kinds.iter().map(|(k, _)| k.clone()).collect();
            kinds.sort_by(|a, b| a.name.cmp(&b.name));
            kinds
        }

        fn run(&self, job: Job) -> JobResult {
            let Some((_, handler)) = self.kinds.iter().find(|(k, _)| *k.name == *job.kind) else {
                return JobResult::of(AttemptOutcome::Fatal {
                    message: format!("unknown kind {}", job.kind),
                });
            };
            let id = job.id;
            let stopped = || {
                let all = *self.all.lock().unwrap_or_else(|e| e.into_inner());
                all.or_else(|| {
                    self.stops
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .copied()
                })
            };
            let result = handler(&job, &stopped);
            self.stops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            result
        }

        fn stop(&self, id: TaskId, reason: StopReason) {
            self.stops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, reason);
        }

        fn stop_all(&self, reason: StopReason) {
            *self.all.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        }
    }
}
