//! The production [`Executor`]: the wasmtime [`Runtime`] with the plugins of `--plugins DIR`.

use std::path::Path;
use std::time::Duration;

use handyman_core::{AttemptOutcome, TaskId};

use crate::executor::{summary_of, Executor, Job, JobResult, KindInfo, StopReason};
use crate::runtime::{
    self, AttemptInput, CancelReason, CancelToken, KindConfig, Runtime, RuntimeConfig,
    RuntimeError, TrapKind,
};

/// Runs attempts in the WASM runtime.
pub struct WasmExecutor {
    runtime: Runtime,
    kinds: Vec<KindInfo>,
}

impl WasmExecutor {
    /// Loads every `KIND.wasm` of `plugins`. A kind that fails to load stays known, and its
    /// attempts fail with the load error, so that the host carries on with the others.
    pub fn load(
        plugins: &Path,
        cache_dir: Option<&Path>,
        max_instances: u32,
    ) -> Result<WasmExecutor, RuntimeError> {
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: cache_dir.map(Path::to_path_buf),
            max_instances: max_instances.max(4),
            ..RuntimeConfig::default()
        })?;
        let mut kinds = Vec::new();
        for (name, result) in runtime.load_dir(plugins)? {
            let config = runtime.kind_config(&name).unwrap_or_else(|| {
                // A kind that did not load still gets its pool from its KIND.toml, if readable.
                std::fs::read_to_string(plugins.join(format!("{name}.toml")))
                    .ok()
                    .and_then(|t| KindConfig::from_toml(&t).ok())
                    .unwrap_or_default()
            });
            let load_error = match result {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!(kind = %name, error = %e, "cannot load handler");
                    Some(e.to_string())
                }
            };
            kinds.push(KindInfo {
                name,
                pool: config.pool,
                max_runtime: config.max_runtime,
                load_error,
            });
        }
        Ok(WasmExecutor { runtime, kinds })
    }
}

impl Executor for WasmExecutor {
    fn kinds(&self) -> Vec<KindInfo> {
        self.kinds.clone()
    }

    fn run(&self, job: Job) -> JobResult {
        if let Some(error) = self
            .kinds
            .iter()
            .find(|k| *k.name == *job.kind)
            .and_then(|k| k.load_error.clone())
        {
            return JobResult::of(AttemptOutcome::Fatal {
                message: format!("the handler could not be loaded: {error}"),
            });
        }
        let input = AttemptInput {
            task_id: job.id,
            attempt: job.attempt,
            payload: job.payload.to_vec(),
            checkpoint: job.checkpoint.clone(),
            context: job.context.clone(),
            time_limit: Some(job.time_limit.max(Duration::from_millis(1))),
            cancel: CancelToken::new(),
        };
        let result = match self.runtime.run_attempt(&job.kind, input) {
            Ok(r) => r,
            Err(e) => {
                return JobResult::of(AttemptOutcome::Fatal {
                    message: e.to_string(),
                })
            }
        };
        for line in &result.logs {
            log_guest_line(&job, line);
        }
        if result.logs_dropped > 0 {
            tracing::warn!(
                task = job.id,
                attempt = job.attempt,
                dropped = result.logs_dropped,
                "guest log lines dropped"
            );
        }
        let cleanup = result.outcome.cleanup_reason().map(|reason| {
            match self
                .runtime
                .run_cleanup(&job.kind, job.id, &result.context, reason)
            {
                Ok(()) => format!("{reason:?}: ok").to_lowercase(),
                Err(e) => format!("{}: failed: {e}", format!("{reason:?}").to_lowercase()),
            }
        });
        let (outcome, timed_out) = core_outcome(&result.outcome);
        let mut summary = summary_of(&outcome);
        if let runtime::AttemptOutcome::Trap(t) = &result.outcome {
            tracing::debug!(task = job.id, detail = %t.detail, "trap detail");
        }
        if timed_out {
            summary = format!("timed out after {} ms", job.time_limit.as_millis());
        }
        JobResult {
            outcome,
            timed_out,
            checkpoint: result.checkpoint,
            context: result.context,
            progress: result.progress,
            cleanup,
            summary,
            elapsed: result.elapsed,
        }
    }

    fn stop(&self, id: TaskId, reason: StopReason) {
        self.runtime.cancel(id, cancel_reason(reason));
    }

    fn stop_all(&self, reason: StopReason) {
        self.runtime.cancel_all(cancel_reason(reason));
    }
}

fn cancel_reason(reason: StopReason) -> CancelReason {
    match reason {
        StopReason::Cancel => CancelReason::Cancelled,
        StopReason::Shutdown => CancelReason::Shutdown,
    }
}

/// What the core hears of the runtime's outcome, and whether it was a timeout.
fn core_outcome(outcome: &runtime::AttemptOutcome) -> (AttemptOutcome, bool) {
    use runtime::AttemptOutcome as R;
    match outcome {
        R::Done(output) => (
            AttemptOutcome::Success {
                output: output.clone(),
            },
            false,
        ),
        R::ContinueLater => (AttemptOutcome::ContinueLater, false),
        R::RetryAfter(d) => (
            AttemptOutcome::RetryAfter {
                delay_ms: d.as_millis() as u64,
            },
            false,
        ),
        R::Transient(m) => (AttemptOutcome::Transient { message: m.clone() }, false),
        R::Fatal(m) => (AttemptOutcome::Fatal { message: m.clone() }, false),
        R::Timeout => (AttemptOutcome::Interrupted, true),
        R::OutOfFuel => (
            AttemptOutcome::Fatal {
                message: "the handler burned its whole fuel budget".to_string(),
            },
            false,
        ),
        R::Cancelled(CancelReason::Cancelled) => (AttemptOutcome::Interrupted, false),
        R::Cancelled(CancelReason::Shutdown) => (AttemptOutcome::ContinueLater, false),
        R::Trap(t) => {
            let what = match t.kind {
                TrapKind::MemoryLimit => "memory limit",
                TrapKind::StackOverflow => "stack overflow",
                TrapKind::Unreachable => "trap (panic or abort)",
                TrapKind::Instantiation => "cannot instantiate",
                TrapKind::Other => "trap",
            };
            let message = match &t.guest_message {
                Some(g) => format!("{what}: {} ({g})", t.message),
                None => format!("{what}: {}", t.message),
            };
            // Retrying cannot fix a component that does not instantiate; any other trap is
            // retried per the task's policy.
            if t.kind == TrapKind::Instantiation {
                (AttemptOutcome::Fatal { message }, false)
            } else {
                (AttemptOutcome::Transient { message }, false)
            }
        }
    }
}

fn log_guest_line(job: &Job, line: &runtime::LogLine) {
    use runtime::LogLevel as L;
    let (task, attempt, kind, source) = (job.id, job.attempt, &*job.kind, line.source);
    let msg = &line.message;
    match line.level {
        L::Trace => tracing::trace!(task, attempt, kind, ?source, "{msg}"),
        L::Debug => tracing::debug!(task, attempt, kind, ?source, "{msg}"),
        L::Info => tracing::info!(task, attempt, kind, ?source, "{msg}"),
        L::Warn => tracing::warn!(task, attempt, kind, ?source, "{msg}"),
        L::Error => tracing::error!(task, attempt, kind, ?source, "{msg}"),
    }
}
