//! The runtime against tiny hand-written components (WebAssembly text): what it does with each
//! way an attempt can end, with no dependency on the example plugins.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use handyman_host::runtime::{
    AttemptOutcome, CancelReason, CleanupReason, KindConfig, LogLevel, RuntimeError, TrapKind,
};
use support::*;

#[test]
fn a_handler_that_returns_its_payload_is_done_with_it() {
    let runtime = runtime();
    runtime
        .add_kind(
            "echo",
            handler(DONE_PAYLOAD).as_bytes(),
            KindConfig::default(),
        )
        .unwrap();
    let result = runtime.run_attempt("echo", input(b"hello")).unwrap();
    assert_eq!(result.outcome, AttemptOutcome::Done(b"hello".to_vec()));
    assert_eq!(result.checkpoint, None);
    assert!(result.context.is_empty());
}

#[test]
fn every_return_value_of_run_maps_to_its_outcome() {
    let runtime = runtime();
    let cases = [
        ("later", CONTINUE_LATER, AttemptOutcome::ContinueLater),
        (
            "retry",
            RETRY_AFTER_1500,
            AttemptOutcome::RetryAfter(Duration::from_millis(1500)),
        ),
        (
            "transient",
            TRANSIENT_PAYLOAD,
            AttemptOutcome::Transient("source busy".to_owned()),
        ),
    ];
    for (kind, body, expected) in cases {
        runtime
            .add_kind(kind, handler(body).as_bytes(), KindConfig::default())
            .unwrap();
        let result = runtime.run_attempt(kind, input(b"source busy")).unwrap();
        assert_eq!(result.outcome, expected, "kind {kind}");
    }
}

#[test]
fn an_endless_loop_is_stopped_at_its_time_limit() {
    let runtime = runtime();
    let limit = Duration::from_millis(200);
    runtime
        .add_kind("spin", handler(SPIN).as_bytes(), with_limit(limit))
        .unwrap();
    let started = Instant::now();
    let result = runtime.run_attempt("spin", input(b"")).unwrap();
    let took = started.elapsed();
    assert_eq!(result.outcome, AttemptOutcome::Timeout);
    assert!(took >= limit, "stopped after {took:?}, before its limit");
    // The ticker runs every 10 ms; a loaded test machine needs a generous bound.
    assert!(
        took < limit + Duration::from_secs(1),
        "stopped after {took:?}"
    );
}

#[test]
fn the_attempt_time_limit_is_capped_by_the_kind() {
    let runtime = runtime();
    runtime
        .add_kind(
            "spin",
            handler(SPIN).as_bytes(),
            with_limit(Duration::from_millis(100)),
        )
        .unwrap();
    let mut attempt = input(b"");
    attempt.time_limit = Some(Duration::from_secs(3600));
    let started = Instant::now();
    let result = runtime.run_attempt("spin", attempt).unwrap();
    assert_eq!(result.outcome, AttemptOutcome::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn an_endless_loop_burns_its_fuel() {
    let runtime = runtime();
    let config = KindConfig {
        fuel: Some(5_000_000),
        ..KindConfig::default()
    };
    runtime
        .add_kind("spin", handler(SPIN).as_bytes(), config)
        .unwrap();
    let result = runtime.run_attempt("spin", input(b"")).unwrap();
    assert_eq!(result.outcome, AttemptOutcome::OutOfFuel);
    assert_eq!(result.fuel_consumed, 5_000_000);
}

#[test]
fn a_memory_hog_is_stopped_at_its_memory_limit() {
    let runtime = runtime();
    let config = KindConfig {
        memory_limit: 8 << 20,
        ..KindConfig::default()
    };
    runtime
        .add_kind("hog", handler(HOG).as_bytes(), config)
        .unwrap();
    let result = runtime.run_attempt("hog", input(b"")).unwrap();
    let AttemptOutcome::Trap(trap) = result.outcome else {
        panic!("expected a trap, got {:?}", result.outcome);
    };
    assert_eq!(trap.kind, TrapKind::MemoryLimit, "{trap:?}");
    assert!(trap.message.contains("8388608"), "{}", trap.message);
}

#[test]
fn endless_recursion_traps_as_a_stack_overflow() {
    let runtime = runtime();
    runtime
        .add_kind("deep", handler(RECURSE).as_bytes(), KindConfig::default())
        .unwrap();
    let result = runtime.run_attempt("deep", input(b"")).unwrap();
    let AttemptOutcome::Trap(trap) = result.outcome else {
        panic!("expected a trap, got {:?}", result.outcome);
    };
    assert_eq!(trap.kind, TrapKind::StackOverflow, "{trap:?}");
}

#[test]
fn a_panic_reports_the_message_the_guest_logged_before_trapping() {
    let runtime = runtime();
    runtime
        .add_kind("panic", handler(PANIC).as_bytes(), KindConfig::default())
        .unwrap();
    let result = runtime.run_attempt("panic", input(b"")).unwrap();
    let AttemptOutcome::Trap(trap) = result.outcome else {
        panic!("expected a trap, got {:?}", result.outcome);
    };
    assert_eq!(trap.kind, TrapKind::Unreachable);
    assert_eq!(trap.guest_message.as_deref(), Some("boom: it broke"));
    assert_eq!(result.logs.len(), 1);
    assert_eq!(result.logs[0].level, LogLevel::Error);
    assert_eq!(result.logs[0].message, "boom: it broke");
}

#[test]
fn a_component_without_the_run_export_is_refused() {
    let runtime = runtime();
    let err = runtime
        .add_kind("empty", b"(component)", KindConfig::default())
        .unwrap_err();
    assert!(matches!(err, RuntimeError::WrongWorld { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("kind `empty`"), "{text}");
    assert!(text.contains("run"), "{text}");
}

#[test]
fn a_component_importing_what_the_host_does_not_offer_is_refused() {
    let runtime = runtime();
    let wat = r#"(component
        (import "acme:warehouse/query@1.0.0" (instance
            (export "run" (func (param "sql" string) (result string))))))"#;
    let err = runtime
        .add_kind("sneaky", wat.as_bytes(), KindConfig::default())
        .unwrap_err();
    assert!(matches!(err, RuntimeError::WrongWorld { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("kind `sneaky`"), "{text}");
    assert!(text.contains("acme:warehouse/query"), "{text}");
}

#[test]
fn a_core_module_is_not_a_component() {
    let runtime = runtime();
    let err = runtime
        .add_kind("core", b"(module)", KindConfig::default())
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Compile { .. }), "{err}");
}

#[test]
fn an_unknown_kind_is_an_error() {
    let runtime = runtime();
    let err = runtime.run_attempt("nope", input(b"")).unwrap_err();
    assert!(matches!(err, RuntimeError::UnknownKind(_)), "{err}");
}

#[test]
fn cancellation_from_another_thread_stops_an_endless_loop() {
    let runtime = runtime();
    runtime
        .add_kind(
            "spin",
            handler(SPIN).as_bytes(),
            with_limit(Duration::from_secs(60)),
        )
        .unwrap();
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let running = scope.spawn(|| runtime.run_attempt("spin", input(b"")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        // The attempt registers itself on start; wait for it.
        while !runtime.cancel(1, CancelReason::Cancelled) {
            std::thread::sleep(Duration::from_millis(5));
        }
        running.join().unwrap()
    });
    assert_eq!(
        result.outcome,
        AttemptOutcome::Cancelled(CancelReason::Cancelled)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !runtime.cancel(1, CancelReason::Cancelled),
        "still registered"
    );
}

#[test]
fn a_cancel_token_given_with_the_input_stops_the_attempt() {
    let runtime = runtime();
    runtime
        .add_kind(
            "spin",
            handler(SPIN).as_bytes(),
            with_limit(Duration::from_secs(60)),
        )
        .unwrap();
    let attempt = input(b"");
    let token = attempt.cancel.clone();
    let result = std::thread::scope(|scope| {
        let running = scope.spawn(|| runtime.run_attempt("spin", attempt).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        token.cancel(CancelReason::Shutdown);
        running.join().unwrap()
    });
    assert_eq!(
        result.outcome,
        AttemptOutcome::Cancelled(CancelReason::Shutdown)
    );
    assert_eq!(
        result.outcome.cleanup_reason(),
        Some(CleanupReason::Shutdown)
    );
}

#[test]
fn cleanup_receives_the_context() {
    let runtime = runtime();
    runtime
        .add_kind(
            "echo",
            handler(DONE_PAYLOAD).as_bytes(),
            KindConfig::default(),
        )
        .unwrap();
    let context = BTreeMap::from([("query-id".to_owned(), "q-123".to_owned())]);
    // The test component's cleanup fails with the first value it was given.
    let result = runtime.run_cleanup("echo", 1, &context, CleanupReason::Cancelled);
    assert_eq!(result, Err("q-123".to_owned()));
    assert_eq!(
        runtime.run_cleanup("echo", 1, &BTreeMap::new(), CleanupReason::Timeout),
        Ok(())
    );
}

#[test]
fn a_kind_is_loaded_from_its_directory_with_its_toml() {
    let dir = std::env::temp_dir().join(format!("handyman-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = wat_to_binary(&handler(DONE_PAYLOAD));
    std::fs::write(dir.join("echo.wasm"), &binary).unwrap();
    std::fs::write(
        dir.join("echo.toml"),
        "pool = \"io\"\nmax_runtime = \"5s\"\nmemory_limit = \"32MiB\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("broken.wasm"), b"not wasm").unwrap();
    let runtime = runtime();
    let loaded = runtime.load_dir(&dir).unwrap();
    assert_eq!(loaded.len(), 2);
    assert!(matches!(loaded[0], (ref k, Err(RuntimeError::Compile { .. })) if k == "broken"));
    assert!(matches!(loaded[1], (ref k, Ok(())) if k == "echo"));
    assert_eq!(runtime.kinds(), vec!["echo".to_owned()]);
    let config = runtime.kind_config("echo").unwrap();
    assert_eq!(config.pool, "io");
    assert_eq!(config.max_runtime, Duration::from_secs(5));
    assert_eq!(config.memory_limit, 32 << 20);
    let result = runtime.run_attempt("echo", input(b"x")).unwrap();
    assert_eq!(result.outcome, AttemptOutcome::Done(b"x".to_vec()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The binary encoding of a component, through wasmtime's own text parser (the `wat` crate).
fn wat_to_binary(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}
