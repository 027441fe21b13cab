//! Share policies: which rows and which fields of a dataset one subscriber
//! node receives, and how a change event becomes that subscriber's event.
//!
//! Rows: the region column must start with the subscriber's jurisdiction
//! prefix (330106 → "330106", 330100 → "3301"), and every extra predicate
//! must hold. Using both images of an update, a row that leaves the
//! subscriber's view becomes a delete for it and a row that enters becomes
//! an insert, so each subscriber's table stays exactly its share.
//!
//! Fields: `plain`, `masked` (a string: keep first/last characters, keep the
//! first character of a name, or a fixed text), `hashed` (HMAC-SHA256 under
//! the subscription's secret, hex: the same value always maps to the same
//! pseudonym, unlinkable across subscriptions), or absent. The share table
//! has only the granted columns; masked and hashed columns are text, and
//! every non-key column is nullable (a later, narrower policy stops sending
//! some; the subscriber's existing rows and table must still take rows).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use backflow_connectors::sink::values::pg_text;
use backflow_schemas::{ChangeEvent, ColumnDesc, Datum, EventRef, Op, Row, SqlType, TableDesc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Whether the subscriber, a lower node, may share on what it receives
/// (set by the owner; a grant shares nothing onward unless it says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Onward {
    /// The subscriber keeps the data to itself.
    #[default]
    None,
    /// The subscriber may share it on to divisions inside its own
    /// jurisdiction, within this grant (rows, fields, protections).
    WithinJurisdiction,
}

impl Onward {
    /// The setting as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Onward::None => "none",
            Onward::WithinJurisdiction => "within_jurisdiction",
        }
    }
}

/// Which rows of a dataset a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowRule {
    /// Rows whose division code in this column starts with the
    /// subscriber's jurisdiction prefix.
    Jurisdiction(String),
    /// Every row (declared by the owner).
    All,
}

/// How a masked field is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// Keep the first `first` and last `last` characters, `*` for the rest
    /// (`keep(6,4)`: `330106199001011234` → `330106********1234`).
    Keep { first: usize, last: usize },
    /// Keep the first character, `*` for each other one (`张三丰` → `张**`).
    Name,
    /// Replace with a fixed text.
    Fixed(String),
}

/// Longest text of `masked:fixed(TEXT)`.
pub const MAX_FIXED_MASK_CHARS: usize = 64;

/// What a granted field carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldRule {
    /// The value as is.
    Plain,
    /// A masked string.
    Masked(Mask),
    /// HMAC-SHA256 of the value's text under the subscription's secret, hex.
    Hashed,
}

impl FieldRule {
    /// Parses `plain`, `hashed`, `masked:keep(F,L)`, `masked:name`,
    /// `masked:fixed(TEXT)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let bad = || {
            format!("{text:?} is not a field rule: use plain, hashed, masked:keep(FIRST,LAST), masked:name or masked:fixed(TEXT)")
        };
        Ok(match t {
            "plain" => FieldRule::Plain,
            "hashed" | "hash" => FieldRule::Hashed,
            "masked:name" => FieldRule::Masked(Mask::Name),
            _ => {
                let rest = t.strip_prefix("masked:").ok_or_else(bad)?;
                if let Some(args) = rest.strip_prefix("keep(").and_then(|r| r.strip_suffix(')')) {
                    let (f, l) = args.split_once(',').ok_or_else(bad)?;
                    FieldRule::Masked(Mask::Keep {
                        first: f.trim().parse().map_err(|_| bad())?,
                        last: l.trim().parse().map_err(|_| bad())?,
                    })
                } else if let Some(fixed) = rest
                    .strip_prefix("fixed(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    if fixed.chars().count() > MAX_FIXED_MASK_CHARS {
                        return Err(format!(
                            "{text:?}: a fixed mask holds at most {MAX_FIXED_MASK_CHARS} characters (it replaces every value, and share records must stay within the brokers' size limit)"
                        ));
                    }
                    FieldRule::Masked(Mask::Fixed(fixed.to_owned()))
                } else {
                    return Err(bad());
                }
            }
        })
    }
}

impl fmt::Display for FieldRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldRule::Plain => f.write_str("plain"),
            FieldRule::Hashed => f.write_str("hashed"),
            FieldRule::Masked(Mask::Keep { first, last }) => {
                write!(f, "masked:keep({first},{last})")
            }
            FieldRule::Masked(Mask::Name) => f.write_str("masked:name"),
            FieldRule::Masked(Mask::Fixed(t)) => write!(f, "masked:fixed({t})"),
        }
    }
}

/// A condition on one column, compared on the value's text form (numbers
/// numerically).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    /// Column name.
    pub column: String,
    /// `=`, `!=`, `in`, `prefix`, `>=`, `<=`, `>`, `<`.
    pub op: String,
    /// The value (for `in`, values separated by commas).
    pub value: String,
}

impl Predicate {
    fn check(&self) -> Result<(), String> {
        match self.op.as_str() {
            "=" | "!=" | "in" | "prefix" | ">=" | "<=" | ">" | "<" => Ok(()),
            other => Err(format!(
                "predicate on {}: unknown op {other:?} (use =, !=, in, prefix, >=, <=, >, <)",
                self.column
            )),
        }
    }

    fn holds(&self, d: &Datum) -> bool {
        let Some(text) = pg_text(d) else {
            return self.op == "!=";
        };
        let numeric = matches!(
            d,
            Datum::Int(_) | Datum::Long(_) | Datum::Float(_) | Datum::Double(_) | Datum::Decimal(_)
        );
        let cmp = |other: &str| -> Option<std::cmp::Ordering> {
            if numeric {
                text.parse::<f64>()
                    .ok()?
                    .partial_cmp(&other.trim().parse::<f64>().ok()?)
            } else {
                Some(text.as_str().cmp(other))
            }
        };
        use std::cmp::Ordering::*;
        match self.op.as_str() {
            "=" => cmp(&self.value) == Some(Equal),
            "!=" => cmp(&self.value) != Some(Equal),
            "in" => self.value.split(',').any(|v| cmp(v.trim()) == Some(Equal)),
            "prefix" => text.starts_with(&self.value),
            ">=" => matches!(cmp(&self.value), Some(Greater | Equal)),
            "<=" => matches!(cmp(&self.value), Some(Less | Equal)),
            ">" => cmp(&self.value) == Some(Greater),
            "<" => cmp(&self.value) == Some(Less),
            _ => false,
        }
    }
}

/// One subscriber's share of one dataset, ready to apply.
#[derive(Clone)]
pub struct SharePolicy {
    /// Subscriber node code.
    pub subscriber: String,
    /// Dataset id.
    pub dataset: String,
    /// Which rows the subscriber receives.
    pub rows: crate::domain::policy::RowRule,
    /// Required prefix of the region column (the subscriber's jurisdiction).
    pub prefix: String,
    /// Extra row conditions.
    pub predicates: Vec<Predicate>,
    /// Granted fields; others are absent.
    pub fields: BTreeMap<String, FieldRule>,
    /// HMAC key of hashed fields.
    pub secret: Vec<u8>,
    /// Policy version, sent in `backflow.policy`.
    pub version: u32,
}

impl fmt::Debug for SharePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharePolicy")
            .field("subscriber", &self.subscriber)
            .field("dataset", &self.dataset)
            .field("prefix", &self.prefix)
            .field("fields", &self.fields.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The subscriber's view of a table: its columns and where they come from.
#[derive(Debug, Clone)]
pub struct ShareTable {
    /// The share topic's table description.
    pub desc: TableDesc,
    /// Per share column: the source column index and its rule.
    sources: Vec<(usize, FieldRule)>,
    /// Per share key column: index into the share columns.
    key: Vec<usize>,
    region: Option<usize>,
    predicates: Vec<(usize, Predicate)>,
    /// The subscription's HMAC key, set up once.
    mac: Hmac<Sha256>,
}

/// A subscriber's version of a change: its rows (granted fields, masked
/// and hashed) and what the change is for it. The provenance is the
/// source event's, unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedRows {
    /// The subscriber's key.
    pub key: Row,
    /// The row before, when it was in the share.
    pub before: Option<Row>,
    /// The row after, when it is in the share.
    pub after: Option<Row>,
    /// What the change is for the subscriber.
    pub op: Op,
}

impl SharedRows {
    /// The subscriber's event: these rows with `source`'s provenance.
    pub fn with_provenance<'a>(&'a self, source: &'a ChangeEvent) -> EventRef<'a> {
        EventRef {
            key: &self.key,
            before: self.before.as_ref(),
            after: self.after.as_ref(),
            source: &source.source,
            op: self.op,
            ts_ms: source.ts_ms,
            transaction: source.transaction.as_ref(),
        }
    }
}

impl SharePolicy {
    /// The share table of `source` under this policy, or why the policy
    /// cannot apply to it (a field or the region column it names does not
    /// exist, a key column is not granted, ...).
    pub fn share_table(&self, source: &TableDesc) -> Result<ShareTable, String> {
        let find = |name: &str| -> Result<usize, String> {
            source
                .column(name)
                .map(|(i, _)| i)
                .ok_or_else(|| format!("dataset {} has no column {name}", self.dataset))
        };
        // A granted field the table no longer has is withheld: the
        // department dropped the column, or an upper node narrowed what it
        // shares with this one. Nothing of it is sent; the key columns'
        // check below still holds.
        let gone: Vec<&str> = self
            .fields
            .keys()
            .filter(|name| source.column(name).is_none())
            .map(String::as_str)
            .collect();
        if !gone.is_empty() {
            tracing::warn!(subscriber = %self.subscriber, dataset = %self.dataset, fields = ?gone, "granted fields the dataset no longer has are withheld");
        }
        for p in &self.predicates {
            p.check()?;
        }
        let mut columns = Vec::new();
        let mut sources = Vec::new();
        for (i, c) in source.columns.iter().enumerate() {
            let Some(rule) = self.fields.get(&c.name) else {
                continue;
            };
            let is_key = source.primary_key.contains(&c.name);
            // Values an upper node protected stay protected, and say so:
            // only as restrictive as they arrived or more. A masked value
            // is masked again (or more) or hashed, never granted plain (it
            // would pass for an ordinary one); a hashed one is hashed again
            // under this subscription's key or withheld (one pseudonym
            // shared alike with every district would link records across
            // them).
            let protection = match (rule, &c.protection) {
                (FieldRule::Plain, Some(arrived)) => {
                    return Err(format!(
                        "field {} arrived {arrived} from an upper node: it may be masked again (or more) or hashed, or withheld, never granted plain",
                        c.name
                    ))
                }
                (FieldRule::Plain, None) => None,
                (FieldRule::Hashed, _) => Some(backflow_schemas::Protection::Hashed),
                (FieldRule::Masked(_), _) => Some(backflow_schemas::Protection::Masked(
                    rule.to_string().trim_start_matches("masked:").to_owned(),
                )),
            };
            // A mask or a pseudonym is of one value: an array's elements
            // would be masked or linked as one text, so neither applies.
            if matches!(c.sql_type, SqlType::Array(_)) && *rule != FieldRule::Plain {
                return Err(format!(
                    "field {} is an array ({}): masks and hashes apply to single values, not to arrays; grant it plain or withhold it",
                    c.name, c.sql_type
                ));
            }
            let sql_type = match rule {
                FieldRule::Plain => c.sql_type.clone(),
                FieldRule::Masked(_) if is_key => {
                    return Err(format!(
                        "key column {} cannot be masked (masked values are not unique); grant it plain or hashed",
                        c.name
                    ))
                }
                FieldRule::Masked(_) | FieldRule::Hashed => SqlType::Text,
            };
            // Non-key columns are nullable in every share: grants change
            // over time, and a column a narrowed policy stops sending must
            // not make the subscriber's rows impossible to insert.
            columns.push(
                ColumnDesc::new(c.name.clone(), sql_type, c.nullable || !is_key)
                    .protected(protection),
            );
            sources.push((i, rule.clone()));
        }
        let missing: Vec<&str> = source
            .primary_key
            .iter()
            .filter(|k| !self.fields.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "key column(s) {} must be granted (plain or hashed): subscribers apply changes by key",
                missing.join(", ")
            ));
        }
        let desc = TableDesc {
            dataset: source.dataset.clone(),
            schema: source.schema.clone(),
            name: source.name.clone(),
            columns,
            primary_key: source.primary_key.clone(),
        };
        let key = desc
            .primary_key
            .iter()
            .map(|k| desc.column(k).map(|(i, _)| i).expect("granted key"))
            .collect();
        // Row rules compare one value: on an array column they would
        // compare its text form, which no owner means. Refused.
        let single = |column: &str| -> Result<usize, String> {
            let i = find(column)?;
            let t = &source.columns[i].sql_type;
            if matches!(t, SqlType::Array(_)) {
                return Err(format!(
                    "the row rule on column {column} compares one value, and {column} is an array ({t}): choose a column of single values"
                ));
            }
            Ok(i)
        };
        let region = match &self.rows {
            crate::domain::policy::RowRule::Jurisdiction(column) => Some(single(column)?),
            crate::domain::policy::RowRule::All => None,
        };
        let predicates = self
            .predicates
            .iter()
            .map(|p| Ok((single(&p.column)?, p.clone())))
            .collect::<Result<_, String>>()?;
        Ok(ShareTable {
            desc,
            sources,
            key,
            region,
            predicates,
            mac: Hmac::<Sha256>::new_from_slice(&self.secret)
                .expect("HMAC takes keys of any length"),
        })
    }

    /// Whether a source row is in this subscriber's share.
    pub fn matches(&self, t: &ShareTable, row: &Row) -> bool {
        if let Some(i) = t.region {
            match row.0.get(i).and_then(region_text) {
                Some(code) if code.starts_with(&self.prefix) => {}
                _ => return false,
            }
        }
        t.predicates
            .iter()
            .all(|(i, p)| row.0.get(*i).is_some_and(|d| p.holds(d)))
    }

    /// The subscriber's row: granted fields, masked and hashed as granted.
    pub fn project(&self, t: &ShareTable, row: &Row) -> Row {
        Row(t
            .sources
            .iter()
            .map(|(i, rule)| apply(&t.mac, rule, &row.0[*i]))
            .collect())
    }

    /// This subscriber's version of a change, or `None` when the change
    /// does not concern it: the row is not in its share, or an update
    /// changed nothing it can see. An update that moves a row out of its
    /// share is a delete for it, one that moves a row in is an insert.
    pub fn share_event(&self, t: &ShareTable, ev: &ChangeEvent) -> Option<SharedRows> {
        let before = ev.before.as_ref().filter(|r| self.matches(t, r));
        let after = ev.after.as_ref().filter(|r| self.matches(t, r));
        let (op, before, after) = match (ev.op, before, after) {
            (Op::Create | Op::Read, _, Some(a)) => (ev.op, None, Some(a)),
            (Op::Update, Some(b), Some(a)) => (Op::Update, Some(b), Some(a)),
            (Op::Update, Some(b), None) => (Op::Delete, Some(b), None),
            (Op::Update, None, Some(a)) => (Op::Create, None, Some(a)),
            (Op::Delete, Some(b), _) => (Op::Delete, Some(b), None),
            _ => return None,
        };
        let before = before.map(|r| self.project(t, r));
        let after = after.map(|r| self.project(t, r));
        if op == Op::Update && before == after {
            // Only fields the subscriber was not granted (or the part of a
            // value its mask hides) changed: sharing the update would tell
            // it when they change.
            return None;
        }
        let image = after.as_ref().or(before.as_ref())?;
        let key = Row(t.key.iter().map(|i| image.0[*i].clone()).collect());
        Some(SharedRows {
            key,
            before,
            after,
            op,
        })
    }

    /// The subscriber's key for a source key (for tombstones).
    pub fn share_key(&self, t: &ShareTable, source: &TableDesc, key: &Row) -> Row {
        Row(t
            .key
            .iter()
            .map(|i| {
                let (src, rule) = &t.sources[*i];
                let name = &source.columns[*src].name;
                let at = source
                    .primary_key
                    .iter()
                    .position(|k| k == name)
                    .expect("share keys are source keys");
                apply(&t.mac, rule, &key.0[at])
            })
            .collect())
    }
}

/// A region column's value as the text its prefix is compared with
/// (borrowed for text, the common case: this runs per share and event).
fn region_text(d: &Datum) -> Option<Cow<'_, str>> {
    match d {
        Datum::Text(s) => Some(Cow::Borrowed(s)),
        other => pg_text(other).map(Cow::Owned),
    }
}

/// The shares a row can be in, found by its region code rather than by
/// testing every share's row rule: a province node has a share per
/// district and city of each dataset, and a change is in one or two of
/// them. A share whose rule is a jurisdiction is filed under its prefix on
/// its region column; a share of every row is a candidate for every row.
/// Each candidate's own rule still decides
/// ([`SharePolicy::share_event`]): the index only leaves out shares whose
/// prefix neither image of the change starts with, which those shares'
/// rules refuse anyway.
#[derive(Debug, Default)]
pub struct JurisdictionIndex {
    /// Per region column: share positions by prefix, and the longest
    /// prefix in bytes.
    columns: Vec<(usize, HashMap<String, Vec<usize>>, usize)>,
    /// Shares of every row.
    every_row: Vec<usize>,
}

impl JurisdictionIndex {
    /// Files each share by its position in `shares`; `None` is a share
    /// that receives nothing (its policy does not fit the table).
    pub fn new<'a>(
        shares: impl IntoIterator<Item = Option<(&'a SharePolicy, &'a ShareTable)>>,
    ) -> Self {
        let mut index = Self::default();
        for (i, share) in shares.into_iter().enumerate() {
            let Some((policy, table)) = share else {
                continue;
            };
            let Some(column) = table.region else {
                index.every_row.push(i);
                continue;
            };
            let at = match index.columns.iter().position(|(c, _, _)| *c == column) {
                Some(at) => at,
                None => {
                    index.columns.push((column, HashMap::new(), 0));
                    index.columns.len() - 1
                }
            };
            let (_, by_prefix, longest) = &mut index.columns[at];
            by_prefix.entry(policy.prefix.clone()).or_default().push(i);
            *longest = (*longest).max(policy.prefix.len());
        }
        index
    }

    /// The positions of the shares `ev` can concern, ascending, into
    /// `out` (cleared first).
    pub fn candidates(&self, ev: &ChangeEvent, out: &mut Vec<usize>) {
        out.clear();
        out.extend_from_slice(&self.every_row);
        for (column, by_prefix, longest) in &self.columns {
            for row in [&ev.before, &ev.after].into_iter().flatten() {
                let Some(code) = row.0.get(*column).and_then(region_text) else {
                    continue;
                };
                for len in 0..=code.len().min(*longest) {
                    if !code.is_char_boundary(len) {
                        continue;
                    }
                    if let Some(shares) = by_prefix.get(&code[..len]) {
                        out.extend_from_slice(shares);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// A field's value under its rule.
fn apply(mac: &Hmac<Sha256>, rule: &FieldRule, d: &Datum) -> Datum {
    if matches!(d, Datum::Null) || *rule == FieldRule::Plain {
        return d.clone();
    }
    let text = pg_text(d).unwrap_or_default();
    match rule {
        FieldRule::Plain => unreachable!("handled above"),
        FieldRule::Hashed => {
            let mut mac = mac.clone();
            mac.update(text.as_bytes());
            Datum::Text(hex(&mac.finalize().into_bytes()))
        }
        FieldRule::Masked(mask) => Datum::Text(apply_mask(mask, &text)),
    }
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn apply_mask(mask: &Mask, text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    match mask {
        Mask::Fixed(t) => t.clone(),
        Mask::Name => chars
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { *c } else { '*' })
            .collect(),
        Mask::Keep { first, last } => {
            let n = chars.len();
            if first + last >= n {
                // Too short to hide anything while keeping both ends: hide all.
                return "*".repeat(n);
            }
            chars
                .iter()
                .enumerate()
                .map(|(i, c)| if i < *first || i >= n - last { *c } else { '*' })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backflow_schemas::SourceInfo;

    fn source() -> TableDesc {
        TableDesc {
            dataset: "gongan.population".into(),
            schema: "public".into(),
            name: "population".into(),
            columns: vec![
                ColumnDesc::new("id", SqlType::BigInt, false),
                ColumnDesc::new("name", SqlType::Varchar { len: Some(64) }, false),
                ColumnDesc::new("id_number", SqlType::Char { len: Some(18) }, false),
                ColumnDesc::new("phone", SqlType::Varchar { len: Some(20) }, true),
                ColumnDesc::new("region_code", SqlType::Char { len: Some(6) }, false),
                ColumnDesc::new(
                    "income",
                    SqlType::Decimal {
                        precision: Some(12),
                        scale: Some(2),
                    },
                    true,
                ),
            ],
            primary_key: vec!["id".into()],
        }
    }

    fn policy(subscriber: &str, prefix: &str) -> SharePolicy {
        SharePolicy {
            subscriber: subscriber.into(),
            dataset: "gongan.population".into(),
            rows: crate::domain::policy::RowRule::Jurisdiction("region_code".into()),
            prefix: prefix.into(),
            predicates: vec![],
            fields: BTreeMap::from([
                ("id".into(), FieldRule::Plain),
                ("name".into(), FieldRule::parse("masked:name").unwrap()),
                (
                    "id_number".into(),
                    FieldRule::parse("masked:keep(6,4)").unwrap(),
                ),
                ("phone".into(), FieldRule::Hashed),
                ("region_code".into(), FieldRule::Plain),
            ]),
            secret: format!("secret-{subscriber}").into_bytes(),
            version: 1,
        }
    }

    fn person(id: i64, region: &str) -> Row {
        Row(vec![
            Datum::Long(id),
            Datum::Text("张三丰".into()),
            Datum::Text("330106199001011234".into()),
            Datum::Text("13800001111".into()),
            Datum::Text(region.into()),
            Datum::Null,
        ])
    }

    fn event(op: Op, before: Option<Row>, after: Option<Row>) -> ChangeEvent {
        ChangeEvent {
            key: Row(vec![Datum::Long(1)]),
            before,
            after,
            source: SourceInfo::default(),
            op,
            ts_ms: None,
            transaction: None,
        }
    }

    /// The jurisdiction index leaves out no share a change concerns: for
    /// random shares (districts, cities, the province, every-row shares,
    /// shares whose grant does not fit) and random inserts, updates that
    /// move a row between regions, deletes and odd region codes, every
    /// share `share_event` gives something is among the candidates, and
    /// with 100 district shares a change has at most its district, its
    /// city, the province and the every-row shares as candidates.
    #[test]
    fn jurisdiction_index_keeps_every_share_a_change_concerns() {
        let mut rng = fastrand::Rng::with_seed(7);
        let codes = [
            "330106", "330108", "330100", "330000", "330206", "3301", "", "33010６", "990106",
        ];
        let table = source();
        for round in 0..200 {
            let shares: Vec<Option<(SharePolicy, ShareTable)>> = (0..rng.usize(1..40))
                .map(|i| {
                    let prefix = match rng.u8(0..4) {
                        0 => "33".to_owned(),
                        1 => format!("33{:02}", rng.u8(1..4)),
                        _ => format!("33{:02}{:02}", rng.u8(1..4), rng.u8(0..9)),
                    };
                    let mut p = policy(&format!("{i:06}"), &prefix);
                    match rng.u8(0..6) {
                        0 => p.rows = crate::domain::policy::RowRule::All,
                        1 => return None,
                        _ => {}
                    }
                    let t = p.share_table(&table).unwrap();
                    Some((p, t))
                })
                .collect();
            let index =
                JurisdictionIndex::new(shares.iter().map(|s| s.as_ref().map(|(p, t)| (p, t))));
            let mut candidates = Vec::new();
            for _ in 0..50 {
                let (a, b) = (
                    codes[rng.usize(..codes.len())],
                    codes[rng.usize(..codes.len())],
                );
                let ev = match rng.u8(0..3) {
                    0 => event(Op::Create, None, Some(person(1, a))),
                    1 => event(Op::Update, Some(person(1, a)), Some(person(1, b))),
                    _ => event(Op::Delete, Some(person(1, a)), None),
                };
                index.candidates(&ev, &mut candidates);
                for (i, share) in shares.iter().enumerate() {
                    let Some((p, t)) = share else { continue };
                    if p.share_event(t, &ev).is_some() {
                        assert!(
                            candidates.contains(&i),
                            "round {round}: share {i} (prefix {:?}) concerned by {ev:?} but not a candidate {candidates:?}",
                            p.prefix
                        );
                    }
                }
            }
        }

        // The shape of a province: 100 districts, their 10 cities, itself.
        let mut shares: Vec<(SharePolicy, ShareTable)> = Vec::new();
        for city in 1..=10 {
            for district in 1..=10 {
                let p = policy("d", &format!("33{city:02}{district:02}"));
                let t = p.share_table(&table).unwrap();
                shares.push((p, t));
            }
            let p = policy("c", &format!("33{city:02}"));
            let t = p.share_table(&table).unwrap();
            shares.push((p, t));
        }
        let index = JurisdictionIndex::new(shares.iter().map(|(p, t)| Some((p, t))));
        let mut candidates = Vec::new();
        index.candidates(
            &event(Op::Create, None, Some(person(1, "330703"))),
            &mut candidates,
        );
        let mut prefixes: Vec<&str> = candidates
            .iter()
            .map(|i| shares[*i].0.prefix.as_str())
            .collect();
        prefixes.sort_unstable();
        assert_eq!(prefixes, ["3307", "330703"]);
        index.candidates(
            &event(
                Op::Update,
                Some(person(1, "330703")),
                Some(person(1, "330901")),
            ),
            &mut candidates,
        );
        assert_eq!(
            candidates.len(),
            4,
            "a move concerns both districts and cities"
        );
    }

    /// Enum labels and intervals arrive as text and money as a decimal,
    /// so masks and hashes apply to them as to any text or number; an
    /// array has no single value to mask or hash: such a grant is refused
    /// (fail closed), a plain one shares the array as it is.
    #[test]
    fn share_table_refuses_masks_and_hashes_of_arrays() {
        let mut table = source();
        table.columns.push(ColumnDesc::new(
            "phones",
            SqlType::Array(Box::new(SqlType::Text)),
            true,
        ));
        for rule in ["masked:keep(3,4)", "hashed"] {
            let mut p = policy("330106", "330106");
            p.fields
                .insert("phones".into(), FieldRule::parse(rule).unwrap());
            let err = p.share_table(&table).unwrap_err();
            assert!(
                err.contains("field phones") && err.contains("array") && err.contains("plain"),
                "{rule}: {err}"
            );
        }
        let mut p = policy("330106", "330106");
        p.fields.insert("phones".into(), FieldRule::Plain);
        // A row rule on the array is refused too: it compares one value.
        let mut on_array = p.clone();
        on_array.predicates.push(Predicate {
            column: "phones".into(),
            op: "!=".into(),
            value: "13800001111".into(),
        });
        let err = on_array.share_table(&table).unwrap_err();
        assert!(err.contains("row rule on column phones"), "{err}");
        let t = p.share_table(&table).unwrap();
        let mut row = person(1, "330106");
        let phones = Datum::Array(vec![Datum::Text("13800001111".into()), Datum::Null]);
        row.0.push(phones.clone());
        assert_eq!(p.project(&t, &row).0.last(), Some(&phones));
    }

    #[test]
    fn share_table_has_granted_fields_only_masked_ones_as_text() {
        let t = policy("330106", "330106").share_table(&source()).unwrap();
        let names: Vec<&str> = t.desc.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "name", "id_number", "phone", "region_code"]);
        assert_eq!(t.desc.columns[2].sql_type, SqlType::Text);
        let mut p = policy("330106", "330106");
        p.fields.remove("id");
        assert!(p.share_table(&source()).unwrap_err().contains("key column"));
        p.fields
            .insert("id".into(), FieldRule::parse("masked:keep(1,1)").unwrap());
        assert!(p
            .share_table(&source())
            .unwrap_err()
            .contains("cannot be masked"));
        // A granted field the table no longer has is withheld.
        p.fields.insert("id".into(), FieldRule::Plain);
        p.fields.insert("nope".into(), FieldRule::Plain);
        let t = p.share_table(&source()).unwrap();
        assert!(t.desc.column("nope").is_none());
    }

    #[test]
    fn values_protected_upstream_stay_protected_and_marked() {
        use backflow_schemas::Protection;
        // A city's raw table as it arrived from the province: the name
        // masked, the phone hashed.
        let mut arrived = source();
        for c in &mut arrived.columns {
            c.protection = match c.name.as_str() {
                "name" => Some(Protection::Masked("name".into())),
                "phone" => Some(Protection::Hashed),
                _ => None,
            };
        }
        // Masked again, hashed again: marked as such.
        let p = policy("330106", "330106");
        let t = p.share_table(&arrived).unwrap();
        let marks: Vec<(&str, Option<String>)> = t
            .desc
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.protection.as_ref().map(|p| p.to_string()),
                )
            })
            .collect();
        assert_eq!(
            marks,
            [
                ("id", None),
                ("name", Some("masked:name".into())),
                ("id_number", Some("masked:keep(6,4)".into())),
                ("phone", Some("hashed".into())),
                ("region_code", None),
            ]
        );
        // Granted plain: refused, whichever protection it arrived with.
        for (field, arrived_as) in [("name", "masked:name"), ("phone", "hashed")] {
            let mut p = policy("330106", "330106");
            p.fields.insert(field.into(), FieldRule::Plain);
            let e = p.share_table(&arrived).unwrap_err();
            assert!(e.contains(&format!("{field} arrived {arrived_as}")), "{e}");
        }
    }

    #[test]
    fn a_fixed_mask_is_bounded_so_share_records_stay_small() {
        assert!(FieldRule::parse(&format!("masked:fixed({})", "*".repeat(64))).is_ok());
        let e = FieldRule::parse(&format!("masked:fixed({})", "*".repeat(65))).unwrap_err();
        assert!(e.contains("at most 64"), "{e}");
    }

    #[test]
    fn masks_and_hashes() {
        let p = policy("330106", "330106");
        let t = p.share_table(&source()).unwrap();
        let row = p.project(&t, &person(1, "330106"));
        assert_eq!(row.0[1], Datum::Text("张**".into()));
        assert_eq!(row.0[2], Datum::Text("330106********1234".into()));
        let Datum::Text(h) = &row.0[3] else { panic!() };
        assert_eq!(h.len(), 64);
        assert_eq!(
            p.project(&t, &person(2, "330106")).0[3],
            row.0[3],
            "same value, same pseudonym"
        );
        let other = policy("330108", "330108");
        let t2 = other.share_table(&source()).unwrap();
        assert_ne!(
            other.project(&t2, &person(1, "330108")).0[3],
            row.0[3],
            "unlinkable across subscriptions"
        );
        assert_eq!(
            apply_mask(&Mask::Keep { first: 6, last: 4 }, "1234"),
            "****"
        );
        assert_eq!(
            FieldRule::parse("masked:fixed(***)").unwrap().to_string(),
            "masked:fixed(***)"
        );
        assert!(FieldRule::parse("masked:keep(6)").is_err());
    }

    #[test]
    fn moving_between_jurisdictions_is_a_delete_for_one_and_an_insert_for_the_other() {
        let xihu = policy("330106", "330106");
        let binjiang = policy("330108", "330108");
        let (tx, tb) = (
            xihu.share_table(&source()).unwrap(),
            binjiang.share_table(&source()).unwrap(),
        );
        let moved = event(
            Op::Update,
            Some(person(1, "330106")),
            Some(person(1, "330108")),
        );
        let for_xihu = xihu.share_event(&tx, &moved).unwrap();
        assert_eq!(for_xihu.op, Op::Delete);
        assert!(for_xihu.after.is_none());
        assert_eq!(for_xihu.key, Row(vec![Datum::Long(1)]));
        let for_binjiang = binjiang.share_event(&tb, &moved).unwrap();
        assert_eq!(for_binjiang.op, Op::Create);
        assert_eq!(
            for_binjiang.after.as_ref().unwrap().0[4],
            Datum::Text("330108".into())
        );
        // Neither image in the share: nothing.
        let elsewhere = event(
            Op::Update,
            Some(person(1, "330102")),
            Some(person(1, "330102")),
        );
        assert!(xihu.share_event(&tx, &elsewhere).is_none());
        // The city (prefix 3301) sees both.
        let city = policy("330100", "3301");
        let tc = city.share_table(&source()).unwrap();
        assert_eq!(city.share_event(&tc, &moved).unwrap().op, Op::Update);
        assert_eq!(
            city.share_event(&tc, &event(Op::Delete, Some(person(1, "330108")), None))
                .unwrap()
                .op,
            Op::Delete
        );
    }

    #[test]
    fn an_update_of_withheld_or_masked_away_values_alone_is_not_shared() {
        // The district must not learn when a field it was not granted
        // changed: an update whose granted image is unchanged is no change
        // for it.
        let xihu = policy("330106", "330106");
        let t = xihu.share_table(&source()).unwrap();
        let mut richer = person(1, "330106");
        richer.0[5] = Datum::Text("99999.00".into());
        let income_only = event(Op::Update, Some(person(1, "330106")), Some(richer));
        assert_eq!(xihu.share_event(&t, &income_only), None);
        let mut middle = person(1, "330106");
        middle.0[2] = Datum::Text("330106199101011234".into());
        let masked_away = event(Op::Update, Some(person(1, "330106")), Some(middle));
        assert_eq!(xihu.share_event(&t, &masked_away), None);
        let mut renamed = person(1, "330106");
        renamed.0[1] = Datum::Text("张三".into());
        let visible = event(Op::Update, Some(person(1, "330106")), Some(renamed));
        assert_eq!(xihu.share_event(&t, &visible).unwrap().op, Op::Update);
    }

    #[test]
    fn predicates_narrow_the_rows() {
        let mut p = policy("330106", "330106");
        p.fields.insert("income".into(), FieldRule::Plain);
        p.predicates = vec![Predicate {
            column: "income".into(),
            op: ">=".into(),
            value: "100".into(),
        }];
        let t = p.share_table(&source()).unwrap();
        let mut rich = person(1, "330106");
        rich.0[5] = Datum::Decimal(backflow_schemas::Decimal::parse("250.00", 2).unwrap());
        assert!(p.matches(&t, &rich));
        rich.0[5] = Datum::Decimal(backflow_schemas::Decimal::parse("99.99", 2).unwrap());
        assert!(!p.matches(&t, &rich));
        assert!(
            !p.matches(&t, &person(1, "330106")),
            "NULL fails a comparison"
        );
        p.predicates = vec![Predicate {
            column: "region_code".into(),
            op: "in".into(),
            value: "330106, 330108".into(),
        }];
        let t = p.share_table(&source()).unwrap();
        assert!(p.matches(&t, &person(1, "330106")));
        p.predicates[0].op = "like".into();
        assert!(p.share_table(&source()).unwrap_err().contains("unknown op"));
    }
}
