//! The end-to-end tests: the real `backflow` binary against real services
//! (PostgreSQL, MariaDB, Apache Kafka, a browser), one module per area.
//!
//! They are one test binary rather than one per file: every file linked the
//! whole node and its drivers again, which cost minutes of linking and tens of
//! gigabytes of disk on a 2-core machine. Run one area with a filter, e.g.
//! `cargo test -p backflow-e2e --test e2e exactly_once::`.

mod audit;
mod authorization;
mod cascade;
mod cascade_bounds;
mod catalog_trust;
mod chaos;
mod cluster_faults;
mod column_types;
mod control_plane;
mod dashboard;
mod database_tls;
mod demo;
mod distributor;
mod distributor_group;
mod exactly_once;
mod faults;
mod feed_failures;
mod feeds_api;
mod helm_chart;
mod https;
mod interop;
mod isolation;
mod kafka_io;
mod kafka_security;
mod lag;
mod lag_status;
mod monitoring_files;
mod mysql_source;
mod node;
mod poll_source;
mod postgres_source;
mod reconcile;
mod registry;
mod registry_auth;
mod replica_decisions;
mod security;
mod sinks;
mod standards;
mod subscribe;
mod tokens;
mod topic_prefix;
mod workbench;
mod zero_trust_attacks;
