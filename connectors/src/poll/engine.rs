//! What the polling source needs from a database engine. PostgreSQL,
//! SQLite and MySQL/MariaDB implement it; another engine is added by
//! implementing [`Engine`] in a file of its own, adding a variant to
//! [`super::PollEngine`] and a branch to [`super::connect`].
//!
//! An engine turns every value into a [`Datum`] of the column's described
//! [`SqlType`](backflow_schemas::SqlType) itself, cell by cell, so that one
//! bad value rejects one row (with the column named) and the row's key and
//! watermark are still known.

use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ColumnDesc, Datum, SqlType, TableDesc};

use crate::ConnectorError;

/// How a timestamp column's values relate to UTC, which decides the clock
/// the poll compares them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TsScale {
    /// Instants (PostgreSQL `timestamptz`, MySQL `TIMESTAMP`; SQLite, whose
    /// date functions are UTC): compared with the database's UTC clock.
    Utc,
    /// Wall-clock times without a zone (PostgreSQL `timestamp`, MySQL
    /// `DATETIME`): compared with the database's local time in the
    /// server's default time zone (PostgreSQL `LOCALTIMESTAMP`, MySQL
    /// `UTC_TIMESTAMP` converted to `@@GLOBAL.time_zone`).
    Local,
}

/// The database's clock at one instant, in microseconds since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    /// UTC.
    pub utc: i64,
    /// The same instant as local wall-clock time of the database.
    pub local: i64,
}

impl Clock {
    /// Now on the scale of a timestamp column.
    pub fn now(&self, scale: TsScale) -> i64 {
        match scale {
            TsScale::Utc => self.utc,
            TsScale::Local => self.local,
        }
    }
}

/// Where a table's incremental poll goes on from: the last row read, by
/// (timestamp key, incrementing value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Watermark {
    /// Timestamp key of the last row read: microseconds since 1970-01-01 on
    /// the column's [`TsScale`].
    pub ts: i64,
    /// Its incrementing column.
    pub inc: i64,
}

/// One incremental read: rows with `timestamp < upper` after `after` in
/// (timestamp, incrementing) order, at most `limit`.
#[derive(Debug, Clone)]
pub(crate) struct Since {
    pub desc: Arc<TableDesc>,
    pub ts_column: String,
    pub scale: TsScale,
    pub inc_column: String,
    /// Exclusive upper bound of the timestamp key (now minus the delay).
    pub upper: i64,
    /// Exclusive lower bound; `None`: from the first row.
    pub after: Option<Watermark>,
    pub limit: usize,
}

/// A row's values in column order (or key order), each converted or the
/// reason it does not convert (naming the column, never the value).
pub(crate) type Cells = Vec<Result<Datum, String>>;

/// A row read by an incremental poll.
#[derive(Debug, Clone)]
pub(crate) struct Polled {
    /// Timestamp key, as the database compared it.
    pub ts: i64,
    /// Incrementing value.
    pub inc: i64,
    /// The row.
    pub cells: Cells,
}

/// A database the polling source reads.
#[async_trait]
pub(crate) trait Engine: Send + Sync {
    /// Database name for `source.db`.
    fn db(&self) -> &str;

    /// Schema of a table named without one (`public`, `main`, the MySQL
    /// feed's database).
    fn default_schema(&self) -> &str;

    /// Columns, types and primary key of a table; a definite error naming
    /// it when it does not exist or cannot be shared.
    async fn describe(
        &self,
        schema: &str,
        name: &str,
        dataset: &str,
    ) -> Result<TableDesc, ConnectorError>;

    /// Whether `column` can be a timestamp column, and on what scale; the
    /// reason (what is needed) when not.
    fn timestamp_scale(&self, column: &ColumnDesc) -> Result<TsScale, String>;

    /// Whether `column` can be an incrementing column.
    fn check_incrementing(&self, column: &ColumnDesc) -> Result<(), String> {
        match &column.sql_type {
            SqlType::SmallInt | SqlType::Int | SqlType::BigInt => Ok(()),
            other => Err(format!(
                "it is {other}, but the incrementing column must be an integer column \
                 (smallint, integer, bigint) unique among rows with the same timestamp"
            )),
        }
    }

    /// The database's clock now.
    async fn clock(&self) -> Result<Clock, ConnectorError>;

    /// Rows changed since a watermark.
    async fn read_since(&self, query: Since) -> Result<Vec<Polled>, ConnectorError>;

    /// Every row of a table.
    async fn read_all(
        &self,
        desc: Arc<TableDesc>,
        limit: Option<usize>,
    ) -> Result<Vec<Cells>, ConnectorError>;

    /// Every primary key of a table (key columns in key order).
    async fn read_keys(&self, desc: Arc<TableDesc>) -> Result<Vec<Cells>, ConnectorError>;
}

/// Double-quotes an identifier (PostgreSQL, SQLite; MySQL uses backticks).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
