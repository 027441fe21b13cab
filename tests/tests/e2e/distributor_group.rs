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
//!
//! A subscription approved while the node runs is backfilled inside the
//! distributor's transactions: once per node even with two processes, and
//! resumed from its last commit after a SIGKILL, each row once.

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

/// The sum of `topic`'s partitions' committed ends (last stable
/// offsets): records and commit markers of committed transactions, read
/// without waiting for the open one.
async fn committed_end(bootstrap: &str, topic: &str) -> i64 {
    let settings = backflow::kafka::KafkaSettings::new(bootstrap);
    let Ok(n) = backflow::kafka::partition_count(&settings, topic).await else {
        return 0;
    };
    let w = backflow::kafka::Watermarks::new(&settings).expect("a watermarks client");
    let mut total = 0;
    for p in 0..n as i32 {
        total += w.high(topic, p).await.unwrap_or(0);
    }
    total
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

/// The `[[feeds]]` section capturing the department's `people` table into
/// `dataset`.
fn feed_toml(source: &SinkDb, dataset: &str) -> String {
    format!(
        "\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n",
        source.name.replace('_', "-"),
        source.name,
    )
}

/// The two processes of one node on configuration `common` (its
/// `[kafka]` section first), replicas "first" (with `feed`) and
/// "second", each ready.
async fn two_processes(common: &str, feed: &str) -> (Node, Node) {
    let as_replica = |config: &str, r: &str| {
        config.replacen("[kafka]\n", &format!("[kafka]\nreplica = \"{r}\"\n"), 1)
    };
    let (first, _) =
        crate::exactly_once::ready_node(&as_replica(&format!("{common}{feed}"), "first")).await;
    let (second, _) = crate::exactly_once::ready_node(&as_replica(common, "second")).await;
    (first, second)
}

/// The owner (through `owner_side`) registers `dataset` as conditional
/// with three fields, district 330108 requests them (through
/// `requester_side`, once it knows the dataset: catalog writes reach the
/// other process through Kafka) and the owner approves the request.
/// Returns the subscription's id.
async fn approve_binjiang(
    owner_side: &Node,
    requester_side: &Node,
    admin: &TestToken,
    binjiang: &TestToken,
    dataset: &str,
) -> String {
    let (status, body) = owner_side
        .api(
            "PUT",
            &format!("/api/datasets/{dataset}"),
            Some(admin.token()),
            Some(serde_json::json!({"description": "residents", "sharing": "conditional", "region_column": "region_code", "fields": {"id": {}, "name": {}, "region_code": {}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let until_known = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let (status, body) = requester_side
            .api(
                "POST",
                "/api/subscriptions",
                Some(binjiang.token()),
                Some(serde_json::json!({"subscriber": "330108", "dataset": dataset, "purpose": "resident services", "fields": ["id", "name", "region_code"]})),
            )
            .await;
        if status == 201 {
            break body["id"].as_str().expect("id").to_owned();
        }
        assert!(
            Instant::now() < until_known,
            "request refused: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, body) = requester_side
        .api(
            "POST",
            &format!("/api/subscriptions/{id}/approve"),
            Some(admin.token()),
            Some(serde_json::json!({"request_version": 1})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    id
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
    let feed = feed_toml(&source, &dataset);
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

/// A subscription approved while two processes serve the node: its share
/// topic must get the dataset's current state and every change after it,
/// each once. The approval reaches both processes; the backfill of the
/// existing rows and the hand-over to the running distributors must not
/// happen once per process (every row twice), nor leave out the changes
/// of the raw partitions the backfilling process does not hold.
///
/// Before the backfill ran inside the distributor's transactions, every
/// process backfilled (snapshot rows twice with two processes), and the
/// backfilling process handed the share over only to its own run, which
/// holds half the raw partitions: the other process took the share on at
/// its own committed offsets, past changes made during the backfill (one
/// insert lost in a run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_approved_on_a_two_process_node_gets_every_change_once() {
    let source = crate::cluster_faults::department().await;
    let pg = pg_connect(&source.name).await.unwrap();
    let broker = TestBroker::start();
    // A department name both the API (no '_') and a feed's table
    // mapping (no '-') accept.
    let dataset = format!("t{}.people", source.name[8..].replace('_', ""));
    let share = format!("backflow.share.330108.{dataset}");
    let admin = TestToken::new("admin");
    let xihu = TestToken::new("subscriber:330106");
    let binjiang = TestToken::new("subscriber:330108");
    // District 330106 is shared from the configuration, so the running
    // distributors read the dataset when 330108's subscription arrives.
    let common = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\npartitions = {PARTITIONS}\nsession_timeout_ms = 6000\ndistributor_transactions = true\n{}{}{}\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n",
        broker.bootstrap(),
        admin.auth_toml(),
        xihu.auth_toml(),
        binjiang.auth_toml(),
    );
    let (first, second) = two_processes(&common, &feed_toml(&source, &dataset)).await;
    until(
        "a 2/2 split",
        Duration::from_secs(60),
        &[&first, &second],
        async || partitions_held(&first).await == 2 && partitions_held(&second).await == 2,
    )
    .await;

    // The department goes on while the subscription is decided and
    // backfilled: new residents of 330108, renames of existing ones.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut r = 0;
            while !stop.is_cancelled() {
                pg.batch_execute(&format!(
                    "INSERT INTO people VALUES ({}, '新{r}', '330108');
                     UPDATE people SET name = name || '+' WHERE id = {};",
                    5000 + r,
                    4 * (1 + r % 25),
                ))
                .await
                .unwrap();
                r += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (r, pg)
        }
    });
    approve_binjiang(&first, &second, &admin, &binjiang, &dataset).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.cancel();
    let (rounds, pg) = writer.await.unwrap();
    // A last change after everything settled, to wait for.
    pg.batch_execute("INSERT INTO people VALUES (9999, '末', '330108');")
        .await
        .unwrap();

    // The share's last version of each row must become the department's
    // (partitions catch up one by one: no record says all are done).
    let want: std::collections::BTreeMap<i64, String> = source
        .rows(
            "people",
            "id",
            &[("name", Kind::Text), ("region_code", Kind::Text)],
        )
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .filter(|(_, v)| v[1].as_deref() == Some("330108"))
        .filter_map(|(k, v)| Some((k, v[0].clone()?)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records =
            backflow_e2e::share_topic::read(broker.bootstrap(), &share, &first.url, admin.token())
                .await
                .unwrap_or_default();
        // Each change once: (source position, key, operation), snapshot
        // rows included.
        let mut seen: std::collections::BTreeMap<(String, i64, String), usize> = Default::default();
        let mut last: std::collections::BTreeMap<i64, Option<String>> = Default::default();
        for r in &records {
            let id = r.key["id"].as_i64().expect("integer key");
            let Some(v) = &r.value else {
                last.insert(id, None);
                continue;
            };
            let position = v["source"]["position"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let op = v["op"].as_str().unwrap_or_default().to_owned();
            *seen.entry((position, id, op)).or_default() += 1;
            last.insert(id, v["after"]["name"].as_str().map(str::to_owned));
        }
        let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            doubled.is_empty(),
            "{share}: {} changes written more than once, e.g. {:?}",
            doubled.len(),
            doubled.iter().take(5).collect::<Vec<_>>()
        );
        let got: std::collections::BTreeMap<i64, String> = last
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        if got == want {
            return;
        }
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(k) != Some(v))
            .take(5)
            .collect();
        assert!(
            Instant::now() < deadline,
            "{share} holds {} rows, the department {} for 330108 ({rounds} rounds of changes); e.g. wrong or missing {missing:?}\nfirst:\n{}\nsecond:\n{}",
            got.len(),
            want.len(),
            first.stderr(),
            second.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A node killed (SIGKILL) in the middle of a subscription's backfill
/// resumes it from its last commit: part of the backfill was committed
/// to the share topic before the kill, and at the end the share topic
/// holds each of the district's rows exactly once, equal to the
/// department's slice. Before the backfill ran in the distributor's
/// transactions, a kill left what it had written and the next start
/// backfilled again from the first record: every row written before the
/// kill came twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_midway_resumes_from_its_last_commit_and_writes_each_row_once() {
    const ROWS: i64 = 30_000;
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
             INSERT INTO people SELECT g, 'p' || g, CASE WHEN g % 3 = 0 THEN '330106' ELSE '330108' END FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", source.name[8..].replace('_', ""));
    let raw = format!("backflow.raw.{dataset}");
    let share = format!("backflow.share.330108.{dataset}");
    let admin = TestToken::new("admin");
    let binjiang = TestToken::new("subscriber:330108");
    // 330106 is shared from the configuration: the distributor reads the
    // dataset when 330108's subscription arrives.
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\npartitions = {PARTITIONS}\nreplica = \"a\"\ndistributor_transactions = true\n{}{}\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n{}",
        broker.bootstrap(),
        admin.auth_toml(),
        binjiang.auth_toml(),
        feed_toml(&source, &dataset),
    );
    let (mut node, _) = crate::exactly_once::ready_node(&config).await;
    until(
        "the department's snapshot in the raw topic",
        Duration::from_secs(120),
        &[&node],
        async || records(broker.bootstrap(), &raw).await >= ROWS,
    )
    .await;
    approve_binjiang(&node, &node, &admin, &binjiang, &dataset).await;

    // Killed as soon as part of the backfill is committed.
    let want = ROWS - ROWS / 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let n = committed_end(broker.bootstrap(), &share).await;
        if n > 0 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "nothing backfilled\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    node.signal("KILL").unwrap();
    node.wait(Duration::from_secs(10)).unwrap();
    println!("killed with {at_kill} records and commit markers of {want} rows committed");
    assert!(
        at_kill < want,
        "the backfill ended before the kill ({at_kill} records committed): the test proved nothing"
    );
    let (node, _) = crate::exactly_once::ready_node(&config).await;

    // Each row once, the department's slice.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows =
            backflow_e2e::share_topic::read(broker.bootstrap(), &share, &node.url, admin.token())
                .await
                .unwrap_or_default();
        let mut per_key: std::collections::BTreeMap<i64, usize> = Default::default();
        for r in &rows {
            *per_key
                .entry(r.key["id"].as_i64().expect("integer key"))
                .or_default() += 1;
        }
        let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "{share}: rows written more than once, e.g. {twice:?} ({} records, {at_kill} before the kill)",
            rows.len()
        );
        let wrong = rows
            .iter()
            .filter(|r| {
                r.value
                    .as_ref()
                    .is_some_and(|v| v["after"]["region_code"] != "330108")
            })
            .count();
        assert_eq!(wrong, 0, "only 330108's rows");
        if per_key.len() as i64 == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{share} holds {} of {want} rows\n{}",
            per_key.len(),
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        node.stderr()
            .contains("backfilling a share from the raw topic"),
        "the restarted process went on with the backfill\n{}",
        node.stderr()
    );
}

/// A narrowing decided through one process of a node applies, on every
/// process, to every change made after the decision returned. The attack:
/// the process holding half the raw partitions learns the decision late
/// (here it is stopped while the owner narrows and the department
/// writes, then continued); it must not deliver those changes under the
/// grant the owner just replaced, nor lose them. The distributor reads the
/// catalog to its end before each transaction commits, and a grant
/// changed while the transaction was open aborts it. Before, in three runs
/// of three, the changes on the stopped process's partitions (60 of 120)
/// never reached the share topic: skipped once the grant was withdrawn
/// mid-transaction, their offsets committed past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowing_through_one_process_holds_on_the_other_for_every_later_change() {
    narrowing_on_a_two_process_node(true).await;
}

/// Without the distributor's transactions (at least once) a narrowing
/// applies on each process from when it learns it, so a change may still
/// go out under the old grant; none is lost. Before, the changes on the
/// stopped process's partitions were skipped once it withdrew the grant,
/// and their offsets stored past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowing_loses_no_later_change_without_transactions() {
    narrowing_on_a_two_process_node(false).await;
}

async fn narrowing_on_a_two_process_node(transactions: bool) {
    let source = crate::cluster_faults::department().await;
    let pg = pg_connect(&source.name).await.unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", source.name[8..].replace('_', ""));
    let share = format!("backflow.share.330108.{dataset}");
    let admin = TestToken::new("admin");
    let binjiang = TestToken::new("subscriber:330108");
    let common = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\npartitions = {PARTITIONS}\nsession_timeout_ms = 10000\ndistributor_transactions = {transactions}\n{}{}\n",
        broker.bootstrap(),
        admin.auth_toml(),
        binjiang.auth_toml(),
    );
    let (first, second) = two_processes(&common, &feed_toml(&source, &dataset)).await;
    let id = approve_binjiang(&first, &second, &admin, &binjiang, &dataset).await;
    until(
        "a 2/2 split and the backfill",
        Duration::from_secs(90),
        &[&first, &second],
        async || {
            partitions_held(&first).await == 2
                && partitions_held(&second).await == 2
                && committed_end(broker.bootstrap(), &share).await > 0
        },
    )
    .await;

    for round in 0..3i64 {
        // The first round takes the name away; later ones ask the same
        // again (the API may refuse a narrowing that takes nothing away)
        // and write more changes while the second process is stopped.
        second.signal("STOP").unwrap();
        let (status, body) = first
            .api(
                "POST",
                &format!("/api/subscriptions/{id}/narrow"),
                Some(admin.token()),
                Some(serde_json::json!({"fields": ["id", "region_code"]})),
            )
            .await;
        let decided = status == 200;
        if round == 0 {
            assert!(decided, "narrowing refused: {status} {body}");
        }
        for i in 0..40 {
            pg.batch_execute(&format!(
                "INSERT INTO people VALUES ({}, '新{round}-{i}', '330108');",
                7000 + round * 100 + i
            ))
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        second.signal("CONT").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    // Every change after the first narrowing arrives without the name.
    let want = 3 * 40;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records =
            backflow_e2e::share_topic::read(broker.bootstrap(), &share, &first.url, admin.token())
                .await
                .unwrap_or_default();
        let later: Vec<_> = records
            .iter()
            .filter(|r| r.key["id"].as_i64().is_some_and(|k| k >= 7000))
            .collect();
        let leaked: Vec<_> = later
            .iter()
            .filter(|r| {
                r.after()
                    .and_then(|a| a.get("name"))
                    .is_some_and(|n| !n.is_null())
            })
            .map(|r| r.key["id"].clone())
            .collect();
        assert!(
            leaked.is_empty() || !transactions,
            "{} changes made after the narrowing returned were delivered with the name it took away: {leaked:?}\nfirst:\n{}\nsecond:\n{}",
            leaked.len(),
            first.stderr(),
            second.stderr()
        );
        if later.len() >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{share} holds {} of the {want} later changes\nfirst:\n{}\nsecond:\n{}",
            later.len(),
            first.stderr(),
            second.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
