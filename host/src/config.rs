//! The server's `--config FILE`: core settings, pools and groups, and the API's limits.
//!
//! ```toml
//! [core]                      # handyman_core::CoreConfig; fixed at the first start
//! policy = "handyman"
//! interrupt_grace_ms = 5000
//! share_half_life_ms = 3600000
//! max_payload_bytes = 1048576
//!
//! [pools.default]
//! slots = 4
//!
//! [groups.pipeline-42]
//! weight = 2
//! cap = 4
//! floor = 1
//!
//! [api]
//! max_body_bytes = 16777216
//! ```
//! Every section is optional: `handyman serve` with no config runs pool `default` with one
//! slot per CPU.

use std::collections::BTreeMap;
use std::path::Path;

use handyman_core::{CoreConfig, GroupConfig};
use serde::Deserialize;

/// The whole server configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub core: Option<CoreConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
    pub groups: BTreeMap<String, GroupConfig>,
    pub api: ApiConfig,
}

/// A pool's size.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub slots: u32,
}

/// Limits of the HTTP API.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most tasks in one submit.
    pub max_batch: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 16 << 20,
            max_batch: 10_000,
        }
    }
}

/// Why the config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ServerConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<ServerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Slots of a pool the config does not name: one per CPU.
    pub fn default_slots() -> u32 {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let c = ServerConfig::parse(
            "[core]\npolicy = \"fifo\"\n[pools.default]\nslots = 3\n[groups.a]\nweight = 2\ncap = 4\n",
        )
        .expect("parses");
        assert_eq!(c.pools["default"].slots, 3);
        assert_eq!(c.groups["a"].cap, 4);
        assert_eq!(c.groups["a"].floor, 1);
        assert!(c.core.is_some());
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = ServerConfig::parse("[pools.default]\nslotz = 3\n").expect_err("refused");
        assert!(err.contains("slotz"), "{err}");
    }
}
