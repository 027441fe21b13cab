//! The operator dashboard in a real browser: headless Chromium loads the
//! node's page with an admin token in the URL fragment, the page's script
//! reads the API, and the DOM it leaves (`--dump-dom`) must show exactly what
//! `GET /api/lag`, `/api/node`, `/api/subscriptions`, `/api/datasets` and
//! `/api/feeds` say: the hierarchy, each subscription with its status and
//! lag, the pending approval, the feed, the datasets; one subscription's
//! page has its lag chart; a wrong token is refused in a visible banner with
//! the API's reason. The page is read in English (`#lang=en`), the refusal
//! in the default language (Simplified Chinese): the API's reason is shown
//! as the API gave it.
//!
//! Needs Chromium (`chromium`, Debian's package, which `scripts/services.sh
//! up` installs), or `BACKFLOW_CHROMIUM` naming a Chromium/Chrome binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backflow_e2e::{Node, TestBroker};
use serde_json::{json, Value};

const ADMIN: &str = "dashboard-test-admin-token-0123456789";
const DATASET: &str = "gongan.population";
const PENDING_DATASET: &str = "minzheng.households";

// ------------------------------------------------------------------ browser

/// The Chromium binary, or a failure saying how to install it.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("BACKFLOW_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in [
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Chromium not found on PATH (chromium, chromium-browser, google-chrome) and BACKFLOW_CHROMIUM \
         is not set: run scripts/services.sh up, which installs Debian's chromium package \
         (or apt-get install chromium)"
    );
}

/// The DOM of `url` after its scripts ran for 8 s of virtual time.
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::Builder::new()
        .prefix("backflow-chromium-")
        .tempdir()
        .unwrap();
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(["--virtual-time-budget=8000", "--dump-dom", url])
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within 90 s loading {url}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromium().display()));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed on {url} ({}):\n{}\n{dom}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

// ------------------------------------------------------------------ DOM

/// A start or end tag of the dumped document.
#[derive(Debug, Clone)]
struct Tag {
    name: String,
    end: bool,
    attrs: BTreeMap<String, String>,
}

fn decode(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The document's tags in order (contents of `script` and `style` skipped).
/// Chromium serializes attributes as `name="value"` with `&`, `"`, `<`,
/// `>` escaped, and boolean ones as `name=""`.
fn tags(html: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let end = rest.starts_with('/');
        let body = if end { &rest[1..] } else { rest };
        let name_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(body.len());
        if name_len == 0 || !body.as_bytes()[0].is_ascii_alphabetic() {
            continue;
        }
        let name = body[..name_len].to_ascii_lowercase();
        let mut attrs = BTreeMap::new();
        let mut s = &body[name_len..];
        loop {
            s = s.trim_start();
            if s.is_empty() || s.starts_with('>') || s.starts_with("/>") {
                break;
            }
            let key_len = s
                .find(|c: char| c.is_whitespace() || c == '=' || c == '>' || c == '/')
                .unwrap_or(s.len())
                .max(1);
            let key = s[..key_len].to_ascii_lowercase();
            s = s[key_len..].trim_start();
            let mut value = String::new();
            if let Some(v) = s.strip_prefix('=') {
                let v = v.trim_start();
                if let Some(q @ ('"' | '\'')) = v.chars().next() {
                    let close = v[1..].find(q).map_or(v.len(), |i| i + 1);
                    value = decode(&v[1..close]);
                    s = &v[(close + 1).min(v.len())..];
                } else {
                    let e = v
                        .find(|c: char| c.is_whitespace() || c == '>')
                        .unwrap_or(v.len());
                    value = decode(&v[..e]);
                    s = &v[e..];
                }
            }
            attrs.insert(key, value);
        }
        let gt = rest.find('>').map_or(rest.len(), |i| i + 1);
        rest = &rest[gt..];
        if !end && (name == "script" || name == "style") {
            let close = format!("</{name}");
            rest = rest.find(&close).map_or("", |i| &rest[i..]);
        }
        out.push(Tag { name, end, attrs });
    }
    out
}

/// A row the page shows: its element's attributes and its cells' values
/// (`data-field` → `data-value`, for `tr` rows).
#[derive(Debug, Clone)]
struct Row {
    attrs: BTreeMap<String, String>,
    cells: BTreeMap<String, String>,
}

impl Row {
    fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map_or("", String::as_str)
    }
}

/// Every element with `data-kind="<kind>"`.
fn rows(tags: &[Tag], kind: &str) -> Vec<Row> {
    let mut out = Vec::new();
    for (i, t) in tags.iter().enumerate() {
        if t.end || t.attrs.get("data-kind").map(String::as_str) != Some(kind) {
            continue;
        }
        let mut cells = BTreeMap::new();
        if t.name == "tr" {
            for c in tags[i + 1..]
                .iter()
                .take_while(|c| !(c.name == "tr" && c.end))
            {
                if let (false, Some(field)) = (c.end, c.attrs.get("data-field")) {
                    cells.insert(
                        field.clone(),
                        c.attrs.get("data-value").cloned().unwrap_or_default(),
                    );
                }
            }
        }
        out.push(Row {
            attrs: t.attrs.clone(),
            cells,
        });
    }
    out
}

fn by_id<'a>(tags: &'a [Tag], id: &str) -> &'a Tag {
    tags.iter()
        .find(|t| !t.end && t.attrs.get("id").map(String::as_str) == Some(id))
        .unwrap_or_else(|| panic!("no element #{id} in the page"))
}

#[test]
fn dom_reader_reads_rows_cells_and_skips_scripts() {
    let html = r#"<html><script>if (a<tr) { x = "<tr data-kind='subscription'>"; }</script>
        <table><tbody><tr data-kind="subscription" data-subscriber="330106" data-dataset="a.b&amp;c" hidden="">
        <td data-field="lag_messages" data-value="12">12</td><td data-field="why" class="why">x &gt; y</td></tr>
        <tr data-kind="pending" data-subscriber="330108"><td data-field="purpose">p</td></tr></tbody></table></html>"#;
    let t = tags(html);
    let subs = rows(&t, "subscription");
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].attr("data-dataset"), "a.b&c");
    assert_eq!(subs[0].attr("hidden"), "");
    assert_eq!(subs[0].cells["lag_messages"], "12");
    assert_eq!(subs[0].cells["why"], "");
    assert_eq!(rows(&t, "pending")[0].cells.len(), 1);
}

// ------------------------------------------------------------------ node

fn sql(path: &Path, statements: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(statements)
        .unwrap();
}

async fn api(node: &Node, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = node.api(method, path, Some(ADMIN), body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {answer}"
    );
    answer
}

/// What the page must show of `/api/lag`: per (subscriber, dataset) the
/// status and lag in messages; per feed its status.
type Shown = (
    BTreeMap<(String, String), (String, i64)>,
    BTreeMap<String, String>,
);

fn expected(lag: &Value) -> Shown {
    let subs = lag["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                (
                    s["subscriber"].as_str().unwrap().to_owned(),
                    s["dataset"].as_str().unwrap().to_owned(),
                ),
                (
                    s["status"].as_str().unwrap().to_owned(),
                    s["lag_messages"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    let feeds = lag["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["feed"].as_str().unwrap().to_owned(),
                f["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (subs, feeds)
}

fn shown(tags: &[Tag]) -> Shown {
    let subs = rows(tags, "subscription")
        .iter()
        .map(|r| {
            (
                (
                    r.attr("data-subscriber").to_owned(),
                    r.attr("data-dataset").to_owned(),
                ),
                (
                    r.attr("data-status").to_owned(),
                    r.cells
                        .get("lag_messages")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(-1),
                ),
            )
        })
        .collect();
    let feeds = rows(tags, "feed")
        .iter()
        .map(|r| {
            (
                r.attr("data-feed").to_owned(),
                r.attr("data-status").to_owned(),
            )
        })
        .collect();
    (subs, feeds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_what_the_api_says() {
    chromium();

    // A city node 330100 under the province 330000, with a polled
    // department table; 330106 subscribes (unconditional: active at once)
    // and runs no subscriber yet, so its records wait: STOP; 330108's
    // request to a conditional dataset waits for approval.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gongan.db");
    sql(
        &db,
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                              region_code TEXT NOT NULL, updated_at TIMESTAMP NOT NULL);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 12)
         INSERT INTO people SELECT n, '居民' || n, CASE WHEN n <= 7 THEN '330106' ELSE '330108' END,
                                   strftime('%Y-%m-%d %H:%M:%f', 'now') FROM g;",
    );
    let broker = TestBroker::start();
    let config = format!(
        "[node]\ncode = \"330100\"\nname = \"杭州市数据资源中心\"\nparent = \"330000\"\n\
         [runtime]\nlag_window_secs = 6\n[kafka]\nbrokers = \"{}\"\n\n\
         [[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n\n\
         [[feeds]]\ntype = \"poll\"\nname = \"gongan-sqlite\"\nengine = \"sqlite\"\npath = \"{}\"\npoll_interval_ms = 200\ndelay_ms = 300\n\n\
         [[feeds.tables]]\ntable = \"people\"\ndataset = \"{DATASET}\"\nmode = \"timestamp+incrementing\"\ntimestamp_column = \"updated_at\"\n",
        broker.bootstrap(),
        backflow::auth::token_hash(ADMIN),
        db.display(),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    api(
        &node,
        "PUT",
        "/api/nodes/330106",
        Some(json!({"name": "西湖区数据资源中心"})),
    )
    .await;
    api(
        &node,
        "PUT",
        &format!("/api/datasets/{DATASET}"),
        Some(json!({
            "description": "residents of the city",
            "sharing": "unconditional",
            "region_column": "region_code",
            "fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"}, "region_code": {}}
        })),
    )
    .await;
    api(
        &node,
        "PUT",
        &format!("/api/datasets/{PENDING_DATASET}"),
        Some(json!({
            "description": "households",
            "sharing": "conditional",
            "region_column": "region_code",
            "fields": {"id": {}, "region_code": {}}
        })),
    )
    .await;
    let active = api(
        &node,
        "POST",
        "/api/subscriptions",
        Some(json!({"subscriber": "330106", "dataset": DATASET, "purpose": "resident services", "fields": ["id", "name", "region_code"]})),
    )
    .await;
    assert_eq!(active["state"], "active", "{active}");
    let pending = api(
        &node,
        "POST",
        "/api/subscriptions",
        Some(json!({"subscriber": "330108", "dataset": PENDING_DATASET, "purpose": "social assistance", "fields": ["id"]})),
    )
    .await;
    assert_eq!(pending["state"], "pending", "{pending}");

    // Until the board has settled: 330106's records delivered and waiting
    // (STOP), the feed on it, and the same answer twice in a row.
    let until = Instant::now() + Duration::from_secs(90);
    let mut last = Value::Null;
    loop {
        let lag = api(&node, "GET", "/api/lag", None).await;
        let row = lag["subscriptions"]
            .as_array()
            .and_then(|r| r.iter().find(|s| s["subscriber"] == "330106"))
            .cloned()
            .unwrap_or(Value::Null);
        let settled = row["status"] == "STOP"
            && row["lag_messages"].as_i64().unwrap_or(0) > 0
            && lag["feeds"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["feed"] == "gongan-sqlite"));
        if settled && !last.is_null() && expected(&lag) == expected(&last) {
            break;
        }
        assert!(
            Instant::now() < until,
            "/api/lag never settled on a STOP row for 330106: {lag}\n{}",
            node.stderr()
        );
        last = if settled { lag } else { Value::Null };
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The overview, as a browser shows it; what the API said just before
    // and just after must be what it shows (retried if the board moved).
    let mut attempt = 0;
    let (dom, lag) = loop {
        attempt += 1;
        let before = api(&node, "GET", "/api/lag", None).await;
        let dom = dump_dom(&format!("{}/#token={ADMIN}&lang=en", node.url)).await;
        let after = api(&node, "GET", "/api/lag", None).await;
        if expected(&before) == expected(&after) || attempt == 3 {
            assert_eq!(expected(&before), expected(&after), "/api/lag kept moving");
            break (dom, after);
        }
    };
    let t = tags(&dom);
    let banner = by_id(&t, "banner");
    assert!(
        banner.attrs.contains_key("hidden") && !banner.attrs.contains_key("data-errors"),
        "no error banner for an admin:\n{dom}"
    );
    let (subs, feeds) = shown(&t);
    let (want_subs, want_feeds) = expected(&lag);
    assert_eq!(
        subs, want_subs,
        "subscription rows (status, lag) vs /api/lag {lag}"
    );
    assert_eq!(feeds, want_feeds, "feed rows (status) vs /api/lag {lag}");
    assert!(want_subs.contains_key(&("330106".to_owned(), DATASET.to_owned())));
    for row in rows(&t, "subscription") {
        let api_row = lag["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["subscriber"] == row.attr("data-subscriber")
                    && s["dataset"] == row.attr("data-dataset")
            })
            .unwrap();
        assert_eq!(row.attr("data-topic"), api_row["topic"], "{row:?}");
        match api_row["lag_seconds"].as_f64() {
            None => assert_eq!(row.cells["lag_seconds"], "", "{row:?}"),
            Some(_) => assert!(row.cells["lag_seconds"].parse::<f64>().is_ok(), "{row:?}"),
        }
        assert_eq!(row.attr("data-state"), "active", "{row:?}");
    }
    let stop_row = rows(&t, "subscription")
        .into_iter()
        .find(|r| r.attr("data-subscriber") == "330106")
        .unwrap();
    assert!(
        dom.contains("the subscriber has never reported"),
        "a STOP row says why: {stop_row:?}"
    );

    // The feed's state is the one /api/feeds gives.
    let feed_list = api(&node, "GET", "/api/feeds", None).await;
    for f in rows(&t, "feed") {
        let api_feed = feed_list
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == f.attr("data-feed"))
            .unwrap_or_else(|| panic!("{f:?} not in /api/feeds {feed_list}"));
        assert_eq!(f.attr("data-state"), api_feed["status"]["state"], "{f:?}");
    }

    // The hierarchy is /api/node's.
    let info = api(&node, "GET", "/api/node", None).await;
    let me = &rows(&t, "self")[0];
    assert_eq!(me.attr("data-code"), info["code"]);
    assert_eq!(me.attr("data-code"), "330100");
    assert_eq!(me.attr("data-name"), info["name"]);
    assert_eq!(rows(&t, "parent")[0].attr("data-code"), info["parent"]);
    assert_eq!(rows(&t, "parent")[0].attr("data-code"), "330000");
    let children: BTreeMap<String, (String, String)> = rows(&t, "child")
        .iter()
        .map(|c| {
            (
                c.attr("data-code").to_owned(),
                (
                    c.attr("data-name").to_owned(),
                    c.attr("data-registered").to_owned(),
                ),
            )
        })
        .collect();
    let want_children: BTreeMap<String, (String, String)> = info["child_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"].as_str().unwrap().to_owned(),
                (
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["registered"].to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(children, want_children, "child nodes vs /api/node {info}");
    assert_eq!(
        children.get("330106").map(|c| c.0.as_str()),
        Some("西湖区数据资源中心")
    );
    // The district behind shows as behind, on which dataset.
    let xihu = rows(&t, "child")
        .into_iter()
        .find(|c| c.attr("data-code") == "330106")
        .unwrap();
    assert_eq!(
        xihu.attr("data-status"),
        want_subs[&("330106".to_owned(), DATASET.to_owned())].0
    );

    // Pending approvals are /api/subscriptions' pending ones.
    let catalog = api(&node, "GET", "/api/subscriptions", None).await;
    let want_pending: BTreeSet<(String, String)> = catalog
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "pending")
        .map(|s| {
            (
                s["subscriber"].as_str().unwrap().to_owned(),
                s["dataset"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pending_rows: BTreeSet<(String, String)> = rows(&t, "pending")
        .iter()
        .map(|r| {
            (
                r.attr("data-subscriber").to_owned(),
                r.attr("data-dataset").to_owned(),
            )
        })
        .collect();
    assert_eq!(pending_rows, want_pending);
    assert!(pending_rows.contains(&("330108".to_owned(), PENDING_DATASET.to_owned())));

    // Datasets with their sharing class.
    let datasets = api(&node, "GET", "/api/datasets", None).await;
    let want_datasets: BTreeMap<String, String> = datasets
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["sharing"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let dataset_rows: BTreeMap<String, String> = rows(&t, "dataset")
        .iter()
        .map(|r| {
            (
                r.attr("data-dataset").to_owned(),
                r.attr("data-sharing").to_owned(),
            )
        })
        .collect();
    assert_eq!(dataset_rows, want_datasets);
    // Data quality: no dataset of this node has a standard, and the panel
    // says so (it would say "not available" had /api/quality failed).
    let quality = api(&node, "GET", "/api/quality", None).await;
    assert_eq!(quality["feeds"], serde_json::json!([]), "{quality}");
    assert!(rows(&t, "quality").is_empty());
    assert!(
        dom.contains("No feed publishes a dataset with a standard."),
        "the quality panel is rendered from /api/quality"
    );

    // One subscription's page: its status and the lag chart of the last
    // hour, drawn from /api/lag/history.
    let history = api(
        &node,
        "GET",
        &format!("/api/lag/history?subscriber=330106&dataset={DATASET}"),
        None,
    )
    .await;
    let samples = history["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{history}");
    // Samples with a figure for each chart (seconds are unknown while the
    // subscriber has never reported).
    let with = |key: &str| samples.iter().filter(|s| s[key].is_number()).count();
    let dom = dump_dom(&format!(
        "{}/subscription?subscriber=330106&dataset={DATASET}#token={ADMIN}&lang=en",
        node.url
    ))
    .await;
    let t = tags(&dom);
    let detail = by_id(&t, "detail");
    assert!(!detail.attrs.contains_key("hidden"), "{dom}");
    assert_eq!(detail.attrs["data-subscriber"], "330106");
    assert_eq!(detail.attrs["data-dataset"], DATASET);
    assert_eq!(detail.attrs["data-status"], "STOP");
    assert_eq!(detail.attrs["data-state"], "active");
    for (chart, key) in [
        ("chart-messages", "lag_messages"),
        ("chart-seconds", "lag_seconds"),
    ] {
        let svg = by_id(&t, chart);
        assert_eq!(svg.name, "svg");
        assert_eq!(svg.attrs["data-chart"], key);
        let drawn: usize = svg.attrs["data-samples"].parse().unwrap();
        // The page read the history a moment after the test did.
        assert!(
            drawn >= with(key) && drawn <= with(key) + 10,
            "{chart}: {drawn} samples drawn, the API had {} with {key}",
            with(key)
        );
    }
    let series = t
        .iter()
        .find(|x| {
            x.name == "path"
                && x.attrs.get("data-series").map(String::as_str) == Some("lag_messages")
        })
        .unwrap_or_else(|| panic!("no lag line drawn:\n{dom}"));
    assert!(series.attrs["d"].starts_with('M'), "{series:?}");
    assert!(
        by_id(&t, "banner").attrs.contains_key("hidden"),
        "no error banner:\n{dom}"
    );

    // A wrong token: the API's 401 and its reason in a visible banner, and
    // the sign-in box.
    let dom = dump_dom(&format!("{}/#token=not-a-token", node.url)).await;
    let t = tags(&dom);
    let banner = by_id(&t, "banner");
    assert!(!banner.attrs.contains_key("hidden"), "banner shown:\n{dom}");
    assert!(
        t.iter()
            .any(|x| x.attrs.get("data-error-status").map(String::as_str) == Some("401")),
        "{dom}"
    );
    assert!(
        dom.contains("unknown token"),
        "the API's reason shown:\n{dom}"
    );
    assert!(!by_id(&t, "login").attrs.contains_key("hidden"), "{dom}");
    assert!(rows(&t, "subscription").is_empty());
}
