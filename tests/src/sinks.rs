//! Sink databases for tests: a fresh PostgreSQL database, MariaDB database
//! or SQLite file, the sink configuration that writes to it, and a reader
//! that returns a table's rows in one canonical text form whatever the
//! backend, so one scenario checks all three.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use backflow_connectors::sink::mysql::{MysqlSink, MysqlSinkConfig};
use backflow_connectors::sink::postgres::{PostgresSink, PostgresSinkConfig};
use backflow_connectors::sink::sqlite::{SqliteSink, SqliteSinkConfig};
use backflow_connectors::sink::values::{date_text, timestamp_text};
use backflow_connectors::Sink;
use backflow_schemas::Datum;
use mysql_async::prelude::Queryable;

/// A sink database kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Mariadb,
    Sqlite,
}

/// How a column is read back into canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
    Decimal,
    TimestampTz,
    Date,
    Bool,
    Bytes,
    Double,
}

/// The canonical text of a value as [`SinkDb::rows`] reads it back.
pub fn canonical(d: &Datum) -> Option<String> {
    Some(match d {
        Datum::Null => return None,
        Datum::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
        Datum::Int(v) => v.to_string(),
        Datum::Long(v) => v.to_string(),
        Datum::Double(v) => v.to_string(),
        Datum::Float(v) => v.to_string(),
        Datum::Decimal(v) => v.to_string(),
        Datum::Text(s) | Datum::Json(s) => s.clone(),
        Datum::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Datum::Date(v) => date_text(i64::from(*v)),
        Datum::Timestamp(v) | Datum::TimestampTz(v) => timestamp_text(*v),
        Datum::Time(v) => v.to_string(),
        Datum::Uuid(u) => u.to_string(),
        Datum::Array(_) => backflow_connectors::sink::values::json_text(d),
    })
}

/// A fresh database of one backend, dropped by [`SinkDb::drop_db`] or, at
/// the latest, when it goes out of scope (a failing test too): a
/// PostgreSQL database left behind keeps its replication slots, and
/// those hold WAL and fill `max_replication_slots` for every later test.
pub struct SinkDb {
    pub backend: Backend,
    /// Database name (PostgreSQL, MariaDB).
    pub name: String,
    /// Database file (SQLite).
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    dropped: std::sync::atomic::AtomicBool,
}

impl Drop for SinkDb {
    fn drop(&mut self) {
        if self.backend == Backend::Sqlite || *self.dropped.get_mut() {
            return;
        }
        // Dropped inside a test's runtime, which cannot be blocked on: the
        // cleanup runs on a thread of its own, and its errors are ignored
        // (a panic while a failed test unwinds would abort the process).
        let (backend, name) = (self.backend, std::mem::take(&mut self.name));
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = match backend {
                    Backend::Postgres => crate::drop_pg_database(&name).await,
                    _ => drop_mariadb_database(&name).await,
                };
            });
        });
        let _ = cleanup.join();
    }
}

async fn drop_mariadb_database(name: &str) -> anyhow::Result<()> {
    let mut conn = mariadb_connect(None).await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
        .await?;
    conn.disconnect().await?;
    Ok(())
}

/// Connects to MariaDB on 127.0.0.1:3306 as root.
pub async fn mariadb_connect(db: Option<&str>) -> anyhow::Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some("root"))
        .db_name(db)
        .prefer_socket(false)
        .init(vec!["SET time_zone = '+00:00'"]);
    mysql_async::Conn::new(opts)
        .await
        .context("connect to MariaDB on 127.0.0.1:3306 (start it with scripts/services.sh up)")
}

impl SinkDb {
    /// A new, empty database.
    pub async fn create(backend: Backend) -> anyhow::Result<Self> {
        let name = crate::unique_name("bf_sink");
        let dir = tempfile::Builder::new()
            .prefix("backflow-sink-")
            .tempdir()?;
        let path = dir.path().join("district.db");
        match backend {
            Backend::Postgres => {
                crate::create_pg_database(&name).await?;
            }
            Backend::Mariadb => {
                let mut conn = mariadb_connect(None).await?;
                // Databases of test processes that died.
                let left: Vec<String> = conn
                    .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'bf\\_sink\\_%'")
                    .await?;
                for db in left {
                    let pid = db.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
                    if !pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
                        conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
                            .await?;
                    }
                }
                conn.query_drop(format!("CREATE DATABASE `{name}`")).await?;
                conn.disconnect().await?;
            }
            Backend::Sqlite => {}
        }
        Ok(Self {
            backend,
            name,
            path,
            _dir: dir,
            dropped: Default::default(),
        })
    }

    /// The schema (PostgreSQL) or database (MariaDB) tables go to.
    pub fn namespace(&self) -> String {
        match self.backend {
            Backend::Postgres => "public".to_owned(),
            Backend::Mariadb => self.name.clone(),
            Backend::Sqlite => "main".to_owned(),
        }
    }

    /// A sink writing to this database.
    pub fn sink(&self, subscription: &str) -> Box<dyn Sink> {
        match self.backend {
            Backend::Postgres => Box::new(PostgresSink::new(
                PostgresSinkConfig {
                    host: "127.0.0.1".into(),
                    port: 5432,
                    user: "postgres".into(),
                    password: None,
                    password_env: None,
                    password_file: None,
                    sslmode: Default::default(),
                    ssl_ca_file: None,
                    database: self.name.clone(),
                    schema: "public".into(),
                },
                subscription,
            )),
            Backend::Mariadb => Box::new(MysqlSink::new(
                MysqlSinkConfig {
                    host: "127.0.0.1".into(),
                    port: 3306,
                    user: "root".into(),
                    password: None,
                    password_env: None,
                    password_file: None,
                    sslmode: Default::default(),
                    ssl_ca_file: None,
                    database: self.name.clone(),
                },
                subscription,
            )),
            Backend::Sqlite => Box::new(SqliteSink::new(
                SqliteSinkConfig {
                    path: self.path.clone(),
                },
                subscription,
            )),
        }
    }

    /// The `sink = {...}` inline table of a subscription's configuration.
    pub fn sink_toml(&self) -> String {
        match self.backend {
            Backend::Postgres => format!(
                "{{ type = \"postgres\", host = \"127.0.0.1\", port = 5432, user = \"postgres\", database = \"{}\" }}",
                self.name
            ),
            Backend::Mariadb => format!(
                "{{ type = \"mysql\", host = \"127.0.0.1\", port = 3306, user = \"root\", database = \"{}\" }}",
                self.name
            ),
            Backend::Sqlite => format!(
                "{{ type = \"sqlite\", path = \"{}\" }}",
                self.path.display()
            ),
        }
    }

    fn expr(&self, column: &str, kind: Kind) -> String {
        let c = match self.backend {
            Backend::Mariadb => format!("`{column}`"),
            _ => format!("\"{column}\""),
        };
        match (self.backend, kind) {
            (Backend::Postgres, Kind::TimestampTz) => {
                format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
            }
            (Backend::Postgres, Kind::Bool) => format!("CASE WHEN {c} THEN '1' ELSE '0' END"),
            (Backend::Postgres, Kind::Bytes) => format!("encode({c}, 'hex')"),
            (Backend::Postgres, _) => format!("{c}::text"),
            (Backend::Mariadb, Kind::TimestampTz) => {
                format!("DATE_FORMAT({c}, '%Y-%m-%d %H:%i:%s.%f')")
            }
            (Backend::Mariadb, Kind::Bytes) => format!("LOWER(HEX({c}))"),
            (Backend::Mariadb, _) => format!("CAST({c} AS CHAR)"),
            (Backend::Sqlite, Kind::TimestampTz) => {
                format!("replace(replace({c}, 'T', ' '), 'Z', '')")
            }
            // hex(NULL) is '' in SQLite.
            (Backend::Sqlite, Kind::Bytes) => {
                format!("CASE WHEN {c} IS NULL THEN NULL ELSE lower(hex({c})) END")
            }
            (Backend::Sqlite, _) => format!("CAST({c} AS TEXT)"),
        }
    }

    /// Rows of `table` by the integer key column `key`, each column in
    /// canonical text (`None` for NULL); `None` when the table is absent.
    pub async fn rows(
        &self,
        table: &str,
        key: &str,
        columns: &[(&str, Kind)],
    ) -> anyhow::Result<Option<BTreeMap<i64, Vec<Option<String>>>>> {
        let mut exprs = vec![self.expr(key, Kind::Int)];
        exprs.extend(columns.iter().map(|(c, k)| self.expr(c, *k)));
        let list = exprs.join(", ");
        let mut out = BTreeMap::new();
        match self.backend {
            Backend::Postgres => {
                let client = crate::pg_connect(&self.name).await?;
                let exists: bool = client
                    .query_one(
                        "SELECT to_regclass($1) IS NOT NULL",
                        &[&format!("public.\"{table}\"")],
                    )
                    .await?
                    .get(0);
                if !exists {
                    return Ok(None);
                }
                for row in client
                    .query(&format!("SELECT {list} FROM public.\"{table}\""), &[])
                    .await?
                {
                    let k: String = row.get(0);
                    let vals = (1..exprs.len())
                        .map(|i| row.get::<_, Option<String>>(i))
                        .collect();
                    out.insert(k.parse()?, vals);
                }
            }
            Backend::Mariadb => {
                let mut conn = mariadb_connect(Some(&self.name)).await?;
                let n: Option<i64> = conn
                    .exec_first(
                        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                        (self.name.as_str(), table),
                    )
                    .await?;
                if n.unwrap_or(0) == 0 {
                    return Ok(None);
                }
                let rows: Vec<mysql_async::Row> =
                    conn.query(format!("SELECT {list} FROM `{table}`")).await?;
                for row in rows {
                    let k: String = row.get(0).context("key")?;
                    let vals = (1..exprs.len())
                        .map(|i| row.get::<Option<String>, _>(i).flatten())
                        .collect();
                    out.insert(k.parse()?, vals);
                }
                conn.disconnect().await?;
            }
            Backend::Sqlite => {
                if !self.path.exists() {
                    return Ok(None);
                }
                let conn = rusqlite::Connection::open(&self.path)?;
                let exists: bool = conn.query_row(
                    "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )?;
                if !exists {
                    return Ok(None);
                }
                let mut stmt = conn.prepare(&format!("SELECT {list} FROM \"{table}\""))?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let k: String = row.get(0)?;
                    let vals = (1..exprs.len())
                        .map(|i| row.get::<_, Option<String>>(i))
                        .collect::<Result<Vec<_>, _>>()?;
                    out.insert(k.parse()?, vals);
                }
            }
        }
        Ok(Some(out))
    }

    /// Column names of a table, in order.
    pub async fn columns(&self, table: &str) -> anyhow::Result<Vec<String>> {
        Ok(match self.backend {
            Backend::Postgres => crate::pg_connect(&self.name)
                .await?
                .query(
                    "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                    &[&table],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Backend::Mariadb => {
                let mut conn = mariadb_connect(Some(&self.name)).await?;
                let cols = conn
                    .exec(
                        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                        (self.name.as_str(), table),
                    )
                    .await?;
                conn.disconnect().await?;
                cols
            }
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(&self.path)?;
                let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
                let cols = stmt
                    .query_map([table], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                cols
            }
        })
    }

    /// The offsets table: (subscription, topic, partition) → offset.
    pub async fn offsets(&self) -> anyhow::Result<BTreeMap<(String, String, i32), i64>> {
        let mut out = BTreeMap::new();
        match self.backend {
            Backend::Postgres => {
                for r in crate::pg_connect(&self.name)
                    .await?
                    .query("SELECT subscription, topic, \"partition\", \"offset\" FROM public._backflow_offsets", &[])
                    .await?
                {
                    out.insert((r.get(0), r.get(1), r.get(2)), r.get(3));
                }
            }
            Backend::Mariadb => {
                let mut conn = mariadb_connect(Some(&self.name)).await?;
                let rows: Vec<(String, String, i32, i64)> = conn
                    .query("SELECT subscription, topic, `partition`, `offset` FROM _backflow_offsets")
                    .await?;
                for (s, t, p, o) in rows {
                    out.insert((s, t, p), o);
                }
                conn.disconnect().await?;
            }
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(&self.path)?;
                let mut stmt = conn.prepare(
                    "SELECT subscription, topic, \"partition\", \"offset\" FROM _backflow_offsets",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?))
                })?;
                for row in rows {
                    let (k, v) = row?;
                    out.insert(k, v);
                }
            }
        }
        Ok(out)
    }

    /// Runs statements (separated by `;`) one by one, as the district's
    /// own administrator would.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let statements = sql.split(';').map(str::trim).filter(|s| !s.is_empty());
        match self.backend {
            Backend::Postgres => {
                let client = crate::pg_connect(&self.name).await?;
                for s in statements {
                    client.batch_execute(s).await?;
                }
            }
            Backend::Mariadb => {
                let mut conn = mariadb_connect(Some(&self.name)).await?;
                for s in statements {
                    conn.query_drop(s).await?;
                }
                conn.disconnect().await?;
            }
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(&self.path)?;
                for s in statements {
                    conn.execute_batch(s)?;
                }
            }
        }
        Ok(())
    }

    /// Drops the database (the SQLite file goes with its directory).
    pub async fn drop_db(&self) -> anyhow::Result<()> {
        match self.backend {
            Backend::Postgres => crate::drop_pg_database(&self.name).await?,
            Backend::Mariadb => drop_mariadb_database(&self.name).await?,
            Backend::Sqlite => {}
        }
        self.dropped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
