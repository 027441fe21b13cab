//! What a process runs: the node (`backflow serve`, `backflow source`) and
//! the subscriber (`backflow subscribe`), and their logging.

pub mod node;
pub mod telemetry;

use serde::{Deserialize, Serialize};

/// Process lifecycle settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// How long a graceful shutdown may take before the process gives up
    /// waiting for its tasks, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Interval between Kafka reachability checks behind `/readyz`, in
    /// milliseconds.
    pub readiness_interval_ms: u64,
    /// Window over which subscription and feed statuses (OK, WARN, STALL,
    /// STOP) are judged, in seconds.
    pub lag_window_secs: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout_ms: 10_000,
            readiness_interval_ms: 5_000,
            lag_window_secs: 60,
        }
    }
}
