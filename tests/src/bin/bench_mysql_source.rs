//! Benchmark of the MySQL/MariaDB feed: rows per second from the binlog into
//! Kafka, against `mariadb-binlog` reading the same binlog range from the
//! server to /dev/null (raw, and with `--verbose`, which decodes the rows
//! into pseudo-SQL), and the feed process's peak memory. Prints figures;
//! asserts nothing, but fails if the feed does not get every row into Kafka.
//!
//! The feed is started once with `snapshot = "never"` on the empty table so
//! that it records a binlog position, and stopped. Three workloads on a
//! 9-column table are then each written while the feed is stopped and read
//! by a fresh `backflow source` process (timed from its start until Kafka
//! acknowledged every row's event: the /metrics counters
//! `backflow_source_events_total` and `backflow_kafka_produced_records_total`
//! of raw topics, polled every 20 ms; the time from start until the feed
//! logged `feed started` is also printed, and the rate without it) and by
//! `mariadb-binlog` (the same binlog range, `SHOW MASTER STATUS` before and
//! after the workload):
//! 1. INSERTS rows in 10-row transactions (one 10-row INSERT each),
//! 2. UPDATES rows updated in 10-row transactions,
//! 3. BIG rows inserted in one transaction (peak RSS shows that a large
//!    transaction streams through bounded memory).
//!
//! With `BENCH_PEERS_MARIADB_LIBS` naming the jars of
//! `scripts/peers/mariadb/pom.xml` (as `scripts/bench-peers.sh` does),
//! Debezium's MariaDB connector (its MySQL connector refuses MariaDB) on a Kafka
//! Connect standalone worker reads the same binlog range into the same
//! broker, timed the same way (from the worker's start until the broker
//! holds every change), JSON with schemas. It is started once before the
//! workloads (`snapshot.mode = no_data`) and stopped once a marker row
//! reached its topic, so that it has recorded a position.
//!
//! Run with `scripts/bench-mysql-source.sh [INSERTS [UPDATES [BIG]]]`
//! (release build; defaults 1000000 200000 1000000). Needs the services of
//! `scripts/services.sh up` (MariaDB with a ROW/FULL binlog on
//! 127.0.0.1:3306, root without password) and `mariadb-binlog`.

use std::time::{Duration, Instant};

use anyhow::bail;
use backflow_e2e::mysql_bench::{
    binlog_range, connect, drop_leftovers, insert_values, mariadb_binlog, master_status,
    small_transactions, write, COLUMNS, TX_ROWS,
};
use backflow_e2e::peers::ConnectWorker;
use backflow_e2e::{Node, TestBroker};
use mysql_async::prelude::Queryable;

/// The Debezium of `scripts/peers/mariadb/pom.xml` (its MariaDB
/// connector's newest release on Maven Central).
const DEBEZIUM_VERSION: &str = "3.5.0";
/// Longest a feed may take for one workload.
const TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest a feed may publish nothing new before the benchmark gives up.
const STALL: Duration = Duration::from_secs(300);

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

struct Timed {
    secs: f64,
    /// From process start until the feed logged `feed started`.
    startup: f64,
    rss_mb: f64,
    /// CPU seconds of the feed process (user + system, start-up included).
    cpu: f64,
    resumed_at: String,
    published: f64,
    restarts: f64,
    dead_letters: f64,
    /// Enqueues refused for a full producer queue (each waited).
    queue_full: f64,
    /// Mean time from enqueue to Kafka's acknowledgement, ms.
    ack_ms: f64,
    warnings: Vec<String>,
}

/// Starts `backflow source` and waits until it published `rows` events of
/// `op` and Kafka acknowledged all of them.
async fn run_feed(config: &str, feed: &str, op: &str, rows: i64) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let mut node = Node::run_with_config(&["source"], config, &[("NO_COLOR", "1")])?;
    let mut resumed_at = None;
    let mut startup = None;
    let (mut last_published, mut last_progress) = (-1.0, Instant::now());
    let op_filter = format!("op=\"{op}\"");
    let feed_filter = format!("feed=\"{feed}\"");
    let published = loop {
        let (_, metrics) = node.get_ops("/metrics").await.unwrap_or_default();
        let published =
            backflow_e2e::metric_sum(&metrics, "backflow_source_events_total", &op_filter);
        // Raw records Kafka acknowledged (counted as each delivery
        // resolves; the lag gauge would only say so at its next 1 s
        // refresh) against those handed to it: every event, and a
        // tombstone after each delete.
        let acked = backflow_e2e::metric_sum(
            &metrics,
            "backflow_kafka_produced_records_total",
            "kind=\"raw\"",
        );
        let sent = backflow_e2e::metric_sum(&metrics, "backflow_source_events_total", &feed_filter)
            + backflow_e2e::metric_sum(&metrics, "backflow_source_events_total", "op=\"d\"");
        if published >= rows as f64 && acked >= sent {
            break published;
        }
        if published > last_published {
            (last_published, last_progress) = (published, Instant::now());
        }
        if startup.is_none() || resumed_at.is_none() {
            let log = node.stderr();
            if startup.is_none() && log.contains("feed started") {
                startup = Some(started.elapsed().as_secs_f64());
            }
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("resuming from the last acknowledged position"))
            {
                resumed_at = Some(
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix("position="))
                        .unwrap_or(line)
                        .to_owned(),
                );
            } else if log.contains("feed started") {
                bail!(
                    "the feed started without a recorded position (it would skip the workload):\n{}",
                    tail(&log, 40)
                );
            }
        }
        if let Ok(status) = node.wait(Duration::ZERO) {
            bail!(
                "backflow source exited with {status} after {published} of {rows} rows:\n{}",
                tail(&node.stderr(), 60)
            );
        }
        let restarts =
            backflow_e2e::metric_sum(&metrics, "backflow_source_restarts_total", &feed_filter);
        let dead =
            backflow_e2e::metric_sum(&metrics, "backflow_source_dead_letters_total", &feed_filter);
        if started.elapsed() > TIMEOUT || last_progress.elapsed() > STALL {
            bail!(
                "the feed did not get all {rows} rows into Kafka: {published} published (op {op}), \
                 {restarts} restarts, {dead} dead letters after {:.0} s, \
                 {:.0} s since the last progress; log tail:\n{}",
                started.elapsed().as_secs_f64(),
                last_progress.elapsed().as_secs_f64(),
                tail(&node.stderr(), 60)
            );
        }
        // Often enough for a figure to 1 %, rarely enough to cost the feed
        // little (each poll renders /metrics in the measured process).
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let rss_mb = backflow_e2e::peak_rss_mb(node.pid());
    let cpu = backflow_e2e::cpu_secs(node.pid());
    let (_, metrics) = node.get_ops("/metrics").await.unwrap_or_default();
    node.signal("TERM")?;
    node.wait(Duration::from_secs(30))?;
    let log = node.stderr();
    Ok(Timed {
        secs,
        startup: startup.unwrap_or(0.0),
        rss_mb,
        cpu,
        resumed_at: resumed_at.unwrap_or_else(|| "?".into()),
        published,
        restarts: backflow_e2e::metric_sum(
            &metrics,
            "backflow_source_restarts_total",
            &feed_filter,
        ),
        dead_letters: backflow_e2e::metric_sum(
            &metrics,
            "backflow_source_dead_letters_total",
            &feed_filter,
        ),
        queue_full: backflow_e2e::metric_sum(
            &metrics,
            "backflow_kafka_produce_queue_full_total",
            "",
        ),
        ack_ms: 1000.0
            * backflow_e2e::metric_sum(&metrics, "backflow_kafka_produce_ack_seconds_sum", "")
            / backflow_e2e::metric_sum(&metrics, "backflow_kafka_produce_ack_seconds_count", "")
                .max(1.0),
        warnings: log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_owned)
            .collect(),
    })
}

struct Figures {
    name: String,
    ours: f64,
    raw: f64,
    verbose: f64,
    rss: f64,
    /// Debezium's rows/s and peak RSS, when it ran.
    debezium: Option<(f64, f64)>,
}

/// Debezium's MariaDB connector on one database: its settings and state.
struct Debezium {
    libs: std::path::PathBuf,
    state: tempfile::TempDir,
    props: Vec<(&'static str, String)>,
    topic: String,
    records: i64,
}

impl Debezium {
    fn new(libs: std::path::PathBuf, db: &str) -> anyhow::Result<Self> {
        let state = tempfile::tempdir()?;
        let props = vec![
            ("name", "bench-debezium-mariadb".to_owned()),
            (
                "connector.class",
                "io.debezium.connector.mariadb.MariaDbConnector".to_owned(),
            ),
            ("tasks.max", "1".to_owned()),
            ("database.hostname", "127.0.0.1".to_owned()),
            ("database.port", "3306".to_owned()),
            ("database.user", "root".to_owned()),
            ("database.server.id", "5701".to_owned()),
            ("topic.prefix", "dbzmy".to_owned()),
            ("database.include.list", db.to_owned()),
            ("table.include.list", format!("{db}.t,{db}.marker")),
            ("snapshot.mode", "no_data".to_owned()),
            (
                "schema.history.internal",
                "io.debezium.storage.file.history.FileSchemaHistory".to_owned(),
            ),
            (
                "schema.history.internal.file.filename",
                state.path().join("history").display().to_string(),
            ),
            ("topic.creation.default.replication.factor", "1".to_owned()),
            ("topic.creation.default.partitions", "1".to_owned()),
        ];
        Ok(Self {
            libs,
            topic: format!("dbzmy.{db}.t"),
            state,
            props,
            records: 0,
        })
    }

    fn start(&self, bootstrap: &str) -> anyhow::Result<ConnectWorker> {
        ConnectWorker::start(&self.libs, bootstrap, self.state.path(), &self.props)
    }

    /// First start: until a marker row written after it reached Kafka.
    async fn record_position(
        &self,
        bootstrap: &str,
        db: &str,
        c: &mut mysql_async::Conn,
    ) -> anyhow::Result<()> {
        let worker = self.start(bootstrap)?;
        let marker = format!("dbzmy.{db}.marker");
        let until = Instant::now() + Duration::from_secs(120);
        let mut id = 0;
        while backflow_e2e::share_topic::high_watermark(bootstrap, &marker).await < 1 {
            if Instant::now() > until {
                bail!(
                    "Debezium did not capture the marker row:\n{}",
                    worker.log_tail()
                );
            }
            id += 1;
            c.query_drop(format!("INSERT INTO marker VALUES ({id})"))
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // Its offsets are flushed every second and on stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
        worker.stop()
    }

    /// From the worker's start until the broker holds the `rows` more
    /// changes: seconds, seconds from its first record, and the worker's
    /// peak RSS in MB.
    async fn run(&mut self, bootstrap: &str, rows: i64) -> anyhow::Result<(f64, f64, f64)> {
        self.records += rows;
        let started = Instant::now();
        let mut worker = self.start(bootstrap)?;
        let first = worker
            .until_records(bootstrap, &self.topic, self.records, TIMEOUT)
            .await?;
        let secs = started.elapsed().as_secs_f64();
        let streaming = first.elapsed().as_secs_f64();
        let rss = backflow_e2e::peak_rss_mb(worker.pid());
        worker.stop()?;
        Ok((secs, streaming, rss))
    }
}

async fn bench(db: &str, inserts: i64, updates: i64, big: i64) -> anyhow::Result<Vec<Figures>> {
    let mut c = connect(Some(db)).await?;
    c.query_drop(
        "CREATE TABLE t (id bigint PRIMARY KEY, name varchar(64) NOT NULL, region_code char(6) NOT NULL,
            income decimal(12,2), birth date, updated_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
            note text, score double, active boolean NOT NULL DEFAULT true) ENGINE = InnoDB",
    )
    .await?;

    let broker = TestBroker::start_for_bench();
    let feed = db.replace('_', "-");
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n[[feeds]]\ntype = \"mysql\"\nname = \"{feed}\"\nhost = \"127.0.0.1\"\nport = 3306\nuser = \"root\"\ndatabase = \"{db}\"\nsnapshot = \"never\"\ntables = [{{ table = \"{db}.t\", dataset = \"bench.t\" }}]\n",
        broker.bootstrap()
    );
    // First start records the binlog position; stop, then write each workload.
    {
        let mut node = Node::run_with_config(&["source"], &config, &[("NO_COLOR", "1")])?;
        let until = Instant::now() + Duration::from_secs(60);
        while !node.stderr().contains("feed started") {
            if let Ok(status) = node.wait(Duration::ZERO) {
                bail!("backflow source exited with {status}:\n{}", node.stderr());
            }
            if Instant::now() > until {
                bail!("feed did not start:\n{}", node.stderr());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.signal("TERM")?;
        node.wait(Duration::from_secs(30))?;
    }
    let mut debezium = match backflow_e2e::peers::peers_libs("BENCH_PEERS_MARIADB_LIBS") {
        Some(libs) => {
            c.query_drop("CREATE TABLE marker (id bigint PRIMARY KEY)")
                .await?;
            let d = Debezium::new(libs, db)?;
            d.record_position(broker.bootstrap(), db, &mut c).await?;
            Some(d)
        }
        None => None,
    };
    let updated = updates.min(inserts);
    let workloads: Vec<(String, i64, &str, Vec<String>)> = vec![
        (
            format!("{inserts} inserts, {TX_ROWS}-row transactions"),
            inserts,
            "c",
            small_transactions(inserts, &insert_values),
        ),
        (
            format!("{updated} updates, {TX_ROWS}-row transactions"),
            updated,
            "u",
            small_transactions(updated, &|from, to| {
                format!("UPDATE t SET income = income + 1, note = 'changed' WHERE id BETWEEN {from} AND {to};")
            }),
        ),
        (
            format!("{big} inserts in one transaction"),
            big,
            "c",
            vec![format!(
                "INSERT INTO t ({COLUMNS}) SELECT seq, CONCAT('居民', seq), '330106', seq * 0.01,
                   DATE '1990-01-01' + INTERVAL (seq % 9000) DAY, CONCAT('note ', seq), seq * 1.5
                 FROM seq_{}_to_{}",
                inserts + 1,
                inserts + big
            )],
        ),
    ];
    let mut results = Vec::new();
    for (name, rows, op, sql) in workloads {
        if rows == 0 {
            continue;
        }
        let from = master_status(&mut c).await?;
        let started = Instant::now();
        write(db, sql).await?;
        let written = started.elapsed().as_secs_f64();
        let to = master_status(&mut c).await?;
        let (files, bytes) = binlog_range(&mut c, &from, &to).await?;

        // backflow: from process start until Kafka acknowledged every row.
        let broker_cpu = backflow_e2e::cpu_secs(broker.pid());
        let t = run_feed(&config, &feed, op, rows).await?;
        let broker_cpu = backflow_e2e::cpu_secs(broker.pid()) - broker_cpu;

        // mariadb-binlog: the same binlog range from the server, to /dev/null.
        let raw_secs = mariadb_binlog(false, &files, from.1, to.1)?;
        let verbose_secs = mariadb_binlog(true, &files, from.1, to.1)?;
        let dbz = match debezium.as_mut() {
            Some(d) => Some(d.run(broker.bootstrap(), rows).await?),
            None => None,
        };

        let ours = rows as f64 / t.secs;
        let raw = rows as f64 / raw_secs;
        let verbose = rows as f64 / verbose_secs;
        println!(
            "{name} (written in {written:.1} s; binlog {}:{} .. {}:{}, {:.1} MB in {} file(s); feed resumed at {}):",
            from.0,
            from.1,
            to.0,
            to.1,
            bytes as f64 / 1e6,
            files.len(),
            t.resumed_at
        );
        println!(
            "  backflow (binlog -> Avro -> Apache Kafka broker, acked): {:.2} s, {ours:.0} rows/s (includes process start; \
             {:.2} s until `feed started`, {:.0} rows/s after it)",
            t.secs,
            t.startup,
            rows as f64 / (t.secs - t.startup).max(1e-3)
        );
        println!("  mariadb-binlog (binlog -> /dev/null): {raw_secs:.2} s, {raw:.0} rows/s");
        println!("  mariadb-binlog --verbose (rows decoded to pseudo-SQL -> /dev/null): {verbose_secs:.2} s, {verbose:.0} rows/s");
        println!(
            "  ratio {:.2} (raw), {:.2} (--verbose), backflow peak RSS {:.0} MB",
            ours / raw,
            ours / verbose,
            t.rss_mb
        );
        println!(
            "  CPU: feed process {:.2} s ({:.2} µs per row), broker {:.2} s",
            t.cpu,
            t.cpu * 1e6 / rows as f64,
            broker_cpu
        );
        println!(
            "  producer: {:.0} enqueues waited for a full queue; acknowledged {:.1} ms after enqueue on average",
            t.queue_full, t.ack_ms
        );
        if t.published > rows as f64 || t.restarts > 0.0 || t.dead_letters > 0.0 {
            println!(
                "  NOTE: {} events published for {rows} rows, {} restarts, {} dead letters",
                t.published, t.restarts, t.dead_letters
            );
        }
        for w in t.warnings.iter().take(10) {
            println!("  log: {w}");
        }
        let debezium = dbz.map(|(secs, streaming, rss)| {
            let rate = rows as f64 / secs;
            println!(
                "  Debezium {DEBEZIUM_VERSION} MariaDB connector on Kafka Connect, its default settings (binlog -> JSON -> broker): {secs:.2} s, \
                 {rate:.0} rows/s (includes JVM start; {:.0} rows/s from its first record on), peak RSS {rss:.0} MB; backflow / Debezium {:.2}",
                rows as f64 / streaming.max(1e-3),
                ours / rate
            );
            (rate, rss)
        });
        results.push(Figures {
            name,
            ours,
            raw,
            verbose,
            rss: t.rss_mb,
            debezium,
        });
    }
    Ok(results)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: i64| backflow_e2e::bench_arg(i, default);
    let (inserts, updates, big) = (arg(1, 1_000_000)?, arg(2, 200_000)?, arg(3, 1_000_000)?);
    let db = format!("bf_bench_my_{}", std::process::id());
    let mut admin = connect(None).await?;
    drop_leftovers(&mut admin, "bf_bench_my").await?;
    admin
        .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .await?;
    admin
        .query_drop(format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        .await?;
    let results = bench(&db, inserts, updates, big).await;
    admin
        .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .await?;
    let results = results?;
    println!();
    println!("| workload | backflow rows/s | mariadb-binlog rows/s | ratio | mariadb-binlog --verbose rows/s | ratio | peak RSS MB | Debezium rows/s | backflow / Debezium | Debezium peak RSS MB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let debezium = match r.debezium {
            Some((rate, rss)) => format!("{rate:.0} | {:.1} | {rss:.0}", r.ours / rate),
            None => "not run | | ".to_owned(),
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {debezium} |",
            r.name,
            r.ours,
            r.raw,
            r.ours / r.raw,
            r.verbose,
            r.ours / r.verbose,
            r.rss
        );
    }
    Ok(())
}
