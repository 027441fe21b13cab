//! Exactly once into the raw and share topics: a node whose PostgreSQL or
//! MariaDB feed (and, for PostgreSQL, its distributor) is killed with
//! SIGKILL at random moments while the department keeps committing
//! transactions. Read `read_committed` from its beginning, the raw topic
//! then holds every change the department made, each once: no insert is
//! missing or doubled, and no (source position, row, operation) appears
//! twice; so does the share topic the distributor writes for district
//! 330106, and the audit trail's delivery records count exactly the share
//! records.
//!
//! The kill times come from a seed, printed; `BACKFLOW_TEST_SEED` replays
//! them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow_e2e::{create_pg_database, free_local_addr, unique_name, Node, TestBroker, TestToken};

/// Department transactions: one new resident and a renamed one each.
async fn change(db: &tokio_postgres::Client, round: i64) {
    db.batch_execute(&format!(
        "INSERT INTO people VALUES ({id}, '新{id}', '330106');
         UPDATE people SET name = name || '+' WHERE id = {upd};",
        id = 1000 + round,
        upd = 1 + round % 50,
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_random_moments_writes_each_change_to_the_raw_and_share_topics_once() {
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let (name, department, dataset, config) = department(&broker, &admin).await;
    let auditor = TestToken::new("auditor");
    let config = format!("{config}{}{}", auditor.auth_toml(), share_toml(&dataset)).replacen(
        "[kafka]\n",
        "[kafka]\ndistributor_transactions = true\n",
        1,
    );
    // The feed streams before the department writes: every change is a
    // change record (one committed before the snapshot would be read by it).
    let (node, listen) = ready_node(&config).await;
    until_streaming(&node).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = keep_writing(department, stop.clone());
    let (node, mut skipped_logs) = kill_at_random(node, &config, &listen, stop).await;
    let rounds = writer.await.unwrap();
    let topic = format!("backflow.raw.{dataset}");
    let records =
        read_until_insert(broker.bootstrap(), &topic, &node, &admin, 1000 + rounds - 1).await;
    skipped_logs += node.stderr().matches(SKIPPED).count();
    let changes = each_once(&records, rounds);
    let share = format!("backflow.share.330106.{dataset}");
    let shared =
        read_until_insert(broker.bootstrap(), &share, &node, &admin, 1000 + rounds - 1).await;
    let share_changes = each_once(&shared, rounds);
    let (delivered, share_records) =
        audited_deliveries(broker.bootstrap(), &node, &admin, &auditor, &share).await;
    println!(
        "{rounds} department transactions, {changes} raw and {share_changes} share change records, {KILLS} kills; replays skipped after {skipped_logs} restarts; the audit trail counts {delivered} share records delivered, the topic holds {share_records}"
    );
    assert_eq!(
        delivered, share_records,
        "the audit trail's delivery records do not count the share topic's records"
    );
    assert!(
        skipped_logs > 0,
        "no restart met a replay: the kills proved nothing"
    );
    drop(node);
    backflow_e2e::drop_pg_database(&name).await.unwrap();
}

/// A node process stopped (SIGSTOP) while its feed runs is a zombie once a
/// second process takes the feed over: the second registers the feed's
/// transactional id, so when the first wakes up (SIGCONT) the brokers
/// refuse whatever it still had open or writes, and nothing it does shows
/// in the raw topic. The department's PostgreSQL ending the stopped
/// process's replication connection (as its wal_sender_timeout would after
/// a minute) lets the second take the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_process_that_wakes_after_another_took_its_feed_over_writes_nothing() {
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let (name, department, dataset, config) = department(&broker, &admin).await;
    let slot = format!("backflow_{}", name.replace('-', "_"));
    let control = backflow_e2e::pg_connect(&name).await.unwrap();
    let first = Node::start_with_config(&config, &[]).unwrap();
    first
        .wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = keep_writing(department, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    first.signal("STOP").unwrap();
    control
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
        ))
        .await
        .unwrap();
    let second = Node::start_with_config(&config, &[]).unwrap();
    second
        .wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    // The second publishes: the feed's transactions are its own now.
    let until = Instant::now() + Duration::from_secs(60);
    while !second.stderr().contains("feed started") {
        assert!(Instant::now() < until, "{}", second.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.signal("CONT").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let rounds = writer.await.unwrap();

    let topic = format!("backflow.raw.{dataset}");
    let records = read_until_insert(
        broker.bootstrap(),
        &topic,
        &second,
        &admin,
        1000 + rounds - 1,
    )
    .await;
    let changes = each_once(&records, rounds);
    let woke = first.stderr();
    let fenced = woke.contains("took it over");
    println!(
        "{rounds} department transactions, {changes} change records; the woken process {}",
        if fenced {
            "was refused by the brokers (fenced)"
        } else {
            "lost its replication connection before it wrote again"
        }
    );
    drop(first);
    drop(second);
    backflow_e2e::drop_pg_database(&name).await.unwrap();
}

/// The state `node` reports for `feed` (`RUNNING`, `STANDBY`, ...).
async fn feed_state(node: &Node, admin: &TestToken, feed: &str) -> String {
    let (_, list) = node
        .api("GET", "/api/feeds", Some(admin.token()), None)
        .await;
    list.as_array()
        .and_then(|l| l.iter().find(|f| f["name"] == feed))
        .and_then(|f| f["status"]["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// District 330106's share of `dataset`: its rows, every field.
fn share_toml(dataset: &str) -> String {
    format!(
        "\n[[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n"
    )
}

/// Two processes serve one node with one configuration (its PostgreSQL
/// feed and a share), each under its own `kafka.replica`: the feed runs in
/// the process holding its lease and stands by in the other. SIGKILL of the
/// one running it while the department keeps writing: the other takes the
/// feed over within 30 s (session timeout 6 s) from the committed position,
/// and the raw and share topics end with every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_moves_to_the_surviving_replica_within_30_s_losing_and_doubling_nothing() {
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let (name, department, dataset, config) = department(&broker, &admin).await;
    let config = format!("{config}{}", share_toml(&dataset));
    let as_replica = |r: &str| {
        config.replacen(
            "[kafka]\n",
            &format!("[kafka]\nreplica = \"{r}\"\nsession_timeout_ms = 6000\npartitions = 2\ndistributor_transactions = true\n"),
            1,
        )
    };
    let (a, _) = ready_node(&as_replica("a")).await;
    let (b, _) = ready_node(&as_replica("b")).await;
    let feed = name.replace('_', "-");
    let until = Instant::now() + Duration::from_secs(60);
    let (running, standby) = loop {
        let states = (
            feed_state(&a, &admin, &feed).await,
            feed_state(&b, &admin, &feed).await,
        );
        match (states.0.as_str(), states.1.as_str()) {
            ("RUNNING", "STANDBY") => break (a, b),
            ("STANDBY", "RUNNING") => break (b, a),
            (x, y) => assert!(
                Instant::now() < until,
                "not one RUNNING and one STANDBY: {x}, {y}\n{}\n-----\n{}",
                a.stderr(),
                b.stderr()
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = keep_writing(department, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.signal("KILL").unwrap();
    let killed = Instant::now();
    while feed_state(&standby, &admin, &feed).await != "RUNNING" {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the surviving replica did not take the feed over within 30 s\n{}",
            standby.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let rounds = writer.await.unwrap();
    let raw = format!("backflow.raw.{dataset}");
    let records = read_until_insert(
        broker.bootstrap(),
        &raw,
        &standby,
        &admin,
        1000 + rounds - 1,
    )
    .await;
    let changes = each_once(&records, rounds);
    let share = format!("backflow.share.330106.{dataset}");
    let shared = read_until_insert(
        broker.bootstrap(),
        &share,
        &standby,
        &admin,
        1000 + rounds - 1,
    )
    .await;
    let share_changes = each_once(&shared, rounds);
    println!(
        "the surviving replica ran the feed {took:?} after the SIGKILL of its owner; {rounds} department transactions, {changes} raw and {share_changes} share change records, none missing or twice"
    );
    drop(running);
    drop(standby);
    backflow_e2e::drop_pg_database(&name).await.unwrap();
}

/// A process joining a node (a pod added or restarted) does not take the
/// feeds of the one running them: a feed moves only when its holder is
/// gone. Replica "b" runs the feed; "a" joins, whose name sorts first (the
/// order in which Kafka's range assignor gives out a group's only
/// partition); the feed stays on "b" and "a" stands by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_leaves_a_running_feed_where_it_runs() {
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let (name, _department, _dataset, config) = department(&broker, &admin).await;
    let as_replica = |r: &str| {
        config.replacen(
            "[kafka]\n",
            &format!("[kafka]\nreplica = \"{r}\"\nsession_timeout_ms = 6000\n"),
            1,
        )
    };
    let feed = name.replace('_', "-");
    let (b, _) = ready_node(&as_replica("b")).await;
    let until = Instant::now() + Duration::from_secs(60);
    while feed_state(&b, &admin, &feed).await != "RUNNING" {
        assert!(Instant::now() < until, "{}", b.stderr());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (a, _) = ready_node(&as_replica("a")).await;
    let until = Instant::now() + Duration::from_secs(60);
    while feed_state(&a, &admin, &feed).await != "STANDBY" {
        assert!(Instant::now() < until, "{}", a.stderr());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Long enough for the group to have rebalanced with both members.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(15) {
        let states = (
            feed_state(&b, &admin, &feed).await,
            feed_state(&a, &admin, &feed).await,
        );
        assert_eq!(
            (states.0.as_str(), states.1.as_str()),
            ("RUNNING", "STANDBY"),
            "the feed moved to the joining replica\n{}\n-----\n{}",
            b.stderr(),
            a.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        b.stderr().matches("feed started").count(),
        1,
        "the feed restarted on its holder\n{}",
        b.stderr()
    );
    drop(a);
    drop(b);
    backflow_e2e::drop_pg_database(&name).await.unwrap();
}

/// Two processes of one node given the same `kafka.replica` (a copied
/// deployment): the second joins the feed's lease group under the name the
/// first holds it with, which fences the first. The first must not go on
/// running the feed beside the second (their feed transactions would fence
/// each other in turn) nor stand by in silence: its feed shows FAILED with
/// the setting to fix, and the second runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_under_the_same_replica_name_is_reported_not_run_twice() {
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let (name, _department, _dataset, config) = department(&broker, &admin).await;
    let config = config.replacen(
        "[kafka]\n",
        "[kafka]\nreplica = \"same\"\nsession_timeout_ms = 6000\n",
        1,
    );
    let feed = name.replace('_', "-");
    let (first, _) = ready_node(&config).await;
    let until = Instant::now() + Duration::from_secs(30);
    while feed_state(&first, &admin, &feed).await != "RUNNING" {
        assert!(
            Instant::now() < until,
            "the first process never ran the feed\n{}",
            first.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (second, _) = ready_node(&config).await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = first
            .api("GET", "/api/feeds", Some(admin.token()), None)
            .await;
        let status = list
            .as_array()
            .and_then(|l| l.iter().find(|f| f["name"] == feed))
            .map(|f| f["status"].clone())
            .unwrap_or_default();
        let second_state = feed_state(&second, &admin, &feed).await;
        if status["state"] == "FAILED" && second_state == "RUNNING" {
            let error = status["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("kafka.replica") && error.contains("\"same\""),
                "the fenced process does not name the setting: {error}"
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "not FAILED (fenced) and RUNNING after 30 s: {status} / {second_state}\n{}\n-----\n{}",
            first.stderr(),
            second.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(first);
    drop(second);
    backflow_e2e::drop_pg_database(&name).await.unwrap();
}

const KILLS: usize = 8;

/// A node on `config`, ready, on an address of its own.
pub(crate) async fn ready_node(config: &str) -> (Node, String) {
    let listen = free_local_addr();
    let node =
        Node::start_with_config(config, &[("BACKFLOW_HTTP__LISTEN", listen.as_str())]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    (node, listen)
}

/// Waits until the node's feed finished its initial snapshot and streams.
/// Readiness does not wait for it: on a loaded machine a department's
/// first transactions were committed before the snapshot began (and read
/// by it), and the kills then landed in snapshots taken again.
async fn until_streaming(node: &Node) {
    let until = Instant::now() + Duration::from_secs(60);
    while !node.stderr().contains("snapshot complete") {
        assert!(
            Instant::now() < until,
            "the feed never finished its snapshot\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills `node` with SIGKILL after a random 0.3-1.5 s and starts it again
/// on `config` and `listen`, [`KILLS`] times, then cancels `stop`; the last
/// node, ready, and how many of the killed ones' successors logged that
/// they skipped replayed transactions.
async fn kill_at_random(
    mut node: Node,
    config: &str,
    listen: &str,
    stop: tokio_util::sync::CancellationToken,
) -> (Node, usize) {
    let env = [("BACKFLOW_HTTP__LISTEN", listen)];
    let seed = backflow_e2e::test_seed("kill times");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut skipped_logs = 0;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        node.signal("KILL").unwrap();
        node.wait(Duration::from_secs(10)).unwrap();
        skipped_logs += node.stderr().matches(SKIPPED).count();
        // Shown when the test fails: where each killed run stood.
        let log = node.stderr();
        let said: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "snapshot",
                    "resum",
                    "feed started",
                    "position",
                    "feed stopped",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .collect();
        eprintln!("--- a killed run said:\n{}", said.join("\n"));
        node = Node::start_with_config(config, &env).unwrap();
    }
    stop.cancel();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    (node, skipped_logs)
}

/// What a restarted PostgreSQL feed logs when the slot replayed
/// transactions that were in Kafka already.
const SKIPPED: &str = "skipped replayed transactions that were already in Kafka";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_feed_killed_at_random_moments_writes_each_change_to_the_raw_topic_once() {
    use mysql_async::prelude::Queryable;
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let db = unique_name("bf_eo");
    let mut root = backflow_e2e::sinks::mariadb_connect(None).await.unwrap();
    root.query_drop(format!(
        "CREATE DATABASE {db}; CREATE TABLE {db}.people (id bigint PRIMARY KEY, name varchar(200) NOT NULL, region_code char(6) NOT NULL);"
    ))
    .await
    .unwrap();
    let values: Vec<String> = (1..=50)
        .map(|g| format!("({g}, '居民{g}', '330106')"))
        .collect();
    root.query_drop(format!(
        "INSERT INTO {db}.people VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();
    let dataset = format!("t{}.people", db[6..].replace('_', ""));
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"mysql\"\nname = \"{}\"\nuser = \"root\"\ndatabase = \"{db}\"\ntables = [{{ table = \"people\", dataset = \"{dataset}\" }}]\n{}",
        broker.bootstrap(),
        db.replace('_', "-"),
        admin.auth_toml(),
    );
    let (node, listen) = ready_node(&config).await;
    until_streaming(&node).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        let mut conn = backflow_e2e::sinks::mariadb_connect(Some(&db))
            .await
            .unwrap();
        async move {
            let mut round = 0;
            while !stop.is_cancelled() {
                let id = 1000 + round;
                conn.query_drop(format!(
                    "BEGIN; INSERT INTO people VALUES ({id}, '新{id}', '330106'); UPDATE people SET name = CONCAT(name, '+') WHERE id = {}; COMMIT;",
                    1 + round % 50
                ))
                .await
                .unwrap();
                round += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            round
        }
    });
    let (node, _) = kill_at_random(node, &config, &listen, stop).await;
    let rounds = writer.await.unwrap();
    let topic = format!("backflow.raw.{dataset}");
    let records =
        read_until_insert(broker.bootstrap(), &topic, &node, &admin, 1000 + rounds - 1).await;
    let changes = each_once(&records, rounds);
    println!("{rounds} department transactions, {changes} change records, {KILLS} kills");
    drop(node);
    root.query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
}

/// The share records the audit trail says were delivered to `share`, and
/// the records the topic holds (tombstones counted as the distributor
/// counts them: not).
pub(crate) async fn audited_deliveries(
    bootstrap: &str,
    node: &Node,
    admin: &TestToken,
    auditor: &TestToken,
    share: &str,
) -> (u64, u64) {
    let mut delivered = 0;
    let mut from = 0;
    loop {
        let (status, page) = node
            .api(
                "GET",
                &format!("/api/audit?from={from}&limit=1000"),
                Some(auditor.token()),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let records = page["records"].as_array().expect("records").clone();
        let Some(last) = records.last() else { break };
        from = last["offset"].as_i64().expect("offset") + 1;
        delivered += records
            .iter()
            .filter(|e| e["kind"] == "delivery" && e["details"]["share_topic"] == share)
            .map(|e| e["details"]["records"].as_u64().unwrap_or(0))
            .sum::<u64>();
    }
    let records = backflow_e2e::share_topic::read(bootstrap, share, &node.url, admin.token())
        .await
        .unwrap()
        .iter()
        .filter(|r| r.value.is_some())
        .count() as u64;
    (delivered, records)
}

/// The raw topic, read `read_committed` from its beginning, once it holds
/// the insert of `last`.
pub(crate) async fn read_until_insert(
    bootstrap: &str,
    topic: &str,
    node: &Node,
    admin: &TestToken,
    last: i64,
) -> Vec<backflow_e2e::share_topic::Decoded> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let records = backflow_e2e::share_topic::read(bootstrap, topic, &node.url, admin.token())
            .await
            .unwrap_or_default();
        let has_last = |records: &[backflow_e2e::share_topic::Decoded]| {
            records
                .iter()
                .any(|r| r.after().is_some_and(|a| a["id"] == last))
        };
        if has_last(&records) {
            // Once more: the read took each partition's end at its own
            // moment, so on several partitions a transaction committed in
            // between may show in one and not yet in another. Everything
            // is committed by now. (A read that came back without the last
            // insert, seen once in about 30 runs, is read again.)
            let again = backflow_e2e::share_topic::read(bootstrap, topic, &node.url, admin.token())
                .await
                .unwrap();
            if has_last(&again) {
                return again;
            }
            eprintln!(
                "a second read of {topic} returned {} records without insert {last}; reading again",
                again.len()
            );
        }
        assert!(
            Instant::now() < until,
            "insert {last} never reached {topic}\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How often each change (source position, row id, operation) is among
/// `records`; snapshot reads and tombstones left out.
pub(crate) fn change_counts(
    records: &[backflow_e2e::share_topic::Decoded],
) -> BTreeMap<(String, i64, String), usize> {
    let mut changes: BTreeMap<(String, i64, String), usize> = BTreeMap::new();
    for r in records {
        let Some(v) = &r.value else { continue };
        let op = v["op"].as_str().unwrap_or_default().to_owned();
        if op == "r" {
            continue;
        }
        let id = r.key["id"].as_i64().expect("integer key");
        let position = v["source"]["position"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *changes.entry((position, id, op)).or_default() += 1;
    }
    changes
}

/// Checks that the raw topic holds each of `rounds` department
/// transactions' changes once: every insert, and no (source position, row,
/// operation) twice. Returns the number of change records.
fn each_once(records: &[backflow_e2e::share_topic::Decoded], rounds: i64) -> usize {
    let changes = change_counts(records);
    let inserts: std::collections::BTreeSet<i64> = changes
        .keys()
        .filter(|(_, _, op)| op == "c")
        .map(|(_, id, _)| *id)
        .collect();
    let doubled: Vec<_> = changes.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<i64> = (0..rounds)
        .map(|r| 1000 + r)
        .filter(|id| !inserts.contains(id))
        .collect();
    // How the missing rows are in the topic, if at all (e.g. read by a
    // snapshot taken again after a kill).
    let seen_as: Vec<(i64, i64, String)> = records
        .iter()
        .filter_map(|r| {
            let id = r.key["id"].as_i64()?;
            let op = r.value.as_ref()?["op"].as_str()?.to_owned();
            missing.contains(&id).then_some((id, r.at.1, op))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "inserts missing: {missing:?}; these rows' records (id, offset, op): {seen_as:?}; {} records in all",
        records.len()
    );
    assert!(
        doubled.is_empty(),
        "{} changes written more than once, e.g. {:?}",
        doubled.len(),
        doubled.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        changes.len() as i64,
        2 * rounds,
        "one insert and one update per department transaction"
    );
    changes.values().sum()
}

/// A department database of 50 residents, its feed's node configuration
/// (with `admin` allowed) and the dataset.
async fn department(
    broker: &TestBroker,
    admin: &TestToken,
) -> (String, tokio_postgres::Client, String, String) {
    let name = unique_name("bf_eo");
    let db = create_pg_database(&name).await.unwrap();
    db.batch_execute(
        "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
         INSERT INTO people SELECT g, '居民' || g, '330106' FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let dataset = format!("t{}.people", name[6..].replace('_', ""));
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{name}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n{}",
        broker.bootstrap(),
        name.replace('_', "-"),
        admin.auth_toml(),
    );
    (name, db, dataset, config)
}

/// The department commits a transaction every 10 ms until `stop`; the
/// number it committed.
fn keep_writing(
    db: tokio_postgres::Client,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut round = 0;
        while !stop.is_cancelled() {
            change(&db, round).await;
            round += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        round
    })
}
