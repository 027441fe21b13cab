//! Logging setup: human-readable or JSON lines on stderr.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber. `RUST_LOG`, when set, overrides
/// the configured level. Calling it twice is harmless (the first one wins).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Human => builder.with_target(true).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
