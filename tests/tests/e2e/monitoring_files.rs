//! The operators' monitoring files under `helm/backflow`: the Grafana
//! dashboard (`dashboards/backflow.json`) and the Prometheus alert rules
//! (`alerts/backflow-rules.yaml`) are well formed, cover what operators need
//! (lag by subscriber and dataset, statuses, source lag, dead letters,
//! throughput, Kafka reachability), and name only metrics that backflow
//! processes really export: a city node with a feed and a share, and the
//! district's `backflow subscribe`, are started and their `/metrics` must
//! hold a `# TYPE` line for every metric family the files use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{unique_name, Node, TestBroker, TestToken};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../../helm/backflow/dashboards/backflow.json");
const RULES: &str = include_str!("../../../helm/backflow/alerts/backflow-rules.yaml");
const RULES_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../helm/backflow/alerts/backflow-rules.yaml"
);

// ------------------------------------------------------------------ PromQL

/// The metric families a PromQL expression (or Grafana query) reads:
/// identifiers starting with `backflow_` or `kafka_consumergroup_`, outside
/// quoted strings, with a histogram's `_bucket`, `_sum`, `_count` removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("backflow_") || word.starts_with("kafka_consumergroup_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(&word);
                out.insert(family.to_owned());
            }
            continue;
        }
        i += 1;
    }
    out
}

/// Parentheses, braces and brackets balance outside quoted strings.
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => stack.push(c),
            ')' | '}' | ']' => {
                let open = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && quote.is_none()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (subscription, le) (rate(backflow_subscribe_apply_seconds_bucket{group="backflow_x"}[5m]))) / kafka_consumergroup_group_lag_seconds and on() backflow_subscribe_rows_total"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "backflow_subscribe_apply_seconds",
            "backflow_subscribe_rows_total",
            "kafka_consumergroup_group_lag_seconds"
        ]
    );
    assert!(balanced(r#"max by (a) (m{s="(}"}) > 1"#));
    assert!(!balanced("sum(rate(m[5m])"));
}

// ------------------------------------------------------------------ Grafana

/// Every PromQL string of the dashboard: panel targets' `expr` and the
/// template variables' queries.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("helm/backflow/dashboards/backflow.json is JSON")
}

fn dashboard_metrics() -> BTreeSet<String> {
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    queries.iter().flat_map(|q| metric_names(q)).collect()
}

#[test]
fn grafana_dashboard_is_well_formed_and_covers_lag_status_sources_and_rates() {
    let d = dashboard();
    assert_eq!(d["title"], "backflow");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["datasource", "subscriber", "dataset", "feed"] {
        assert!(vars.contains(&v), "variable {v} missing: {vars:?}");
    }
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, i64, i64, i64, i64)> = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "id of {title} repeated"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().unwrap(),
            g["y"].as_i64().unwrap(),
            g["w"].as_i64().unwrap(),
            g["h"].as_i64().unwrap(),
        );
        assert!(x >= 0 && w > 0 && h > 0 && x + w <= 24, "{title}: {g}");
        for (other, ox, oy, ow, oh) in &boxes {
            let apart = x + w <= *ox || *ox + ow <= x || y + h <= *oy || *oy + oh <= y;
            assert!(apart, "panels {title} and {other} overlap");
        }
        boxes.push((title.to_owned(), x, y, w, h));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(balanced(expr), "{title}: unbalanced {expr}");
            assert!(
                !metric_names(expr).is_empty(),
                "{title}: reads no backflow metric: {expr}"
            );
        }
    }
    let used = dashboard_metrics();
    for m in [
        "backflow_subscription_lag_seconds",
        "backflow_subscription_lag_messages",
        "backflow_subscription_status",
        "backflow_feed_status",
        "backflow_source_lag_seconds",
        "backflow_source_lag_bytes",
        "backflow_source_dead_letters_total",
        "backflow_subscribe_dead_letters_total",
        "backflow_kafka_produced_records_total",
        "backflow_kafka_consumed_records_total",
        "kafka_consumergroup_group_lag",
    ] {
        assert!(used.contains(m), "the dashboard shows nothing of {m}");
    }
    // Lag is shown per subscriber and dataset.
    let mut queries = Vec::new();
    dashboard_queries(&d, &mut queries);
    assert!(queries
        .iter()
        .any(|q| q.contains("max by (subscriber, dataset) (backflow_subscription_lag_seconds")));
}

// ------------------------------------------------------------------ rules

/// One alerting rule of the rules file.
#[derive(Debug, Default)]
struct Rule {
    group: String,
    alert: String,
    expr: String,
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        v[1..v.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\")
    } else if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        v[1..v.len() - 1].replace("''", "'")
    } else {
        v.to_owned()
    }
}

/// Reads the rules file's structure (`groups:` of `- name:` with `rules:`
/// of `- alert:` with `expr`, `for`, `labels`, `annotations`), the subset of
/// YAML the file uses: block mappings and sequences, plain or quoted
/// scalars, `|`/`>` block scalars for long expressions. Anything else is
/// refused, naming the line.
fn parse_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut group = String::new();
    let mut section: Option<(&str, usize)> = None;
    let mut i = 0;
    assert_eq!(
        lines.first().map(|l| l.1),
        Some("groups:"),
        "starts with groups:"
    );
    i += 1;
    while i < lines.len() {
        let (n, line) = lines[i];
        let ind = indent(line);
        let t = line.trim();
        assert!(!line.contains('\t'), "line {n}: tab");
        if let Some((name, at)) = section {
            if ind > at {
                let (k, v) = t
                    .split_once(':')
                    .unwrap_or_else(|| panic!("line {n}: not key: value: {t}"));
                let rule = rules.last_mut().expect("section inside a rule");
                let map = if name == "labels" {
                    &mut rule.labels
                } else {
                    &mut rule.annotations
                };
                assert!(
                    map.insert(k.trim().to_owned(), unquote(v)).is_none(),
                    "line {n}: {k} repeated"
                );
                i += 1;
                continue;
            }
            section = None;
        }
        let t = t.strip_prefix("- ").unwrap_or(t);
        let (k, v) = t
            .split_once(':')
            .unwrap_or_else(|| panic!("line {n}: not key: value: {t}"));
        let v = v.trim();
        match k {
            "name" => group = unquote(v),
            "rules" => assert!(v.is_empty(), "line {n}: rules: is a list"),
            "alert" => rules.push(Rule {
                group: group.clone(),
                alert: unquote(v),
                ..Rule::default()
            }),
            "expr" => {
                let rule = rules
                    .last_mut()
                    .unwrap_or_else(|| panic!("line {n}: expr outside a rule"));
                if v == "|" || v == ">" || v == "|-" || v == ">-" {
                    let mut parts = Vec::new();
                    while i + 1 < lines.len() && indent(lines[i + 1].1) > ind {
                        i += 1;
                        parts.push(lines[i].1.trim());
                    }
                    rule.expr = parts.join(if v.starts_with('|') { "\n" } else { " " });
                } else {
                    rule.expr = unquote(v);
                }
            }
            "for" => rules.last_mut().expect("for inside a rule").for_ = Some(unquote(v)),
            "labels" | "annotations" => {
                assert!(v.is_empty(), "line {n}: {k}: is a mapping");
                section = Some((
                    if k == "labels" {
                        "labels"
                    } else {
                        "annotations"
                    },
                    ind,
                ));
            }
            "record" => panic!("line {n}: recording rules are not expected in the alert file"),
            other => panic!("line {n}: unexpected key {other}"),
        }
        i += 1;
    }
    rules
}

#[test]
fn alert_rules_are_well_formed_and_cover_lag_status_dead_letters_slots_and_kafka() {
    let rules = parse_rules(RULES);
    assert!(rules.len() >= 8, "{} rules", rules.len());
    let mut names = BTreeSet::new();
    for r in &rules {
        assert!(!r.group.is_empty(), "{} outside a group", r.alert);
        assert!(names.insert(r.alert.clone()), "alert {} repeated", r.alert);
        assert!(
            r.alert.starts_with("Backflow") && r.alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "alert names are CamelCase: {}",
            r.alert
        );
        assert!(!r.expr.is_empty(), "{}: no expr", r.alert);
        assert!(balanced(&r.expr), "{}: unbalanced {}", r.alert, r.expr);
        assert!(
            !metric_names(&r.expr).is_empty(),
            "{}: reads no backflow metric",
            r.alert
        );
        assert!(
            matches!(
                r.labels.get("severity").map(String::as_str),
                Some("warning" | "critical")
            ),
            "{}: severity warning or critical: {:?}",
            r.alert,
            r.labels
        );
        for a in ["summary", "description"] {
            assert!(
                r.annotations.get(a).is_some_and(|s| !s.is_empty()),
                "{}: annotation {a} missing",
                r.alert
            );
        }
        if let Some(f) = &r.for_ {
            assert!(
                f.ends_with('m') && f[..f.len() - 1].parse::<u32>().is_ok(),
                "{}: for {f}",
                r.alert
            );
        }
    }
    let find = |what: &str, ok: &dyn Fn(&Rule) -> bool| {
        rules
            .iter()
            .find(|r| ok(r))
            .unwrap_or_else(|| panic!("no alert for {what}"))
    };
    let lag = find("subscription lag seconds above a threshold", &|r| {
        r.expr.contains("backflow_subscription_lag_seconds") && r.expr.contains(" > ")
    });
    assert_eq!(lag.for_.as_deref(), Some("5m"), "{lag:?}");
    for status in ["STALL", "STOP"] {
        find(status, &|r| {
            r.expr.contains(&format!(
                "backflow_subscription_status{{status=\"{status}\"}}"
            ))
        });
    }
    for m in [
        "backflow_source_dead_letters_total",
        "backflow_subscribe_dead_letters_total",
    ] {
        let r = find(m, &|r| r.expr.contains(m));
        assert!(
            r.expr.contains("rate(") && r.expr.ends_with("> 0"),
            "dead-letter rate > 0: {r:?}"
        );
    }
    find("source slot/binlog lag bytes", &|r| {
        r.expr.contains("backflow_source_lag_bytes") && r.expr.contains(" > ")
    });
    find("broker unreachable", &|r| {
        r.expr.contains("backflow_kafka_broker_reachable") && r.expr.ends_with("== 0")
    });
    // Annotations name what is behind and where to look.
    assert!(lag.annotations["summary"].contains("{{ $labels.subscriber }}"));
    assert!(lag.annotations["summary"].contains("{{ $labels.dataset }}"));
    // With Prometheus's own checker when it is installed (Debian's
    // `prometheus` package): the expressions are valid PromQL.
    match std::process::Command::new("promtool")
        .args(["check", "rules", RULES_PATH])
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("promtool not installed: PromQL syntax checked for balance only"),
    }
}

// ------------------------------------------------------------------ live

fn sql(path: &Path, statements: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(statements)
        .unwrap();
}

/// The `# TYPE` families of a Prometheus text exposition.
fn exposed_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let mut used = dashboard_metrics();
    used.extend(
        parse_rules(RULES)
            .iter()
            .flat_map(|r| metric_names(&r.expr)),
    );

    // A city node with a polled department table shared with 330106, and
    // the district's subscriber applying it: every part of the data path
    // runs, so its metric families have series.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dept.db");
    sql(
        &db,
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                              region_code TEXT NOT NULL, updated_at TIMESTAMP NOT NULL);
         INSERT INTO people VALUES (1, 'a', '330106', strftime('%Y-%m-%d %H:%M:%f', 'now')),
                                   (2, 'b', '330106', strftime('%Y-%m-%d %H:%M:%f', 'now')),
                                   (3, 'c', '330108', strftime('%Y-%m-%d %H:%M:%f', 'now'));",
    );
    let broker = TestBroker::start();
    let dataset = "gongan.population";
    let reader = TestToken::new("subscriber:330106");
    let config = format!(
        "[node]\ncode = \"330100\"\nname = \"city\"\n[kafka]\nbrokers = \"{}\"\n{}\n\
         [[feeds]]\ntype = \"poll\"\nname = \"gongan-sqlite\"\nengine = \"sqlite\"\npath = \"{}\"\npoll_interval_ms = 200\ndelay_ms = 300\n\n\
         [[feeds.tables]]\ntable = \"people\"\ndataset = \"{dataset}\"\nmode = \"timestamp+incrementing\"\ntimestamp_column = \"updated_at\"\n\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"plain\", region_code = \"plain\" }}\n",
        broker.bootstrap(),
        reader.auth_toml(),
        db.display(),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let sub_config = format!(
        "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"backflow.share.330106.{dataset}\", table = \"people\" }}]\n",
        unique_name("d330106"),
        broker.bootstrap(),
        node.url,
        reader.upstream_setting(),
        sink.sink_toml(),
    );
    let subscriber = Node::subscribe_with_config(&sub_config, &[]).unwrap();

    // Until the subscriber has applied the rows and reported (its group's
    // lag is then on the node), or the deadline.
    let until = Instant::now() + Duration::from_secs(90);
    let (exposed, texts) = loop {
        let (_, node_text) = node.get_ops("/metrics").await.unwrap();
        let (_, sub_text) = subscriber.get_ops("/metrics").await.unwrap_or_default();
        let mut exposed = exposed_families(&node_text);
        exposed.extend(exposed_families(&sub_text));
        let missing = used.iter().filter(|m| !exposed.contains(*m)).count();
        if missing == 0 || Instant::now() > until {
            break (exposed, (node_text, sub_text));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<&String> = used.iter().filter(|m| !exposed.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "metric families used by helm/backflow/dashboards/backflow.json or alerts/backflow-rules.yaml \
         but not in /metrics of a running node or subscriber: {missing:?}\n\
         (a labelled family appears only once it has a series: create its series at start, at 0)\n\
         node /metrics:\n{}\nsubscriber /metrics:\n{}\nnode log:\n{}\nsubscriber log:\n{}",
        texts.0,
        texts.1,
        node.stderr(),
        subscriber.stderr()
    );
    eprintln!("{} metric families checked: {used:?}", used.len());
}
