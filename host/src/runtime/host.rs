//! The host side of the `handler` world: the per-attempt state a `Store` carries, the imports
//! the guest calls (`checkpoint`, `context`, `log`, `progress`), the resource limiter, and the
//! bounded stdout/stderr capture for WASI guests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{
    ComponentExportIndex, HasSelf, Instance, InstancePre, Linker, ResourceTable,
};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::attempt::{CancelReason, CancelToken, LogLevel, LogLine, LogSource};

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    imports: { default: trappable },
});

pub(crate) use handyman::task::types;

/// A kind's component, pre-instantiated, with its `run` and `cleanup` exports type-checked
/// and found once, when the kind is loaded. bindgen's `HandlerPre::instantiate` would look
/// both exports up by name on every attempt; here an attempt only types the one it calls, by
/// index.
pub(crate) struct KindPre {
    pre: InstancePre<AttemptState>,
    run: ComponentExportIndex,
    cleanup: ComponentExportIndex,
}

impl KindPre {
    /// Fails when the component's `run` or `cleanup` is missing or has the wrong type.
    pub fn new(pre: InstancePre<AttemptState>) -> wasmtime::Result<KindPre> {
        // bindgen's check of the whole handler world, so that a wrong component is refused
        // when its kind loads, not at its first attempt.
        HandlerPre::new(pre.clone())?;
        let export = |name: &str| {
            pre.component()
                .get_export_index(None, name)
                .ok_or_else(|| wasmtime::format_err!("no export `{name}` found"))
        };
        Ok(KindPre {
            run: export("run")?,
            cleanup: export("cleanup")?,
            pre,
        })
    }

    pub fn instantiate(&self, store: &mut Store<AttemptState>) -> wasmtime::Result<Instance> {
        self.pre.instantiate(store)
    }

    pub fn call_run(
        &self,
        store: &mut Store<AttemptState>,
        instance: &Instance,
        task: &types::Task,
    ) -> wasmtime::Result<Result<types::Outcome, types::Failure>> {
        // Typed once per attempt by index: no name lookup, and the check stays, so that a
        // mismatch is an error rather than undefined behaviour.
        let run = instance
            .get_typed_func::<(&types::Task,), (Result<types::Outcome, types::Failure>,)>(
                &mut *store,
                self.run,
            )?;
        let (result,) = run.call(store, (task,))?;
        Ok(result)
    }

    pub fn call_cleanup(
        &self,
        store: &mut Store<AttemptState>,
        instance: &Instance,
        context: &[types::ContextEntry],
        reason: types::CleanupReason,
    ) -> wasmtime::Result<Result<(), String>> {
        let cleanup = instance.get_typed_func::<
            (&[types::ContextEntry], types::CleanupReason),
            (Result<(), String>,),
        >(&mut *store, self.cleanup)?;
        let (result,) = cleanup.call(store, (context, reason))?;
        Ok(result)
    }
}

/// The most bytes of log lines (guest log and stdio together) kept for one attempt.
pub(crate) const LOG_CAPACITY: usize = 64 << 10;
/// The longest single log line kept; longer lines are cut.
const MAX_LOG_LINE: usize = 4 << 10;
/// The most bytes of stdout (and, separately, stderr) captured for one attempt.
const STDIO_CAPACITY: usize = 64 << 10;
/// The most bytes of keys and values in an attempt's context.
pub(crate) const MAX_CONTEXT_BYTES: usize = 64 << 10;
/// The most core instances, tables and memories one attempt may create.
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES: usize = 1_000;
const MAX_MEMORIES: usize = 100;
/// The most elements one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Why the epoch callback stopped the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interruption {
    Timeout,
    Cancelled(CancelReason),
}

/// Who the attempt is, for the log lines it writes.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub task_id: u64,
    pub kind: Arc<str>,
    pub attempt: u32,
}

/// Everything one attempt's `Store` carries. Built fresh for each attempt and each cleanup.
pub(crate) struct AttemptState {
    pub who: Identity,
    pub max_checkpoint: usize,
    /// The checkpoint saved during this attempt, if any.
    pub checkpoint: Option<Vec<u8>>,
    pub context: BTreeMap<String, String>,
    pub progress: Option<f32>,
    pub logs: LogBuffer,
    /// The guest's last log line when nothing else was called after it: a panic hook's
    /// message, when the guest then traps.
    pub last_line: Option<(LogLevel, String)>,
    pub limiter: Limiter,
    pub cancel: CancelToken,
    pub deadline: Instant,
    pub interrupted: Option<Interruption>,
    /// `None` for a component that imports no WASI interface.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    /// The WASI context's stdout and stderr; `None` with no WASI context, so that attempts of
    /// the (common) components that import no WASI do not allocate and drain them.
    stdio: Option<[CapturedOutput; 2]>,
}

impl AttemptState {
    pub fn new(
        who: Identity,
        max_checkpoint: usize,
        context: BTreeMap<String, String>,
        memory_limit: usize,
        cancel: CancelToken,
        deadline: Instant,
        wasi: Option<wasmtime_wasi::WasiCtxBuilder>,
    ) -> AttemptState {
        let mut stdio = None;
        let wasi = wasi.map(|mut wasi| {
            let stdout = CapturedOutput::new(STDIO_CAPACITY);
            let stderr = CapturedOutput::new(STDIO_CAPACITY);
            wasi.stdout(stdout.clone()).stderr(stderr.clone());
            stdio = Some([stdout, stderr]);
            wasi.build()
        });
        AttemptState {
            who,
            max_checkpoint,
            checkpoint: None,
            context,
            progress: None,
            logs: LogBuffer::new(LOG_CAPACITY),
            last_line: None,
            limiter: Limiter::new(memory_limit),
            cancel,
            deadline,
            interrupted: None,
            wasi,
            table: ResourceTable::new(),
            stdio,
        }
    }

    /// Moves what the guest wrote to stdout and stderr into the log, a line at a time.
    pub fn drain_stdio(&mut self) {
        let Some([stdout, stderr]) = &self.stdio else {
            return;
        };
        for (capture, source, level) in [
            (stdout, LogSource::Stdout, LogLevel::Info),
            (stderr, LogSource::Stderr, LogLevel::Warn),
        ] {
            let (bytes, dropped) = capture.take();
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines().filter(|l| !l.is_empty()) {
                emit(&self.who, source, level, line);
                self.logs.push(LogLine {
                    level,
                    source,
                    message: line.to_owned(),
                });
            }
            if dropped > 0 {
                let message = format!("{dropped} more bytes of {source:?} were dropped");
                emit(&self.who, source, LogLevel::Warn, &message);
                self.logs.push(LogLine {
                    level: LogLevel::Warn,
                    source,
                    message,
                });
            }
        }
    }

    fn note_call(&mut self) {
        self.last_line = None;
    }
}

impl WasiView for AttemptState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            // Only a component that imports WASI can get here, and its attempts are given a
            // context; should one ever not be, it gets one without grants.
            ctx: self
                .wasi
                .get_or_insert_with(|| wasmtime_wasi::WasiCtxBuilder::new().build()),
            table: &mut self.table,
        }
    }
}

/// Adds the handler world's imports and WASI 0.2 (synchronous) to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<AttemptState>) -> wasmtime::Result<()> {
    Handler::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    Ok(())
}

impl handyman::task::types::Host for AttemptState {}

impl handyman::task::checkpoint::Host for AttemptState {
    fn save(&mut self, state: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        self.note_call();
        if state.len() > self.max_checkpoint {
            return Ok(Err(format!(
                "checkpoint of {} bytes is larger than the {} bytes this kind may save",
                state.len(),
                self.max_checkpoint
            )));
        }
        self.checkpoint = Some(state);
        Ok(Ok(()))
    }
}

impl handyman::task::context::Host for AttemptState {
    fn set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        self.note_call();
        let used: usize = self
            .context
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if used + key.len() + value.len() > MAX_CONTEXT_BYTES {
            wasmtime::bail!(
                "context.set({key:?}): the context would exceed {MAX_CONTEXT_BYTES} bytes; \
                 keep ids and watermarks there, not data"
            );
        }
        self.context.insert(key, value);
        Ok(())
    }

    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.note_call();
        Ok(self.context.get(&key).cloned())
    }

    fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        self.note_call();
        self.context.remove(&key);
        Ok(())
    }
}

impl handyman::task::log::Host for AttemptState {
    fn write(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            types::Level::Trace => LogLevel::Trace,
            types::Level::Debug => LogLevel::Debug,
            types::Level::Info => LogLevel::Info,
            types::Level::Warn => LogLevel::Warn,
            types::Level::Error => LogLevel::Error,
        };
        let message = truncate(message, MAX_LOG_LINE);
        emit(&self.who, LogSource::Guest, level, &message);
        self.logs.push(LogLine {
            level,
            source: LogSource::Guest,
            message: message.clone(),
        });
        self.last_line = Some((level, message));
        Ok(())
    }
}

impl handyman::task::progress::Host for AttemptState {
    fn report(&mut self, fraction: f32) -> wasmtime::Result<()> {
        self.note_call();
        if !fraction.is_nan() {
            self.progress = Some(fraction.clamp(0.0, 1.0));
        }
        Ok(())
    }
}

/// Writes one guest line to `tracing`, tagged with the task id, kind and attempt.
fn emit(who: &Identity, source: LogSource, level: LogLevel, message: &str) {
    let (task_id, kind, attempt) = (who.task_id, &*who.kind, who.attempt);
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(
                target: "handyman::guest",
                $level,
                task_id,
                kind,
                attempt,
                source = ?source,
                "{message}"
            )
        };
    }
    match level {
        LogLevel::Trace => event!(tracing::Level::TRACE),
        LogLevel::Debug => event!(tracing::Level::DEBUG),
        LogLevel::Info => event!(tracing::Level::INFO),
        LogLevel::Warn => event!(tracing::Level::WARN),
        LogLevel::Error => event!(tracing::Level::ERROR),
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The log lines of one attempt, up to a byte budget; lines past it are counted, not kept.
pub(crate) struct LogBuffer {
    pub lines: Vec<LogLine>,
    pub dropped: u64,
    bytes: usize,
    capacity: usize,
}

impl LogBuffer {
    fn new(capacity: usize) -> LogBuffer {
        LogBuffer {
            lines: Vec::new(),
            dropped: 0,
            bytes: 0,
            capacity,
        }
    }

    fn push(&mut self, line: LogLine) {
        if self.bytes + line.message.len() > self.capacity {
            self.dropped += 1;
        } else {
            self.bytes += line.message.len();
            self.lines.push(line);
        }
    }
}

/// Limits one attempt's memories (all together), tables and instances; remembers whether the
/// memory limit was what stopped the guest.
pub(crate) struct Limiter {
    memory_limit: usize,
    memory_used: usize,
    /// The total the guest asked for when it was refused.
    pub memory_refused: Option<usize>,
}

impl Limiter {
    fn new(memory_limit: usize) -> Limiter {
        Limiter {
            memory_limit,
            memory_used: 0,
            memory_refused: None,
        }
    }

    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = (self.memory_used + desired).saturating_sub(current);
        if total > self.memory_limit {
            self.memory_refused = Some(total);
            wasmtime::bail!(
                "memory limit reached: the guest asked for {total} bytes of linear memory, \
                 its kind allows {} (raise `memory_limit` in its KIND.toml if that is too low)",
                self.memory_limit
            );
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Bounded in-memory stdout or stderr: keeps the first `capacity` bytes, counts the rest and
/// never fails the guest's write (unlike `MemoryOutputPipe`, which traps when full).
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
    capacity: usize,
}

impl CapturedOutput {
    fn new(capacity: usize) -> CapturedOutput {
        CapturedOutput {
            inner: Arc::new(Mutex::new(Captured {
                bytes: Vec::new(),
                dropped: 0,
                capacity,
            })),
        }
    }

    fn append(&self, data: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = c.capacity.saturating_sub(c.bytes.len());
        let keep = room.min(data.len());
        c.bytes.extend_from_slice(&data[..keep]);
        c.dropped += (data.len() - keep) as u64;
    }

    /// Takes the captured bytes and how many were dropped.
    fn take(&self) -> (Vec<u8>, u64) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = std::mem::take(&mut c.dropped);
        (std::mem::take(&mut c.bytes), dropped)
    }
}

impl wasmtime_wasi::cli::IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl wasmtime_wasi::p2::OutputStream for CapturedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.append(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_keeps_the_first_bytes_and_counts_the_rest() {
        let out = CapturedOutput::new(4);
        out.append(b"abc");
        out.append(b"def");
        assert_eq!(out.take(), (b"abcd".to_vec(), 2));
        assert_eq!(out.take(), (Vec::new(), 0));
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h…");
        assert_eq!(truncate("hello".to_owned(), 10), "hello");
    }

    #[test]
    fn the_limiter_counts_all_memories_together() {
        let mut limiter = Limiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(0, 30, None).unwrap());
        assert!(limiter.memory_growing(60, 70, None).unwrap());
        assert!(limiter.memory_growing(30, 50, None).is_err());
        assert_eq!(limiter.memory_refused, Some(120));
    }
}
