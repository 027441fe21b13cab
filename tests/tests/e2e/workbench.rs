//! The web workbench in a real browser, against a running node: Debian's
//! Chromium driven by Playwright (`playwright-core` from npm, no browser
//! download; `tests/ui/workbench.mjs`), one phase at a time, with the API
//! checked between phases:
//!
//! 1. a subscriber signs in (the page says who it is and offers only
//!    数据目录 and 申请), finds the conditional dataset in the catalog with
//!    each field's rule, is refused a not-shared dataset with the owner's
//!    reason, and requests the conditional one through the form: the API
//!    holds the pending request with its purpose, fields and validity;
//!    markup in the owner's description shows as text and never runs; a
//!    link carrying the owner's token leaves the subscriber's session as
//!    it is and says so;
//! 2. the owner sees it in 审批 with purpose, fields and requesting node,
//!    is refused a rejection without a reason (the API's reason shown),
//!    and approves with one field unticked: the API shows the subscription
//!    active without that field; an owner of another department sees none
//!    of it, in the page and in the API;
//! 3. the owner revokes with a reason: the API shows it revoked with that
//!    reason, and so does the subscriber's list of requests.
//!
//! Screenshots of every page in both languages are saved under
//! `<target>/ui-screenshots/` (next to the test binary's profile directory).
//!
//! Needs Node.js with npm (the test runs `npm ci` in `tests/ui` when its
//! `node_modules` is missing) and Chromium (`scripts/services.sh up`
//! installs Debian's `chromium` and `fonts-noto-cjk`), or
//! `BACKFLOW_CHROMIUM` naming a Chromium binary.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use backflow_e2e::{Node, TestBroker};
use serde_json::{json, Value};

const ADMIN: &str = "workbench-admin-token-0123456789";
const OWNER: &str = "workbench-owner-token-0123456789";
const OTHER_OWNER: &str = "workbench-other-owner-token-0123456789";
const XIHU: &str = "workbench-xihu-token-0123456789";
const SUBSCRIBER: &str = "330106";
const UNTICKED: &str = "id_number";
const REVOKE_REASON: &str = "用途已完成：网格化管理试点结束";
/// Markup in an owner's description: the page must show it as text.
const MARKUP: &str =
    "<img src=x onerror=\"window.__xss='img'\"><script>window.__xss='script'</script><b>粗</b>";

/// `tests/ui`, with its npm dependencies installed (`npm ci` once).
fn ui_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui");
    if !dir.join("node_modules").join("playwright-core").is_dir() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run npm ({e}): install Node.js and npm (apt-get install npm)")
            });
        assert!(
            out.status.success(),
            "npm ci in {} failed:\n{}\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Where the screenshots go: `<target>/ui-screenshots`.
fn shots_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/e2e-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    target.join("ui-screenshots")
}

/// Runs one phase of `workbench.mjs`; returns what the page showed.
fn run_phase(node: &Node, env: &[(&str, String)], phase: &str) -> Value {
    let mut cmd = Command::new("node");
    cmd.arg("workbench.mjs")
        .arg(phase)
        .current_dir(ui_dir())
        .env("BACKFLOW_URL", &node.url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run node ({e}): install Node.js"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser's {phase} phase failed:\n{stderr}\n{stdout}\nnode log:\n{}",
        node.stderr()
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{phase}: {e}: {stdout}"))
}

async fn api(node: &Node, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let (status, answer) = node.api(method, path, Some(token), body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {answer}"
    );
    answer
}

/// `GET /api/subscriptions/{id}` as `token` sees it.
async fn subscription(node: &Node, id: &str, token: &str) -> Value {
    api(
        node,
        "GET",
        &format!("/api/subscriptions/{id}"),
        token,
        None,
    )
    .await
}

/// The subscriber count `GET /api/datasets` gives `token` for `dataset`
/// (`None`: not given).
async fn subscribers(node: &Node, token: &str, dataset: &str) -> Option<u64> {
    let list = api(node, "GET", "/api/datasets", token, None).await;
    let entry = list
        .as_array()
        .and_then(|l| l.iter().find(|d| d["id"] == dataset))
        .unwrap_or_else(|| panic!("{dataset} listed: {list}"))
        .clone();
    entry
        .get("subscribers")
        .map(|n| n.as_u64().expect("a count"))
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workbench_request_approve_narrowed_and_revoke_through_the_browser() {
    let ui = ui_dir();
    assert!(ui.join("workbench.mjs").is_file());
    let broker = TestBroker::start();
    // Department names hold no '_' (see topics::validate_dataset_id).
    let department = format!(
        "wb{}",
        backflow_e2e::unique_name("d")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase()
    );
    let other = format!("{department}x");
    let dataset = format!("{department}.residents");
    let not_shared = format!("{department}.register");
    let tokens = backflow_e2e::tokens_toml(&[
        ("admin", ADMIN),
        (&format!("owner:{department}"), OWNER),
        (&format!("owner:{other}"), OTHER_OWNER),
        (&format!("subscriber:{SUBSCRIBER}"), XIHU),
    ]);
    let config = format!(
        "[node]\ncode = \"330100\"\nname = \"杭州市数据资源中心\"\nparent = \"330000\"\n\
         [kafka]\nbrokers = \"{}\"\n\n{tokens}",
        broker.bootstrap(),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    // Who each token stands for.
    for (token, want) in [
        (ADMIN, json!({"principal": "admin", "role": "admin"})),
        (
            OWNER,
            json!({"principal": format!("owner:{department}"), "role": "owner", "department": department}),
        ),
        (
            XIHU,
            json!({"principal": "subscriber:330106", "role": "subscriber", "node": "330106"}),
        ),
    ] {
        assert_eq!(api(&node, "GET", "/api/whoami", token, None).await, want);
    }
    assert_eq!(
        node.api("GET", "/api/whoami", Some("not-a-token"), None)
            .await
            .0,
        401
    );

    api(
        &node,
        "PUT",
        &format!("/api/datasets/{dataset}"),
        OWNER,
        Some(json!({
            "description": format!("常住人口（社区网格）{MARKUP}"),
            "sharing": "conditional",
            "region_column": "region_code",
            "fields": {
                "id": {},
                "name": {"sensitivity": "sensitive", "rule": "masked:name"},
                "id_number": {"sensitivity": "sensitive", "rule": "masked:keep(6,4)"},
                "region_code": {}
            }
        })),
    )
    .await;
    api(
        &node,
        "PUT",
        &format!("/api/datasets/{not_shared}"),
        OWNER,
        Some(json!({"sharing": "not_shared", "not_shared_reason": "户籍法规定不予共享", "fields": {"id": {}}})),
    )
    .await;

    let env: Vec<(&str, String)> = vec![
        ("BACKFLOW_DATASET", dataset.clone()),
        ("BACKFLOW_NOT_SHARED", not_shared.clone()),
        ("BACKFLOW_SUBSCRIBER", SUBSCRIBER.to_owned()),
        ("BACKFLOW_SUBSCRIBER_TOKEN", XIHU.to_owned()),
        ("BACKFLOW_OWNER_TOKEN", OWNER.to_owned()),
        ("BACKFLOW_OTHER_OWNER_TOKEN", OTHER_OWNER.to_owned()),
        ("BACKFLOW_UNTICK", UNTICKED.to_owned()),
        ("BACKFLOW_REVOKE_REASON", REVOKE_REASON.to_owned()),
        ("BACKFLOW_SHOTS", shots_dir().display().to_string()),
        (
            "BACKFLOW_CHROMIUM",
            std::env::var("BACKFLOW_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()),
        ),
    ];
    let id = format!("{SUBSCRIBER}:{dataset}");

    // 1. The subscriber's request.
    let seen = run_phase(&node, &env, "request");
    assert_eq!(seen["lang_default"], "zh-CN", "{seen}");
    assert_eq!(seen["principal"], "subscriber:330106", "{seen}");
    assert_eq!(seen["whoami_text"], "订阅节点：330106", "{seen}");
    assert_eq!(seen["tabs"], json!(["catalog", "request"]), "{seen}");
    assert_eq!(seen["catalog_tab_label"], "数据目录", "{seen}");
    assert_eq!(seen["catalog"]["owner"], department.as_str(), "{seen}");
    assert_eq!(seen["catalog"]["sharing"], "conditional", "{seen}");
    assert_eq!(seen["catalog"]["region"], "region_code", "{seen}");
    // How many nodes subscribe is for the owner and admins only.
    assert_eq!(seen["catalog"]["subscribers"], "", "{seen}");
    assert_eq!(
        seen["catalog"]["fields"],
        json!({"id": "plain", "id_number": "masked:keep(6,4)", "name": "masked:name", "region_code": "plain"}),
        "{seen}"
    );
    // The description's markup is shown as the owner typed it and never
    // runs.
    assert!(
        seen["catalog"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains(MARKUP),
        "{seen}"
    );
    assert_eq!(seen["catalog"]["markup_elements"], 0, "{seen}");
    assert_eq!(seen["markup_ran"], Value::Null, "{seen}");
    // A link with the owner's token left the subscriber's session as it was.
    assert_eq!(
        seen["link_token"]["principal"], "subscriber:330106",
        "{seen}"
    );
    assert_eq!(
        seen["link_token"]["tabs"],
        json!(["catalog", "request"]),
        "{seen}"
    );
    assert_eq!(seen["link_token"]["stored"], XIHU, "{seen}");
    assert_eq!(
        seen["link_token"]["hash"], "",
        "the token is not left in the address: {seen}"
    );
    assert!(
        seen["link_token"]["notice"]
            .as_str()
            .unwrap_or_default()
            .contains("当前会话不变"),
        "{seen}"
    );
    assert_eq!(seen["search"]["hides_all_for_nonsense"], true, "{seen}");
    assert_eq!(seen["search"]["shown"], json!([dataset]), "{seen}");
    assert_eq!(seen["refused"]["outcome"], "refused", "{seen}");
    assert_eq!(seen["refused"]["status"], "403", "{seen}");
    assert!(
        seen["refused"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("户籍法规定不予共享"),
        "the API's reason is shown: {seen}"
    );
    let fields = seen["request_fields"].as_array().unwrap();
    assert_eq!(fields.len(), 4, "{seen}");
    for f in fields {
        assert_eq!(f["checked"], true, "{f}");
        let masked = f["rule"].as_str().unwrap().starts_with("masked");
        assert_eq!(
            f["text"].as_str().unwrap().contains("脱敏"),
            masked,
            "a masked field says how it arrives: {f}"
        );
    }
    assert_eq!(seen["submitted"]["outcome"], "ok", "{seen}");
    assert_eq!(seen["submitted"]["id"], id.as_str(), "{seen}");
    assert_eq!(seen["lang_after_reload"], "en", "{seen}");
    assert_eq!(seen["request_tab_label_en"], "Request", "{seen}");
    let sub = subscription(&node, &id, OWNER).await;
    assert_eq!(sub["state"], "pending", "{sub}");
    assert_eq!(sub["purpose"], "居民服务：社区网格化管理", "{sub}");
    let mut requested: Vec<String> = sub["requested"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    requested.sort();
    assert_eq!(requested, ["id", "id_number", "name", "region_code"]);
    let days = (sub["valid_until_ms"].as_i64().unwrap() - backflow_connectors::now_ms()) as f64
        / 86_400_000.0;
    assert!((29.9..=30.0).contains(&days), "valid for 30 days: {sub}");
    let mine = seen["mine"].as_array().unwrap();
    assert_eq!(mine.len(), 1, "{seen}");
    assert_eq!(mine[0]["state"], "pending", "{seen}");

    // 2. The owner's approval, narrowed.
    let seen = run_phase(&node, &env, "approve");
    assert_eq!(seen["principal"], format!("owner:{department}"), "{seen}");
    assert_eq!(
        seen["tabs"],
        json!(["overview", "catalog", "decide"]),
        "{seen}"
    );
    let pending = &seen["pending"];
    assert_eq!(pending["subscriber"], SUBSCRIBER, "{seen}");
    assert_eq!(
        pending["cells"]["purpose"], "居民服务：社区网格化管理",
        "{seen}"
    );
    assert_eq!(
        pending["cells"]["requested"], "id,id_number,name,region_code",
        "{seen}"
    );
    let refused = &seen["reject_without_reason"];
    assert_eq!(refused["outcome"], "refused", "{seen}");
    assert_eq!(refused["status"], "422", "{seen}");
    assert_eq!(refused["reason"], "a rejection needs a reason", "{seen}");
    assert_eq!(seen["approved"]["outcome"], "ok", "{seen}");
    assert_eq!(
        seen["granted"]["cells"]["granted"], "id,name,region_code",
        "{seen}"
    );
    let sub = subscription(&node, &id, OWNER).await;
    assert_eq!(sub["state"], "active", "{sub}");
    assert_eq!(
        keys(&sub["granted"]),
        ["id", "name", "region_code"],
        "approved without {UNTICKED}: {sub}"
    );
    assert_eq!(sub["granted"]["name"], "masked:name", "{sub}");
    assert_eq!(sub["policy_version"], 1, "{sub}");
    assert_eq!(subscribers(&node, OWNER, &dataset).await, Some(1));
    assert_eq!(seen["owner_catalog_subscribers"], "1", "{seen}");
    for other_principal in [XIHU, OTHER_OWNER] {
        assert_eq!(
            subscribers(&node, other_principal, &dataset).await,
            None,
            "the count is the owner's"
        );
    }
    assert_eq!(
        seen["other_owner"],
        json!({"principal": format!("owner:{other}"), "decisions": 0, "granted": 0, "decided": 0}),
        "{seen}"
    );
    assert_eq!(
        api(&node, "GET", "/api/subscriptions", OTHER_OWNER, None).await,
        json!([])
    );
    let (status, body) = node
        .api(
            "POST",
            &format!("/api/subscriptions/{id}/revoke"),
            Some(OTHER_OWNER),
            Some(json!({"reason": "not mine"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // 3. The owner's revocation, seen by the subscriber with its reason.
    let seen = run_phase(&node, &env, "revoke");
    assert_eq!(seen["revoked"]["outcome"], "ok", "{seen}");
    assert_eq!(seen["history"]["state"], "revoked", "{seen}");
    assert_eq!(seen["history"]["cells"]["reason"], REVOKE_REASON, "{seen}");
    assert_eq!(seen["mine"]["state"], "revoked", "{seen}");
    assert_eq!(seen["mine"]["cells"]["reason"], REVOKE_REASON, "{seen}");
    assert_eq!(
        seen["after_sign_out"],
        json!({"rows": 0, "token_kept": false}),
        "{seen}"
    );
    assert_eq!(
        seen["other_owner"],
        json!({"principal": format!("owner:{other}"), "decisions": 0, "granted": 0, "decided": 0}),
        "{seen}"
    );
    let sub = subscription(&node, &id, XIHU).await;
    assert_eq!(sub["state"], "revoked", "{sub}");
    assert_eq!(sub["reason"], REVOKE_REASON, "{sub}");
    assert_eq!(subscribers(&node, OWNER, &dataset).await, Some(0));
    assert_eq!(
        api(&node, "GET", "/api/subscriptions", OTHER_OWNER, None).await,
        json!([])
    );
    for shot in [
        "request-subscriber-catalog",
        "request-subscriber-request",
        "approve-owner-decide",
        "approve-owner-granted",
        "revoke-subscriber-request",
    ] {
        for lang in ["zh-CN", "en"] {
            let file = shots_dir().join(format!("{shot}.{lang}.png"));
            assert!(file.is_file(), "no screenshot {}", file.display());
        }
    }
}
