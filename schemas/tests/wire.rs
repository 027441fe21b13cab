//! Confluent framing and lookup by schema id.

use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::Schema;
use backflow_schemas::{decode_framed, frame, unframe, SchemaCache, WireError};

fn schema() -> Schema {
    Schema::parse_str(r#"{"type":"record","name":"K","fields":[{"name":"id","type":"long"}]}"#)
        .unwrap()
}

#[test]
fn frame_matches_confluent_layout_byte_for_byte() {
    let framed = frame(0x0102_0304, &[0xAA, 0xBB]);
    assert_eq!(framed, vec![0x00, 0x01, 0x02, 0x03, 0x04, 0xAA, 0xBB]);
    assert_eq!(frame(1, &[]), vec![0, 0, 0, 0, 1]);
    assert_eq!(unframe(&framed).unwrap(), (0x0102_0304, &[0xAA, 0xBB][..]));
}

#[test]
fn unframe_wrong_magic_says_what_it_found() {
    let err = unframe(br#"{"id":1}"#).unwrap_err();
    assert_eq!(err, WireError::WrongMagic { found: b'{' });
    let text = err.to_string();
    assert!(text.contains("0x7b") && text.contains("JSON"), "{text}");
}

#[test]
fn unframe_truncated_payloads_are_distinct_errors() {
    for len in 0..5 {
        let payload = &[0u8, 0, 0, 1][..len.min(4)];
        assert_eq!(
            unframe(payload).unwrap_err(),
            WireError::Truncated { len: payload.len() },
            "length {len}"
        );
    }
    assert!(WireError::Truncated { len: 3 }
        .to_string()
        .contains("shorter than the 5-byte"));
}

#[test]
fn decode_framed_unknown_schema_id_is_its_own_error() {
    let cache = SchemaCache::new();
    let err = decode_framed(&frame(42, &[2]), &cache).unwrap_err();
    assert_eq!(err, WireError::UnknownSchemaId { id: 42 });
    assert!(err.to_string().contains("42"));
}

#[test]
fn decode_framed_reads_with_the_schema_the_id_names() {
    let cache = SchemaCache::new();
    let id = cache.register(&schema());
    assert_eq!(cache.register(&schema()), id, "same schema, same id");
    // long 7 zig-zag encodes as 14.
    let (got_id, value) = decode_framed(&frame(id, &[14]), &cache).unwrap();
    assert_eq!(got_id, id);
    assert_eq!(value, Value::Record(vec![("id".into(), Value::Long(7))]));
    let err = decode_framed(&frame(id, &[]), &cache).unwrap_err();
    assert!(matches!(err, WireError::Body { .. }), "{err}");
    cache.insert(100, Arc::new(schema()));
    assert!(decode_framed(&frame(100, &[14]), &cache).is_ok());
}
