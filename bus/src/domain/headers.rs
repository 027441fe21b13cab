//! The names of the Kafka record headers backflow writes: provenance that
//! travels with every change across hops, and the reasons dead letters
//! carry. They are part of the contract with every consumer of backflow's
//! topics.

/// Header: `<node>/<feed>` that captured the change.
pub const HEADER_ORIGIN: &str = "backflow.origin";
/// Header: source commit time in ms, kept across hops.
pub const HEADER_ORIGIN_TS: &str = "backflow.origin_ts";
/// Header: comma-separated nodes the record passed.
pub const HEADER_HOPS: &str = "backflow.hops";
/// Header: the version of the share policy a record was produced under.
pub const HEADER_POLICY: &str = "backflow.policy";
/// Header of the records a retraction appends: why.
pub const HEADER_RETRACTION: &str = "backflow.retraction";
/// Header on dead letters: why the record was refused.
pub const HEADER_DLQ_REASON: &str = "backflow.dlq.reason";
/// Header on dead letters a standard refused: the violated rules as
/// `field:rule,field:rule`.
pub const HEADER_DLQ_RULES: &str = "backflow.dlq.rules";
/// Header on dead letters: the topic the record came from.
pub const HEADER_DLQ_TOPIC: &str = "backflow.dlq.topic";
/// Header on dead letters: its partition.
pub const HEADER_DLQ_PARTITION: &str = "backflow.dlq.partition";
/// Header on dead letters: its offset.
pub const HEADER_DLQ_OFFSET: &str = "backflow.dlq.offset";
