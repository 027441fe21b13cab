//! Interop with the Kafka ecosystem, checked as a user would: a city node
//! 330100 with a real PostgreSQL feed shares its residents with district
//! 330106 (names plain, identity numbers masked, phone and income withheld).
//! Kafka's own `kafka-topics` lists the node's raw and share topics, and its
//! `kafka-consumer-groups` shows the distributor's group with committed
//! offsets at the raw topic's end (lag 0) once it caught up. Confluent's
//! Python client (`DeserializingConsumer` with `AvroDeserializer` for keys
//! and values) subscribes to the share topic on the broker, fetches the
//! writer schemas from the node's registry with the subscriber's token, and
//! decodes exactly the district's rows: its ids and names, the identity
//! number masked, no phone, no income; the registry refuses it without the
//! token. Changes made afterwards (a rename, a new resident, a resident
//! moving away) reach the same Python consumer group, which resumes from
//! the offsets it committed; a change of the withheld income alone
//! reaches it not at all.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{
    mask_keep, pg_connect, python, unique_name, Node, TestBroker, TestToken, PEOPLE_TABLE,
};
use serde_json::Value;

/// A resident as the share shows it: name, masked identity number, region.
type Rows = BTreeMap<i64, (String, String, String)>;

/// The fields the share grants; anything else decoded is a leak.
const GRANTED: [&str; 4] = ["id", "id_number", "name", "region_code"];

/// The department's residents of district 330106, as the share policy
/// shows them.
async fn district_rows(database: &str) -> Rows {
    let client = pg_connect(database).await.expect("department database");
    client
        .query(
            "SELECT id, name, id_number, region_code FROM people WHERE region_code LIKE '330106%'",
            &[],
        )
        .await
        .expect("people table")
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                (
                    r.get::<_, String>(1),
                    mask_keep(r.get(2), 6, 4),
                    r.get::<_, String>(3),
                ),
            )
        })
        .collect()
}

/// Runs `tests/python/share_consumer.py` (Confluent's `DeserializingConsumer`
/// in consumer group `group`) over `topic` up to its current end, with
/// `basic` (`user:token`) as the registry's credentials when given.
fn share_consumer(
    bootstrap: &str,
    registry: &str,
    topic: &str,
    group: &str,
    basic: Option<&str>,
) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/share_consumer.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args([bootstrap, registry, topic, group])
        .env_remove("BACKFLOW_REGISTRY_BASIC")
        .env_remove("BACKFLOW_REGISTRY_BEARER");
    if let Some(b) = basic {
        cmd.env("BACKFLOW_REGISTRY_BASIC", b);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {} {script}: {e}", python()))
}

/// Applies the records the Python client printed (JSON lines) to `rows`:
/// an insert, update or snapshot read sets the row from `after`; a delete
/// or a tombstone removes it. Checks on the way that every record is fully
/// decoded and carries only granted fields. Returns the records' offsets.
fn apply(rows: &mut Rows, lines: &str, node: &Node) -> Vec<i64> {
    let mut offsets = Vec::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let r: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        offsets.push(r["offset"].as_i64().expect("an offset"));
        let id = r["key"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("key not decoded to a record with the id: {line}"));
        let value = &r["value"];
        if value.is_null() {
            rows.remove(&id);
            continue;
        }
        for image in ["before", "after"] {
            if let Some(fields) = value[image].as_object() {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                assert_eq!(
                    names, GRANTED,
                    "{image} of a decoded record holds other fields than the granted ones: {line}\nnode log:\n{}",
                    node.stderr()
                );
            }
        }
        let op = value["op"].as_str().unwrap_or_default();
        if op == "d" {
            rows.remove(&id);
            continue;
        }
        assert!(
            ["c", "u", "r"].contains(&op),
            "unknown op in the decoded value: {line}"
        );
        let after = &value["after"];
        let text = |f: &str| {
            after[f]
                .as_str()
                .unwrap_or_else(|| panic!("{f} is not text: {line}"))
                .to_owned()
        };
        assert_eq!(
            after["id"].as_i64(),
            Some(id),
            "key and row disagree: {line}"
        );
        rows.insert(id, (text("name"), text("id_number"), text("region_code")));
    }
    offsets
}

/// Runs the Python consumer in `group` until what it decoded, applied to
/// `rows`, equals the department's district rows; returns the offsets it
/// read over all runs.
async fn consume_until_equal(
    rows: &mut Rows,
    node: &Node,
    broker: &TestBroker,
    topic: &str,
    group: &str,
    basic: &str,
    database: &str,
) -> Vec<i64> {
    let until = Instant::now() + Duration::from_secs(90);
    let mut offsets = Vec::new();
    loop {
        let out = share_consumer(broker.bootstrap(), &node.url, topic, group, Some(basic));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "share_consumer.py failed ({}):\n{}\nstdout:\n{stdout}\nnode log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            node.stderr()
        );
        offsets.extend(apply(rows, &stdout, node));
        let want = district_rows(database).await;
        if *rows == want {
            return offsets;
        }
        assert!(
            Instant::now() < until,
            "the Python client never decoded the district's rows: want {want:?}\ngot {rows:?}\nnode log:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kafka-consumer-groups --describe` of the distributor's group, polled
/// until it shows committed offsets at the end of `raw` (lag 0) with the
/// end at least `min_end`; returns the end.
async fn distributor_caught_up(broker: &TestBroker, node: &Node, raw: &str, min_end: i64) -> i64 {
    let group = "backflow.distributor.330100";
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let described = broker
            .kafka_tool(
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                &["--describe", "--group", group],
            )
            .unwrap_or_else(|e| format!("(failed) {e}"));
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
        let rows: Vec<Vec<&str>> = described
            .lines()
            .filter(|l| l.starts_with(group))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let on_raw: Vec<&Vec<&str>> = rows.iter().filter(|c| c.get(1) == Some(&raw)).collect();
        let num = |c: &Vec<&str>, i: usize| c.get(i).and_then(|v| v.parse::<i64>().ok());
        let end: i64 = on_raw.iter().filter_map(|c| num(c, 4)).sum();
        let caught_up = !on_raw.is_empty()
            && on_raw
                .iter()
                .all(|c| num(c, 5) == Some(0) && num(c, 3).is_some() && num(c, 3) == num(c, 4))
            && end >= min_end;
        if caught_up {
            return end;
        }
        assert!(
            Instant::now() < until,
            "kafka-consumer-groups never showed {group} at the end of {raw} (lag 0, end >= {min_end}):\n{described}\nnode log:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tools_and_confluent_python_client_read_what_the_node_writes() {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    let pg = pg_connect(&source.name).await.unwrap();
    pg.batch_execute(&format!(
        "{PEOPLE_TABLE}
         INSERT INTO people
         SELECT g, (ARRAY['张三丰','李四','王小明'])[g % 3 + 1] || g,
                CASE WHEN g % 3 = 0 THEN '330106' WHEN g % 3 = 1 THEN '330108' ELSE '330102' END
                  || '19900101' || lpad(g::text, 4, '0'),
                '1380000' || lpad(g::text, 4, '0'),
                CASE WHEN g % 3 = 0 THEN '330106' WHEN g % 3 = 1 THEN '330108' ELSE '330102' END,
                g * 1000.5
         FROM generate_series(1, 60) g;"
    ))
    .await
    .unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let raw = format!("backflow.raw.{dataset}");
    let share = format!("backflow.share.330106.{dataset}");
    let reader = TestToken::new("subscriber:330106");
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n{}\n\
         [[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\n\
         fields = {{ id = \"plain\", name = \"plain\", id_number = \"masked:keep(6,4)\", region_code = \"plain\" }}\n",
        broker.bootstrap(),
        reader.auth_toml(),
        source.name.replace('_', "-"),
        source.name,
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    // kafka-topics --list: the node's topics are ordinary Kafka topics.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = broker
            .kafka_tool("org.apache.kafka.tools.TopicCommand", &["--list"])
            .unwrap_or_else(|e| format!("(failed) {e}"));
        let topics: Vec<&str> = listed.lines().map(str::trim).collect();
        if topics.contains(&raw.as_str()) && topics.contains(&share.as_str()) {
            break;
        }
        assert!(
            Instant::now() < until,
            "kafka-topics --list never showed {raw} and {share}:\n{listed}\nnode log:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // kafka-consumer-groups --describe: the distributor's group has
    // committed the whole snapshot of 60 rows on the raw topic.
    let end = distributor_caught_up(&broker, &node, &raw, 60).await;

    // Without the token the registry refuses Confluent's deserializer: the
    // share topic's records cannot be decoded by just anyone on the broker.
    let out = share_consumer(
        broker.bootstrap(),
        &node.url,
        &share,
        &unique_name("anonymous"),
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("40101"),
        "the Python client decoded the share without credentials ({}):\n{err}\nstdout:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );

    // With the subscriber's token (basic auth, as Confluent's clients are
    // configured for a registry behind a login), the Python client decodes
    // the district's rows: 20 residents, ids and names, masked identity
    // numbers, no phone, no income.
    let group = unique_name("python");
    let basic = format!("330106:{}", reader.token());
    let mut rows = Rows::new();
    let first = consume_until_equal(
        &mut rows,
        &node,
        &broker,
        &share,
        &group,
        &basic,
        &source.name,
    )
    .await;
    assert_eq!(rows.len(), 20, "{rows:?}");
    assert!(rows.keys().all(|id| id % 3 == 0), "{rows:?}");
    assert_eq!(
        rows[&3],
        (
            "张三丰3".to_owned(),
            "330106********0003".to_owned(),
            "330106".to_owned()
        ),
        "{rows:?}"
    );
    // The writer schema the client was given does not know the withheld
    // fields either.
    let (status, latest) = node
        .api(
            "GET",
            &format!("/subjects/{share}-value/versions/latest"),
            Some(reader.token()),
            None,
        )
        .await;
    let latest = latest.to_string();
    assert_eq!(status, 200, "{latest}");
    assert!(
        latest.contains("id_number") && !latest.contains("income") && !latest.contains("phone"),
        "{latest}"
    );

    // Changes after the snapshot: a rename, a new resident, a resident
    // moving to 330108 (a delete and a tombstone for 330106), and a change
    // of the withheld income only.
    pg.batch_execute(
        "UPDATE people SET name = '赵六' WHERE id = 6;
         INSERT INTO people VALUES (1000, '钱七', '330106199001011000', '13900000000', '330106', 1.5);
         UPDATE people SET region_code = '330108' WHERE id = 9;
         UPDATE people SET income = income + 1 WHERE id = 12;",
    )
    .await
    .unwrap();
    let second = consume_until_equal(
        &mut rows,
        &node,
        &broker,
        &share,
        &group,
        &basic,
        &source.name,
    )
    .await;
    assert_eq!(rows[&6].0, "赵六", "{rows:?}");
    assert!(
        rows.contains_key(&1000) && !rows.contains_key(&9),
        "{rows:?}"
    );
    // The Python group resumed from the offsets it committed: nothing of
    // the snapshot was read again.
    let last_first = first.iter().max().copied().unwrap_or(-1);
    assert!(
        !second.is_empty() && second.iter().all(|o| *o > last_first),
        "second read {second:?} after first read up to {last_first}"
    );

    // And the distributor's committed offsets moved to the raw topic's new
    // end: the four changes.
    let later = distributor_caught_up(&broker, &node, &raw, end + 4).await;
    assert!(later >= end + 4, "{later} after {end}");
    // All four are distributed, yet the share topic holds the snapshot's 20
    // records and four more (rename, insert, delete and tombstone): the
    // change of the withheld income alone gave the district nothing, not
    // even the news that it changed.
    assert_eq!(
        backflow_e2e::share_topic::count(broker.bootstrap(), &share).await,
        24,
        "a share record for a change of withheld fields only"
    );
}
