//! PostgreSQL source: an initial consistent snapshot, then logical
//! replication with the built-in `pgoutput` plugin.
//!
//! # Database prerequisites
//! - `wal_level = logical` (checked at start; the error says how to set it).
//! - Captured tables have a primary key and `REPLICA IDENTITY FULL`, so
//!   updates and deletes carry full before-images (`replica_identity = "set"`
//!   sets it, `"require"` only checks).
//! - The user has `REPLICATION` (or is superuser), `SELECT` on the tables,
//!   and `CREATE` on the database for the publication.
//! - The server authenticates the user with SCRAM-SHA-256 (`scram-sha-256`
//!   in pg_hba.conf, replication lines included) or without a password
//!   (trust, peer): a server that asks for the password in clear text or as
//!   MD5 is refused, with the fix (`connectors/src/connect/mod.rs`).
//!
//! # Example
//! ```toml
//! [[feeds]]
//! type = "postgres"
//! name = "gongan-pg"
//! host = "10.0.0.5"
//! user = "backflow"
//! password_env = "GONGAN_PG_PASSWORD"
//! sslmode = "verify-full"       # TLS (connect::tls): disable | require | verify-ca | verify-full
//! ssl_ca_file = "/etc/backflow/gov-ca.pem"
//! database = "gongan"
//! tables = [{ table = "public.population", dataset = "gongan.population" }]
//! snapshot = "initial"          # or "never", "always"
//! ```
//!
//! # How it stays consistent
//! On first start it creates the replication slot on a replication
//! connection with an exported snapshot, reads every table inside that very
//! snapshot (primary-key chunks, `op = r`), then streams from the slot's
//! consistent point: no change is missed and none is read twice. The slot's
//! confirmed position advances only when the runtime acknowledges a
//! checkpoint (after Kafka acknowledged everything before it), so after a
//! crash streaming resumes from the last acknowledged transaction. The
//! runtime passes the last acknowledged checkpoint to [`Source::start`].
//!
//! Every snapshot chunk is a checkpoint too (`snapshot:{...}`: the tables
//! done and the last key read). A feed killed mid-snapshot resumes after its
//! last acknowledged chunk; the rows it still reads are read as they are
//! then (the exported snapshot died with the connection) but keep the
//! slot's consistent point as their position, and the stream replays every
//! change since that point after them, so the last version of each row
//! wins. When the slot exists but nothing was ever acknowledged, the
//! snapshot is read again from the start.
//!
//! A slot that is missing although the feed recorded a position, or that the
//! server invalidated, is an error: changes may be gone. The way out is
//! `backflow source --feed NAME --resnapshot` ([`drop_slot`] plus
//! forgetting the position), which reads the tables again. Before a
//! snapshot is read, the runtime hands the source the rows its raw topic
//! holds ([`Source::topic_state`]); keys the table no longer has (deleted
//! while no slot existed) become deletes at the snapshot's position.
//!
//! # Column types
//! Besides the types of `schemas/src/types.rs`:
//! - an **enum** is shared as text, its label;
//! - a **domain** as its base type (domains over domains followed), its
//!   checks being the department's business;
//! - **interval** as ISO 8601 duration text: both sessions run with
//!   `IntervalStyle = iso_8601`, so the snapshot and the stream print
//!   `P1Y2M3DT4H5M6.5S`, `PT0S`, or `P-10M-3DT-1S` (each part may carry
//!   its own sign, as PostgreSQL keeps months, days and time apart);
//! - **money** as an exact `numeric(19, s)`, `s` being the fraction digits
//!   of the `lc_monetary` the catalog session gets from the server (the
//!   database's default; 2 for most locales). The snapshot reads
//!   `money::numeric`. The stream only has money's text form, which
//!   depends on `lc_monetary`; the replication session therefore runs
//!   with `lc_monetary = C`, where PostgreSQL prints the stored 64-bit
//!   count of the smallest unit as `$1,234.56` / `-$1,234.56` (a point
//!   before the last two digits, whatever the currency), and the feed
//!   reads that count at scale `s`. Text in any other form is
//!   dead-lettered naming the column, never guessed at. A money primary
//!   key and arrays of money are refused at start (cast them in a view);
//! - a one-dimensional **array** of any type above as an Avro array of
//!   nullable elements, read from PostgreSQL's text array form
//!   ([`crate::text::parse_array`]: quotes, backslash escapes, `NULL`
//!   versus `"NULL"`, `{}`). PostgreSQL does not enforce an array
//!   column's declared dimensions (`int[][]` and `int[]` are one type), so
//!   the catalog cannot tell: a value with two or more dimensions, or
//!   indexed from anything but 1 (`[0:1]={...}`), sends its row to the
//!   dead-letter topic with the column named and the way out.
//!
//! # Partitioned tables
//! A partitioned table (declarative partitioning) is captured through its
//! root: the publication is created (or altered) with
//! `publish_via_partition_root = true`, so the changes of every partition,
//! including those created later, arrive as the root's and feed the
//! root's dataset; the snapshot reads the root, hence every partition. A
//! row moving between partitions arrives as a delete and an insert.
//! PostgreSQL logs before-images by each partition's own replica identity:
//! the feed sets (or, with `replica_identity = "require"`, requires) `FULL`
//! on every partition at start and each time the stream describes the
//! root again, which it does before the first change of a new partition.
//! Updates in a new partition made before that first change reached the
//! feed carry no before-image; create partitions with `REPLICA IDENTITY
//! FULL` where rows move between districts at once.
//!
//! `TRUNCATE` of a captured table cannot be expressed in a compacted topic
//! (there is no "every key is gone"): it is not shared, and a record in the
//! feed's dead-letter topic names the table and the way out.
//!
//! # Source lag
//! The backlog gauge ([`crate::SourceGauges`]) is `pg_current_wal_lsn() -
//! confirmed_flush_lsn` of the slot. Keepalives outside transactions are
//! checkpoints, so while captured tables are idle and the database is busy
//! the slot still advances and the server does not keep WAL for the feed.
//!
//! # Metrics
//! The runtime counts events by op (`r` = snapshot rows), dead letters and
//! restarts from what this source yields, and exports the backlog as
//! `backflow_source_lag_bytes`.

pub(crate) mod catalog;
pub mod pgoutput;

use crate::now_ms;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backflow_schemas::{
    ChangeEvent, Datum, Op, Row, Snapshot, SqlType, TableDesc, TransactionInfo,
};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use self::catalog::{ident, ColumnSource};
use self::pgoutput::{Cell, Message};
use crate::connect::{self, postgres::PgTarget};
use crate::source::Provenance;
use crate::{
    ConnectorError, Position, RejectedRecord, Source, SourceBatch, SourceGauges, SourceRecord,
};

/// What to do about the initial snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Snapshot when the slot is created (first start), then stream.
    #[default]
    Initial,
    /// Only stream changes from the slot's creation on.
    Never,
    /// Snapshot at every start, then stream.
    Always,
}

/// `REPLICA IDENTITY FULL` handling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaIdentityMode {
    /// Set it on tables that lack it (needs table ownership).
    #[default]
    Set,
    /// Fail with the statement to run when a table lacks it.
    Require,
}

/// One captured table and the dataset it feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table` (schema defaults to `public`).
    pub table: String,
    /// Dataset id `<department>.<name>`.
    pub dataset: String,
}

impl TableConfig {
    /// `(schema, table)`.
    pub fn split(&self) -> (&str, &str) {
        self.table
            .split_once('.')
            .unwrap_or(("public", &self.table))
    }
}

/// Configuration of a PostgreSQL feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Feed name; names the slot and publication unless set.
    pub name: String,
    /// Host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User (needs REPLICATION).
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
    /// Database.
    pub database: String,
    /// Captured tables.
    pub tables: Vec<TableConfig>,
    /// Replication slot (default `backflow_<name>`).
    #[serde(default)]
    pub slot: Option<String>,
    /// Publication (default `backflow_<name>`).
    #[serde(default)]
    pub publication: Option<String>,
    /// Initial snapshot mode.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// REPLICA IDENTITY FULL handling.
    #[serde(default)]
    pub replica_identity: ReplicaIdentityMode,
    /// Rows per snapshot chunk.
    #[serde(default = "default_chunk")]
    pub snapshot_chunk_rows: usize,
}

impl PostgresSourceConfig {
    /// The TLS settings of this configuration's connections.
    pub fn tls(&self) -> crate::connect::tls::DbTls {
        crate::connect::tls::DbTls::new(self.sslmode, self.ssl_ca_file.as_deref())
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_chunk() -> usize {
    10_000
}

impl PostgresSourceConfig {
    fn slot(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| default_object_name(&self.name))
    }
    fn publication(&self) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| default_object_name(&self.name))
    }
}

/// `backflow_<feed>` with characters a slot name cannot hold replaced.
fn default_object_name(feed: &str) -> String {
    let clean: String = feed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("backflow_{clean}")
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A position text that sorts like the LSN: `XXXXXXXX/XXXXXXXX`.
pub fn lsn_position(lsn: Lsn) -> Position {
    let v = lsn.as_u64();
    Position::from(format!("{:08X}/{:08X}", v >> 32, v & 0xFFFF_FFFF))
}

fn parse_position(p: &Position) -> Result<Lsn, ConnectorError> {
    Lsn::parse(&p.0).map_err(|_| ConnectorError::definite(format!("{:?} is not an LSN", p.0)))
}

/// How far the initial snapshot got: the checkpoint of each finished chunk.
/// A feed restarted with one reads the rest of the snapshot (tables not in
/// `done`, the current table after `after`) instead of starting over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotProgress {
    /// The slot's consistent point: the position of every snapshot row.
    lsn: String,
    /// Tables (`schema.table`) read completely.
    done: Vec<String>,
    /// The table being read and the last primary key read (text form).
    current: Option<(String, Vec<String>)>,
}

impl SnapshotProgress {
    fn position(&self) -> Position {
        crate::source::snapshot_checkpoint(self)
    }
}

/// What a stored checkpoint says (streaming: every change up to this LSN
/// is in Kafka).
type Resume = crate::source::Resume<SnapshotProgress, Lsn>;

struct Captured {
    desc: Arc<TableDesc>,
    /// How each column of `desc` is read.
    sources: Arc<[ColumnSource]>,
    config: TableConfig,
    /// The `source` its events share.
    provenance: Provenance,
}

struct SnapshotRead {
    client: Client,
    tables: VecDeque<Arc<TableDesc>>,
    /// Last key read of the current table (text form).
    after: Option<Vec<String>>,
    /// Tables read completely (`schema.table`).
    done: Vec<String>,
    position: Position,
    started: Instant,
    rows: u64,
    estimate: u64,
    last_log: Instant,
}

struct Tx {
    /// The transaction's final LSN as its events' position (and
    /// `source.position`).
    position: Position,
    /// The transaction id, as their `source.txid`.
    xid: Arc<str>,
    commit_ms: i64,
    order: i64,
}

/// The PostgreSQL source.
pub struct PostgresSource {
    config: PostgresSourceConfig,
    node: String,
    sql: Option<Arc<Client>>,
    tables: HashMap<(String, String), Captured>,
    /// Backlog (refreshed every few seconds by `backlog_task`) and snapshot
    /// progress.
    gauges: Arc<SourceGauges>,
    backlog_task: Option<tokio::task::JoinHandle<()>>,
    relations: HashMap<u32, (String, String, Vec<String>)>,
    repl: Option<ReplicationClient>,
    snapshot: Option<SnapshotRead>,
    tx: Option<Tx>,
    /// The position the feed resumed from: a transaction that committed
    /// before it is in Kafka already (the runtime acknowledged it, and the
    /// slot may not have heard so before a crash), so it is skipped.
    resumed_at: Option<Lsn>,
    /// Inside such a transaction: its messages are read (relations) and
    /// its changes dropped.
    skipping: bool,
    /// Transactions skipped since the last one published (logged once).
    skipped: u64,
}

impl PostgresSource {
    /// A source for this feed, capturing for node `node`.
    pub fn new(config: PostgresSourceConfig, node: impl Into<String>) -> Self {
        Self {
            config,
            node: node.into(),
            sql: None,
            tables: HashMap::new(),
            gauges: Arc::default(),
            backlog_task: None,
            relations: HashMap::new(),
            repl: None,
            snapshot: None,
            tx: None,
            resumed_at: None,
            skipping: false,
            skipped: 0,
        }
    }

    /// The server, login and session settings of both connections:
    /// timestamps with a time zone printed in UTC, intervals in ISO 8601.
    /// `options` adds to them.
    fn target(&self, application_name: String, options: &str) -> PgTarget {
        let c = &self.config;
        PgTarget {
            host: c.host.clone(),
            port: c.port,
            user: c.user.clone(),
            password: c.password.clone(),
            database: c.database.clone(),
            application_name,
            options: Some(format!(
                "-c TimeZone=UTC -c IntervalStyle=iso_8601{options}"
            )),
            tls: c.tls(),
        }
    }

    /// The catalog and snapshot session. It keeps the server's
    /// `lc_monetary`: the scale of money amounts is its fraction digits.
    async fn connect_sql(&self) -> Result<Client, ConnectorError> {
        connect::postgres::connect(&self.target("backflow".to_owned(), "")).await
    }

    /// The replication session (gated: nothing streams before `start`).
    async fn connect_replication(&self) -> Result<ReplicationClient, ConnectorError> {
        let c = &self.config;
        // money is printed as `lc_monetary = C` does: `$`, the raw amount
        // in hundredths with `,` between thousands (read_money).
        let target = self.target(format!("backflow-{}", c.name), " -c lc_monetary=C");
        let config = target
            .replication_config(&c.slot(), &c.publication())
            .with_status_interval(Duration::from_secs(1));
        connect::postgres::replication(&target, config).await
    }

    fn provenance(&self, desc: &TableDesc) -> Provenance {
        Provenance::new(
            "postgres",
            &self.config.name,
            &self.node,
            &self.config.database,
            Some(&desc.schema),
            &desc.name,
        )
    }

    /// Reads the next snapshot chunk; `None` when the snapshot is done.
    async fn snapshot_chunk(&mut self, max: usize) -> Result<Option<SourceBatch>, ConnectorError> {
        let Some(snap) = self.snapshot.as_mut() else {
            return Ok(None);
        };
        let Some(desc) = snap.tables.front().cloned() else {
            let snap = self.snapshot.take().expect("checked above");
            snap.client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| ConnectorError::transient(format!("ending the snapshot: {e}")))?;
            self.gauges.snapshot_running.store(false, Ordering::Relaxed);
            tracing::info!(
                feed = %self.config.name,
                rows = snap.rows,
                seconds = snap.started.elapsed().as_secs_f64(),
                "snapshot complete; streaming changes"
            );
            return Ok(Some(SourceBatch {
                checkpoint: Some(snap.position),
                ..SourceBatch::default()
            }));
        };
        let limit = max.min(self.config.snapshot_chunk_rows).max(1);
        let sources = self
            .tables
            .get(&(desc.schema.clone(), desc.name.clone()))
            .map(|c| c.sources.clone())
            .ok_or_else(|| ConnectorError::definite("snapshot of a table not captured"))?;
        // money as numeric: exact whatever the session's lc_monetary.
        let cols: Vec<String> = desc
            .columns
            .iter()
            .zip(sources.iter())
            .map(|(c, s)| {
                let cast = if s.money { "::numeric" } else { "" };
                format!("src.{}{cast}::text", ident(&c.name))
            })
            .collect();
        // Qualified: a bare name in ORDER BY would sort by the ::text output
        // column of the same name, not by the key.
        let keys: Vec<String> = desc
            .primary_key
            .iter()
            .map(|k| format!("src.{}", ident(k)))
            .collect();
        let table = format!("{}.{}", ident(&desc.schema), ident(&desc.name));
        let mut sql = format!("SELECT {} FROM {table} AS src", cols.join(", "));
        let params: Vec<String> = snap.after.clone().unwrap_or_default();
        if !params.is_empty() {
            // To the key columns' own types (an enum key sorts in its
            // declared order, not as text).
            let casts: Vec<String> = desc
                .primary_key
                .iter()
                .filter_map(|k| desc.column(k).map(|(i, _)| &sources[i].type_name))
                .enumerate()
                .map(|(i, t)| format!("${}::text::{t}", i + 1))
                .collect();
            sql.push_str(&format!(
                " WHERE ({}) > ({})",
                keys.join(", "),
                casts.join(", ")
            ));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", keys.join(", ")));
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = snap.client.query(&sql, &refs).await.map_err(|e| {
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
        if rows.len() < limit {
            snap.tables.pop_front();
            snap.after = None;
            snap.done.push(desc.qualified_name());
        } else if let Some(last) = rows.last() {
            snap.after = Some(
                key_idx
                    .iter()
                    .map(|i| last.get::<_, Option<String>>(*i).unwrap_or_default())
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
        let position = snap.position.clone();
        let ts = now_ms();
        let mut batch = SourceBatch {
            // Once Kafka holds this chunk (and all before it), a restart
            // goes on from the next one.
            checkpoint: Some(
                SnapshotProgress {
                    lsn: position.as_str().to_owned(),
                    done: snap.done.clone(),
                    current: snap
                        .after
                        .clone()
                        .map(|after| (desc.qualified_name(), after)),
                }
                .position(),
            ),
            ..SourceBatch::default()
        };
        let provenance = self.provenance(&desc);
        for r in rows {
            let cells: Vec<Cell> = (0..desc.columns.len())
                .map(|i| match r.get::<_, Option<String>>(i) {
                    Some(s) => Cell::Text(s),
                    None => Cell::Null,
                })
                .collect();
            let info = provenance.info(ts, Snapshot::True, position.0.clone(), None);
            match build_row(&desc, &[], &cells, None) {
                Ok(after) => batch.records.push(SourceRecord {
                    table: desc.clone(),
                    event: ChangeEvent {
                        key: desc.key_of(&after),
                        before: None,
                        after: Some(after),
                        source: info,
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
        let done = self.snapshot.as_ref().is_some_and(|s| s.tables.is_empty());
        if done {
            if let Some(last) = batch.records.last_mut() {
                last.event.source.snapshot = Snapshot::Last;
            }
        }
        Ok(Some(batch))
    }

    /// Handles one pgoutput message inside a transaction.
    async fn on_message(
        &mut self,
        msg: Message,
        batch: &mut SourceBatch,
    ) -> Result<(), ConnectorError> {
        let (relation, old, new, op) = match msg {
            Message::Relation {
                id,
                schema,
                name,
                columns,
            } => {
                let key = (schema.clone(), name.clone());
                if let Some(c) = self.tables.get(&key) {
                    // A partition created since the last description sends
                    // its first change through the root after this: its
                    // before-images must be logged from now on.
                    let sql = self.sql.as_ref().expect("connected in start");
                    catalog::ensure_replica_identity(sql, &c.desc, self.config.replica_identity)
                        .await?;
                    let known: Vec<&str> = c.desc.columns.iter().map(|c| c.name.as_str()).collect();
                    if known != columns.iter().map(String::as_str).collect::<Vec<_>>() {
                        // The table changed shape (ALTER TABLE): describe it again;
                        // the runtime registers the new schema version.
                        let sql = self.sql.as_ref().expect("connected in start");
                        let (desc, sources) =
                            catalog::describe_with(sql, &c.config, &columns, catalog::CATALOG_WAIT)
                                .await?;
                        tracing::info!(table = %desc.qualified_name(), "table definition changed");
                        let captured = self.tables.get_mut(&key).expect("present");
                        captured.desc = Arc::new(desc);
                        captured.sources = sources.into();
                    }
                }
                self.relations.insert(id, (schema, name, columns));
                return Ok(());
            }
            Message::Insert { relation, new } => (relation, None, Some(new), Op::Create),
            Message::Update { relation, old, new } => (relation, old, Some(new), Op::Update),
            Message::Delete { relation, old } => (relation, Some(old), None, Op::Delete),
            Message::Truncate { relations } => {
                // A compacted topic has no "all keys gone": the truncate is
                // not shared, and the dead-letter topic says so (with the
                // way out) so operators see it rather than a log line only.
                let position = self
                    .tx
                    .as_ref()
                    .map(|t| t.position.clone())
                    .unwrap_or_else(|| Position::from(""));
                for r in relations {
                    let Some((s, n, _)) = self.relations.get(&r) else {
                        continue;
                    };
                    if !self.tables.contains_key(&(s.clone(), n.clone())) {
                        continue;
                    }
                    let table = format!("{s}.{n}");
                    tracing::warn!(table = %table, "TRUNCATE is not shared: subscribers keep the rows");
                    batch.rejected.push(RejectedRecord {
                        reason: format!(
                            "TRUNCATE of {table} is not shared: raw topics and subscribers keep the rows. \
                             Delete the rows instead (DELETE FROM {table}), or take a new snapshot \
                             (`backflow source --feed {} --resnapshot`) and remove the rows on the subscribers",
                            self.config.name
                        ),
                        table,
                        position: position.clone(),
                    });
                }
                return Ok(());
            }
            Message::Other(_) => return Ok(()),
        };
        let Some((schema, name, columns)) = self.relations.get(&relation) else {
            return Err(ConnectorError::definite(format!(
                "change for relation {relation} before its description"
            )));
        };
        let Some(captured) = self.tables.get(&(schema.clone(), name.clone())) else {
            return Ok(());
        };
        let desc = captured.desc.clone();
        let sources = captured.sources.clone();
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| ConnectorError::definite("change outside a transaction"))?;
        let position = tx.position.clone();
        let provenance = &captured.provenance;
        let reorder = |cells: Vec<Cell>| in_description_order(&desc, columns, cells);
        let old = old.map(reorder);
        let new = new.map(reorder);
        let before = old
            .as_ref()
            .map(|o| build_row(&desc, &sources, o, None))
            .transpose();
        let after = new
            .as_ref()
            .map(|n| build_row(&desc, &sources, n, old.as_deref()))
            .transpose();
        let (before, after) = match (before, after) {
            (Ok(b), Ok(a)) => (b, a),
            (Err(reason), _) | (_, Err(reason)) => {
                batch.rejected.push(RejectedRecord {
                    table: desc.qualified_name(),
                    position,
                    reason,
                });
                return Ok(());
            }
        };
        let (commit_ms, xid) = (tx.commit_ms, tx.xid.clone());
        let mut push = |op: Op, key: Row, before: Option<Row>, after: Option<Row>, tx: &mut Tx| {
            tx.order += 1;
            let info = provenance.info(
                commit_ms,
                Snapshot::False,
                position.0.clone(),
                Some(xid.clone()),
            );
            batch.records.push(SourceRecord {
                table: desc.clone(),
                event: ChangeEvent {
                    key,
                    before,
                    after,
                    source: info,
                    op,
                    ts_ms: Some(now_ms()),
                    transaction: Some(TransactionInfo {
                        id: xid.clone(),
                        total_order: tx.order,
                        data_collection_order: tx.order,
                    }),
                },
                position: position.clone(),
            });
        };
        let tx = self.tx.as_mut().expect("checked above");
        match op {
            Op::Update => {
                let after = after.expect("updates carry a new tuple");
                let new_key = desc.key_of(&after);
                let old_key = before.as_ref().map(|b| desc.key_of(b));
                match old_key {
                    // The primary key changed: the old key is gone, the new one appears.
                    Some(old_key) if old_key != new_key => {
                        push(Op::Delete, old_key, before, None, tx);
                        push(Op::Create, new_key, None, Some(after), tx);
                    }
                    _ => push(Op::Update, new_key, before, Some(after), tx),
                }
            }
            Op::Delete => {
                let before = before.expect("deletes carry an old tuple");
                let key = desc.key_of(&before);
                push(Op::Delete, key, Some(before), None, tx);
            }
            _ => {
                let after = after.expect("inserts carry a new tuple");
                let key = desc.key_of(&after);
                push(op, key, None, Some(after), tx);
            }
        }
        Ok(())
    }
}

/// A tuple's cells, which follow the relation's column order (`columns`),
/// in the description's column order. The two are the same unless the table
/// changed shape: then each cell moves to its column by name, and a column
/// the stream did not send is NULL.
fn in_description_order(desc: &TableDesc, columns: &[String], mut cells: Vec<Cell>) -> Vec<Cell> {
    let same_order = columns.len() == desc.columns.len()
        && columns.iter().zip(&desc.columns).all(|(n, c)| *n == c.name);
    if same_order {
        return cells;
    }
    desc.columns
        .iter()
        .map(|c| {
            columns
                .iter()
                .position(|n| *n == c.name)
                .and_then(|i| cells.get_mut(i))
                .map_or(Cell::Null, std::mem::take)
        })
        .collect()
}

/// Builds a row from text cells; an unchanged TOAST value is taken from the
/// before-image. `sources` says how the stream's cells are read (money);
/// empty for the snapshot's, whose columns are all cast to readable text.
fn build_row(
    desc: &TableDesc,
    sources: &[ColumnSource],
    cells: &[Cell],
    old: Option<&[Cell]>,
) -> Result<Row, String> {
    desc.columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cell = match cells.get(i) {
                Some(Cell::Unchanged) => old.and_then(|o| o.get(i)).ok_or_else(|| {
                    format!(
                        "column {}: unchanged TOAST value and no full before-image; set REPLICA IDENTITY FULL on {}",
                        c.name,
                        desc.qualified_name()
                    )
                })?,
                Some(cell) => cell,
                None => &Cell::Null,
            };
            match cell {
                Cell::Null => Ok(Datum::Null),
                Cell::Unchanged => Err(format!("column {}: unchanged TOAST value in the before-image", c.name)),
                Cell::Text(t) if sources.get(i).is_some_and(|s| s.money) => {
                    read_money(&c.sql_type, t).map_err(|e| format!("column {}: {e}", c.name))
                }
                Cell::Text(t) => crate::text::parse(&c.sql_type, t).map_err(|e| format!("column {}: {e}", c.name)),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

/// A money amount as the replication session prints it (`lc_monetary =
/// C`): `$1,234.56`, `-$0.05`. That text is the raw 64-bit count of the
/// currency's smallest unit with a point before its last two digits,
/// whatever the database's own currency; the amount is that count at the
/// column's scale (the fraction digits of the database's `lc_monetary`).
/// Anything else is refused, never guessed at.
fn read_money(sql_type: &SqlType, text: &str) -> Result<Datum, String> {
    let SqlType::Decimal {
        scale: Some(scale), ..
    } = sql_type
    else {
        return Err(format!("a money column described as {sql_type}"));
    };
    let refuse = || {
        "cannot read a money value: the replication session prints money with lc_monetary = C \
         as -$1,234.56, and this value is not in that form (is lc_monetary set for the \
         feed's user or database to something else?); share the column through a view \
         that casts it to numeric"
            .to_owned()
    };
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let digits = rest.strip_prefix('$').ok_or_else(refuse)?;
    let (int, frac) = digits.split_once('.').ok_or_else(refuse)?;
    let groups_ok = int.split(',').enumerate().all(|(i, g)| {
        (if i == 0 {
            (1..=3).contains(&g.len())
        } else {
            g.len() == 3
        }) && g.bytes().all(|b| b.is_ascii_digit())
    });
    if !groups_ok || frac.len() != 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    let sign = if negative { "-" } else { "" };
    let raw: String = int
        .chars()
        .filter(|c| *c != ',')
        .chain(frac.chars())
        .collect();
    let count =
        backflow_schemas::Decimal::parse(&format!("{sign}{raw}"), 0).map_err(|_| refuse())?;
    Ok(Datum::Decimal(backflow_schemas::Decimal {
        unscaled: count.unscaled,
        scale: *scale,
    }))
}

#[async_trait]
impl Source for PostgresSource {
    async fn start(
        &mut self,
        position: Option<Position>,
    ) -> Result<Vec<Arc<TableDesc>>, ConnectorError> {
        let resume = Resume::parse(position.as_ref(), parse_position)?;
        self.resumed_at = match &resume {
            Resume::Stream(lsn) => Some(*lsn),
            _ => None,
        };
        self.skipping = false;
        let sql = self.connect_sql().await?;
        catalog::check_wal_level(&sql).await?;
        catalog::check_replication_privilege(&sql, &self.config.user).await?;
        // In configuration order, so a resumed snapshot reads the same
        // tables in the same order.
        let mut descs = Vec::new();
        for t in &self.config.tables {
            let (desc, sources) = catalog::describe_sources(&sql, t).await?;
            catalog::ensure_replica_identity(&sql, &desc, self.config.replica_identity).await?;
            let desc = Arc::new(desc);
            descs.push(desc.clone());
            self.tables.insert(
                (desc.schema.clone(), desc.name.clone()),
                Captured {
                    provenance: self.provenance(&desc),
                    desc,
                    sources: sources.into(),
                    config: t.clone(),
                },
            );
        }
        let publication = self.config.publication();
        let plain: Vec<TableDesc> = descs.iter().map(|d| d.as_ref().clone()).collect();
        catalog::ensure_publication(&sql, &publication, &plain).await?;
        let slot = self.config.slot();
        let exists = catalog::slot_exists(&sql, &slot, &self.config.name).await?;
        if !exists && resume != Resume::Nothing {
            let reached = match &resume {
                Resume::Stream(lsn) => format!("had streamed up to {}", lsn_position(*lsn).0),
                _ => "was reading its initial snapshot".to_owned(),
            };
            return Err(ConnectorError::definite(format!(
                "replication slot {slot} does not exist, but feed {} {reached}: \
                 the changes since then may be gone from the WAL, so the feed cannot resume. \
                 Take a new snapshot: `backflow source --config FILE --feed {} --resnapshot` \
                 (or POST /api/feeds/{}/restart?resnapshot=true); it creates the slot again and \
                 re-reads the tables",
                self.config.name, self.config.name, self.config.name,
            )));
        }

        let mut repl = self.connect_replication().await?;
        // (exported snapshot, consistent point, progress to go on from)
        let mut snapshot_from: Option<(Option<String>, Lsn, Option<SnapshotProgress>)> = None;
        if !exists {
            let rows = repl
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                    ident(&slot)
                ))
                .await
                .map_err(|e| {
                    ConnectorError::definite(format!(
                        "cannot create replication slot {slot}: {e}; the feed's user needs the REPLICATION attribute (ALTER ROLE {} REPLICATION) and max_replication_slots must have room",
                        self.config.user
                    ))
                })?;
            let row = rows.first().ok_or_else(|| {
                ConnectorError::definite("CREATE_REPLICATION_SLOT returned nothing")
            })?;
            let text = |i: usize| {
                row.get(i)
                    .cloned()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            let point = text(1).unwrap_or_default();
            let name = text(2);
            let lsn = Lsn::parse(&point)
                .map_err(|_| ConnectorError::definite(format!("bad consistent point {point}")))?;
            tracing::info!(feed = %self.config.name, slot = %slot, consistent_point = %point, "created replication slot");
            if self.config.snapshot != SnapshotMode::Never {
                snapshot_from = Some((name, lsn, None));
            }
        } else {
            match resume {
                // The snapshot was under way: read what is left of it.
                Resume::Snapshot(progress) => {
                    let lsn = Lsn::parse(&progress.lsn).map_err(|_| {
                        ConnectorError::definite(format!(
                            "stored snapshot checkpoint has a bad position {:?}; take a new snapshot with --resnapshot",
                            progress.lsn
                        ))
                    })?;
                    tracing::info!(
                        feed = %self.config.name,
                        tables_done = progress.done.len(),
                        table = progress.current.as_ref().map(|c| c.0.as_str()).unwrap_or("(next)"),
                        "resuming the snapshot after its last finished chunk"
                    );
                    snapshot_from = Some((None, lsn, Some(progress)));
                }
                // The slot exists but nothing was ever acknowledged: the
                // previous run stopped before its first chunk was safely in
                // Kafka, so read it again.
                Resume::Nothing if self.config.snapshot != SnapshotMode::Never => {
                    tracing::warn!(feed = %self.config.name, "the previous snapshot did not finish; taking it again");
                    snapshot_from =
                        Some((None, catalog::slot_confirmed_lsn(&sql, &slot).await?, None));
                }
                Resume::Stream(_) if self.config.snapshot == SnapshotMode::Always => {
                    snapshot_from =
                        Some((None, catalog::slot_confirmed_lsn(&sql, &slot).await?, None));
                }
                _ => {}
            }
        }

        if let Some((exported, lsn, progress)) = snapshot_from {
            let client = self.connect_sql().await?;
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| ConnectorError::transient(format!("starting the snapshot: {e}")))?;
            if let Some(name) = &exported {
                client
                    .batch_execute(&format!(
                        "SET TRANSACTION SNAPSHOT {}",
                        catalog::literal(name)
                    ))
                    .await
                    .map_err(|e| {
                        ConnectorError::transient(format!("importing the slot's snapshot: {e}"))
                    })?;
            }
            // Outside the slot's exported snapshot (a resumed or repeated
            // snapshot), rows are read as they are now but keep the slot's
            // confirmed position: every change the stream replays after
            // them is newer, so sinks apply it, and the last one wins.
            let (done, mut after) = match &progress {
                Some(p) => (p.done.clone(), p.current.clone()),
                None => (Vec::new(), None),
            };
            let tables: VecDeque<Arc<TableDesc>> = descs
                .iter()
                .filter(|d| !done.contains(&d.qualified_name()))
                .cloned()
                .collect();
            if after.as_ref().is_some_and(|(t, _)| {
                tables.front().map(|d| d.qualified_name()).as_ref() != Some(t)
            }) {
                after = None;
            }
            let mut estimate = 0;
            for d in &tables {
                estimate += catalog::estimated_rows(&sql, d).await;
            }
            tracing::info!(feed = %self.config.name, tables = tables.len(), rows_estimated = estimate, "starting snapshot");
            let g = &self.gauges;
            g.snapshot_rows.store(0, Ordering::Relaxed);
            g.snapshot_rows_estimated.store(estimate, Ordering::Relaxed);
            g.snapshot_started_ms.store(now_ms(), Ordering::Relaxed);
            g.snapshot_running.store(true, Ordering::Relaxed);
            self.snapshot = Some(SnapshotRead {
                client,
                tables,
                after: after.map(|(_, key)| key),
                done,
                position: lsn_position(lsn),
                started: Instant::now(),
                rows: 0,
                estimate,
                last_log: Instant::now(),
            });
        }
        // The slot's snapshot is imported: start streaming (changes queue up
        // in the bounded client buffer while the snapshot is read).
        repl.start()
            .await
            .map_err(|e| ConnectorError::transient(format!("START_REPLICATION failed: {e}")))?;
        self.repl = Some(repl);
        let sql = Arc::new(sql);
        self.backlog_task = Some(tokio::spawn(watch_backlog(
            sql.clone(),
            slot,
            self.gauges.clone(),
        )));
        self.sql = Some(sql);
        Ok(descs)
    }

    async fn next_batch(&mut self, max: usize) -> Result<SourceBatch, ConnectorError> {
        if let Some(batch) = self.snapshot_chunk(max).await? {
            return Ok(batch);
        }
        let mut batch = SourceBatch::with_capacity(max);
        loop {
            let repl = self
                .repl
                .as_mut()
                .ok_or_else(|| ConnectorError::definite("source not started"))?;
            // Once a transaction boundary is reached, return what is there
            // rather than wait for more.
            let event = if batch.checkpoint.is_some() && self.tx.is_none() {
                match tokio::time::timeout(Duration::from_millis(2), repl.recv()).await {
                    Ok(e) => e,
                    Err(_) => return Ok(batch),
                }
            } else {
                repl.recv().await
            };
            let event = event.map_err(|e| {
                ConnectorError::transient(format!("replication stream failed: {e}"))
            })?;
            let Some(event) = event else {
                return Err(ConnectorError::transient("replication stream ended"));
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    // Its commit record starts before the resumed position,
                    // so it ends at or before it: already in Kafka. (One
                    // starting exactly there committed after it.)
                    self.skipping = self.resumed_at.is_some_and(|at| final_lsn < at);
                    if self.skipping {
                        self.skipped += 1;
                    } else if self.skipped > 0 {
                        tracing::info!(feed = %self.config.name, transactions = self.skipped, "skipped replayed transactions that were already in Kafka");
                        self.skipped = 0;
                    }
                    self.tx = Some(Tx {
                        position: lsn_position(final_lsn),
                        xid: xid.to_string().into(),
                        commit_ms: (commit_time_micros + PG_EPOCH_MICROS) / 1000,
                        order: 0,
                    });
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = pgoutput::decode(&data)
                        .map_err(|e| ConnectorError::definite(e.to_string()))?;
                    if self.skipping {
                        // Relations are learned; the changes were published.
                        self.on_message(msg, &mut SourceBatch::default()).await?;
                    } else {
                        self.on_message(msg, &mut batch).await?;
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    self.tx = None;
                    if std::mem::take(&mut self.skipping) {
                        // No checkpoint: it is behind the resumed one.
                        continue;
                    }
                    batch.checkpoint = Some(lsn_position(end_lsn));
                    if batch.records.len() >= max {
                        return Ok(batch);
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // Outside a transaction everything before wal_end was
                    // sent: confirming it lets the slot advance while the
                    // captured tables are idle. Not before the resumed
                    // position: a session's first keepalive reports where
                    // the slot stands, before the transactions Kafka
                    // already holds are replayed, and a feed resumed from
                    // there would write them again.
                    if self.tx.is_none()
                        && !wal_end.is_zero()
                        && self.resumed_at.is_none_or(|at| wal_end >= at)
                    {
                        batch.checkpoint = Some(lsn_position(wal_end));
                        return Ok(batch);
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(batch),
            }
            if self.tx.is_some() && batch.records.len() >= max {
                // A large transaction streams through in bounded batches; no
                // checkpoint until it commits.
                batch.open_transaction = true;
                return Ok(batch);
            }
        }
    }

    async fn acknowledge(&mut self, position: &Position) -> Result<(), ConnectorError> {
        if position.0.starts_with(crate::source::SNAPSHOT_PREFIX) {
            // A snapshot chunk: the slot stays where it is until the whole
            // snapshot is in Kafka.
            return Ok(());
        }
        let lsn = parse_position(position)?;
        if let Some(repl) = &self.repl {
            repl.update_applied_lsn(lsn);
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ConnectorError> {
        if let Some(mut repl) = self.repl.take() {
            let _ = repl.shutdown().await;
        }
        self.sql = None;
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
        let Some(snap) = self.snapshot.as_ref() else {
            return Ok(SourceBatch::default());
        };
        if topic_rows.is_empty() {
            return Ok(SourceBatch::default());
        }
        let keys = table.key_columns();
        let cols: Vec<String> = keys
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {}.{}",
            cols.join(", "),
            ident(&table.schema),
            ident(&table.name)
        );
        let rows = snap.client.query(&sql, &[]).await.map_err(|e| {
            ConnectorError::transient(format!(
                "reading the keys of {}: {e}",
                table.qualified_name()
            ))
        })?;
        let mut current = std::collections::HashSet::with_capacity(rows.len());
        for r in &rows {
            let key = keys
                .iter()
                .enumerate()
                .map(|(i, c)| match r.get::<_, Option<String>>(i) {
                    Some(t) => crate::text::parse(&c.sql_type, &t).unwrap_or(Datum::Null),
                    None => Datum::Null,
                })
                .collect();
            current.insert(crate::source::row_bytes(&Row(key)));
        }
        let position = snap.position.clone();
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

impl Drop for PostgresSource {
    fn drop(&mut self) {
        if let Some(t) = self.backlog_task.take() {
            t.abort();
        }
    }
}

/// Refreshes the slot's backlog (WAL the database keeps for this feed) every
/// few seconds.
async fn watch_backlog(sql: Arc<Client>, slot: String, gauges: Arc<SourceGauges>) {
    loop {
        let bytes = catalog::slot_backlog_bytes(&sql, &slot).await.unwrap_or(-1);
        gauges.backlog_bytes.store(bytes, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Drops the feed's replication slot, so that its next start creates it
/// again and takes a new snapshot (`--resnapshot`). Returns whether there
/// was one. Fails if a running feed holds it.
pub async fn drop_slot(config: &PostgresSourceConfig) -> Result<bool, ConnectorError> {
    let source = PostgresSource::new(config.clone(), "");
    let sql = source.connect_sql().await?;
    catalog::drop_slot(&sql, &config.slot(), &config.name).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use backflow_schemas::{ColumnDesc, SqlType};

    fn desc(columns: &[&str]) -> TableDesc {
        TableDesc {
            dataset: "d.t".into(),
            schema: "public".into(),
            name: "t".into(),
            columns: columns
                .iter()
                .map(|c| ColumnDesc::new(*c, SqlType::Text, true))
                .collect(),
            primary_key: vec!["id".into()],
        }
    }

    fn text(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn names(columns: &[&str]) -> Vec<String> {
        columns.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn cells_in_the_description_order_are_kept_as_they_are() {
        let cells = vec![text("1"), Cell::Null, Cell::Unchanged];
        let out = in_description_order(
            &desc(&["id", "name", "note"]),
            &names(&["id", "name", "note"]),
            cells.clone(),
        );
        assert_eq!(out, cells);
    }

    #[test]
    fn cells_in_another_order_move_to_their_columns_by_name() {
        // The catalog is ahead of the stream: it has a column the stream's
        // relation does not, and a different order.
        let out = in_description_order(
            &desc(&["id", "name", "note", "added"]),
            &names(&["note", "id", "name"]),
            vec![text("n"), text("1"), text("x")],
        );
        assert_eq!(out, vec![text("1"), text("x"), text("n"), Cell::Null]);
    }
}
