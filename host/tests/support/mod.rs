//! Helpers shared by the runtime's integration tests: a runtime with a shared compile cache,
//! tiny hand-written components in the WebAssembly text format, and the example plugins.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use handyman_host::runtime::{AttemptInput, KindConfig, Runtime, RuntimeConfig};

/// A runtime whose compile cache lives in cargo's scratch directory for tests.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("handyman-cache")),
        max_instances: 32,
        epoch_tick: Duration::from_millis(10),
        cleanup_time_limit: Duration::from_secs(5),
    })
    .expect("the runtime starts")
}

/// An attempt of task 1 with this payload.
pub fn input(payload: &[u8]) -> AttemptInput {
    AttemptInput {
        task_id: 1,
        attempt: 1,
        payload: payload.to_vec(),
        ..AttemptInput::default()
    }
}

/// A kind configuration with this time limit.
pub fn with_limit(max_runtime: Duration) -> KindConfig {
    KindConfig {
        max_runtime,
        ..KindConfig::default()
    }
}

/// Where the example plugins were built: `$HANDYMAN_PLUGINS_DIR`, or `<workspace>/plugins/dist`.
pub fn plugins_dir() -> PathBuf {
    match std::env::var_os("HANDYMAN_PLUGINS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist"),
    }
}

/// A runtime with the example plugin `kind` loaded from [`plugins_dir`]. Panics with what to do
/// when the plugin has not been built: these tests must not pass by skipping.
pub fn runtime_with_plugin(kind: &str) -> Runtime {
    let runtime = runtime();
    load_plugin(&runtime, kind, KindConfig::default());
    runtime
}

/// Loads example plugin `kind` into `runtime` under the same name, with `config`.
pub fn load_plugin(runtime: &Runtime, kind: &str, config: KindConfig) {
    load_plugin_as(runtime, kind, kind, config)
}

/// Loads example plugin `kind` into `runtime` under the name `name`, with `config`.
pub fn load_plugin_as(runtime: &Runtime, kind: &str, name: &str, config: KindConfig) {
    let path = plugins_dir().join(format!("{kind}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "example plugin `{kind}` is missing ({}: {e}). Build the plugins first \
             (plugins/build.sh), or point HANDYMAN_PLUGINS_DIR at a directory holding {kind}.wasm",
            path.display()
        )
    });
    runtime
        .add_kind(name, &bytes, config)
        .unwrap_or_else(|e| panic!("example plugin `{kind}` does not load: {e}"));
}

/// A component of the `handyman:task/handler` world whose `run` executes `run_body` (core
/// WebAssembly text) in a module that can call `$log (level, ptr, len)` and `$recurse`, writes
/// its result at address 0 and has `bytes` stored at address 64. `cleanup` returns the value
/// of the first context entry as its error (so a test sees what cleanup received), or ok when
/// the context is empty.
///
/// `run`'s core parameters: 0 id, 1-2 kind, 3 attempt, 4-5 payload, 6-8 checkpoint, 9 deadline.
/// Layout of the result at 0: result tag (u8) at 0; outcome or failure tag (u8) at 8; its
/// payload at 16 (a list as ptr, len; or a u64) — see [`DONE_PAYLOAD`] and friends.
pub fn handler(run_body: &str) -> String {
    HANDLER_WAT.replace("RUN_BODY", run_body)
}

/// `run` returns `done(payload)`.
pub const DONE_PAYLOAD: &str = "
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (local.get 4))
    (i32.store (i32.const 20) (local.get 5))
    (i32.const 0)";

/// `run` returns `continue-later`.
pub const CONTINUE_LATER: &str = "
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store8 (i32.const 8) (i32.const 1))
    (i32.const 0)";

/// `run` returns `retry-after(1500)`.
pub const RETRY_AFTER_1500: &str = "
    (i32.store8 (i32.const 0) (i32.const 0))
    (i32.store8 (i32.const 8) (i32.const 2))
    (i64.store (i32.const 16) (i64.const 1500))
    (i32.const 0)";

/// `run` fails with `transient(payload as a string)`.
pub const TRANSIENT_PAYLOAD: &str = "
    (i32.store8 (i32.const 0) (i32.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 12) (local.get 4))
    (i32.store (i32.const 16) (local.get 5))
    (i32.const 0)";

/// `run` loops forever.
pub const SPIN: &str = "(loop $forever (br $forever)) (unreachable)";

/// `run` grows its memory a page at a time until refused, then traps.
pub const HOG: &str = "
    (loop $more (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (unreachable)";

/// `run` recurses without end.
pub const RECURSE: &str = "(call $recurse (i32.const 0)) (unreachable)";

/// `run` logs \"boom: it broke\" at error level, then traps as a Rust panic does.
pub const PANIC: &str = "(call $log (i32.const 4) (i32.const 64) (i32.const 14)) (unreachable)";

const HANDLER_WAT: &str = r#"
(component
  (import "handyman:task/types@0.1.0" (instance $types
    (type $task' (record (field "id" u64) (field "kind" string) (field "attempt" u32)
      (field "payload" (list u8)) (field "checkpoint" (option (list u8))) (field "deadline-ms" u64)))
    (export "task" (type (eq $task')))
    (type $outcome' (variant (case "done" (list u8)) (case "continue-later") (case "retry-after" u64)))
    (export "outcome" (type (eq $outcome')))
    (type $failure' (variant (case "transient" string) (case "fatal" string)))
    (export "failure" (type (eq $failure')))
    (type $entry' (record (field "key" string) (field "value" string)))
    (export "context-entry" (type (eq $entry')))
    (type $reason' (enum "timeout" "cancelled" "shutdown"))
    (export "cleanup-reason" (type (eq $reason')))))
  (type $level' (enum "trace" "debug" "info" "warn" "error"))
  (import "handyman:task/log@0.1.0" (instance $log
    (export "level" (type $level (eq $level')))
    (export "write" (func (param "level" $level) (param "message" string)))))
  (core module $libc
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $bump) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow
          (i32.add (i32.div_u (local.get 3) (i32.const 65536)) (i32.const 1))))))
      (local.get $p)))
  (core instance $libc (instantiate $libc))
  (core func $log (canon lower (func $log "write") (memory (core memory $libc "memory")) string-encoding=utf8))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "log" (func $log (param i32 i32 i32)))
    (data (i32.const 64) "boom: it broke")
    (func $recurse (param i32) (call $recurse (i32.add (local.get 0) (i32.const 1))))
    (func (export "run") (param i64 i32 i32 i32 i32 i32 i32 i32 i32 i64) (result i32)
      RUN_BODY)
    (func (export "cleanup") (param i32 i32 i32) (result i32)
      (if (i32.eqz (local.get 1))
        (then (i32.store8 (i32.const 32) (i32.const 0)))
        (else
          (i32.store8 (i32.const 32) (i32.const 1))
          (i32.store (i32.const 36) (i32.load offset=8 (local.get 0)))
          (i32.store (i32.const 40) (i32.load offset=12 (local.get 0)))))
      (i32.const 32)))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance (export "log" (func $log))))))
  (alias export $types "task" (type $task))
  (alias export $types "outcome" (type $outcome))
  (alias export $types "failure" (type $failure))
  (alias export $types "context-entry" (type $entry))
  (alias export $types "cleanup-reason" (type $reason))
  (func $run (param "task" $task) (result (result $outcome (error $failure)))
    (canon lift (core func $main "run") (memory (core memory $libc "memory"))
      (realloc (core func $libc "realloc"))))
  (export "run" (func $run))
  (func $cleanup (param "context" (list $entry)) (param "reason" $reason) (result (result (error string)))
    (canon lift (core func $main "cleanup") (memory (core memory $libc "memory"))
      (realloc (core func $libc "realloc"))))
  (export "cleanup" (func $cleanup))
)
"#;
