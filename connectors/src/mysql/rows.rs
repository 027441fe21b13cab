//! Row images of a binlog rows event, decoded value by value with
//! mysql_common's binlog value decoder.
//!
//! mysql_common's own row iterator also builds a full column description
//! (name, flags, schema and table names) for every column of every row;
//! profiling the feed showed that allocation as most of the source's CPU
//! time, and the source needs none of it: it knows its tables from
//! `information_schema`.

use std::io;

use mysql_async::binlog::events::{RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::Value;
use mysql_common::io::ParseBuf;
use mysql_common::proto::MyDeserialize;

/// One row image: a value (or why it cannot be read) per table column.
pub(crate) type RawImage = Vec<Result<Value, String>>;

/// The (before, after) images of every row of the event.
pub(crate) fn images(
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
    let n = rows.num_columns() as usize;
    let mut columns = Vec::with_capacity(n);
    for i in 0..n {
        let t = tme
            .get_column_type(i)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no column type"))?;
        columns.push((t, tme.get_column_metadata(i).unwrap_or(&[])));
    }
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
            values.push(Err(format!(
                "column {} is not in the row image; set binlog_row_image = FULL",
                i + 1
            )));
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
