//! Server prerequisites and table descriptions, read from the catalog.
//! Every failed check says what to change.

use std::time::Duration;

use backflow_schemas::{ColumnDesc, SqlType, TableDesc};
use pgwire_replication::Lsn;
use tokio_postgres::Client;

use super::{ReplicaIdentityMode, TableConfig};
use crate::ConnectorError;

/// Quotes an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn sql_err(what: &str, e: tokio_postgres::Error) -> ConnectorError {
    let definite = e.as_db_error().is_some();
    let msg = format!("PostgreSQL: {what}: {e}");
    if definite {
        ConnectorError::definite(msg).with_source(e)
    } else {
        ConnectorError::transient(msg).with_source(e)
    }
}

/// `wal_level` must be `logical`.
pub async fn check_wal_level(client: &Client) -> Result<(), ConnectorError> {
    let row = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| sql_err("reading wal_level", e))?;
    let level: String = row.get(0);
    if level != "logical" {
        return Err(ConnectorError::definite(format!(
            "PostgreSQL wal_level is '{level}', but logical replication needs 'logical': run \
             ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
        )));
    }
    Ok(())
}

/// How long the source waits for the catalog to show the columns of a
/// Relation message.
pub const CATALOG_WAIT: Duration = Duration::from_secs(10);

/// Describes a table after the replication stream announced a new shape
/// with `columns`. The stream can be ahead of the catalog: PostgreSQL
/// sends a transaction's changes once its commit record is flushed, a
/// moment before the commit is visible to other sessions, so a catalog
/// read at once may still show the table before an `ALTER TABLE`. The
/// description is read again (backing off) until it has every column the
/// stream names; after `wait` it is a transient error, and the
/// feed restarts from its last acknowledged position.
pub async fn describe_with(
    client: &Client,
    table: &TableConfig,
    columns: &[String],
    wait: Duration,
) -> Result<(TableDesc, Vec<ColumnSource>), ConnectorError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let (desc, sources) = describe_sources(client, table).await?;
        let missing: Vec<&str> = columns
            .iter()
            .filter(|c| desc.column(c).is_none())
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok((desc, sources));
        }
        if started.elapsed() >= wait {
            return Err(ConnectorError::transient(format!(
                "the catalog of {} still lacks column(s) {} that the replication stream \
                 already sends, after {:.1} s; the feed restarts from its last acknowledged \
                 position",
                desc.qualified_name(),
                missing.join(", "),
                wait.as_secs_f64()
            )));
        }
        tracing::debug!(table = %desc.qualified_name(), ?missing, "catalog behind the replication stream; reading it again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// How the source reads a column's values, beyond its shared type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSource {
    /// The column's own type as PostgreSQL names it (`mood`, `amount`,
    /// `integer[]`), for casts that compare with it.
    pub type_name: String,
    /// A `money` column (or a domain over it): the snapshot reads it as
    /// `numeric`, the stream as the raw amount `lc_monetary = C` prints.
    pub money: bool,
}

/// `pg_type` oid of `money`.
const MONEY_OID: u32 = 790;
/// `pg_type` oid of `interval`.
const INTERVAL_OID: u32 = 1186;

/// A column type with its domains resolved.
enum Resolved {
    Enum,
    Money,
    Interval,
    /// An array of the element type (oid, typmod).
    Array(u32, i32),
    /// Any other type, by its `format_type` name.
    Named(String),
}

/// Follows a type through its domains (a domain over a domain too) to
/// the type that holds its values.
async fn resolve(
    client: &Client,
    mut oid: u32,
    mut typmod: i32,
    what: &str,
) -> Result<Resolved, ConnectorError> {
    for _ in 0..64 {
        let row = client
            .query_one(
                "SELECT typtype::text, typbasetype, typtypmod, typelem, typcategory::text, typlen, \
                        format_type(oid, $2) \
                 FROM pg_type WHERE oid = $1",
                &[&oid, &typmod],
            )
            .await
            .map_err(|e| sql_err(&format!("reading the type of {what}"), e))?;
        let (typtype, base, base_typmod, elem, category, len): (
            String,
            u32,
            i32,
            u32,
            String,
            i16,
        ) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        if typtype == "d" {
            // A domain's values are its base type's; its typmod (numeric(10,2))
            // is declared on the domain.
            oid = base;
            typmod = base_typmod;
            continue;
        }
        return Ok(match oid {
            MONEY_OID => Resolved::Money,
            INTERVAL_OID => Resolved::Interval,
            _ if typtype == "e" => Resolved::Enum,
            _ if category == "A" && len == -1 && elem != 0 => Resolved::Array(elem, typmod),
            _ => Resolved::Named(row.get(6)),
        });
    }
    Err(ConnectorError::definite(format!(
        "{what}: its domains nest more than 64 deep; share it through a view that casts it to its base type"
    )))
}

/// The scale of `money` amounts: the fraction digits of the server's
/// `lc_monetary` for this session (the database's default).
async fn money_scale(client: &Client) -> Result<u32, ConnectorError> {
    let row = client
        .query_one("SELECT scale('0'::money::numeric)", &[])
        .await
        .map_err(|e| sql_err("reading the scale of money amounts (lc_monetary)", e))?;
    Ok(row.get::<_, i32>(0).max(0) as u32)
}

/// The shared type of a column of type `oid` (typmod `typmod`).
async fn shared_type(
    client: &Client,
    oid: u32,
    typmod: i32,
    what: &str,
) -> Result<(SqlType, bool), ConnectorError> {
    let cannot = |type_name: &str| {
        ConnectorError::definite(format!(
            "{what}: type {type_name} cannot be shared yet; \
             leave the column out with a view, or cast it in the source"
        ))
    };
    let parse = |type_name: String| SqlType::parse(&type_name).map_err(|_| cannot(&type_name));
    Ok(match resolve(client, oid, typmod, what).await? {
        Resolved::Enum => (SqlType::Text, false),
        Resolved::Interval => (SqlType::Interval, false),
        // money is a 64-bit count of the currency's smallest unit: 19 digits.
        Resolved::Money => (
            SqlType::Decimal {
                precision: Some(19),
                scale: Some(money_scale(client).await?),
            },
            true,
        ),
        Resolved::Named(name) => (parse(name)?, false),
        Resolved::Array(elem, typmod) => {
            let element = match resolve(client, elem, typmod, what).await? {
                Resolved::Enum => SqlType::Text,
                Resolved::Interval => SqlType::Interval,
                Resolved::Money => {
                    return Err(ConnectorError::definite(format!(
                        "{what}: arrays of money cannot be shared (the array's text prints \
                         each amount in the server's currency format); share the column \
                         through a view as numeric[] (column::numeric[])"
                    )))
                }
                Resolved::Array(..) => return Err(cannot("array of arrays")),
                Resolved::Named(name) => match parse(name.clone())? {
                    SqlType::Array(_) => return Err(cannot(&name)),
                    t => t,
                },
            };
            (SqlType::Array(Box::new(element)), false)
        }
    })
}

/// Describes a table from the catalog, with how each column is read;
/// checks it has a primary key and that every column type maps.
///
/// An enum is shared as text (its label), a domain as its base type, an
/// interval as ISO 8601 text, money as `numeric(19, s)` with `s` the
/// fraction digits of `lc_monetary`, an array as an array of its element
/// type. PostgreSQL does not enforce an array
/// column's dimensions (`int[][]` is `int[]`), so a value with more than
/// one, or with a lower bound other than 1, can only be refused when it
/// is read: that row is dead-lettered.
pub async fn describe_sources(
    client: &Client,
    table: &TableConfig,
) -> Result<(TableDesc, Vec<ColumnSource>), ConnectorError> {
    let (schema, name) = table.split();
    let qualified = format!("{schema}.{name}");
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, a.attnotnull, \
                    pg_get_expr(d.adbin, d.adrelid), format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&schema, &name],
        )
        .await
        .map_err(|e| sql_err(&format!("describing {qualified}"), e))?;
    if rows.is_empty() {
        return Err(ConnectorError::definite(format!(
            "table {qualified} does not exist (or this user cannot see it): check the feed's tables and GRANT SELECT ON {qualified}"
        )));
    }
    let mut columns = Vec::with_capacity(rows.len());
    let mut sources = Vec::with_capacity(rows.len());
    for r in &rows {
        let col: String = r.get(0);
        let not_null: bool = r.get(3);
        let what = format!("table {qualified}, column {col}");
        let (sql_type, money) = shared_type(client, r.get(1), r.get(2), &what).await?;
        let mut column = ColumnDesc::new(col, sql_type, !not_null);
        // A constant default becomes the Avro field's default, so ADD
        // COLUMN ... NOT NULL DEFAULT x stays backward compatible; not for
        // types whose default is written in another form than their
        // values are shared in (interval, money).
        if not_null && !money && column.sql_type != SqlType::Interval {
            let default = r
                .get::<_, Option<String>>(4)
                .as_deref()
                .and_then(constant_default)
                .and_then(|text| crate::text::parse(&column.sql_type, &text).ok());
            if let Some(datum) = default {
                column = column.with_default(&datum);
            }
        }
        columns.push(column);
        sources.push(ColumnSource {
            type_name: r.get(5),
            money,
        });
    }
    let pk_rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&schema, &name],
        )
        .await
        .map_err(|e| sql_err(&format!("reading the primary key of {qualified}"), e))?;
    let primary_key: Vec<String> = pk_rows.iter().map(|r| r.get(0)).collect();
    if let Some((c, _)) = primary_key
        .iter()
        .filter_map(|k| columns.iter().zip(&sources).find(|(c, _)| c.name == *k))
        .find(|(_, s)| s.money)
    {
        return Err(ConnectorError::definite(format!(
            "table {qualified}: primary-key column {} is money, whose text form depends on the server's locale; key the table by another column, or share it through a view that casts the key to numeric",
            c.name
        )));
    }
    if primary_key.is_empty() {
        return Err(ConnectorError::definite(format!(
            "table {qualified} has no primary key; backflow keys every change by primary key: \
             ALTER TABLE {qualified} ADD PRIMARY KEY (...)"
        )));
    }
    let desc = TableDesc {
        dataset: table.dataset.clone(),
        schema: schema.to_owned(),
        name: name.to_owned(),
        columns,
        primary_key,
    };
    desc.validate_captured()
        .map_err(|e| ConnectorError::definite(e.to_string()))?;
    Ok((desc, sources))
}

/// Makes sure the table logs full before-images (`REPLICA IDENTITY FULL`),
/// and, for a partitioned table, each of its partitions: PostgreSQL logs a
/// change's before-image by the replica identity of the partition that
/// holds the row, not of the root. Called again whenever the stream
/// describes the table, so a partition created later is covered from the
/// first change the feed sees in it.
pub async fn ensure_replica_identity(
    client: &Client,
    table: &TableDesc,
    mode: ReplicaIdentityMode,
) -> Result<(), ConnectorError> {
    ensure_full(client, &table.schema, &table.name, mode).await?;
    for (schema, name) in partitions(client, &table.schema, &table.name).await? {
        ensure_full(client, &schema, &name, mode).await?;
    }
    Ok(())
}

/// The partitions of a partitioned table at every level, its
/// sub-partitioned ones included (none for a plain table).
async fn partitions(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Vec<(String, String)>, ConnectorError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text \
             FROM pg_partition_tree(format('%I.%I', $1::text, $2::text)::regclass) t \
             JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.level > 0 ORDER BY t.level, c.relname",
            &[&schema, &name],
        )
        .await
        .map_err(|e| sql_err(&format!("reading the partitions of {schema}.{name}"), e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Whether the table is partitioned (PostgreSQL declarative partitioning).
async fn is_partitioned(client: &Client, schema: &str, name: &str) -> Result<bool, ConnectorError> {
    let row = client
        .query_one(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = format('%I.%I', $1::text, $2::text)::regclass",
            &[&schema, &name],
        )
        .await
        .map_err(|e| sql_err(&format!("reading the kind of {schema}.{name}"), e))?;
    Ok(row.get(0))
}

async fn ensure_full(
    client: &Client,
    schema: &str,
    name: &str,
    mode: ReplicaIdentityMode,
) -> Result<(), ConnectorError> {
    let qualified = format!("{}.{}", ident(schema), ident(name));
    let shown = format!("{schema}.{name}");
    let row = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = format('%I.%I', $1::text, $2::text)::regclass",
            &[&schema, &name],
        )
        .await
        .map_err(|e| sql_err("reading the replica identity", e))?;
    let current: String = row.get(0);
    if current == "f" {
        return Ok(());
    }
    match mode {
        ReplicaIdentityMode::Require => Err(ConnectorError::definite(format!(
            "table {shown} does not log full before-images (REPLICA IDENTITY is '{current}'); \
             the distributor needs them to compute retractions: run \
             ALTER TABLE {qualified} REPLICA IDENTITY FULL (or set replica_identity = \"set\")"
        ))),
        ReplicaIdentityMode::Set => {
            client
                .batch_execute(&format!("ALTER TABLE {qualified} REPLICA IDENTITY FULL"))
                .await
                .map_err(|e| {
                    sql_err(
                        &format!(
                            "setting REPLICA IDENTITY FULL on {shown} (the feed's user must own the table, or an owner runs it)"
                        ),
                        e,
                    )
                })?;
            tracing::info!(table = %shown, "set REPLICA IDENTITY FULL");
            Ok(())
        }
    }
}

/// Creates the publication for the tables, or adds missing tables to it.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableDesc],
) -> Result<(), ConnectorError> {
    let list: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", ident(&t.schema), ident(&t.name)))
        .collect();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| sql_err("reading publications", e))?
        .is_some();
    let hint =
        "the feed's user needs CREATE on the database (or create the publication as its owner)";
    // A partitioned table is published as its root: its partitions'
    // changes (those of partitions created later too) arrive as the
    // root's, the table the feed names.
    let mut partitioned = false;
    for t in tables {
        partitioned |= is_partitioned(client, &t.schema, &t.name).await?;
    }
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}{}",
                ident(publication),
                list.join(", "),
                if partitioned {
                    " WITH (publish_via_partition_root = true)"
                } else {
                    ""
                }
            ))
            .await
            .map_err(|e| sql_err(&format!("creating publication {publication} ({hint})"), e))?;
        tracing::info!(publication, "created publication");
        return Ok(());
    }
    if partitioned {
        let via_root: bool = client
            .query_one(
                "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(|e| sql_err("reading the publication", e))?
            .get(0);
        if !via_root {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    ident(publication)
                ))
                .await
                .map_err(|e| {
                    sql_err(
                        &format!("publishing partitioned tables of {publication} through their roots ({hint})"),
                        e,
                    )
                })?;
        }
    }
    for (t, q) in tables.iter().zip(&list) {
        let member = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[&publication, &t.schema, &t.name],
            )
            .await
            .map_err(|e| sql_err("reading publication tables", e))?
            .is_some();
        if !member {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {q}",
                    ident(publication)
                ))
                .await
                .map_err(|e| {
                    sql_err(
                        &format!("adding {q} to publication {publication} ({hint})"),
                        e,
                    )
                })?;
        }
    }
    Ok(())
}

/// The feed's user may open replication connections (`REPLICATION` or
/// superuser).
pub async fn check_replication_privilege(
    client: &Client,
    user: &str,
) -> Result<(), ConnectorError> {
    let row = client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| sql_err("reading the user's privileges", e))?;
    if !row.get::<_, bool>(0) {
        return Err(ConnectorError::definite(format!(
            "PostgreSQL user {user} may not stream changes: logical replication needs the \
             REPLICATION attribute; run ALTER ROLE {} REPLICATION (as a superuser)",
            ident(user)
        )));
    }
    Ok(())
}

/// Whether the replication slot exists; an invalidated slot is an error
/// with the way out.
pub async fn slot_exists(client: &Client, slot: &str, feed: &str) -> Result<bool, ConnectorError> {
    let row = client
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| sql_err("reading replication slots", e))?;
    match row {
        None => Ok(false),
        Some(r) => {
            let status: Option<String> = r.get(0);
            if status.as_deref() == Some("lost") {
                return Err(ConnectorError::definite(format!(
                    "replication slot {slot} was invalidated (the WAL it needed is gone, see \
                     max_slot_wal_keep_size); changes were missed, so the feed cannot resume. \
                     Take a new snapshot: `backflow source --config FILE --feed {feed} --resnapshot` \
                     (or POST /api/feeds/{feed}/restart?resnapshot=true)"
                )));
            }
            Ok(true)
        }
    }
}

/// The slot's confirmed position: the stream goes on after it.
pub async fn slot_confirmed_lsn(client: &Client, slot: &str) -> Result<Lsn, ConnectorError> {
    let row = client
        .query_one(
            "SELECT coalesce(confirmed_flush_lsn, restart_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| sql_err("reading the slot's position", e))?;
    let text: String = row.get(0);
    Lsn::parse(&text)
        .map_err(|_| ConnectorError::definite(format!("slot {slot} has a bad position {text}")))
}

/// WAL the server keeps for the slot beyond what the feed confirmed.
pub async fn slot_backlog_bytes(client: &Client, slot: &str) -> Result<i64, ConnectorError> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| sql_err("reading the slot's backlog", e))?;
    Ok(row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(-1))
}

/// Drops the slot if it exists; refuses while a feed streams from it.
pub async fn drop_slot(client: &Client, slot: &str, feed: &str) -> Result<bool, ConnectorError> {
    let row = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| sql_err("reading replication slots", e))?;
    let Some(row) = row else {
        return Ok(false);
    };
    if let Some(pid) = row.get::<_, Option<i32>>(0) {
        return Err(ConnectorError::definite(format!(
            "replication slot {slot} is in use by PostgreSQL backend {pid}: stop the process running feed {feed} first"
        )));
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(|e| sql_err(&format!("dropping replication slot {slot}"), e))?;
    tracing::info!(feed, slot, "dropped replication slot for a new snapshot");
    Ok(true)
}

/// Estimated row count, for snapshot progress.
pub async fn estimated_rows(client: &Client, table: &TableDesc) -> u64 {
    client
        .query_one(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = format('%I.%I', $1::text, $2::text)::regclass",
            &[&table.schema, &table.name],
        )
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap_or(0)
}

/// The value of a column default that is a constant (`7`, `'x'::text`,
/// `true`, `'-1'::integer`), as text; `None` for expressions (`now()`,
/// `nextval(...)`).
fn constant_default(expr: &str) -> Option<String> {
    let expr = expr.trim();
    if let Some(rest) = expr.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, n)| *n) == Some('\'') {
                    value.push('\'');
                    chars.next();
                    continue;
                }
                let tail = &rest[i + 1..];
                // Only a cast may follow: '...'::type
                let ok = tail.is_empty()
                    || (tail.starts_with("::")
                        && tail[2..]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || " _(),".contains(c)));
                return ok.then_some(value);
            }
            value.push(c);
        }
        return None;
    }
    let bare = expr
        .split("::")
        .next()
        .unwrap_or(expr)
        .trim_matches(|c| c == '(' || c == ')');
    let numeric = !bare.is_empty()
        && bare
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    (numeric || bare == "true" || bare == "false").then(|| bare.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_defaults_are_read_and_expressions_are_not() {
        assert_eq!(constant_default("7").as_deref(), Some("7"));
        assert_eq!(constant_default("'-1'::integer").as_deref(), Some("-1"));
        assert_eq!(constant_default("1.5").as_deref(), Some("1.5"));
        assert_eq!(constant_default("true").as_deref(), Some("true"));
        assert_eq!(
            constant_default("'it''s'::character varying").as_deref(),
            Some("it's")
        );
        assert_eq!(
            constant_default("'2026-01-01'::date").as_deref(),
            Some("2026-01-01")
        );
        assert_eq!(constant_default("now()"), None);
        assert_eq!(constant_default("nextval('items_id_seq'::regclass)"), None);
        assert_eq!(constant_default("CURRENT_TIMESTAMP"), None);
        assert_eq!(constant_default("('a'::text || 'b'::text)"), None);
    }

    async fn connect(db: &str) -> Client {
        crate::connect::postgres::connect(&crate::connect::postgres::PgTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            database: db.into(),
            application_name: "backflow-test".into(),
            options: None,
            tls: Default::default(),
        })
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)")
    }

    /// The stream announces a column the catalog does not show yet (the
    /// ALTER's commit is flushed, not yet visible): the description waits
    /// for it instead of returning the old shape.
    #[tokio::test]
    async fn a_new_shape_is_described_once_the_catalog_shows_it() {
        let db = format!("catalog_wait_{}", std::process::id());
        let admin = connect("postgres").await;
        for statement in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            admin.batch_execute(&statement).await.unwrap();
        }
        let c = connect(&db).await;
        c.batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, label text)")
            .await
            .unwrap();
        let table = TableConfig {
            table: "public.items".into(),
            dataset: "test.items".into(),
        };
        let announced: Vec<String> = ["id", "label", "level"].map(String::from).to_vec();

        let alter = connect(&db).await;
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            alter
                .batch_execute("ALTER TABLE items ADD COLUMN level int NOT NULL DEFAULT 1")
                .await
                .unwrap();
        });
        let started = std::time::Instant::now();
        let (desc, _) = describe_with(&c, &table, &announced, Duration::from_secs(30))
            .await
            .unwrap();
        late.await.unwrap();
        let names: Vec<&str> = desc.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "label", "level"]);
        assert!(started.elapsed() >= Duration::from_millis(250));

        // A column that never comes: a transient error naming it.
        let mut never = announced.clone();
        never.push("nope".into());
        let err = describe_with(&c, &table, &never, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        drop(c);
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await
            .unwrap();
    }
}
