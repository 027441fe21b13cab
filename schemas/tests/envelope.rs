//! The change-event envelope: every mapped type round-trips exactly.

use backflow_schemas::codec::{key_schema_json, value_schema_json};
use backflow_schemas::{
    examples, ChangeEvent, ColumnDesc, Datum, Decimal, Op, Row, SchemaError, Snapshot, SourceInfo,
    SqlType, TableCodec, TableDesc, TransactionInfo,
};

/// One column of every mapped type, plus a nullable twin of each.
fn all_types() -> TableDesc {
    let types = [
        ("c_smallint", SqlType::SmallInt),
        ("c_int", SqlType::Int),
        ("c_bigint", SqlType::BigInt),
        (
            "c_numeric",
            SqlType::Decimal {
                precision: Some(38),
                scale: Some(10),
            },
        ),
        (
            "c_numeric0",
            SqlType::Decimal {
                precision: Some(20),
                scale: Some(0),
            },
        ),
        (
            "c_numeric_any",
            SqlType::Decimal {
                precision: None,
                scale: None,
            },
        ),
        ("c_real", SqlType::Real),
        ("c_double", SqlType::Double),
        ("c_bool", SqlType::Boolean),
        ("c_text", SqlType::Text),
        ("c_varchar", SqlType::Varchar { len: Some(64) }),
        ("c_char", SqlType::Char { len: Some(6) }),
        ("c_bytes", SqlType::Bytes),
        ("c_date", SqlType::Date),
        ("c_time", SqlType::Time),
        ("c_ts", SqlType::Timestamp),
        ("c_tstz", SqlType::TimestampTz),
        ("c_uuid", SqlType::Uuid),
        ("c_json", SqlType::Json),
        ("c_interval", SqlType::Interval),
        ("c_ints", SqlType::Array(Box::new(SqlType::Int))),
        ("c_texts", SqlType::Array(Box::new(SqlType::Text))),
        (
            "c_numerics",
            SqlType::Array(Box::new(SqlType::Decimal {
                precision: Some(6),
                scale: Some(2),
            })),
        ),
        ("c_tstzs", SqlType::Array(Box::new(SqlType::TimestampTz))),
    ];
    let mut columns = vec![
        ColumnDesc::new("region", SqlType::Char { len: Some(6) }, false),
        ColumnDesc::new("id", SqlType::BigInt, false),
    ];
    for (name, t) in types {
        columns.push(ColumnDesc::new(name, t.clone(), false));
        columns.push(ColumnDesc::new(format!("{name}_n"), t, true));
    }
    TableDesc {
        dataset: "test.all_types".into(),
        schema: "public".into(),
        name: "all_types".into(),
        columns,
        primary_key: vec!["region".into(), "id".into()],
    }
}

fn dec(text: &str, scale: u32) -> Datum {
    Datum::Decimal(Decimal::parse(text, scale).unwrap())
}

/// Rows of extreme and awkward values; `null_twins` decides whether the
/// nullable twin columns hold NULL or the same value.
fn rows(null_twins: bool) -> Vec<Row> {
    let value_sets: Vec<Vec<Datum>> = vec![
        vec![
            Datum::Int(i16::MIN as i32),
            Datum::Int(i32::MIN),
            Datum::Long(i64::MIN),
            dec("-9999999999999999999999999999.9999999999", 10),
            dec("-99999999999999999999", 0),
            Datum::Text("-123456789012345678901234567890.000000000000000000001".into()),
            Datum::Float(f32::MIN),
            Datum::Double(f64::MIN),
            Datum::Bool(false),
            Datum::Text(String::new()),
            Datum::Text("杭州市西湖区".into()),
            Datum::Text("330106".into()),
            Datum::Bytes(Vec::new()),
            Datum::Date(-719_162),
            Datum::Time(0),
            Datum::Timestamp(i64::MIN),
            Datum::TimestampTz(-62_135_596_800_000_000),
            Datum::Uuid(uuid::Uuid::nil()),
            Datum::Json("{}".into()),
            Datum::Text("PT0S".into()),
            Datum::Array(vec![]),
            Datum::Array(vec![]),
            Datum::Array(vec![Datum::Null]),
            Datum::Array(vec![Datum::TimestampTz(i64::MIN)]),
        ],
        vec![
            Datum::Int(i16::MAX as i32),
            Datum::Int(i32::MAX),
            Datum::Long(i64::MAX),
            dec("9999999999999999999999999999.9999999999", 10),
            dec("0", 0),
            Datum::Text("0.5".into()),
            Datum::Float(f32::MAX),
            Datum::Double(f64::MAX),
            Datum::Bool(true),
            Datum::Text("emoji 🚀 and 中文, quotes \" and \\ backslash, newline\n".into()),
            Datum::Text("数据回流".into()),
            Datum::Text("🚀🚀🚀🚀🚀🚀".into()),
            Datum::Bytes((0..=255).collect()),
            Datum::Date(2_932_896),
            Datum::Time(86_399_999_999),
            Datum::Timestamp(i64::MAX),
            Datum::TimestampTz(1_763_800_000_123_456),
            Datum::Uuid(uuid::Uuid::from_u128(
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
            )),
            Datum::Json(r#"{"区":"西湖","n":[1,2.5,null]}"#.into()),
            Datum::Text("P-1Y-2M3DT-4H-5M-6.000001S".into()),
            Datum::Array(vec![
                Datum::Int(i32::MIN),
                Datum::Null,
                Datum::Int(i32::MAX),
            ]),
            Datum::Array(vec![
                Datum::Text("a\"b".into()),
                Datum::Null,
                Datum::Text("NULL".into()),
                Datum::Text(String::new()),
                Datum::Text("{中,文}".into()),
            ]),
            Datum::Array(vec![dec("-9999.99", 2), Datum::Null, dec("0.01", 2)]),
            Datum::Array((0..300).map(Datum::TimestampTz).collect()),
        ],
        vec![
            Datum::Int(0),
            Datum::Int(-1),
            Datum::Long(0),
            dec("0.0000000001", 10),
            dec("1", 0),
            Datum::Text("0".into()),
            Datum::Float(f32::MIN_POSITIVE),
            Datum::Double(f64::EPSILON),
            Datum::Bool(true),
            Datum::Text("a".into()),
            Datum::Text(" ".into()),
            Datum::Text("a".into()),
            Datum::Bytes(vec![0]),
            Datum::Date(0),
            Datum::Time(1),
            Datum::Timestamp(0),
            Datum::TimestampTz(0),
            Datum::Uuid(uuid::Uuid::max()),
            Datum::Json("null".into()),
            Datum::Text("P1D".into()),
            Datum::Array(vec![Datum::Int(0)]),
            Datum::Array(vec![Datum::Text(" ".into())]),
            Datum::Array(vec![dec("0", 2)]),
            Datum::Array(vec![Datum::Null, Datum::Null]),
        ],
    ];
    value_sets
        .into_iter()
        .enumerate()
        .map(|(i, values)| {
            let mut row = vec![Datum::Text("330106".into()), Datum::Long(i as i64)];
            for v in values {
                let twin = if null_twins { Datum::Null } else { v.clone() };
                row.push(v);
                row.push(twin);
            }
            Row(row)
        })
        .collect()
}

fn source(snapshot: Snapshot) -> SourceInfo {
    SourceInfo {
        version: "0.1.0".into(),
        connector: "postgres".into(),
        name: "gongan-pg".into(),
        node: "330000".into(),
        ts_ms: 1_763_800_000_123,
        snapshot,
        db: "gongan".into(),
        schema: Some("public".into()),
        table: "all_types".into(),
        position: "0/16B3748".into(),
        txid: Some("7421".into()),
    }
}

#[test]
fn envelope_round_trips_every_type_for_every_op() {
    let table = all_types();
    let codec = TableCodec::new(table.clone()).unwrap();
    let mut checked = 0;
    for null_twins in [false, true] {
        let rows = rows(null_twins);
        for (i, row) in rows.iter().enumerate() {
            let other = &rows[(i + 1) % rows.len()];
            let key = table.key_of(row);
            let cases = [
                (Op::Create, None, Some(row.clone()), Snapshot::False),
                (
                    Op::Update,
                    Some(other.clone()),
                    Some(row.clone()),
                    Snapshot::False,
                ),
                (Op::Delete, Some(row.clone()), None, Snapshot::False),
                (Op::Read, None, Some(row.clone()), Snapshot::Last),
            ];
            for (op, before, after, snapshot) in cases {
                let event = ChangeEvent {
                    key: key.clone(),
                    before,
                    after,
                    source: source(snapshot),
                    op,
                    ts_ms: Some(1_763_800_000_999),
                    transaction: (op != Op::Read).then(|| TransactionInfo {
                        id: "7421".into(),
                        total_order: 3,
                        data_collection_order: 1,
                    }),
                };
                let key_bytes = codec.encode_key(&event.key).unwrap();
                let value_bytes = codec.encode_value(&event).unwrap();
                // The direct encoder writes what Avro's own encoder writes.
                assert_eq!(key_bytes, codec.encode_key_generic(&event.key).unwrap());
                assert_eq!(
                    value_bytes,
                    codec.encode_value_generic(&event).unwrap(),
                    "op {op:?}, row {i}, null twins {null_twins}"
                );
                // Framed in one buffer: the same bytes behind the header.
                let (key_framed, value_framed) = codec.encode_framed(7, 9, &event).unwrap();
                assert_eq!(key_framed, backflow_schemas::frame(7, &key_bytes));
                assert_eq!(value_framed, backflow_schemas::frame(9, &value_bytes));
                // Appended to a batch's buffer: the key, then the value,
                // after what the buffer already held.
                let mut batch = b"earlier".to_vec();
                let key_len = codec
                    .encode_framed_into(7, 9, event.parts(), &mut batch)
                    .unwrap();
                assert_eq!(key_len, key_framed.len());
                assert_eq!(
                    batch,
                    [&b"earlier"[..], &key_framed, &value_framed].concat()
                );
                let key_back = codec.decode_key(&key_bytes).unwrap();
                assert_eq!(key_back, event.key);
                let back = codec.decode_value(key_back, &value_bytes).unwrap();
                assert_eq!(back, event, "op {op:?}, row {i}, null twins {null_twins}");
                // The direct decoder reads what Avro's own reader reads.
                assert_eq!(codec.decode_key_generic(&key_bytes).unwrap(), event.key);
                assert_eq!(
                    codec
                        .decode_value_generic(event.key.clone(), &value_bytes)
                        .unwrap(),
                    event
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

#[test]
fn envelope_keeps_nan_and_infinities() {
    let table = TableDesc {
        dataset: "test.floats".into(),
        schema: "public".into(),
        name: "floats".into(),
        columns: vec![
            ColumnDesc::new("id", SqlType::Int, false),
            ColumnDesc::new("f", SqlType::Real, false),
            ColumnDesc::new("d", SqlType::Double, false),
        ],
        primary_key: vec!["id".into()],
    };
    let codec = TableCodec::new(table).unwrap();
    for (f, d) in [(f32::NAN, f64::NAN), (f32::INFINITY, f64::NEG_INFINITY)] {
        let event = ChangeEvent {
            key: Row(vec![Datum::Int(1)]),
            before: None,
            after: Some(Row(vec![Datum::Int(1), Datum::Float(f), Datum::Double(d)])),
            source: source(Snapshot::False),
            op: Op::Create,
            ts_ms: None,
            transaction: None,
        };
        let back = codec
            .decode_value(event.key.clone(), &codec.encode_value(&event).unwrap())
            .unwrap();
        let after = back.after.unwrap();
        match (&after.0[1], &after.0[2]) {
            (Datum::Float(bf), Datum::Double(bd)) => {
                assert!(bf.to_bits() == f.to_bits(), "{bf} vs {f}");
                assert!(bd.to_bits() == d.to_bits(), "{bd} vs {d}");
            }
            other => panic!("wrong kinds {other:?}"),
        }
    }
}

#[test]
fn envelope_rejects_values_that_do_not_fit_naming_the_column() {
    let table = examples::population();
    let codec = TableCodec::new(table.clone()).unwrap();
    let mut row = vec![
        Datum::Long(1),
        Datum::Text("张三".into()),
        Datum::Text("330106199001011234".into()),
        Datum::Text("330106".into()),
        Datum::Date(7305),
        dec("1234.50", 2),
        Datum::Null,
        Datum::TimestampTz(0),
        Datum::Null,
    ];
    let event = |row: Vec<Datum>| ChangeEvent {
        key: Row(vec![Datum::Long(1)]),
        before: None,
        after: Some(Row(row)),
        source: source(Snapshot::False),
        op: Op::Create,
        ts_ms: None,
        transaction: None,
    };
    codec.encode_value(&event(row.clone())).unwrap();
    // CHAR(6) counts characters, not bytes: six CJK characters (18 bytes) fit.
    let mut wide = row.clone();
    wide[3] = Datum::Text("三三〇一〇六".into());
    codec.encode_value(&event(wide)).unwrap();

    let cases: Vec<(usize, Datum, &str)> = vec![
        (1, Datum::Long(5), "name"),
        (1, Datum::Null, "name"),
        (3, Datum::Text("3301060".into()), "region_code"),
        (3, Datum::Text("三三〇一〇六七".into()), "region_code"),
        (5, dec("12345678901.00", 2), "income"),
        (5, dec("1.5", 1), "income"),
    ];
    for (i, bad, column) in cases {
        let saved = std::mem::replace(&mut row[i], bad);
        let err = codec.encode_value(&event(row.clone())).unwrap_err();
        match &err {
            SchemaError::BadRow {
                column: c, table, ..
            } => {
                assert_eq!(c, column, "{err}");
                assert_eq!(table, "public.population");
            }
            other => panic!("expected BadRow for {column}, got {other}"),
        }
        assert!(
            !err.to_string().contains("张三"),
            "no row values in errors: {err}"
        );
        // Encoding into a batch's buffer leaves it as it was.
        let mut batch = b"earlier".to_vec();
        let refused = event(row.clone());
        assert!(codec
            .encode_framed_into(1, 2, refused.parts(), &mut batch)
            .is_err());
        assert_eq!(batch, b"earlier");
        row[i] = saved;
    }
}

#[test]
fn envelope_decoding_garbage_is_an_error_not_a_panic() {
    let codec = TableCodec::new(all_types()).unwrap();
    let row = rows(false).remove(1);
    let event = ChangeEvent {
        key: all_types().key_of(&row),
        before: None,
        after: Some(row),
        source: source(Snapshot::False),
        op: Op::Create,
        ts_ms: None,
        transaction: None,
    };
    let good = codec.encode_value(&event).unwrap();
    // A truncated payload fails, except where the cut only removed
    // trailing null-union bytes (Avro readers take end of input there as
    // null): then it decodes to the very same event, never another one.
    for len in 0..good.len() {
        if let Ok(back) = codec.decode_value(event.key.clone(), &good[..len]) {
            assert_eq!(back, event, "prefix {len} decoded to a different event");
            assert!(
                good.len() - len <= 2,
                "prefix {len} of {} decoded",
                good.len()
            );
        }
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2_000 {
        let len = (state % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = codec.decode_value(event.key.clone(), &bytes);
        let _ = codec.decode_key(&bytes);
        let _ = codec.decode_value_generic(event.key.clone(), &bytes);
        let _ = codec.decode_key_generic(&bytes);
    }
    let mut extra = good.clone();
    extra.push(0);
    assert!(
        codec.decode_value(event.key.clone(), &extra).is_err(),
        "trailing bytes"
    );
}

#[test]
fn table_validation_names_the_problem() {
    let mut t = examples::population();
    t.primary_key = vec!["nope".into()];
    assert!(TableCodec::new(t)
        .unwrap_err()
        .to_string()
        .contains("\"nope\""));
    let mut t = examples::population();
    t.columns[1].name = "名字".into();
    assert!(TableCodec::new(t).unwrap_err().to_string().contains("名字"));
    let mut t = examples::population();
    t.columns[0].nullable = true;
    assert!(TableCodec::new(t)
        .unwrap_err()
        .to_string()
        .contains("nullable"));
    let mut t = examples::population();
    t.primary_key.clear();
    assert!(TableCodec::new(t)
        .unwrap_err()
        .to_string()
        .contains("no primary key"));
}

#[test]
fn generated_schemas_match_the_committed_examples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro/examples");
    let table = examples::population();
    for (file, json) in [
        ("gongan.population.key.avsc", key_schema_json(&table)),
        ("gongan.population.value.avsc", value_schema_json(&table)),
    ] {
        let text = serde_json::to_string_pretty(&json).unwrap() + "\n";
        let path = dir.join(file);
        if std::env::var_os("BACKFLOW_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed, text,
            "{file} differs from the generated schema; regenerate with BACKFLOW_BLESS=1 cargo test -p backflow-schemas"
        );
    }
}

#[test]
fn avsc_files_parse_and_carry_sql_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let mut files = vec![dir.join("source.avsc"), dir.join("transaction.avsc")];
    for e in std::fs::read_dir(dir.join("examples")).unwrap() {
        files.push(e.unwrap().path());
    }
    assert!(files.len() >= 4);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        apache_avro::Schema::parse_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
    }
    let value = value_schema_json(&examples::population()).to_string();
    assert!(
        value.contains(r#""backflow.sql_type":"numeric(12,2)""#),
        "{value}"
    );
    assert!(
        value.contains(r#""logicalType":"timestamp-micros""#),
        "{value}"
    );
}

#[test]
fn direct_decoding_is_chosen_only_for_the_codecs_own_schemas() {
    use apache_avro::Schema;
    let table = all_types();
    let codec = TableCodec::new(table.clone()).unwrap();
    let key = Schema::parse(&key_schema_json(&table)).unwrap();
    let value = Schema::parse(&value_schema_json(&table)).unwrap();
    assert!(codec.written_with(&key, &value));

    // A schema recovered from the registry (as a distributor or a
    // subscriber recovers it) is the same schema.
    let target = backflow_schemas::TableTarget {
        dataset: table.dataset.clone(),
        schema: "other".into(),
        name: table.name.clone(),
    };
    let recovered =
        TableCodec::new(backflow_schemas::table_from_schemas(&key, &value, &target).unwrap())
            .unwrap();
    assert!(recovered.written_with(&key, &value));

    // Another version of the table (one more column) is not.
    let mut wider = table.clone();
    wider
        .columns
        .push(ColumnDesc::new("extra", SqlType::Text, true));
    let wider_value = Schema::parse(&value_schema_json(&wider)).unwrap();
    assert!(!codec.written_with(&key, &wider_value));

    // Nor a writer that wrote a timestamp as a plain long: its bytes are
    // the same, but only the generic reader checks what it means.
    let mut json = value_schema_json(&table);
    let text = json.to_string().replace(
        r#"{"logicalType":"timestamp-micros","type":"long"}"#,
        r#""long""#,
    );
    assert_ne!(text, json.to_string(), "the test table has a timestamptz");
    json = serde_json::from_str(&text).unwrap();
    let plain = Schema::parse(&json).unwrap();
    assert!(!codec.written_with(&key, &plain));
}
