//! What goes into an attempt and what comes out of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One attempt of one task, as the driver hands it to [`Runtime::run_attempt`].
///
/// [`Runtime::run_attempt`]: super::Runtime::run_attempt
#[derive(Debug, Clone, Default)]
pub struct AttemptInput {
    /// The task's id, stable across attempts.
    pub task_id: u64,
    /// 1 for the first attempt; every re-run, "continue later" ones too, gets the next number.
    pub attempt: u32,
    /// The bytes given at submit.
    pub payload: Vec<u8>,
    /// The checkpoint last saved by an earlier attempt, if any.
    pub checkpoint: Option<Vec<u8>>,
    /// The context the previous attempt left (empty for the first one).
    pub context: BTreeMap<String, String>,
    /// How long this attempt may run; `None` (or more than the kind's `max_runtime`) means the
    /// kind's `max_runtime`.
    pub time_limit: Option<Duration>,
    /// Stops the attempt from another thread; see also [`Runtime::cancel`].
    ///
    /// [`Runtime::cancel`]: super::Runtime::cancel
    pub cancel: CancelToken,
}

/// Everything an attempt produced. The driver stores `checkpoint` and `context` durably before
/// it reports the outcome to the core.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    /// How the attempt ended.
    pub outcome: AttemptOutcome,
    /// The checkpoint this attempt saved (the last one, if it saved several); `None` if it saved
    /// none, in which case the previous one stays.
    pub checkpoint: Option<Vec<u8>>,
    /// The context as the attempt left it; hand it to [`Runtime::run_cleanup`] after a timeout
    /// or cancellation, and to the next attempt.
    ///
    /// [`Runtime::run_cleanup`]: super::Runtime::run_cleanup
    pub context: BTreeMap<String, String>,
    /// The last fraction the guest reported, if any (clamped to 0..=1).
    pub progress: Option<f32>,
    /// The guest's log lines and captured stdout/stderr, oldest first, up to a byte budget.
    pub logs: Vec<LogLine>,
    /// Log lines dropped because the budget was spent.
    pub logs_dropped: u64,
    /// Wall time from the start of instantiation to the end of the call.
    pub elapsed: Duration,
    /// Fuel the attempt burned (instructions, roughly).
    pub fuel_consumed: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The handler finished; its output.
    Done(Vec<u8>),
    /// The handler saved a checkpoint and asks to be run again at once (not a retry).
    ContinueLater,
    /// The handler asks to be run again after this long (a retry).
    RetryAfter(Duration),
    /// The handler failed in a way worth retrying.
    Transient(String),
    /// The handler failed in a way retrying cannot help.
    Fatal(String),
    /// The attempt overran its time limit and was interrupted.
    Timeout,
    /// The attempt burned its kind's whole fuel budget.
    OutOfFuel,
    /// The attempt was stopped from outside.
    Cancelled(CancelReason),
    /// The guest trapped (or could not even be instantiated).
    Trap(TrapInfo),
}

impl AttemptOutcome {
    /// The reason to give `cleanup` after this outcome, if it calls for one.
    pub fn cleanup_reason(&self) -> Option<CleanupReason> {
        match self {
            AttemptOutcome::Timeout | AttemptOutcome::OutOfFuel => Some(CleanupReason::Timeout),
            AttemptOutcome::Cancelled(CancelReason::Cancelled) => Some(CleanupReason::Cancelled),
            AttemptOutcome::Cancelled(CancelReason::Shutdown) => Some(CleanupReason::Shutdown),
            _ => None,
        }
    }
}

/// Why and where a guest trapped.
#[derive(Debug, Clone, PartialEq)]
pub struct TrapInfo {
    /// What kind of trap.
    pub kind: TrapKind,
    /// The host's one-line description.
    pub message: String,
    /// The guest's last error-level log line when it trapped right after writing it: the panic
    /// message of a Rust guest whose SDK installs a panic hook.
    pub guest_message: Option<String>,
    /// wasmtime's full report, with the guest's backtrace when there is one.
    pub detail: String,
}

/// The kinds of trap the host tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The guest tried to grow its memory past its kind's `memory_limit`.
    MemoryLimit,
    /// The guest's call stack overflowed.
    StackOverflow,
    /// The guest executed `unreachable` (a Rust panic or abort).
    Unreachable,
    /// The guest could not be instantiated (no free slot, initial memory above the limit...).
    Instantiation,
    /// Any other trap or failed host call.
    Other,
}

/// Why an attempt was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// An operator cancelled the task, or one of its dependencies failed.
    Cancelled,
    /// The host is shutting down.
    Shutdown,
}

/// Why `cleanup` is called (the WIT `cleanup-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CleanupReason {
    /// The attempt overran its time limit.
    Timeout,
    /// The task was cancelled.
    Cancelled,
    /// The host is shutting down.
    Shutdown,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// The `log.write` import.
    Guest,
    /// The guest's WASI stdout (level `Info`).
    Stdout,
    /// The guest's WASI stderr (level `Warn`).
    Stderr,
}

/// One line the guest logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
}

/// Stops a running attempt from any thread. Cheap to clone; all clones share one flag.
///
/// The guest is stopped at its next epoch tick (every ~10 ms) while it runs WebAssembly code;
/// a guest blocked in a host call is stopped when that call returns.
///
/// ```
/// use handyman_host::runtime::{CancelReason, CancelToken};
/// let token = CancelToken::new();
/// let for_the_other_thread = token.clone();
/// for_the_other_thread.cancel(CancelReason::Cancelled);
/// assert_eq!(token.reason(), Some(CancelReason::Cancelled));
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicU8>);

const NOT_CANCELLED: u8 = 0;
const CANCELLED: u8 = 1;
const SHUTDOWN: u8 = 2;

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks the attempt to stop. The first reason given wins.
    pub fn cancel(&self, reason: CancelReason) {
        let value = match reason {
            CancelReason::Cancelled => CANCELLED,
            CancelReason::Shutdown => SHUTDOWN,
        };
        let _ = self
            .0
            .compare_exchange(NOT_CANCELLED, value, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Why the attempt was asked to stop, if it was.
    pub fn reason(&self) -> Option<CancelReason> {
        match self.0.load(Ordering::SeqCst) {
            CANCELLED => Some(CancelReason::Cancelled),
            SHUTDOWN => Some(CancelReason::Shutdown),
            _ => None,
        }
    }

    /// Whether two tokens share one flag.
    pub fn same_as(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
