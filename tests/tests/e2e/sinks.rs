//! The sinks against real databases, without Kafka: one scenario, run on
//! PostgreSQL, MariaDB and SQLite.
//!
//! Snapshot, updates (two of one row in one transaction), deletes with
//! tombstones, inserts; the table must equal the fold of the changes, with
//! every type intact. Then: replaying everything changes nothing; a new
//! optional field adds a column; a value the column cannot hold fails the
//! batch as one bad record and commits nothing; a type change stops with an
//! error naming the column; offsets are stored with the rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use backflow_connectors::{ErrorKind, SinkBatch, SinkRecord, TopicOffset};
use backflow_e2e::sinks::{canonical, Backend, Kind, SinkDb};
use backflow_schemas::{
    ChangeEvent, ColumnDesc, Datum, Decimal, Op, Row, SourceInfo, SqlType, TableDesc,
    TransactionInfo,
};

const TOPIC: &str = "backflow.share.330106.gongan.population";
const TABLE: &str = "population";

fn columns() -> Vec<ColumnDesc> {
    vec![
        ColumnDesc::new("id", SqlType::BigInt, false),
        ColumnDesc::new("name", SqlType::Varchar { len: Some(40) }, false),
        ColumnDesc::new(
            "amount",
            SqlType::Decimal {
                precision: Some(20),
                scale: Some(6),
            },
            true,
        ),
        ColumnDesc::new("at", SqlType::TimestampTz, true),
        ColumnDesc::new("born", SqlType::Date, true),
        ColumnDesc::new("flag", SqlType::Boolean, true),
        ColumnDesc::new("data", SqlType::Bytes, true),
        ColumnDesc::new("note", SqlType::Text, true),
        ColumnDesc::new("score", SqlType::Double, true),
    ]
}

const READ: [(&str, Kind); 8] = [
    ("name", Kind::Text),
    ("amount", Kind::Decimal),
    ("at", Kind::TimestampTz),
    ("born", Kind::Date),
    ("flag", Kind::Bool),
    ("data", Kind::Bytes),
    ("note", Kind::Text),
    ("score", Kind::Double),
];

fn table(namespace: &str, columns: Vec<ColumnDesc>) -> Arc<TableDesc> {
    Arc::new(TableDesc {
        dataset: "gongan.population".into(),
        schema: namespace.into(),
        name: TABLE.into(),
        columns,
        primary_key: vec!["id".into()],
    })
}

fn row(id: i64, version: u32) -> Row {
    Row(vec![
        Datum::Long(id),
        Datum::Text(format!("居民{id}-v{version} é😀")),
        Datum::Decimal(Decimal::parse(&format!("{}.{:06}", id * 1000 + 7, id), 6).unwrap()),
        // Microsecond precision, around 2023-11-14.
        Datum::TimestampTz(1_700_000_000_000_000 + id * 1_000_001 + i64::from(version)),
        Datum::Date(10_000 + id as i32),
        Datum::Bool(id % 2 == 0),
        Datum::Bytes(vec![id as u8, 0, 255, version as u8]),
        if id % 3 == 0 {
            Datum::Null
        } else {
            Datum::Text(format!("note {id}"))
        },
        Datum::Double(id as f64 + 0.25),
    ])
}

/// Builds records in topic order and folds them into the expected table.
struct Script {
    table: Arc<TableDesc>,
    next_offset: i64,
    model: BTreeMap<i64, Row>,
}

impl Script {
    fn record(
        &mut self,
        id: i64,
        op: Option<Op>,
        after: Option<Row>,
        position: &str,
        order: Option<i64>,
    ) -> SinkRecord {
        let key = Row(vec![Datum::Long(id)]);
        let offset = self.next_offset;
        self.next_offset += 1;
        match (&op, &after) {
            (Some(Op::Delete) | None, _) => {
                self.model.remove(&id);
            }
            (_, Some(r)) => {
                self.model.insert(id, r.clone());
            }
            _ => {}
        }
        SinkRecord {
            from: TopicOffset {
                topic: TOPIC.into(),
                partition: 0,
                offset,
            },
            table: self.table.clone(),
            key: key.clone(),
            provenance: Default::default(),
            event: op.map(|op| ChangeEvent {
                key,
                before: None,
                after,
                source: SourceInfo {
                    connector: "postgres".into(),
                    position: position.into(),
                    ..SourceInfo::default()
                },
                op,
                ts_ms: None,
                transaction: order.map(|n| TransactionInfo {
                    id: "42".into(),
                    total_order: n,
                    data_collection_order: n,
                }),
            }),
        }
    }

    fn expected(&self) -> BTreeMap<i64, Vec<Option<String>>> {
        self.model
            .iter()
            .map(|(id, r)| (*id, r.0[1..].iter().map(canonical).collect()))
            .collect()
    }
}

async fn scenario(backend: Backend) {
    let db = SinkDb::create(backend).await.expect("sink database");
    let ns = db.namespace();
    let mut s = Script {
        table: table(&ns, columns()),
        next_offset: 0,
        model: BTreeMap::new(),
    };
    let mut sink = db.sink("district");
    assert!(sink.committed_offsets().await.unwrap().is_empty());

    // Snapshot of 200 rows in two batches.
    let snapshot: Vec<SinkRecord> = (1..=200)
        .map(|id| {
            s.record(
                id,
                Some(Op::Read),
                Some(row(id, 0)),
                "00000000/00001000",
                None,
            )
        })
        .collect();
    let mut batches = vec![
        SinkBatch::of(snapshot[..100].to_vec()),
        SinkBatch::of(snapshot[100..].to_vec()),
    ];
    // One transaction of changes.
    let mut changes = Vec::new();
    let mut order = 0;
    let mut next = || {
        order += 1;
        Some(order)
    };
    for id in 1..=20 {
        changes.push(s.record(
            id,
            Some(Op::Update),
            Some(row(id, 1)),
            "00000000/00002000",
            next(),
        ));
    }
    // Row 5 changes twice in the transaction: the second wins.
    changes.push(s.record(
        5,
        Some(Op::Update),
        Some(row(5, 2)),
        "00000000/00002000",
        next(),
    ));
    for id in 21..=30 {
        changes.push(s.record(id, Some(Op::Delete), None, "00000000/00002000", next()));
        changes.push(s.record(id, None, None, "", None));
    }
    for id in 201..=210 {
        changes.push(s.record(
            id,
            Some(Op::Create),
            Some(row(id, 0)),
            "00000000/00002000",
            next(),
        ));
    }
    let mut nulled = row(31, 3);
    nulled.0[7] = Datum::Null;
    nulled.0[2] = Datum::Null;
    changes.push(s.record(
        31,
        Some(Op::Update),
        Some(nulled),
        "00000000/00002000",
        next(),
    ));
    batches.push(SinkBatch::of(changes));

    for b in &batches {
        let applied = sink.apply_batch(b).await.expect("apply");
        assert_eq!(applied.offsets, b.offsets);
    }
    let got = db
        .rows(TABLE, "id", &READ)
        .await
        .unwrap()
        .expect("table created");
    assert_eq!(
        got.len(),
        200,
        "200 snapshot rows - 10 deleted + 10 inserted"
    );
    assert_eq!(
        got,
        s.expected(),
        "{backend:?}: table equals the fold of the changes"
    );
    let last = s.next_offset - 1;
    let offsets = db.offsets().await.unwrap();
    assert_eq!(
        offsets,
        BTreeMap::from([(("district".to_owned(), TOPIC.to_owned(), 0), last)]),
        "offsets stored with the rows"
    );

    // Replaying the whole topic (a new process from offset 0) changes
    // nothing: every replayed change is older than or equal to the row.
    let mut again = db.sink("district");
    for b in &batches {
        again.apply_batch(b).await.expect("replay");
    }
    assert_eq!(
        db.rows(TABLE, "id", &READ).await.unwrap().unwrap(),
        s.expected(),
        "{backend:?}: replay changed nothing"
    );
    // An older change arriving after a newer one is ignored.
    let stale = s.record(
        1,
        Some(Op::Update),
        Some(row(1, 9)),
        "00000000/00001800",
        None,
    );
    s.model.insert(1, row(1, 1));
    let applied = again
        .apply_batch(&SinkBatch::of(vec![stale]))
        .await
        .unwrap();
    if backend != Backend::Mariadb {
        // MySQL's affected-rows count cannot tell a skipped row from an
        // unchanged one, so only the table is checked there.
        assert_eq!(applied.skipped, 1, "{backend:?}: {applied:?}");
    }
    assert_eq!(
        db.rows(TABLE, "id", &READ).await.unwrap().unwrap(),
        s.expected()
    );

    // A new optional field adds a nullable column.
    let mut evolved_cols = columns();
    evolved_cols.push(ColumnDesc::new(
        "email",
        SqlType::Varchar { len: Some(64) },
        true,
    ));
    s.table = table(&ns, evolved_cols);
    let mut with_email = row(1, 4);
    with_email.0.push(Datum::Text("a@example.cn".into()));
    let r = s.record(
        1,
        Some(Op::Update),
        Some(with_email),
        "00000000/00003000",
        Some(1),
    );
    again
        .apply_batch(&SinkBatch::of(vec![r]))
        .await
        .expect("evolved batch");
    let cols = db.columns(TABLE).await.unwrap();
    assert!(cols.iter().any(|c| c == "email"), "{backend:?}: {cols:?}");
    let mut read = READ.to_vec();
    read.push(("email", Kind::Text));
    let got = db.rows(TABLE, "id", &read).await.unwrap().unwrap();
    assert_eq!(got[&1][8].as_deref(), Some("a@example.cn"));
    assert_eq!(got[&2][8], None, "existing rows get NULL");

    // A value the column cannot hold: the batch fails as a bad record and
    // nothing of it is committed (not even the good row before it).
    let good = s.record(
        300,
        Some(Op::Create),
        Some({
            let mut r = row(300, 0);
            r.0.push(Datum::Null);
            r
        }),
        "00000000/00004000",
        Some(1),
    );
    let mut too_long = row(301, 0);
    too_long.0[1] = Datum::Text("x".repeat(41));
    too_long.0.push(Datum::Null);
    let bad = s.record(
        301,
        Some(Op::Create),
        Some(too_long),
        "00000000/00004000",
        Some(2),
    );
    let before = db.offsets().await.unwrap();
    let err = again
        .apply_batch(&SinkBatch::of(vec![good, bad]))
        .await
        .expect_err("varchar(40) cannot hold 41 characters");
    assert_eq!(err.kind, ErrorKind::BadRecord, "{backend:?}: {err}");
    assert!(
        !err.message.contains(&"x".repeat(41)),
        "no row values in errors: {err}"
    );
    let got = db.rows(TABLE, "id", &read).await.unwrap().unwrap();
    assert!(
        !got.contains_key(&300) && !got.contains_key(&301),
        "{backend:?}: nothing committed"
    );
    assert_eq!(db.offsets().await.unwrap(), before, "offsets unchanged");

    // A type change the table cannot take stops with the column named.
    let mut retyped = columns();
    retyped[2] = ColumnDesc::new("amount", SqlType::Bytes, true);
    s.table = table(&ns, retyped);
    let r = s.record(
        2,
        Some(Op::Update),
        Some(row(2, 5)),
        "00000000/00005000",
        Some(1),
    );
    let err = again
        .apply_batch(&SinkBatch::of(vec![r]))
        .await
        .expect_err("bytes into a decimal column");
    assert_eq!(err.kind, ErrorKind::Definite, "{backend:?}: {err}");
    assert!(err.message.contains("amount"), "{err}");

    again.shutdown().await.unwrap();
    sink.shutdown().await.unwrap();
    db.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_scenario_on_postgres() {
    scenario(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_scenario_on_mariadb() {
    scenario(Backend::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_scenario_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

/// A district's own PostgreSQL table may declare the department's enum
/// and domains itself: an enum column takes the label, a domain (over a
/// domain, or as an array's element) takes values of its base type, and a
/// value the domain's check refuses fails the batch as one bad record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_writes_into_a_district_table_of_enum_and_domain_columns() {
    let db = SinkDb::create(Backend::Postgres)
        .await
        .expect("sink database");
    db.execute(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE DOMAIN amount AS numeric(10,2) CHECK (VALUE >= 0);
         CREATE DOMAIN wallet AS amount;
         CREATE TABLE population (id bigint PRIMARY KEY, m mood, a amount, w wallet, list amount[])",
    )
    .await
    .unwrap();
    let money = SqlType::Decimal {
        precision: Some(10),
        scale: Some(2),
    };
    let mut s = Script {
        table: table(
            &db.namespace(),
            vec![
                ColumnDesc::new("id", SqlType::BigInt, false),
                ColumnDesc::new("m", SqlType::Text, true),
                ColumnDesc::new("a", money.clone(), true),
                ColumnDesc::new("w", money.clone(), true),
                ColumnDesc::new("list", SqlType::Array(Box::new(money)), true),
            ],
        ),
        next_offset: 0,
        model: BTreeMap::new(),
    };
    let cents =
        |v: i64| Datum::Decimal(Decimal::parse(&format!("{}.{:02}", v / 100, v % 100), 2).unwrap());
    let row = |id: i64, a: i64| {
        Row(vec![
            Datum::Long(id),
            Datum::Text("ok".into()),
            cents(a),
            cents(5),
            Datum::Array(vec![cents(150), Datum::Null]),
        ])
    };
    let mut sink = db.sink("district");
    let good = s.record(
        1,
        Some(Op::Read),
        Some(row(1, 1250)),
        "00000000/00001000",
        None,
    );
    sink.apply_batch(&SinkBatch::of(vec![good]))
        .await
        .expect("a domain column takes its base type's values");
    let read = [
        ("m", Kind::Text),
        ("a", Kind::Decimal),
        ("w", Kind::Decimal),
        ("list", Kind::Text),
    ];
    let held = db.rows(TABLE, "id", &read).await.unwrap().unwrap();
    let text = |v: &[&str]| v.iter().map(|t| Some((*t).to_owned())).collect::<Vec<_>>();
    assert_eq!(
        held,
        BTreeMap::from([(1, text(&["ok", "12.50", "0.05", "{1.50,NULL}"]))])
    );

    // The domain's check still holds: a negative amount is one bad record.
    let mut negative = row(2, 0);
    negative.0[2] = Datum::Decimal(Decimal::parse("-1.00", 2).unwrap());
    let bad = s.record(
        2,
        Some(Op::Create),
        Some(negative),
        "00000000/00002000",
        None,
    );
    let err = sink
        .apply_batch(&SinkBatch::of(vec![bad]))
        .await
        .expect_err("amount's CHECK refuses -1");
    assert_eq!(err.kind, ErrorKind::BadRecord, "{err}");
    assert_eq!(db.rows(TABLE, "id", &read).await.unwrap().unwrap(), held);

    sink.shutdown().await.unwrap();
    db.drop_db().await.unwrap();
}
