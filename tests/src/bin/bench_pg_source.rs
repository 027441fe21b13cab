//! Benchmark of the PostgreSQL feed: rows per second from the WAL into
//! Kafka, against `pg_recvlogical` decoding the same WAL to /dev/null, and
//! the feed process's peak memory. Prints figures; asserts nothing.
//!
//! Run with `scripts/bench-pg-source.sh [ROWS]` (release build). Needs the
//! services of `scripts/services.sh up`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backflow_e2e::{create_pg_database, drop_pg_database, unique_name, Node, TestBroker};

const TX_ROWS: i64 = 10;

fn peak_rss_mb(pid: u32) -> f64 {
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

/// Sum of a counter's series whose labels contain `filter`.
fn counter(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: i64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let db = unique_name("bf_bench");
    let client = create_pg_database(&db).await?;
    client
        .batch_execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, name varchar(64) NOT NULL, region_code char(6) NOT NULL,
                income numeric(12,2), birth date, updated_at timestamptz NOT NULL DEFAULT now(),
                note text, score double precision, active boolean NOT NULL DEFAULT true);
             ALTER TABLE t REPLICA IDENTITY FULL;
             CREATE PUBLICATION bench_pub FOR TABLE t;",
        )
        .await?;
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('bench_recv_' || current_database(), 'pgoutput')")
        .await?;

    let broker = TestBroker::start_in_memory();
    let feed = db.replace('_', "-");
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n[[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\nsnapshot = \"never\"\ntables = [{{ table = \"public.t\", dataset = \"bench.t\" }}]\n",
        broker.bootstrap()
    );
    // First start creates the slot; stop, then write the workload.
    {
        let mut node = Node::start_with_config(&config, &[])?;
        let until = Instant::now() + Duration::from_secs(60);
        while !node.stderr().contains("feed started") {
            if Instant::now() > until {
                bail!("feed did not start:\n{}", node.stderr());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.signal("TERM")?;
        node.wait(Duration::from_secs(30))?;
    }
    let started = Instant::now();
    let mut id = 0;
    while id < rows {
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO t (id, name, region_code, income, birth, note, score)
                 SELECT g, '居民' || g, '330106', g * 0.01, DATE '1990-01-01' + (g % 9000), 'note ' || g, g * 1.5
                 FROM generate_series({}, {}) g; COMMIT;",
                id + 1,
                (id + TX_ROWS).min(rows)
            ))
            .await?;
        id += TX_ROWS;
    }
    let workload = started.elapsed();
    let end_lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);

    // backflow: from process start until every row is acknowledged by Kafka.
    let started = Instant::now();
    let node = Node::start_with_config(&config, &[])?;
    let until = Instant::now() + Duration::from_secs(1800);
    loop {
        let (_, metrics) = node.get("/metrics").await.unwrap_or_default();
        let published = counter(&metrics, "backflow_source_events_total", "op=\"c\"");
        let lag = counter(&metrics, "backflow_source_lag_seconds", &feed);
        if published >= rows as f64 && lag == 0.0 {
            break;
        }
        if Instant::now() > until {
            bail!(
                "only {published} of {rows} rows published:\n{}",
                node.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backflow_secs = started.elapsed().as_secs_f64();
    let rss = peak_rss_mb(node.pid());
    drop(node);

    // pg_recvlogical: the same WAL, decoded by the server the same way, to /dev/null.
    let started = Instant::now();
    let status = Command::new("pg_recvlogical")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db])
        .args([
            "--slot",
            &format!("bench_recv_{db}"),
            "--start",
            "-E",
            &end_lsn,
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
    let recv_secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    drop_pg_database(&db).await?;

    let ours = rows as f64 / backflow_secs;
    let theirs = rows as f64 / recv_secs;
    println!(
        "workload: {rows} rows inserted in {TX_ROWS}-row transactions in {:.1} s",
        workload.as_secs_f64()
    );
    println!("backflow (WAL -> Avro -> tansu memory broker, acked): {backflow_secs:.2} s, {ours:.0} rows/s (includes process start)");
    println!("pg_recvlogical (WAL -> /dev/null): {recv_secs:.2} s, {theirs:.0} rows/s");
    println!("ratio backflow / pg_recvlogical: {:.2}", ours / theirs);
    println!("backflow peak RSS: {rss:.0} MB");
    Ok(())
}
