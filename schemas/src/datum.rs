//! Column values.

use std::fmt;

use num_bigint::BigInt;

use crate::SchemaError;

/// An exact decimal: `unscaled × 10^-scale`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// The digits as an integer.
    pub unscaled: BigInt,
    /// Digits after the decimal point.
    pub scale: u32,
}

impl Decimal {
    /// Parses decimal text (`-12.34`, `7`, `+0.5`) at a column's scale,
    /// padding with zeros. More fractional digits than `scale` is an error,
    /// never a silent rounding.
    pub fn parse(text: &str, scale: u32) -> Result<Decimal, SchemaError> {
        let bad = |reason: &str| SchemaError::BadDecimal {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let t = text.trim();
        let (negative, digits) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(bad("no digits"));
        }
        if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad("only digits, one '.' and a leading sign are allowed"));
        }
        let frac_trimmed = frac.trim_end_matches('0');
        if frac_trimmed.len() > scale as usize {
            return Err(bad(&format!(
                "{} fractional digits do not fit scale {scale}",
                frac_trimmed.len()
            )));
        }
        let mut all = String::with_capacity(int.len() + scale as usize);
        all.push_str(int);
        all.push_str(frac_trimmed);
        all.extend(std::iter::repeat_n(
            '0',
            scale as usize - frac_trimmed.len(),
        ));
        let mut unscaled: BigInt = if all.is_empty() {
            BigInt::from(0)
        } else {
            all.parse().map_err(|_| bad("not a number"))?
        };
        if negative {
            unscaled = -unscaled;
        }
        Ok(Decimal { unscaled, scale })
    }

    /// Number of significant digits of the unscaled value.
    pub fn digits(&self) -> u32 {
        // Checked per value on the hot path: no formatting when the
        // magnitude fits 128 bits (38 digits, every SQL DECIMAL up to that).
        let magnitude = self.unscaled.magnitude();
        if magnitude.bits() <= 128 {
            let mut words = magnitude.iter_u64_digits();
            let low = u128::from(words.next().unwrap_or(0));
            let high = u128::from(words.next().unwrap_or(0));
            return (low | high << 64).checked_ilog10().map_or(1, |d| d + 1);
        }
        magnitude.to_string().len() as u32
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.unscaled.magnitude().to_string();
        let sign = if self.unscaled.sign() == num_bigint::Sign::Minus {
            "-"
        } else {
            ""
        };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = if digits.len() <= scale {
            format!("{}{digits}", "0".repeat(scale - digits.len() + 1))
        } else {
            digits
        };
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// boolean.
    Bool(bool),
    /// smallint, integer.
    Int(i32),
    /// bigint.
    Long(i64),
    /// real.
    Float(f32),
    /// double precision.
    Double(f64),
    /// numeric(p,s).
    Decimal(Decimal),
    /// text, varchar, char; also unconstrained numeric as its exact text.
    Text(String),
    /// bytea, blob.
    Bytes(Vec<u8>),
    /// date: days since 1970-01-01.
    Date(i32),
    /// time: microseconds since midnight.
    Time(i64),
    /// timestamp without time zone: microseconds since 1970-01-01T00:00.
    Timestamp(i64),
    /// timestamptz: UTC microseconds since the epoch.
    TimestampTz(i64),
    /// uuid.
    Uuid(uuid::Uuid),
    /// json, jsonb: the document text.
    Json(String),
    /// A one-dimensional array: its elements in order, each a value of the
    /// element type or `Null`.
    Array(Vec<Datum>),
}

impl Datum {
    /// A short name of the value's kind, for error messages (never the value).
    pub fn kind(&self) -> &'static str {
        match self {
            Datum::Null => "null",
            Datum::Bool(_) => "boolean",
            Datum::Int(_) => "int",
            Datum::Long(_) => "long",
            Datum::Float(_) => "float",
            Datum::Double(_) => "double",
            Datum::Decimal(_) => "decimal",
            Datum::Text(_) => "text",
            Datum::Bytes(_) => "bytes",
            Datum::Date(_) => "date",
            Datum::Time(_) => "time",
            Datum::Timestamp(_) => "timestamp",
            Datum::TimestampTz(_) => "timestamptz",
            Datum::Uuid(_) => "uuid",
            Datum::Json(_) => "json",
            Datum::Array(_) => "array",
        }
    }
}

/// A row: one value per column, in the table's column order (or key order
/// for a key row).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row(pub Vec<Datum>);

impl From<Vec<Datum>> for Row {
    fn from(v: Vec<Datum>) -> Self {
        Row(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_parse_and_display_are_exact() {
        let cases = [
            ("-12.34", 6, "-12.340000"),
            ("0", 2, "0.00"),
            ("+0.5", 1, "0.5"),
            (".25", 2, "0.25"),
            ("-0.01", 2, "-0.01"),
            ("7", 0, "7"),
            ("12.300", 1, "12.3"),
            (
                "1234567890123456789012345678.1234567890",
                10,
                "1234567890123456789012345678.1234567890",
            ),
        ];
        for (text, scale, shown) in cases {
            let d = Decimal::parse(text, scale).unwrap();
            assert_eq!(d.to_string(), shown, "{text}");
            assert_eq!(Decimal::parse(shown, scale).unwrap(), d);
        }
        assert_eq!(Decimal::parse("-12.34", 2).unwrap().digits(), 4);
        for (text, digits) in [
            ("0", 1),
            ("9", 1),
            ("10", 2),
            ("99999999999999999999999999999999999999", 38),
            // u128::MAX, then the first value past 128 bits.
            ("340282366920938463463374607431768211455", 39),
            ("340282366920938463463374607431768211456", 39),
            ("-1234567890123456789012345678901234567890", 40),
        ] {
            assert_eq!(Decimal::parse(text, 0).unwrap().digits(), digits, "{text}");
        }
    }

    #[test]
    fn decimal_parse_refuses_rounding_and_garbage() {
        for (text, scale) in [
            ("1.234", 2),
            ("abc", 2),
            ("1.2.3", 2),
            ("", 0),
            ("-", 0),
            ("1e5", 0),
        ] {
            let err = Decimal::parse(text, scale).unwrap_err();
            assert!(err.to_string().contains("decimal"), "{text}: {err}");
        }
    }
}
