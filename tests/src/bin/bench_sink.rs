//! Benchmark: how fast the sinks apply upserts, next to the database's own
//! bulk load of the same rows as the limit.
//!
//! For PostgreSQL and MariaDB: N rows (default 1,000,000) applied through
//! the sink in batches (as `backflow subscribe` applies them), first as
//! inserts into an empty table, then as updates of every row; then the same
//! rows bulk-loaded into an empty table with `COPY` (psql `\copy`) or `LOAD
//! DATA LOCAL INFILE` (mariadb client). Prints rows/s and the ratio.
//!
//! Usage: `cargo run --release -p backflow-e2e --bin bench_sink -- [ROWS] [BATCH]`
//! (scripts/bench-sink.sh). Needs PostgreSQL and MariaDB from
//! scripts/services.sh. Measures the sink alone: decoding from Kafka is not
//! in the figures.

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use backflow_connectors::sink::values::timestamp_tz_iso;
use backflow_connectors::{SinkBatch, SinkRecord, TopicOffset};
use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_schemas::{
    ChangeEvent, ColumnDesc, Datum, Decimal, Op, Row, SourceInfo, SqlType, TableDesc,
};

fn columns() -> Vec<ColumnDesc> {
    vec![
        ColumnDesc::new("id", SqlType::BigInt, false),
        ColumnDesc::new("name", SqlType::Varchar { len: Some(64) }, false),
        ColumnDesc::new("region_code", SqlType::Varchar { len: Some(6) }, false),
        ColumnDesc::new(
            "income",
            SqlType::Decimal {
                precision: Some(12),
                scale: Some(2),
            },
            true,
        ),
        ColumnDesc::new("updated_at", SqlType::TimestampTz, false),
        ColumnDesc::new("score", SqlType::Double, true),
    ]
}

fn row(id: i64, round: i64) -> Row {
    Row(vec![
        Datum::Long(id),
        Datum::Text(format!("居民{id}-{round}")),
        Datum::Text(if id % 2 == 0 { "330106" } else { "330102" }.to_owned()),
        Datum::Decimal(Decimal::parse(&format!("{}.{:02}", id % 100_000, id % 100), 2).unwrap()),
        Datum::TimestampTz(1_700_000_000_000_000 + id * 1_000 + round),
        Datum::Double(id as f64 * 0.5),
    ])
}

fn batches(table: &Arc<TableDesc>, rows: i64, batch: i64, round: i64) -> Vec<SinkBatch> {
    let mut out = Vec::new();
    let mut offset = round * rows;
    for start in (1..=rows).step_by(batch as usize) {
        let end = (start + batch - 1).min(rows);
        let records = (start..=end)
            .map(|id| {
                let key = Row(vec![Datum::Long(id)]);
                offset += 1;
                SinkRecord {
                    from: TopicOffset {
                        topic: "bench".into(),
                        partition: 0,
                        offset,
                    },
                    table: table.clone(),
                    key: key.clone(),
                    provenance: Default::default(),
                    event: Some(ChangeEvent {
                        key,
                        before: None,
                        after: Some(row(id, round)),
                        source: SourceInfo {
                            position: format!("{:08X}/{:08X}", round, offset).into(),
                            ..SourceInfo::default()
                        },
                        op: if round == 0 { Op::Read } else { Op::Update },
                        ts_ms: None,
                        transaction: None,
                    }),
                }
            })
            .collect();
        out.push(SinkBatch::of(records));
    }
    out
}

fn csv(rows: i64) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut f = tempfile::Builder::new().suffix(".csv").tempfile()?;
    {
        let mut w = std::io::BufWriter::new(f.as_file_mut());
        for id in 1..=rows {
            let r = row(id, 0);
            let text: Vec<String> =
                r.0.iter()
                    .map(|d| match d {
                        Datum::Long(v) => v.to_string(),
                        Datum::Text(s) => s.clone(),
                        Datum::Decimal(v) => v.to_string(),
                        Datum::TimestampTz(v) => {
                            timestamp_tz_iso(*v).replace('T', " ").replace('Z', "")
                        }
                        Datum::Double(v) => v.to_string(),
                        other => panic!("{other:?}"),
                    })
                    .collect();
            writeln!(w, "{}", text.join(","))?;
        }
    }
    Ok(f)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: i64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let batch: i64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5_000);
    let file = csv(rows)?;
    println!("sink benchmark: {rows} rows, batches of {batch}, 6 columns (bigint, 2 varchar, numeric(12,2), timestamptz, double)");
    for backend in [Backend::Postgres, Backend::Mariadb] {
        let db = SinkDb::create(backend).await?;
        let table = Arc::new(TableDesc {
            dataset: "bench.people".into(),
            schema: db.namespace(),
            name: "people".into(),
            columns: columns(),
            primary_key: vec!["id".into()],
        });
        let mut sink = db.sink("bench");
        let mut figures = Vec::new();
        for (round, label) in [(0, "insert"), (1, "update")] {
            let work = batches(&table, rows, batch, round);
            let t = Instant::now();
            for b in &work {
                sink.apply_batch(b).await?;
            }
            let secs = t.elapsed().as_secs_f64();
            figures.push((label, rows as f64 / secs, secs));
        }
        sink.shutdown().await?;
        // The limit: the database's own bulk load of the same rows.
        let t = Instant::now();
        let path = file.path().display().to_string();
        let status = match backend {
            Backend::Postgres => Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db.name, "-q", "-c"])
                .arg("CREATE TABLE bulk (id bigint PRIMARY KEY, name varchar(64) NOT NULL, region_code varchar(6) NOT NULL, income numeric(12,2), updated_at timestamptz NOT NULL, score double precision)")
                .status()
                .and_then(|_| {
                    Command::new("psql")
                        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db.name, "-q", "-c"])
                        .arg(format!("\\copy bulk FROM '{path}' WITH (FORMAT csv)"))
                        .status()
                })?,
            Backend::Mariadb => Command::new("mariadb")
                .args(["-h", "127.0.0.1", "-u", "root", "--local-infile=1", &db.name, "-e"])
                .arg(format!(
                    "SET time_zone = '+00:00'; CREATE TABLE bulk (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, region_code VARCHAR(6) NOT NULL, income DECIMAL(12,2), updated_at DATETIME(6) NOT NULL, score DOUBLE) CHARACTER SET utf8mb4; LOAD DATA LOCAL INFILE '{path}' INTO TABLE bulk CHARACTER SET utf8mb4 FIELDS TERMINATED BY ','"
                ))
                .status()?,
            Backend::Sqlite => unreachable!(),
        };
        anyhow::ensure!(status.success(), "bulk load failed: {status}");
        let limit = rows as f64 / t.elapsed().as_secs_f64();
        for (label, rate, secs) in &figures {
            println!(
                "{backend:?}: sink {label:>6} {rate:>9.0} rows/s ({secs:.1} s) | bulk load {limit:>9.0} rows/s | ratio {:.2}",
                rate / limit
            );
        }
        db.drop_db().await?;
    }
    Ok(())
}
