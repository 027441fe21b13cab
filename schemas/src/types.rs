//! SQL column types and how each maps to Avro.
//!
//! | SQL | Avro |
//! | --- | --- |
//! | smallint, integer | `int` |
//! | bigint | `long` |
//! | numeric(p,s) / decimal(p,s) | `bytes`, logical type `decimal` (p, s) |
//! | numeric without precision | `string` holding the exact decimal text |
//! | real | `float` |
//! | double precision | `double` |
//! | boolean | `boolean` |
//! | text, varchar(n), char(n) | `string` |
//! | bytea, blob | `bytes` |
//! | date | `int`, logical type `date` (days since 1970-01-01) |
//! | time | `long`, logical type `time-micros` |
//! | timestamp (no time zone), datetime | `long`, logical type `local-timestamp-micros` |
//! | timestamptz | `long`, logical type `timestamp-micros` (UTC) |
//! | uuid | `string`, logical type `uuid` |
//! | json, jsonb | `string` (field attribute `backflow.sql_type` says json) |
//! | interval | `string`: ISO 8601 duration as PostgreSQL prints it with `IntervalStyle = iso_8601` (`P1Y2M3DT4H5M6.5S`, `P-10M-3DT-1S`, `PT0S`); each part may carry its own sign |
//! | T[] (one dimension, elements of a type above) | `array` of `["null", T]` |
//!
//! Every generated field carries its SQL type in the attribute
//! `backflow.sql_type`, so a sink can create the same column type.

use std::fmt;

use serde_json::{json, Value as Json};

use crate::SchemaError;

/// A column's SQL type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SqlType {
    /// 16-bit integer.
    SmallInt,
    /// 32-bit integer.
    Int,
    /// 64-bit integer.
    BigInt,
    /// Exact decimal; unconstrained when `precision` is `None`.
    Decimal {
        /// Total significant digits (1..=1000 in PostgreSQL, ..=65 in MySQL).
        precision: Option<u32>,
        /// Digits after the decimal point.
        scale: Option<u32>,
    },
    /// 32-bit float.
    Real,
    /// 64-bit float.
    Double,
    /// Boolean.
    Boolean,
    /// Unbounded text.
    Text,
    /// Text with an optional maximum length.
    Varchar {
        /// Maximum length in characters.
        len: Option<u32>,
    },
    /// Fixed-length text.
    Char {
        /// Length in characters.
        len: Option<u32>,
    },
    /// Binary.
    Bytes,
    /// Calendar date.
    Date,
    /// Time of day, microseconds.
    Time,
    /// Timestamp without time zone, microseconds.
    Timestamp,
    /// Timestamp with time zone, UTC microseconds.
    TimestampTz,
    /// UUID.
    Uuid,
    /// JSON document, as text.
    Json,
    /// A span of time, as ISO 8601 duration text.
    Interval,
    /// A one-dimensional array of nullable elements of a type that is not
    /// an array itself.
    Array(Box<SqlType>),
}

impl SqlType {
    /// Whether values of the type are text (`text`, `varchar(n)`, `char(n)`).
    pub fn is_text(&self) -> bool {
        matches!(
            self,
            SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. }
        )
    }

    /// Whether values of the type are integers.
    pub fn is_integer(&self) -> bool {
        matches!(self, SqlType::SmallInt | SqlType::Int | SqlType::BigInt)
    }

    /// Parses a PostgreSQL or MySQL type name such as `numeric(20,6)`,
    /// `character varying(64)`, `timestamp with time zone`, `datetime(6)`.
    pub fn parse(text: &str) -> Result<SqlType, SchemaError> {
        let trimmed = text.trim();
        // `integer[]`, and `integer[][]` or `integer[3]`: PostgreSQL
        // enforces neither dimensions nor sizes, so each is an array of
        // integers, and a value's own shape is checked where it is read.
        if let Some(open) = trimmed.find('[').filter(|_| trimmed.ends_with(']')) {
            let dims = &trimmed[open..];
            let only_brackets = dims.split_inclusive(']').all(|d| {
                d.starts_with('[') && d[1..d.len() - 1].bytes().all(|b| b.is_ascii_digit())
            });
            if !only_brackets {
                return Err(SchemaError::UnknownType {
                    sql_type: text.to_owned(),
                });
            }
            let element =
                SqlType::parse(&trimmed[..open]).map_err(|_| SchemaError::UnknownType {
                    sql_type: text.to_owned(),
                })?;
            if matches!(element, SqlType::Array(_)) {
                return Err(SchemaError::UnknownType {
                    sql_type: text.to_owned(),
                });
            }
            return Ok(SqlType::Array(Box::new(element)));
        }
        let lower = trimmed.to_ascii_lowercase();
        let (base, args) = match lower.find('(') {
            Some(open) => {
                let close = lower.rfind(')').filter(|c| *c > open).ok_or_else(|| {
                    SchemaError::UnknownType {
                        sql_type: text.to_owned(),
                    }
                })?;
                let rest = lower[close + 1..].trim();
                let base = format!("{} {rest}", lower[..open].trim());
                (
                    base.trim().to_owned(),
                    Some(lower[open + 1..close].to_owned()),
                )
            }
            None => (lower.clone(), None),
        };
        let base = base.trim_end_matches(" unsigned").trim();
        let nums: Vec<u32> = match &args {
            Some(a) => a
                .split(',')
                .map(|n| n.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| SchemaError::UnknownType {
                    sql_type: text.to_owned(),
                })?,
            None => Vec::new(),
        };
        let first = nums.first().copied();
        let t = match base {
            "smallint" | "int2" | "smallserial" | "tinyint" | "year" => SqlType::SmallInt,
            "tinyint(1)" | "boolean" | "bool" => SqlType::Boolean,
            "integer" | "int" | "int4" | "serial" | "mediumint" => SqlType::Int,
            "bigint" | "int8" | "bigserial" => SqlType::BigInt,
            "numeric" | "decimal" => SqlType::Decimal {
                precision: first,
                scale: first.map(|_| nums.get(1).copied().unwrap_or(0)),
            },
            "real" | "float4" | "float" => SqlType::Real,
            "double precision" | "float8" | "double" => SqlType::Double,
            "text" | "tinytext" | "mediumtext" | "longtext" | "citext" => SqlType::Text,
            "varchar" | "character varying" => SqlType::Varchar { len: first },
            "char" | "character" | "bpchar" => SqlType::Char { len: first },
            "bytea" | "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" => {
                SqlType::Bytes
            }
            "date" => SqlType::Date,
            "time" | "time without time zone" => SqlType::Time,
            "timestamp" | "timestamp without time zone" | "datetime" => SqlType::Timestamp,
            "timestamptz" | "timestamp with time zone" => SqlType::TimestampTz,
            "uuid" => SqlType::Uuid,
            "json" | "jsonb" => SqlType::Json,
            "interval" => SqlType::Interval,
            _ => {
                return Err(SchemaError::UnknownType {
                    sql_type: text.to_owned(),
                })
            }
        };
        // MySQL's tinyint(1) is its boolean.
        if base == "tinyint" && first == Some(1) {
            return Ok(SqlType::Boolean);
        }
        Ok(t)
    }

    /// The Avro type of a non-null value of this SQL type.
    pub(crate) fn avro(&self) -> Json {
        match self {
            SqlType::SmallInt | SqlType::Int => json!("int"),
            SqlType::BigInt => json!("long"),
            SqlType::Decimal {
                precision: Some(p),
                scale,
            } => {
                json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": scale.unwrap_or(0)})
            }
            SqlType::Decimal {
                precision: None, ..
            } => json!("string"),
            SqlType::Real => json!("float"),
            SqlType::Double => json!("double"),
            SqlType::Boolean => json!("boolean"),
            SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. } | SqlType::Json => {
                json!("string")
            }
            SqlType::Bytes => json!("bytes"),
            SqlType::Date => json!({"type": "int", "logicalType": "date"}),
            SqlType::Time => json!({"type": "long", "logicalType": "time-micros"}),
            SqlType::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
            SqlType::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
            SqlType::Uuid => json!({"type": "string", "logicalType": "uuid"}),
            SqlType::Interval => json!("string"),
            SqlType::Array(element) => json!({"type": "array", "items": ["null", element.avro()]}),
        }
    }

    /// The element type of an array type.
    pub fn element(&self) -> Option<&SqlType> {
        match self {
            SqlType::Array(element) => Some(element),
            _ => None,
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::SmallInt => f.write_str("smallint"),
            SqlType::Int => f.write_str("integer"),
            SqlType::BigInt => f.write_str("bigint"),
            SqlType::Decimal {
                precision: Some(p),
                scale,
            } => write!(f, "numeric({p},{})", scale.unwrap_or(0)),
            SqlType::Decimal {
                precision: None, ..
            } => f.write_str("numeric"),
            SqlType::Real => f.write_str("real"),
            SqlType::Double => f.write_str("double precision"),
            SqlType::Boolean => f.write_str("boolean"),
            SqlType::Text => f.write_str("text"),
            SqlType::Varchar { len: Some(n) } => write!(f, "varchar({n})"),
            SqlType::Varchar { len: None } => f.write_str("varchar"),
            SqlType::Char { len: Some(n) } => write!(f, "char({n})"),
            SqlType::Char { len: None } => f.write_str("char"),
            SqlType::Bytes => f.write_str("bytea"),
            SqlType::Date => f.write_str("date"),
            SqlType::Time => f.write_str("time"),
            SqlType::Timestamp => f.write_str("timestamp"),
            SqlType::TimestampTz => f.write_str("timestamptz"),
            SqlType::Uuid => f.write_str("uuid"),
            SqlType::Json => f.write_str("json"),
            SqlType::Interval => f.write_str("interval"),
            SqlType::Array(element) => write!(f, "{element}[]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_type_parses_postgres_and_mysql_names() {
        let cases = [
            ("int2", SqlType::SmallInt),
            ("INTEGER", SqlType::Int),
            ("int unsigned", SqlType::Int),
            ("bigint", SqlType::BigInt),
            (
                "numeric(20, 6)",
                SqlType::Decimal {
                    precision: Some(20),
                    scale: Some(6),
                },
            ),
            (
                "decimal(10)",
                SqlType::Decimal {
                    precision: Some(10),
                    scale: Some(0),
                },
            ),
            (
                "numeric",
                SqlType::Decimal {
                    precision: None,
                    scale: None,
                },
            ),
            ("double precision", SqlType::Double),
            ("character varying(64)", SqlType::Varchar { len: Some(64) }),
            ("char(18)", SqlType::Char { len: Some(18) }),
            ("tinyint(1)", SqlType::Boolean),
            ("tinyint(4)", SqlType::SmallInt),
            ("longblob", SqlType::Bytes),
            ("datetime(6)", SqlType::Timestamp),
            ("timestamp(3) with time zone", SqlType::TimestampTz),
            ("timestamp without time zone", SqlType::Timestamp),
            ("jsonb", SqlType::Json),
            ("uuid", SqlType::Uuid),
            ("interval", SqlType::Interval),
            ("integer[]", SqlType::Array(Box::new(SqlType::Int))),
            ("integer[][]", SqlType::Array(Box::new(SqlType::Int))),
            ("text[3]", SqlType::Array(Box::new(SqlType::Text))),
            (
                "numeric(6,2)[]",
                SqlType::Array(Box::new(SqlType::Decimal {
                    precision: Some(6),
                    scale: Some(2),
                })),
            ),
            (
                "timestamp with time zone[]",
                SqlType::Array(Box::new(SqlType::TimestampTz)),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(SqlType::parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn sql_type_display_parses_back() {
        for t in [
            SqlType::SmallInt,
            SqlType::Decimal {
                precision: Some(38),
                scale: Some(10),
            },
            SqlType::Varchar { len: Some(64) },
            SqlType::TimestampTz,
            SqlType::Json,
            SqlType::Interval,
            SqlType::Array(Box::new(SqlType::Varchar { len: Some(8) })),
            SqlType::Array(Box::new(SqlType::Uuid)),
        ] {
            assert_eq!(SqlType::parse(&t.to_string()).unwrap(), t);
        }
    }

    #[test]
    fn sql_type_unknown_name_is_an_error_naming_it() {
        let err = SqlType::parse("geometry(Point)").unwrap_err();
        assert!(err.to_string().contains("geometry(Point)"), "{err}");
        for text in ["geometry[]", "int[x]", "int[]x", "[]"] {
            let err = SqlType::parse(text).unwrap_err();
            assert!(err.to_string().contains(text), "{err}");
        }
    }
}
