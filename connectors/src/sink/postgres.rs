//! The PostgreSQL sink: multi-row upserts through `unnest` of text arrays,
//! one transaction per batch, offsets in `<schema>._backflow_offsets`.
//!
//! Values travel as text and are cast to the column's own type by the
//! server, so a value the column cannot hold (too long for a `varchar(n)`,
//! out of range) is refused by PostgreSQL, never truncated here.
//!
//! The server authenticates the user with SCRAM-SHA-256 or without a
//! password; clear text and MD5 are refused (`connectors/src/connect/mod.rs`).
//!
//! # Prerequisites
//! - The user may connect to the database and has `CREATE` on it (the
//!   sink creates `schema` and the tables when absent), or the schema and
//!   tables exist and the user has `INSERT`, `UPDATE`, `DELETE` and
//!   `SELECT` on them and may create `_backflow_offsets` there.
//! - A refused login (wrong password, no such database, no `CONNECT`) is a
//!   definite error with the fix: the subscription shows FAILED and is
//!   tried again once a minute.
//!
//! # Example
//! ```toml
//! [[subscriptions]]
//! name = "330106-population"
//! upstream = { brokers = "city-kafka:9092", registry_url = "https://city.example:8480", registry_token_env = "CITY_TOKEN" }
//! sink = { type = "postgres", host = "10.1.0.5", user = "backflow", password_env = "DISTRICT_PG_PASSWORD", database = "district", schema = "shared", sslmode = "verify-full", ssl_ca_file = "/etc/backflow/gov-ca.pem" }
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
use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ColumnDesc, Row, SqlType, TableDesc};
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::values::pg_text;
use super::{
    plan, quote, read_back_columns, reconcile, redact, Applied, DigestBuilder, ExistingColumn,
    ExistingTable, ReadBack, Sink, SinkBatch, TablePlan, TopicOffset, OFFSETS_TABLE,
    POSITION_COLUMN,
};
use crate::connect::{self, postgres::PgTarget};
use crate::ConnectorError;

/// Where a PostgreSQL sink writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User (needs CREATE on the schema to create tables, or existing
    /// tables with INSERT/UPDATE/DELETE).
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
    /// Schema tables are written to (created if absent).
    #[serde(default = "default_schema")]
    pub schema: String,
}

impl PostgresSinkConfig {
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
fn default_schema() -> String {
    "public".into()
}

/// The column type the sink creates for a SQL type.
pub fn ddl_type(c: &ColumnDesc, _is_key: bool) -> String {
    type_ddl(&c.sql_type)
}

fn type_ddl(t: &SqlType) -> String {
    match t {
        SqlType::Char { len: None } => "bpchar".to_owned(),
        SqlType::Json => "jsonb".to_owned(),
        SqlType::TimestampTz => "timestamp with time zone".to_owned(),
        SqlType::Array(element) => format!("{}[]", type_ddl(element)),
        t => t.to_string(),
    }
}

/// The type a parameter is cast to for a column of `base` (its type
/// without modifiers). Casts must not carry a length: `character` and `bit`
/// without one mean length 1, and an explicit cast truncates silently, so
/// those are cast to their unlimited forms and the column's own length
/// refuses a value that does not fit.
fn cast_type(base: String) -> String {
    match base.as_str() {
        "character" => "bpchar".to_owned(),
        "bit" => "bit varying".to_owned(),
        _ => base,
    }
}

/// A table ready to be written: its columns' server-side types.
struct Ready {
    /// Type name per column of the description (for the casts).
    types: Vec<String>,
    upsert: Option<Statement>,
    delete: Option<Statement>,
}

/// The PostgreSQL sink of one subscription.
pub struct PostgresSink {
    config: PostgresSinkConfig,
    subscription: String,
    client: Option<Client>,
    /// Tables made ready, by description (the `Arc` keeps its address).
    ready: HashMap<usize, (Arc<TableDesc>, Ready)>,
}

impl PostgresSink {
    /// A sink for subscription `subscription` (the offsets are stored under
    /// that name, so several subscriptions can share a database).
    pub fn new(config: PostgresSinkConfig, subscription: impl Into<String>) -> Self {
        Self {
            config,
            subscription: subscription.into(),
            client: None,
            ready: HashMap::new(),
        }
    }

    async fn client(&mut self) -> Result<&Client, ConnectorError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(self.client.as_ref().expect("checked"));
        }
        self.ready.clear();
        let c = &self.config;
        let client = connect::postgres::connect(&PgTarget {
            host: c.host.clone(),
            port: c.port,
            user: c.user.clone(),
            password: c.password.clone(),
            database: c.database.clone(),
            application_name: "backflow-sink".to_owned(),
            options: Some("-c TimeZone=UTC".to_owned()),
            tls: c.tls(),
        })
        .await?;
        let offsets = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.{table} (
                 subscription text NOT NULL,
                 topic text NOT NULL,
                 \"partition\" integer NOT NULL,
                 \"offset\" bigint NOT NULL,
                 updated_at timestamp with time zone NOT NULL DEFAULT now(),
                 PRIMARY KEY (subscription, topic, \"partition\"))",
            schema = quote('"', &c.schema),
            table = quote('"', OFFSETS_TABLE)
        );
        client
            .batch_execute(&offsets)
            .await
            .map_err(|e| pg_error(e, &format!("creating {}.{OFFSETS_TABLE}", c.schema)))?;
        self.client = Some(client);
        Ok(self.client.as_ref().expect("just set"))
    }

    fn qualified(&self, desc: &TableDesc) -> String {
        format!("{}.{}", quote('"', &desc.schema), quote('"', &desc.name))
    }

    /// The table as the catalog has it, and each column's type without its
    /// modifier (`character varying`, `numeric`, `bpchar`) for casts: an
    /// explicit cast to `varchar(n)` truncates silently, while the
    /// assignment to the column refuses a value that does not fit.
    ///
    /// A column of a domain (or an array of one) is compared with the
    /// dataset as the domain's base type, domains over domains followed: a
    /// district's `amount` over `numeric(10,2)` takes `numeric(10,2)`
    /// values. Values are still cast to the domain itself, so its checks
    /// refuse a row that breaks them.
    async fn existing(
        &mut self,
        desc: &TableDesc,
    ) -> Result<Option<(ExistingTable, HashMap<String, String>)>, ConnectorError> {
        let what = format!("reading the catalog of {}", desc.qualified_name());
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT a.attname::text,
                        CASE WHEN dom.base IS NULL THEN format_type(a.atttypid, a.atttypmod)
                             WHEN ty.typcategory = 'A' THEN format_type(dom.base, dom.mod) || '[]'
                             ELSE format_type(dom.base, dom.mod) END,
                        NOT a.attnotnull, a.atthasdef, format_type(a.atttypid, NULL)
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_type ty ON ty.oid = a.atttypid
                   LEFT JOIN LATERAL (
                        WITH RECURSIVE d(base, mod, depth) AS (
                            SELECT t.typbasetype, t.typtypmod, 1 FROM pg_type t
                             WHERE t.typtype = 'd'
                               AND t.oid = CASE WHEN ty.typcategory = 'A' THEN ty.typelem ELSE ty.oid END
                            UNION ALL
                            SELECT t.typbasetype, t.typtypmod, d.depth + 1
                              FROM pg_type t JOIN d ON t.oid = d.base WHERE t.typtype = 'd')
                        SELECT base, mod FROM d ORDER BY depth DESC LIMIT 1) dom ON true
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                    AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&desc.schema, &desc.name],
            )
            .await
            .map_err(|e| pg_error(e, &what))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let key = client
            .query(
                "SELECT a.attname::text
                   FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                  WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary",
                &[&desc.schema, &desc.name],
            )
            .await
            .map_err(|e| pg_error(e, &what))?;
        let casts = rows
            .iter()
            .map(|r| (r.get(0), cast_type(r.get(4))))
            .collect();
        Ok(Some((
            ExistingTable {
                columns: rows
                    .iter()
                    .map(|r| ExistingColumn {
                        name: r.get(0),
                        type_name: r.get(1),
                        nullable: r.get(2),
                        has_default: r.get(3),
                    })
                    .collect(),
                primary_key: key.iter().map(|r| r.get(0)).collect(),
            },
            casts,
        )))
    }

    /// Creates or extends the table for `desc`; `None` when the table does
    /// not exist and `create` is false (deletes of a table never written).
    async fn ready(
        &mut self,
        desc: &Arc<TableDesc>,
        create: bool,
    ) -> Result<Option<usize>, ConnectorError> {
        let id = Arc::as_ptr(desc) as usize;
        if self.ready.contains_key(&id) {
            return Ok(Some(id));
        }
        let table = self.qualified(desc);
        let (existing, mut casts) = match self.existing(desc).await? {
            Some(e) => e,
            None if !create => return Ok(None),
            None => {
                let mut cols: Vec<String> = desc
                    .columns
                    .iter()
                    .map(|c| {
                        let key = desc.primary_key.contains(&c.name);
                        format!(
                            "{} {}{}",
                            quote('"', &c.name),
                            ddl_type(c, key),
                            if c.nullable { "" } else { " NOT NULL" }
                        )
                    })
                    .collect();
                cols.push(format!(
                    "{} text COLLATE \"C\"",
                    quote('"', POSITION_COLUMN)
                ));
                let key: Vec<String> = desc.primary_key.iter().map(|k| quote('"', k)).collect();
                let ddl = format!(
                    "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({}))",
                    quote('"', &desc.schema),
                    cols.join(", "),
                    key.join(", ")
                );
                self.client()
                    .await?
                    .batch_execute(&ddl)
                    .await
                    .map_err(|e| {
                        pg_error(e, &format!("creating table {}", desc.qualified_name()))
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
            let fix = reconcile(desc, &existing, ddl_type)?;
            let mut alter: Vec<String> = fix
                .add
                .iter()
                .map(|c| {
                    format!(
                        "ADD COLUMN IF NOT EXISTS {} {}",
                        quote('"', &c.name),
                        ddl_type(c, false)
                    )
                })
                .collect();
            if fix.add_position {
                alter.push(format!(
                    "ADD COLUMN IF NOT EXISTS {} text COLLATE \"C\"",
                    quote('"', POSITION_COLUMN)
                ));
            }
            if !alter.is_empty() {
                self.client()
                    .await?
                    .batch_execute(&format!("ALTER TABLE {table} {}", alter.join(", ")))
                    .await
                    .map_err(|e| {
                        pg_error(e, &format!("adding columns to {}", desc.qualified_name()))
                    })?;
                tracing::info!(table = %desc.qualified_name(), added = fix.add.len(), "extended sink table");
                (_, casts) = self.existing(desc).await?.ok_or_else(|| {
                    ConnectorError::transient(format!("table {} vanished", desc.qualified_name()))
                })?;
            }
        }
        let types = desc
            .columns
            .iter()
            .map(|c| {
                casts
                    .remove(&c.name)
                    .ok_or_else(|| {
                        ConnectorError::definite(format!(
                            "table {} has no column {}: add it or drop the table and backflow creates it",
                            desc.qualified_name(),
                            c.name
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !casts.contains_key(POSITION_COLUMN) {
            return Err(ConnectorError::definite(format!(
                "table {} has no {POSITION_COLUMN} column: it was not created by backflow; let backflow write to it once with its full dataset so the column is added",
                desc.qualified_name()
            )));
        }
        self.ready.insert(
            id,
            (
                desc.clone(),
                Ready {
                    types,
                    upsert: None,
                    delete: None,
                },
            ),
        );
        Ok(Some(id))
    }

    async fn statements(&mut self, id: usize) -> Result<(Statement, Statement), ConnectorError> {
        let (desc, ready) = &self.ready[&id];
        if let (Some(u), Some(d)) = (&ready.upsert, &ready.delete) {
            return Ok((u.clone(), d.clone()));
        }
        let desc = desc.clone();
        let types = ready.types.clone();
        let table = self.qualified(&desc);
        let n = desc.columns.len();
        let names: Vec<String> = desc.columns.iter().map(|c| quote('"', &c.name)).collect();
        let arrays: Vec<String> = (1..=n + 1).map(|i| format!("${i}::text[]")).collect();
        let aliases: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let casts: Vec<String> = (0..n).map(|i| format!("u.c{i}::{}", types[i])).collect();
        let pos = quote('"', POSITION_COLUMN);
        let mut set: Vec<String> = desc
            .columns
            .iter()
            .filter(|c| !desc.primary_key.contains(&c.name))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote('"', &c.name)))
            .collect();
        set.push(format!("{pos} = EXCLUDED.{pos}"));
        let key: Vec<String> = desc.primary_key.iter().map(|k| quote('"', k)).collect();
        let upsert = format!(
            "INSERT INTO {table} AS t ({cols}, {pos}) \
             SELECT {casts}, u.v FROM unnest({arrays}) AS u({aliases}, v) \
             ON CONFLICT ({key}) DO UPDATE SET {set} \
             WHERE t.{pos} IS NULL OR t.{pos} <= EXCLUDED.{pos}",
            cols = names.join(", "),
            casts = casts.join(", "),
            arrays = arrays.join(", "),
            aliases = aliases.join(", "),
            key = key.join(", "),
            set = set.join(", "),
        );
        let key_idx: Vec<usize> = desc
            .primary_key
            .iter()
            .map(|k| desc.column(k).map(|(i, _)| i).expect("validated key"))
            .collect();
        let k = key_idx.len();
        let del_arrays: Vec<String> = (1..=k + 1).map(|i| format!("${i}::text[]")).collect();
        let del_aliases: Vec<String> = (0..k).map(|i| format!("k{i}")).collect();
        let del_match: Vec<String> = key_idx
            .iter()
            .enumerate()
            .map(|(j, i)| format!("t.{} = d.k{j}::{}", names[*i], types[*i]))
            .collect();
        let delete = format!(
            "DELETE FROM {table} AS t USING unnest({arrays}) AS d({aliases}, v) \
             WHERE {matches} AND (d.v IS NULL OR t.{pos} IS NULL OR t.{pos} <= d.v)",
            arrays = del_arrays.join(", "),
            aliases = del_aliases.join(", "),
            matches = del_match.join(" AND "),
        );
        let what = format!("preparing statements for {}", desc.qualified_name());
        let client = self.client().await?;
        let u = client
            .prepare(&upsert)
            .await
            .map_err(|e| pg_error(e, &what))?;
        let d = client
            .prepare(&delete)
            .await
            .map_err(|e| pg_error(e, &what))?;
        let ready = &mut self.ready.get_mut(&id).expect("ready").1;
        ready.upsert = Some(u.clone());
        ready.delete = Some(d.clone());
        Ok((u, d))
    }
}

/// Per-column text arrays of rows, plus their versions as the last array.
fn columns_of<'a>(
    width: usize,
    rows: impl Iterator<Item = (&'a Row, Option<&'a str>)>,
) -> Vec<Vec<Option<String>>> {
    let mut cols: Vec<Vec<Option<String>>> = vec![Vec::new(); width + 1];
    for (row, version) in rows {
        for (i, d) in row.0.iter().enumerate() {
            cols[i].push(pg_text(d));
        }
        cols[width].push(version.map(str::to_owned));
    }
    cols
}

/// Classifies a PostgreSQL error: a value the table refuses is one bad
/// record; lost connections and conflicts are transient; the rest (missing
/// privilege, schema drift) needs someone to act.
fn pg_error(e: tokio_postgres::Error, what: &str) -> ConnectorError {
    let msg = match e.as_db_error() {
        Some(db) => format!(
            "PostgreSQL refused {what}: {} (SQLSTATE {}){}",
            redact(db.message(), '"'),
            db.code().code(),
            db.column()
                .map(|c| format!(", column {c}"))
                .unwrap_or_default()
        ),
        None => format!("PostgreSQL failed while {what}: {e}"),
    };
    let Some(code) = e.code() else {
        return ConnectorError::transient(msg).with_source(e);
    };
    let class = &code.code()[..2];
    let err = if class == "22" || class == "23" {
        ConnectorError::bad_record(msg)
    } else if matches!(class, "08" | "40" | "53" | "57" | "55")
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        ConnectorError::transient(msg)
    } else {
        ConnectorError::definite(msg)
    };
    err.with_source(e)
}

#[async_trait]
impl Sink for PostgresSink {
    async fn committed_offsets(&mut self) -> Result<Vec<TopicOffset>, ConnectorError> {
        let sql = format!(
            "SELECT topic, \"partition\", \"offset\" FROM {}.{} WHERE subscription = $1 ORDER BY 1, 2",
            quote('"', &self.config.schema),
            quote('"', OFFSETS_TABLE)
        );
        let sub = self.subscription.clone();
        let rows = self
            .client()
            .await?
            .query(&sql, &[&sub])
            .await
            .map_err(|e| pg_error(e, "reading the stored offsets"))?;
        Ok(rows
            .iter()
            .map(|r| TopicOffset {
                topic: r.get(0),
                partition: r.get(1),
                offset: r.get(2),
            })
            .collect())
    }

    async fn apply_batch(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError> {
        let (plans, superseded) = plan(batch)?;
        let mut applied = Applied {
            skipped: superseded,
            offsets: batch.offsets.clone(),
            ..Applied::default()
        };
        // Tables first (DDL commits on its own), then the data.
        let mut work: Vec<(&TablePlan, usize, Statement, Statement)> = Vec::new();
        for p in &plans {
            match self.ready(&p.table, !p.upserts.is_empty()).await? {
                Some(id) => {
                    let (u, d) = self.statements(id).await?;
                    work.push((p, id, u, d));
                }
                None => applied.skipped += p.deletes.len() as u64,
            }
        }
        let offsets_sql = format!(
            "INSERT INTO {}.{} (subscription, topic, \"partition\", \"offset\", updated_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (subscription, topic, \"partition\") DO UPDATE \
             SET \"offset\" = EXCLUDED.\"offset\", updated_at = EXCLUDED.updated_at",
            quote('"', &self.config.schema),
            quote('"', OFFSETS_TABLE)
        );
        let sub = self.subscription.clone();
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| ConnectorError::transient("connection lost"))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error(e, "starting a transaction"))?;
        for (p, _, upsert, delete) in &work {
            let table = p.table.qualified_name();
            if !p.deletes.is_empty() {
                let key_idx: Vec<usize> = p
                    .table
                    .primary_key
                    .iter()
                    .map(|k| p.table.column(k).map(|(i, _)| i).expect("validated key"))
                    .collect();
                let cols = columns_of(
                    key_idx.len(),
                    p.deletes.iter().map(|(k, v)| (*k, v.as_deref())),
                );
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    cols.iter().map(|c| c as _).collect();
                let n = tx
                    .execute(delete, &params)
                    .await
                    .map_err(|e| pg_error(e, &format!("deleting rows of {table}")))?;
                applied.deleted += n;
                applied.skipped += p.deletes.len() as u64 - n.min(p.deletes.len() as u64);
            }
            if !p.upserts.is_empty() {
                let cols = columns_of(
                    p.table.columns.len(),
                    p.upserts.iter().map(|(r, v)| (*r, Some(v.as_str()))),
                );
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    cols.iter().map(|c| c as _).collect();
                let n = tx
                    .execute(upsert, &params)
                    .await
                    .map_err(|e| pg_error(e, &format!("writing rows of {table}")))?;
                applied.upserted += n;
                applied.skipped += p.upserts.len() as u64 - n.min(p.upserts.len() as u64);
            }
        }
        let store = tx
            .prepare(&offsets_sql)
            .await
            .map_err(|e| pg_error(e, "storing offsets"))?;
        for o in &batch.offsets {
            tx.execute(&store, &[&sub, &o.topic, &o.partition, &o.offset])
                .await
                .map_err(|e| pg_error(e, "storing offsets"))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error(e, "committing a batch"))?;
        Ok(applied)
    }

    async fn shutdown(&mut self) -> Result<(), ConnectorError> {
        self.ready.clear();
        self.client = None;
        Ok(())
    }

    async fn read_back(&mut self, tables: &[Arc<TableDesc>]) -> Result<ReadBack, ConnectorError> {
        use futures::TryStreamExt;
        self.client().await?;
        let sub = self.subscription.clone();
        let offsets_sql = format!(
            "SELECT topic, \"partition\", \"offset\" FROM {}.{} WHERE subscription = $1 ORDER BY 1, 2",
            quote('"', &self.config.schema),
            quote('"', OFFSETS_TABLE)
        );
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| ConnectorError::transient("connection lost"))?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| pg_error(e, "starting a read-only transaction"))?;
        let offsets = tx
            .query(&offsets_sql, &[&sub])
            .await
            .map_err(|e| pg_error(e, "reading the stored offsets"))?
            .iter()
            .map(|r| TopicOffset {
                topic: r.get(0),
                partition: r.get(1),
                offset: r.get(2),
            })
            .collect();
        let mut out = Vec::with_capacity(tables.len());
        for desc in tables {
            let what = format!("reading {} back", desc.qualified_name());
            let qualified = format!("{}.{}", quote('"', &desc.schema), quote('"', &desc.name));
            let exists: Option<String> = tx
                .query_one("SELECT to_regclass($1)::text", &[&qualified])
                .await
                .map_err(|e| pg_error(e, &what))?
                .get(0);
            if exists.is_none() {
                out.push(None);
                continue;
            }
            let sql = format!(
                "SELECT {} FROM {qualified}",
                read_back_columns(desc, '"', "::text")
            );
            let rows = tx
                .query_raw(
                    &sql,
                    std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
                )
                .await
                .map_err(|e| pg_error(e, &what))?;
            futures::pin_mut!(rows);
            let mut digests = DigestBuilder::new(desc.primary_key.len());
            while let Some(row) = rows.try_next().await.map_err(|e| pg_error(e, &what))? {
                digests
                    .add((0..row.len()).map(|i| row.get::<_, Option<&str>>(i).map(str::as_bytes)));
            }
            out.push(Some(digests.finish()));
        }
        tx.commit()
            .await
            .map_err(|e| pg_error(e, "ending a read-only transaction"))?;
        Ok(ReadBack {
            offsets,
            tables: out,
        })
    }

    async fn copy_table(&mut self, of: &TableDesc, copy: &TableDesc) -> Result<(), ConnectorError> {
        self.ready.clear();
        let sql = format!(
            "DROP TABLE IF EXISTS {copy}; CREATE TABLE {copy} (LIKE {of} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
            copy = self.qualified(copy),
            of = self.qualified(of),
        );
        self.client().await?.batch_execute(&sql).await.map_err(|e| {
            pg_error(
                e,
                &format!("copying the definition of {}", of.qualified_name()),
            )
        })
    }

    async fn drop_table(&mut self, table: &TableDesc) -> Result<(), ConnectorError> {
        self.ready.clear();
        let sql = format!("DROP TABLE IF EXISTS {}", self.qualified(table));
        self.client()
            .await?
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_error(e, &format!("dropping {}", table.qualified_name())))
    }
}
