//! Host benchmarks: prints figures, does not time-test. Run with
//! `HANDYMAN_PLUGINS_DIR=plugins/dist cargo bench --bench host` (add `-- quick` for a short
//! run). Each figure is measured in this one run; see the README for the targets.
//!
//! 1. attempt: instantiate + call + teardown of the `noop` component (runtime only).
//!    floor: the same on the same engine for two minimal components written in WAT, one
//!    without a linear memory and one with a memory the size of `noop`'s: what wasmtime itself
//!    costs before any handler code, ABI lowering or host state.
//! 2. submit→start: in-process driver, idle, one task at a time (durable submit included).
//! 3. end to end: the real `handyman serve` binary, noop tasks submitted through the HTTP
//!    API in batches, until all have durably succeeded.
//! 4. driver: end to end without HTTP or WASM: the in-process driver with durable storage
//!    and handlers that return at once, to show what scheduling and storage alone sustain.
//! 5. restart: a journal of 1,000,000 submitted tasks written through the storage layer,
//!    then the driver's start (load + replay + recovery commit).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handyman_core::{Core, CoreConfig, TaskId, TaskSpec};
use handyman_host::driver::{self, DriverConfig};
use handyman_host::executor::fake::FakeExecutor;
use handyman_host::executor::{Executor, Job, JobResult, KindInfo, StopReason};
use handyman_host::runtime::{AttemptInput, Runtime, RuntimeConfig};
use handyman_host::storage::{Batch, SqliteStorage, Storage};
use handyman_host::wasm::WasmExecutor;
use serde_json::{json, Value};

fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("HANDYMAN_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist"));
    let noop = dir.join("noop.wasm");
    assert!(
        noop.is_file(),
        "missing {}: build the example plugins (bash plugins/build.sh) or set HANDYMAN_PLUGINS_DIR",
        noop.display()
    );
    dir
}

/// A plugins dir with only `noop`.
fn noop_only(tmp: &Path) -> PathBuf {
    let dir = tmp.join("plugins");
    if !dir.join("noop.wasm").exists() {
        std::fs::create_dir_all(&dir).expect("mkdir");
        // A relative HANDYMAN_PLUGINS_DIR would make a dangling link: link to the absolute path.
        let noop = std::fs::canonicalize(plugins_dir().join("noop.wasm")).expect("noop.wasm");
        std::os::unix::fs::symlink(noop, dir.join("noop.wasm")).expect("link");
    }
    dir
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Untimed calls before the timed ones: the pool's slots, the caches and the branch
/// predictors settle first.
const WARM_UP: usize = 1000;

/// Times `n` calls of `once` (given the call's index) after `WARM_UP` untimed ones; returns
/// the median and the 99th percentile, in µs.
fn p50_p99_us(n: usize, mut once: impl FnMut(usize)) -> (f64, f64) {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + WARM_UP {
        let start = Instant::now();
        once(i);
        let elapsed = start.elapsed();
        if i >= WARM_UP {
            times.push(elapsed);
        }
    }
    times.sort();
    (us(percentile(&times, 0.5)), us(percentile(&times, 0.99)))
}

fn bench_attempt(tmp: &Path, n: usize) {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(tmp.join("cache")),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    runtime
        .load_kind(&noop_only(tmp), "noop")
        .expect("load noop");
    let (p50, p99) = p50_p99_us(n, |i| {
        let r = runtime
            .run_attempt(
                "noop",
                AttemptInput {
                    task_id: i as u64,
                    attempt: 1,
                    ..AttemptInput::default()
                },
            )
            .expect("run");
        assert!(matches!(
            r.outcome,
            handyman_host::runtime::AttemptOutcome::Done(_)
        ));
    });
    println!(
        "attempt (noop: fresh Store, instantiate, call, teardown): n={n} p50={p50:.1} µs p99={p99:.1} µs (targets 5 / 10 µs)"
    );
}

/// A component whose `run` returns a constant; with `memory_pages`, it also owns a linear
/// memory of that many 64 KiB pages and writes to three of them, as a guest's stack, data and
/// heap would.
fn floor_component(memory_pages: Option<u32>) -> String {
    let (memory, stores) = match memory_pages {
        None => (String::new(), String::new()),
        Some(pages) => {
            let top = pages * 65536 - 16;
            (
                format!("(memory {pages})"),
                [top, top / 2, 16]
                    .map(|at| format!("(i32.store (i32.const {at}) (i32.const 1))"))
                    .join(" "),
            )
        }
    };
    format!(
        r#"(component
             (core module $m {memory} (func (export "run") (result i32) {stores} i32.const 42))
             (core instance $i (instantiate $m))
             (func (export "run") (result u32) (canon lift (core func $i "run"))))"#
    )
}

/// wasmtime's own cost of a fresh store, instantiation, a call and teardown, with the engine
/// the runtime builds (pooling allocator, fuel, epoch deadline callback).
fn bench_floor(n: usize) {
    use wasmtime::component::{Component, Linker};
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let engine = runtime.engine();
    for (label, pages) in [("no memory", None), ("one 17-page memory", Some(17))] {
        let wasm = wat::parse_str(floor_component(pages)).expect("valid WAT");
        let component = Component::new(engine, &wasm).expect("compiles");
        let pre = Linker::<()>::new(engine)
            .instantiate_pre(&component)
            .expect("no imports");
        // Resolved once, as the runtime does for a kind's exports at load.
        let run_export = component
            .get_export_index(None, "run")
            .expect("exports run");
        let (p50, p99) = p50_p99_us(n, |_| {
            let mut store = wasmtime::Store::new(engine, ());
            store.set_fuel(u64::MAX).expect("fuel is on");
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|_| Ok(wasmtime::UpdateDeadline::Continue(1)));
            let instance = pre.instantiate(&mut store).expect("instantiates");
            let run = instance
                .get_typed_func::<(), (u32,)>(&mut store, &run_export)
                .expect("run has the right type");
            let (answer,) = run.call(&mut store, ()).expect("runs");
            drop(store);
            assert_eq!(answer, 42);
        });
        println!(
            "floor (wasmtime alone, component with {label}: fresh Store, instantiate, call, teardown): n={n} p50={p50:.1} µs p99={p99:.1} µs"
        );
    }
}

/// Records when each attempt started.
struct Recording {
    inner: WasmExecutor,
    started: Mutex<HashMap<TaskId, Instant>>,
}

impl Executor for Recording {
    fn kinds(&self) -> Vec<KindInfo> {
        self.inner.kinds()
    }
    fn run(&self, job: Job) -> JobResult {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.id, Instant::now());
        self.inner.run(job)
    }
    fn stop(&self, id: TaskId, reason: StopReason) {
        self.inner.stop(id, reason)
    }
    fn stop_all(&self, reason: StopReason) {
        self.inner.stop_all(reason)
    }
}

fn bench_submit_to_start(tmp: &Path, n: usize) {
    let data = tmp.join("latency");
    std::fs::create_dir_all(&data).expect("mkdir");
    let exec = Arc::new(Recording {
        inner: WasmExecutor::load(&noop_only(tmp), Some(&tmp.join("cache")), 8).expect("load"),
        started: Mutex::new(HashMap::new()),
    });
    let running = driver::start(
        Box::new(SqliteStorage::open(&data).expect("open")),
        exec.clone(),
        DriverConfig {
            default_slots: 2,
            ..DriverConfig::default()
        },
    )
    .expect("start");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let id = rt
            .block_on(running.handle.submit(vec![TaskSpec::new("noop")]))
            .expect("submit")[0]
            .id();
        let started = loop {
            if let Some(s) = exec
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
            {
                break *s;
            }
            std::thread::yield_now();
        };
        times.push(started - t0);
        // Idle between submits: let the attempt end and commit.
        std::thread::sleep(Duration::from_millis(2));
    }
    running.handle.shutdown_blocking();
    running.join();
    times.sort();
    println!(
        "submit→start (idle, durable submit, in-process): n={n} p50={:.2} ms p99={:.2} ms (target p99 5 ms)",
        us(percentile(&times, 0.5)) / 1e3,
        us(percentile(&times, 0.99)) / 1e3
    );
}

fn bench_end_to_end(tmp: &Path, total: usize, batch: usize, clients: usize) {
    let data = tmp.join("e2e-data");
    let plugins = noop_only(tmp);
    let cfg = tmp.join("e2e.toml");
    std::fs::write(&cfg, "[pools.default]\nslots = 64\n").expect("cfg");
    let mut child = Command::new(env!("CARGO_BIN_EXE_handyman"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--plugins")
        .arg(&plugins)
        .arg("--config")
        .arg(&cfg)
        .arg("--cache-dir")
        .arg(tmp.join("cache"))
        .env("HANDYMAN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let url = line
        .trim()
        .strip_prefix("handyman listening on ")
        .expect("address line")
        .to_string();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let body: String = Value::Array(vec![json!({"kind": "noop"}); batch]).to_string();
    let start = Instant::now();
    let per_client = total / clients / batch;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (agent, url, body) = (agent.clone(), url.clone(), body.clone());
            std::thread::spawn(move || {
                for _ in 0..per_client {
                    agent
                        .post(&format!("{url}/v1/tasks"))
                        .send_string(&body)
                        .expect("submit");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let submitted = start.elapsed();
    let n = (per_client * clients * batch) as u64;
    loop {
        let m = agent
            .get(&format!("{url}/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text");
        let done = m
            .lines()
            .find_map(|l| l.strip_prefix("handyman_tasks{state=\"succeeded\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if done >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let all = start.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "end to end (HTTP submit in batches of {batch} from {clients} clients, pool of 64 slots, durable, noop run, durable result): {n} tasks in {:.2} s = {:.0} tasks/s (submits alone {:.0} tasks/s; target 20,000/s)",
        all.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
        n as f64 / submitted.as_secs_f64()
    );
}

/// CPU time this process has used so far (all threads), from /proc/self/stat: on a shared
/// machine, CPU per task is steadier than wall time.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // utime and stime, counted from after the command name, which is in parentheses and may
    // hold spaces.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // The kernel reports clock ticks; USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn bench_driver(tmp: &Path, total: usize, batch: usize) {
    let data = tmp.join("driver");
    std::fs::create_dir_all(&data).expect("mkdir");
    let exec = Arc::new(FakeExecutor::new().with("noop", "default", FakeExecutor::echo()));
    let running = driver::start(
        Box::new(SqliteStorage::open(&data).expect("open")),
        exec,
        DriverConfig {
            default_slots: 64,
            ..DriverConfig::default()
        },
    )
    .expect("start");
    let h = running.handle.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let start = Instant::now();
    let cpu_start = process_cpu();
    for _ in 0..total / batch {
        rt.block_on(h.submit(vec![TaskSpec::new("noop"); batch]))
            .expect("submit");
    }
    let submitted = start.elapsed();
    let n = (total / batch * batch) as u64;
    while h
        .query_blocking(|ctx| ctx.core.counts().succeeded)
        .expect("query")
        < n
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let all = start.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_start);
    h.shutdown_blocking();
    running.join();
    println!(
        "driver (in process, no HTTP, handlers return at once, 64 slots, durable both ways): {n} tasks in {:.2} s = {:.0} tasks/s, {:.1} µs CPU per task (submits alone {:.0} tasks/s)",
        all.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
        us(cpu) / n as f64,
        n as f64 / submitted.as_secs_f64()
    );
}

fn bench_restart(tmp: &Path, tasks: u64) {
    let data = tmp.join("restart");
    std::fs::create_dir_all(&data).expect("mkdir");
    let gen_start = Instant::now();
    {
        let mut storage = SqliteStorage::open(&data).expect("open");
        let config = CoreConfig::default();
        storage
            .set_meta(
                "core_config",
                &serde_json::to_string(&config).expect("config json"),
            )
            .expect("meta");
        let mut core = Core::new(config);
        core.set_pool_slots(0, "default", 2);
        let mut submitted = 0;
        while submitted < tasks {
            let n = (tasks - submitted).min(10_000);
            let specs: Vec<TaskSpec> = (0..n)
                .map(|i| TaskSpec::new("noop").group(format!("g{}", i % 100)))
                .collect();
            core.submit_batch(submitted / 10, specs).expect("submit");
            submitted += n;
            storage
                .commit(&Batch {
                    events: core.drain_journal(),
                    ..Batch::default()
                })
                .expect("commit");
        }
    }
    let generated = gen_start.elapsed();
    let exec =
        Arc::new(WasmExecutor::load(&noop_only(tmp), Some(&tmp.join("cache")), 8).expect("load"));
    let start = Instant::now();
    // Slots 0: measure recovery, not running a million tasks.
    let running = driver::start(
        Box::new(SqliteStorage::open(&data).expect("open")),
        exec,
        DriverConfig {
            pools: [("default".to_string(), 0)].into_iter().collect(),
            default_slots: 0,
            ..DriverConfig::default()
        },
    )
    .expect("start");
    let ready = start.elapsed();
    let r = running.recovery;
    running.handle.shutdown_blocking();
    running.join();
    let db_bytes = std::fs::metadata(data.join("handyman.db"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(data.join("handyman.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "restart with {tasks} journaled tasks ({} events, {:.0} MB): ready in {:.2} s (replay {:.2} s; target 3 s); journal written in {:.1} s",
        r.events,
        db_bytes as f64 / 1e6,
        ready.as_secs_f64(),
        r.elapsed.as_secs_f64(),
        generated.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "quick");
    let only: Option<&str> = args
        .iter()
        .skip(1)
        .find(|a| ["attempt", "floor", "latency", "e2e", "driver", "restart"].contains(&a.as_str()))
        .map(String::as_str);
    let tmp = tempfile::tempdir().expect("tmp");
    let want = |name: &str| only.is_none_or(|o| o == name);
    if want("attempt") {
        bench_attempt(tmp.path(), if quick { 2_000 } else { 20_000 });
    }
    if want("floor") {
        bench_floor(if quick { 2_000 } else { 20_000 });
    }
    if want("latency") {
        bench_submit_to_start(tmp.path(), if quick { 200 } else { 1_000 });
    }
    if want("e2e") {
        bench_end_to_end(tmp.path(), if quick { 20_000 } else { 200_000 }, 1000, 4);
    }
    if want("driver") {
        bench_driver(tmp.path(), if quick { 50_000 } else { 200_000 }, 1000);
    }
    if want("restart") {
        bench_restart(tmp.path(), if quick { 100_000 } else { 1_000_000 });
    }
}
