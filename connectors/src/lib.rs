//! backflow's connectors: sources that capture database changes and sinks
//! that apply them. Connectors know nothing about Kafka: a [`Source`] yields
//! change events with positions and accepts acknowledgements; a [`Sink`]
//! applies batches and reports what it committed. The `backflow` crate wires
//! them to Kafka, so every connector is testable with a database alone.
//!
//! Errors carry an [`ErrorKind`] that decides what the runtime does:
//! transient errors are retried with backoff, definite ones stop the
//! connector (or, for one bad record, send it to the dead-letter topic).

mod connect;
mod error;
pub mod mysql;
pub mod poll;
pub mod postgres;
pub mod sink;
mod source;
pub mod text;

pub use error::{ConnectorError, ErrorKind};
pub use sink::{
    row_version, Applied, Provenance, ReadBack, RowDigests, Sink, SinkBatch, SinkRecord,
    TopicOffset,
};
pub use source::{
    now_ms, Position, RejectedRecord, SnapshotStatus, Source, SourceBatch, SourceGauges,
    SourceRecord,
};
