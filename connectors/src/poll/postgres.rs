//! PostgreSQL engine of the polling source: plain SQL over one connection,
//! values read as text (`::text`) and converted by [`crate::text`].
//!
//! The session keeps the server's default `TimeZone`, so that a
//! `timestamp` (without time zone) column is compared with the server's
//! `LOCALTIMESTAMP`, the wall-clock time applications writing `now()` into
//! such a column store. `timestamptz` values arrive with their UTC offset
//! and are converted to UTC.

use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ColumnDesc, SqlType, TableDesc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::engine::{quote_ident as ident, Cells, Clock, Engine, Polled, Since, TsScale};
use super::PollSourceConfig;
use crate::connect::{self, postgres::PgTarget};
use crate::sink::values::timestamp_text;
use crate::ConnectorError;

/// A PostgreSQL database read by a polling feed.
pub(crate) struct PgEngine {
    client: Client,
    database: String,
}

/// An error of a statement: SQLSTATE classes that pass on their own
/// (connection, rollback, resources, operator intervention) and lost
/// connections are transient, everything else definite.
fn sql_err(what: &str, e: tokio_postgres::Error) -> ConnectorError {
    let msg = format!("PostgreSQL: {what}: {e}");
    let transient = match e.as_db_error() {
        Some(db) => ["08", "40", "53", "57"]
            .iter()
            .any(|class| db.code().code().starts_with(class)),
        None => true,
    };
    if transient {
        ConnectorError::transient(msg).with_source(e)
    } else {
        ConnectorError::definite(msg).with_source(e)
    }
}

impl PgEngine {
    /// Connects with the feed's settings (checked by
    /// [`PollSourceConfig::validate`]).
    pub async fn connect(config: &PollSourceConfig) -> Result<Self, ConnectorError> {
        let database = config.database.clone().unwrap_or_default();
        let target = PgTarget {
            host: config.host.clone(),
            port: config.port(),
            user: config.user.clone().unwrap_or_default(),
            password: config.password.clone(),
            database: database.clone(),
            application_name: format!("backflow-poll-{}", config.name),
            options: Some(
                "-c DateStyle=ISO,MDY -c bytea_output=hex -c IntervalStyle=iso_8601".to_owned(),
            ),
            tls: config.tls(),
        };
        let client = connect::postgres::connect(&target).await?;
        Ok(Self { client, database })
    }

    /// Reads rows of text cells and converts them: the first `skip`
    /// columns are returned as they are, the rest converted for `columns`.
    fn convert(row: &tokio_postgres::Row, skip: usize, columns: &[&ColumnDesc]) -> Cells {
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| match row.try_get::<_, Option<String>>(i + skip) {
                Ok(None) => Ok(backflow_schemas::Datum::Null),
                Ok(Some(text)) => crate::text::parse(&c.sql_type, &text)
                    .map_err(|e| format!("column {}: {e}", c.name)),
                Err(e) => Err(format!("column {}: {e}", c.name)),
            })
            .collect()
    }
}

/// Microseconds since 1970-01-01 of a timestamp(tz) expression, exactly
/// on every PostgreSQL version (before 14, `extract(epoch ...)` is a
/// double that can be a microsecond off): whole seconds plus the
/// microseconds of the second.
fn micros(expr: &str) -> String {
    format!(
        "(extract(epoch FROM date_trunc('second', {expr}))::bigint * 1000000 \
         + extract(microseconds FROM {expr})::bigint % 1000000)"
    )
}

fn table_ref(desc: &TableDesc) -> String {
    format!("{}.{}", ident(&desc.schema), ident(&desc.name))
}

fn text_columns(columns: &[&ColumnDesc]) -> String {
    columns
        .iter()
        .map(|c| format!("t.{}::text", ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Engine for PgEngine {
    fn db(&self) -> &str {
        &self.database
    }

    fn default_schema(&self) -> &str {
        "public"
    }

    async fn describe(
        &self,
        schema: &str,
        name: &str,
        dataset: &str,
    ) -> Result<TableDesc, ConnectorError> {
        let table = crate::postgres::TableConfig {
            table: format!("{schema}.{name}"),
            dataset: dataset.to_owned(),
        };
        let (desc, sources) =
            crate::postgres::catalog::describe_sources(&self.client, &table).await?;
        // Polled rows are read with `::text`, which prints money in the
        // server's currency format: it is shared by the replication feed.
        if let Some((c, _)) = desc.columns.iter().zip(&sources).find(|(_, s)| s.money) {
            return Err(ConnectorError::definite(format!(
                "table {}, column {}: money cannot be polled (its text depends on the server's \
                 locale); capture the table with a logical replication feed (type = \"postgres\"), \
                 or poll a view that casts the column to numeric",
                desc.qualified_name(),
                c.name
            )));
        }
        Ok(desc)
    }

    fn timestamp_scale(&self, column: &ColumnDesc) -> Result<TsScale, String> {
        match &column.sql_type {
            SqlType::TimestampTz => Ok(TsScale::Utc),
            SqlType::Timestamp => Ok(TsScale::Local),
            other => Err(format!(
                "it is {other}, but the timestamp column must be a timestamp or timestamptz \
                 column the application sets on every insert and update"
            )),
        }
    }

    async fn clock(&self) -> Result<Clock, ConnectorError> {
        let row = self
            .client
            .query_one(
                &format!("SELECT {}, {}", micros("now()"), micros("localtimestamp")),
                &[],
            )
            .await
            .map_err(|e| sql_err("reading the database clock", e))?;
        Ok(Clock {
            utc: row.get(0),
            local: row.get(1),
        })
    }

    async fn read_since(&self, q: Since) -> Result<Vec<Polled>, ConnectorError> {
        let desc = &q.desc;
        let ts = format!("t.{}", ident(&q.ts_column));
        let inc = format!("t.{}", ident(&q.inc_column));
        // Bounds travel as timestamp text (exact, BC included); a
        // timestamptz bound is that text in UTC.
        let (cast, bound): (&str, fn(usize) -> String) = match q.scale {
            TsScale::Utc => ("timestamptz", |n| {
                format!("(${n}::text::timestamp AT TIME ZONE 'UTC')")
            }),
            TsScale::Local => ("timestamp", |n| format!("${n}::text::timestamp")),
        };
        let columns: Vec<&ColumnDesc> = desc.columns.iter().collect();
        let upper = timestamp_text(q.upper);
        let mut sql = format!(
            "SELECT {}, {inc}::bigint, {} \
             FROM {} t WHERE {ts} < {} AND {inc} IS NOT NULL AND ",
            micros(&ts),
            text_columns(&columns),
            table_ref(desc),
            bound(1),
        );
        let after_ts;
        let after_inc;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&upper];
        match &q.after {
            Some(w) => {
                after_ts = timestamp_text(w.ts);
                after_inc = w.inc;
                sql.push_str(&format!(
                    "({ts} > {after} OR ({ts} = {after} AND {inc} > $3::bigint))",
                    after = bound(2)
                ));
                params.push(&after_ts);
                params.push(&after_inc);
            }
            // -infinity is never read: it has no place on the watermark.
            None => sql.push_str(&format!("{ts} > '-infinity'::{cast}")),
        }
        sql.push_str(&format!(" ORDER BY {ts}, {inc} LIMIT {}", q.limit));
        let rows = self
            .client
            .query(&sql, &params)
            .await
            .map_err(|e| sql_err(&format!("polling {}", desc.qualified_name()), e))?;
        Ok(rows
            .iter()
            .map(|r| Polled {
                ts: r.get(0),
                inc: r.get(1),
                cells: Self::convert(r, 2, &columns),
            })
            .collect())
    }

    async fn read_all(
        &self,
        desc: Arc<TableDesc>,
        limit: Option<usize>,
    ) -> Result<Vec<Cells>, ConnectorError> {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let columns: Vec<&ColumnDesc> = desc.columns.iter().collect();
        let keys: Vec<String> = desc
            .primary_key
            .iter()
            .map(|k| format!("t.{}", ident(k)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} t ORDER BY {}{limit}",
            text_columns(&columns),
            table_ref(&desc),
            keys.join(", ")
        );
        let rows = self
            .client
            .query(&sql, &[])
            .await
            .map_err(|e| sql_err(&format!("reading {}", desc.qualified_name()), e))?;
        Ok(rows.iter().map(|r| Self::convert(r, 0, &columns)).collect())
    }

    async fn read_keys(&self, desc: Arc<TableDesc>) -> Result<Vec<Cells>, ConnectorError> {
        let columns = desc.key_columns();
        let sql = format!(
            "SELECT {} FROM {} t",
            text_columns(&columns),
            table_ref(&desc)
        );
        let rows =
            self.client.query(&sql, &[]).await.map_err(|e| {
                sql_err(&format!("reading the keys of {}", desc.qualified_name()), e)
            })?;
        Ok(rows.iter().map(|r| Self::convert(r, 0, &columns)).collect())
    }
}
