//! Benchmark of the MySQL/MariaDB source without Kafka, and of the
//! publishing path without a source, to tell which of the two limits the
//! feed (`bench_mysql_source`).
//!
//! One workload: ROWS inserts in 10-row transactions (as
//! `bench_mysql_source`'s first workload) on the same 9-column table. Then,
//! each repeated REPEAT times:
//! - `mariadb-binlog` reading the workload's binlog range from the server to
//!   /dev/null (raw, and `--verbose`, which decodes the rows);
//! - source only: `MysqlSource` started at the range's first position,
//!   `next_batch(2000)` until every row was read, each checkpoint
//!   acknowledged (what the feed asks of it, minus Kafka);
//! - source and Avro: the same, each record encoded and framed as the feed
//!   does (key and value), still without Kafka;
//! - produce only: the records the source read, encoded once beforehand,
//!   published with the project's `Publisher` into a fresh Apache Kafka broker
//!   (in-memory storage, as `bench_mysql_source` uses) onto a compacted
//!   3-partition topic, with the feed's three headers, in batches of 2,000
//!   whose acknowledgements are awaited in order, as the feed does: the
//!   broker's ceiling for the feed's publishing path.
//!
//! Wall time and this process's CPU time (user + system) are printed for
//! each. Run: `cargo build --release -p backflow-e2e --bin bench_mysql_decode
//! && target/release/bench_mysql_decode [ROWS [REPEAT]]` (defaults 1000000
//! and 3), with the services of `scripts/services.sh up`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backflow::kafka::{KafkaSettings, OutgoingRecord, Publisher, TopicAdmin, TopicSpec};
use backflow_connectors::mysql::{
    binlog_position, MysqlSource, MysqlSourceConfig, MysqlTableConfig,
};
use backflow_connectors::postgres::SnapshotMode;
use backflow_connectors::{Source, SourceRecord};
use backflow_e2e::mysql_bench::{
    binlog_range, connect, drop_leftovers, insert_values, mariadb_binlog, master_status,
    small_transactions, write, TX_ROWS,
};
use backflow_e2e::TestBroker;
use backflow_schemas::{frame, TableCodec};
use mysql_async::prelude::Queryable;

/// What the feed asks of a source at a time (bus/src/source/feed.rs).
const BATCH_RECORDS: usize = 2_000;

/// CPU time (user + system) of this process so far, in seconds.
fn cpu_secs() -> f64 {
    backflow_e2e::cpu_secs(std::process::id())
}

/// CPU time of the MariaDB server so far, in seconds (0 when not found).
fn server_cpu_secs() -> f64 {
    let Ok(out) = Command::new("pidof").args(["mariadbd", "mysqld"]).output() else {
        return 0.0;
    };
    let pids = String::from_utf8_lossy(&out.stdout);
    let Some(pid) = pids.split_whitespace().next() else {
        return 0.0;
    };
    pid.parse().map_or(0.0, backflow_e2e::cpu_secs)
}

struct Run {
    secs: f64,
    cpu: f64,
    server_cpu: f64,
    batches: usize,
    /// Framed (key, value) of every record, when asked to keep them.
    kept: Vec<(Vec<u8>, Vec<u8>, i64)>,
}

/// Reads `rows` row events from `from` with the MySQL source; `encode`:
/// also encode each record as the feed does; `keep`: keep the encoded
/// records.
async fn read_source(
    db: &str,
    from: &(String, u64),
    rows: usize,
    encode: bool,
    keep: bool,
) -> anyhow::Result<Run> {
    let config = MysqlSourceConfig {
        name: "bench-decode".into(),
        host: "127.0.0.1".into(),
        port: 3306,
        user: "root".into(),
        password: None,
        password_env: None,
        password_file: None,
        sslmode: Default::default(),
        ssl_ca_file: None,
        database: Some(db.to_owned()),
        tables: vec![MysqlTableConfig {
            table: format!("{db}.t"),
            dataset: "bench.t".into(),
        }],
        server_id: None,
        snapshot: SnapshotMode::Never,
        snapshot_chunk_rows: 10_000,
    };
    let mut source = MysqlSource::new(config, "330106");
    let tables = source.start(Some(binlog_position(&from.0, from.1))).await?;
    let codec = TableCodec::new(tables[0].as_ref().clone())?;
    let (cpu0, server0) = (cpu_secs(), server_cpu_secs());
    let started = Instant::now();
    let mut seen = 0usize;
    let mut batches = 0usize;
    let mut kept = Vec::new();
    let mut encoded_bytes = 0usize;
    while seen < rows {
        let batch = tokio::time::timeout(Duration::from_secs(60), source.next_batch(BATCH_RECORDS))
            .await
            .context("the source read nothing for 60 s")??;
        batches += 1;
        if !batch.rejected.is_empty() {
            bail!("the source rejected rows: {:?}", batch.rejected[0]);
        }
        seen += batch.records.len();
        if encode {
            for r in &batch.records {
                let (k, v) = encode_record(&codec, r)?;
                encoded_bytes += k.len() + v.len();
                if keep {
                    kept.push((k, v, r.event.source.ts_ms));
                }
            }
        }
        if let Some(cp) = batch.checkpoint {
            source.acknowledge(&cp).await?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu, server_cpu) = (cpu_secs() - cpu0, server_cpu_secs() - server0);
    source.shutdown().await?;
    if seen != rows {
        bail!("the source read {seen} row events, {rows} expected");
    }
    std::hint::black_box(encoded_bytes);
    Ok(Run {
        secs,
        cpu,
        server_cpu,
        batches,
        kept,
    })
}

fn encode_record(codec: &TableCodec, r: &SourceRecord) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    // Schema ids as a registry would give them; their value does not matter.
    Ok((
        frame(1, &codec.encode_key(&r.event.key)?),
        frame(2, &codec.encode_value(&r.event)?),
    ))
}

/// Publishes the records into a fresh Apache Kafka broker, as the feed does:
/// enqueue in order, acknowledgements awaited per batch.
async fn produce(records: &[(Vec<u8>, Vec<u8>, i64)]) -> anyhow::Result<(f64, f64)> {
    let broker = TestBroker::start_for_bench();
    let settings = KafkaSettings::new(broker.bootstrap());
    let admin = TopicAdmin::new(&settings)?;
    let topic = "backflow.raw.bench.t";
    admin.ensure(&[TopicSpec::compacted(topic, 3, 1)]).await?;
    let publisher = Publisher::new(&settings, None)?;
    // Warm up: metadata, producer id, a first batch per partition.
    for (k, v, _) in records.iter().take(100) {
        publisher.send(OutgoingRecord::new(topic, k, v)).await?;
    }
    let cpu0 = cpu_secs();
    let started = Instant::now();
    let origin = "330106/bench-decode";
    // Batches of 2,000 as a feed hands them over, acknowledged in order.
    let mut pending = std::collections::VecDeque::new();
    let mut batch = publisher.batch();
    let mut n = 0usize;
    for (k, v, ts) in records {
        let ts = ts.to_string();
        let headers: [(&str, &[u8]); 3] = [
            ("backflow.origin", origin.as_bytes()),
            ("backflow.origin_ts", ts.as_bytes()),
            ("backflow.hops", b"330106"),
        ];
        publisher
            .enqueue_in(
                &mut batch,
                OutgoingRecord {
                    topic,
                    key: Some(k),
                    payload: Some(v),
                    headers: &headers,
                },
            )
            .await?;
        if batch.len() == BATCH_RECORDS {
            n += batch.len();
            pending.push_back(std::mem::replace(&mut batch, publisher.batch()).seal());
            if pending.len() > 32 {
                pending.pop_front().expect("non-empty").await?;
            }
        }
    }
    n += batch.len();
    pending.push_back(batch.seal());
    for acks in pending {
        acks.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    if n != records.len() {
        bail!("{n} of {} records acknowledged", records.len());
    }
    drop(broker);
    Ok((secs, cpu))
}

fn spread(label: &str, rows: usize, secs: &[f64], extra: &str) {
    let rates: Vec<f64> = secs.iter().map(|s| rows as f64 / s).collect();
    let best = rates.iter().cloned().fold(f64::MIN, f64::max);
    let worst = rates.iter().cloned().fold(f64::MAX, f64::min);
    let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "  {label}: best {best:.0} rows/s, worst {worst:.0} (runs: {}){extra}",
        shown.join(", ")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| backflow_e2e::bench_arg(i, default);
    let (rows, repeat) = (arg(1, 1_000_000)?, arg(2, 3)?.max(1));
    let db = format!("bf_bench_myd_{}", std::process::id());
    let mut admin = connect(None).await?;
    drop_leftovers(&mut admin, "bf_bench_myd").await?;
    admin
        .query_drop(format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        .await?;
    let result = bench(&db, rows, repeat).await;
    admin
        .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .await?;
    result
}

async fn bench(db: &str, rows: usize, repeat: usize) -> anyhow::Result<()> {
    let mut c = connect(Some(db)).await?;
    c.query_drop(
        "CREATE TABLE t (id bigint PRIMARY KEY, name varchar(64) NOT NULL, region_code char(6) NOT NULL,
            income decimal(12,2), birth date, updated_at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
            note text, score double, active boolean NOT NULL DEFAULT true) ENGINE = InnoDB",
    )
    .await?;
    let from = master_status(&mut c).await?;
    let started = Instant::now();
    write(db, small_transactions(rows as i64, &insert_values)).await?;
    let written = started.elapsed().as_secs_f64();
    let to = master_status(&mut c).await?;
    let (files, _) = binlog_range(&mut c, &from, &to).await?;
    println!(
        "{rows} inserts, {TX_ROWS}-row transactions (written in {written:.1} s; binlog {}:{} .. {}:{})",
        from.0, from.1, to.0, to.1
    );

    let (mut raw, mut verbose) = (Vec::new(), Vec::new());
    let (mut only, mut only_cpu, mut only_server) = (Vec::new(), Vec::new(), Vec::new());
    let (mut enc, mut enc_cpu) = (Vec::new(), Vec::new());
    let mut batches = 0;
    let mut kept = Vec::new();
    for i in 0..repeat {
        raw.push(mariadb_binlog(false, &files, from.1, to.1)?);
        verbose.push(mariadb_binlog(true, &files, from.1, to.1)?);
        let r = read_source(db, &from, rows, false, false).await?;
        only.push(r.secs);
        only_cpu.push(r.cpu);
        only_server.push(r.server_cpu);
        batches = r.batches;
        let r = read_source(db, &from, rows, true, i == 0).await?;
        enc.push(r.secs);
        enc_cpu.push(r.cpu);
        if i == 0 {
            kept = r.kept;
        }
    }
    let mut produced = Vec::new();
    let mut produced_cpu = Vec::new();
    for _ in 0..repeat {
        let (s, cpu) = produce(&kept).await?;
        produced.push(s);
        produced_cpu.push(cpu);
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // The least CPU of the runs: the cost with the least interference.
    let least = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    spread("mariadb-binlog (binlog -> /dev/null)", rows, &raw, "");
    spread(
        "mariadb-binlog --verbose (rows decoded -> /dev/null)",
        rows,
        &verbose,
        "",
    );
    spread(
        "source only (MysqlSource.next_batch, no Kafka)",
        rows,
        &only,
        &format!(
            "; CPU {:.2} s per run, least {:.2} s ({:.1} µs/row), server CPU {:.2} s, {batches} batches",
            avg(&only_cpu),
            least(&only_cpu),
            least(&only_cpu) * 1e6 / rows as f64,
            avg(&only_server)
        ),
    );
    spread(
        "source + Avro encode + framing (no Kafka)",
        rows,
        &enc,
        &format!(
            "; CPU {:.2} s per run, least {:.2} s ({:.1} µs/row)",
            avg(&enc_cpu),
            least(&enc_cpu),
            least(&enc_cpu) * 1e6 / rows as f64
        ),
    );
    let bytes: usize = kept.iter().map(|(k, v, _)| k.len() + v.len()).sum();
    spread(
        "produce only (Publisher -> Apache Kafka, 3 partitions, acked)",
        rows,
        &produced,
        &format!(
            "; CPU of this process {:.2} s per run; {:.0} bytes/record (key + value)",
            avg(&produced_cpu),
            bytes as f64 / rows as f64
        ),
    );
    let best = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "  ratios (best runs): source only / raw {:.2}, / --verbose {:.2}; source+Avro / raw {:.2}; produce only / raw {:.2}",
        best(&raw) / best(&only),
        best(&verbose) / best(&only),
        best(&raw) / best(&enc),
        best(&raw) / best(&produced),
    );
    Ok(())
}
