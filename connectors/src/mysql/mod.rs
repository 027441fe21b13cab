//! MySQL/MariaDB source: an initial consistent snapshot, then the binary
//! log read as a replica (`COM_BINLOG_DUMP`, through mysql_async's binlog
//! stream and mysql_common's event parser).
//!
//! # Server prerequisites (checked at start; each error gives the fix)
//! - `log_bin` on, `binlog_format = ROW`, `binlog_row_image = FULL` (full
//!   before-images: the distributor computes retractions from them), a
//!   non-zero `server_id`.
//! - The feed's user has `REPLICATION SLAVE` and `REPLICATION CLIENT`
//!   (MariaDB 10.5+: `BINLOG MONITOR`) on `*.*` and `SELECT` on the captured
//!   tables; on MySQL also `RELOAD` for the snapshot's brief global read
//!   lock (MariaDB needs no lock).
//! - Captured tables have a primary key; their character data is utf8mb4,
//!   utf8mb3, ascii or latin1.
//! - The user authenticates with `mysql_native_password` (MariaDB's
//!   default) or a cached `caching_sha2_password`: without TLS a server
//!   asking for `mysql_clear_password` or for `caching_sha2_password`'s full
//!   authentication (the password encrypted with a key the server sends) is
//!   refused, with the fix (`connectors/src/connect/mod.rs`).
//!
//! # Example
//! ```toml
//! [[feeds]]
//! type = "mysql"
//! name = "minzheng-my"
//! host = "10.0.0.7"
//! user = "backflow"
//! password_env = "MINZHENG_MY_PASSWORD"
//! sslmode = "verify-full"       # TLS (connect::tls): disable | require | verify-ca | verify-full
//! ssl_ca_file = "/etc/backflow/gov-ca.pem"
//! tables = [{ table = "minzheng.households", dataset = "minzheng.households" }]
//! snapshot = "initial"          # or "never", "always"
//! # server_id = 5401            # unique among the server's replicas (default: from the name)
//! ```
//!
//! # How it stays consistent
//! On first start it opens a transaction `WITH CONSISTENT SNAPSHOT` and
//! reads the binlog position that transaction sees (MariaDB:
//! `binlog_snapshot_file`/`_position`, lock-free; MySQL: under a global read
//! lock held only while the transaction starts), reads every table in
//! primary-key chunks inside it (`op = r`, position = that binlog
//! position), then streams the binlog from exactly that position: no change
//! is missed and none is read twice. Every chunk is a checkpoint
//! (`snapshot:{...}`), so a feed killed mid-snapshot resumes after its last
//! acknowledged chunk; rows it then reads are read as they are at that time
//! but keep the snapshot's position, and the stream replays every change
//! since that position after them, so the last version of each row wins.
//!
//! While streaming, a transaction's changes carry the position of its start
//! (`file:pos`, the position zero-padded so positions sort as text) and its
//! order inside the transaction; its commit (`XID`, or `COMMIT` for
//! non-transactional tables) is a checkpoint `file:pos` after which a
//! restart resumes. MariaDB GTIDs (`domain-server-seq`) and MySQL GTIDs
//! (`uuid:gno`) are carried as the transaction id; resuming is by file and
//! position, which works with GTIDs on or off.
//!
//! The server does not keep binlog files for a replica: `expire_logs_days`
//! (MariaDB) / `binlog_expire_logs_seconds` (MySQL) must be longer than the
//! longest outage of the feed. A position whose file was purged is an error
//! with the way out (`backflow source --feed NAME --resnapshot`);
//! `backflow_source_lag_bytes` shows the binlog written since the last
//! acknowledged position. Before a snapshot is read, the runtime hands the
//! source the rows its raw topic holds; keys the table no longer has
//! (deleted while nothing read the binlog) become deletes.
//!
//! # Table changes
//! `ALTER TABLE` of a captured table (seen in the binlog) describes the
//! table again; the runtime registers the new schema version (`ADD COLUMN`
//! with a nullable column or a constant default is a compatible change).
//! Row events logged before an `ADD COLUMN` but read after it (a feed that
//! was behind) are read with the columns they have. `TRUNCATE` cannot be
//! expressed in a compacted topic: it is not shared, and a record in the
//! feed's dead-letter topic names the table and the way out.
//!
//! # Types
//! | MySQL | shared as |
//! | --- | --- |
//! | `TINYINT(1)`, `BIT(1)` | boolean (other TINYINT(1) values are dead-lettered) |
//! | `TINYINT`, `SMALLINT`, `MEDIUMINT`, `INT`, `BIGINT` (unsigned widened) | smallint / int / bigint; `BIGINT UNSIGNED` as decimal(20,0) |
//! | `DECIMAL(p,s)` | decimal(p,s) |
//! | `FLOAT`, `DOUBLE` | real, double |
//! | `CHAR(n)`, `VARCHAR(n)`, `*TEXT` | char(n), varchar(n), text |
//! | `BINARY`, `VARBINARY`, `*BLOB` | bytes |
//! | `DATE`, `DATETIME(p)`, `TIME(p)` | date, timestamp (no zone), time |
//! | `TIMESTAMP(p)` | timestamptz (UTC) |
//! | `YEAR` | smallint |
//! | `JSON` (MariaDB: LONGTEXT with `json_valid`) | json |
//! | `ENUM`, `SET` | varchar (the label), text (comma-separated members) |
//!
//! Zero dates (`0000-00-00`) and TIME values outside a day cannot be
//! shared and go to the dead-letter topic with the column named.
//!
//! # Metrics
//! The runtime counts events by op (`r` = snapshot rows), dead letters and
//! restarts from what this source yields, and exports its backlog (see
//! above) as `backflow_source_lag_bytes`.

pub(crate) mod catalog;
mod rows;

use crate::now_ms;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backflow_schemas::{ChangeEvent, Datum, Op, Row, Snapshot, TableDesc, TransactionInfo};
use futures::Stream;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Value};
use serde::{Deserialize, Serialize};

use self::catalog::{ident, Described, Origin};
use crate::connect::{self, mysql::MysqlTarget};
use crate::postgres::SnapshotMode;
use crate::source::Provenance;
use crate::{
    ConnectorError, Position, RejectedRecord, Source, SourceBatch, SourceGauges, SourceRecord,
};

/// One captured table and the dataset it feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlTableConfig {
    /// `database.table` (the database defaults to the feed's `database`).
    pub table: String,
    /// Dataset id `<department>.<name>`.
    pub dataset: String,
}

/// Configuration of a MySQL/MariaDB feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// Feed name.
    pub name: String,
    /// Host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User (needs REPLICATION SLAVE and REPLICATION CLIENT).
    pub user: String,
    /// Password, resolved by the runtime from `password_env` or
    /// `password_file`; never logged.
    #[serde(skip)]
    pub password: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<String>,
    /// TLS to the server: `"disable"` (default), `"require"`,
    /// `"verify-ca"` or `"verify-full"` (see `connect::tls`).
    #[serde(default)]
    pub sslmode: crate::connect::tls::SslMode,
    /// PEM file of the CAs that sign the server's certificate (instead of
    /// the system's), for `verify-ca` and `verify-full`.
    #[serde(default)]
    pub ssl_ca_file: Option<String>,
    /// Database of tables named without one.
    #[serde(default)]
    pub database: Option<String>,
    /// Captured tables.
    pub tables: Vec<MysqlTableConfig>,
    /// Server id this replica announces (unique among the server's
    /// replicas); default derived from the feed name.
    #[serde(default)]
    pub server_id: Option<u32>,
    /// Initial snapshot mode.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows per snapshot chunk.
    #[serde(default = "default_chunk")]
    pub snapshot_chunk_rows: usize,
}

impl MysqlSourceConfig {
    /// The TLS settings of this configuration's connections.
    pub fn tls(&self) -> crate::connect::tls::DbTls {
        crate::connect::tls::DbTls::new(self.sslmode, self.ssl_ca_file.as_deref())
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    3306
}
fn default_chunk() -> usize {
    10_000
}

impl MysqlSourceConfig {
    /// The server id announced to the server: configured, or a stable
    /// value in 1,000,000..2,000,000,000 derived from the feed name.
    pub fn server_id(&self) -> u32 {
        self.server_id.unwrap_or_else(|| {
            // FNV-1a: stable across builds and platforms.
            let h = self.name.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            1_000_000 + h % 1_999_000_000
        })
    }

    /// The server and login of every connection of the feed.
    fn connect_target(&self) -> MysqlTarget {
        MysqlTarget {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            database: None,
            init: vec![
                "SET time_zone = '+00:00'".to_owned(),
                "SET NAMES utf8mb4".to_owned(),
            ],
            tls: self.tls(),
        }
    }
}

/// A binlog position that sorts as text: `file:pos`, pos zero-padded.
pub fn binlog_position(file: &str, pos: u64) -> Position {
    Position::from(format!("{file}:{pos:020}"))
}

fn parse_binlog_position(p: &str) -> Result<(String, u64), ConnectorError> {
    p.rsplit_once(':')
        .and_then(|(f, n)| Some((f.to_owned(), n.parse().ok()?)))
        .filter(|(f, _)| !f.is_empty())
        .ok_or_else(|| {
            ConnectorError::definite(format!(
                "{p:?} is not a binlog position (file:pos); take a new snapshot with `backflow source --resnapshot`"
            ))
        })
}

/// How far the initial snapshot got (see the PostgreSQL source: the same
/// scheme with a binlog position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotProgress {
    /// Binlog file and position the snapshot is consistent with.
    file: String,
    pos: u64,
    /// Tables (`db.table`) read completely.
    done: Vec<String>,
    /// The table being read and the last primary key read (SQL literals).
    current: Option<(String, Vec<String>)>,
}

impl SnapshotProgress {
    fn position(&self) -> Position {
        crate::source::snapshot_checkpoint(self)
    }
}

/// What a stored checkpoint says (streaming: binlog file and position).
type Resume = crate::source::Resume<SnapshotProgress, (String, u64)>;

/// A table version: the shared description and how to read its columns.
struct Version {
    desc: Arc<TableDesc>,
    kinds: Arc<Vec<catalog::Kind>>,
}

impl Version {
    fn new(d: Described) -> Self {
        Self {
            desc: Arc::new(d.desc),
            kinds: Arc::new(d.kinds),
        }
    }
}

struct Captured {
    config: MysqlTableConfig,
    /// The `source` its events share.
    provenance: Provenance,
    current: Version,
    /// Versions with fewer columns (row events logged before an ADD
    /// COLUMN), by column count.
    older: HashMap<usize, Version>,
}

struct SnapshotRead {
    conn: Conn,
    tables: VecDeque<(String, String)>,
    after: Option<Vec<String>>,
    done: Vec<String>,
    file: String,
    pos: u64,
    started: Instant,
    rows: u64,
    estimate: u64,
    last_log: Instant,
}

struct Tx {
    /// Position of the transaction's start (also its events'
    /// `source.position`).
    position: Position,
    id: Arc<str>,
    gtid: Option<Arc<str>>,
    order: i64,
    /// A MariaDB GTID flagged standalone: one statement (DDL), no COMMIT.
    standalone: bool,
}

/// Seconds without any binlog event (the server sends heartbeats every
/// few seconds when idle) before the connection is taken for dead.
const SILENCE: Duration = Duration::from_secs(30);
/// Heartbeat period asked of the server, ns.
const HEARTBEAT_NS: u64 = 5_000_000_000;
/// MariaDB event types mysql_common does not parse.
const MARIADB_GTID_EVENT: u8 = 162;

/// The MySQL/MariaDB source.
pub struct MysqlSource {
    config: MysqlSourceConfig,
    node: String,
    default_schema: String,
    mariadb: bool,
    /// For describing tables again after DDL.
    sql: Option<Conn>,
    tables: HashMap<(String, String), Captured>,
    order: Vec<(String, String)>,
    gauges: Arc<SourceGauges>,
    /// Last acknowledged binlog position, for the backlog gauge.
    acked: Arc<Mutex<Option<(String, u64)>>>,
    backlog_task: Option<tokio::task::JoinHandle<()>>,
    snapshot: Option<SnapshotRead>,
    /// Where streaming starts once the snapshot is read.
    stream_from: Option<(String, u64)>,
    stream: Option<BinlogStream>,
    file: String,
    tx: Option<Tx>,
    /// A MySQL GTID seen before its transaction's BEGIN.
    pending_gtid: Option<String>,
}

impl MysqlSource {
    /// A source for this feed, capturing for node `node`.
    pub fn new(config: MysqlSourceConfig, node: impl Into<String>) -> Self {
        let default_schema = config.database.clone().unwrap_or_default();
        Self {
            config,
            node: node.into(),
            default_schema,
            mariadb: false,
            sql: None,
            tables: HashMap::new(),
            order: Vec::new(),
            gauges: Arc::default(),
            acked: Arc::default(),
            backlog_task: None,
            snapshot: None,
            stream_from: None,
            stream: None,
            file: String::new(),
            tx: None,
            pending_gtid: None,
        }
    }

    async fn connect(&self) -> Result<Conn, ConnectorError> {
        connect::mysql::connect(&self.config.connect_target(), connect::mysql::login_error).await
    }

    fn provenance(&self, desc: &TableDesc) -> Provenance {
        Provenance::new(
            "mysql",
            &self.config.name,
            &self.node,
            &desc.schema,
            None,
            &desc.name,
        )
    }

    /// The server's current binlog position.
    async fn master_position(conn: &mut Conn) -> Result<(String, u64), ConnectorError> {
        for stmt in ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"] {
            if let Ok(Some(mut row)) = conn.query_first::<mysql_async::Row, _>(stmt).await {
                let file: Option<String> = row.take(0);
                let pos: Option<u64> = row.take(1);
                if let (Some(f), Some(p)) = (file, pos) {
                    return Ok((f, p));
                }
            }
        }
        Err(ConnectorError::definite(
            "cannot read the server's binlog position (SHOW MASTER STATUS returned nothing): is log_bin on, and does the feed's user have REPLICATION CLIENT?",
        ))
    }

    /// Opens the snapshot transaction and returns the binlog position it
    /// is consistent with.
    async fn begin_snapshot(&self, conn: &mut Conn) -> Result<(String, u64), ConnectorError> {
        let fail = |what: &str, e: mysql_async::Error| {
            ConnectorError::transient(format!("{what} for the snapshot: {e}"))
        };
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(|e| fail("setting REPEATABLE READ", e))?;
        if self.mariadb {
            conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(|e| fail("starting a consistent snapshot", e))?;
            let rows: Vec<(String, String)> = conn
                .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
                .await
                .map_err(|e| fail("reading binlog_snapshot_file/position", e))?;
            let get = |n: &str| {
                rows.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
            };
            let file = get("binlog_snapshot_file").filter(|f| !f.is_empty());
            let pos = get("binlog_snapshot_position").and_then(|p| p.parse().ok());
            match (file, pos) {
                (Some(f), Some(p)) => Ok((f, p)),
                _ => Err(ConnectorError::definite(
                    "the server did not report binlog_snapshot_file/position; is log_bin on?",
                )),
            }
        } else {
            conn.query_drop("FLUSH TABLES WITH READ LOCK")
                .await
                .map_err(|e| {
                    ConnectorError::definite(format!(
                        "cannot take the brief global read lock the snapshot needs on MySQL ({e}); \
                         GRANT RELOAD ON *.* TO the feed's user, or start the feed with snapshot = \"never\""
                    ))
                })?;
            let started = conn
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                .await
                .map_err(|e| fail("starting a consistent snapshot", e));
            let pos = match started {
                Ok(()) => Self::master_position(conn).await,
                Err(e) => Err(e),
            };
            let _ = conn.query_drop("UNLOCK TABLES").await;
            pos
        }
    }

    /// Reads the next snapshot chunk; `None` when there is no snapshot.
    async fn snapshot_chunk(&mut self, max: usize) -> Result<Option<SourceBatch>, ConnectorError> {
        let Some(snap) = self.snapshot.as_mut() else {
            return Ok(None);
        };
        let Some(key) = snap.tables.front().cloned() else {
            // Nothing (left) to read.
            self.finish_snapshot().await;
            return Ok(Some(SourceBatch {
                checkpoint: self
                    .stream_from
                    .as_ref()
                    .map(|(f, p)| binlog_position(f, *p)),
                ..SourceBatch::default()
            }));
        };
        let captured = &self.tables[&key];
        let desc = captured.current.desc.clone();
        let kinds = captured.current.kinds.clone();
        let limit = max.min(self.config.snapshot_chunk_rows).max(1);
        let cols: Vec<String> = desc.columns.iter().map(|c| ident(&c.name)).collect();
        let keys: Vec<String> = desc.primary_key.iter().map(|k| ident(k)).collect();
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            cols.join(", "),
            ident(&desc.schema),
            ident(&desc.name)
        );
        if let Some(after) = &snap.after {
            sql.push_str(&format!(
                " WHERE ({}) > ({})",
                keys.join(", "),
                after.join(", ")
            ));
        }
        // One more than the chunk: whether the table has more rows is known
        // now, so the last snapshot row can be marked as such.
        sql.push_str(&format!(
            " ORDER BY {} LIMIT {}",
            keys.join(", "),
            limit + 1
        ));
        let mut rows: Vec<mysql_async::Row> = snap.conn.exec(sql, ()).await.map_err(|e| {
            ConnectorError::transient(format!(
                "snapshot read of {} failed: {e}",
                desc.qualified_name()
            ))
        })?;
        let key_idx: Vec<usize> = desc
            .primary_key
            .iter()
            .filter_map(|k| desc.column(k).map(|(i, _)| i))
            .collect();
        if rows.len() <= limit {
            snap.tables.pop_front();
            snap.after = None;
            snap.done.push(desc.qualified_name());
        } else if let Some(last) = {
            rows.truncate(limit);
            rows.last()
        } {
            snap.after = Some(
                key_idx
                    .iter()
                    .map(|i| {
                        last.as_ref(*i)
                            .map(|v| v.as_sql(false))
                            .unwrap_or_else(|| "NULL".into())
                    })
                    .collect(),
            );
        }
        snap.rows += rows.len() as u64;
        self.gauges
            .snapshot_rows
            .store(snap.rows, Ordering::Relaxed);
        if snap.last_log.elapsed() >= Duration::from_secs(5) {
            snap.last_log = Instant::now();
            let secs = snap.started.elapsed().as_secs_f64().max(0.001);
            let rate = snap.rows as f64 / secs;
            let left = snap.estimate.saturating_sub(snap.rows) as f64;
            tracing::info!(
                feed = %self.config.name,
                rows_done = snap.rows,
                rows_estimated = snap.estimate,
                rows_per_second = rate.round(),
                eta_seconds = (left / rate.max(1.0)).round(),
                "snapshot progress"
            );
        }
        let position = binlog_position(&snap.file, snap.pos);
        let checkpoint = SnapshotProgress {
            file: snap.file.clone(),
            pos: snap.pos,
            done: snap.done.clone(),
            current: snap
                .after
                .clone()
                .map(|after| (desc.qualified_name(), after)),
        }
        .position();
        let finished = snap.tables.is_empty();
        let ts = now_ms();
        let mut batch = SourceBatch {
            checkpoint: Some(checkpoint),
            ..SourceBatch::default()
        };
        let provenance = self.provenance(&desc);
        for r in rows {
            match build_row(&desc, &kinds, r.unwrap(), Origin::Query) {
                Ok(after) => batch.records.push(SourceRecord {
                    table: desc.clone(),
                    event: ChangeEvent {
                        key: desc.key_of(&after),
                        before: None,
                        after: Some(after),
                        source: provenance.info(ts, Snapshot::True, position.0.clone(), None),
                        op: Op::Read,
                        ts_ms: Some(ts),
                        transaction: None,
                    },
                    position: position.clone(),
                }),
                Err(reason) => batch.rejected.push(RejectedRecord {
                    table: desc.qualified_name(),
                    position: position.clone(),
                    reason,
                }),
            }
        }
        if finished {
            if let Some(last) = batch.records.last_mut() {
                last.event.source.snapshot = Snapshot::Last;
            }
            // End the snapshot transaction at once: it holds metadata locks
            // that would block DDL on the captured tables.
            self.finish_snapshot().await;
            batch.checkpoint = Some(position);
        }
        Ok(Some(batch))
    }

    async fn finish_snapshot(&mut self) {
        if let Some(mut snap) = self.snapshot.take() {
            let _ = snap.conn.query_drop("COMMIT").await;
            let _ = snap.conn.disconnect().await;
            self.gauges.snapshot_running.store(false, Ordering::Relaxed);
            tracing::info!(
                feed = %self.config.name,
                rows = snap.rows,
                seconds = snap.started.elapsed().as_secs_f64(),
                "snapshot complete; streaming the binlog"
            );
        }
    }

    /// Connects the binlog stream at `file:pos`.
    async fn open_stream(&mut self, file: &str, pos: u64) -> Result<(), ConnectorError> {
        let mut conn = self.connect().await?;
        // MariaDB: send GTID events (not BEGIN queries) so transactions
        // carry their GTID. Heartbeats let a dead connection be noticed.
        if self.mariadb {
            conn.query_drop("SET @mariadb_slave_capability = 4")
                .await
                .map_err(|e| ConnectorError::transient(format!("binlog connection: {e}")))?;
        }
        conn.query_drop(format!("SET @master_heartbeat_period = {HEARTBEAT_NS}"))
            .await
            .map_err(|e| ConnectorError::transient(format!("binlog connection: {e}")))?;
        let stream = conn
            .get_binlog_stream(
                BinlogStreamRequest::new(self.config.server_id())
                    .with_filename(file.as_bytes())
                    .with_pos(pos),
            )
            .await
            .map_err(|e| {
                ConnectorError::transient(format!(
                    "cannot read the binlog from {file}:{pos} as replica server_id {}: {e}; \
                     the user needs REPLICATION SLAVE, and no other replica may use the same \
                     server_id (set `server_id` in the feed)",
                    self.config.server_id()
                ))
            })?;
        tracing::info!(feed = %self.config.name, file, pos, server_id = self.config.server_id(), "reading the binlog");
        self.file = file.to_owned();
        self.stream = Some(stream);
        Ok(())
    }

    /// The table version matching a row event with `columns` columns.
    async fn version_for(
        &mut self,
        key: &(String, String),
        columns: usize,
    ) -> Result<(Arc<TableDesc>, Arc<Vec<catalog::Kind>>), ConnectorError> {
        let have = self.tables[key].current.desc.columns.len();
        if columns > have {
            // The table grew and the ALTER was not seen (or came later):
            // describe it again.
            self.redescribe(key).await?;
        }
        let captured = self.tables.get_mut(key).expect("captured");
        let current = &captured.current;
        if columns == current.desc.columns.len() {
            return Ok((current.desc.clone(), current.kinds.clone()));
        }
        if columns > current.desc.columns.len() {
            return Err(ConnectorError::definite(format!(
                "the binlog has {columns} columns for {} but the table now has {}: it changed in \
                 a way the source cannot follow; take a new snapshot (`backflow source --feed {} --resnapshot`)",
                current.desc.qualified_name(),
                current.desc.columns.len(),
                self.config.name
            )));
        }
        if let Some(v) = captured.older.get(&columns) {
            return Ok((v.desc.clone(), v.kinds.clone()));
        }
        // Logged before an ADD COLUMN: the first `columns` columns.
        let mut desc = current.desc.as_ref().clone();
        desc.columns.truncate(columns);
        desc.validate_captured().map_err(|e| {
            ConnectorError::definite(format!(
                "a row event of {} has {columns} columns, fewer than the table has now, and \
                 cannot be read with them ({e}); take a new snapshot (--resnapshot)",
                current.desc.qualified_name()
            ))
        })?;
        let kinds: Vec<catalog::Kind> = current.kinds[..columns].to_vec();
        let v = Version {
            desc: Arc::new(desc),
            kinds: Arc::new(kinds),
        };
        let out = (v.desc.clone(), v.kinds.clone());
        captured.older.insert(columns, v);
        Ok(out)
    }

    async fn redescribe(&mut self, key: &(String, String)) -> Result<(), ConnectorError> {
        let dataset = self.tables[key].config.dataset.clone();
        let sql = self
            .sql
            .as_mut()
            .ok_or_else(|| ConnectorError::definite("source not started"))?;
        let d = catalog::describe(sql, &key.0, &key.1, &dataset).await?;
        let captured = self.tables.get_mut(key).expect("captured");
        if d.desc != *captured.current.desc {
            tracing::info!(table = %d.desc.qualified_name(), columns = d.desc.columns.len(), "table definition changed");
            captured.current = Version::new(d);
            captured.older.clear();
        }
        Ok(())
    }

    /// A statement logged as a query (DDL, or BEGIN/COMMIT).
    async fn on_ddl(
        &mut self,
        schema: &str,
        query: &str,
        position: &Position,
        batch: &mut SourceBatch,
    ) -> Result<(), ConnectorError> {
        let Some((verb, table)) = ddl_target(query) else {
            return Ok(());
        };
        let key = match table.split_once('.') {
            Some((s, t)) => (s.to_owned(), t.to_owned()),
            None => (schema.to_owned(), table.clone()),
        };
        if !self.tables.contains_key(&key) {
            return Ok(());
        }
        let name = format!("{}.{}", key.0, key.1);
        match verb {
            Ddl::Alter => self.redescribe(&key).await?,
            Ddl::Truncate => {
                tracing::warn!(table = %name, "TRUNCATE is not shared: subscribers keep the rows");
                batch.rejected.push(RejectedRecord {
                    reason: format!(
                        "TRUNCATE of {name} is not shared: raw topics and subscribers keep the rows. \
                         Delete the rows instead (DELETE FROM {name}), or take a new snapshot \
                         (`backflow source --feed {} --resnapshot`) and remove the rows on the subscribers",
                        self.config.name
                    ),
                    table: name,
                    position: position.clone(),
                });
            }
            Ddl::Drop => {
                tracing::warn!(table = %name, "captured table dropped or renamed; its rows stay shared until deleted");
            }
        }
        Ok(())
    }

    fn start_tx(&mut self, end_pos: u64, gtid: Option<String>, standalone: bool) {
        let position = binlog_position(&self.file, end_pos);
        let gtid: Option<Arc<str>> = gtid.map(Into::into);
        self.tx = Some(Tx {
            id: gtid.clone().unwrap_or_else(|| position.0.clone()),
            position,
            gtid,
            order: 0,
            standalone,
        });
    }
}

/// The table a DDL statement changes, when it is one that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ddl {
    Alter,
    Truncate,
    Drop,
}

/// `(what, table)` of `ALTER TABLE`, `TRUNCATE [TABLE]`, `DROP TABLE`,
/// `RENAME TABLE`; the table as written (`db.t` or `t`, unquoted).
fn ddl_target(query: &str) -> Option<(Ddl, String)> {
    let mut q = query.trim_start();
    // Leading comments (`/* ... */`, `-- ...`, `# ...`).
    loop {
        if let Some(rest) = q.strip_prefix("/*") {
            q = rest.split_once("*/").map(|(_, r)| r)?.trim_start();
        } else if q.starts_with("--") || q.starts_with('#') {
            q = q.split_once('\n').map(|(_, r)| r)?.trim_start();
        } else {
            break;
        }
    }
    let mut words = tokens(q).into_iter();
    let first = words.next()?.to_ascii_lowercase();
    let skip = [
        "online",
        "offline",
        "ignore",
        "table",
        "if",
        "exists",
        "temporary",
        "no_write_to_binlog",
        "local",
    ];
    let verb = match first.as_str() {
        "alter" => Ddl::Alter,
        "truncate" => Ddl::Truncate,
        "drop" | "rename" => Ddl::Drop,
        _ => return None,
    };
    let mut saw_table = verb == Ddl::Truncate;
    for w in words {
        let lw = w.to_ascii_lowercase();
        if lw == "table" {
            saw_table = true;
            continue;
        }
        if skip.contains(&lw.as_str()) {
            continue;
        }
        return saw_table.then_some((verb, w));
    }
    None
}

/// Words of a statement, with `quoted`.`names` joined and unquoted.
fn tokens(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' => {
                while let Some(n) = chars.next() {
                    if n == '`' {
                        if chars.peek() == Some(&'`') {
                            chars.next();
                            cur.push('`');
                        } else {
                            break;
                        }
                    } else {
                        cur.push(n);
                    }
                }
            }
            c if c.is_whitespace() || c == '(' || c == ',' || c == ';' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                if out.len() > 8 {
                    break;
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The file a rotate event names. The server's first (fake) rotate event
/// arrives before the format description that announces checksums, so
/// its checksum can still be attached to the name: binlog names end with
/// `.<digits>`, the checksum bytes after them are dropped.
fn rotate_name(raw: &[u8]) -> String {
    let ends_with_index = |b: &[u8]| {
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        digits > 0 && b.len() > digits && b[b.len() - digits - 1] == b'.'
    };
    let name = if !ends_with_index(raw) && raw.len() > 4 && ends_with_index(&raw[..raw.len() - 4]) {
        &raw[..raw.len() - 4]
    } else {
        raw
    };
    String::from_utf8_lossy(name).into_owned()
}

/// Builds a row from a table version's values; the error names the column.
fn build_row(
    desc: &TableDesc,
    kinds: &[catalog::Kind],
    values: Vec<Value>,
    origin: Origin,
) -> Result<Row, String> {
    if values.len() != desc.columns.len() {
        return Err(format!(
            "{} values for the {} columns of {}",
            values.len(),
            desc.columns.len(),
            desc.qualified_name()
        ));
    }
    values
        .into_iter()
        .zip(desc.columns.iter().zip(kinds))
        .map(|(v, (c, k))| {
            catalog::datum(k, &c.sql_type, v, origin).map_err(|e| format!("column {}: {e}", c.name))
        })
        .collect::<Result<Vec<Datum>, _>>()
        .map(Row)
}

#[async_trait]
impl Source for MysqlSource {
    async fn start(
        &mut self,
        position: Option<Position>,
    ) -> Result<Vec<Arc<TableDesc>>, ConnectorError> {
        let resume = Resume::parse(position.as_ref(), |p| parse_binlog_position(&p.0))?;
        let mut sql = self.connect().await?;
        self.mariadb = catalog::is_mariadb(&mut sql).await?;
        catalog::check_binlog(&mut sql).await?;
        catalog::check_privileges(&mut sql, &self.config.user).await?;
        let mut descs = Vec::new();
        for t in &self.config.tables {
            let (schema, table) = catalog::split(t, &self.default_schema);
            if schema.is_empty() {
                return Err(ConnectorError::definite(format!(
                    "table {table:?} of feed {} names no database: write it as database.table, or set `database`",
                    self.config.name
                )));
            }
            let d = catalog::describe(&mut sql, schema, table, &t.dataset).await?;
            let key = (schema.to_owned(), table.to_owned());
            let v = Version::new(d);
            descs.push(v.desc.clone());
            self.order.push(key.clone());
            self.tables.insert(
                key,
                Captured {
                    config: t.clone(),
                    provenance: self.provenance(&v.desc),
                    current: v,
                    older: HashMap::new(),
                },
            );
        }
        let logs = catalog::binary_logs(&mut sql).await?;
        let purged = |file: &str, reached: &str| {
            ConnectorError::definite(format!(
                "binlog file {file}, where feed {} {reached}, is no longer on the server (purged by \
                 expire_logs_days / binlog_expire_logs_seconds, or PURGE BINARY LOGS): the changes \
                 since then are gone, so the feed cannot resume. Take a new snapshot: `backflow source \
                 --config FILE --feed {} --resnapshot` (or POST /api/feeds/{}/restart?resnapshot=true), \
                 and keep binlogs longer than the longest outage",
                self.config.name, self.config.name, self.config.name
            ))
        };
        let has = |file: &str| logs.iter().any(|(f, _)| f == file);
        // (snapshot position, progress to go on from, fresh consistent snapshot)
        let mut snapshot_from: Option<(String, u64, Option<SnapshotProgress>)> = None;
        match resume {
            Resume::Nothing if self.config.snapshot == SnapshotMode::Never => {
                let (f, p) = Self::master_position(&mut sql).await?;
                self.stream_from = Some((f, p));
            }
            Resume::Nothing => snapshot_from = Some((String::new(), 0, None)),
            Resume::Snapshot(progress) => {
                if !has(&progress.file) {
                    return Err(purged(&progress.file, "was reading its initial snapshot"));
                }
                tracing::info!(
                    feed = %self.config.name,
                    tables_done = progress.done.len(),
                    table = progress.current.as_ref().map(|c| c.0.as_str()).unwrap_or("(next)"),
                    "resuming the snapshot after its last finished chunk"
                );
                snapshot_from = Some((progress.file.clone(), progress.pos, Some(progress)));
            }
            Resume::Stream((file, pos)) => {
                if !has(&file) {
                    return Err(purged(&file, &format!("had streamed up to {pos}")));
                }
                if self.config.snapshot == SnapshotMode::Always {
                    snapshot_from = Some((file, pos, None));
                } else {
                    self.stream_from = Some((file, pos));
                }
            }
        }

        if let Some((file, pos, progress)) = snapshot_from {
            let mut conn = self.connect().await?;
            let consistent = self.begin_snapshot(&mut conn).await?;
            // A resumed or repeated snapshot keeps its stored position:
            // the stream replays every change since then after its rows.
            let (file, pos) = if file.is_empty() {
                consistent
            } else {
                (file, pos)
            };
            let (done, mut after) = match &progress {
                Some(p) => (p.done.clone(), p.current.clone()),
                None => (Vec::new(), None),
            };
            let tables: VecDeque<(String, String)> = self
                .order
                .iter()
                .filter(|k| !done.contains(&format!("{}.{}", k.0, k.1)))
                .cloned()
                .collect();
            if after.as_ref().is_some_and(|(t, _)| {
                tables.front().map(|k| format!("{}.{}", k.0, k.1)).as_ref() != Some(t)
            }) {
                after = None;
            }
            let mut estimate = 0u64;
            for (s, t) in &tables {
                let n: Option<Option<u64>> = sql
                    .exec_first(
                        "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                        (s, t),
                    )
                    .await
                    .unwrap_or(None);
                estimate += n.flatten().unwrap_or(0);
            }
            tracing::info!(feed = %self.config.name, tables = tables.len(), rows_estimated = estimate, file = %file, pos, "starting snapshot");
            let g = &self.gauges;
            g.snapshot_rows.store(0, Ordering::Relaxed);
            g.snapshot_rows_estimated.store(estimate, Ordering::Relaxed);
            g.snapshot_started_ms.store(now_ms(), Ordering::Relaxed);
            g.snapshot_running.store(true, Ordering::Relaxed);
            self.stream_from = Some((file.clone(), pos));
            self.snapshot = Some(SnapshotRead {
                conn,
                tables,
                after: after.map(|(_, k)| k),
                done,
                file,
                pos,
                started: Instant::now(),
                rows: 0,
                estimate,
                last_log: Instant::now(),
            });
        } else if let Some((f, p)) = self.stream_from.clone() {
            self.open_stream(&f, p).await?;
        }
        *self.acked.lock().expect("lock") = self.stream_from.clone();
        self.backlog_task = Some(tokio::spawn(watch_backlog(
            self.config.connect_target(),
            self.acked.clone(),
            self.gauges.clone(),
        )));
        self.sql = Some(sql);
        Ok(descs)
    }

    async fn next_batch(&mut self, max: usize) -> Result<SourceBatch, ConnectorError> {
        if let Some(batch) = self.snapshot_chunk(max).await? {
            return Ok(batch);
        }
        if self.stream.is_none() {
            let (f, p) = self
                .stream_from
                .clone()
                .ok_or_else(|| ConnectorError::definite("source not started"))?;
            self.open_stream(&f, p).await?;
        }
        let mut batch = SourceBatch::with_capacity(max);
        loop {
            let stream = self.stream.as_mut().expect("opened above");
            let wait = if batch.checkpoint.is_some() && self.tx.is_none() {
                Duration::from_millis(2)
            } else {
                SILENCE
            };
            let next =
                tokio::time::timeout(wait, poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)))
                    .await;
            let event = match next {
                Err(_) if wait == SILENCE => {
                    return Err(ConnectorError::transient(format!(
                        "no binlog event or heartbeat from the server for {} s; reconnecting",
                        SILENCE.as_secs()
                    )))
                }
                Err(_) => return Ok(batch),
                Ok(None) => return Err(ConnectorError::transient("the binlog stream ended")),
                Ok(Some(Err(e))) => {
                    return Err(ConnectorError::transient(format!(
                        "reading the binlog failed: {e}"
                    )))
                }
                Ok(Some(Ok(e))) => e,
            };
            let header = event.header();
            let end = u64::from(header.log_pos());
            let raw = header.event_type_raw();
            if raw == MARIADB_GTID_EVENT {
                // seq_no (8), domain_id (4), flags (1); FL_STANDALONE = 1.
                let d = event.data();
                if d.len() >= 13 {
                    let seq = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
                    let domain = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
                    let gtid = format!("{domain}-{}-{seq}", header.server_id());
                    self.start_tx(end, Some(gtid), d[12] & 1 != 0);
                }
                continue;
            }
            let data = event.read_data().map_err(|e| {
                ConnectorError::definite(format!(
                    "cannot parse a binlog event at {}:{end}: {e}",
                    self.file
                ))
            })?;
            match data {
                Some(EventData::RotateEvent(r)) => {
                    self.file = rotate_name(r.name_raw());
                    if self.tx.is_none() {
                        batch.checkpoint = Some(binlog_position(&self.file, r.position()));
                    }
                }
                Some(EventData::GtidEvent(g)) => {
                    let sid = g.sid();
                    let hex: String = sid.iter().map(|b| format!("{b:02x}")).collect();
                    self.pending_gtid = Some(format!(
                        "{}-{}-{}-{}-{}:{}",
                        &hex[0..8],
                        &hex[8..12],
                        &hex[12..16],
                        &hex[16..20],
                        &hex[20..32],
                        g.gno()
                    ));
                }
                Some(EventData::QueryEvent(q)) => {
                    let query = q.query();
                    let trimmed = query.trim();
                    if trimmed.eq_ignore_ascii_case("BEGIN") {
                        if self.tx.is_none() {
                            let gtid = self.pending_gtid.take();
                            self.start_tx(end, gtid, false);
                        }
                    } else if trimmed.eq_ignore_ascii_case("COMMIT") {
                        self.tx = None;
                        batch.checkpoint = Some(binlog_position(&self.file, end));
                        if batch.records.len() >= max {
                            return Ok(batch);
                        }
                    } else {
                        let schema = q.schema().into_owned();
                        let query = query.into_owned();
                        let position = self
                            .tx
                            .as_ref()
                            .map(|t| t.position.clone())
                            .unwrap_or_else(|| binlog_position(&self.file, end));
                        self.on_ddl(&schema, &query, &position, &mut batch).await?;
                        // DDL commits implicitly.
                        if self.tx.as_ref().is_none_or(|t| t.standalone) {
                            self.tx = None;
                            self.pending_gtid = None;
                            batch.checkpoint = Some(binlog_position(&self.file, end));
                        }
                    }
                }
                Some(EventData::XidEvent(_)) => {
                    self.tx = None;
                    batch.checkpoint = Some(binlog_position(&self.file, end));
                    if batch.records.len() >= max {
                        return Ok(batch);
                    }
                }
                Some(EventData::RowsEvent(rows)) => {
                    self.on_rows(&rows, header.timestamp(), end, &mut batch)
                        .await?;
                }
                _ => {}
            }
            if self.tx.is_some() && batch.records.len() >= max {
                // A large transaction streams through in bounded batches;
                // no checkpoint until it commits.
                batch.open_transaction = true;
                return Ok(batch);
            }
        }
    }

    async fn acknowledge(&mut self, position: &Position) -> Result<(), ConnectorError> {
        if position.0.starts_with(crate::source::SNAPSHOT_PREFIX) {
            return Ok(());
        }
        let (f, p) = parse_binlog_position(position.as_str())?;
        *self.acked.lock().expect("lock") = Some((f, p));
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ConnectorError> {
        if let Some(s) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.close()).await;
        }
        if let Some(c) = self.sql.take() {
            let _ = c.disconnect().await;
        }
        if let Some(t) = self.backlog_task.take() {
            t.abort();
        }
        Ok(())
    }

    fn gauges(&self) -> Option<Arc<SourceGauges>> {
        Some(self.gauges.clone())
    }

    /// While a snapshot is to be read: once, so that keys the raw topic
    /// holds and the table no longer has are deleted.
    fn topic_state_interval(&self) -> Option<Duration> {
        self.snapshot.as_ref().map(|_| Duration::MAX)
    }

    async fn topic_state(
        &mut self,
        table: &Arc<TableDesc>,
        topic_rows: Vec<Row>,
    ) -> Result<SourceBatch, ConnectorError> {
        let key = (table.schema.clone(), table.name.clone());
        let (Some(snap), Some(captured)) = (self.snapshot.as_mut(), self.tables.get(&key)) else {
            return Ok(SourceBatch::default());
        };
        if topic_rows.is_empty() {
            return Ok(SourceBatch::default());
        }
        let desc = captured.current.desc.clone();
        let kinds = captured.current.kinds.clone();
        let idx: Vec<usize> = desc
            .primary_key
            .iter()
            .filter_map(|k| desc.column(k).map(|(i, _)| i))
            .collect();
        let cols: Vec<String> = desc.primary_key.iter().map(|k| ident(k)).collect();
        let sql = format!(
            "SELECT {} FROM {}.{}",
            cols.join(", "),
            ident(&desc.schema),
            ident(&desc.name)
        );
        let rows: Vec<mysql_async::Row> = snap.conn.exec(sql, ()).await.map_err(|e| {
            ConnectorError::transient(format!(
                "reading the keys of {}: {e}",
                desc.qualified_name()
            ))
        })?;
        let mut current = std::collections::HashSet::with_capacity(rows.len());
        for r in rows {
            let key: Vec<Datum> = r
                .unwrap()
                .into_iter()
                .zip(&idx)
                .map(|(v, i)| {
                    catalog::datum(&kinds[*i], &desc.columns[*i].sql_type, v, Origin::Query)
                        .unwrap_or(Datum::Null)
                })
                .collect();
            current.insert(crate::source::row_bytes(&Row(key)));
        }
        let position = binlog_position(&snap.file, snap.pos);
        let ts = now_ms();
        Ok(crate::source::vanished(
            &self.config.name,
            table,
            topic_rows,
            &current,
            &position,
            || {
                self.provenance(table)
                    .info(ts, Snapshot::True, position.0.clone(), None)
            },
        ))
    }
}

impl MysqlSource {
    async fn on_rows(
        &mut self,
        rows: &RowsEventData<'_>,
        ts_secs: u32,
        end: u64,
        batch: &mut SourceBatch,
    ) -> Result<(), ConnectorError> {
        let stream = self.stream.as_ref().expect("streaming");
        let Some(tme) = stream.get_tme(rows.table_id()) else {
            return Err(ConnectorError::definite(format!(
                "a row event for table id {} without its table map at {}",
                rows.table_id(),
                self.file
            )));
        };
        let key = (
            tme.database_name().into_owned(),
            tme.table_name().into_owned(),
        );
        if !self.tables.contains_key(&key) {
            return Ok(());
        }
        let columns = tme.columns_count() as usize;
        let (desc, kinds) = self.version_for(&key, columns).await?;
        let stream = self.stream.as_ref().expect("streaming");
        let tme = stream.get_tme(rows.table_id()).expect("looked up above");
        let images = rows::rows(rows, tme, &desc, &kinds).map_err(|e| {
            ConnectorError::definite(format!(
                "cannot decode a row event of {}.{} at {}: {e}",
                key.0, key.1, self.file
            ))
        })?;
        // Row events always come inside a transaction; should one not, it
        // is a transaction of its own, at its own position.
        let tx = self.tx.get_or_insert_with(|| Tx {
            position: binlog_position(&self.file, end),
            id: "".into(),
            gtid: None,
            order: 0,
            standalone: false,
        });
        let position = tx.position.clone();
        let provenance = &self.tables[&key].provenance;
        let commit_ms = i64::from(ts_secs) * 1000;
        // When the source read the event (Debezium's envelope `ts_ms`).
        let read_ms = now_ms();
        let op = match rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Op::Create,
            RowsEventData::UpdateRowsEventV1(_)
            | RowsEventData::UpdateRowsEvent(_)
            | RowsEventData::PartialUpdateRowsEvent(_) => Op::Update,
            _ => Op::Delete,
        };
        for (before, after) in images {
            let (before, after) = match (before, after) {
                (Ok(b), Ok(a)) => (b, a),
                (Err(reason), _) | (_, Err(reason)) => {
                    batch.rejected.push(RejectedRecord {
                        table: desc.qualified_name(),
                        position: position.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let tx = self.tx.as_mut().expect("set above");
            let mut push = |op: Op, key: Row, before: Option<Row>, after: Option<Row>| {
                tx.order += 1;
                batch.records.push(SourceRecord {
                    table: desc.clone(),
                    event: ChangeEvent {
                        key,
                        before,
                        after,
                        source: provenance.info(
                            commit_ms,
                            Snapshot::False,
                            position.0.clone(),
                            tx.gtid.clone(),
                        ),
                        op,
                        ts_ms: Some(read_ms),
                        transaction: Some(TransactionInfo {
                            id: tx.id.clone(),
                            total_order: tx.order,
                            data_collection_order: tx.order,
                        }),
                    },
                    position: position.clone(),
                });
            };
            match (op, before, after) {
                (Op::Update, Some(b), Some(a)) => {
                    let (old_key, new_key) = (desc.key_of(&b), desc.key_of(&a));
                    if old_key != new_key {
                        // The primary key changed: the old key is gone.
                        push(Op::Delete, old_key, Some(b), None);
                        push(Op::Create, new_key, None, Some(a));
                    } else {
                        push(Op::Update, new_key, Some(b), Some(a));
                    }
                }
                (Op::Create, _, Some(a)) => push(Op::Create, desc.key_of(&a), None, Some(a)),
                (Op::Delete, Some(b), _) => push(Op::Delete, desc.key_of(&b), Some(b), None),
                _ => batch.rejected.push(RejectedRecord {
                    table: desc.qualified_name(),
                    position: position.clone(),
                    reason: "a row event without the image its operation needs; set binlog_row_image = FULL".into(),
                }),
            }
        }
        Ok(())
    }
}

impl Drop for MysqlSource {
    fn drop(&mut self) {
        if let Some(t) = self.backlog_task.take() {
            t.abort();
        }
    }
}

/// Refreshes the binlog backlog (bytes written after the last acknowledged
/// position) every few seconds.
async fn watch_backlog(
    target: MysqlTarget,
    acked: Arc<Mutex<Option<(String, u64)>>>,
    gauges: Arc<SourceGauges>,
) {
    let mut conn: Option<Conn> = None;
    loop {
        if conn.is_none() {
            conn = connect::mysql::connect(&target, |target, e| {
                ConnectorError::transient(format!("cannot connect to {target}: {e}"))
            })
            .await
            .ok();
        }
        let at = acked.lock().expect("lock").clone();
        let bytes = match (&mut conn, at) {
            (Some(c), Some((f, p))) => match catalog::binary_logs(c).await {
                Ok(logs) => catalog::backlog(&logs, &f, p),
                Err(_) => {
                    conn = None;
                    -1
                }
            },
            _ => -1,
        };
        gauges.backlog_bytes.store(bytes, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_sort_as_text_in_binlog_order() {
        let a = binlog_position("mysql-bin.000001", 900);
        let b = binlog_position("mysql-bin.000001", 10_000);
        let c = binlog_position("mysql-bin.000002", 4);
        assert!(a < b && b < c);
        assert_eq!(
            parse_binlog_position(&b.0).unwrap(),
            ("mysql-bin.000001".to_owned(), 10_000)
        );
        assert!(parse_binlog_position("nonsense").is_err());
    }

    #[test]
    fn rotate_names_lose_a_trailing_checksum() {
        assert_eq!(rotate_name(b"mysql-bin.000001"), "mysql-bin.000001");
        assert_eq!(
            rotate_name(b"mysql-bin.000001\xdc\xa2S\x9a"),
            "mysql-bin.000001"
        );
        assert_eq!(rotate_name(b"binlog.000123"), "binlog.000123");
    }

    #[test]
    fn ddl_targets_are_found_through_quotes_and_comments() {
        assert_eq!(
            ddl_target("ALTER TABLE `db`.`people` ADD COLUMN x int"),
            Some((Ddl::Alter, "db.people".into()))
        );
        assert_eq!(
            ddl_target("/* app */ alter online table if exists people add y int"),
            Some((Ddl::Alter, "people".into()))
        );
        assert_eq!(
            ddl_target("TRUNCATE people"),
            Some((Ddl::Truncate, "people".into()))
        );
        assert_eq!(
            ddl_target("truncate table `a``b`"),
            Some((Ddl::Truncate, "a`b".into()))
        );
        assert_eq!(
            ddl_target("DROP TABLE IF EXISTS t1"),
            Some((Ddl::Drop, "t1".into()))
        );
        assert_eq!(ddl_target("ALTER USER x"), None);
        assert_eq!(ddl_target("CREATE TABLE t (a int)"), None);
    }

    #[test]
    fn server_id_is_stable_and_in_range() {
        let c = |name: &str| MysqlSourceConfig {
            name: name.into(),
            host: default_host(),
            port: 3306,
            user: "u".into(),
            password: None,
            password_env: None,
            password_file: None,
            sslmode: Default::default(),
            ssl_ca_file: None,
            database: None,
            tables: vec![],
            server_id: None,
            snapshot: SnapshotMode::Initial,
            snapshot_chunk_rows: 10,
        };
        let a = c("gongan-my").server_id();
        assert_eq!(a, c("gongan-my").server_id());
        assert_ne!(a, c("minzheng-my").server_id());
        assert!((1_000_000..2_000_000_000).contains(&a));
    }
}
