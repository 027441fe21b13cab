//! The schema registry a node serves, as Confluent clients use it.

use std::process::Command;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use backflow_e2e::{unique_name, Node, TestBroker};
use serde_json::{json, Value as Json};

const READY: Duration = Duration::from_secs(30);
const CT: &str = "application/vnd.schemaregistry.v1+json";

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

async fn call(method: &str, url: &str, body: Option<String>) -> (u16, Json, String) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PUT" => client.put(url),
        "DELETE" => client.delete(url),
        _ => unreachable!(),
    };
    if let Some(b) = body {
        req = req.header("Content-Type", CT).body(b);
    }
    let resp = req.send().await.unwrap();
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

async fn register(url: &str, subject: &str, schema: &str) -> (u16, Json) {
    let (s, j, _) = call(
        "POST",
        &format!("{url}/subjects/{subject}/versions"),
        Some(json!({ "schema": schema }).to_string()),
    )
    .await;
    (s, j)
}

async fn id_of(url: &str, subject: &str, schema: &str) -> u64 {
    let (s, j) = register(url, subject, schema).await;
    assert_eq!(s, 200, "{j}");
    j["id"].as_u64().unwrap()
}

#[tokio::test]
async fn registry_ids_survive_node_restart() {
    let broker = TestBroker::start();
    let kafka = broker.bootstrap().to_owned();
    let env = [("BACKFLOW_KAFKA__BROKERS", kafka.as_str())];
    let subject = unique_name("restart-value");
    let mut ids = Vec::new();
    {
        let mut node = Node::start(&env).unwrap();
        node.wait_for_status("/readyz", 200, READY).await.unwrap();
        for extra in 0..3 {
            ids.push(id_of(&node.url, &subject, &schema("Restart", extra)).await);
        }
        node.signal("TERM").unwrap();
        assert!(node.wait(Duration::from_secs(15)).unwrap().success());
    }
    let node = Node::start(&env).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let (_, versions, _) = call(
        "GET",
        &format!("{}/subjects/{subject}/versions", node.url),
        None,
    )
    .await;
    assert_eq!(versions, json!([1, 2, 3]));
    for (i, id) in ids.iter().enumerate() {
        let (s, v, _) = call(
            "GET",
            &format!("{}/subjects/{subject}/versions/{}", node.url, i + 1),
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v["id"].as_u64().unwrap(), *id);
        let (_, by_id, _) = call("GET", &format!("{}/schemas/ids/{id}", node.url), None).await;
        let want = Schema::parse_str(&schema("Restart", i)).unwrap();
        let got = Schema::parse_str(by_id["schema"].as_str().unwrap()).unwrap();
        assert_eq!(got, want);
        // Registering again is idempotent across the restart.
        assert_eq!(id_of(&node.url, &subject, &schema("Restart", i)).await, *id);
    }
}

#[tokio::test]
async fn registry_two_nodes_on_one_broker_agree_on_ids() {
    let broker = TestBroker::start();
    let kafka = broker.bootstrap().to_owned();
    let env = [("BACKFLOW_KAFKA__BROKERS", kafka.as_str())];
    let a = Node::start(&env).unwrap();
    let b = Node::start(&env).unwrap();
    a.wait_for_status("/readyz", 200, READY).await.unwrap();
    b.wait_for_status("/readyz", 200, READY).await.unwrap();
    let run = unique_name("agree");
    // Both nodes register at the same time: distinct schemas under distinct
    // subjects, and one schema shared by both under one subject.
    let shared_subject = format!("{run}-shared-value");
    let shared = schema("Shared", 0);
    let work = |node: &Node, side: &'static str| {
        let url = node.url.clone();
        let run = run.clone();
        let (shared_subject, shared) = (shared_subject.clone(), shared.clone());
        async move {
            let mut got = Vec::new();
            for i in 0..8 {
                let subject = format!("{run}-{side}{i}-value");
                let s = schema(&format!("T{side}{i}"), 0);
                got.push((s.clone(), id_of(&url, &subject, &s).await));
                got.push((shared.clone(), id_of(&url, &shared_subject, &shared).await));
            }
            got
        }
    };
    let (from_a, from_b) = tokio::join!(work(&a, "a"), work(&b, "b"));
    let all: Vec<(String, u64)> = from_a.into_iter().chain(from_b).collect();
    let mut by_schema = std::collections::HashMap::new();
    let mut by_id = std::collections::HashMap::new();
    for (s, id) in &all {
        let canon = Schema::parse_str(s).unwrap().canonical_form();
        assert_eq!(
            *by_schema.entry(canon.clone()).or_insert(*id),
            *id,
            "one schema, one id"
        );
        assert_eq!(
            *by_id.entry(*id).or_insert(canon.clone()),
            canon,
            "one id, one schema"
        );
    }
    assert_eq!(by_id.len(), 17, "16 distinct schemas plus the shared one");
    // Both nodes end up serving the same registry.
    let deadline = Instant::now() + READY;
    loop {
        let (_, sa, _) = call("GET", &format!("{}/subjects", a.url), None).await;
        let (_, sb, _) = call("GET", &format!("{}/subjects", b.url), None).await;
        if sa == sb {
            break;
        }
        assert!(Instant::now() < deadline, "subjects differ: {sa} vs {sb}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in by_id.keys() {
        let (_, ja, _) = call("GET", &format!("{}/schemas/ids/{id}", a.url), None).await;
        let (_, jb, _) = call("GET", &format!("{}/schemas/ids/{id}", b.url), None).await;
        assert_eq!(ja, jb, "id {id}");
        assert!(ja["schema"].is_string());
    }
    let (_, va, _) = call(
        "GET",
        &format!("{}/subjects/{shared_subject}/versions", a.url),
        None,
    )
    .await;
    assert_eq!(va, json!([1]), "the shared schema is one version");
}

#[tokio::test]
async fn registry_bad_input_returns_confluent_error_codes() {
    let node = Node::start(&[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let u = &node.url;
    id_of(u, "known-value", &schema("Known", 0)).await;
    let cases: Vec<(&str, String, Option<String>, u16, u64)> = vec![
        ("POST", format!("{u}/subjects/x-value/versions"), Some("{not json".into()), 400, 400),
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
            Some(json!({"schema": "{}", "schemaType": "PROTOBUF"}).to_string()),
            422,
            42201,
        ),
        ("GET", format!("{u}/subjects/unknown-value/versions"), None, 404, 40401),
        ("GET", format!("{u}/subjects/unknown-value/versions/1"), None, 404, 40401),
        ("GET", format!("{u}/subjects/known-value/versions/9"), None, 404, 40402),
        ("GET", format!("{u}/subjects/known-value/versions/first"), None, 422, 42202),
        ("GET", format!("{u}/schemas/ids/999999"), None, 404, 40403),
        (
            "POST",
            format!("{u}/subjects/known-value"),
            Some(json!({"schema": schema("Other", 0)}).to_string()),
            404,
            40403,
        ),
        (
            "PUT",
            format!("{u}/config"),
            Some(json!({"compatibility": "SIDEWAYS"}).to_string()),
            422,
            42203,
        ),
        (
            "POST",
            format!("{u}/subjects/known-value/versions"),
            Some(
                json!({"schema": json!({"type": "record", "name": "Known", "namespace": "backflow.test",
                    "fields": [{"name": "id", "type": "string"}]}).to_string()})
                .to_string(),
            ),
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
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        assert_eq!(ct, CT, "{method} {url}");
    }
}

#[tokio::test]
async fn registry_register_is_idempotent_and_config_changes_compatibility() {
    let node = Node::start(&[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let u = &node.url;
    let s = "people-value";
    let v1 = schema("People", 0);
    let id = id_of(u, s, &v1).await;
    assert_eq!(id_of(u, s, &v1).await, id);
    // Same schema, other whitespace and attribute order.
    let reordered = r#"{ "namespace": "backflow.test", "fields": [ { "type": "long", "name": "id" } ], "name": "People", "type": "record" }"#;
    assert_eq!(id_of(u, s, reordered).await, id);
    let (_, versions, _) = call("GET", &format!("{u}/subjects/{s}/versions"), None).await;
    assert_eq!(versions, json!([1]));
    let (st, found, _) = call(
        "POST",
        &format!("{u}/subjects/{s}"),
        Some(json!({"schema": reordered}).to_string()),
    )
    .await;
    assert_eq!(
        (st, found["version"].as_u64(), found["id"].as_u64()),
        (200, Some(1), Some(id))
    );

    // An incompatible change is refused under BACKWARD, reported by the
    // compatibility endpoint, and accepted once the subject says NONE.
    let breaking = json!({"type": "record", "name": "People", "namespace": "backflow.test",
        "fields": [{"name": "id", "type": "long"}, {"name": "must", "type": "string"}]})
    .to_string();
    assert_eq!(register(u, s, &breaking).await.0, 409);
    let (_, check, _) = call(
        "POST",
        &format!("{u}/compatibility/subjects/{s}/versions/latest?verbose=true"),
        Some(json!({"schema": breaking}).to_string()),
    )
    .await;
    assert_eq!(check["is_compatible"], json!(false));
    assert!(
        check["messages"][0].as_str().unwrap().contains("must"),
        "{check}"
    );
    let (st, _, _) = call(
        "PUT",
        &format!("{u}/config/{s}"),
        Some(json!({"compatibility": "NONE"}).to_string()),
    )
    .await;
    assert_eq!(st, 200);
    let (_, cfg, _) = call("GET", &format!("{u}/config/{s}"), None).await;
    assert_eq!(cfg["compatibilityLevel"], "NONE");
    let (_, global, _) = call("GET", &format!("{u}/config"), None).await;
    assert_eq!(global["compatibilityLevel"], "BACKWARD");
    let id2 = id_of(u, s, &breaking).await;
    assert_ne!(id2, id);
    let (_, latest, _) = call("GET", &format!("{u}/subjects/{s}/versions/latest"), None).await;
    assert_eq!(
        (latest["version"].as_u64(), latest["id"].as_u64()),
        (Some(2), Some(id2))
    );
    let (_, raw, _) = call("GET", &format!("{u}/subjects/{s}/versions/2/schema"), None).await;
    assert_eq!(raw["fields"][1]["name"], "must");
    let (_, usages, _) = call("GET", &format!("{u}/schemas/ids/{id}/versions"), None).await;
    assert_eq!(usages, json!([{"subject": s, "version": 1}]));

    // Soft delete hides a version; permanent delete needs the soft one first.
    let (st, j, _) = call(
        "DELETE",
        &format!("{u}/subjects/{s}/versions/2?permanent=true"),
        None,
    )
    .await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40407)));
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{s}/versions/2"), None).await;
    assert_eq!((st, j), (200, json!(2)));
    let (_, live, _) = call("GET", &format!("{u}/subjects/{s}/versions"), None).await;
    assert_eq!(live, json!([1]));
    let (_, all, _) = call(
        "GET",
        &format!("{u}/subjects/{s}/versions?deleted=true"),
        None,
    )
    .await;
    assert_eq!(all, json!([1, 2]));
    let (st, _, _) = call(
        "DELETE",
        &format!("{u}/subjects/{s}/versions/2?permanent=true"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (_, all, _) = call(
        "GET",
        &format!("{u}/subjects/{s}/versions?deleted=true"),
        None,
    )
    .await;
    assert_eq!(all, json!([1]));
    // The id stays readable: old records written with it still decode.
    assert_eq!(
        call("GET", &format!("{u}/schemas/ids/{id2}"), None).await.0,
        200
    );

    // Subject deletion, soft then permanent.
    let (st, j, _) = call("DELETE", &format!("{u}/subjects/{s}"), None).await;
    assert_eq!((st, j), (200, json!([1])));
    let (_, subjects, _) = call("GET", &format!("{u}/subjects"), None).await;
    assert!(!subjects.as_array().unwrap().contains(&json!(s)));
    let (_, subjects, _) = call("GET", &format!("{u}/subjects?deleted=true"), None).await;
    assert!(subjects.as_array().unwrap().contains(&json!(s)));
    let (st, _, _) = call("DELETE", &format!("{u}/subjects/{s}?permanent=true"), None).await;
    assert_eq!(st, 200);
    let (st, j, _) = call(
        "GET",
        &format!("{u}/subjects/{s}/versions?deleted=true"),
        None,
    )
    .await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40401)));
}

fn python() -> String {
    if let Ok(p) = std::env::var("BACKFLOW_PYTHON") {
        return p;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/python-env.sh"))
        .output()
        .expect("run scripts/python-env.sh");
    assert!(
        out.status.success(),
        "scripts/python-env.sh failed (it installs confluent-kafka from PyPI):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("python-env.sh prints the python path")
        .to_owned()
}

fn client(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/confluent_client.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "confluent_client.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn confluent_python_client_interoperates_with_registry() {
    let node = Node::start(&[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let url = node.url.clone();

    // Confluent's serializer registers its schema with backflow and frames
    // the record; backflow's side decodes it.
    let topic = "backflow.raw.test.residents";
    let framed = unhex(
        &tokio::task::spawn_blocking({
            let url = url.clone();
            move || client(&["serialize", &url, topic])
        })
        .await
        .unwrap(),
    );
    let (_, latest, _) = call(
        "GET",
        &format!("{url}/subjects/{topic}-value/versions/latest"),
        None,
    )
    .await;
    let id = latest["id"].as_u64().unwrap() as u32;
    let registry = backflow_schemas::registry_client::RegistryClient::new(&url).unwrap();
    let schema = registry.fetch_schema(id).await.unwrap();
    let (got_id, body) = backflow_schemas::unframe(&framed).unwrap();
    assert_eq!(got_id, id);
    let cache = backflow_schemas::SchemaCache::new();
    cache.insert(id, schema);
    let (_, value) = backflow_schemas::decode_framed(&framed, &cache).unwrap();
    assert!(!body.is_empty());
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
        ])
    );

    // backflow registers and frames; Confluent's deserializer reads it.
    let other = "backflow.share.330106.test.residents";
    let schema = Schema::parse_str(
        r#"{"type":"record","name":"Share","namespace":"backflow.test","fields":[
            {"name":"id","type":"long"},{"name":"district","type":"string"}]}"#,
    )
    .unwrap();
    let id = registry
        .register(
            &backflow_schemas::registry_client::subject_for(other, false),
            &schema,
        )
        .await
        .unwrap();
    let record = Value::Record(vec![
        ("id".into(), Value::Long(7)),
        ("district".into(), Value::String("西湖区".into())),
    ]);
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(record)
        .unwrap();
    let framed = hex(&backflow_schemas::frame(id, &datum));
    let out = tokio::task::spawn_blocking(move || client(&["deserialize", &url, other, &framed]))
        .await
        .unwrap();
    let got: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(got, json!({"id": 7, "district": "西湖区"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_cli_registers_gets_and_checks() {
    let node = Node::start(&[]).unwrap();
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
    let run = move |args: Vec<String>| {
        let out = backflow_e2e::backflow()
            .arg("schemas")
            .arg("--registry")
            .arg(&url)
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let p = |p: &std::path::Path| p.display().to_string();
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
