//! The Helm chart `helm/backflow`, rendered offline by Helm's own template
//! engine: Helm v4 as a library from the PyPI package helm-python-sdk,
//! installed by `scripts/helm-setup.sh` (which `scripts/services.sh up`
//! runs); `scripts/helm_render.py` prints the manifests as JSON.
//!
//! For the default values and for each example of `helm/backflow/examples/`
//! (province node, city node with a cascade, district subscriber): the
//! objects an operator expects are there, the container runs the role's
//! subcommand with the mounted configuration, probes and ports match
//! `http.listen`, the metrics port and the ServiceMonitor follow
//! `http.metrics_listen`, the pod runs locked down, the rendered
//! configuration is accepted by the real binary (`backflow --config FILE
//! config check`, with the chart's Secret as its environment), a node on a
//! Kafka cluster is given its audit signing key from the Secret, no
//! credential lands in a ConfigMap, the checksum annotations are the SHA-256
//! of what they cover and follow changes, monitoring objects come from the
//! chart's alert rules and dashboard files, and values backflow cannot run
//! with are refused with a message naming the value.
//!
//! One test runs the rendered node as the pod would (the Deployment's
//! arguments, the Secret as its environment) on an Apache Kafka broker: it starts
//! with the audit key from the Secret, and the port the ServiceMonitor
//! scrapes answers `/metrics` without a token.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use backflow_e2e::{audit_keygen, backflow, TestBroker};
use serde_json::{json, Value};

const CONFIG_FILE: &str = "/etc/backflow/backflow.toml";

/// The Secret key (and environment variable) the chart gives a node's
/// audit signing key by default (`auditSigningKey.secretKey`).
const AUDIT_KEY_VAR: &str = "BACKFLOW_AUDIT_KEY";

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

/// An audit signing key made by `backflow audit keygen`, and a values file
/// giving it to the chart the documented way: the key file's content in
/// `secrets.env.BACKFLOW_AUDIT_KEY` (what `--set-file` puts there).
struct AuditKey {
    _dir: tempfile::TempDir,
    values: PathBuf,
    public_key: String,
    seed: String,
}

fn audit_key() -> AuditKey {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.key");
    let (public_key, _) = audit_keygen(&file).expect("backflow audit keygen");
    let file_text = std::fs::read_to_string(&file).unwrap();
    let values = values_file(
        &dir,
        "audit-key.yaml",
        json!({"secrets": {"env": {AUDIT_KEY_VAR: file_text}}}),
    );
    AuditKey {
        _dir: dir,
        values,
        public_key,
        seed: file_text.trim().to_owned(),
    }
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

    /// The Service carrying the port named `port`.
    fn service_with_port(&self, port: &str) -> Option<&Value> {
        let with: Vec<&Value> = self
            .all("Service")
            .into_iter()
            .filter(|s| {
                s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port)
            })
            .collect();
        assert!(with.len() <= 1, "one Service with port {port}: {with:?}");
        with.first().copied()
    }

    /// The container's port named `name`.
    fn container_port(&self, name: &str) -> Option<u64> {
        self.container()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].as_u64().expect("numeric containerPort"))
    }

    /// The container port the ServiceMonitor scrapes and its path: the
    /// endpoint's port name, in the one Service the ServiceMonitor selects,
    /// to that port's targetPort, to the container's port of that name.
    fn scraped_port(&self) -> (u64, String) {
        let sm = self.one("ServiceMonitor");
        let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 1, "{endpoints:?}");
        let endpoint = &endpoints[0];
        let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let selected: Vec<&Value> = self
            .all("Service")
            .into_iter()
            .filter(|s| {
                selector
                    .iter()
                    .all(|(k, v)| &s["metadata"]["labels"][k] == v)
            })
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "the ServiceMonitor selects exactly one Service: {selected:?}"
        );
        let port = selected[0]["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("the selected Service has port {}", endpoint["port"]));
        let target = port["targetPort"].as_str().expect("targetPort by name");
        let number = self
            .container_port(target)
            .unwrap_or_else(|| panic!("the container has no port named {target}"));
        (number, endpoint["path"].as_str().unwrap().to_owned())
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
    // Probes stay on the main listener: /healthz is open there and /readyz
    // answers ready / not ready to anonymous callers.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &m.container()[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
    }
    let service = m.service_with_port("http").expect("a Service for http");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let selects_pod = |service: &Value| {
        for (k, v) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(
                &m.pod()["metadata"]["labels"][k],
                v,
                "Service selects the pod"
            );
        }
    };
    selects_pod(service);
    // /metrics answers without a token on http.metrics_listen only: the
    // container's metrics port, on a ClusterIP Service of its own, so that
    // a LoadBalancer or NodePort for the API never publishes it.
    assert_eq!(
        service["spec"]["ports"].as_array().unwrap().len(),
        1,
        "the main Service carries http only: {service}"
    );
    match effective["http"]["metrics_listen"].as_str() {
        Some(metrics_listen) => {
            assert!(
                metrics_listen.starts_with("0.0.0.0:"),
                "Prometheus reaches the metrics listener: {metrics_listen}"
            );
            let metrics_port: u64 = metrics_listen.rsplit(':').next().unwrap().parse().unwrap();
            assert_ne!(metrics_port, port);
            assert_eq!(m.container_port("metrics"), Some(metrics_port));
            let metrics = m
                .service_with_port("metrics")
                .expect("a Service for the metrics port");
            assert_eq!(metrics["spec"]["type"], "ClusterIP");
            assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "metrics");
            assert_eq!(metrics["spec"]["ports"].as_array().unwrap().len(), 1);
            selects_pod(metrics);
        }
        None => {
            assert_eq!(m.container_port("metrics"), None);
            assert!(m.service_with_port("metrics").is_none());
            assert!(!m.has("ServiceMonitor"));
        }
    }
    if m.has("ServiceMonitor") {
        let (scraped, path) = m.scraped_port();
        assert_eq!(path, "/metrics");
        assert_eq!(
            Some(scraped),
            m.container_port("metrics"),
            "the ServiceMonitor scrapes the metrics port, not http (401 there without a token)"
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

    // A node on a Kafka cluster refuses to start without its audit signing
    // key: it comes from the Secret, by the variable the configuration names.
    let from_secret = |var: &str| {
        m.secret_env().contains_key(var)
            || (!m.has("Secret")
                && m.container()["envFrom"]
                    .as_array()
                    .is_some_and(|from| from.iter().any(|e| e["secretRef"]["name"].is_string())))
            || m.container()["env"].as_array().is_some_and(|env| {
                env.iter()
                    .any(|e| e["name"] == var && e["valueFrom"]["secretKeyRef"]["name"].is_string())
            })
    };
    let audit = &effective["audit"];
    if subcommand == "serve" && effective["kafka"]["brokers"].is_string() {
        assert!(
            audit["signing_key_env"].is_string() || audit["signing_key_file"].is_string(),
            "a node on a Kafka cluster is given its audit key: {toml}"
        );
    }
    if let Some(var) = audit["signing_key_env"].as_str() {
        assert!(from_secret(var), "{var} comes from the Secret");
    }
    if let Some(file) = audit["signing_key_file"].as_str() {
        // A file of the Secret's volume.
        let (dir, name) = file.rsplit_once('/').unwrap();
        let mount = mounts
            .iter()
            .find(|v| v["mountPath"] == dir)
            .unwrap_or_else(|| panic!("{file} is in a mounted volume: {mounts:?}"));
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert!(volume["secret"]["secretName"].is_string(), "{volume}");
        assert!(from_secret(name), "{name} is a key of the Secret");
    }

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
    assert_eq!(m.container_port("http"), Some(8480));
    assert_eq!(m.container_port("metrics"), Some(9480));
    assert_eq!(config["http"]["metrics_listen"], "0.0.0.0:9480");
    assert_eq!(config["node"]["code"], "330000");
    // The embedded broker: no audit key needed (the node makes one per run,
    // NOTES.txt warns), none wired.
    assert!(config["audit"]["signing_key_env"].is_null(), "{config}");
    // No credentials given, no monitoring asked for.
    for kind in ["Secret", "ServiceMonitor", "PrometheusRule"] {
        assert!(!m.has(kind), "{kind} rendered by default: {:?}", m.kinds());
    }
    assert_eq!(m.all("ConfigMap").len(), 1, "no dashboard by default");
    assert!(m.annotation("checksum/secret").is_none());
    assert_eq!(m.one("Deployment")["spec"]["replicas"], 1);
    assert_eq!(m.one("Deployment")["spec"]["strategy"]["type"], "Recreate");

    // Another port moves the container port; probes and Service follow by name.
    let m = render(
        &[],
        &["config.http.listen=0.0.0.0:9400,config.http.metrics_listen=0.0.0.0:9500"],
    );
    check_release(&m, "serve");
    assert_eq!(m.container_port("http"), Some(9400));
    assert_eq!(m.container_port("metrics"), Some(9500));

    // The API published by a LoadBalancer: the open metrics port is not.
    let m = render(&[], &["service.type=LoadBalancer"]);
    check_release(&m, "serve");
    assert_eq!(
        m.service_with_port("http").unwrap()["spec"]["type"],
        "LoadBalancer"
    );

    // No metrics listener: no metrics port, no metrics Service.
    let m = render(&[], &["config.http.metrics_listen=null"]);
    let config = check_release(&m, "serve");
    assert!(config["http"]["metrics_listen"].is_null());

    // The probes ask the main port in the scheme it speaks.
    let schemes = |m: &Manifests| {
        let container = &m.one("Deployment")["spec"]["template"]["spec"]["containers"][0];
        ["livenessProbe", "readinessProbe"].map(|p| container[p]["httpGet"]["scheme"].clone())
    };
    assert_eq!(schemes(&m), [json!("HTTP"), json!("HTTP")]);
    let m = render(
        &[],
        &["config.http.tls_cert=/etc/backflow/tls/tls.crt,config.http.tls_key=/etc/backflow/tls/tls.key"],
    );
    check_release(&m, "serve");
    assert_eq!(schemes(&m), [json!("HTTPS"), json!("HTTPS")]);
}

#[test]
fn province_example_is_a_node_with_a_feed_and_a_hashed_share() {
    let key = audit_key();
    let m = render(&[&example("values-province-330000.yaml"), &key.values], &[]);
    let config = check_release(&m, "serve");
    assert_eq!(config["node"]["code"], "330000");
    assert_eq!(config["audit"]["signing_key_env"], AUDIT_KEY_VAR);
    assert_eq!(m.secret_env()[AUDIT_KEY_VAR].trim(), key.seed);
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
fn a_node_runs_as_several_pods_with_a_disruption_budget_and_nothing_else_may() {
    let key = audit_key();
    let province = example("values-province-330000.yaml");
    let m = render(&[&province, &key.values], &["replicas=3"]);
    let config = check_release(&m, "serve");
    let deployment = m.one("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pdb = m.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the budget covers the node's pods"
    );
    // Each pod names itself (its pod name): no replica name in the file.
    assert!(config["kafka"]["replica"].is_null(), "{config}");
    let env = m.container()["env"].as_array().expect("env");
    let replica = env
        .iter()
        .find(|e| e["name"] == "BACKFLOW_KAFKA__REPLICA")
        .expect("the replica name comes from the pod");
    assert_eq!(
        replica["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // One pod: no budget (a drain must be able to move it).
    let m = render(&[&province, &key.values], &[]);
    assert!(!m.has("PodDisruptionBudget"), "{:?}", m.kinds());

    let district = example("values-district-330106.yaml");
    for (values, sets, says) in [
        (
            vec![district.as_path()],
            vec!["replicas=2"],
            "keep replicas 1",
        ),
        (
            vec![province.as_path(), key.values.as_path()],
            vec!["replicas=2", "config.kafka.replica=a"],
            "config.kafka.replica",
        ),
        (vec![], vec!["replicas=2"], "config.kafka.brokers"),
        (vec![], vec!["replicas=0"], "at least 1"),
    ] {
        let err = render_error(&values, &sets);
        assert!(err.contains(says), "{sets:?}: {err}");
    }
}

#[test]
fn city_example_is_a_node_cascading_into_its_own_bus_and_a_database() {
    let key = audit_key();
    let m = render(&[&example("values-city-330100.yaml"), &key.values], &[]);
    let config = check_release(&m, "serve");
    assert_eq!(config["node"]["code"], "330100");
    assert_eq!(config["audit"]["signing_key_env"], AUDIT_KEY_VAR);
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
    let key = audit_key();
    let m = render(
        &[&key.values],
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

    // ServiceMonitor: the metrics Service's port, /metrics (on http,
    // /metrics answers 401 without an admin token).
    let sm = m.one("ServiceMonitor");
    let service = m.service_with_port("metrics").expect("metrics Service");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selects the metrics Service"
        );
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(m.scraped_port(), (9480, "/metrics".to_owned()));

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
    assert!(
        notes.contains("bf-backflow-metrics.backflow-test.svc:9480/metrics"),
        "NOTES names where /metrics answers without a token: {notes}"
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
    let province = example("values-province-330000.yaml");
    let province = province.as_path();
    let cases: Vec<(Vec<&Path>, &str, Vec<&str>)> = vec![
        // A node on a Kafka cluster without its audit signing key would not
        // start: refused, saying how to make and give one.
        (
            vec![],
            "config.kafka.brokers=kafka:9092",
            vec![
                "config.kafka.brokers",
                "secrets.env.BACKFLOW_AUDIT_KEY",
                "auditSigningKey.secretKey",
                "backflow audit keygen",
                "--set-file",
            ],
        ),
        (
            vec![province],
            "config.log.level=info",
            vec!["secrets.env.BACKFLOW_AUDIT_KEY", "backflow audit keygen"],
        ),
        (
            vec![],
            "config.kafka.brokers=kafka:9092,auditSigningKey.secretKey=NODE_AUDIT_KEY",
            vec!["secrets.env.NODE_AUDIT_KEY", "auditSigningKey.secretKey"],
        ),
        // Something that is not a key (the value is never quoted).
        (
            vec![],
            "config.kafka.brokers=kafka:9092,secrets.env.BACKFLOW_AUDIT_KEY=not-a-signing-key",
            vec![
                "secrets.env.BACKFLOW_AUDIT_KEY",
                "64 hex digits",
                "backflow audit keygen",
            ],
        ),
        // The configuration names its own variable for the key, which
        // nothing provides.
        (
            vec![],
            "config.audit.signing_key_env=OWN_AUDIT_KEY",
            vec![
                "config.audit.signing_key_env",
                "OWN_AUDIT_KEY",
                "secrets.env",
            ],
        ),
        // A credential as a plain value in `env` is written into the
        // Deployment.
        (
            vec![],
            "config.kafka.brokers=kafka:9092,env[0].name=BACKFLOW_AUDIT_KEY,env[0].value=abc",
            vec!["env[0]", "BACKFLOW_AUDIT_KEY", "secrets.env", "Deployment"],
        ),
        // Prometheus cannot reach a loopback metrics listener, nor scrape
        // one that is not there; the two listeners cannot share a port.
        (
            vec![],
            "config.http.metrics_listen=127.0.0.1:9480",
            vec!["config.http.metrics_listen", "0.0.0.0"],
        ),
        (
            vec![],
            "config.http.metrics_listen=0.0.0.0:8480",
            vec!["config.http.metrics_listen", "config.http.listen", "8480"],
        ),
        (
            vec![],
            "config.http.metrics_listen=null,serviceMonitor.enabled=true",
            vec![
                "serviceMonitor.enabled",
                "config.http.metrics_listen",
                "401",
            ],
        ),
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
        assert!(
            !err.contains("not-a-signing-key"),
            "a credential is never quoted: {err}"
        );
    }
}

#[test]
fn node_on_a_kafka_cluster_takes_its_audit_key_from_the_secret() {
    let key = audit_key();
    let brokers = "config.kafka.brokers=kafka:9092";

    // The key file's content in secrets.env: the configuration names the
    // variable (audit.signing_key_env), the key is in the Secret only
    // (check_release: in no ConfigMap, not in the Deployment).
    let m = render(&[&key.values], &[brokers]);
    let config = check_release(&m, "serve");
    assert_eq!(config["audit"]["signing_key_env"], AUDIT_KEY_VAR);
    assert!(config["audit"]["signing_key_file"].is_null());
    assert_eq!(m.secret_env()[AUDIT_KEY_VAR].trim(), key.seed);
    assert!(!m.config_toml().contains(&key.seed));
    let notes = helm("notes", &[&key.values], &[brokers]);
    assert!(notes.status.success());
    let notes: String = serde_json::from_slice(&notes.stdout).unwrap();
    for w in [
        AUDIT_KEY_VAR,
        "/api/node",
        "audit_public_key",
        "backflow audit keygen",
    ] {
        assert!(notes.contains(w), "{w:?} not in NOTES: {notes}");
    }
    assert!(!notes.contains(&key.seed));

    // Under another Secret key name.
    let dir = tempfile::tempdir().unwrap();
    let renamed = values_file(
        &dir,
        "renamed.yaml",
        json!({"auditSigningKey": {"secretKey": "NODE_AUDIT_KEY"},
               "secrets": {"env": {"NODE_AUDIT_KEY": key.seed}}}),
    );
    let m = render(&[&renamed], &[brokers]);
    let config = check_release(&m, "serve");
    assert_eq!(config["audit"]["signing_key_env"], "NODE_AUDIT_KEY");

    // A Secret of the operator's own holds it under that name.
    let m = render(&[], &[brokers, "secrets.existingSecret=node-credentials"]);
    let config = check_release(&m, "serve");
    assert_eq!(config["audit"]["signing_key_env"], AUDIT_KEY_VAR);
    assert!(!m.has("Secret"));

    // A variable of `env` taken from a Secret of its own.
    let m = render(
        &[],
        &[
            brokers,
            "env[0].name=BACKFLOW_AUDIT_KEY,env[0].valueFrom.secretKeyRef.name=audit-keys,env[0].valueFrom.secretKeyRef.key=330000",
        ],
    );
    let config = check_release(&m, "serve");
    assert_eq!(config["audit"]["signing_key_env"], AUDIT_KEY_VAR);

    // The configuration's own choice, a file of the mounted Secret, is
    // kept (backflow refuses both settings at once).
    let m = render(
        &[&key.values],
        &[
            brokers,
            "secrets.mountPath=/etc/backflow-secrets",
            "config.audit.signing_key_file=/etc/backflow-secrets/BACKFLOW_AUDIT_KEY",
        ],
    );
    let config = check_release(&m, "serve");
    assert!(config["audit"]["signing_key_env"].is_null(), "{config}");

    // On the embedded broker a key is optional; NOTES says how to make one.
    let notes = helm("notes", &[], &[]);
    let notes: String = serde_json::from_slice(&notes.stdout).unwrap();
    assert!(notes.contains("backflow audit keygen"), "{notes}");
}

/// A free TCP port of this machine.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The rendered release's process, run as the pod would run it: the
/// Deployment's arguments (the configuration file at a local path) with
/// the chart's Secret as its environment. Killed when dropped.
struct Pod {
    child: Child,
    dir: tempfile::TempDir,
}

impl Pod {
    fn start(m: &Manifests) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("backflow.toml");
        std::fs::write(&file, m.config_toml()).unwrap();
        let args: Vec<String> = m
            .args()
            .into_iter()
            .map(|a| {
                if a == CONFIG_FILE {
                    file.display().to_string()
                } else {
                    a.to_owned()
                }
            })
            .collect();
        let child = backflow()
            .args(&args)
            .envs(m.secret_env())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("start backflow");
        let mut pod = Pod { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = std::fs::read_to_string(pod.dir.path().join("stdout")).unwrap_or_default();
            if out.contains("backflow listening on ") && out.contains("backflow metrics on ") {
                return pod;
            }
            if let Some(status) = pod.child.try_wait().unwrap() {
                panic!(
                    "the rendered node exited with {status} before listening:\n{}",
                    pod.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the rendered node did not listen within 60 s:\n{}",
                pod.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `http://127.0.0.1:{port}{path}`, with a bearer token if given:
/// status and body.
async fn get(port: u64, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("the node answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_node_starts_with_the_secrets_audit_key_and_serves_the_service_monitor() {
    let broker = TestBroker::start();
    let key = audit_key();
    let (http_port, metrics_port) = (free_port(), free_port());
    let admin = "helm-chart-admin-token";
    let dir = tempfile::tempdir().unwrap();
    let values = values_file(
        &dir,
        "node.yaml",
        json!({
            "config": {
                "node": {"code": "330100", "name": "chart node"},
                "kafka": {"brokers": broker.bootstrap()},
                "http": {
                    "listen": format!("0.0.0.0:{http_port}"),
                    "metrics_listen": format!("0.0.0.0:{metrics_port}")
                },
                "auth": {"tokens": [{"principal": "admin", "sha256": sha256_hex(admin)}]}
            },
            "serviceMonitor": {"enabled": true}
        }),
    );
    let m = render(&[&values, &key.values], &[]);
    check_release(&m, "serve");
    let (scraped, path) = m.scraped_port();
    assert_eq!(scraped, u64::from(metrics_port));
    let http = m.container_port("http").unwrap();

    // It starts on the Kafka cluster (a node without its key refuses to),
    // signing with the key of the Secret: its public half is at /api/node.
    let pod = Pod::start(&m);
    let (status, body) = get(http, "/api/node", Some(admin)).await;
    assert_eq!(status, 200, "{body}");
    let node: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        node["audit_public_key"], key.public_key,
        "signs with the key made by backflow audit keygen"
    );
    assert!(
        pod.stderr().contains(&key.public_key),
        "the node logs the public key it loaded"
    );
    assert!(
        !pod.stderr().contains(&key.seed),
        "the secret key is never logged"
    );

    // The port the ServiceMonitor scrapes answers /metrics without a token;
    // the http port does not.
    let (status, metrics) = get(scraped, &path, None).await;
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("backflow_"), "{metrics}");
    let (status, _) = get(http, "/metrics", None).await;
    assert_eq!(status, 401, "/metrics on http needs an admin token");

    // The probes on http answer anonymous callers: live, then ready once
    // Kafka is reached.
    assert_eq!(get(http, "/healthz", None).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(http, "/readyz", None).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz not ready within 60 s: {status} {body}\n{}",
            pod.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn chart_lints_clean_for_defaults_and_examples() {
    let province = example("values-province-330000.yaml");
    let city = example("values-city-330100.yaml");
    let district = example("values-district-330106.yaml");
    let key = audit_key();
    let key = key.values.as_path();
    for values in [
        vec![],
        vec![&*province, key],
        vec![&*city, key],
        vec![&*district],
    ] {
        let out = helm("lint", &values, &[]);
        assert!(
            out.status.success(),
            "helm lint (strict) with {values:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
