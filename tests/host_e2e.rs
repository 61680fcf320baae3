//! The real `handyman` binary, on a free port with a temp data dir and the example plugins,
//! driven through its CLI and its HTTP API.
//!
//! Needs the example handlers built (`bash plugins/build.sh`), or `HANDYMAN_PLUGINS_DIR`
//! pointing at them: a test whose component is missing fails and says so.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{plugins, stderr, stdout, Server};

const SECS_30: Duration = Duration::from_secs(30);

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("handyman.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn id_of(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

#[test]
fn tasks_of_several_kinds_run_and_succeed_through_cli_and_http() {
    let dir = temp();
    let p = plugins(dir.path(), &[("echo", ""), ("noop", ""), ("flaky", "")]);
    let server = Server::start(&dir.path().join("data"), &p, None, &[]);

    // CLI submit prints the id alone.
    let out = server.cli(&[
        "submit",
        "--kind",
        "echo",
        "--payload",
        r#"{"hello":"world"}"#,
        "--group",
        "team-a",
    ]);
    assert!(out.status.success(), "submit failed: {}", stderr(&out));
    let echo: u64 = stdout(&out).parse().expect("an id alone on stdout");
    let noop = id_of(&server.submit(&json!({"kind": "noop"})));
    let flaky = id_of(&server.submit(&json!({
        "kind": "flaky", "payload": {"failures": 2}, "max_retries": 3,
        "backoff": {"initial_ms": 10, "multiplier": 1.0, "max_ms": 10, "jitter": 0.0}
    })));

    let out = server.cli(&[
        "wait",
        &echo.to_string(),
        &noop.to_string(),
        &flaky.to_string(),
        "--timeout",
        "60s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "wait: {} {}",
        stdout(&out),
        stderr(&out)
    );

    let t = server.task(echo);
    assert_eq!(t["state"], "succeeded");
    assert_eq!(t["output"], r#"{"hello":"world"}"#);
    assert_eq!(t["group"], "team-a");
    let t = server.task(flaky);
    assert_eq!(t["attempt"], 3, "two planned failures, then success: {t}");
    assert_eq!(t["failures"], 2);

    let out = server.cli(&["status", &echo.to_string(), "--json"]);
    let status: Value = serde_json::from_str(&stdout(&out)).expect("status --json is JSON");
    assert_eq!(status["state"], "succeeded");
    let out = server.cli(&["status", &flaky.to_string()]);
    assert!(
        stdout(&out).contains("state:     succeeded"),
        "{}",
        stdout(&out)
    );

    let out = server.cli(&["list", "--state", "succeeded", "--json"]);
    let list: Value = serde_json::from_str(&stdout(&out)).expect("list --json is JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let out = server.cli(&["list", "--group", "team-a"]);
    assert_eq!(
        stdout(&out).lines().count(),
        2,
        "header and one task: {}",
        stdout(&out)
    );

    let groups = server.get("/v1/groups");
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert!(
        names.contains(&"team-a") && names.contains(&"default"),
        "{groups}"
    );

    let (code, metrics) = server.call("GET", "/metrics", None);
    assert_eq!(code, 200);
    let metrics = metrics.as_str().expect("text").to_string();
    for needle in [
        "handyman_wait_seconds_bucket{group=\"team-a\",kind=\"echo\"",
        "handyman_failures_total{group=\"default\",kind=\"flaky\"} 2",
        "handyman_retries_total 2",
        "handyman_tasks{state=\"succeeded\"} 3",
        "handyman_interrupts_total{reason=\"timeout\"} 0",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    let out = server.cli(&["explain", &echo.to_string()]);
    assert!(stdout(&out).contains("succeeded"), "{}", stdout(&out));
}

#[test]
fn a_dag_runs_in_order_and_dedup_returns_the_same_id() {
    let dir = temp();
    let p = plugins(dir.path(), &[("echo", ""), ("spin", "")]);
    let cfg = config(dir.path(), "[pools.default]\nslots = 2\n");
    let server = Server::start(&dir.path().join("data"), &p, Some(&cfg), &[]);

    // extract -> (transform-a, transform-b) -> load, in one batch.
    let ids = server.submit(&json!([
        {"kind": "echo", "payload": "extract"},
        {"kind": "echo", "payload": "transform-a", "depends_on": [{"batch": 0}]},
        {"kind": "echo", "payload": "transform-b", "depends_on": [{"batch": 0}]},
        {"kind": "echo", "payload": "load", "depends_on": [{"batch": 1}, {"batch": 2}]},
    ]));
    let ids: Vec<u64> = ids["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(ids.len(), 4);
    // And one more through the CLI, after the load.
    let out = server.cli(&[
        "submit",
        "--kind",
        "echo",
        "--after",
        &format!("{},{}", ids[3], ids[1]),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: u64 = stdout(&out).parse().expect("id");

    let all: Vec<u64> = ids.iter().copied().chain([report]).collect();
    let args: Vec<String> = ["wait".to_string()]
        .into_iter()
        .chain(all.iter().map(u64::to_string))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = server.cli(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let task = |id: u64| server.task(id);
    let finished = |id: u64| task(id)["finished_at"].as_u64().expect("finished");
    let started = |id: u64| task(id)["ready_since"].as_u64().expect("was queued");
    assert!(started(ids[1]) >= finished(ids[0]));
    assert!(started(ids[2]) >= finished(ids[0]));
    assert!(started(ids[3]) >= finished(ids[1]).max(finished(ids[2])));
    assert!(started(report) >= finished(ids[3]));

    // Dedup: the same key, while the first task is not terminal, gives the same id.
    let first = id_of(
        &server.submit(&json!({"kind": "spin", "max_runtime_ms": 20000, "dedup_key": "nightly"})),
    );
    let again = server.cli(&["submit", "--kind", "spin", "--dedup-key", "nightly"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let second: u64 = stdout(&again).parse().expect("id");
    assert_eq!(second, first, "dedup returns the first task's id");
    let (_, v) = server.call(
        "POST",
        "/v1/tasks",
        Some(r#"{"kind":"spin","dedup_key":"nightly"}"#),
    );
    assert_eq!(v["id"].as_u64(), Some(first));
    assert_eq!(v["created"], false);
    let out = server.cli(&["cancel", &first.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.wait_terminal(first, SECS_30)["state"], "cancelled");
}

#[test]
fn a_spinning_guest_is_interrupted_on_time_and_its_slot_freed() {
    let dir = temp();
    let p = plugins(dir.path(), &[("spin", ""), ("echo", "")]);
    let cfg = config(dir.path(), "[pools.default]\nslots = 1\n");
    let server = Server::start(&dir.path().join("data"), &p, Some(&cfg), &[]);
    let spin =
        id_of(&server.submit(&json!({"kind": "spin", "max_runtime_ms": 300, "max_retries": 0})));
    let echo = id_of(&server.submit(&json!({"kind": "echo", "payload": "after"})));
    let t = server.wait_terminal(spin, SECS_30);
    assert_eq!(t["state"], "failed", "{t}");
    assert!(
        t["reason"].as_str().unwrap_or("").contains("interrupted"),
        "{t}"
    );
    let elapsed_us = t["attempts"][0]["elapsed_us"]
        .as_u64()
        .expect("attempt recorded");
    assert!(
        (300_000..=400_000).contains(&elapsed_us),
        "stopped {elapsed_us} µs after start; the limit is 300 ms (+100 ms): {t}"
    );
    assert!(
        t["attempts"][0]["cleanup"]
            .as_str()
            .unwrap_or("")
            .starts_with("timeout"),
        "{t}"
    );
    // The only slot was freed: the echo behind it runs.
    assert_eq!(server.wait_terminal(echo, SECS_30)["state"], "succeeded");
    let metrics = server.call("GET", "/metrics", None).1;
    assert!(metrics
        .as_str()
        .unwrap_or("")
        .contains("handyman_interrupts_total{reason=\"timeout\"} 1"));
}

#[test]
fn memory_hogs_trapping_and_invalid_guests_fail_cleanly_and_the_host_carries_on() {
    let dir = temp();
    let p = plugins(
        dir.path(),
        &[
            ("memory-hog", "memory_limit = \"32MiB\"\n"),
            ("panic", ""),
            ("stack-overflow", ""),
            ("echo", ""),
        ],
    );
    std::fs::write(p.join("broken.wasm"), b"this is not a component").expect("write");
    let server = Server::start(&dir.path().join("data"), &p, None, &[]);
    let submit = |kind: &str| {
        id_of(
            &server
                .submit(&json!({"kind": kind, "max_retries": 0, "payload": {"message": "boom"}})),
        )
    };
    let hog = submit("memory-hog");
    let panic = submit("panic");
    let stack = submit("stack-overflow");
    let broken = submit("broken");
    for (id, needle) in [
        (hog, "memory limit"),
        (panic, "boom"),
        (stack, "stack overflow"),
        (broken, "not a valid WebAssembly component"),
    ] {
        let t = server.wait_terminal(id, SECS_30);
        assert_eq!(t["state"], "failed", "{t}");
        let reason = t["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(needle),
            "task {id}: reason {reason:?} lacks {needle:?}"
        );
    }
    let echo = id_of(&server.submit(&json!({"kind": "echo", "payload": "still here"})));
    assert_eq!(server.wait_terminal(echo, SECS_30)["output"], "still here");
}

#[test]
fn cancel_interrupts_the_guest_and_calls_its_cleanup() {
    let dir = temp();
    let p = plugins(dir.path(), &[("table-copy", "")]);
    let server = Server::start(&dir.path().join("data"), &p, None, &[]);
    // Copies one batch, then hangs "in a warehouse query" until interrupted.
    let id = id_of(&server.submit(&json!({
        "kind": "table-copy", "payload": {"rows": 100, "batch": 10, "stall_attempts": 1},
        "max_runtime_ms": 60000
    })));
    let start = Instant::now();
    while server.task(id)["state"] != "running" {
        assert!(start.elapsed() < SECS_30, "never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let out = server.cli(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = server.cli(&["wait", &id.to_string(), "--timeout", "20s"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled task makes wait exit 1"
    );
    let t = server.task(id);
    assert_eq!(t["state"], "cancelled", "{t}");
    assert_eq!(t["attempts"][0]["cleanup"], "cancelled: ok", "{t}");
    assert!(
        server.log().contains(&format!("freeing query copy-{id}-1")),
        "cleanup got the context: {}",
        server.log()
    );
    // Cancelling again says it already ended.
    let out = server.cli(&["cancel", &id.to_string()]);
    assert!(stdout(&out).contains("already ended"), "{}", stdout(&out));
}

#[test]
fn the_checkpointing_handler_finishes_a_long_job_across_timeouts() {
    let dir = temp();
    let p = plugins(dir.path(), &[("table-copy", "")]);
    let server = Server::start(&dir.path().join("data"), &p, None, &[]);
    let reference = id_of(
        &server.submit(&json!({"kind": "table-copy", "payload": {"rows": 1000, "batch": 100}})),
    );
    // Attempts 1-3 copy a batch each and hang until the 300 ms limit; "continue" keeps
    // their checkpoints; later attempts copy two batches each and continue later.
    let long = id_of(&server.submit(&json!({
        "kind": "table-copy",
        "payload": {"rows": 1000, "batch": 100, "stall_attempts": 3, "batches_per_attempt": 2},
        "max_runtime_ms": 300, "on_timeout": "continue", "max_retries": 0
    })));
    let r = server.wait_terminal(reference, SECS_30);
    let t = server.wait_terminal(long, SECS_30);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["output"], r["output"], "same rows, same checksum");
    assert_eq!(
        t["failures"], 0,
        "timeouts in continue mode are not failures"
    );
    assert_eq!(
        t["attempt"], 7,
        "3 stalled + 4 attempts of 2, 2, 2 and 1 batches: {t}"
    );
    assert_eq!(t["continues"], 6);
    assert!(
        t["attempts"][0]["cleanup"]
            .as_str()
            .unwrap_or("")
            .starts_with("timeout"),
        "{t}"
    );
}

#[test]
fn kill_9_in_the_middle_of_a_load_and_a_restart_lose_nothing() {
    let dir = temp();
    let p = plugins(dir.path(), &[("noop", ""), ("echo", "")]);
    let cfg = config(dir.path(), "[pools.default]\nslots = 2\n");
    let mut server = Server::start(&dir.path().join("data"), &p, Some(&cfg), &[]);
    let url = server.url.clone();
    // Submitters keep going while the server is killed; only acknowledged ids count.
    let submitter = std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let mut acked = Vec::new();
        for round in 0..400 {
            let batch: Vec<Value> = (0..25)
                .map(|i| json!({"kind": if i % 2 == 0 { "noop" } else { "echo" }, "payload": format!("{round}-{i}")}))
                .collect();
            match agent
                .post(&format!("{url}/v1/tasks"))
                .send_string(&Value::Array(batch).to_string())
            {
                Ok(r) => {
                    let v: Value = r.into_json().expect("json");
                    acked.extend(
                        v["ids"]
                            .as_array()
                            .expect("ids")
                            .iter()
                            .filter_map(Value::as_u64),
                    );
                }
                Err(_) => break,
            }
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(700));
    server.kill9();
    let acked = submitter.join().expect("submitter");
    assert!(
        acked.len() >= 25,
        "some submits were acknowledged before the kill: {}",
        acked.len()
    );

    let server = server.restart();
    let start = Instant::now();
    loop {
        let m = server.call("GET", "/metrics", None).1;
        let m = m.as_str().unwrap_or("").to_string();
        let succeeded = m
            .lines()
            .find_map(|l| l.strip_prefix("handyman_tasks{state=\"succeeded\"} "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if succeeded >= acked.len() as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not all finished after restart: {succeeded} of {}",
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for id in &acked {
        let t = server.task(*id);
        assert_eq!(t["state"], "succeeded", "acknowledged task {id}: {t}");
    }
    let noop_and_echo: Vec<Value> = server.get("/v1/tasks?state=failed")["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        noop_and_echo.is_empty(),
        "nothing failed: {noop_and_echo:?}"
    );
}

#[test]
fn sigterm_stops_running_attempts_as_continue_and_exits_0() {
    let dir = temp();
    let p = plugins(dir.path(), &[("table-copy", "")]);
    let mut server = Server::start(&dir.path().join("data"), &p, None, &[]);
    let id = id_of(&server.submit(&json!({
        "kind": "table-copy", "payload": {"rows": 100, "batch": 10, "stall_attempts": 1},
        "max_runtime_ms": 60000, "max_retries": 0
    })));
    let start = Instant::now();
    while server.task(id)["state"] != "running" {
        assert!(start.elapsed() < SECS_30, "never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let pid = server.child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(ok.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 after SIGTERM; log: {}",
        server.log()
    );
    assert!(
        server.log().contains("after shutdown: freeing query"),
        "cleanup with reason shutdown"
    );
    let server = server.restart();
    let t = server.wait_terminal(id, SECS_30);
    assert_eq!(
        t["state"], "succeeded",
        "continued after the restart, no retry spent: {t}"
    );
    assert_eq!(t["failures"], 0);
}

#[test]
fn malformed_requests_get_4xx_with_a_useful_message() {
    let dir = temp();
    let p = plugins(dir.path(), &[("echo", "")]);
    let cfg = config(dir.path(), "[api]\nmax_body_bytes = 4096\nmax_batch = 10\n");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let token_arg = token.to_str().expect("utf-8 path");
    let server = Server::start(
        &dir.path().join("data"),
        &p,
        Some(&cfg),
        &["--token-file", token_arg],
    );
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("POST", "/v1/tasks", Some("{not json".into()), 400, "not valid JSON"),
        ("POST", "/v1/tasks", Some(r#"{"kind":"echo","colour":"red"}"#.into()), 400, "unknown field `colour`"),
        ("POST", "/v1/tasks", Some(r#"{"kind":"nope"}"#.into()), 400, "no handler is loaded for kind \"nope\""),
        ("POST", "/v1/tasks", Some(r#"{"kind":""}"#.into()), 400, "kind"),
        ("POST", "/v1/tasks", Some(r#"{"kind":"echo","max_runtime_ms":0}"#.into()), 400, "max_runtime_ms"),
        ("POST", "/v1/tasks", Some(r#"{"kind":"echo","depends_on":[{"task":999}]}"#.into()), 400, "task 999 does not exist"),
        ("POST", "/v1/tasks", Some(r#"[{"kind":"echo","depends_on":[{"batch":1}]},{"kind":"echo","depends_on":[{"batch":0}]}]"#.into()), 400, "cycle"),
        ("POST", "/v1/tasks", Some("[]".into()), 400, "empty array"),
        ("POST", "/v1/tasks", Some(format!("[{}]", [r#"{"kind":"echo"}"#; 11].join(","))), 413, "limit of 10"),
        ("POST", "/v1/tasks", Some(format!(r#"{{"kind":"echo","payload":"{}"}}"#, "x".repeat(5000))), 413, "length limit"),
        ("GET", "/v1/tasks/abc", None, 400, "not a positive integer"),
        ("GET", "/v1/tasks/12345", None, 404, "task 12345 does not exist"),
        ("POST", "/v1/tasks/12345/cancel", None, 404, "does not exist"),
        ("GET", "/v1/tasks?state=sleeping", None, 400, "unknown state"),
        ("GET", "/v1/nothing", None, 404, "no such route"),
        ("DELETE", "/v1/tasks", None, 405, "method"),
    ];
    for (method, path, body, want, needle) in cases {
        let (status, v) = server.call(method, path, body.as_deref());
        assert_eq!(status, want, "{method} {path}: {v}");
        let message = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no JSON error: {v}"));
        assert!(
            message.contains(needle),
            "{method} {path}: {message:?} lacks {needle:?}"
        );
    }
    // Without the token: 401.
    let r = ureq::get(&format!("{}/v1/tasks", server.url)).call();
    match r {
        Err(ureq::Error::Status(401, resp)) => {
            let v: Value = resp.into_json().expect("json");
            assert!(v["error"].as_str().unwrap_or("").contains("Bearer"), "{v}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // The CLI with the token works; a client error exits 3 with the server's message.
    let out = server.cli(&["submit", "--kind", "nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("no handler is loaded"),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["submit", "--kind", "echo", "--max-runtime", "soon"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("--max-runtime"), "{}", stderr(&out));
    let out = server.cli(&["submit", "--kind", "echo", "--max-runtime", "2s"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
