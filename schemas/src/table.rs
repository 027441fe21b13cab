//! Table descriptions: what a source captures and a sink creates.

use crate::datum::{Datum, Row};
use crate::types::SqlType;
use crate::SchemaError;

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnDesc {
    /// Column name; a valid Avro name (`[A-Za-z_][A-Za-z0-9_]*`).
    pub name: String,
    /// Its SQL type.
    pub sql_type: SqlType,
    /// Whether it may hold NULL.
    pub nullable: bool,
    /// The column's constant default as an Avro JSON default (e.g. `7`,
    /// `"active"`), for a NOT NULL column: readers of older records fill
    /// it in, so adding such a column is a compatible schema change.
    pub avro_default: Option<String>,
    /// How a node's share policy protected the values (masked or hashed)
    /// on their way here; `None` for values as the department holds them.
    /// It travels with the schema (field attributes `backflow.masked`,
    /// `backflow.hashed`), so a lower node knows what it may not share
    /// plain.
    pub protection: Option<Protection>,
}

/// How a share policy protected a column's values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protection {
    /// Masked by the rule given (`keep(6,4)`, `name`, `fixed(...)`).
    Masked(String),
    /// Replaced by a keyed pseudonym (HMAC).
    Hashed,
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::Masked(rule) => write!(f, "masked:{rule}"),
            Protection::Hashed => f.write_str("hashed"),
        }
    }
}

impl ColumnDesc {
    /// A column.
    pub fn new(name: impl Into<String>, sql_type: SqlType, nullable: bool) -> Self {
        Self {
            name: name.into(),
            sql_type,
            nullable,
            avro_default: None,
            protection: None,
        }
    }

    /// The same column, its values protected as `protection` says.
    pub fn protected(mut self, protection: Option<Protection>) -> Self {
        self.protection = protection;
        self
    }

    /// The same column with the default value `datum` (ignored when it has
    /// no Avro JSON form here: decimals, bytes, NULL).
    pub fn with_default(mut self, datum: &Datum) -> Self {
        self.avro_default = match datum {
            Datum::Bool(b) => Some(b.to_string()),
            Datum::Int(v) | Datum::Date(v) => Some(v.to_string()),
            Datum::Long(v) | Datum::Time(v) | Datum::Timestamp(v) | Datum::TimestampTz(v) => {
                Some(v.to_string())
            }
            Datum::Float(v) if v.is_finite() => Some(serde_json::json!(v).to_string()),
            Datum::Double(v) if v.is_finite() => Some(serde_json::json!(v).to_string()),
            Datum::Text(t) | Datum::Json(t) => Some(serde_json::json!(t).to_string()),
            Datum::Uuid(u) => Some(serde_json::json!(u.to_string()).to_string()),
            _ => None,
        };
        self
    }
}

/// A captured table and the dataset it feeds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableDesc {
    /// Dataset id, `<department>.<name>` (e.g. `gongan.population`).
    pub dataset: String,
    /// Database schema (`public`); the database name on MySQL.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<ColumnDesc>,
    /// Primary-key column names, in key order.
    pub primary_key: Vec<String>,
}

/// Whether `name` is a valid Avro name.
pub(crate) fn is_avro_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl TableDesc {
    /// `schema.name`, for messages.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Checks that the description can be turned into Avro schemas: names
    /// are valid, unique, and the primary key exists and is non-null.
    pub fn validate(&self) -> Result<(), SchemaError> {
        self.check(true)
    }

    /// [`TableDesc::validate`] for a table as a source captures it, before
    /// a mapping into its dataset's standard: column names may be any
    /// (Chinese, say) as long as they are unique; the encoder refuses a
    /// table whose names are not Avro names and that no mapping renamed.
    pub fn validate_captured(&self) -> Result<(), SchemaError> {
        self.check(false)
    }

    fn check(&self, avro_names: bool) -> Result<(), SchemaError> {
        let table = self.qualified_name();
        let invalid = |reason: String| SchemaError::InvalidTable {
            table: table.clone(),
            reason,
        };
        if self.dataset.is_empty()
            || !self.dataset.split('.').all(is_avro_name)
            || !self.dataset.contains('.')
        {
            return Err(invalid(format!(
                "dataset id {:?} must look like <department>.<name>, each part [A-Za-z_][A-Za-z0-9_]*",
                self.dataset
            )));
        }
        if self.columns.is_empty() {
            return Err(invalid("it has no columns".into()));
        }
        for (i, c) in self.columns.iter().enumerate() {
            if c.name.is_empty() || (avro_names && !is_avro_name(&c.name)) {
                return Err(invalid(format!(
                    "column {:?} is not a valid Avro name ([A-Za-z_][A-Za-z0-9_]*); rename it, or map the table into a standard ([[standards]])",
                    c.name
                )));
            }
            if self.columns[..i].iter().any(|o| o.name == c.name) {
                return Err(invalid(format!("column {:?} appears twice", c.name)));
            }
        }
        if self.primary_key.is_empty() {
            return Err(invalid(
                "it has no primary key; backflow keys every event by primary key (add one, or declare the key columns in the feed)".into(),
            ));
        }
        for k in &self.primary_key {
            match self.column(k) {
                None => return Err(invalid(format!("primary-key column {k:?} is not a column"))),
                Some((_, c)) if c.nullable => {
                    return Err(invalid(format!("primary-key column {k:?} is nullable")))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The column with this name and its index.
    pub fn column(&self, name: &str) -> Option<(usize, &ColumnDesc)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }

    /// The key columns, in key order.
    pub fn key_columns(&self) -> Vec<&ColumnDesc> {
        self.primary_key
            .iter()
            .filter_map(|k| self.column(k).map(|(_, c)| c))
            .collect()
    }

    /// The key of a full row.
    pub fn key_of(&self, row: &Row) -> Row {
        let mut key = Vec::with_capacity(self.primary_key.len());
        for k in &self.primary_key {
            if let Some(d) = self.column(k).and_then(|(i, _)| row.0.get(i)) {
                key.push(d.clone());
            }
        }
        Row(key)
    }

    /// Checks a full row against the columns.
    pub fn check_row(&self, row: &Row) -> Result<(), SchemaError> {
        check_values(self, self.columns.iter(), row)
    }

    /// Checks a key row against the key columns.
    pub fn check_key(&self, key: &Row) -> Result<(), SchemaError> {
        check_values(self, self.key_columns().into_iter(), key)
    }
}

pub(crate) fn check_values<'a>(
    table: &TableDesc,
    columns: impl ExactSizeIterator<Item = &'a ColumnDesc>,
    row: &Row,
) -> Result<(), SchemaError> {
    if columns.len() != row.0.len() {
        return Err(SchemaError::BadRow {
            table: table.qualified_name(),
            column: String::new(),
            reason: format!("{} values for {} columns", row.0.len(), columns.len()),
        });
    }
    for (c, d) in columns.zip(&row.0) {
        check_datum(c, d).map_err(|reason| SchemaError::BadRow {
            table: table.qualified_name(),
            column: c.name.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Whether a value fits a column; the reason when not (never the value).
#[inline]
fn check_datum(c: &ColumnDesc, d: &Datum) -> Result<(), String> {
    if *d == Datum::Null {
        return if c.nullable {
            Ok(())
        } else {
            Err("NULL in a NOT NULL column".into())
        };
    }
    check_kind(&c.sql_type, d)?;
    if let (SqlType::Varchar { len: Some(n) } | SqlType::Char { len: Some(n) }, Datum::Text(s)) =
        (&c.sql_type, d)
    {
        // A character is at least one byte: only text longer in bytes
        // than the limit needs counting.
        if s.len() > *n as usize {
            let chars = s.chars().count();
            if chars > *n as usize {
                return Err(format!("{chars} characters exceed length {n}"));
            }
        }
    }
    Ok(())
}

/// Whether a non-null value has the form of a type (lengths aside); the
/// reason when not (never the value).
#[inline]
pub(crate) fn check_kind(t: &SqlType, d: &Datum) -> Result<(), String> {
    let ok = match (t, d) {
        (SqlType::SmallInt, Datum::Int(v)) => i16::try_from(*v).is_ok(),
        (SqlType::Int, Datum::Int(_)) | (SqlType::BigInt, Datum::Long(_)) => true,
        (
            SqlType::Decimal {
                precision: Some(p),
                scale,
            },
            Datum::Decimal(v),
        ) => {
            if v.scale != scale.unwrap_or(0) {
                return Err(format!(
                    "decimal of scale {} for a column of scale {}",
                    v.scale,
                    scale.unwrap_or(0)
                ));
            }
            if v.digits() > *p {
                return Err(format!("{} digits exceed precision {p}", v.digits()));
            }
            true
        }
        (
            SqlType::Decimal {
                precision: None, ..
            },
            Datum::Text(_),
        ) => true,
        (SqlType::Interval, Datum::Text(_)) => true,
        (t, Datum::Text(_)) => t.is_text(),
        (SqlType::Array(element), Datum::Array(items)) => {
            if matches!(**element, SqlType::Array(_)) {
                return Err(format!("type {t} nests arrays"));
            }
            for item in items {
                if *item != Datum::Null {
                    check_kind(element, item).map_err(|e| format!("an array element: {e}"))?;
                }
            }
            true
        }
        (SqlType::Real, Datum::Float(_))
        | (SqlType::Double, Datum::Double(_))
        | (SqlType::Boolean, Datum::Bool(_))
        | (SqlType::Bytes, Datum::Bytes(_))
        | (SqlType::Date, Datum::Date(_))
        | (SqlType::Time, Datum::Time(_))
        | (SqlType::Timestamp, Datum::Timestamp(_))
        | (SqlType::TimestampTz, Datum::TimestampTz(_))
        | (SqlType::Uuid, Datum::Uuid(_))
        | (SqlType::Json, Datum::Json(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("a {} value does not fit type {t}", d.kind()))
    }
}
