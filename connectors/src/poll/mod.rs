//! SQL polling source: change capture for legacy department databases that
//! have no usable change log (no logical replication, no binlog), by
//! reading the tables with plain `SELECT`s at an interval. It works with
//! PostgreSQL, SQLite and MySQL/MariaDB; the engine is a small internal
//! trait (`engine::Engine`) so another can be added beside them.
//!
//! # Prerequisites
//! - The user may `SELECT` the polled tables (and, for the key diff,
//!   their key columns); nothing is written to the database.
//! - A table polled in `timestamp+incrementing` mode has a timestamp
//!   column the application sets on every insert and update, and a column
//!   unique among rows of one timestamp (by default the primary key);
//!   `bulk` needs neither.
//! - Every table has a primary key: it keys the rows on the raw topic.
//! - A refused login (wrong password, no such database or privilege) is a
//!   definite error with the fix: the feed shows FAILED and is tried again
//!   once a minute.
//!
//! # What it captures
//! Each table is polled in one of two modes:
//! - **`timestamp+incrementing`**: the application sets a timestamp column
//!   on every insert and update. Each poll reads
//!   `WHERE ts < upper AND (ts > :last_ts OR (ts = :last_ts AND inc > :last_inc))
//!   ORDER BY ts, inc LIMIT batch_rows`, where `upper` is the database's own
//!   clock minus `delay_ms` and `inc` an integer column unique among rows of
//!   one timestamp (by default the single primary-key column). The
//!   incrementing column breaks ties, so rows sharing a timestamp are never
//!   missed, even when a batch ends between them.
//! - **`bulk`**: each poll reads the whole table and yields only what
//!   differs from what the source last yielded, plus deletes for keys that
//!   are gone. For small reference tables without a timestamp.
//!
//! The source keeps the last row it knows of every key (seeded at start
//! from the raw topic through [`Source::topic_state`], then updated by
//! what it yields): a polled row whose key is known is an update (`u`) whose
//! before-image is that row — the distributor needs full before-images to
//! compute retractions — and is skipped when nothing changed; an unknown key
//! is an insert (`c`). With `soft_delete_column`, a row whose column is
//! non-NULL and not false/0 is a delete (`d`; before-image: the kept row,
//! or the polled row when the key was never seen; in `bulk` mode unknown
//! keys are skipped, since the table is read again at every poll). Every
//! `key_diff_interval_secs` (and at start) the runtime hands the raw
//! topic's rows to the source, which reads the table's keys and yields a
//! delete for every key the table no longer has: hard deletes.
//!
//! # Example
//! ```toml
//! [[feeds]]
//! type = "poll"
//! name = "minzheng-legacy"
//! engine = "postgres"            # or "sqlite", "mysql"
//! host = "10.0.0.9"              # postgres, mysql: host, port (5432; mysql 3306), user, password_env|password_file, database
//! user = "backflow"
//! password_env = "MINZHENG_LEGACY_PASSWORD"
//! sslmode = "verify-full"        # postgres, mysql: TLS (connect::tls), with ssl_ca_file
//! database = "minzheng"
//! # path = "/data/dept.db"       # sqlite: the database file
//! poll_interval_ms = 1000
//! delay_ms = 1000                # rows newer than the database's now - delay wait for the next poll
//! batch_rows = 10000
//! key_diff_interval_secs = 300   # 0: only at start
//!
//! [[feeds.tables]]
//! table = "public.households"    # "schema.table" or "table" (public; SQLite: main; MySQL: database.table or table of `database`)
//! dataset = "minzheng.households"
//! mode = "timestamp+incrementing"
//! timestamp_column = "updated_at"
//! # incrementing_column = "id"   # default: the single primary-key column
//! soft_delete_column = "deleted"
//!
//! [[feeds.tables]]
//! table = "public.districts"
//! dataset = "minzheng.districts"
//! mode = "bulk"
//! ```
//! The runtime resolves `password` from `password_env` or `password_file`.
//! It is never sent where the server could read it: a server asking for it
//! in clear text (or PostgreSQL MD5, or MySQL `caching_sha2_password` full
//! authentication without TLS) is refused, with the fix (`connectors/src/connect/mod.rs`).
//!
//! # Positions and checkpoints
//! A record's position (also `source.position`, which share records carry
//! to every subscriber) is the time of the poll that read the change, on
//! the database's clock: `poll@YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC,
//! microseconds, fixed width), and `source.ts_ms` (which the feed also
//! puts in the `backflow.origin_ts` header) is the same time in
//! milliseconds. Neither holds a column value: not the timestamp column,
//! not the incrementing column (which may be a key shared hashed), so a
//! subscriber learns no more of the row than its granted fields and when
//! the change reached the feed. Every record of one poll has that poll's
//! position (a number per record would tell subscribers how many changes
//! of rows they do not receive came between theirs).
//!
//! Sinks ignore a change whose position is older than the row's, so:
//! - **Later changes of a row sort after.** A poll reads the table as it
//!   is, so a later poll can only find a later version, and a row appears
//!   at most once in a poll. Each poll or key diff takes the database's
//!   clock, but at least one microsecond after the previous one's (a clock
//!   that steps back or stands still does not make positions go back),
//!   and the checkpoint keeps the last one: a restarted feed starts after
//!   it even if the clock is behind. A replay (a restart from a checkpoint
//!   older than what Kafka holds) reads rows again at a later poll: later
//!   positions than the first reading's. (Positions yielded after the last
//!   stored checkpoint are beaten by the clock alone: a feed restarted
//!   onto a clock set back by more than it was down can give a row's next
//!   change an older position than those until the clock catches up.)
//! - **All modes compare.** `timestamp+incrementing` rows, `bulk` rows and
//!   key-diff deletes of a table all have the time of the poll or key diff
//!   that found them, so a delete sorts after the versions read before it
//!   (changes read but not yet yielded of a key it deletes are dropped),
//!   and a table switched from one mode to the other keeps its order.
//! - **Upgrades.** Releases before this one put the row's timestamp and
//!   incrementing values (`TTTTTTTTTTTTTTTTTTTT.IIIIIIIIIIIIIIIIIIII`) or
//!   a poll's time (`TTTTTTTTTTTTTTTTTTTT`) there, as digits; `poll@`
//!   sorts after every such position (sinks compare positions bytewise),
//!   so rows a subscriber wrote with them take the new changes as newer.
//!   Their checkpoints are read too.
//!
//! What the position cannot hide: a change is delivered soon after it is
//! made, so its poll's time (like the time it arrives) tells roughly when
//! the row changed, to within the poll interval and `delay_ms`; and the
//! order of one poll's records in the topic follows the timestamp column.
//!
//! The batch checkpoint stays inside the node; it is `poll:` followed by a
//! JSON object: `tables` maps each `timestamp+incrementing` table
//! (`schema.table`) to its watermark `{"ts": micros, "inc": value}` (the
//! last row yielded), `polled_at` is the time of the last poll (UTC
//! microseconds). A batch may end inside a poll: rows are yielded in
//! (ts, inc) order, so the watermark of the last row yielded is a safe
//! place to resume. [`Source::start`] resumes from it; a table missing
//! from it is read from its first row. `bulk` tables need no watermark:
//! they are read again and compared with the topic's rows. After a
//! restart, rows re-read beyond the acknowledged checkpoint that equal the
//! topic's rows are skipped.
//!
//! # Timestamps and clocks
//! `upper` and the positions come from the database's clock, never this
//! machine's. PostgreSQL: `timestamptz` columns are compared with `now()`,
//! `timestamp` columns with `LOCALTIMESTAMP` in the server's default time
//! zone (the session keeps it). SQLite: text timestamps without an offset are UTC, as for SQLite's
//! own date functions, compared with `unixepoch('now')`. MySQL/MariaDB:
//! the session's time zone is `+00:00`; `TIMESTAMP` columns are compared
//! with `UTC_TIMESTAMP(6)`, `DATETIME` columns with the server's local
//! time, `UTC_TIMESTAMP(6)` converted to `@@GLOBAL.time_zone` (the zone
//! applications' sessions get by default, `SYSTEM` included). Positions
//! and `source.ts_ms` are the poll's UTC time, whatever the column's
//! scale.
//!
//! # SQLite
//! The database file must exist; it is opened `query_only`. Declared
//! column types are read with [`SqlType::parse`](backflow_schemas::SqlType::parse)
//! (`INTEGER`/`INT` as bigint and `REAL`/`FLOAT` as double precision, since
//! SQLite stores 64-bit integers and 8-byte floats), other declarations by
//! SQLite's affinity rules: `INT` → bigint, `CHAR`/`CLOB`/`TEXT` → text,
//! `BLOB` → bytes, `REAL`/`FLOA`/`DOUB` → double, otherwise numeric
//! without precision; no declared type → text. Stored values must fit the
//! column (else the row is rejected): dates are text `YYYY-MM-DD`;
//! timestamps (with or without time zone) are ISO-8601 text
//! (`YYYY-MM-DD HH:MM[:SS[.ffffff]]`, `T` or a space, optional `Z` or
//! `±HH:MM`; without an offset UTC; with one converted to UTC) or
//! INTEGER/REAL unix seconds; booleans 0/1 (or `true`/`false`); decimals
//! INTEGER, REAL (when its shortest decimal form fits the scale) or text.
//! The timestamp column may be declared as a timestamp, text or integer
//! (unix seconds); it is compared as unix microseconds whatever each
//! value's storage (text through `unixepoch(value, 'subsec')`, millisecond
//! precision; text SQLite cannot read as a time is never polled). That
//! comparison cannot use an index: each poll scans the table.
//!
//! # MySQL/MariaDB
//! One connection with `time_zone = '+00:00'`, `NAMES utf8mb4` and
//! read-only transactions, reconnected when it breaks (a read that finds
//! the connection broken is run once more on a new one). `database` is
//! the connection's default database (it must exist; tables named without
//! a database are in it). The user needs `SELECT` on the tables (no
//! replication privileges, no binlog). Tables are described as the
//! `mysql` binlog source describes them, with the same types (see
//! [`crate::mysql`]: `TINYINT(1)` is boolean, `DATETIME` a timestamp
//! without zone, `TIMESTAMP` a timestamptz, `BIGINT UNSIGNED`
//! decimal(20,0), ...), and values are read with prepared statements
//! (binary protocol) and converted the same way; a value that does not
//! convert (a zero date, a TIME beyond a day) rejects its row.
//!
//! The timestamp column is a `DATETIME` or `TIMESTAMP` (any fractional
//! precision), compared on the column itself, so an index on (timestamp,
//! incrementing) serves the poll. The incrementing column is an integer
//! column (signed or unsigned) or `DECIMAL(p,0)`. Rows are not polled
//! whose timestamp is below `1000-01-01` or has a zero month or day (zero
//! dates such as `0000-00-00` or `2024-05-00`), or whose incrementing
//! value is above 2⁶³ − 1 (`BIGINT UNSIGNED`). Columns without fractional
//! seconds have a resolution of one second, and MySQL rounds a more
//! precise `NOW(6)` stored into them: keep `delay_ms` at 1000 or more.
//!
//! # What polling cannot see
//! - **Intermediate versions.** A row updated several times between two
//!   polls yields only its last version.
//! - **Hard deletes** until the next key diff (`key_diff_interval_secs`);
//!   a key deleted and inserted again in between looks like an update.
//!   Use a soft-delete column to share deletes promptly.
//! - **Rows whose timestamp column is not updated** (or is set to an older
//!   value, or is NULL) are not read again. Rows whose timestamp has
//!   a coarser resolution than `delay_ms` can be updated twice within one
//!   timestamp value after the first was read; keep `delay_ms` above the
//!   column's resolution.
//! - **Late commits and clock skew.** A transaction that commits more than
//!   `delay_ms` after the timestamp it wrote (long transactions, or an
//!   application clock behind the database's) writes below the watermark
//!   and is missed, as are rows written with a timestamp from a clock
//!   running behind; timestamps ahead of the database's clock wait until
//!   it catches up. Set `delay_ms` above the longest write transaction and
//!   the clock difference. A PostgreSQL `timestamp` or MySQL `DATETIME`
//!   column in a time zone with daylight saving time goes back an hour
//!   once a year, and rows written in that hour are below the watermark:
//!   prefer `timestamptz` / `TIMESTAMP`. A MySQL `DATETIME` column written
//!   in another time zone than the server's default (a session that sets
//!   its own `time_zone`, or an application's clock) is off by the zones'
//!   difference: rows ahead wait that long, rows behind are missed; use
//!   `TIMESTAMP` there.
//! - **Memory**: the source keeps the last row of every key of every table
//!   (that is what before-images are made of), about the size of the
//!   table's data.
//! - Table definitions are read at start; restart the feed after changing
//!   a captured table.

mod engine;
mod mysql;
mod postgres;
mod sqlite;

use crate::now_ms;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backflow_schemas::{ChangeEvent, Datum, Op, Row, Snapshot, TableDesc};
use serde::{Deserialize, Serialize};

use self::engine::{Cells, Clock, Engine, Polled, Since, TsScale, Watermark};
use crate::sink::values::{civil_from_days, hms, split_micros};
use crate::source::row_bytes;
use crate::{
    ConnectorError, Position, RejectedRecord, Source, SourceBatch, SourceGauges, SourceRecord,
};

/// The database engine a polling feed reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollEngine {
    /// PostgreSQL.
    Postgres,
    /// SQLite database file.
    Sqlite,
    /// MySQL or MariaDB.
    Mysql,
}

impl PollEngine {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PollEngine::Postgres => "postgres",
            PollEngine::Sqlite => "sqlite",
            PollEngine::Mysql => "mysql",
        }
    }
}

/// How a table is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PollMode {
    /// Rows changed since the last poll, by timestamp and incrementing
    /// column.
    #[serde(rename = "timestamp+incrementing")]
    TimestampIncrementing,
    /// The whole table at every poll, compared with the rows last yielded.
    #[serde(rename = "bulk")]
    Bulk,
}

/// One polled table and the dataset it feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollTableConfig {
    /// `schema.table` or `table` (schema `public` on PostgreSQL, `main` on
    /// SQLite, the feed's `database` on MySQL).
    pub table: String,
    /// Dataset id `<department>.<name>`.
    pub dataset: String,
    /// `"timestamp+incrementing"` or `"bulk"`.
    pub mode: PollMode,
    /// Column the application sets to the current time on every insert
    /// and update; required by `timestamp+incrementing`.
    #[serde(default)]
    pub timestamp_column: Option<String>,
    /// Integer column unique among rows with the same timestamp (default:
    /// the single primary-key column); `timestamp+incrementing` only.
    #[serde(default)]
    pub incrementing_column: Option<String>,
    /// Column marking a row deleted when non-NULL and not false/0.
    #[serde(default)]
    pub soft_delete_column: Option<String>,
}

/// Configuration of a polling feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollSourceConfig {
    /// Feed name.
    pub name: String,
    /// `"postgres"`, `"sqlite"` or `"mysql"`.
    pub engine: PollEngine,
    /// PostgreSQL, MySQL: host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// PostgreSQL, MySQL: port (default 5432; MySQL 3306).
    #[serde(default)]
    pub port: Option<u16>,
    /// PostgreSQL, MySQL: user (needs `SELECT` on the tables).
    #[serde(default)]
    pub user: Option<String>,
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
    /// PostgreSQL: database. MySQL: the connection's default database, of
    /// tables named without one (and `source.db`).
    #[serde(default)]
    pub database: Option<String>,
    /// SQLite: the database file (must exist; opened query-only).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Polled tables.
    pub tables: Vec<PollTableConfig>,
    /// Time between polls when nothing is left to read, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Rows whose timestamp is newer than the database's now minus this
    /// are left for a later poll, so transactions in flight that commit
    /// with an older timestamp are not missed; in milliseconds.
    #[serde(default = "default_delay_ms")]
    pub delay_ms: u64,
    /// Rows read per table and poll at most (`timestamp+incrementing`).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Seconds between key diffs that find hard-deleted rows (0: only at
    /// start).
    #[serde(default = "default_key_diff_interval_secs")]
    pub key_diff_interval_secs: u64,
}

impl PollSourceConfig {
    /// The TLS settings of this configuration's connections.
    pub fn tls(&self) -> crate::connect::tls::DbTls {
        crate::connect::tls::DbTls::new(self.sslmode, self.ssl_ca_file.as_deref())
    }
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_delay_ms() -> u64 {
    1000
}
fn default_batch_rows() -> usize {
    10_000
}
fn default_key_diff_interval_secs() -> u64 {
    300
}

impl PollSourceConfig {
    /// A PostgreSQL feed with default settings.
    pub fn postgres(
        name: impl Into<String>,
        user: impl Into<String>,
        database: impl Into<String>,
        tables: Vec<PollTableConfig>,
    ) -> Self {
        Self {
            user: Some(user.into()),
            database: Some(database.into()),
            ..Self::empty(name, PollEngine::Postgres, tables)
        }
    }

    /// A MySQL/MariaDB feed with default settings.
    pub fn mysql(
        name: impl Into<String>,
        user: impl Into<String>,
        database: impl Into<String>,
        tables: Vec<PollTableConfig>,
    ) -> Self {
        Self {
            user: Some(user.into()),
            database: Some(database.into()),
            ..Self::empty(name, PollEngine::Mysql, tables)
        }
    }

    /// A SQLite feed with default settings.
    pub fn sqlite(
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        tables: Vec<PollTableConfig>,
    ) -> Self {
        Self {
            path: Some(path.into()),
            ..Self::empty(name, PollEngine::Sqlite, tables)
        }
    }

    fn empty(name: impl Into<String>, engine: PollEngine, tables: Vec<PollTableConfig>) -> Self {
        Self {
            name: name.into(),
            engine,
            host: default_host(),
            port: None,
            user: None,
            password: None,
            password_env: None,
            password_file: None,
            sslmode: Default::default(),
            ssl_ca_file: None,
            database: None,
            path: None,
            tables,
            poll_interval_ms: default_poll_interval_ms(),
            delay_ms: default_delay_ms(),
            batch_rows: default_batch_rows(),
            key_diff_interval_secs: default_key_diff_interval_secs(),
        }
    }

    /// The port: `port`, or the engine's default (PostgreSQL 5432, MySQL
    /// 3306).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.engine {
            PollEngine::Postgres => 5432,
            PollEngine::Mysql => 3306,
            PollEngine::Sqlite => 0,
        })
    }

    /// Checks the settings that depend on each other (engine-specific keys,
    /// modes); the message names the key as `feeds[..].<key>` (the runtime
    /// knows the feed's index).
    pub fn validate(&self) -> Result<(), String> {
        let feed = &self.name;
        let engine = self.engine.as_str();
        let required = |key: &str, set: bool| {
            if set {
                Ok(())
            } else {
                Err(format!(
                    "feeds[..].{key} is required for engine {engine} (feed {feed})"
                ))
            }
        };
        let unused = |key: &str, set: bool| {
            if set {
                Err(format!(
                    "feeds[..].{key} is not used by engine {engine} (feed {feed}); remove it"
                ))
            } else {
                Ok(())
            }
        };
        let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        match self.engine {
            PollEngine::Postgres | PollEngine::Mysql => {
                required("user", given(&self.user))?;
                required("database", given(&self.database))?;
                unused("path", self.path.is_some())?;
            }
            PollEngine::Sqlite => {
                required(
                    "path",
                    self.path
                        .as_ref()
                        .is_some_and(|p| !p.as_os_str().is_empty()),
                )?;
                unused("user", self.user.is_some())?;
                unused("database", self.database.is_some())?;
                unused("port", self.port.is_some())?;
                unused("password_env", self.password_env.is_some())?;
                unused("password_file", self.password_file.is_some())?;
            }
        }
        if self.tables.is_empty() {
            return Err(format!(
                "feeds[..].tables must list at least one table (feed {feed})"
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(format!(
                "feeds[..].poll_interval_ms must be at least 1 (feed {feed})"
            ));
        }
        if self.batch_rows == 0 {
            return Err(format!(
                "feeds[..].batch_rows must be at least 1 (feed {feed})"
            ));
        }
        let mut seen = HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let at = format!("feeds[..].tables[{i}]");
            if t.table.trim().is_empty() {
                return Err(format!("{at}.table is empty (feed {feed})"));
            }
            if !seen.insert(t.table.as_str()) {
                return Err(format!(
                    "{at}.table: {} is listed twice (feed {feed})",
                    t.table
                ));
            }
            match t.mode {
                PollMode::TimestampIncrementing => {
                    if !given(&t.timestamp_column) {
                        return Err(format!(
                            "{at}.timestamp_column is required for mode \"timestamp+incrementing\" \
                             (table {}, feed {feed}): name the column the application sets on every \
                             insert and update, or use mode \"bulk\"",
                            t.table
                        ));
                    }
                }
                PollMode::Bulk => {
                    for (key, v) in [
                        ("timestamp_column", &t.timestamp_column),
                        ("incrementing_column", &t.incrementing_column),
                    ] {
                        if v.is_some() {
                            return Err(format!(
                                "{at}.{key} is only used by mode \"timestamp+incrementing\" \
                                 (table {}, feed {feed}); remove it or change the mode",
                                t.table
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Opens the configured engine.
async fn connect(config: &PollSourceConfig) -> Result<Arc<dyn Engine>, ConnectorError> {
    Ok(match config.engine {
        PollEngine::Postgres => Arc::new(postgres::PgEngine::connect(config).await?),
        PollEngine::Mysql => Arc::new(mysql::MysqlEngine::connect(config).await?),
        PollEngine::Sqlite => {
            Arc::new(sqlite::SqliteEngine::open(config.path.clone().unwrap_or_default()).await?)
        }
    })
}

/// A table as a feed reads it and a sample of its rows (each, or why it
/// does not convert).
pub type Sample = (Arc<TableDesc>, Vec<Result<Row, String>>);

/// Up to `limit` rows of each table of `config`, in key order, converted
/// as the feed converts them: for `backflow feed check`, which runs a
/// feed's mapping and rules over them without publishing.
pub async fn sample(
    config: &PollSourceConfig,
    limit: usize,
) -> Result<Vec<Sample>, ConnectorError> {
    let engine = connect(config).await?;
    let mut out = Vec::new();
    for tc in &config.tables {
        let (schema, name) = tc
            .table
            .split_once('.')
            .unwrap_or((engine.default_schema(), &tc.table));
        let desc = Arc::new(engine.describe(schema, name, &tc.dataset).await?);
        let rows = engine.read_all(desc.clone(), Some(limit)).await?;
        let rows = rows.into_iter().map(|c| assemble(&desc, c).1).collect();
        out.push((desc, rows));
    }
    Ok(out)
}

/// Prefix of a checkpoint.
const CHECKPOINT_PREFIX: &str = "poll:";

/// What a checkpoint holds (after [`CHECKPOINT_PREFIX`], as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checkpoint {
    /// Watermark of each `timestamp+incrementing` table (`schema.table`).
    tables: BTreeMap<String, Watermark>,
    /// Poll time of the last position handed out (UTC microseconds), or
    /// `None` before the first poll: positions after a restart sort after
    /// it whatever the database's clock says.
    polled_at: Option<i64>,
}

fn checkpoint(tables: &BTreeMap<String, Watermark>, polled_at: Option<i64>) -> Position {
    let json = serde_json::to_string(&Checkpoint {
        tables: tables.clone(),
        polled_at,
    })
    .expect("serializes");
    Position::from(format!("{CHECKPOINT_PREFIX}{json}"))
}

fn parse_checkpoint(position: Option<&Position>, feed: &str) -> Result<Checkpoint, ConnectorError> {
    let Some(p) = position else {
        return Ok(Checkpoint::default());
    };
    p.0.strip_prefix(CHECKPOINT_PREFIX)
        .ok_or_else(|| "it is not a polling checkpoint".to_owned())
        .and_then(|json| {
            serde_json::from_str::<Checkpoint>(json).or_else(|e| {
                // Before positions stopped showing column values, a
                // checkpoint was the watermarks alone.
                serde_json::from_str::<BTreeMap<String, Watermark>>(json)
                    .map(|tables| Checkpoint {
                        tables,
                        polled_at: None,
                    })
                    .map_err(|_| e.to_string())
            })
        })
        .map_err(|reason| {
            ConnectorError::definite(format!(
                "the stored position of feed {feed} cannot be read ({reason}); \
                 take a new snapshot with `backflow source --config FILE --feed {feed} --resnapshot` \
                 (it forgets the position and reads the tables again)"
            ))
        })
}

/// Prefix of every position. Positions of earlier releases, which held
/// column values, are digits: this sorts after all of them.
const POSITION_PREFIX: &str = "poll@";

/// The latest poll time a position shows: 9999-12-31T23:59:59.999999Z.
const MAX_POLLED_AT: i64 = 253_402_300_799_999_999;

/// Position of every change a poll (or key diff) at `polled_at` (UTC
/// microseconds, 1970 to 9999) found: `poll@YYYY-MM-DDTHH:MM:SS.ffffffZ`,
/// fixed width, so positions sort as text like their times.
fn position(polled_at: i64) -> Position {
    let (days, of_day) = split_micros(polled_at.clamp(0, MAX_POLLED_AT));
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, us) = hms(of_day);
    Position::from(format!(
        "{POSITION_PREFIX}{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z"
    ))
}

/// Where and when a poll (or key diff) happened, for its records.
fn at_time(polled_at: i64) -> (Position, i64) {
    (position(polled_at), polled_at.div_euclid(1000))
}

/// Whether a soft-delete column's value marks the row deleted: anything
/// but NULL, false, zero and the texts `""`, `0`, `f`, `false`, `n`, `no`.
fn soft_deleted(d: &Datum) -> bool {
    match d {
        Datum::Null => false,
        Datum::Bool(b) => *b,
        Datum::Int(v) => *v != 0,
        Datum::Long(v) => *v != 0,
        Datum::Float(v) => *v != 0.0,
        Datum::Double(v) => *v != 0.0,
        Datum::Decimal(v) => v.unscaled != 0.into(),
        Datum::Text(t) => !matches!(
            t.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "f" | "false" | "n" | "no"
        ),
        _ => true,
    }
}

/// How one table is read.
#[derive(Debug, Clone)]
enum Mode {
    Incremental {
        ts_column: String,
        scale: TsScale,
        inc_column: String,
    },
    Bulk,
}

/// A polled table and what the source knows of it.
struct Table {
    desc: Arc<TableDesc>,
    mode: Mode,
    /// Index of the soft-delete column.
    soft_delete: Option<usize>,
    /// Last row known per key (`row_bytes` of the key).
    kept: HashMap<Vec<u8>, Row>,
    /// Where the next incremental poll goes on from.
    polled: Option<Watermark>,
    /// When a bulk table was last read.
    bulk_read: Option<Instant>,
    /// Bulk rows rejected, by key: the reason, so a row that stays bad is
    /// not sent to the dead-letter topic at every poll.
    bad: HashMap<Vec<u8>, Vec<u8>>,
}

/// What an item of the queue yields.
enum Out {
    Record(Box<SourceRecord>),
    Rejected(RejectedRecord),
}

/// One polled row (or delete) waiting to be yielded.
struct Item {
    table: usize,
    /// Key bytes of the row, when known.
    key: Option<Vec<u8>>,
    /// `None`: nothing to yield (unchanged row, or superseded by a delete).
    out: Option<Out>,
    /// The table's watermark once this item is yielded.
    watermark: Option<Watermark>,
}

/// Provenance shared by every event of the feed.
struct Feed {
    name: String,
    node: String,
    db: String,
}

/// Where and when a change happened: its position and `source.ts_ms`.
#[derive(Clone, Copy)]
struct At<'a> {
    position: &'a Position,
    ts_ms: i64,
}

impl Feed {
    fn record(
        &self,
        desc: &Arc<TableDesc>,
        op: Op,
        key: Row,
        before: Option<Row>,
        after: Option<Row>,
        at: At<'_>,
    ) -> SourceRecord {
        let At { position, ts_ms } = at;
        SourceRecord {
            table: desc.clone(),
            event: ChangeEvent {
                key,
                before,
                after,
                source: crate::source::Provenance::new(
                    "poll",
                    &self.name,
                    &self.node,
                    &self.db,
                    Some(&desc.schema),
                    &desc.name,
                )
                .info(ts_ms, Snapshot::False, position.0.clone(), None),
                op,
                ts_ms: Some(now_ms()),
                transaction: None,
            },
            position: position.clone(),
        }
    }
}

/// A row's key (when its key cells convert) and the row (or why not).
fn assemble(desc: &TableDesc, cells: Cells) -> (Option<Row>, Result<Row, String>) {
    let key: Option<Row> = desc
        .primary_key
        .iter()
        .map(|k| {
            desc.column(k)
                .and_then(|(i, _)| cells.get(i))
                .and_then(|c| c.as_ref().ok())
                .filter(|d| **d != Datum::Null)
                .cloned()
        })
        .collect::<Option<Vec<_>>>()
        .map(Row);
    let row = cells
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
        .and_then(|row| desc.check_row(&row).map(|_| row).map_err(|e| e.to_string()));
    (key, row)
}

/// What a fetched row changes: an insert, an update, a soft delete or
/// nothing; keeps the row (or forgets the key).
fn change(
    feed: &Feed,
    t: &mut Table,
    key: Row,
    kb: &[u8],
    row: Row,
    at: At<'_>,
    delete_unknown: bool,
) -> Option<SourceRecord> {
    let desc = t.desc.clone();
    let deleted = t
        .soft_delete
        .and_then(|i| row.0.get(i))
        .is_some_and(soft_deleted);
    if deleted {
        let before = match t.kept.remove(kb) {
            Some(kept) => kept,
            None if delete_unknown => row,
            None => return None,
        };
        return Some(feed.record(&desc, Op::Delete, key, Some(before), None, at));
    }
    match t.kept.get_mut(kb) {
        Some(kept) if row_bytes(kept) == row_bytes(&row) => None,
        Some(kept) => {
            let before = std::mem::replace(kept, row.clone());
            Some(feed.record(&desc, Op::Update, key, Some(before), Some(row), at))
        }
        None => {
            t.kept.insert(kb.to_vec(), row.clone());
            Some(feed.record(&desc, Op::Create, key, None, Some(row), at))
        }
    }
}

/// The polling source.
pub struct PollSource {
    config: PollSourceConfig,
    feed: Feed,
    engine: Option<Arc<dyn Engine>>,
    tables: Vec<Table>,
    /// Rows read and not yet yielded, in order.
    queue: VecDeque<Item>,
    /// Watermarks of what was yielded: the checkpoint.
    yielded: BTreeMap<String, Watermark>,
    /// Time of the last poll or key diff (UTC microseconds), which every
    /// later one's exceeds.
    polled_at: Option<i64>,
    /// The last poll filled a batch: poll again without waiting.
    more: bool,
    last_poll: Option<Instant>,
    gauges: Arc<SourceGauges>,
}

impl PollSource {
    /// A source for this feed, capturing for node `node`.
    pub fn new(config: PollSourceConfig, node: impl Into<String>) -> Self {
        let feed = Feed {
            name: config.name.clone(),
            node: node.into(),
            db: String::new(),
        };
        Self {
            config,
            feed,
            engine: None,
            tables: Vec::new(),
            queue: VecDeque::new(),
            yielded: BTreeMap::new(),
            polled_at: None,
            more: false,
            last_poll: None,
            gauges: Arc::default(),
        }
    }

    /// Describes a configured table and checks its columns.
    async fn table(
        &self,
        engine: &dyn Engine,
        index: usize,
        tc: &PollTableConfig,
    ) -> Result<Table, ConnectorError> {
        let (schema, name) = tc
            .table
            .split_once('.')
            .unwrap_or((engine.default_schema(), &tc.table));
        let desc = engine.describe(schema, name, &tc.dataset).await?;
        let qualified = desc.qualified_name();
        let at = format!("feeds[..].tables[{index}]");
        let column = |key: &str, col: &str, need: &str| {
            desc.column(col)
                .map(|(i, c)| (i, c.clone()))
                .ok_or_else(|| {
                    ConnectorError::definite(format!(
                        "table {qualified} has no column {col} ({at}.{key} of feed {}); {need}",
                        self.config.name
                    ))
                })
        };
        let mode = match tc.mode {
            PollMode::Bulk => Mode::Bulk,
            PollMode::TimestampIncrementing => {
                let ts = tc.timestamp_column.as_deref().unwrap_or_default();
                let (_, ts_col) = column(
                    "timestamp_column",
                    ts,
                    "mode \"timestamp+incrementing\" needs a timestamp column the application \
                     sets on every insert and update",
                )?;
                let scale = engine.timestamp_scale(&ts_col).map_err(|why| {
                    ConnectorError::definite(format!(
                        "table {qualified}, column {ts} ({at}.timestamp_column): {why}"
                    ))
                })?;
                let inc = match &tc.incrementing_column {
                    Some(c) => c.clone(),
                    None if desc.primary_key.len() == 1 => desc.primary_key[0].clone(),
                    None => {
                        return Err(ConnectorError::definite(format!(
                            "table {qualified} has a composite primary key ({}): set \
                             {at}.incrementing_column to an integer column unique among rows \
                             with the same timestamp",
                            desc.primary_key.join(", ")
                        )))
                    }
                };
                let (_, inc_col) = column(
                    "incrementing_column",
                    &inc,
                    "mode \"timestamp+incrementing\" needs an integer column unique among rows \
                     with the same timestamp (default: the single primary-key column)",
                )?;
                engine.check_incrementing(&inc_col).map_err(|why| {
                    ConnectorError::definite(format!(
                        "table {qualified}, column {inc} ({at}.incrementing_column): {why}"
                    ))
                })?;
                Mode::Incremental {
                    ts_column: ts.to_owned(),
                    scale,
                    inc_column: inc,
                }
            }
        };
        let soft_delete = match &tc.soft_delete_column {
            Some(c) => Some(
                column(
                    "soft_delete_column",
                    c,
                    "the soft-delete column marks deleted rows (non-NULL and not false/0)",
                )?
                .0,
            ),
            None => None,
        };
        Ok(Table {
            desc: Arc::new(desc),
            mode,
            soft_delete,
            kept: HashMap::new(),
            polled: None,
            bulk_read: None,
            bad: HashMap::new(),
        })
    }

    /// Reads every table once and queues what changed.
    async fn poll(&mut self) -> Result<(), ConnectorError> {
        let engine = self
            .engine
            .clone()
            .ok_or_else(|| ConnectorError::definite("poll source not started"))?;
        let catching_up = self.more;
        let interval = Duration::from_millis(self.config.poll_interval_ms);
        self.last_poll = Some(Instant::now());
        self.more = false;
        let clock = engine.clock().await?;
        let polled_at = self.poll_time(&clock);
        for index in 0..self.tables.len() {
            let t = &self.tables[index];
            match t.mode.clone() {
                Mode::Incremental {
                    ts_column,
                    scale,
                    inc_column,
                } => {
                    let limit = self.config.batch_rows;
                    let delay = i64::try_from(self.config.delay_ms)
                        .unwrap_or(i64::MAX / 1000)
                        .saturating_mul(1000);
                    let rows = engine
                        .read_since(Since {
                            desc: t.desc.clone(),
                            ts_column,
                            scale,
                            inc_column,
                            upper: clock.now(scale).saturating_sub(delay),
                            after: t.polled,
                            limit,
                        })
                        .await?;
                    if rows.len() >= limit {
                        self.more = true;
                    }
                    self.queue_incremental(index, rows, polled_at);
                }
                Mode::Bulk => {
                    let due = !catching_up || t.bulk_read.is_none_or(|at| at.elapsed() >= interval);
                    if due {
                        let rows = engine.read_all(t.desc.clone(), None).await?;
                        self.queue_bulk(index, rows, polled_at);
                    }
                }
            }
        }
        Ok(())
    }

    /// The time of a poll or key diff: the database's UTC clock, but after
    /// the previous one's, so that positions keep increasing when the clock
    /// steps back (or, after a restart, is behind the checkpoint's time).
    fn poll_time(&mut self, clock: &Clock) -> i64 {
        let now = match self.polled_at {
            Some(last) => clock.utc.max(last.saturating_add(1)),
            None => clock.utc,
        };
        let now = now.clamp(0, MAX_POLLED_AT);
        self.polled_at = Some(now);
        now
    }

    fn queue_incremental(&mut self, index: usize, rows: Vec<Polled>, polled_at: i64) {
        let (position, ts_ms) = at_time(polled_at);
        let t = &mut self.tables[index];
        for p in rows {
            let watermark = Watermark {
                ts: p.ts,
                inc: p.inc,
            };
            t.polled = Some(watermark);
            let (key, row) = assemble(&t.desc, p.cells);
            let kb = key.as_ref().map(row_bytes);
            let out = match (key, row) {
                (Some(key), Ok(row)) => {
                    let kb = kb.as_deref().expect("key known");
                    let at = At {
                        position: &position,
                        ts_ms,
                    };
                    change(&self.feed, t, key, kb, row, at, true).map(|r| Out::Record(Box::new(r)))
                }
                (_, Err(reason)) => Some(Out::Rejected(RejectedRecord {
                    table: t.desc.qualified_name(),
                    position: position.clone(),
                    reason,
                })),
                (None, Ok(_)) => Some(Out::Rejected(RejectedRecord {
                    table: t.desc.qualified_name(),
                    position: position.clone(),
                    reason: "the primary key is NULL".into(),
                })),
            };
            self.queue.push_back(Item {
                table: index,
                key: kb,
                out,
                watermark: Some(watermark),
            });
        }
    }

    fn queue_bulk(&mut self, index: usize, rows: Vec<Cells>, polled_at: i64) {
        let t = &mut self.tables[index];
        t.bulk_read = Some(Instant::now());
        let (position, ts_ms) = at_time(polled_at);
        let mut seen = HashSet::new();
        let mut unknown_keys = false;
        let mut bad = HashMap::new();
        for cells in rows {
            let (key, row) = assemble(&t.desc, cells);
            let kb = key.as_ref().map(row_bytes);
            match &kb {
                Some(kb) => {
                    seen.insert(kb.clone());
                }
                None => unknown_keys = true,
            }
            let out = match (key, row) {
                (Some(key), Ok(row)) => {
                    let kb = kb.as_deref().expect("key known");
                    let at = At {
                        position: &position,
                        ts_ms,
                    };
                    change(&self.feed, t, key, kb, row, at, false).map(|r| Out::Record(Box::new(r)))
                }
                (_, Err(reason)) => {
                    // Once per key and reason, not at every poll.
                    let fingerprint = reason.clone().into_bytes();
                    let again = kb
                        .as_ref()
                        .is_some_and(|k| t.bad.get(k) == Some(&fingerprint));
                    if let Some(k) = &kb {
                        bad.insert(k.clone(), fingerprint);
                    }
                    (!again).then(|| {
                        Out::Rejected(RejectedRecord {
                            table: t.desc.qualified_name(),
                            position: position.clone(),
                            reason,
                        })
                    })
                }
                (None, Ok(_)) => None,
            };
            self.queue.push_back(Item {
                table: index,
                key: kb,
                out,
                watermark: None,
            });
        }
        t.bad = bad;
        if unknown_keys {
            tracing::warn!(
                feed = %self.feed.name,
                table = %t.desc.qualified_name(),
                "some primary keys could not be read; deletes are not looked for in this poll"
            );
            return;
        }
        let mut gone: Vec<Vec<u8>> = t
            .kept
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        gone.sort();
        for kb in gone {
            let before = t.kept.remove(&kb).expect("listed");
            let key = t.desc.key_of(&before);
            let desc = t.desc.clone();
            self.queue.push_back(Item {
                table: index,
                key: Some(kb),
                out: Some(Out::Record(Box::new(self.feed.record(
                    &desc,
                    Op::Delete,
                    key,
                    Some(before),
                    None,
                    At {
                        position: &position,
                        ts_ms,
                    },
                )))),
                watermark: None,
            });
        }
    }

    /// Yields up to `max` queued records; the checkpoint covers them.
    fn drain(&mut self, max: usize) -> SourceBatch {
        let mut batch = SourceBatch::with_capacity(max.min(self.queue.len()));
        let mut n = 0;
        while let Some(item) = self.queue.front() {
            if n >= max.max(1) && item.out.is_some() {
                break;
            }
            let item = self.queue.pop_front().expect("front exists");
            if let Some(w) = item.watermark {
                self.yielded
                    .insert(self.tables[item.table].desc.qualified_name(), w);
            }
            match item.out {
                Some(Out::Record(r)) => {
                    batch.records.push(*r);
                    n += 1;
                }
                Some(Out::Rejected(r)) => {
                    batch.rejected.push(r);
                    n += 1;
                }
                None => {}
            }
        }
        batch.checkpoint = Some(checkpoint(&self.yielded, self.polled_at));
        batch
    }
}

#[async_trait]
impl Source for PollSource {
    async fn start(
        &mut self,
        position: Option<Position>,
    ) -> Result<Vec<Arc<TableDesc>>, ConnectorError> {
        self.config.validate().map_err(ConnectorError::definite)?;
        let resume = parse_checkpoint(position.as_ref(), &self.config.name)?;
        let engine = connect(&self.config).await?;
        let mut tables = Vec::with_capacity(self.config.tables.len());
        for (i, tc) in self.config.tables.iter().enumerate() {
            tables.push(self.table(&*engine, i, tc).await?);
        }
        self.yielded.clear();
        self.polled_at = resume.polled_at;
        for t in &mut tables {
            if matches!(t.mode, Mode::Incremental { .. }) {
                let name = t.desc.qualified_name();
                t.polled = resume.tables.get(&name).copied();
                if let Some(w) = t.polled {
                    self.yielded.insert(name, w);
                }
            }
        }
        for name in resume.tables.keys() {
            if !self.yielded.contains_key(name) {
                tracing::info!(
                    feed = %self.config.name,
                    table = %name,
                    "table in the stored position is no longer polled by timestamp"
                );
            }
        }
        tracing::info!(
            feed = %self.config.name,
            engine = self.config.engine.as_str(),
            tables = tables.len(),
            resumed = !resume.tables.is_empty(),
            "polling source started"
        );
        self.feed.db = engine.db().to_owned();
        self.tables = tables;
        self.queue.clear();
        self.more = false;
        self.last_poll = None;
        self.engine = Some(engine);
        Ok(self.tables.iter().map(|t| t.desc.clone()).collect())
    }

    async fn next_batch(&mut self, max: usize) -> Result<SourceBatch, ConnectorError> {
        if self.engine.is_none() {
            return Err(ConnectorError::definite("poll source not started"));
        }
        if self.queue.is_empty() {
            if let (false, Some(at)) = (self.more, self.last_poll) {
                let next = at + Duration::from_millis(self.config.poll_interval_ms);
                tokio::time::sleep_until(next.into()).await;
            }
            self.poll().await?;
        }
        // After an idle poll: an empty batch with the (unchanged) checkpoint.
        Ok(self.drain(max))
    }

    async fn acknowledge(&mut self, _position: &Position) -> Result<(), ConnectorError> {
        // Polling keeps no history in the database to release.
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ConnectorError> {
        self.engine = None;
        Ok(())
    }

    fn gauges(&self) -> Option<Arc<SourceGauges>> {
        Some(self.gauges.clone())
    }

    fn topic_state_interval(&self) -> Option<Duration> {
        Some(match self.config.key_diff_interval_secs {
            0 => Duration::MAX,
            secs => Duration::from_secs(secs),
        })
    }

    async fn topic_state(
        &mut self,
        table: &Arc<TableDesc>,
        topic_rows: Vec<Row>,
    ) -> Result<SourceBatch, ConnectorError> {
        let engine = self
            .engine
            .clone()
            .ok_or_else(|| ConnectorError::definite("poll source not started"))?;
        let Some(index) = self
            .tables
            .iter()
            .position(|t| t.desc.schema == table.schema && t.desc.name == table.name)
        else {
            return Err(ConnectorError::definite(format!(
                "topic state for table {}, which feed {} does not poll",
                table.qualified_name(),
                self.config.name
            )));
        };
        let desc = self.tables[index].desc.clone();
        let clock = engine.clock().await?;
        let keys = engine.read_keys(desc.clone()).await?;
        // Nothing awaited below: the state changes all at once.
        let (position, ts_ms) = at_time(self.poll_time(&clock));
        let t = &mut self.tables[index];
        t.kept = topic_rows
            .into_iter()
            .map(|r| (row_bytes(&desc.key_of(&r)), r))
            .collect();
        // Rows read but not yielded yet are not in the topic: replay them
        // onto the kept rows, remembering what the topic had for those keys.
        let mut topic_had: HashMap<Vec<u8>, Option<Row>> = HashMap::new();
        for item in self.queue.iter().filter(|i| i.table == index) {
            let (Some(kb), Some(Out::Record(r))) = (&item.key, &item.out) else {
                continue;
            };
            topic_had
                .entry(kb.clone())
                .or_insert_with(|| t.kept.get(kb).cloned());
            match &r.event.after {
                Some(after) if r.event.op != Op::Delete => {
                    t.kept.insert(kb.clone(), after.clone());
                }
                _ => {
                    t.kept.remove(kb);
                }
            }
        }
        let mut batch = SourceBatch::default();
        let mut present = HashSet::with_capacity(keys.len());
        for cells in keys {
            match cells.into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(key) => {
                    present.insert(row_bytes(&Row(key)));
                }
                Err(reason) => {
                    tracing::warn!(
                        feed = %self.feed.name,
                        table = %desc.qualified_name(),
                        "a primary key could not be read; no key diff this time"
                    );
                    batch.rejected.push(RejectedRecord {
                        table: desc.qualified_name(),
                        position,
                        reason: format!(
                            "a primary key of the table could not be read ({reason}); \
                             deletes are not looked for until it can"
                        ),
                    });
                    return Ok(batch);
                }
            }
        }
        let mut gone: Vec<Vec<u8>> = t
            .kept
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        gone.sort();
        for kb in gone {
            let kept = t.kept.remove(&kb).expect("listed");
            // What subscribers have is the topic's row: the queued changes
            // of this key are superseded by the delete.
            let before = match topic_had.get(&kb) {
                Some(had) => {
                    for item in self.queue.iter_mut() {
                        if item.table == index && item.key.as_ref() == Some(&kb) {
                            item.out = None;
                        }
                    }
                    had.clone()
                }
                None => Some(kept),
            };
            if let Some(before) = before {
                batch.records.push(self.feed.record(
                    &desc,
                    Op::Delete,
                    desc.key_of(&before),
                    Some(before),
                    None,
                    At {
                        position: &position,
                        ts_ms,
                    },
                ));
            }
        }
        if !batch.records.is_empty() {
            tracing::info!(
                feed = %self.feed.name,
                table = %desc.qualified_name(),
                deletes = batch.records.len(),
                "key diff found rows deleted from the table"
            );
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A position of the releases that put column values there: the row's
    /// timestamp and incrementing value, or a poll's time, each as 20
    /// digits with the sign bit flipped.
    fn old_position(values: &[i64]) -> String {
        values
            .iter()
            .map(|v| format!("{:020}", (*v as u64) ^ (1 << 63)))
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn positions_show_the_poll_time_and_sort_as_text_like_it() {
        assert_eq!(
            position(1_767_261_600_123_456).0.as_ref(),
            "poll@2026-01-01T10:00:00.123456Z"
        );
        assert_eq!(position(0).0.as_ref(), "poll@1970-01-01T00:00:00.000000Z");
        let times = [
            -5,
            0,
            1,
            999_999,
            1_000_000,
            1_767_261_600_123_456,
            MAX_POLLED_AT,
            i64::MAX,
        ];
        for w in times.windows(2) {
            assert!(position(w[0]) <= position(w[1]), "{} <= {}", w[0], w[1]);
            assert_eq!(position(w[0]).0.len(), position(w[1]).0.len());
        }
        assert!(position(1) < position(2));
        // Every position sorts after every position of earlier releases,
        // whatever the values in those.
        for old in [
            old_position(&[i64::MAX, i64::MAX]),
            old_position(&[i64::MAX]),
            old_position(&[i64::MIN]),
            old_position(&[1_767_261_600_000_000, 42]),
            old_position(&[4_102_444_800_000_000]),
        ] {
            assert!(old.as_str() < &*position(0).0, "{old}");
        }
    }

    #[test]
    fn poll_times_increase_whatever_the_clock_does() {
        let mut s = PollSource::new(
            PollSourceConfig::sqlite("f", "/nonexistent", Vec::new()),
            "330000",
        );
        let clock = |utc| Clock { utc, local: utc };
        assert_eq!(s.poll_time(&clock(1_000)), 1_000);
        assert_eq!(s.poll_time(&clock(5_000)), 5_000);
        // The clock stepped back, or stood still: one microsecond later.
        assert_eq!(s.poll_time(&clock(2_000)), 5_001);
        assert_eq!(s.poll_time(&clock(5_001)), 5_002);
        // Restarted from a checkpoint taken at a time the clock is behind.
        let p = checkpoint(&BTreeMap::new(), s.polled_at);
        let mut t = PollSource::new(
            PollSourceConfig::sqlite("f", "/nonexistent", Vec::new()),
            "330000",
        );
        t.polled_at = parse_checkpoint(Some(&p), "f").unwrap().polled_at;
        assert_eq!(t.poll_time(&clock(3_000)), 5_003);
        // Before 1970 shows as 1970, and stays after the last time.
        let mut u = PollSource::new(
            PollSourceConfig::sqlite("f", "/nonexistent", Vec::new()),
            "330000",
        );
        assert_eq!(u.poll_time(&clock(-7)), 0);
        assert_eq!(u.poll_time(&clock(-7)), 1);
    }

    #[test]
    fn checkpoints_read_back_and_garbage_names_the_way_out() {
        let mut w = BTreeMap::new();
        w.insert("main.items".to_owned(), Watermark { ts: -5, inc: 7 });
        let p = checkpoint(&w, Some(1_767_261_600_000_000));
        assert!(p.0.starts_with("poll:{"), "{}", p.0);
        let back = parse_checkpoint(Some(&p), "f").unwrap();
        assert_eq!(back.tables, w);
        assert_eq!(back.polled_at, Some(1_767_261_600_000_000));
        assert_eq!(parse_checkpoint(None, "f").unwrap(), Checkpoint::default());
        // Checkpoints of earlier releases: the watermarks alone.
        let old = Position::from(r#"poll:{"main.items":{"ts":-5,"inc":7}}"#.to_owned());
        let back = parse_checkpoint(Some(&old), "f").unwrap();
        assert_eq!((back.tables, back.polled_at), (w, None));
        let empty = Position::from("poll:{}".to_owned());
        assert_eq!(
            parse_checkpoint(Some(&empty), "f").unwrap(),
            Checkpoint::default()
        );
        let e = parse_checkpoint(Some(&Position("0/16B3748".into())), "f").unwrap_err();
        assert!(e.message.contains("--resnapshot"), "{e}");
        let e = parse_checkpoint(Some(&Position(r#"poll:{"tables":3}"#.into())), "f").unwrap_err();
        assert!(e.message.contains("--resnapshot"), "{e}");
    }

    #[test]
    fn soft_delete_values() {
        assert!(!soft_deleted(&Datum::Null));
        assert!(!soft_deleted(&Datum::Bool(false)));
        assert!(!soft_deleted(&Datum::Int(0)));
        assert!(!soft_deleted(&Datum::Text("N".into())));
        assert!(soft_deleted(&Datum::Bool(true)));
        assert!(soft_deleted(&Datum::Long(1)));
        assert!(soft_deleted(&Datum::Text("Y".into())));
        assert!(soft_deleted(&Datum::TimestampTz(0)));
    }
}
