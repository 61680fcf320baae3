//! What can go wrong on the host's side: setting up the engine, loading a kind, starting an
//! attempt. What a guest does wrong is not an error here but an [`AttemptOutcome`].
//!
//! [`AttemptOutcome`]: super::AttemptOutcome

use std::path::PathBuf;

/// A `KIND.toml` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or a field that is not known (a typo?).
    #[error("not a valid KIND.toml: {0}")]
    Toml(String),
    /// A known field with a value that does not fit.
    #[error("field `{field}`: {message}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with its value.
        message: String,
    },
}

/// A failure of the runtime itself or of a kind it was asked to load or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The wasmtime engine could not be built (the pooling allocator could not reserve its
    /// address space, for instance). Lower `RuntimeConfig::max_instances`.
    #[error("cannot set up the wasmtime engine: {0}")]
    Engine(String),
    /// A file of the plugins or cache directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The kind's `KIND.toml` is wrong; fix it and load the kind again.
    #[error("kind `{kind}`: {path}: {source}")]
    Config {
        /// The kind.
        kind: String,
        /// Its `KIND.toml`.
        path: PathBuf,
        /// What is wrong.
        source: ConfigError,
    },
    /// The kind's `.wasm` is not a WebAssembly component (a core module, or a broken file).
    /// Build it as a component (`wasm32-wasip2`, `wasm-tools component new`, componentize-py).
    #[error("kind `{kind}`: not a valid WebAssembly component: {message}")]
    Compile {
        /// The kind.
        kind: String,
        /// wasmtime's reason.
        message: String,
    },
    /// The component does not implement the `handyman:task/handler` world: it imports something
    /// the host does not offer, or lacks an export. Rebuild it against `wit/handyman.wit`.
    #[error(
        "kind `{kind}`: the component does not fit the handyman:task/handler world: {message}"
    )]
    WrongWorld {
        /// The kind.
        kind: String,
        /// What it imports that the host lacks, or what export is missing or mistyped.
        message: String,
    },
    /// A grant in the kind's `KIND.toml` names something the host cannot open.
    #[error("kind `{kind}`: cannot open granted directory {host}: {message}")]
    Grant {
        /// The kind.
        kind: String,
        /// The host directory.
        host: PathBuf,
        /// Why it cannot be opened.
        message: String,
    },
    /// No kind of this name is loaded.
    #[error("no handler is loaded for kind `{0}`")]
    UnknownKind(String),
    /// A kind's name must be usable as a file name: letters, digits, `-` and `_`.
    #[error("`{0}` is not a valid kind name (letters, digits, '-' and '_' only)")]
    InvalidKindName(String),
}
