//! Chaos on a city node served by two processes: the department's
//! PostgreSQL feed changes rows without pause (new residents, renames,
//! moves between districts, removals), two processes (`kafka.replica` a
//! and b, distributor transactions on) serve city 330100 on a
//! three-broker Apache Kafka cluster, and districts 330106 and 330108 each
//! apply their share to a SQLite database of their own. A random replica
//! is killed with SIGKILL and started again 20 times, a few seconds
//! apart, and one broker is killed once in between.
//!
//! At the end each district equals its slice of the department row by row;
//! the raw topic and both share topics, read `read_committed` from their
//! beginning, hold no change twice (by source position, key and
//! operation) and every new resident's insert; the audit trail verifies
//! and its delivery records count exactly what each share topic holds.
//!
//! The kill times and victims come from a seed, printed;
//! `BACKFLOW_TEST_SEED` replays them.

use std::time::Duration;

use backflow_e2e::cluster::TestCluster;
use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{audit_verify, free_local_addr, pg_connect, unique_name, Node, TestToken};

use crate::cluster_faults::until_equal;
use crate::exactly_once::{audited_deliveries, change_counts, read_until_insert};

const KILLS: usize = 20;
const DISTRICTS: [&str; 2] = ["330106", "330108"];
/// How long the districts may take to equal their slices.
const SETTLE: Duration = Duration::from_secs(180);

/// A replica of the city node: its process and the address it listens on
/// (kept across restarts).
struct Replica {
    node: Node,
    listen: String,
    config: String,
    /// The logs of its killed runs, oldest first.
    killed_runs: Vec<String>,
}

impl Replica {
    fn start(config: String) -> Self {
        let listen = free_local_addr();
        let node = Node::start_with_config(&config, &[("BACKFLOW_HTTP__LISTEN", listen.as_str())])
            .unwrap();
        Self {
            node,
            listen,
            config,
            killed_runs: Vec::new(),
        }
    }

    fn kill_and_restart(&mut self) {
        self.node.signal("KILL").unwrap();
        self.node.wait(Duration::from_secs(10)).unwrap();
        self.killed_runs.push(self.node.stderr());
        self.node = Node::start_with_config(
            &self.config,
            &[("BACKFLOW_HTTP__LISTEN", self.listen.as_str())],
        )
        .unwrap();
    }
}

/// Checks that no (source position, row, operation) is in `records` twice
/// and that each id of `inserts` was inserted; returns the number of
/// change records.
fn no_change_twice(
    topic: &str,
    records: &[backflow_e2e::share_topic::Decoded],
    inserts: std::ops::Range<i64>,
) -> usize {
    let changes = change_counts(records);
    let doubled: Vec<_> = changes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{topic}: {} changes written more than once, e.g. {:?}",
        doubled.len(),
        doubled.iter().take(5).collect::<Vec<_>>()
    );
    let missing: Vec<i64> = inserts
        .filter(|id| !changes.keys().any(|(_, k, op)| k == id && op == "c"))
        .collect();
    assert!(missing.is_empty(), "{topic}: inserts missing: {missing:?}");
    changes.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_killed_20_times_and_a_broker_once_lose_and_double_nothing() {
    let source = crate::cluster_faults::department().await;
    let mut cluster = TestCluster::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let admin = TestToken::new("admin");
    let auditor = TestToken::new("auditor");
    let readers: Vec<TestToken> = DISTRICTS
        .iter()
        .map(|d| TestToken::new(&format!("subscriber:{d}")))
        .collect();
    let mut config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\nreplication_factor = 3\npartitions = 2\nsession_timeout_ms = 6000\ndistributor_transactions = true\n{}{}\n\
         [[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n",
        cluster.bootstrap(),
        admin.auth_toml(),
        auditor.auth_toml(),
        source.name.replace('_', "-"),
        source.name,
    );
    for (district, reader) in DISTRICTS.iter().zip(&readers) {
        config.push_str(&format!(
            "{}\n[[shares]]\nsubscriber = \"{district}\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n",
            reader.auth_toml()
        ));
    }
    let as_replica =
        |r: &str| config.replacen("[kafka]\n", &format!("[kafka]\nreplica = \"{r}\"\n"), 1);
    let mut replicas = [
        Replica::start(as_replica("a")),
        Replica::start(as_replica("b")),
    ];
    for r in &replicas {
        r.node
            .wait_for_status("/readyz", 200, Duration::from_secs(90))
            .await
            .unwrap();
    }
    // Each district asks its own replica for schemas.
    let mut sinks = Vec::new();
    let mut subs = Vec::new();
    for (i, (district, reader)) in DISTRICTS.iter().zip(&readers).enumerate() {
        let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
        let share = format!("backflow.share.{district}.{dataset}");
        subs.push(
            Node::subscribe_with_config(
                &format!(
                    "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"{share}\", table = \"people\" }}]\n",
                    unique_name(&format!("d{district}")),
                    cluster.bootstrap(),
                    replicas[i].node.url,
                    reader.upstream_setting(),
                    sink.sink_toml(),
                ),
                &[],
            )
            .unwrap(),
        );
        sinks.push(sink);
    }
    let logs = |replicas: &[Replica; 2], subs: &[Node]| {
        format!(
            "replica a:\n{}\nreplica b:\n{}\ndistrict 330106:\n{}\ndistrict 330108:\n{}",
            replicas[0].node.stderr(),
            replicas[1].node.stderr(),
            subs[0].stderr(),
            subs[1].stderr()
        )
    };
    for (district, sink) in DISTRICTS.iter().zip(&sinks) {
        until_equal(&source, sink, district, SETTLE, &|| logs(&replicas, &subs)).await;
    }

    // The department changes rows without pause while the chaos runs.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let stop = stop.clone();
        let pg = pg_connect(&source.name).await.unwrap();
        async move {
            let mut r = 0;
            while !stop.is_cancelled() {
                pg.batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO people VALUES ({new}, '新{new}', '330106');
                     UPDATE people SET name = name || '+' WHERE id = {upd};
                     UPDATE people SET region_code = CASE region_code WHEN '330106' THEN '330108' ELSE '330106' END WHERE id = {moved};
                     DELETE FROM people WHERE id = {del};
                     COMMIT;",
                    new = 1000 + r,
                    upd = 1 + r % 50,
                    moved = 51 + r % 20,
                    del = 1000 + r - 5,
                ))
                .await
                .unwrap();
                r += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r
        }
    });
    let seed = backflow_e2e::test_seed("kill times and victims");
    let mut rng = fastrand::Rng::with_seed(seed);
    let broker_at = rng.usize(5..15);
    let mut broker_down = None;
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(1500..4000))).await;
        replicas[rng.usize(0..2)].kill_and_restart();
        if kill == broker_at {
            let raw = format!("backflow.raw.{dataset}");
            let (leader, _) = cluster.placement(&raw, 0);
            cluster.kill(leader);
            broker_down = Some(leader);
        } else if let Some(id) = broker_down.filter(|_| kill == broker_at + 3) {
            cluster.restart(id);
            broker_down = None;
        }
    }
    if let Some(id) = broker_down {
        cluster.restart(id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let rounds = writer.await.unwrap();
    for r in &replicas {
        r.node
            .wait_for_status("/readyz", 200, Duration::from_secs(90))
            .await
            .unwrap();
    }
    for (district, sink) in DISTRICTS.iter().zip(&sinks) {
        until_equal(&source, sink, district, SETTLE, &|| logs(&replicas, &subs)).await;
    }

    let node = &replicas[0].node;
    let last = 1000 + rounds - 1;
    let raw = format!("backflow.raw.{dataset}");
    let records = read_until_insert(cluster.bootstrap(), &raw, node, &admin, last).await;
    let raw_changes = no_change_twice(&raw, &records, 1000..1000 + rounds);
    let mut counts = Vec::new();
    for district in DISTRICTS {
        let share = format!("backflow.share.{district}.{dataset}");
        let records =
            backflow_e2e::share_topic::read(cluster.bootstrap(), &share, &node.url, admin.token())
                .await
                .unwrap();
        // Every new resident lives in 330106 when inserted.
        let inserted = if district == "330106" {
            1000..1000 + rounds
        } else {
            0..0
        };
        let changes = no_change_twice(&share, &records, inserted);
        let (delivered, held) =
            audited_deliveries(cluster.bootstrap(), node, &admin, &auditor, &share).await;
        assert_eq!(
            delivered, held,
            "{share}: the audit trail's delivery records do not count the topic's records"
        );
        counts.push((district, changes, held));
    }
    let (code, out) = audit_verify(cluster.bootstrap(), &[]);
    if code != Some(0) {
        println!("{}", audit_story(&replicas, node, &auditor, &out).await);
    }
    assert_eq!(code, Some(0), "the audit trail does not verify:\n{out}");
    println!(
        "{rounds} department transactions, {KILLS} replica kills and one broker kill: {raw_changes} raw change records; per district (changes, records held and audited): {counts:?}; none twice"
    );
}

/// What a failed audit check needs to be understood: the records around
/// each offset `verify` names, and what each run of each replica said about
/// its audit chain and its transactions.
async fn audit_story(
    replicas: &[Replica; 2],
    node: &Node,
    auditor: &TestToken,
    verify: &str,
) -> String {
    let mut story = String::new();
    let offsets: Vec<i64> = verify
        .lines()
        .filter_map(|l| l.strip_prefix("PROBLEM offset "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    if let Some(first) = offsets.iter().min() {
        let from = (first - 12).max(0);
        let (_, page) = node
            .api(
                "GET",
                &format!("/api/audit?from={from}&limit=40"),
                Some(auditor.token()),
                None,
            )
            .await;
        for r in page["records"].as_array().into_iter().flatten() {
            story.push_str(&format!(
                "offset {} node {} seq {} kind {} ts_ms {} details {}\n",
                r["offset"], r["node"], r["seq"], r["kind"], r["ts_ms"], r["details"]
            ));
        }
    }
    let told = |line: &&str| {
        [
            "audit",
            "transaction",
            "fenced",
            "ERROR",
            "WARN",
            "partitions",
            "distributor",
        ]
        .iter()
        .any(|w| line.contains(w))
    };
    for (name, replica) in ["a", "b"].iter().zip(replicas) {
        let mut runs = replica.killed_runs.clone();
        runs.push(replica.node.stderr());
        for (i, run) in runs.iter().enumerate() {
            story.push_str(&format!("--- replica {name}, run {i}\n"));
            for line in run.lines().filter(told) {
                story.push_str(line);
                story.push('\n');
            }
        }
    }
    story
}
