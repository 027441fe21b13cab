//! Row images of a binlog rows event, decoded value by value with
//! mysql_common's binlog value decoder.
//!
//! mysql_common's own row iterator also builds a full column description
//! (name, flags, schema and table names) for every column of every row;
//! profiling the feed showed that allocation as most of the source's CPU
//! time, and the source needs none of it: it knows its tables from
//! `information_schema`.
//!
//! [`rows`] goes one step further and turns each value straight into the
//! table version's [`Datum`] as it is read: no intermediate image of
//! `Value`s, and `DECIMAL`, `TIMESTAMP` and character columns read in place
//! (mysql_common hands decimals and timestamps over as text, which then had
//! to be parsed again). Everything else goes through mysql_common's decoder
//! and [`catalog::datum`], value for value as before.

use std::io;

use backflow_schemas::{Datum, Decimal, Row, SqlType, TableDesc};
use mysql_async::binlog::events::{RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value;
use mysql_common::io::ParseBuf;
use mysql_common::proto::MyDeserialize;

use super::catalog::{self, Kind, Origin};

/// One row image: a value (or why it cannot be read) per table column.
type RawImage = Vec<Result<Value, String>>;

/// One row image as the table version's row: `Ok(None)` when the event
/// has no such image, `Err` (never the value) when it cannot be shared.
pub(crate) type Image = Result<Option<Row>, String>;

/// The (before, after) images of every row of the event, as rows of the
/// table version `desc` (whose columns the event has). An error is an
/// event that cannot be decoded at all.
pub(crate) fn rows(
    rows: &RowsEventData<'_>,
    tme: &TableMapEvent<'_>,
    desc: &TableDesc,
    kinds: &[Kind],
) -> io::Result<Vec<(Image, Image)>> {
    let n = rows.num_columns() as usize;
    if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_))
        || n != desc.columns.len()
        || n != kinds.len()
    {
        return Ok(images(rows, tme)?
            .into_iter()
            .map(|(b, a)| (as_row(desc, kinds, b), as_row(desc, kinds, a)))
            .collect());
    }
    let columns = column_types(rows, tme)?;
    let columns: Vec<Column<'_, '_>> = columns
        .into_iter()
        .zip(desc.columns.iter().zip(kinds))
        .map(|((t, meta), (c, kind))| Column {
            t,
            meta,
            kind,
            sql_type: &c.sql_type,
            name: &c.name,
        })
        .collect();
    let before = rows.columns_before_image();
    let after = rows.columns_after_image();
    let data = rows.rows_data();
    let mut buf = ParseBuf(data);
    let mut out = Vec::new();
    while !buf.is_empty() {
        let b = match before {
            Some(present) => decode(&mut buf, present, &columns)?.map(Some),
            None => Ok(None),
        };
        let a = match after {
            Some(present) => decode(&mut buf, present, &columns)?.map(Some),
            None => Ok(None),
        };
        if out.is_empty() {
            // Room for as many rows as the first one's size suggests.
            let first = (data.len() - buf.0.len()).max(1);
            out.reserve(1 + buf.0.len() / first);
        }
        out.push((b, a));
    }
    Ok(out)
}

/// A column of the event with the table version's description of it.
struct Column<'e, 'd> {
    t: ColumnType,
    meta: &'e [u8],
    kind: &'d Kind,
    sql_type: &'d SqlType,
    name: &'d str,
}

/// An image decoded by mysql_common's decoder, as a row of `desc` (the
/// general path: partial JSON updates, and events whose column count is
/// not the version's).
fn as_row(desc: &TableDesc, kinds: &[Kind], raw: Option<RawImage>) -> Image {
    let Some(raw) = raw else { return Ok(None) };
    if raw.len() != desc.columns.len() {
        return Err(format!(
            "a row image with {} of the {} columns of {}",
            raw.len(),
            desc.columns.len(),
            desc.qualified_name()
        ));
    }
    let values = raw.into_iter().collect::<Result<Vec<_>, _>>()?;
    super::build_row(desc, kinds, values, Origin::Binlog).map(Some)
}

/// One row image straight into datums. As with [`as_row`], a column whose
/// value could not be read (not in the image, an unreadable JSON
/// document) is reported before one whose value does not convert, each
/// the first in column order, as [`as_row`] does.
fn decode<'a>(
    buf: &mut ParseBuf<'a>,
    present: &bitvec::slice::BitSlice<u8>,
    columns: &[Column<'a, '_>],
) -> io::Result<Result<Row, String>> {
    let count = present.count_ones();
    let nulls: &[u8] = buf.parse(count.div_ceil(8))?;
    let mut values = Vec::with_capacity(columns.len());
    let mut unread: Option<String> = None;
    let mut invalid: Option<String> = None;
    let mut k = 0;
    // A FULL image has every column; otherwise each is looked up.
    let all = present.get(..columns.len()).is_some_and(|p| p.all());
    for (i, c) in columns.iter().enumerate() {
        if !all && !present.get(i).as_deref().copied().unwrap_or(false) {
            unread.get_or_insert_with(|| missing(i));
            values.push(Datum::Null);
            continue;
        }
        let null = nulls.get(k / 8).is_none_or(|b| b & (1 << (k % 8)) != 0);
        k += 1;
        if null {
            values.push(Datum::Null);
            continue;
        }
        let converted = match in_place(buf, c)? {
            Some(d) => d,
            None => {
                let v = BinlogValue::deserialize((c.t, c.meta, false, false), buf)?;
                match value(v) {
                    Ok(v) => catalog::datum(c.kind, c.sql_type, v, Origin::Binlog),
                    Err(e) => {
                        unread.get_or_insert(e);
                        values.push(Datum::Null);
                        continue;
                    }
                }
            }
        };
        match converted {
            Ok(d) => values.push(d),
            Err(e) => {
                invalid.get_or_insert_with(|| format!("column {}: {e}", c.name));
                values.push(Datum::Null);
            }
        }
    }
    Ok(match unread.or(invalid) {
        Some(e) => Err(e),
        None => Ok(Row(values)),
    })
}

fn missing(i: usize) -> String {
    format!(
        "column {} is not in the row image; set binlog_row_image = FULL",
        i + 1
    )
}

/// Reads a value the common way columns are shared, without mysql_common's
/// `Value` in between; exactly what mysql_common's decoder and
/// [`catalog::datum`] make of it. `None` (nothing read): any other column,
/// or a value the general path must judge.
fn in_place(
    buf: &mut ParseBuf<'_>,
    c: &Column<'_, '_>,
) -> io::Result<Option<Result<Datum, String>>> {
    match (c.t, c.kind) {
        (
            ColumnType::MYSQL_TYPE_VARCHAR
            | ColumnType::MYSQL_TYPE_VAR_STRING
            | ColumnType::MYSQL_TYPE_STRING
            | ColumnType::MYSQL_TYPE_TINY_BLOB
            | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
            | ColumnType::MYSQL_TYPE_LONG_BLOB
            | ColumnType::MYSQL_TYPE_BLOB,
            Kind::Text(cs),
        ) => {
            let Some(bytes) = string_bytes(buf, c.t, c.meta)? else {
                return Ok(None);
            };
            Ok(Some(catalog::text_of_slice(bytes, *cs).map(Datum::Text)))
        }
        (ColumnType::MYSQL_TYPE_NEWDECIMAL, Kind::Decimal) => Ok(decimal(buf, c)),
        (ColumnType::MYSQL_TYPE_TIMESTAMP2, Kind::Timestamp) => timestamp2(buf, c.meta),
        _ => Ok(None),
    }
}

/// The bytes of a character or blob value (length-prefixed as mysql_common
/// reads them); `None` (nothing read) for metadata it would not accept.
fn string_bytes<'a>(
    buf: &mut ParseBuf<'a>,
    t: ColumnType,
    meta: &[u8],
) -> io::Result<Option<&'a [u8]>> {
    let prefix = match t {
        ColumnType::MYSQL_TYPE_VARCHAR | ColumnType::MYSQL_TYPE_VAR_STRING => {
            let [lo, hi, ..] = *meta else { return Ok(None) };
            if u16::from_le_bytes([lo, hi]) < 256 {
                1
            } else {
                2
            }
        }
        ColumnType::MYSQL_TYPE_STRING => {
            let length = match *meta {
                [b0, b1, ..] if b0 >= 1 => {
                    let (b0, b1) = (usize::from(b0), usize::from(b1));
                    if (b0 & 0x30) != 0x30 {
                        // A long CHAR(): see MySQL bug #37426.
                        b1 | (((b0 & 0x30) ^ 0x30) << 4)
                    } else {
                        b1
                    }
                }
                [0, b1, ..] => usize::from(b1) << 8,
                _ => return Ok(None),
            };
            if length < 256 {
                1
            } else {
                2
            }
        }
        _ => match meta.first() {
            Some(n @ 1..=4) => usize::from(*n),
            _ => return Ok(None),
        },
    };
    let len_bytes: &[u8] = buf.parse(prefix)?;
    let mut len = [0u8; 8];
    len[..prefix].copy_from_slice(len_bytes);
    let n = usize::try_from(u64::from_le_bytes(len))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "value length"))?;
    Ok(Some(buf.parse(n)?))
}

/// Decimal digits per 4-byte group of MySQL's binary decimal.
const DIGITS_PER_GROUP: usize = 9;
/// Bytes holding 0..=9 leftover digits.
const DIGIT_BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// A `DECIMAL(p,s)` of up to 38 digits at the column's scale, read into
/// its unscaled integer; `None` (nothing read) otherwise, and for digit
/// groups out of range (the general path judges those).
fn decimal(buf: &mut ParseBuf<'_>, c: &Column<'_, '_>) -> Option<Result<Datum, String>> {
    let (
        &SqlType::Decimal {
            precision: Some(_),
            scale,
        },
        [precision, frac, ..],
    ) = (c.sql_type, c.meta)
    else {
        return None;
    };
    let (precision, frac) = (usize::from(*precision), usize::from(*frac));
    if precision > 38 || frac > precision || scale.unwrap_or(0) as usize != frac {
        return None;
    }
    let intg = precision - frac;
    // Digit counts of the groups, most significant first.
    let (int_full, int_lead) = (intg / DIGITS_PER_GROUP, intg % DIGITS_PER_GROUP);
    let (frac_full, frac_tail) = (frac / DIGITS_PER_GROUP, frac % DIGITS_PER_GROUP);
    let groups = std::iter::once(int_lead)
        .chain(std::iter::repeat_n(DIGITS_PER_GROUP, int_full + frac_full))
        .chain(std::iter::once(frac_tail))
        .filter(|d| *d > 0);
    let size: usize = groups.clone().map(|d| DIGIT_BYTES[d]).sum();
    let bytes = buf.0.get(..size)?;
    // The sign bit is stored inverted; a negative value has every bit
    // inverted.
    let negative = bytes.first().is_some_and(|b| b & 0x80 == 0);
    let mask = if negative { 0xff } else { 0 };
    let mut unscaled: i128 = 0;
    let mut at = 0;
    for digits in groups {
        let n = DIGIT_BYTES[digits];
        let mut group: u32 = 0;
        for (j, b) in bytes[at..at + n].iter().enumerate() {
            let b = if at + j == 0 { b ^ 0x80 } else { *b };
            group = (group << 8) | u32::from(b ^ mask);
        }
        at += n;
        let limit = 10u32.pow(digits as u32);
        if group >= limit {
            return None;
        }
        unscaled = unscaled * i128::from(limit) + i128::from(group);
    }
    buf.0 = &buf.0[size..];
    if negative {
        unscaled = -unscaled;
    }
    Some(Ok(Datum::Decimal(Decimal {
        unscaled: unscaled.into(),
        scale: frac as u32,
    })))
}

/// A `TIMESTAMP(fsp)`: big-endian seconds, then the fraction in
/// (fsp + 1) / 2 big-endian bytes. `None` (nothing read) for a fraction
/// out of range.
fn timestamp2(buf: &mut ParseBuf<'_>, meta: &[u8]) -> io::Result<Option<Result<Datum, String>>> {
    let Some(&fsp) = meta.first() else {
        return Ok(None);
    };
    let frac_bytes = match fsp {
        1 | 2 => 1,
        3 | 4 => 2,
        5 | 6 => 3,
        _ => 0,
    };
    let Some(bytes) = buf.0.get(..4 + frac_bytes) else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "a TIMESTAMP value is cut short",
        ));
    };
    // mysql_common reads the seconds as u32 and keeps them as i32.
    let secs = i64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as i32);
    let f = &bytes[4..];
    let us: i64 = match frac_bytes {
        1 => i64::from(f[0] as i8) * 10_000,
        2 => i64::from(i16::from_be_bytes([f[0], f[1]])) * 100,
        3 => i64::from(i32::from_be_bytes([f[0], f[1], f[2], 0]) >> 8),
        _ => 0,
    };
    if !(0..1_000_000).contains(&us) {
        return Ok(None);
    }
    buf.0 = &buf.0[4 + frac_bytes..];
    Ok(Some(catalog::binlog_timestamp(secs, us)))
}

/// Each column's type and metadata, from the table map.
fn column_types<'t>(
    rows: &RowsEventData<'_>,
    tme: &'t TableMapEvent<'_>,
) -> io::Result<Vec<(ColumnType, &'t [u8])>> {
    let n = rows.num_columns() as usize;
    let mut columns = Vec::with_capacity(n);
    for i in 0..n {
        let t = tme
            .get_column_type(i)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no column type"))?;
        columns.push((t, tme.get_column_metadata(i).unwrap_or(&[])));
    }
    Ok(columns)
}

/// The (before, after) images of every row of the event.
fn images(
    rows: &RowsEventData<'_>,
    tme: &TableMapEvent<'_>,
) -> io::Result<Vec<(Option<RawImage>, Option<RawImage>)>> {
    if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
        // MySQL's partial JSON updates carry a shared image: leave them to
        // mysql_common's general decoder.
        return rows
            .rows(tme)
            .map(|r| {
                let (b, a) = r?;
                let conv = |row: mysql_async::binlog::row::BinlogRow| -> RawImage {
                    row.unwrap().into_iter().map(value).collect()
                };
                Ok((b.map(conv), a.map(conv)))
            })
            .collect();
    }
    let columns = column_types(rows, tme)?;
    let before = rows.columns_before_image();
    let after = rows.columns_after_image();
    let mut buf = ParseBuf(rows.rows_data());
    let mut out = Vec::new();
    while !buf.is_empty() {
        let b = match before {
            Some(present) => Some(image(&mut buf, present, &columns)?),
            None => None,
        };
        let a = match after {
            Some(present) => Some(image(&mut buf, present, &columns)?),
            None => None,
        };
        out.push((b, a));
    }
    Ok(out)
}

fn image<'a>(
    buf: &mut ParseBuf<'a>,
    present: &bitvec::slice::BitSlice<u8>,
    columns: &[(mysql_async::consts::ColumnType, &'a [u8])],
) -> io::Result<RawImage> {
    let count = present.count_ones();
    let nulls: &[u8] = buf.parse(count.div_ceil(8))?;
    let mut values = Vec::with_capacity(columns.len());
    let mut k = 0;
    for (i, (t, meta)) in columns.iter().enumerate() {
        if !present.get(i).as_deref().copied().unwrap_or(false) {
            values.push(Err(missing(i)));
            continue;
        }
        let null = nulls.get(k / 8).is_none_or(|b| b & (1 << (k % 8)) != 0);
        k += 1;
        if null {
            values.push(Ok(Value::NULL));
            continue;
        }
        let v = BinlogValue::deserialize((*t, *meta, false, false), buf)?;
        values.push(value(v));
    }
    Ok(values)
}

/// A binlog value as a plain value (JSON documents as their text).
pub(crate) fn value(v: BinlogValue<'_>) -> Result<Value, String> {
    match v {
        BinlogValue::Value(v) => Ok(v),
        BinlogValue::Jsonb(j) => serde_json::Value::try_from(j)
            .map(|j| Value::Bytes(j.to_string().into_bytes()))
            .map_err(|_| "a JSON document that cannot be read".to_owned()),
        BinlogValue::JsonDiff(_) => Err(
            "a partial JSON update; the source needs full JSON images: SET GLOBAL binlog_row_value_options = ''"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What mysql_common's decoder and `catalog::datum` make of `bytes`, and
    /// how many bytes they read.
    fn general(
        t: ColumnType,
        meta: &[u8],
        (sql, kind): &(SqlType, Kind),
        bytes: &[u8],
    ) -> (Result<Datum, String>, usize) {
        let mut buf = ParseBuf(bytes);
        let v = BinlogValue::deserialize((t, meta, false, false), &mut buf).expect("decodes");
        let d = value(v).and_then(|v| catalog::datum(kind, sql, v, Origin::Binlog));
        (d, bytes.len() - buf.0.len())
    }

    /// The in-place result and how many bytes it read; `None` when it
    /// leaves the value to the general path (then having read nothing).
    fn fast(
        t: ColumnType,
        meta: &[u8],
        (sql, kind): &(SqlType, Kind),
        bytes: &[u8],
    ) -> Option<(Result<Datum, String>, usize)> {
        let mut buf = ParseBuf(bytes);
        let c = Column {
            t,
            meta,
            kind,
            sql_type: sql,
            name: "c",
        };
        let d = in_place(&mut buf, &c).expect("decodes");
        if d.is_none() {
            assert_eq!(buf.0.len(), bytes.len(), "nothing read");
        }
        Some((d?, bytes.len() - buf.0.len()))
    }

    /// MySQL's binary DECIMAL(precision, scale) of `text` (decimal2bin):
    /// base-10^9 groups, big-endian, leftover digits in the fewest bytes,
    /// every bit inverted when negative, then the top bit flipped; and a
    /// few bytes of the next value.
    fn decimal_bytes(text: &str, precision: u8, scale: u8) -> Vec<u8> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, text),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = int.trim_start_matches('0');
        let (p, s) = (usize::from(precision), usize::from(scale));
        let all = format!("{int:0>w$}{frac:0<s$}", w = p - s);
        let mut widths = vec![(p - s) % 9];
        widths.extend(std::iter::repeat_n(9, (p - s) / 9 + s / 9));
        widths.push(s % 9);
        let mut out = Vec::new();
        let mut at = 0;
        for w in widths.into_iter().filter(|w| *w > 0) {
            let group: u32 = all[at..at + w].parse().unwrap();
            at += w;
            out.extend_from_slice(&group.to_be_bytes()[4 - DIGIT_BYTES[w]..]);
        }
        if negative {
            out.iter_mut().for_each(|b| *b = !*b);
        }
        out[0] ^= 0x80;
        assert_eq!(
            out.len(),
            mysql_common::binlog::decimal::decimal_bin_size(p, s)
        );
        out.extend_from_slice(b"next");
        out
    }

    #[test]
    fn decimals_read_in_place_equal_the_general_path() {
        let cases: &[(u8, u8, &[&str])] = &[
            (12, 2, &["0.00", "0.01", "-0.01", "1.5", "-1.5", "42"]),
            (12, 2, &["1234567890.12", "-9999999999.99"]),
            (20, 6, &["-12345678901234.123456", "12345678901234.123456"]),
            (20, 6, &["0.000001", "-0.000001", "7"]),
            (10, 0, &["0", "1", "-1", "9999999999", "-9999999999"]),
            (9, 9, &["0.123456789", "-0.000000001", "0.999999999"]),
            (18, 9, &["123456789.987654321", "-1.000000001"]),
            (38, 10, &["1234567890123456789012345678.0123456789"]),
            (38, 10, &["-9999999999999999999999999999.9999999999"]),
            (5, 3, &["12.345", "-0.001", "0"]),
            (1, 0, &["0", "9", "-9"]),
        ];
        for (p, s, values) in cases {
            let col =
                catalog::map_type("decimal", &format!("decimal({p},{s})"), None, false).unwrap();
            let meta = [*p, *s];
            for v in *values {
                let bytes = decimal_bytes(v, *p, *s);
                let want = general(ColumnType::MYSQL_TYPE_NEWDECIMAL, &meta, &col, &bytes);
                // The bytes are the value: mysql_common reads it back.
                let exact = Decimal::parse(v, u32::from(*s)).unwrap();
                assert_eq!(
                    want,
                    (Ok(Datum::Decimal(exact)), bytes.len() - 4),
                    "{v} as decimal({p},{s})"
                );
                let got = fast(ColumnType::MYSQL_TYPE_NEWDECIMAL, &meta, &col, &bytes);
                assert_eq!(got, Some(want), "{v} as decimal({p},{s})");
            }
        }
        // Wider than 38 digits: left to the general path.
        let col = catalog::map_type("decimal", "decimal(65,30)", None, false).unwrap();
        let bytes = decimal_bytes("1.5", 65, 30);
        let meta = [65, 30];
        assert_eq!(
            fast(ColumnType::MYSQL_TYPE_NEWDECIMAL, &meta, &col, &bytes),
            None
        );
        // A digit group out of range (no server writes one): general path.
        let col = catalog::map_type("decimal", "decimal(4,0)", None, false).unwrap();
        let bytes = [0x80 | 0x27, 0x10];
        assert_eq!(
            fast(ColumnType::MYSQL_TYPE_NEWDECIMAL, &[4, 0], &col, &bytes),
            None
        );
    }

    #[test]
    fn timestamps_read_in_place_equal_the_general_path() {
        let col = catalog::map_type("timestamp", "timestamp(6)", None, false).unwrap();
        for fsp in 0u8..=6 {
            let frac_bytes = [0, 1, 1, 2, 2, 3, 3][usize::from(fsp)];
            // The largest fraction stored in that width: 99, 9999, 999999.
            let top = [0, 99, 99, 9999, 9999, 999_999, 999_999][usize::from(fsp)];
            for (secs, frac) in [
                (1_700_000_000u32, top / 3),
                (1_700_000_000, 0),
                (0, 0),
                (0, top),
                (1, 1),
                (2_147_483_647, top),
                (3_000_000_000, 1),
            ] {
                let frac = if fsp == 0 { 0 } else { frac };
                let mut bytes = secs.to_be_bytes().to_vec();
                bytes.extend_from_slice(&(frac as u32).to_be_bytes()[4 - frac_bytes..]);
                bytes.push(0xAA);
                let want = general(ColumnType::MYSQL_TYPE_TIMESTAMP2, &[fsp], &col, &bytes);
                let got = fast(ColumnType::MYSQL_TYPE_TIMESTAMP2, &[fsp], &col, &bytes);
                assert_eq!(got, Some(want), "{secs}.{frac} at fsp {fsp}");
            }
        }
        // Fractions out of range (no server writes them): general path.
        for (fsp, frac) in [
            (6u8, vec![0xff, 0xff, 0xff]),
            (2, vec![123]),
            (6, vec![0x0f, 0x42, 0x40]),
        ] {
            let mut bytes = vec![0, 0, 0, 1];
            bytes.extend_from_slice(&frac);
            assert_eq!(
                fast(ColumnType::MYSQL_TYPE_TIMESTAMP2, &[fsp], &col, &bytes),
                None
            );
        }
    }

    #[test]
    fn text_read_in_place_equals_the_general_path() {
        let utf8 = catalog::map_type("varchar", "varchar(64)", Some("utf8mb4"), false).unwrap();
        let latin1 = catalog::map_type("varchar", "varchar(64)", Some("latin1"), false).unwrap();
        let long = "长".repeat(100);
        let values: [&[u8]; 5] = [
            b"",
            b"plain",
            "居民42 😀".as_bytes(),
            b"\xe9t\xe9",
            long.as_bytes(),
        ];
        // CHAR(255) utf8mb4 (1020 bytes): the long CHAR metadata.
        let long_char = vec![0xfe ^ (((1020 >> 8) & 0x3) << 4) as u8, (1020 & 0xff) as u8];
        // (type, metadata, bytes of the length)
        let shapes: [(ColumnType, Vec<u8>, usize); 8] = [
            (
                ColumnType::MYSQL_TYPE_VARCHAR,
                256u16.to_le_bytes().to_vec(),
                2,
            ),
            (
                ColumnType::MYSQL_TYPE_VARCHAR,
                255u16.to_le_bytes().to_vec(),
                1,
            ),
            (
                ColumnType::MYSQL_TYPE_VAR_STRING,
                1000u16.to_le_bytes().to_vec(),
                2,
            ),
            (ColumnType::MYSQL_TYPE_STRING, vec![0xfe, 24], 1),
            (ColumnType::MYSQL_TYPE_STRING, long_char, 2),
            (ColumnType::MYSQL_TYPE_BLOB, vec![2], 2),
            (ColumnType::MYSQL_TYPE_BLOB, vec![1], 1),
            (ColumnType::MYSQL_TYPE_BLOB, vec![4], 4),
        ];
        for (t, meta, prefix) in &shapes {
            for v in values {
                if *prefix == 1 && v.len() > 255 {
                    continue;
                }
                let mut bytes = (v.len() as u32).to_le_bytes()[..*prefix].to_vec();
                bytes.extend_from_slice(v);
                bytes.push(7);
                for col in [&utf8, &latin1] {
                    let want = general(*t, meta, col, &bytes);
                    let got = fast(*t, meta, col, &bytes);
                    assert_eq!(got, Some(want), "{t:?} {meta:?} {v:?}");
                }
            }
        }
    }
}
