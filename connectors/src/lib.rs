//! backflow's connectors: sources that capture database changes and sinks
//! that apply them. Connectors know nothing about Kafka: a [`Source`] yields
//! change events with positions and accepts acknowledgements; a [`Sink`]
//! applies batches and reports what it committed. The `backflow` crate wires
//! them to Kafka, so every connector is testable with a database alone.
//!
//! Errors carry an [`ErrorKind`] that decides what the runtime does:
//! transient errors are retried with backoff, definite ones are not retried
//! in a loop (the connector shows FAILED with the fix and is tried again
//! once a minute, so it resumes once fixed), and one bad record goes to the
//! dead-letter topic.

mod connect;
mod error;
pub mod mysql;
pub mod poll;
pub mod postgres;
pub mod sink;
mod source;
pub mod text;

pub use connect::tls;
pub use error::{ConnectorError, ErrorKind};
pub use sink::{
    row_version, Applied, Provenance, ReadBack, RowDigests, Sink, SinkBatch, SinkRecord,
    TopicOffset,
};
pub use source::{
    now_ms, Position, RejectedRecord, SnapshotStatus, Source, SourceBatch, SourceGauges,
    SourceRecord,
};
