//! Column values from their SQL text form (PostgreSQL's text output, which
//! pgoutput sends and `::text` casts give), into [`Datum`]s.
//!
//! Timestamps with a time zone are converted to UTC; the connection should
//! use `TimeZone=UTC` so the server prints `+00`, but any offset is honoured.

use backflow_schemas::{Datum, Decimal, SqlType};

/// Why a text value does not convert; never contains the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read a {sql_type} value: {reason}")]
pub struct TextValueError {
    /// The column type.
    pub sql_type: String,
    /// Why.
    pub reason: String,
}

/// Converts one value of `sql_type` from its text form.
pub fn parse(sql_type: &SqlType, text: &str) -> Result<Datum, TextValueError> {
    let err = |reason: &str| TextValueError {
        sql_type: sql_type.to_string(),
        reason: reason.to_owned(),
    };
    Ok(match sql_type {
        SqlType::SmallInt | SqlType::Int => Datum::Int(
            text.trim()
                .parse()
                .map_err(|_| err("not a 32-bit integer"))?,
        ),
        SqlType::BigInt => Datum::Long(
            text.trim()
                .parse()
                .map_err(|_| err("not a 64-bit integer"))?,
        ),
        SqlType::Decimal {
            precision: Some(_),
            scale,
        } => Datum::Decimal(Decimal::parse(text, scale.unwrap_or(0)).map_err(|_| {
            err("not a finite decimal at the column's scale (NaN and infinities cannot be shared)")
        })?),
        SqlType::Decimal {
            precision: None, ..
        } => Datum::Text(text.to_owned()),
        SqlType::Real => Datum::Float(parse_float(text).ok_or_else(|| err("not a number"))? as f32),
        SqlType::Double => Datum::Double(parse_float(text).ok_or_else(|| err("not a number"))?),
        SqlType::Boolean => Datum::Bool(match text {
            "t" | "true" | "1" | "TRUE" | "True" => true,
            "f" | "false" | "0" | "FALSE" | "False" => false,
            _ => return Err(err("not a boolean")),
        }),
        SqlType::Text | SqlType::Varchar { .. } | SqlType::Char { .. } => {
            Datum::Text(text.to_owned())
        }
        SqlType::Json => Datum::Json(text.to_owned()),
        SqlType::Bytes => {
            Datum::Bytes(parse_bytea(text).ok_or_else(|| err("not hex bytea (\\x...)"))?)
        }
        SqlType::Date | SqlType::Timestamp | SqlType::TimestampTz
            if unshareable(text).is_some() =>
        {
            return Err(err(unshareable(text).expect("guarded")));
        }
        SqlType::Date => {
            Datum::Date(parse_date(text).ok_or_else(|| err("not a date YYYY-MM-DD (AD, finite)"))?)
        }
        SqlType::Time => {
            Datum::Time(parse_time(text).ok_or_else(|| err("not a time HH:MM:SS[.ffffff]"))?)
        }
        SqlType::Timestamp => {
            let (date, time) = text
                .split_once([' ', 'T'])
                .ok_or_else(|| err("not a timestamp YYYY-MM-DD HH:MM:SS"))?;
            let days = parse_date(date).ok_or_else(|| err("bad date part"))?;
            let micros = parse_time(time).ok_or_else(|| err("bad time part"))?;
            Datum::Timestamp(i64::from(days) * MICROS_PER_DAY + micros)
        }
        SqlType::TimestampTz => {
            let (date, rest) = text
                .split_once([' ', 'T'])
                .ok_or_else(|| err("not a timestamp with time zone"))?;
            let days = parse_date(date).ok_or_else(|| err("bad date part"))?;
            let split = rest.rfind(['+', '-']).ok_or_else(|| err("no UTC offset"))?;
            let (time, offset) = rest.split_at(split);
            let micros = parse_time(time).ok_or_else(|| err("bad time part"))?;
            let offset = parse_offset(offset).ok_or_else(|| err("bad UTC offset"))?;
            Datum::TimestampTz(i64::from(days) * MICROS_PER_DAY + micros - offset)
        }
        SqlType::Uuid => Datum::Uuid(text.parse().map_err(|_| err("not a UUID"))?),
    })
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Why a date or timestamp PostgreSQL prints as `text` has no value in
/// the shared schema, if so: the infinities, and dates before year 1
/// (printed with ` BC`).
fn unshareable(text: &str) -> Option<&'static str> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("infinity") || t.eq_ignore_ascii_case("-infinity") {
        Some("'infinity' and '-infinity' have no value in the shared schema; share the column through a view that maps them (e.g. to NULL or to a far date)")
    } else if t.ends_with(" BC") {
        Some("dates before year 1 (BC) cannot be shared; share the column through a view that maps them (e.g. to NULL)")
    } else {
        None
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// days_from_civil).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_date(text: &str) -> Option<i32> {
    let mut parts = text.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1 {
        return None;
    }
    i32::try_from(days_from_civil(y, m, d)).ok()
}

/// Microseconds since midnight of `HH:MM:SS[.ffffff]`.
fn parse_time(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: i64 = s.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) || h > 24 || m > 59 || s > 60 {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + micros)
}

/// Microseconds east of UTC of `+08`, `-05:30`, `+0530`.
fn parse_offset(text: &str) -> Option<i64> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    let (h, m, s) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0, 0),
        4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?, 0),
        6 => (
            digits[..2].parse().ok()?,
            digits[2..4].parse().ok()?,
            digits[4..].parse().ok()?,
        ),
        _ => return None,
    };
    Some(sign * ((h * 60 + m) * 60 + s) * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_dates_and_times_convert_exactly() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("1969-12-31"), Some(-1));
        assert_eq!(parse_date("0001-01-01"), Some(-719_162));
        assert_eq!(parse_date("infinity"), None);
        for (sql_type, text) in [
            (SqlType::Timestamp, "infinity"),
            (SqlType::TimestampTz, "-infinity"),
            (SqlType::Date, "infinity"),
        ] {
            let e = parse(&sql_type, text).unwrap_err();
            assert!(e.reason.contains("'infinity'"), "{e}");
        }
        for (sql_type, text) in [
            (SqlType::Timestamp, "0044-03-15 12:00:00 BC"),
            (SqlType::TimestampTz, "0001-01-01 00:00:00+00 BC"),
            (SqlType::Date, "4713-01-01 BC"),
        ] {
            let e = parse(&sql_type, text).unwrap_err();
            assert!(e.reason.contains("before year 1"), "{e}");
        }
        assert_eq!(parse_time("23:59:59.999999"), Some(86_399_999_999));
        assert_eq!(parse_time("00:00:01.5"), Some(1_500_000));
        let tz = parse(&SqlType::TimestampTz, "2026-11-22 08:00:00.25+08").unwrap();
        let utc = parse(&SqlType::Timestamp, "2026-11-22 00:00:00.25").unwrap();
        match (tz, utc) {
            (Datum::TimestampTz(a), Datum::Timestamp(b)) => assert_eq!(a, b),
            other => panic!("{other:?}"),
        }
        let ist = parse(&SqlType::TimestampTz, "2026-11-22 05:30:00-05:30").unwrap();
        assert_eq!(
            ist,
            parse(&SqlType::TimestampTz, "2026-11-22 11:00:00+00").unwrap()
        );
    }

    #[test]
    fn text_values_of_every_type_convert() {
        let dec = SqlType::Decimal {
            precision: Some(12),
            scale: Some(2),
        };
        assert_eq!(
            parse(&dec, "-1234.5").unwrap(),
            Datum::Decimal(Decimal::parse("-1234.50", 2).unwrap())
        );
        assert!(parse(&dec, "NaN").is_err());
        assert_eq!(
            parse(&SqlType::Bytes, "\\x00ff10").unwrap(),
            Datum::Bytes(vec![0, 255, 16])
        );
        assert_eq!(parse(&SqlType::Boolean, "t").unwrap(), Datum::Bool(true));
        assert_eq!(
            parse(&SqlType::BigInt, "-9223372036854775808").unwrap(),
            Datum::Long(i64::MIN)
        );
        assert!(matches!(parse(&SqlType::Double, "NaN").unwrap(), Datum::Double(v) if v.is_nan()));
        assert_eq!(
            parse(&SqlType::Real, "-Infinity").unwrap(),
            Datum::Float(f32::NEG_INFINITY)
        );
        let e = parse(&SqlType::Int, "12x").unwrap_err();
        assert!(
            e.to_string().contains("integer") && !e.to_string().contains("12x"),
            "{e}"
        );
    }
}
