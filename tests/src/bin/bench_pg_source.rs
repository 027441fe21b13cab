//! Benchmark of the PostgreSQL feed: rows per second from the WAL into
//! Kafka, against `pg_recvlogical` decoding the same WAL to /dev/null, and
//! the feed process's peak memory. Prints figures; asserts nothing.
//!
//! Three workloads on a 9-column table, each written while the feed is
//! stopped and then read by a fresh feed process (timed from its start
//! until Kafka acknowledged every row) and by `pg_recvlogical` (pgoutput,
//! the same WAL range):
//! 1. INSERTS rows in 10-row transactions,
//! 2. UPDATES rows updated in 10-row transactions,
//! 3. BIG rows inserted in one transaction (peak RSS shows that a large
//!    transaction streams through bounded memory).
//!
//! With `BENCH_PEERS_LIBS` naming the jars of `scripts/peers/pom.xml` (as
//! `scripts/bench-peers.sh` does), Debezium's PostgreSQL connector on a
//! Kafka Connect standalone worker reads the same WAL range from a slot of
//! its own into the same broker, timed the same way (from the worker's
//! start until the broker holds every change), JSON with schemas.
//!
//! Run with `scripts/bench-pg-source.sh [INSERTS [UPDATES [BIG]]]` (release
//! build; defaults 1000000 200000 1000000). Needs the services of
//! `scripts/services.sh up`.

use std::time::{Duration, Instant};

use anyhow::bail;
use backflow_e2e::{create_bench_department, drop_pg_database, unique_name, Node, TestBroker};

const TX_ROWS: i64 = 10;
/// The Debezium of `scripts/peers/pom.xml`.
const DEBEZIUM_VERSION: &str = "3.6.1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: i64| backflow_e2e::bench_arg(i, default);
    let (inserts, updates, big) = (arg(1, 1_000_000)?, arg(2, 200_000)?, arg(3, 1_000_000)?);
    let db = unique_name("bf_bench");
    let client = create_bench_department(&db).await?;

    let peers = backflow_e2e::peers::peers_libs("BENCH_PEERS_LIBS");
    if peers.is_some() {
        // Created with the other slots, before any workload is written.
        client
            .batch_execute(
                "SELECT pg_create_logical_replication_slot('bench_dbz_' || current_database(), 'pgoutput')",
            )
            .await?;
    }
    let peers_state = tempfile::tempdir()?;
    let mut debezium_records = 0;

    let broker = TestBroker::start_for_bench();
    let feed = db.replace('_', "-");
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n[[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\nsnapshot = \"never\"\ntables = [{{ table = \"public.t\", dataset = \"bench.t\" }}]\n",
        broker.bootstrap()
    );
    // First start creates the slot; stop, then write each workload.
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
    let insert_row = |from: i64, to: i64| {
        format!(
            "INSERT INTO t (id, name, region_code, income, birth, note, score)
             SELECT g, '居民' || g, '330106', g * 0.01, DATE '1990-01-01' + (g % 9000), 'note ' || g, g * 1.5
             FROM generate_series({from}, {to}) g;"
        )
    };
    // Many 10-row transactions per round trip; each one its own commit.
    let small_transactions = |rows: i64, statement: &dyn Fn(i64, i64) -> String| {
        let mut batches = Vec::new();
        let mut id = 0;
        while id < rows {
            let mut sql = String::new();
            for _ in 0..100 {
                if id >= rows {
                    break;
                }
                sql.push_str(&format!(
                    "BEGIN; {} COMMIT;",
                    statement(id + 1, (id + TX_ROWS).min(rows))
                ));
                id += TX_ROWS;
            }
            batches.push(sql);
        }
        batches
    };

    let mut results = Vec::new();
    let workloads: Vec<(String, i64, &str, Vec<String>)> = vec![
        (
            format!("{inserts} inserts, {TX_ROWS}-row transactions"),
            inserts,
            "c",
            small_transactions(inserts, &insert_row),
        ),
        (
            format!("{updates} updates, {TX_ROWS}-row transactions"),
            updates,
            "u",
            small_transactions(updates.min(inserts), &|from, to| {
                format!("UPDATE t SET income = income + 1, note = 'changed' WHERE id BETWEEN {from} AND {to};")
            }),
        ),
        (
            format!("{big} inserts in one transaction"),
            big,
            "c",
            vec![format!(
                "BEGIN; {} COMMIT;",
                insert_row(inserts + 1, inserts + big)
            )],
        ),
    ];
    for (name, rows, op, sql) in workloads {
        let started = Instant::now();
        for s in &sql {
            client.batch_execute(s).await?;
        }
        let written = started.elapsed().as_secs_f64();
        let end_lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);

        // backflow: from process start until every row is acknowledged by Kafka.
        let started = Instant::now();
        let node = Node::start_with_config(&config, &[])?;
        let until = Instant::now() + Duration::from_secs(1800);
        loop {
            let (_, metrics) = node.get_ops("/metrics").await.unwrap_or_default();
            let published = backflow_e2e::metric_sum(
                &metrics,
                "backflow_source_events_total",
                &format!("op=\"{op}\""),
            );
            let lag = backflow_e2e::metric_sum(&metrics, "backflow_source_lag_seconds", &feed);
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
        let ours_secs = started.elapsed().as_secs_f64();
        let rss = backflow_e2e::peak_rss_mb(node.pid());
        node.signal("TERM")?;
        let mut node = node;
        node.wait(Duration::from_secs(30))?;

        // pg_recvlogical: the same WAL, decoded by the server the same way, to /dev/null.
        let recv_secs = backflow_e2e::pg_recvlogical_secs(&db, &end_lsn)?;
        // Debezium on Kafka Connect: the same WAL range, its own slot.
        let debezium = match &peers {
            Some(libs) => {
                debezium_records += rows;
                let props = [
                    ("name", "bench-debezium-postgres".to_owned()),
                    (
                        "connector.class",
                        "io.debezium.connector.postgresql.PostgresConnector".to_owned(),
                    ),
                    ("tasks.max", "1".to_owned()),
                    ("database.hostname", "127.0.0.1".to_owned()),
                    ("database.port", "5432".to_owned()),
                    ("database.user", "postgres".to_owned()),
                    ("database.dbname", db.clone()),
                    ("topic.prefix", "dbz".to_owned()),
                    ("plugin.name", "pgoutput".to_owned()),
                    ("slot.name", format!("bench_dbz_{db}")),
                    ("publication.name", "bench_pub".to_owned()),
                    ("publication.autocreate.mode", "disabled".to_owned()),
                    ("snapshot.mode", "no_data".to_owned()),
                    ("table.include.list", "public.t".to_owned()),
                    ("topic.creation.default.replication.factor", "1".to_owned()),
                    ("topic.creation.default.partitions", "1".to_owned()),
                ];
                let started = Instant::now();
                let mut worker = backflow_e2e::peers::ConnectWorker::start(
                    libs,
                    broker.bootstrap(),
                    peers_state.path(),
                    &props,
                )?;
                let first = worker
                    .until_records(
                        broker.bootstrap(),
                        "dbz.public.t",
                        debezium_records,
                        Duration::from_secs(3600),
                    )
                    .await?;
                let secs = started.elapsed().as_secs_f64();
                let streaming = first.elapsed().as_secs_f64();
                let rss = backflow_e2e::peak_rss_mb(worker.pid());
                worker.stop()?;
                Some((secs, streaming, rss))
            }
            None => None,
        };

        let ours = rows as f64 / ours_secs;
        let theirs = rows as f64 / recv_secs;
        println!("{name} (written in {written:.1} s):");
        println!("  backflow (WAL -> Avro -> Apache Kafka broker, acked): {ours_secs:.2} s, {ours:.0} rows/s (includes process start)");
        println!("  pg_recvlogical (WAL -> /dev/null): {recv_secs:.2} s, {theirs:.0} rows/s");
        println!(
            "  ratio {:.2}, backflow peak RSS {rss:.0} MB",
            ours / theirs
        );
        let debezium = debezium.map(|(secs, streaming, rss)| {
            let rate = rows as f64 / secs;
            println!(
                "  Debezium {DEBEZIUM_VERSION} on Kafka Connect, its default settings (WAL -> JSON -> broker): {secs:.2} s, {rate:.0} rows/s \
                 (includes JVM start; {:.0} rows/s from its first record on), peak RSS {rss:.0} MB; backflow / Debezium {:.2}",
                rows as f64 / streaming.max(1e-3),
                ours / rate
            );
            (rate, rss)
        });
        results.push((name, ours, theirs, rss, debezium));
    }
    drop_pg_database(&db).await?;
    println!();
    println!("| workload | backflow rows/s | pg_recvlogical rows/s | ratio | peak RSS MB | Debezium rows/s | backflow / Debezium | Debezium peak RSS MB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, ours, theirs, rss, debezium) in results {
        let (dbz_rate, dbz_ratio, dbz_rss) = match debezium {
            Some((rate, dbz_rss)) => (
                format!("{rate:.0}"),
                format!("{:.1}", ours / rate),
                format!("{dbz_rss:.0}"),
            ),
            None => ("not run".into(), String::new(), String::new()),
        };
        println!(
            "| {name} | {ours:.0} | {theirs:.0} | {:.2} | {rss:.0} | {dbz_rate} | {dbz_ratio} | {dbz_rss} |",
            ours / theirs
        );
    }
    Ok(())
}
