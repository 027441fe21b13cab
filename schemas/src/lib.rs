//! backflow's wire format.
//!
//! - [`TableDesc`]: a captured table (columns with SQL types, primary key).
//! - [`codec`]: Avro key and value schemas generated from a table — the key a
//!   record of the primary-key columns, the value a Debezium-compatible
//!   envelope `{before, after, source, op, ts_ms, transaction}` — and
//!   [`TableCodec`] to encode and decode [`ChangeEvent`]s with them.
//! - [`wire`]: Confluent framing (magic byte 0, 4-byte big-endian schema id,
//!   Avro datum) and schema lookup by id.
//! - [`registry_client`]: a caching client of any Confluent-compatible
//!   schema registry.
//! - [`standard`]: data standards — a dataset's standard schema, a feed's
//!   mapping of its table into it, and the validation rules every event
//!   must meet before it is published.
//!
//! The fixed parts of the envelope are `.avsc` files in `schemas/avro/`.

mod binary;
pub mod codec;
pub mod datum;
pub mod event;
pub mod examples;
pub mod recover;
pub mod registry_client;
pub mod standard;
pub mod table;
pub mod types;
pub mod wire;

pub use codec::TableCodec;
pub use datum::{Datum, Decimal, Row};
pub use event::{ChangeEvent, EventRef, Op, Snapshot, SourceInfo, TransactionInfo};
pub use recover::{key_table_from_schema, protections, table_from_schemas, TableTarget};
pub use table::{ColumnDesc, Protection, TableDesc};
pub use types::SqlType;
pub use wire::{
    decode_framed, frame, unframe, EventReader, FramedReaders, SchemaCache, SchemaLookup, WireError,
};

/// Reads one Avro binary datum written with `schema`.
pub(crate) fn avro_read(
    schema: &apache_avro::Schema,
    reader: &mut &[u8],
) -> apache_avro::AvroResult<apache_avro::types::Value> {
    apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()?
        .read_value(reader)
}

/// A table, row or value that cannot be turned into (or read from) Avro.
/// Messages name the table and column, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A SQL type backflow does not map.
    #[error("unsupported SQL type {sql_type:?}: map the column to a supported type (see backflow_schemas::types) or leave it out of the feed")]
    UnknownType {
        /// The type text.
        sql_type: String,
    },
    /// Text that is not an exact decimal at the column's scale.
    #[error("invalid decimal {text:?}: {reason}")]
    BadDecimal {
        /// The text.
        text: String,
        /// Why.
        reason: String,
    },
    /// A table description that cannot become Avro schemas.
    #[error("table {table} cannot be captured: {reason}")]
    InvalidTable {
        /// `schema.table`.
        table: String,
        /// Why, and what to change.
        reason: String,
    },
    /// A row value that does not fit its column.
    #[error("table {table}, column {column}: {reason}")]
    BadRow {
        /// `schema.table`.
        table: String,
        /// Column name (empty when about the whole row).
        column: String,
        /// Why.
        reason: String,
    },
    /// The generated schema was refused by Avro.
    #[error("table {table}: generated Avro schema is invalid: {reason}")]
    Avro {
        /// `schema.table`.
        table: String,
        /// Avro's message.
        reason: String,
    },
    /// Encoding failed.
    #[error("table {table}: cannot encode: {reason}")]
    Encode {
        /// `schema.table`.
        table: String,
        /// Why.
        reason: String,
    },
    /// Bytes that do not decode with the table's schema.
    #[error("table {table}: cannot decode: {reason}")]
    Decode {
        /// `schema.table`.
        table: String,
        /// Why.
        reason: String,
    },
}
