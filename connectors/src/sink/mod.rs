//! The sink side: apply share-topic records to a subscriber's database.
//!
//! Every sink keeps two things beside the rows:
//! - a hidden column [`POSITION_COLUMN`] in each table, holding the version
//!   of the change that last wrote the row ([`row_version`]); a change older
//!   than it is ignored, so a replayed or duplicated record changes nothing;
//! - a table [`OFFSETS_TABLE`] with the last applied Kafka offset per
//!   (subscription, topic, partition), written in the same transaction as
//!   the rows, from which the consumer resumes after a crash.
//!
//! A batch is first reduced to its net effect per row ([`plan`]): the last
//! change of each key wins, which is what applying the changes one by one
//! in topic order would leave. Sinks then apply the net changes with
//! multi-row statements.

pub mod mysql;
pub mod postgres;
pub mod sqlite;
pub mod values;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ChangeEvent, Datum, Op, Row, SqlType, TableDesc};

use crate::ConnectorError;

/// Hidden column holding the version of the change that last wrote a row.
pub const POSITION_COLUMN: &str = "_backflow_position";
/// Table holding the applied Kafka offsets.
pub const OFFSETS_TABLE: &str = "_backflow_offsets";

/// A Kafka position: the next stage resumes after `offset`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TopicOffset {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the last record applied.
    pub offset: i64,
}

/// One record to apply.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// Where it came from.
    pub from: TopicOffset,
    /// The target table (its `schema` and `name` are the sink's table).
    pub table: Arc<TableDesc>,
    /// Primary key of the row.
    pub key: Row,
    /// The change; `None` for a tombstone (delete by key).
    pub event: Option<ChangeEvent>,
    /// Where the change entered backflow and the nodes it passed; database
    /// sinks ignore it, a sink that re-publishes (a cascade) carries it on.
    pub provenance: Provenance,
}

/// The provenance a change carries from node to node (DESIGN.md: the
/// `backflow.origin`, `backflow.origin_ts` and `backflow.hops` headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// `<node>/<feed>` that captured the change.
    pub origin: Option<String>,
    /// The source commit time in ms since the epoch.
    pub origin_ts_ms: Option<i64>,
    /// The nodes the change passed, first to last.
    pub hops: Vec<String>,
}

impl Provenance {
    /// Whether the change already passed `node`: re-publishing it there
    /// would be a loop.
    pub fn passed(&self, node: &str) -> bool {
        self.hops.iter().any(|h| h == node)
    }
}

/// Records applied together, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct SinkBatch {
    /// Records in topic order.
    pub records: Vec<SinkRecord>,
    /// The offsets to store with them: the last offset consumed per
    /// partition, which may be past the last record when records were sent
    /// to the dead-letter topic instead.
    pub offsets: Vec<TopicOffset>,
}

impl SinkBatch {
    /// A batch of records whose offsets are their own.
    pub fn of(records: Vec<SinkRecord>) -> Self {
        let mut last: HashMap<(&str, i32), i64> = HashMap::new();
        for r in &records {
            let e = last
                .entry((r.from.topic.as_str(), r.from.partition))
                .or_insert(r.from.offset);
            *e = (*e).max(r.from.offset);
        }
        let mut offsets: Vec<TopicOffset> = last
            .into_iter()
            .map(|((topic, partition), offset)| TopicOffset {
                topic: topic.to_owned(),
                partition,
                offset,
            })
            .collect();
        offsets.sort();
        Self { records, offsets }
    }
}

/// What a sink committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Net rows written (inserted or updated).
    pub upserted: u64,
    /// Net rows deleted (deletes and tombstones).
    pub deleted: u64,
    /// Records with no net effect: superseded by a later record of the same
    /// key in the batch, or older than the row's stored version.
    pub skipped: u64,
    /// The offsets stored with the rows.
    pub offsets: Vec<TopicOffset>,
}

/// A subscriber's database.
///
/// Contract: [`Sink::apply_batch`] applies every record and stores the
/// batch's offsets in the same database transaction; a change older than the
/// row's stored version changes nothing. So a crash at any point followed by
/// a replay from [`Sink::committed_offsets`] leaves the tables as if each
/// record had been applied once.
///
/// Errors: [`ErrorKind::BadRecord`](crate::ErrorKind::BadRecord) when the
/// database refused a value (too long, out of range, constraint): nothing of
/// the batch was committed and the caller can isolate the record by applying
/// smaller batches; `Definite` when the table cannot take the dataset (type
/// mismatch, missing key); `Transient` for lost connections and the like.
#[async_trait]
pub trait Sink: Send {
    /// Offsets committed with the data; the consumer resumes after them.
    async fn committed_offsets(&mut self) -> Result<Vec<TopicOffset>, ConnectorError>;

    /// Applies a batch in one transaction.
    async fn apply_batch(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError>;

    /// Releases connections; called once on shutdown.
    async fn shutdown(&mut self) -> Result<(), ConnectorError>;

    /// For `backflow reconcile`: reads this subscription's stored offsets
    /// and `tables` in one read snapshot, so the rows are exactly those the
    /// offsets account for. Per table, `None` when it does not exist.
    async fn read_back(&mut self, tables: &[Arc<TableDesc>]) -> Result<ReadBack, ConnectorError> {
        let _ = tables;
        Err(ConnectorError::definite(
            "this sink cannot be read back (only database sinks can be reconciled)",
        ))
    }

    /// For `backflow reconcile`: replaces `copy` with an empty table of
    /// `of`'s definition (its column types, nullability and primary key),
    /// so rows written to it read back as they would from `of`.
    async fn copy_table(&mut self, of: &TableDesc, copy: &TableDesc) -> Result<(), ConnectorError> {
        let _ = (of, copy);
        Err(ConnectorError::definite("this sink cannot copy tables"))
    }

    /// Drops `table` if it exists.
    async fn drop_table(&mut self, table: &TableDesc) -> Result<(), ConnectorError> {
        let _ = table;
        Err(ConnectorError::definite("this sink cannot drop tables"))
    }
}

/// A table as a sink holds it: each row's primary key (its values as text,
/// joined by `, `) and a digest of all the described columns.
pub type RowDigests = HashMap<String, u64>;

/// What [`Sink::read_back`] read in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct ReadBack {
    /// The subscription's stored offsets.
    pub offsets: Vec<TopicOffset>,
    /// Per table asked for, its rows, or `None` when it does not exist.
    pub tables: Vec<Option<RowDigests>>,
}

/// Builds [`RowDigests`] from rows read as bytes, the key columns first.
/// The digest is only compared within one process (both tables read by
/// the same code from the same database), so any fixed hash does.
pub(crate) struct DigestBuilder {
    key_len: usize,
    rows: RowDigests,
}

impl DigestBuilder {
    pub(crate) fn new(key_len: usize) -> Self {
        Self {
            key_len,
            rows: RowDigests::new(),
        }
    }

    /// Adds one row: `values` are the key columns, then every column.
    pub(crate) fn add<'v>(&mut self, values: impl IntoIterator<Item = Option<&'v [u8]>>) {
        use std::hash::{Hash, Hasher};
        let mut key = String::new();
        let mut hash = std::hash::DefaultHasher::new();
        for (i, v) in values.into_iter().enumerate() {
            if i < self.key_len {
                if i > 0 {
                    key.push_str(", ");
                }
                key.push_str(&v.map_or("NULL".into(), String::from_utf8_lossy));
            } else {
                v.hash(&mut hash);
            }
        }
        self.rows.insert(key, hash.finish());
    }

    pub(crate) fn finish(self) -> RowDigests {
        self.rows
    }
}

/// The SELECT list [`Sink::read_back`] reads: key columns, then all.
pub(crate) fn read_back_columns(desc: &TableDesc, quote_char: char, cast: &str) -> String {
    desc.primary_key
        .iter()
        .chain(desc.columns.iter().map(|c| &c.name))
        .map(|c| format!("{}{cast}", quote(quote_char, c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The version a change gives the row it writes: the source position, then
/// the change's order inside its transaction, so two changes of one row in
/// one transaction are ordered too. Positions of one source sort as text
/// (backflow's sources zero-pad them), so versions compare as text.
pub fn row_version(event: &ChangeEvent) -> String {
    match &event.transaction {
        Some(t) => format!("{}#{:020}", event.source.position, t.total_order.max(0)),
        None => event.source.position.to_string(),
    }
}

/// The net change to one row.
#[derive(Debug)]
pub(crate) enum NetChange<'a> {
    /// Insert or update to `row` (all columns of the table), at `version`.
    Upsert { row: &'a Row, version: String },
    /// Delete by key; `version` `None` for a tombstone (unconditional).
    Delete {
        key: &'a Row,
        version: Option<String>,
    },
}

/// Net changes to one table, all with one table description.
#[derive(Debug)]
pub(crate) struct TablePlan<'a> {
    pub table: Arc<TableDesc>,
    pub upserts: Vec<(&'a Row, String)>,
    pub deletes: Vec<(&'a Row, Option<String>)>,
}

/// Reduces a batch to the last change per (table, key), grouped by table
/// description in order of first appearance. Returns the plans and how many
/// records were superseded inside the batch.
pub(crate) fn plan(batch: &SinkBatch) -> Result<(Vec<TablePlan<'_>>, u64), ConnectorError> {
    // (target table, key bytes) → index of the record that wins.
    let mut last: HashMap<(String, Vec<u8>), usize> = HashMap::with_capacity(batch.records.len());
    for (i, r) in batch.records.iter().enumerate() {
        last.insert((r.table.qualified_name(), key_bytes(&r.key)), i);
    }
    let superseded = (batch.records.len() - last.len()) as u64;
    let mut winners: Vec<usize> = last.into_values().collect();
    winners.sort_unstable();
    let mut plans: Vec<TablePlan> = Vec::new();
    for i in winners {
        let r = &batch.records[i];
        let change = net_change(r)?;
        let at = match plans.iter().position(|p| Arc::ptr_eq(&p.table, &r.table)) {
            Some(at) => at,
            None => {
                plans.push(TablePlan {
                    table: r.table.clone(),
                    upserts: Vec::new(),
                    deletes: Vec::new(),
                });
                plans.len() - 1
            }
        };
        match change {
            NetChange::Upsert { row, version } => plans[at].upserts.push((row, version)),
            NetChange::Delete { key, version } => plans[at].deletes.push((key, version)),
        }
    }
    Ok((plans, superseded))
}

fn net_change(r: &SinkRecord) -> Result<NetChange<'_>, ConnectorError> {
    let Some(event) = &r.event else {
        return Ok(NetChange::Delete {
            key: &r.key,
            version: None,
        });
    };
    let at = || {
        format!(
            "{} partition {} offset {}",
            r.from.topic, r.from.partition, r.from.offset
        )
    };
    match event.op {
        Op::Create | Op::Read | Op::Update => {
            let row = event.after.as_ref().ok_or_else(|| {
                ConnectorError::bad_record(format!(
                    "record at {}: op {} has no `after` row",
                    at(),
                    event.op.code()
                ))
            })?;
            if row.0.len() != r.table.columns.len() {
                return Err(ConnectorError::bad_record(format!(
                    "record at {}: `after` has {} values for {} columns",
                    at(),
                    row.0.len(),
                    r.table.columns.len()
                )));
            }
            Ok(NetChange::Upsert {
                row,
                version: row_version(event),
            })
        }
        Op::Delete => Ok(NetChange::Delete {
            key: &r.key,
            version: Some(row_version(event)),
        }),
    }
}

/// A byte string equal for equal keys (floats by their bits).
fn key_bytes(key: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * key.0.len());
    for d in &key.0 {
        let put = |out: &mut Vec<u8>, tag: u8, bytes: &[u8]| {
            out.push(tag);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        match d {
            Datum::Null => put(&mut out, 0, &[]),
            Datum::Bool(b) => put(&mut out, 1, &[u8::from(*b)]),
            Datum::Int(v) => put(&mut out, 2, &v.to_le_bytes()),
            Datum::Long(v) => put(&mut out, 3, &v.to_le_bytes()),
            Datum::Float(v) => put(&mut out, 4, &v.to_bits().to_le_bytes()),
            Datum::Double(v) => put(&mut out, 5, &v.to_bits().to_le_bytes()),
            Datum::Decimal(v) => put(&mut out, 6, v.to_string().as_bytes()),
            Datum::Text(s) => put(&mut out, 7, s.as_bytes()),
            Datum::Bytes(b) => put(&mut out, 8, b),
            Datum::Date(v) => put(&mut out, 9, &v.to_le_bytes()),
            Datum::Time(v) => put(&mut out, 10, &v.to_le_bytes()),
            Datum::Timestamp(v) => put(&mut out, 11, &v.to_le_bytes()),
            Datum::TimestampTz(v) => put(&mut out, 12, &v.to_le_bytes()),
            Datum::Uuid(u) => put(&mut out, 13, u.as_bytes()),
            Datum::Json(s) => put(&mut out, 14, s.as_bytes()),
            Datum::Array(items) => put(&mut out, 15, &key_bytes(&Row(items.clone()))),
        }
    }
    out
}

/// A column as the sink database has it.
#[derive(Debug, Clone)]
pub(crate) struct ExistingColumn {
    pub name: String,
    /// The database's type name (e.g. `character varying(20)`, `int(11)`).
    pub type_name: String,
    pub nullable: bool,
    pub has_default: bool,
}

/// A table as the sink database has it.
#[derive(Debug, Clone)]
pub(crate) struct ExistingTable {
    pub columns: Vec<ExistingColumn>,
    pub primary_key: Vec<String>,
}

/// What to change so an existing table can take a table description.
#[derive(Debug, Default)]
pub(crate) struct Reconcile {
    /// New nullable columns to add.
    pub add: Vec<backflow_schemas::ColumnDesc>,
    /// Whether the hidden position column is missing.
    pub add_position: bool,
}

/// Compares an existing table with what the dataset needs. `ddl_type` is
/// the column type the sink would create for a SQL type; existing and
/// wanted types must be of the same kind (both integers, both text, ...):
/// widths are left to the database, which refuses values that do not fit
/// (strict mode on MySQL, CHECK constraints on SQLite), never truncating.
pub(crate) fn reconcile(
    desc: &TableDesc,
    existing: &ExistingTable,
    ddl_type: impl Fn(&backflow_schemas::ColumnDesc, bool) -> String,
) -> Result<Reconcile, ConnectorError> {
    let table = desc.qualified_name();
    let mut out = Reconcile::default();
    let mut have: Vec<&str> = existing.primary_key.iter().map(String::as_str).collect();
    let mut want: Vec<&str> = desc.primary_key.iter().map(String::as_str).collect();
    have.sort_unstable();
    want.sort_unstable();
    if have != want {
        return Err(ConnectorError::definite(format!(
            "table {table} exists with primary key ({}) but dataset {} is keyed by ({}): give the table that primary key, or drop it and backflow creates it",
            existing.primary_key.join(", "),
            desc.dataset,
            desc.primary_key.join(", ")
        )));
    }
    for c in &desc.columns {
        let is_key = desc.primary_key.contains(&c.name);
        let Some(e) = existing
            .columns
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(&c.name))
        else {
            if c.nullable {
                out.add.push(c.clone());
                continue;
            }
            return Err(ConnectorError::definite(format!(
                "table {table} has no column {} and the dataset's column is NOT NULL, so it cannot be added to a table with rows: add it yourself (ALTER TABLE ... ADD COLUMN {} {} with a default) or drop the table and backflow creates it",
                c.name,
                c.name,
                ddl_type(c, is_key)
            )));
        };
        let wanted = ddl_type(c, is_key);
        let (parsed_wanted, parsed_have) = (
            backflow_schemas::SqlType::parse(&wanted),
            backflow_schemas::SqlType::parse(&e.type_name),
        );
        let same_kind = match (&parsed_wanted, &parsed_have) {
            (Ok(w), Ok(h)) => kind(w) == kind(h),
            // A type backflow does not know (an enum, a domain, MySQL's
            // ENUM and SET) takes text: the database converts each value
            // and refuses one that does not fit, which fails that row
            // alone into the dead-letter path.
            (Ok(w), Err(_)) if takes_text(w) => true,
            (Ok(SqlType::Array(w)), Err(_)) if takes_text(w) => e.type_name.ends_with("[]"),
            _ => wanted.eq_ignore_ascii_case(&e.type_name),
        };
        // Decimals with fewer fraction or integer digits than the dataset's
        // would be rounded (or refused) by the database: say so now.
        if let (
            Ok(SqlType::Decimal {
                precision: Some(wp),
                scale: Some(ws),
            }),
            Ok(SqlType::Decimal {
                precision: Some(hp),
                scale: Some(hs),
            }),
        ) = (&parsed_wanted, &parsed_have)
        {
            if ws > hs || wp - ws > hp - hs {
                return Err(ConnectorError::definite(format!(
                    "table {table}, column {}: the table has type {} but dataset {} sends {} values, which it would round or refuse: widen the column (ALTER TABLE ... to at least {wanted}) or drop the table and backflow creates it",
                    c.name, e.type_name, desc.dataset, c.sql_type
                )));
            }
        }
        if !same_kind {
            return Err(ConnectorError::definite(format!(
                "table {table}, column {}: the table has type {} but dataset {} sends {} values (stored as {wanted}): change the column's type or drop the table and backflow creates it",
                c.name, e.type_name, desc.dataset, c.sql_type
            )));
        }
    }
    for e in &existing.columns {
        if e.name.eq_ignore_ascii_case(POSITION_COLUMN) {
            continue;
        }
        let sent = desc
            .columns
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(&e.name));
        if !sent && !e.nullable && !e.has_default {
            return Err(ConnectorError::definite(format!(
                "table {table}, column {}: NOT NULL without a default, and dataset {} does not send it, so no row could be inserted: make it nullable, give it a default, or drop it",
                e.name, desc.dataset
            )));
        }
    }
    out.add_position = !existing
        .columns
        .iter()
        .any(|e| e.name.eq_ignore_ascii_case(POSITION_COLUMN));
    Ok(out)
}

/// Whether values of `t` travel as text a column of an unknown type may
/// convert.
fn takes_text(t: &SqlType) -> bool {
    t.is_text() || *t == SqlType::Interval
}

/// Kinds of values that one column can hold whatever its width.
fn kind(t: &SqlType) -> u8 {
    match t {
        SqlType::Interval => 13,
        SqlType::Array(element) => 32 + kind(element),
        SqlType::SmallInt | SqlType::Int | SqlType::BigInt => 1,
        SqlType::Decimal { .. } => 2,
        SqlType::Real | SqlType::Double => 3,
        SqlType::Boolean => 4,
        SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. } => 5,
        SqlType::Bytes => 6,
        SqlType::Date => 7,
        SqlType::Time => 8,
        SqlType::Timestamp => 9,
        SqlType::TimestampTz => 10,
        SqlType::Uuid => 11,
        SqlType::Json => 12,
    }
}

/// A database message with quoted values replaced by `…`: servers quote
/// the offending value in some messages (`invalid input syntax for type
/// integer: "x"`, `Duplicate entry 'x' for key`), and row values must not
/// reach logs or metrics. Quoted names after `column`, `table`, `key`,
/// `relation`, `constraint`, `type`, `schema` or `database` are kept.
pub(crate) fn redact(message: &str, q: char) -> String {
    const NAMES: [&str; 8] = [
        "column",
        "table",
        "key",
        "relation",
        "constraint",
        "type",
        "schema",
        "database",
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(q) {
        let (before, after) = rest.split_at(open);
        out.push_str(before);
        let after = &after[q.len_utf8()..];
        let Some(close) = after.find(q) else {
            out.push(q);
            rest = after;
            continue;
        };
        let prev_word = out
            .trim_end()
            .rsplit(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        out.push(q);
        if NAMES.contains(&prev_word.as_str()) {
            out.push_str(&after[..close]);
        } else {
            out.push('…');
        }
        out.push(q);
        rest = &after[close + q.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// Quotes an identifier with `q` (`"` or `` ` ``), doubling any inside.
pub(crate) fn quote(q: char, name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push(q);
    for ch in name.chars() {
        if ch == q {
            out.push(q);
        }
        out.push(ch);
    }
    out.push(q);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use backflow_schemas::{ColumnDesc, SourceInfo, TransactionInfo};

    fn table() -> Arc<TableDesc> {
        Arc::new(TableDesc {
            dataset: "d.t".into(),
            schema: "s".into(),
            name: "t".into(),
            columns: vec![
                ColumnDesc::new("id", SqlType::BigInt, false),
                ColumnDesc::new("v", SqlType::Text, true),
            ],
            primary_key: vec!["id".into()],
        })
    }

    fn rec(t: &Arc<TableDesc>, offset: i64, id: i64, op: Option<Op>, pos: &str) -> SinkRecord {
        let key = Row(vec![Datum::Long(id)]);
        let row = Row(vec![Datum::Long(id), Datum::Text(format!("v{offset}"))]);
        SinkRecord {
            from: TopicOffset {
                topic: "tp".into(),
                partition: (id % 2) as i32,
                offset,
            },
            table: t.clone(),
            key: key.clone(),
            provenance: Default::default(),
            event: op.map(|op| ChangeEvent {
                key,
                before: None,
                after: (op != Op::Delete).then_some(row),
                source: SourceInfo {
                    position: pos.into(),
                    ..Default::default()
                },
                op,
                ts_ms: None,
                transaction: None,
            }),
        }
    }

    #[test]
    fn plan_keeps_the_last_change_per_key_in_topic_order() {
        let t = table();
        let batch = SinkBatch::of(vec![
            rec(&t, 0, 1, Some(Op::Create), "a"),
            rec(&t, 1, 2, Some(Op::Create), "a"),
            rec(&t, 2, 1, Some(Op::Update), "b"),
            rec(&t, 3, 2, Some(Op::Delete), "c"),
            rec(&t, 4, 2, None, ""),
            rec(&t, 5, 3, Some(Op::Read), "0"),
        ]);
        assert_eq!(
            batch.offsets,
            vec![
                TopicOffset {
                    topic: "tp".into(),
                    partition: 0,
                    offset: 4
                },
                TopicOffset {
                    topic: "tp".into(),
                    partition: 1,
                    offset: 5
                },
            ]
        );
        let (plans, superseded) = plan(&batch).unwrap();
        assert_eq!(superseded, 3);
        assert_eq!(plans.len(), 1);
        let ups: Vec<(String, String)> = plans[0]
            .upserts
            .iter()
            .map(|(r, v)| (format!("{:?}", r.0[1]), v.clone()))
            .collect();
        assert_eq!(
            ups,
            vec![
                ("Text(\"v2\")".to_owned(), "b".to_owned()),
                ("Text(\"v5\")".to_owned(), "0".to_owned())
            ]
        );
        assert_eq!(plans[0].deletes.len(), 1);
        assert_eq!(plans[0].deletes[0].1, None, "the tombstone came last");
    }

    #[test]
    fn versions_order_changes_inside_a_transaction_after_the_snapshot() {
        let t = table();
        let mut a = rec(&t, 0, 1, Some(Op::Update), "00000000/0A000000")
            .event
            .unwrap();
        let snapshot = row_version(&a);
        a.transaction = Some(TransactionInfo {
            id: "7".into(),
            total_order: 2,
            data_collection_order: 2,
        });
        let second = row_version(&a);
        a.transaction.as_mut().unwrap().total_order = 10;
        let tenth = row_version(&a);
        assert!(
            snapshot < second && second < tenth,
            "{snapshot} {second} {tenth}"
        );
    }

    #[test]
    fn redact_hides_values_and_keeps_names() {
        assert_eq!(
            redact("Duplicate entry 'alice' for key 'PRIMARY'", '\''),
            "Duplicate entry '…' for key 'PRIMARY'"
        );
        assert_eq!(
            redact("Data too long for column 'name' at row 3", '\''),
            "Data too long for column 'name' at row 3"
        );
        assert_eq!(
            redact("invalid input syntax for type integer: \"12x\"", '"'),
            "invalid input syntax for type integer: \"…\""
        );
    }

    #[test]
    fn reconcile_adds_nullable_columns_and_refuses_other_changes() {
        let t = table();
        let col = |name: &str, ty: &str, nullable: bool| ExistingColumn {
            name: name.into(),
            type_name: ty.into(),
            nullable,
            has_default: false,
        };
        let ddl = |c: &ColumnDesc, _: bool| c.sql_type.to_string();
        let only_id = ExistingTable {
            columns: vec![col("id", "bigint", false)],
            primary_key: vec!["id".into()],
        };
        let r = reconcile(&t, &only_id, ddl).unwrap();
        assert_eq!(r.add.len(), 1);
        assert!(r.add_position);

        let wrong_type = ExistingTable {
            columns: vec![col("id", "bigint", false), col("v", "integer", true)],
            primary_key: vec!["id".into()],
        };
        let e = reconcile(&t, &wrong_type, ddl).unwrap_err();
        assert!(
            e.message.contains("column v") && e.message.contains("integer"),
            "{}",
            e.message
        );

        let wrong_key = ExistingTable {
            columns: vec![col("id", "bigint", false)],
            primary_key: vec![],
        };
        let e = reconcile(&t, &wrong_key, ddl).unwrap_err();
        assert!(e.message.contains("primary key"), "{}", e.message);

        let extra_required = ExistingTable {
            columns: vec![
                col("id", "bigint", false),
                col("v", "varchar(10)", true),
                col("local", "text", false),
            ],
            primary_key: vec!["id".into()],
        };
        let e = reconcile(&t, &extra_required, ddl).unwrap_err();
        assert!(e.message.contains("column local"), "{}", e.message);
    }
}
