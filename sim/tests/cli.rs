//! The command line: JSON keys, errors that name the line and the key, exit codes.

use std::process::Command;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_handyman-sim"))
}

fn scenario(name: &str) -> String {
    format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn run_json_has_the_documented_keys() {
    let out = sim()
        .args(["run", &scenario("chaos"), "--seed", "4", "--json"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "seed",
        "policy",
        "tasks_submitted",
        "tasks_succeeded",
        "tasks_failed",
        "tasks_cancelled",
        "tasks_lost",
        "invariant_violations",
        "journal_hash",
        "events",
        "wait_ms",
        "jain_index",
        "simulated_ms",
        "wall_ms",
    ] {
        assert!(v.get(key).is_some(), "missing key {key}");
    }
    for key in ["p50", "p99", "max"] {
        assert!(v["wait_ms"].get(key).is_some(), "missing wait_ms.{key}");
    }
    assert_eq!(v["tasks_lost"], 0);
    assert!(v["invariant_violations"]
        .as_array()
        .is_some_and(|a| a.is_empty()));
}

#[test]
fn run_out_writes_the_csv_the_summary_and_the_plots() {
    let dir = std::env::temp_dir().join(format!("handyman-sim-out-{}", std::process::id()));
    let out = sim()
        .args([
            "run",
            &scenario("chaos"),
            "--seed",
            "1",
            "--policy",
            "fifo",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.join("tasks.csv")).expect("tasks.csv");
    assert!(csv.starts_with(
        "id,group,kind,priority,submit,start,finish,wait,turnaround,slowdown,attempts,final_state"
    ));
    for f in [
        "summary.json",
        "wait_cdf.svg",
        "queue_length.svg",
        "group_share.svg",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_scenario_names_the_line_and_the_key() {
    let path = std::env::temp_dir().join(format!("bad-{}.toml", std::process::id()));
    let text = std::fs::read_to_string(scenario("chaos")).expect("reads");
    let text = text.replacen("slots = 6", "slots = -6", 1);
    let line = text
        .lines()
        .position(|l| l.contains("slots = -6"))
        .expect("replaced")
        + 1;
    std::fs::write(&path, text).expect("writes");
    let out = sim()
        .args(["run"])
        .arg(&path)
        .args(["--seed", "1"])
        .output()
        .expect("runs");
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!(":{line}:")), "{err}");
    assert!(err.contains("key `slots`"), "{err}");
}

#[test]
fn check_exits_non_zero_on_an_injected_bug() {
    let out = sim()
        .args([
            "check",
            "--seeds",
            "0..3",
            "--inject-bug",
            "ignore-group-caps",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("invariant 2"), "{text}");
    assert!(text.contains("first bad event"), "{text}");
    assert!(text.contains("still fails"), "{text}");
}

#[test]
fn sweep_writes_a_summary_with_confidence_intervals() {
    let dir = std::env::temp_dir().join(format!("handyman-sim-sweep-{}", std::process::id()));
    let out = sim()
        .args([
            "sweep",
            &scenario("chaos"),
            "--seeds",
            "0..3",
            "--policy",
            "handyman,fifo",
            "--set",
            "slots.default=4,8",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.join("summary.csv")).expect("summary.csv");
    assert_eq!(csv.lines().count(), 1 + 4);
    assert!(csv.contains("wait_p99_ms_ci95"));
    for f in [
        "runs.csv",
        "wait_cdf.svg",
        "group_share.svg",
        "queue_length.svg",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
