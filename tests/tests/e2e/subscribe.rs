//! `backflow subscribe` end to end: a department's PostgreSQL table feeds a
//! raw topic through a real node; three subscriber processes apply it to
//! PostgreSQL, MariaDB and SQLite. Each sink table must equal the source,
//! also after the subscribers are killed with SIGKILL in the middle of a
//! stream of changes; a poison record goes to the dead-letter topic with its
//! reason and the records after it are applied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow::kafka::{Consumer, KafkaSettings, OutgoingRecord, Publisher, Watermarks};
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{pg_connect, unique_name, Node, TestBroker, TestToken};

const READ: [(&str, Kind); 8] = [
    ("name", Kind::Text),
    ("amount", Kind::Decimal),
    ("at", Kind::TimestampTz),
    ("born", Kind::Date),
    ("flag", Kind::Bool),
    ("data", Kind::Bytes),
    ("note", Kind::Text),
    ("score", Kind::Double),
];

pub(crate) type Table = BTreeMap<i64, Vec<Option<String>>>;

struct Pipeline {
    broker: TestBroker,
    source: SinkDb,
    dataset: String,
    node: Node,
    /// The subscribers' token for the node's registry.
    reader: TestToken,
}

impl Pipeline {
    fn topic(&self) -> String {
        format!("backflow.raw.{}", self.dataset)
    }

    async fn source_rows(&self) -> Table {
        self.source
            .rows("people", "id", &READ)
            .await
            .unwrap()
            .expect("source table")
    }

    fn subscriber_config(&self, name: &str, sink: &SinkDb) -> String {
        format!(
            "[[subscriptions]]\nname = \"{name}\"\nbatch_size = 500\nflush_interval_ms = 100\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"{}\", table = \"people\" }}]\n",
            self.broker.bootstrap(),
            self.node.url,
            self.reader.upstream_setting(),
            sink.sink_toml(),
            self.topic()
        )
    }
}

async fn pipeline(rows: i64) -> Pipeline {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    let client = pg_connect(&source.name).await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE people (
                id bigint PRIMARY KEY,
                name varchar(40) NOT NULL,
                amount numeric(20,6),
                at timestamptz,
                born date,
                flag boolean,
                data bytea,
                note text,
                score double precision);
             INSERT INTO people
             SELECT g, '居民' || g || ' é😀', g * 1000.000007, TIMESTAMPTZ '2023-11-14 22:13:20.123456+00' + g * interval '1.000001 second',
                    DATE '1997-05-19' + g, g % 2 = 0, decode(lpad(to_hex(g % 256), 2, '0') || '00ff', 'hex'),
                    CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || g END, g + 0.25
             FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let feed = source.name.replace('_', "-");
    let reader = TestToken::new("subscriber:330106");
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n{}",
        broker.bootstrap(),
        source.name,
        reader.auth_toml(),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    Pipeline {
        broker,
        source,
        dataset,
        node,
        reader,
    }
}

/// Waits until the sink table `people` equals `want`.
async fn until_equal(sink: &SinkDb, want: &Table, deadline: Duration, subscriber: &Node) {
    until_table_equal(sink, "people", &READ, want, deadline, subscriber).await;
}

/// Waits until the sink's `table` (keyed by `id`), read as `columns`,
/// equals `want`; fails with what differs and the subscriber's log.
pub(crate) async fn until_table_equal(
    sink: &SinkDb,
    table: &str,
    columns: &[(&str, Kind)],
    want: &Table,
    deadline: Duration,
    subscriber: &Node,
) {
    let until = Instant::now() + deadline;
    loop {
        let got = sink.rows(table, "id", columns).await.unwrap();
        if got.as_ref() == Some(want) {
            return;
        }
        if Instant::now() > until {
            let got = got.unwrap_or_default();
            let missing = want.keys().filter(|k| !got.contains_key(k)).count();
            let extra = got.keys().filter(|k| !want.contains_key(k)).count();
            let differ: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
                .take(2)
                .map(|(k, v)| (k, v, &got[k]))
                .collect();
            panic!(
                "{:?} sink never held the wanted rows: {missing} rows missing, {extra} extra, differing e.g. {differ:?}\nsubscriber log:\n{}",
                sink.backend,
                subscriber.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Source changes in many small transactions: updates, deletes, inserts,
/// one primary-key change (a few hundred records).
async fn churn(p: &Pipeline, round: i64) {
    let client = pg_connect(&p.source.name).await.unwrap();
    for i in 0..40 {
        let base = round * 1000 + i * 10;
        client
            .batch_execute(&format!(
                "BEGIN;
                 UPDATE people SET name = 'r{round}-' || id, amount = amount + 0.000001, note = NULL WHERE id % 200 = {i};
                 DELETE FROM people WHERE id = {del};
                 INSERT INTO people (id, name, amount, at, flag) VALUES ({ins}, '新{ins}', 1.5, now(), true)
                   ON CONFLICT (id) DO NOTHING;
                 COMMIT;",
                del = 3 + i * 7 + round,
                ins = 100_000 + base,
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute(&format!(
            "UPDATE people SET id = id + 500000 WHERE id = {}",
            11 + round
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_three_databases_equal_the_source_across_kill_9() {
    let p = pipeline(2_000).await;
    let sinks = [
        SinkDb::create(Backend::Postgres).await.unwrap(),
        SinkDb::create(Backend::Mariadb).await.unwrap(),
        SinkDb::create(Backend::Sqlite).await.unwrap(),
    ];
    let names: Vec<String> = sinks
        .iter()
        .map(|s| unique_name(&format!("{:?}", s.backend).to_lowercase()))
        .collect();
    let configs: Vec<String> = sinks
        .iter()
        .zip(&names)
        .map(|(s, n)| p.subscriber_config(n, s))
        .collect();
    let mut subscribers: Vec<Node> = configs
        .iter()
        .map(|c| Node::subscribe_with_config(c, &[]).unwrap())
        .collect();

    // Snapshot, then changes while the subscribers run.
    churn(&p, 1).await;
    let want = p.source_rows().await;
    for (sink, sub) in sinks.iter().zip(&subscribers) {
        until_equal(sink, &want, Duration::from_secs(120), sub).await;
    }
    let (status, metrics) = subscribers[0].get_ops("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!(
            "backflow_subscribe_rows_total{{outcome=\"upsert\",subscription=\"{}\"}}",
            names[0]
        )),
        "{metrics}"
    );
    let (status, _) = subscribers[0].get("/readyz").await.unwrap();
    assert_eq!(status, 200);

    // SIGKILL every subscriber in the middle of a stream of changes, then
    // restart them: no change lost, none applied twice in effect.
    let churning = {
        let source = p.source.name.clone();
        tokio::spawn(async move {
            let client = pg_connect(&source).await.unwrap();
            for i in 0..100 {
                client
                    .batch_execute(&format!(
                        "UPDATE people SET score = score + 1, name = 'k{i}-' || id WHERE id % 400 = {}",
                        i % 400
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    for s in &mut subscribers {
        s.signal("KILL").unwrap();
        s.wait(Duration::from_secs(10)).unwrap();
    }
    churning.await.unwrap();
    churn(&p, 2).await;
    let mut subscribers: Vec<Node> = configs
        .iter()
        .map(|c| Node::subscribe_with_config(c, &[]).unwrap())
        .collect();
    let want = p.source_rows().await;
    for (sink, sub) in sinks.iter().zip(&subscribers) {
        until_equal(sink, &want, Duration::from_secs(120), sub).await;
    }

    // Offsets stored with the rows: each partition's last applied offset is
    // its last record once caught up.
    let settings = KafkaSettings::new(p.broker.bootstrap());
    let partitions = backflow::kafka::partition_count(&settings, &p.topic())
        .await
        .unwrap();
    // The raw topic is written in transactions: a partition's last offset
    // may be a commit marker, so its last record is read, not assumed.
    let watermarks = Watermarks::new(&settings).unwrap();
    let mut lasts = BTreeMap::new();
    for part in 0..partitions as i32 {
        let high = watermarks.high(&p.topic(), part).await.unwrap();
        if high == 0 {
            continue;
        }
        let consumer = backflow::kafka::Consumer::replay(&settings, &p.topic(), part).unwrap();
        let mut ends = std::collections::HashMap::from([(part, high)]);
        let mut last = None;
        while let Some(r) = consumer.recv_to(&mut ends).await.unwrap() {
            last = Some(r.offset);
        }
        if let Some(last) = last {
            lasts.insert(part, last);
        }
    }
    for (sink, name) in sinks.iter().zip(&names) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stored = sink.offsets().await.unwrap();
            let ok = lasts
                .iter()
                .all(|(part, last)| stored.get(&(name.clone(), p.topic(), *part)) == Some(last));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: offsets {stored:?}, last records {lasts:?}",
                sink.backend
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A poison record: the dead-letter topic gets it with the reason, and
    // the changes after it are applied.
    let publisher = Publisher::new(&settings, None).unwrap();
    let key = [0u8, 0, 0, 0, 1, 2];
    publisher
        .send(OutgoingRecord::new(
            &p.topic(),
            &key,
            b"{\"not\": \"avro\"}",
        ))
        .await
        .unwrap();
    pg_connect(&p.source.name)
        .await
        .unwrap()
        .batch_execute("UPDATE people SET note = 'after the poison' WHERE id = 1")
        .await
        .unwrap();
    let want = p.source_rows().await;
    for (sink, sub) in sinks.iter().zip(&subscribers) {
        until_equal(sink, &want, Duration::from_secs(60), sub).await;
    }
    for name in &names {
        let dlq = Consumer::replay(&settings, &format!("backflow.dlq.{name}"), 0).unwrap();
        let record = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
            .await
            .expect("a dead letter within 30 s")
            .unwrap();
        assert_eq!(record.payload.as_deref(), Some(&b"{\"not\": \"avro\"}"[..]));
        let reason =
            String::from_utf8_lossy(record.header("backflow.dlq.reason").unwrap()).to_string();
        assert!(
            reason.contains("magic byte") || reason.contains("JSON"),
            "{reason}"
        );
        assert_eq!(
            record.header("backflow.dlq.topic"),
            Some(p.topic().as_bytes())
        );
        assert!(record.header("backflow.dlq.offset").is_some());
    }
    let (_, metrics) = subscribers[2].get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(
            &metrics,
            &format!(
                "backflow_subscribe_dead_letters_total{{subscription=\"{}\"}} 1",
                names[2]
            )
        ),
        "{metrics}"
    );

    crate::subscribe::stop_and_drop(&mut subscribers, &sinks).await;
    let Pipeline { node, source, .. } = p;
    drop(node);
    // The walsender of the killed node lets go of the slot shortly after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.drop_db().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_subscriptions_says_what_to_add() {
    let out = backflow_e2e::backflow().arg("subscribe").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[[subscriptions]]"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_sink_database_refuses_goes_to_the_dead_letter_topic_and_the_rest_applies() {
    let p = pipeline(30).await;
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    // The district's own table, with a rule of its own that row 13 breaks.
    rusqlite::Connection::open(&sink.path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE people (id INTEGER PRIMARY KEY CHECK (id <> 13), name TEXT NOT NULL, amount TEXT,
                 at TEXT, born TEXT, flag INTEGER, data BLOB, note TEXT, score REAL)",
        )
        .unwrap();
    let name = unique_name("refused");
    let mut sub = Node::subscribe_with_config(&p.subscriber_config(&name, &sink), &[]).unwrap();
    let mut want = p.source_rows().await;
    want.remove(&13);
    until_equal(&sink, &want, Duration::from_secs(60), &sub).await;

    let settings = KafkaSettings::new(p.broker.bootstrap());
    let dlq = Consumer::replay(&settings, &format!("backflow.dlq.{name}"), 0).unwrap();
    let record = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
        .await
        .expect("a dead letter within 30 s")
        .unwrap();
    let reason = String::from_utf8_lossy(record.header("backflow.dlq.reason").unwrap()).to_string();
    assert!(reason.contains("CHECK constraint"), "{reason}");
    assert!(record.payload.is_some(), "the original record is kept");
    // Its offset is stored, so a restart does not refuse it again.
    let stored = sink.offsets().await.unwrap();
    let offset: i64 = String::from_utf8_lossy(record.header("backflow.dlq.offset").unwrap())
        .parse()
        .unwrap();
    let partition: i32 = String::from_utf8_lossy(record.header("backflow.dlq.partition").unwrap())
        .parse()
        .unwrap();
    assert!(
        stored[&(name.clone(), p.topic(), partition)] >= offset,
        "{stored:?}"
    );

    sub.signal("TERM").unwrap();
    assert!(sub.wait(Duration::from_secs(20)).unwrap().success());
    let Pipeline { node, source, .. } = p;
    drop(node);
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.drop_db().await.unwrap();
}

/// The upper node's registry refuses a subscriber without its token: the
/// subscription applies nothing, names the setting that gives the token,
/// and skips no record (once given the token it applies every row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_a_registry_token_applies_nothing_until_given_one() {
    let p = pipeline(20).await;
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let name = unique_name("tokenless");
    let with_token = p.subscriber_config(&name, &sink);
    let without = with_token.replace(&format!(", {}", p.reader.upstream_setting()), "");
    assert_ne!(without, with_token);
    let mut sub = Node::subscribe_with_config(&without, &[]).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !sub.stderr().contains("40101") {
        assert!(
            Instant::now() < until,
            "no refusal by the registry logged:\n{}",
            sub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = sub.stderr();
    assert!(log.contains("upstream.registry_token_env"), "{log}");
    let held = sink.rows("people", "id", &READ).await.unwrap();
    assert!(
        held.as_ref().is_none_or(|r| r.is_empty()),
        "nothing applied: {held:?}"
    );
    sub.signal("TERM").unwrap();
    assert!(sub.wait(Duration::from_secs(20)).unwrap().success());

    let mut sub = Node::subscribe_with_config(&with_token, &[]).unwrap();
    until_equal(&sink, &p.source_rows().await, Duration::from_secs(60), &sub).await;
    sub.signal("TERM").unwrap();
    assert!(sub.wait(Duration::from_secs(20)).unwrap().success());
    let Pipeline { node, source, .. } = p;
    drop(node);
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.drop_db().await.unwrap();
}

/// Stops each subscriber with SIGTERM (each must exit cleanly within 20 s)
/// and drops the districts' databases.
pub(crate) async fn stop_and_drop(subscribers: &mut [Node], sinks: &[SinkDb]) {
    for s in subscribers.iter_mut() {
        s.signal("TERM").unwrap();
        assert!(
            s.wait(Duration::from_secs(20)).unwrap().success(),
            "{}",
            s.stderr()
        );
    }
    for s in sinks {
        s.drop_db().await.unwrap();
    }
}
