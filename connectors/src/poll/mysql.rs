//! MySQL/MariaDB engine of the polling source: plain `SELECT`s over one
//! connection (reconnected when it breaks), as prepared statements, so
//! values arrive in the binary protocol and convert like the binlog
//! source's snapshot rows ([`crate::mysql::catalog::datum`]). Tables are
//! described by the binlog source's catalog (`information_schema`, same
//! type mapping).
//!
//! The session runs with `time_zone = '+00:00'`, `NAMES utf8mb4` and
//! read-only transactions. `TIMESTAMP` columns (instants) therefore read
//! as UTC and are compared with `UTC_TIMESTAMP(6)`. `DATETIME` columns
//! hold wall-clock times without a zone, which applications writing
//! `NOW()` produce in their session's time zone, by default the server's
//! (`@@GLOBAL.time_zone`, `SYSTEM` included): they are compared with
//! `CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', @@GLOBAL.time_zone)`. Bounds
//! travel as `DATETIME(6)` parameters, so the comparisons are on the
//! column itself and can use an index on it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ColumnDesc, Datum, SqlType, TableDesc};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value};
use tokio::sync::Mutex;

use super::engine::{Cells, Clock, Engine, Polled, Since, TsScale};
use super::PollSourceConfig;
use crate::connect::{self, mysql::MysqlTarget};
use crate::mysql::catalog::{self, ident, Kind, Origin};
use crate::sink::values::{civil_from_days, split_micros};
use crate::{ConnectorError, ErrorKind};

/// A MySQL or MariaDB database read by a polling feed.
pub(crate) struct MysqlEngine {
    /// The server and login of every connection.
    connect: MysqlTarget,
    /// `MySQL at host:port as user (database d)`, for messages.
    target: String,
    database: String,
    /// The connection; `None` after it broke, until the next statement.
    conn: Mutex<Option<Conn>>,
    /// How to read each described table's columns, by (schema, table).
    kinds: std::sync::Mutex<KindsByTable>,
}

/// The column kinds of described tables, by (schema, table).
type KindsByTable = HashMap<(String, String), Arc<Vec<Kind>>>;

/// Server errors that pass on their own: too many connections, shutdown,
/// lock wait timeout, deadlock, interrupted or killed queries, statement
/// time limits, inactivity disconnects.
const TRANSIENT_CODES: [u16; 10] = [1040, 1053, 1203, 1205, 1213, 1317, 1927, 1969, 3024, 4031];

/// Server errors after which the connection is gone: server shutdown,
/// connection killed (MariaDB), disconnected for inactivity (MySQL 8).
const GONE_CODES: [u16; 3] = [1053, 1927, 4031];

/// Whether the connection is unusable after `e`.
fn broken(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Server(s) => GONE_CODES.contains(&s.code),
        other => other.is_fatal(),
    }
}

/// 0001-01-01 00:00:00 and 9999-12-31 23:59:59.999999 in microseconds:
/// bounds are clamped to what a `DATETIME` parameter can hold.
const MIN_MICROS: i64 = -62_135_596_800_000_000;
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// The smallest timestamp polled: `DATETIME`'s documented minimum. Zero
/// dates (`0000-00-00`) sort below it and are never read.
const FLOOR: Value = Value::Date(1000, 1, 1, 0, 0, 0, 0);

/// A `DATETIME(6)` parameter of microseconds since 1970-01-01.
fn datetime(micros: i64) -> Value {
    let (days, of_day) = split_micros(micros.clamp(MIN_MICROS, MAX_MICROS));
    let (y, m, d) = civil_from_days(days);
    let secs = of_day / 1_000_000;
    Value::Date(
        y as u16,
        m as u8,
        d as u8,
        (secs / 3600) as u8,
        (secs / 60 % 60) as u8,
        (secs % 60) as u8,
        (of_day % 1_000_000) as u32,
    )
}

/// Microseconds since 1970-01-01 of a `DATETIME` value from the server.
fn micros_of(v: &Value) -> Option<i64> {
    match *v {
        Value::Date(y, m, d, h, mi, s, us) if y > 0 && m > 0 && d > 0 => {
            let days = crate::text::days_from_civil(i64::from(y), u32::from(m), u32::from(d));
            let secs = (i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(s);
            Some(days * 86_400_000_000 + secs * 1_000_000 + i64::from(us))
        }
        _ => None,
    }
}

fn table_ref(desc: &TableDesc) -> String {
    format!("{}.{}", ident(&desc.schema), ident(&desc.name))
}

fn column_list(columns: &[&ColumnDesc]) -> String {
    columns
        .iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts a row's values for `columns` read as `kinds`.
fn convert(values: Vec<Value>, columns: &[&ColumnDesc], kinds: &[&Kind]) -> Cells {
    if values.len() != columns.len() {
        let reason = format!("{} values for {} columns", values.len(), columns.len());
        return columns.iter().map(|_| Err(reason.clone())).collect();
    }
    values
        .into_iter()
        .zip(columns.iter().zip(kinds))
        .map(|(v, (c, k))| {
            catalog::datum(k, &c.sql_type, v, Origin::Query)
                .map_err(|e| format!("column {}: {e}", c.name))
        })
        .collect()
}

/// The value of an incrementing column as the poll compares it.
fn inc_value(d: &Datum) -> Option<i64> {
    match d {
        Datum::Int(v) => Some(i64::from(*v)),
        Datum::Long(v) => Some(*v),
        Datum::Decimal(v) => v.to_string().parse().ok(),
        _ => None,
    }
}

impl MysqlEngine {
    /// Connects with the feed's settings (checked by
    /// [`PollSourceConfig::validate`]).
    pub async fn connect(config: &PollSourceConfig) -> Result<Self, ConnectorError> {
        let user = config.user.clone().unwrap_or_default();
        let database = config.database.clone().unwrap_or_default();
        let target = MysqlTarget {
            host: config.host.clone(),
            port: config.port(),
            user: user.clone(),
            password: config.password.clone(),
            database: Some(database.clone()),
            init: vec![
                "SET time_zone = '+00:00'".to_owned(),
                "SET NAMES utf8mb4".to_owned(),
                "SET SESSION TRANSACTION READ ONLY".to_owned(),
            ],
            tls: config.tls(),
        };
        let engine = Self {
            connect: target,
            target: format!(
                "MySQL at {}:{} as {user} (database {database})",
                config.host,
                config.port()
            ),
            database,
            conn: Mutex::new(None),
            kinds: std::sync::Mutex::default(),
        };
        // Connect now, so that a wrong address or password shows at start.
        let conn = engine.open().await?;
        *engine.conn.lock().await = Some(conn);
        Ok(engine)
    }

    async fn open(&self) -> Result<Conn, ConnectorError> {
        connect::mysql::connect(&self.connect, |_, e| {
            let msg = format!("cannot connect to {}: {e}", self.target);
            match &e {
                mysql_async::Error::Server(s)
                    if connect::mysql::login_refusal(s.code).is_some() =>
                {
                    ConnectorError::definite(format!(
                        "{msg}; check the feed's user, password and database, and that the user \
                         may connect from this host and SELECT the polled tables"
                    ))
                }
                mysql_async::Error::Url(_) => ConnectorError::definite(msg),
                _ => ConnectorError::transient(msg),
            }
            .with_source(e)
        })
        .await
    }

    fn sql_err(&self, what: &str, e: mysql_async::Error) -> ConnectorError {
        let msg = format!("{}: {what}: {e}", self.target);
        let transient = match &e {
            mysql_async::Error::Server(s) => TRANSIENT_CODES.contains(&s.code),
            mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => true,
            mysql_async::Error::Other(_) | mysql_async::Error::Url(_) => false,
        };
        if transient {
            ConnectorError::transient(msg).with_source(e)
        } else {
            ConnectorError::definite(msg).with_source(e)
        }
    }

    /// Runs a prepared statement and returns its rows' values. A
    /// connection found broken is replaced and the statement (a read) run
    /// once more; one that breaks again is a transient error, and the
    /// next statement connects anew.
    async fn rows(
        &self,
        what: &str,
        sql: &str,
        params: Params,
    ) -> Result<Vec<Vec<Value>>, ConnectorError> {
        let mut guard = self.conn.lock().await;
        let mut retried = false;
        loop {
            let fresh = guard.is_none();
            if fresh {
                *guard = Some(self.open().await?);
            }
            let conn = guard.as_mut().expect("connected");
            match conn
                .exec::<mysql_async::Row, _, _>(sql, params.clone())
                .await
            {
                Ok(rows) => return Ok(rows.into_iter().map(mysql_async::Row::unwrap).collect()),
                Err(e) if broken(&e) => {
                    *guard = None;
                    if fresh || retried {
                        return Err(self.sql_err(what, e));
                    }
                    tracing::info!(
                        target_db = %self.target,
                        error = %e,
                        "the polling feed's MySQL connection broke; reconnecting"
                    );
                    retried = true;
                }
                Err(e) => return Err(self.sql_err(what, e)),
            }
        }
    }

    /// How to read the columns of a described table.
    fn kinds(&self, desc: &TableDesc) -> Result<Arc<Vec<Kind>>, ConnectorError> {
        self.kinds
            .lock()
            .expect("kinds lock")
            .get(&(desc.schema.clone(), desc.name.clone()))
            .cloned()
            .ok_or_else(|| {
                ConnectorError::definite(format!(
                    "table {} was not described by this MySQL engine",
                    desc.qualified_name()
                ))
            })
    }
}

#[async_trait]
impl Engine for MysqlEngine {
    fn db(&self) -> &str {
        &self.database
    }

    fn default_schema(&self) -> &str {
        &self.database
    }

    async fn describe(
        &self,
        schema: &str,
        name: &str,
        dataset: &str,
    ) -> Result<TableDesc, ConnectorError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(self.open().await?);
        }
        let conn = guard.as_mut().expect("connected");
        let described = match catalog::describe(conn, schema, name, dataset).await {
            Ok(d) => d,
            Err(e) => {
                if e.kind == ErrorKind::Transient {
                    // Perhaps the connection broke: the next call reconnects.
                    *guard = None;
                }
                return Err(e);
            }
        };
        self.kinds.lock().expect("kinds lock").insert(
            (schema.to_owned(), name.to_owned()),
            Arc::new(described.kinds),
        );
        Ok(described.desc)
    }

    fn timestamp_scale(&self, column: &ColumnDesc) -> Result<TsScale, String> {
        match &column.sql_type {
            // TIMESTAMP: an instant, read in the session's UTC.
            SqlType::TimestampTz => Ok(TsScale::Utc),
            // DATETIME: wall-clock time of the server's time zone.
            SqlType::Timestamp => Ok(TsScale::Local),
            other => Err(format!(
                "it is {other}, but the timestamp column must be a DATETIME or TIMESTAMP \
                 column the application sets on every insert and update"
            )),
        }
    }

    fn check_incrementing(&self, column: &ColumnDesc) -> Result<(), String> {
        match &column.sql_type {
            SqlType::SmallInt | SqlType::Int | SqlType::BigInt => Ok(()),
            // BIGINT UNSIGNED (decimal(20,0)) and DECIMAL(p,0).
            SqlType::Decimal { scale: Some(0), .. } => Ok(()),
            other => Err(format!(
                "it is {other}, but the incrementing column must be an integer column \
                 (TINYINT to BIGINT, signed or unsigned, or DECIMAL(p,0)) unique among rows \
                 with the same timestamp"
            )),
        }
    }

    async fn clock(&self) -> Result<Clock, ConnectorError> {
        let rows = self
            .rows(
                "reading the database clock",
                "SELECT UTC_TIMESTAMP(6), \
                 CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', @@GLOBAL.time_zone)",
                Params::Empty,
            )
            .await?;
        let row = rows.first();
        let utc = row
            .and_then(|r| r.first())
            .and_then(micros_of)
            .ok_or_else(|| {
                ConnectorError::transient(format!(
                    "{}: reading the database clock: UTC_TIMESTAMP(6) returned no time",
                    self.target
                ))
            })?;
        let local = match row.and_then(|r| r.get(1)).and_then(micros_of) {
            Some(local) => local,
            None => {
                tracing::warn!(
                    target_db = %self.target,
                    "CONVERT_TZ cannot read the server's time zone (@@GLOBAL.time_zone); \
                     DATETIME columns are compared with UTC"
                );
                utc
            }
        };
        Ok(Clock { utc, local })
    }

    async fn read_since(&self, q: Since) -> Result<Vec<Polled>, ConnectorError> {
        let desc = &q.desc;
        let kinds = self.kinds(desc)?;
        let (Some((ts_i, _)), Some((inc_i, inc_col))) =
            (desc.column(&q.ts_column), desc.column(&q.inc_column))
        else {
            return Err(ConnectorError::definite(format!(
                "table {} has no column {} or {}",
                desc.qualified_name(),
                q.ts_column,
                q.inc_column
            )));
        };
        let columns: Vec<&ColumnDesc> = desc.columns.iter().collect();
        let kind_refs: Vec<&Kind> = kinds.iter().collect();
        let ts = ident(&q.ts_column);
        let inc = ident(&q.inc_column);
        // Dates with a zero month or day (allowed without NO_ZERO_IN_DATE)
        // have no place on the watermark's scale: never read.
        let mut sql = format!(
            "SELECT {} FROM {} WHERE {ts} < ? AND {ts} >= ? \
             AND MONTH({ts}) > 0 AND DAYOFMONTH({ts}) > 0 AND {inc} IS NOT NULL",
            column_list(&columns),
            table_ref(desc),
        );
        if matches!(inc_col.sql_type, SqlType::Decimal { .. }) {
            // The watermark holds a signed 64-bit value: larger values
            // (BIGINT UNSIGNED above 2^63 - 1) are not polled.
            sql.push_str(&format!(
                " AND {inc} BETWEEN -9223372036854775808 AND 9223372036854775807"
            ));
        }
        let mut params = vec![datetime(q.upper), FLOOR];
        if let Some(w) = q.after {
            sql.push_str(&format!(" AND ({ts} > ? OR ({ts} = ? AND {inc} > ?))"));
            params.extend([datetime(w.ts), datetime(w.ts), Value::Int(w.inc)]);
        }
        sql.push_str(&format!(" ORDER BY {ts}, {inc} LIMIT {}", q.limit));
        let what = format!("polling {}", desc.qualified_name());
        let rows = self.rows(&what, &sql, Params::Positional(params)).await?;
        rows.into_iter()
            .map(|values| {
                let cells = convert(values, &columns, &kind_refs);
                let ts = match cells.get(ts_i) {
                    Some(Ok(Datum::Timestamp(v) | Datum::TimestampTz(v))) => Some(*v),
                    _ => None,
                };
                let inc = cells
                    .get(inc_i)
                    .and_then(|c| c.as_ref().ok())
                    .and_then(inc_value);
                match (ts, inc) {
                    (Some(ts), Some(inc)) => Ok(Polled { ts, inc, cells }),
                    // The query only returns rows whose timestamp and
                    // incrementing value are on the watermark's scale.
                    _ => Err(ConnectorError::definite(format!(
                        "{what}: a row whose {} or {} cannot be read as a watermark",
                        q.ts_column, q.inc_column
                    ))),
                }
            })
            .collect()
    }

    async fn read_all(
        &self,
        desc: Arc<TableDesc>,
        limit: Option<usize>,
    ) -> Result<Vec<Cells>, ConnectorError> {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let kinds = self.kinds(&desc)?;
        let columns: Vec<&ColumnDesc> = desc.columns.iter().collect();
        let kind_refs: Vec<&Kind> = kinds.iter().collect();
        let keys: Vec<String> = desc.primary_key.iter().map(|k| ident(k)).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}{limit}",
            column_list(&columns),
            table_ref(&desc),
            keys.join(", ")
        );
        let rows = self
            .rows(
                &format!("reading {}", desc.qualified_name()),
                &sql,
                Params::Empty,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|values| convert(values, &columns, &kind_refs))
            .collect())
    }

    async fn read_keys(&self, desc: Arc<TableDesc>) -> Result<Vec<Cells>, ConnectorError> {
        let kinds = self.kinds(&desc)?;
        let mut columns = Vec::with_capacity(desc.primary_key.len());
        let mut kind_refs = Vec::with_capacity(desc.primary_key.len());
        for k in &desc.primary_key {
            let (i, c) = desc.column(k).ok_or_else(|| {
                ConnectorError::definite(format!(
                    "table {} has no key column {k}",
                    desc.qualified_name()
                ))
            })?;
            columns.push(c);
            kind_refs.push(&kinds[i]);
        }
        let sql = format!("SELECT {} FROM {}", column_list(&columns), table_ref(&desc));
        let rows = self
            .rows(
                &format!("reading the keys of {}", desc.qualified_name()),
                &sql,
                Params::Empty,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|values| convert(values, &columns, &kind_refs))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_parameters_round_trip_microseconds() {
        for micros in [
            0,
            1_767_261_605_123_456,
            -1,
            -86_400_000_000,
            // 1000-01-01 (the floor) and 9999-12-31 23:59:59.999999.
            -30_610_224_000_000_000,
            MAX_MICROS,
        ] {
            assert_eq!(micros_of(&datetime(micros)), Some(micros), "{micros}");
        }
        assert_eq!(micros_of(&FLOOR), Some(-30_610_224_000_000_000));
        assert_eq!(
            datetime(1_767_261_605_123_456),
            Value::Date(2026, 1, 1, 10, 0, 5, 123_456)
        );
        // Out of DATETIME's range: clamped.
        assert_eq!(datetime(i64::MIN), Value::Date(1, 1, 1, 0, 0, 0, 0));
        assert_eq!(
            datetime(i64::MAX),
            Value::Date(9999, 12, 31, 23, 59, 59, 999_999)
        );
        assert_eq!(micros_of(&Value::Date(0, 0, 0, 0, 0, 0, 0)), None);
    }

    #[test]
    fn incrementing_values_read_from_integers_and_whole_decimals() {
        assert_eq!(inc_value(&Datum::Int(-3)), Some(-3));
        assert_eq!(inc_value(&Datum::Long(1 << 40)), Some(1 << 40));
        let d = backflow_schemas::Decimal::parse("9223372036854775807", 0).unwrap();
        assert_eq!(inc_value(&Datum::Decimal(d)), Some(i64::MAX));
        assert_eq!(inc_value(&Datum::Text("1".into())), None);
    }
}
