//! `handyman serve`: storage, runtime, driver and HTTP API together.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, ApiState};
use crate::config::{ConfigError, ServerConfig};
use crate::driver::{self, DriverConfig, StartError};
use crate::executor::Executor;
use crate::runtime::RuntimeError;
use crate::storage::{SqliteStorage, StorageError};
use crate::wasm::WasmExecutor;

/// What `serve` was given.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub plugins: PathBuf,
    pub listen: String,
    pub token_file: Option<PathBuf>,
    /// Where compiled components are cached; `DATA_DIR/compiled` by default.
    pub cache_dir: Option<PathBuf>,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot load plugins from {path}: {source}")]
    Plugins { path: PathBuf, source: RuntimeError },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("async runtime: {0}")]
    Tokio(std::io::Error),
}

/// Logs go to stderr; `HANDYMAN_LOG` (or `RUST_LOG`) sets the filter, `info` by default.
pub fn init_logging() {
    let filter = std::env::var("HANDYMAN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .compact()
        .try_init();
}

/// Runs the server until SIGTERM or ctrl-c.
pub fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    init_logging();
    let config = match &opts.config {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::default(),
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| ServeError::DataDir {
        path: opts.data_dir.clone(),
        source,
    })?;
    let token = match &opts.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ServeError::Token {
                path: path.clone(),
                source,
            })?;
            let t = text.trim().to_string();
            if t.is_empty() {
                return Err(ServeError::EmptyToken(path.clone()));
            }
            Some(Arc::<str>::from(t))
        }
        None => None,
    };
    let default_slots = ServerConfig::default_slots();
    let total_slots: u32 = config.pools.values().map(|p| p.slots).sum::<u32>() + default_slots;
    let cache = opts
        .cache_dir
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("compiled"));
    let executor =
        WasmExecutor::load(&opts.plugins, Some(&cache), total_slots * 2 + 8).map_err(|source| {
            ServeError::Plugins {
                path: opts.plugins.clone(),
                source,
            }
        })?;
    for k in executor.kinds() {
        tracing::info!(kind = %k.name, pool = %k.pool, loaded = k.load_error.is_none(), "kind");
    }
    let storage = Box::new(SqliteStorage::open(&opts.data_dir)?);
    let max_payload_bytes = config
        .core
        .as_ref()
        .map(|c| c.max_payload_bytes)
        .unwrap_or_else(|| handyman_core::CoreConfig::default().max_payload_bytes);
    let running = driver::start(
        storage,
        Arc::new(executor),
        DriverConfig {
            core: config.core.clone(),
            pools: config
                .pools
                .iter()
                .map(|(k, v)| (k.clone(), v.slots))
                .collect(),
            groups: config.groups.clone(),
            default_slots,
        },
    )?;
    let r = running.recovery;
    tracing::info!(
        events = r.events,
        tasks = r.tasks,
        lost_attempts = r.lost_attempts,
        ms = r.elapsed.as_millis() as u64,
        "recovered from the journal"
    );
    let handle = running.handle.clone();
    let state = ApiState {
        driver: handle.clone(),
        token,
        max_batch: config.api.max_batch,
        max_payload_bytes,
    };
    let app = api::router(state, config.api.max_body_bytes);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Tokio)?;
    let listen = opts.listen.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: listen.clone(),
            source,
        })?;
        // The first line on stdout: tests and scripts read the port from it.
        println!("handyman listening on http://{addr}");
        tracing::info!(%addr, "listening");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driver = handle.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: stopping");
            driver.shutdown().await;
            let _ = stop_tx.send(());
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server");
        }
        Ok::<(), ServeError>(())
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    running.join();
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
