//! The schema registry a node serves is behind the same tokens as its API:
//! no token, no answer (401, Confluent's 40101); admins, owners and
//! subscribers read, the auditor does not; only an admin changes it over
//! HTTP (otherwise 403, 40301, with the rule). The attack
//! these tests stop: anyone who reached the HTTP port deleted subjects for
//! good, registered junk or changed compatibility, and the node's feeds
//! failed after the next restart.

use std::time::Duration;

use backflow_e2e::{Node, TestToken};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
const CT: &str = "application/vnd.schemaregistry.v1+json";
const SUBJECT: &str = "backflow.raw.gongan.people-value";

/// How a call presents itself.
#[derive(Clone, Copy)]
enum Credentials<'a> {
    None,
    Bearer(&'a str),
    /// HTTP basic authentication, the token as the password.
    Basic(&'a str, &'a str),
}

/// One registry call: status, JSON body (`Null` when not JSON), Content-Type.
async fn call(
    node: &Node,
    who: Credentials<'_>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, String) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", node.url);
    let mut req = match method {
        "GET" => client.get(&url),
        "POST" => client.post(&url),
        "PUT" => client.put(&url),
        "DELETE" => client.delete(&url),
        _ => unreachable!("{method}"),
    };
    req = match who {
        Credentials::None => req,
        Credentials::Bearer(t) => req.bearer_auth(t),
        Credentials::Basic(user, t) => req.basic_auth(user, Some(t)),
    };
    if let Some(b) = body {
        req = req.header("Content-Type", CT).body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        ct,
    )
}

fn schema(extra: usize) -> Value {
    let mut fields = vec![json!({"name": "id", "type": "long"})];
    for i in 0..extra {
        fields.push(json!({"name": format!("f{i}"), "type": ["null", "string"], "default": null}));
    }
    let schema =
        json!({"type": "record", "name": "People", "namespace": "backflow.test", "fields": fields});
    json!({ "schema": schema.to_string() })
}

/// Every read route, with the body it takes.
fn reads(id: u64) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", "/subjects".into(), None),
        ("GET", format!("/subjects/{SUBJECT}/versions"), None),
        ("GET", format!("/subjects/{SUBJECT}/versions/1"), None),
        (
            "GET",
            format!("/subjects/{SUBJECT}/versions/latest/schema"),
            None,
        ),
        ("GET", format!("/schemas/ids/{id}"), None),
        ("GET", format!("/schemas/ids/{id}/versions"), None),
        ("GET", "/schemas/types".into(), None),
        ("POST", format!("/subjects/{SUBJECT}"), Some(schema(0))),
        (
            "POST",
            format!("/compatibility/subjects/{SUBJECT}/versions/latest"),
            Some(schema(1)),
        ),
        (
            "POST",
            format!("/compatibility/subjects/{SUBJECT}/versions"),
            Some(schema(1)),
        ),
        ("GET", "/config".into(), None),
        (
            "GET",
            format!("/config/{SUBJECT}?defaultToGlobal=true"),
            None,
        ),
    ]
}

/// Every write route, with the body it takes.
fn writes() -> Vec<(&'static str, String, Option<Value>)> {
    let none = json!({"compatibility": "NONE"});
    vec![
        (
            "POST",
            format!("/subjects/{SUBJECT}/versions"),
            Some(schema(1)),
        ),
        ("DELETE", format!("/subjects/{SUBJECT}/versions/1"), None),
        (
            "DELETE",
            format!("/subjects/{SUBJECT}/versions/1?permanent=true"),
            None,
        ),
        ("DELETE", format!("/subjects/{SUBJECT}"), None),
        (
            "DELETE",
            format!("/subjects/{SUBJECT}?permanent=true"),
            None,
        ),
        ("PUT", "/config".into(), Some(none.clone())),
        ("PUT", format!("/config/{SUBJECT}"), Some(none)),
        ("DELETE", format!("/config/{SUBJECT}"), None),
    ]
}

/// A node on the embedded broker knowing these tokens.
async fn node_with(tokens: &[&TestToken]) -> Node {
    let config: String = tokens.iter().map(|t| t.auth_toml()).collect();
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    node
}

/// Registers the subject's first version as admin; returns its id.
async fn seed(node: &Node, admin: &TestToken) -> u64 {
    let (st, j, _) = call(
        node,
        Credentials::Bearer(admin.token()),
        "POST",
        &format!("/subjects/{SUBJECT}/versions"),
        Some(&schema(0)),
    )
    .await;
    assert_eq!(st, 200, "the admin registers: {j}");
    j["id"].as_u64().unwrap()
}

/// What the registry holds about the subject, as the admin sees it.
async fn holdings(node: &Node, admin: &TestToken) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/subjects?deleted=true".to_owned(),
        format!("/subjects/{SUBJECT}/versions?deleted=true"),
        format!("/subjects/{SUBJECT}/versions"),
        "/config".to_owned(),
        format!("/config/{SUBJECT}"),
    ] {
        let (st, j, _) = call(node, Credentials::Bearer(admin.token()), "GET", &path, None).await;
        out.insert(path, json!([st, j]));
    }
    Value::Object(out)
}

/// The attack as it was made: a caller without a token deletes the
/// subject, then deletes it for good (and so the ids a feed's records
/// carry).
#[tokio::test]
async fn registry_unauthenticated_delete_leaves_the_subject() {
    let admin = TestToken::new("admin");
    let node = node_with(&[&admin]).await;
    let id = seed(&node, &admin).await;
    let before = holdings(&node, &admin).await;
    for path in [
        format!("/subjects/{SUBJECT}"),
        format!("/subjects/{SUBJECT}?permanent=true"),
    ] {
        let (st, j, _) = call(&node, Credentials::None, "DELETE", &path, None).await;
        assert_eq!(
            (st, j["error_code"].as_u64()),
            (401, Some(40101)),
            "DELETE {path}: {j}"
        );
    }
    assert_eq!(holdings(&node, &admin).await, before);
    let (st, j, _) = call(
        &node,
        Credentials::Bearer(admin.token()),
        "GET",
        &format!("/schemas/ids/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{j}");
}

#[tokio::test]
async fn registry_refuses_every_route_without_a_valid_token() {
    let admin = TestToken::new("admin");
    let node = node_with(&[&admin]).await;
    let id = seed(&node, &admin).await;
    let before = holdings(&node, &admin).await;
    assert_eq!(
        before[format!("/subjects/{SUBJECT}/versions")],
        json!([200, [1]])
    );

    let unknown = "not-a-token-of-this-node";
    for who in [
        Credentials::None,
        Credentials::Bearer(unknown),
        Credentials::Basic("admin", unknown),
    ] {
        for (method, path, body) in reads(id).into_iter().chain(writes()) {
            let (st, j, ct) = call(&node, who, method, &path, body.as_ref()).await;
            assert_eq!(st, 401, "{method} {path}: {j}");
            assert_eq!(j["error_code"], 40101, "{method} {path}: {j}");
            assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
            assert_eq!(ct, CT, "{method} {path}");
        }
    }
    // The attack: the subject, its version and its config are all still
    // there, unchanged.
    assert_eq!(holdings(&node, &admin).await, before);
}

#[tokio::test]
async fn registry_lets_subscribers_and_owners_read_but_not_write_and_the_auditor_neither() {
    let admin = TestToken::new("admin");
    let subscriber = TestToken::new("subscriber:330106");
    let owner = TestToken::new("owner:gongan");
    let auditor = TestToken::new("auditor");
    let node = node_with(&[&admin, &subscriber, &owner, &auditor]).await;
    let id = seed(&node, &admin).await;
    let before = holdings(&node, &admin).await;

    for reader in [&subscriber, &owner] {
        for who in [
            Credentials::Bearer(reader.token()),
            Credentials::Basic("330106", reader.token()),
        ] {
            for (method, path, body) in reads(id) {
                let (st, j, _) = call(&node, who, method, &path, body.as_ref()).await;
                assert_eq!(st, 200, "{method} {path}: {j}");
            }
            for (method, path, body) in writes() {
                let (st, j, ct) = call(&node, who, method, &path, body.as_ref()).await;
                assert_eq!(st, 403, "{method} {path}: {j}");
                assert_eq!(j["error_code"], 40301, "{method} {path}: {j}");
                let message = j["message"].as_str().unwrap_or_default();
                assert!(message.contains("admin"), "the rule is named: {j}");
                assert_eq!(ct, CT, "{method} {path}");
            }
        }
    }
    // The auditor reads and verifies the audit trail and nothing else.
    for (method, path, body) in reads(id).into_iter().chain(writes()) {
        let who = Credentials::Bearer(auditor.token());
        let (st, j, _) = call(&node, who, method, &path, body.as_ref()).await;
        assert_eq!(
            (st, j["error_code"].as_u64()),
            (403, Some(40301)),
            "{method} {path}: {j}"
        );
        assert!(
            j["message"].as_str().is_some_and(|m| m.contains("auditor")),
            "{j}"
        );
    }
    let (_, got, _) = call(
        &node,
        Credentials::Bearer(subscriber.token()),
        "GET",
        &format!("/subjects/{SUBJECT}/versions/latest"),
        None,
    )
    .await;
    assert_eq!(
        (got["id"].as_u64(), got["version"].as_u64()),
        (Some(id), Some(1))
    );
    assert_eq!(holdings(&node, &admin).await, before, "nothing changed");
}

#[tokio::test]
async fn registry_admin_changes_it_with_a_bearer_or_basic_token() {
    let admin = TestToken::new("admin");
    let node = node_with(&[&admin]).await;
    seed(&node, &admin).await;
    // Confluent's clients send the token as the password of basic
    // authentication; the user name is not read.
    let basic = Credentials::Basic("any-user", admin.token());
    let bearer = Credentials::Bearer(admin.token());
    let steps: Vec<(Credentials, &str, String, Option<Value>, Value)> = vec![
        (
            basic,
            "PUT",
            format!("/config/{SUBJECT}"),
            Some(json!({"compatibility": "FORWARD"})),
            json!({"compatibility": "FORWARD"}),
        ),
        (
            bearer,
            "DELETE",
            format!("/config/{SUBJECT}"),
            None,
            json!({"compatibilityLevel": "FORWARD"}),
        ),
        (
            basic,
            "PUT",
            "/config".into(),
            Some(json!({"compatibility": "FULL"})),
            json!({"compatibility": "FULL"}),
        ),
        (
            bearer,
            "POST",
            format!("/subjects/{SUBJECT}/versions"),
            Some(schema(1)),
            Value::Null,
        ),
        (
            basic,
            "DELETE",
            format!("/subjects/{SUBJECT}/versions/2"),
            None,
            json!(2),
        ),
        (
            bearer,
            "DELETE",
            format!("/subjects/{SUBJECT}"),
            None,
            json!([1]),
        ),
        (
            basic,
            "DELETE",
            format!("/subjects/{SUBJECT}?permanent=true"),
            None,
            json!([1, 2]),
        ),
    ];
    for (who, method, path, body, want) in steps {
        let (st, j, _) = call(&node, who, method, &path, body.as_ref()).await;
        assert_eq!(st, 200, "{method} {path}: {j}");
        if !want.is_null() {
            assert_eq!(j, want, "{method} {path}");
        }
    }
    let (st, j, _) = call(
        &node,
        bearer,
        "GET",
        &format!("/subjects/{SUBJECT}/versions?deleted=true"),
        None,
    )
    .await;
    assert_eq!((st, j["error_code"].as_u64()), (404, Some(40401)), "{j}");
}

#[tokio::test]
async fn registry_accepts_issued_tokens_until_revoked() {
    let admin = TestToken::new("admin");
    let node = node_with(&[&admin]).await;
    seed(&node, &admin).await;
    let (st, issued) = node
        .api(
            "POST",
            "/api/tokens",
            Some(admin.token()),
            Some(json!({"principal": "subscriber:330108"})),
        )
        .await;
    assert_eq!(st, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    let who = Credentials::Bearer(&token);
    let (st, j, _) = call(&node, who, "GET", "/subjects", None).await;
    assert_eq!((st, j), (200, json!([SUBJECT])));
    let (st, j, _) = call(&node, who, "DELETE", &format!("/subjects/{SUBJECT}"), None).await;
    assert_eq!((st, j["error_code"].as_u64()), (403, Some(40301)), "{j}");

    let sha = issued["sha256"].as_str().unwrap();
    let (st, j) = node
        .api(
            "DELETE",
            &format!("/api/tokens/{sha}"),
            Some(admin.token()),
            None,
        )
        .await;
    assert_eq!(st, 200, "{j}");
    let (st, j, _) = call(&node, who, "GET", "/subjects", None).await;
    assert_eq!((st, j["error_code"].as_u64()), (401, Some(40101)), "{j}");
}

#[tokio::test]
async fn registry_without_configured_tokens_refuses_everything() {
    // Fail closed: a node nobody gave tokens answers nobody.
    let node = Node::start(&[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    for (method, path, body) in reads(1).into_iter().chain(writes()) {
        let (st, j, _) = call(&node, Credentials::None, method, &path, body.as_ref()).await;
        assert_eq!(
            (st, j["error_code"].as_u64()),
            (401, Some(40101)),
            "{method} {path}: {j}"
        );
    }
}
