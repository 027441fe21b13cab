//! Lag that means something, end to end: a city node 330100 with a real
//! PostgreSQL feed shares a dataset with district 330106, whose
//! `backflow subscribe` applies it to SQLite and reports where it is. The
//! node's `/api/lag`, `/metrics` and `backflow lag` must say: caught up
//! (OK, 0 messages, 0 s); subscriber killed while changes continue (STOP,
//! seconds growing); subscriber alive but stuck because its database stays
//! locked by another writer (STALL, with its reason), then OK once freed.
//! Kafka's own `kafka-consumer-groups` tool agrees with the node on the
//! subscriber's position and lag.

use std::time::Duration;

use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{backflow, pg_connect, unique_name, Node, TestBroker, TestToken};
use serde_json::Value;

const ADMIN: &str = "lag-test-admin-token-0123456789";

/// Waits until 330106's row satisfies `ok`; returns it.
async fn until_row(
    node: &Node,
    what: &str,
    deadline: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    node.until_lag_row(ADMIN, "330106", what, deadline, ok)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_status_follow_the_subscriber_ok_stop_stall() {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    let pg = pg_connect(&source.name).await.unwrap();
    pg.batch_execute(
        "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
         INSERT INTO people SELECT g, 'p' || g, '330106' FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let reader = TestToken::new("subscriber:330106");
    let config = format!(
        "[node]\ncode = \"330100\"\n[runtime]\nlag_window_secs = 8\n[kafka]\nbrokers = \"{}\"\n{}\n\
         [[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n\n\
         [[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n",
        broker.bootstrap(),
        reader.auth_toml(),
        backflow::auth::token_hash(ADMIN),
        source.name.replace('_', "-"),
        source.name,
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let name = unique_name("d330106");
    let sub_config = |extra: &str| {
        format!(
            "[[subscriptions]]\nname = \"{name}\"\n{extra}upstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"backflow.share.330106.{dataset}\", table = \"people\" }}]\n",
            broker.bootstrap(),
            node.url,
            reader.upstream_setting(),
            sink.sink_toml(),
        )
    };

    // Caught up: OK, nothing waiting, 0 seconds.
    let mut sub = Node::subscribe_with_config(&sub_config(""), &[]).unwrap();
    let row = until_row(&node, "caught up", Duration::from_secs(60), |r| {
        r["status"] == "OK"
            && r["lag_messages"] == 0
            && r["lag_seconds"] == 0.0
            && r["last_report_ms"].is_i64()
    })
    .await;
    // The position lives in a Kafka consumer group named after the share
    // topic, where Kafka's own tools and exporters can read it.
    assert_eq!(
        row["group"].as_str().unwrap(),
        format!("backflow.share.330106.{dataset}"),
        "{row}"
    );
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    for needle in [
        format!("backflow_subscription_lag_messages{{dataset=\"{dataset}\",subscriber=\"330106\"}} 0"),
        format!("backflow_subscription_lag_seconds{{dataset=\"{dataset}\",subscriber=\"330106\"}} 0"),
        format!("backflow_subscription_status{{dataset=\"{dataset}\",status=\"OK\",subscriber=\"330106\"}} 1"),
    ] {
        assert!(
            backflow_e2e::has_series(&metrics, &needle),
            "{needle} not in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("kafka_consumergroup_group_lag{"),
        "{metrics}"
    );
    let out = backflow()
        .args(["lag", "--url", &node.url, "--token", ADMIN])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = table
        .lines()
        .find(|l| l.starts_with("330106"))
        .unwrap_or_else(|| panic!("no row for 330106 in:\n{table}"));
    assert!(line.contains(&dataset) && line.contains(" OK "), "{line}");

    // The subscriber is killed while the department keeps changing rows:
    // STOP, and the seconds behind grow.
    sub.signal("KILL").unwrap();
    sub.wait(Duration::from_secs(10)).unwrap();
    pg.batch_execute("UPDATE people SET name = name || '!' WHERE id <= 10")
        .await
        .unwrap();
    let stopped = until_row(&node, "STOP", Duration::from_secs(60), |r| {
        r["status"] == "STOP" && r["lag_messages"].as_i64().unwrap_or(0) >= 10
    })
    .await;
    let first = stopped["lag_seconds"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = until_row(&node, "growing lag", Duration::from_secs(10), |r| {
        r["lag_seconds"].as_f64().unwrap_or(0.0) > first
    })
    .await;
    assert_eq!(later["status"], "STOP", "{later}");
    // Kafka's own tool sees the same position and the same lag: the
    // subscriber's group is an ordinary consumer group.
    let group = format!("backflow.share.330106.{dataset}");
    let described = broker
        .kafka_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            &["--describe", "--group", &group],
        )
        .unwrap();
    let lag: i64 = described
        .lines()
        .filter(|l| l.starts_with(&group))
        .map(|l| {
            // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols[1], group, "{described}");
            cols[5].parse::<i64>().expect("a number in the LAG column")
        })
        .sum();
    assert_eq!(
        Some(lag),
        later["lag_messages"].as_i64(),
        "Kafka's view:\n{described}\nbackflow's: {later}"
    );

    // Alive but stuck: another writer holds the district database's write
    // lock, so the restarted subscriber reads its offsets, takes the waiting
    // records and retries the same batch forever while reporting.
    let lock = rusqlite::Connection::open(&sink.path).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let _sub = Node::subscribe_with_config(&sub_config(""), &[]).unwrap();
    let stalled = until_row(
        &node,
        "STALL with its reason",
        Duration::from_secs(90),
        |r| r["status"] == "STALL" && r["error"].as_str().is_some_and(|e| e.contains("lock")),
    )
    .await;
    assert!(stalled["lag_messages"].as_i64().unwrap() > 0, "{stalled}");
    // The restarted subscriber has applied nothing yet; the node reads the
    // origin time of the last record it applied from the share topic.
    assert!(
        stalled["lag_seconds"].as_f64().is_some_and(|s| s > 1.0),
        "{stalled}"
    );
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(
            &metrics,
            &format!(
                "backflow_subscription_status{{dataset=\"{dataset}\",status=\"STALL\",subscriber=\"330106\"}} 1"
            )
        ),
        "{metrics}"
    );
    // Unstuck: the lock goes, the subscriber catches up, OK again.
    lock.execute_batch("COMMIT").unwrap();
    until_row(&node, "recovery", Duration::from_secs(90), |r| {
        r["status"] == "OK" && r["lag_messages"] == 0
    })
    .await;
}
