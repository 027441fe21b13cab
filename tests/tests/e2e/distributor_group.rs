//! Two processes serve one node (city 330100): the first runs the
//! department's PostgreSQL feed and the distributor, the second only the
//! distributor. Through Kafka's group protocol they split the raw topic's
//! four partitions two and two, and in steady state every change reaches
//! the share topic exactly once (neither process distributes it twice).
//! When the second process is killed with SIGKILL, Kafka gives its
//! partitions to the first within the session timeout, and district 330106
//! ends equal to the department's table: nothing lost. Nothing doubled
//! either: the killed process's open transaction never shows, so the share
//! topic ends with exactly one record per raw record.

use std::time::{Duration, Instant};

use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{metric_sum, pg_connect, unique_name, Node, TestBroker, TestToken};

const PARTITIONS: i32 = 4;

/// Records in all partitions of `topic` (nothing is compacted away while
/// the test runs: its segments stay active).
/// Records in the topic (a raw topic's commit markers left out).
async fn records(bootstrap: &str, topic: &str) -> i64 {
    backflow_e2e::share_topic::count(bootstrap, topic).await
}

async fn partitions_held(node: &Node) -> i64 {
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    metric_sum(&metrics, "backflow_distributor_partitions", "") as i64
}

async fn until(what: &str, deadline: Duration, nodes: &[&Node], mut ok: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ok().await {
        if Instant::now() > end {
            let logs: Vec<String> = nodes.iter().map(|n| n.stderr()).collect();
            panic!(
                "{what} did not happen within {deadline:?}; logs:\n{}",
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_of_one_node_split_the_distributor_and_survive_a_sigkill() {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    let pg = pg_connect(&source.name).await.unwrap();
    pg.batch_execute(
        "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
         INSERT INTO people SELECT g, 'p' || g, '330106' FROM generate_series(1, 40) g;",
    )
    .await
    .unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let raw = format!("backflow.raw.{dataset}");
    let share = format!("backflow.share.330106.{dataset}");
    let reader = TestToken::new("subscriber:330106");
    let common = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\npartitions = {PARTITIONS}\nsession_timeout_ms = 6000\n{}\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n",
        broker.bootstrap(),
        reader.auth_toml(),
    );
    let feed = format!(
        "\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n",
        source.name.replace('_', "-"),
        source.name,
    );
    // Two processes of one node on one host: each its own replica name.
    let first = Node::start_with_config(
        &format!("{common}{feed}").replacen(
            "[kafka]\n",
            "[kafka]\nreplica = \"first\"\ndistributor_transactions = true\n",
            1,
        ),
        &[],
    )
    .unwrap();
    first
        .wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let second = Node::start_with_config(
        &common.replacen(
            "[kafka]\n",
            "[kafka]\nreplica = \"second\"\ndistributor_transactions = true\n",
            1,
        ),
        &[],
    )
    .unwrap();
    second
        .wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    // Kafka splits the four raw partitions between the two processes.
    until(
        "a 2/2 split",
        Duration::from_secs(60),
        &[&first, &second],
        async || partitions_held(&first).await == 2 && partitions_held(&second).await == 2,
    )
    .await;
    // The snapshot is through: every raw record has its share record.
    until(
        "the snapshot distributed",
        Duration::from_secs(60),
        &[&first, &second],
        async || {
            let r = records(broker.bootstrap(), &raw).await;
            r >= 40 && records(broker.bootstrap(), &share).await >= r
        },
    )
    .await;

    // Steady state: 300 changes, spread over the partitions by key, give
    // exactly 300 share records: each distributed once, by one process.
    let raw_before = records(broker.bootstrap(), &raw).await;
    let share_before = records(broker.bootstrap(), &share).await;
    for i in 0..3 {
        pg.batch_execute(&format!(
            "INSERT INTO people SELECT g, 'q' || g, '330106' FROM generate_series({}, {}) g;",
            1000 + i * 100,
            1099 + i * 100
        ))
        .await
        .unwrap();
    }
    until(
        "300 new raw records",
        Duration::from_secs(60),
        &[&first, &second],
        async || records(broker.bootstrap(), &raw).await == raw_before + 300,
    )
    .await;
    until(
        "300 new share records",
        Duration::from_secs(60),
        &[&first, &second],
        async || records(broker.bootstrap(), &share).await >= share_before + 300,
    )
    .await;
    // Long enough for a second delivery to show if there were one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        records(broker.bootstrap(), &share).await,
        share_before + 300,
        "a change was distributed twice"
    );
    let (_, m1) = first.get_ops("/metrics").await.unwrap();
    let (_, m2) = second.get_ops("/metrics").await.unwrap();
    for (who, m) in [("first", &m1), ("second", &m2)] {
        assert!(
            metric_sum(m, "backflow_distributor_records_total", "330106") > 0.0,
            "the {who} process distributed nothing"
        );
    }

    // The district follows the share topic into its own database.
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let sub = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"{share}\", table = \"people\" }}]\n",
            unique_name("d330106"),
            broker.bootstrap(),
            first.url,
            reader.upstream_setting(),
            sink.sink_toml(),
        ),
        &[],
    )
    .unwrap();

    // SIGKILL of the second process while the department goes on: its
    // partitions move to the first within the session timeout.
    second.signal("KILL").unwrap();
    let killed = Instant::now();
    for i in 0..3 {
        pg.batch_execute(&format!(
            "INSERT INTO people SELECT g, 'r' || g, '330106' FROM generate_series({}, {}) g;
             UPDATE people SET name = name || '+' WHERE id % 7 = {i};",
            2000 + i * 100,
            2099 + i * 100
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    until(
        "the survivor holding all four partitions",
        Duration::from_secs(30),
        &[&first],
        async || partitions_held(&first).await == PARTITIONS as i64,
    )
    .await;
    let took = killed.elapsed();
    eprintln!("the survivor held all partitions {took:?} after the SIGKILL");
    assert!(
        took < Duration::from_secs(6 + 10),
        "the partitions moved only after {took:?} (session timeout 6 s)"
    );

    let read = [("name", Kind::Text), ("region_code", Kind::Text)];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let want = source.rows("people", "id", &read).await.unwrap().unwrap();
        let got = sink
            .rows("people", "id", &read)
            .await
            .unwrap()
            .unwrap_or_default();
        if got == want {
            assert_eq!(want.len(), 40 + 300 + 300);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "district never equal to the department: {} rows of {}; e.g. missing {:?}\nnode:\n{}\nsubscriber:\n{}",
            got.len(),
            want.len(),
            want.iter().find(|(k, v)| got.get(k) != Some(v)),
            first.stderr(),
            sub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every raw record distributed once, the SIGKILL included.
    let raw_records = records(broker.bootstrap(), &raw).await;
    let until_done = Instant::now() + Duration::from_secs(30);
    loop {
        let share_records = records(broker.bootstrap(), &share).await;
        if share_records >= raw_records || Instant::now() > until_done {
            assert_eq!(
                share_records,
                raw_records,
                "share records against raw records after the SIGKILL\n{}",
                first.stderr()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
