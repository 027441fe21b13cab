//! Data standards: the one form a dataset takes on backflow whatever the
//! department's system, the mapping of each feed's table into it, and the
//! rules every event must meet before it is published.
//!
//! - [`Standard`]: a dataset's standard schema, an Avro record (`.avsc` in
//!   `schemas/standards/`) with a `doc` on every field and backflow metadata
//!   as extra attributes. The shipped ones are listed by [`builtin`].
//! - [`Mapping`]: a feed's mapping from its source table into a standard
//!   (renames, casts, code tables, constants, small expressions), checked
//!   against both by [`Mapping::compile`].
//! - [`Validator`]: applies the standard's rules (and a dataset's extra
//!   [`Rule`]s) to every standard row and names every [`Violation`].
//!
//! Nothing here touches Kafka or a database: the feed pipeline calls
//! [`CompiledMapping::conform`] on each source row and sends a refused one
//! to the feed's dead-letter topic with the violations.
//!
//! # The standard's attributes
//!
//! On the record:
//! - `backflow.standard`: the standard's name (`population`);
//! - `backflow.key`: the key fields, in key order;
//! - `backflow.region_field` (optional): the GB/T 2260 region-code field
//!   sharing filters rows by.
//!
//! On each field (all but the rules mandatory, and `doc` too):
//! - `backflow.sql_type`: the exact SQL type (`char(18)`, `numeric(20,6)`),
//!   consistent with the Avro type; inferred from the Avro type if absent;
//! - `backflow.required`: `true` for a non-null type, `false` for
//!   `["null", T]`;
//! - `backflow.sensitivity`: `public`, `internal`, `sensitive` or `secret`;
//! - `backflow.rules` (optional): the field's [`Rule`]s. `varchar(n)` and
//!   `char(n)` imply `max_length` n.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

use crate::codec::{self, SQL_TYPE_ATTRIBUTE};
use crate::table::{is_avro_name, ColumnDesc, TableDesc};
use crate::types::SqlType;

pub mod checks;
pub mod date;
pub mod expr;
pub mod mapping;
pub mod region;
pub mod rule;

pub use mapping::{Cast, CompiledMapping, Constant, FieldMapping, Mapping, MappingError};
pub use region::RegionCodes;
pub use rule::{DatasetRules, DateBound, NumberBound, Rule, Validator, Violation};

/// Record attribute: the standard's name.
pub const STANDARD_ATTRIBUTE: &str = "backflow.standard";
/// Record attribute: key field names.
pub const KEY_ATTRIBUTE: &str = "backflow.key";
/// Record attribute: the region-code field.
pub const REGION_FIELD_ATTRIBUTE: &str = "backflow.region_field";
/// Field attribute: whether the field is required.
pub const REQUIRED_ATTRIBUTE: &str = "backflow.required";
/// Field attribute: the field's [`Sensitivity`].
pub const SENSITIVITY_ATTRIBUTE: &str = "backflow.sensitivity";
/// Field attribute: the field's [`Rule`]s.
pub const RULES_ATTRIBUTE: &str = "backflow.rules";

/// 人口基础信息: the population standard.
pub const POPULATION_AVSC: &str = include_str!("../../standards/population.avsc");
/// 法人: the legal-entity standard.
pub const LEGAL_ENTITY_AVSC: &str = include_str!("../../standards/legal_entity.avsc");
/// 标准地址: the address-point (location) standard.
pub const ADDRESS_POINT_AVSC: &str = include_str!("../../standards/address_point.avsc");

/// How sensitive a field's values are; sharing policies decide from it
/// which fields to mask or leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// May be published.
    Public,
    /// For government use.
    Internal,
    /// Personal or business information: shared only where authorised.
    Sensitive,
    /// Identifiers and the like: masked or hashed unless explicitly granted.
    Secret,
}

impl Sensitivity {
    /// Its name in a standard: `public`, `internal`, `sensitive`, `secret`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Sensitivity::Public => "public",
            Sensitivity::Internal => "internal",
            Sensitivity::Sensitive => "sensitive",
            Sensitivity::Secret => "secret",
        }
    }

    fn parse(text: &str) -> Option<Sensitivity> {
        [
            Sensitivity::Public,
            Sensitivity::Internal,
            Sensitivity::Sensitive,
            Sensitivity::Secret,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Sensitivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A standard that cannot be loaded, or dataset rules that do not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandardError {
    /// About the standard as a whole.
    #[error("standard {standard}: {reason}")]
    Invalid {
        /// Its name (`?` when not known yet).
        standard: String,
        /// Why, and what to change.
        reason: String,
    },
    /// About one field.
    #[error("standard {standard}, field {field}: {reason}")]
    Field {
        /// Standard name.
        standard: String,
        /// Field name.
        field: String,
        /// Why, and what to change.
        reason: String,
    },
}

/// One field of a standard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardField {
    /// Field name.
    pub name: String,
    /// What the field holds.
    pub doc: String,
    /// Its type.
    pub sql_type: SqlType,
    /// Whether every row must have a value.
    pub required: bool,
    /// How sensitive its values are.
    pub sensitivity: Sensitivity,
    /// Its rules (including the `max_length` its type implies).
    pub rules: Vec<Rule>,
}

/// A dataset's standard schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standard {
    name: String,
    doc: String,
    key: Vec<String>,
    region_field: Option<String>,
    fields: Vec<StandardField>,
    avsc: String,
}

impl Standard {
    /// Loads a standard from its `.avsc` text, checking the Avro schema,
    /// the backflow attributes and that every rule fits its field.
    pub fn parse(avsc: &str) -> Result<Standard, StandardError> {
        let invalid = |standard: &str, reason: String| StandardError::Invalid {
            standard: standard.to_owned(),
            reason,
        };
        let schema = Schema::parse_str(avsc)
            .map_err(|e| invalid("?", format!("not a valid Avro schema: {e}")))?;
        let Schema::Record(record) = &schema else {
            return Err(invalid("?", "the schema is not a record".to_owned()));
        };
        let name = match record.attributes.get(STANDARD_ATTRIBUTE) {
            Some(Json::String(n)) if is_avro_name(n) => n.clone(),
            _ => {
                return Err(invalid(
                    record.name.name(),
                    format!("attribute {STANDARD_ATTRIBUTE} must name the standard ([A-Za-z_][A-Za-z0-9_]*)"),
                ))
            }
        };
        let doc = record
            .doc
            .clone()
            .filter(|d| !d.trim().is_empty())
            .ok_or_else(|| invalid(&name, "the record has no doc".to_owned()))?;
        let fields = record
            .fields
            .iter()
            .map(|f| {
                standard_field(f).map_err(|reason| StandardError::Field {
                    standard: name.clone(),
                    field: f.name.clone(),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let field = |n: &str| fields.iter().find(|f| f.name == n);

        let key: Vec<String> = match record.attributes.get(KEY_ATTRIBUTE) {
            Some(Json::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| invalid(&name, format!("{KEY_ATTRIBUTE} must list field names")))?,
            _ => {
                return Err(invalid(
                    &name,
                    format!("{KEY_ATTRIBUTE} must list the key fields: events are keyed by them"),
                ))
            }
        };
        for k in &key {
            match field(k) {
                None => return Err(invalid(&name, format!("key field {k} is not a field"))),
                Some(f) if !f.required => {
                    return Err(invalid(&name, format!("key field {k} must be required")))
                }
                _ => {}
            }
        }
        let region_field = match record.attributes.get(REGION_FIELD_ATTRIBUTE) {
            None => None,
            Some(Json::String(r)) => match field(r) {
                Some(f) if f.sql_type.is_text() => Some(r.clone()),
                _ => {
                    return Err(invalid(
                        &name,
                        format!(
                            "{REGION_FIELD_ATTRIBUTE} {r} must be a text field of the standard"
                        ),
                    ))
                }
            },
            Some(_) => {
                return Err(invalid(
                    &name,
                    format!("{REGION_FIELD_ATTRIBUTE} must be a field name"),
                ))
            }
        };
        Ok(Standard {
            name,
            doc,
            key,
            region_field,
            fields,
            avsc: avsc.to_owned(),
        })
    }

    /// The standard's name (`population`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the dataset holds.
    pub fn doc(&self) -> &str {
        &self.doc
    }

    /// The fields, in row order.
    pub fn fields(&self) -> &[StandardField] {
        &self.fields
    }

    /// The field with this name and its position in a standard row.
    pub fn field(&self, name: &str) -> Option<(usize, &StandardField)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }

    /// The key fields, in key order.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// The GB/T 2260 region-code field rows are shared by, if any.
    pub fn region_field(&self) -> Option<&str> {
        self.region_field.as_deref()
    }

    /// The `.avsc` text the standard was loaded from: what the schema
    /// registry holds as the standard itself.
    pub fn avsc(&self) -> &str {
        &self.avsc
    }

    /// The table of a dataset following this standard: one column per
    /// field (a required field NOT NULL), keyed by the standard's key.
    /// `dataset` is the dataset id (`gongan.population`).
    pub fn table_desc(&self, dataset: &str) -> TableDesc {
        TableDesc {
            dataset: dataset.to_owned(),
            schema: "standard".to_owned(),
            name: self.name.clone(),
            columns: self
                .fields
                .iter()
                .map(|f| ColumnDesc::new(f.name.clone(), f.sql_type.clone(), !f.required))
                .collect(),
            primary_key: self.key.clone(),
        }
    }

    /// The Avro key schema of the dataset's change events (see
    /// [`codec::key_schema_json`]).
    pub fn key_schema_json(&self, dataset: &str) -> Json {
        codec::key_schema_json(&self.table_desc(dataset))
    }

    /// The Avro value schema of the dataset's change events: the envelope
    /// [`codec::value_schema_json`] generates for [`Standard::table_desc`],
    /// its row record carrying the standard's docs and attributes. These
    /// do not change the schema's canonical form, so events encoded by a
    /// [`TableCodec`](crate::TableCodec) of the same table decode with it.
    pub fn value_schema_json(&self, dataset: &str) -> Json {
        let mut envelope = codec::value_schema_json(&self.table_desc(dataset));
        let row = &mut envelope["fields"][0]["type"][1];
        row["doc"] = json!(self.doc);
        row[STANDARD_ATTRIBUTE] = json!(self.name);
        row[KEY_ATTRIBUTE] = json!(self.key);
        if let Some(r) = &self.region_field {
            row[REGION_FIELD_ATTRIBUTE] = json!(r);
        }
        if let Some(fields) = row["fields"].as_array_mut() {
            for (json_field, f) in fields.iter_mut().zip(&self.fields) {
                json_field["doc"] = json!(f.doc);
                json_field[REQUIRED_ATTRIBUTE] = json!(f.required);
                json_field[SENSITIVITY_ATTRIBUTE] = json!(f.sensitivity);
                if !f.rules.is_empty() {
                    json_field[RULES_ATTRIBUTE] = json!(f.rules);
                }
            }
        }
        envelope
    }
}

/// The non-null type of a field (`T` of `["null", T]`).
fn non_null(schema: &Schema) -> &Schema {
    match schema {
        Schema::Union(u) => u
            .variants()
            .iter()
            .find(|v| **v != Schema::Null)
            .unwrap_or(schema),
        s => s,
    }
}

fn standard_field(f: &apache_avro::schema::RecordField) -> Result<StandardField, String> {
    let doc = f
        .doc
        .clone()
        .filter(|d| !d.trim().is_empty())
        .ok_or("every field of a standard needs a doc")?;
    let column = crate::recover::column(f)?;
    if f.custom_attributes.contains_key(SQL_TYPE_ATTRIBUTE) {
        let declared = Schema::parse(&column.sql_type.avro()).map_err(|e| e.to_string())?;
        if declared != *non_null(&f.schema) {
            return Err(format!(
                "{SQL_TYPE_ATTRIBUTE} {} is not stored as the field's Avro type (it would be {})",
                column.sql_type,
                column.sql_type.avro()
            ));
        }
    }
    let required = !column.nullable;
    match f.custom_attributes.get(REQUIRED_ATTRIBUTE) {
        None => {}
        Some(Json::Bool(r)) if *r == required => {}
        Some(Json::Bool(_)) => {
            return Err(format!(
                "{REQUIRED_ATTRIBUTE} must match the type: true for a non-null type, false for [\"null\", T]"
            ))
        }
        Some(_) => return Err(format!("{REQUIRED_ATTRIBUTE} must be true or false")),
    }
    let sensitivity = f
        .custom_attributes
        .get(SENSITIVITY_ATTRIBUTE)
        .and_then(Json::as_str)
        .and_then(Sensitivity::parse)
        .ok_or_else(|| {
            format!("{SENSITIVITY_ATTRIBUTE} must be public, internal, sensitive or secret")
        })?;
    let mut rules: Vec<Rule> = match f.custom_attributes.get(RULES_ATTRIBUTE) {
        None => Vec::new(),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| format!("{RULES_ATTRIBUTE}: {e}"))?
        }
    };
    for r in &rules {
        if *r == Rule::Required && !required {
            return Err(
                "rule required on a field whose type allows null: make the type non-null"
                    .to_owned(),
            );
        }
        rule::compile_rule(r, &column.sql_type)?;
    }
    if let SqlType::Varchar { len: Some(n) } | SqlType::Char { len: Some(n) } = column.sql_type {
        if !rules.iter().any(|r| matches!(r, Rule::MaxLength { .. })) {
            rules.push(Rule::MaxLength { max: n });
        }
    }
    Ok(StandardField {
        name: f.name.clone(),
        doc,
        sql_type: column.sql_type,
        required,
        sensitivity,
        rules,
    })
}

/// The standards shipped with backflow, by name: `population` (人口基础信息),
/// `legal_entity` (法人) and `address_point` (标准地址).
pub fn builtin() -> &'static BTreeMap<String, Standard> {
    static BUILTIN: OnceLock<BTreeMap<String, Standard>> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        [POPULATION_AVSC, LEGAL_ENTITY_AVSC, ADDRESS_POINT_AVSC]
            .into_iter()
            .map(|avsc| {
                let s = Standard::parse(avsc).expect("shipped standards are valid");
                (s.name.clone(), s)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TableCodec;

    #[test]
    fn standard_builtin_ships_population_legal_entity_and_address_point() {
        let all = builtin();
        assert_eq!(
            all.keys().map(String::as_str).collect::<Vec<_>>(),
            ["address_point", "legal_entity", "population"]
        );
        let p = &all["population"];
        assert_eq!(p.key(), ["id_number"]);
        assert_eq!(p.region_field(), Some("household_region"));
        let names: Vec<_> = p.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id_number",
                "name",
                "gender",
                "birth_date",
                "ethnicity",
                "household_region",
                "address",
                "phone"
            ]
        );
        let (i, id) = p.field("id_number").unwrap();
        assert_eq!(i, 0);
        assert_eq!(id.sql_type, SqlType::Char { len: Some(18) });
        assert!(id.required);
        assert_eq!(id.sensitivity, Sensitivity::Secret);
        assert_eq!(id.rules, [Rule::IdNumber, Rule::MaxLength { max: 18 }]);
        let (_, ethnicity) = p.field("ethnicity").unwrap();
        assert!(!ethnicity.required);
        assert_eq!(p.field("birth_date").unwrap().1.sql_type, SqlType::Date);
        let le = &all["legal_entity"];
        assert_eq!(le.key(), ["uscc"]);
        assert_eq!(le.field("uscc").unwrap().1.rules[0], Rule::Uscc);
        let ap = &all["address_point"];
        assert_eq!(
            ap.field("longitude").unwrap().1.sql_type,
            SqlType::Decimal {
                precision: Some(10),
                scale: Some(7)
            }
        );
    }

    #[test]
    fn standard_table_and_schemas_are_what_the_registry_holds() {
        for s in builtin().values() {
            let dataset = format!("dept.{}", s.name());
            let table = s.table_desc(&dataset);
            table.validate().unwrap();
            let codec = TableCodec::new(table).unwrap();
            let value = Schema::parse(&s.value_schema_json(&dataset)).unwrap();
            // Docs and attributes leave the canonical form unchanged.
            assert_eq!(
                value.canonical_form(),
                codec.value_schema().canonical_form(),
                "{}",
                s.name()
            );
            let key = Schema::parse(&s.key_schema_json(&dataset)).unwrap();
            assert_eq!(key.canonical_form(), codec.key_schema().canonical_form());
        }
        let json = builtin()["population"].value_schema_json("gongan.population");
        let row = &json["fields"][0]["type"][1];
        assert_eq!(row[REGION_FIELD_ATTRIBUTE], "household_region");
        let id = &row["fields"][0];
        assert_eq!(id["name"], "id_number");
        assert_eq!(id[SENSITIVITY_ATTRIBUTE], "secret");
        assert_eq!(id[RULES_ATTRIBUTE][0]["rule"], "id_number");
        assert!(id["doc"].as_str().unwrap().contains("GB 11643"));
    }

    /// A one-field standard whose field JSON is `field`.
    fn with_field(field: &str) -> String {
        format!(
            r#"{{"type": "record", "name": "T", "doc": "test", "backflow.standard": "t",
                "backflow.key": ["k"],
                "fields": [{{"name": "k", "type": "string", "doc": "key", "backflow.sensitivity": "public"}}, {field}]}}"#
        )
    }

    #[test]
    fn standard_parse_refuses_incomplete_metadata_naming_the_field() {
        let cases = [
            (
                r#"{"name": "f", "type": "string", "backflow.sensitivity": "public"}"#,
                "field f: every field of a standard needs a doc",
            ),
            (
                r#"{"name": "f", "type": "string", "doc": "d"}"#,
                "field f: backflow.sensitivity must be",
            ),
            (
                r#"{"name": "f", "type": "string", "doc": "d", "backflow.sensitivity": "top"}"#,
                "backflow.sensitivity must be",
            ),
            (
                r#"{"name": "f", "type": ["null", "string"], "default": null, "doc": "d", "backflow.sensitivity": "public", "backflow.required": true}"#,
                "backflow.required must match the type",
            ),
            (
                r#"{"name": "f", "type": "string", "doc": "d", "backflow.sensitivity": "public", "backflow.sql_type": "date"}"#,
                "is not stored as the field's Avro type",
            ),
            (
                r#"{"name": "f", "type": "long", "doc": "d", "backflow.sensitivity": "public", "backflow.rules": ["id_number"]}"#,
                "rule id_number applies to text fields, this one is bigint",
            ),
            (
                r#"{"name": "f", "type": "string", "doc": "d", "backflow.sensitivity": "public", "backflow.rules": ["checksum"]}"#,
                "backflow.rules: unknown variant `checksum`",
            ),
            (
                r#"{"name": "f", "type": ["null", "string"], "default": null, "doc": "d", "backflow.sensitivity": "public", "backflow.rules": ["required"]}"#,
                "make the type non-null",
            ),
        ];
        for (field, needle) in cases {
            let err = Standard::parse(&with_field(field)).unwrap_err().to_string();
            assert!(err.contains(needle), "{field}\n => {err}");
        }
        let ok = Standard::parse(&with_field(
            r#"{"name": "f", "type": "string", "doc": "d", "backflow.sensitivity": "internal"}"#,
        ))
        .unwrap();
        assert_eq!(ok.fields()[1].sql_type, SqlType::Text);
        assert_eq!(ok.region_field(), None);
        for (avsc, needle) in [
            (r#"{"type": "string"}"#.to_owned(), "not a record"),
            ("{".to_owned(), "not a valid Avro schema"),
            (
                with_field("")
                    .replace(", ]", "]")
                    .replace("\"backflow.key\": [\"k\"],", ""),
                "backflow.key must list",
            ),
            (
                with_field("")
                    .replace(", ]", "]")
                    .replace("[\"k\"]", "[\"x\"]"),
                "key field x is not a field",
            ),
            (
                with_field("")
                    .replace(", ]", "]")
                    .replace("\"backflow.standard\": \"t\",", ""),
                "backflow.standard must name",
            ),
            (
                with_field("")
                    .replace(", ]", "]")
                    .replace("\"doc\": \"test\",", ""),
                "the record has no doc",
            ),
            (
                with_field("").replace(", ]", "]").replace(
                    "\"backflow.key\"",
                    "\"backflow.region_field\": \"nope\", \"backflow.key\"",
                ),
                "backflow.region_field nope must be a text field",
            ),
        ] {
            let err = Standard::parse(&avsc).unwrap_err().to_string();
            assert!(err.contains(needle), "{avsc}\n => {err}");
        }
    }
}
