//! Exactly once into the raw topic: a node whose PostgreSQL feed is killed
//! with SIGKILL at random moments while the department keeps committing
//! transactions. Read `read_committed` from its beginning, the raw topic
//! then holds every change the department made, each once: no insert is
//! missing or doubled, and no (transaction, row) pair appears twice.
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
async fn a_feed_killed_at_random_moments_writes_each_change_to_the_raw_topic_once() {
    let name = unique_name("bf_eo");
    let department = create_pg_database(&name).await.unwrap();
    department
        .batch_execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
             INSERT INTO people SELECT g, '居民' || g, '330106' FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let dataset = format!("t{}.people", name[6..].replace('_', ""));
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{name}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n{}",
        broker.bootstrap(),
        name.replace('_', "-"),
        admin.auth_toml(),
    );
    let listen = free_local_addr();
    let env = [("BACKFLOW_HTTP__LISTEN", listen.as_str())];
    let mut node = Node::start_with_config(&config, &env).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    let seed = std::env::var("BACKFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("kill times from seed {seed} (BACKFLOW_TEST_SEED={seed} replays them)");
    let mut rng = fastrand::Rng::with_seed(seed);
    // The department commits a transaction every 10 ms through every kill.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut round = 0;
            while !stop.is_cancelled() {
                change(&department, round).await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            round
        }
    });
    let mut skipped_logs = 0;
    const KILLS: usize = 8;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        node.signal("KILL").unwrap();
        node.wait(Duration::from_secs(10)).unwrap();
        skipped_logs += node
            .stderr()
            .matches("skipped replayed transactions that were already in Kafka")
            .count();
        node = Node::start_with_config(&config, &env).unwrap();
    }
    stop.cancel();
    let rounds = writer.await.unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();

    // Read the raw topic until the last insert is there.
    let topic = format!("backflow.raw.{dataset}");
    let last = 1000 + rounds - 1;
    let until = Instant::now() + Duration::from_secs(120);
    let records = loop {
        let records =
            backflow_e2e::share_topic::read(broker.bootstrap(), &topic, &node.url, admin.token())
                .await
                .unwrap_or_default();
        if records
            .iter()
            .any(|r| r.after().is_some_and(|a| a["id"] == last))
        {
            break records;
        }
        assert!(
            Instant::now() < until,
            "insert {last} never reached {topic}\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    skipped_logs += node
        .stderr()
        .matches("skipped replayed transactions that were already in Kafka")
        .count();

    // Each change once: by (transaction, row, operation) over the stream,
    // and every insert exactly once.
    let mut changes: BTreeMap<(String, i64, String), usize> = BTreeMap::new();
    let mut inserts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &records {
        let Some(v) = &r.value else { continue };
        let op = v["op"].as_str().unwrap_or_default().to_owned();
        if op == "r" {
            continue;
        }
        let id = r.key["id"].as_i64().expect("integer key");
        let txid = v["source"]["txid"].as_str().unwrap_or_default().to_owned();
        *changes.entry((txid, id, op.clone())).or_default() += 1;
        if op == "c" {
            *inserts.entry(id).or_default() += 1;
        }
    }
    let doubled: Vec<_> = changes.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<i64> = (0..rounds)
        .map(|r| 1000 + r)
        .filter(|id| !inserts.contains_key(id))
        .collect();
    println!(
        "{rounds} department transactions, {} change records, {KILLS} kills; replays skipped after {skipped_logs} restarts",
        changes.values().sum::<usize>()
    );
    assert!(missing.is_empty(), "inserts missing: {missing:?}");
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
    drop(node);
    backflow_e2e::drop_pg_database(&name).await.unwrap();
}
