//! End-to-end benchmark: a department's PostgreSQL table through a node
//! (feed, Apache Kafka broker, distributor) into two district subscribers'
//! PostgreSQL databases. Prints figures; asserts nothing.
//!
//! The pipeline: department database with a 9-column table whose rows
//! alternate between the regions 330106 and 330108; a city node (330100)
//! with a PostgreSQL feed of it and two shares (one per district, rows of
//! the district's own region, the name masked, the other fields plain); two
//! `backflow subscribe` processes, each applying its share topic into its
//! own PostgreSQL database. The broker is Apache Kafka, one of the run's own.
//!
//! 1. Throughput. INSERTS rows, then UPDATES of them, are written in 10-row
//!    transactions while every backflow process is stopped, so the changes
//!    wait in the WAL. Then the node and both subscribers start and the
//!    clock runs until both district tables hold the final state (each
//!    district's row count and count of updated rows equal the
//!    department's). Rows/s = department changes / that time (process
//!    start included). The limits: `pg_recvlogical` decoding the same WAL
//!    range (pgoutput, to /dev/null) and a raw `COPY` (psql `\copy`) of as
//!    many rows into a table shaped like a district table (`LIKE ...
//!    INCLUDING ALL`).
//! 2. Latency. With everything running, RATE changes/s (inserts in 10-row
//!    transactions, paced by this program) for LATENCY_SECS seconds. Each
//!    row carries the department's `clock_timestamp()` at write (column
//!    `updated_at`); a `BEFORE INSERT OR UPDATE` trigger on each district
//!    table sets an extra column to the district's `clock_timestamp()` when
//!    the sink writes the row (the sink leaves columns the event does not
//!    carry alone). Latency = the difference, over every row of the phase;
//!    it leaves out the last milliseconds of the sink's transaction (the
//!    offsets and the commit after the row is written). Same machine, same
//!    clock.
//! 3. Peak RSS (`VmHWM`) of the node and each subscriber over the run, and
//!    CPU seconds of each process of the throughput phase.
//! 4. At rest: the share of a core the node, the subscribers and the broker use
//!    over 10 s in which nothing is written (what the consumers' polling
//!    of the broker costs).
//!
//! Run with `scripts/bench.sh [INSERTS [UPDATES [LATENCY_SECS [RATE]]]]`
//! (release build; defaults 1000000 200000 30 5000). Needs the services of
//! `scripts/services.sh up`. `BENCH_FLUSH_INTERVAL_MS` sets the
//! subscribers' `flush_interval_ms` (unset: backflow's default);
//! `BENCH_FETCH_WAIT_MS` sets the data path's fetch wait, the node's
//! `kafka.fetch_wait_ms` and the subscribers' `upstream.fetch_wait_ms`
//! (unset: backflow's 100). `BENCH_LINGER_MS` sets the node's producers'
//! `linger.ms` through `[kafka.properties]` (unset: backflow's 5).
//! `BENCH_PARTITIONS` sets the node's `kafka.partitions`, the partitions
//! of the raw and share topics it creates (unset: backflow's default).
//! `BENCH_DISTRIBUTOR_TRANSACTIONS=true|false` sets the node's
//! `kafka.distributor_transactions` (unset: backflow's default).
//! `BENCH_STAGED=1` measures the two stages apart in the throughput phase:
//! the node alone until Kafka acknowledged every share record, then the
//! subscribers alone, started on full share topics (a district catching
//! up); the total is then the sum of the two.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backflow_e2e::{
    cpu_secs, create_bench_department, create_pg_database, drop_pg_database, free_local_addr,
    metric_sum, peak_rss_mb, pg_connect, unique_name, Node, TestBroker, TestToken,
};

const TX_ROWS: i64 = 10;
const DISTRICTS: [&str; 2] = ["330106", "330108"];
const DATASET: &str = "bench.t";
/// The observers' `fetch.wait.max.ms`.
const OBSERVER_FETCH_WAIT_MS: u32 = 100;
/// The district table's extra column: when the sink wrote the row.
const SEEN: &str = "bench_seen_at";

/// The department's rows of `from..=to`: even ids in 330106, odd in 330108.
fn insert_rows(from: i64, to: i64, at: &str) -> String {
    format!(
        "INSERT INTO t (id, name, region_code, income, birth, updated_at, note, score)
         SELECT g, '居民' || g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, g * 0.01,
                DATE '1990-01-01' + (g % 9000), {at}, 'note ' || g, g * 1.5
         FROM generate_series({from}, {to}) g;"
    )
}

/// `rows` rows from id `first` in 10-row transactions, 100 transactions
/// per round trip.
fn small_transactions(
    first: i64,
    rows: i64,
    statement: &dyn Fn(i64, i64) -> String,
) -> Vec<String> {
    let last = first + rows - 1;
    let mut batches = Vec::new();
    let mut id = first;
    while id <= last {
        let mut sql = String::new();
        for _ in 0..100 {
            if id > last {
                break;
            }
            sql.push_str(&format!(
                "BEGIN; {} COMMIT;",
                statement(id, (id + TX_ROWS - 1).min(last))
            ));
            id += TX_ROWS;
        }
        batches.push(sql);
    }
    batches
}

/// CPU seconds so far of the node, each subscriber and the broker.
struct PipelineCpu {
    node: (u32, f64),
    subs: Vec<(u32, f64)>,
    broker_proc: Option<(u32, f64)>,
}

impl PipelineCpu {
    fn now(node: u32, subs: &[u32], broker_proc: Option<u32>) -> Self {
        let at = |p: u32| (p, cpu_secs(p));
        Self {
            node: at(node),
            subs: subs.iter().map(|p| at(*p)).collect(),
            broker_proc: broker_proc.map(at),
        }
    }

    /// CPU seconds used since `self`, times `scale`, followed by `unit`:
    /// (node, subscribers joined with " + ", the broker or "?").
    fn since(&self, scale: f64, unit: &str) -> (String, String, String) {
        let used = |(p, before): (u32, f64)| format!("{:.1}{unit}", (cpu_secs(p) - before) * scale);
        (
            used(self.node),
            self.subs
                .iter()
                .map(|s| used(*s))
                .collect::<Vec<_>>()
                .join(" + "),
            self.broker_proc.map_or("?".to_owned(), used),
        )
    }
}

/// CPU seconds so far of every PostgreSQL server process, by pid.
fn postgres_cpu() -> std::collections::HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.contains("(postgres)").then(|| (pid, cpu_secs(pid)))
    })
    .collect()
}

/// CPU seconds PostgreSQL server processes used since `before`
/// (processes that ended in between are missed).
fn postgres_cpu_since(before: &std::collections::HashMap<u32, f64>) -> f64 {
    postgres_cpu()
        .iter()
        .map(|(pid, now)| now - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// The machine's CPU time so far from /proc/stat, in ticks: (busy, iowait,
/// total) over all cores.
fn machine_ticks() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0.0, 0.0, 0.0);
    }
    // user nice system idle iowait irq softirq steal
    let total: f64 = v.iter().sum();
    (total - v[3] - v[4], v[4], total)
}

/// "busy N%, iowait M%" of the machine since `before`.
fn machine_load_since(before: (f64, f64, f64)) -> String {
    let now = machine_ticks();
    let total = (now.2 - before.2).max(1.0);
    format!(
        "machine CPU busy {:.0}%, iowait {:.0}% (all {} cores)",
        100.0 * (now.0 - before.0) / total,
        100.0 * (now.1 - before.1) / total,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// Each district's expected (rows, updated rows), from the department.
async fn expected(dept: &tokio_postgres::Client) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for code in DISTRICTS {
        let r = dept
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE note = 'changed') FROM t WHERE region_code = $1",
                &[&code],
            )
            .await?;
        out.push((r.get(0), r.get(1)));
    }
    Ok(out)
}

/// A district table's (rows, updated rows); `None` while it does not exist.
async fn held(district: &tokio_postgres::Client) -> Option<(i64, i64)> {
    let r = district
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE note = 'changed') FROM t",
            &[],
        )
        .await
        .ok()?;
    Some((r.get(0), r.get(1)))
}

/// Records a subscriber applied or dead-lettered so far (its metrics).
async fn records_done(sub: &Node) -> f64 {
    let (_, m) = sub.get_ops("/metrics").await.unwrap_or_default();
    metric_sum(&m, "backflow_subscribe_rows_total", "")
        + metric_sum(&m, "backflow_subscribe_dead_letters_total", "")
}

/// Times of one topic's records of the latency phase, in milliseconds.
#[derive(Default)]
struct Hop {
    /// From the department's commit (header `backflow.origin_ts`) to the
    /// record's Kafka timestamp (when backflow handed it to its Kafka client).
    produced: Vec<f64>,
    /// From that timestamp to when a plain consumer here received it.
    read: Vec<f64>,
}

/// Observes the records of `topic` whose department commit is at or after
/// `since_ms`, reading from the topic's end (with backflow's consumer
/// settings) until `stop` is set.
fn observe(
    bootstrap: &str,
    topic: String,
    since_ms: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Hop>> {
    let mut settings = backflow::kafka::KafkaSettings::new(bootstrap);
    // A longer wait than the pipeline's: the observers should load the
    // broker little while idle (Apache Kafka answers a fetch as soon as a
    // record arrives, so their `read` figures do not depend on it).
    settings.fetch_wait_ms = OBSERVER_FETCH_WAIT_MS;
    tokio::spawn(async move {
        let marks = backflow::kafka::Watermarks::new(&settings)?;
        let mut start = Vec::new();
        for p in 0..backflow::kafka::partition_count(&settings, &topic).await? as i32 {
            start.push((topic.clone(), p, Some(marks.high(&topic, p).await?)));
        }
        let consumer =
            backflow::kafka::Consumer::assigned(&settings, "bench-e2e-observer", &start, None)?;
        let mut hop = Hop::default();
        // A record fetched twice counts once.
        let mut seen = std::collections::HashSet::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(r) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
            else {
                continue;
            };
            let r = r?;
            let now = epoch_ms();
            if !seen.insert((r.partition, r.offset)) {
                continue;
            }
            let origin = r
                .header("backflow.origin_ts")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
            if let (Some(origin), Some(at)) = (origin, r.timestamp_ms) {
                if origin >= since_ms {
                    hop.produced.push((at - origin) as f64);
                    hop.read.push((now - at) as f64);
                }
            }
        }
        hop.produced.sort_by(f64::total_cmp);
        hop.read.sort_by(f64::total_cmp);
        Ok(hop)
    })
}

/// Milliseconds since the epoch.
fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: i64| backflow_e2e::bench_arg(i, default);
    let (inserts, updates, latency_secs, rate) = (
        arg(1, 1_000_000)?,
        arg(2, 200_000)?.min(arg(1, 1_000_000)?),
        arg(3, 30)?,
        arg(4, 5_000)?,
    );
    let flush_ms = std::env::var("BENCH_FLUSH_INTERVAL_MS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().parse::<u64>())
        .transpose()
        .context("BENCH_FLUSH_INTERVAL_MS")?;
    // The data path's fetch wait: the node's distributor
    // (`kafka.fetch_wait_ms`) and the subscribers (`upstream.fetch_wait_ms`).
    let fetch_wait_ms = std::env::var("BENCH_FETCH_WAIT_MS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().parse::<u64>())
        .transpose()
        .context("BENCH_FETCH_WAIT_MS")?;
    let mut node_properties =
        fetch_wait_ms.map_or(String::new(), |ms| format!("fetch_wait_ms = {ms}\n"));
    if let Ok(linger) = std::env::var("BENCH_LINGER_MS") {
        node_properties.push_str(&format!(
            "properties = {{ \"linger.ms\" = \"{linger}\" }}\n"
        ));
    }
    if let Ok(on) = std::env::var("BENCH_DISTRIBUTOR_TRANSACTIONS") {
        let on: bool = on
            .trim()
            .parse()
            .context("BENCH_DISTRIBUTOR_TRANSACTIONS (true or false)")?;
        node_properties.push_str(&format!("distributor_transactions = {on}\n"));
    }
    if let Ok(partitions) = std::env::var("BENCH_PARTITIONS") {
        let n: i32 = partitions.trim().parse().context("BENCH_PARTITIONS")?;
        node_properties.push_str(&format!("partitions = {n}\n"));
    }
    let upstream_properties =
        fetch_wait_ms.map_or(String::new(), |ms| format!(", fetch_wait_ms = {ms}"));
    let staged = std::env::var("BENCH_STAGED").is_ok_and(|v| v.trim() == "1");

    // The department.
    let db = unique_name("bf_bench");
    let dept = create_bench_department(&db).await?;

    // The districts.
    let mut district_dbs = Vec::new();
    for code in DISTRICTS {
        let name = unique_name(&format!("bf_benchd{code}"));
        create_pg_database(&name).await?;
        district_dbs.push(name);
    }

    let broker = TestBroker::start_for_bench();
    let node_addr = free_local_addr();
    let node_url = format!("http://{node_addr}");
    let feed = db.replace('_', "-");
    let mut config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n{node_properties}\n[[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\nsnapshot = \"never\"\ntables = [{{ table = \"public.t\", dataset = \"{DATASET}\" }}]\n",
        broker.bootstrap()
    );
    for code in DISTRICTS {
        config.push_str(&format!(
            "\n[[shares]]\nsubscriber = \"{code}\"\ndataset = \"{DATASET}\"\nregion_column = \"region_code\"\nfields = {{ id = \"plain\", name = \"masked:name\", region_code = \"plain\", income = \"plain\", birth = \"plain\", updated_at = \"plain\", note = \"plain\", score = \"plain\", active = \"plain\" }}\n"
        ));
    }
    // Each district reads the node's registry with its own token.
    let tokens: Vec<TestToken> = DISTRICTS
        .iter()
        .map(|code| TestToken::new(&format!("subscriber:{code}")))
        .collect();
    for t in &tokens {
        config.push_str(&t.auth_toml());
    }
    let node_env = [("BACKFLOW_HTTP__LISTEN", node_addr.as_str())];
    let sub_configs: Vec<String> = DISTRICTS
        .iter()
        .zip(&district_dbs)
        .zip(&tokens)
        .map(|((code, name), token)| {
            format!(
                "[[subscriptions]]\nname = \"bench-{code}\"\n{}upstream = {{ brokers = \"{}\", registry_url = \"{node_url}\", {}{upstream_properties} }}\nsink = {{ type = \"postgres\", host = \"127.0.0.1\", port = 5432, user = \"postgres\", database = \"{name}\" }}\ntables = [{{ topic = \"backflow.share.{code}.{DATASET}\", table = \"t\" }}]\n",
                flush_ms.map_or(String::new(), |ms| format!("flush_interval_ms = {ms}\n")),
                broker.bootstrap(),
                token.upstream_setting(),
            )
        })
        .collect();

    // First start: the feed creates its slot, the distributor its topics.
    {
        let mut node = Node::start_with_config(&config, &node_env)?;
        let until = Instant::now() + Duration::from_secs(60);
        while !node.stderr().contains("feed started") {
            if Instant::now() > until {
                bail!("feed did not start:\n{}", node.stderr());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        node.wait_for_status("/readyz", 200, Duration::from_secs(30))
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.signal("TERM")?;
        node.wait(Duration::from_secs(30))?;
    }

    // The workload, into the WAL while backflow is stopped.
    let started = Instant::now();
    for s in small_transactions(1, inserts, &|from, to| insert_rows(from, to, "now()")) {
        dept.batch_execute(&s).await?;
    }
    for s in small_transactions(1, updates, &|from, to| {
        format!(
            "UPDATE t SET income = income + 1, note = 'changed' WHERE id BETWEEN {from} AND {to};"
        )
    }) {
        dept.batch_execute(&s).await?;
    }
    let written = started.elapsed().as_secs_f64();
    let end_lsn: String = dept
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let want = expected(&dept).await?;
    let changes = inserts + updates;
    println!(
        "workload: {inserts} inserts then {updates} updates in {TX_ROWS}-row transactions, written in {written:.1} s; districts expect {want:?} (rows, updated rows)"
    );

    // Throughput: from the processes' start until both districts hold the
    // final state.
    let broker_proc = Some(broker.pid());
    let broker_cpu_before = broker_proc.map_or(0.0, cpu_secs);
    let postgres_before = postgres_cpu();
    let machine_before = machine_ticks();
    let started = Instant::now();
    let mut node = Node::start_with_config(&config, &node_env)?;
    if staged {
        // Every change goes to exactly one district.
        let until = Instant::now() + Duration::from_secs(3600);
        loop {
            let (_, m) = node.get_ops("/metrics").await.unwrap_or_default();
            let shared = metric_sum(
                &m,
                "backflow_kafka_produced_records_total",
                "kind=\"share\"",
            );
            if shared >= changes as f64 {
                break;
            }
            if Instant::now() > until {
                bail!("the node did not share every change within an hour");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let node_secs = started.elapsed().as_secs_f64();
        println!(
            "staged: node alone (feed and distributor) {node_secs:.2} s = {:.0} rows/s, {:.1} CPU s",
            changes as f64 / node_secs,
            cpu_secs(node.pid())
        );
    }
    let subs_started = Instant::now();
    let mut subs = Vec::new();
    for c in &sub_configs {
        subs.push(Node::subscribe_with_config(c, &[])?);
    }
    let districts: Vec<tokio_postgres::Client> = {
        let mut v = Vec::new();
        for name in &district_dbs {
            v.push(pg_connect(name).await?);
        }
        v
    };
    let mut done_at: Vec<Option<f64>> = vec![None; DISTRICTS.len()];
    let until = Instant::now() + Duration::from_secs(3600);
    let mut last_sql = Instant::now();
    while done_at.iter().any(Option::is_none) {
        let check_sql = last_sql.elapsed() > Duration::from_secs(5);
        for (i, sub) in subs.iter().enumerate() {
            if done_at[i].is_some() {
                continue;
            }
            let (rows, updated) = want[i];
            // Metrics first (cheap); the table is read when they say done.
            if (check_sql || records_done(sub).await >= (rows + updated) as f64)
                && held(&districts[i]).await == Some(want[i])
            {
                done_at[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        if check_sql {
            last_sql = Instant::now();
        }
        if Instant::now() > until {
            bail!(
                "districts did not reach the final state within an hour; node log:\n{}",
                node.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = done_at.iter().flatten().cloned().fold(0.0, f64::max);
    if staged {
        let subs_secs = subs_started.elapsed().as_secs_f64();
        println!(
            "staged: subscribers alone, from full share topics {subs_secs:.2} s = {:.0} rows/s in all, CPU s {}",
            changes as f64 / subs_secs,
            subs.iter()
                .map(|s| format!("{:.1}", cpu_secs(s.pid())))
                .collect::<Vec<_>>()
                .join(" + ")
        );
    }
    let cpu_node = cpu_secs(node.pid());
    let cpu_subs: Vec<f64> = subs.iter().map(|s| cpu_secs(s.pid())).collect();
    let cpu_broker = broker_proc.map_or(0.0, cpu_secs) - broker_cpu_before;
    let cpu_postgres = postgres_cpu_since(&postgres_before);
    let throughput_load = machine_load_since(machine_before);
    let ours = changes as f64 / secs;
    let mut dead_letters = 0.0;
    for sub in &subs {
        let (_, m) = sub.get_ops("/metrics").await.unwrap_or_default();
        dead_letters += metric_sum(&m, "backflow_subscribe_dead_letters_total", "");
    }
    println!(
        "backflow: {changes} changes in {secs:.2} s = {ours:.0} rows/s (districts done at {:?} s; {dead_letters} dead letters)",
        done_at
            .iter()
            .map(|d| format!("{:.1}", d.unwrap_or_default()))
            .collect::<Vec<_>>()
    );
    let cpu_subs = cpu_subs
        .iter()
        .map(|c| format!("{c:.1}"))
        .collect::<Vec<_>>()
        .join(" + ");
    println!(
        "  CPU seconds in the phase: node {cpu_node:.1}, subscribers {cpu_subs}, broker {cpu_broker:.1}, PostgreSQL {cpu_postgres:.1}; {throughput_load}"
    );

    // pg_recvlogical: the same WAL range, decoded the same way, to /dev/null.
    let recv_secs = backflow_e2e::pg_recvlogical_secs(&db, &end_lsn)?;
    dept.batch_execute("SELECT pg_drop_replication_slot('bench_recv_' || current_database())")
        .await?;
    let recv = changes as f64 / recv_secs;
    println!("pg_recvlogical (WAL -> /dev/null): {recv_secs:.2} s = {recv:.0} rows/s");

    // A raw COPY of as many rows into a table shaped like a district table.
    let district = &districts[0];
    district
        .batch_execute("CREATE TABLE bench_copy (LIKE t INCLUDING ALL)")
        .await?;
    let columns: Vec<String> = district
        .query(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = 'public' AND table_name = 'bench_copy' ORDER BY ordinal_position",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exprs: Vec<&str> = columns
        .iter()
        .map(|c| match c.as_str() {
            "id" => "g",
            "name" => "'居' || repeat('*', length(g::text) + 1)",
            "region_code" => "'330106'",
            "income" => "g * 0.01",
            "birth" => "DATE '1990-01-01' + (g % 9000)",
            "updated_at" => "now()",
            "note" => "'note ' || g",
            "score" => "g * 1.5",
            "active" => "true",
            "_backflow_position" => "lpad(to_hex(g), 16, '0')",
            _ => "NULL",
        })
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("backflow-bench-")
        .tempdir()?;
    let file = dir.path().join("rows.tsv");
    let psql = |command: String| -> anyhow::Result<()> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &district_dbs[0]])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", &command])
            .output()
            .context("run psql (Debian package postgresql-client)")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    psql(format!(
        "\\copy (SELECT {} FROM generate_series(1, {changes}) g) TO '{}'",
        exprs.join(", "),
        file.display()
    ))?;
    let started = Instant::now();
    psql(format!("\\copy bench_copy FROM '{}'", file.display()))?;
    let copy_secs = started.elapsed().as_secs_f64();
    district.batch_execute("DROP TABLE bench_copy").await?;
    drop(dir);
    let copy = changes as f64 / copy_secs;
    println!("COPY into a district-shaped table: {copy_secs:.2} s = {copy:.0} rows/s");

    // Latency: a steady stream while everything runs.
    for d in &districts {
        d.batch_execute(&format!(
            "ALTER TABLE t ADD COLUMN {SEEN} timestamptz;
             CREATE FUNCTION bench_seen() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.{SEEN} := clock_timestamp(); RETURN NEW; END $$;
             CREATE TRIGGER bench_seen BEFORE INSERT OR UPDATE ON t
               FOR EACH ROW EXECUTE FUNCTION bench_seen();"
        ))
        .await?;
    }
    let first = inserts + 1;
    let transactions = rate * latency_secs / TX_ROWS;
    // Where the time goes: the raw and share records' Kafka timestamps.
    let since_ms = epoch_ms();
    let stop = Arc::new(AtomicBool::new(false));
    let raw_hop = observe(
        broker.bootstrap(),
        format!("backflow.raw.{DATASET}"),
        since_ms,
        stop.clone(),
    );
    let share_hops: Vec<_> = DISTRICTS
        .iter()
        .map(|code| {
            observe(
                broker.bootstrap(),
                format!("backflow.share.{code}.{DATASET}"),
                since_ms,
                stop.clone(),
            )
        })
        .collect();
    // Let the observers take their positions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subs_pids: Vec<u32> = subs.iter().map(|s| s.pid()).collect();
    let stream_cpu_before = PipelineCpu::now(node.pid(), &subs_pids, broker_proc);
    let stream_postgres_before = postgres_cpu();
    let machine_before = machine_ticks();
    let started = Instant::now();
    let mut sent = 0;
    let mut behind = Duration::ZERO;
    while sent < transactions {
        // Transactions due by now, at most 50 per round trip.
        let due = ((started.elapsed().as_secs_f64() * rate as f64 / TX_ROWS as f64) as i64 + 1)
            .min(transactions);
        if due > sent {
            let n = (due - sent).min(50);
            let mut sql = String::new();
            for k in 0..n {
                let from = first + (sent + k) * TX_ROWS;
                sql.push_str(&format!(
                    "BEGIN; {} COMMIT;",
                    insert_rows(from, from + TX_ROWS - 1, "clock_timestamp()")
                ));
            }
            dept.batch_execute(&sql).await?;
            sent += n;
        }
        let next = Duration::from_secs_f64((sent * TX_ROWS) as f64 / rate as f64);
        match next.checked_sub(started.elapsed()) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => behind = behind.max(started.elapsed() - next),
        }
    }
    let stream_secs = started.elapsed().as_secs_f64();
    let stream_load = machine_load_since(machine_before);
    let (node_s, subs_s, broker_s) = stream_cpu_before.since(1.0, "");
    let stream_cpu = format!(
        "{node_s} / {subs_s} / {broker_s} / {:.1}",
        postgres_cpu_since(&stream_postgres_before)
    );
    let streamed = transactions * TX_ROWS;
    println!(
        "latency stream: {streamed} inserts in {stream_secs:.1} s = {:.0} changes/s (at most {} ms behind schedule); {stream_load}",
        streamed as f64 / stream_secs,
        behind.as_millis()
    );
    let mut latencies: Vec<f64> = Vec::new();
    for (i, d) in districts.iter().enumerate() {
        let want: i64 = dept
            .query_one(
                "SELECT count(*) FROM t WHERE id >= $1 AND region_code = $2",
                &[&first, &DISTRICTS[i]],
            )
            .await?
            .get(0);
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let got: i64 = d
                .query_one(
                    &format!("SELECT count(*) FROM t WHERE id >= $1 AND {SEEN} IS NOT NULL"),
                    &[&first],
                )
                .await?
                .get(0);
            if got >= want {
                break;
            }
            if Instant::now() > until {
                bail!(
                    "district {} holds {got} of {want} streamed rows after 10 minutes",
                    DISTRICTS[i]
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rows = d
            .query(
                &format!(
                    "SELECT (extract(epoch FROM {SEEN} - updated_at) * 1000)::float8 FROM t WHERE id >= $1"
                ),
                &[&first],
            )
            .await?;
        latencies.extend(rows.iter().map(|r| r.get::<_, f64>(0)));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let raw = raw_hop.await??;
    let mut share = Hop::default();
    for h in share_hops {
        let h = h.await??;
        share.produced.extend(h.produced);
        share.read.extend(h.read);
    }
    share.produced.sort_by(f64::total_cmp);
    share.read.sort_by(f64::total_cmp);
    latencies.sort_by(f64::total_cmp);
    let (p50, p95, p99, max) = (
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.95),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "latency over {} rows: p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        latencies.len()
    );
    let hops = [
        (
            "department commit → raw record produced (feed)",
            &raw.produced,
        ),
        (
            "raw record produced → read by a plain consumer (fetch wait 100 ms)",
            &raw.read,
        ),
        (
            "department commit → share record produced (distributor)",
            &share.produced,
        ),
        (
            "share record produced → read by a plain consumer (fetch wait 100 ms)",
            &share.read,
        ),
    ];
    for (what, ms) in hops {
        println!(
            "  {what}: p50 {:.0} ms, p99 {:.0} ms ({} records)",
            quantile(ms, 0.5),
            quantile(ms, 0.99),
            ms.len()
        );
    }

    // At rest: what the processes cost while nothing changes (their
    // consumers still ask the broker for records every fetch wait).
    let rest = Duration::from_secs(10);
    let before = PipelineCpu::now(node.pid(), &subs_pids, broker_proc);
    tokio::time::sleep(rest).await;
    let (node_s, subs_s, broker_s) = before.since(100.0 / rest.as_secs_f64(), "%");
    let at_rest = format!("node {node_s}, subscribers {subs_s}, broker {broker_s} of a core");
    println!(
        "at rest for {} s, nothing written: {at_rest}",
        rest.as_secs()
    );

    // Peak memory over the whole run.
    let rss_node = peak_rss_mb(node.pid());
    let rss_subs: Vec<f64> = subs.iter().map(|s| peak_rss_mb(s.pid())).collect();
    for mut sub in subs {
        sub.signal("TERM")?;
        sub.wait(Duration::from_secs(30))?;
    }
    node.signal("TERM")?;
    node.wait(Duration::from_secs(30))?;
    drop(districts);
    for name in &district_dbs {
        drop_pg_database(name).await?;
    }
    drop(dept);
    drop_pg_database(&db).await?;

    println!();
    println!(
        "{inserts} inserts then {updates} updates in {TX_ROWS}-row transactions; 9-column table; two districts (half the rows each); Apache Kafka {} (one broker, steady-state JIT); subscribers' flush_interval_ms {}; consumers' fetch.wait.max.ms {}",
        backflow_e2e::KAFKA_VERSION,
        flush_ms.map_or("default".to_owned(), |ms| ms.to_string()),
        fetch_wait_ms.map_or("default (100)".to_owned(), |ms| ms.to_string())
    );
    println!();
    println!("| measure | figure | target |");
    println!("|---|---:|---|");
    println!("| backflow department → district tables | {ours:.0} rows/s ({secs:.1} s) | |");
    println!("| pg_recvlogical, same WAL → /dev/null | {recv:.0} rows/s ({recv_secs:.1} s) | |");
    println!("| raw COPY into a district-shaped table | {copy:.0} rows/s ({copy_secs:.1} s) | |");
    println!(
        "| ratio backflow / pg_recvlogical | {:.2} | ≥ 0.4 |",
        ours / recv
    );
    println!("| ratio backflow / COPY | {:.2} | |", ours / copy);
    println!(
        "| latency p50 / p95 / p99 at {:.0} changes/s ({} rows) | {p50:.0} / {p95:.0} / {p99:.0} ms (max {max:.0}) | p99 ≤ 100 ms |",
        streamed as f64 / stream_secs,
        latencies.len()
    );
    for (what, ms) in hops {
        println!(
            "| … {what}, p50 / p99 | {:.0} / {:.0} ms | |",
            quantile(ms, 0.5),
            quantile(ms, 0.99)
        );
    }
    println!("| peak RSS node | {rss_node:.0} MB | ≤ 200 MB |");
    for (code, rss) in DISTRICTS.iter().zip(&rss_subs) {
        println!("| peak RSS subscriber {code} | {rss:.0} MB | ≤ 200 MB |");
    }
    println!(
        "| CPU seconds of the throughput phase: node / subscribers / broker / PostgreSQL | {cpu_node:.1} / {cpu_subs} / {cpu_broker:.1} / {cpu_postgres:.1} | |"
    );
    println!("| throughput phase | {throughput_load} | |");
    println!("| latency phase | {stream_load} | |");
    println!(
        "| CPU seconds of the latency phase: node / subscribers / broker / PostgreSQL | {stream_cpu} | |"
    );
    println!(
        "| CPU at rest ({} s, nothing written) | {at_rest} | |",
        rest.as_secs()
    );
    Ok(())
}
