//! What the server must provide, and what a captured table looks like:
//! prerequisites, table descriptions from `information_schema`, and the
//! conversion of MySQL values (binlog images and snapshot rows) into
//! [`Datum`]s.

use backflow_schemas::{ColumnDesc, Datum, SqlType, TableDesc};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};

use super::MysqlTableConfig;
use crate::ConnectorError;

/// How a column's values arrive and convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Integer of `bits` width; `unsigned` values arrive as signed in the
    /// binlog unless the server logs signedness.
    Int {
        bits: u32,
        unsigned: bool,
    },
    /// `BIGINT UNSIGNED`: shared as `decimal(20,0)`.
    BigUnsigned,
    /// `TINYINT(1)` and `BIT(1)`.
    Bool,
    /// `BIT(n)`, n > 1: an integer.
    Bit,
    Decimal,
    Float,
    Double,
    /// Character data in a character set the source decodes.
    Text(Charset),
    Binary,
    Date,
    /// `DATETIME`: wall-clock time, no zone.
    Datetime,
    /// `TIMESTAMP`: an instant (UTC).
    Timestamp,
    Time,
    Year,
    Json,
    /// `ENUM` with its labels (index 1 = first label).
    Enum(Vec<String>),
    /// `SET` with its members (bit 0 = first member).
    Set(Vec<String>),
}

/// Character sets whose bytes the source turns into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charset {
    /// utf8mb4, utf8mb3, ascii.
    Utf8,
    /// latin1 (read as ISO-8859-1).
    Latin1,
}

/// A described table: the shared description and how to read each column.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub desc: TableDesc,
    pub kinds: Vec<Kind>,
}

fn q(e: mysql_async::Error, what: &str) -> ConnectorError {
    ConnectorError::transient(format!("{what}: {e}"))
}

/// A quoted identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Whether the server is MariaDB (its version string says so).
pub(crate) async fn is_mariadb(conn: &mut Conn) -> Result<bool, ConnectorError> {
    let v: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| q(e, "reading the server version"))?;
    Ok(v.unwrap_or_default()
        .to_ascii_lowercase()
        .contains("mariadb"))
}

/// Checks the binlog settings the source needs; the error says what to set.
pub(crate) async fn check_binlog(conn: &mut Conn) -> Result<(), ConnectorError> {
    type Settings = (Option<String>, Option<String>, Option<String>, Option<u64>);
    let row: Option<Settings> = conn
        .query_first(
            "SELECT CAST(@@GLOBAL.log_bin AS CHAR), @@GLOBAL.binlog_format, \
             @@GLOBAL.binlog_row_image, @@GLOBAL.server_id",
        )
        .await
        .map_err(|e| q(e, "reading the binlog settings"))?;
    let (log_bin, format, image, server_id) = row.unwrap_or_default();
    let on = matches!(log_bin.as_deref(), Some("1" | "ON" | "on"));
    if !on {
        return Err(ConnectorError::definite(
            "the server's binary log is off (log_bin): add `log_bin = mysql-bin` and a \
             `server_id` to the server's [mysqld] (or [mariadbd]) section and restart it",
        ));
    }
    if !format
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("ROW"))
    {
        return Err(ConnectorError::definite(format!(
            "binlog_format is {}, backflow needs ROW: `SET GLOBAL binlog_format = 'ROW'` and \
             `binlog_format = ROW` in the server's configuration (sessions already open keep \
             the old format until they reconnect)",
            format.as_deref().unwrap_or("unknown")
        )));
    }
    if !image
        .as_deref()
        .is_some_and(|f| f.eq_ignore_ascii_case("FULL"))
    {
        return Err(ConnectorError::definite(format!(
            "binlog_row_image is {}, backflow needs FULL before-images (the distributor \
             computes retractions from them): `SET GLOBAL binlog_row_image = 'FULL'` and \
             `binlog_row_image = FULL` in the server's configuration",
            image.as_deref().unwrap_or("unknown")
        )));
    }
    if server_id.unwrap_or(0) == 0 {
        return Err(ConnectorError::definite(
            "the server has no server_id (0): set `server_id` to a unique non-zero value in \
             its configuration and restart it",
        ));
    }
    Ok(())
}

/// Checks that `user` may read the binlog as a replica
/// (REPLICATION SLAVE) and its position (REPLICATION CLIENT / BINLOG
/// MONITOR).
pub(crate) async fn check_privileges(conn: &mut Conn, user: &str) -> Result<(), ConnectorError> {
    let grants: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .map_err(|e| q(e, "reading the feed user's grants"))?;
    let all = grants.iter().any(|g| {
        let g = g.to_ascii_uppercase();
        g.contains("ALL PRIVILEGES ON *.*")
    });
    let has = |what: &[&str]| {
        all || grants.iter().any(|g| {
            let g = g.to_ascii_uppercase();
            g.contains(" ON *.*") && what.iter().any(|w| g.contains(w))
        })
    };
    let mut missing = Vec::new();
    if !has(&["REPLICATION SLAVE", "REPLICATION REPLICA"]) {
        missing.push("REPLICATION SLAVE");
    }
    if !has(&["REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"]) {
        missing.push("REPLICATION CLIENT");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(ConnectorError::definite(format!(
        "user {user} cannot read the binlog: it lacks {}; run `GRANT REPLICATION SLAVE, \
         REPLICATION CLIENT ON *.* TO '{user}'@'%'` (MariaDB 10.5+: `GRANT REPLICATION SLAVE, \
         BINLOG MONITOR ON *.* ...`), plus SELECT on the captured tables",
        missing.join(" and ")
    )))
}

/// The server's binlog files and their sizes, oldest first.
pub(crate) async fn binary_logs(conn: &mut Conn) -> Result<Vec<(String, u64)>, ConnectorError> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| q(e, "listing the binlog files (SHOW BINARY LOGS)"))?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| {
            let name: Option<String> = r.take(0);
            let size: Option<u64> = r.take(1);
            Some((name?, size.unwrap_or(0)))
        })
        .collect())
}

/// Bytes of binlog written after `file:pos`.
pub(crate) fn backlog(logs: &[(String, u64)], file: &str, pos: u64) -> i64 {
    let mut total: u64 = 0;
    let mut seen = false;
    for (name, size) in logs {
        if name == file {
            seen = true;
            total += size.saturating_sub(pos);
        } else if seen {
            total += size;
        }
    }
    if seen {
        total as i64
    } else {
        -1
    }
}

/// `(schema, table)` of a configured table; `default_schema` when the name
/// is not qualified.
pub(crate) fn split<'a>(t: &'a MysqlTableConfig, default_schema: &'a str) -> (&'a str, &'a str) {
    t.table
        .split_once('.')
        .unwrap_or((default_schema, &t.table))
}

/// Describes a captured table from `information_schema`.
pub(crate) async fn describe(
    conn: &mut Conn,
    schema: &str,
    table: &str,
    dataset: &str,
) -> Result<Described, ConnectorError> {
    type Col = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
    );
    let cols: Vec<Col> = conn
        .exec(
            "SELECT COLUMN_NAME, CAST(DATA_TYPE AS CHAR), CAST(COLUMN_TYPE AS CHAR), IS_NULLABLE, \
                    CHARACTER_SET_NAME, CAST(COLUMN_KEY AS CHAR) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        .await
        .map_err(|e| q(e, &format!("describing {schema}.{table}")))?;
    if cols.is_empty() {
        return Err(ConnectorError::definite(format!(
            "table {schema}.{table} does not exist, or the feed's user cannot see it \
             (GRANT SELECT ON {schema}.{table} TO the feed's user)"
        )));
    }
    let pk: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        .await
        .map_err(|e| q(e, &format!("reading the primary key of {schema}.{table}")))?;
    // MariaDB's JSON is LONGTEXT with a json_valid() check.
    let checks: Vec<String> = conn
        .exec(
            "SELECT CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (schema, table),
        )
        .await
        .unwrap_or_default();
    let mut columns = Vec::with_capacity(cols.len());
    let mut kinds = Vec::with_capacity(cols.len());
    for (name, data_type, column_type, nullable, charset, _key) in cols {
        let json_check = checks.iter().any(|c| {
            let c = c.to_ascii_lowercase().replace(['`', ' '], "");
            c.contains(&format!("json_valid({})", name.to_ascii_lowercase()))
        });
        let (sql_type, kind) = map_type(&data_type, &column_type, charset.as_deref(), json_check)
            .map_err(|why| {
            ConnectorError::definite(format!("column {name} of {schema}.{table}: {why}"))
        })?;
        columns.push(ColumnDesc::new(name, sql_type, nullable == "YES"));
        kinds.push(kind);
    }
    let desc = TableDesc {
        dataset: dataset.to_owned(),
        schema: schema.to_owned(),
        name: table.to_owned(),
        columns,
        primary_key: pk,
    };
    desc.validate_captured()
        .map_err(|e| ConnectorError::definite(e.to_string()))?;
    Ok(Described { desc, kinds })
}

/// The list inside `enum('a','b')` / `set('x','y')`.
fn labels(column_type: &str) -> Vec<String> {
    let inner = column_type
        .find('(')
        .and_then(|o| column_type.rfind(')').map(|c| &column_type[o + 1..c]))
        .unwrap_or("");
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    let mut in_quote = false;
    while let Some(c) = chars.next() {
        match (in_quote, c) {
            (false, '\'') => in_quote = true,
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            (true, '\'') => {
                in_quote = false;
                out.push(std::mem::take(&mut cur));
            }
            (true, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (true, c) => cur.push(c),
            _ => {}
        }
    }
    out
}

fn paren_nums(column_type: &str) -> Vec<u32> {
    column_type
        .find('(')
        .and_then(|o| {
            column_type[o + 1..]
                .find(')')
                .map(|c| &column_type[o + 1..o + 1 + c])
        })
        .map(|inner| {
            inner
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The shared SQL type and the reading of a MySQL column.
pub(crate) fn map_type(
    data_type: &str,
    column_type: &str,
    charset: Option<&str>,
    json_check: bool,
) -> Result<(SqlType, Kind), String> {
    let dt = data_type.to_ascii_lowercase();
    let ct = column_type.to_ascii_lowercase();
    let unsigned = ct.contains("unsigned");
    let nums = paren_nums(&ct);
    let text_kind = || -> Result<Kind, String> {
        match charset.map(str::to_ascii_lowercase).as_deref() {
            None | Some("utf8mb4" | "utf8mb3" | "utf8" | "ascii") => Ok(Kind::Text(Charset::Utf8)),
            Some("latin1") => Ok(Kind::Text(Charset::Latin1)),
            Some("binary") => Ok(Kind::Binary),
            Some(other) => Err(format!(
                "character set {other} is not read by backflow yet (utf8mb4, utf8mb3, ascii and \
                 latin1 are); convert the column with ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4"
            )),
        }
    };
    Ok(match dt.as_str() {
        "tinyint" if ct.starts_with("tinyint(1)") && !unsigned => (SqlType::Boolean, Kind::Bool),
        "tinyint" => (SqlType::SmallInt, Kind::Int { bits: 8, unsigned }),
        "smallint" => (
            if unsigned {
                SqlType::Int
            } else {
                SqlType::SmallInt
            },
            Kind::Int { bits: 16, unsigned },
        ),
        "mediumint" => (SqlType::Int, Kind::Int { bits: 24, unsigned }),
        "int" | "integer" => (
            if unsigned {
                SqlType::BigInt
            } else {
                SqlType::Int
            },
            Kind::Int { bits: 32, unsigned },
        ),
        "bigint" if unsigned => (
            SqlType::Decimal {
                precision: Some(20),
                scale: Some(0),
            },
            Kind::BigUnsigned,
        ),
        "bigint" => (
            SqlType::BigInt,
            Kind::Int {
                bits: 64,
                unsigned: false,
            },
        ),
        "decimal" | "numeric" => (
            SqlType::Decimal {
                precision: Some(nums.first().copied().unwrap_or(10)),
                scale: Some(nums.get(1).copied().unwrap_or(0)),
            },
            Kind::Decimal,
        ),
        "float" => (SqlType::Real, Kind::Float),
        "double" | "real" => (SqlType::Double, Kind::Double),
        "bit" if nums.first().copied().unwrap_or(1) == 1 => (SqlType::Boolean, Kind::Bool),
        "bit" => (SqlType::BigInt, Kind::Bit),
        "char" => match text_kind()? {
            Kind::Binary => (SqlType::Bytes, Kind::Binary),
            k => (
                SqlType::Char {
                    len: nums.first().copied(),
                },
                k,
            ),
        },
        "varchar" => match text_kind()? {
            Kind::Binary => (SqlType::Bytes, Kind::Binary),
            k => (
                SqlType::Varchar {
                    len: nums.first().copied(),
                },
                k,
            ),
        },
        "tinytext" | "text" | "mediumtext" | "longtext" if json_check => {
            (SqlType::Json, Kind::Json)
        }
        "tinytext" | "text" | "mediumtext" | "longtext" => match text_kind()? {
            Kind::Binary => (SqlType::Bytes, Kind::Binary),
            k => (SqlType::Text, k),
        },
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            (SqlType::Bytes, Kind::Binary)
        }
        "date" => (SqlType::Date, Kind::Date),
        "datetime" => (SqlType::Timestamp, Kind::Datetime),
        "timestamp" => (SqlType::TimestampTz, Kind::Timestamp),
        "time" => (SqlType::Time, Kind::Time),
        "year" => (SqlType::SmallInt, Kind::Year),
        "json" => (SqlType::Json, Kind::Json),
        "enum" => {
            let l = labels(column_type);
            let len = l
                .iter()
                .map(|s| s.chars().count() as u32)
                .max()
                .unwrap_or(1);
            (
                SqlType::Varchar {
                    len: Some(len.max(1)),
                },
                Kind::Enum(l),
            )
        }
        "set" => (SqlType::Text, Kind::Set(labels(column_type))),
        other => {
            return Err(format!(
                "type {other} is not supported by the mysql source (supported: integers, \
                 decimal, float, double, bit, char/varchar/text, binary/blob, date, datetime, \
                 timestamp, time, year, json, enum, set)"
            ))
        }
    })
}

/// Where a value came from: the binlog sends some types in another form
/// than a query result does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A row image in the binlog.
    Binlog,
    /// A row of a query (binary protocol, session time zone UTC).
    Query,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

fn micros_of_day(h: u8, mi: u8, s: u8, us: u32) -> i64 {
    ((i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(s)) * 1_000_000 + i64::from(us)
}

const NOT_UTF8: &str = "bytes that are not valid UTF-8";

fn text_of(bytes: Vec<u8>, cs: Charset) -> Result<String, String> {
    match cs {
        Charset::Utf8 => String::from_utf8(bytes).map_err(|_| NOT_UTF8.to_owned()),
        Charset::Latin1 => Ok(bytes.into_iter().map(char::from).collect()),
    }
}

/// [`text_of`] of borrowed bytes (a value read in place from a row image).
pub(crate) fn text_of_slice(bytes: &[u8], cs: Charset) -> Result<String, String> {
    match cs {
        Charset::Utf8 => std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| NOT_UTF8.to_owned()),
        Charset::Latin1 => Ok(bytes.iter().copied().map(char::from).collect()),
    }
}

/// A `TIMESTAMP` of the binlog (seconds since the epoch and microseconds).
pub(crate) fn binlog_timestamp(secs: i64, us: i64) -> Result<Datum, String> {
    if secs == 0 && us == 0 {
        return Err("a zero TIMESTAMP (0000-00-00 00:00:00) has no instant; use NULL".into());
    }
    Ok(Datum::TimestampTz(secs * 1_000_000 + us))
}

fn ascii(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "a value that is not text".to_owned())
}

fn bad(kind: &Kind, v: &Value) -> String {
    let got = match v {
        Value::NULL => "NULL",
        Value::Bytes(_) => "bytes",
        Value::Int(_) => "a signed integer",
        Value::UInt(_) => "an unsigned integer",
        Value::Float(_) => "a float",
        Value::Double(_) => "a double",
        Value::Date(..) => "a date",
        Value::Time(..) => "a time",
    };
    let want = match kind {
        Kind::Int { .. } | Kind::BigUnsigned | Kind::Bit | Kind::Year => "integer",
        Kind::Bool => "boolean",
        Kind::Decimal => "decimal",
        Kind::Float | Kind::Double => "floating-point",
        Kind::Text(_) | Kind::Enum(_) | Kind::Set(_) => "text",
        Kind::Binary => "binary",
        Kind::Date => "date",
        Kind::Datetime | Kind::Timestamp => "date-time",
        Kind::Time => "time",
        Kind::Json => "JSON",
    };
    format!("{got} for a {want} column")
}

/// Converts one value of a column; the error never contains the value.
pub(crate) fn datum(
    kind: &Kind,
    sql_type: &SqlType,
    value: Value,
    origin: Origin,
) -> Result<Datum, String> {
    if value == Value::NULL {
        return Ok(Datum::Null);
    }
    let unexpected = |v: &Value| Err(bad(kind, v));
    Ok(match kind {
        Kind::Int { bits, unsigned } => {
            let v: i64 = match value {
                Value::Int(v) if *unsigned && v < 0 && *bits < 64 => v + (1i64 << bits),
                Value::Int(v) => v,
                Value::UInt(u) => i64::try_from(u).map_err(|_| "integer out of range")?,
                Value::Bytes(b) => ascii(&b)?
                    .trim()
                    .parse()
                    .map_err(|_| "text that is not an integer")?,
                v => return unexpected(&v),
            };
            match sql_type {
                SqlType::BigInt => Datum::Long(v),
                _ => Datum::Int(i32::try_from(v).map_err(|_| "integer out of range")?),
            }
        }
        Kind::BigUnsigned => {
            let text = match value {
                Value::Int(v) if v < 0 => (v as u64).to_string(),
                Value::Int(v) => v.to_string(),
                Value::UInt(u) => u.to_string(),
                Value::Bytes(b) => ascii(&b)?.to_owned(),
                v => return unexpected(&v),
            };
            crate::text::parse(sql_type, &text).map_err(|e| e.to_string())?
        }
        Kind::Bool => match value {
            Value::Int(0) | Value::UInt(0) => Datum::Bool(false),
            Value::Int(1) | Value::UInt(1) => Datum::Bool(true),
            Value::Bytes(b) if b.as_slice() == [0] || b.as_slice() == b"0" => Datum::Bool(false),
            Value::Bytes(b) if b.as_slice() == [1] || b.as_slice() == b"1" => Datum::Bool(true),
            Value::Int(_) | Value::UInt(_) => {
                return Err(
                    "a TINYINT(1) value other than 0 and 1 (backflow shares TINYINT(1) as \
                     boolean; declare the column TINYINT(2) or wider to share other values)"
                        .into(),
                )
            }
            v => return unexpected(&v),
        },
        Kind::Bit => match value {
            Value::Bytes(b) => {
                if b.len() > 8 {
                    return Err("a BIT value wider than 64 bits".into());
                }
                Datum::Long(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)) as i64)
            }
            Value::Int(v) => Datum::Long(v),
            Value::UInt(u) => Datum::Long(u as i64),
            v => return unexpected(&v),
        },
        Kind::Decimal => match value {
            Value::Bytes(b) => {
                crate::text::parse(sql_type, ascii(&b)?).map_err(|e| e.to_string())?
            }
            Value::Int(v) => {
                crate::text::parse(sql_type, &v.to_string()).map_err(|e| e.to_string())?
            }
            v => return unexpected(&v),
        },
        Kind::Float => match value {
            Value::Float(f) => Datum::Float(f),
            Value::Double(d) => Datum::Float(d as f32),
            Value::Bytes(b) => Datum::Float(
                ascii(&b)?
                    .parse()
                    .map_err(|_| "text that is not a number")?,
            ),
            v => return unexpected(&v),
        },
        Kind::Double => match value {
            Value::Double(d) => Datum::Double(d),
            Value::Float(f) => Datum::Double(f64::from(f)),
            Value::Bytes(b) => Datum::Double(
                ascii(&b)?
                    .parse()
                    .map_err(|_| "text that is not a number")?,
            ),
            v => return unexpected(&v),
        },
        Kind::Text(cs) => match value {
            Value::Bytes(b) => Datum::Text(text_of(b, *cs)?),
            v => return unexpected(&v),
        },
        Kind::Json => match value {
            Value::Bytes(b) => {
                Datum::Json(String::from_utf8(b).map_err(|_| "a JSON document that is not UTF-8")?)
            }
            v => return unexpected(&v),
        },
        Kind::Binary => match value {
            Value::Bytes(b) => Datum::Bytes(b),
            v => return unexpected(&v),
        },
        Kind::Date => match value {
            Value::Date(y, m, d, ..) => {
                if y == 0 || m == 0 || d == 0 {
                    return Err("a zero date (0000-00-00) has no calendar value; use NULL".into());
                }
                Datum::Date(
                    i32::try_from(crate::text::days_from_civil(
                        i64::from(y),
                        u32::from(m),
                        u32::from(d),
                    ))
                    .map_err(|_| "date out of range")?,
                )
            }
            Value::Bytes(b) => {
                crate::text::parse(sql_type, ascii(&b)?).map_err(|e| e.to_string())?
            }
            v => return unexpected(&v),
        },
        Kind::Timestamp if origin == Origin::Binlog => {
            // TIMESTAMP in the binlog: seconds since the epoch, "s[.ffffff]".
            match value {
                Value::Bytes(b) => {
                    let t = ascii(&b)?;
                    let (s, frac) = t.split_once('.').unwrap_or((t, ""));
                    let secs: i64 = s.parse().map_err(|_| "a timestamp that is not seconds")?;
                    let mut us: i64 = 0;
                    if !frac.is_empty() {
                        let padded = format!("{frac:0<6}");
                        us = padded[..6].parse().map_err(|_| "bad fractional seconds")?;
                    }
                    binlog_timestamp(secs, us)?
                }
                Value::Int(secs) => Datum::TimestampTz(secs * 1_000_000),
                v => return unexpected(&v),
            }
        }
        Kind::Datetime | Kind::Timestamp => match value {
            Value::Date(y, m, d, h, mi, s, us) => {
                if y == 0 || m == 0 || d == 0 {
                    return Err("a zero date (0000-00-00) has no calendar value; use NULL".into());
                }
                let days = crate::text::days_from_civil(i64::from(y), u32::from(m), u32::from(d));
                let micros = days * MICROS_PER_DAY + micros_of_day(h, mi, s, us);
                if matches!(kind, Kind::Timestamp) {
                    Datum::TimestampTz(micros)
                } else {
                    Datum::Timestamp(micros)
                }
            }
            v => return unexpected(&v),
        },
        Kind::Time => match value {
            Value::Time(neg, days, h, mi, s, us) => {
                if neg || days > 0 {
                    return Err(
                        "a TIME outside 00:00:00..23:59:59.999999 (an interval, not a time of \
                         day) cannot be shared as a time"
                            .into(),
                    );
                }
                Datum::Time(micros_of_day(h, mi, s, us))
            }
            v => return unexpected(&v),
        },
        Kind::Year => match value {
            Value::Int(y) => Datum::Int(y as i32),
            Value::UInt(y) => Datum::Int(y as i32),
            Value::Bytes(b) => Datum::Int(
                ascii(&b)?
                    .parse()
                    .map_err(|_| "a YEAR that is not a number")?,
            ),
            Value::Date(y, ..) => Datum::Int(i32::from(y)),
            v => return unexpected(&v),
        },
        Kind::Enum(labels) => match value {
            // The binlog logs the index (1-based; 0 = the empty error value).
            Value::Int(_) | Value::UInt(_) if origin == Origin::Binlog => {
                let i = match value {
                    Value::Int(i) => i as usize,
                    Value::UInt(i) => i as usize,
                    _ => 0,
                };
                Datum::Text(if i == 0 {
                    String::new()
                } else {
                    labels
                        .get(i - 1)
                        .cloned()
                        .ok_or("an ENUM index beyond the column's labels; the table changed?")?
                })
            }
            Value::Bytes(b) => Datum::Text(text_of(b, Charset::Utf8)?),
            v => return unexpected(&v),
        },
        Kind::Set(members) => match value {
            Value::Bytes(b) if origin == Origin::Binlog => {
                // A little-endian bitmap of members.
                let bits = b
                    .iter()
                    .rev()
                    .fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
                let chosen: Vec<&str> = members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, m)| m.as_str())
                    .collect();
                Datum::Text(chosen.join(","))
            }
            Value::Bytes(b) => Datum::Text(text_of(b, Charset::Utf8)?),
            v => return unexpected(&v),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_and_set_labels_are_read_with_quotes_and_commas() {
        assert_eq!(
            labels("enum('a','it''s','x,y')"),
            vec!["a".to_owned(), "it's".into(), "x,y".into()]
        );
        assert_eq!(labels("set('read','write')"), vec!["read", "write"]);
    }

    #[test]
    fn types_map_to_shared_types() {
        let m = |dt, ct| map_type(dt, ct, Some("utf8mb4"), false).map(|t| t.0);
        assert_eq!(m("tinyint", "tinyint(1)"), Ok(SqlType::Boolean));
        assert_eq!(m("tinyint", "tinyint(4)"), Ok(SqlType::SmallInt));
        assert_eq!(m("int", "int(10) unsigned"), Ok(SqlType::BigInt));
        assert_eq!(
            m("bigint", "bigint(20) unsigned"),
            Ok(SqlType::Decimal {
                precision: Some(20),
                scale: Some(0)
            })
        );
        assert_eq!(
            m("decimal", "decimal(20,6)"),
            Ok(SqlType::Decimal {
                precision: Some(20),
                scale: Some(6)
            })
        );
        assert_eq!(
            m("varchar", "varchar(64)"),
            Ok(SqlType::Varchar { len: Some(64) })
        );
        assert_eq!(m("timestamp", "timestamp(6)"), Ok(SqlType::TimestampTz));
        assert_eq!(m("datetime", "datetime(6)"), Ok(SqlType::Timestamp));
        assert_eq!(
            m("enum", "enum('red','green')"),
            Ok(SqlType::Varchar { len: Some(5) })
        );
        assert_eq!(
            map_type("longtext", "longtext", Some("utf8mb4"), true).map(|t| t.0),
            Ok(SqlType::Json)
        );
        let gbk = map_type("varchar", "varchar(10)", Some("gbk"), false).unwrap_err();
        assert!(
            gbk.contains("gbk") && gbk.contains("CONVERT TO CHARACTER SET"),
            "{gbk}"
        );
        assert!(map_type("geometry", "geometry", None, false).is_err());
    }

    #[test]
    fn binlog_values_convert_exactly() {
        let (t, k) = map_type("int", "int unsigned", None, false).unwrap();
        assert_eq!(
            datum(&k, &t, Value::Int(-1), Origin::Binlog),
            Ok(Datum::Long(4_294_967_295))
        );
        let (t, k) = map_type("tinyint", "tinyint unsigned", None, false).unwrap();
        assert_eq!(
            datum(&k, &t, Value::Int(-2), Origin::Binlog),
            Ok(Datum::Int(254))
        );
        let (t, k) = map_type("bigint", "bigint unsigned", None, false).unwrap();
        assert_eq!(
            datum(&k, &t, Value::Int(-1), Origin::Binlog).map(|d| format!("{d:?}")),
            crate::text::parse(&t, "18446744073709551615")
                .map(|d| format!("{d:?}"))
                .map_err(|e| e.to_string())
        );
        let (t, k) = map_type("timestamp", "timestamp(6)", None, false).unwrap();
        assert_eq!(
            datum(
                &k,
                &t,
                Value::Bytes(b"1700000000.000123".to_vec()),
                Origin::Binlog
            ),
            Ok(Datum::TimestampTz(1_700_000_000_000_123))
        );
        assert_eq!(
            datum(
                &k,
                &t,
                Value::Date(2023, 11, 14, 22, 13, 20, 123),
                Origin::Query
            ),
            Ok(Datum::TimestampTz(1_700_000_000_000_123))
        );
        let (t, k) = map_type("enum", "enum('M','F')", None, false).unwrap();
        assert_eq!(
            datum(&k, &t, Value::Int(2), Origin::Binlog),
            Ok(Datum::Text("F".into()))
        );
        assert_eq!(
            datum(&k, &t, Value::Bytes(b"F".to_vec()), Origin::Query),
            Ok(Datum::Text("F".into()))
        );
        let (t, k) = map_type("set", "set('a','b','c')", None, false).unwrap();
        assert_eq!(
            datum(&k, &t, Value::Bytes(vec![0b101]), Origin::Binlog),
            Ok(Datum::Text("a,c".into()))
        );
        let (t, k) = map_type("tinyint", "tinyint(1)", None, false).unwrap();
        assert!(datum(&k, &t, Value::Int(7), Origin::Binlog)
            .unwrap_err()
            .contains("TINYINT(2)"));
        let (t, k) = map_type("date", "date", None, false).unwrap();
        assert!(
            datum(&k, &t, Value::Date(0, 0, 0, 0, 0, 0, 0), Origin::Query)
                .unwrap_err()
                .contains("zero date")
        );
        let (t, k) = map_type("time", "time(6)", None, false).unwrap();
        assert_eq!(
            datum(&k, &t, Value::Time(false, 0, 1, 2, 3, 4), Origin::Binlog),
            Ok(Datum::Time(3_723_000_004))
        );
        assert!(datum(&k, &t, Value::Time(true, 0, 1, 0, 0, 0), Origin::Binlog).is_err());
    }

    #[test]
    fn backlog_counts_bytes_after_the_position() {
        let logs = vec![("b.000001".to_owned(), 1000), ("b.000002".to_owned(), 500)];
        assert_eq!(backlog(&logs, "b.000001", 400), 1100);
        assert_eq!(backlog(&logs, "b.000002", 500), 0);
        assert_eq!(backlog(&logs, "b.000000", 4), -1);
    }
}
