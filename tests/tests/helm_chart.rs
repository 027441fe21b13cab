//! The Helm chart `helm/backflow`, rendered offline by Helm's own template
//! engine: Helm v4 as a library from the PyPI package helm-python-sdk,
//! installed by `scripts/helm-setup.sh` (which `scripts/services.sh up`
//! runs); `scripts/helm_render.py` prints the manifests as JSON.
//!
//! For the default values and for each example of `helm/backflow/examples/`
//! (province node, city node with a cascade, district subscriber): the
//! objects an operator expects are there, the container runs the role's
//! subcommand with the mounted configuration, probes and ports match
//! `http.listen`, the pod runs locked down, the rendered configuration is
//! accepted by the real binary (`backflow --config FILE config check`, with
//! the chart's Secret as its environment), no credential lands in a
//! ConfigMap, the checksum annotations are the SHA-256 of what they cover and
//! follow changes, monitoring objects come from the chart's alert rules and
//! dashboard files, and values backflow cannot run with are refused with a
//! message naming the value.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use backflow_e2e::backflow;
use serde_json::Value;

const CONFIG_FILE: &str = "/etc/backflow/backflow.toml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn example(name: &str) -> PathBuf {
    root().join("helm/backflow/examples").join(name)
}

/// The virtualenv python `scripts/helm-setup.sh` installs Helm into.
fn renderer() -> PathBuf {
    let cache = std::env::var_os("BACKFLOW_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/backflow")
        });
    let python = cache.join("helm-venv/bin/python");
    assert!(
        python.exists(),
        "the chart renderer (Helm v4 from helm-python-sdk) is not installed: {} is missing; \
         run scripts/services.sh up (it runs scripts/helm-setup.sh)",
        python.display()
    );
    python
}

/// Runs `scripts/helm_render.py COMMAND -f VALUES... --set SET...`.
fn helm(command: &str, values: &[&Path], sets: &[&str]) -> Output {
    let mut cmd = Command::new(renderer());
    cmd.arg(root().join("scripts/helm_render.py")).arg(command);
    for v in values {
        cmd.arg("-f").arg(v);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.args(["--release", "bf", "--namespace", "backflow-test"]);
    cmd.output().expect("run scripts/helm_render.py")
}

/// The rendered objects; panics with Helm's message when rendering fails.
fn render(values: &[&Path], sets: &[&str]) -> Manifests {
    let out = helm("template", values, sets);
    assert!(
        out.status.success(),
        "rendering the chart with {values:?} {sets:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout).expect("renderer prints JSON");
    Manifests(objects)
}

/// Helm's error when rendering must fail.
fn render_error(values: &[&Path], sets: &[&str]) -> String {
    let out = helm("template", values, sets);
    assert!(
        !out.status.success(),
        "rendering with {values:?} {sets:?} should have failed, rendered:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A values file (JSON is YAML) in a temporary directory.
fn values_file(dir: &tempfile::TempDir, name: &str, values: Value) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(&values).unwrap()).unwrap();
    path
}

struct Manifests(Vec<Value>);

impl Manifests {
    fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self
            .0
            .iter()
            .map(|o| o["kind"].as_str().expect("kind"))
            .collect();
        kinds.sort();
        kinds
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(
            all.len(),
            1,
            "one {kind} expected, kinds: {:?}",
            self.kinds()
        );
        all[0]
    }

    fn has(&self, kind: &str) -> bool {
        !self.all(kind).is_empty()
    }

    fn pod(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    fn args(&self) -> Vec<&str> {
        self.container()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string arg"))
            .collect()
    }

    /// The ConfigMap holding backflow.toml.
    fn config_map(&self) -> &Value {
        let maps: Vec<&Value> = self
            .all("ConfigMap")
            .into_iter()
            .filter(|m| m["data"].get("backflow.toml").is_some())
            .collect();
        assert_eq!(maps.len(), 1, "one ConfigMap with backflow.toml");
        maps[0]
    }

    fn config_toml(&self) -> &str {
        self.config_map()["data"]["backflow.toml"]
            .as_str()
            .expect("backflow.toml is text")
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.pod()["metadata"]["annotations"][key].as_str()
    }

    /// The chart's Secret, decoded: variable → value.
    fn secret_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for secret in self.all("Secret") {
            for (k, v) in secret["data"].as_object().expect("Secret data") {
                env.insert(k.clone(), base64_decode(v.as_str().expect("base64")));
            }
        }
        env
    }
}

fn base64_decode(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {text}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8(bytes).expect("UTF-8 secret")
}

fn sha256_hex(data: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// `backflow --config FILE config <what>` on the rendered configuration with
/// `env` (the Secret's variables) as the environment; returns stdout.
fn backflow_config(toml: &str, env: &BTreeMap<String, String>, what: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backflow.toml");
    std::fs::write(&file, toml).unwrap();
    let out = backflow()
        .arg("--config")
        .arg(&file)
        .args(["config", what])
        .envs(env)
        .output()
        .expect("run backflow");
    assert!(
        out.status.success(),
        "backflow config {what} refused the chart's configuration: {}\n{toml}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What every rendering must satisfy: the objects, the role's command line,
/// probes and ports, the locked-down pod, the config checksum, the real
/// binary accepting the configuration, no credential in a ConfigMap.
/// Returns the effective configuration (`backflow config show`).
fn check_release(m: &Manifests, subcommand: &str) -> Value {
    for kind in ["ConfigMap", "Deployment", "Service", "ServiceAccount"] {
        assert!(m.has(kind), "{kind} missing: {:?}", m.kinds());
    }

    // The role's subcommand, with the mounted configuration file.
    let args = m.args();
    assert_eq!(
        &args[..3],
        &["--config", CONFIG_FILE, subcommand],
        "{args:?}"
    );
    let mounts = m.container()["volumeMounts"].as_array().unwrap();
    let config_mount = mounts
        .iter()
        .find(|v| v["name"] == "config")
        .expect("config mount");
    assert_eq!(config_mount["mountPath"], "/etc/backflow");
    let volumes = m.pod()["spec"]["volumes"].as_array().unwrap();
    let config_volume = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(
        config_volume["configMap"]["name"],
        m.config_map()["metadata"]["name"]
    );

    // Ports and probes follow http.listen.
    let toml = m.config_toml();
    let effective = serde_json::from_str::<Value>(&backflow_config(toml, &m.secret_env(), "show"))
        .expect("config show prints JSON");
    let listen = effective["http"]["listen"].as_str().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "the pod listens on every interface: {listen}"
    );
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = m.container()["ports"].as_array().unwrap();
    assert_eq!(ports[0]["name"], "http");
    assert_eq!(ports[0]["containerPort"], port);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &m.container()[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
    }
    let service = m.one("Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &m.pod()["metadata"]["labels"][k],
            v,
            "Service selects the pod"
        );
    }

    // Locked down.
    let pod_sc = &m.pod()["spec"]["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert!(pod_sc["runAsUser"].as_u64().unwrap() > 0);
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    let sc = &m.container()["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert!(sc["runAsUser"].as_u64().unwrap() > 0);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let tmp = mounts
        .iter()
        .find(|v| v["mountPath"] == "/tmp")
        .expect("/tmp mount");
    let tmp_volume = volumes.iter().find(|v| v["name"] == tmp["name"]).unwrap();
    assert!(tmp_volume.get("emptyDir").is_some(), "/tmp is an emptyDir");
    assert_eq!(m.pod()["spec"]["enableServiceLinks"], false);
    assert!(m.container()["resources"]["requests"].is_object());

    // The checksum is the configuration file's.
    assert_eq!(
        m.annotation("checksum/config"),
        Some(sha256_hex(toml).as_str())
    );

    // The real binary accepts it.
    let check = backflow_config(toml, &m.secret_env(), "check");
    assert!(check.contains("configuration ok"), "{check}");

    // Credentials come from the Secret, never from a ConfigMap.
    let secrets = m.secret_env();
    if !secrets.is_empty() {
        let secret = m.one("Secret");
        let name = secret["metadata"]["name"].as_str().unwrap();
        let from = m.container()["envFrom"].as_array().expect("envFrom");
        assert!(
            from.iter().any(|e| e["secretRef"]["name"] == name),
            "the container takes its variables from Secret {name}: {from:?}"
        );
        assert!(
            m.annotation("checksum/secret").is_some(),
            "a Secret change rolls the pod"
        );
        for (var, value) in &secrets {
            assert!(
                toml.contains(var.as_str()),
                "{var} is named by the configuration"
            );
            for cm in m.all("ConfigMap") {
                assert!(
                    !cm.to_string().contains(value.as_str()),
                    "the value of {var} is in ConfigMap {}",
                    cm["metadata"]["name"]
                );
            }
            assert!(
                !m.one("Deployment").to_string().contains(value.as_str()),
                "the value of {var} is in the Deployment"
            );
        }
    }
    effective
}

#[test]
fn default_values_render_a_node() {
    let m = render(&[], &[]);
    let config = check_release(&m, "serve");
    assert_eq!(m.args().len(), 3, "{:?}", m.args());
    assert_eq!(m.container()["ports"][0]["containerPort"], 8480);
    assert_eq!(config["node"]["code"], "330000");
    // No credentials given, no monitoring asked for.
    for kind in ["Secret", "ServiceMonitor", "PrometheusRule"] {
        assert!(!m.has(kind), "{kind} rendered by default: {:?}", m.kinds());
    }
    assert_eq!(m.all("ConfigMap").len(), 1, "no dashboard by default");
    assert!(m.annotation("checksum/secret").is_none());
    assert_eq!(m.one("Deployment")["spec"]["replicas"], 1);
    assert_eq!(m.one("Deployment")["spec"]["strategy"]["type"], "Recreate");

    // Another port moves the container port; probes and Service follow by name.
    let m = render(&[], &["config.http.listen=0.0.0.0:9400"]);
    check_release(&m, "serve");
    assert_eq!(m.container()["ports"][0]["containerPort"], 9400);
}

#[test]
fn province_example_is_a_node_with_a_feed_and_a_hashed_share() {
    let m = render(&[&example("values-province-330000.yaml")], &[]);
    let config = check_release(&m, "serve");
    assert_eq!(config["node"]["code"], "330000");
    assert_eq!(config["feeds"][0]["type"], "postgres");
    assert_eq!(
        config["feeds"][0]["port"], 5432,
        "integers stay integers through toToml"
    );
    assert_eq!(config["feeds"][0]["password_env"], "GONGAN_PG_PASSWORD");
    assert_eq!(config["shares"][0]["subscriber"], "330100");
    assert_eq!(config["kafka"]["partitions"], 6);
    let secrets = m.secret_env();
    assert!(secrets.contains_key("GONGAN_PG_PASSWORD"), "{secrets:?}");
    assert!(secrets.contains_key("SHARE_330100_SECRET"), "{secrets:?}");
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert!(m.has(kind), "{kind} enabled in the example");
    }
    assert_eq!(m.all("ConfigMap").len(), 2, "configuration and dashboard");
}

#[test]
fn city_example_is_a_node_cascading_into_its_own_bus_and_a_database() {
    let m = render(&[&example("values-city-330100.yaml")], &[]);
    let config = check_release(&m, "serve");
    assert_eq!(config["node"]["code"], "330100");
    assert_eq!(config["node"]["parent"], "330000");
    let subs = config["subscriptions"].as_array().unwrap();
    let sinks: Vec<&str> = subs
        .iter()
        .map(|s| s["sink"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(sinks, ["kafka", "postgres"], "{subs:?}");
    for s in subs {
        assert_eq!(
            s["tables"][0]["topic"],
            "backflow.share.330100.gongan.population"
        );
        assert_eq!(
            s["upstream"]["properties"]["sasl.password"], "<redacted>",
            "the upstream password comes from properties_env"
        );
    }
    assert_eq!(config["shares"][0]["subscriber"], "330106");
    let secrets = m.secret_env();
    assert!(
        secrets.contains_key("PROVINCE_KAFKA_PASSWORD"),
        "{secrets:?}"
    );
    assert!(secrets.contains_key("CITY_PG_PASSWORD"), "{secrets:?}");
    assert_eq!(
        subs[0]["upstream"]["registry_token_env"],
        "PROVINCE_REGISTRY_TOKEN"
    );
    assert!(
        secrets.contains_key("PROVINCE_REGISTRY_TOKEN"),
        "{secrets:?}"
    );
}

#[test]
fn the_nodes_own_kafka_password_comes_from_the_secret() {
    let m = render(
        &[],
        &[
            "config.kafka.brokers=kafka:9092",
            "config.kafka.properties.sasl\\.username=330100",
            "config.kafka.properties_env.sasl\\.password=KAFKA_PASSWORD",
            "secrets.env.KAFKA_PASSWORD=s3cret-from-the-secret",
        ],
    );
    // backflow accepts the rendered file with the Secret's variables, and
    // the password was read from the environment (shown redacted).
    let config = check_release(&m, "serve");
    assert_eq!(config["kafka"]["properties"]["sasl.username"], "<redacted>");
    assert_eq!(config["kafka"]["properties"]["sasl.password"], "<redacted>");
    assert_eq!(m.secret_env()["KAFKA_PASSWORD"], "s3cret-from-the-secret");
    let configmap = serde_json::to_string(&m.all("ConfigMap")).unwrap();
    assert!(!configmap.contains("s3cret-from-the-secret"));
}

#[test]
fn district_example_is_a_subscriber_into_postgres() {
    let m = render(&[&example("values-district-330106.yaml")], &[]);
    let config = check_release(&m, "subscribe");
    assert_eq!(config["node"]["code"], "330106");
    let sub = &config["subscriptions"][0];
    assert_eq!(sub["sink"]["type"], "postgres");
    assert_eq!(sub["sink"]["port"], 5432);
    assert_eq!(sub["sink"]["password_env"], "DISTRICT_PG_PASSWORD");
    assert_eq!(
        sub["tables"][0]["topic"],
        "backflow.share.330106.gongan.population"
    );
    let secrets = m.secret_env();
    assert!(secrets.contains_key("CITY_KAFKA_PASSWORD"), "{secrets:?}");
    assert!(secrets.contains_key("DISTRICT_PG_PASSWORD"), "{secrets:?}");
    assert_eq!(sub["upstream"]["registry_token_env"], "CITY_REGISTRY_TOKEN");
    assert!(secrets.contains_key("CITY_REGISTRY_TOKEN"), "{secrets:?}");
    assert!(m.has("ServiceMonitor"));
}

#[test]
fn source_role_runs_the_named_feeds_only() {
    let dir = tempfile::tempdir().unwrap();
    let values = values_file(
        &dir,
        "source.yaml",
        serde_json::json!({
            "role": "source",
            "sourceFeeds": ["minzheng-my"],
            "config": {
                "node": {"code": "330100"},
                "kafka": {"brokers": "kafka-0.kafka:9092"},
                "feeds": [
                    {"type": "mysql", "name": "minzheng-my", "host": "minzheng-db", "port": 3306,
                     "user": "backflow", "password_env": "MINZHENG_MY_PASSWORD",
                     "tables": [{"table": "minzheng.households", "dataset": "minzheng.households"}]},
                    {"type": "postgres", "name": "gongan-pg", "host": "gongan-db",
                     "user": "backflow", "password_env": "GONGAN_PG_PASSWORD", "database": "gongan",
                     "tables": [{"table": "public.population", "dataset": "gongan.population"}]}
                ]
            },
            "secrets": {"env": {"MINZHENG_MY_PASSWORD": "mz-secret-value-1", "GONGAN_PG_PASSWORD": "ga-secret-value-2"}}
        }),
    );
    let m = render(&[&values], &[]);
    check_release(&m, "source");
    assert_eq!(
        m.args(),
        ["--config", CONFIG_FILE, "source", "--feed", "minzheng-my"]
    );
    let err = render_error(&[&values], &["sourceFeeds={oracle-db}"]);
    assert!(
        err.contains("sourceFeeds") && err.contains("oracle-db"),
        "{err}"
    );
}

#[test]
fn monitoring_objects_come_from_the_charts_files() {
    let m = render(
        &[],
        &["serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true"],
    );
    check_release(&m, "serve");

    // ServiceMonitor: the Service's http port, /metrics.
    let sm = m.one("ServiceMonitor");
    let service = m.one("Service");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selects the Service"
        );
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");

    // PrometheusRule: the groups and alerts of alerts/backflow-rules.yaml,
    // Prometheus' own {{ $labels }} templates left alone.
    let rules_file =
        std::fs::read_to_string(root().join("helm/backflow/alerts/backflow-rules.yaml")).unwrap();
    let file_alerts: Vec<&str> = rules_file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    let file_groups: Vec<&str> = rules_file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .map(str::trim)
        .collect();
    let rule = m.one("PrometheusRule");
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, file_groups);
    let alerts: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let alert_names: Vec<&str> = alerts
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(alert_names, file_alerts);
    assert!(alerts.iter().all(|r| r["expr"].is_string()));
    assert!(
        rule.to_string().contains("{{ $labels.subscriber }}"),
        "alert templates kept for Prometheus"
    );

    // The dashboard ConfigMap: the file, labelled for Grafana's sidecar.
    let dashboard = m
        .all("ConfigMap")
        .into_iter()
        .find(|c| c["data"].get("backflow.json").is_some())
        .expect("dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let rendered: Value =
        serde_json::from_str(dashboard["data"]["backflow.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("helm/backflow/dashboards/backflow.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rendered, file);

    let notes = helm("notes", &[], &["serviceMonitor.enabled=true"]);
    assert!(notes.status.success());
    let notes: String = serde_json::from_slice(&notes.stdout).unwrap();
    assert!(
        notes.contains("EMBEDDED") && notes.contains("ServiceMonitor"),
        "{notes}"
    );
}

#[test]
fn checksums_follow_configuration_and_secret_changes() {
    let district = example("values-district-330106.yaml");
    let before = render(&[&district], &[]);
    let config_sum = before.annotation("checksum/config").unwrap().to_owned();
    let secret_sum = before.annotation("checksum/secret").unwrap().to_owned();

    let relogged = render(&[&district], &["config.log.level=debug"]);
    let new_sum = relogged.annotation("checksum/config").unwrap();
    assert_ne!(new_sum, config_sum, "a configuration change rolls the pod");
    assert_eq!(new_sum, sha256_hex(relogged.config_toml()));
    assert!(relogged.config_toml().contains("level = \"debug\""));
    assert_eq!(
        relogged.annotation("checksum/secret"),
        Some(secret_sum.as_str())
    );

    let rotated = render(
        &[&district],
        &["secrets.env.DISTRICT_PG_PASSWORD=a-rotated-password"],
    );
    assert_eq!(
        rotated.annotation("checksum/config"),
        Some(config_sum.as_str())
    );
    assert_ne!(
        rotated.annotation("checksum/secret"),
        Some(secret_sum.as_str()),
        "a new password rolls the pod"
    );
    assert_eq!(
        rotated.secret_env()["DISTRICT_PG_PASSWORD"],
        "a-rotated-password"
    );

    // A Secret of the operator's own: every key as variables, no chart Secret.
    let existing = render(
        &[&district],
        &["secrets.existingSecret=district-credentials"],
    );
    assert!(!existing.has("Secret"));
    assert_eq!(
        existing.container()["envFrom"][0]["secretRef"]["name"],
        "district-credentials"
    );
}

#[test]
fn values_backflow_cannot_run_with_are_refused_naming_the_value() {
    let district = example("values-district-330106.yaml");
    let district = district.as_path();
    let city = example("values-city-330100.yaml");
    let city = city.as_path();
    let cases: Vec<(Vec<&Path>, &str, Vec<&str>)> = vec![
        (vec![], "role=district", vec!["role", "node", "subscriber"]),
        (vec![], "role=subscriber", vec!["config.subscriptions"]),
        (vec![], "role=source", vec!["config.feeds"]),
        // A cascade into the node's own bus runs in `backflow serve`.
        (
            vec![city],
            "role=subscriber",
            vec!["330100-from-330000", "kafka", "role node"],
        ),
        // A variable the configuration names that nothing provides.
        (
            vec![district],
            "secrets.env.DISTRICT_PG_PASSWORD=null",
            vec!["DISTRICT_PG_PASSWORD", "subscriptions[0].sink.password_env"],
        ),
        (
            vec![district],
            "secrets.env.CITY_REGISTRY_TOKEN=null",
            vec![
                "CITY_REGISTRY_TOKEN",
                "subscriptions[0].upstream.registry_token_env",
            ],
        ),
        // Credentials would land in the ConfigMap.
        (
            vec![district],
            "config.subscriptions[0].upstream.properties.sasl\\.password=x",
            vec!["sasl.password", "properties_env"],
        ),
        (
            vec![],
            "config.kafka.properties.sasl\\.password=x",
            vec![
                "config.kafka.properties.sasl.password",
                "kafka.properties_env",
            ],
        ),
        // The node's own Kafka password from a variable nothing provides.
        (
            vec![],
            "config.kafka.properties_env.sasl\\.password=KAFKA_PASSWORD",
            vec!["KAFKA_PASSWORD", "kafka.properties_env.sasl.password"],
        ),
        // Kubernetes would kill backflow before its graceful shutdown ends.
        (
            vec![],
            "config.runtime.shutdown_timeout_ms=30000",
            vec!["shutdown_timeout_ms", "terminationGracePeriodSeconds"],
        ),
        // Probes cannot reach a loopback listener.
        (
            vec![],
            "config.http.listen=127.0.0.1:8480",
            vec!["config.http.listen", "0.0.0.0"],
        ),
    ];
    for (values, set, words) in cases {
        let err = render_error(&values, &[set]);
        for w in words {
            assert!(err.contains(w), "--set {set}: {w:?} not in: {err}");
        }
    }
}

#[test]
fn chart_lints_clean_for_defaults_and_examples() {
    let province = example("values-province-330000.yaml");
    let city = example("values-city-330100.yaml");
    let district = example("values-district-330106.yaml");
    for values in [vec![], vec![&*province], vec![&*city], vec![&*district]] {
        let out = helm("lint", &values, &[]);
        assert!(
            out.status.success(),
            "helm lint (strict) with {values:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
