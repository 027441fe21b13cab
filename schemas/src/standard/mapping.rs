//! A feed's mapping from its department's source table into a standard.
//!
//! Each standard field takes its value from exactly one of
//! - `from`: a source column, optionally through a code table (`codes`, with
//!   `default` for codes not listed) and a `cast`;
//! - `value`: a constant;
//! - `expr`: a small text derivation (see [`super::expr`]), optionally
//!   through `codes` and `cast` as well.
//!
//! Fields not mapped are NULL; a required field must be mapped. Casts:
//! `"trim"` (text without surrounding whitespace), `"text"` (any value's
//! text form), `"integer"` and `"decimal"` (from numeric text, exact, never
//! rounded), and `{ date = ["%Y%m%d", "%Y-%m-%d"] }` (text or integer dates,
//! formats tried in order). Code tables are matched on the value's text
//! form without surrounding whitespace (CHAR columns come padded); a NULL
//! stays NULL. Without `cast`, a value is converted to the field's type
//! only where nothing can be lost or misread (integer to a wider integer or
//! a decimal, text to text, date to date, ...): anything else must be cast
//! explicitly, and [`Mapping::compile`] says which cast to add.
//!
//! ```toml
//! standard = "population"
//!
//! [fields.id_number]
//! from = "身份证号"
//! cast = "trim"
//!
//! [fields.name]
//! from = "姓名"
//!
//! [fields.gender]
//! from = "性别"
//! codes = { "男" = "1", "M" = "1", "女" = "2", "F" = "2" }
//! default = "9"
//!
//! [fields.birth_date]
//! from = "出生日期"
//! cast = { date = ["%Y%m%d", "%Y-%m-%d"] }
//!
//! [fields.household_region]
//! expr = "substr(户籍地址代码, 1, 6)"
//!
//! [fields.ethnicity]
//! value = "01"
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::date::{self, DateFormat};
use super::expr::{has_text_form, text_of, Expr};
use super::rule::{DatasetRules, Validator, Violation, RULE_CAST, RULE_CODE, RULE_ROW_SHAPE};
use super::Standard;
use crate::datum::{Datum, Decimal, Row};
use crate::table::TableDesc;
use crate::types::SqlType;

/// How a feed turns rows of its source table into rows of a standard.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The standard the mapping is written for; checked by
    /// [`Mapping::compile`] when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard: Option<String>,
    /// Where each standard field's value comes from, by standard field name.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldMapping>,
}

/// Where one standard field's value comes from: exactly one of `from`,
/// `value` and `expr`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// A source column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Constant>,
    /// A text derivation from source columns (see [`super::expr`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// Code table: source code → standard code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<BTreeMap<String, String>>,
    /// Standard code for source codes missing from `codes`; without it such
    /// a row is refused (rule `code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Conversion applied after the code table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cast: Option<Cast>,
}

/// A constant of a mapping, converted to its field's type when compiled
/// (dates as `YYYY-MM-DD`, decimals as text or numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Constant {
    /// `true`/`false`.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A floating-point number.
    Float(f64),
    /// Text.
    Text(String),
}

/// A conversion of a mapped value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Cast {
    /// Text without surrounding whitespace.
    Trim,
    /// The value's text form (digits of a number, `YYYY-MM-DD` of a date).
    Text,
    /// An integer from its digits (surrounding whitespace ignored).
    Integer,
    /// An exact decimal at the field's scale from decimal text or a number;
    /// more fractional digits than the scale is refused, never rounded.
    Decimal,
    /// A date from text (or an integer such as `19900307`) in one of these
    /// formats, tried in order (see [`DateFormat`]).
    Date(Vec<String>),
}

impl Cast {
    fn name(&self) -> &'static str {
        match self {
            Cast::Trim => "trim",
            Cast::Text => "text",
            Cast::Integer => "integer",
            Cast::Decimal => "decimal",
            Cast::Date(_) => "date",
        }
    }
}

/// Why a mapping cannot be registered. Each names the standard field and,
/// where one is at fault, the source column, cast or code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The mapping declares another standard.
    #[error("the mapping is written for standard {declared}, not {standard}")]
    WrongStandard {
        /// Standard named in the mapping.
        declared: String,
        /// Standard it was compiled against.
        standard: String,
    },
    /// A mapped field the standard does not have.
    #[error("field {field}: standard {standard} has no such field (its fields: {known})")]
    UnknownField {
        /// Standard name.
        standard: String,
        /// The field.
        field: String,
        /// The standard's fields, comma-separated.
        known: String,
    },
    /// A source column that is not in the source table.
    #[error("field {field}: source column {column} is not a column of table {table}")]
    MissingColumn {
        /// Standard field.
        field: String,
        /// Column named.
        column: String,
        /// `schema.table` of the source.
        table: String,
    },
    /// A value that cannot become the field's type as mapped.
    #[error("field {field}: {reason}")]
    Cast {
        /// Standard field.
        field: String,
        /// What cannot be converted, and the cast to add.
        reason: String,
    },
    /// A code-table entry (or default) the standard refuses.
    #[error("field {field}: code {code:?} maps to a value the standard refuses: {reason}")]
    BadCode {
        /// Standard field.
        field: String,
        /// The source code (`default` for the default).
        code: String,
        /// Why.
        reason: String,
    },
    /// A field mapping that is not well formed (no source or several, a bad
    /// expression, format or constant, ...).
    #[error("field {field}: {reason}")]
    Invalid {
        /// Standard field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A required field the mapping does not produce.
    #[error("field {field} is required by standard {standard} but the mapping does not produce it: map it with from, value or expr")]
    RequiredNotProduced {
        /// Standard name.
        standard: String,
        /// The field.
        field: String,
    },
}

#[derive(Debug, Clone)]
enum Input {
    Null,
    Column(usize),
    Constant(Datum),
    Expr(Expr),
}

#[derive(Debug, Clone)]
enum Step {
    Trim,
    Text,
    Integer,
    Decimal,
    Date(Vec<DateFormat>),
}

#[derive(Debug, Clone)]
struct CodeTable {
    codes: HashMap<String, String>,
    default: Option<String>,
}

#[derive(Debug, Clone)]
struct FieldPlan {
    name: String,
    input: Input,
    codes: Option<CodeTable>,
    cast: Option<Step>,
    target: SqlType,
}

/// A mapping checked against its source table and standard, ready to apply
/// to source rows.
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    standard: String,
    source_columns: usize,
    fields: Vec<FieldPlan>,
}

/// Whether a value of type `from` converts to `to` without a cast.
fn fits(from: &SqlType, to: &SqlType) -> bool {
    if std::mem::discriminant(from) == std::mem::discriminant(to) {
        return true;
    }
    match from {
        f if f.is_text() || *f == SqlType::Json => to.is_text(),
        f if f.is_integer() => {
            to.is_integer() || matches!(to, SqlType::Decimal { .. } | SqlType::Double)
        }
        SqlType::Real => *to == SqlType::Double,
        _ => false,
    }
}

/// The cast that would turn `from` into `to`, for error messages.
fn cast_hint(to: &SqlType) -> &'static str {
    match to {
        SqlType::Date => "add cast = { date = [\"%Y%m%d\"] } with the source's date formats",
        SqlType::Decimal { .. } => "add cast = \"decimal\"",
        t if t.is_integer() => "add cast = \"integer\"",
        t if t.is_text() => "add cast = \"text\"",
        _ => "map a column of a compatible type",
    }
}

impl Mapping {
    /// Checks the mapping against the source table and the standard and
    /// prepares it. Refuses, naming the standard field: fields the standard
    /// lacks, source columns the table lacks, casts that cannot apply,
    /// code-table entries and constants the standard's rules refuse, and
    /// required fields left unmapped.
    pub fn compile(
        &self,
        source: &TableDesc,
        standard: &Standard,
    ) -> Result<CompiledMapping, MappingError> {
        if let Some(declared) = &self.standard {
            if declared != standard.name() {
                return Err(MappingError::WrongStandard {
                    declared: declared.clone(),
                    standard: standard.name().to_owned(),
                });
            }
        }
        if let Some(field) = self.fields.keys().find(|f| standard.field(f).is_none()) {
            return Err(MappingError::UnknownField {
                standard: standard.name().to_owned(),
                field: field.clone(),
                known: standard
                    .fields()
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // Checks code-table entries and constants against the standard's
        // own rules.
        let validator =
            Validator::new(standard, &DatasetRules::new()).map_err(|e| MappingError::Invalid {
                field: String::new(),
                reason: e.to_string(),
            })?;
        let mut fields = Vec::with_capacity(standard.fields().len());
        for (index, f) in standard.fields().iter().enumerate() {
            let plan = match self.fields.get(&f.name) {
                Some(m) => compile_field(&f.name, index, &f.sql_type, m, source, &validator)?,
                None if f.required => {
                    return Err(MappingError::RequiredNotProduced {
                        standard: standard.name().to_owned(),
                        field: f.name.clone(),
                    })
                }
                None => FieldPlan {
                    name: f.name.clone(),
                    input: Input::Null,
                    codes: None,
                    cast: None,
                    target: f.sql_type.clone(),
                },
            };
            fields.push(plan);
        }
        Ok(CompiledMapping {
            standard: standard.name().to_owned(),
            source_columns: source.columns.len(),
            fields,
        })
    }
}

fn compile_field(
    field: &str,
    index: usize,
    target: &SqlType,
    m: &FieldMapping,
    source: &TableDesc,
    validator: &Validator,
) -> Result<FieldPlan, MappingError> {
    let invalid = |reason: String| MappingError::Invalid {
        field: field.to_owned(),
        reason,
    };
    let cast_err = |reason: String| MappingError::Cast {
        field: field.to_owned(),
        reason,
    };
    let sources = [m.from.is_some(), m.value.is_some(), m.expr.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if sources != 1 {
        return Err(invalid(format!(
            "give exactly one of from, value and expr (it has {sources})"
        )));
    }
    if m.default.is_some() && m.codes.is_none() {
        return Err(invalid(
            "default is the code for codes missing from `codes`, which is not given".to_owned(),
        ));
    }
    let resolve = |name: &str| -> Result<(usize, SqlType), MappingError> {
        source
            .column(name)
            .map(|(i, c)| (i, c.sql_type.clone()))
            .ok_or_else(|| MappingError::MissingColumn {
                field: field.to_owned(),
                column: name.to_owned(),
                table: source.qualified_name(),
            })
    };

    // The input and its static type.
    let (input, mut kind) = if let Some(constant) = &m.value {
        if m.codes.is_some() || m.cast.is_some() {
            return Err(invalid(
                "a constant value takes no codes or cast: write it in the field's form".to_owned(),
            ));
        }
        let datum =
            constant_datum(constant, target).map_err(|r| invalid(format!("constant: {r}")))?;
        if let Some(v) = validator.check_value(index, &datum).first() {
            return Err(invalid(format!(
                "the constant breaks rule {}: {}",
                v.rule, v.reason
            )));
        }
        (Input::Constant(datum), target.clone())
    } else if let Some(column) = &m.from {
        let (i, t) = resolve(column)?;
        (Input::Column(i), t)
    } else {
        let text = m.expr.as_deref().unwrap_or_default();
        let resolve_text = |name: &str| -> Result<usize, String> {
            let (i, t) = resolve(name).map_err(|e| match e {
                MappingError::MissingColumn { column, table, .. } => {
                    format!("column {column} is not a column of table {table}")
                }
                other => other.to_string(),
            })?;
            if has_text_form(&t) {
                Ok(i)
            } else {
                Err(format!(
                    "column {name} of type {t} has no text form to use in an expression"
                ))
            }
        };
        let expr = Expr::parse(text, &resolve_text).map_err(|r| invalid(format!("expr: {r}")))?;
        (Input::Expr(expr), SqlType::Text)
    };

    let codes = match &m.codes {
        None => None,
        Some(codes) => {
            if !has_text_form(&kind) {
                return Err(cast_err(format!(
                    "a code table needs text or numeric codes, the source is {kind}"
                )));
            }
            if codes.is_empty() {
                return Err(invalid("the code table is empty".to_owned()));
            }
            let mut trimmed = HashMap::with_capacity(codes.len());
            for (from, to) in codes {
                if trimmed.insert(from.trim().to_owned(), to.clone()).is_some() {
                    return Err(invalid(format!(
                        "codes: {from:?} is listed twice once surrounding whitespace is removed"
                    )));
                }
            }
            kind = SqlType::Text;
            Some(CodeTable {
                codes: trimmed,
                default: m.default.clone(),
            })
        }
    };

    let cast = match &m.cast {
        None => None,
        Some(cast) => {
            let refuse = |what: &str| {
                cast_err(format!(
                    "cast {} applies to {what}, the value is {kind}",
                    cast.name()
                ))
            };
            let (step, out) = match cast {
                Cast::Trim if kind.is_text() || kind == SqlType::Json => {
                    (Step::Trim, SqlType::Text)
                }
                Cast::Trim => return Err(refuse("text")),
                Cast::Text if has_text_form(&kind) => (Step::Text, SqlType::Text),
                Cast::Text => return Err(refuse("values with a text form")),
                Cast::Integer if kind.is_text() || kind.is_integer() => {
                    (Step::Integer, SqlType::BigInt)
                }
                Cast::Integer => return Err(refuse("text or integers")),
                Cast::Decimal => {
                    if !matches!(target, SqlType::Decimal { .. }) {
                        return Err(cast_err(format!(
                            "cast decimal needs a decimal field, this one is {target}"
                        )));
                    }
                    if !(kind.is_text()
                        || kind.is_integer()
                        || matches!(kind, SqlType::Decimal { .. }))
                    {
                        return Err(refuse("text, integers or decimals"));
                    }
                    (Step::Decimal, target.clone())
                }
                Cast::Date(formats) => {
                    if !(kind.is_text() || kind.is_integer() || kind == SqlType::Date) {
                        return Err(refuse("text, integers or dates"));
                    }
                    if formats.is_empty() {
                        return Err(invalid(
                            "cast date: give at least one format, e.g. \"%Y%m%d\"".to_owned(),
                        ));
                    }
                    let parsed = formats
                        .iter()
                        .map(|f| DateFormat::parse(f))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|r| invalid(format!("cast date: {r}")))?;
                    (Step::Date(parsed), SqlType::Date)
                }
            };
            kind = out;
            Some(step)
        }
    };

    if !fits(&kind, target) {
        let from = match (&m.from, &m.cast, &m.codes) {
            (_, Some(c), _) => format!("the result of cast {}", c.name()),
            (_, None, Some(_)) => "a code (text)".to_owned(),
            (Some(column), None, None) => format!("source column {column} ({kind})"),
            _ => "the expression's text".to_owned(),
        };
        return Err(cast_err(format!(
            "cannot turn {from} into the field's type {target}: {}",
            cast_hint(target)
        )));
    }

    let plan = FieldPlan {
        name: field.to_owned(),
        input,
        codes,
        cast,
        target: target.clone(),
    };
    // Every standard code the table can produce must meet the standard.
    if let Some(table) = &plan.codes {
        let entries = table
            .codes
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(table.default.iter().map(|d| ("default", d)));
        for (code, to) in entries {
            let reason = match plan.finish(Datum::Text(to.clone())) {
                Err(v) => Some(v.reason),
                Ok(datum) => validator
                    .check_value(index, &datum)
                    .into_iter()
                    .next()
                    .map(|v| format!("rule {}: {}", v.rule, v.reason)),
            };
            if let Some(reason) = reason {
                return Err(MappingError::BadCode {
                    field: field.to_owned(),
                    code: code.to_owned(),
                    reason,
                });
            }
        }
    }
    Ok(plan)
}

/// A constant as a value of the field's type.
fn constant_datum(c: &Constant, target: &SqlType) -> Result<Datum, String> {
    let wrong = || format!("{c:?} is not a value of type {target}");
    Ok(match (c, target) {
        (Constant::Text(s), t) if t.is_text() => Datum::Text(s.clone()),
        (Constant::Integer(v), t) if t.is_text() => Datum::Text(v.to_string()),
        (Constant::Text(s), SqlType::Json) => Datum::Json(s.clone()),
        (Constant::Text(s), SqlType::Date) => Datum::Date(
            date::parse_iso_date(s).ok_or_else(|| format!("{s:?} is not a YYYY-MM-DD date"))?,
        ),
        (Constant::Text(s), SqlType::Uuid) => Datum::Uuid(s.parse().map_err(|_| wrong())?),
        (Constant::Text(s), t @ SqlType::Decimal { .. }) => fit_value(Datum::Text(s.clone()), t)?,
        (Constant::Float(v), t @ SqlType::Decimal { .. }) => {
            fit_value(Datum::Text(v.to_string()), t)?
        }
        (Constant::Integer(v), t) => fit_value(Datum::Long(*v), t).map_err(|_| wrong())?,
        (Constant::Float(v), SqlType::Double) => Datum::Double(*v),
        (Constant::Float(v), SqlType::Real) => Datum::Float(*v as f32),
        (Constant::Bool(b), SqlType::Boolean) => Datum::Bool(*b),
        _ => return Err(wrong()),
    })
}

/// Converts a value to the form of type `target`. Text becomes a decimal
/// only after `cast = "decimal"` or from an unconstrained numeric column
/// (which travels as its exact text): [`fits`] refuses the rest when the
/// mapping is compiled. The error says why without the value.
fn fit_value(value: Datum, target: &SqlType) -> Result<Datum, String> {
    let out_of_range = || format!("out of the range of {target}");
    Ok(match (value, target) {
        (Datum::Null, _) => Datum::Null,
        (Datum::Text(s) | Datum::Json(s), t) if t.is_text() => Datum::Text(s),
        (Datum::Int(v), SqlType::SmallInt) => {
            Datum::Int(i16::try_from(v).map_err(|_| out_of_range())?.into())
        }
        (Datum::Long(v), SqlType::SmallInt) => {
            Datum::Int(i16::try_from(v).map_err(|_| out_of_range())?.into())
        }
        (Datum::Int(v), SqlType::Int) => Datum::Int(v),
        (Datum::Long(v), SqlType::Int) => Datum::Int(i32::try_from(v).map_err(|_| out_of_range())?),
        (Datum::Int(v), SqlType::BigInt) => Datum::Long(v.into()),
        (Datum::Long(v), SqlType::BigInt) => Datum::Long(v),
        (Datum::Int(v), SqlType::Double) => Datum::Double(v.into()),
        (Datum::Long(v), SqlType::Double) => {
            if v.unsigned_abs() > 1 << 53 {
                return Err(format!("too large to be exact as {target}"));
            }
            Datum::Double(v as f64)
        }
        (Datum::Float(v), SqlType::Real) => Datum::Float(v),
        (Datum::Float(v), SqlType::Double) => Datum::Double(v.into()),
        (Datum::Double(v), SqlType::Double) => Datum::Double(v),
        (
            v @ (Datum::Int(_) | Datum::Long(_) | Datum::Decimal(_) | Datum::Text(_)),
            SqlType::Decimal { precision, scale },
        ) => {
            let text = text_of(&v).map(|t| t.into_owned()).unwrap_or_default();
            match precision {
                None => {
                    let frac = text.trim().split_once('.').map_or(0, |(_, f)| f.len()) as u32;
                    Decimal::parse(&text, frac).map_err(|_| "not a decimal number".to_owned())?;
                    Datum::Text(text.trim().to_owned())
                }
                Some(p) => {
                    let s = scale.unwrap_or(0);
                    let d = Decimal::parse(&text, s).map_err(|_| {
                        format!("not a decimal number with at most {s} fractional digits")
                    })?;
                    if d.digits() > *p {
                        return Err(format!("more digits than the precision {p} of the field"));
                    }
                    Datum::Decimal(d)
                }
            }
        }
        (Datum::Bool(b), SqlType::Boolean) => Datum::Bool(b),
        (Datum::Bytes(b), SqlType::Bytes) => Datum::Bytes(b),
        (Datum::Date(d), SqlType::Date) => Datum::Date(d),
        (Datum::Time(t), SqlType::Time) => Datum::Time(t),
        (Datum::Timestamp(t), SqlType::Timestamp) => Datum::Timestamp(t),
        (Datum::TimestampTz(t), SqlType::TimestampTz) => Datum::TimestampTz(t),
        (Datum::Uuid(u), SqlType::Uuid) => Datum::Uuid(u),
        (Datum::Json(j), SqlType::Json) => Datum::Json(j),
        (v, t) => return Err(format!("a {} value does not fit type {t}", v.kind())),
    })
}

impl FieldPlan {
    /// The value after the code table: cast, then fit to the field's type.
    fn finish(&self, value: Datum) -> Result<Datum, Violation> {
        let cast_violation = |reason: String| Violation::new(&self.name, RULE_CAST, reason);
        let value = match (&self.cast, value) {
            (_, Datum::Null) => Datum::Null,
            (None, v) => v,
            (Some(Step::Trim), Datum::Text(s) | Datum::Json(s)) => Datum::Text(s.trim().to_owned()),
            (Some(Step::Text), v) => Datum::Text(
                text_of(&v)
                    .ok_or_else(|| {
                        cast_violation(format!("a {} value has no text form", v.kind()))
                    })?
                    .into_owned(),
            ),
            (Some(Step::Integer), v @ (Datum::Int(_) | Datum::Long(_))) => v,
            (Some(Step::Integer), Datum::Text(s)) => Datum::Long(
                s.trim()
                    .parse()
                    .map_err(|_| cast_violation("not an integer".to_owned()))?,
            ),
            (Some(Step::Decimal), v) => return fit_value(v, &self.target).map_err(cast_violation),
            (Some(Step::Date(_)), Datum::Date(d)) => Datum::Date(d),
            (Some(Step::Date(formats)), v @ (Datum::Text(_) | Datum::Int(_) | Datum::Long(_))) => {
                let text = text_of(&v).unwrap_or_default();
                Datum::Date(
                    formats
                        .iter()
                        .find_map(|f| f.parse_date(&text))
                        .ok_or_else(|| {
                            cast_violation(format!(
                                "not a date in the format{} {}",
                                if formats.len() > 1 { "s" } else { "" },
                                formats
                                    .iter()
                                    .map(DateFormat::as_str)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        })?,
                )
            }
            (Some(_), v) => {
                return Err(cast_violation(format!(
                    "a {} value cannot be cast",
                    v.kind()
                )))
            }
        };
        fit_value(value, &self.target).map_err(cast_violation)
    }

    fn map(&self, row: &Row) -> Result<Datum, Violation> {
        let value = match &self.input {
            Input::Null => return Ok(Datum::Null),
            Input::Constant(d) => return Ok(d.clone()),
            Input::Column(i) => row.0.get(*i).cloned().unwrap_or(Datum::Null),
            Input::Expr(e) => e.eval(row).map_or(Datum::Null, Datum::Text),
        };
        let value = match (&self.codes, value) {
            (None, v) | (Some(_), v @ Datum::Null) => v,
            (Some(table), v) => {
                let key = text_of(&v).ok_or_else(|| {
                    Violation::new(
                        &self.name,
                        RULE_CODE,
                        format!("a {} value is no code", v.kind()),
                    )
                })?;
                match table.codes.get(key.trim()).or(table.default.as_ref()) {
                    Some(code) => Datum::Text(code.clone()),
                    None => {
                        return Err(Violation::new(
                            &self.name,
                            RULE_CODE,
                            "the source code is not in the code table and there is no default",
                        ))
                    }
                }
            }
        };
        self.finish(value)
    }
}

impl CompiledMapping {
    /// The standard it maps into.
    pub fn standard(&self) -> &str {
        &self.standard
    }

    /// The standard row (in the standard's field order) for a source row (in
    /// the source table's column order), or every field that could not be
    /// produced: rule `cast`, `code` or `expr`. It does not check the
    /// standard's rules: see [`CompiledMapping::conform`].
    pub fn apply(&self, row: &Row) -> Result<Row, Vec<Violation>> {
        let (row, violations) = self.map_row(row);
        if violations.is_empty() {
            Ok(row)
        } else {
            Err(violations)
        }
    }

    /// [`CompiledMapping::apply`] then [`Validator::check`]: the standard
    /// row, or every violation of either (a field that could not be
    /// produced is not reported again as missing).
    pub fn conform(&self, row: &Row, validator: &Validator) -> Result<Row, Vec<Violation>> {
        let (row, mut violations) = self.map_row(row);
        if violations.first().is_some_and(|v| v.rule == RULE_ROW_SHAPE) {
            return Err(violations);
        }
        let failed: BTreeSet<String> = violations.iter().map(|v| v.field.clone()).collect();
        violations.extend(
            validator
                .check(&row)
                .into_iter()
                .filter(|v| !failed.contains(&v.field)),
        );
        if violations.is_empty() {
            Ok(row)
        } else {
            Err(violations)
        }
    }

    /// The standard row, with NULL where a field could not be produced,
    /// and the violations.
    fn map_row(&self, row: &Row) -> (Row, Vec<Violation>) {
        if row.0.len() != self.source_columns {
            return (
                Row::default(),
                vec![Violation::new(
                    "",
                    RULE_ROW_SHAPE,
                    format!(
                        "{} values for {} source columns",
                        row.0.len(),
                        self.source_columns
                    ),
                )],
            );
        }
        let mut violations = Vec::new();
        let values = self
            .fields
            .iter()
            .map(|f| {
                f.map(row).unwrap_or_else(|v| {
                    violations.push(v);
                    Datum::Null
                })
            })
            .collect();
        (Row(values), violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standard::builtin;
    use crate::table::ColumnDesc;

    /// A market-supervision bureau's register of companies.
    fn companies() -> TableDesc {
        let c = ColumnDesc::new;
        TableDesc {
            dataset: "scjg.legal_entity".into(),
            schema: "reg".into(),
            name: "qydj".into(),
            columns: vec![
                c("tyshxydm", SqlType::Char { len: Some(18) }, false),
                c("qymc", SqlType::Varchar { len: Some(200) }, false),
                c("qylx", SqlType::Varchar { len: Some(8) }, true),
                c("fddbr", SqlType::Varchar { len: Some(64) }, true),
                c("djjg", SqlType::Char { len: Some(6) }, false),
                c("djzt", SqlType::SmallInt, true),
                c("clrq", SqlType::Int, true),
                c("zczb", SqlType::Varchar { len: Some(30) }, true),
                c(
                    "zczb_num",
                    SqlType::Decimal {
                        precision: Some(18),
                        scale: Some(2),
                    },
                    true,
                ),
                c("photo", SqlType::Bytes, true),
                c("updated", SqlType::TimestampTz, true),
            ],
            primary_key: vec!["tyshxydm".into()],
        }
    }

    fn mapping(toml_text: &str) -> Mapping {
        toml::from_str(toml_text).unwrap()
    }

    const BASE: &str = r#"
        standard = "legal_entity"
        [fields.uscc]
        from = "tyshxydm"
        [fields.name]
        from = "qymc"
        [fields.entity_type]
        from = "qylx"
        [fields.legal_representative]
        from = "fddbr"
        [fields.registered_region]
        from = "djjg"
        [fields.status]
        from = "djzt"
        codes = { "1" = "1", "2" = "2", "3" = "3", "4" = "4" }
        default = "9"
        [fields.established_date]
        from = "clrq"
        cast = { date = ["%Y%m%d"] }
        [fields.registered_capital]
        from = "zczb"
        cast = "decimal"
    "#;

    fn compile(extra: &str) -> Result<CompiledMapping, MappingError> {
        let mut m = mapping(BASE);
        let extra = mapping(extra);
        m.fields.extend(extra.fields);
        m.compile(&companies(), &builtin()["legal_entity"])
    }

    fn company(status: i32, established: Datum, capital: &str) -> Row {
        Row(vec![
            Datum::Text("91330100716105852F".into()),
            Datum::Text("示例网络技术有限公司".into()),
            Datum::Text("1100".into()),
            Datum::Text("李四".into()),
            Datum::Text("330100".into()),
            Datum::Int(status),
            established,
            Datum::Text(capital.into()),
            Datum::Decimal(Decimal::parse("12.5", 2).unwrap()),
            Datum::Null,
            Datum::Null,
        ])
    }

    #[test]
    fn mapping_casts_integers_dates_and_decimal_text() {
        let compiled = compile("").unwrap();
        let row = compiled
            .apply(&company(3, Datum::Int(19_990_909), " 5000.25 "))
            .unwrap();
        assert_eq!(row.0[5], Datum::Text("3".into()));
        assert_eq!(
            row.0[6],
            Datum::Date(date::days_from_ymd(1999, 9, 9).unwrap())
        );
        assert_eq!(
            row.0[7],
            Datum::Decimal(Decimal::parse("5000.25", 6).unwrap())
        );
        assert_eq!(row.0[8], Datum::Null, "address is not mapped");
        // An unknown status takes the default; NULL stays NULL.
        let row = compiled.apply(&company(7, Datum::Null, "1")).unwrap();
        assert_eq!(row.0[5], Datum::Text("9".into()));
        assert_eq!(row.0[6], Datum::Null);
    }

    #[test]
    fn mapping_apply_names_what_it_cannot_convert() {
        let compiled = compile("").unwrap();
        let violations = compiled
            .apply(&company(1, Datum::Int(19_990_230), "1.0000001"))
            .unwrap_err();
        let got: Vec<_> = violations
            .iter()
            .map(|v| (v.field.as_str(), v.rule.as_str(), v.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "established_date",
                    "cast",
                    "not a date in the format %Y%m%d"
                ),
                (
                    "registered_capital",
                    "cast",
                    "not a decimal number with at most 6 fractional digits"
                ),
            ]
        );
        let short = Row(vec![Datum::Null]);
        assert_eq!(compiled.apply(&short).unwrap_err()[0].rule, "row_shape");
    }

    #[test]
    fn mapping_converts_without_cast_only_where_nothing_is_lost() {
        // A decimal column into a decimal field, rescaled exactly.
        let compiled = compile("[fields.registered_capital]\nfrom = \"zczb_num\"").unwrap();
        let row = compiled.apply(&company(1, Datum::Null, "")).unwrap();
        assert_eq!(row.0[7], Datum::Decimal(Decimal::parse("12.5", 6).unwrap()));
        // Text into a decimal field needs a cast, and the error says which.
        let err = compile("[fields.registered_capital]\nfrom = \"zczb\"").unwrap_err();
        assert!(
            matches!(&err, MappingError::Cast { field, .. } if field == "registered_capital"),
            "{err}"
        );
        assert!(
            err.to_string().contains("source column zczb (varchar(30))"),
            "{err}"
        );
        assert!(err.to_string().contains("cast = \"decimal\""), "{err}");
        let err = compile("[fields.established_date]\nfrom = \"clrq\"").unwrap_err();
        assert!(err.to_string().contains("cast = { date = ["), "{err}");
        let err = compile("[fields.status]\nfrom = \"djzt\"").unwrap_err();
        assert!(err.to_string().contains("cast = \"text\""), "{err}");
        // With cast = "text" the status integer becomes its digits.
        let compiled = compile("[fields.status]\nfrom = \"djzt\"\ncast = \"text\"").unwrap();
        let status = builtin()["legal_entity"].field("status").unwrap().0;
        let row = compiled
            .apply(&company(7, Datum::Int(19_990_909), "5000.25"))
            .unwrap();
        assert_eq!(row.0[status], Datum::Text("7".into()));
    }

    #[test]
    fn mapping_compile_refuses_with_the_field_and_reason() {
        let cases = [
            (
                "[fields.capital]\nvalue = 1",
                "field capital: standard legal_entity has no such field",
            ),
            (
                "[fields.name]\nfrom = \"mc\"",
                "field name: source column mc is not a column of table reg.qydj",
            ),
            (
                "[fields.name]\nfrom = \"qymc\"\nvalue = \"x\"",
                "exactly one of from, value and expr (it has 2)",
            ),
            (
                "[fields.name]\ncast = \"trim\"",
                "exactly one of from, value and expr (it has 0)",
            ),
            ("[fields.name]\nfrom = \"qymc\"\ndefault = \"x\"", "codes"),
            (
                "[fields.name]\nfrom = \"photo\"\ncast = \"text\"",
                "cast text applies to values with a text form, the value is bytea",
            ),
            (
                "[fields.name]\nfrom = \"updated\"\ncodes = { a = \"b\" }",
                "code table needs text or numeric codes",
            ),
            (
                "[fields.name]\nfrom = \"qymc\"\ncast = \"decimal\"",
                "cast decimal needs a decimal field",
            ),
            (
                "[fields.established_date]\nfrom = \"clrq\"\ncast = { date = [\"%Y%q\"] }",
                "%q is not supported",
            ),
            (
                "[fields.established_date]\nfrom = \"clrq\"\ncast = { date = [] }",
                "at least one format",
            ),
            (
                "[fields.established_date]\nfrom = \"photo\"\ncast = { date = [\"%Y%m%d\"] }",
                "cast date applies to text, integers or dates",
            ),
            (
                "[fields.status]\nfrom = \"djzt\"\ncodes = { \"1\" = \"1\", \"2\" = \"5\" }",
                "code \"2\" maps to a value the standard refuses: rule allowed_values",
            ),
            (
                "[fields.status]\nfrom = \"djzt\"\ncodes = { \"1\" = \"1\" }\ndefault = \"0\"",
                "code \"default\" maps to a value",
            ),
            (
                "[fields.status]\nfrom = \"djzt\"\ncodes = { \"1\" = \"1\", \" 1\" = \"2\" }",
                "listed twice",
            ),
            (
                "[fields.status]\nvalue = \"7\"",
                "the constant breaks rule allowed_values",
            ),
            (
                "[fields.established_date]\nvalue = \"1999/09/09\"",
                "not a YYYY-MM-DD date",
            ),
            (
                "[fields.registered_capital]\nvalue = 1.5\ncast = \"decimal\"",
                "takes no codes or cast",
            ),
            (
                "[fields.address]\nexpr = \"concat(qymc, dz)\"",
                "expr: column dz is not a column of table reg.qydj",
            ),
            (
                "[fields.address]\nexpr = \"upper(photo)\"",
                "column photo of type bytea has no text form",
            ),
        ];
        for (extra, needle) in cases {
            let err = compile(extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}\n => {err}");
        }
        let mut wrong = mapping(BASE);
        wrong.standard = Some("population".into());
        let err = wrong
            .compile(&companies(), &builtin()["legal_entity"])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the mapping is written for standard population, not legal_entity"
        );
        let mut missing = mapping(BASE);
        missing.fields.remove("uscc");
        let err = missing
            .compile(&companies(), &builtin()["legal_entity"])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field uscc is required by standard legal_entity but the mapping does not produce it: map it with from, value or expr"
        );
    }

    #[test]
    fn mapping_constants_take_the_field_type() {
        let compiled = compile(
            r#"
            [fields.established_date]
            value = "1999-09-09"
            [fields.registered_capital]
            value = 100.5
            [fields.address]
            value = "浙江省杭州市"
            "#,
        )
        .unwrap();
        let row = compiled.apply(&company(1, Datum::Null, "")).unwrap();
        assert_eq!(
            row.0[6],
            Datum::Date(date::days_from_ymd(1999, 9, 9).unwrap())
        );
        assert_eq!(
            row.0[7],
            Datum::Decimal(Decimal::parse("100.5", 6).unwrap())
        );
        assert_eq!(row.0[8], Datum::Text("浙江省杭州市".into()));
    }

    #[test]
    fn mapping_fits_values_to_the_field_type_exactly() {
        let dec = |p, s| SqlType::Decimal {
            precision: Some(p),
            scale: Some(s),
        };
        assert_eq!(fit_value(Datum::Long(7), &SqlType::Int), Ok(Datum::Int(7)));
        assert!(fit_value(Datum::Long(1 << 40), &SqlType::Int).is_err());
        assert!(fit_value(Datum::Int(40_000), &SqlType::SmallInt).is_err());
        assert_eq!(
            fit_value(Datum::Int(12), &dec(4, 2)),
            Ok(Datum::Decimal(Decimal::parse("12", 2).unwrap()))
        );
        assert!(fit_value(Datum::Int(123), &dec(4, 2))
            .unwrap_err()
            .contains("precision 4"));
        assert!(fit_value(Datum::Long((1 << 53) + 1), &SqlType::Double).is_err());
        let unconstrained = SqlType::Decimal {
            precision: None,
            scale: None,
        };
        assert_eq!(
            fit_value(Datum::Text(" 1.50 ".into()), &unconstrained),
            Ok(Datum::Text("1.50".into()))
        );
        assert!(fit_value(Datum::Bool(true), &SqlType::Text).is_err());
        assert!(fits(
            &SqlType::Char { len: Some(2) },
            &SqlType::Varchar { len: Some(8) }
        ));
        assert!(fits(&SqlType::SmallInt, &dec(4, 2)));
        assert!(!fits(&SqlType::Text, &SqlType::Date));
        assert!(!fits(&SqlType::Double, &dec(10, 2)));
        assert!(!fits(&SqlType::TimestampTz, &SqlType::Date));
    }
}
