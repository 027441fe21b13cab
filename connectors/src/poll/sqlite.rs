//! SQLite engine of the polling source: one connection to the database
//! file (opened read-write but `query_only`, never created), used on
//! blocking threads.
//!
//! # Types
//! Declared column types are read with [`SqlType::parse`], except that
//! `INTEGER`/`INT` are `bigint` and `REAL`/`FLOAT` are `double precision`
//! (SQLite stores 64-bit integers and 8-byte floats whatever the
//! declaration). Other declarations fall back by SQLite's affinity rules:
//! containing `INT` → bigint; `CHAR`, `CLOB`, `TEXT` → text; `BLOB` → bytes;
//! `REAL`, `FLOA`, `DOUB` → double; anything else → numeric without
//! precision. A column without a declared type is text (it usually holds
//! text or numbers). Primary-key columns are NOT NULL.
//!
//! # Values
//! SQLite keeps whatever was stored, so each value is checked against the
//! column's type and a row holding one that does not fit is rejected:
//! - integers: INTEGER values (or their text);
//! - numeric(p,s): INTEGER, REAL (by its shortest decimal form, refused
//!   when it needs more digits than the scale) or decimal text;
//! - boolean: 0/1 or `true`/`false`/`t`/`f`;
//! - date: text `YYYY-MM-DD`; time: text `HH:MM:SS[.ffffff]`;
//! - timestamp, timestamptz: ISO-8601 text (`YYYY-MM-DD HH:MM[:SS[.f]]`,
//!   `T` or space, optional `Z` or `±HH:MM`; without an offset the value is
//!   UTC, like SQLite's own date functions) or INTEGER/REAL unix seconds.
//!   A timestamp with an offset is converted to UTC.
//! - bytes: BLOB (or text, as its UTF-8 bytes); text: TEXT (numbers as
//!   their text); uuid: text or a 16-byte BLOB.
//!
//! # Timestamp columns
//! The poll compares a timestamp column on one scale whatever each value's
//! storage: unix microseconds from INTEGER/REAL seconds, and from text as
//! SQLite's `unixepoch(value, 'subsec')` reads it (millisecond precision;
//! text it cannot read is never polled). The column may be declared as a
//! timestamp, an integer (unix seconds) or text. This expression cannot use
//! an index: each poll scans the table.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use backflow_schemas::{ColumnDesc, Datum, Decimal, SqlType, TableDesc};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use super::engine::{quote_ident as ident, Cells, Clock, Engine, Polled, Since, TsScale};
use crate::ConnectorError;

/// A SQLite database file read by a polling feed.
pub(crate) struct SqliteEngine {
    conn: Arc<Mutex<Connection>>,
    db: String,
}

fn lite_err(what: &str, e: rusqlite::Error) -> ConnectorError {
    let msg = format!("SQLite: {what}: {e}");
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            ConnectorError::transient(msg)
        }
        _ => ConnectorError::definite(msg),
    }
    .with_source(e)
}

impl SqliteEngine {
    /// Opens the database file; it must exist.
    pub async fn open(path: PathBuf) -> Result<Self, ConnectorError> {
        let db = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let conn = tokio::task::spawn_blocking(move || {
            let what = format!("opening {}", path.display());
            if !path.is_file() {
                return Err(ConnectorError::definite(format!(
                    "SQLite database file {} does not exist: check the feed's path",
                    path.display()
                )));
            }
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| lite_err(&what, e))?;
            conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")
                .map_err(|e| lite_err(&what, e))?;
            Ok(conn)
        })
        .await
        .map_err(|e| ConnectorError::transient(format!("SQLite task failed: {e}")))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            db,
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ConnectorError> + Send + 'static,
    ) -> Result<T, ConnectorError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| ConnectorError::definite("SQLite connection poisoned"))?;
            f(&conn)
        })
        .await
        .map_err(|e| ConnectorError::transient(format!("SQLite task failed: {e}")))?
    }
}

fn table_ref(desc: &TableDesc) -> String {
    format!("{}.{}", ident(&desc.schema), ident(&desc.name))
}

/// The column type of a declared SQLite type.
pub(crate) fn column_type(declared: &str) -> SqlType {
    let upper = declared.trim().to_ascii_uppercase();
    match upper.as_str() {
        "" => return SqlType::Text,
        "INTEGER" | "INT" => return SqlType::BigInt,
        "REAL" | "FLOAT" => return SqlType::Double,
        _ => {}
    }
    if let Ok(t) = SqlType::parse(declared) {
        return t;
    }
    if upper.contains("INT") {
        SqlType::BigInt
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|s| upper.contains(s)) {
        SqlType::Text
    } else if upper.contains("BLOB") {
        SqlType::Bytes
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|s| upper.contains(s)) {
        SqlType::Double
    } else {
        SqlType::Decimal {
            precision: None,
            scale: None,
        }
    }
}

/// The unix-microsecond key of a timestamp column, whatever each value's
/// storage class; NULL when it is not a time.
fn ts_key(column: &str) -> String {
    let c = ident(column);
    format!(
        "(CASE typeof({c}) WHEN 'integer' THEN {c} * 1000000 \
         WHEN 'real' THEN CAST(round({c} * 1000000) AS INTEGER) \
         WHEN 'text' THEN CAST(round(unixepoch({c}, 'subsec') * 1000) AS INTEGER) * 1000 END)"
    )
}

fn column_list(columns: &[&ColumnDesc]) -> String {
    columns
        .iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_rows(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    what: &str,
    mut each: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> Result<(), ConnectorError> {
    let mut stmt = conn.prepare(sql).map_err(|e| lite_err(what, e))?;
    let mut rows = stmt.query(params).map_err(|e| lite_err(what, e))?;
    while let Some(row) = rows.next().map_err(|e| lite_err(what, e))? {
        each(row).map_err(|e| lite_err(what, e))?;
    }
    Ok(())
}

fn cells(row: &rusqlite::Row<'_>, skip: usize, columns: &[ColumnDesc]) -> rusqlite::Result<Cells> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v: Value = row.get(i + skip)?;
            Ok(datum(&c.sql_type, v).map_err(|reason| format!("column {}: {reason}", c.name)))
        })
        .collect()
}

#[async_trait]
impl Engine for SqliteEngine {
    fn db(&self) -> &str {
        &self.db
    }

    fn default_schema(&self) -> &str {
        "main"
    }

    async fn describe(
        &self,
        schema: &str,
        name: &str,
        dataset: &str,
    ) -> Result<TableDesc, ConnectorError> {
        let (schema, name, dataset) = (schema.to_owned(), name.to_owned(), dataset.to_owned());
        let db = self.db.clone();
        self.with(move |conn| {
            let qualified = format!("{schema}.{name}");
            let what = format!("describing {qualified}");
            let mut columns = Vec::new();
            let mut keys: Vec<(i64, String)> = Vec::new();
            read_rows(
                conn,
                "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1, ?2) ORDER BY cid",
                &[&name, &schema],
                &what,
                |r| {
                    let col: String = r.get(0)?;
                    let declared: String = r.get::<_, Option<String>>(1)?.unwrap_or_default();
                    let not_null: bool = r.get(2)?;
                    let pk: i64 = r.get(3)?;
                    if pk > 0 {
                        keys.push((pk, col.clone()));
                    }
                    columns.push(ColumnDesc::new(
                        col,
                        column_type(&declared),
                        !not_null && pk == 0,
                    ));
                    Ok(())
                },
            )?;
            if columns.is_empty() {
                return Err(ConnectorError::definite(format!(
                    "table {qualified} does not exist in SQLite database {db}: check the feed's tables"
                )));
            }
            if keys.is_empty() {
                return Err(ConnectorError::definite(format!(
                    "table {qualified} has no primary key; backflow keys every change by primary key: \
                     recreate it with a PRIMARY KEY (SQLite cannot add one to an existing table)"
                )));
            }
            keys.sort();
            let desc = TableDesc {
                dataset,
                schema,
                name,
                columns,
                primary_key: keys.into_iter().map(|(_, k)| k).collect(),
            };
            desc.validate_captured()
                .map_err(|e| ConnectorError::definite(e.to_string()))?;
            Ok(desc)
        })
        .await
    }

    fn timestamp_scale(&self, column: &ColumnDesc) -> Result<TsScale, String> {
        match &column.sql_type {
            SqlType::Timestamp
            | SqlType::TimestampTz
            | SqlType::SmallInt
            | SqlType::Int
            | SqlType::BigInt
            | SqlType::Text
            | SqlType::Varchar { .. } => Ok(TsScale::Utc),
            other => Err(format!(
                "it is {other}, but the timestamp column must hold ISO-8601 text or unix \
                 seconds the application sets on every insert and update (declared as \
                 TIMESTAMP, DATETIME, TEXT or INTEGER)"
            )),
        }
    }

    async fn clock(&self) -> Result<Clock, ConnectorError> {
        self.with(|conn| {
            let utc: i64 = conn
                .query_row(
                    "SELECT CAST(round(unixepoch('now', 'subsec') * 1000) AS INTEGER) * 1000",
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| lite_err("reading the database clock", e))?;
            Ok(Clock { utc, local: utc })
        })
        .await
    }

    async fn read_since(&self, q: Since) -> Result<Vec<Polled>, ConnectorError> {
        self.with(move |conn| {
            let desc = &q.desc;
            let columns: Vec<&ColumnDesc> = desc.columns.iter().collect();
            // Positional columns: the key, the incrementing value, the row.
            let mut sql = format!(
                "SELECT * FROM (SELECT {} AS \"backflow ts\", {} AS \"backflow inc\", {} FROM {}) \
                 WHERE \"backflow ts\" IS NOT NULL AND typeof(\"backflow inc\") = 'integer' \
                 AND \"backflow ts\" < ?1",
                ts_key(&q.ts_column),
                ident(&q.inc_column),
                column_list(&columns),
                table_ref(desc)
            );
            let (after_ts, after_inc) = q.after.map(|w| (w.ts, w.inc)).unwrap_or_default();
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&q.upper];
            if q.after.is_some() {
                sql.push_str(
                    " AND (\"backflow ts\" > ?2 OR (\"backflow ts\" = ?2 AND \"backflow inc\" > ?3))",
                );
                params.push(&after_ts);
                params.push(&after_inc);
            }
            sql.push_str(&format!(
                " ORDER BY \"backflow ts\", \"backflow inc\" LIMIT {}",
                q.limit
            ));
            let mut out = Vec::new();
            read_rows(
                conn,
                &sql,
                &params,
                &format!("polling {}", desc.qualified_name()),
                |r| {
                    out.push(Polled {
                        ts: r.get(0)?,
                        inc: r.get(1)?,
                        cells: cells(r, 2, &desc.columns)?,
                    });
                    Ok(())
                },
            )?;
            Ok(out)
        })
        .await
    }

    async fn read_all(
        &self,
        desc: Arc<TableDesc>,
        limit: Option<usize>,
    ) -> Result<Vec<Cells>, ConnectorError> {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        self.with(move |conn| {
            let columns: Vec<&ColumnDesc> = desc.columns.iter().collect();
            let keys: Vec<String> = desc.primary_key.iter().map(|k| ident(k)).collect();
            let sql = format!(
                "SELECT {} FROM {} ORDER BY {}{limit}",
                column_list(&columns),
                table_ref(&desc),
                keys.join(", ")
            );
            let mut out = Vec::new();
            read_rows(
                conn,
                &sql,
                &[],
                &format!("reading {}", desc.qualified_name()),
                |r| {
                    out.push(cells(r, 0, &desc.columns)?);
                    Ok(())
                },
            )?;
            Ok(out)
        })
        .await
    }

    async fn read_keys(&self, desc: Arc<TableDesc>) -> Result<Vec<Cells>, ConnectorError> {
        self.with(move |conn| {
            let columns: Vec<ColumnDesc> = desc.key_columns().into_iter().cloned().collect();
            let refs: Vec<&ColumnDesc> = columns.iter().collect();
            let sql = format!("SELECT {} FROM {}", column_list(&refs), table_ref(&desc));
            let mut out = Vec::new();
            read_rows(
                conn,
                &sql,
                &[],
                &format!("reading the keys of {}", desc.qualified_name()),
                |r| {
                    out.push(cells(r, 0, &columns)?);
                    Ok(())
                },
            )?;
            Ok(out)
        })
        .await
    }
}

/// Converts one stored SQLite value for a column type; the reason when it
/// does not fit (never the value).
pub(crate) fn datum(sql_type: &SqlType, v: Value) -> Result<Datum, String> {
    let text = |t: &str| crate::text::parse(sql_type, t).map_err(|e| e.to_string());
    let wrong = |storage: &str| Err(format!("a {storage} value does not fit type {sql_type}"));
    Ok(match (sql_type, v) {
        (_, Value::Null) => Datum::Null,
        (SqlType::SmallInt | SqlType::Int, Value::Integer(i)) => {
            Datum::Int(i32::try_from(i).map_err(|_| "integer out of range".to_owned())?)
        }
        (SqlType::BigInt, Value::Integer(i)) => Datum::Long(i),
        (
            SqlType::Decimal {
                precision: Some(_),
                scale,
            },
            Value::Integer(i),
        ) => Datum::Decimal(
            Decimal::parse(&i.to_string(), scale.unwrap_or(0)).map_err(|e| e.to_string())?,
        ),
        (
            SqlType::Decimal {
                precision: Some(_),
                scale,
            },
            Value::Real(r),
        ) if r.is_finite() => Datum::Decimal(
            Decimal::parse(&r.to_string(), scale.unwrap_or(0))
                .map_err(|_| "a REAL value needs more digits than the column's scale".to_owned())?,
        ),
        (
            SqlType::Decimal {
                precision: None, ..
            },
            Value::Integer(i),
        ) => Datum::Text(i.to_string()),
        (
            SqlType::Decimal {
                precision: None, ..
            },
            Value::Real(r),
        ) if r.is_finite() => Datum::Text(r.to_string()),
        (
            SqlType::Decimal {
                precision: None, ..
            },
            Value::Text(t),
        ) => {
            let t = t.trim();
            Decimal::parse(t, t.len() as u32).map_err(|_| "not a decimal number".to_owned())?;
            Datum::Text(t.to_owned())
        }
        (SqlType::Real, Value::Real(r)) => Datum::Float(r as f32),
        (SqlType::Real, Value::Integer(i)) => Datum::Float(i as f32),
        (SqlType::Double, Value::Real(r)) => Datum::Double(r),
        (SqlType::Double, Value::Integer(i)) => Datum::Double(i as f64),
        (SqlType::Boolean, Value::Integer(i)) => match i {
            0 => Datum::Bool(false),
            1 => Datum::Bool(true),
            _ => return Err("a boolean must be 0 or 1".to_owned()),
        },
        (SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. }, Value::Text(t)) => {
            Datum::Text(t)
        }
        (SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. }, Value::Integer(i)) => {
            Datum::Text(i.to_string())
        }
        (SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. }, Value::Real(r)) => {
            Datum::Text(r.to_string())
        }
        (SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. }, Value::Blob(b)) => {
            let text = String::from_utf8(b).map_err(|_| "a BLOB that is not UTF-8 text")?;
            Datum::Text(text)
        }
        (SqlType::Json, Value::Text(t)) => Datum::Json(t),
        (SqlType::Bytes, Value::Blob(b)) => Datum::Bytes(b),
        (SqlType::Bytes, Value::Text(t)) => Datum::Bytes(t.into_bytes()),
        (SqlType::Uuid, Value::Blob(b)) => Datum::Uuid(
            uuid::Uuid::from_slice(&b).map_err(|_| "a BLOB UUID must be 16 bytes".to_owned())?,
        ),
        (SqlType::Timestamp | SqlType::TimestampTz, Value::Integer(i)) => timestamp_datum(
            sql_type,
            i.checked_mul(1_000_000).ok_or("timestamp out of range")?,
        ),
        (SqlType::Timestamp | SqlType::TimestampTz, Value::Real(r)) if r.is_finite() => {
            timestamp_datum(sql_type, (r * 1e6).round() as i64)
        }
        (SqlType::Timestamp | SqlType::TimestampTz, Value::Text(t)) => timestamp_datum(
            sql_type,
            iso_micros(&t).ok_or_else(|| {
                format!(
                    "not an ISO-8601 timestamp (YYYY-MM-DD HH:MM:SS[.ffffff][Z|±HH:MM]) \
                     for type {sql_type}"
                )
            })?,
        ),
        (_, Value::Text(t)) => text(&t)?,
        (_, Value::Integer(_)) => return wrong("INTEGER"),
        (_, Value::Real(_)) => return wrong("REAL"),
        (_, Value::Blob(_)) => return wrong("BLOB"),
    })
}

fn timestamp_datum(sql_type: &SqlType, micros: i64) -> Datum {
    match sql_type {
        SqlType::TimestampTz => Datum::TimestampTz(micros),
        _ => Datum::Timestamp(micros),
    }
}

/// UTC microseconds of ISO-8601 text: `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`,
/// `YYYY-MM-DDTHH:MM:SS.ffffff`, each optionally followed by `Z` or an
/// offset `±HH[:MM]`; without one the time is UTC.
pub(crate) fn iso_micros(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = match text.split_once([' ', 'T']) {
        Some((d, r)) => (d, r.trim()),
        None => (text, "00:00:00"),
    };
    let (time, offset) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t.trim_end(), "+00")
    } else if let Some(i) = rest.rfind(['+', '-']) {
        (rest[..i].trim_end(), &rest[i..])
    } else {
        (rest, "+00")
    };
    let time = if time.matches(':').count() == 1 {
        format!("{time}:00")
    } else {
        time.to_owned()
    };
    match crate::text::parse(&SqlType::TimestampTz, &format!("{date} {time}{offset}")) {
        Ok(Datum::TimestampTz(v)) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_by_name_then_affinity() {
        assert_eq!(column_type("INTEGER"), SqlType::BigInt);
        assert_eq!(column_type("int"), SqlType::BigInt);
        assert_eq!(column_type("smallint"), SqlType::SmallInt);
        assert_eq!(column_type("REAL"), SqlType::Double);
        assert_eq!(
            column_type("varchar(20)"),
            SqlType::Varchar { len: Some(20) }
        );
        assert_eq!(column_type("DATETIME"), SqlType::Timestamp);
        assert_eq!(column_type("UNSIGNED BIG INT"), SqlType::BigInt);
        assert_eq!(column_type("NATIVE CHARACTER(70)"), SqlType::Text);
        assert_eq!(column_type("my blob"), SqlType::Bytes);
        assert_eq!(column_type("FLOATING"), SqlType::Double);
        assert_eq!(
            column_type("MONEY"),
            SqlType::Decimal {
                precision: None,
                scale: None
            }
        );
        assert_eq!(column_type(""), SqlType::Text);
    }

    #[test]
    fn iso_text_reads_as_utc_micros() {
        let base = iso_micros("2026-01-02 03:04:05").unwrap();
        assert_eq!(iso_micros("2026-01-02T03:04:05Z"), Some(base));
        assert_eq!(iso_micros("2026-01-02 11:04:05+08:00"), Some(base));
        assert_eq!(iso_micros("2026-01-02 03:04:05.25"), Some(base + 250_000));
        assert_eq!(iso_micros("2026-01-02 03:04"), Some(base - 5_000_000));
        assert_eq!(
            iso_micros("2026-01-02"),
            Some(base - (3 * 3600 + 4 * 60 + 5) * 1_000_000)
        );
        assert_eq!(iso_micros("yesterday"), None);
    }

    #[test]
    fn stored_values_are_checked_against_the_column_type() {
        assert_eq!(
            datum(&SqlType::BigInt, Value::Integer(7)).unwrap(),
            Datum::Long(7)
        );
        assert!(datum(&SqlType::BigInt, Value::Real(1.5)).is_err());
        assert!(datum(&SqlType::Int, Value::Integer(1 << 40)).is_err());
        assert_eq!(
            datum(&SqlType::Boolean, Value::Integer(1)).unwrap(),
            Datum::Bool(true)
        );
        let dec = SqlType::Decimal {
            precision: Some(10),
            scale: Some(2),
        };
        assert_eq!(
            datum(&dec, Value::Real(12.5)).unwrap(),
            Datum::Decimal(Decimal::parse("12.50", 2).unwrap())
        );
        assert!(datum(&dec, Value::Real(0.1 + 0.2)).is_err());
        assert_eq!(
            datum(&SqlType::TimestampTz, Value::Integer(60)).unwrap(),
            Datum::TimestampTz(60_000_000)
        );
        let e = datum(&SqlType::Date, Value::Text("garbage".into())).unwrap_err();
        assert!(!e.contains("garbage"), "{e}");
    }
}
