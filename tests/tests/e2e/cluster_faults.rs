//! Faults on a real three-broker Apache Kafka cluster (KRaft, three
//! replicas, two in sync): city 330100 runs its department's PostgreSQL
//! feed and shares the table with district 330106, whose `backflow
//! subscribe` applies it to its own SQLite database. While the department
//! keeps changing rows, a broker is killed with SIGKILL: the leader of the
//! raw topic's partition in one test, the leader of the share topic's
//! partition (a broker holding its replicas) while the subscriber applies
//! in the other. The district must end equal to the department's slice,
//! with nothing lost and no row twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow_e2e::cluster::TestCluster;
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{pg_connect, unique_name, Node, TestToken};

const READ: [(&str, Kind); 2] = [("name", Kind::Text), ("region_code", Kind::Text)];

struct Setup {
    cluster: TestCluster,
    source: SinkDb,
    sink: SinkDb,
    node: Node,
    sub: Node,
    raw: String,
    share: String,
    _reader: TestToken,
}

/// The department's PostgreSQL database: table `people`, 100 residents
/// of districts 330106 and (every fourth) 330108.
pub(crate) async fn department() -> SinkDb {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL);
             INSERT INTO people SELECT g, '居民' || g, CASE WHEN g % 4 = 0 THEN '330108' ELSE '330106' END
             FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    source
}

/// The department's rows of `district`.
async fn slice(source: &SinkDb, district: &str) -> BTreeMap<i64, Vec<Option<String>>> {
    let all = source.rows("people", "id", &READ).await.unwrap().unwrap();
    all.into_iter()
        .filter(|(_, v)| v[1].as_deref() == Some(district))
        .collect()
}

/// Waits up to `deadline` until `sink` (SQLite) holds exactly the
/// department's rows of `district`, and no id twice; `logs` tells what
/// the processes said when it does not.
pub(crate) async fn until_equal(
    source: &SinkDb,
    sink: &SinkDb,
    district: &str,
    deadline: Duration,
    logs: &dyn Fn() -> String,
) {
    let until = Instant::now() + deadline;
    loop {
        let want = slice(source, district).await;
        let got = sink
            .rows("people", "id", &READ)
            .await
            .unwrap()
            .unwrap_or_default();
        if got == want {
            let db = rusqlite::Connection::open(&sink.path).unwrap();
            let (rows, ids): (i64, i64) = db
                .query_row("SELECT COUNT(*), COUNT(DISTINCT id) FROM people", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            assert_eq!(rows, ids, "a row is in district {district} twice");
            return;
        }
        assert!(
            Instant::now() < until,
            "district {district} never equalled its slice of the department: {} rows wanted, {} held, {} missing, e.g. {:?}\n{}",
            want.len(),
            got.len(),
            want.keys().filter(|k| !got.contains_key(k)).count(),
            want.iter().find(|(k, v)| got.get(k) != Some(v)),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The cluster, the node with its feed and share (three replicas), and
/// the district subscriber, caught up with the department's 100 rows.
async fn setup() -> Setup {
    let source = department().await;
    let cluster = TestCluster::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let reader = TestToken::new("subscriber:330106");
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\nreplication_factor = 3\n{}\n\
         [[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n",
        cluster.bootstrap(),
        reader.auth_toml(),
        source.name.replace('_', "-"),
        source.name,
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    let share = format!("backflow.share.330106.{dataset}");
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let sub = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"{share}\", table = \"people\" }}]\n",
            unique_name("d330106"),
            cluster.bootstrap(),
            node.url,
            reader.upstream_setting(),
            sink.sink_toml(),
        ),
        &[],
    )
    .unwrap();
    let s = Setup {
        cluster,
        source,
        sink,
        node,
        sub,
        raw: format!("backflow.raw.{dataset}"),
        share,
        _reader: reader,
    };
    s.until_equal(Duration::from_secs(90)).await;
    s
}

impl Setup {
    /// Waits until the district holds exactly the department's slice.
    async fn until_equal(&self, deadline: Duration) {
        until_equal(&self.source, &self.sink, "330106", deadline, &|| {
            format!(
                "node:\n{}\nsubscriber:\n{}",
                self.node.stderr(),
                self.sub.stderr()
            )
        })
        .await;
    }

    /// Changes rows in rounds from a task of its own (each round: a new
    /// resident, a rename, a move out of the district, a removal), so the
    /// department goes on while the test kills brokers.
    fn department(&self, rounds: std::ops::Range<i64>) -> tokio::task::JoinHandle<()> {
        let db = self.source.name.clone();
        tokio::spawn(async move {
            let pg = pg_connect(&db).await.unwrap();
            for r in rounds {
                pg.batch_execute(&format!(
                    "INSERT INTO people VALUES ({new}, '新{new}', '330106');
                     UPDATE people SET name = name || '+' WHERE id = {upd};
                     UPDATE people SET region_code = '330108' WHERE id = {moved};
                     DELETE FROM people WHERE id = {del};",
                    new = 1000 + r,
                    upd = 1 + r % 50,
                    moved = 51 + r % 20,
                    del = 1000 + r - 5,
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_topic_leader_killed_mid_stream_loses_nothing() {
    let mut s = setup().await;
    let (leader, replicas) = s.cluster.placement(&s.raw, 0);
    assert_eq!(replicas.len(), 3, "the raw topic has three replicas");
    let changes = s.department(0..120);
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.cluster.kill(leader);
    s.cluster.new_leader(&s.raw, 0, leader);
    changes.await.unwrap();
    s.until_equal(Duration::from_secs(120)).await;
    // The killed broker comes back and catches up; the stream goes on.
    s.cluster.restart(leader);
    s.department(120..160).await.unwrap();
    s.until_equal(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_replica_killed_while_the_district_applies_loses_nothing() {
    let mut s = setup().await;
    let (leader, replicas) = s.cluster.placement(&s.share, 0);
    assert_eq!(replicas.len(), 3, "the share topic has three replicas");
    let changes = s.department(0..120);
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.cluster.kill(leader);
    let new_leader = s.cluster.new_leader(&s.share, 0, leader);
    changes.await.unwrap();
    s.until_equal(Duration::from_secs(120)).await;
    // A second broker may not go while the first is down (two in sync are
    // required): it comes back, then the new leader is killed too.
    s.cluster.restart(leader);
    let changes = s.department(120..200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.cluster.kill(new_leader);
    changes.await.unwrap();
    s.until_equal(Duration::from_secs(120)).await;
}

/// The node's metadata client (how far the catalog, the registry and the
/// readers must read) asks a partition's leader for its end. After that
/// leader is killed it must ask the new one within seconds: librdkafka
/// keeps a topic's leader until its cached metadata expires (15 min by
/// default) when nothing else refreshes it, and meanwhile every schema
/// registration of the node failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_topic_is_read_from_its_new_leader_after_a_broker_dies() {
    use backflow::kafka::{KafkaSettings, OutgoingRecord, Publisher, TopicAdmin, TopicSpec};
    let mut cluster = TestCluster::start();
    let settings = KafkaSettings::new(cluster.bootstrap());
    let topic = unique_name("backflow.test.leader");
    TopicAdmin::new(&settings)
        .unwrap()
        .ensure(&[TopicSpec::compacted(&topic, 1, 3)])
        .await
        .unwrap();
    let publisher = Publisher::new(&settings, None).unwrap();
    publisher
        .send(OutgoingRecord {
            topic: &topic,
            key: Some(b"k"),
            payload: Some(b"v"),
            headers: &[],
        })
        .await
        .unwrap();
    let marks = backflow::kafka::Watermarks::new(&settings).unwrap();
    assert_eq!(marks.high(&topic, 0).await.unwrap(), 1);
    let (leader, _) = cluster.placement(&topic, 0);
    cluster.kill(leader);
    cluster.new_leader(&topic, 0, leader);
    let moved = Instant::now();
    let mut failures = 0;
    loop {
        match marks.high(&topic, 0).await {
            Ok(high) => {
                assert_eq!(high, 1);
                break;
            }
            Err(e) => {
                failures += 1;
                assert!(
                    moved.elapsed() < Duration::from_secs(30),
                    "the end of {topic} still unknown 30 s after its leader moved ({failures} failures): {e}"
                );
            }
        }
    }
    println!(
        "the end read from the new leader {:?} after it took over ({failures} failed asks)",
        moved.elapsed()
    );
}
