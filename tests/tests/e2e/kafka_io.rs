//! Kafka I/O against Apache Kafka (a broker of each test's own), plus the
//! embedded broker.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use backflow::kafka::{
    ConsumedRecord, Consumer, EmbeddedBroker, KafkaSettings, OutgoingRecord, Publisher, TopicAdmin,
    TopicSpec,
};
use backflow::metrics::Metrics;
use backflow_e2e::{unique_name, TestBroker};

async fn create(settings: &KafkaSettings, topic: &str, partitions: i32) {
    let admin = TopicAdmin::new(settings).unwrap();
    let created = admin
        .ensure(&[TopicSpec::compacted(topic, partitions, 1)])
        .await
        .unwrap();
    assert_eq!(created, vec![topic.to_owned()]);
}

/// Receives `n` records or fails at the deadline.
async fn receive(consumer: &Consumer, n: usize, deadline: Duration) -> Vec<ConsumedRecord> {
    let until = Instant::now() + deadline;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(r) => got.push(r.expect("consume")),
            Err(_) => panic!("received {} of {n} records within {deadline:?}", got.len()),
        }
    }
    got
}

fn seq_of(r: &ConsumedRecord) -> (String, u32) {
    let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
    let value = String::from_utf8(r.payload.clone().unwrap()).unwrap();
    let seq = value.rsplit(':').next().unwrap().parse().unwrap();
    (key, seq)
}

/// Publishes `keys × per_key` records, pipelined, and waits for every ack.
async fn publish(publisher: &Publisher, topic: &str, keys: u32, per_key: u32) {
    let mut pending = VecDeque::new();
    for seq in 0..per_key {
        for k in 0..keys {
            let key = format!("330106-{k:04}");
            let value = format!("{key}:{seq}");
            let headers: &[(&str, &[u8])] = &[("backflow.origin", b"330000/test")];
            let record = OutgoingRecord {
                topic,
                key: Some(key.as_bytes()),
                payload: Some(value.as_bytes()),
                headers,
            };
            pending.push_back(publisher.enqueue(record).await.expect("enqueue"));
            // Bound what is outstanding, as a source connector does.
            if pending.len() >= 5_000 {
                pending.pop_front().unwrap().await.expect("delivered");
            }
        }
    }
    for d in pending {
        d.await.expect("delivered");
    }
}

#[tokio::test]
async fn publisher_and_group_consumer_lose_nothing_and_keep_key_order() {
    let broker = TestBroker::start();
    let settings = KafkaSettings::new(broker.bootstrap());
    let topic = unique_name("backflow.test.order");
    create(&settings, &topic, 3).await;
    let metrics = Metrics::new();
    let publisher = Publisher::new(&settings, Some(metrics.clone())).unwrap();

    let (keys, per_key) = (100u32, 100u32);
    let started = Instant::now();
    publish(&publisher, &topic, keys, per_key).await;
    let produce = started.elapsed();
    let total = (keys * per_key) as usize;
    assert_eq!(
        metrics.kafka_produced.with_label_values(&["other"]).get(),
        total as u64,
        "every record acknowledged exactly once"
    );

    let consumer = Consumer::new(&settings, &unique_name("order-group"), &[&topic], None).unwrap();
    let started = Instant::now();
    let got = receive(&consumer, total, Duration::from_secs(120)).await;
    let consume = started.elapsed();
    eprintln!("{total} records: produced+acked in {produce:?}, consumed in {consume:?}");

    let mut by_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in &got {
        assert_eq!(r.header("backflow.origin"), Some(&b"330000/test"[..]));
        let (k, s) = seq_of(r);
        by_key.entry(k).or_default().push(s);
    }
    assert_eq!(by_key.len(), keys as usize, "every key arrived");
    let expected: Vec<u32> = (0..per_key).collect();
    for (k, seqs) in by_key {
        assert_eq!(seqs, expected, "key {k}: all records, in the order sent");
    }
    // Nothing more than what was sent.
    let extra = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await;
    assert!(
        extra.is_err(),
        "no duplicates beyond the {total} records sent"
    );
}

/// Closing a group member runs the group protocol synchronously (its
/// revoke hook, a commit, leaving), as long as the coordinator takes, and
/// librdkafka has been seen to hang in it. A member dropped on the async
/// runtime (a task aborted, a feed's lease let go) must not hold the
/// runtime meanwhile: here its revoke hook takes 3 s, and the runtime (one
/// thread) goes on at once.
#[test]
fn dropping_a_group_member_does_not_hold_the_async_runtime() {
    // The broker outlives the runtime: the close handed to a blocking
    // thread needs it to leave the group, and the runtime's shutdown waits
    // for that thread (bounded below, so a close that hangs in librdkafka
    // fails the test instead of holding the test binary).
    let broker = TestBroker::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let settings = KafkaSettings::new(broker.bootstrap());
        let topic = unique_name("backflow.test.close");
        create(&settings, &topic, 1).await;
        let publisher = Publisher::new(&settings, None).unwrap();
        publish(&publisher, &topic, 1, 1).await;
        let hook: backflow::kafka::RevokeHook =
            std::sync::Arc::new(|| std::thread::sleep(Duration::from_secs(3)));
        let member = Consumer::member(
            &settings,
            &unique_name("close-group"),
            &[&topic],
            None,
            None,
            Some(hook),
        )
        .unwrap();
        // Assigned and reading: closing it revokes the partition.
        receive(&member, 1, Duration::from_secs(60)).await;
        let started = Instant::now();
        drop(member);
        tokio::task::yield_now().await;
        let held = started.elapsed();
        assert!(
            held < Duration::from_secs(1),
            "dropping the member held the runtime for {held:?}"
        );
    });
    let closing = Instant::now();
    runtime.shutdown_timeout(Duration::from_secs(60));
    assert!(
        closing.elapsed() < Duration::from_secs(60),
        "the member's close did not finish within 60 s"
    );
}

#[tokio::test]
async fn consumer_restarted_resumes_right_after_last_stored_offset() {
    let broker = TestBroker::start();
    let settings = KafkaSettings::new(broker.bootstrap());
    let topic = unique_name("backflow.test.resume");
    create(&settings, &topic, 1).await;
    let publisher = Publisher::new(&settings, None).unwrap();
    publish(&publisher, &topic, 1, 100).await;
    let group = unique_name("resume-group");

    // First run: read 60 records but store only the first 40, as if the next
    // stage had durably taken only those when the process stopped.
    {
        let consumer = Consumer::new(&settings, &group, &[&topic], None).unwrap();
        let got = receive(&consumer, 60, Duration::from_secs(60)).await;
        for r in &got[..40] {
            consumer.store_record(r).unwrap();
        }
        assert_eq!(got[39].offset, 39);
        consumer.close().unwrap();
    }

    // Second run: the group resumes at offset 40, neither skipping the 20
    // unstored records nor repeating stored ones.
    let consumer = Consumer::new(&settings, &group, &[&topic], None).unwrap();
    let got = receive(&consumer, 60, Duration::from_secs(60)).await;
    let seqs: Vec<u32> = got.iter().map(|r| seq_of(r).1).collect();
    assert_eq!(seqs, (40..100).collect::<Vec<_>>());
    assert_eq!(got[0].offset, 40);
    assert_eq!(
        consumer
            .committed(&[(&topic, 0)], Duration::from_secs(10))
            .unwrap(),
        vec![Some(40)]
    );
}

#[tokio::test]
async fn topic_admin_creates_once_and_tolerates_existing_topics() {
    let broker = TestBroker::start();
    let settings = KafkaSettings::new(broker.bootstrap());
    let topic = unique_name("backflow.test.admin");
    let admin = TopicAdmin::new(&settings).unwrap();
    let spec = [TopicSpec::compacted(&topic, 2, 1)];
    assert_eq!(admin.ensure(&spec).await.unwrap(), vec![topic.clone()]);
    assert!(admin.ensure(&spec).await.unwrap().is_empty());
}

#[tokio::test]
async fn publisher_reports_tombstones_and_consumer_sees_them() {
    let broker = TestBroker::start();
    let settings = KafkaSettings::new(broker.bootstrap());
    let topic = unique_name("backflow.test.tombstone");
    create(&settings, &topic, 1).await;
    let publisher = Publisher::new(&settings, None).unwrap();
    publisher
        .send(OutgoingRecord::new(&topic, b"k1", b"v1"))
        .await
        .unwrap();
    let d = publisher
        .send(OutgoingRecord {
            topic: &topic,
            key: Some(b"k1"),
            payload: None,
            headers: &[],
        })
        .await
        .unwrap();
    assert_eq!(d.offset, 1);
    let consumer = Consumer::new(&settings, &unique_name("tomb-group"), &[&topic], None).unwrap();
    let got = receive(&consumer, 2, Duration::from_secs(60)).await;
    assert_eq!(got[0].payload.as_deref(), Some(&b"v1"[..]));
    assert_eq!(got[1].key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(got[1].payload, None, "a tombstone has no value");
}

#[tokio::test]
async fn embedded_broker_serves_publisher_and_consumer_group() {
    let broker = EmbeddedBroker::start().unwrap();
    let settings = KafkaSettings::new(broker.bootstrap_servers());
    let topic = "backflow.raw.gongan.population";
    let created = TopicAdmin::Embedded(broker.admin())
        .ensure(&[TopicSpec::compacted(topic, 2, 1)])
        .await
        .unwrap();
    assert_eq!(created, vec![topic.to_owned()]);
    let metrics = Metrics::new();
    let publisher = Publisher::new(&settings, Some(metrics.clone())).unwrap();
    publish(&publisher, topic, 10, 20).await;
    assert_eq!(
        metrics.kafka_produced.with_label_values(&["raw"]).get(),
        200
    );
    let consumer = Consumer::new(&settings, "embedded-group", &[topic], None).unwrap();
    let got = receive(&consumer, 200, Duration::from_secs(60)).await;
    let mut by_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in &got {
        let (k, s) = seq_of(r);
        by_key.entry(k).or_default().push(s);
    }
    for seqs in by_key.values() {
        assert_eq!(*seqs, (0..20).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn publisher_waits_on_full_queue_instead_of_dropping() {
    let broker = TestBroker::start();
    let settings = KafkaSettings::new(broker.bootstrap());
    let topic = unique_name("backflow.test.backpressure");
    create(&settings, &topic, 1).await;
    // A queue of 20 records forces the publisher to wait for room.
    let mut small = settings.clone();
    small
        .properties
        .insert("queue.buffering.max.messages".into(), "20".into());
    let metrics = Metrics::new();
    let publisher = Publisher::new(&small, Some(metrics.clone())).unwrap();
    // One batch of 2,000: its acknowledgement resolves only once all are in.
    let mut batch = publisher.batch();
    for i in 0..2_000u32 {
        let value = format!("k:{i}");
        publisher
            .enqueue_in(
                &mut batch,
                OutgoingRecord::new(&topic, b"k", value.as_bytes()),
            )
            .await
            .expect("enqueue waits instead of failing");
    }
    assert_eq!(batch.len(), 2_000);
    batch.seal().await.expect("delivered");
    assert_eq!(
        metrics.kafka_produced.with_label_values(&["other"]).get(),
        2_000,
        "every record was reported acknowledged"
    );
    let consumer = Consumer::replay(&settings, &topic, 0).unwrap();
    let got = receive(&consumer, 2_000, Duration::from_secs(60)).await;
    let values: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.payload.clone().unwrap()).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..2_000).map(|i| format!("k:{i}")).collect::<Vec<_>>(),
        "all delivered, in order"
    );
    assert!(
        metrics.kafka_produce_queue_full.get() > 0,
        "the queue did fill up, so back-pressure was exercised"
    );
}

#[tokio::test]
async fn a_batch_with_one_refused_record_resolves_to_that_refusal() {
    let broker = TestBroker::start();
    let mut settings = KafkaSettings::new(broker.bootstrap());
    // Give up on an undeliverable record after 2 s instead of two minutes.
    settings
        .properties
        .insert("message.timeout.ms".into(), "2000".into());
    let topic = unique_name("backflow.test.batch");
    create(&settings, &topic, 1).await;
    let missing = unique_name("backflow.test.missing");
    let metrics = Metrics::new();
    let publisher = Publisher::new(&settings, Some(metrics.clone())).unwrap();
    let mut batch = publisher.batch();
    for t in [&topic, &missing, &topic] {
        publisher
            .enqueue_in(&mut batch, OutgoingRecord::new(t, b"k", b"v"))
            .await
            .expect("enqueued");
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), batch.seal())
        .await
        .expect("a refusal settles the batch");
    let err = outcome.expect_err("the batch must not resolve to Ok");
    assert!(
        err.to_string().contains(&missing),
        "the error names the topic that refused: {err}"
    );
    assert!(
        metrics
            .kafka_produce_errors
            .with_label_values(&["other"])
            .get()
            >= 1
    );
}

/// A broker of the test's own with the audit topic, a publisher to it and
/// a fresh signing key.
async fn audit_broker() -> (
    TestBroker,
    KafkaSettings,
    Publisher,
    backflow::state::audit::AuditKey,
) {
    let broker = TestBroker::start();
    let settings = KafkaSettings::new(broker.bootstrap());
    TopicAdmin::new(&settings)
        .unwrap()
        .ensure(&[TopicSpec::kept("backflow._audit", 1, 1)])
        .await
        .unwrap();
    let publisher = Publisher::new(&settings, None).unwrap();
    let key = backflow::state::audit::AuditKey::generate().unwrap();
    (broker, settings, publisher, key)
}

#[tokio::test]
async fn audit_records_appended_together_continue_one_verifiable_chain() {
    use backflow::state::audit::{verify, Auditor};
    let (_broker, settings, publisher, key) = audit_broker().await;
    let auditor = Auditor::new(&settings, publisher.clone(), "330100", key.clone(), 1000);
    // Seq 0 is the process's start checkpoint.
    assert_eq!(
        auditor
            .append("decision", serde_json::json!({"n": 0}))
            .await
            .unwrap(),
        1
    );
    // One round of three, as the distributor settles several batches.
    let round = (1..=3)
        .map(|n| ("delivery", serde_json::json!({ "n": n })))
        .collect();
    assert_eq!(auditor.append_all(round).await.unwrap(), Some(4));
    assert_eq!(auditor.append_all(Vec::new()).await.unwrap(), None);
    // A second node process (same chain) reads the chain's end from the
    // topic and goes on after the round, with a checkpoint of its own.
    let again = Auditor::new(&settings, publisher, "330100", key, 1000);
    assert_eq!(
        again
            .append("decision", serde_json::json!({"n": 4}))
            .await
            .unwrap(),
        6
    );
    let report = verify(&settings, &again.trusted_keys()).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.chains["330100"].records, 7);
    assert_eq!(report.chains["330100"].checkpoints, 2);
    let audit = Consumer::replay(&settings, "backflow._audit", 0).unwrap();
    let got = receive(&audit, 7, Duration::from_secs(30)).await;
    let mut ns = Vec::new();
    for (i, r) in got.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        assert_eq!(v["seq"], i, "{v}");
        if v["kind"] != "checkpoint" {
            ns.push(v["details"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(ns, vec![0, 1, 2, 3, 4], "in chain order");
}

/// Two processes writing one audit chain (two processes serving a node
/// under the same `kafka.replica`, or with none set) must not fork it:
/// the first to write after the other took the chain over is refused,
/// and the chain verifies.
#[tokio::test]
async fn a_second_writer_of_an_audit_chain_fences_the_first_instead_of_forking_it() {
    use backflow::state::audit::{verify, Auditor};
    let (_broker, settings, publisher, key) = audit_broker().await;
    let first = Auditor::new(&settings, publisher.clone(), "330100/a", key.clone(), 1000)
        .in_transactions(None);
    let second = Auditor::new(&settings, publisher, "330100/a", key, 1000).in_transactions(None);
    let decision = |n: u32| serde_json::json!({ "n": n });
    first.append("decision", decision(1)).await.unwrap();
    second.append("decision", decision(2)).await.unwrap();
    // The first process still believes it holds the chain's end.
    let late = first.append("decision", decision(3)).await;
    let report = verify(&settings, &second.trusted_keys()).await.unwrap();
    assert!(
        report.intact(),
        "the chain forked (the late append answered {late:?}): {:?}",
        report.problems
    );
    let refused = late.expect_err("the writer that lost the chain is refused");
    assert!(refused.is_fenced(), "{refused}");
    assert!(refused.to_string().contains("kafka.replica"), "{refused}");
    // The writer that took it over goes on.
    second.append("decision", decision(4)).await.unwrap();
    let report = verify(&settings, &second.trusted_keys()).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    // Each writer's start checkpoint and decision, then decision 4.
    assert_eq!(report.chains["330100/a"].records, 5);
}

/// A write decided on a stale read (the distributor marking a
/// subscription backfilled after the owner revoked it) must not undo the
/// revocation: `put_if` writes only while the record is the one read.
#[tokio::test]
async fn catalog_write_decided_on_a_stale_read_does_not_undo_a_revocation() {
    use backflow::state::catalog::{Catalog, CatalogRecord, Subscription, SubscriptionState};
    let broker = EmbeddedBroker::start().unwrap();
    let settings = KafkaSettings::new(broker.bootstrap_servers());
    TopicAdmin::Embedded(broker.admin())
        .ensure(&[TopicSpec::compacted(
            backflow::domain::topics::catalog(),
            1,
            1,
        )])
        .await
        .unwrap();
    let publisher = Publisher::new(&settings, None).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let keys = backflow::state::catalog::CatalogKeys::new(
        backflow::state::audit::AuditKey::generate().unwrap(),
        Vec::new(),
    );
    let metrics = backflow::metrics::Metrics::new();
    let (catalog, _follower) =
        Catalog::start(&settings, publisher, keys, &metrics, stop.clone()).unwrap();
    let active = Subscription {
        id: "330106:ga.people".into(),
        subscriber: "330106".into(),
        dataset: "ga.people".into(),
        purpose: "p".into(),
        requested: vec!["id".into()],
        granted: [("id".to_owned(), "plain".to_owned())].into(),
        valid_until_ms: None,
        state: SubscriptionState::Active,
        policy_version: 1,
        secret: "k".repeat(64),
        updated_ms: 1,
        backfilled: false,
        request_version: 1,
        onward: backflow::domain::policy::Onward::None,
    };
    catalog
        .put(CatalogRecord::Subscription(active.clone()))
        .await
        .unwrap();
    // Read by the distributor ...
    let read = catalog.state().await.subscriptions["330106:ga.people"].clone();
    // ... revoked by the owner meanwhile ...
    let mut revoked = active.clone();
    revoked.state = SubscriptionState::Revoked {
        reason: "misuse".into(),
    };
    catalog
        .put(CatalogRecord::Subscription(revoked.clone()))
        .await
        .unwrap();
    // ... then the distributor's write, decided on what it read.
    let mut marked = read.clone();
    marked.backfilled = true;
    let written = catalog
        .put_if(CatalogRecord::Subscription(marked.clone()), |st| {
            st.subscriptions.get(&read.id) == Some(&read)
        })
        .await
        .unwrap();
    assert!(!written);
    assert_eq!(
        catalog.state().await.subscriptions["330106:ga.people"],
        revoked
    );
    // Unchanged since read: written.
    let again = catalog.state().await.subscriptions["330106:ga.people"].clone();
    let mut renewed = again.clone();
    renewed.updated_ms = 2;
    assert!(catalog
        .put_if(CatalogRecord::Subscription(renewed.clone()), |st| {
            st.subscriptions.get(&again.id) == Some(&again)
        })
        .await
        .unwrap());
    assert_eq!(
        catalog.state().await.subscriptions["330106:ga.people"],
        renewed
    );
    stop.cancel();
}
