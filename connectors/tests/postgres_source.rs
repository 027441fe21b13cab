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
}
