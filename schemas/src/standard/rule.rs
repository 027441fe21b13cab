//! Validation rules of a standard's fields, and the [`Validator`] that applies
//! every one of them to a standard row.
//!
//! A rule is written in a standard's `.avsc` (`"backflow.rules"` of a field)
//! or in a dataset's configuration, as a table tagged by `rule`; a rule
//! without parameters may be written as its bare name:
//!
//! ```toml
//! [rules]
//! household_region = ["region_code"]
//! phone = [{ rule = "regex", name = "cn_mobile", pattern = "^1[3-9][0-9]{9}$" }]
//! score = [{ rule = "range", min = 0, max = 100 }]
//! ```
//!
//! Every rule has a stable [`Rule::name`] used in dead-letter headers and
//! metric labels. A [`Violation`] names the field and the rule and says why
//! in fixed words: never the value, since logs must not hold row values.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use num_bigint::BigInt;
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::checks;
use super::date;
use super::region::RegionCodes;
use super::{Standard, StandardError};
use crate::datum::{Datum, Decimal, Row};
use crate::types::SqlType;

/// Rule name of a value that cannot be converted to the standard field's
/// type by a feed's mapping.
pub const RULE_CAST: &str = "cast";
/// Rule name of a source code missing from a mapping's code table.
pub const RULE_CODE: &str = "code";
/// Rule name of a value whose kind does not fit the field's type.
pub const RULE_TYPE: &str = "type";
/// Rule name of a row with the wrong number of values.
pub const RULE_ROW_SHAPE: &str = "row_shape";

/// Longest accepted regex pattern, in bytes.
const MAX_PATTERN_LEN: usize = 1024;
/// Compiled size limit of a regex rule.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One validation rule of a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    remote = "Self",
    tag = "rule",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Rule {
    /// The value is not NULL. Implied by a field declared required.
    Required,
    /// An 18-character resident ID number of GB 11643 with a valid birth
    /// date and ISO 7064 MOD 11-2 check character.
    IdNumber,
    /// A unified social credit code of GB 32100 with a valid check character.
    Uscc,
    /// A 6-digit code of the GB/T 2260 list shipped with backflow.
    RegionCode,
    /// A date (or timestamp) within bounds, each `YYYY-MM-DD` or `today`.
    DateRange {
        /// Earliest accepted date.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<DateBound>,
        /// Latest accepted date.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<DateBound>,
    },
    /// Text of at most `max` characters. Implied by `varchar(n)`/`char(n)`.
    MaxLength {
        /// Maximum number of characters.
        max: u32,
    },
    /// Text matching a regular expression (the `regex` crate's syntax; anchor
    /// it with `^…$` to match the whole value). Its `name` is part of the
    /// rule's name, `regex:<name>`.
    Regex {
        /// Short name: `[A-Za-z0-9_-]`, at most 64 characters.
        name: String,
        /// The pattern.
        pattern: String,
    },
    /// A number within bounds (inclusive), compared exactly for integers
    /// and decimals.
    Range {
        /// Smallest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<NumberBound>,
        /// Largest accepted value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<NumberBound>,
    },
    /// One of the listed values (text, or an integer's decimal digits).
    AllowedValues {
        /// The accepted values.
        values: Vec<String>,
    },
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Rule::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let value = match value {
            serde_json::Value::String(name) => serde_json::json!({ "rule": name }),
            other => other,
        };
        Rule::deserialize(value).map_err(serde::de::Error::custom)
    }
}

impl Rule {
    /// The rule's stable name: `required`, `id_number`, `uscc`,
    /// `region_code`, `date_range`, `max_length`, `regex:<name>`, `range`,
    /// `allowed_values`.
    pub fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Rule::Required => "required",
            Rule::IdNumber => "id_number",
            Rule::Uscc => "uscc",
            Rule::RegionCode => "region_code",
            Rule::DateRange { .. } => "date_range",
            Rule::MaxLength { .. } => "max_length",
            Rule::Regex { name, .. } => return Cow::Owned(format!("regex:{name}")),
            Rule::Range { .. } => "range",
            Rule::AllowedValues { .. } => "allowed_values",
        })
    }
}

/// A bound of a [`Rule::DateRange`]: a date, or the day the check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateBound {
    /// The current date (China Standard Time).
    Today,
    /// A fixed date, days since 1970-01-01.
    Date(i32),
}

impl DateBound {
    fn resolve(self, today: i32) -> i32 {
        match self {
            DateBound::Today => today,
            DateBound::Date(d) => d,
        }
    }
}

impl TryFrom<String> for DateBound {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text == "today" {
            return Ok(DateBound::Today);
        }
        date::parse_iso_date(&text)
            .map(DateBound::Date)
            .ok_or_else(|| format!("date bound {text:?} is neither YYYY-MM-DD nor \"today\""))
    }
}

impl fmt::Display for DateBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DateBound::Today => f.write_str("today"),
            DateBound::Date(d) => f.write_str(&date::format_iso_date(*d)),
        }
    }
}

impl Serialize for DateBound {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DateBound {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DateBound::try_from(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A bound of a [`Rule::Range`]: an exact decimal, written as a number or
/// as decimal text (`0`, `73.5`, `"-12.25"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberBound(Decimal);

impl NumberBound {
    /// Parses decimal text.
    pub fn parse(text: &str) -> Result<NumberBound, String> {
        let t = text.trim();
        let frac = t.split_once('.').map_or(0, |(_, f)| f.len()) as u32;
        Decimal::parse(t, frac)
            .map(NumberBound)
            .map_err(|_| format!("range bound {text:?} is not a decimal number"))
    }

    fn as_f64(&self) -> f64 {
        self.0.to_string().parse().unwrap_or(f64::NAN)
    }
}

impl fmt::Display for NumberBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for NumberBound {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NumberBound {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s,
            _ => return Err(serde::de::Error::custom("a range bound is a number")),
        };
        NumberBound::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Compares two exact decimals.
fn cmp_decimal(a: &Decimal, b: &Decimal) -> std::cmp::Ordering {
    let scale = a.scale.max(b.scale);
    let widen = |d: &Decimal| &d.unscaled * BigInt::from(10).pow(scale - d.scale);
    widen(a).cmp(&widen(b))
}

/// One rule a value breaks: which field, which rule, and why in fixed words.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Violation {
    /// The standard field (empty when about the whole row).
    pub field: String,
    /// The rule's stable name ([`Rule::name`], or [`RULE_CAST`],
    /// [`RULE_CODE`], [`RULE_TYPE`], [`RULE_ROW_SHAPE`]).
    pub rule: String,
    /// Why, without the value.
    pub reason: String,
}

impl Violation {
    /// A violation.
    pub fn new(
        field: impl Into<String>,
        rule: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
            reason: reason.into(),
        }
    }

    /// `field:rule` pairs joined by commas, for a dead-letter header
    /// (e.g. `id_number:id_number,household_region:region_code`).
    pub fn summary(violations: &[Violation]) -> String {
        violations
            .iter()
            .map(|v| format!("{}:{}", v.field, v.rule))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field {} breaks rule {}: {}",
            self.field, self.rule, self.reason
        )
    }
}

/// Extra rules of a dataset, by standard field name, on top of those its
/// standard declares.
pub type DatasetRules = BTreeMap<String, Vec<Rule>>;

/// A rule ready to run against values of one field.
#[derive(Debug, Clone)]
pub(crate) enum CheckedRule {
    IdNumber,
    Uscc,
    RegionCode,
    DateRange {
        min: Option<DateBound>,
        max: Option<DateBound>,
    },
    MaxLength(u32),
    Regex {
        name: String,
        regex: Regex,
    },
    Range {
        min: Option<NumberBound>,
        max: Option<NumberBound>,
    },
    AllowedValues(BTreeSet<String>),
}

/// Checks that `rule` applies to a field of type `sql_type` and prepares it.
/// `Ok(None)` for `required`, which the field's flag carries.
pub(crate) fn compile_rule(rule: &Rule, sql_type: &SqlType) -> Result<Option<CheckedRule>, String> {
    let needs = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "rule {} applies to {what} fields, this one is {sql_type}",
                rule.name()
            ))
        }
    };
    Ok(Some(match rule {
        Rule::Required => return Ok(None),
        Rule::IdNumber => {
            needs(sql_type.is_text(), "text")?;
            CheckedRule::IdNumber
        }
        Rule::Uscc => {
            needs(sql_type.is_text(), "text")?;
            CheckedRule::Uscc
        }
        Rule::RegionCode => {
            needs(sql_type.is_text(), "text")?;
            CheckedRule::RegionCode
        }
        Rule::DateRange { min, max } => {
            needs(
                matches!(
                    sql_type,
                    SqlType::Date | SqlType::Timestamp | SqlType::TimestampTz
                ),
                "date or timestamp",
            )?;
            if let (Some(DateBound::Date(a)), Some(DateBound::Date(b))) = (min, max) {
                if a > b {
                    return Err("date_range: min is after max".to_owned());
                }
            }
            CheckedRule::DateRange {
                min: *min,
                max: *max,
            }
        }
        Rule::MaxLength { max } => {
            needs(sql_type.is_text(), "text")?;
            CheckedRule::MaxLength(*max)
        }
        Rule::Regex { name, pattern } => {
            needs(sql_type.is_text(), "text")?;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "regex rule name {name:?} must be 1-64 characters of [A-Za-z0-9_-] (it is part of metric labels)"
                ));
            }
            if pattern.len() > MAX_PATTERN_LEN {
                return Err(format!(
                    "regex:{name}: the pattern is longer than {MAX_PATTERN_LEN} bytes"
                ));
            }
            let regex = regex::RegexBuilder::new(pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("regex:{name}: invalid pattern: {e}"))?;
            CheckedRule::Regex {
                name: name.clone(),
                regex,
            }
        }
        Rule::Range { min, max } => {
            needs(
                sql_type.is_integer()
                    || matches!(
                        sql_type,
                        SqlType::Decimal { .. } | SqlType::Real | SqlType::Double
                    ),
                "numeric",
            )?;
            if let (Some(a), Some(b)) = (min, max) {
                if cmp_decimal(&a.0, &b.0).is_gt() {
                    return Err("range: min is greater than max".to_owned());
                }
            }
            CheckedRule::Range {
                min: min.clone(),
                max: max.clone(),
            }
        }
        Rule::AllowedValues { values } => {
            needs(
                sql_type.is_text() || sql_type.is_integer(),
                "text or integer",
            )?;
            if values.is_empty() {
                return Err("allowed_values: the list is empty".to_owned());
            }
            CheckedRule::AllowedValues(values.iter().cloned().collect())
        }
    }))
}

impl CheckedRule {
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            CheckedRule::IdNumber => "id_number",
            CheckedRule::Uscc => "uscc",
            CheckedRule::RegionCode => "region_code",
            CheckedRule::DateRange { .. } => "date_range",
            CheckedRule::MaxLength(_) => "max_length",
            CheckedRule::Regex { name, .. } => return Cow::Owned(format!("regex:{name}")),
            CheckedRule::Range { .. } => "range",
            CheckedRule::AllowedValues(_) => "allowed_values",
        })
    }

    /// Checks a non-null value; the reason when it breaks the rule.
    fn check(
        &self,
        value: &Datum,
        today: i32,
        regions: &RegionCodes,
    ) -> Result<(), Cow<'static, str>> {
        let text = || match value {
            Datum::Text(t) => Ok(t.as_str()),
            _ => Err(Cow::Borrowed("the value is not text")),
        };
        match self {
            CheckedRule::IdNumber => {
                checks::check_resident_id(text()?, today).map_err(Cow::Borrowed)
            }
            CheckedRule::Uscc => checks::check_uscc(text()?).map_err(Cow::Borrowed),
            CheckedRule::RegionCode => {
                if regions.contains(text()?) {
                    Ok(())
                } else {
                    Err("not a 6-digit code of the GB/T 2260 list".into())
                }
            }
            CheckedRule::DateRange { min, max } => {
                let day = match value {
                    Datum::Date(d) => i64::from(*d),
                    Datum::Timestamp(us) => us.div_euclid(86_400_000_000),
                    // The date in China Standard Time.
                    Datum::TimestampTz(us) => (us + 8 * 3_600_000_000).div_euclid(86_400_000_000),
                    _ => return Err("the value is not a date".into()),
                };
                if let Some(min) = min {
                    if day < i64::from(min.resolve(today)) {
                        return Err(format!("before {min}").into());
                    }
                }
                if let Some(max) = max {
                    if day > i64::from(max.resolve(today)) {
                        return Err(format!("after {max}").into());
                    }
                }
                Ok(())
            }
            CheckedRule::MaxLength(max) => {
                let chars = text()?.chars().count();
                if chars > *max as usize {
                    Err(format!("{chars} characters exceed the limit of {max}").into())
                } else {
                    Ok(())
                }
            }
            CheckedRule::Regex { regex, .. } => {
                if regex.is_match(text()?) {
                    Ok(())
                } else {
                    Err("does not match the pattern".into())
                }
            }
            CheckedRule::Range { min, max } => check_range(value, min.as_ref(), max.as_ref()),
            CheckedRule::AllowedValues(values) => {
                let owned;
                let v = match value {
                    Datum::Text(t) => t.as_str(),
                    Datum::Int(i) => {
                        owned = i.to_string();
                        &owned
                    }
                    Datum::Long(i) => {
                        owned = i.to_string();
                        &owned
                    }
                    _ => return Err("the value is neither text nor an integer".into()),
                };
                if values.contains(v) {
                    Ok(())
                } else {
                    Err("not one of the allowed values".into())
                }
            }
        }
    }
}

fn check_range(
    value: &Datum,
    min: Option<&NumberBound>,
    max: Option<&NumberBound>,
) -> Result<(), Cow<'static, str>> {
    use std::cmp::Ordering;
    let cmp = |bound: &NumberBound| -> Option<Ordering> {
        match value {
            Datum::Int(v) => Some(cmp_decimal(
                &Decimal {
                    unscaled: BigInt::from(*v),
                    scale: 0,
                },
                &bound.0,
            )),
            Datum::Long(v) => Some(cmp_decimal(
                &Decimal {
                    unscaled: BigInt::from(*v),
                    scale: 0,
                },
                &bound.0,
            )),
            Datum::Decimal(d) => Some(cmp_decimal(d, &bound.0)),
            // An unconstrained numeric travels as its exact text.
            Datum::Text(t) => NumberBound::parse(t)
                .ok()
                .map(|v| cmp_decimal(&v.0, &bound.0)),
            Datum::Float(v) => f64::from(*v).partial_cmp(&bound.as_f64()),
            Datum::Double(v) => v.partial_cmp(&bound.as_f64()),
            _ => None,
        }
    };
    if let Some(min) = min {
        match cmp(min) {
            None => return Err("the value is not a comparable number".into()),
            Some(Ordering::Less) => return Err(format!("less than {min}").into()),
            _ => {}
        }
    }
    if let Some(max) = max {
        match cmp(max) {
            None => return Err("the value is not a comparable number".into()),
            Some(Ordering::Greater) => return Err(format!("greater than {max}").into()),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a non-null value has the form of its field's type.
fn kind_fits(sql_type: &SqlType, value: &Datum) -> bool {
    crate::table::check_kind(sql_type, value).is_ok()
}

#[derive(Debug, Clone)]
struct FieldChecks {
    name: String,
    sql_type: SqlType,
    required: bool,
    rules: Vec<CheckedRule>,
}

/// Applies every rule of a standard (and of a dataset's extra rules) to
/// standard rows.
#[derive(Debug, Clone)]
pub struct Validator {
    fields: Arc<[FieldChecks]>,
    regions: &'static RegionCodes,
    today: Option<i32>,
}

impl Validator {
    /// The rules of `standard`'s fields plus the dataset's `extra` rules.
    /// Refuses extra rules on unknown fields, rules that do not apply to
    /// their field's type and invalid regexes.
    pub fn new(standard: &Standard, extra: &DatasetRules) -> Result<Validator, StandardError> {
        let err = |field: &str, reason: String| StandardError::Field {
            standard: standard.name().to_owned(),
            field: field.to_owned(),
            reason,
        };
        if let Some(unknown) = extra.keys().find(|f| standard.field(f).is_none()) {
            return Err(err(
                unknown,
                "the dataset declares rules for a field the standard does not have".to_owned(),
            ));
        }
        let mut fields = Vec::with_capacity(standard.fields().len());
        for f in standard.fields() {
            let mut required = f.required;
            let mut rules = Vec::new();
            for rule in f
                .rules
                .iter()
                .chain(extra.get(&f.name).into_iter().flatten())
            {
                match compile_rule(rule, &f.sql_type).map_err(|r| err(&f.name, r))? {
                    Some(checked) => rules.push(checked),
                    None => required = true,
                }
            }
            fields.push(FieldChecks {
                name: f.name.clone(),
                sql_type: f.sql_type.clone(),
                required,
                rules,
            });
        }
        Ok(Validator {
            fields: fields.into(),
            regions: RegionCodes::builtin(),
            today: None,
        })
    }

    /// The same validator with "today" fixed (days since 1970-01-01), for
    /// reproducible checks; otherwise each check takes the current date.
    pub fn at_date(mut self, today: i32) -> Validator {
        self.today = Some(today);
        self
    }

    fn today(&self) -> i32 {
        self.today.unwrap_or_else(date::today)
    }

    /// Every rule every value of a standard row (in the standard's field
    /// order) breaks; empty when the row meets the standard.
    pub fn check(&self, row: &Row) -> Vec<Violation> {
        if row.0.len() != self.fields.len() {
            return vec![Violation::new(
                "",
                RULE_ROW_SHAPE,
                format!("{} values for {} fields", row.0.len(), self.fields.len()),
            )];
        }
        let today = self.today();
        let mut out = Vec::new();
        for (i, value) in row.0.iter().enumerate() {
            self.check_value_into(i, value, today, &mut out);
        }
        out
    }

    /// The violations of one value of the field at `index`.
    pub fn check_value(&self, index: usize, value: &Datum) -> Vec<Violation> {
        let mut out = Vec::new();
        self.check_value_into(index, value, self.today(), &mut out);
        out
    }

    fn check_value_into(&self, index: usize, value: &Datum, today: i32, out: &mut Vec<Violation>) {
        let Some(f) = self.fields.get(index) else {
            return;
        };
        if let Datum::Null = value {
            if f.required {
                out.push(Violation::new(
                    &f.name,
                    "required",
                    "the field is required but has no value",
                ));
            }
            return;
        }
        if !kind_fits(&f.sql_type, value) {
            out.push(Violation::new(
                &f.name,
                RULE_TYPE,
                format!("a {} value does not fit type {}", value.kind(), f.sql_type),
            ));
            return;
        }
        for rule in &f.rules {
            if let Err(reason) = rule.check(value, today, self.regions) {
                out.push(Violation::new(&f.name, rule.name(), reason));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standard::builtin;

    fn today() -> i32 {
        date::days_from_ymd(2024, 6, 1).unwrap()
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.to_owned())
    }

    fn population_validator(extra: &DatasetRules) -> Validator {
        Validator::new(&builtin()["population"], extra)
            .unwrap()
            .at_date(today())
    }

    fn good_person() -> Row {
        Row(vec![
            text("330106199003071236"),
            text("张三"),
            text("1"),
            Datum::Date(date::days_from_ymd(1990, 3, 7).unwrap()),
            text("01"),
            text("330106"),
            text("浙江省杭州市西湖区文三路 1 号"),
            text("13912345678"),
        ])
    }

    fn rules_of(violations: &[Violation]) -> Vec<(&str, &str)> {
        violations
            .iter()
            .map(|v| (v.field.as_str(), v.rule.as_str()))
            .collect()
    }

    #[test]
    fn rule_deserializes_bare_names_and_tagged_tables() {
        let rules: Vec<Rule> = serde_json::from_str(
            r#"["id_number", {"rule": "max_length", "max": 10},
                {"rule": "date_range", "min": "1900-01-01", "max": "today"},
                {"rule": "range", "min": 0, "max": "99.5"},
                {"rule": "regex", "name": "digits", "pattern": "^[0-9]+$"}]"#,
        )
        .unwrap();
        let names: Vec<_> = rules.iter().map(Rule::name).collect();
        assert_eq!(
            names,
            [
                "id_number",
                "max_length",
                "date_range",
                "range",
                "regex:digits"
            ]
        );
        assert_eq!(
            rules[2],
            Rule::DateRange {
                min: Some(DateBound::Date(date::days_from_ymd(1900, 1, 1).unwrap())),
                max: Some(DateBound::Today)
            }
        );
        // Serialized and read back unchanged.
        let again: Vec<Rule> =
            serde_json::from_str(&serde_json::to_string(&rules).unwrap()).unwrap();
        assert_eq!(again, rules);
        let toml_rules: DatasetRules = toml::from_str(
            "phone = [{ rule = \"regex\", name = \"m\", pattern = \"^1\" }]\nregion = [\"region_code\"]\n",
        )
        .unwrap();
        assert_eq!(toml_rules["region"], [Rule::RegionCode]);
        for (bad, needle) in [
            (r#""no_such_rule""#, "unknown variant"),
            (
                r#"{"rule": "max_length", "max": 3, "min": 1}"#,
                "unknown field",
            ),
            (
                r#"{"rule": "date_range", "min": "1900-13-01"}"#,
                "neither YYYY-MM-DD",
            ),
            (r#"{"rule": "range", "min": "abc"}"#, "not a decimal"),
        ] {
            let err = serde_json::from_str::<Rule>(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn validator_accepts_a_row_meeting_the_standard() {
        let v = population_validator(&DatasetRules::new());
        assert_eq!(v.check(&good_person()), vec![]);
        let mut row = good_person();
        // Optional fields may be empty.
        row.0[4] = Datum::Null;
        row.0[6] = Datum::Null;
        row.0[7] = Datum::Null;
        assert_eq!(v.check(&row), vec![]);
    }

    #[test]
    fn validator_names_every_broken_rule_without_values() {
        let v = population_validator(&DatasetRules::new());
        let mut row = good_person();
        row.0[0] = text("330106199003071235"); // wrong check digit
        row.0[1] = Datum::Null; // required
        row.0[2] = text("M"); // not a GB/T 2261.1 code
        row.0[3] = Datum::Date(date::days_from_ymd(2030, 1, 1).unwrap()); // future
        row.0[4] = text("57"); // no such ethnicity code
        row.0[5] = text("330199"); // unknown region
        row.0[6] = text(&"路".repeat(201)); // longer than varchar(200)
        row.0[7] = text("12345"); // not a phone number
        let violations = v.check(&row);
        assert_eq!(
            rules_of(&violations),
            [
                ("id_number", "id_number"),
                ("name", "required"),
                ("gender", "allowed_values"),
                ("birth_date", "date_range"),
                ("ethnicity", "allowed_values"),
                ("household_region", "region_code"),
                ("address", "max_length"),
                ("phone", "regex:cn_phone"),
            ]
        );
        for violation in &violations {
            let shown = violation.to_string();
            for value in ["330106199003071235", "330199", "12345", "2030"] {
                assert!(!shown.contains(value), "{shown}");
            }
        }
        assert!(violations[0].reason.contains("check character"));
        assert!(violations[3].reason.contains("after today"));
        assert!(violations[6].reason.contains("201 characters"));
        assert_eq!(
            Violation::summary(&violations[..2]),
            "id_number:id_number,name:required"
        );
    }

    #[test]
    fn validator_reports_wrong_kind_and_row_shape() {
        let v = population_validator(&DatasetRules::new());
        let mut row = good_person();
        row.0[3] = text("1990-03-07");
        assert_eq!(rules_of(&v.check(&row)), [("birth_date", "type")]);
        row.0.pop();
        assert_eq!(rules_of(&v.check(&row)), [("", "row_shape")]);
    }

    #[test]
    fn validator_applies_dataset_rules_on_top_of_the_standard() {
        let extra: DatasetRules = toml::from_str(
            r#"
            address = [{ rule = "regex", name = "zhejiang", pattern = "^浙江省" }]
            ethnicity = ["required"]
            "#,
        )
        .unwrap();
        let v = population_validator(&extra);
        assert_eq!(v.check(&good_person()), vec![]);
        let mut row = good_person();
        row.0[4] = Datum::Null;
        row.0[6] = text("江苏省南京市");
        assert_eq!(
            rules_of(&v.check(&row)),
            [("ethnicity", "required"), ("address", "regex:zhejiang")]
        );
    }

    #[test]
    fn validator_refuses_rules_that_do_not_fit_their_field() {
        let population = &builtin()["population"];
        for (extra, needle) in [
            (r#"nickname = ["required"]"#, "field nickname"),
            (
                r#"birth_date = ["region_code"]"#,
                "applies to text fields, this one is date",
            ),
            (
                r#"name = [{ rule = "range", min = 1 }]"#,
                "applies to numeric fields",
            ),
            (
                r#"name = [{ rule = "regex", name = "x", pattern = "(" }]"#,
                "invalid pattern",
            ),
            (
                r#"name = [{ rule = "regex", name = "a b", pattern = "x" }]"#,
                "[A-Za-z0-9_-]",
            ),
            (
                r#"birth_date = [{ rule = "date_range", min = "2000-01-01", max = "1999-01-01" }]"#,
                "min is after max",
            ),
            (
                r#"gender = [{ rule = "allowed_values", values = [] }]"#,
                "list is empty",
            ),
        ] {
            let extra: DatasetRules = toml::from_str(extra).unwrap();
            let err = Validator::new(population, &extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn validator_checks_uscc_ranges_and_decimals_of_legal_entities() {
        let v = Validator::new(&builtin()["legal_entity"], &DatasetRules::new())
            .unwrap()
            .at_date(today());
        let row = |uscc: &str, region: &str, capital: Datum| {
            Row(vec![
                text(uscc),
                text("示例科技有限公司"),
                text("1100"),
                text("李四"),
                text(region),
                text("1"),
                Datum::Date(date::days_from_ymd(2001, 5, 20).unwrap()),
                capital,
                Datum::Null,
            ])
        };
        let capital = |t: &str| Datum::Decimal(Decimal::parse(t, 6).unwrap());
        assert_eq!(
            v.check(&row("91330100716105852F", "330100", capital("5000"))),
            vec![]
        );
        assert_eq!(
            rules_of(&v.check(&row("91330100716105852G", "330100", capital("-0.000001")))),
            [("uscc", "uscc"), ("registered_capital", "range")]
        );
        assert_eq!(
            rules_of(&v.check(&row("91330100716105852F", "339900", Datum::Null))),
            [("registered_region", "region_code")]
        );
    }

    #[test]
    fn validator_ranges_compare_exactly() {
        let bound = |t: &str| Some(NumberBound::parse(t).unwrap());
        let (min, max) = (bound("73"), bound("135.5"));
        let dec = |t: &str| Datum::Decimal(Decimal::parse(t, 7).unwrap());
        let ok = |d: &Datum| check_range(d, min.as_ref(), max.as_ref()).is_ok();
        assert!(ok(&dec("73")));
        assert!(ok(&dec("135.5")));
        assert!(!ok(&dec("72.9999999")));
        assert!(!ok(&dec("135.5000001")));
        assert!(ok(&Datum::Int(100)));
        assert!(!ok(&Datum::Long(136)));
        assert!(ok(&Datum::Double(120.25)));
        assert!(!ok(&Datum::Double(f64::NAN)));
        assert!(!ok(&Datum::Text("1e3".into())));
    }
}
