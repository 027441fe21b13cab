//! backflow node: Kafka I/O, runtime, configuration, metrics and HTTP.
//!
//! Data flows source → raw topic → distributor → share topic → sink; this
//! crate owns everything between the connectors and Kafka. Its folders are
//! layers, each importing only from those before it (`tests/layers.rs`
//! checks it):
//!
//! 0. [`domain`]: topic names, provenance headers, share policy,
//!    principals, the restart policy; no I/O.
//! 1. [`metrics`], [`events`] (a log line and its counter in one call).
//! 2. [`kafka`] (publisher, consumer, leases, topic and ACL
//!    administration, the embedded broker) and [`registry`] (the schema
//!    registry's store).
//! 3. What configuration sections share (`config::section`: the error
//!    naming a key, secret resolution), the feeds' section
//!    ([`source::config`]) and [`standards`]. Every other section lives
//!    with its owner.
//! 4. [`state`] (catalog, audit trail, offsets), [`auth`], [`admission`].
//! 5. [`source`] (feeds), [`distributor`], [`subscribe`], [`lag`],
//!    [`upper`], [`holders`], [`acls`] (child nodes' Kafka ACLs), [`http`].
//! 6. [`control`]: the API, the registry's REST API, the dashboard.
//! 7. [`config`] (assembles the sections into one configuration and checks
//!    them together) and [`runtime`] (the processes behind `backflow serve`
//!    and `subscribe`).

pub mod acls;
pub mod admission;
pub mod auth;
pub mod config;
pub mod control;
pub mod distributor;
pub mod domain;
pub mod events;
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
