//! Configuration: flags win over environment variables, which win over the config file
//! (`--config FILE` or `KIZUNA_CONFIG`, TOML), which wins over the defaults.

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Keys accepted in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL.
    pub database_url: Option<String>,
    /// SQLite durability: `full` or `normal`.
    pub sqlite_synchronous: Option<String>,
    /// Largest CSV upload, in MiB.
    pub max_import_mib: Option<u64>,
    /// Log format: `text` or `json`.
    pub log_format: Option<String>,
    /// Email settings (docs/email.md).
    pub mail: Option<crate::mail::MailConfig>,
}

impl FileConfig {
    /// Reads the file, if one was named.
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}
