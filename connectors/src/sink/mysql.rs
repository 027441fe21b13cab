//! The MySQL/MariaDB sink: multi-row `INSERT ... ON DUPLICATE KEY UPDATE`
//! guarded by the row's stored version, one transaction per batch, offsets
//! in `<database>._backflow_offsets`.
//!
//! The session runs in strict mode, so a value a column cannot hold is an
//! error (and the record goes to the dead-letter topic), never a silent
//! truncation. Tables are created with a binary, no-pad collation so keys
//! that differ only in case or trailing spaces stay distinct rows, as they
//! are in the source.
//!
//! Storage choices where MySQL has no exact type: `timestamptz` is
//! `DATETIME(6)` in UTC (the session time zone is `+00:00`); numerics beyond
//! `DECIMAL(65,30)` and unconstrained numerics are text; `char(n)` is
//! `VARCHAR(n)` (MySQL's CHAR strips trailing spaces on read); `uuid` is
//! `CHAR(36)`; long `varchar(n)` become text with a CHECK on their length.
//!
//! The user authenticates with `mysql_native_password` or a cached
//! `caching_sha2_password`; `mysql_clear_password` and full
//! `caching_sha2_password` authentication are refused without TLS
//! (`connectors/src/connect/mod.rs`).
//!
//! # Prerequisites
//! - The user has `CREATE` on the database (the sink creates it and the
//!   tables when absent), or they exist and the user has `INSERT`,
//!   `UPDATE`, `DELETE` and `SELECT` on them and may create
//!   `_backflow_offsets` there.
//! - A refused login (error 1045, 1044, 1049 ...) is a definite error with
//!   the fix: the subscription shows FAILED and is tried again once a
//!   minute.
//!
//! # Example
//! ```toml
//! [[subscriptions]]
//! name = "330108-population"
//! upstream = { brokers = "city-kafka:9092", registry_url = "https://city.example:8480", registry_token_env = "CITY_TOKEN" }
//! sink = { type = "mysql", host = "10.1.0.6", user = "backflow", password_env = "DISTRICT_MY_PASSWORD", database = "district", sslmode = "verify-full", ssl_ca_file = "/etc/backflow/gov-ca.pem" }
//! tables = [{ topic = "backflow.share.330108.gongan.population", table = "population" }]
//! ```
//!
//! # Metrics
//! The subscription running the sink reports, labelled by subscription:
//! `backflow_subscribe_rows_total{outcome}` (`upsert`, `delete`, `skip`:
//! superseded or older than what the table holds),
//! `backflow_subscribe_batches_total`, `backflow_subscribe_apply_seconds`
//! (one batch, commit included), `backflow_subscribe_dead_letters_total`,
//! `backflow_subscribe_errors_total{kind}` and
//! `backflow_subscribe_lag_messages`/`_seconds`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ColumnDesc, Datum, SqlType, TableDesc};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, TxOpts, Value};
use serde::{Deserialize, Serialize};

use super::values::{civil_from_days, hms, split_micros};
use super::{
    plan, quote, read_back_columns, reconcile, redact, Applied, DigestBuilder, ExistingColumn,
    ExistingTable, ReadBack, Sink, SinkBatch, TopicOffset, OFFSETS_TABLE, POSITION_COLUMN,
};
use crate::connect::{self, mysql::MysqlTarget};
use crate::ConnectorError;

/// Where a MySQL/MariaDB sink writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSinkConfig {
    /// Host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User.
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
    /// Database tables are written to (created if absent).
    pub database: String,
}

impl MysqlSinkConfig {
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

/// Rows per INSERT statement (well under the 65,535 placeholders limit).
const ROWS_PER_STATEMENT: usize = 500;
/// Keys per DELETE statement.
const KEYS_PER_DELETE: usize = 200;
/// Widest `varchar(n)` kept as VARCHAR; wider ones are text with a CHECK
/// (a row's VARCHARs share a 65,535-byte limit).
const MAX_VARCHAR: u32 = 1024;

const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO";

/// The column type the sink creates for a SQL type (`mariadb` decides how
/// JSON is spelt: MariaDB's JSON is LONGTEXT with a validity check).
pub fn ddl_type(c: &ColumnDesc, is_key: bool, mariadb: bool) -> String {
    let text = |is_key: bool| if is_key { "VARCHAR(768)" } else { "LONGTEXT" }.to_owned();
    match &c.sql_type {
        SqlType::SmallInt => "SMALLINT".into(),
        SqlType::Int => "INT".into(),
        SqlType::BigInt => "BIGINT".into(),
        SqlType::Decimal {
            precision: Some(p),
            scale,
        } if *p <= 65 && scale.unwrap_or(0) <= 30 => format!("DECIMAL({p},{})", scale.unwrap_or(0)),
        SqlType::Decimal { .. } => text(is_key),
        SqlType::Real => "FLOAT".into(),
        SqlType::Double => "DOUBLE".into(),
        SqlType::Boolean => "TINYINT(1)".into(),
        SqlType::Varchar { len: Some(n) } | SqlType::Char { len: Some(n) }
            if *n <= MAX_VARCHAR || (is_key && *n <= 768) =>
        {
            format!("VARCHAR({n})")
        }
        SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. } | SqlType::Interval => {
            text(is_key)
        }
        SqlType::Bytes => if is_key {
            "VARBINARY(3072)"
        } else {
            "LONGBLOB"
        }
        .into(),
        SqlType::Date => "DATE".into(),
        SqlType::Time => "TIME(6)".into(),
        SqlType::Timestamp | SqlType::TimestampTz => "DATETIME(6)".into(),
        SqlType::Uuid => "CHAR(36)".into(),
        // An array as its JSON text (sink::values::json_text).
        SqlType::Json | SqlType::Array(_) if is_key => text(is_key),
        SqlType::Json | SqlType::Array(_) if mariadb => "LONGTEXT".into(),
        SqlType::Json | SqlType::Array(_) => "JSON".into(),
    }
}

/// A CHECK that keeps what the column type alone would not.
fn column_check(c: &ColumnDesc, mariadb: bool) -> Option<String> {
    let name = quote('`', &c.name);
    match c.sql_type {
        SqlType::Varchar { len: Some(n) } | SqlType::Char { len: Some(n) } if n > MAX_VARCHAR => {
            Some(format!("CHECK (CHAR_LENGTH({name}) <= {n})"))
        }
        SqlType::Json if mariadb => Some(format!("CHECK (JSON_VALID({name}))")),
        _ => None,
    }
}

/// The MySQL/MariaDB sink of one subscription.
pub struct MysqlSink {
    config: MysqlSinkConfig,
    subscription: String,
    conn: Option<Conn>,
    mariadb: bool,
    collation: String,
    /// Tables made ready, by description (the `Arc` keeps its address).
    ready: HashMap<usize, Arc<TableDesc>>,
}

impl MysqlSink {
    /// A sink for subscription `subscription`.
    pub fn new(config: MysqlSinkConfig, subscription: impl Into<String>) -> Self {
        Self {
            config,
            subscription: subscription.into(),
            conn: None,
            mariadb: false,
            collation: "utf8mb4_bin".into(),
            ready: HashMap::new(),
        }
    }

    async fn conn(&mut self) -> Result<&mut Conn, ConnectorError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    async fn connect(&mut self) -> Result<(), ConnectorError> {
        self.ready.clear();
        let c = &self.config;
        let target = MysqlTarget {
            host: c.host.clone(),
            port: c.port,
            user: c.user.clone(),
            password: c.password.clone(),
            database: None,
            init: vec![
                format!("SET SESSION sql_mode = '{SQL_MODE}'"),
                "SET time_zone = '+00:00'".to_owned(),
                "SET NAMES utf8mb4".to_owned(),
            ],
            tls: c.tls(),
        };
        let mut conn = connect::mysql::connect(&target, connect::mysql::login_error).await?;
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| my_error(e, "reading the server version"))?;
        self.mariadb = version
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("mariadb");
        let collations: Vec<String> = conn
            .query("SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')")
            .await
            .map_err(|e| my_error(e, "reading the server's collations"))?;
        self.collation = collations
            .into_iter()
            .next()
            .unwrap_or_else(|| "utf8mb4_bin".to_owned());
        let db = quote('`', &c.database);
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4 COLLATE {}",
            self.collation
        ))
        .await
        .map_err(|e| my_error(e, &format!("creating database {}", c.database)))?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {db}.{} (
                 subscription VARCHAR(255) NOT NULL,
                 topic VARCHAR(255) NOT NULL,
                 `partition` INT NOT NULL,
                 `offset` BIGINT NOT NULL,
                 updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                 PRIMARY KEY (subscription, topic, `partition`)
             ) ENGINE=InnoDB CHARACTER SET ascii COLLATE ascii_bin",
            quote('`', OFFSETS_TABLE)
        ))
        .await
        .map_err(|e| my_error(e, &format!("creating {}.{OFFSETS_TABLE}", c.database)))?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Drops the connection after an error that may have broken it.
    fn forget_on(&mut self, e: &ConnectorError) {
        if e.is_transient() {
            self.conn = None;
        }
    }

    fn qualified(desc: &TableDesc) -> String {
        format!("{}.{}", quote('`', &desc.schema), quote('`', &desc.name))
    }

    async fn existing(
        &mut self,
        desc: &TableDesc,
    ) -> Result<Option<ExistingTable>, ConnectorError> {
        let what = format!("reading the catalog of {}", desc.qualified_name());
        let conn = self.conn().await?;
        let cols: Vec<(String, String, String, Option<String>, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA
                   FROM information_schema.COLUMNS
                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (desc.schema.as_str(), desc.name.as_str()),
            )
            .await
            .map_err(|e| my_error(e, &what))?;
        if cols.is_empty() {
            return Ok(None);
        }
        let key: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'
                  ORDER BY ORDINAL_POSITION",
                (desc.schema.as_str(), desc.name.as_str()),
            )
            .await
            .map_err(|e| my_error(e, &what))?;
        Ok(Some(ExistingTable {
            columns: cols
                .into_iter()
                .map(
                    |(name, type_name, nullable, default, extra)| ExistingColumn {
                        name,
                        type_name,
                        nullable: nullable == "YES",
                        has_default: default.is_some_and(|d| d != "NULL")
                            || extra.to_ascii_lowercase().contains("auto_increment"),
                    },
                )
                .collect(),
            primary_key: key,
        }))
    }

    async fn ready(&mut self, desc: &Arc<TableDesc>, create: bool) -> Result<bool, ConnectorError> {
        let id = Arc::as_ptr(desc) as usize;
        if self.ready.contains_key(&id) {
            return Ok(true);
        }
        let table = Self::qualified(desc);
        let mariadb = self.mariadb;
        let existing = match self.existing(desc).await? {
            Some(e) => e,
            None if !create => return Ok(false),
            None => {
                let mut cols: Vec<String> = desc
                    .columns
                    .iter()
                    .map(|c| {
                        let key = desc.primary_key.contains(&c.name);
                        let check = column_check(c, mariadb)
                            .map(|c| format!(" {c}"))
                            .unwrap_or_default();
                        format!(
                            "{} {}{}{check}",
                            quote('`', &c.name),
                            ddl_type(c, key, mariadb),
                            if c.nullable { " NULL" } else { " NOT NULL" }
                        )
                    })
                    .collect();
                cols.push(format!(
                    "{} VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL",
                    quote('`', POSITION_COLUMN)
                ));
                let key: Vec<String> = desc.primary_key.iter().map(|k| quote('`', k)).collect();
                let ddl = format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({})) ENGINE=InnoDB CHARACTER SET utf8mb4 COLLATE {}",
                    cols.join(", "),
                    key.join(", "),
                    self.collation
                );
                let conn = self.conn().await?;
                conn.query_drop(format!(
                    "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
                    quote('`', &desc.schema)
                ))
                .await
                .map_err(|e| my_error(e, &format!("creating database {}", desc.schema)))?;
                conn.query_drop(ddl).await.map_err(|e| {
                    my_error(e, &format!("creating table {}", desc.qualified_name()))
                })?;
                tracing::info!(table = %desc.qualified_name(), dataset = %desc.dataset, "created sink table");
                self.existing(desc).await?.ok_or_else(|| {
                    ConnectorError::transient(format!(
                        "table {} vanished after creation",
                        desc.qualified_name()
                    ))
                })?
            }
        };
        if create {
            let fix = reconcile(desc, &existing, |c, k| ddl_type(c, k, mariadb))?;
            let mut alter: Vec<String> = fix
                .add
                .iter()
                .map(|c| {
                    format!(
                        "ADD COLUMN {} {} NULL{}",
                        quote('`', &c.name),
                        ddl_type(c, false, mariadb),
                        column_check(c, mariadb)
                            .map(|c| format!(" {c}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            if fix.add_position {
                alter.push(format!(
                    "ADD COLUMN {} VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL",
                    quote('`', POSITION_COLUMN)
                ));
            }
            if !alter.is_empty() {
                self.conn()
                    .await?
                    .query_drop(format!("ALTER TABLE {table} {}", alter.join(", ")))
                    .await
                    .map_err(|e| {
                        my_error(e, &format!("adding columns to {}", desc.qualified_name()))
                    })?;
                tracing::info!(table = %desc.qualified_name(), added = fix.add.len(), "extended sink table");
            }
        } else if !existing
            .columns
            .iter()
            .any(|e| e.name.eq_ignore_ascii_case(POSITION_COLUMN))
        {
            return Err(ConnectorError::definite(format!(
                "table {} has no {POSITION_COLUMN} column: it was not created by backflow; let backflow write to it once with its full dataset so the column is added",
                desc.qualified_name()
            )));
        }
        self.ready.insert(id, desc.clone());
        Ok(true)
    }

    async fn apply(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError> {
        let (plans, superseded) = plan(batch)?;
        let mut applied = Applied {
            skipped: superseded,
            offsets: batch.offsets.clone(),
            ..Applied::default()
        };
        let mut work = Vec::new();
        for p in &plans {
            if self.ready(&p.table, !p.upserts.is_empty()).await? {
                work.push(p);
            } else {
                applied.skipped += p.deletes.len() as u64;
            }
        }
        let sub = self.subscription.clone();
        let offsets_sql = format!(
            "INSERT INTO {}.{} (subscription, topic, `partition`, `offset`, updated_at) VALUES (?, ?, ?, ?, CURRENT_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE `offset` = VALUES(`offset`), updated_at = VALUES(updated_at)",
            quote('`', &self.config.database),
            quote('`', OFFSETS_TABLE)
        );
        let conn = self.conn().await?;
        let mut tx = conn
            .start_transaction(TxOpts::default())
            .await
            .map_err(|e| my_error(e, "starting a transaction"))?;
        let pos = quote('`', POSITION_COLUMN);
        for p in work {
            let desc = &p.table;
            let table = Self::qualified(desc);
            let names: Vec<String> = desc.columns.iter().map(|c| quote('`', &c.name)).collect();
            let key_idx: Vec<usize> = desc
                .primary_key
                .iter()
                .map(|k| desc.column(k).map(|(i, _)| i).expect("validated key"))
                .collect();
            for chunk in p.deletes.chunks(KEYS_PER_DELETE) {
                let mut params = Vec::with_capacity(chunk.len() * (key_idx.len() + 1));
                let mut terms = Vec::with_capacity(chunk.len());
                for (key, version) in chunk {
                    let mut t: Vec<String> = Vec::with_capacity(key_idx.len() + 1);
                    for (j, i) in key_idx.iter().enumerate() {
                        t.push(format!("{} = ?", names[*i]));
                        params.push(my_value(&desc.columns[*i], &key.0[j])?);
                    }
                    if let Some(v) = version {
                        t.push(format!("({pos} IS NULL OR {pos} <= ?)"));
                        params.push(Value::Bytes(v.clone().into_bytes()));
                    }
                    terms.push(format!("({})", t.join(" AND ")));
                }
                let sql = format!("DELETE FROM {table} WHERE {}", terms.join(" OR "));
                tx.exec_drop(sql, Params::Positional(params))
                    .await
                    .map_err(|e| {
                        my_error(e, &format!("deleting rows of {}", desc.qualified_name()))
                    })?;
                let n = tx.affected_rows();
                applied.deleted += n;
                applied.skipped += chunk.len() as u64 - n.min(chunk.len() as u64);
            }
            let guard = format!("{pos} IS NULL OR {pos} <= VALUES({pos})");
            let mut set: Vec<String> = desc
                .columns
                .iter()
                .filter(|c| !desc.primary_key.contains(&c.name))
                .map(|c| {
                    let n = quote('`', &c.name);
                    format!("{n} = IF({guard}, VALUES({n}), {n})")
                })
                .collect();
            // Last: the assignments above read the row's old version.
            set.push(format!("{pos} = IF({guard}, VALUES({pos}), {pos})"));
            let one_row = format!("({})", vec!["?"; names.len() + 1].join(", "));
            for chunk in p.upserts.chunks(ROWS_PER_STATEMENT) {
                let mut params = Vec::with_capacity(chunk.len() * (names.len() + 1));
                for (row, version) in chunk {
                    for (c, d) in desc.columns.iter().zip(&row.0) {
                        params.push(my_value(c, d)?);
                    }
                    params.push(Value::Bytes(version.clone().into_bytes()));
                }
                let sql = format!(
                    "INSERT INTO {table} ({}, {pos}) VALUES {} ON DUPLICATE KEY UPDATE {}",
                    names.join(", "),
                    vec![one_row.as_str(); chunk.len()].join(", "),
                    set.join(", ")
                );
                tx.exec_drop(sql, Params::Positional(params))
                    .await
                    .map_err(|e| {
                        my_error(e, &format!("writing rows of {}", desc.qualified_name()))
                    })?;
                // MySQL counts an insert 1, a changed row 2, an unchanged 0:
                // the net rows written are what the plan holds.
                applied.upserted += chunk.len() as u64;
            }
        }
        for o in &batch.offsets {
            tx.exec_drop(
                offsets_sql.as_str(),
                (sub.as_str(), o.topic.as_str(), o.partition, o.offset),
            )
            .await
            .map_err(|e| my_error(e, "storing offsets"))?;
        }
        tx.commit()
            .await
            .map_err(|e| my_error(e, "committing a batch"))?;
        Ok(applied)
    }
}

/// A value bound for a column; values MySQL has no way to hold exactly are
/// refused here with the reason.
fn my_value(c: &ColumnDesc, d: &Datum) -> Result<Value, ConnectorError> {
    let refuse = |why: &str| ConnectorError::bad_record(format!("column {}: {why}", c.name));
    Ok(match d {
        Datum::Null => Value::NULL,
        Datum::Bool(b) => Value::Int(i64::from(*b)),
        Datum::Int(v) => Value::Int(i64::from(*v)),
        Datum::Long(v) => Value::Int(*v),
        Datum::Float(v) if v.is_finite() => Value::Float(*v),
        Datum::Double(v) if v.is_finite() => Value::Double(*v),
        Datum::Float(_) | Datum::Double(_) => {
            return Err(refuse("MySQL cannot store NaN or infinite floats"))
        }
        Datum::Decimal(v) => Value::Bytes(v.to_string().into_bytes()),
        Datum::Text(s) | Datum::Json(s) => Value::Bytes(s.clone().into_bytes()),
        Datum::Bytes(b) => Value::Bytes(b.clone()),
        Datum::Uuid(u) => Value::Bytes(u.hyphenated().to_string().into_bytes()),
        Datum::Array(_) => Value::Bytes(super::values::json_text(d).into_bytes()),
        Datum::Date(days) => {
            let (y, m, d) = civil_from_days(i64::from(*days));
            let y = u16::try_from(y)
                .ok()
                .filter(|y| (1000..=9999).contains(y))
                .ok_or_else(|| refuse("MySQL dates are between years 1000 and 9999"))?;
            Value::Date(y, m as u8, d as u8, 0, 0, 0, 0)
        }
        Datum::Time(micros) => {
            let (h, m, s, us) = hms(*micros);
            Value::Time(false, 0, h as u8, m as u8, s as u8, us)
        }
        Datum::Timestamp(micros) | Datum::TimestampTz(micros) => {
            let (days, of_day) = split_micros(*micros);
            let (y, mo, d) = civil_from_days(days);
            let (h, mi, s, us) = hms(of_day);
            let y = u16::try_from(y)
                .ok()
                .filter(|y| (1000..=9999).contains(y))
                .ok_or_else(|| refuse("MySQL DATETIME holds years 1000 to 9999"))?;
            Value::Date(y, mo as u8, d as u8, h as u8, mi as u8, s as u8, us)
        }
    })
}

/// Classifies a MySQL error (see [`crate::sink::Sink`] for the kinds).
fn my_error(e: mysql_async::Error, what: &str) -> ConnectorError {
    match &e {
        mysql_async::Error::Server(s) => {
            let msg = format!(
                "MySQL refused {what}: {} (error {})",
                redact(&s.message, '\''),
                s.code
            );
            match s.code {
                // null, duplicate, out of range, truncated, bad datetime,
                // bad value, too long, foreign key, check constraint, JSON
                1048 | 1062 | 1264 | 1265 | 1292 | 1366 | 1367 | 1406 | 1451 | 1452 | 1690
                | 3140 | 3819 | 4025 => ConnectorError::bad_record(msg),
                // lock wait, deadlock, too many connections, shutdown,
                // connection killed, read-only for now
                1205 | 1213 | 1040 | 1053 | 1927 | 1290 | 2006 | 2013 => {
                    ConnectorError::transient(msg)
                }
                _ => ConnectorError::definite(msg),
            }
        }
        mysql_async::Error::Url(_) => {
            ConnectorError::definite(format!("MySQL connection settings are wrong ({what}): {e}"))
        }
        _ => ConnectorError::transient(format!("MySQL failed while {what}: {e}")),
    }
    .with_source(e)
}

#[async_trait]
impl Sink for MysqlSink {
    async fn committed_offsets(&mut self) -> Result<Vec<TopicOffset>, ConnectorError> {
        let sql = format!(
            "SELECT topic, `partition`, `offset` FROM {}.{} WHERE subscription = ? ORDER BY 1, 2",
            quote('`', &self.config.database),
            quote('`', OFFSETS_TABLE)
        );
        let sub = self.subscription.clone();
        let res: Result<Vec<(String, i32, i64)>, _> = self.conn().await?.exec(sql, (sub,)).await;
        let rows = res.map_err(|e| my_error(e, "reading the stored offsets"));
        let rows = rows.inspect_err(|e| self.forget_on(e))?;
        Ok(rows
            .into_iter()
            .map(|(topic, partition, offset)| TopicOffset {
                topic,
                partition,
                offset,
            })
            .collect())
    }

    async fn apply_batch(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError> {
        let r = self.apply(batch).await;
        if let Err(e) = &r {
            self.forget_on(e);
        }
        r
    }

    async fn shutdown(&mut self) -> Result<(), ConnectorError> {
        self.ready.clear();
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
        Ok(())
    }

    async fn read_back(&mut self, tables: &[Arc<TableDesc>]) -> Result<ReadBack, ConnectorError> {
        let r = self.read_back_snapshot(tables).await;
        if let Err(e) = &r {
            self.forget_on(e);
        }
        r
    }

    async fn copy_table(&mut self, of: &TableDesc, copy: &TableDesc) -> Result<(), ConnectorError> {
        self.ready.clear();
        let what = format!("copying the definition of {}", of.qualified_name());
        let (of, copy) = (Self::qualified(of), Self::qualified(copy));
        let conn = self.conn().await?;
        let r = conn
            .query_drop(format!("DROP TABLE IF EXISTS {copy}"))
            .await
            .and(Ok(()));
        let r = match r {
            Ok(()) => conn
                .query_drop(format!("CREATE TABLE {copy} LIKE {of}"))
                .await
                .map_err(|e| my_error(e, &what)),
            Err(e) => Err(my_error(e, &what)),
        };
        r.inspect_err(|e| self.forget_on(e))
    }

    async fn drop_table(&mut self, table: &TableDesc) -> Result<(), ConnectorError> {
        self.ready.clear();
        let what = format!("dropping {}", table.qualified_name());
        let sql = format!("DROP TABLE IF EXISTS {}", Self::qualified(table));
        let r = self.conn().await?.query_drop(sql).await;
        r.map_err(|e| my_error(e, &what))
            .inspect_err(|e| self.forget_on(e))
    }
}

impl MysqlSink {
    /// [`Sink::read_back`] in one consistent-snapshot transaction, values
    /// through the text protocol (each as the server prints it).
    async fn read_back_snapshot(
        &mut self,
        tables: &[Arc<TableDesc>],
    ) -> Result<ReadBack, ConnectorError> {
        let offsets_sql = format!(
            "SELECT topic, `partition`, `offset` FROM {}.{} WHERE subscription = ? ORDER BY 1, 2",
            quote('`', &self.config.database),
            quote('`', OFFSETS_TABLE)
        );
        let sub = self.subscription.clone();
        let conn = self.conn().await?;
        let mut opts = TxOpts::default();
        opts.with_consistent_snapshot(true)
            .with_isolation_level(mysql_async::IsolationLevel::RepeatableRead)
            .with_readonly(true);
        let mut tx = conn
            .start_transaction(opts)
            .await
            .map_err(|e| my_error(e, "starting a read-only transaction"))?;
        let offsets: Vec<(String, i32, i64)> = tx
            .exec(offsets_sql, (sub,))
            .await
            .map_err(|e| my_error(e, "reading the stored offsets"))?;
        let mut out = Vec::with_capacity(tables.len());
        for desc in tables {
            let what = format!("reading {} back", desc.qualified_name());
            let exists: Option<String> = tx
                .exec_first(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                    (desc.schema.as_str(), desc.name.as_str()),
                )
                .await
                .map_err(|e| my_error(e, &what))?;
            if exists.is_none() {
                out.push(None);
                continue;
            }
            let sql = format!(
                "SELECT {} FROM {}",
                read_back_columns(desc, '`', ""),
                Self::qualified(desc)
            );
            let mut digests = DigestBuilder::new(desc.primary_key.len());
            tx.query_iter(sql)
                .await
                .map_err(|e| my_error(e, &what))?
                .for_each(|row| {
                    digests.add((0..row.len()).map(|i| match row.as_ref(i) {
                        Some(Value::Bytes(b)) => Some(b.as_slice()),
                        _ => None,
                    }))
                })
                .await
                .map_err(|e| my_error(e, &what))?;
            out.push(Some(digests.finish()));
        }
        tx.commit()
            .await
            .map_err(|e| my_error(e, "ending a read-only transaction"))?;
        Ok(ReadBack {
            offsets: offsets
                .into_iter()
                .map(|(topic, partition, offset)| TopicOffset {
                    topic,
                    partition,
                    offset,
                })
                .collect(),
            tables: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_outside_mysql_ranges_are_refused_not_coerced() {
        let c = ColumnDesc::new("born", SqlType::Date, true);
        // 0999-12-31
        let days = crate::text::days_from_civil(999, 12, 31) as i32;
        let e = my_value(&c, &Datum::Date(days)).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::BadRecord);
        assert!(e.message.contains("column born"), "{}", e.message);
        let ok = my_value(&c, &Datum::Date(0)).unwrap();
        assert_eq!(ok, Value::Date(1970, 1, 1, 0, 0, 0, 0));
        let f = ColumnDesc::new("x", SqlType::Double, true);
        assert!(my_value(&f, &Datum::Double(f64::NAN)).is_err());
    }

    #[test]
    fn key_text_columns_fit_an_index() {
        let t = ColumnDesc::new("k", SqlType::Text, false);
        assert_eq!(ddl_type(&t, true, true), "VARCHAR(768)");
        assert_eq!(ddl_type(&t, false, true), "LONGTEXT");
        let wide = ColumnDesc::new("w", SqlType::Varchar { len: Some(5000) }, true);
        assert_eq!(ddl_type(&wide, false, false), "LONGTEXT");
        assert!(column_check(&wide, false).unwrap().contains("<= 5000"));
    }
}
