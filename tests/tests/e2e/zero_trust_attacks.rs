//! Attacks on a node with `kafka.manage_acls = true`, as a district holding
//! the node-issued Kafka credentials and an API token, and as a department
//! owner with an API token: reaching other topics and groups, reading on
//! after revocation, creating topics, escalating through the API, hostile
//! input. Each test asserts the attack is refused. Two failed on an earlier
//! build: a district's commit metadata (`origin_ms` = i64::MIN) stopped the
//! lag board for everyone, and a district could create any number of
//! topics of any size under its dead-letter prefix, which outlived its
//! grants.

use std::time::{Duration, Instant};

use backflow_e2e::secure_node::{client_config, metadata, settings, SecureNode, Tokens};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

const ADMIN: &str = "zt-admin";
const GA: &str = "zt-owner-ga";
const MZ: &str = "zt-owner-mz";
const AUDITOR: &str = "zt-auditor";
const XIHU: &str = "zt-district-330106";
const BINJIANG: &str = "zt-district-330108";
const MINE: &str = "backflow.share.330106.ga.people";
const THEIRS: &str = "backflow.share.330108.ga.people";

/// Produces one record to `topic`: `Ok` when the broker took it.
async fn produce(props: &[(String, String)], topic: &str) -> Result<(), String> {
    let producer: FutureProducer = client_config(props)
        .set("message.timeout.ms", "8000")
        .create()
        .map_err(|e| e.to_string())?;
    producer
        .send(
            FutureRecord::to(topic).key("k").payload("forged"),
            Duration::from_secs(8),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

/// Creates `topic` with `partitions` and `configs`: `Ok` when created.
async fn create_topic(
    props: &[(String, String)],
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(props).create().map_err(|e| e.to_string())?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let r = admin
        .create_topics(&[new], &opts)
        .await
        .map_err(|e| e.to_string())?;
    match r.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err((_, code))) => Err(format!("{code:?}")),
        None => Err("no answer".into()),
    }
}

/// The node of these tests: a secured broker, 20 residents (even ids in
/// 330106, odd in 330108) fed into `ga.people`, `manage_acls = true`.
async fn setup() -> SecureNode {
    SecureNode::start(
        &[],
        "manage_acls = true",
        Tokens {
            admin: ADMIN,
            owner_ga: GA,
            others: &[
                ("owner:mz", MZ),
                ("auditor", AUDITOR),
                ("subscriber:330106", XIHU),
                ("subscriber:330108", BINJIANG),
            ],
        },
    )
    .await
}

/// With the credentials the node issued, district 330106 can neither see,
/// write nor create anything but its own share topic and dead letters, nor
/// use a group under its prefix for another topic, nor touch the
/// distributor's group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_district_reaches_nothing_but_its_own_share() {
    let s = setup().await;
    let xihu = s.district("330106").await;
    s.district("330108").await;
    s.subscribe("330106", XIHU).await;
    s.subscribe("330108", BINJIANG).await;
    s.until_readable(&xihu, MINE, 10).await;
    s.until_readable(
        &s.broker
            .client_properties(&s.node_user.name, &s.node_user.password),
        THEIRS,
        10,
    )
    .await;

    for topic in [
        "backflow.raw.ga.people",
        THEIRS,
        "backflow._catalog",
        "backflow._audit",
        "backflow._schemas",
        "backflow._offsets",
        "backflow._subscribers",
        // Joining a feed's lease group needs it: a district that could
        // would hold the department's feed hostage.
        "backflow._leases",
    ] {
        let err = metadata(&xihu, topic)
            .err()
            .unwrap_or_else(|| panic!("district 330106 may see {topic}"));
        assert!(err.contains("Authorization"), "{topic}: {err}");
    }
    // Writing: the control state, its own share topic (forging rows the
    // node never sent), another district's dead letters.
    for topic in [
        "backflow._catalog",
        "backflow._audit",
        "backflow._subscribers",
        MINE,
        "backflow.sdlq.330108.x",
    ] {
        let r = produce(&xihu, topic).await;
        assert!(
            r.as_ref().is_err_and(|e| e.contains("Authorization")),
            "district 330106 wrote into {topic}: {r:?}"
        );
    }
    // Creating: a share topic of its own name, another district's share
    // or dead-letter topic.
    for topic in [
        "backflow.share.330106.mz.fake",
        "backflow.share.330108.mz.fake",
        "backflow.sdlq.330108.x",
        "backflow.raw.mz.fake",
    ] {
        let r = create_topic(&xihu, topic, 1, &[]).await;
        assert!(
            r.as_ref().is_err_and(|e| e.contains("Authorization")),
            "district 330106 created {topic}: {r:?}"
        );
    }
    // A group under its prefix, used for the raw topic: refused.
    let raw_commit = backflow::kafka::group_commit(
        &settings(xihu.clone()),
        "backflow.share.330106.x",
        &[("backflow.raw.ga.people".to_owned(), 0, 0)],
        "",
    )
    .await;
    assert!(
        raw_commit.is_err(),
        "committed to the raw topic: {raw_commit:?}"
    );
    // The distributor's group: neither read nor reset.
    let read = backflow::kafka::group_committed(
        &settings(xihu.clone()),
        "backflow.distributor.330100",
        &[("backflow.raw.ga.people".to_owned(), 0)],
    )
    .await;
    assert!(read.is_err(), "read the distributor's group: {read:?}");
    let user = xihu
        .iter()
        .find(|(k, _)| k == "sasl.username")
        .unwrap()
        .1
        .clone();
    let pw = xihu
        .iter()
        .find(|(k, _)| k == "sasl.password")
        .unwrap()
        .1
        .clone();
    let reset = s.broker.kafka_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &user,
        &pw,
        &[
            "--reset-offsets",
            "--group",
            "backflow.distributor.330100",
            "--topic",
            "backflow.raw.ga.people",
            "--to-latest",
            "--execute",
        ],
    );
    let refused = match &reset {
        Err(e) => e.to_string().contains("Authorization"),
        Ok(out) => out.contains("Authorization") || !out.contains("backflow.raw.ga.people"),
    };
    assert!(refused, "reset the distributor's offsets: {reset:?}");
    let (_, nodes) = s.node.api("GET", "/api/node", Some(XIHU), None).await;
    assert!(
        !nodes.to_string().contains(&pw),
        "its password is shown again"
    );
}

/// A consumer of district 330106 already assigned to its share topic,
/// with a fetch session open, gets no record once the owner revoked:
/// re-reading from the start is refused by the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_already_reading_is_cut_off_at_revocation() {
    let s = setup().await;
    let xihu = s.district("330106").await;
    s.subscribe("330106", XIHU).await;
    s.until_readable(&xihu, MINE, 10).await;
    let consumer: BaseConsumer = client_config(&xihu)
        .set("group.id", "backflow.share.330106.attacker")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(MINE, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut before = 0;
    let until = Instant::now() + Duration::from_secs(20);
    while before < 10 && Instant::now() < until {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
            before += 1;
        }
    }
    assert!(before >= 10, "the district read its share before: {before}");

    s.ok(
        "POST",
        "/api/subscriptions/330106:ga.people/revoke",
        GA,
        json!({"reason": "test"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The same consumer, same session, goes back to the start.
    consumer
        .seek(MINE, 0, Offset::Beginning, Duration::from_secs(5))
        .unwrap();
    let (mut after, mut errors) = (0, Vec::new());
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                after += 1;
                let _ = m.offset();
            }
            Some(Err(e)) => errors.push(e.to_string()),
            None => {}
        }
    }
    assert_eq!(
        after, 0,
        "a consumer assigned before the revocation read {after} records 3 s after it (errors: {errors:?})"
    );
}

/// A district's dead-letter topics: it may write them, not create them
/// (no topic of its own making, of any size), the node creates the one of
/// each subscription the district reports, and deletes them once the
/// district has no share left and the grace has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_prefix_is_not_a_free_hand() {
    let s = setup().await;
    let xihu = s.district("330106").await;
    s.subscribe("330106", XIHU).await;
    s.until_readable(&xihu, MINE, 10).await;

    let flood = "backflow.sdlq.330106.flood";
    let created = create_topic(
        &xihu,
        flood,
        200,
        &[
            ("retention.ms", "-1"),
            ("retention.bytes", "-1"),
            ("max.message.bytes", "20000000"),
        ],
    )
    .await;
    assert!(
        created.is_err(),
        "district 330106 created {flood} with 200 partitions and unbounded retention"
    );
    assert!(!s.exists(flood).await);

    // The district's subscriber reports its subscription "xihu": the node
    // creates that subscription's dead-letter topic, which it may write.
    let dl = "backflow.sdlq.330106.xihu";
    let (status, answer) = s
        .node
        .api(
            "POST",
            "/api/lag/status",
            Some(XIHU),
            Some(
                json!({"subscription": "xihu", "topics": [MINE], "state": "RUNNING",
                        "error": null, "ts_ms": 0}),
            ),
        )
        .await;
    assert_eq!(status, 204, "{answer}");
    assert!(s.exists(dl).await, "the node created {dl}");
    produce(&xihu, dl)
        .await
        .expect("the district writes its dead letters");

    // The grant ends and the owner wants nothing kept: the share topic and
    // the dead letters (rows as shared with 330106) both go.
    s.ok(
        "POST",
        "/api/subscriptions/330106:ga.people/revoke",
        GA,
        json!({"reason": "done"}),
    )
    .await;
    s.ok(
        "PATCH",
        "/api/datasets/ga.people",
        GA,
        json!({"ended_share_grace_hours": 0}),
    )
    .await;
    let started = Instant::now();
    while s.exists(MINE).await || s.exists(dl).await {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the ended share topic or the district's dead letters were not deleted\n{}",
            s.node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The lag board reads the commit metadata a district writes to its own
/// group: a hostile `origin_ms` must not stop the board for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_districts_commit_metadata_does_not_stop_the_lag_board() {
    let s = setup().await;
    let xihu = s.district("330106").await;
    s.subscribe("330106", XIHU).await;
    s.subscribe("330108", BINJIANG).await;
    s.until_readable(&xihu, MINE, 10).await;
    let node = &s.node;
    let updated = move || async move {
        let (_, b) = node.api("GET", "/api/lag", Some(ADMIN), None).await;
        b["updated_ms"].as_i64().unwrap_or(0)
    };
    let first = updated().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(updated().await > first, "the board moves before the attack");

    backflow::kafka::group_commit(
        &settings(xihu.clone()),
        MINE,
        &[(MINE.to_owned(), 0, 0)],
        &format!("{{\"origin_ms\":{}}}", i64::MIN),
    )
    .await
    .expect("the district commits to its own group");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = updated().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b = updated().await;
    let log = s.node.stderr();
    let panic: String = log
        .lines()
        .skip_while(|l| !l.contains("panicked"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        b > a && panic.is_empty(),
        "district 330106's commit metadata {{\"origin_ms\": i64::MIN}} on its own group stopped the lag board of every subscriber and feed (updated_ms stuck at {a}): {panic}"
    );
}

/// API escalations by a district and by another department's owner, and
/// hostile input: each refused with a 4xx, none a 5xx, the node healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_escalations_and_hostile_input_are_refused() {
    let s = setup().await;
    s.district("330106").await;
    s.subscribe("330106", XIHU).await;
    s.ok("PUT", "/api/datasets/mz.items", MZ, json!({"description": "items", "sharing": "conditional", "all_rows": true, "fields": {"id": {}}}))
        .await;
    let pending = s
        .ok("POST", "/api/subscriptions", BINJIANG,
            json!({"subscriber": "330108", "dataset": "mz.items", "purpose": "x", "fields": ["id"]}))
        .await;
    assert_eq!(pending["state"], "pending");
    s.ok(
        "POST",
        "/api/subscriptions/330106:ga.people/revoke",
        GA,
        json!({"reason": "t"}),
    )
    .await;

    let refused: Vec<(&str, &str, &str, Value, u16)> = vec![
        // A district deciding for itself or another.
        (
            "POST",
            "/api/subscriptions/330108:mz.items/approve",
            BINJIANG,
            json!({"request_version": 1}),
            403,
        ),
        (
            "POST",
            "/api/subscriptions/330106:ga.people/reactivate",
            XIHU,
            json!({}),
            403,
        ),
        (
            "POST",
            "/api/subscriptions",
            XIHU,
            json!({"subscriber": "330108", "dataset": "ga.people", "purpose": "x", "fields": ["id"]}),
            403,
        ),
        (
            "POST",
            "/api/subscriptions",
            XIHU,
            json!({"subscriber": "330106", "dataset": "ga.people", "purpose": "x", "fields": ["id"]}),
            409,
        ),
        (
            "PUT",
            "/api/nodes/330106",
            XIHU,
            json!({"name": "x", "kafka": "User:backflow-node"}),
            403,
        ),
        (
            "PUT",
            "/api/nodes/330108",
            XIHU,
            json!({"name": "x", "kafka": "scram"}),
            403,
        ),
        (
            "PUT",
            "/api/datasets/ga.people",
            XIHU,
            json!({"ended_share_grace_hours": 8760}),
            403,
        ),
        ("GET", "/api/grants/330108:mz.items", XIHU, Value::Null, 403),
        (
            "POST",
            "/api/grants/330108:ga.people/holders",
            XIHU,
            json!({"holders": []}),
            403,
        ),
        (
            "POST",
            "/api/lag/status",
            XIHU,
            json!({"subscription": "x", "topics": [THEIRS], "state": "RUNNING"}),
            422,
        ),
        (
            "POST",
            "/api/tokens",
            XIHU,
            json!({"principal": "admin"}),
            403,
        ),
        // Another department's owner.
        (
            "PATCH",
            "/api/datasets/ga.people",
            MZ,
            json!({"ended_share_grace_hours": 0}),
            403,
        ),
        (
            "PUT",
            "/api/datasets/ga.people",
            MZ,
            json!({"description": "mine now"}),
            403,
        ),
        (
            "POST",
            "/api/subscriptions/330106:ga.people/reactivate",
            MZ,
            json!({}),
            403,
        ),
        (
            "POST",
            "/api/subscriptions/330106:ga.people/revoke",
            MZ,
            json!({"reason": "x"}),
            403,
        ),
        (
            "POST",
            "/api/subscriptions/330108:mz.items/approve",
            GA,
            json!({"request_version": 1}),
            403,
        ),
        (
            "POST",
            "/api/subscriptions",
            MZ,
            json!({"subscriber": "330106", "dataset": "mz.items", "purpose": "x", "fields": ["id"]}),
            403,
        ),
        (
            "PUT",
            "/api/nodes/330106",
            GA,
            json!({"name": "x", "kafka": "User:backflow.node.330108"}),
            403,
        ),
        (
            "POST",
            "/api/tokens",
            GA,
            json!({"principal": "owner:mz"}),
            403,
        ),
        (
            "PUT",
            "/api/datasets/gamz.items",
            GA,
            json!({"description": "x"}),
            403,
        ),
        (
            "PUT",
            "/api/datasets/ga_x.items",
            GA,
            json!({"description": "x"}),
            422,
        ),
        // Feeds: another department's dataset, a node secret, a file.
        (
            "PUT",
            "/api/feeds/evil",
            GA,
            json!({"type": "postgres", "host": "127.0.0.1", "user": "u", "password_secret": "x", "database": "d",
            "tables": [{"table": "public.t", "dataset": "mz.items"}]}),
            403,
        ),
        (
            "PUT",
            "/api/feeds/evil",
            GA,
            json!({"type": "postgres", "host": "127.0.0.1", "user": "u", "password_env": "KAFKA_PASSWORD", "database": "d",
            "tables": [{"table": "public.t", "dataset": "ga.people"}]}),
            422,
        ),
        (
            "PUT",
            "/api/feeds/evil",
            XIHU,
            json!({"type": "postgres", "host": "127.0.0.1", "user": "u", "password_secret": "x", "database": "d",
            "tables": [{"table": "public.t", "dataset": "ga.people"}]}),
            403,
        ),
        // Hostile values.
        (
            "PATCH",
            "/api/datasets/ga.people",
            GA,
            json!({"ended_share_grace_hours": 8761}),
            422,
        ),
        (
            "PATCH",
            "/api/datasets/ga.people",
            GA,
            json!({"ended_share_grace_hours": 4294967296u64}),
            422,
        ),
        (
            "PATCH",
            "/api/datasets/ga.people",
            GA,
            json!({"ended_share_grace_hours": -1}),
            422,
        ),
        (
            "PATCH",
            "/api/datasets/ga.people",
            GA,
            json!({"ended_share_grace_hours": 1e300}),
            422,
        ),
        (
            "POST",
            "/api/subscriptions",
            BINJIANG,
            json!({"subscriber": "330108", "dataset": "ga.people", "purpose": "x", "fields": ["id"], "valid_days": 4294967295u64}),
            422,
        ),
        (
            "POST",
            "/api/subscriptions/330108:mz.items/approve",
            MZ,
            json!({"request_version": 18446744073709551615u64}),
            409,
        ),
        (
            "POST",
            "/api/subscriptions/330106:ga.people/narrow",
            GA,
            json!({"fields": ["id", "secret_column"]}),
            409,
        ),
    ];
    let mut wrong = Vec::new();
    let feed = s.db.name.replace('_', "-");
    for path in [
        format!("/api/feeds/{feed}/pause"),
        format!("/api/feeds/{feed}/restart?resnapshot=true"),
    ] {
        let (status, answer) = s.node.api("POST", &path, Some(MZ), Some(json!({}))).await;
        if !(400..500).contains(&status) {
            wrong.push(format!("POST {path} as owner:mz: {status} {answer}"));
        }
    }
    // A poll feed reading a file of the node: refused for the path.
    let (status, answer) = s
        .node
        .api(
            "PUT",
            "/api/feeds/evil",
            Some(GA),
            Some(
                json!({"type": "poll", "engine": "sqlite", "path": "/etc/passwd",
            "tables": [{"table": "t", "dataset": "ga.people", "mode": "bulk"}]}),
            ),
        )
        .await;
    if !((400..500).contains(&status) && answer.to_string().contains("sqlite")) {
        wrong.push(format!("poll feed of /etc/passwd: {status} {answer}"));
    }
    for (method, path, token, body, want) in refused {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = s.node.api(method, path, Some(token), body.clone()).await;
        // The exact code matters less than the refusal: any 4xx.
        let _ = want;
        let ok = (400..500).contains(&status);
        if !ok {
            wrong.push(format!(
                "{method} {path} {body:?} as {token}: {status} {answer}"
            ));
        }
    }
    // Raw hostile requests: nesting, size, paths, headers.
    let client = s.node.client();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!("{{\"description\": \"{}\"}}", "a".repeat(8 << 20));
    let long_id = "9".repeat(100_000);
    let recursive = json!({"schema": json!({"type": "record", "name": "L", "fields": [
        {"name": "id", "type": "long"}, {"name": "next", "type": ["null", "L"], "default": null}]}).to_string()})
    .to_string();
    let mut inner = json!("long");
    for _ in 0..60 {
        inner = json!({"type": "array", "items": inner});
    }
    let deep = json!({"schema": inner.to_string()}).to_string();
    let raws: Vec<(reqwest::Method, String, String, &str)> = vec![
        (
            reqwest::Method::PUT,
            "/api/datasets/ga.people".into(),
            nested.clone(),
            GA,
        ),
        (
            reqwest::Method::POST,
            "/api/lag/status".into(),
            nested,
            XIHU,
        ),
        (
            reqwest::Method::PUT,
            "/api/datasets/ga.people".into(),
            huge,
            GA,
        ),
        (
            reqwest::Method::POST,
            format!("/api/subscriptions/{long_id}:ga.people/approve"),
            "{}".into(),
            GA,
        ),
        (
            reqwest::Method::GET,
            "/api/subscriptions/%00%ff%fe:ga.people".into(),
            String::new(),
            XIHU,
        ),
        (
            reqwest::Method::POST,
            "/api/subscriptions/330106:ga.people/%2e%2e".into(),
            "{}".into(),
            GA,
        ),
        (
            reqwest::Method::GET,
            "/api/lag/history?subscriber=%ff&dataset=%00".into(),
            String::new(),
            XIHU,
        ),
        (
            reqwest::Method::GET,
            "/subjects/backflow.share.330108.ga.people-value/versions/latest".into(),
            String::new(),
            XIHU,
        ),
        // A recursive schema and a deep one against a subject's schemas.
        (
            reqwest::Method::POST,
            "/compatibility/subjects/backflow.raw.ga.people-value/versions/latest".into(),
            recursive.clone(),
            XIHU,
        ),
        (
            reqwest::Method::POST,
            "/subjects/backflow.raw.ga.people-value".into(),
            recursive,
            XIHU,
        ),
        (
            reqwest::Method::POST,
            "/compatibility/subjects/backflow.raw.ga.people-value/versions/latest".into(),
            deep.clone(),
            XIHU,
        ),
        (
            reqwest::Method::POST,
            "/compatibility/subjects/backflow.raw.ga.people-value/versions".into(),
            deep,
            GA,
        ),
    ];
    for (method, path, body, token) in raws {
        let r = client
            .request(method.clone(), format!("{}{path}", s.node.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_server_error() => wrong.push(format!(
                "{method} {}: {}",
                &path[..path.len().min(80)],
                r.status()
            )),
            _ => {}
        }
    }
    for header in [
        "Bearer ",
        "Basic !!!",
        "Basic Og==",
        &format!("Bearer {}", "x".repeat(60_000)),
    ] {
        let r = client
            .get(format!("{}/api/datasets", s.node.url))
            .header("authorization", header)
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().as_u16() != 401 && !r.status().is_client_error() {
                wrong.push(format!(
                    "authorization {}: {}",
                    &header[..header.len().min(20)],
                    r.status()
                ));
            }
        }
    }
    let (health, _) = s.node.get("/healthz").await.unwrap();
    let log = s.node.stderr();
    if health != 200 || log.contains("panicked") {
        wrong.push(format!("node unhealthy ({health}) or panicked:\n{log}"));
    }
    let (_, grace) = s.node.api("GET", "/api/datasets", Some(ADMIN), None).await;
    let people = grace.to_string();
    assert!(
        !people.contains("\"ended_share_grace_hours\":0"),
        "someone but the owner set the grace: {people}"
    );
    assert!(
        wrong.is_empty(),
        "not refused as they should be:\n{}",
        wrong.join("\n")
    );
}
