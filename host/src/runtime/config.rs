//! A kind's configuration: the optional `KIND.toml` beside `KIND.wasm`.
//!
//! ```toml
//! pool = "warehouse"          # worker pool; default "default"
//! max_runtime = "10m"         # humantime; default "1h"
//! memory_limit = "128MiB"     # bytes (integer) or with a unit; default "256MiB"
//! fuel = 5_000_000_000        # optional instruction budget per attempt; default unlimited
//! max_checkpoint = "1MiB"     # largest checkpoint `checkpoint.save` accepts; default 1 MiB
//!
//! [grants]                    # what WASI may reach; default nothing
//! env = ["TZ", "LANG"]        # host variables passed through by name, or `true` for all
//! dirs = [{ host = "/srv/in", guest = "/in" },
//!         { host = "/srv/out", guest = "/out", writable = true }]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::ConfigError;

/// The default worker pool of a kind that names none.
pub const DEFAULT_POOL: &str = "default";
/// The longest an attempt of a kind may run when its `KIND.toml` sets no `max_runtime`.
pub const DEFAULT_MAX_RUNTIME: Duration = Duration::from_secs(60 * 60);
/// The memory an attempt may use when its kind sets no `memory_limit`.
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 << 20;
/// The largest checkpoint accepted when a kind sets no `max_checkpoint`.
pub const DEFAULT_MAX_CHECKPOINT: u64 = 1 << 20;

/// How a kind's attempts run: limits and grants, from its `KIND.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindConfig {
    /// The worker pool the kind's tasks run in.
    pub pool: String,
    /// The longest one attempt may run; a longer attempt is interrupted (`Timeout`).
    pub max_runtime: Duration,
    /// The most linear memory (bytes, all memories together) one attempt may use.
    pub memory_limit: u64,
    /// Instruction budget per attempt; `None` is unlimited (in practice `u64::MAX`).
    pub fuel: Option<u64>,
    /// The largest checkpoint `checkpoint.save` accepts, in bytes.
    pub max_checkpoint: u64,
    /// What the kind may reach through WASI beyond the empty context.
    pub grants: Grants,
}

impl Default for KindConfig {
    fn default() -> Self {
        KindConfig {
            pool: DEFAULT_POOL.to_owned(),
            max_runtime: DEFAULT_MAX_RUNTIME,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            fuel: None,
            max_checkpoint: DEFAULT_MAX_CHECKPOINT,
            grants: Grants::default(),
        }
    }
}

/// What an operator opened to a kind through WASI. The default opens nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host environment variables the guest sees.
    pub env: EnvGrant,
    /// Host directories preopened for the guest.
    pub dirs: Vec<DirGrant>,
}

/// Which host environment variables a kind sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EnvGrant {
    /// None (the default).
    #[default]
    None,
    /// All of the host's environment (`env = true`).
    All,
    /// Exactly these variables, when set on the host (`env = ["TZ"]`).
    Names(Vec<String>),
}

/// One host directory opened to a kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may write there (default: read only).
    #[serde(default)]
    pub writable: bool,
}

impl KindConfig {
    /// Parses the text of a `KIND.toml`; missing fields take their defaults.
    pub fn from_toml(text: &str) -> Result<KindConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        let mut config = KindConfig::default();
        if let Some(pool) = raw.pool {
            if pool.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "pool",
                    message: "must not be empty".to_owned(),
                });
            }
            config.pool = pool;
        }
        if let Some(text) = raw.max_runtime {
            config.max_runtime =
                humantime::parse_duration(&text).map_err(|e| ConfigError::Invalid {
                    field: "max_runtime",
                    message: format!("{text:?} is not a duration like \"30s\" or \"10m\": {e}"),
                })?;
            if config.max_runtime.is_zero() {
                return Err(ConfigError::Invalid {
                    field: "max_runtime",
                    message: "must be above zero".to_owned(),
                });
            }
        }
        if let Some(size) = raw.memory_limit {
            config.memory_limit = size.bytes("memory_limit")?;
        }
        config.fuel = raw.fuel;
        if let Some(size) = raw.max_checkpoint {
            config.max_checkpoint = size.bytes("max_checkpoint")?;
        }
        if let Some(grants) = raw.grants {
            config.grants.env = match grants.env {
                None | Some(RawEnv::All(false)) => EnvGrant::None,
                Some(RawEnv::All(true)) => EnvGrant::All,
                Some(RawEnv::Names(names)) => EnvGrant::Names(names),
            };
            config.grants.dirs = grants.dirs.unwrap_or_default();
        }
        Ok(config)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pool: Option<String>,
    max_runtime: Option<String>,
    memory_limit: Option<RawSize>,
    fuel: Option<u64>,
    max_checkpoint: Option<RawSize>,
    grants: Option<RawGrants>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    env: Option<RawEnv>,
    dirs: Option<Vec<DirGrant>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawEnv {
    All(bool),
    Names(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    fn bytes(self, field: &'static str) -> Result<u64, ConfigError> {
        match self {
            RawSize::Bytes(n) => Ok(n),
            RawSize::Text(text) => parse_size(&text).ok_or_else(|| ConfigError::Invalid {
                field,
                message: format!(
                    "{text:?} is not a size like 67108864, \"64MiB\", \"512KiB\" or \"1GB\""
                ),
            }),
        }
    }
}

/// Parses "64MiB", "64 MB", "1024", "512k": binary units for `Ki/Mi/Gi`, decimal for `k/M/G`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(KindConfig::from_toml("").unwrap(), KindConfig::default());
    }

    #[test]
    fn every_field_parses() {
        let config = KindConfig::from_toml(
            r#"
            pool = "warehouse"
            max_runtime = "1m 30s"
            memory_limit = "64MiB"
            fuel = 1000
            max_checkpoint = 4096
            [grants]
            env = ["TZ"]
            dirs = [{ host = "/srv/in", guest = "/in" }, { host = "/tmp", guest = "/tmp", writable = true }]
            "#,
        )
        .unwrap();
        assert_eq!(config.pool, "warehouse");
        assert_eq!(config.max_runtime, Duration::from_secs(90));
        assert_eq!(config.memory_limit, 64 << 20);
        assert_eq!(config.fuel, Some(1000));
        assert_eq!(config.max_checkpoint, 4096);
        assert_eq!(config.grants.env, EnvGrant::Names(vec!["TZ".to_owned()]));
        assert_eq!(config.grants.dirs.len(), 2);
        assert!(config.grants.dirs[1].writable);
        assert!(!config.grants.dirs[0].writable);
    }

    #[test]
    fn env_true_grants_everything() {
        let config = KindConfig::from_toml("[grants]\nenv = true").unwrap();
        assert_eq!(config.grants.env, EnvGrant::All);
    }

    #[test]
    fn mistakes_are_refused_with_the_field_named() {
        let err = KindConfig::from_toml("max_runtime = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("max_runtime"), "{err}");
        let err = KindConfig::from_toml("memory_limit = \"lots\"").unwrap_err();
        assert!(err.to_string().contains("memory_limit"), "{err}");
        let err = KindConfig::from_toml("memroy_limit = 5").unwrap_err();
        assert!(err.to_string().contains("memroy_limit"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("64 mb"), Some(64_000_000));
        assert_eq!(parse_size("1_024"), Some(1024));
        assert_eq!(parse_size("2Gi"), Some(2 << 30));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }
}
