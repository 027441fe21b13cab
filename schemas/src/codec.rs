//! Avro schemas generated from a table description, and encoding of keys and
//! change events with them.

use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use num_bigint::BigInt;
use serde_json::{json, Value as Json};

use crate::datum::{Datum, Decimal, Row};
use crate::event::{ChangeEvent, EventRef, Op, Snapshot, SourceInfo, TransactionInfo};
use crate::table::{ColumnDesc, TableDesc};
use crate::types::SqlType;
use crate::SchemaError;

/// The `Source` record of every envelope.
pub const SOURCE_AVSC: &str = include_str!("../avro/source.avsc");
/// The `Transaction` record of every envelope.
pub const TRANSACTION_AVSC: &str = include_str!("../avro/transaction.avsc");

/// Name of the custom field attribute holding the column's SQL type.
pub const SQL_TYPE_ATTRIBUTE: &str = "backflow.sql_type";

/// Field attribute of a column whose values a share policy masked: the
/// rule (`keep(6,4)`).
pub const MASKED_ATTRIBUTE: &str = "backflow.masked";
/// Field attribute of a column whose values a share policy hashed: `true`.
pub const HASHED_ATTRIBUTE: &str = "backflow.hashed";

fn field_json(c: &ColumnDesc) -> Json {
    let avro = c.sql_type.avro();
    let mut field = if c.nullable {
        json!({"name": c.name, "type": ["null", avro], "default": null, SQL_TYPE_ATTRIBUTE: c.sql_type.to_string()})
    } else {
        let mut field =
            json!({"name": c.name, "type": avro, SQL_TYPE_ATTRIBUTE: c.sql_type.to_string()});
        if let Some(default) = c
            .avro_default
            .as_deref()
            .and_then(|d| serde_json::from_str::<Json>(d).ok())
        {
            field["default"] = default;
        }
        field
    };
    match &c.protection {
        Some(crate::table::Protection::Masked(rule)) => field[MASKED_ATTRIBUTE] = json!(rule),
        Some(crate::table::Protection::Hashed) => field[HASHED_ATTRIBUTE] = json!(true),
        None => {}
    }
    field
}

/// The key schema of a table: a record `Key` of its primary-key columns.
pub fn key_schema_json(table: &TableDesc) -> Json {
    let fields: Vec<Json> = table.key_columns().into_iter().map(field_json).collect();
    json!({
        "type": "record",
        "name": "Key",
        "namespace": format!("backflow.{}", table.dataset),
        "fields": fields,
    })
}

/// The value schema of a table: the Debezium-style `Envelope` whose
/// `before` and `after` are records `Value` of all columns.
pub fn value_schema_json(table: &TableDesc) -> Json {
    let fields: Vec<Json> = table.columns.iter().map(field_json).collect();
    let value = json!({
        "type": "record",
        "name": "Value",
        "fields": fields,
    });
    let source: Json = serde_json::from_str(SOURCE_AVSC).expect("source.avsc is JSON");
    let transaction: Json =
        serde_json::from_str(TRANSACTION_AVSC).expect("transaction.avsc is JSON");
    json!({
        "type": "record",
        "name": "Envelope",
        "namespace": format!("backflow.{}", table.dataset),
        "doc": format!("Change events of {}.{} (dataset {})", table.schema, table.name, table.dataset),
        "fields": [
            {"name": "before", "type": ["null", value], "default": null},
            {"name": "after", "type": ["null", "Value"], "default": null},
            {"name": "source", "type": source},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
            {"name": "transaction", "type": ["null", transaction], "default": null},
        ],
    })
}

/// Encodes and decodes one table's keys and change events.
#[derive(Clone)]
pub struct TableCodec {
    table: Arc<TableDesc>,
    /// Index of each key column, in key order.
    key_index: Arc<[usize]>,
    key_schema: Arc<Schema>,
    value_schema: Arc<Schema>,
    io: Arc<Prepared>,
}

impl std::fmt::Debug for TableCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableCodec")
            .field("table", &self.table.qualified_name())
            .finish_non_exhaustive()
    }
}

/// Writers and readers with their schemas resolved once, not per record.
/// They borrow their schemas for `'static`: each codec leaks one copy of its
/// two schemas, which is bounded by the number of table versions a process
/// sees (a handful per table), in exchange for not resolving the envelope
/// schema on every event.
struct Prepared {
    key_writer: GenericDatumWriter<'static>,
    value_writer: GenericDatumWriter<'static>,
    key_reader: GenericDatumReader<'static>,
    value_reader: GenericDatumReader<'static>,
}

impl Prepared {
    fn new(key: &Schema, value: &Schema) -> apache_avro::AvroResult<Self> {
        let key: &'static Schema = Box::leak(Box::new(key.clone()));
        let value: &'static Schema = Box::leak(Box::new(value.clone()));
        Ok(Self {
            // Rows are checked against the table before encoding and the
            // envelope is built by this module, so Avro's own validation
            // pass would only repeat that work.
            key_writer: GenericDatumWriter::builder(key).validate(false).build()?,
            value_writer: GenericDatumWriter::builder(value).validate(false).build()?,
            key_reader: GenericDatumReader::builder(key).build()?,
            value_reader: GenericDatumReader::builder(value).build()?,
        })
    }
}

impl TableCodec {
    /// Validates the table and generates its schemas.
    pub fn new(table: TableDesc) -> Result<Self, SchemaError> {
        table.validate()?;
        let parse = |j: Json| {
            Schema::parse(&j).map_err(|e| SchemaError::Avro {
                table: table.qualified_name(),
                reason: e.to_string(),
            })
        };
        let key_schema = Arc::new(parse(key_schema_json(&table))?);
        let value_schema = Arc::new(parse(value_schema_json(&table))?);
        let io = Prepared::new(&key_schema, &value_schema).map_err(|e| SchemaError::Avro {
            table: table.qualified_name(),
            reason: e.to_string(),
        })?;
        let key_index = table
            .primary_key
            .iter()
            .filter_map(|k| table.column(k).map(|(i, _)| i))
            .collect();
        Ok(Self {
            table: Arc::new(table),
            key_index,
            key_schema,
            value_schema,
            io: Arc::new(io),
        })
    }

    /// The table.
    pub fn table(&self) -> &Arc<TableDesc> {
        &self.table
    }

    /// The key schema.
    pub fn key_schema(&self) -> &Arc<Schema> {
        &self.key_schema
    }

    /// The value (envelope) schema.
    pub fn value_schema(&self) -> &Arc<Schema> {
        &self.value_schema
    }

    fn err_encode(&self, e: impl std::fmt::Display) -> SchemaError {
        SchemaError::Encode {
            table: self.table.qualified_name(),
            reason: e.to_string(),
        }
    }

    fn err_decode(&self, e: impl std::fmt::Display) -> SchemaError {
        SchemaError::Decode {
            table: self.table.qualified_name(),
            reason: e.to_string(),
        }
    }

    /// Encodes a key row (raw Avro datum, no framing).
    pub fn encode_key(&self, key: &Row) -> Result<Vec<u8>, SchemaError> {
        self.table.check_key(key)?;
        let mut out = Vec::with_capacity(16);
        crate::binary::row(&mut out, self.table.key_columns().into_iter(), key);
        Ok(out)
    }

    /// Encodes a change event's key and value, each framed for the
    /// registry (magic byte and schema id) in the buffer it is encoded
    /// into: what a producer sends.
    pub fn encode_framed(
        &self,
        key_id: u32,
        value_id: u32,
        event: &ChangeEvent,
    ) -> Result<(Vec<u8>, Vec<u8>), SchemaError> {
        self.encode_framed_parts(key_id, value_id, event.parts())
    }

    /// [`TableCodec::encode_framed`] of an event given by its parts.
    pub fn encode_framed_parts(
        &self,
        key_id: u32,
        value_id: u32,
        event: EventRef<'_>,
    ) -> Result<(Vec<u8>, Vec<u8>), SchemaError> {
        self.check_event(&event)?;
        let mut key = Vec::with_capacity(crate::wire::HEADER_LEN + 16);
        self.write_framed_key(key_id, &event, &mut key);
        let mut value = Vec::with_capacity(crate::wire::HEADER_LEN + 256);
        self.write_framed_value(value_id, &event, &mut value);
        Ok((key, value))
    }

    /// [`TableCodec::encode_framed`] appending to `out`: the framed key,
    /// then the framed value right after it; returns the key's length.
    /// Every value is checked first, so `out` is unchanged on an error.
    /// Lets a caller encode a batch of records into one buffer.
    pub fn encode_framed_into(
        &self,
        key_id: u32,
        value_id: u32,
        event: EventRef<'_>,
        out: &mut Vec<u8>,
    ) -> Result<usize, SchemaError> {
        self.check_event(&event)?;
        let start = out.len();
        self.write_framed_key(key_id, &event, out);
        let key_len = out.len() - start;
        self.write_framed_value(value_id, &event, out);
        Ok(key_len)
    }

    /// Whether the event's key and images fit the table.
    fn check_event(&self, event: &EventRef<'_>) -> Result<(), SchemaError> {
        crate::table::check_values(&self.table, self.key_columns(), event.key)?;
        for r in [event.before, event.after].into_iter().flatten() {
            self.table.check_row(r)?;
        }
        Ok(())
    }

    fn key_columns(&self) -> impl ExactSizeIterator<Item = &ColumnDesc> + Clone + '_ {
        self.key_index.iter().map(|i| &self.table.columns[*i])
    }

    fn write_framed_key(&self, id: u32, event: &EventRef<'_>, out: &mut Vec<u8>) {
        out.push(crate::wire::MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        crate::binary::row(out, self.key_columns(), event.key);
    }

    fn write_framed_value(&self, id: u32, event: &EventRef<'_>, out: &mut Vec<u8>) {
        out.push(crate::wire::MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        crate::binary::envelope(out, &self.table.columns, *event);
    }

    /// Encodes a change event's value (raw Avro datum, no framing).
    pub fn encode_value(&self, event: &ChangeEvent) -> Result<Vec<u8>, SchemaError> {
        for r in [&event.before, &event.after].into_iter().flatten() {
            self.table.check_row(r)?;
        }
        let mut out = Vec::with_capacity(256);
        crate::binary::envelope(&mut out, &self.table.columns, event.parts());
        Ok(out)
    }

    /// [`TableCodec::encode_key`] through Avro's generic encoder: the
    /// reference the direct encoder is checked against (slower).
    pub fn encode_key_generic(&self, key: &Row) -> Result<Vec<u8>, SchemaError> {
        self.table.check_key(key)?;
        let value = record(self.table.key_columns().into_iter(), key);
        self.io
            .key_writer
            .write_value_to_vec(value)
            .map_err(|e| self.err_encode(e))
    }

    /// [`TableCodec::encode_value`] through Avro's generic encoder: the
    /// reference the direct encoder is checked against (slower).
    pub fn encode_value_generic(&self, event: &ChangeEvent) -> Result<Vec<u8>, SchemaError> {
        let image = |row: &Option<Row>| -> Result<Value, SchemaError> {
            Ok(match row {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(r) => {
                    self.table.check_row(r)?;
                    Value::Union(1, Box::new(record(self.table.columns.iter(), r)))
                }
            })
        };
        let value = Value::Record(vec![
            ("before".into(), image(&event.before)?),
            ("after".into(), image(&event.after)?),
            ("source".into(), source_value(&event.source)),
            ("op".into(), Value::String(event.op.code().into())),
            ("ts_ms".into(), opt(event.ts_ms.map(Value::Long))),
            (
                "transaction".into(),
                opt(event.transaction.as_ref().map(|t| {
                    Value::Record(vec![
                        ("id".into(), Value::String(t.id.to_string())),
                        ("total_order".into(), Value::Long(t.total_order)),
                        (
                            "data_collection_order".into(),
                            Value::Long(t.data_collection_order),
                        ),
                    ])
                })),
            ),
        ]);
        self.io
            .value_writer
            .write_value_to_vec(value)
            .map_err(|e| self.err_encode(e))
    }

    /// Whether `key` and `value` are this codec's own schemas (by Avro's
    /// structural equality: names, fields, types and logical types): then
    /// records written with them can be read by [`TableCodec::decode_key`]
    /// and [`TableCodec::decode_value`], which skip Avro's generic reader.
    pub fn written_with(&self, key: &Schema, value: &Schema) -> bool {
        *self.key_schema == *key && *self.value_schema == *value
    }

    /// Decodes a key row (raw Avro datum written with this codec's key
    /// schema), straight into the row.
    pub fn decode_key(&self, bytes: &[u8]) -> Result<Row, SchemaError> {
        let mut input = crate::binary::Input::new(bytes);
        let row = input
            .row(self.key_columns())
            .map_err(|e| self.err_decode(e))?;
        input.finish().map_err(|e| self.err_decode(e))?;
        Ok(row)
    }

    /// Decodes a change event's value (raw Avro datum written with this
    /// codec's value schema), straight into the event; `key` is the
    /// decoded Kafka key.
    pub fn decode_value(&self, key: Row, bytes: &[u8]) -> Result<ChangeEvent, SchemaError> {
        let mut input = crate::binary::Input::new(bytes);
        let event = input
            .envelope(&self.table.columns, key)
            .map_err(|e| self.err_decode(e))?;
        input.finish().map_err(|e| self.err_decode(e))?;
        Ok(event)
    }

    /// [`TableCodec::decode_key`] through Avro's generic reader: the
    /// reference the direct decoder is checked against (slower).
    pub fn decode_key_generic(&self, bytes: &[u8]) -> Result<Row, SchemaError> {
        let v = self.read(&self.io.key_reader, bytes)?;
        let fields = into_record(v).map_err(|e| self.err_decode(e))?;
        let cols = self.table.key_columns();
        row_from(cols.into_iter(), fields).map_err(|e| self.err_decode(e))
    }

    /// [`TableCodec::decode_value`] through Avro's generic reader: the
    /// reference the direct decoder is checked against (slower).
    pub fn decode_value_generic(&self, key: Row, bytes: &[u8]) -> Result<ChangeEvent, SchemaError> {
        let v = self.read(&self.io.value_reader, bytes)?;
        self.event_from(key, v).map_err(|e| self.err_decode(e))
    }

    fn read(&self, with: &GenericDatumReader<'static>, bytes: &[u8]) -> Result<Value, SchemaError> {
        let mut reader = bytes;
        let v = with
            .read_value(&mut reader)
            .map_err(|e| self.err_decode(e))?;
        if !reader.is_empty() {
            return Err(
                self.err_decode(format!("{} bytes left over after the record", reader.len()))
            );
        }
        Ok(v)
    }

    /// Converts a decoded key record into a key row.
    pub fn key_from(&self, value: Value) -> Result<Row, String> {
        let fields = into_record(value)?;
        row_from(self.table.key_columns().into_iter(), fields)
    }

    /// Converts a decoded envelope into a [`ChangeEvent`].
    pub fn event_from(&self, key: Row, value: Value) -> Result<ChangeEvent, String> {
        let mut f = into_record(value)?;
        let mut take = |name: &str| {
            f.iter_mut()
                .find(|(n, _)| n == name)
                .map(|(_, v)| std::mem::replace(v, Value::Null))
                .ok_or_else(|| format!("envelope has no field {name}"))
        };
        let image = |v: Value| -> Result<Option<Row>, String> {
            match unwrap_union(v) {
                Value::Null => Ok(None),
                v => row_from(self.table.columns.iter(), into_record(v)?).map(Some),
            }
        };
        let before = image(take("before")?)?;
        let after = image(take("after")?)?;
        let source = source_from(take("source")?)?;
        let op = match take("op")? {
            Value::String(s) => Op::from_code(&s).ok_or_else(|| format!("unknown op {s:?}"))?,
            other => return Err(format!("op is {other:?}, not a string")),
        };
        let ts_ms = match unwrap_union(take("ts_ms")?) {
            Value::Long(n) => Some(n),
            _ => None,
        };
        let transaction = match unwrap_union(take("transaction")?) {
            Value::Null => None,
            v => {
                let t = into_record(v)?;
                Some(TransactionInfo {
                    id: shared_field(&t, "id")?,
                    total_order: long_field(&t, "total_order")?,
                    data_collection_order: long_field(&t, "data_collection_order")?,
                })
            }
        };
        Ok(ChangeEvent {
            key,
            before,
            after,
            source,
            op,
            ts_ms,
            transaction,
        })
    }
}

fn opt(v: Option<Value>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn record<'a>(columns: impl Iterator<Item = &'a ColumnDesc>, row: &Row) -> Value {
    Value::Record(
        columns
            .zip(&row.0)
            .map(|(c, d)| {
                let v = to_avro(d);
                let v = match (c.nullable, d) {
                    (false, _) => v,
                    (true, Datum::Null) => Value::Union(0, Box::new(Value::Null)),
                    (true, _) => Value::Union(1, Box::new(v)),
                };
                (c.name.clone(), v)
            })
            .collect(),
    )
}

fn to_avro(d: &Datum) -> Value {
    match d {
        Datum::Null => Value::Null,
        Datum::Bool(b) => Value::Boolean(*b),
        Datum::Int(v) => Value::Int(*v),
        Datum::Long(v) => Value::Long(*v),
        Datum::Float(v) => Value::Float(*v),
        Datum::Double(v) => Value::Double(*v),
        Datum::Decimal(v) => {
            Value::Decimal(apache_avro::Decimal::from(v.unscaled.to_signed_bytes_be()))
        }
        Datum::Text(s) | Datum::Json(s) => Value::String(s.clone()),
        Datum::Bytes(b) => Value::Bytes(b.clone()),
        Datum::Date(v) => Value::Date(*v),
        Datum::Time(v) => Value::TimeMicros(*v),
        Datum::Timestamp(v) => Value::LocalTimestampMicros(*v),
        Datum::TimestampTz(v) => Value::TimestampMicros(*v),
        Datum::Uuid(u) => Value::Uuid(*u),
        Datum::Array(items) => Value::Array(
            items
                .iter()
                .map(|d| match d {
                    Datum::Null => Value::Union(0, Box::new(Value::Null)),
                    d => Value::Union(1, Box::new(to_avro(d))),
                })
                .collect(),
        ),
    }
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        v => v,
    }
}

fn into_record(v: Value) -> Result<Vec<(String, Value)>, String> {
    match unwrap_union(v) {
        Value::Record(fields) => Ok(fields),
        other => Err(format!("expected a record, found {}", kind(&other))),
    }
}

/// The variant name of a value, for messages (never its content).
fn kind(v: &Value) -> String {
    let dbg = format!("{v:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or("value")
        .to_owned()
}

fn row_from<'a>(
    columns: impl Iterator<Item = &'a ColumnDesc>,
    fields: Vec<(String, Value)>,
) -> Result<Row, String> {
    let mut by_name: std::collections::HashMap<String, Value> = fields.into_iter().collect();
    columns
        .map(|c| {
            let v = by_name
                .remove(&c.name)
                .ok_or_else(|| format!("column {} missing from the record", c.name))?;
            from_avro(c, unwrap_union(v)).map_err(|e| format!("column {}: {e}", c.name))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

fn from_avro(c: &ColumnDesc, v: Value) -> Result<Datum, String> {
    from_avro_typed(&c.sql_type, v)
}

fn from_avro_typed(t: &SqlType, v: Value) -> Result<Datum, String> {
    Ok(match (t, v) {
        (_, Value::Null) => Datum::Null,
        (SqlType::Boolean, Value::Boolean(b)) => Datum::Bool(b),
        (SqlType::SmallInt | SqlType::Int, Value::Int(v)) => Datum::Int(v),
        (SqlType::BigInt, Value::Long(v)) => Datum::Long(v),
        (SqlType::Real, Value::Float(v)) => Datum::Float(v),
        (SqlType::Double, Value::Double(v)) => Datum::Double(v),
        (SqlType::Decimal { scale, .. }, Value::Decimal(d)) => Datum::Decimal(Decimal {
            unscaled: BigInt::from(d),
            scale: scale.unwrap_or(0),
        }),
        (SqlType::Decimal { scale, .. }, Value::Bytes(b)) => Datum::Decimal(Decimal {
            unscaled: BigInt::from_signed_bytes_be(&b),
            scale: scale.unwrap_or(0),
        }),
        (
            SqlType::Decimal {
                precision: None, ..
            }
            | SqlType::Text
            | SqlType::Varchar { .. }
            | SqlType::Char { .. }
            | SqlType::Interval,
            Value::String(s),
        ) => Datum::Text(s),
        (SqlType::Json, Value::String(s)) => Datum::Json(s),
        (SqlType::Bytes, Value::Bytes(b)) => Datum::Bytes(b),
        (SqlType::Date, Value::Date(d)) => Datum::Date(d),
        (SqlType::Time, Value::TimeMicros(t)) => Datum::Time(t),
        (SqlType::Timestamp, Value::LocalTimestampMicros(t)) => Datum::Timestamp(t),
        (SqlType::TimestampTz, Value::TimestampMicros(t)) => Datum::TimestampTz(t),
        (SqlType::Uuid, Value::Uuid(u)) => Datum::Uuid(u),
        (SqlType::Uuid, Value::String(s)) => {
            Datum::Uuid(s.parse().map_err(|_| "not a UUID".to_owned())?)
        }
        (SqlType::Array(element), Value::Array(items)) => Datum::Array(
            items
                .into_iter()
                .map(|v| from_avro_typed(element, unwrap_union(v)))
                .collect::<Result<_, _>>()?,
        ),
        (t, v) => return Err(format!("a {} value for type {t}", kind(&v))),
    })
}

fn source_value(s: &SourceInfo) -> Value {
    let string = |v: &str| Value::String(v.to_owned());
    Value::Record(vec![
        ("version".into(), string(&s.version)),
        ("connector".into(), string(&s.connector)),
        ("name".into(), string(&s.name)),
        ("node".into(), string(&s.node)),
        ("ts_ms".into(), Value::Long(s.ts_ms)),
        ("snapshot".into(), string(s.snapshot.as_str())),
        ("db".into(), string(&s.db)),
        ("schema".into(), opt(s.schema.as_deref().map(string))),
        ("table".into(), string(&s.table)),
        ("position".into(), string(&s.position)),
        ("txid".into(), opt(s.txid.as_deref().map(string))),
    ])
}

fn string_field(f: &[(String, Value)], name: &str) -> Result<String, String> {
    match f.iter().find(|(n, _)| n == name).map(|(_, v)| v) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Union(_, inner)) => match inner.as_ref() {
            Value::String(s) => Ok(s.clone()),
            _ => Err(format!("{name} is not a string")),
        },
        _ => Err(format!("{name} missing or not a string")),
    }
}

fn shared_field(f: &[(String, Value)], name: &str) -> Result<Arc<str>, String> {
    string_field(f, name).map(Arc::from)
}

fn opt_shared_field(f: &[(String, Value)], name: &str) -> Option<Arc<str>> {
    shared_field(f, name).ok()
}

fn long_field(f: &[(String, Value)], name: &str) -> Result<i64, String> {
    match f.iter().find(|(n, _)| n == name).map(|(_, v)| v) {
        Some(Value::Long(n)) => Ok(*n),
        _ => Err(format!("{name} missing or not a long")),
    }
}

fn source_from(v: Value) -> Result<SourceInfo, String> {
    let f = into_record(v)?;
    Ok(SourceInfo {
        version: shared_field(&f, "version")?,
        connector: shared_field(&f, "connector")?,
        name: shared_field(&f, "name")?,
        node: shared_field(&f, "node")?,
        ts_ms: long_field(&f, "ts_ms")?,
        snapshot: Snapshot::parse(&string_field(&f, "snapshot")?)
            .ok_or("snapshot is not true, false or last")?,
        db: shared_field(&f, "db")?,
        schema: opt_shared_field(&f, "schema"),
        table: shared_field(&f, "table")?,
        position: shared_field(&f, "position")?,
        txid: opt_shared_field(&f, "txid"),
    })
}
