//! The PostgreSQL feed end to end: a real PostgreSQL (wal_level=logical),
//! the real binary, the real broker. The raw topic, compacted by key, must
//! equal the table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow::kafka::{Consumer, KafkaSettings};
use backflow_connectors::text;
use backflow_e2e::topic_view::TopicView;
use backflow_e2e::{
    create_pg_database, drop_pg_database, pg_connect, unique_name, Node, TestBroker, TestToken,
};
use backflow_schemas::{unframe, ColumnDesc, Row, SqlType, TableDesc};

const READY: Duration = Duration::from_secs(30);

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
            "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{}\" }}]\n",
            self.broker.bootstrap(),
            self.feed,
            self.db,
            self.dataset
        )
    }

    fn desc(&self) -> TableDesc {
        TableDesc {
            dataset: self.dataset.clone(),
            schema: "public".into(),
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
                ColumnDesc::new("updated_at", SqlType::TimestampTz, false),
                ColumnDesc::new("note", SqlType::Text, true),
            ],
            primary_key: vec!["id".into()],
        }
    }
}

async fn setup(rows: i64) -> Fixture {
    setup_on(rows, TestBroker::start()).await
}

async fn setup_on(rows: i64, broker: TestBroker) -> Fixture {
    let db = unique_name("bf_pg");
    let client = create_pg_database(&db).await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE people (
                id bigint PRIMARY KEY,
                name varchar(64) NOT NULL,
                region_code char(6) NOT NULL,
                income numeric(12,2),
                birth date,
                updated_at timestamptz NOT NULL DEFAULT now(),
                note text);
             INSERT INTO people (id, name, region_code, income, birth, note)
             SELECT g, '居民' || g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330102' END,
                    (g * 1.25)::numeric(12,2), DATE '1970-01-01' + (g % 20000),
                    CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('备注', g % 5) END
             FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
    Fixture {
        broker,
        dataset: format!("t{}.people", &db[6..]),
        feed: db.replace('_', "-"),
        db,
    }
}

/// The table's rows, read directly.
async fn table_state(f: &Fixture) -> BTreeMap<i64, Row> {
    let client = pg_connect(&f.db).await.unwrap();
    let desc = f.desc();
    let cols: Vec<String> = desc
        .columns
        .iter()
        .map(|c| format!("{}::text", c.name))
        .collect();
    let rows = client
        .query(&format!("SELECT {} FROM people", cols.join(", ")), &[])
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let row = Row(desc
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| match r.get::<_, Option<String>>(i) {
                    None => backflow_schemas::Datum::Null,
                    Some(t) => text::parse(&c.sql_type, &t).unwrap(),
                })
                .collect());
            let id = match &row.0[0] {
                backflow_schemas::Datum::Long(v) => *v,
                other => panic!("{other:?}"),
            };
            (id, row)
        })
        .collect()
}

fn view(f: &Fixture) -> TopicView {
    TopicView::new(f.broker.bootstrap(), &f.topic(), f.desc())
}

async fn change_rows(f: &Fixture, base: i64) {
    let c = pg_connect(&f.db).await.unwrap();
    c.batch_execute(&format!(
        "UPDATE people SET income = income + 1, note = '改' WHERE id % 97 = 0;
         DELETE FROM people WHERE id % 101 = 0;
         INSERT INTO people (id, name, region_code, income) SELECT {base} + g, '新' || g, '330106', NULL FROM generate_series(1, 100) g;
         BEGIN; UPDATE people SET region_code = '330102' WHERE id = 2; UPDATE people SET region_code = '330108' WHERE id = 2; COMMIT;
         UPDATE people SET id = id + 5000000 WHERE id = 4;"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn postgres_feed_snapshot_then_stream_equals_table() {
    let f = setup(3_000).await;
    let node = Node::start_with_config(&f.config(), &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let mut view = view(&f);
    view.until_equal(&table_state(&f).await, Duration::from_secs(120), &node)
        .await;
    assert!(
        view.ops["r"] >= 3_000,
        "snapshot rows as op r: {:?}",
        view.ops
    );
    // (Changes racing the snapshot are covered by the connector's own tests.)
    change_rows(&f, 1_000_000).await;
    let want = table_state(&f).await;
    view.until_equal(&want, Duration::from_secs(120), &node)
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
    // 3000/101 deletes plus the primary-key change, each followed by a tombstone.
    assert!(
        view.ops.get("d").copied().unwrap_or(0) > 3_000 / 101,
        "{:?}",
        view.ops
    );
    view.until_tombstones_follow_deletes().await;
    assert_eq!(view.ops.get("d"), view.ops.get("tombstone"));
    assert!(
        !view.state.contains_key(&4) && view.state.contains_key(&5_000_004),
        "primary-key change is delete + create"
    );

    // Streaming after the snapshot.
    change_rows(&f, 2_000_000).await;
    let want = table_state(&f).await;
    view.until_equal(&want, Duration::from_secs(60), &node)
        .await;
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!(
            "backflow_source_events_total{{feed=\"{}\",op=\"r\"}}",
            f.feed
        )),
        "{metrics}"
    );
    // Caught up: no change waits for Kafka, so the lag reads 0.
    let caught_up = format!("backflow_source_lag_seconds{{feed=\"{}\"}} 0\n", f.feed);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = node.get_ops("/metrics").await.unwrap();
        if metrics.contains(&caught_up) {
            break;
        }
        assert!(
            Instant::now() < until,
            "lag not 0 when caught up: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(node);
    drop_pg_database(&f.db).await.unwrap();
}

#[tokio::test]
async fn postgres_feed_snapshot_of_100k_rows_with_concurrent_changes_equals_table() {
    let f = setup_on(100_000, TestBroker::start()).await;
    let node = Node::start_with_config(&f.config(), &[]).unwrap();
    // Changes racing the snapshot, on rows read and not yet read.
    change_rows(&f, 1_000_000).await;
    let c = pg_connect(&f.db).await.unwrap();
    c.batch_execute(
        "UPDATE people SET note = '快照期间' WHERE id % 1000 = 7;
         DELETE FROM people WHERE id % 997 = 0;",
    )
    .await
    .unwrap();
    let mut view = view(&f);
    view.until_equal(&table_state(&f).await, Duration::from_secs(240), &node)
        .await;
    assert!(view.ops["r"] >= 98_000, "{:?}", view.ops);
    change_rows(&f, 2_000_000).await;
    view.until_equal(&table_state(&f).await, Duration::from_secs(60), &node)
        .await;
    drop(node);
    drop_pg_database(&f.db).await.unwrap();
}

#[tokio::test]
async fn postgres_feed_killed_and_restarted_loses_nothing() {
    let f = setup(2_000).await;
    let mut view = view(&f);
    {
        let mut node = Node::start_with_config(&f.config(), &[]).unwrap();
        node.wait_for_status("/readyz", 200, READY).await.unwrap();
        change_rows(&f, 1_000_000).await;
        let want = table_state(&f).await;
        view.until_equal(&want, Duration::from_secs(120), &node)
            .await;
        // More changes, then kill -9 while they stream.
        change_rows(&f, 2_000_000).await;
        node.signal("KILL").unwrap();
        node.wait(Duration::from_secs(10)).unwrap();
    }
    // Changes while the feed is down.
    change_rows(&f, 3_000_000).await;
    let node = Node::start_with_config(&f.config(), &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    change_rows(&f, 4_000_000).await;
    let want = table_state(&f).await;
    view.until_equal(&want, Duration::from_secs(120), &node)
        .await;
    drop(node);
    drop_pg_database(&f.db).await.unwrap();
}

#[tokio::test]
async fn postgres_feed_without_primary_key_says_how_to_fix_it() {
    let f = setup(1).await;
    let c = pg_connect(&f.db).await.unwrap();
    c.batch_execute("ALTER TABLE people DROP CONSTRAINT people_pkey")
        .await
        .unwrap();
    let node = Node::start_with_config(&f.config(), &[]).unwrap();
    let until = Instant::now() + READY;
    while !node.stderr().contains("has no primary key") {
        assert!(Instant::now() < until, "no clear error:\n{}", node.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        node.stderr().contains("ADD PRIMARY KEY"),
        "{}",
        node.stderr()
    );
    drop(node);
    drop_pg_database(&f.db).await.unwrap();
}

#[tokio::test]
async fn postgres_feed_sends_unreadable_change_to_dead_letter_topic_and_goes_on() {
    let f = setup(10).await;
    let node = Node::start_with_config(&f.config(), &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let c = pg_connect(&f.db).await.unwrap();
    // NaN fits PostgreSQL's numeric but no Avro decimal: the change cannot be shared.
    c.batch_execute(
        "INSERT INTO people (id, name, region_code, income) VALUES (100, 'nan', '330106', 'NaN');
         INSERT INTO people (id, name, region_code, income) VALUES (101, 'ok', '330106', 1);",
    )
    .await
    .unwrap();
    let settings = KafkaSettings::new(f.broker.bootstrap());
    let dlq = Consumer::new(
        &settings,
        &unique_name("dlq"),
        &[&format!("backflow.dlq.{}", f.feed)],
        None,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        assert!(
            Instant::now() < until,
            "nothing in the dead-letter topic:\n{}",
            node.stderr()
        );
        match tokio::time::timeout(Duration::from_secs(1), dlq.recv()).await {
            Ok(Ok(r)) => break r,
            _ => continue,
        }
    };
    let reason = String::from_utf8(dead.header("backflow.dlq.reason").unwrap().to_vec()).unwrap();
    assert!(reason.contains("income"), "{reason}");
    let body: serde_json::Value = serde_json::from_slice(dead.payload.as_deref().unwrap()).unwrap();
    assert_eq!(body["table"], "public.people");
    assert!(
        !String::from_utf8_lossy(dead.payload.as_deref().unwrap()).contains("nan"),
        "no row values in dead letters"
    );
    // The feed went on: the next change arrives.
    let mut view = view(&f);
    let until = Instant::now() + Duration::from_secs(60);
    while !view.state.contains_key(&101) {
        assert!(
            Instant::now() < until,
            "feed stopped after the bad change:\n{}",
            node.stderr()
        );
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), view.consumer.recv()).await
        {
            view.apply(r);
        }
    }
    assert!(!view.state.contains_key(&100));
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(
            &metrics,
            &format!(
                "backflow_source_dead_letters_total{{feed=\"{}\"}} 1",
                f.feed
            )
        ),
        "{metrics}"
    );
    drop(node);
    drop_pg_database(&f.db).await.unwrap();
}

/// Waits until the process logged `needle`.
async fn until_logged(node: &Node, needle: &str) {
    let until = Instant::now() + READY;
    while !node.stderr().contains(needle) {
        assert!(
            Instant::now() < until,
            "never logged {needle:?}:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn postgres_source_command_survives_kill_mid_snapshot_and_resnapshots_a_lost_slot() {
    // Few rows, small chunks: the snapshot is still many checkpoints, so
    // the kill lands in the middle of it.
    let f = setup(2_500).await;
    let config = f
        .config()
        .replace("tables = [", "snapshot_chunk_rows = 50\ntables = [");
    let mut view = view(&f);
    {
        let mut source = Node::run_with_config(&["source"], &config, &[]).unwrap();
        // kill -9 as soon as the snapshot reaches the topic.
        let until = Instant::now() + Duration::from_secs(60);
        while view.records == 0 {
            assert!(Instant::now() < until, "no snapshot:\n{}", source.stderr());
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_millis(200), view.consumer.recv()).await
            {
                view.apply(r);
            }
        }
        source.signal("KILL").unwrap();
        source.wait(Duration::from_secs(10)).unwrap();
    }
    change_rows(&f, 1_000_000).await;
    let source = Node::run_with_config(&["source"], &config, &[]).unwrap();
    source.wait_for_status("/readyz", 200, READY).await.unwrap();
    // The source process serves no control-plane API: the node does.
    assert_eq!(source.get("/api/node").await.unwrap().0, 404);
    view.until_equal(&table_state(&f).await, Duration::from_secs(120), &source)
        .await;
    // The database's backlog for the feed is reported, and small.
    let gauge = format!("backflow_source_lag_bytes{{feed=\"{}\"}} ", f.feed);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = source.get_ops("/metrics").await.unwrap();
        let bytes: Option<i64> = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&gauge))
            .and_then(|v| v.trim().parse().ok());
        if bytes.is_some_and(|b| (0..10_000_000).contains(&b)) {
            break;
        }
        assert!(Instant::now() < until, "no source lag in bytes: {bytes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    source.signal("TERM").unwrap();
    let mut source = source;
    source.wait(Duration::from_secs(30)).unwrap();

    // The slot is lost while the feed is down: restarting cannot resume and
    // says how to get out.
    let c = pg_connect(&f.db).await.unwrap();
    let slot = format!("backflow_{}", f.feed.replace('-', "_"));
    backflow_e2e::lose_replication_slot(&c, &slot).await;
    // Deletes made while no slot exists are found by the new snapshot: it
    // compares the table with the raw topic.
    c.batch_execute(
        "UPDATE people SET note = '丢失期间' WHERE id % 89 = 0;
         DELETE FROM people WHERE id % 83 = 0;
         INSERT INTO people (id, name, region_code) SELECT 2000000 + g, '新' || g, '330106' FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let stuck = Node::run_with_config(&["source"], &config, &[]).unwrap();
    until_logged(&stuck, "--resnapshot").await;
    assert!(
        stuck.stderr().contains("does not exist"),
        "{}",
        stuck.stderr()
    );
    let (_, metrics) = stuck.get_ops("/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!(
            "backflow_source_restarts_total{{feed=\"{}\",kind=\"definite\"}}",
            f.feed
        )),
        "{metrics}"
    );
    drop(stuck);

    // --resnapshot: the tables are read again, then changes stream. What
    // the topic holds is counted by reading it afresh each time.
    let (bootstrap, topic, desc) = (f.broker.bootstrap(), f.topic(), f.desc());
    let reads_before = TopicView::read_all(bootstrap, &topic, desc.clone())
        .await
        .unwrap()
        .ops
        .get("r")
        .copied()
        .unwrap_or(0);
    let source =
        Node::run_with_config(&["source", "--feed", &f.feed, "--resnapshot"], &config, &[])
            .unwrap();
    until_logged(&source, "re-snapshot requested").await;
    // Every row is read again.
    let rows = table_state(&f).await.len();
    TopicView::read_all_until(
        bootstrap,
        &topic,
        &desc,
        Duration::from_secs(120),
        &source,
        |v| v.ops.get("r").copied().unwrap_or(0) >= reads_before + rows,
    )
    .await;
    let want = table_state(&f).await;
    TopicView::read_all_until(
        bootstrap,
        &topic,
        &desc,
        Duration::from_secs(120),
        &source,
        |v| v.state == want,
    )
    .await;
    assert!(
        source
            .stderr()
            .contains("rows the raw topic held and the table no longer has are deleted"),
        "{}",
        source.stderr()
    );
    change_rows(&f, 3_000_000).await;
    let want = table_state(&f).await;
    TopicView::read_all_until(
        bootstrap,
        &topic,
        &desc,
        Duration::from_secs(60),
        &source,
        |v| v.state == want,
    )
    .await;
    drop(source);
    drop_pg_database(&f.db).await.unwrap();
}

#[tokio::test]
async fn postgres_feed_add_column_not_null_with_default_registers_a_compatible_version() {
    let f = setup(20).await;
    // A reader of the node's registry.
    let reader = TestToken::new("subscriber:330106");
    let node = Node::start_with_config(&(f.config() + &reader.auth_toml()), &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let mut view = view(&f);
    view.until_equal(&table_state(&f).await, Duration::from_secs(60), &node)
        .await;
    let c = pg_connect(&f.db).await.unwrap();
    c.batch_execute(
        "ALTER TABLE people ADD COLUMN level integer NOT NULL DEFAULT 3;
         UPDATE people SET level = 5 WHERE id = 1;",
    )
    .await
    .unwrap();
    // The registry (BACKWARD by default) accepted a second version whose
    // new field carries the column's default; the feed kept going.
    let subject = format!("{}-value", f.topic());
    let until = Instant::now() + Duration::from_secs(60);
    let latest = loop {
        let (status, body) = node
            .api(
                "GET",
                &format!("/subjects/{subject}/versions/latest"),
                Some(reader.token()),
                None,
            )
            .await;
        if status == 200 && body["version"] == 2 {
            break body;
        }
        assert!(
            Instant::now() < until,
            "no second schema version ({status}): {body}\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let schema: serde_json::Value =
        serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    let value = schema["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "before")
        .unwrap()["type"][1]
        .clone();
    let level = value["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "level")
        .cloned()
        .expect("level in the new version");
    assert_eq!(level["type"], "int");
    assert_eq!(level["default"], 3);
    // The update was published under the new version.
    let until = Instant::now() + Duration::from_secs(30);
    let mut newest = None;
    while newest.is_none() {
        assert!(Instant::now() < until, "update not published");
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_millis(500), view.consumer.recv()).await
        {
            let (id, _) = unframe(r.payload.as_deref().unwrap()).unwrap();
            if id == latest["id"].as_u64().unwrap() as u32 {
                newest = Some(r);
            }
        }
    }
    assert!(!node.stderr().contains("feed failed"), "{}", node.stderr());
    drop(node);
    drop_pg_database(&f.db).await.unwrap();
}
