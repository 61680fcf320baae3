//! Guest SDK for Handyman task handlers.
//!
//! A handler is a WebAssembly component implementing the `handyman:task/handler` world
//! (`wit/handyman.wit`). This crate hides the generated bindings: implement [`Handler`] on a
//! type and call [`export_handler!`] once.
//!
//! ```no_run
//! use handyman_guest::{export_handler, Failure, Handler, Outcome, Task};
//!
//! struct Hello;
//!
//! impl Handler for Hello {
//!     fn run(task: Task) -> Result<Outcome, Failure> {
//!         handyman_guest::log::info(&format!("hello from task {}", task.id));
//!         Ok(Outcome::done(b"hi".to_vec()))
//!     }
//! }
//!
//! export_handler!(Hello);
//! ```

// The generated bindings and the exported macro name paths through `handyman_guest::...`, so
// that they resolve the same way inside this crate and inside a handler crate that depends only
// on this one (and not on wit-bindgen).
extern crate self as handyman_guest;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[doc(hidden)]
// Generated code: the lowered `run` takes one argument per flattened field.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handler",
        path: "../../wit",
        runtime_path: "handyman_guest::__private::wit_bindgen::rt",
        default_bindings_module: "handyman_guest::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
    });
}

use bindings::handyman::task::types as wit;

/// One attempt of one task, as handed to [`Handler::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's id, stable across attempts.
    pub id: u64,
    /// The task kind (the handler's registered name).
    pub kind: String,
    /// 1 for the first attempt; every re-run, "continue later" ones included, gets a new one.
    pub attempt: u32,
    /// Opaque bytes given at submit (JSON by convention).
    pub payload: Vec<u8>,
    /// The checkpoint last saved by an earlier attempt of this task, if any.
    pub checkpoint: Option<Vec<u8>>,
    /// Milliseconds left before the host interrupts this attempt, measured when it started.
    pub deadline_ms: u64,
}

impl Task {
    /// Decodes the payload as JSON into `T`.
    ///
    /// A payload that is not valid JSON for `T` can never succeed on a retry, so the error is
    /// a [`Failure::Fatal`] naming the task kind and what serde found wrong.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Failure::fatal(format!("{}: invalid JSON payload: {e}", self.kind)))
    }

    /// The payload as UTF-8 text; a fatal failure when it is not.
    pub fn payload_str(&self) -> Result<&str, Failure> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Failure::fatal(format!("{}: payload is not UTF-8: {e}", self.kind)))
    }

    /// Decodes the checkpoint saved by an earlier attempt as JSON into `T`; `Ok(None)` when
    /// there is none (first attempt, or no attempt saved one yet).
    ///
    /// A checkpoint that does not decode is a fatal failure: retrying would read the same
    /// bytes again, and silently starting over could redo work that must not be redone.
    pub fn checkpoint_json<T: DeserializeOwned>(&self) -> Result<Option<T>, Failure> {
        match &self.checkpoint {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes).map(Some).map_err(|e| {
                Failure::fatal(format!("{}: invalid JSON checkpoint: {e}", self.kind))
            }),
        }
    }
}

impl From<wit::Task> for Task {
    fn from(t: wit::Task) -> Self {
        Task {
            id: t.id,
            kind: t.kind,
            attempt: t.attempt,
            payload: t.payload,
            checkpoint: t.checkpoint,
            deadline_ms: t.deadline_ms,
        }
    }
}

/// How an attempt ended, when it ended by returning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished; the output bytes are stored with the task.
    Done(Vec<u8>),
    /// Saved a checkpoint and wants to be run again at once. Not counted as a retry.
    ContinueLater,
    /// Run again after this many milliseconds. Counted as a retry.
    RetryAfter(u64),
}

impl Outcome {
    /// Finished with these output bytes.
    pub fn done(output: impl Into<Vec<u8>>) -> Self {
        Outcome::Done(output.into())
    }

    /// Finished with no output.
    pub fn done_empty() -> Self {
        Outcome::Done(Vec::new())
    }

    /// Finished with `output` serialized as JSON.
    pub fn done_json<T: Serialize + ?Sized>(output: &T) -> Result<Self, Failure> {
        serde_json::to_vec(output)
            .map(Outcome::Done)
            .map_err(|e| Failure::fatal(format!("cannot serialize output as JSON: {e}")))
    }
}

impl From<Outcome> for wit::Outcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Done(bytes) => wit::Outcome::Done(bytes),
            Outcome::ContinueLater => wit::Outcome::ContinueLater,
            Outcome::RetryAfter(ms) => wit::Outcome::RetryAfter(ms),
        }
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying (a network blip, a busy source). Retried per the task's policy.
    Transient(String),
    /// Retrying cannot help (bad payload, missing table). The task fails at once.
    Fatal(String),
}

impl Failure {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Failure::Transient(message.into())
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Failure::Fatal(message.into())
    }

    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Fatal(m) => m,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(m) => write!(f, "transient: {m}"),
            Failure::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for Failure {}

impl From<Failure> for wit::Failure {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Transient(m) => wit::Failure::Transient(m),
            Failure::Fatal(m) => wit::Failure::Fatal(m),
        }
    }
}

/// Why [`Handler::cleanup`] is being called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CleanupReason {
    /// The attempt overran its max run time and was interrupted.
    Timeout,
    /// The task was cancelled by an operator or because a dependency failed.
    Cancelled,
    /// The host is shutting down and interrupted the attempt.
    Shutdown,
}

impl CleanupReason {
    /// The WIT name of the reason (`timeout`, `cancelled`, `shutdown`), handy in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupReason::Timeout => "timeout",
            CleanupReason::Cancelled => "cancelled",
            CleanupReason::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for CleanupReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<wit::CleanupReason> for CleanupReason {
    fn from(r: wit::CleanupReason) -> Self {
        match r {
            wit::CleanupReason::Timeout => CleanupReason::Timeout,
            wit::CleanupReason::Cancelled => CleanupReason::Cancelled,
            wit::CleanupReason::Shutdown => CleanupReason::Shutdown,
        }
    }
}

/// What a task handler implements. Exported with [`export_handler!`].
///
/// Both functions are associated functions (no `self`): every attempt and every cleanup runs
/// in a fresh instance, so there is no state to keep between calls except what goes through
/// [`checkpoint`] and [`context`].
pub trait Handler {
    /// Runs one attempt of `task`.
    fn run(task: Task) -> Result<Outcome, Failure>;

    /// Called in a fresh instance after the host interrupted or cancelled an attempt, with the
    /// `(key, value)` pairs that attempt stored through [`context::set`], so the handler can
    /// free what it left elsewhere. Best effort: the host logs an error and moves on.
    fn cleanup(context: Vec<(String, String)>, reason: CleanupReason) -> Result<(), String> {
        let _ = (context, reason);
        Ok(())
    }
}

/// Exports a [`Handler`] implementation as the component's `run` and `cleanup`.
///
/// Call it exactly once, at the top level of a `cdylib` crate.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        // The world's export macro wants a plain identifier that implements its `Guest` trait.
        #[doc(hidden)]
        type __HandymanExportedHandler = $crate::__private::Adapter<$handler>;
        $crate::bindings::__export_handler_world!(
            __HandymanExportedHandler with_types_in $crate::bindings
        );
    };
}

#[doc(hidden)]
pub mod __private {
    use super::{bindings, wit, CleanupReason, Handler, Task};
    use std::marker::PhantomData;

    pub use wit_bindgen;

    /// Bridges a [`Handler`] to the generated `Guest` trait, so that handler authors never
    /// see wit-bindgen's types.
    pub struct Adapter<H>(PhantomData<H>);

    impl<H: Handler> bindings::Guest for Adapter<H> {
        fn run(task: wit::Task) -> Result<wit::Outcome, wit::Failure> {
            crate::panic::install_hook();
            H::run(Task::from(task)).map(Into::into).map_err(Into::into)
        }

        fn cleanup(
            context: Vec<wit::ContextEntry>,
            reason: wit::CleanupReason,
        ) -> Result<(), String> {
            crate::panic::install_hook();
            let pairs = context.into_iter().map(|e| (e.key, e.value)).collect();
            H::cleanup(pairs, CleanupReason::from(reason))
        }
    }
}

/// The handler's global allocator: an attempt's first allocations come from the free tail of
/// the initial linear memory, and only what does not fit there goes to the standard allocator.
///
/// Every attempt runs in a fresh instance, and Rust's standard allocator on wasm32 takes its
/// first block by growing linear memory, even when the initial pages have room to spare. A
/// grown memory costs the host two `mprotect` calls per attempt (one to grow, one to shrink
/// the slot back for the next attempt), each a TLB shootdown on every core: for a small
/// handler, the largest part of an attempt. So the pages between the end of the stack and
/// static data (`__heap_base`) and the end of the initial memory are handed out first, by a
/// bump pointer. A freed block there is taken back only if it is the last one handed out;
/// otherwise it stays used until the instance goes, at the end of the attempt. That bounds
/// what can be lost to the size of those pages (64 KiB or so).
///
/// Turn off the default `first-pages-allocator` feature to pick another global allocator.
#[cfg(all(target_arch = "wasm32", feature = "first-pages-allocator"))]
mod first_pages {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::UnsafeCell;

    extern "C" {
        /// Set by the linker: where the stack and static data end.
        static __heap_base: u8;
    }

    const WASM_PAGE: usize = 65_536;

    struct Region {
        start: usize,
        next: usize,
        end: usize,
    }

    pub struct FirstPagesThenSystem(UnsafeCell<Option<Region>>);

    // SAFETY: a component instance runs on one thread (wasm32 without the threads proposal),
    // so the region is never touched by two callers at once.
    unsafe impl Sync for FirstPagesThenSystem {}

    impl FirstPagesThenSystem {
        pub const fn new() -> Self {
            FirstPagesThenSystem(UnsafeCell::new(None))
        }

        /// The region, set up on first use: from `__heap_base` to the memory's size then.
        /// Nothing grows the memory before the first allocation, so that is its initial size,
        /// and every block the standard allocator takes later lies beyond it.
        #[allow(clippy::mut_from_ref)]
        unsafe fn region(&self) -> &mut Region {
            // SAFETY: see `Sync` above; no other reference to the region is alive.
            let region = unsafe { &mut *self.0.get() };
            region.get_or_insert_with(|| {
                let start = core::ptr::addr_of!(__heap_base) as usize;
                let end = core::arch::wasm32::memory_size(0) * WASM_PAGE;
                Region {
                    start,
                    next: start,
                    end: end.max(start),
                }
            })
        }
    }

    impl Region {
        fn holds(&self, ptr: *mut u8) -> bool {
            (self.start..self.end).contains(&(ptr as usize))
        }

        fn take(&mut self, layout: Layout) -> Option<*mut u8> {
            let at = self.next.checked_add(layout.align() - 1)? & !(layout.align() - 1);
            let stop = at.checked_add(layout.size())?;
            if stop > self.end {
                return None;
            }
            self.next = stop;
            Some(at as *mut u8)
        }
    }

    unsafe impl GlobalAlloc for FirstPagesThenSystem {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: single-threaded, see `Sync`.
            let region = unsafe { self.region() };
            match region.take(layout) {
                Some(ptr) => ptr,
                // SAFETY: the caller's layout contract carries over.
                None => unsafe { System.alloc(layout) },
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: single-threaded, see `Sync`.
            let region = unsafe { self.region() };
            if region.holds(ptr) {
                if ptr as usize + layout.size() == region.next {
                    region.next = ptr as usize;
                }
                return;
            }
            // SAFETY: not ours, so the standard allocator handed it out with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: single-threaded, see `Sync`.
            let region = unsafe { self.region() };
            if !region.holds(ptr) {
                // SAFETY: the standard allocator's block, resized by it.
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
            let last = ptr as usize + layout.size() == region.next;
            if let Some(stop) = (ptr as usize).checked_add(new_size) {
                if last && stop <= region.end {
                    // The last block grows or shrinks where it is.
                    region.next = stop;
                    return ptr;
                }
                if new_size <= layout.size() {
                    return ptr;
                }
            }
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return core::ptr::null_mut();
            };
            // SAFETY: a fresh block of the new size, then a copy of the old contents, which
            // are `layout.size()` bytes long and shorter than the new block.
            unsafe {
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    core::ptr::copy_nonoverlapping(ptr, new, layout.size());
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }

    #[global_allocator]
    static ALLOCATOR: FirstPagesThenSystem = FirstPagesThenSystem::new();
}

mod panic {
    use std::sync::Once;

    /// Sends panic messages to the host's log before the trap, since a WASI-free guest has no
    /// stderr and a bare trap would tell the operator nothing about the cause.
    pub(crate) fn install_hook() {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(non-string panic payload)");
                crate::log::error(&format!("handler panicked{location}: {message}"));
            }));
        });
    }
}

/// Durable checkpoints: what a long task has done so far.
pub mod checkpoint {
    use super::{bindings, Failure};
    use serde::Serialize;

    /// Stores `state` durably for this task, replacing any earlier checkpoint; the next
    /// attempt receives it in [`Task::checkpoint`](crate::Task::checkpoint). Errs with the
    /// host's message when the state is larger than the host accepts.
    pub fn save(state: &[u8]) -> Result<(), String> {
        bindings::handyman::task::checkpoint::save(state)
    }

    /// Serializes `state` as JSON and saves it.
    ///
    /// Both errors are fatal: a state that cannot be serialized or that the host refuses as
    /// too large would be the same on the next attempt.
    pub fn save_json<T: Serialize + ?Sized>(state: &T) -> Result<(), Failure> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| Failure::fatal(format!("cannot serialize checkpoint as JSON: {e}")))?;
        save(&bytes).map_err(|e| Failure::fatal(format!("host refused checkpoint: {e}")))
    }
}

/// Key-values kept while running and handed to [`Handler::cleanup`] after an interruption.
pub mod context {
    use super::bindings::handyman::task::context as imp;

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn set(key: &str, value: &str) {
        imp::set(key, value)
    }

    /// The value stored under `key` during this attempt, if any.
    pub fn get(key: &str) -> Option<String> {
        imp::get(key)
    }

    /// Forgets `key`, e.g. once what it named has been freed.
    pub fn remove(key: &str) {
        imp::remove(key)
    }
}

/// Levelled logging into the host's structured log, tagged by the host with task and attempt.
pub mod log {
    use super::bindings::handyman::task::log::write as host_write;
    pub use super::bindings::handyman::task::types::Level;

    /// Writes one log line at `level`.
    pub fn write(level: Level, message: &str) {
        host_write(level, message)
    }

    /// Writes one log line at trace level.
    pub fn trace(message: &str) {
        write(Level::Trace, message)
    }

    /// Writes one log line at debug level.
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }

    /// Writes one log line at info level.
    pub fn info(message: &str) {
        write(Level::Info, message)
    }

    /// Writes one log line at warn level.
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }

    /// Writes one log line at error level.
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// Progress reporting, shown by `handyman status`.
pub mod progress {
    /// Reports the fraction done, from 0.0 to 1.0 (the host clamps values outside).
    pub fn report(fraction: f32) {
        super::bindings::handyman::task::progress::report(fraction)
    }

    /// Reports `done` out of `total` units; nothing when `total` is zero.
    pub fn report_units(done: u64, total: u64) {
        if total > 0 {
            // Precision loss is irrelevant for a progress bar.
            report((done as f64 / total as f64) as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(payload: &[u8], checkpoint: Option<&[u8]>) -> Task {
        Task {
            id: 7,
            kind: "demo".into(),
            attempt: 1,
            payload: payload.to_vec(),
            checkpoint: checkpoint.map(<[u8]>::to_vec),
            deadline_ms: 1000,
        }
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct P {
        n: u32,
    }

    #[test]
    fn payload_json_decodes() {
        assert_eq!(
            task(br#"{"n":3}"#, None).payload_json::<P>(),
            Ok(P { n: 3 })
        );
    }

    #[test]
    fn bad_payload_is_fatal_and_names_the_problem() {
        let err = task(br#"{"n":"x"}"#, None).payload_json::<P>().unwrap_err();
        match err {
            Failure::Fatal(m) => {
                assert!(m.starts_with("demo: invalid JSON payload"), "{m}");
                assert!(m.contains("invalid type"), "{m}");
            }
            other => panic!("expected fatal, got {other:?}"),
        }
        assert!(matches!(
            task(b"\xff", None).payload_str(),
            Err(Failure::Fatal(_))
        ));
    }

    #[test]
    fn checkpoint_json_absent_present_and_corrupt() {
        assert_eq!(task(b"", None).checkpoint_json::<P>(), Ok(None));
        assert_eq!(
            task(b"", Some(br#"{"n":5}"#)).checkpoint_json::<P>(),
            Ok(Some(P { n: 5 }))
        );
        assert!(matches!(
            task(b"", Some(b"nope")).checkpoint_json::<P>(),
            Err(Failure::Fatal(m)) if m.contains("invalid JSON checkpoint")
        ));
    }

    #[test]
    fn outcome_helpers() {
        assert_eq!(Outcome::done_empty(), Outcome::Done(vec![]));
        assert_eq!(
            Outcome::done_json(&serde_json::json!({"a": 1})),
            Ok(Outcome::Done(br#"{"a":1}"#.to_vec()))
        );
    }
}

// Compiles the README's Rust example as a doctest, so the documentation cannot drift from the
// API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
