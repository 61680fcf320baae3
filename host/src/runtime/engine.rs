//! The one wasmtime `Engine` of a runtime, the epoch ticker, and the on-disk cache of compiled
//! components.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::error::RuntimeError;

/// The largest linear memory any kind may be given; per-kind limits sit below it.
const MAX_MEMORY_SIZE: usize = 4 << 30;
/// How much of each linear memory (and table) a free slot keeps mapped for the next attempt.
const MEMORY_KEEP_RESIDENT: usize = 512 << 10;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Builds the engine: component model, pooling allocator sized for `max_instances` concurrent
/// attempts, epoch interruption, fuel.
pub(crate) fn build_engine(max_instances: u32) -> Result<Engine, RuntimeError> {
    let mut pool = PoolingAllocationConfig::new();
    // Components made by wasm-component-ld or componentize-py hold a handful of core
    // instances (the program, libc, adapters, shims), some with their own memory and tables.
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances.saturating_mul(20))
        .total_memories(max_instances.saturating_mul(4))
        .total_tables(max_instances.saturating_mul(20))
        .max_core_instances_per_component(50)
        .max_memories_per_component(10)
        .max_tables_per_component(50)
        .max_tables_per_module(10)
        .max_memories_per_module(2)
        .table_elements(100_000)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .max_memory_size(MAX_MEMORY_SIZE)
        // Resetting a slot for the next attempt by `madvise` costs a syscall with a TLB
        // shootdown per memory and table, and the next attempt then page-faults its stack,
        // data and heap back in: most of an attempt of a small guest. Kept-resident pages are
        // restored by copying instead, and PAGEMAP_SCAN (Linux 6.7+) finds the few pages the
        // guest actually wrote, so only those are copied. Without PAGEMAP_SCAN wasmtime would
        // `memset` the whole kept size on every attempt, hence a modest size: 512 KiB covers
        // a small Rust guest's stack, data and first heap pages, while a slot never keeps
        // more than that resident between attempts.
        .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .consume_fuel(true)
        .max_wasm_stack(1 << 20);
    Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

/// Increments the engine's epoch every `tick` until dropped.
pub(crate) struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub fn start(engine: Engine, tick: Duration) -> Result<Ticker, RuntimeError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("handyman-epoch".to_owned())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Ticker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Compiles `bytes`, or loads the compiled artifact from `cache_dir` when an earlier run left
/// one for the same bytes and the same engine settings.
pub(crate) fn compile(
    engine: &Engine,
    kind: &str,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Component, RuntimeError> {
    let compile_now = || {
        Component::new(engine, bytes).map_err(|e| RuntimeError::Compile {
            kind: kind.to_owned(),
            message: format!("{e:#}"),
        })
    };
    let Some(dir) = cache_dir else {
        return compile_now();
    };
    let path = cache_path(engine, bytes, dir);
    if let Some(component) = load_cached(engine, kind, &path) {
        return Ok(component);
    }
    // One compilation of a given component at a time per process: a second runtime asking
    // for the same component waits, then finds it in the cache.
    static COMPILING: Mutex<BTreeMap<PathBuf, Arc<Mutex<()>>>> = Mutex::new(BTreeMap::new());
    let slot = COMPILING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.clone())
        .or_default()
        .clone();
    let _one_at_a_time = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(component) = load_cached(engine, kind, &path) {
        return Ok(component);
    }
    let started = std::time::Instant::now();
    let component = compile_now()?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(kind, elapsed_ms, "compiled component");
    if let Err(e) = write_cache(&component, &path, dir) {
        tracing::warn!(kind, path = %path.display(), error = %e, "cannot cache the compiled component");
    }
    Ok(component)
}

/// The component compiled earlier into `path`, if it is there and loads.
fn load_cached(engine: &Engine, kind: &str, path: &Path) -> Option<Component> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: `deserialize_file` trusts its input to be an artifact that wasmtime wrote.
    // We only read from our own cache directory, whose files we write ourselves from
    // `Component::serialize`, under a name that includes the engine's compatibility hash.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(component) => {
            tracing::debug!(kind, path = %path.display(), "loaded compiled component from cache");
            Some(component)
        }
        Err(e) => {
            tracing::warn!(kind, path = %path.display(), error = %format!("{e:#}"),
                "unusable cache entry; compiling again");
            None
        }
    }
}

fn write_cache(component: &Component, path: &Path, dir: &Path) -> Result<(), String> {
    let artifact = component.serialize().map_err(|e| format!("{e:#}"))?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    // Write under a unique name, then rename: readers never see half a file, and two hosts
    // (or tests) compiling the same component at once do not trample each other.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, artifact).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

/// `DIR/<sha256 of the component bytes, wasmtime's version and the engine's settings>.cwasm`.
fn cache_path(engine: &Engine, bytes: &[u8], dir: &Path) -> PathBuf {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hasher.0.update(b"\0handyman-cache-v1\0");
    hasher.0.update(bytes);
    let digest = hasher.0.finalize();
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.cwasm"))
}
