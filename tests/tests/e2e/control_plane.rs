//! The control plane end to end: an owner registers a conditional dataset,
//! a district requests it, nothing flows until the owner approves; after
//! approval the district's database gets its rows (backfilled) and new
//! changes; a second district's backfill runs without pausing the first;
//! after revocation nothing new arrives. A not-shared dataset is
//! refused with its reason; tokens only do what their principal may.

use std::time::{Duration, Instant};

use backflow_e2e::share_topic::high_watermark;
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{pg_connect, unique_name, Node, TestBroker};
use serde_json::{json, Value};

fn sha256(token: &str) -> String {
    backflow::auth::token_hash(token)
}

async fn call(
    node: &Node,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    node.api(method, path, token, body).await
}

/// Distinct keys in a topic, read from its beginning to its end.
async fn distinct_keys(settings: &backflow::kafka::KafkaSettings, topic: &str) -> usize {
    let Ok(n) = backflow::kafka::partition_count(settings, topic).await else {
        return 0;
    };
    let w = backflow::kafka::Watermarks::new(settings).unwrap();
    let mut ends = std::collections::HashMap::new();
    for p in 0..n as i32 {
        // Raw and share topics are written in transactions: the end may be
        // a commit marker, never delivered.
        let high = w
            .settled_high(settings, topic, p, backflow::kafka::SETTLE_WITHIN)
            .await
            .unwrap_or(0);
        if high > 0 {
            ends.insert(p, high);
        }
    }
    if ends.is_empty() {
        return 0;
    }
    let parts: Vec<i32> = ends.keys().copied().collect();
    let consumer = backflow::kafka::Consumer::replay_partitions(settings, topic, &parts).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), consumer.recv_to(&mut ends))
        .await
        .unwrap()
        .unwrap()
    {
        keys.insert(r.key.unwrap_or_default());
    }
    keys.len()
}

async fn until_distributed(settings: &backflow::kafka::KafkaSettings, raw: &str) {
    let group = backflow::distributor::group_id("330100");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let n = backflow::kafka::partition_count(settings, raw)
            .await
            .unwrap_or(0) as i32;
        let w = backflow::kafka::Watermarks::new(settings).unwrap();
        let parts: Vec<(String, i32)> = (0..n).map(|p| (raw.to_owned(), p)).collect();
        let committed = backflow::kafka::group_committed(settings, &group, &parts)
            .await
            .unwrap_or_default();
        let mut behind = Vec::new();
        for (p, c) in (0..n).zip(committed.iter().chain(std::iter::repeat(&None))) {
            let high = w.high(raw, p).await.unwrap_or(0);
            if high > 0 && c.unwrap_or(0) < high {
                behind.push(format!("partition {p}: committed {c:?} of {high}"));
            }
        }
        if n > 0 && behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "the distributor did not commit {raw}: {}",
            behind.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const READ: [(&str, Kind); 2] = [("name", Kind::Text), ("region_code", Kind::Text)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_dataset_flows_only_between_approval_and_revocation() {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, name varchar(32) NOT NULL,
                id_number char(18) NOT NULL, region_code char(6) NOT NULL);
             INSERT INTO people SELECT g, '张三' || g, '33010619900101' || lpad(g::text, 4, '0'),
                 CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END FROM generate_series(1, 40) g;",
        )
        .await
        .unwrap();
    let broker = TestBroker::start();
    // Department names hold no '_' (see topics::validate_dataset_id).
    let department = format!("t{}", source.name[8..].replace('_', ""));
    let dataset = format!("{department}.people");
    let (admin, owner, xihu, binjiang) = (
        "admin-token-1",
        "owner-token-1",
        "xihu-token-1",
        "binjiang-token-1",
    );
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n\n\
         [[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n[[auth.tokens]]\nprincipal = \"owner:{department}\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nprincipal = \"subscriber:330106\"\nsha256 = \"{}\"\n[[auth.tokens]]\nprincipal = \"subscriber:330108\"\nsha256 = \"{}\"\n",
        broker.bootstrap(),
        source.name.replace('_', "-"),
        source.name,
        sha256(admin),
        sha256(owner),
        sha256(xihu),
        sha256(binjiang),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    // Nothing without a token; an unknown token is not a token.
    assert_eq!(call(&node, "GET", "/api/datasets", None, None).await.0, 401);
    assert_eq!(
        call(&node, "GET", "/api/datasets", Some("guess"), None)
            .await
            .0,
        401
    );

    let definition = json!({
        "description": "residents of the city",
        "sharing": "conditional",
        "region_column": "region_code",
        "fields": {
            "id": {},
            "name": {"sensitivity": "sensitive", "rule": "masked:name"},
            "id_number": {"sensitivity": "sensitive", "rule": "masked:keep(6,4)"},
            "region_code": {}
        }
    });
    let (status, body) = call(
        &node,
        "PUT",
        &format!("/api/datasets/{dataset}"),
        Some(xihu),
        Some(definition.clone()),
    )
    .await;
    assert_eq!(status, 403, "a subscriber cannot register datasets: {body}");
    let (status, body) = call(
        &node,
        "PUT",
        &format!("/api/datasets/{dataset}"),
        Some(owner),
        Some(definition),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let request = |subscriber: &str| json!({"subscriber": subscriber, "dataset": dataset, "purpose": "resident services", "fields": ["id", "name", "id_number", "region_code"], "valid_days": 30});
    let (status, body) = call(
        &node,
        "POST",
        "/api/subscriptions",
        Some(xihu),
        Some(request("330108")),
    )
    .await;
    assert_eq!(status, 403, "no requests on another node's behalf: {body}");
    assert!(
        body["reason"].as_str().unwrap().contains("330108"),
        "{body}"
    );
    let (status, body) = call(
        &node,
        "POST",
        "/api/subscriptions",
        Some(xihu),
        Some(request("330106")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "pending");
    assert!(body.get("secret").is_none(), "the HMAC key is never shown");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &node,
        "POST",
        "/api/subscriptions",
        Some(binjiang),
        Some(request("330108")),
    )
    .await;
    assert_eq!(status, 201);
    let (_, mine) = call(&node, "GET", "/api/subscriptions", Some(xihu), None).await;
    assert_eq!(
        mine.as_array().unwrap().len(),
        1,
        "a subscriber sees only its own: {mine}"
    );
    let (status, _) = call(
        &node,
        "POST",
        &format!("/api/subscriptions/{id}/approve"),
        Some(xihu),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403, "a subscriber cannot approve");

    // 330108 is approved first, so the distributor reads the dataset and
    // has every chance to leak; the request of 330106 stays pending.
    let (status, body) = call(
        &node,
        "POST",
        &format!("/api/subscriptions/330108:{dataset}/approve"),
        Some(owner),
        Some(json!({"request_version": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let settings = backflow::kafka::KafkaSettings::new(broker.bootstrap());
    let share_108 = format!("backflow.share.330108.{dataset}");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let keys = distinct_keys(&settings, &share_108).await;
        if keys == 20 {
            break;
        }
        assert!(
            Instant::now() < until,
            "330108 has {keys} of its 20 rows\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The district's subscriber runs, but nothing flows while pending.
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let sub_config = format!(
        "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", registry_token_env = \"XIHU_TOKEN\" }}\nsink = {}\ntables = [{{ topic = \"backflow.share.330106.{dataset}\", table = \"people\" }}]\n",
        unique_name("xihu"),
        broker.bootstrap(),
        node.url,
        sink.sink_toml(),
    );
    let mut sub = Node::subscribe_with_config(&sub_config, &[("XIHU_TOKEN", xihu)]).unwrap();
    // Absence proven, not waited for: the distributor has committed the
    // whole raw topic (every record of 330106's rows was distributed, to
    // 330108 only), and 330106's share topic has had nothing written.
    let share_topic = format!("backflow.share.330106.{dataset}");
    until_distributed(&settings, &format!("backflow.raw.{dataset}")).await;
    assert_eq!(
        high_watermark(broker.bootstrap(), &share_topic).await,
        0,
        "nothing written for 330106 before approval"
    );
    assert!(
        sink.rows("people", "id", &READ).await.unwrap().is_none(),
        "nothing before approval"
    );

    // Approved with the identity number left out, while 330108's share
    // runs: its backfill goes on beside the distributor, which then takes
    // it over without a restart, and the rows of 330106 arrive.
    let restarts_before = node.stderr().matches("restarting the distributor").count();
    let (status, body) = call(
        &node,
        "POST",
        &format!("/api/subscriptions/{id}/approve"),
        Some(owner),
        Some(json!({"fields": ["id", "name", "region_code"], "request_version": 1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "active");
    let wait_for = |want: usize, name_of_2: &'static str| {
        let sink = &sink;
        let sub = &sub;
        async move {
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(rows) = sink.rows("people", "id", &READ).await.unwrap() {
                    if rows.len() == want
                        && rows.get(&2).and_then(|r| r[0].as_deref()) == Some(name_of_2)
                    {
                        return rows;
                    }
                    assert!(
                        Instant::now() < until,
                        "{} rows, row 2 {:?}\n{}",
                        rows.len(),
                        rows.get(&2),
                        sub.stderr()
                    );
                } else {
                    assert!(Instant::now() < until, "no table\n{}", sub.stderr());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let rows = wait_for(20, "张**").await;
    assert!(
        rows.values().all(|r| r[1].as_deref() == Some("330106")),
        "only 330106's rows"
    );
    let cols = sink.columns("people").await.unwrap();
    assert!(
        !cols.iter().any(|c| c == "id_number"),
        "narrowed at approval: {cols:?}"
    );
    // The share joins the live flow once its backfill's reader passed
    // where the live flow stands (within a second of its last record).
    let until = Instant::now() + Duration::from_secs(30);
    while !node
        .stderr()
        .contains("backfilled share joined the running distributor")
    {
        assert!(Instant::now() < until, "{}", node.stderr());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = node.stderr();
    assert_eq!(
        log.matches("restarting the distributor").count(),
        restarts_before,
        "other subscriptions never paused for the backfill"
    );

    // Live changes flow while active.
    let db = pg_connect(&source.name).await.unwrap();
    db.batch_execute("UPDATE people SET name = '李四' WHERE id = 2")
        .await
        .unwrap();
    wait_for(20, "李*").await;

    // Only the subscriber itself (or the owner) reads a subscription.
    assert_eq!(
        call(
            &node,
            "GET",
            &format!("/api/subscriptions/{id}"),
            Some(binjiang),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &node,
            "GET",
            &format!("/api/subscriptions/{id}"),
            Some(xihu),
            None
        )
        .await
        .0,
        200
    );
    let (_, info) = call(&node, "GET", "/api/node", Some(xihu), None).await;
    assert_eq!(info["code"], "330100");
    assert_eq!(info["children"], json!(["330106", "330108"]), "{info}");

    // Narrowed to id and region: the next rows arrive without a name.
    let (status, body) = call(
        &node,
        "POST",
        &format!("/api/subscriptions/{id}/narrow"),
        Some(owner),
        Some(json!({"fields": ["id", "region_code"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policy_version"], 2, "approved 1, narrowed 2: {body}");
    db.batch_execute("INSERT INTO people VALUES (42, '赵六', '330106199001010042', '330106')")
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = sink.rows("people", "id", &READ).await.unwrap().unwrap();
        if let Some(r) = rows.get(&42) {
            assert_eq!(r[0], None, "name no longer shared");
            break;
        }
        assert!(
            Instant::now() < until,
            "row 42 never arrived\nsubscriber:\n{}\nnode:\n{}",
            sub.stderr(),
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Revoked: nothing new arrives.
    let (status, body) = call(
        &node,
        "POST",
        &format!("/api/subscriptions/{id}/revoke"),
        Some(owner),
        Some(json!({"reason": "purpose fulfilled"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "revoked");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let share_before = high_watermark(broker.bootstrap(), &share_topic).await;
    db.batch_execute("UPDATE people SET name = '王五' WHERE id = 2")
        .await
        .unwrap();
    // A marker behind that change on the same key (so on the same raw
    // partition, distributed after it): row 2 moves into 330108's
    // jurisdiction, and 330108's share, still active, must receive it.
    // Once it has, the distributor is past the change 330106 must not get.
    db.batch_execute("UPDATE people SET region_code = '330108' WHERE id = 2")
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let records =
            backflow_e2e::share_topic::read(broker.bootstrap(), &share_108, &node.url, admin)
                .await
                .unwrap_or_default();
        if records.iter().any(|r| {
            r.after()
                .is_some_and(|a| a["id"] == 2 && a["name"] == "王*")
        }) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the marker never reached 330108\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        high_watermark(broker.bootstrap(), &share_topic).await,
        share_before,
        "written to the share topic after revocation"
    );
    let rows = sink.rows("people", "id", &READ).await.unwrap().unwrap();
    assert_eq!(
        rows[&2][0].as_deref(),
        Some("李*"),
        "no delivery after revocation"
    );

    // A dataset that is not shared is refused with its reason.
    let secret = json!({"sharing": "not_shared", "not_shared_reason": "protected by the household register law", "fields": {"id": {}}});
    let (status, _) = call(
        &node,
        "PUT",
        &format!("/api/datasets/{department}.register"),
        Some(admin),
        Some(secret),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(&node, "POST", "/api/subscriptions", Some(xihu), Some(json!({"subscriber": "330106", "dataset": format!("{department}.register"), "purpose": "x", "fields": ["id"]}))).await;
    assert_eq!(status, 403);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("household register law"),
        "{body}"
    );

    // Every decision is on the audit trail, and it verifies.
    let out = backflow_e2e::backflow()
        .args(["audit", "verify", "--public-key"])
        .arg(node.audit_public_key().unwrap())
        .env("BACKFLOW_KAFKA__BROKERS", broker.bootstrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("audit trail intact"),
        "{stdout}"
    );

    sub.signal("TERM").unwrap();
    assert!(sub.wait(Duration::from_secs(20)).unwrap().success());
    drop(node);
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.drop_db().await.unwrap();
}
