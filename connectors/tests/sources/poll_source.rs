//! The SQL polling source against real databases (SQLite files, the
//! PostgreSQL on 127.0.0.1:5432 and the MariaDB on 127.0.0.1:3306), no
//! Kafka: what it yields for inserts, updates, soft and hard deletes, and
//! how it resumes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::{fast_poll, my_fresh_db, my_root, pg_admin, pg_fresh_db, poll_table, Target};
use backflow_connectors::poll::{PollMode, PollSource, PollSourceConfig, PollTableConfig};
use backflow_connectors::sink::mysql::MysqlSink;
use backflow_connectors::sink::postgres::{PostgresSink, PostgresSinkConfig};
use backflow_connectors::sink::sqlite::{SqliteSink, SqliteSinkConfig};
use backflow_connectors::{
    ErrorKind, Position, RejectedRecord, Sink, SinkBatch, SinkRecord, Source, SourceRecord,
    TopicOffset,
};
use backflow_schemas::{Datum, Decimal, Op, Row, Snapshot, SqlType, TableDesc};
use mysql_async::prelude::Queryable;

// ---------------------------------------------------------------- helpers

/// A new SQLite database file in the temp directory, set up with `sql`.
fn sqlite_db(tag: &str, sql: &str) -> (PathBuf, rusqlite::Connection) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path =
        std::env::temp_dir().join(format!("bf_poll_{tag}_{}_{nanos}.db", std::process::id()));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(sql).unwrap();
    (path, conn)
}

/// A fresh PostgreSQL database `<prefix>_<pid>` set up with `sql`.
async fn pg_db(prefix: &str, sql: &str) -> (String, tokio_postgres::Client) {
    let db = format!("{prefix}_{}", std::process::id());
    pg_fresh_db(&db, "postgres").await;
    let c = pg_admin(&db).await;
    c.batch_execute(sql).await.unwrap();
    (db, c)
}

/// A fresh MariaDB database `<prefix>_<pid>` set up with `statements`; the
/// connection uses it in the server's default time zone, as an
/// application's would.
async fn my_db(prefix: &str, statements: &[&str]) -> (String, mysql_async::Conn) {
    let db = format!("{prefix}_{}", std::process::id());
    let mut c = my_fresh_db(&db).await;
    for sql in statements {
        c.query_drop(*sql).await.unwrap();
    }
    (db, c)
}

async fn my_drop(db: &str) {
    let mut c = my_root().await;
    c.query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
}

fn my_config(db: &str, tables: Vec<PollTableConfig>) -> PollSourceConfig {
    fast_poll(PollSourceConfig::mysql("poll-test", "root", db, tables))
}

/// The next record the source yields (waiting up to 10 s).
async fn next_record(source: &mut PollSource) -> SourceRecord {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let b = source.next_batch(100).await.unwrap();
            if let Some(r) = b.records.into_iter().next() {
                break r;
            }
        }
    })
    .await
    .expect("a record within 10 s")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sqlite_config(path: &std::path::Path, tables: Vec<PollTableConfig>) -> PollSourceConfig {
    fast_poll(PollSourceConfig::sqlite("poll-test", path, tables))
}

fn pg_config(db: &str, tables: Vec<PollTableConfig>) -> PollSourceConfig {
    fast_poll(PollSourceConfig::postgres(
        "poll-test",
        "postgres",
        db,
        tables,
    ))
}

/// What a run of batches yielded.
#[derive(Default)]
struct Seen {
    records: Vec<SourceRecord>,
    rejected: Vec<RejectedRecord>,
    /// Checkpoint of every non-empty batch, in order.
    checkpoints: Vec<Position>,
    last_checkpoint: Option<Position>,
}

impl Seen {
    fn ops(&self) -> Vec<(Op, i64)> {
        self.records
            .iter()
            .map(|r| (r.event.op, int(&r.event.key.0[0])))
            .collect()
    }
}

/// Reads batches until two polls in a row find nothing new.
async fn until_idle(source: &mut PollSource, max: usize) -> Seen {
    let mut seen = Seen::default();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut empty = 0;
        while empty < 2 {
            let b = source.next_batch(max).await.unwrap();
            assert!(b.records.len() + b.rejected.len() <= max, "at most max");
            let cp = b.checkpoint.clone().expect("every batch has a checkpoint");
            assert!(cp.0.starts_with("poll:"), "{}", cp.0);
            if b.records.is_empty() && b.rejected.is_empty() {
                empty += 1;
            } else {
                empty = 0;
                seen.checkpoints.push(cp.clone());
            }
            seen.last_checkpoint = Some(cp);
            seen.records.extend(b.records);
            seen.rejected.extend(b.rejected);
        }
    })
    .await
    .expect("the source goes idle");
    seen
}

/// Starts a source and hands it the topic's rows as the runtime does.
async fn started(
    config: PollSourceConfig,
    position: Option<Position>,
    topic: Vec<Row>,
) -> (PollSource, Arc<TableDesc>) {
    let mut source = PollSource::new(config, "330000");
    let tables = source.start(position).await.unwrap();
    let desc = tables[0].clone();
    let batch = source.topic_state(&desc, topic).await.unwrap();
    assert!(batch.records.is_empty(), "nothing deleted");
    (source, desc)
}

fn int(d: &Datum) -> i64 {
    match d {
        Datum::Int(v) => i64::from(*v),
        Datum::Long(v) => *v,
        Datum::Decimal(d) if d.scale == 0 => d.to_string().parse().unwrap(),
        other => panic!("not an integer: {other:?}"),
    }
}

fn text(d: &Datum) -> &str {
    match d {
        Datum::Text(t) => t,
        other => panic!("not text: {other:?}"),
    }
}

fn after(r: &SourceRecord) -> &Row {
    r.event.after.as_ref().expect("after-image")
}

fn before(r: &SourceRecord) -> &Row {
    r.event.before.as_ref().expect("before-image")
}

/// Positions never go down in the order polls yield records (the records
/// of one poll share its position).
fn assert_sorted(records: &[SourceRecord]) {
    for w in records.windows(2) {
        assert!(
            w[0].position <= w[1].position,
            "positions sort as text: {} then {}",
            w[0].position.0,
            w[1].position.0
        );
    }
}

// ------------------------------------------------------------------ tests

const ITEMS: &str = "CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    amount NUMERIC(10,2),
    born DATE,
    flag BOOLEAN,
    data BLOB,
    updated_at TIMESTAMP NOT NULL);";

#[tokio::test]
async fn sqlite_timestamp_incrementing_captures_ties_updates_and_resumes_exactly() {
    let (path, db) = sqlite_db(
        "ts",
        &format!(
            "{ITEMS}
             INSERT INTO items VALUES (1, 'one', 1.5, '1990-05-01', 1, x'00ff', '2026-01-01 10:00:00');
             -- three rows with the same timestamp: a batch of 2 ends between them
             INSERT INTO items VALUES (2, 'two', 2, NULL, 0, NULL, '2026-01-01 10:00:05');
             INSERT INTO items VALUES (3, 'three', '3.25', NULL, NULL, NULL, '2026-01-01 10:00:05');
             INSERT INTO items VALUES (4, 'four', NULL, NULL, NULL, NULL, '2026-01-01T10:00:05Z');"
        ),
    );
    let tables = vec![poll_table(
        "items",
        PollMode::TimestampIncrementing,
        Some("updated_at"),
    )];
    let mut config = sqlite_config(&path, tables);
    config.batch_rows = 2;

    let (mut a, desc) = started(config.clone(), None, vec![]).await;
    assert_eq!(desc.qualified_name(), "main.items");
    let first = until_idle(&mut a, 100).await;
    assert_eq!(
        first.ops(),
        vec![
            (Op::Create, 1),
            (Op::Create, 2),
            (Op::Create, 3),
            (Op::Create, 4)
        ]
    );
    assert!(first.rejected.is_empty());
    assert_sorted(&first.records);
    // batch_rows = 2: the first poll stopped between rows 2 and 3, which
    // share a timestamp, and that was a checkpoint.
    assert!(first.checkpoints.len() >= 2, "{:?}", first.checkpoints);
    let mid_tie = first.checkpoints[0].clone();
    let r1 = after(&first.records[0]).clone();
    assert_eq!(
        r1.0,
        vec![
            Datum::Long(1),
            Datum::Text("one".into()),
            Datum::Decimal(Decimal::parse("1.50", 2).unwrap()),
            backflow_connectors::text::parse(&SqlType::Date, "1990-05-01").unwrap(),
            Datum::Bool(true),
            Datum::Bytes(vec![0, 255]),
            backflow_connectors::text::parse(&SqlType::Timestamp, "2026-01-01 10:00:00").unwrap(),
        ]
    );
    let e = &first.records[0].event;
    assert_eq!(&*e.source.connector, "poll");
    assert_eq!(&*e.source.name, "poll-test");
    assert_eq!(&*e.source.node, "330000");
    assert_eq!(e.source.schema.as_deref(), Some("main"));
    assert_eq!(&*e.source.table, "items");
    assert_eq!(e.source.snapshot, Snapshot::False);
    assert_eq!(&*e.source.position, first.records[0].position.as_str());
    assert!(e.transaction.is_none() && e.before.is_none());
    // The poll's time, not the row's.
    assert!(
        e.source.position.starts_with("poll@"),
        "{}",
        e.source.position
    );
    assert!(
        (now_ms() - e.source.ts_ms).abs() < 60_000,
        "{}",
        e.source.ts_ms
    );

    // Restarted from the checkpoint taken between the tied rows 2 and 3:
    // rows 3 and 4 come, and nothing else. (An empty topic, so that a row
    // read again would be yielded again rather than found unchanged.)
    let (mut b, _) = started(config.clone(), Some(mid_tie), vec![]).await;
    let resumed = until_idle(&mut b, 100).await;
    assert_eq!(resumed.ops(), vec![(Op::Create, 3), (Op::Create, 4)]);
    // Read again by a later poll: a later position.
    assert!(resumed.records[0].position > first.records[2].position);
    b.shutdown().await.unwrap();

    // An update: `u` whose before-image is the row as last yielded, and a
    // position after the insert's.
    db.execute_batch(
        "UPDATE items SET label = 'two v2', updated_at = '2026-01-01 10:01:00' WHERE id = 2",
    )
    .unwrap();
    let upd = until_idle(&mut a, 100).await;
    assert_eq!(upd.ops(), vec![(Op::Update, 2)]);
    assert_eq!(before(&upd.records[0]), after(&first.records[1]));
    assert_eq!(text(&after(&upd.records[0]).0[1]), "two v2");
    assert!(upd.records[0].position > first.records[1].position);
    let done = upd.last_checkpoint.clone().unwrap();
    a.shutdown().await.unwrap();
    let topic = vec![
        r1.clone(),
        after(&upd.records[0]).clone(),
        after(&first.records[2]).clone(),
        after(&first.records[3]).clone(),
    ];

    // Restarted from the last checkpoint: only what changed since, in
    // (timestamp, id) order, including two new rows sharing a timestamp,
    // and a row whose value does not convert goes to the dead letters
    // without stopping the feed.
    db.execute_batch(
        "INSERT INTO items VALUES (6, 'six', NULL, NULL, NULL, NULL, '2026-01-01 10:02:00');
         UPDATE items SET label = 'one v2', updated_at = '2026-01-01 10:02:00' WHERE id = 1;
         INSERT INTO items VALUES (7, 'seven', NULL, 'garbage', NULL, NULL, '2026-01-01 10:03:00');
         INSERT INTO items VALUES (8, 'eight', NULL, NULL, NULL, NULL, '2026-01-01 10:03:00');",
    )
    .unwrap();
    let (mut c, _) = started(config, Some(done), topic).await;
    let after_restart = until_idle(&mut c, 1).await;
    assert_eq!(
        after_restart.ops(),
        vec![(Op::Update, 1), (Op::Create, 6), (Op::Create, 8)]
    );
    assert_eq!(before(&after_restart.records[0]), &r1);
    assert_eq!(after_restart.rejected.len(), 1);
    let bad = &after_restart.rejected[0];
    assert_eq!(bad.table, "main.items");
    assert!(bad.reason.contains("born"), "{}", bad.reason);
    assert!(
        !bad.reason.contains("garbage"),
        "never the value: {}",
        bad.reason
    );
    assert!(after_restart.records[1].position <= bad.position);
    assert!(bad.position <= after_restart.records[2].position);
    c.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn postgres_soft_delete_is_a_delete_and_recent_rows_wait_for_the_delay() {
    let (db, c) = pg_db(
        "bf_poll_soft",
        "CREATE TABLE people (
            id bigint PRIMARY KEY,
            name text NOT NULL,
            score numeric(6,2),
            born date,
            photo bytea,
            deleted boolean NOT NULL DEFAULT false,
            updated_at timestamptz NOT NULL);
         INSERT INTO people VALUES
            (1, 'Li', 12.5, '1980-02-03', '\\x0102', false, now() - interval '1 hour'),
            (2, 'Wang', NULL, NULL, NULL, false, now() - interval '1 hour');",
    )
    .await;
    let mut t = poll_table(
        "public.people",
        PollMode::TimestampIncrementing,
        Some("updated_at"),
    );
    t.soft_delete_column = Some("deleted".into());
    let mut config = pg_config(&db, vec![t]);
    config.delay_ms = 1500;
    let (mut source, _) = started(config, None, vec![]).await;
    let first = until_idle(&mut source, 100).await;
    assert_eq!(first.ops(), vec![(Op::Create, 1), (Op::Create, 2)]);
    let li = after(&first.records[0]).clone();
    assert_eq!(li.0[2], Datum::Decimal(Decimal::parse("12.50", 2).unwrap()));
    assert_eq!(li.0[4], Datum::Bytes(vec![1, 2]));
    assert_eq!(&*first.records[0].event.source.db, db);

    // Soft delete: `d`, before-image the row as last yielded, no after.
    c.batch_execute(
        "UPDATE people SET deleted = true, updated_at = now() - interval '30 minutes' WHERE id = 1",
    )
    .await
    .unwrap();
    let del = until_idle(&mut source, 100).await;
    assert_eq!(del.ops(), vec![(Op::Delete, 1)]);
    assert_eq!(before(&del.records[0]), &li);
    assert!(del.records[0].event.after.is_none());
    assert!(del.records[0].position > first.records[0].position);

    // A row stamped with the database's now is not read before now + delay.
    let inserted = Instant::now();
    let inserted_ms = now_ms();
    c.batch_execute("INSERT INTO people VALUES (3, 'Zhao', NULL, NULL, NULL, false, now())")
        .await
        .unwrap();
    let early = until_idle(&mut source, 100).await;
    assert!(early.records.is_empty(), "too early: {:?}", early.ops());
    let row3 = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let b = source.next_batch(100).await.unwrap();
            if let Some(r) = b.records.into_iter().next() {
                break r;
            }
        }
    })
    .await
    .expect("read once the delay passed");
    assert!(
        inserted.elapsed() >= Duration::from_millis(1400),
        "read after {:?}",
        inserted.elapsed()
    );
    assert_eq!((row3.event.op, int(&row3.event.key.0[0])), (Op::Create, 3));
    // source.ts_ms is the time of the poll that read it, after the delay.
    let ts_ms = row3.event.source.ts_ms;
    assert!(
        (inserted_ms + 1400..=now_ms()).contains(&ts_ms),
        "source.ts_ms is the poll's time: {} ms after the insert",
        ts_ms - inserted_ms
    );
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn key_diff_deletes_keys_gone_from_the_table_and_seeds_before_images() {
    let (db, c) = pg_db(
        "bf_poll_keys",
        "CREATE TABLE homes (id int PRIMARY KEY, addr text NOT NULL, updated_at timestamp NOT NULL);
         INSERT INTO homes VALUES
            (1, 'a1', '2020-01-01 10:00:00'),
            (2, 'a2', '2020-01-01 10:00:00'),
            (3, 'a3', '2020-01-01 10:00:00');",
    )
    .await;
    let ts = |t: &str| backflow_connectors::text::parse(&SqlType::Timestamp, t).unwrap();
    let row = |id: i32, addr: &str| {
        Row(vec![
            Datum::Int(id),
            Datum::Text(addr.into()),
            ts("2020-01-01 10:00:00"),
        ])
    };
    let mut config = pg_config(
        &db,
        vec![poll_table(
            "homes",
            PollMode::TimestampIncrementing,
            Some("updated_at"),
        )],
    );
    config.key_diff_interval_secs = 60;
    let mut source = PollSource::new(config, "330000");
    assert_eq!(source.topic_state_interval(), Some(Duration::from_secs(60)));
    let desc = source.start(None).await.unwrap()[0].clone();

    // The topic holds 1 and 2 as the table has them, and 4, which the
    // table no longer has: one delete, before-image the topic's row.
    let gone = row(4, "a4");
    let diff = source
        .topic_state(&desc, vec![row(1, "a1"), row(2, "a2"), gone.clone()])
        .await
        .unwrap();
    assert_only_delete_of_4(&diff, &gone);

    // Rows equal to the topic's are not yielded again; 3 is new.
    let first = until_idle(&mut source, 100).await;
    assert_eq!(first.ops(), vec![(Op::Create, 3)]);
    // The seeded row is the before-image of the next update.
    c.batch_execute(
        "UPDATE homes SET addr = 'a1 new', updated_at = '2020-01-02 00:00:00' WHERE id = 1",
    )
    .await
    .unwrap();
    let upd = until_idle(&mut source, 100).await;
    assert_eq!(upd.ops(), vec![(Op::Update, 1)]);
    assert_eq!(before(&upd.records[0]), &row(1, "a1"));

    // A hard delete shows at the next key diff, with a position after
    // the row's last version.
    c.batch_execute("DELETE FROM homes WHERE id = 2")
        .await
        .unwrap();
    let topic = vec![
        after(&upd.records[0]).clone(),
        row(2, "a2"),
        after(&first.records[0]).clone(),
    ];
    let diff = source.topic_state(&desc, topic).await.unwrap();
    assert_eq!(diff.records.len(), 1);
    let d = &diff.records[0];
    assert_eq!((d.event.op, int(&d.event.key.0[0])), (Op::Delete, 2));
    assert_eq!(d.event.before.as_ref(), Some(&row(2, "a2")));
    assert!(
        d.position > upd.records[0].position,
        "{} > {}",
        d.position.0,
        upd.records[0].position.0
    );
    assert!(until_idle(&mut source, 100).await.records.is_empty());
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn key_diff_drops_queued_changes_of_keys_already_gone() {
    let (path, db) = sqlite_db(
        "queued",
        &format!(
            "{ITEMS}
             INSERT INTO items (id, label, updated_at) VALUES
                (1, 'one', '2026-01-01 10:00:00'),
                (2, 'two', '2026-01-01 10:00:01'),
                (3, 'three', '2026-01-01 10:00:02');"
        ),
    );
    let config = sqlite_config(
        &path,
        vec![poll_table(
            "items",
            PollMode::TimestampIncrementing,
            Some("updated_at"),
        )],
    );
    let (mut source, desc) = started(config, None, vec![]).await;
    // One record of the poll is yielded; 2 and 3 wait in the source.
    let b = source.next_batch(1).await.unwrap();
    assert_eq!(b.records.len(), 1);
    let one = after(&b.records[0]).clone();
    // Row 3 is deleted before its insert was yielded: the key diff yields
    // no delete (the topic never had it) and the insert is not yielded
    // after it, which would bring the row back.
    db.execute_batch("DELETE FROM items WHERE id = 3").unwrap();
    let diff = source.topic_state(&desc, vec![one]).await.unwrap();
    assert!(diff.records.is_empty());
    let rest = until_idle(&mut source, 100).await;
    assert_eq!(rest.ops(), vec![(Op::Create, 2)]);
    source.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn sqlite_bulk_yields_changed_rows_only_and_deletes_vanished_keys() {
    let (path, db) = sqlite_db(
        "bulk",
        "CREATE TABLE districts (code INTEGER PRIMARY KEY, name TEXT NOT NULL, pop INTEGER);
         INSERT INTO districts VALUES (330102, 'Shangcheng', 200), (330105, 'Gongshu', 300),
                                      (330106, 'Xihu', 100);",
    );
    let config = sqlite_config(&path, vec![poll_table("districts", PollMode::Bulk, None)]);
    let (mut source, _) = started(config, None, vec![]).await;
    let first = until_idle(&mut source, 100).await;
    assert_eq!(
        first.ops(),
        vec![
            (Op::Create, 330102),
            (Op::Create, 330105),
            (Op::Create, 330106)
        ]
    );
    // Polls with nothing changed yield nothing (until_idle saw two).
    db.execute_batch(
        "UPDATE districts SET pop = 201 WHERE code = 330102;
         UPDATE districts SET name = 'Xihu' WHERE code = 330106; -- no change
         DELETE FROM districts WHERE code = 330105;
         INSERT INTO districts VALUES (330108, 'Binjiang', 50);",
    )
    .unwrap();
    let changed = until_idle(&mut source, 100).await;
    assert_eq!(
        changed.ops(),
        vec![
            (Op::Update, 330102),
            (Op::Create, 330108),
            (Op::Delete, 330105)
        ]
    );
    assert_eq!(before(&changed.records[0]), after(&first.records[0]));
    assert_eq!(after(&changed.records[0]).0[2], Datum::Long(201));
    let d = &changed.records[2];
    assert_eq!(d.event.before.as_ref(), Some(after(&first.records[1])));
    assert!(d.event.after.is_none());
    // Later polls sort after earlier ones for the same row.
    assert!(changed.records[0].position > first.records[0].position);
    assert!(d.position > first.records[1].position);
    source.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn configuration_errors_name_the_table_and_column() {
    let (path, _db) = sqlite_db(
        "cfg",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE, changed TEXT);
         CREATE TABLE tagged (code TEXT PRIMARY KEY, changed TIMESTAMP);",
    );
    let start_err = |tables: Vec<PollTableConfig>, position: Option<Position>| {
        let config = sqlite_config(&path, tables);
        async move {
            let mut s = PollSource::new(config, "330000");
            let e = s.start(position).await.expect_err("refused");
            assert_eq!(e.kind, ErrorKind::Definite, "{e}");
            e.message
        }
    };
    // The timestamp column does not exist.
    let e = start_err(
        vec![poll_table(
            "items",
            PollMode::TimestampIncrementing,
            Some("updated_at"),
        )],
        None,
    )
    .await;
    assert!(
        e.contains("main.items") && e.contains("updated_at") && e.contains("timestamp"),
        "{e}"
    );
    // The table does not exist.
    let e = start_err(vec![poll_table("nosuch", PollMode::Bulk, None)], None).await;
    assert!(e.contains("nosuch") && e.contains("does not exist"), "{e}");
    // The incrementing column must be an integer.
    let e = start_err(
        vec![poll_table(
            "tagged",
            PollMode::TimestampIncrementing,
            Some("changed"),
        )],
        None,
    )
    .await;
    assert!(
        e.contains("main.tagged") && e.contains("code") && e.contains("integer"),
        "{e}"
    );
    // A position that is not this source's.
    let e = start_err(
        vec![poll_table("items", PollMode::Bulk, None)],
        Some(Position("0/16B3748".into())),
    )
    .await;
    assert!(e.contains("--resnapshot"), "{e}");

    // Keys that depend on each other.
    let mut c = PollSourceConfig::sqlite(
        "f",
        &path,
        vec![poll_table("items", PollMode::TimestampIncrementing, None)],
    );
    let e = c.validate().unwrap_err();
    assert!(
        e.contains("tables[0].timestamp_column") && e.contains("items"),
        "{e}"
    );
    c.tables[0].timestamp_column = Some("changed".into());
    assert_eq!(c.validate(), Ok(()));
    c.path = None;
    assert!(c
        .validate()
        .unwrap_err()
        .starts_with("feeds[..].path is required for engine sqlite"));
    let pg = PollSourceConfig {
        database: None,
        ..PollSourceConfig::postgres("f", "u", "d", vec![poll_table("t", PollMode::Bulk, None)])
    };
    assert!(pg.validate().unwrap_err().contains("feeds[..].database"));

    // The configuration as the runtime reads it: defaults, spellings, and
    // unknown keys refused.
    let c: PollSourceConfig = serde_json::from_value(serde_json::json!({
        "name": "legacy", "engine": "postgres", "user": "u", "database": "d",
        "tables": [
            {"table": "public.t", "dataset": "dept.t", "mode": "timestamp+incrementing",
             "timestamp_column": "updated_at", "soft_delete_column": "deleted"},
            {"table": "r", "dataset": "dept.r", "mode": "bulk"}
        ]
    }))
    .unwrap();
    assert_eq!((c.host.as_str(), c.port()), ("127.0.0.1", 5432));
    assert_eq!(
        (
            c.poll_interval_ms,
            c.delay_ms,
            c.batch_rows,
            c.key_diff_interval_secs
        ),
        (1000, 1000, 10_000, 300)
    );
    assert_eq!(c.tables[0].mode, PollMode::TimestampIncrementing);
    assert_eq!(c.tables[1].mode, PollMode::Bulk);
    assert_eq!(c.validate(), Ok(()));
    let mut zero = c.clone();
    zero.key_diff_interval_secs = 0;
    assert_eq!(
        PollSource::new(zero, "330000").topic_state_interval(),
        Some(Duration::MAX)
    );
    let unknown = serde_json::from_value::<PollSourceConfig>(serde_json::json!({
        "name": "legacy", "engine": "sqlite", "path": "x.db", "tables": [], "poll_ms": 5
    }))
    .unwrap_err();
    assert!(unknown.to_string().contains("poll_ms"), "{unknown}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn postgres_unknown_table_and_missing_timestamp_column_are_named() {
    let (db, _c) = pg_db(
        "bf_poll_cfg",
        "CREATE TABLE items (id bigint PRIMARY KEY, label text, changed_on date);",
    )
    .await;
    for (tables, want) in [
        (
            vec![poll_table("public.missing", PollMode::Bulk, None)],
            vec!["public.missing", "does not exist"],
        ),
        (
            vec![poll_table(
                "items",
                PollMode::TimestampIncrementing,
                Some("updated_at"),
            )],
            vec!["public.items", "updated_at"],
        ),
        (
            vec![poll_table(
                "items",
                PollMode::TimestampIncrementing,
                Some("changed_on"),
            )],
            vec!["public.items", "changed_on", "timestamp or timestamptz"],
        ),
    ] {
        let mut s = PollSource::new(pg_config(&db, tables), "330000");
        let e = s.start(None).await.expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Definite);
        for w in want {
            assert!(e.message.contains(w), "{w} in: {}", e.message);
        }
    }
}

#[tokio::test]
async fn mysql_datetime_ties_split_by_the_batch_resume_exactly_and_updates_carry_before_images() {
    let (db, mut c) = my_db(
        "bf_poll_my_ts",
        &[
            "CREATE TABLE items (
                id INT NOT NULL PRIMARY KEY,
                label VARCHAR(40) NOT NULL,
                amount DECIMAL(10,2),
                born DATE,
                flag TINYINT(1),
                data VARBINARY(16),
                updated_at DATETIME(6) NOT NULL,
                KEY by_change (updated_at, id))",
            // Rows 2 and 3 share a DATETIME(6) value: a batch of 2 ends
            // between them.
            "INSERT INTO items VALUES
                (1, 'one', 1.5, '1990-05-01', 1, x'00ff', '2026-01-01 10:00:00'),
                (2, 'two', 2, NULL, 0, NULL, '2026-01-01 10:00:05.123456'),
                (3, 'three', 3.25, NULL, NULL, NULL, '2026-01-01 10:00:05.123456'),
                (4, 'four', NULL, NULL, NULL, NULL, '2026-01-01 10:00:06')",
            // Zero dates are never polled (and do not hold the poll up).
            "SET SESSION sql_mode = ''",
            "INSERT INTO items (id, label, updated_at) VALUES
                (8, 'zero', '0000-00-00 00:00:00'), (9, 'zero day', '2026-01-00 10:00:00')",
        ],
    )
    .await;
    let tables = vec![poll_table(
        "items",
        PollMode::TimestampIncrementing,
        Some("updated_at"),
    )];
    let mut config = my_config(&db, tables);
    config.batch_rows = 2;

    let (mut a, desc) = started(config.clone(), None, vec![]).await;
    assert_eq!(desc.qualified_name(), format!("{db}.items"));
    let first = until_idle(&mut a, 100).await;
    assert_eq!(
        first.ops(),
        vec![
            (Op::Create, 1),
            (Op::Create, 2),
            (Op::Create, 3),
            (Op::Create, 4)
        ]
    );
    assert!(first.rejected.is_empty(), "{:?}", first.rejected);
    assert_sorted(&first.records);
    assert!(first.checkpoints.len() >= 2, "{:?}", first.checkpoints);
    let mid_tie = first.checkpoints[0].clone();
    let ts = |t: &str| backflow_connectors::text::parse(&SqlType::Timestamp, t).unwrap();
    let r1 = after(&first.records[0]).clone();
    assert_eq!(
        r1.0,
        vec![
            Datum::Int(1),
            Datum::Text("one".into()),
            Datum::Decimal(Decimal::parse("1.50", 2).unwrap()),
            backflow_connectors::text::parse(&SqlType::Date, "1990-05-01").unwrap(),
            Datum::Bool(true),
            Datum::Bytes(vec![0, 255]),
            ts("2026-01-01 10:00:00"),
        ]
    );
    assert_eq!(
        after(&first.records[2]).0[6],
        ts("2026-01-01 10:00:05.123456")
    );
    let e = &first.records[0].event;
    assert_eq!(&*e.source.connector, "poll");
    assert_eq!(&*e.source.db, db);
    assert_eq!(e.source.schema.as_deref(), Some(db.as_str()));
    assert_eq!(&*e.source.table, "items");
    // The poll's time (UTC), not the row's.
    assert!(
        (now_ms() - e.source.ts_ms).abs() < 60_000,
        "{}",
        e.source.ts_ms
    );

    // Restarted from the checkpoint between the tied rows 2 and 3: 3 and
    // 4 come, nothing else.
    let (mut b, _) = started(config.clone(), Some(mid_tie), vec![]).await;
    let resumed = until_idle(&mut b, 100).await;
    assert_eq!(resumed.ops(), vec![(Op::Create, 3), (Op::Create, 4)]);
    // Read again by a later poll: a later position.
    assert!(resumed.records[0].position > first.records[2].position);
    b.shutdown().await.unwrap();

    // An update: `u`, before-image the row as last yielded.
    c.query_drop(
        "UPDATE items SET label = 'two v2', updated_at = '2026-01-01 10:01:00' WHERE id = 2",
    )
    .await
    .unwrap();
    let upd = until_idle(&mut a, 100).await;
    assert_eq!(upd.ops(), vec![(Op::Update, 2)]);
    assert_eq!(before(&upd.records[0]), after(&first.records[1]));
    assert_eq!(text(&after(&upd.records[0]).0[1]), "two v2");
    assert!(upd.records[0].position > first.records[1].position);

    // A row stamped NOW(6) by an application session (DATETIME: the
    // server's wall-clock time) is read once the delay passed.
    c.query_drop("INSERT INTO items (id, label, updated_at) VALUES (5, 'five', NOW(6))")
        .await
        .unwrap();
    let five = next_record(&mut a).await;
    assert_eq!((five.event.op, int(&five.event.key.0[0])), (Op::Create, 5));
    let age = now_ms() - five.event.source.ts_ms;
    assert!((0..10_000).contains(&age), "source.ts_ms {age} ms ago");
    a.shutdown().await.unwrap();
    my_drop(&db).await;
}

#[tokio::test]
async fn mysql_timestamp_column_soft_delete_waits_for_the_delay() {
    let (db, mut c) = my_db(
        "bf_poll_my_soft",
        &[
            "CREATE TABLE people (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                name VARCHAR(40) NOT NULL,
                kind ENUM('resident', 'visitor') NOT NULL DEFAULT 'resident',
                deleted TINYINT(1) NOT NULL DEFAULT 0,
                updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                    ON UPDATE CURRENT_TIMESTAMP(6))",
            "INSERT INTO people (name, updated_at) VALUES
                ('Li', NOW(6) - INTERVAL 1 HOUR), ('Wang', NOW(6) - INTERVAL 1 HOUR)",
        ],
    )
    .await;
    let mut t = poll_table(
        &format!("{db}.people"),
        PollMode::TimestampIncrementing,
        Some("updated_at"),
    );
    t.soft_delete_column = Some("deleted".into());
    let mut config = my_config(&db, vec![t]);
    config.delay_ms = 800;
    let (mut source, _) = started(config, None, vec![]).await;
    let first = until_idle(&mut source, 100).await;
    // BIGINT UNSIGNED keys (decimal(20,0)) are incrementing columns too.
    assert_eq!(first.ops(), vec![(Op::Create, 1), (Op::Create, 2)]);
    let li = after(&first.records[0]).clone();
    assert_eq!(li.0[2], Datum::Text("resident".into()));
    assert_eq!(li.0[3], Datum::Bool(false));
    assert!(matches!(li.0[4], Datum::TimestampTz(_)), "{:?}", li.0[4]);
    let Datum::TimestampTz(stamped) = li.0[4] else {
        unreachable!("matched above")
    };
    let age = now_ms() - stamped.div_euclid(1000);
    assert!(
        (3_590_000..3_610_000).contains(&age),
        "TIMESTAMP read as UTC: {age} ms"
    );

    // The soft delete stamps the row with the server's now (ON UPDATE):
    // read as `d` once the delay passed, not before.
    let updated = Instant::now();
    c.query_drop("UPDATE people SET deleted = 1 WHERE id = 1")
        .await
        .unwrap();
    let del = next_record(&mut source).await;
    assert!(
        updated.elapsed() >= Duration::from_millis(700),
        "read after {:?}",
        updated.elapsed()
    );
    assert_eq!((del.event.op, int(&del.event.key.0[0])), (Op::Delete, 1));
    assert_eq!(before(&del), &li);
    assert!(del.event.after.is_none());
    assert!(del.position > first.records[1].position);
    source.shutdown().await.unwrap();
    my_drop(&db).await;
}

#[tokio::test]
async fn mysql_key_diff_deletes_keys_gone_from_the_table() {
    let (db, mut c) = my_db(
        "bf_poll_my_keys",
        &[
            "CREATE TABLE homes (id INT PRIMARY KEY, addr VARCHAR(20) NOT NULL,
                updated_at DATETIME NOT NULL)",
            "INSERT INTO homes VALUES (1, 'a1', '2020-01-01 10:00:00'),
                (2, 'a2', '2020-01-01 10:00:00'), (3, 'a3', '2020-01-01 10:00:00')",
        ],
    )
    .await;
    let row = |id: i32, addr: &str| {
        Row(vec![
            Datum::Int(id),
            Datum::Text(addr.into()),
            backflow_connectors::text::parse(&SqlType::Timestamp, "2020-01-01 10:00:00").unwrap(),
        ])
    };
    let config = my_config(
        &db,
        vec![poll_table(
            "homes",
            PollMode::TimestampIncrementing,
            Some("updated_at"),
        )],
    );
    let mut source = PollSource::new(config, "330000");
    let desc = source.start(None).await.unwrap()[0].clone();

    // The topic has 1 and 2 as the table has them, and 4, which the table
    // no longer has: one delete, before-image the topic's row.
    let gone = row(4, "a4");
    let diff = source
        .topic_state(&desc, vec![row(1, "a1"), row(2, "a2"), gone.clone()])
        .await
        .unwrap();
    assert_only_delete_of_4(&diff, &gone);

    let first = until_idle(&mut source, 100).await;
    assert_eq!(first.ops(), vec![(Op::Create, 3)]);
    // The source's connection is killed between polls: the next poll
    // reconnects without an error.
    let poller: Option<u64> = c
        .exec_first(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
            (db.as_str(),),
        )
        .await
        .unwrap();
    let poller = poller.expect("the source's connection");
    c.query_drop(format!("KILL {poller}")).await.unwrap();
    c.query_drop(
        "UPDATE homes SET addr = 'a1 new', updated_at = '2020-01-02 00:00:00' WHERE id = 1",
    )
    .await
    .unwrap();
    let upd = until_idle(&mut source, 100).await;
    assert_eq!(upd.ops(), vec![(Op::Update, 1)]);
    assert_eq!(before(&upd.records[0]), &row(1, "a1"));
    let again: Option<u64> = c
        .exec_first(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
            (db.as_str(),),
        )
        .await
        .unwrap();
    assert!(again.is_some_and(|id| id != poller), "a new connection");

    // A hard delete shows at the next key diff, after the row's last
    // version.
    c.query_drop("DELETE FROM homes WHERE id = 2")
        .await
        .unwrap();
    let topic = vec![
        after(&upd.records[0]).clone(),
        row(2, "a2"),
        after(&first.records[0]).clone(),
    ];
    let diff = source.topic_state(&desc, topic).await.unwrap();
    assert_eq!(diff.records.len(), 1);
    let d = &diff.records[0];
    assert_eq!((d.event.op, int(&d.event.key.0[0])), (Op::Delete, 2));
    assert_eq!(d.event.before.as_ref(), Some(&row(2, "a2")));
    assert!(d.position > upd.records[0].position);
    assert!(until_idle(&mut source, 100).await.records.is_empty());
    source.shutdown().await.unwrap();
    my_drop(&db).await;
}

#[tokio::test]
async fn mysql_bulk_reads_mysql_types_and_yields_changes_only() {
    let (db, mut c) = my_db(
        "bf_poll_my_bulk",
        &[
            "CREATE TABLE districts (code INT PRIMARY KEY, name VARCHAR(40) NOT NULL,
                pop INT UNSIGNED, tags SET('old', 'new'), info JSON)",
            "INSERT INTO districts VALUES (330102, 'Shangcheng', 4294967295, 'old,new', '{\"k\": 1}'),
                (330105, 'Gongshu', 300, '', NULL), (330106, 'Xihu', NULL, NULL, NULL)",
        ],
    )
    .await;
    let config = my_config(&db, vec![poll_table("districts", PollMode::Bulk, None)]);
    let (mut source, _) = started(config, None, vec![]).await;
    let first = until_idle(&mut source, 100).await;
    assert_eq!(
        first.ops(),
        vec![
            (Op::Create, 330102),
            (Op::Create, 330105),
            (Op::Create, 330106)
        ]
    );
    assert_eq!(
        after(&first.records[0]).0[2..],
        [
            Datum::Long(4_294_967_295),
            Datum::Text("old,new".into()),
            Datum::Json("{\"k\": 1}".into())
        ]
    );
    for sql in [
        "UPDATE districts SET pop = 201 WHERE code = 330105",
        "UPDATE districts SET name = 'Xihu' WHERE code = 330106",
        "DELETE FROM districts WHERE code = 330102",
        "INSERT INTO districts (code, name) VALUES (330108, 'Binjiang')",
    ] {
        c.query_drop(sql).await.unwrap();
    }
    let changed = until_idle(&mut source, 100).await;
    assert_eq!(
        changed.ops(),
        vec![
            (Op::Update, 330105),
            (Op::Create, 330108),
            (Op::Delete, 330102)
        ]
    );
    assert_eq!(before(&changed.records[0]), after(&first.records[1]));
    assert_eq!(
        changed.records[2].event.before.as_ref(),
        Some(after(&first.records[0]))
    );
    source.shutdown().await.unwrap();
    my_drop(&db).await;
}

#[tokio::test]
async fn mysql_configuration_errors_name_what_to_fix() {
    let (db, _c) = my_db(
        "bf_poll_my_cfg",
        &[
            "CREATE TABLE items (id BIGINT PRIMARY KEY, label TEXT, changed_on DATE)",
            "CREATE TABLE tagged (code VARCHAR(8) PRIMARY KEY, changed DATETIME)",
        ],
    )
    .await;
    let start_err = |config: PollSourceConfig| async move {
        let mut s = PollSource::new(config, "330000");
        let e = s.start(None).await.expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Definite, "{e}");
        e.message
    };
    let items = format!("{db}.items");
    for (t, want) in [
        (
            poll_table("missing", PollMode::Bulk, None),
            vec![format!("{db}.missing"), "does not exist".into()],
        ),
        (
            poll_table("items", PollMode::TimestampIncrementing, Some("updated_at")),
            vec![items.clone(), "updated_at".into()],
        ),
        (
            poll_table("items", PollMode::TimestampIncrementing, Some("changed_on")),
            vec![
                items.clone(),
                "changed_on".into(),
                "DATETIME or TIMESTAMP".into(),
            ],
        ),
        (
            poll_table("tagged", PollMode::TimestampIncrementing, Some("changed")),
            vec![format!("{db}.tagged"), "code".into(), "integer".into()],
        ),
    ] {
        let e = start_err(my_config(&db, vec![t])).await;
        for w in want {
            assert!(e.contains(&w), "{w} in: {e}");
        }
    }
    // A database that does not exist, a user the server does not know.
    let bulk = || vec![poll_table("items", PollMode::Bulk, None)];
    let e = start_err(my_config(&format!("{db}_nosuch"), bulk())).await;
    assert!(e.contains(&format!("{db}_nosuch")), "{e}");
    let mut stranger = my_config(&db, bulk());
    stranger.user = Some("bf_poll_nosuch_user".into());
    let e = start_err(stranger).await;
    assert!(
        e.contains("bf_poll_nosuch_user") && e.contains("password"),
        "{e}"
    );

    // Keys the engine needs and keys it does not use.
    let mut c = PollSourceConfig::mysql("f", "u", "d", bulk());
    assert_eq!(c.validate(), Ok(()));
    c.path = Some("x.db".into());
    assert!(c
        .validate()
        .unwrap_err()
        .starts_with("feeds[..].path is not used by engine mysql"));
    c.path = None;
    c.database = None;
    assert!(c
        .validate()
        .unwrap_err()
        .starts_with("feeds[..].database is required for engine mysql"));
    let parsed: PollSourceConfig = serde_json::from_value(serde_json::json!({
        "name": "legacy", "engine": "mysql", "user": "u", "database": "d",
        "password_env": "LEGACY_PASSWORD",
        "tables": [{"table": "d.t", "dataset": "dept.t", "mode": "bulk"}]
    }))
    .unwrap();
    assert_eq!(parsed.engine.as_str(), "mysql");
    assert_eq!((parsed.host.as_str(), parsed.port()), ("127.0.0.1", 3306));
    assert_eq!(parsed.validate(), Ok(()));
    my_drop(&db).await;
}

/// The key diff yielded exactly one delete: key 4, before-image the
/// topic's row, at its own position.
fn assert_only_delete_of_4(diff: &backflow_connectors::SourceBatch, gone: &Row) {
    assert_eq!(diff.records.len(), 1, "only the missing key");
    let d = &diff.records[0];
    assert_eq!(d.event.op, Op::Delete);
    assert_eq!(d.event.key, Row(vec![Datum::Int(4)]));
    assert_eq!(d.event.before.as_ref(), Some(gone));
    assert!(d.event.after.is_none());
    assert_eq!(&*d.event.source.position, d.position.as_str());
}

// ------------------------------------------- positions reveal no values

/// How a value appeared in the positions of releases before 0.x that put
/// column values there: 20 digits, sign bit flipped.
fn old_sortable(v: i64) -> String {
    format!("{:020}", (v as u64) ^ (1 << 63))
}

/// Microseconds of a `YYYY-MM-DD HH:MM:SS[.ffffff]` text.
fn micros_of(text: &str) -> i64 {
    match backflow_connectors::text::parse(&SqlType::Timestamp, text).unwrap() {
        Datum::Timestamp(v) => v,
        other => panic!("not a timestamp: {other:?}"),
    }
}

/// A record's provenance (`source.position`, its record position and
/// `source.ts_ms`) holds none of the secret timestamps (text, and as
/// micro-, milli- and seconds, plain or as older releases encoded them),
/// nor the incrementing values, and `source.ts_ms` is the poll's time.
fn assert_reveals_nothing(r: &SourceRecord, secret_ts: &[&str], secret_inc: &[i64]) {
    let position = r.event.source.position.to_string();
    assert_eq!(position, r.position.as_str(), "one position");
    let mut forbidden = Vec::new();
    for text in secret_ts {
        let micros = micros_of(text);
        let (date, time) = text.split_once(' ').unwrap();
        forbidden.extend([
            date.to_owned(),
            time[..8].to_owned(),
            old_sortable(micros),
            micros.to_string(),
            micros.div_euclid(1000).to_string(),
            micros.div_euclid(1_000_000).to_string(),
        ]);
    }
    for inc in secret_inc {
        forbidden.extend([old_sortable(*inc), inc.to_string()]);
    }
    for f in &forbidden {
        assert!(
            !position.contains(f.as_str()),
            "position {position} reveals {f}"
        );
    }
    for text in secret_ts {
        let micros = micros_of(text);
        let ts_ms = r.event.source.ts_ms;
        assert_ne!(ts_ms, micros.div_euclid(1000), "source.ts_ms is {text}");
        assert_ne!(
            ts_ms.div_euclid(1000),
            micros.div_euclid(1_000_000),
            "source.ts_ms is {text} to the second"
        );
    }
    // The poll's clock (this machine's is the database's here).
    let age = now_ms() - r.event.source.ts_ms;
    assert!(
        (-5_000..60_000).contains(&age),
        "source.ts_ms {} is not the poll's time",
        r.event.source.ts_ms
    );
}

const CASES: &str = "CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL);";

#[tokio::test]
async fn poll_positions_reveal_no_column_value_and_order_a_rows_changes_across_restarts() {
    // `updated_at` is not granted to anyone and `id` is shared hashed:
    // neither may show in what every subscriber receives.
    let secrets = [
        "2021-03-04 05:06:07.089",
        "2021-03-04 05:06:08.5",
        "2021-03-04 05:06:09.25",
        "2021-03-04 05:06:10.75",
        "2021-03-04 05:06:11",
    ];
    let ids = [987_654_321, 987_654_322];
    let (path, db) = sqlite_db(
        "secret",
        &format!(
            "{CASES}
             INSERT INTO cases VALUES (987654321, 'opened', '{}');",
            secrets[0]
        ),
    );
    let config = sqlite_config(
        &path,
        vec![poll_table(
            "cases",
            PollMode::TimestampIncrementing,
            Some("updated_at"),
        )],
    );
    let mut all = Vec::new();

    // Insert, then update: the update sorts after.
    let (mut a, desc) = started(config.clone(), None, vec![]).await;
    let first = until_idle(&mut a, 100).await;
    assert_eq!(first.ops(), vec![(Op::Create, 987_654_321)]);
    let inserted = first.last_checkpoint.clone().unwrap();
    db.execute_batch(&format!(
        "UPDATE cases SET label = 'reviewed', updated_at = '{}' WHERE id = 987654321",
        secrets[1]
    ))
    .unwrap();
    let upd = until_idle(&mut a, 100).await;
    assert_eq!(upd.ops(), vec![(Op::Update, 987_654_321)]);
    assert!(
        upd.records[0].position > first.records[0].position,
        "{} > {}",
        upd.records[0].position.0,
        first.records[0].position.0
    );
    let reviewed = upd.last_checkpoint.clone().unwrap();
    a.shutdown().await.unwrap();
    all.extend(first.records.iter().chain(&upd.records).cloned());

    // Restarted from its checkpoint: the next update sorts after.
    db.execute_batch(&format!(
        "UPDATE cases SET label = 'closed', updated_at = '{}' WHERE id = 987654321",
        secrets[2]
    ))
    .unwrap();
    let (mut b, _) = started(
        config.clone(),
        Some(reviewed),
        vec![after(&upd.records[0]).clone()],
    )
    .await;
    let closed = until_idle(&mut b, 100).await;
    assert_eq!(closed.ops(), vec![(Op::Update, 987_654_321)]);
    assert!(
        closed.records[0].position > upd.records[0].position,
        "{} > {}",
        closed.records[0].position.0,
        upd.records[0].position.0
    );
    b.shutdown().await.unwrap();
    all.extend(closed.records.iter().cloned());

    // A crash before the last checkpoints were stored: restarted from the
    // one after the insert, with the topic holding the `closed` version,
    // the row read again (changed once more) sorts after every version.
    db.execute_batch(&format!(
        "UPDATE cases SET label = 'reopened', updated_at = '{}' WHERE id = 987654321;
         INSERT INTO cases VALUES (987654322, 'new', '{}');",
        secrets[3], secrets[4]
    ))
    .unwrap();
    let (mut c, _) = started(
        config.clone(),
        Some(inserted),
        vec![after(&closed.records[0]).clone()],
    )
    .await;
    let replayed = until_idle(&mut c, 100).await;
    assert_eq!(
        replayed.ops(),
        vec![(Op::Update, 987_654_321), (Op::Create, 987_654_322)]
    );
    assert_eq!(before(&replayed.records[0]), after(&closed.records[0]));
    assert!(
        replayed.records[0].position > closed.records[0].position,
        "{} > {}",
        replayed.records[0].position.0,
        closed.records[0].position.0
    );
    all.extend(replayed.records.iter().cloned());

    // A hard delete, found by the key diff, sorts after the update.
    db.execute_batch("DELETE FROM cases WHERE id = 987654321")
        .unwrap();
    let topic = replayed.records.iter().map(|r| after(r).clone()).collect();
    let diff = c.topic_state(&desc, topic).await.unwrap();
    assert_eq!(diff.records.len(), 1);
    let d = &diff.records[0];
    assert_eq!(
        (d.event.op, int(&d.event.key.0[0])),
        (Op::Delete, 987_654_321)
    );
    assert!(
        d.position > replayed.records[0].position,
        "{} > {}",
        d.position.0,
        replayed.records[0].position.0
    );
    all.extend(diff.records.iter().cloned());
    c.shutdown().await.unwrap();

    for r in &all {
        assert_reveals_nothing(r, &secrets, &ids);
    }

    // A district holding rows written with the positions of earlier
    // releases (digits: a row's timestamp and incrementing value, or a
    // poll's time) takes every new position as newer, even one of a
    // timestamp far in the future.
    let old = [
        format!(
            "{}.{}",
            old_sortable(micros_of(secrets[4])),
            old_sortable(ids[1])
        ),
        old_sortable(now_ms() * 1000),
        format!("{}.{}", old_sortable(i64::MAX), old_sortable(i64::MAX)),
        old_sortable(i64::MAX),
    ];
    for r in &all {
        for o in &old {
            assert!(o.as_str() < r.position.as_str(), "{o} < {}", r.position.0);
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn poll_positions_order_a_tables_rows_when_it_changes_from_bulk_to_timestamp_mode() {
    // A table shared in bulk mode, then (restarted) by timestamp: the
    // timestamp mode's update of a row sorts after the bulk insert of it,
    // although the row's timestamp is older than the bulk poll.
    let (path, db) = sqlite_db(
        "modes",
        &format!(
            "{CASES}
             INSERT INTO cases VALUES (1, 'opened', '2021-03-04 05:06:07');"
        ),
    );
    let bulk = sqlite_config(&path, vec![poll_table("cases", PollMode::Bulk, None)]);
    let (mut a, _) = started(bulk, None, vec![]).await;
    let first = until_idle(&mut a, 100).await;
    assert_eq!(first.ops(), vec![(Op::Create, 1)]);
    let cp = first.last_checkpoint.clone().unwrap();
    a.shutdown().await.unwrap();

    db.execute_batch(
        "UPDATE cases SET label = 'closed', updated_at = '2021-03-04 05:06:08' WHERE id = 1",
    )
    .unwrap();
    let timed = sqlite_config(
        &path,
        vec![poll_table(
            "cases",
            PollMode::TimestampIncrementing,
            Some("updated_at"),
        )],
    );
    let (mut b, _) = started(timed, Some(cp), vec![after(&first.records[0]).clone()]).await;
    let upd = until_idle(&mut b, 100).await;
    assert_eq!(upd.ops(), vec![(Op::Update, 1)]);
    assert!(
        upd.records[0].position > first.records[0].position,
        "{} > {}",
        upd.records[0].position.0,
        first.records[0].position.0
    );
    b.shutdown().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

/// A district's database, written by a sink.
enum District {
    Sqlite(PathBuf),
    Postgres(String, tokio_postgres::Client),
    Mariadb(String, mysql_async::Conn),
}

impl District {
    fn sink(&self) -> Box<dyn Sink> {
        match self {
            District::Sqlite(path) => Box::new(SqliteSink::new(
                SqliteSinkConfig { path: path.clone() },
                "d",
            )),
            District::Postgres(db, _) => Box::new(PostgresSink::new(
                PostgresSinkConfig {
                    schema: "public".into(),
                    ..Target::new(5432, "postgres", None, db).pg_sink()
                },
                "d",
            )),
            District::Mariadb(db, _) => Box::new(MysqlSink::new(
                Target::new(3306, "root", None, db).my_sink(),
                "d",
            )),
        }
    }

    fn schema(&self) -> String {
        match self {
            District::Sqlite(_) => "main".into(),
            District::Postgres(..) => "public".into(),
            District::Mariadb(db, _) => db.clone(),
        }
    }

    /// `label` of row `id` of `cases`, `None` when there is no such row.
    async fn label(&mut self, id: i64) -> Option<String> {
        match self {
            District::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.query_row("SELECT label FROM cases WHERE id = ?1", [id], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })
                    .unwrap()
            }
            District::Postgres(_, c) => c
                .query_opt("SELECT label FROM public.cases WHERE id = $1", &[&id])
                .await
                .unwrap()
                .map(|r| r.get(0)),
            District::Mariadb(_, c) => c
                .exec_first("SELECT label FROM cases WHERE id = ?", (id,))
                .await
                .unwrap(),
        }
    }
}

#[tokio::test]
async fn poll_positions_are_newer_than_an_earlier_releases_in_districts_tables() {
    // What the poll feed yields today for a row, and the row as an earlier
    // release delivered it (its position: the row's timestamp and id).
    let stamped = "2021-03-04 05:06:07";
    let (path, db) = sqlite_db(
        "upgrade",
        &format!("{CASES} INSERT INTO cases VALUES (1, 'opened', '{stamped}');"),
    );
    let config = sqlite_config(
        &path,
        vec![poll_table(
            "cases",
            PollMode::TimestampIncrementing,
            Some("updated_at"),
        )],
    );
    let opened = [Datum::Long(1), Datum::Text("opened".into())];
    let (mut source, desc) = started(config, None, vec![]).await;
    let first = until_idle(&mut source, 100).await;
    assert_eq!(first.ops(), vec![(Op::Create, 1)]);
    assert_eq!(after(&first.records[0]).0[..2], opened[..]);
    db.execute_batch(
        "UPDATE cases SET label = 'reviewed', updated_at = '2021-03-04 05:06:08' WHERE id = 1",
    )
    .unwrap();
    let upd = until_idle(&mut source, 100).await;
    assert_eq!(upd.ops(), vec![(Op::Update, 1)]);
    db.execute_batch("DELETE FROM cases WHERE id = 1").unwrap();
    let diff = source
        .topic_state(&desc, vec![after(&upd.records[0]).clone()])
        .await
        .unwrap();
    assert_eq!(diff.records.len(), 1);
    source.shutdown().await.unwrap();
    let mut old = first.records[0].clone();
    old.event.source.position =
        format!("{}.{}", old_sortable(micros_of(stamped)), old_sortable(1)).into();
    // An old record of a far-off timestamp, replayed late.
    let mut stale = old.clone();
    stale.event.source.position =
        format!("{}.{}", old_sortable(i64::MAX), old_sortable(i64::MAX)).into();

    let (pg, pg_client) = pg_db("bf_poll_upgrade", "SELECT 1").await;
    let (my, my_conn) = my_db("bf_poll_upgrade", &[]).await;
    let sink_path = path.with_extension("district.db");
    for mut district in [
        District::Sqlite(sink_path.clone()),
        District::Postgres(pg.clone(), pg_client),
        District::Mariadb(my.clone(), my_conn),
    ] {
        let mut target = (*desc).clone();
        target.schema = district.schema();
        let target = Arc::new(target);
        let mut offset = 0;
        let mut apply = |records: Vec<&SourceRecord>| {
            let records = records
                .into_iter()
                .map(|r| {
                    offset += 1;
                    SinkRecord {
                        from: TopicOffset {
                            topic: "backflow.share.330106.test.items".into(),
                            partition: 0,
                            offset,
                        },
                        table: target.clone(),
                        key: r.event.key.clone(),
                        event: Some(r.event.clone()),
                        provenance: Default::default(),
                    }
                })
                .collect();
            SinkBatch::of(records)
        };
        let mut sink = district.sink();
        let kind = district.schema();
        // The district holds the row as an earlier release wrote it.
        sink.apply_batch(&apply(vec![&old])).await.unwrap();
        assert_eq!(district.label(1).await.as_deref(), Some("opened"), "{kind}");
        // Today's update is newer, whatever the old position held.
        sink.apply_batch(&apply(vec![&upd.records[0]]))
            .await
            .unwrap();
        assert_eq!(
            district.label(1).await.as_deref(),
            Some("reviewed"),
            "{kind}: the update after the upgrade was ignored"
        );
        // An old-format record arriving late is older than any new one.
        sink.apply_batch(&apply(vec![&stale])).await.unwrap();
        assert_eq!(
            district.label(1).await.as_deref(),
            Some("reviewed"),
            "{kind}"
        );
        // And so is the key diff's delete.
        sink.apply_batch(&apply(vec![&diff.records[0]]))
            .await
            .unwrap();
        assert_eq!(
            district.label(1).await,
            None,
            "{kind}: the delete was ignored"
        );
        sink.shutdown().await.unwrap();
    }
    my_drop(&my).await;
    pg_admin("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {pg} WITH (FORCE)"))
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&sink_path);
}
