//! Column values rendered for sink databases.

use backflow_schemas::Datum;

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// civil_from_days, the inverse of [`crate::text::days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Splits microseconds since the epoch into days and microseconds of day.
pub fn split_micros(micros: i64) -> (i64, i64) {
    (
        micros.div_euclid(MICROS_PER_DAY),
        micros.rem_euclid(MICROS_PER_DAY),
    )
}

/// `YYYY-MM-DD` (years before 1 as PostgreSQL's `... BC`).
pub fn date_text(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y >= 1 {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    }
}

/// (hour, minute, second, microsecond) of microseconds since midnight.
pub fn hms(micros: i64) -> (u32, u32, u32, u32) {
    let secs = micros.div_euclid(1_000_000);
    (
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
        micros.rem_euclid(1_000_000) as u32,
    )
}

/// `HH:MM:SS.ffffff`.
pub fn time_text(micros: i64) -> String {
    let (h, m, s, us) = hms(micros);
    format!("{h:02}:{m:02}:{s:02}.{us:06}")
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (BC dates keep the era at the end).
pub fn timestamp_text(micros: i64) -> String {
    let (days, of_day) = split_micros(micros);
    let date = date_text(days);
    match date.strip_suffix(" BC") {
        Some(d) => format!("{d} {} BC", time_text(of_day)),
        None => format!("{date} {}", time_text(of_day)),
    }
}

/// ISO 8601 UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn timestamp_tz_iso(micros: i64) -> String {
    let (days, of_day) = split_micros(micros);
    format!("{}T{}Z", date_text(days), time_text(of_day))
}

/// Shortest text that reads back as the same float; PostgreSQL's spellings
/// of the special values.
fn float_text(v: f64, shortest: String) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        shortest
    }
}

/// PostgreSQL's text input form of a value (`None` for NULL); cast to the
/// column's type on the server.
pub fn pg_text(d: &Datum) -> Option<String> {
    Some(match d {
        Datum::Null => return None,
        Datum::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        Datum::Int(v) => v.to_string(),
        Datum::Long(v) => v.to_string(),
        Datum::Float(v) => float_text(f64::from(*v), v.to_string()),
        Datum::Double(v) => float_text(*v, v.to_string()),
        Datum::Decimal(v) => v.to_string(),
        Datum::Text(s) | Datum::Json(s) => s.clone(),
        Datum::Bytes(b) => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut out = String::with_capacity(2 + 2 * b.len());
            out.push_str("\\x");
            for byte in b {
                out.push(DIGITS[usize::from(byte >> 4)] as char);
                out.push(DIGITS[usize::from(byte & 15)] as char);
            }
            out
        }
        Datum::Date(v) => date_text(i64::from(*v)),
        Datum::Time(v) => time_text(*v),
        Datum::Timestamp(v) => timestamp_text(*v),
        Datum::TimestampTz(v) => format!("{}+00", timestamp_text(*v)),
        Datum::Uuid(u) => u.hyphenated().to_string(),
        Datum::Array(items) => {
            // Every element quoted (then only `"` and `\` need escaping),
            // NULL bare.
            let mut out = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match pg_text(item) {
                    None => out.push_str("NULL"),
                    Some(text) => {
                        out.push('"');
                        for c in text.chars() {
                            if c == '"' || c == '\\' {
                                out.push('\\');
                            }
                            out.push(c);
                        }
                        out.push('"');
                    }
                }
            }
            out.push('}');
            out
        }
    })
}

/// A value as JSON, for databases without arrays (MySQL, SQLite): an
/// array as a JSON array of its elements, numbers as JSON numbers (NaN and
/// the infinities, which JSON lacks, as the strings PostgreSQL spells
/// them), dates and times as ISO text, bytes as `\x` hex text, a JSON
/// document as itself.
pub fn json_text(d: &Datum) -> String {
    let mut out = String::new();
    write_json(&mut out, d);
    out
}

fn write_json(out: &mut String, d: &Datum) {
    let quoted = |out: &mut String, text: &str| {
        out.push_str(&serde_json::Value::String(text.to_owned()).to_string())
    };
    match d {
        Datum::Null => out.push_str("null"),
        Datum::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Datum::Int(v) => out.push_str(&v.to_string()),
        Datum::Long(v) => out.push_str(&v.to_string()),
        Datum::Float(v) if v.is_finite() => out.push_str(&serde_json::json!(v).to_string()),
        Datum::Double(v) if v.is_finite() => out.push_str(&serde_json::json!(v).to_string()),
        // Exact: the decimal's own digits are a JSON number, not a float.
        Datum::Decimal(v) => out.push_str(&v.to_string()),
        Datum::Json(s) if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() => {
            out.push_str(s)
        }
        Datum::TimestampTz(v) => quoted(out, &timestamp_tz_iso(*v)),
        Datum::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        other => quoted(out, &pg_text(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::days_from_civil;

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_162i64, -1, 0, 1, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(-719_163), "0001-12-31 BC");
        assert_eq!(time_text(3_723_000_004), "01:02:03.000004");
        assert_eq!(timestamp_text(-1), "1969-12-31 23:59:59.999999");
        assert_eq!(timestamp_tz_iso(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn postgres_text_forms() {
        assert_eq!(pg_text(&Datum::Bytes(vec![0, 255])).unwrap(), "\\x00ff");
        assert_eq!(
            pg_text(&Datum::Double(f64::NEG_INFINITY)).unwrap(),
            "-Infinity"
        );
        assert_eq!(pg_text(&Datum::Double(0.1)).unwrap(), "0.1");
        assert_eq!(pg_text(&Datum::Null), None);
        let array = Datum::Array(vec![
            Datum::Text("a\"b".into()),
            Datum::Null,
            Datum::Text("NULL".into()),
            Datum::Text("c,d\\".into()),
            Datum::Text(String::new()),
        ]);
        assert_eq!(
            pg_text(&array).unwrap(),
            r#"{"a\"b",NULL,"NULL","c,d\\",""}"#
        );
        assert_eq!(pg_text(&Datum::Array(vec![])).unwrap(), "{}");
        // What PostgreSQL prints reads back as the same elements.
        assert_eq!(
            crate::text::parse_array(&pg_text(&array).unwrap()).unwrap(),
            vec![
                Some("a\"b".to_owned()),
                None,
                Some("NULL".to_owned()),
                Some("c,d\\".to_owned()),
                Some(String::new())
            ]
        );
    }

    #[test]
    fn json_forms_of_arrays() {
        let array = Datum::Array(vec![
            Datum::Int(1),
            Datum::Null,
            Datum::Decimal(backflow_schemas::Decimal::parse("12345678901234567890.25", 2).unwrap()),
            Datum::Double(f64::NAN),
            Datum::Text("a\"b".into()),
            Datum::Date(0),
            Datum::TimestampTz(0),
        ]);
        assert_eq!(
            json_text(&array),
            r#"[1,null,12345678901234567890.25,"NaN","a\"b","1970-01-01","1970-01-01T00:00:00.000000Z"]"#
        );
        assert_eq!(json_text(&Datum::Array(vec![])), "[]");
    }
}
