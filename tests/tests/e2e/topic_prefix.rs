//! Two nodes on one Apache Kafka cluster, each in its own namespace: node
//! 330100 with `kafka.topic_prefix = "zj.hz."` and a node with the default
//! prefix, both with a PostgreSQL feed. Every topic and consumer group the
//! first names starts with `zj.hz.` (Kafka's own tools list them), neither
//! node's catalog shows the other's dataset, and district 330106, told the
//! upper node's prefix in `upstream.topic_prefix`, receives its rows.

use std::time::{Duration, Instant};

use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{pg_connect, unique_name, Node, TestBroker, TestToken};

const ADMIN: &str = "prefix-test-admin-token-0123456789";

/// A department database with a `people` table, and the node config
/// fragment of its feed; returns (database, dataset, feed TOML).
async fn department() -> (SinkDb, String, String) {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
             INSERT INTO people SELECT g, 'p' || g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END
             FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let dataset = format!("t{}.people", &source.name[8..]);
    let feed = format!(
        "[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n",
        source.name.replace('_', "-"),
        source.name,
    );
    (source, dataset, feed)
}

async fn feeds(node: &Node) -> String {
    let (status, body) = node.api("GET", "/api/feeds", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_cluster_each_under_its_own_prefix() {
    let broker = TestBroker::start();
    let (source, dataset, feed) = department().await;
    let (other_source, other_dataset, other_feed) = department().await;
    let reader = TestToken::new("subscriber:330106");
    let admin = format!(
        "[[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n",
        backflow::auth::token_hash(ADMIN)
    );
    let hz = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"zj.hz.\"\n{}\n{admin}\n{feed}\n\
             [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n",
            broker.bootstrap(),
            reader.auth_toml(),
        ),
        &[],
    )
    .unwrap();
    let other = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n{admin}\n{other_feed}",
            broker.bootstrap()
        ),
        &[],
    )
    .unwrap();
    for node in [&hz, &other] {
        node.wait_for_status("/readyz", 200, Duration::from_secs(30))
            .await
            .unwrap();
    }

    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let sub = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", topic_prefix = \"zj.hz.\", {} }}\nsink = {}\ntables = [{{ topic = \"zj.hz.share.330106.{dataset}\", table = \"people\" }}]\n",
            unique_name("d330106"),
            broker.bootstrap(),
            hz.url,
            reader.upstream_setting(),
            sink.sink_toml(),
        ),
        &[],
    )
    .unwrap();
    let read = [("name", Kind::Text), ("region_code", Kind::Text)];
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let want: std::collections::BTreeMap<_, _> = source
            .rows("people", "id", &read)
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .filter(|(_, v)| v[1].as_deref() == Some("330106"))
            .collect();
        let got = sink
            .rows("people", "id", &read)
            .await
            .unwrap()
            .unwrap_or_default();
        if got == want && want.len() == 15 {
            break;
        }
        assert!(
            Instant::now() < until,
            "district has {} of {} rows\nnode:\n{}\nsubscriber:\n{}",
            got.len(),
            want.len(),
            hz.stderr(),
            sub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Each node's catalog holds its own feed only.
    let (mine, theirs) = (feeds(&hz).await, feeds(&other).await);
    let (feed_name, other_feed_name) = (
        source.name.replace('_', "-"),
        other_source.name.replace('_', "-"),
    );
    assert!(
        mine.contains(&feed_name) && !mine.contains(&other_feed_name),
        "{mine}"
    );
    assert!(
        theirs.contains(&other_feed_name) && !theirs.contains(&feed_name),
        "{theirs}"
    );

    // Kafka's own tools: the first node's topics and groups are all under
    // zj.hz., the other's under backflow.
    let topics = broker
        .kafka_tool("org.apache.kafka.tools.TopicCommand", &["--list"])
        .unwrap();
    let topics: Vec<&str> = topics.lines().map(str::trim).collect();
    for t in [
        format!("zj.hz.raw.{dataset}"),
        format!("zj.hz.share.330106.{dataset}"),
        "zj.hz._catalog".to_owned(),
        "zj.hz._schemas".to_owned(),
        "zj.hz._audit".to_owned(),
        format!("backflow.raw.{other_dataset}"),
        "backflow._catalog".to_owned(),
    ] {
        assert!(topics.contains(&t.as_str()), "{t} not in {topics:?}");
    }
    for t in &topics {
        assert!(
            t.starts_with("zj.hz.") || t.starts_with("backflow.") || t.starts_with("__"),
            "{t} is in no node's namespace"
        );
        assert!(
            !(t.starts_with("backflow.") && t.contains(&dataset)),
            "{t}: the first node's dataset under the default prefix"
        );
    }
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = broker
            .kafka_tool(
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                &["--list"],
            )
            .unwrap();
        let groups: Vec<&str> = groups.lines().map(str::trim).collect();
        if groups.contains(&"zj.hz.distributor.330100")
            && groups.contains(&format!("zj.hz.share.330106.{dataset}").as_str())
        {
            break;
        }
        assert!(Instant::now() < until, "groups: {groups:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
