//! The polling feed end to end on a SQLite department database: the real
//! binary and broker. Inserts and updates are polled, hard deletes are found
//! by the key diff against the raw topic, and after a SIGKILL and restart
//! the source takes its before-images from the topic (updates stay updates)
//! and finds the rows deleted while it was down.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use backflow_e2e::topic_view::TopicView;
use backflow_e2e::{unique_name, Node, TestBroker};
use backflow_schemas::{ColumnDesc, Datum, Row, SqlType, TableDesc};

const READY: Duration = Duration::from_secs(30);

fn desc(dataset: &str) -> TableDesc {
    TableDesc {
        dataset: dataset.to_owned(),
        schema: "main".into(),
        name: "people".into(),
        columns: vec![
            ColumnDesc::new("id", SqlType::BigInt, false),
            ColumnDesc::new("name", SqlType::Text, false),
            ColumnDesc::new("region_code", SqlType::Text, false),
            ColumnDesc::new("updated_at", SqlType::Timestamp, false),
        ],
        primary_key: vec!["id".into()],
    }
}

fn sql(path: &Path, statements: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(statements).unwrap();
}

/// The table's rows (timestamps parsed as the source reads them).
fn table_state(path: &Path) -> BTreeMap<i64, Row> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt = c
        .prepare("SELECT id, name, region_code, updated_at FROM people")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let ts: String = r.get(3)?;
            Ok((
                r.get::<_, i64>(0)?,
                Row(vec![
                    Datum::Long(r.get(0)?),
                    Datum::Text(r.get(1)?),
                    Datum::Text(r.get(2)?),
                    backflow_connectors::text::parse(&SqlType::Timestamp, &ts).unwrap(),
                ]),
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f', 'now')";

#[tokio::test]
async fn poll_feed_captures_changes_and_hard_deletes_across_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dept.db");
    sql(
        &path,
        &format!(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                  region_code TEXT NOT NULL, updated_at TIMESTAMP NOT NULL);
             WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 300)
             INSERT INTO people SELECT n, '居民' || n, CASE n % 2 WHEN 0 THEN '330106' ELSE '330108' END,
                                       {NOW} FROM g;"
        ),
    );
    let broker = TestBroker::start();
    let name = unique_name("bf_poll");
    let dataset = format!("t{}.people", &name[8..]);
    let feed = name.replace('_', "-");
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"poll\"\nname = \"{feed}\"\nengine = \"sqlite\"\npath = \"{}\"\npoll_interval_ms = 200\ndelay_ms = 300\nkey_diff_interval_secs = 2\n\n[[feeds.tables]]\ntable = \"people\"\ndataset = \"{dataset}\"\nmode = \"timestamp+incrementing\"\ntimestamp_column = \"updated_at\"\n",
        broker.bootstrap(),
        path.display()
    );
    let topic = format!("backflow.raw.{dataset}");
    let mut view = TopicView::new(broker.bootstrap(), &topic, desc(&dataset));
    {
        let mut node = Node::start_with_config(&config, &[]).unwrap();
        node.wait_for_status("/readyz", 200, READY).await.unwrap();
        view.until_equal(&table_state(&path), Duration::from_secs(60), &node)
            .await;
        assert_eq!(view.ops.get("c"), Some(&300), "{:?}", view.ops);
        // Updates (timestamp moves), hard deletes (found by the key diff),
        // and new rows.
        sql(
            &path,
            &format!(
                "UPDATE people SET region_code = '330102', updated_at = {NOW} WHERE id % 10 = 0;
                 DELETE FROM people WHERE id % 7 = 0;
                 INSERT INTO people VALUES (1001, '新', '330106', {NOW});"
            ),
        );
        view.until_equal(&table_state(&path), Duration::from_secs(60), &node)
            .await;
        assert!(
            view.ops.get("u").copied().unwrap_or(0) >= 25,
            "{:?}",
            view.ops
        );
        assert_eq!(view.ops.get("d"), Some(&(300 / 7)), "{:?}", view.ops);
        node.signal("KILL").unwrap();
        node.wait(Duration::from_secs(10)).unwrap();
    }
    // While the feed is down: an update, a hard delete, an insert.
    let creates_before = view.ops.get("c").copied().unwrap_or(0);
    sql(
        &path,
        &format!(
            "UPDATE people SET name = '改名', updated_at = {NOW} WHERE id = 1;
             DELETE FROM people WHERE id = 3;
             INSERT INTO people VALUES (1002, '又新', '330108', {NOW});"
        ),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    view.until_equal(&table_state(&path), Duration::from_secs(60), &node)
        .await;
    // Row 1 came back as an update with its before-image (TopicView checks
    // that every update has one), so only the new row is a create; rows the
    // restarted source re-read unchanged are not sent again.
    assert_eq!(
        view.ops.get("c").copied().unwrap_or(0),
        creates_before + 1,
        "{:?}\n{}",
        view.ops,
        node.stderr()
    );
    assert!(
        node.stderr()
            .contains("compared the table with its raw topic"),
        "{}",
        node.stderr()
    );
}
