//! The PostgreSQL source against a real PostgreSQL (no Kafka): what it
//! yields for a snapshot and for streamed changes.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{pg_admin, pg_drop, pg_fresh_db, PgDb, Target};
use backflow_connectors::postgres::{PostgresSource, PostgresSourceConfig};
use backflow_connectors::Source;
use backflow_schemas::{Datum, Op, Snapshot};
use tokio_postgres::NoTls;

/// A fresh database `<prefix>_<pid>`, without the slot a feed of it left;
/// dropped with its slots when the test ends.
async fn fresh_db(prefix: &str) -> PgDb {
    let name = format!("{prefix}_{}", std::process::id());
    pg_drop(&name, &format!("backflow_{name}")).await;
    pg_fresh_db(&name, "postgres").await;
    PgDb(name)
}

/// A fresh database `<prefix>_<pid>` with table `items` holding rows
/// 1..=rows; returns its name and a client.
async fn items_db(prefix: &str, rows: i64) -> (PgDb, tokio_postgres::Client) {
    let db = fresh_db(prefix).await;
    let c = pg_admin(&db).await;
    c.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, amount numeric(10,2));
         INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
    (db, c)
}

fn config(db: &str) -> PostgresSourceConfig {
    Target::new(5432, "postgres", None, db).pg_source(db)
}

fn id_of(key: &backflow_schemas::Row) -> i64 {
    match key.0[0] {
        Datum::Long(v) => v,
        ref d => panic!("{d:?}"),
    }
}

#[tokio::test]
async fn postgres_source_snapshot_reads_every_row_once_then_streams() {
    let db = fresh_db("bf_src").await;
    let c = pg_admin(&db).await;
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
        if let Some(cp) = batch.checkpoint.filter(|cp| !cp.0.starts_with("snapshot:")) {
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
    // 7 and 8 came after the last acknowledged checkpoint: they come
    // again, before 9, each once. (Accepting their loss here would accept
    // losing streamed changes on every restart.)
    assert_eq!(
        again,
        vec![(Op::Update, 7), (Op::Delete, 8), (Op::Update, 9)],
        "unacknowledged changes replay in order"
    );
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_source_crashed_mid_snapshot_takes_it_again() {
    let (db, c) = items_db("bf_crash", 3000).await;
    {
        // First run: one chunk read, nothing acknowledged, then the process dies.
        let mut source = PostgresSource::new(config(&db), "330000");
        source.start(None).await.unwrap();
        let batch = source.next_batch(500).await.unwrap();
        assert_eq!(batch.records.len(), 500);
        assert!(
            batch.checkpoint.is_some(),
            "a snapshot chunk is a checkpoint"
        );
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
        if batch
            .checkpoint
            .is_some_and(|cp| !cp.0.starts_with("snapshot:"))
        {
            break;
        }
    }
    assert_eq!(seen.len(), 3000, "the whole table is read again");
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_source_reads_every_type_exactly() {
    use backflow_schemas::Decimal;
    let db = fresh_db("bf_types").await;
    let c = pg_admin(&db).await;
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
        if batch
            .checkpoint
            .is_some_and(|cp| !cp.0.starts_with("snapshot:"))
        {
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

/// Values other tools choke on (NaN and infinite numbers, infinite
/// timestamps and dates, years past 9999 and before year 1), read by the
/// snapshot and streamed: every row is either shared or dead-lettered with
/// the column and the reason, each once, and the feed goes on.
#[tokio::test]
async fn postgres_source_extreme_values_are_shared_or_dead_lettered_with_the_reason() {
    let db = fresh_db("bf_extreme").await;
    let c = pg_admin(&db).await;
    let rows = "(1, 'NaN', 'NaN', 'Infinity', NULL, NULL, NULL),
         (2, 'Infinity', '-Infinity', '-Infinity', NULL, NULL, NULL),
         (3, '-Infinity', 1, 1, NULL, NULL, NULL),
         (4, 1, 1, 1, 'infinity', '-infinity', 'infinity'),
         (5, 1, 1, 1, '10000-01-01 00:00:00', '12345-06-07 08:09:10+00', '99999-12-31'),
         (6, 1, 1, 1, '0044-03-15 12:00:00 BC', '0001-01-01 00:00:00+00 BC', '4713-01-01 BC'),
         (7, 2.5, 2.5, 2.5, '2026-12-07 10:00:00', '2026-12-07 10:00:00+08', '2026-12-07')";
    c.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, n numeric, d double precision, r real,
            ts timestamp, tz timestamptz, dt date);
         INSERT INTO items VALUES {rows};"
    ))
    .await
    .unwrap();
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(None).await.unwrap();
    let mut outcome: std::collections::BTreeMap<i64, String> = Default::default();
    let note = |outcome: &mut std::collections::BTreeMap<i64, String>,
                batch: &backflow_connectors::SourceBatch| {
        for r in &batch.records {
            let id = id_of(&r.event.key);
            let previous = outcome.insert(
                id,
                format!("shared {:?}", r.event.after.as_ref().map(|a| &a.0)),
            );
            assert!(previous.is_none(), "row {id} twice: {previous:?}");
        }
        for r in &batch.rejected {
            let reason = format!("dead letter: {}", r.reason);
            let id = (1..=7)
                .find(|id| !outcome.contains_key(id) && reason.contains(&format!("id={id}")))
                .unwrap_or(-(outcome.len() as i64));
            outcome.insert(id, reason);
        }
    };
    loop {
        let batch = source.next_batch(100).await.unwrap();
        note(&mut outcome, &batch);
        if batch
            .checkpoint
            .as_ref()
            .is_some_and(|cp| !cp.0.starts_with("snapshot:"))
        {
            source
                .acknowledge(batch.checkpoint.as_ref().unwrap())
                .await
                .unwrap();
            break;
        }
    }
    assert_eq!(
        outcome.len(),
        7,
        "every row shared or dead-lettered: {outcome:#?}"
    );
    let snapshot = std::mem::take(&mut outcome);
    c.batch_execute(&format!(
        "DELETE FROM items; INSERT INTO items VALUES {rows};"
    ))
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while outcome.len() < 7 {
            let batch = source.next_batch(100).await.unwrap();
            let inserts = backflow_connectors::SourceBatch {
                records: batch
                    .records
                    .into_iter()
                    .filter(|r| r.event.op == Op::Create)
                    .collect(),
                ..batch
            };
            note(&mut outcome, &inserts);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("streamed rows missing: {outcome:#?}"));
    source.shutdown().await.unwrap();
    for (phase, outcome) in [("snapshot", &snapshot), ("stream", &outcome)] {
        let shared: BTreeSet<i64> = outcome
            .iter()
            .filter(|(_, o)| o.starts_with("shared"))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(
            shared,
            BTreeSet::from([1, 2, 3, 5, 7]),
            "{phase}: NaN and infinite numbers and years past 9999 are shared: {outcome:#?}"
        );
        let letters: Vec<&String> = outcome.values().filter(|o| o.starts_with("dead")).collect();
        assert!(
            letters.iter().any(|l| l.contains("column ts") && l.contains("'infinity'"))
                && letters.iter().any(|l| l.contains("column ts") && l.contains("before year 1")),
            "{phase}: infinite and BC timestamps are dead-lettered naming the column and why: {letters:#?}"
        );
    }
    assert_eq!(
        snapshot[&1],
        "shared Some([Long(1), Text(\"NaN\"), Double(NaN), Float(inf), Null, Null, Null])"
    );
    assert_eq!(
        snapshot[&5],
        "shared Some([Long(5), Text(\"1\"), Double(1.0), Float(1.0), Timestamp(253402300800000000), TimestampTz(327416976550000000), Date(35804721)])"
    );
}

/// Enums, domains (over domains too), money, intervals and arrays are
/// shared in the snapshot and the stream alike: an enum as its label, a
/// domain as its base type, money as an exact decimal, an interval in ISO
/// 8601, an array as a list of nullable elements (quotes, commas,
/// backslashes, NULL and "NULL" inside kept apart). A multi-dimensional
/// array, or one with a lower bound other than 1, is dead-lettered naming
/// the column and the way out.
#[tokio::test]
async fn postgres_source_enum_domain_money_interval_and_array_values_are_shared_exactly() {
    let db = fresh_db("bf_odd_types").await;
    let c = pg_admin(&db).await;
    c.batch_execute(
        r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy, "really"');
         CREATE DOMAIN amount AS numeric(10,2) CHECK (VALUE >= 0);
         CREATE DOMAIN code AS text;
         CREATE DOMAIN short_code AS code;
         CREATE TABLE odd (id bigint PRIMARY KEY, m mood, a amount, c short_code, cash money,
             span interval, ints int[], texts text[], nums numeric(6,2)[], moods mood[],
             days date[], stamps timestamptz[]);"#,
    )
    .await
    .unwrap();
    // Rows `id` (for the snapshot) and `id + 10` (for the stream) hold the
    // same values.
    let insert = |offset: i64| {
        format!(
            r#"INSERT INTO odd VALUES
             ({}, 'ok', 12.5, 'X-1', 1234.56, '1 year 2 months 3 days 04:05:06.5', '{{1,NULL,-3}}',
              ARRAY['a"b', 'c,d', 'e\f', NULL, 'NULL', '', ' sp ', '{{x}}'], '{{1.5,NULL}}',
              '{{sad,"happy, \"really\""}}', '{{2026-01-01}}', '{{"2026-01-01 10:00:00+08"}}'),
             ({}, NULL, NULL, NULL, '-92233720368547758.08', NULL, '{{}}', '{{}}', NULL, NULL, NULL,
              NULL),
             ({}, 'sad', 0, '', -0.05, '0', '{{{{1,2}},{{3,4}}}}',
              NULL, NULL, NULL, NULL, NULL),
             ({}, NULL, NULL, NULL, NULL, '0', NULL, '[0:1]={{a,b}}', NULL,
              NULL, NULL, NULL),
             ({}, 'happy, "really"', NULL, NULL, '92233720368547758.07',
              '-1 year 2 mons -3 days -00:00:01', NULL, NULL, NULL, NULL, NULL, NULL);"#,
            1 + offset,
            2 + offset,
            3 + offset,
            4 + offset,
            5 + offset
        )
    };
    c.batch_execute(&insert(0)).await.unwrap();
    let mut config = config(&db);
    config.tables = vec![backflow_connectors::postgres::TableConfig {
        table: "public.odd".to_owned(),
        dataset: "t.odd".to_owned(),
    }];
    let mut source = PostgresSource::new(config, "330000");
    let tables = source
        .start(None)
        .await
        .unwrap_or_else(|e| panic!("the feed starts: {e}"));
    let types: Vec<String> = tables[0]
        .columns
        .iter()
        .map(|c| c.sql_type.to_string())
        .collect();
    assert_eq!(
        types,
        [
            "bigint",
            "text",
            "numeric(10,2)",
            "text",
            "numeric(19,2)",
            "interval",
            "integer[]",
            "text[]",
            "numeric(6,2)[]",
            "text[]",
            "date[]",
            "timestamptz[]"
        ],
        "enum as text, domains as their base, money as a decimal"
    );

    // (id, op and values) of the records, and the dead letters' reasons.
    type Outcome = (Vec<(i64, String)>, Vec<String>);
    let note = |outcome: &mut Outcome, batch: &backflow_connectors::SourceBatch| {
        for r in &batch.records {
            let row = r.event.after.as_ref().or(r.event.before.as_ref()).unwrap();
            let shown = format!("{:?} {:?}", r.event.op, &row.0[1..]);
            outcome.0.push((id_of(&r.event.key), shown));
        }
        outcome
            .1
            .extend(batch.rejected.iter().map(|r| r.reason.clone()));
    };
    let mut snapshot: Outcome = Default::default();
    loop {
        let batch = source.next_batch(100).await.unwrap();
        note(&mut snapshot, &batch);
        if let Some(cp) = batch
            .checkpoint
            .as_ref()
            .filter(|cp| !cp.0.starts_with("snapshot:"))
        {
            source.acknowledge(cp).await.unwrap();
            break;
        }
    }
    c.batch_execute(&insert(10)).await.unwrap();
    c.batch_execute("UPDATE odd SET m = 'sad' WHERE id = 12")
        .await
        .unwrap();
    let mut stream: Outcome = Default::default();
    tokio::time::timeout(Duration::from_secs(30), async {
        while stream.0.len() + stream.1.len() < 6 {
            let batch = source.next_batch(100).await.unwrap();
            note(&mut stream, &batch);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("streamed rows missing: {stream:#?}"));
    source.shutdown().await.unwrap();

    let day = backflow_connectors::text::days_from_civil(2026, 1, 1);
    let rows = |op: &str, offset: i64| -> Vec<(i64, String)> {
        vec![
            (
                1 + offset,
                format!(
                    r#"{op} [Text("ok"), Decimal(Decimal {{ unscaled: 1250, scale: 2 }}), Text("X-1"), Decimal(Decimal {{ unscaled: 123456, scale: 2 }}), Text("P1Y2M3DT4H5M6.5S"), Array([Int(1), Null, Int(-3)]), Array([Text("a\"b"), Text("c,d"), Text("e\\f"), Null, Text("NULL"), Text(""), Text(" sp "), Text("{{x}}")]), Array([Decimal(Decimal {{ unscaled: 150, scale: 2 }}), Null]), Array([Text("sad"), Text("happy, \"really\"")]), Array([Date({day})]), Array([TimestampTz({})])]"#,
                    (day * 86_400 + 2 * 3600) * 1_000_000
                ),
            ),
            (
                2 + offset,
                format!("{op} [Null, Null, Null, Decimal(Decimal {{ unscaled: -9223372036854775808, scale: 2 }}), Null, Array([]), Array([]), Null, Null, Null, Null]"),
            ),
            (
                5 + offset,
                format!(
                    r#"{op} [Text("happy, \"really\""), Null, Null, Decimal(Decimal {{ unscaled: 9223372036854775807, scale: 2 }}), Text("P-10M-3DT-1S"), Null, Null, Null, Null, Null, Null]"#
                ),
            ),
        ]
    };
    assert_eq!(snapshot.0, rows("Read", 0), "snapshot");
    let mut streamed = rows("Create", 10);
    streamed.push((
        12,
        r#"Update [Text("sad"), Null, Null, Decimal(Decimal { unscaled: -9223372036854775808, scale: 2 }), Null, Array([]), Array([]), Null, Null, Null, Null]"#
            .to_owned(),
    ));
    assert_eq!(stream.0, streamed, "stream");
    for (phase, reasons) in [("snapshot", &snapshot.1), ("stream", &stream.1)] {
        assert_eq!(
            reasons.len(),
            2,
            "{phase}: rows 3 and 4 are dead-lettered: {reasons:#?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("column ints") && r.contains("dimension")),
            "{phase}: a 2-D array is dead-lettered naming the column: {reasons:#?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("column texts") && r.contains("lower bound")),
            "{phase}: an array not starting at 1 is dead-lettered naming the column: {reasons:#?}"
        );
        assert!(
            reasons
                .iter()
                .all(|r| !r.contains("{{1,2},{3,4}}") && !r.contains("={a,b}")),
            "{phase}: no value in a reason: {reasons:#?}"
        );
    }
}

/// A table partitioned by region (PostgreSQL declarative partitioning) is
/// captured through its root: the snapshot reads every partition's rows,
/// streamed changes of every partition arrive as the root's, a row moving
/// between partitions arrives as a delete and an insert, and a partition
/// created after the feed started is captured too, its updates with their
/// before-images (the distributor needs them to take a moved row back).
#[tokio::test]
async fn postgres_source_captures_a_partitioned_table_through_its_root() {
    let db = fresh_db("bf_part").await;
    let c = pg_admin(&db).await;
    c.batch_execute(
        "CREATE TABLE people (id bigint, region_code char(6), name text NOT NULL, PRIMARY KEY (id, region_code)) PARTITION BY LIST (region_code);
         CREATE TABLE people_330106 PARTITION OF people FOR VALUES IN ('330106');
         CREATE TABLE people_330108 PARTITION OF people FOR VALUES IN ('330108');
         INSERT INTO people SELECT g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, 'p' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let mut config = config(&db);
    config.tables = vec![backflow_connectors::postgres::TableConfig {
        table: "public.people".to_owned(),
        dataset: "t.people".to_owned(),
    }];
    let mut source = PostgresSource::new(config, "330000");
    let tables = source.start(None).await.unwrap();
    assert_eq!(tables[0].name, "people");
    let (ids, position) = read_snapshot(&mut source).await;
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<i64>>(),
        (1..=100).collect(),
        "the snapshot reads every partition's rows once"
    );
    assert_eq!(ids.len(), 100);
    source.acknowledge(&position).await.unwrap();

    c.batch_execute(
        "UPDATE people SET name = 'renamed' WHERE id = 2;
         UPDATE people SET name = 'renamed' WHERE id = 3;
         UPDATE people SET region_code = '330106' WHERE id = 5;
         CREATE TABLE people_330110 PARTITION OF people FOR VALUES IN ('330110');
         INSERT INTO people VALUES (200, '330110', 'new');",
    )
    .await
    .unwrap();
    // The new partition's first update: after the insert above, so the
    // feed has seen the partition's rows arrive through the root.
    let mut got = Vec::new();
    let mut updated_new = false;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let batch = source.next_batch(500).await.unwrap();
            assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
            for r in &batch.records {
                assert_eq!(
                    &*r.event.source.table, "people",
                    "changes arrive as the root's"
                );
                got.push((r.event.op, id_of(&r.event.key), r.event.before.is_some()));
            }
            if got
                .iter()
                .any(|(op, id, _)| *op == Op::Create && *id == 200)
                && !updated_new
            {
                updated_new = true;
                c.batch_execute("UPDATE people SET name = 'changed' WHERE id = 200")
                    .await
                    .unwrap();
            }
            if got
                .iter()
                .any(|(op, id, _)| *op == Op::Update && *id == 200)
            {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("changes did not all arrive: {got:?}"));
    assert_eq!(
        got,
        vec![
            (Op::Update, 2, true),
            (Op::Update, 3, true),
            (Op::Delete, 5, true),
            (Op::Create, 5, false),
            (Op::Create, 200, false),
            (Op::Update, 200, true),
        ]
    );
    source.shutdown().await.unwrap();
}

/// A feed resumed from a position past the slot's confirmed one (Kafka
/// holds transactions the slot never heard were acknowledged) must never
/// yield a checkpoint before that position: the runtime writes each
/// checkpoint as the feed's position, and a killed feed resumed from an
/// older one writes the transactions in between to Kafka again. The
/// server's first keepalive of a session reports where the slot stands,
/// before the replayed transactions are sent.
#[tokio::test]
async fn postgres_source_resumed_ahead_of_its_slot_never_goes_back() {
    let (db, c) = items_db("bf_back", 5).await;
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(None).await.unwrap();
    let (_, position) = read_snapshot(&mut source).await;
    source.acknowledge(&position).await.unwrap();
    for i in 0..20 {
        c.batch_execute(&format!(
            "UPDATE items SET label = 'round {i}' WHERE id = 1"
        ))
        .await
        .unwrap();
    }
    // Read every change; Kafka "holds" them, but the slot is not told.
    let mut last = None;
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = 0;
        while seen < 20 {
            let batch = source.next_batch(500).await.unwrap();
            seen += batch.records.len();
            if batch.checkpoint.is_some() {
                last = batch.checkpoint;
            }
        }
    })
    .await
    .unwrap();
    let resumed = last.expect("a checkpoint after the changes");
    source.shutdown().await.unwrap();
    let lsn = |p: &backflow_connectors::Position| {
        let (hi, lo) = p.0.split_once('/').expect("an LSN");
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(Some(resumed.clone())).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let Ok(batch) =
            tokio::time::timeout(Duration::from_millis(500), source.next_batch(500)).await
        else {
            continue;
        };
        let batch = batch.unwrap();
        assert!(batch.records.is_empty(), "a change Kafka holds came again");
        if let Some(cp) = batch.checkpoint {
            assert!(
                lsn(&cp) >= lsn(&resumed),
                "checkpoint {} is before the resumed position {}",
                cp.0,
                resumed.0
            );
        }
    }
    source.shutdown().await.unwrap();
}

/// Reads snapshot batches until the snapshot's final checkpoint (an LSN);
/// returns the ids read and that checkpoint.
async fn read_snapshot(source: &mut PostgresSource) -> (Vec<i64>, backflow_connectors::Position) {
    let mut ids = Vec::new();
    loop {
        let batch = source.next_batch(500).await.unwrap();
        for r in &batch.records {
            assert_eq!(r.event.op, Op::Read);
            ids.push(id_of(&r.event.key));
        }
        if let Some(cp) = batch.checkpoint {
            if !cp.0.starts_with("snapshot:") {
                return (ids, cp);
            }
        }
    }
}

#[tokio::test]
async fn postgres_source_crashed_mid_snapshot_resumes_after_last_acknowledged_chunk() {
    let (db, c) = items_db("bf_resume", 3000).await;
    let mut cfg = config(&db);
    cfg.snapshot_chunk_rows = 500;
    let (acked, consistent_point) = {
        // Two chunks read and acknowledged, a third read but not
        // acknowledged, then the process dies.
        let mut source = PostgresSource::new(cfg.clone(), "330000");
        source.start(None).await.unwrap();
        let first = source.next_batch(500).await.unwrap();
        let second = source.next_batch(500).await.unwrap();
        let third = source.next_batch(500).await.unwrap();
        assert_eq!(third.records.len(), 500);
        let cp = second.checkpoint.expect("every chunk is a checkpoint");
        source.acknowledge(&cp).await.unwrap();
        let point = first.records[0].position.clone();
        assert!(
            second.records.iter().all(|r| r.position == point),
            "snapshot rows share the slot's consistent point"
        );
        (cp, point)
    };
    // Changes while the feed is down: one in a chunk already delivered,
    // one in a chunk still to read, one new row.
    c.batch_execute(
        "UPDATE items SET label = 'moved on' WHERE id = 10;
         UPDATE items SET label = 'moved on' WHERE id = 2999;
         INSERT INTO items VALUES (5000, 'new', 1);",
    )
    .await
    .unwrap();
    let mut source = PostgresSource::new(cfg, "330000");
    source.start(Some(acked)).await.unwrap();
    let (ids, done) = read_snapshot(&mut source).await;
    assert!(
        ids.iter().all(|id| *id > 1000),
        "the chunks Kafka holds are not read again"
    );
    let mut expected: Vec<i64> = (1001..=3000).collect();
    expected.push(5000);
    assert_eq!(ids, expected, "the rest of the table, once, in key order");
    source.acknowledge(&done).await.unwrap();
    // The stream still delivers every change since the slot's consistent
    // point, newer than the snapshot rows, so sinks apply them last.
    let mut changed = BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while changed.len() < 3 {
            let b = source.next_batch(500).await.unwrap();
            for r in &b.records {
                assert!(r.position > consistent_point, "{:?}", r.position);
                changed.insert(id_of(&r.event.key));
            }
        }
    })
    .await
    .expect("changes made while the feed was down are streamed");
    assert_eq!(changed, BTreeSet::from([10, 2999, 5000]));
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_source_lost_slot_after_streaming_names_the_way_out() {
    let (db, _c) = items_db("bf_lost", 1).await;
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(None).await.unwrap();
    let (_, position) = read_snapshot(&mut source).await;
    source.acknowledge(&position).await.unwrap();
    source.shutdown().await.unwrap();
    drop(source);
    let cfg = config(&db);
    // The slot goes (dropped by someone, or invalidated and removed).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match backflow_connectors::postgres::drop_slot(&cfg).await {
            Ok(dropped) => {
                assert!(dropped, "the feed's slot existed");
                break;
            }
            // Still held by the walsender of the stopped feed.
            Err(e) => assert!(std::time::Instant::now() < until, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut source = PostgresSource::new(cfg.clone(), "330000");
    let err = source.start(Some(position)).await.expect_err("refused");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(err.to_string().contains("--resnapshot"), "{err}");
    // The way out: forget the position; a first start snapshots again.
    let mut source = PostgresSource::new(cfg, "330000");
    source.start(None).await.unwrap();
    let (ids, _) = read_snapshot(&mut source).await;
    assert_eq!(ids, vec![1]);
    source.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_source_user_without_replication_says_how_to_fix_it() {
    let db = fresh_db("bf_norepl").await;
    let c = pg_admin(&db).await;
    let role = format!("bf_norepl_{}", std::process::id());
    let _ = c
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await;
    c.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOREPLICATION;
         CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, amount numeric(10,2));
         GRANT SELECT ON items TO {role};"
    ))
    .await
    .unwrap();
    let mut cfg = config(&db);
    cfg.user = role.clone();
    let err = PostgresSource::new(cfg, "330000")
        .start(None)
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "{err}"
    );

    // With REPLICATION but neither ownership of the table nor CREATE on the
    // database, the publication cannot be created: the error says so.
    c.batch_execute(&format!(
        "ALTER ROLE {role} REPLICATION; ALTER TABLE items REPLICA IDENTITY FULL; REVOKE CREATE ON DATABASE {db} FROM PUBLIC"
    ))
    .await
    .unwrap();
    let mut cfg = config(&db);
    cfg.user = role.clone();
    cfg.replica_identity = backflow_connectors::postgres::ReplicaIdentityMode::Require;
    let err = PostgresSource::new(cfg, "330000")
        .start(None)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("creating publication"), "{err}");
    assert!(
        err.to_string().contains("needs CREATE on the database"),
        "{err}"
    );
    c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn postgres_source_wal_level_replica_says_how_to_fix_it() {
    // A second PostgreSQL cluster of our own, with wal_level=replica.
    let cluster = TempCluster::start("replica");
    let (c, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            cluster.port
        ),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, amount numeric(10,2))",
    )
    .await
    .unwrap();
    let mut cfg = config("postgres");
    cfg.port = cluster.port;
    let err = PostgresSource::new(cfg, "330000")
        .start(None)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("wal_level is 'replica'"), "{err}");
    assert!(
        err.to_string()
            .contains("ALTER SYSTEM SET wal_level = logical"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_source_idle_tables_let_the_slot_advance_while_the_database_is_busy() {
    let db = fresh_db("bf_idle").await;
    let c = pg_admin(&db).await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, amount numeric(10,2));
         CREATE TABLE busy (id bigint PRIMARY KEY, payload text);",
    )
    .await
    .unwrap();
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(None).await.unwrap();
    let (_, position) = read_snapshot(&mut source).await;
    source.acknowledge(&position).await.unwrap();
    // Lots of WAL from a table the feed does not capture.
    c.batch_execute(
        "INSERT INTO busy SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
         UPDATE busy SET payload = repeat('y', 200);",
    )
    .await
    .unwrap();
    let written: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    slot_passes(&mut source, &c, &db, &written).await;
    source.shutdown().await.unwrap();
}

/// Heavy writes in another database of the same server: the feed's
/// database commits nothing for the whole time (what a quiet department
/// database beside a busy one looks like), yet the slot must not keep the
/// other database's WAL.
#[tokio::test]
async fn postgres_source_a_quiet_database_beside_a_busy_one_lets_the_slot_advance() {
    let db = fresh_db("bf_quiet").await;
    let other = fresh_db("bf_busy").await;
    let c = pg_admin(&db).await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, amount numeric(10,2));",
    )
    .await
    .unwrap();
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(None).await.unwrap();
    let (_, position) = read_snapshot(&mut source).await;
    source.acknowledge(&position).await.unwrap();
    let busy = pg_admin(&other).await;
    busy.batch_execute(
        "CREATE TABLE busy (id bigint PRIMARY KEY, payload text);
         INSERT INTO busy SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
         UPDATE busy SET payload = repeat('y', 200);",
    )
    .await
    .unwrap();
    let written: String = busy
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    slot_passes(&mut source, &c, &db, &written).await;
    source.shutdown().await.unwrap();
}

/// Drives `source` as the runtime does (acknowledging every checkpoint
/// it yields; nothing it captures changes) until its slot's confirmed
/// position passed `written` and its backlog gauge is under 1 MB.
async fn slot_passes(
    source: &mut PostgresSource,
    c: &tokio_postgres::Client,
    db: &str,
    written: &str,
) {
    let gauges = source.gauges().expect("PostgreSQL reports its backlog");
    let slot = format!("backflow_{db}");
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // The feed yields checkpoints without records and acknowledges them,
        // as the runtime does once Kafka holds everything before them.
        if let Ok(batch) =
            tokio::time::timeout(Duration::from_secs(1), source.next_batch(500)).await
        {
            let batch = batch.unwrap();
            assert!(batch.records.is_empty(), "nothing captured changed");
            if let Some(cp) = batch.checkpoint {
                source.acknowledge(&cp).await.unwrap();
            }
        }
        let passed: bool = c
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&written, &slot],
            )
            .await
            .unwrap()
            .get(0);
        let bytes = gauges
            .backlog_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if passed && (0..1_000_000).contains(&bytes) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "slot did not advance past {written} (backlog {bytes} bytes)"
        );
    }
}

/// A throwaway PostgreSQL cluster on a free port (initdb in a temporary
/// directory, run as the postgres user), stopped when dropped.
struct TempCluster {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: u16,
}

impl TempCluster {
    fn start(wal_level: &str) -> Self {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .expect("a PostgreSQL version");
        let bin = std::path::PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("bf-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = |args: &str| {
            let status = std::process::Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", args])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{args}");
        };
        std::process::Command::new("chown")
            .args(["postgres:postgres", &dir.display().to_string()])
            .status()
            .unwrap();
        as_postgres(&format!(
            "{}/initdb -D {}/data -U postgres -A trust >/dev/null",
            bin.display(),
            dir.display()
        ));
        as_postgres(&format!(
            "{}/pg_ctl -D {d}/data -l {d}/log -w -o \"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={d} -c wal_level={wal_level}\" start >/dev/null",
            bin.display(),
            d = dir.display()
        ));
        Self { dir, bin, port }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("su")
            .args([
                "postgres",
                "-s",
                "/bin/sh",
                "-c",
                &format!(
                    "{}/pg_ctl -D {}/data -m immediate stop >/dev/null",
                    self.bin.display(),
                    self.dir.display()
                ),
            ])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn postgres_source_truncate_is_reported_as_not_shared() {
    let (db, c) = items_db("bf_trunc", 1).await;
    let mut source = PostgresSource::new(config(&db), "330000");
    source.start(None).await.unwrap();
    let (_, position) = read_snapshot(&mut source).await;
    source.acknowledge(&position).await.unwrap();
    c.batch_execute("TRUNCATE items; INSERT INTO items VALUES (2, 'b', 2);")
        .await
        .unwrap();
    let mut rejected = Vec::new();
    let mut inserted = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while inserted.is_empty() {
            let b = source.next_batch(500).await.unwrap();
            rejected.extend(b.rejected);
            inserted.extend(b.records.iter().map(|r| id_of(&r.event.key)));
        }
    })
    .await
    .expect("changes after the truncate arrive");
    assert_eq!(inserted, vec![2], "the stream goes on");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].table, "public.items");
    assert!(
        rejected[0].reason.contains("TRUNCATE"),
        "{}",
        rejected[0].reason
    );
    assert!(
        rejected[0].reason.contains("--resnapshot"),
        "{}",
        rejected[0].reason
    );
    source.shutdown().await.unwrap();
}
