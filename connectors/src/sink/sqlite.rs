//! The SQLite sink: one database file, STRICT tables, one transaction per
//! batch, offsets in `_backflow_offsets`.
//!
//! SQLite has few storage types, so exact values are kept as text where it
//! has no exact type: decimals as their digits, dates `YYYY-MM-DD`, times
//! `HH:MM:SS.ffffff`, timestamps `YYYY-MM-DD HH:MM:SS.ffffff` (with time
//! zone: ISO 8601 UTC with `Z`), UUIDs hyphenated. STRICT tables refuse a
//! value of the wrong storage class and CHECK constraints keep `varchar(n)`
//! lengths and booleans, so nothing is silently coerced.
//!
//! # Prerequisites
//! The process may create and write the file and, beside it, its
//! `-wal`/`-journal` files; no other writer holds the database for long
//! (a lock is a transient error: the batch is tried again).
//!
//! # Example
//! ```toml
//! [[subscriptions]]
//! name = "330106-population"
//! upstream = { brokers = "city-kafka:9092", registry_url = "https://city.example:8480", registry_token_env = "CITY_TOKEN" }
//! sink = { type = "sqlite", path = "/var/lib/backflow/district.db" }
//! tables = [{ topic = "backflow.share.330106.gongan.population", table = "population" }]
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
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ColumnDesc, Datum, SqlType, TableDesc};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, ErrorCode};
use serde::{Deserialize, Serialize};

use super::values::{date_text, time_text, timestamp_text, timestamp_tz_iso};
use super::{
    plan, quote, read_back_columns, reconcile, Applied, DigestBuilder, ExistingColumn,
    ExistingTable, ReadBack, Sink, SinkBatch, TopicOffset, OFFSETS_TABLE, POSITION_COLUMN,
};
use crate::ConnectorError;

/// Where a SQLite sink writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// The database file (created if absent).
    pub path: PathBuf,
}

/// The column type the sink creates for a SQL type.
pub fn ddl_type(c: &ColumnDesc, _is_key: bool) -> String {
    match &c.sql_type {
        SqlType::SmallInt | SqlType::Int | SqlType::BigInt | SqlType::Boolean => "INTEGER",
        SqlType::Real | SqlType::Double => "REAL",
        SqlType::Bytes => "BLOB",
        _ => "TEXT",
    }
    .to_owned()
}

fn column_check(c: &ColumnDesc) -> Option<String> {
    let n = quote('"', &c.name);
    match &c.sql_type {
        SqlType::Varchar { len: Some(len) } | SqlType::Char { len: Some(len) } => {
            Some(format!("CHECK (length({n}) <= {len})"))
        }
        SqlType::Boolean => Some(format!("CHECK ({n} IN (0, 1))")),
        SqlType::SmallInt => Some(format!("CHECK ({n} BETWEEN -32768 AND 32767)")),
        SqlType::Int => Some(format!("CHECK ({n} BETWEEN -2147483648 AND 2147483647)")),
        _ => None,
    }
}

/// The SQLite sink of one subscription.
pub struct SqliteSink {
    config: SqliteSinkConfig,
    subscription: String,
    conn: Option<Connection>,
    ready: HashMap<usize, Arc<TableDesc>>,
}

impl SqliteSink {
    /// A sink for subscription `subscription`.
    pub fn new(config: SqliteSinkConfig, subscription: impl Into<String>) -> Self {
        Self {
            config,
            subscription: subscription.into(),
            conn: None,
            ready: HashMap::new(),
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, ConnectorError> {
        if self.conn.is_none() {
            let path = &self.config.path;
            let what = format!("opening SQLite database {}", path.display());
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ConnectorError::definite(format!(
                        "{what}: cannot create {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let conn = Connection::open(path).map_err(|e| lite_error(e, &what))?;
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS {} (
                     subscription TEXT NOT NULL,
                     topic TEXT NOT NULL,
                     \"partition\" INTEGER NOT NULL,
                     \"offset\" INTEGER NOT NULL,
                     updated_at TEXT NOT NULL,
                     PRIMARY KEY (subscription, topic, \"partition\")) STRICT;",
                quote('"', OFFSETS_TABLE)
            ))
            .map_err(|e| lite_error(e, &what))?;
            self.ready.clear();
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    fn existing(&mut self, desc: &TableDesc) -> Result<Option<ExistingTable>, ConnectorError> {
        let what = format!("reading the catalog of {}", desc.name);
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1) ORDER BY cid")
            .map_err(|e| lite_error(e, &what))?;
        let rows: Vec<(String, String, bool, bool, i64)> = stmt
            .query_map([&desc.name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|it| it.collect())
            .map_err(|e| lite_error(e, &what))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut key: Vec<(i64, String)> = rows
            .iter()
            .filter(|r| r.4 > 0)
            .map(|r| (r.4, r.0.clone()))
            .collect();
        key.sort();
        Ok(Some(ExistingTable {
            columns: rows
                .into_iter()
                .map(
                    |(name, type_name, notnull, has_default, _)| ExistingColumn {
                        name,
                        type_name,
                        nullable: !notnull,
                        has_default,
                    },
                )
                .collect(),
            primary_key: key.into_iter().map(|(_, n)| n).collect(),
        }))
    }

    fn ready(&mut self, desc: &Arc<TableDesc>, create: bool) -> Result<bool, ConnectorError> {
        let id = Arc::as_ptr(desc) as usize;
        if self.ready.contains_key(&id) {
            return Ok(true);
        }
        let table = quote('"', &desc.name);
        let existing = match self.existing(desc)? {
            Some(e) => e,
            None if !create => return Ok(false),
            None => {
                let mut cols: Vec<String> = desc
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}{}{}",
                            quote('"', &c.name),
                            ddl_type(c, false),
                            if c.nullable { "" } else { " NOT NULL" },
                            column_check(c).map(|c| format!(" {c}")).unwrap_or_default()
                        )
                    })
                    .collect();
                cols.push(format!("{} TEXT", quote('"', POSITION_COLUMN)));
                let key: Vec<String> = desc.primary_key.iter().map(|k| quote('"', k)).collect();
                let ddl = format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({})) STRICT",
                    cols.join(", "),
                    key.join(", ")
                );
                self.conn()?
                    .execute_batch(&ddl)
                    .map_err(|e| lite_error(e, &format!("creating table {}", desc.name)))?;
                tracing::info!(table = %desc.name, dataset = %desc.dataset, "created sink table");
                self.existing(desc)?.ok_or_else(|| {
                    ConnectorError::transient(format!(
                        "table {} vanished after creation",
                        desc.name
                    ))
                })?
            }
        };
        if create {
            let fix = reconcile(desc, &existing, ddl_type)?;
            let mut alter: Vec<String> = fix
                .add
                .iter()
                .map(|c| {
                    format!(
                        "ALTER TABLE {table} ADD COLUMN {} {}{};",
                        quote('"', &c.name),
                        ddl_type(c, false),
                        column_check(c).map(|c| format!(" {c}")).unwrap_or_default()
                    )
                })
                .collect();
            if fix.add_position {
                alter.push(format!(
                    "ALTER TABLE {table} ADD COLUMN {} TEXT;",
                    quote('"', POSITION_COLUMN)
                ));
            }
            if !alter.is_empty() {
                self.conn()?
                    .execute_batch(&format!("BEGIN; {} COMMIT;", alter.join(" ")))
                    .map_err(|e| lite_error(e, &format!("adding columns to {}", desc.name)))?;
                tracing::info!(table = %desc.name, added = fix.add.len(), "extended sink table");
            }
        } else if !existing.columns.iter().any(|e| e.name == POSITION_COLUMN) {
            return Err(ConnectorError::definite(format!(
                "table {} has no {POSITION_COLUMN} column: it was not created by backflow; let backflow write to it once with its full dataset so the column is added",
                desc.name
            )));
        }
        self.ready.insert(id, desc.clone());
        Ok(true)
    }

    fn apply(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError> {
        let (plans, superseded) = plan(batch)?;
        let mut applied = Applied {
            skipped: superseded,
            offsets: batch.offsets.clone(),
            ..Applied::default()
        };
        let mut work = Vec::new();
        for p in &plans {
            if self.ready(&p.table, !p.upserts.is_empty())? {
                work.push(p);
            } else {
                applied.skipped += p.deletes.len() as u64;
            }
        }
        let sub = self.subscription.clone();
        let conn = self.conn()?;
        let tx = conn
            .transaction()
            .map_err(|e| lite_error(e, "starting a transaction"))?;
        let pos = quote('"', POSITION_COLUMN);
        for p in work {
            let desc = &p.table;
            let table = quote('"', &desc.name);
            let names: Vec<String> = desc.columns.iter().map(|c| quote('"', &c.name)).collect();
            let key_idx: Vec<usize> = desc
                .primary_key
                .iter()
                .map(|k| desc.column(k).map(|(i, _)| i).expect("validated key"))
                .collect();
            let what = format!("deleting rows of {}", desc.name);
            let key_match: Vec<String> = key_idx
                .iter()
                .enumerate()
                .map(|(j, i)| format!("{} = ?{}", names[*i], j + 1))
                .collect();
            let v = key_idx.len() + 1;
            let delete = format!(
                "DELETE FROM {table} WHERE {} AND (?{v} IS NULL OR {pos} IS NULL OR {pos} <= ?{v})",
                key_match.join(" AND ")
            );
            for (key, version) in &p.deletes {
                let mut params: Vec<Value> = Vec::with_capacity(v);
                for (j, i) in key_idx.iter().enumerate() {
                    params.push(lite_value(&desc.columns[*i], &key.0[j])?);
                }
                params.push(version.clone().map_or(Value::Null, Value::Text));
                let mut stmt = tx
                    .prepare_cached(&delete)
                    .map_err(|e| lite_error(e, &what))?;
                let n = stmt
                    .execute(params_from_iter(params))
                    .map_err(|e| lite_error(e, &what))?;
                applied.deleted += n as u64;
                applied.skipped += u64::from(n == 0);
            }
            let what = format!("writing rows of {}", desc.name);
            let mut set: Vec<String> = desc
                .columns
                .iter()
                .filter(|c| !desc.primary_key.contains(&c.name))
                .map(|c| format!("{0} = excluded.{0}", quote('"', &c.name)))
                .collect();
            set.push(format!("{pos} = excluded.{pos}"));
            let key: Vec<String> = desc.primary_key.iter().map(|k| quote('"', k)).collect();
            let upsert = format!(
                "INSERT INTO {table} ({}, {pos}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {} \
                 WHERE {table}.{pos} IS NULL OR {table}.{pos} <= excluded.{pos}",
                names.join(", "),
                (1..=names.len() + 1)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                key.join(", "),
                set.join(", ")
            );
            let mut stmt = tx
                .prepare_cached(&upsert)
                .map_err(|e| lite_error(e, &what))?;
            for (row, version) in &p.upserts {
                let mut params: Vec<Value> = Vec::with_capacity(names.len() + 1);
                for (c, d) in desc.columns.iter().zip(&row.0) {
                    params.push(lite_value(c, d)?);
                }
                params.push(Value::Text(version.clone()));
                let n = stmt
                    .execute(params_from_iter(params))
                    .map_err(|e| lite_error(e, &what))?;
                applied.upserted += n as u64;
                applied.skipped += u64::from(n == 0);
            }
        }
        {
            let mut store = tx
                .prepare_cached(&format!(
                    "INSERT INTO {} (subscription, topic, \"partition\", \"offset\", updated_at) \
                     VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
                     ON CONFLICT (subscription, topic, \"partition\") DO UPDATE \
                     SET \"offset\" = excluded.\"offset\", updated_at = excluded.updated_at",
                    quote('"', OFFSETS_TABLE)
                ))
                .map_err(|e| lite_error(e, "storing offsets"))?;
            for o in &batch.offsets {
                store
                    .execute(rusqlite::params![sub, o.topic, o.partition, o.offset])
                    .map_err(|e| lite_error(e, "storing offsets"))?;
            }
        }
        tx.commit()
            .map_err(|e| lite_error(e, "committing a batch"))?;
        Ok(applied)
    }

    fn offsets(&mut self) -> Result<Vec<TopicOffset>, ConnectorError> {
        let sub = self.subscription.clone();
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT topic, \"partition\", \"offset\" FROM {} WHERE subscription = ?1 ORDER BY 1, 2",
                quote('"', OFFSETS_TABLE)
            ))
            .map_err(|e| lite_error(e, "reading the stored offsets"))?;
        let rows = stmt
            .query_map([sub], |r| {
                Ok(TopicOffset {
                    topic: r.get(0)?,
                    partition: r.get(1)?,
                    offset: r.get(2)?,
                })
            })
            .and_then(|it| it.collect())
            .map_err(|e| lite_error(e, "reading the stored offsets"));
        rows
    }

    /// [`Sink::read_back`] inside one read transaction (a snapshot).
    fn read_back_tx(&mut self, tables: &[Arc<TableDesc>]) -> Result<ReadBack, ConnectorError> {
        self.conn()?
            .execute_batch("BEGIN")
            .map_err(|e| lite_error(e, "starting a read transaction"))?;
        let r = self.read_back_in_tx(tables);
        let end = self.conn()?.execute_batch("COMMIT");
        let r = r?;
        end.map_err(|e| lite_error(e, "ending a read transaction"))?;
        Ok(r)
    }

    fn read_back_in_tx(&mut self, tables: &[Arc<TableDesc>]) -> Result<ReadBack, ConnectorError> {
        use rusqlite::types::ValueRef;
        let offsets = self.offsets()?;
        let mut out = Vec::with_capacity(tables.len());
        for desc in tables {
            if self.existing(desc)?.is_none() {
                out.push(None);
                continue;
            }
            let what = format!("reading {} back", desc.name);
            let sql = format!(
                "SELECT {} FROM {}",
                read_back_columns(desc, '"', ""),
                quote('"', &desc.name)
            );
            let conn = self.conn()?;
            let mut stmt = conn.prepare(&sql).map_err(|e| lite_error(e, &what))?;
            let n = stmt.column_count();
            let mut rows = stmt.query([]).map_err(|e| lite_error(e, &what))?;
            let mut digests = DigestBuilder::new(desc.primary_key.len());
            let mut text: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
            while let Some(row) = rows.next().map_err(|e| lite_error(e, &what))? {
                text.clear();
                for i in 0..n {
                    let v = row.get_ref(i).map_err(|e| lite_error(e, &what))?;
                    text.push(match v {
                        ValueRef::Null => None,
                        ValueRef::Integer(i) => Some(i.to_string().into_bytes()),
                        ValueRef::Real(f) => Some(format!("{f:?}").into_bytes()),
                        ValueRef::Text(t) => Some(t.to_vec()),
                        // Tagged so a blob never equals the text of its bytes.
                        ValueRef::Blob(b) => Some([b"\0blob:".as_slice(), b].concat()),
                    });
                }
                digests.add(text.iter().map(Option::as_deref));
            }
            out.push(Some(digests.finish()));
        }
        Ok(ReadBack {
            offsets,
            tables: out,
        })
    }

    /// [`Sink::copy_table`]: SQLite has no `CREATE TABLE ... LIKE`, so the
    /// table's own `CREATE TABLE` statement is replayed under the new name.
    fn copy_definition(&mut self, of: &TableDesc, copy: &TableDesc) -> Result<(), ConnectorError> {
        let what = format!("copying the definition of {}", of.name);
        let conn = self.conn()?;
        let ddl: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [&of.name],
                |r| r.get(0),
            )
            .map_err(|e| lite_error(e, &what))?;
        let Some(open) = ddl.find('(') else {
            return Err(ConnectorError::definite(format!(
                "{what}: its definition has no column list"
            )));
        };
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {copy}; CREATE TABLE {copy} {}",
            &ddl[open..],
            copy = quote('"', &copy.name)
        ))
        .map_err(|e| lite_error(e, &what))
    }
}

/// Runs blocking SQLite work without stalling the other tasks of a
/// multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn lite_value(c: &ColumnDesc, d: &Datum) -> Result<Value, ConnectorError> {
    Ok(match d {
        Datum::Null => Value::Null,
        Datum::Bool(b) => Value::Integer(i64::from(*b)),
        Datum::Int(v) => Value::Integer(i64::from(*v)),
        Datum::Long(v) => Value::Integer(*v),
        Datum::Float(v) if !v.is_nan() => Value::Real(f64::from(*v)),
        Datum::Double(v) if !v.is_nan() => Value::Real(*v),
        Datum::Float(_) | Datum::Double(_) => {
            return Err(ConnectorError::bad_record(format!(
                "column {}: SQLite stores NaN as NULL, so the value cannot be kept",
                c.name
            )))
        }
        Datum::Decimal(v) => Value::Text(v.to_string()),
        Datum::Text(s) | Datum::Json(s) => Value::Text(s.clone()),
        Datum::Bytes(b) => Value::Blob(b.clone()),
        Datum::Date(v) => Value::Text(date_text(i64::from(*v))),
        Datum::Time(v) => Value::Text(time_text(*v)),
        Datum::Timestamp(v) => Value::Text(timestamp_text(*v)),
        Datum::TimestampTz(v) => Value::Text(timestamp_tz_iso(*v)),
        Datum::Uuid(u) => Value::Text(u.hyphenated().to_string()),
        Datum::Array(_) => Value::Text(super::values::json_text(d)),
    })
}

fn lite_error(e: rusqlite::Error, what: &str) -> ConnectorError {
    let msg = format!("SQLite failed while {what}: {e}");
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig) => ConnectorError::bad_record(msg),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ConnectorError::transient(msg),
        _ => ConnectorError::definite(msg),
    }
    .with_source(e)
}

#[async_trait]
impl Sink for SqliteSink {
    async fn committed_offsets(&mut self) -> Result<Vec<TopicOffset>, ConnectorError> {
        blocking(|| self.offsets())
    }

    async fn apply_batch(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError> {
        blocking(|| self.apply(batch))
    }

    async fn shutdown(&mut self) -> Result<(), ConnectorError> {
        self.ready.clear();
        if let Some(conn) = self.conn.take() {
            conn.close()
                .map_err(|(_, e)| lite_error(e, "closing the database"))?;
        }
        Ok(())
    }

    async fn read_back(&mut self, tables: &[Arc<TableDesc>]) -> Result<ReadBack, ConnectorError> {
        blocking(|| self.read_back_tx(tables))
    }

    async fn copy_table(&mut self, of: &TableDesc, copy: &TableDesc) -> Result<(), ConnectorError> {
        self.ready.clear();
        blocking(|| self.copy_definition(of, copy))
    }

    async fn drop_table(&mut self, table: &TableDesc) -> Result<(), ConnectorError> {
        self.ready.clear();
        let sql = format!("DROP TABLE IF EXISTS {}", quote('"', &table.name));
        blocking(|| {
            self.conn()?
                .execute_batch(&sql)
                .map_err(|e| lite_error(e, &format!("dropping {}", table.name)))
        })
    }
}
