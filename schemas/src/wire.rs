//! The Confluent wire format: magic byte 0, the schema id as 4 bytes
//! big-endian, then the Avro binary datum.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::types::Value;
use apache_avro::Schema;

/// The first byte of every Confluent-framed payload.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// A payload that is not a usable Confluent-framed Avro record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first byte is not 0.
    #[error("payload starts with byte {found:#04x}, not the Confluent magic byte 0: the producer does not use the Confluent wire format{hint}", hint = magic_hint(*found))]
    WrongMagic {
        /// The byte found.
        found: u8,
    },
    /// Shorter than the 5-byte header.
    #[error("payload of {len} bytes is shorter than the 5-byte Confluent header (magic byte + schema id): truncated or not Confluent-framed")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The schema id is not known to the registry.
    #[error("schema id {id} is not registered: the record was written with a schema this registry does not have (wrong registry URL, or the schema was deleted)")]
    UnknownSchemaId {
        /// The id.
        id: u32,
    },
    /// The Avro body does not decode with its schema.
    #[error("Avro body does not match schema {id}: {reason}")]
    Body {
        /// The schema id.
        id: u32,
        /// Why.
        reason: String,
    },
}

fn magic_hint(b: u8) -> &'static str {
    match b {
        b'{' | b'[' => " (it looks like JSON)",
        b'"' => " (it looks like a JSON string)",
        _ => "",
    }
}

/// Frames an Avro datum: `[0, id (4 bytes big-endian), datum...]`.
pub fn frame(schema_id: u32, avro: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + avro.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(avro);
    out
}

/// Splits a framed payload into its schema id and Avro datum.
pub fn unframe(payload: &[u8]) -> Result<(u32, &[u8]), WireError> {
    match payload.first() {
        None => return Err(WireError::Truncated { len: 0 }),
        Some(&b) if b != MAGIC => return Err(WireError::WrongMagic { found: b }),
        _ => {}
    }
    if payload.len() < HEADER_LEN {
        return Err(WireError::Truncated { len: payload.len() });
    }
    let id = u32::from_be_bytes(payload[1..HEADER_LEN].try_into().expect("4 bytes"));
    Ok((id, &payload[HEADER_LEN..]))
}

/// Finds schemas by their registry id.
pub trait SchemaLookup {
    /// The schema with this id, if known.
    fn schema_by_id(&self, id: u32) -> Option<Arc<Schema>>;
}

/// An in-memory, thread-safe id → schema map. Registering the same schema
/// (by canonical form) twice returns the same id.
#[derive(Debug, Default)]
pub struct SchemaCache {
    inner: RwLock<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    by_id: HashMap<u32, Arc<Schema>>,
    by_form: HashMap<String, u32>,
}

impl SchemaCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a schema under the next free id, or returns the id it has.
    pub fn register(&self, schema: &Schema) -> u32 {
        let form = serde_json::to_string(schema).expect("an Avro schema serializes");
        let mut inner = self.inner.write().expect("lock");
        if let Some(id) = inner.by_form.get(&form) {
            return *id;
        }
        let id = inner.by_id.keys().max().map_or(1, |m| m + 1);
        inner.by_id.insert(id, Arc::new(schema.clone()));
        inner.by_form.insert(form, id);
        id
    }

    /// Adds a schema under an id a registry assigned.
    pub fn insert(&self, id: u32, schema: Arc<Schema>) {
        let form = serde_json::to_string(schema.as_ref()).expect("an Avro schema serializes");
        let mut inner = self.inner.write().expect("lock");
        inner.by_form.insert(form, id);
        inner.by_id.insert(id, schema);
    }
}

impl SchemaLookup for SchemaCache {
    fn schema_by_id(&self, id: u32) -> Option<Arc<Schema>> {
        self.inner.read().expect("lock").by_id.get(&id).cloned()
    }
}

/// The decoded value if the body was read to its end.
fn whole(id: u32, rest: &[u8], value: Value) -> Result<(u32, Value), WireError> {
    if !rest.is_empty() {
        return Err(WireError::Body {
            id,
            reason: format!("{} bytes left over after the record", rest.len()),
        });
    }
    Ok((id, value))
}

/// Decodes a framed payload with the schema its id names.
pub fn decode_framed(payload: &[u8], lookup: &dyn SchemaLookup) -> Result<(u32, Value), WireError> {
    let (id, mut body) = unframe(payload)?;
    let schema = lookup
        .schema_by_id(id)
        .ok_or(WireError::UnknownSchemaId { id })?;
    let value = crate::avro_read(&schema, &mut body).map_err(|e| WireError::Body {
        id,
        reason: e.to_string(),
    })?;
    whole(id, body, value)
}

/// Decoders of framed payloads, one per schema id, each with its writer
/// schema resolved once (not per record as [`decode_framed`] does). Meant for
/// the hot path of a consumer; schemas are fetched by the caller and handed
/// in with [`FramedReaders::add`].
#[derive(Default)]
pub struct FramedReaders {
    readers: HashMap<u32, apache_avro::reader::datum::GenericDatumReader<'static>>,
}

impl std::fmt::Debug for FramedReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedReaders")
            .field("ids", &self.readers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl FramedReaders {
    /// No readers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a reader for `id` exists.
    pub fn has(&self, id: u32) -> bool {
        self.readers.contains_key(&id)
    }

    /// Adds the reader of schema `id`. The schema is leaked: one copy per
    /// schema id the process sees, which is bounded by the registry's size.
    pub fn add(&mut self, id: u32, schema: &Schema) -> Result<(), WireError> {
        if self.readers.contains_key(&id) {
            return Ok(());
        }
        let schema: &'static Schema = Box::leak(Box::new(schema.clone()));
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| WireError::Body {
                id,
                reason: e.to_string(),
            })?;
        self.readers.insert(id, reader);
        Ok(())
    }

    /// Decodes a framed payload whose schema was added.
    pub fn decode(&self, payload: &[u8]) -> Result<(u32, Value), WireError> {
        let (id, mut body) = unframe(payload)?;
        let reader = self
            .readers
            .get(&id)
            .ok_or(WireError::UnknownSchemaId { id })?;
        let value = reader.read_value(&mut body).map_err(|e| WireError::Body {
            id,
            reason: e.to_string(),
        })?;
        whole(id, body, value)
    }
}

/// Reads framed change events of one table version: straight into rows
/// when the writer's schemas are the codec's own (what backflow writes; see
/// [`crate::TableCodec::written_with`]), else through Avro's generic reader
/// with the writer's schemas (added to the [`FramedReaders`] by the
/// caller) and converted by the codec.
#[derive(Debug, Clone)]
pub struct EventReader {
    codec: crate::TableCodec,
    direct: bool,
}

impl EventReader {
    /// A reader for records written with `key` and `value`, read as
    /// `codec`'s table.
    pub fn new(codec: crate::TableCodec, key: &Schema, value: &Schema) -> Self {
        let direct = codec.written_with(key, value);
        Self { codec, direct }
    }

    /// The codec.
    pub fn codec(&self) -> &crate::TableCodec {
        &self.codec
    }

    /// Whether records are read without Avro's generic reader.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Decodes a framed key and value into a change event. The error says
    /// which of the two is wrong and why (never a value).
    pub fn read(
        &self,
        readers: &FramedReaders,
        key: &[u8],
        value: &[u8],
    ) -> Result<crate::ChangeEvent, String> {
        let key = self
            .read_key(readers, key)
            .map_err(|e| format!("key: {e}"))?;
        let event = if self.direct {
            unframe(value)
                .map_err(|e| e.to_string())
                .and_then(|(_, body)| {
                    self.codec
                        .decode_value(key, body)
                        .map_err(|e| e.to_string())
                })
        } else {
            readers
                .decode(value)
                .map_err(|e| e.to_string())
                .and_then(|(_, v)| self.codec.event_from(key, v))
        };
        event.map_err(|e| format!("value: {e}"))
    }

    fn read_key(&self, readers: &FramedReaders, key: &[u8]) -> Result<crate::Row, String> {
        if self.direct {
            let (_, body) = unframe(key).map_err(|e| e.to_string())?;
            self.codec.decode_key(body).map_err(|e| e.to_string())
        } else {
            let (_, v) = readers.decode(key).map_err(|e| e.to_string())?;
            self.codec.key_from(v)
        }
    }
}
