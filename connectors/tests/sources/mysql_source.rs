//! The MySQL/MariaDB binlog source against a real MariaDB with a ROW/FULL
//! binlog (no Kafka): what it yields for a snapshot and for streamed
//! changes, and what it says when the server or user is not ready.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{id_of, my_fresh_db, Target};
use backflow_connectors::mysql::{MysqlSource, MysqlSourceConfig, MysqlTableConfig};
use backflow_connectors::{ErrorKind, Position, Source, SourceBatch};
use backflow_schemas::{Datum, Decimal, Op, Row, Snapshot, SqlType};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

/// A fresh database `<prefix>_<pid>`; returns its name and a connection
/// using it.
async fn fresh_db(prefix: &str) -> (String, Conn) {
    let db = format!("{prefix}_{}", std::process::id());
    let mut c = my_fresh_db(&db).await;
    c.query_drop("SET time_zone = '+00:00'").await.unwrap();
    (db, c)
}

fn config(db: &str, table: &str) -> MysqlSourceConfig {
    MysqlSourceConfig {
        tables: vec![MysqlTableConfig {
            table: table.into(),
            dataset: format!("test.{table}"),
        }],
        ..Target::new(3306, "root", None, db).my_source(&db.replace('_', "-"))
    }
}

/// Reads batches until `want` records arrived (or 20 s passed); returns
/// them and the last checkpoint seen.
async fn read(
    source: &mut MysqlSource,
    want: usize,
) -> (
    Vec<backflow_connectors::SourceRecord>,
    Option<Position>,
    Vec<String>,
) {
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    let mut checkpoint = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while records.len() < want && tokio::time::Instant::now() < deadline {
        let b: SourceBatch = tokio::time::timeout(Duration::from_secs(5), source.next_batch(500))
            .await
            .unwrap_or_else(|_| Ok(SourceBatch::default()))
            .unwrap();
        records.extend(b.records);
        rejected.extend(b.rejected.into_iter().map(|r| r.reason));
        if b.checkpoint.is_some() {
            checkpoint = b.checkpoint;
        }
    }
    (records, checkpoint, rejected)
}

/// Reads whatever arrives within `for_`.
async fn drain(source: &mut MysqlSource, for_: Duration) -> (usize, Option<Position>) {
    let mut n = 0;
    let mut checkpoint = None;
    let deadline = tokio::time::Instant::now() + for_;
    while tokio::time::Instant::now() < deadline {
        if let Ok(b) =
            tokio::time::timeout(Duration::from_millis(300), source.next_batch(500)).await
        {
            let b = b.unwrap();
            n += b.records.len();
            if b.checkpoint.is_some() {
                checkpoint = b.checkpoint;
            }
        }
    }
    (n, checkpoint)
}

#[tokio::test]
async fn mysql_source_snapshot_then_binlog_stream_then_resume_loses_and_repeats_nothing() {
    let (db, mut c) = fresh_db("bf_my_stream").await;
    c.query_drop(
        "CREATE TABLE items (id bigint PRIMARY KEY, label varchar(40) NOT NULL, amount decimal(10,2)) ENGINE=InnoDB",
    )
    .await
    .unwrap();
    for chunk in 0..5 {
        let values: Vec<String> = (1..=500)
            .map(|i| {
                let id = chunk * 500 + i;
                format!("({id}, 'item {id}', {id}.25)")
            })
            .collect();
        c.query_drop(format!("INSERT INTO items VALUES {}", values.join(",")))
            .await
            .unwrap();
    }
    let mut source = MysqlSource::new(config(&db, "items"), "330100");
    let tables = source.start(None).await.unwrap();
    assert_eq!(tables[0].primary_key, vec!["id".to_owned()]);
    // Changes made while the snapshot is read are streamed after it.
    c.query_drop("UPDATE items SET label = 'changed' WHERE id = 1")
        .await
        .unwrap();
    let (snap, cp, _) = read(&mut source, 2500).await;
    assert_eq!(snap.len(), 2500, "every row read once by the snapshot");
    assert!(snap.iter().all(|r| r.event.op == Op::Read));
    let ids: Vec<i64> = snap.iter().map(|r| id_of(&r.event.key)).collect();
    assert_eq!(ids, (1..=2500).collect::<Vec<_>>(), "in key order, no gaps");
    assert_eq!(snap.last().unwrap().event.source.snapshot, Snapshot::Last);
    // The snapshot is consistent: row 1 as before the concurrent update.
    assert_eq!(
        snap[0].event.after.as_ref().unwrap().0[1],
        Datum::Text("item 1".into())
    );
    assert!(cp.is_some());

    let (streamed, _, _) = read(&mut source, 1).await;
    assert_eq!(streamed.len(), 1);
    let upd = &streamed[0];
    assert_eq!(upd.event.op, Op::Update);
    assert_eq!(
        upd.event.before.as_ref().unwrap().0[1],
        Datum::Text("item 1".into())
    );
    assert_eq!(
        upd.event.after.as_ref().unwrap().0[1],
        Datum::Text("changed".into())
    );
    assert!(
        upd.position > snap[0].position,
        "a streamed change sorts after the snapshot rows ({} vs {})",
        upd.position.0,
        snap[0].position.0
    );
    assert!(
        upd.event.source.txid.is_some(),
        "MariaDB GTID carried as txid"
    );

    // One transaction: insert, update, delete, primary-key change.
    c.query_drop(
        "START TRANSACTION;
         INSERT INTO items VALUES (3001, 'new', NULL);
         UPDATE items SET amount = 7.50 WHERE id = 2;
         DELETE FROM items WHERE id = 3;
         UPDATE items SET id = 4004 WHERE id = 4;
         COMMIT;",
    )
    .await
    .unwrap();
    let (tx, cp, _) = read(&mut source, 5).await;
    let ops: Vec<(Op, i64)> = tx
        .iter()
        .map(|r| (r.event.op, id_of(&r.event.key)))
        .collect();
    assert_eq!(
        ops,
        vec![
            (Op::Create, 3001),
            (Op::Update, 2),
            (Op::Delete, 3),
            (Op::Delete, 4),
            (Op::Create, 4004)
        ]
    );
    assert_eq!(tx[0].event.after.as_ref().unwrap().0[2], Datum::Null);
    assert_eq!(
        tx[1].event.after.as_ref().unwrap().0[2],
        Datum::Decimal(Decimal::parse("7.50", 2).unwrap())
    );
    assert!(
        tx[2].event.before.is_some(),
        "deletes carry the full before-image"
    );
    let orders: Vec<i64> = tx
        .iter()
        .map(|r| r.event.transaction.as_ref().unwrap().total_order)
        .collect();
    assert_eq!(orders, vec![1, 2, 3, 4, 5]);
    assert!(tx.iter().all(|r| r.position == tx[0].position));
    let cp = cp.expect("a commit is a checkpoint");
    source.acknowledge(&cp).await.unwrap();
    source.shutdown().await.unwrap();

    // Changes while the feed is down are read after a restart from the
    // acknowledged checkpoint, and nothing before it again.
    c.query_drop("INSERT INTO items VALUES (5000, 'while down', 1.00)")
        .await
        .unwrap();
    c.query_drop("DELETE FROM items WHERE id = 5")
        .await
        .unwrap();
    let mut source = MysqlSource::new(config(&db, "items"), "330100");
    source.start(Some(cp)).await.unwrap();
    let (after, _, _) = read(&mut source, 2).await;
    let ops: Vec<(Op, i64)> = after
        .iter()
        .map(|r| (r.event.op, id_of(&r.event.key)))
        .collect();
    assert_eq!(ops, vec![(Op::Create, 5000), (Op::Delete, 5)]);
    let (more, _) = drain(&mut source, Duration::from_millis(800)).await;
    assert_eq!(more, 0, "nothing read twice");
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn mysql_source_reads_every_type_exactly_in_snapshot_and_binlog() {
    let (db, mut c) = fresh_db("bf_my_types").await;
    c.query_drop(
        "CREATE TABLE t (
            id int PRIMARY KEY,
            flag tinyint(1),
            small tinyint unsigned,
            big bigint unsigned,
            amount decimal(20,6),
            at datetime(6),
            stamp timestamp(6) NULL,
            day date,
            clock time(3),
            doc json,
            data blob,
            name varchar(20),
            note text,
            color enum('red','green','blue'),
            tags set('a','b','c'),
            ratio double,
            yr year
        )",
    )
    .await
    .unwrap();
    let insert = |id: i32| {
        format!(
            "INSERT INTO t VALUES ({id}, 1, 250, 18446744073709551615, -12345678901234.123456,
             '2024-02-29 23:59:58.123456', '2023-11-14 22:13:20.000123', '1999-12-31',
             '12:34:56.789', '{{\"名\": [1, 2.5, true, null]}}', X'00FF10', '中文名字😀',
             'längere Notiz 📄', 'green', 'a,c', 0.1, 2024)"
        )
    };
    c.query_drop(insert(1)).await.unwrap();
    c.query_drop("INSERT INTO t (id) VALUES (2)").await.unwrap();
    let mut source = MysqlSource::new(config(&db, "t"), "330100");
    let tables = source.start(None).await.unwrap();
    let desc = &tables[0];
    let ty = |n: &str| desc.column(n).unwrap().1.sql_type.clone();
    assert_eq!(ty("flag"), SqlType::Boolean);
    assert_eq!(ty("small"), SqlType::SmallInt);
    assert_eq!(
        ty("big"),
        SqlType::Decimal {
            precision: Some(20),
            scale: Some(0)
        }
    );
    assert_eq!(ty("at"), SqlType::Timestamp);
    assert_eq!(ty("stamp"), SqlType::TimestampTz);
    assert_eq!(
        ty("doc"),
        SqlType::Json,
        "MariaDB JSON (longtext + json_valid)"
    );
    assert_eq!(ty("data"), SqlType::Bytes);
    assert_eq!(ty("color"), SqlType::Varchar { len: Some(5) });
    let (snap, _, rejected) = read(&mut source, 2).await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(snap.len(), 2);

    // The same rows through the binlog.
    c.query_drop(insert(3)).await.unwrap();
    c.query_drop("INSERT INTO t (id) VALUES (4)").await.unwrap();
    let (streamed, _, rejected) = read(&mut source, 2).await;
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(streamed.len(), 2);

    let day = |y, m, d| backflow_connectors::text::days_from_civil(y, m, d);
    let expected = |id: i32| {
        Row(vec![
            Datum::Int(id),
            Datum::Bool(true),
            Datum::Int(250),
            Datum::Decimal(Decimal::parse("18446744073709551615", 0).unwrap()),
            Datum::Decimal(Decimal::parse("-12345678901234.123456", 6).unwrap()),
            Datum::Timestamp(day(2024, 2, 29) * 86_400_000_000 + 86_398_123_456),
            Datum::TimestampTz(1_700_000_000_000_123),
            Datum::Date(day(1999, 12, 31) as i32),
            Datum::Time((12 * 3600 + 34 * 60 + 56) * 1_000_000 + 789_000),
            Datum::Json(String::new()), // compared separately below
            Datum::Bytes(vec![0, 255, 16]),
            Datum::Text("中文名字😀".into()),
            Datum::Text("längere Notiz 📄".into()),
            Datum::Text("green".into()),
            Datum::Text("a,c".into()),
            Datum::Double(0.1),
            Datum::Int(2024),
        ])
    };
    for (record, id) in [(&snap[0], 1), (&streamed[0], 3)] {
        let mut row = record.event.after.clone().unwrap();
        let doc = std::mem::replace(&mut row.0[9], Datum::Json(String::new()));
        let Datum::Json(doc) = doc else {
            panic!("doc is {doc:?}")
        };
        let parsed: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(parsed, serde_json::json!({"名": [1, 2.5, true, null]}));
        assert_eq!(row, expected(id), "row {id} ({:?})", record.event.op);
    }
    for (record, id) in [(&snap[1], 2), (&streamed[1], 4)] {
        let row = record.event.after.as_ref().unwrap();
        assert_eq!(row.0[0], Datum::Int(id));
        assert!(
            row.0[1..].iter().all(|d| *d == Datum::Null),
            "NULLs stay NULL: {row:?}"
        );
    }
    source.shutdown().await.unwrap();
}

/// Zero dates (`0000-00-00`, a zero month or day, a zero DATETIME or
/// TIMESTAMP), which a permissive `sql_mode` lets a department store, have
/// no calendar value: in the snapshot and in the binlog alike, their rows
/// go to the dead-letter topic with the column named, and the rows around
/// them are shared.
#[tokio::test]
async fn mysql_source_zero_dates_are_dead_lettered_naming_the_column() {
    let (db, mut c) = fresh_db("bf_my_zero_dates").await;
    c.query_drop("SET SESSION sql_mode = ''").await.unwrap();
    c.query_drop("CREATE TABLE z (id int PRIMARY KEY, d date, dt datetime, ts timestamp NULL)")
        .await
        .unwrap();
    let insert = |offset: i32| {
        [
            format!(
                "INSERT INTO z VALUES ({}, '0000-00-00', NULL, NULL), ({}, NULL, '0000-00-00 00:00:00', NULL),
                 ({}, '2024-00-15', NULL, NULL), ({}, NULL, '2024-05-00 10:00:00', NULL),
                 ({}, NULL, NULL, '0000-00-00 00:00:00')",
                1 + offset,
                2 + offset,
                3 + offset,
                4 + offset,
                5 + offset
            ),
            format!(
                "INSERT INTO z VALUES ({}, '2024-05-06', '2024-05-06 07:08:09', '2024-05-06 07:08:09')",
                6 + offset
            ),
        ]
    };
    for statement in insert(0) {
        c.query_drop(statement).await.unwrap();
    }
    let mut source = MysqlSource::new(config(&db, "z"), "330100");
    source.start(None).await.unwrap();
    let (snap, _, snap_rejected) = read(&mut source, 1).await;
    for statement in insert(10) {
        c.query_drop(statement).await.unwrap();
    }
    let (streamed, _, stream_rejected) = read(&mut source, 1).await;
    source.shutdown().await.unwrap();
    let day = backflow_connectors::text::days_from_civil(2024, 5, 6);
    let at = (day * 86_400 + 7 * 3600 + 8 * 60 + 9) * 1_000_000;
    for (phase, records, rejected, id) in [
        ("snapshot", &snap, &snap_rejected, 6),
        ("binlog", &streamed, &stream_rejected, 16),
    ] {
        let shared: Vec<&Row> = records
            .iter()
            .map(|r| r.event.after.as_ref().unwrap())
            .collect();
        assert_eq!(
            shared,
            [&Row(vec![
                Datum::Int(id),
                Datum::Date(day as i32),
                Datum::Timestamp(at),
                Datum::TimestampTz(at),
            ])],
            "{phase}: only the row with real dates is shared"
        );
        let mut columns: Vec<&str> = rejected
            .iter()
            .map(|r| {
                ["column d:", "column dt:", "column ts:"]
                    .into_iter()
                    .find(|c| r.contains(c))
                    .unwrap_or_else(|| panic!("{phase}: a reason naming the column: {r}"))
            })
            .collect();
        columns.sort_unstable();
        assert_eq!(
            columns,
            [
                "column d:",
                "column d:",
                "column dt:",
                "column dt:",
                "column ts:"
            ],
            "{phase}: each zero date dead-lettered: {rejected:#?}"
        );
        assert!(
            rejected
                .iter()
                .all(|r| r.contains("zero") && r.contains("NULL")),
            "{phase}: the reason says why and the way out: {rejected:#?}"
        );
    }
}

#[tokio::test]
async fn mysql_source_follows_add_column_and_reports_truncate() {
    let (db, mut c) = fresh_db("bf_my_ddl").await;
    c.query_drop("CREATE TABLE p (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO p VALUES (1, 'a')").await.unwrap();
    let mut source = MysqlSource::new(config(&db, "p"), "330100");
    source.start(None).await.unwrap();
    let (snap, _, _) = read(&mut source, 1).await;
    assert_eq!(snap[0].table.columns.len(), 2);
    c.query_drop("INSERT INTO p VALUES (2, 'before alter')")
        .await
        .unwrap();
    c.query_drop("ALTER TABLE p ADD COLUMN level int NOT NULL DEFAULT 3")
        .await
        .unwrap();
    c.query_drop("INSERT INTO p VALUES (3, 'after alter', 9)")
        .await
        .unwrap();
    let (recs, _, _) = read(&mut source, 2).await;
    assert_eq!(recs[0].table.columns.len(), 2, "logged before the ALTER");
    assert_eq!(recs[1].table.columns.len(), 3, "logged after the ALTER");
    assert_eq!(recs[1].event.after.as_ref().unwrap().0[2], Datum::Int(9));

    c.query_drop("TRUNCATE TABLE p").await.unwrap();
    c.query_drop("INSERT INTO p VALUES (4, 'after truncate', 1)")
        .await
        .unwrap();
    let (recs, _, rejected) = read(&mut source, 1).await;
    assert_eq!(recs.len(), 1, "the stream goes on after TRUNCATE");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].contains("TRUNCATE") && rejected[0].contains("--resnapshot"),
        "{}",
        rejected[0]
    );
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn mysql_source_crashed_mid_snapshot_resumes_after_last_acknowledged_chunk() {
    let (db, mut c) = fresh_db("bf_my_resume").await;
    c.query_drop("CREATE TABLE r (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let values: Vec<String> = (1..=3000).map(|i| format!("({i}, {i})")).collect();
    c.query_drop(format!("INSERT INTO r VALUES {}", values.join(",")))
        .await
        .unwrap();
    let mut cfg = config(&db, "r");
    cfg.snapshot_chunk_rows = 1000;
    let mut source = MysqlSource::new(cfg.clone(), "330100");
    source.start(None).await.unwrap();
    let first = source.next_batch(5000).await.unwrap();
    let second = source.next_batch(5000).await.unwrap();
    assert_eq!(first.records.len() + second.records.len(), 2000);
    let cp = second.checkpoint.expect("each chunk is a checkpoint");
    assert!(cp.0.starts_with("snapshot:"));
    // Killed here: the third chunk never reached Kafka.
    drop(source);
    c.query_drop("UPDATE r SET v = -1 WHERE id = 2500")
        .await
        .unwrap();
    let mut source = MysqlSource::new(cfg, "330100");
    source.start(Some(cp)).await.unwrap();
    let (recs, _, _) = read(&mut source, 1001).await;
    let snap: Vec<i64> = recs
        .iter()
        .filter(|r| r.event.op == Op::Read)
        .map(|r| id_of(&r.event.key))
        .collect();
    assert_eq!(
        snap,
        (2001..=3000).collect::<Vec<_>>(),
        "only what was left"
    );
    // The update made in between arrives from the binlog after the rows
    // (replayed from the snapshot's position), so the last version wins.
    let updates: BTreeMap<i64, Op> = recs
        .iter()
        .filter(|r| r.event.op != Op::Read)
        .map(|r| (id_of(&r.event.key), r.event.op))
        .collect();
    assert_eq!(updates.get(&2500), Some(&Op::Update));
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn mysql_source_purged_binlog_names_the_way_out() {
    let (db, mut c) = fresh_db("bf_my_purged").await;
    c.query_drop("CREATE TABLE q (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut source = MysqlSource::new(config(&db, "q"), "330100");
    let err = source
        .start(Some(Position(
            "mysql-bin.000000:00000000000000000004".into(),
        )))
        .await
        .expect_err("a purged position cannot resume");
    assert_eq!(err.kind, ErrorKind::Definite);
    assert!(
        err.message.contains("mysql-bin.000000") && err.message.contains("--resnapshot"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn mysql_source_user_without_replication_grants_says_how_to_fix_it() {
    let (db, mut c) = fresh_db("bf_my_grants").await;
    c.query_drop("CREATE TABLE g (id int PRIMARY KEY)")
        .await
        .unwrap();
    let user = format!("bf_norepl_{}", std::process::id());
    c.query_drop(format!("DROP USER IF EXISTS '{user}'@'%'"))
        .await
        .unwrap();
    c.query_drop(format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
        .await
        .unwrap();
    c.query_drop(format!("GRANT SELECT ON {db}.* TO '{user}'@'%'"))
        .await
        .unwrap();
    let mut cfg = config(&db, "g");
    cfg.user = user.clone();
    cfg.password = Some("pw".into());
    let mut source = MysqlSource::new(cfg, "330100");
    let err = source.start(None).await.expect_err("refused");
    assert_eq!(err.kind, ErrorKind::Definite);
    assert!(
        err.message.contains("REPLICATION SLAVE") && err.message.contains("GRANT"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("pw'"), "no password in errors");
    c.query_drop(format!("DROP USER '{user}'@'%'"))
        .await
        .unwrap();
}

#[tokio::test]
async fn mysql_source_snapshot_deletes_keys_the_raw_topic_holds_and_the_table_lost() {
    let (db, mut c) = fresh_db("bf_my_vanished").await;
    c.query_drop("CREATE TABLE v (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO v VALUES (1, 'a'), (2, 'b')")
        .await
        .unwrap();
    let mut source = MysqlSource::new(config(&db, "v"), "330100");
    let tables = source.start(None).await.unwrap();
    assert_eq!(source.topic_state_interval(), Some(Duration::MAX));
    // The raw topic still holds rows 2 and 3 from before (a re-snapshot):
    // row 3 was deleted while nothing captured it.
    let row = |id: i32, name: &str| Row(vec![Datum::Int(id), Datum::Text(name.into())]);
    let batch = source
        .topic_state(&tables[0], vec![row(2, "b"), row(3, "gone")])
        .await
        .unwrap();
    let deletes: Vec<(Op, i64, Option<Row>)> = batch
        .records
        .iter()
        .map(|r| (r.event.op, id_of(&r.event.key), r.event.before.clone()))
        .collect();
    assert_eq!(deletes, vec![(Op::Delete, 3, Some(row(3, "gone")))]);
    let (snap, _, _) = read(&mut source, 2).await;
    assert_eq!(snap.len(), 2);
    assert!(
        deletes.is_empty() || batch.records[0].position <= snap[0].position,
        "the delete is not newer than the snapshot rows"
    );
    assert_eq!(
        source.topic_state_interval(),
        None,
        "only while snapshotting"
    );
    source.shutdown().await.unwrap();
}
