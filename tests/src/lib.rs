//! Harness for end-to-end tests: runs the real `backflow` binary as a user
//! would and talks to it over HTTP.
//!
//! The binary is found at `$BACKFLOW_BIN`, or next to the test executable's
//! target directory (`target/debug/backflow`); `scripts/test.sh` builds it
//! before running the tests.

pub mod cluster;
pub mod mysql_bench;
pub mod peers;
pub mod pg_server;
pub mod secure_broker;
pub mod secure_node;
pub mod share_topic;
pub mod sinks;
pub mod topic_view;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// The Apache Kafka version the tests run against (see
/// `scripts/kafka/pom.xml`, which `scripts/services.sh up` fetches).
pub const KAFKA_VERSION: &str = "4.1.1";

/// Where `scripts/services.sh up` keeps Apache Kafka: `libs/` (the jars)
/// and `storage-template/` (a formatted KRaft storage directory).
pub fn kafka_home() -> PathBuf {
    if let Some(home) = std::env::var_os("BACKFLOW_KAFKA_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::var_os("BACKFLOW_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/backflow"))
        .join(format!("kafka-{KAFKA_VERSION}"))
}

/// How long a test binary may run before the watchdog ends it (minutes;
/// `BACKFLOW_E2E_LIMIT_MIN`, default 50). A test that hangs then fails the
/// run, with libtest's "has been running for over 60 seconds" naming it,
/// instead of holding CI until its own limit discards everything.
fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let minutes: u64 = std::env::var("BACKFLOW_E2E_LIMIT_MIN")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(50);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(minutes * 60));
            eprintln!(
                "the tests ran past {minutes} minutes (BACKFLOW_E2E_LIMIT_MIN): a test hangs; the ones still running are named above as running for over 60 seconds"
            );
            std::process::exit(101);
        });
    });
}

/// An Apache Kafka broker of the test's own (KRaft: broker and controller
/// in one process) on free local ports, its storage in a temporary
/// directory, stopped when dropped. Each test gets a fresh broker: tests do
/// not see each other's topics or groups. Uses the jars and the formatted
/// storage template `scripts/services.sh up` caches.
pub struct TestBroker {
    child: Child,
    bootstrap: String,
    dir: tempfile::TempDir,
    jvm: &'static [&'static str],
}

/// JVM options of a test's broker: quick to start (no optimising JIT, a
/// small heap), which is what a test that lasts seconds wants.
pub(crate) const TEST_JVM: &[&str] = &[
    "-Xms64m",
    "-Xmx384m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
];

/// JVM options of a benchmark's broker: Kafka's own defaults (`kafka-server-start.sh`:
/// G1, a 1 GB heap, the optimising JIT), so its CPU is that of a broker
/// in steady state.
const BENCH_JVM: &[&str] = &[
    "-Xms1g",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
];

impl TestBroker {
    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a broker on a free local port and waits until it listens.
    pub fn start() -> Self {
        watchdog();
        Self::start_with(TEST_JVM)
    }

    /// A broker for benchmarks: started as `kafka-server-start.sh` starts
    /// one (see [`BENCH_JVM`]).
    pub fn start_for_bench() -> Self {
        Self::start_with(BENCH_JVM)
    }

    fn start_with(jvm: &'static [&'static str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("backflow-kafka-")
            .tempdir()
            .expect("tempdir");
        let bootstrap = free_local_addr();
        let controller = free_local_addr();
        let template = kafka_home().join("storage-template");
        assert!(
            template.join("meta.properties").exists(),
            "no Apache Kafka storage template at {}: run scripts/services.sh up (it fetches Kafka and formats it)",
            template.display()
        );
        let data = dir.path().join("data");
        copy_dir(&template, &data).expect("copy the storage template");
        std::fs::write(
            dir.path().join("server.properties"),
            broker_properties(&bootstrap, &controller, &data),
        )
        .expect("write server.properties");
        std::fs::write(
            dir.path().join("log4j2.properties"),
            log4j2_properties(&dir.path().join("broker.log")),
        )
        .expect("write log4j2.properties");
        let child = spawn_kafka(dir.path(), jvm);
        let broker = Self {
            child,
            bootstrap,
            dir,
            jvm,
        };
        broker.wait_listening();
        broker
    }

    /// Kills the broker with SIGKILL and starts it again on the same port
    /// and storage (topics, records and group offsets survive).
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_kafka(self.dir.path(), self.jvm);
        self.wait_listening();
    }

    fn wait_listening(&self) {
        wait_for_broker(&self.bootstrap, &self.dir.path().join("broker.log"));
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Runs one of Apache Kafka's own command-line tools (its main class,
    /// e.g. `org.apache.kafka.tools.consumer.group.ConsumerGroupCommand`)
    /// against this broker; returns its standard output, or its error.
    pub fn kafka_tool(&self, class: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("java")
            .args([
                "-Xms32m",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg("-cp")
            .arg(format!("{}/*", kafka_home().join("libs").display()))
            .arg(class)
            .args(["--bootstrap-server", &self.bootstrap])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run java (on PATH) for an Apache Kafka tool")?;
        if !out.status.success() {
            bail!(
                "{class} {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 60 s until a broker listens at `bootstrap`; fails the test
/// with the broker's log otherwise.
pub(crate) fn wait_for_broker(bootstrap: &str, log: &std::path::Path) {
    let until = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(bootstrap).is_err() {
        assert!(
            Instant::now() < until,
            "Apache Kafka did not listen on {bootstrap}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `[[auth.tokens]]` entries of a node's configuration: each principal
/// with its token's SHA-256.
pub fn tokens_toml(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(principal, token)| {
            format!(
                "[[auth.tokens]]\nprincipal = \"{principal}\"\nsha256 = \"{}\"\n",
                backflow::auth::token_hash(token)
            )
        })
        .collect()
}

/// Starts Apache Kafka from a directory holding its `server.properties`
/// and `log4j2.properties`; its output goes to `stdout.log` there.
pub(crate) fn spawn_kafka(dir: &std::path::Path, jvm: &[&str]) -> Child {
    let libs = kafka_home().join("libs");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stdout.log"))
        .expect("log file");
    Command::new("java")
        .args(jvm)
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .args(["kafka.Kafka", "server.properties"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start Apache Kafka (java on PATH)")
}

/// A one-node KRaft broker's configuration for tests: quick group starts,
/// internal topics of one replica.
fn broker_properties(bootstrap: &str, controller: &str, data: &std::path::Path) -> String {
    format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@{controller}\n\
         listeners=PLAINTEXT://{bootstrap},CONTROLLER://{controller}\n\
         advertised.listeners=PLAINTEXT://{bootstrap}\n\
         controller.listener.names=CONTROLLER\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=PLAINTEXT\n\
         log.dirs={}\n\
         num.partitions=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=4\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         transaction.state.log.num.partitions=4\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         auto.create.topics.enable=false\n\
         log.cleaner.backoff.ms=1000\n",
        data.display()
    )
}

/// The broker's log to a file of its own directory, warnings and up (and
/// the broker's start and stop).
pub(crate) fn log4j2_properties(file: &std::path::Path) -> String {
    format!(
        "status = warn\n\
         appender.file.type = File\n\
         appender.file.name = file\n\
         appender.file.fileName = {}\n\
         appender.file.layout.type = PatternLayout\n\
         appender.file.layout.pattern = %d{{ISO8601}} %p %c{{1}}: %m%n\n\
         rootLogger.level = warn\n\
         rootLogger.appenderRef.file.ref = file\n\
         logger.server.name = kafka.server.KafkaRaftServer\n\
         logger.server.level = info\n",
        file.display()
    )
}

/// Copies a directory tree.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The python of the virtualenv with Confluent's client, for the interop
/// tests: `$BACKFLOW_PYTHON`, else what
/// `scripts/python-env.sh` prepares (and prints last). Fails the test, with
/// the reason, when Python cannot be set up.
pub fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Ok(p) = std::env::var("BACKFLOW_PYTHON") {
            assert!(
                std::path::Path::new(&p).exists(),
                "BACKFLOW_PYTHON={p} does not exist; unset it to let scripts/python-env.sh prepare the virtualenv"
            );
            return p;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/python-env.sh");
        let out = Command::new("bash")
            .arg(script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "Python setup failed: {script} exited with {} (it needs python3 with venv and \
             access to PyPI to install confluent-kafka[avro]; or set BACKFLOW_PYTHON to a \
             python that has it):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let path = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("{script} printed no python path"))
            .trim()
            .to_owned();
        assert!(
            std::path::Path::new(&path).exists(),
            "{script} printed {path:?}, which does not exist"
        );
        path
    })
}

/// Creates the benchmarks' 9-column department table `t` in a new database
/// `name` (replica identity full, publication `bench_pub`) and a pgoutput
/// slot `bench_recv_<name>` for `pg_recvlogical`, the benchmarks' limit.
pub async fn create_bench_department(name: &str) -> anyhow::Result<tokio_postgres::Client> {
    let client = create_pg_database(name).await?;
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, name varchar(64) NOT NULL, region_code char(6) NOT NULL,
                income numeric(12,2), birth date, updated_at timestamptz NOT NULL DEFAULT now(),
                note text, score double precision, active boolean NOT NULL DEFAULT true);
             ALTER TABLE t REPLICA IDENTITY FULL;
             CREATE PUBLICATION bench_pub FOR TABLE t;",
        )
        .await?;
    // Its own statement: a slot cannot be created in a transaction that wrote.
    client
        .batch_execute(
            "SELECT pg_create_logical_replication_slot('bench_recv_' || current_database(), 'pgoutput')",
        )
        .await?;
    Ok(client)
}

/// A fresh PostgreSQL database on the test server (127.0.0.1:5432, user
/// postgres, trust auth), dropped with its replication slots by [`drop_pg_database`].
pub async fn create_pg_database(name: &str) -> anyhow::Result<tokio_postgres::Client> {
    let admin = pg_connect("postgres").await?;
    // Databases and slots left by test processes that died (a failed test
    // does not clean up): they would fill max_replication_slots.
    let leftovers = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE datname ~ '^bf_[a-z]+_[0-9]+'",
            &[],
        )
        .await?;
    for row in leftovers {
        let db: String = row.get(0);
        let pid = db.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = drop_pg_database(&db).await;
        }
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    pg_connect(name).await
}

/// Connects to a database on the test server.
pub async fn pg_connect(db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .context("connect to PostgreSQL on 127.0.0.1:5432 (start it with scripts/services.sh up)")?;
    tokio::spawn(conn);
    Ok(client)
}

/// Drops a test database and the replication slots on it.
pub async fn drop_pg_database(name: &str) -> anyhow::Result<()> {
    let admin = pg_connect("postgres").await?;
    // A feed process just stopped may still hold its slot for a moment
    // (its walsender has not noticed yet): ended, then its slots dropped,
    // or the database cannot be.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{name}' AND active_pid IS NOT NULL; \
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}' AND NOT active"
            ))
            .await?;
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                &[&name],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "{left} replication slots of database {name} still held after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

/// Drops a replication slot as soon as no feed holds it (simulating a slot
/// lost while the feed was down); fails after 30 s.
pub async fn lose_replication_slot(client: &tokio_postgres::Client, slot: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let dropped = client
            .query_opt(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
            .expect("query pg_replication_slots");
        if dropped.is_some() {
            return;
        }
        assert!(Instant::now() < until, "slot {slot} never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unique lower-case name for test objects: the process, the time and a
/// counter (two tests of one process may ask within the same microsecond).
pub fn unique_name(prefix: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    let c = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        (n % 1_000_000) * 1000 + u128::from(c % 1000)
    )
}

/// The department table the policy tests share (PostgreSQL).
pub const PEOPLE_TABLE: &str = "CREATE TABLE people (
    id bigint PRIMARY KEY,
    name varchar(32) NOT NULL,
    id_number char(18) NOT NULL,
    phone varchar(20),
    region_code char(6) NOT NULL,
    income numeric(12,2));";

/// The residents of a district in a department's PostgreSQL table
/// `people` (id, name, id_number, region_code, ...), as the share policies
/// of the end-to-end tests show them: by id, the name `masked:name`, the
/// identity number `masked:keep(6,4)` and the region code.
pub async fn masked_residents(
    database: &str,
    district: &str,
) -> std::collections::BTreeMap<i64, Vec<Option<String>>> {
    let client = pg_connect(database).await.expect("department database");
    let rows = client
        .query(
            "SELECT id, name, id_number, region_code FROM people WHERE region_code LIKE $1 || '%'",
            &[&district],
        )
        .await
        .expect("people table");
    rows.iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                vec![
                    Some(mask_name(r.get(1))),
                    Some(mask_keep(r.get(2), 6, 4)),
                    Some(r.get(3)),
                ],
            )
        })
        .collect()
}

/// A name as the share policy `masked:name` shows it: the first character
/// kept, the others starred.
pub fn mask_name(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c } else { '*' })
        .collect()
}

/// A text as `masked:keep(first,last)` shows it (ASCII text such as an
/// identity number).
pub fn mask_keep(text: &str, first: usize, last: usize) -> String {
    format!(
        "{}{}{}",
        &text[..first],
        "*".repeat(text.len() - first - last),
        &text[text.len() - last..]
    )
}

/// A token for a principal of a test node, kept in a file: what an upper
/// node's `[[auth.tokens]]` needs to know it, and what a subscriber's
/// `upstream` needs to send it to that node's schema registry (which, like
/// the API, refuses callers without a token). The file is removed when this
/// is dropped, so keep it as long as the subscriber runs.
pub struct TestToken {
    principal: String,
    token: String,
    file: tempfile::NamedTempFile,
}

impl TestToken {
    /// A random token for `principal` (`subscriber:330106`, `admin`).
    pub fn new(principal: &str) -> Self {
        let token: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect();
        let file = tempfile::Builder::new()
            .prefix("backflow-token-")
            .tempfile()
            .expect("a temporary file for a token");
        std::fs::write(file.path(), format!("{token}\n")).expect("token file written");
        Self {
            principal: principal.to_owned(),
            token,
            file,
        }
    }

    /// The token itself, for API and registry calls.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The `[[auth.tokens]]` entry that makes a node accept it.
    pub fn auth_toml(&self) -> String {
        format!(
            "\n[[auth.tokens]]\nprincipal = \"{}\"\nsha256 = \"{}\"\n",
            self.principal,
            backflow::auth::token_hash(&self.token)
        )
    }

    /// `registry_token_file = "<file>"`: the setting of a subscription's
    /// inline `upstream = { ... }` table that makes it send the token.
    pub fn upstream_setting(&self) -> String {
        format!("registry_token_file = \"{}\"", self.file.path().display())
    }
}

/// Path of the `backflow` binary under test.
pub fn backflow_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BACKFLOW_BIN") {
        return PathBuf::from(p);
    }
    // Tests run from target/<profile>/deps, tools from target/<profile>.
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable has a directory");
    let candidates = [dir.join("backflow"), dir.join("../backflow")];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} not found: build it first with `cargo build -p backflow --bin backflow` or set BACKFLOW_BIN",
                candidates[1].display()
            )
        })
}

/// A `backflow` command with a clean environment for backflow's variables.
pub fn backflow() -> Command {
    let mut cmd = Command::new(backflow_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("BACKFLOW_") && k != "BACKFLOW_BIN" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Makes an audit signing key with `backflow audit keygen --out FILE`;
/// returns its public key (hex) and what the command said on stderr.
pub fn audit_keygen(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    let out = backflow()
        .args(["audit", "keygen", "--out"])
        .arg(file)
        .output()
        .context("run backflow audit keygen")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("backflow audit keygen failed ({}): {stderr}", out.status);
    }
    Ok((String::from_utf8(out.stdout)?.trim().to_owned(), stderr))
}

/// The node key of every process the tests start without one of their
/// own, made once per test binary with `backflow audit keygen`: a node
/// keeps its key across restarts (it signs its catalog with it, and
/// refuses records another key signed), and the processes serving one
/// node share it, as a deployment gives them one key file.
fn shared_audit_key() -> anyhow::Result<&'static (PathBuf, String)> {
    static KEY: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let dir = tempfile::Builder::new()
        .prefix("backflow-e2e-key-")
        .tempdir()?
        .keep();
    let file = dir.join("audit.key");
    let (public, _) = audit_keygen(&file)?;
    Ok(KEY.get_or_init(|| (file, public)))
}

/// Runs `backflow audit verify` against a broker with these arguments;
/// returns the exit code and what it printed (stdout, then stderr).
pub fn audit_verify(bootstrap: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = backflow()
        .args(["audit", "verify"])
        .args(args)
        .env("BACKFLOW_KAFKA__BROKERS", bootstrap)
        .output()
        .expect("run backflow audit verify");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A running `backflow serve` process, killed when dropped.
pub struct Node {
    child: Child,
    /// Base URL of its HTTP server, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Base URL of its operational endpoints without a token
    /// (`http.metrics_listen`, which the harness sets).
    pub ops_url: String,
    stderr_path: PathBuf,
    audit_public_key: Option<String>,
    /// The client of [`Node::get`] and [`Node::api`] (trusting the CA of
    /// [`Node::trusting`] for a node serving HTTPS).
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Calls to the node's API trust `ca` (PEM), for a node serving HTTPS
    /// (`http.tls_cert`).
    pub fn trusting(mut self, ca: &std::path::Path) -> anyhow::Result<Self> {
        let cert = reqwest::Certificate::from_pem(&std::fs::read(ca)?)?;
        self.client = reqwest::Client::builder()
            .add_root_certificate(cert)
            .build()?;
        Ok(self)
    }

    /// The HTTP client that talks to this node.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Starts `backflow serve` with these environment variables and an HTTP
    /// port chosen by the OS; returns once it printed its address.
    pub fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_command(&["serve"], env)
    }

    /// Starts `backflow subscribe --config <file>` with `config` as the
    /// file's content.
    pub fn subscribe_with_config(config: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with_file(&["subscribe"], config, env)
    }

    /// Starts `backflow <args...>` (e.g. `["source", "--feed", "f"]`) with
    /// `config` written to a file named by BACKFLOW_CONFIG.
    pub fn run_with_config(
        args: &[&str],
        config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_with_file(args, config, env)
    }

    /// Starts `backflow <command>` with `config` written to a file named by
    /// BACKFLOW_CONFIG.
    fn start_with_file(
        command: &[&str],
        config: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let file = tempfile::Builder::new().suffix(".toml").tempfile()?;
        std::fs::write(file.path(), config)?;
        let (file, path) = file.keep()?;
        drop(file);
        let path = path.display().to_string();
        let mut all: Vec<(&str, &str)> = env.to_vec();
        all.push(("BACKFLOW_CONFIG", &path));
        Self::start_command(command, &all)
    }

    /// Starts `backflow <command...>` (serve, subscribe, source). Unless
    /// the test sets an audit signing key (`BACKFLOW_AUDIT__SIGNING_KEY_*`
    /// or `signing_key_` in the configuration file), the process gets a
    /// key of its own, made with `backflow audit keygen` in its directory:
    /// a node on a real cluster refuses to start without one.
    fn start_command(command: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("backflow-e2e-").tempdir()?;
        let stdout_path = dir.path().join("stdout");
        let stderr_path = dir.path().join("stderr");
        let mut cmd = backflow();
        cmd.args(command)
            .env("BACKFLOW_HTTP__LISTEN", "127.0.0.1:0")
            .env("BACKFLOW_HTTP__METRICS_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?);
        let config_sets_key = env
            .iter()
            .find(|(k, _)| *k == "BACKFLOW_CONFIG")
            .and_then(|(_, path)| std::fs::read_to_string(path).ok())
            .is_some_and(|text| text.contains("signing_key_"));
        let env_sets_key = env
            .iter()
            .any(|(k, _)| k.starts_with("BACKFLOW_AUDIT__SIGNING_KEY_"));
        let mut audit_public_key = None;
        if !config_sets_key && !env_sets_key {
            let (key_file, public) = shared_audit_key()?;
            cmd.env("BACKFLOW_AUDIT__SIGNING_KEY_FILE", key_file);
            audit_public_key = Some(public.clone());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn backflow {command:?}"))?;
        let mut node = Node {
            child,
            url: String::new(),
            ops_url: String::new(),
            stderr_path,
            audit_public_key,
            client: reqwest::Client::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            let line = |prefix: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .map(|a| a.trim().to_owned())
            };
            if let (Some(url), Some(ops)) =
                (line("backflow listening on "), line("backflow metrics on "))
            {
                node.url = url;
                node.ops_url = ops;
                return Ok(node);
            }
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "backflow {command:?} exited with {status} before listening:\n{}",
                    node.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "backflow {command:?} did not listen within 30s:\n{}",
                    node.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The public key of the audit signing key the harness gave the
    /// process (`None` when the test set a key itself).
    pub fn audit_public_key(&self) -> Option<&str> {
        self.audit_public_key.as_deref()
    }

    /// Everything the process logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Starts `backflow serve --config <file>` with `config` as the file's
    /// content.
    pub fn start_with_config(config: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with_file(&["serve"], config, env)
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) to the process.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{name} failed: {status}");
        }
        Ok(())
    }

    /// Waits for the process to exit, at most `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > until {
                return Err(anyhow!("process still running after {deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GETs a path of the operational listener (`/metrics`, `/readyz`
    /// with its checks), which needs no token; returns the status code
    /// and body.
    pub async fn get_ops(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let resp = reqwest::get(format!("{}{path}", self.ops_url)).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// GETs a path; returns the status code and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let resp = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// Calls the control-plane API (`GET`, `PUT`, `PATCH`, `DELETE`, else `POST`)
    /// with an optional bearer token and JSON body; returns the status and
    /// the answer (a JSON string when it is not JSON).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = &self.client;
        let url = format!("{}{path}", self.url);
        let mut req = match method {
            "GET" => client.get(&url),
            "PUT" => client.put(&url),
            "PATCH" => client.patch(&url),
            "DELETE" => client.delete(&url),
            _ => client.post(&url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the node answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Waits until the lag board's row of `subscriber` (as `token` sees
    /// the board) satisfies `ok`; returns it. Fails the test with the last
    /// row and the node's log when `what` is not shown within `deadline`.
    pub async fn until_lag_row(
        &self,
        token: &str,
        subscriber: &str,
        what: &str,
        deadline: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + deadline;
        loop {
            let (status, board) = self.api("GET", "/api/lag", Some(token), None).await;
            assert_eq!(status, 200, "{board}");
            let row = board["subscriptions"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["subscriber"] == subscriber))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            if ok(&row) {
                return row;
            }
            assert!(
                Instant::now() < until,
                "{what} never shown; last row {row}\nnode log:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls `path` until it answers `status` or the deadline passes;
    /// returns the last body.
    pub async fn wait_for_status(
        &self,
        path: &str,
        status: u16,
        deadline: Duration,
    ) -> anyhow::Result<String> {
        let until = Instant::now() + deadline;
        let mut last = None;
        while Instant::now() < until {
            match self.get(path).await {
                Ok((s, body)) if s == status => return Ok(body),
                other => last = Some(other),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{path} did not answer {status} within {deadline:?}; last: {last:?}\nlogs:\n{}",
            self.stderr()
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CA (PEM) that signs the test PostgreSQL's and MariaDB's TLS
/// certificates (made by `scripts/services.sh`).
pub fn db_ca_file() -> PathBuf {
    // scripts/services.sh keeps them in its cache, one set per machine.
    let dir = std::env::var_os("BACKFLOW_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/backflow")))
        .expect("HOME or BACKFLOW_CACHE");
    let ca = dir.join("db-tls/ca.crt");
    assert!(
        ca.exists(),
        "{} is missing: run scripts/services.sh up",
        ca.display()
    );
    ca
}

/// User + system CPU seconds a process used so far (0 when unknown).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 here;
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of a process in MB (`VmHWM`), 0 when unknown:
/// for benchmarks.
pub fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Whether the Prometheus text `metrics` has exactly this series line
/// (`name{labels} value`): `...} 1` does not match a value of 10.
pub fn has_series(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

/// Sum of a metric's series (Prometheus text) whose name starts with
/// `name` and whose line contains `filter`; 0 when there is none.
pub fn metric_sum(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // not -0 when there is no series
}

/// Seconds `pg_recvlogical` takes to decode slot `bench_recv_<db>` (pgoutput,
/// publication `bench_pub`) up to `end_lsn` into /dev/null: the limit the
/// PostgreSQL benchmarks compare with.
pub fn pg_recvlogical_secs(db: &str, end_lsn: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("pg_recvlogical")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db])
        .args([
            "--slot",
            &format!("bench_recv_{db}"),
            "--start",
            "-E",
            end_lsn,
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench_pub",
            "-f",
            "/dev/null",
        ])
        .status()
        .context("run pg_recvlogical (Debian package postgresql-client)")?;
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A benchmark's positional argument `i` (1-based), or `default` when not
/// given; an argument that does not parse is an error naming it.
pub fn bench_arg<T>(i: usize, default: T) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    std::env::args()
        .nth(i)
        .map(|a| a.parse().with_context(|| format!("argument {i} ({a:?})")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

/// The seed of a test's random choices (kill times and the like): the
/// value of `BACKFLOW_TEST_SEED` when set, a fresh one otherwise; printed
/// with how to replay it.
pub fn test_seed(what: &str) -> u64 {
    let seed = std::env::var("BACKFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("{what} from seed {seed} (BACKFLOW_TEST_SEED={seed} replays them)");
    seed
}

/// `127.0.0.1:<port>` with a port the system just had free, for a process
/// that must keep its address across restarts. Never the same port twice
/// in one test process: the system may offer a port just released again,
/// and a broker given one port for two listeners refuses to start.
pub fn free_local_addr() -> String {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return format!("127.0.0.1:{port}");
        }
    }
}

#[cfg(test)]
mod oracle_tests {
    /// The masking oracle of the end-to-end tests, pinned by literals (so a
    /// change of it cannot silently follow a change of the product).
    #[test]
    fn the_masking_oracle_gives_these_literals() {
        assert_eq!(super::mask_name("张三丰"), "张**");
        assert_eq!(super::mask_name("李"), "李");
        assert_eq!(
            super::mask_keep("330106199001010042", 6, 4),
            "330106********0042"
        );
    }
}
