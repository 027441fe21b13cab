//! The MySQL/MariaDB feed end to end: a real MariaDB with a ROW/FULL
//! binlog, the real binary, the real broker. The raw topic, folded by key,
//! must equal the table, also after the feed is killed with SIGKILL.

use std::collections::BTreeMap;
use std::time::Duration;

use backflow_connectors::text;
use backflow_e2e::topic_view::{int_key, TopicView};
use backflow_e2e::{unique_name, Node, TestBroker};
use backflow_schemas::{ColumnDesc, Datum, Row, SqlType, TableDesc};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

const READY: Duration = Duration::from_secs(30);

async fn connect(db: Option<&str>) -> Conn {
    Conn::new(
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(3306)
            .user(Some("root"))
            .db_name(db)
            .prefer_socket(false),
    )
    .await
    .expect("MariaDB on 127.0.0.1:3306 (scripts/services.sh up)")
}

struct Fixture {
    broker: TestBroker,
    db: String,
    dataset: String,
    feed: String,
}

impl Fixture {
    fn topic(&self) -> String {
        format!("backflow.raw.{}", self.dataset)
    }

    fn config(&self) -> String {
        format!(
            "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"mysql\"\nname = \"{}\"\nuser = \"root\"\ndatabase = \"{}\"\ntables = [{{ table = \"people\", dataset = \"{}\" }}]\n",
            self.broker.bootstrap(),
            self.feed,
            self.db,
            self.dataset
        )
    }

    /// The table as the feed describes it.
    fn desc(&self) -> TableDesc {
        TableDesc {
            dataset: self.dataset.clone(),
            schema: self.db.clone(),
            name: "people".into(),
            columns: vec![
                ColumnDesc::new("id", SqlType::BigInt, false),
                ColumnDesc::new("name", SqlType::Varchar { len: Some(64) }, false),
                ColumnDesc::new("region_code", SqlType::Char { len: Some(6) }, false),
                ColumnDesc::new(
                    "income",
                    SqlType::Decimal {
                        precision: Some(12),
                        scale: Some(2),
                    },
                    true,
                ),
                ColumnDesc::new("birth", SqlType::Date, true),
                ColumnDesc::new("note", SqlType::Text, true),
            ],
            primary_key: vec!["id".into()],
        }
    }

    fn view(&self) -> TopicView {
        TopicView::new(self.broker.bootstrap(), &self.topic(), self.desc())
    }
}

async fn setup(rows: i64) -> Fixture {
    let db = unique_name("bf_my");
    let mut c = connect(None).await;
    c.query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    c.query_drop(format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        .await
        .unwrap();
    c.query_drop(format!(
        "CREATE TABLE {db}.people (
            id bigint PRIMARY KEY,
            name varchar(64) NOT NULL,
            region_code char(6) NOT NULL,
            income decimal(12,2),
            birth date,
            note text)"
    ))
    .await
    .unwrap();
    let values: Vec<String> = (1..=rows)
        .map(|g| {
            let region = if g % 2 == 0 { "330106" } else { "330102" };
            let note = if g % 3 == 0 {
                "NULL".to_owned()
            } else {
                format!("'{}'", "备注".repeat((g % 5) as usize))
            };
            format!(
                "({g}, '居民{g}', '{region}', {g}.25, DATE_ADD('1970-01-01', INTERVAL {} DAY), {note})",
                g % 20_000
            )
        })
        .collect();
    for chunk in values.chunks(1000) {
        c.query_drop(format!(
            "INSERT INTO {db}.people VALUES {}",
            chunk.join(",")
        ))
        .await
        .unwrap();
    }
    Fixture {
        broker: TestBroker::start(),
        dataset: format!("t{}.people", &db[6..]),
        feed: db.replace('_', "-"),
        db,
    }
}

/// The table's rows, read directly.
async fn table_state(f: &Fixture) -> BTreeMap<i64, Row> {
    let mut c = connect(Some(&f.db)).await;
    let rows: Vec<mysql_async::Row> = c
        .query(
            "SELECT CAST(id AS CHAR), name, region_code, CAST(income AS CHAR), \
             DATE_FORMAT(birth, '%Y-%m-%d'), note FROM people",
        )
        .await
        .unwrap();
    let desc = f.desc();
    rows.into_iter()
        .map(|mut r| {
            let row = Row(desc
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| match r.take::<Option<String>, _>(i).unwrap() {
                    None => Datum::Null,
                    Some(t) => text::parse(&c.sql_type, &t).unwrap(),
                })
                .collect());
            (int_key(&Row(vec![row.0[0].clone()])), row)
        })
        .collect()
}

async fn change_rows(f: &Fixture, base: i64) {
    let mut c = connect(Some(&f.db)).await;
    let inserts: Vec<String> = (1..=100)
        .map(|g| format!("({}, '新{g}', '330106', NULL, NULL, NULL)", base + g))
        .collect();
    c.query_drop(format!(
        "UPDATE people SET income = income + 1, note = '改' WHERE id % 97 = 0;
         DELETE FROM people WHERE id % 101 = 0;
         INSERT INTO people VALUES {};
         START TRANSACTION;
         UPDATE people SET region_code = '330102' WHERE id = 2;
         UPDATE people SET region_code = '330108' WHERE id = 2;
         COMMIT;
         UPDATE people SET id = id + 5000000 WHERE id = 4;",
        inserts.join(",")
    ))
    .await
    .unwrap();
}

async fn drop_db(f: &Fixture) {
    let mut c = connect(None).await;
    c.query_drop(format!("DROP DATABASE IF EXISTS {}", f.db))
        .await
        .unwrap();
}

#[tokio::test]
async fn mysql_feed_snapshot_then_binlog_stream_equals_table() {
    let f = setup(2_000).await;
    let node = Node::start_with_config(&f.config(), &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let mut view = f.view();
    view.until_equal(&table_state(&f).await, Duration::from_secs(120), &node)
        .await;
    assert!(
        view.ops["r"] >= 2_000,
        "snapshot rows as op r: {:?}",
        view.ops
    );
    change_rows(&f, 1_000_000).await;
    view.until_equal(&table_state(&f).await, Duration::from_secs(120), &node)
        .await;
    assert!(
        view.ops.get("c").copied().unwrap_or(0) >= 100,
        "{:?}",
        view.ops
    );
    assert!(
        view.ops.get("u").copied().unwrap_or(0) >= 2,
        "{:?}",
        view.ops
    );
    view.until_tombstones_follow_deletes().await;
    assert_eq!(view.ops.get("d"), view.ops.get("tombstone"));
    assert!(
        !view.state.contains_key(&4) && view.state.contains_key(&5_000_004),
        "primary-key change is delete + create"
    );
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    for needle in [
        format!(
            "backflow_source_events_total{{feed=\"{}\",op=\"r\"}} 2000",
            f.feed
        ),
        format!("backflow_source_lag_bytes{{feed=\"{}\"}}", f.feed),
    ] {
        assert!(metrics.contains(&needle), "{needle} missing:\n{metrics}");
    }
    drop(node);
    drop_db(&f).await;
}

#[tokio::test]
async fn mysql_feed_killed_and_restarted_loses_nothing() {
    let f = setup(1_000).await;
    let mut view = f.view();
    {
        let mut node = Node::start_with_config(&f.config(), &[]).unwrap();
        node.wait_for_status("/readyz", 200, READY).await.unwrap();
        change_rows(&f, 1_000_000).await;
        view.until_equal(&table_state(&f).await, Duration::from_secs(120), &node)
            .await;
        // More changes, and kill -9 while they stream.
        let writer = tokio::spawn({
            let db = f.db.clone();
            async move {
                let mut c = connect(Some(&db)).await;
                // One row per transaction: many small binlog events.
                for i in 0..200 {
                    c.query_drop(format!(
                        "UPDATE people SET income = {i} WHERE id = {}",
                        i % 50 + 1
                    ))
                    .await
                    .unwrap();
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.signal("KILL").unwrap();
        node.wait(Duration::from_secs(10)).unwrap();
        writer.await.unwrap();
    }
    // Changes while the feed is down.
    change_rows(&f, 3_000_000).await;
    let node = Node::start_with_config(&f.config(), &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    change_rows(&f, 4_000_000).await;
    view.until_equal(&table_state(&f).await, Duration::from_secs(120), &node)
        .await;
    assert!(
        node.stderr()
            .contains("resuming from the last acknowledged position"),
        "{}",
        node.stderr()
    );
    drop(node);
    drop_db(&f).await;
}
