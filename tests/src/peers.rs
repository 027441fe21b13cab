//! What users run instead of backflow, started beside it for the
//! benchmarks: a Kafka Connect standalone worker (JSON converter with
//! schemas) running one Debezium connector, from the jars
//! `scripts/bench-peers.sh` copies from Maven Central (`scripts/peers/pom.xml`).
//!
//! The worker is one JVM as users start it with `connect-standalone.sh`:
//! offsets in a file, its own REST listener on a free port, a heap of
//! [`CONNECT_HEAP`]. Its log goes to a file of its own directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The worker's heap (`KAFKA_HEAP_OPTS`): `connect-standalone.sh` starts it
/// with 256 MB..2 GB.
pub const CONNECT_HEAP: &[&str] = &["-Xms256m", "-Xmx2g"];

/// The directory of jars that environment variable `var` names
/// (`BENCH_PEERS_LIBS`: Debezium's PostgreSQL and MySQL connectors;
/// `BENCH_PEERS_MARIADB_LIBS`: its MariaDB connector), when set and
/// holding Kafka Connect.
pub fn peers_libs(var: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(var)?);
    dir.join("connect-runtime-4.1.1.jar")
        .exists()
        .then_some(dir)
}

/// A running Kafka Connect standalone worker with one connector.
pub struct ConnectWorker {
    child: Child,
    dir: PathBuf,
}

impl ConnectWorker {
    /// Starts a worker against `bootstrap` with the connector `props`
    /// (`key=value` lines); its offsets file lives in `state`, so a
    /// worker started again on the same `state` resumes where the last
    /// one stopped.
    pub fn start(
        libs: &Path,
        bootstrap: &str,
        state: &Path,
        props: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state)?;
        let rest = crate::free_local_addr();
        let worker = format!(
            "bootstrap.servers={bootstrap}\n\
             key.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             key.converter.schemas.enable=true\n\
             value.converter.schemas.enable=true\n\
             offset.storage.file.filename={}\n\
             offset.flush.interval.ms=1000\n\
             listeners=http://{rest}\n\
             plugin.discovery=only_scan\n",
            state.join("offsets").display()
        );
        let mut connector = String::new();
        for (k, v) in props {
            connector.push_str(&format!("{k}={v}\n"));
        }
        std::fs::write(state.join("worker.properties"), worker)?;
        std::fs::write(state.join("connector.properties"), connector)?;
        std::fs::write(
            state.join("log4j2.properties"),
            crate::log4j2_properties(&state.join("connect.log")),
        )?;
        let child = Command::new("java")
            .args(CONNECT_HEAP)
            .arg("-XX:+UseG1GC")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                state.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(state.join("worker.properties"))
            .arg(state.join("connector.properties"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(state.join("stderr"))
                    .context("create the worker's stderr file")?,
            ))
            .spawn()
            .context("start Kafka Connect (java)")?;
        Ok(Self {
            child,
            dir: state.to_owned(),
        })
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `topic` holds `records` records (a connector writes
    /// without transactions: its high watermark counts records), failing
    /// with the worker's log after `limit` or when the worker exits.
    /// Returns when the first of them was seen (the end of the worker's
    /// start-up, to within the 100 ms between looks).
    pub async fn until_records(
        &mut self,
        bootstrap: &str,
        topic: &str,
        records: i64,
        limit: Duration,
    ) -> anyhow::Result<Instant> {
        let until = Instant::now() + limit;
        let mut start: Option<i64> = None;
        let mut first = None;
        // One client for the whole wait: a new one every poll would cost
        // the machine more than the poll.
        let settings = backflow::kafka::KafkaSettings::new(bootstrap);
        let watermarks = backflow::kafka::Watermarks::new(&settings)?;
        let mut partitions = 0;
        loop {
            if partitions == 0 {
                partitions = backflow::kafka::partition_count(&settings, topic)
                    .await
                    .unwrap_or(0);
            }
            let mut total = 0;
            for p in 0..partitions as i32 {
                total += watermarks.high(topic, p).await.unwrap_or(0);
            }
            if partitions > 0 {
                let at = *start.get_or_insert(total);
                if first.is_none() && total > at {
                    first = Some(Instant::now());
                }
                if total >= records {
                    return Ok(first.unwrap_or_else(Instant::now));
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("Kafka Connect exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > until {
                bail!(
                    "{topic} did not reach {records} records in {limit:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the worker's log and stderr.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for file in ["connect.log", "stderr"] {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {file}\n"));
            out.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Stops the worker as `kill` does (SIGTERM: it commits its offsets),
    /// waiting up to 30 s before killing it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > until {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
