//! Column values from their SQL text form (PostgreSQL's text output, which
//! pgoutput sends and `::text` casts give), into [`Datum`]s.
//!
//! Timestamps with a time zone are converted to UTC; the connection should
//! use `TimeZone=UTC` so the server prints `+00`, but any offset is honoured.
//! Intervals are kept as the server prints them: the connection should use
//! `IntervalStyle=iso_8601`, so they are ISO 8601 durations.
//!
//! An array is read from PostgreSQL's text array form ([`parse_array`]):
//! `{1,NULL,"a \"b\""}`, elements quoted when they hold a delimiter,
//! quote, backslash, brace or space, or spell NULL; backslash escapes the
//! next character. Only one-dimensional arrays indexed from 1 are shared:
//! `{{1,2},{3,4}}` and `[0:1]={1,2}` are refused with the reason.

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
        SqlType::Interval => Datum::Text(text.to_owned()),
        SqlType::Array(element) => Datum::Array(
            parse_array(text)
                .map_err(|reason| err(&reason))?
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    None => Ok(Datum::Null),
                    Some(item) => parse(element, &item)
                        .map_err(|e| err(&format!("element {}: {}", i + 1, e.reason))),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The elements of a one-dimensional array in PostgreSQL's text form
/// (`None` for NULL), or why it is not one; the reason never holds the
/// value. The delimiter is `,` (that of every type but `box`).
pub fn parse_array(text: &str) -> Result<Vec<Option<String>>, String> {
    let t = text.trim();
    if t.starts_with('[') {
        return Err("an array whose index has a lower bound other than 1 (printed as [lower:upper]={...}) cannot be shared: share the column through a view that re-bases it, e.g. array(SELECT unnest(column))"
            .to_owned());
    }
    let inner = t
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or("not an array in PostgreSQL's text form {...}")?;
    let multi = "an array of 2 or more dimensions cannot be shared (only one-dimensional arrays are): share the column through a view that flattens it, or one row per inner array";
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    if inner.trim().is_empty() {
        return Ok(items);
    }
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut item = String::new();
        let mut quoted = false;
        let mut escaped_any = false;
        match chars.peek() {
            Some('{') => return Err(multi.to_owned()),
            Some('"') => {
                chars.next();
                quoted = true;
                loop {
                    match chars.next() {
                        None => return Err("an array element's quotes are not closed".to_owned()),
                        Some('"') => break,
                        Some('\\') => {
                            item.push(chars.next().ok_or("an array ends in a backslash")?)
                        }
                        Some(c) => item.push(c),
                    }
                }
                while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
            }
            _ => {
                // Unquoted: up to the delimiter, trailing blanks dropped
                // (escaped ones kept).
                let mut kept = 0;
                while let Some(&c) = chars.peek() {
                    match c {
                        ',' | '}' => break,
                        '{' | '"' => {
                            return Err(if c == '{' {
                                multi.to_owned()
                            } else {
                                "an array element with a stray quote".to_owned()
                            })
                        }
                        '\\' => {
                            chars.next();
                            item.push(chars.next().ok_or("an array ends in a backslash")?);
                            escaped_any = true;
                            kept = item.len();
                            continue;
                        }
                        _ => item.push(c),
                    }
                    chars.next();
                    if !c.is_ascii_whitespace() {
                        kept = item.len();
                    }
                }
                item.truncate(kept);
                if item.is_empty() {
                    return Err("an array with an empty unquoted element".to_owned());
                }
            }
        }
        let null = !quoted && !escaped_any && item.eq_ignore_ascii_case("NULL");
        items.push((!null).then_some(item));
        match chars.next() {
            None => return Ok(items),
            Some(',') => {}
            Some(_) => return Err("an array element followed by more than a delimiter".to_owned()),
        }
    }
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

    fn items(text: &str) -> Vec<Option<String>> {
        parse_array(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn owned<const N: usize>(items: [Option<&str>; N]) -> Vec<Option<String>> {
        items.into_iter().map(|i| i.map(str::to_owned)).collect()
    }

    #[test]
    fn text_arrays_keep_quotes_commas_backslashes_and_nulls_apart() {
        assert_eq!(items("{}"), owned([]));
        assert_eq!(items("{1,NULL,-3}"), owned([Some("1"), None, Some("-3")]));
        assert_eq!(
            items(r#"{"a\"b","c,d","e\\f",NULL,"NULL",""," sp ","{x}",null,NuLl}"#),
            owned([
                Some("a\"b"),
                Some("c,d"),
                Some("e\\f"),
                None,
                Some("NULL"),
                Some(""),
                Some(" sp "),
                Some("{x}"),
                None,
                None
            ])
        );
        // Blanks around unquoted elements are not part of them; escaped
        // characters are, and an escaped NULL is the text.
        assert_eq!(
            items(r#"{ a b , "q" ,c\ ,\NULL}"#),
            owned([Some("a b"), Some("q"), Some("c "), Some("NULL")])
        );
        assert_eq!(items("{中文,😀}"), owned([Some("中文"), Some("😀")]));
        assert_eq!(
            items(r#"{"2026-01-01 02:00:00+00"}"#),
            owned([Some("2026-01-01 02:00:00+00")])
        );
    }

    #[test]
    fn text_arrays_of_other_shapes_are_refused_with_the_reason_not_the_value() {
        for (text, reason) in [
            ("{{1,2},{3,4}}", "dimensions"),
            ("{{}}", "dimensions"),
            ("[0:1]={1,2}", "lower bound"),
            ("[1:1][1:2]={{1,2}}", "lower bound"),
            ("1,2", "text form"),
            ("{1,2", "text form"),
            (r#"{"secret}"#, "quotes"),
            ("{secret,}", "empty"),
            ("{,secret}", "empty"),
            (r#"{se"cret}"#, "quote"),
            (r#"{"secret"x}"#, "delimiter"),
        ] {
            let e = parse_array(text).unwrap_err();
            assert!(e.contains(reason), "{text}: {e}");
            assert!(!e.contains("secret") && !e.contains("1,2"), "{text}: {e}");
            assert!(!e.contains("  "), "one space between words: {e}");
        }
    }

    #[test]
    fn text_arrays_convert_each_element_to_its_type() {
        let ints = SqlType::Array(Box::new(SqlType::Int));
        assert_eq!(
            parse(&ints, "{1,NULL,-3}").unwrap(),
            Datum::Array(vec![Datum::Int(1), Datum::Null, Datum::Int(-3)])
        );
        let e = parse(&ints, "{1,x}").unwrap_err();
        assert!(
            e.reason.contains("element 2") && e.reason.contains("integer"),
            "{e}"
        );
        assert_eq!(
            parse(
                &SqlType::Array(Box::new(SqlType::Bytes)),
                r#"{"\\x00ff",NULL}"#
            )
            .unwrap(),
            Datum::Array(vec![Datum::Bytes(vec![0, 255]), Datum::Null])
        );
        assert_eq!(
            parse(&SqlType::Interval, "P1Y2M3DT4H5M6.5S").unwrap(),
            Datum::Text("P1Y2M3DT4H5M6.5S".into())
        );
    }
}
