//! What the MySQL/MariaDB benchmarks share: connections to the test
//! server, the workload table's columns, concurrent writers, binlog
//! positions and `mariadb-binlog` as the reference reader.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};

/// Rows per transaction of the small-transaction workloads.
pub const TX_ROWS: i64 = 10;
/// Statements per round trip when writing small transactions.
pub const PER_ROUND_TRIP: usize = 100;
/// Connections writing a workload concurrently.
pub const WRITERS: usize = 4;
/// The workload table's columns.
pub const COLUMNS: &str = "id, name, region_code, income, birth, note, score";

/// Connection options for the test server (127.0.0.1:3306, root).
pub fn opts(db: Option<&str>) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some("root"))
        .prefer_socket(false)
        .db_name(db)
        .init(vec![
            "SET NAMES utf8mb4".to_owned(),
            // No gap locks between writers updating neighbouring ranges.
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_owned(),
        ])
}

/// A connection to the test server, to `db` when given.
pub async fn connect(db: Option<&str>) -> anyhow::Result<Conn> {
    Conn::new(opts(db)).await.context(
        "connect to MariaDB on 127.0.0.1:3306 as root (start it with scripts/services.sh up)",
    )
}

/// Current binlog file and position.
pub async fn master_status(c: &mut Conn) -> anyhow::Result<(String, u64)> {
    let row: Row = c
        .query_first("SHOW MASTER STATUS")
        .await?
        .context("SHOW MASTER STATUS is empty: the binary log is off")?;
    Ok((
        row.get(0).context("SHOW MASTER STATUS: File")?,
        row.get(1).context("SHOW MASTER STATUS: Position")?,
    ))
}

/// The binlog files from `from` to `to` and the bytes between the two
/// positions.
pub async fn binlog_range(
    c: &mut Conn,
    from: &(String, u64),
    to: &(String, u64),
) -> anyhow::Result<(Vec<String>, u64)> {
    let rows: Vec<Row> = c.query("SHOW BINARY LOGS").await?;
    let mut files = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let name: String = row.get(0).context("SHOW BINARY LOGS: Log_name")?;
        let size: u64 = row.get(1).context("SHOW BINARY LOGS: File_size")?;
        // Names are `<base>.<zero-padded index>`: they sort as text.
        if name < from.0 || name > to.0 {
            continue;
        }
        let start = if name == from.0 { from.1 } else { 4 };
        let end = if name == to.0 { to.1 } else { size };
        bytes += end.saturating_sub(start);
        files.push(name);
    }
    if files.first() != Some(&from.0) || files.last() != Some(&to.0) {
        bail!("binlog files {from:?}..{to:?} not all on the server: {files:?}");
    }
    Ok((files, bytes))
}

/// Drops databases of earlier runs whose process is gone.
pub async fn drop_leftovers(admin: &mut Conn, prefix: &str) -> anyhow::Result<()> {
    let pattern = format!("{}\\_%", prefix.replace('_', "\\_"));
    let dbs: Vec<String> = admin
        .exec(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?",
            (pattern,),
        )
        .await?;
    for db in dbs {
        let pid = db.rsplit('_').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            admin
                .query_drop(format!("DROP DATABASE IF EXISTS {db}"))
                .await?;
        }
    }
    Ok(())
}

/// Runs the batches on `WRITERS` connections concurrently (each batch on
/// one connection, in no particular order between connections).
pub async fn write(db: &str, batches: Vec<String>) -> anyhow::Result<()> {
    let queue = Arc::new(Mutex::new(batches.into_iter()));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (queue, db) = (queue.clone(), db.to_owned());
        writers.spawn(async move {
            let mut c = connect(Some(&db)).await?;
            loop {
                let next = queue.lock().expect("lock").next();
                let Some(sql) = next else { break };
                c.query_drop(sql).await?;
            }
            c.disconnect().await?;
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(())
}

/// Autocommit statements of `TX_ROWS` rows each (each its own transaction),
/// `PER_ROUND_TRIP` to a batch.
pub fn small_transactions(rows: i64, statement: &dyn Fn(i64, i64) -> String) -> Vec<String> {
    let mut batches = Vec::new();
    let mut id = 0;
    while id < rows {
        let mut sql = String::new();
        for _ in 0..PER_ROUND_TRIP {
            if id >= rows {
                break;
            }
            sql.push_str(&statement(id + 1, (id + TX_ROWS).min(rows)));
            id += TX_ROWS;
        }
        batches.push(sql);
    }
    batches
}

/// One multi-row INSERT of ids `from..=to`.
pub fn insert_values(from: i64, to: i64) -> String {
    let values: Vec<String> = (from..=to)
        .map(|g| {
            format!(
                "({g}, '居民{g}', '330106', {g} * 0.01, DATE '1990-01-01' + INTERVAL {} DAY, 'note {g}', {g} * 1.5)",
                g % 9000
            )
        })
        .collect();
    format!("INSERT INTO t ({COLUMNS}) VALUES {};", values.join(", "))
}

/// Times `mariadb-binlog` reading the range from the server to /dev/null.
pub fn mariadb_binlog(verbose: bool, files: &[String], from: u64, to: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut cmd = Command::new("mariadb-binlog");
    cmd.args([
        "--read-from-remote-server",
        "--host=127.0.0.1",
        "--port=3306",
        "--user=root",
    ])
    .arg(format!("--start-position={from}"))
    .arg(format!("--stop-position={to}"));
    if verbose {
        cmd.arg("--verbose");
    }
    let out = cmd
        .args(files)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run mariadb-binlog (Debian package mariadb-client)")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "mariadb-binlog failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}
