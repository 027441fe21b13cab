//! Example datasets, used by the demo, the docs and the tests. Their
//! generated schemas are committed in `schemas/avro/examples/`.

use crate::table::{ColumnDesc, TableDesc};
use crate::types::SqlType;

/// `gongan.population`: the public-security bureau's resident register.
pub fn population() -> TableDesc {
    let c = ColumnDesc::new;
    TableDesc {
        dataset: "gongan.population".into(),
        schema: "public".into(),
        name: "population".into(),
        columns: vec![
            c("id", SqlType::BigInt, false),
            c("name", SqlType::Varchar { len: Some(64) }, false),
            c("id_card", SqlType::Char { len: Some(18) }, false),
            c("region_code", SqlType::Char { len: Some(6) }, false),
            c("birth", SqlType::Date, false),
            c(
                "income",
                SqlType::Decimal {
                    precision: Some(12),
                    scale: Some(2),
                },
                true,
            ),
            c("photo", SqlType::Bytes, true),
            c("updated_at", SqlType::TimestampTz, false),
            c("extra", SqlType::Json, true),
        ],
        primary_key: vec!["id".into()],
    }
}
