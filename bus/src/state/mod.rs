//! The state a node keeps in Kafka: the catalog of datasets, subscriptions,
//! feeds and tokens; the signed audit trail; the feeds' stored positions.

pub mod audit;
pub mod catalog;
pub mod offsets;
