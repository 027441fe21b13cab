//! Table descriptions recovered from a topic's key and value schemas: what a
//! sink creates when the table is absent.
//!
//! Schemas backflow generated carry each column's exact SQL type in the
//! field attribute [`SQL_TYPE_ATTRIBUTE`](crate::codec::SQL_TYPE_ATTRIBUTE);
//! for schemas written by other producers the SQL type is inferred from the
//! Avro type (`long` → `bigint`, `decimal(p,s)` → `numeric(p,s)`, ...).

use apache_avro::schema::RecordSchema;
use apache_avro::Schema;

use crate::codec::SQL_TYPE_ATTRIBUTE;
use crate::table::{ColumnDesc, TableDesc};
use crate::types::SqlType;
use crate::SchemaError;

/// Where a recovered table lives and which dataset it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableTarget {
    /// Dataset id.
    pub dataset: String,
    /// Target schema (database on MySQL; ignored by SQLite).
    pub schema: String,
    /// Target table name.
    pub name: String,
}

/// The table a topic's key schema and change-event (envelope) value schema
/// describe.
pub fn table_from_schemas(
    key: &Schema,
    value: &Schema,
    target: &TableTarget,
) -> Result<TableDesc, SchemaError> {
    let table = format!("{}.{}", target.schema, target.name);
    let invalid = |reason: String| SchemaError::InvalidTable {
        table: table.clone(),
        reason,
    };
    let row = row_record(value).ok_or_else(|| {
        invalid("the value schema is not a change-event envelope (a record with a `before` or `after` record field)".to_owned())
    })?;
    let columns = row
        .fields
        .iter()
        .map(|f| column(f).map_err(|reason| invalid(format!("field {}: {reason}", f.name))))
        .collect::<Result<Vec<_>, _>>()?;
    let Schema::Record(key) = key else {
        return Err(invalid("the key schema is not a record".to_owned()));
    };
    let desc = TableDesc {
        dataset: target.dataset.clone(),
        schema: target.schema.clone(),
        name: target.name.clone(),
        columns,
        primary_key: key.fields.iter().map(|f| f.name.clone()).collect(),
    };
    desc.validate()?;
    Ok(desc)
}

/// How an upper node protected each field of a change-event value schema
/// (fields marked `backflow.masked` or `backflow.hashed`), by field name.
pub fn protections(value: &Schema) -> std::collections::BTreeMap<String, crate::Protection> {
    row_record(value)
        .map(|row| {
            row.fields
                .iter()
                .filter_map(|f| Some((f.name.clone(), column(f).ok()?.protection?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A key-only description from the key schema alone: enough to delete by
/// key when a tombstone arrives before any value of its table.
pub fn key_table_from_schema(key: &Schema, target: &TableTarget) -> Result<TableDesc, SchemaError> {
    let table = format!("{}.{}", target.schema, target.name);
    let Schema::Record(key) = key else {
        return Err(SchemaError::InvalidTable {
            table,
            reason: "the key schema is not a record".to_owned(),
        });
    };
    let columns = key
        .fields
        .iter()
        .map(|f| {
            column(f).map_err(|reason| SchemaError::InvalidTable {
                table: table.clone(),
                reason: format!("key field {}: {reason}", f.name),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let desc = TableDesc {
        dataset: target.dataset.clone(),
        schema: target.schema.clone(),
        name: target.name.clone(),
        primary_key: columns.iter().map(|c| c.name.clone()).collect(),
        columns,
    };
    desc.validate()?;
    Ok(desc)
}

/// The row record of an envelope: the record inside `before` or `after`.
fn row_record(value: &Schema) -> Option<&RecordSchema> {
    let Schema::Record(envelope) = value else {
        return None;
    };
    envelope
        .fields
        .iter()
        .filter(|f| f.name == "before" || f.name == "after")
        .find_map(|f| match &f.schema {
            Schema::Record(r) => Some(r),
            Schema::Union(u) => u.variants().iter().find_map(|v| match v {
                Schema::Record(r) => Some(r),
                _ => None,
            }),
            _ => None,
        })
}

pub(crate) fn column(field: &apache_avro::schema::RecordField) -> Result<ColumnDesc, String> {
    let (nullable, inner) = match &field.schema {
        Schema::Union(u) => {
            let variants = u.variants();
            let non_null: Vec<&Schema> = variants.iter().filter(|v| **v != Schema::Null).collect();
            if non_null.len() != 1 {
                return Err("a union other than [\"null\", T] has no SQL column type".to_owned());
            }
            (non_null.len() < variants.len(), non_null[0])
        }
        s => (false, s),
    };
    let sql_type = match field
        .custom_attributes
        .get(SQL_TYPE_ATTRIBUTE)
        .and_then(|v| v.as_str())
    {
        Some(text) => SqlType::parse(text).map_err(|e| e.to_string())?,
        None => infer(inner)?,
    };
    let attr = |name: &str| field.custom_attributes.get(name);
    let protection = if let Some(rule) = attr(crate::codec::MASKED_ATTRIBUTE) {
        Some(crate::table::Protection::Masked(
            rule.as_str().unwrap_or_default().to_owned(),
        ))
    } else if attr(crate::codec::HASHED_ATTRIBUTE)
        .is_some_and(|v| v != &serde_json::Value::Bool(false))
    {
        Some(crate::table::Protection::Hashed)
    } else {
        None
    };
    Ok(ColumnDesc::new(field.name.clone(), sql_type, nullable).protected(protection))
}

/// The SQL type for an Avro type written by a producer other than backflow.
fn infer(avro: &Schema) -> Result<SqlType, String> {
    Ok(match avro {
        Schema::Boolean => SqlType::Boolean,
        Schema::Int => SqlType::Int,
        Schema::Long => SqlType::BigInt,
        Schema::Float => SqlType::Real,
        Schema::Double => SqlType::Double,
        Schema::String | Schema::Enum(_) => SqlType::Text,
        Schema::Bytes | Schema::Fixed(_) => SqlType::Bytes,
        Schema::Decimal(d) => SqlType::Decimal {
            precision: Some(d.precision as u32),
            scale: Some(d.scale as u32),
        },
        Schema::Uuid(_) => SqlType::Uuid,
        Schema::Date => SqlType::Date,
        Schema::TimeMicros => SqlType::Time,
        Schema::TimestampMicros => SqlType::TimestampTz,
        Schema::LocalTimestampMicros => SqlType::Timestamp,
        Schema::Array(array) => {
            // Items `T` or `["null", T]`; an array of arrays has no column type.
            let items = match array.items.as_ref() {
                Schema::Union(u) => match u.variants() {
                    [Schema::Null, t] | [t, Schema::Null] => t,
                    _ => return Err("an Avro array whose items are a union other than [\"null\", T] has no SQL column type".to_owned()),
                },
                t => t,
            };
            match infer(items)? {
                SqlType::Array(_) => {
                    return Err("an Avro array of arrays has no SQL column type (only one-dimensional arrays are shared)".to_owned())
                }
                element => SqlType::Array(Box::new(element)),
            }
        }
        other => {
            return Err(format!(
                "Avro type {} has no SQL column type backflow maps (use int, long, float, double, boolean, string, bytes, decimal, uuid, date, time-micros, timestamp-micros, local-timestamp-micros, or an array of one of them)",
                serde_json::to_string(other).unwrap_or_else(|_| "?".to_owned())
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples;
    use crate::TableCodec;

    fn target() -> TableTarget {
        TableTarget {
            dataset: "gongan.population".to_owned(),
            schema: "district".to_owned(),
            name: "population".to_owned(),
        }
    }

    #[test]
    fn generated_schemas_give_back_the_table() {
        let original = examples::population();
        let codec = TableCodec::new(original.clone()).unwrap();
        // Through JSON, as a registry returns them.
        let reparse = |s: &Schema| Schema::parse_str(&serde_json::to_string(s).unwrap()).unwrap();
        let got = table_from_schemas(
            &reparse(codec.key_schema()),
            &reparse(codec.value_schema()),
            &target(),
        )
        .unwrap();
        assert_eq!(got.columns, original.columns);
        assert_eq!(got.primary_key, original.primary_key);
        assert_eq!(
            (got.schema.as_str(), got.name.as_str()),
            ("district", "population")
        );
    }

    #[test]
    fn how_values_were_protected_travels_with_the_schema() {
        let mut table = examples::population();
        table.columns[1].protection = Some(crate::Protection::Masked("name".into()));
        table.columns[2].protection = Some(crate::Protection::Hashed);
        let codec = TableCodec::new(table.clone()).unwrap();
        let text = serde_json::to_string(codec.value_schema().as_ref()).unwrap();
        assert!(text.contains(r#""backflow.masked":"name""#), "{text}");
        assert!(text.contains(r#""backflow.hashed":true"#), "{text}");
        let reparse = |s: &Schema| Schema::parse_str(&serde_json::to_string(s).unwrap()).unwrap();
        let got = table_from_schemas(
            &reparse(codec.key_schema()),
            &reparse(codec.value_schema()),
            &target(),
        )
        .unwrap();
        assert_eq!(got.columns, table.columns);
    }

    #[test]
    fn foreign_schemas_are_inferred_and_bad_ones_named() {
        let key = Schema::parse_str(
            r#"{"type":"record","name":"K","fields":[{"name":"id","type":"long"}]}"#,
        )
        .unwrap();
        let value = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[
                {"name":"before","type":["null",{"type":"record","name":"V","fields":[
                    {"name":"id","type":"long"},
                    {"name":"amount","type":["null",{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}]},
                    {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}}]}]},
                {"name":"after","type":["null","V"]},
                {"name":"op","type":"string"}]}"#,
        )
        .unwrap();
        let got = table_from_schemas(&key, &value, &target()).unwrap();
        assert_eq!(
            got.columns,
            vec![
                ColumnDesc::new("id", SqlType::BigInt, false),
                ColumnDesc::new(
                    "amount",
                    SqlType::Decimal {
                        precision: Some(12),
                        scale: Some(2)
                    },
                    true
                ),
                ColumnDesc::new("at", SqlType::TimestampTz, false),
            ]
        );
        // A one-dimensional array is a column of its element type's array.
        let tags = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[{"name":"after","type":["null",{"type":"record","name":"V","fields":[
                {"name":"id","type":"long"},{"name":"tags","type":{"type":"array","items":"string"}}]}]}]}"#,
        )
        .unwrap();
        let got = table_from_schemas(&key, &tags, &target()).unwrap();
        assert_eq!(
            got.columns[1],
            ColumnDesc::new("tags", SqlType::Array(Box::new(SqlType::Text)), false)
        );
        let bad = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[{"name":"after","type":["null",{"type":"record","name":"V","fields":[
                {"name":"id","type":"long"},{"name":"tags","type":{"type":"array","items":{"type":"array","items":"string"}}}]}]}]}"#,
        )
        .unwrap();
        let err = table_from_schemas(&key, &bad, &target())
            .unwrap_err()
            .to_string();
        assert!(err.contains("field tags") && err.contains("array"), "{err}");
        let not_envelope = Schema::parse_str(
            r#"{"type":"record","name":"X","fields":[{"name":"id","type":"long"}]}"#,
        )
        .unwrap();
        let err = table_from_schemas(&key, &not_envelope, &target())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a change-event envelope"), "{err}");
    }
}
