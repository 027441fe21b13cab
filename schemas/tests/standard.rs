//! A department's resident table, with Chinese column names and its own
//! codes and spellings, mapped into the population standard through the
//! public API as a feed would: mapping from TOML, compiled against the
//! table and the standard, applied and validated row by row.

use backflow_schemas::standard::{
    self, date, DatasetRules, Mapping, MappingError, Validator, Violation,
};
use backflow_schemas::{ColumnDesc, Datum, Row, SqlType, TableCodec, TableDesc};

const MAPPING: &str = r#"
standard = "population"

[fields.id_number]
from = "身份证号"
cast = "trim"

[fields.name]
from = "姓名"
cast = "trim"

[fields.gender]
from = "性别"
codes = { "男" = "1", "M" = "1", "女" = "2", "F" = "2" }

[fields.birth_date]
from = "出生日期"
cast = { date = ["%Y%m%d", "%Y-%m-%d"] }

[fields.ethnicity]
from = "民族"
codes = { "汉族" = "01", "蒙古族" = "02", "回族" = "03" }
default = "97"

[fields.household_region]
from = "户籍区划"
cast = "text"

[fields.address]
expr = "concat('浙江省杭州市', 住址)"

[fields.phone]
from = "手机"
"#;

/// The department's table as its database describes it.
fn department_table() -> TableDesc {
    let c = ColumnDesc::new;
    TableDesc {
        dataset: "gongan.population".into(),
        schema: "hz".into(),
        name: "czrk".into(),
        columns: vec![
            c("编号", SqlType::BigInt, false),
            c("姓名", SqlType::Varchar { len: Some(50) }, true),
            c("性别", SqlType::Char { len: Some(2) }, true),
            c("出生日期", SqlType::Varchar { len: Some(10) }, true),
            c("身份证号", SqlType::Char { len: Some(18) }, false),
            c("民族", SqlType::Varchar { len: Some(10) }, true),
            c("户籍区划", SqlType::Int, false),
            c("住址", SqlType::Varchar { len: Some(100) }, true),
            c("手机", SqlType::Varchar { len: Some(20) }, true),
        ],
        primary_key: vec!["编号".into()],
    }
}

fn text(s: &str) -> Datum {
    Datum::Text(s.to_owned())
}

#[allow(clippy::too_many_arguments)]
fn department_row(
    name: &str,
    gender: &str,
    birth: &str,
    id: &str,
    ethnicity: &str,
    region: i32,
    address: &str,
    phone: Datum,
) -> Row {
    Row(vec![
        Datum::Long(1),
        text(name),
        text(gender),
        text(birth),
        text(id),
        text(ethnicity),
        Datum::Int(region),
        text(address),
        phone,
    ])
}

fn validator() -> Validator {
    Validator::new(&standard::builtin()["population"], &DatasetRules::new())
        .unwrap()
        .at_date(date::days_from_ymd(2024, 6, 1).unwrap())
}

#[test]
fn population_mapping_turns_a_department_row_into_the_standard_row() {
    let population = &standard::builtin()["population"];
    let mapping: Mapping = toml::from_str(MAPPING).unwrap();
    let compiled = mapping.compile(&department_table(), population).unwrap();
    assert_eq!(compiled.standard(), "population");

    // CHAR(2) comes padded; the date is YYYYMMDD text; the region an integer.
    let row = department_row(
        " 张三",
        "男 ",
        "19900307",
        "330106199003071236",
        "汉族",
        330106,
        "西湖区文三路1号",
        text("13912345678"),
    );
    let want = Row(vec![
        text("330106199003071236"),
        text("张三"),
        text("1"),
        Datum::Date(date::days_from_ymd(1990, 3, 7).unwrap()),
        text("01"),
        text("330106"),
        text("浙江省杭州市西湖区文三路1号"),
        text("13912345678"),
    ]);
    assert_eq!(compiled.apply(&row).unwrap(), want);
    assert_eq!(compiled.conform(&row, &validator()).unwrap(), want);

    // Another spelling of each: F, a dashed date, an ethnicity the code
    // table lacks (its default, 97 other), no phone; an ID ending in X.
    let row = department_row(
        "李四",
        "F",
        "1949-12-31",
        "11010519491231002X",
        "满族",
        110105,
        "朝阳区",
        Datum::Null,
    );
    let got = compiled.conform(&row, &validator()).unwrap();
    assert_eq!(got.0[2], text("2"));
    assert_eq!(
        got.0[3],
        Datum::Date(date::days_from_ymd(1949, 12, 31).unwrap())
    );
    assert_eq!(got.0[4], text("97"));
    assert_eq!(got.0[7], Datum::Null);

    // The standard row encodes with the standard's table.
    let table = population.table_desc("gongan.population");
    let codec = TableCodec::new(table.clone()).unwrap();
    let event = backflow_schemas::ChangeEvent {
        key: table.key_of(&got),
        before: None,
        after: Some(got),
        source: backflow_schemas::SourceInfo::default(),
        op: backflow_schemas::Op::Create,
        ts_ms: None,
        transaction: None,
    };
    let bytes = codec.encode_value(&event).unwrap();
    assert_eq!(
        codec.decode_value(event.key.clone(), &bytes).unwrap().after,
        event.after
    );
}

#[test]
fn population_row_breaking_rules_is_refused_with_every_rule_named() {
    let mapping: Mapping = toml::from_str(MAPPING).unwrap();
    let compiled = mapping
        .compile(&department_table(), &standard::builtin()["population"])
        .unwrap();
    let row = department_row(
        "王五",
        "未知",               // not in the code table, no default
        "1990-13-01",         // no such month
        "330106199003071235", // wrong check digit
        "汉族",
        339999, // no such region
        "西湖区",
        text("0571-8888"), // too short for a phone number
    );
    let violations = compiled.conform(&row, &validator()).unwrap_err();
    let named: Vec<(&str, &str)> = violations
        .iter()
        .map(|v| (v.field.as_str(), v.rule.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            ("gender", "code"),
            ("birth_date", "cast"),
            ("id_number", "id_number"),
            ("household_region", "region_code"),
            ("phone", "regex:cn_phone"),
        ]
    );
    assert_eq!(
        Violation::summary(&violations),
        "gender:code,birth_date:cast,id_number:id_number,household_region:region_code,phone:regex:cn_phone"
    );
    // No value of the row in what goes to logs and headers.
    for v in &violations {
        let shown = v.to_string();
        for value in ["未知", "1990-13-01", "330106199003071235", "339999", "0571"] {
            assert!(!shown.contains(value), "{shown}");
        }
    }
    // apply alone reports only what the mapping could not produce.
    let named: Vec<String> = compiled
        .apply(&row)
        .unwrap_err()
        .iter()
        .map(|v| v.rule.clone())
        .collect();
    assert_eq!(named, ["code", "cast"]);
}

#[test]
fn population_mapping_without_a_required_field_is_refused_naming_it() {
    let mut mapping: Mapping = toml::from_str(MAPPING).unwrap();
    mapping.fields.remove("household_region");
    let err = mapping
        .compile(&department_table(), &standard::builtin()["population"])
        .unwrap_err();
    assert_eq!(
        err,
        MappingError::RequiredNotProduced {
            standard: "population".into(),
            field: "household_region".into()
        }
    );
    assert!(
        err.to_string()
            .contains("field household_region is required"),
        "{err}"
    );
}

#[test]
fn population_birth_date_can_be_derived_from_the_id_number() {
    let mut mapping: Mapping = toml::from_str(MAPPING).unwrap();
    let derived: Mapping = toml::from_str(
        r#"
        [fields.birth_date]
        expr = "substr(身份证号, 7, 8)"
        cast = { date = ["%Y%m%d"] }
        "#,
    )
    .unwrap();
    mapping.fields.extend(derived.fields);
    let compiled = mapping
        .compile(&department_table(), &standard::builtin()["population"])
        .unwrap();
    let row = department_row(
        "张三",
        "男",
        "",
        "330106199003071236",
        "汉族",
        330106,
        "西湖区",
        Datum::Null,
    );
    let got = compiled.conform(&row, &validator()).unwrap();
    assert_eq!(
        got.0[3],
        Datum::Date(date::days_from_ymd(1990, 3, 7).unwrap())
    );
}

#[test]
fn mapping_round_trips_through_json_for_the_api() {
    let mapping: Mapping = toml::from_str(MAPPING).unwrap();
    let json = serde_json::to_string(&mapping).unwrap();
    let back: Mapping = serde_json::from_str(&json).unwrap();
    assert_eq!(back, mapping);
    let err = serde_json::from_str::<Mapping>(r#"{"fields": {"name": {"form": "姓名"}}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `form`"), "{err}");
}
