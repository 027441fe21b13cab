//! The schema registry a node serves at the root of its HTTP server, as
//! Confluent clients use it: durability across restarts, nodes sharing one
//! broker agreeing on ids, Confluent's error codes, compatibility and
//! deletion semantics, and Confluent's own Python client both ways. Every
//! node here knows an admin token and every call sends it (who may do what
//! is tests/tests/e2e/registry_auth.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use backflow_e2e::{python, unique_name, Node, TestBroker};
use serde_json::{json, Value as Json};

const READY: Duration = Duration::from_secs(30);
const CT: &str = "application/vnd.schemaregistry.v1+json";
/// The admin token of every node these tests start.
const ADMIN: &str = "registry-tests-admin-token";
/// A subscriber's token of every node these tests start (reads only).
const READER: &str = "registry-tests-reader-token";

/// `backflow serve` with these variables, knowing [`ADMIN`] and [`READER`].
fn start(env: &[(&str, &str)]) -> Node {
    let config = format!(
        "[[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nprincipal = \"subscriber:330106\"\nsha256 = \"{}\"\n",
        backflow::auth::token_hash(ADMIN),
        backflow::auth::token_hash(READER),
    );
    Node::start_with_config(&config, env).unwrap()
}

/// A record schema with `n` extra optional fields (each one a compatible
/// evolution of the previous).
fn schema(name: &str, extra: usize) -> String {
    let mut fields = vec![json!({"name": "id", "type": "long"})];
    for i in 0..extra {
        fields.push(json!({"name": format!("f{i}"), "type": ["null", "string"], "default": null}));
    }
    json!({"type": "record", "name": name, "namespace": "backflow.test", "fields": fields})
        .to_string()
}

/// One HTTP call: status, JSON body (`Null` when not JSON), Content-Type.
async fn call(method: &str, url: &str, body: Option<String>) -> (u16, Json, String) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PUT" => client.put(url),
        "DELETE" => client.delete(url),
        _ => unreachable!("{method}"),
    }
    .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.header("Content-Type", CT).body(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Json::Null);
    (status, json, ct)
}

async fn get(url: &str) -> (u16, Json) {
    let (s, j, _) = call("GET", url, None).await;
    (s, j)
}

async fn register(url: &str, subject: &str, schema: &str) -> (u16, Json) {
    let (s, j, _) = call(
        "POST",
        &format!("{url}/subjects/{subject}/versions"),
        Some(json!({ "schema": schema }).to_string()),
    )
    .await;
    (s, j)
}

/// Registers and returns the id, failing the test on any error.
async fn id_of(url: &str, subject: &str, schema: &str) -> u64 {
    let (s, j) = register(url, subject, schema).await;
    assert_eq!(s, 200, "register under {subject} at {url}: {j}");
    j["id"].as_u64().unwrap_or_else(|| panic!("no id in {j}"))
}

/// Everything a node answers about these subjects and ids: listings (live
/// and with deleted), subject configs, every version (deleted ones too) and
/// every id's schema, each with its status. Two registries that agree give
/// equal snapshots.
async fn snapshot(url: &str, subjects: &[String], ids: &BTreeSet<u64>) -> Json {
    let mut out = serde_json::Map::new();
    for path in ["/subjects", "/subjects?deleted=true", "/config"] {
        out.insert(path.into(), json!(get(&format!("{url}{path}")).await));
    }
    for s in subjects {
        let (st, all) = get(&format!("{url}/subjects/{s}/versions?deleted=true")).await;
        out.insert(format!("{s} all"), json!([st, all]));
        let live = get(&format!("{url}/subjects/{s}/versions")).await;
        out.insert(format!("{s} live"), json!(live));
        let config = get(&format!("{url}/config/{s}")).await;
        out.insert(format!("{s} config"), json!(config));
        for v in all.as_array().into_iter().flatten() {
            let got = get(&format!("{url}/subjects/{s}/versions/{v}?deleted=true")).await;
            out.insert(format!("{s} v{v}"), json!(got));
        }
    }
    for id in ids {
        let got = get(&format!("{url}/schemas/ids/{id}")).await;
        out.insert(format!("id {id}"), json!(got));
    }
    Json::Object(out)
}

#[tokio::test]
async fn registry_ids_survive_node_restart() {
    let broker = TestBroker::start();
    let kafka = broker.bootstrap().to_owned();
    let env = [("BACKFLOW_KAFKA__BROKERS", kafka.as_str())];
    let run = unique_name("restart");
    let people = format!("{run}-people-value");
    let copy = format!("{run}-copy-value");
    let orders = format!("{run}-orders-value");
    let subjects = vec![people.clone(), copy.clone(), orders.clone()];

    let mut node = start(&env);
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let u = node.url.clone();
    let p1 = id_of(&u, &people, &schema("People", 0)).await;
    let p2 = id_of(&u, &people, &schema("People", 1)).await;
    // The same schema under another subject shares its id.
    assert_eq!(id_of(&u, &copy, &schema("People", 0)).await, p1);
    let o1 = id_of(&u, &orders, &schema("Order", 0)).await;
    let o2 = id_of(&u, &orders, &schema("Order", 1)).await;
    let ids: BTreeSet<u64> = [p1, p2, o1, o2].into();
    assert_eq!(ids.len(), 4, "four distinct schemas, four ids: {ids:?}");
    // Configuration and deletions are part of the log too.
    let (st, _, _) = call(
        "PUT",
        &format!("{u}/config/{orders}"),
        Some(json!({"compatibility": "FULL"}).to_string()),
    )
    .await;
    assert_eq!(st, 200);
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{orders}/versions/1"), None).await;
    assert_eq!((st, &j), (200, &json!(1)));
    let before = snapshot(&u, &subjects, &ids).await;
    // Sanity: the snapshot holds what was written.
    assert_eq!(before[format!("{people} live")], json!([200, [1, 2]]));
    assert_eq!(before[format!("{orders} live")], json!([200, [2]]));
    assert_eq!(before[format!("{orders} all")], json!([200, [1, 2]]));
    assert_eq!(
        before[format!("{orders} config")],
        json!([200, {"compatibilityLevel": "FULL"}])
    );
    assert_eq!(before[format!("{copy} v1")][1]["id"], json!(p1));

    node.signal("TERM").unwrap();
    let status = node.wait(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "exit {status}:\n{}", node.stderr());
    drop(node);

    let node = start(&env);
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let u = node.url.clone();
    let after = snapshot(&u, &subjects, &ids).await;
    assert_eq!(after, before, "the restarted node serves the same registry");
    for (id, name, extra) in [(p1, "People", 0), (p2, "People", 1), (o1, "Order", 0)] {
        let (_, by_id) = get(&format!("{u}/schemas/ids/{id}")).await;
        let got = Schema::parse_str(by_id["schema"].as_str().unwrap()).unwrap();
        assert_eq!(
            got,
            Schema::parse_str(&schema(name, extra)).unwrap(),
            "id {id}"
        );
    }
    // Registering again is idempotent across the restart, and a new schema
    // gets a new id: the restarted node does not hand out a taken one.
    assert_eq!(id_of(&u, &people, &schema("People", 1)).await, p2);
    let p3 = id_of(&u, &people, &schema("People", 2)).await;
    assert!(p3 > *ids.iter().max().unwrap(), "new id {p3} after {ids:?}");
    let (_, latest) = get(&format!("{u}/subjects/{people}/versions/latest")).await;
    assert_eq!(
        (latest["version"].as_u64(), latest["id"].as_u64()),
        (Some(3), Some(p3))
    );
}

#[tokio::test]
async fn registry_two_nodes_on_one_broker_agree_on_ids() {
    let broker = TestBroker::start();
    let kafka = broker.bootstrap().to_owned();
    let env = [("BACKFLOW_KAFKA__BROKERS", kafka.as_str())];
    let a = start(&env);
    let b = start(&env);
    a.wait_for_status("/readyz", 200, READY).await.unwrap();
    b.wait_for_status("/readyz", 200, READY).await.unwrap();
    let run = unique_name("agree");
    // Both nodes register at the same time, one request after the other on
    // each: distinct schemas under distinct subjects, and between them one
    // schema shared by both under one subject.
    let shared_subject = format!("{run}-shared-value");
    let shared = schema("Shared", 0);
    let work = |node: &Node, side: &'static str| {
        let url = node.url.clone();
        let run = run.clone();
        let (shared_subject, shared) = (shared_subject.clone(), shared.clone());
        async move {
            let mut got = Vec::new();
            for i in 0..10 {
                let subject = format!("{run}-{side}{i}-value");
                let s = schema(&format!("T{side}{i}"), 0);
                got.push((subject.clone(), s.clone(), id_of(&url, &subject, &s).await));
                if i % 3 == 0 {
                    let id = id_of(&url, &shared_subject, &shared).await;
                    got.push((shared_subject.clone(), shared.clone(), id));
                }
            }
            got
        }
    };
    let (from_a, from_b) = tokio::join!(work(&a, "a"), work(&b, "b"));
    let all: Vec<(String, String, u64)> = from_a.into_iter().chain(from_b).collect();
    let mut id_by_schema = BTreeMap::new();
    let mut schema_by_id = BTreeMap::new();
    for (_, s, id) in &all {
        let canon = Schema::parse_str(s).unwrap().canonical_form();
        let first = *id_by_schema.entry(canon.clone()).or_insert(*id);
        assert_eq!(first, *id, "one schema, one id: {s}");
        let first = schema_by_id.entry(*id).or_insert(canon.clone()).clone();
        assert_eq!(first, canon, "one id, one schema: {id}");
    }
    assert_eq!(
        schema_by_id.len(),
        21,
        "20 distinct schemas plus the shared one: {schema_by_id:?}"
    );
    let ids: BTreeSet<u64> = schema_by_id.keys().copied().collect();
    let subjects: Vec<String> = all
        .iter()
        .map(|(s, _, _)| s.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(subjects.len(), 21);

    // Once both caught up they serve the same registry, holding every write.
    let deadline = Instant::now() + READY;
    let (sa, sb) = loop {
        let sa = snapshot(&a.url, &subjects, &ids).await;
        let sb = snapshot(&b.url, &subjects, &ids).await;
        let complete = |s: &Json| {
            subjects
                .iter()
                .all(|sub| s[format!("{sub} live")][0] == json!(200))
                && ids.iter().all(|id| s[format!("id {id}")][0] == json!(200))
        };
        if sa == sb && complete(&sa) {
            break (sa, sb);
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not converge within {READY:?}:\na: {sa}\nb: {sb}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sa, sb);
    let listed: BTreeSet<String> = serde_json::from_value(sa["/subjects"][1].clone()).unwrap();
    assert_eq!(listed, subjects.iter().cloned().collect::<BTreeSet<_>>());
    for (subject, s, id) in &all {
        // One version each, the shared subject included: both nodes
        // registering the same schema under it made one version.
        assert_eq!(
            sa[format!("{subject} live")],
            json!([200, [1]]),
            "{subject}"
        );
        let v = &sa[format!("{subject} v1")][1];
        assert_eq!(v["id"].as_u64(), Some(*id), "{subject}: {v}");
        let served = &sa[format!("id {id}")][1]["schema"];
        let served = Schema::parse_str(served.as_str().unwrap()).unwrap();
        assert_eq!(served, Schema::parse_str(s).unwrap(), "id {id}");
    }
}

/// Two nodes each given a burst of registrations at once (as when many
/// producers with `auto.register.schemas` start together): every one must
/// succeed, with its own id.
#[tokio::test]
async fn registry_two_nodes_register_every_schema_of_a_concurrent_burst() {
    let broker = TestBroker::start();
    let kafka = broker.bootstrap().to_owned();
    let env = [("BACKFLOW_KAFKA__BROKERS", kafka.as_str())];
    // Both start at the same time, as replicas of one deployment do.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| start(&env));
        let b = s.spawn(|| start(&env));
        (a.join().unwrap(), b.join().unwrap())
    });
    a.wait_for_status("/readyz", 200, READY).await.unwrap();
    b.wait_for_status("/readyz", 200, READY).await.unwrap();
    let run = unique_name("burst");
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..12 {
        for (node, side) in [(&a, "a"), (&b, "b")] {
            let url = node.url.clone();
            let subject = format!("{run}-{side}{i}-value");
            let s = schema(&format!("B{side}{i}"), 0);
            requests.spawn(async move {
                let (status, body) = register(&url, &subject, &s).await;
                (subject, status, body)
            });
        }
    }
    let results = requests.join_all().await;
    let failed: Vec<_> = results.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} registrations failed: {failed:#?}",
        failed.len(),
        results.len()
    );
    let ids: BTreeSet<u64> = results
        .iter()
        .map(|(_, _, body)| body["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        results.len(),
        "each schema its own id: {results:?}"
    );
}

#[tokio::test]
async fn registry_bad_input_returns_confluent_error_codes() {
    let node = start(&[]);
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let u = &node.url;
    id_of(u, "known-value", &schema("Known", 0)).await;
    let incompatible = json!({"type": "record", "name": "Known", "namespace": "backflow.test",
        "fields": [{"name": "id", "type": "string"}]})
    .to_string();
    let long = json!({"schema": "\"long\""}).to_string();
    let cases: Vec<(&str, String, Option<String>, u16, u64)> = vec![
        // Not JSON at all.
        ("POST", format!("{u}/subjects/x-value/versions"), Some("{not json".into()), 400, 400),
        ("PUT", format!("{u}/config"), Some("compatibility=NONE".into()), 400, 400),
        // JSON, but not a valid Avro schema.
        (
            "POST",
            format!("{u}/subjects/x-value/versions"),
            Some(json!({"schema": "{\"type\":\"record\",\"name\":\"X\"}"}).to_string()),
            422,
            42201,
        ),
        (
            "POST",
            format!("{u}/subjects/x-value/versions"),
            Some(json!({"schema": "not avro at all"}).to_string()),
            422,
            42201,
        ),
        (
            "POST",
            format!("{u}/subjects/x-value/versions"),
            Some(json!({"schema": "{\"type\":\"record\",\"name\":\"X\",\"fields\":[{\"name\":\"a\",\"type\":\"nosuchtype\"}]}"}).to_string()),
            422,
            42201,
        ),
        (
            "POST",
            format!("{u}/subjects/x-value/versions"),
            Some(json!({"schema": "{}", "schemaType": "PROTOBUF"}).to_string()),
            422,
            42201,
        ),
        (
            "POST",
            format!("{u}/compatibility/subjects/known-value/versions/latest"),
            Some(json!({"schema": "{\"type\":\"enum\"}"}).to_string()),
            422,
            42201,
        ),
        // Unknown subject, version, id.
        ("GET", format!("{u}/subjects/unknown-value/versions"), None, 404, 40401),
        ("GET", format!("{u}/subjects/unknown-value/versions/1"), None, 404, 40401),
        ("GET", format!("{u}/subjects/unknown-value/versions/latest"), None, 404, 40401),
        ("POST", format!("{u}/subjects/unknown-value"), Some(long.clone()), 404, 40401),
        ("DELETE", format!("{u}/subjects/unknown-value"), None, 404, 40401),
        (
            "POST",
            format!("{u}/compatibility/subjects/unknown-value/versions/1"),
            Some(long.clone()),
            404,
            40401,
        ),
        ("GET", format!("{u}/subjects/known-value/versions/9"), None, 404, 40402),
        ("GET", format!("{u}/subjects/known-value/versions/9/schema"), None, 404, 40402),
        ("DELETE", format!("{u}/subjects/known-value/versions/9"), None, 404, 40402),
        (
            "POST",
            format!("{u}/compatibility/subjects/known-value/versions/9"),
            Some(long.clone()),
            404,
            40402,
        ),
        ("GET", format!("{u}/schemas/ids/999999"), None, 404, 40403),
        ("GET", format!("{u}/schemas/ids/999999/versions"), None, 404, 40403),
        // A schema the subject does not have.
        (
            "POST",
            format!("{u}/subjects/known-value"),
            Some(json!({"schema": schema("Other", 0)}).to_string()),
            404,
            40403,
        ),
        // Version strings that are not versions.
        ("GET", format!("{u}/subjects/known-value/versions/first"), None, 422, 42202),
        ("GET", format!("{u}/subjects/known-value/versions/0"), None, 422, 42202),
        ("GET", format!("{u}/subjects/known-value/versions/-2"), None, 422, 42202),
        ("GET", format!("{u}/subjects/known-value/versions/1.5"), None, 422, 42202),
        ("DELETE", format!("{u}/subjects/known-value/versions/first"), None, 422, 42202),
        (
            "POST",
            format!("{u}/compatibility/subjects/known-value/versions/first"),
            Some(long.clone()),
            422,
            42202,
        ),
        // Compatibility levels that do not exist.
        (
            "PUT",
            format!("{u}/config"),
            Some(json!({"compatibility": "SIDEWAYS"}).to_string()),
            422,
            42203,
        ),
        (
            "PUT",
            format!("{u}/config/known-value"),
            Some(json!({"compatibility": "BACKWARDS"}).to_string()),
            422,
            42203,
        ),
        // A subject without a level of its own.
        ("GET", format!("{u}/config/known-value"), None, 404, 40408),
        // An incompatible schema.
        (
            "POST",
            format!("{u}/subjects/known-value/versions"),
            Some(json!({"schema": incompatible}).to_string()),
            409,
            409,
        ),
    ];
    for (method, url, body, status, code) in cases {
        let (s, j, ct) = call(method, &url, body).await;
        assert_eq!(
            (s, j["error_code"].as_u64()),
            (status, Some(code)),
            "{method} {url}: {j}"
        );
        assert!(
            j["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {url}: {j}"
        );
        assert_eq!(ct, CT, "{method} {url}");
    }
    // The refusal says why.
    let (_, j) = register(u, "known-value", &incompatible).await;
    let message = j["message"].as_str().unwrap();
    assert!(
        message.contains("incompatible") && message.contains("known-value"),
        "{message}"
    );
    // Nothing above changed the registry.
    let (_, versions) = get(&format!("{u}/subjects/known-value/versions")).await;
    assert_eq!(versions, json!([1]));
    let (_, subjects) = get(&format!("{u}/subjects")).await;
    assert_eq!(subjects, json!(["known-value"]));
    let (_, config) = get(&format!("{u}/config")).await;
    assert_eq!(config, json!({"compatibilityLevel": "BACKWARD"}));
    // Successful answers carry the same content type.
    for path in [
        "/subjects",
        "/subjects/known-value/versions/1",
        "/config",
        "/schemas/types",
    ] {
        let (s, _, ct) = call("GET", &format!("{u}{path}"), None).await;
        assert_eq!((s, ct.as_str()), (200, CT), "{path}");
    }
}

#[tokio::test]
async fn registry_register_is_idempotent_and_config_changes_compatibility() {
    let node = start(&[]);
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let u = &node.url;
    let s = "people-value";
    let v1 = schema("People", 0);
    let id = id_of(u, s, &v1).await;
    assert_eq!(id_of(u, s, &v1).await, id);
    // Same schema, other whitespace and attribute order.
    let reordered = r#"{ "namespace": "backflow.test", "fields": [ { "type": "long", "name": "id" } ],
        "name": "People", "type": "record" }"#;
    assert_eq!(id_of(u, s, reordered).await, id);
    let (_, versions) = get(&format!("{u}/subjects/{s}/versions")).await;
    assert_eq!(versions, json!([1]));
    let (st, found, _) = call(
        "POST",
        &format!("{u}/subjects/{s}"),
        Some(json!({"schema": reordered}).to_string()),
    )
    .await;
    assert_eq!(
        (st, found["version"].as_u64(), found["id"].as_u64()),
        (200, Some(1), Some(id)),
        "{found}"
    );

    // An incompatible change is refused under BACKWARD, reported by the
    // compatibility endpoint, and accepted once the subject says NONE.
    let breaking = json!({"type": "record", "name": "People", "namespace": "backflow.test",
        "fields": [{"name": "id", "type": "long"}, {"name": "must", "type": "string"}]})
    .to_string();
    let (st, j) = register(u, s, &breaking).await;
    assert_eq!((st, j["error_code"].as_u64()), (409, Some(409)), "{j}");
    let check_url = format!("{u}/compatibility/subjects/{s}/versions/latest");
    let (st, check, _) = call(
        "POST",
        &format!("{check_url}?verbose=true"),
        Some(json!({"schema": breaking}).to_string()),
    )
    .await;
    assert_eq!(st, 200, "{check}");
    assert_eq!(check["is_compatible"], json!(false), "{check}");
    let messages = check["messages"]
        .as_array()
        .expect("verbose gives messages");
    assert!(
        messages
            .iter()
            .any(|m| m.as_str().unwrap().contains("must")),
        "names the field without a default: {check}"
    );
    let (_, quiet, _) = call(
        "POST",
        &check_url,
        Some(json!({"schema": breaking}).to_string()),
    )
    .await;
    assert_eq!(quiet, json!({"is_compatible": false}));
    let (_, fine, _) = call(
        "POST",
        &format!("{check_url}?verbose=true"),
        Some(json!({"schema": schema("People", 1)}).to_string()),
    )
    .await;
    assert_eq!(fine["is_compatible"], json!(true), "{fine}");
    assert_eq!(fine["messages"], json!([]), "{fine}");

    let (st, put, _) = call(
        "PUT",
        &format!("{u}/config/{s}"),
        Some(json!({"compatibility": "NONE"}).to_string()),
    )
    .await;
    assert_eq!((st, put), (200, json!({"compatibility": "NONE"})));
    let (_, cfg) = get(&format!("{u}/config/{s}")).await;
    assert_eq!(cfg["compatibilityLevel"], "NONE");
    let (_, global) = get(&format!("{u}/config")).await;
    assert_eq!(
        global["compatibilityLevel"], "BACKWARD",
        "only the subject changed"
    );
    let (_, check, _) = call(
        "POST",
        &check_url,
        Some(json!({"schema": breaking}).to_string()),
    )
    .await;
    assert_eq!(check["is_compatible"], json!(true), "NONE accepts anything");
    let id2 = id_of(u, s, &breaking).await;
    assert_ne!(id2, id);
    let (_, latest) = get(&format!("{u}/subjects/{s}/versions/latest")).await;
    assert_eq!(
        (latest["version"].as_u64(), latest["id"].as_u64()),
        (Some(2), Some(id2))
    );
    let (_, raw) = get(&format!("{u}/subjects/{s}/versions/2/schema")).await;
    assert_eq!(raw["fields"][1]["name"], "must");
    let (_, usages) = get(&format!("{u}/schemas/ids/{id}/versions")).await;
    assert_eq!(usages, json!([{"subject": s, "version": 1}]));
    // Another subject still follows the global BACKWARD.
    id_of(u, "other-value", &v1).await;
    assert_eq!(register(u, "other-value", &breaking).await.0, 409);
    // Deleting the subject's level falls back to the global one.
    let (st, j, _) = call("DELETE", &format!("{u}/config/{s}"), None).await;
    assert_eq!((st, j), (200, json!({"compatibilityLevel": "NONE"})));
    let (st, _) = get(&format!("{u}/config/{s}")).await;
    assert_eq!(st, 404);

    // Soft delete hides a version; permanent delete needs the soft one first.
    let (st, j, _) = call(
        "DELETE",
        &format!("{u}/subjects/{s}/versions/2?permanent=true"),
        None,
    )
    .await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40407)), "{j}");
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{s}/versions/2"), None).await;
    assert_eq!((st, j), (200, json!(2)));
    let (_, live) = get(&format!("{u}/subjects/{s}/versions")).await;
    assert_eq!(live, json!([1]));
    let (_, all) = get(&format!("{u}/subjects/{s}/versions?deleted=true")).await;
    assert_eq!(all, json!([1, 2]));
    let (st, _) = get(&format!("{u}/subjects/{s}/versions/2")).await;
    assert_eq!(st, 404, "a soft-deleted version is hidden");
    let (st, v2) = get(&format!("{u}/subjects/{s}/versions/2?deleted=true")).await;
    assert_eq!((st, v2["id"].as_u64()), (200, Some(id2)), "{v2}");
    let (_, latest) = get(&format!("{u}/subjects/{s}/versions/latest")).await;
    assert_eq!(
        latest["version"],
        json!(1),
        "latest skips soft-deleted versions"
    );
    let (st, _, _) = call(
        "DELETE",
        &format!("{u}/subjects/{s}/versions/2?permanent=true"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (_, all) = get(&format!("{u}/subjects/{s}/versions?deleted=true")).await;
    assert_eq!(all, json!([1]));
    // backflow keeps the id readable (records written with it still decode)
    // and never hands it out again.
    assert_eq!(get(&format!("{u}/schemas/ids/{id2}")).await.0, 200);

    // Subject deletion, soft then permanent.
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{s}?permanent=true"), None).await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40405)), "{j}");
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{s}"), None).await;
    assert_eq!((st, j), (200, json!([1])));
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{s}"), None).await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40404)), "{j}");
    let (_, subjects) = get(&format!("{u}/subjects")).await;
    assert_eq!(subjects, json!(["other-value"]));
    let (_, subjects) = get(&format!("{u}/subjects?deleted=true")).await;
    assert_eq!(subjects, json!(["other-value", s]));
    let (st, j) = get(&format!("{u}/subjects/{s}/versions")).await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40401)), "{j}");
    let (_, all) = get(&format!("{u}/subjects/{s}/versions?deleted=true")).await;
    assert_eq!(all, json!([1]));
    let (st, _, _) = call("DELETE", &format!("{u}/subjects/{s}?permanent=true"), None).await;
    assert_eq!(st, 200);
    let (st, j) = get(&format!("{u}/subjects/{s}/versions?deleted=true")).await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40401)), "{j}");
    let (_, subjects) = get(&format!("{u}/subjects?deleted=true")).await;
    assert_eq!(subjects, json!(["other-value"]));

    // Registering a soft-deleted schema again gives it back its id, as a
    // new version.
    let again = "again-value";
    let first = id_of(u, again, &schema("Again", 0)).await;
    let (st, _, _) = call("DELETE", &format!("{u}/subjects/{again}/versions/1"), None).await;
    assert_eq!(st, 200);
    assert_eq!(id_of(u, again, &schema("Again", 0)).await, first);
    let (_, live) = get(&format!("{u}/subjects/{again}/versions")).await;
    assert_eq!(live, json!([2]));
    let (_, all) = get(&format!("{u}/subjects/{again}/versions?deleted=true")).await;
    assert_eq!(all, json!([1, 2]));
    // Soft-deleting a version twice: Confluent answers 40406 (soft deleted,
    // use permanent=true), not 40402 (no such version).
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{again}/versions/1"), None).await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40406)), "{j}");
}

/// How the Python client presents itself to the registry.
#[derive(Clone, Copy)]
enum PyAuth<'a> {
    /// `basic.auth.user.info` = `user:token`.
    Basic(&'a str),
    /// A static bearer token.
    Bearer(&'a str),
    None,
}

/// Runs `tests/python/confluent_client.py` with these arguments and
/// credentials; returns what it did.
fn run_confluent_client(auth: PyAuth, args: &[&str]) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/confluent_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(args)
        .env_remove("BACKFLOW_REGISTRY_BASIC")
        .env_remove("BACKFLOW_REGISTRY_BEARER");
    match auth {
        PyAuth::Basic(info) => cmd.env("BACKFLOW_REGISTRY_BASIC", info),
        PyAuth::Bearer(token) => cmd.env("BACKFLOW_REGISTRY_BEARER", token),
        PyAuth::None => &mut cmd,
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {} {script}: {e}", python()))
}

/// Runs `tests/python/confluent_client.py` with these arguments and
/// credentials; returns its stdout, trimmed.
fn confluent_client(auth: PyAuth, args: &[&str]) -> String {
    let out = run_confluent_client(auth, args);
    assert!(
        out.status.success(),
        "confluent_client.py {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex: {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{s:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn confluent_python_client_interoperates_with_registry() {
    let node = start(&[]);
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let url = node.url.clone();

    // Confluent's serializer registers its schema with backflow and frames
    // the record; checked here by hand: magic byte, big-endian id, datum.
    let topic = "backflow.raw.test.residents";
    // Without credentials the registry refuses Confluent's client too.
    for mode in [
        vec![&url[..], "serialize", topic],
        vec![&url[..], "deserialize", topic, "00000000010a"],
    ] {
        let out = run_confluent_client(PyAuth::None, &mode);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{mode:?} without credentials succeeded"
        );
        assert!(err.contains("40101"), "{mode:?}: {err}");
    }
    // The admin's token as the password of basic authentication (how
    // Confluent's clients are configured for a registry behind a login).
    let admin_basic = format!("backflow:{ADMIN}");
    let framed = unhex(&confluent_client(
        PyAuth::Basic(&admin_basic),
        &[&url, "serialize", topic],
    ));
    assert!(framed.len() > 5, "{framed:?}");
    assert_eq!(framed[0], 0, "magic byte");
    let id = u32::from_be_bytes(framed[1..5].try_into().unwrap());
    let (st, latest) = get(&format!("{url}/subjects/{topic}-value/versions/latest")).await;
    assert_eq!(st, 200, "{latest}");
    assert_eq!(latest["id"].as_u64(), Some(u64::from(id)), "{latest}");
    assert_eq!(latest["version"].as_u64(), Some(1), "{latest}");
    let (st, by_id) = get(&format!("{url}/schemas/ids/{id}")).await;
    assert_eq!(st, 200, "{by_id}");
    let writer = Schema::parse_str(by_id["schema"].as_str().unwrap()).unwrap();
    let mut body = &framed[5..];
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&writer)
        .build()
        .unwrap()
        .read_value(&mut body)
        .unwrap();
    assert!(body.is_empty(), "{} bytes after the datum", body.len());
    assert_eq!(
        value,
        Value::Record(vec![
            ("id".into(), Value::Long(1)),
            ("name".into(), Value::String("杭州市西湖区".into())),
            ("region_code".into(), Value::String("330106".into())),
            (
                "income".into(),
                Value::Union(1, Box::new(Value::Double(1234.5)))
            ),
            (
                "tags".into(),
                Value::Array(vec![
                    Value::String("回流".into()),
                    Value::String("district".into())
                ])
            ),
        ])
    );

    // backflow's side registers over HTTP and frames by hand; Confluent's
    // deserializer fetches the schema by id and reads the record.
    let other = "backflow.share.330106.test.residents";
    let text = r#"{"type":"record","name":"Share","namespace":"backflow.test","fields":[
        {"name":"id","type":"long"},
        {"name":"district","type":"string"},
        {"name":"level","type":{"type":"enum","name":"Level","symbols":["PROVINCE","CITY","DISTRICT"]}},
        {"name":"population","type":["null","long"],"default":null},
        {"name":"note","type":["null","string"],"default":null}]}"#;
    let share_id = id_of(&url, &format!("{other}-value"), text).await;
    assert_ne!(share_id, u64::from(id));
    let schema = Schema::parse_str(text).unwrap();
    let record = Value::Record(vec![
        ("id".into(), Value::Long(7)),
        ("district".into(), Value::String("西湖区".into())),
        ("level".into(), Value::Enum(2, "DISTRICT".into())),
        (
            "population".into(),
            Value::Union(1, Box::new(Value::Long(830_000))),
        ),
        ("note".into(), Value::Union(0, Box::new(Value::Null))),
    ]);
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(record)
        .unwrap();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(share_id).unwrap().to_be_bytes());
    framed.extend_from_slice(&datum);
    // A subscriber reads with its token as a static bearer token.
    let out = confluent_client(
        PyAuth::Bearer(READER),
        &[&url, "deserialize", other, &hex(&framed)],
    );
    let got: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert_eq!(
        got,
        json!({"id": 7, "district": "西湖区", "level": "DISTRICT", "population": 830000, "note": null})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_cli_registers_gets_and_checks() {
    let node = start(&[]);
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("v1.avsc");
    let bad = dir.path().join("bad.avsc");
    std::fs::write(&v1, schema("Cli", 1)).unwrap();
    std::fs::write(
        &bad,
        json!({"type": "record", "name": "Cli", "namespace": "backflow.test",
            "fields": [{"name": "id", "type": "string"}]})
        .to_string(),
    )
    .unwrap();
    let url = node.url.clone();
    let cli = move |token: Option<&str>, args: Vec<String>| {
        let mut cmd = backflow_e2e::backflow();
        cmd.arg("schemas").arg("--registry").arg(&url).args(&args);
        if let Some(t) = token {
            cmd.env("BACKFLOW_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let run = |args: Vec<String>| cli(Some(ADMIN), args);
    let p = |p: &std::path::Path| p.display().to_string();
    // Without a token the registry answers nothing.
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(None, vec!["register".into(), "cli-value".into(), p(&v1)])
    });
    assert_eq!(code, Some(2));
    assert!(err.contains("40101"), "{err}");
    let (code, out, err) =
        tokio::task::block_in_place(|| run(vec!["check".into(), "cli-value".into(), p(&v1)]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("compatible"), "{out}");
    let (code, out, err) =
        tokio::task::block_in_place(|| run(vec!["register".into(), "cli-value".into(), p(&v1)]));
    assert_eq!(code, Some(0), "{err}");
    let id: u64 = out.trim().parse().unwrap();
    let (code, out, _) =
        tokio::task::block_in_place(|| run(vec!["get".into(), "cli-value".into()]));
    assert_eq!(code, Some(0));
    let got: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (got["id"].as_u64(), got["version"].as_u64()),
        (Some(id), Some(1))
    );
    let (code, out, _) =
        tokio::task::block_in_place(|| run(vec!["check".into(), "cli-value".into(), p(&bad)]));
    assert_eq!(code, Some(1), "incompatible exits 1: {out}");
    assert!(
        out.contains("incompatible") && out.contains("version 1"),
        "{out}"
    );
    let (code, _, err) =
        tokio::task::block_in_place(|| run(vec!["get".into(), "no-such-value".into()]));
    assert_eq!(code, Some(2));
    assert!(err.contains("40401"), "{err}");
}
