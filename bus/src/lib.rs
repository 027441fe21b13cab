//! backflow node: Kafka I/O, runtime, configuration, metrics and HTTP.
//!
//! Data flows source → raw topic → distributor → share topic → sink; this
//! crate owns everything between the connectors and Kafka. The parts so far:
//!
//! - [`config`]: TOML + environment configuration with errors naming the key.
//! - [`kafka`]: idempotent publisher with back-pressure, consumer with
//!   caller-stored offsets, topic administration, embedded broker.
//! - [`node`]: the runtime behind `backflow serve`.
//! - [`registry`]: the Confluent-compatible schema registry, stored in Kafka.
//! - [`feed`]: source connectors into raw topics; [`distributor`]: raw
//!   topics into each subscriber's share topic, filtered and masked;
//!   [`subscribe`]: share topics into a subscriber's database.
//! - [`http`], [`metrics`], [`telemetry`]: operational surface.
//! - [`topics`]: topic names as DESIGN.md fixes them.

pub mod admission;
pub mod auth;
pub mod config;
pub mod control;
pub mod distributor;
pub mod domain;
pub mod holders;
pub mod http;
pub mod kafka;
pub mod lag;
pub mod metrics;
pub mod registry;
pub mod runtime;
pub mod source;
pub mod standards;
pub mod state;
pub mod subscribe;
pub mod upper;

/// backflow's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
