//! What every section's owner uses to read its part of the configuration:
//! the error that names the key at fault and where its value came from,
//! and the reading of a password from an environment variable or a file.
//! The sections themselves live with their owners (`source::config`,
//! `subscribe::config`, `distributor::share`, ...); `config` assembles them.

use std::path::PathBuf;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given does not exist or cannot be read.
    #[error("cannot read configuration file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// The file is not valid TOML.
    #[error("configuration file {path} is not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    /// A key that backflow does not know.
    #[error("invalid configuration: unknown key `{key}` in {origin}; {hint}")]
    UnknownKey {
        key: String,
        origin: String,
        hint: String,
    },
    /// A key with a value of the wrong type or outside its range.
    #[error("invalid configuration: {key} in {origin}: {reason}")]
    BadValue {
        key: String,
        origin: String,
        reason: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::BadValue { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Reads a password from an environment variable or a file (first line
/// ending stripped); `key` prefixes the setting named in errors.
pub fn resolve_password(
    env: Option<&str>,
    file: Option<&str>,
    key: &str,
    origin: &str,
) -> Result<Option<String>, ConfigError> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| ConfigError::BadValue {
                key: format!("{key}.password_env"),
                origin: origin.to_owned(),
                reason: format!("environment variable {var} is not set"),
            });
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::BadValue {
            key: format!("{key}.password_file"),
            origin: origin.to_owned(),
            reason: format!("cannot read {file}: {e}"),
        })?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(None)
}
