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
pub mod api;
pub mod audit;
pub mod auth;
pub mod cascade;
pub mod catalog;
pub mod config;
pub mod dashboard;
pub mod distributor;
pub mod domain;
pub mod feed;
pub mod feeds;
pub mod holders;
pub mod http;
pub mod kafka;
pub mod lag;
pub mod metrics;
pub mod node;
pub mod offsets;
pub mod reconcile;
pub mod registry;
pub mod restart;
pub mod standards;
pub mod subscribe;
pub mod telemetry;
pub mod topic_state;
pub mod upper;

/// backflow's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
