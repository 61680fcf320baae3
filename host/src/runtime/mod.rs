//! The WebAssembly execution layer: runs one attempt of a task in its kind's handler component.
//!
//! One [`Runtime`] holds one wasmtime `Engine` (component model, pooling allocator, epoch
//! interruption, fuel), an epoch ticker thread (every 10 ms), and the loaded kinds, each
//! compiled once and pre-instantiated (`InstancePre`) against a linker that offers the
//! `handyman:task/handler` imports and WASI 0.2 with an empty context. Every attempt gets a
//! fresh `Store`, with its kind's memory limit, time limit and fuel budget, so that nothing one
//! attempt does survives into the next.
//!
//! ```no_run
//! use handyman_host::runtime::{AttemptInput, AttemptOutcome, Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! runtime.load_kind("plugins/dist".as_ref(), "echo")?;
//! let result = runtime.run_attempt(
//!     "echo",
//!     AttemptInput { task_id: 7, attempt: 1, payload: b"hi".to_vec(), ..Default::default() },
//! )?;
//! assert_eq!(result.outcome, AttemptOutcome::Done(b"hi".to_vec()));
//! # Ok::<(), handyman_host::runtime::RuntimeError>(())
//! ```
//!
//! What a guest does never makes the host panic or fail: traps, overruns and bad results all
//! come back as an [`AttemptOutcome`]. Only the host's own problems (an unknown kind, a broken
//! `KIND.toml`) are a [`RuntimeError`].

mod attempt;
mod config;
mod engine;
mod error;
mod host;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

pub use attempt::{
    AttemptInput, AttemptOutcome, AttemptResult, CancelReason, CancelToken, CleanupReason,
    LogLevel, LogLine, LogSource, TrapInfo, TrapKind,
};
pub use config::{parse_size, DirGrant, EnvGrant, Grants, KindConfig};
pub use error::{ConfigError, RuntimeError};

use host::{AttemptState, Identity, Interruption, KindPre};

/// How a [`Runtime`] is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached (`None`: compile on every load). Only files this
    /// runtime wrote are ever loaded from it; give it a directory of its own.
    pub cache_dir: Option<PathBuf>,
    /// How many attempts (and cleanups) may run at once: the pooling allocator reserves
    /// address space for this many instances up front.
    pub max_instances: u32,
    /// How often the epoch ticks: the granularity of time limits and cancellation.
    pub epoch_tick: Duration,
    /// How long `cleanup` may run.
    pub cleanup_time_limit: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 256,
            epoch_tick: Duration::from_millis(10),
            cleanup_time_limit: Duration::from_secs(10),
        }
    }
}

/// Each kind of a directory with the result of loading it, by name.
pub type LoadResults = Vec<(String, Result<(), RuntimeError>)>;

/// A loaded kind: its configuration and its pre-instantiated component.
struct Kind {
    name: Arc<str>,
    config: KindConfig,
    pre: KindPre,
    /// Whether the component imports any WASI interface. Most Rust guests import none, and
    /// building a WASI context (random sources, clocks, grants) for each of their attempts
    /// would be wasted time.
    wasi: bool,
}

/// Runs handler components. `Send + Sync`: share one per process, call
/// [`run_attempt`](Runtime::run_attempt) from blocking threads.
pub struct Runtime {
    engine: Engine,
    linker: Linker<AttemptState>,
    // Both maps are looked up on every attempt, by keys the operator and the core choose (a
    // kind name, a task id): Fx hashing, not SipHash, which showed up in attempt profiles.
    kinds: RwLock<FxHashMap<String, Arc<Kind>>>,
    running: Mutex<FxHashMap<u64, CancelToken>>,
    config: RuntimeConfig,
    _ticker: engine::Ticker,
}

impl Runtime {
    /// Builds the engine and the linker and starts the epoch ticker (stopped on drop).
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let engine = engine::build_engine(config.max_instances)?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let ticker = engine::Ticker::start(engine.clone(), config.epoch_tick)?;
        Ok(Runtime {
            engine,
            linker,
            kinds: RwLock::new(FxHashMap::default()),
            running: Mutex::new(FxHashMap::default()),
            config,
            _ticker: ticker,
        })
    }

    /// The engine, for tools that compile or inspect components with the same settings.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads every `KIND.wasm` of `dir` (with its `KIND.toml`, if any). Returns each kind's
    /// name with the result of loading it: one broken plugin does not stop the others.
    pub fn load_dir(&self, dir: &Path) -> Result<LoadResults, RuntimeError> {
        let io = |source| RuntimeError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    names.push(stem.to_owned());
                }
            }
        }
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let result = self.load_kind(dir, &name);
                (name, result)
            })
            .collect())
    }

    /// Loads `DIR/KIND.wasm` with `DIR/KIND.toml` (defaults when absent), replacing a kind
    /// of that name loaded earlier. Attempts already running keep the old version.
    pub fn load_kind(&self, dir: &Path, kind: &str) -> Result<(), RuntimeError> {
        check_kind_name(kind)?;
        let toml_path = dir.join(format!("{kind}.toml"));
        let config = match std::fs::read_to_string(&toml_path) {
            Ok(text) => KindConfig::from_toml(&text).map_err(|source| RuntimeError::Config {
                kind: kind.to_owned(),
                path: toml_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KindConfig::default(),
            Err(source) => {
                return Err(RuntimeError::Io {
                    path: toml_path,
                    source,
                })
            }
        };
        let wasm_path = dir.join(format!("{kind}.wasm"));
        let bytes = std::fs::read(&wasm_path).map_err(|source| RuntimeError::Io {
            path: wasm_path,
            source,
        })?;
        self.add_kind(kind, &bytes, config)
    }

    /// Registers `kind` from a component's bytes (binary, or text when wasmtime's `wat`
    /// feature is on) and its configuration.
    pub fn add_kind(
        &self,
        kind: &str,
        component: &[u8],
        config: KindConfig,
    ) -> Result<(), RuntimeError> {
        check_kind_name(kind)?;
        for dir in &config.grants.dirs {
            if !dir.host.is_dir() {
                return Err(RuntimeError::Grant {
                    kind: kind.to_owned(),
                    host: dir.host.clone(),
                    message: "not a directory".to_owned(),
                });
            }
        }
        let component = engine::compile(
            &self.engine,
            kind,
            component,
            self.config.cache_dir.as_deref(),
        )?;
        let pre = self.pre_instantiate(kind, &component)?;
        let wasi = component
            .component_type()
            .imports(&self.engine)
            .any(|(name, _)| name.starts_with("wasi:"));
        let loaded = Kind {
            name: kind.into(),
            config,
            pre,
            wasi,
        };
        self.kinds
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_owned(), Arc::new(loaded));
        tracing::info!(kind, "loaded handler");
        Ok(())
    }

    /// Type-checks `component` against the linker (its imports) and the handler world (its
    /// exports).
    fn pre_instantiate(&self, kind: &str, component: &Component) -> Result<KindPre, RuntimeError> {
        let wrong = |e: wasmtime::Error| RuntimeError::WrongWorld {
            kind: kind.to_owned(),
            message: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(component).map_err(wrong)?;
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let missing: Vec<&str> = ["run", "cleanup"]
            .into_iter()
            .filter(|name| !exports.iter().any(|e| e == name))
            .collect();
        if !missing.is_empty() {
            return Err(RuntimeError::WrongWorld {
                kind: kind.to_owned(),
                message: format!(
                    "it lacks the export(s) `{}` (it exports: {})",
                    missing.join("`, `"),
                    if exports.is_empty() {
                        "nothing".to_owned()
                    } else {
                        exports.join(", ")
                    }
                ),
            });
        }
        KindPre::new(instance_pre).map_err(wrong)
    }

    /// The loaded kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .kinds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The configuration a loaded kind runs with.
    pub fn kind_config(&self, kind: &str) -> Option<KindConfig> {
        self.kind(kind).ok().map(|k| k.config.clone())
    }

    fn kind(&self, kind: &str) -> Result<Arc<Kind>, RuntimeError> {
        self.kinds
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kind)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownKind(kind.to_owned()))
    }

    /// Stops the running attempt of `task_id`, if there is one; returns whether there was.
    pub fn cancel(&self, task_id: u64, reason: CancelReason) -> bool {
        match self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&task_id)
        {
            Some(token) => {
                token.cancel(reason);
                true
            }
            None => false,
        }
    }

    /// Stops every running attempt (at shutdown); returns how many there were.
    pub fn cancel_all(&self, reason: CancelReason) -> usize {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for token in running.values() {
            token.cancel(reason);
        }
        running.len()
    }

    /// Runs one attempt of a task of `kind`, blocking the calling thread until the handler
    /// returns, traps, overruns its time limit, burns its fuel, or is cancelled.
    ///
    /// Fails only when `kind` is not loaded; everything the guest does is in the result.
    pub fn run_attempt(
        &self,
        kind: &str,
        input: AttemptInput,
    ) -> Result<AttemptResult, RuntimeError> {
        let kind = self.kind(kind)?;
        let limit = input
            .time_limit
            .map_or(kind.config.max_runtime, |t| t.min(kind.config.max_runtime));
        let _registration = Registration::new(self, input.task_id, &input.cancel);
        let who = Identity {
            task_id: input.task_id,
            kind: kind.name.clone(),
            attempt: input.attempt,
        };
        let started = Instant::now();
        let mut store = match self.new_store(&kind, who, input.context, input.cancel, limit) {
            Ok(store) => store,
            Err(e) => {
                return Ok(AttemptResult {
                    outcome: AttemptOutcome::Trap(TrapInfo {
                        kind: TrapKind::Instantiation,
                        message: e.to_string(),
                        guest_message: None,
                        detail: format!("{e:?}"),
                    }),
                    checkpoint: None,
                    context: BTreeMap::new(),
                    progress: None,
                    logs: Vec::new(),
                    logs_dropped: 0,
                    elapsed: started.elapsed(),
                    fuel_consumed: 0,
                })
            }
        };
        let task = host::types::Task {
            id: input.task_id,
            kind: kind.name.to_string(),
            attempt: input.attempt,
            payload: input.payload,
            checkpoint: input.checkpoint,
            deadline_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        };
        let outcome = match kind.pre.instantiate(&mut store) {
            Err(e) => classify_error(store.data(), e, true),
            Ok(instance) => match kind.pre.call_run(&mut store, &instance, &task) {
                Ok(Ok(host::types::Outcome::Done(output))) => AttemptOutcome::Done(output),
                Ok(Ok(host::types::Outcome::ContinueLater)) => AttemptOutcome::ContinueLater,
                Ok(Ok(host::types::Outcome::RetryAfter(ms))) => {
                    AttemptOutcome::RetryAfter(Duration::from_millis(ms))
                }
                Ok(Err(host::types::Failure::Transient(m))) => AttemptOutcome::Transient(m),
                Ok(Err(host::types::Failure::Fatal(m))) => AttemptOutcome::Fatal(m),
                Err(e) => classify_error(store.data(), e, false),
            },
        };
        let elapsed = started.elapsed();
        let fuel_consumed = fuel_budget(&kind.config).saturating_sub(store.get_fuel().unwrap_or(0));
        let mut state = store.into_data();
        state.drain_stdio();
        log_outcome(&state.who, &outcome, elapsed);
        Ok(AttemptResult {
            outcome,
            checkpoint: state.checkpoint,
            context: state.context,
            progress: state.progress,
            logs: state.logs.lines,
            logs_dropped: state.logs.dropped,
            elapsed,
            fuel_consumed,
        })
    }

    /// Calls the handler's `cleanup` with the context an interrupted attempt left, in a fresh
    /// instance with [`RuntimeConfig::cleanup_time_limit`]. Best effort: the error says why it
    /// failed (the guest's own error, a trap, an overrun, an unknown kind).
    pub fn run_cleanup(
        &self,
        kind: &str,
        task_id: u64,
        context: &BTreeMap<String, String>,
        reason: CleanupReason,
    ) -> Result<(), String> {
        let kind = self.kind(kind).map_err(|e| e.to_string())?;
        let who = Identity {
            task_id,
            kind: kind.name.clone(),
            attempt: 0,
        };
        let limit = self.config.cleanup_time_limit;
        let mut store = self
            .new_store(&kind, who, context.clone(), CancelToken::new(), limit)
            .map_err(|e| format!("cannot set up cleanup: {e}"))?;
        let entries: Vec<host::types::ContextEntry> = context
            .iter()
            .map(|(key, value)| host::types::ContextEntry {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        let reason = match reason {
            CleanupReason::Timeout => host::types::CleanupReason::Timeout,
            CleanupReason::Cancelled => host::types::CleanupReason::Cancelled,
            CleanupReason::Shutdown => host::types::CleanupReason::Shutdown,
        };
        let result = match kind.pre.instantiate(&mut store) {
            Err(e) => Err(describe(&classify_error(store.data(), e, true))),
            Ok(instance) => match kind
                .pre
                .call_cleanup(&mut store, &instance, &entries, reason)
            {
                Ok(result) => result,
                Err(e) => Err(describe(&classify_error(store.data(), e, false))),
            },
        };
        store.data_mut().drain_stdio();
        if let Err(message) = &result {
            tracing::warn!(task_id, kind = %kind.name, error = %message, "cleanup failed");
        }
        result
    }

    /// A fresh store for one attempt or cleanup: limits, fuel, and the epoch callback that
    /// enforces the time limit and cancellation.
    fn new_store(
        &self,
        kind: &Kind,
        who: Identity,
        context: BTreeMap<String, String>,
        cancel: CancelToken,
        limit: Duration,
    ) -> Result<Store<AttemptState>, RuntimeError> {
        let config = &kind.config;
        let wasi = if kind.wasi {
            Some(wasi_for(&kind.name, config)?)
        } else {
            None
        };
        let deadline = Instant::now() + limit;
        let state = AttemptState::new(
            who,
            usize::try_from(config.max_checkpoint).unwrap_or(usize::MAX),
            context,
            usize::try_from(config.memory_limit).unwrap_or(usize::MAX),
            cancel,
            deadline,
            wasi,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(fuel_budget(config))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if let Some(reason) = state.cancel.reason() {
                state.interrupted = Some(Interruption::Cancelled(reason));
                wasmtime::bail!("attempt cancelled ({reason:?})");
            }
            if Instant::now() >= state.deadline {
                state.interrupted = Some(Interruption::Timeout);
                wasmtime::bail!("attempt overran its time limit");
            }
            Ok(UpdateDeadline::Continue(1))
        });
        Ok(store)
    }
}

/// The fuel an attempt starts with: the kind's budget, or as good as unlimited.
fn fuel_budget(config: &KindConfig) -> u64 {
    config.fuel.unwrap_or(u64::MAX)
}

/// The WASI context of a kind: empty, but for what its grants name.
fn wasi_for(kind: &str, config: &KindConfig) -> Result<WasiCtxBuilder, RuntimeError> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.allow_blocking_current_thread(true);
    match &config.grants.env {
        EnvGrant::None => {}
        EnvGrant::All => {
            wasi.inherit_env();
        }
        EnvGrant::Names(names) => {
            for name in names {
                if let Ok(value) = std::env::var(name) {
                    wasi.env(name, value);
                }
            }
        }
    }
    for dir in &config.grants.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| RuntimeError::Grant {
                kind: kind.to_owned(),
                host: dir.host.clone(),
                message: format!("{e:#}"),
            })?;
    }
    Ok(wasi)
}

/// Turns a failed instantiation or call into the outcome it means.
fn classify_error(
    state: &AttemptState,
    error: wasmtime::Error,
    instantiating: bool,
) -> AttemptOutcome {
    match state.interrupted {
        Some(Interruption::Timeout) => return AttemptOutcome::Timeout,
        Some(Interruption::Cancelled(reason)) => return AttemptOutcome::Cancelled(reason),
        None => {}
    }
    let trap = error.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::OutOfFuel) {
        return AttemptOutcome::OutOfFuel;
    }
    let detail = format!("{error:?}");
    let (kind, message) = if let Some(total) = state.limiter.memory_refused {
        (
            TrapKind::MemoryLimit,
            format!(
                "memory limit reached: the guest asked for {total} bytes, its kind allows {}",
                state.limiter.memory_limit()
            ),
        )
    } else if instantiating {
        (
            TrapKind::Instantiation,
            format!("cannot instantiate: {error:#}"),
        )
    } else {
        match trap {
            Some(Trap::StackOverflow) => (TrapKind::StackOverflow, Trap::StackOverflow.to_string()),
            Some(Trap::UnreachableCodeReached) => (
                TrapKind::Unreachable,
                Trap::UnreachableCodeReached.to_string(),
            ),
            Some(other) => (TrapKind::Other, other.to_string()),
            None => (TrapKind::Other, format!("{error:#}")),
        }
    };
    let guest_message = match &state.last_line {
        Some((LogLevel::Error, line)) => Some(line.clone()),
        _ => None,
    };
    AttemptOutcome::Trap(TrapInfo {
        kind,
        message,
        guest_message,
        detail,
    })
}

/// One line for an outcome that is not a plain return.
fn describe(outcome: &AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Trap(t) => match &t.guest_message {
            Some(m) => format!("{} ({m})", t.message),
            None => t.message.clone(),
        },
        other => format!("{other:?}"),
    }
}

fn log_outcome(who: &Identity, outcome: &AttemptOutcome, elapsed: Duration) {
    let (task_id, kind, attempt) = (who.task_id, &*who.kind, who.attempt);
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    match outcome {
        AttemptOutcome::Trap(t) => tracing::warn!(
            task_id, kind, attempt, elapsed_ms, trap = ?t.kind, message = %t.message,
            guest_message = t.guest_message.as_deref().unwrap_or(""), "attempt trapped"
        ),
        other => tracing::debug!(
            task_id, kind, attempt, elapsed_ms, outcome = %short(other), "attempt ended"
        ),
    }
}

fn short(outcome: &AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Done(_) => "done",
        AttemptOutcome::ContinueLater => "continue-later",
        AttemptOutcome::RetryAfter(_) => "retry-after",
        AttemptOutcome::Transient(_) => "transient",
        AttemptOutcome::Fatal(_) => "fatal",
        AttemptOutcome::Timeout => "timeout",
        AttemptOutcome::OutOfFuel => "out-of-fuel",
        AttemptOutcome::Cancelled(_) => "cancelled",
        AttemptOutcome::Trap(_) => "trap",
    }
}

fn check_kind_name(kind: &str) -> Result<(), RuntimeError> {
    let ok = !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidKindName(kind.to_owned()))
    }
}

/// Keeps a running attempt's cancel token findable by task id while the attempt runs.
struct Registration<'a> {
    runtime: &'a Runtime,
    task_id: u64,
    token: CancelToken,
}

impl<'a> Registration<'a> {
    fn new(runtime: &'a Runtime, task_id: u64, token: &CancelToken) -> Registration<'a> {
        runtime
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task_id, token.clone());
        Registration {
            runtime,
            task_id,
            token: token.clone(),
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut running = self
            .runtime
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A newer attempt of the same task may have registered since: leave its token.
        if running
            .get(&self.task_id)
            .is_some_and(|t| t.same_as(&self.token))
        {
            running.remove(&self.task_id);
        }
    }
}
