//! The PostgreSQL source against a real PostgreSQL (no Kafka): what it
//! yields for a snapshot and for streamed changes.

use std::collections::BTreeSet;
use std::time::Duration;

use backflow_connectors::postgres::{PostgresSource, PostgresSourceConfig, TableConfig};
use backflow_connectors::Source;
use backflow_schemas::{Datum, Op, Snapshot};
use tokio_postgres::NoTls;

async fn connect(db: &str) -> tokio_postgres::Client {
    let (c, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 user=postgres dbname={db}"), NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)");
    tokio::spawn(conn);
    c
}

async fn fresh_db(name: &str) {
    let admin = connect("postgres").await;
    let _ = admin
        .batch_execute(&format!("SELECT pg_drop_replication_slot('backflow_{name}') FROM pg_replication_slots WHERE slot_name = 'backflow_{name}'"))
        .await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
}

fn config(db: &str) -> PostgresSourceConfig {
    PostgresSourceConfig {
        name: db.into(),
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: None,
        password_env: None,
        password_file: None,
        database: db.into(),
        tables: vec![TableConfig {
            table: "public.items".into(),
            dataset: "test.items".into(),
        }],
        slot: None,
        publication: None,
        snapshot: Default::default(),
        replica_identity: Default::default(),
        snapshot_chunk_rows: 1000,
    }
}

fn id_of(key: &backflow_schemas::Row) -> i64 {
    match key.0[0] {
        Datum::Long(v) => v,
        ref d => panic!("{d:?}"),
    }
}

#[tokio::test]
async fn postgres_source_snapshot_reads_every_row_once_then_streams() {
    let db = format!("bf_src_{}", std::process::id());
    fresh_db(&db).await;
    let c = connect(&db).await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, amount numeric(10,2));
         INSERT INTO items SELECT g, 'item ' || g, g * 0.5 FROM generate_series(1, 12345) g;",
    )
    .await
    .unwrap();
    let mut source = PostgresSource::new(config(&db), "330000");
    let tables = source.start(None).await.unwrap();
    assert_eq!(tables.len(), 1);
    // A change made during the snapshot is streamed afterwards, not read twice.
    c.batch_execute(
        "UPDATE items SET label = 'changed' WHERE id = 7; DELETE FROM items WHERE id = 8",
    )
    .await
    .unwrap();

    let mut seen = BTreeSet::new();
    let mut last_flag = None;
    let checkpoint = loop {
        let batch = source.next_batch(500).await.unwrap();
        assert!(batch.rejected.is_empty());
        for r in &batch.records {
            assert_eq!(r.event.op, Op::Read);
            assert!(
                seen.insert(id_of(&r.event.key)),
                "row {} read twice",
                id_of(&r.event.key)
            );
            last_flag = Some(r.event.source.snapshot);
        }
        if let Some(cp) = batch.checkpoint {
            break cp;
        }
    };
    assert_eq!(seen.len(), 12_345, "every row once");
    assert_eq!(last_flag, Some(Snapshot::Last));
    source.acknowledge(&checkpoint).await.unwrap();
    let resume_from = checkpoint.clone();

    let mut ops = Vec::new();
    while ops.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(20), source.next_batch(500))
            .await
            .expect("streamed changes arrive")
            .unwrap();
        for r in batch.records {
            ops.push((r.event.op, id_of(&r.event.key), r.event.before.is_some()));
        }
    }
    assert_eq!(ops, vec![(Op::Update, 7, true), (Op::Delete, 8, true)]);
    source.shutdown().await.unwrap();

    // Restarted with the acknowledged checkpoint: no second snapshot, and
    // the streamed changes that were never acknowledged come again, in order.
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(Some(resume_from)).await.unwrap();
    c.batch_execute("UPDATE items SET label = 'again' WHERE id = 9")
        .await
        .unwrap();
    let mut again = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while again.last().map(|(_, id)| *id) != Some(9) {
            let b = source.next_batch(500).await.unwrap();
            again.extend(b.records.iter().map(|r| (r.event.op, id_of(&r.event.key))));
        }
    })
    .await
    .unwrap();
    assert!(
        again.iter().all(|(op, _)| *op != Op::Read),
        "no second snapshot: {again:?}"
    );
    let tail: Vec<_> = again.iter().rev().take(3).rev().cloned().collect();
    assert!(
        again == vec![(Op::Update, 9)]
            || tail == vec![(Op::Update, 7), (Op::Delete, 8), (Op::Update, 9)],
        "unacknowledged changes replay in order: {again:?}"
    );
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_source_crashed_mid_snapshot_takes_it_again() {
    let db = format!("bf_crash_{}", std::process::id());
    fresh_db(&db).await;
    let c = connect(&db).await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, amount numeric(10,2));
         INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 3000) g;",
    )
    .await
    .unwrap();
    {
        // First run: one chunk read, nothing acknowledged, then the process dies.
        let mut source = PostgresSource::new(config(&db), "330000");
        source.start(None).await.unwrap();
        let batch = source.next_batch(500).await.unwrap();
        assert_eq!(batch.records.len(), 500);
        assert!(batch.checkpoint.is_none());
    }
    c.batch_execute("UPDATE items SET label = 'moved on' WHERE id = 2999")
        .await
        .unwrap();
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(None).await.unwrap();
    let mut seen = BTreeSet::new();
    loop {
        let batch = source.next_batch(500).await.unwrap();
        for r in &batch.records {
            if r.event.op == Op::Read {
                seen.insert(id_of(&r.event.key));
            }
        }
        if batch.checkpoint.is_some() {
            break;
        }
    }
    assert_eq!(seen.len(), 3000, "the whole table is read again");
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_source_reads_every_type_exactly() {
    use backflow_schemas::Decimal;
    let db = format!("bf_types_{}", std::process::id());
    fresh_db(&db).await;
    let c = connect(&db).await;
    c.batch_execute(
        "CREATE TABLE items (
            id bigint PRIMARY KEY, s smallint, i integer, n numeric(38,10), n0 numeric(20,0),
            r real, d double precision, b boolean, t text, v varchar(16), ch char(6), by bytea,
            dt date, tm time, ts timestamp, tz timestamptz, u uuid, j jsonb, nullable_text text);
         INSERT INTO items VALUES (1, -32768, -2147483648, -9999999999999999999999999999.9999999999,
            99999999999999999999, 1.5, -1.0e300, true, '杭州市西湖区 🚀', 'abc', '330106', '\\x00ff',
            '2026-11-22', '23:59:59.999999', '1999-12-31 23:59:59.5', '2026-11-22 08:00:00+08',
            '01234567-89ab-cdef-0123-456789abcdef', '{\"区\": [1, null]}', NULL);",
    )
    .await
    .unwrap();
    let mut cfg = config(&db);
    cfg.snapshot_chunk_rows = 10;
    let mut source = PostgresSource::new(cfg, "330000");
    source.start(None).await.unwrap();
    let mut records = Vec::new();
    loop {
        let batch = source.next_batch(100).await.unwrap();
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        records.extend(batch.records);
        if batch.checkpoint.is_some() {
            break;
        }
    }
    assert_eq!(records.len(), 1);
    let days = 20_779; // 2026-11-22
    let expected = vec![
        Datum::Long(1),
        Datum::Int(-32768),
        Datum::Int(i32::MIN),
        Datum::Decimal(Decimal::parse("-9999999999999999999999999999.9999999999", 10).unwrap()),
        Datum::Decimal(Decimal::parse("99999999999999999999", 0).unwrap()),
        Datum::Float(1.5),
        Datum::Double(-1.0e300),
        Datum::Bool(true),
        Datum::Text("杭州市西湖区 🚀".into()),
        Datum::Text("abc".into()),
        Datum::Text("330106".into()),
        Datum::Bytes(vec![0, 255]),
        Datum::Date(days),
        Datum::Time(86_399_999_999),
        Datum::Timestamp(946_684_799_500_000),
        Datum::TimestampTz(i64::from(days) * 86_400_000_000),
        Datum::Uuid("01234567-89ab-cdef-0123-456789abcdef".parse().unwrap()),
        Datum::Json(r#"{"区": [1, null]}"#.into()),
        Datum::Null,
    ];
    assert_eq!(records[0].event.after.as_ref().unwrap().0, expected);
    // The generated schema accepts the row: it encodes and decodes back.
    let codec = backflow_schemas::TableCodec::new(records[0].table.as_ref().clone()).unwrap();
    let bytes = codec.encode_value(&records[0].event).unwrap();
    assert_eq!(
        codec
            .decode_value(records[0].event.key.clone(), &bytes)
            .unwrap(),
        records[0].event
    );

    // Schema change: a new nullable column arrives as a new table version.
    c.batch_execute(
        "ALTER TABLE items ADD COLUMN extra text; UPDATE items SET extra = 'x', i = 0 WHERE id = 1",
    )
    .await
    .unwrap();
    let batch = loop {
        let b = tokio::time::timeout(Duration::from_secs(20), source.next_batch(100))
            .await
            .expect("change arrives")
            .unwrap();
        if !b.records.is_empty() {
            break b;
        }
    };
    let r = &batch.records[0];
    assert_eq!(r.event.op, Op::Update);
    assert_eq!(r.table.columns.last().unwrap().name, "extra");
    assert_eq!(
        r.event.after.as_ref().unwrap().0.last(),
        Some(&Datum::Text("x".into()))
    );
    assert_eq!(r.event.before.as_ref().unwrap().0[2], Datum::Int(i32::MIN));
    source.shutdown().await.unwrap();
}
