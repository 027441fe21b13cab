//! Decoding of `pgoutput` (protocol version 1) change messages. Begin and
//! Commit are decoded by the replication client; this handles the rest.

/// One column value in a tuple.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL.
    #[default]
    Null,
    /// A TOASTed value that did not change (not sent).
    Unchanged,
    /// The value's text form.
    Text(String),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Describes a table before its first change in a session.
    Relation {
        id: u32,
        schema: String,
        name: String,
        columns: Vec<String>,
    },
    /// A row was inserted.
    Insert { relation: u32, new: Vec<Cell> },
    /// A row was updated; `old` is present with REPLICA IDENTITY FULL (or
    /// when the key changed).
    Update {
        relation: u32,
        old: Option<Vec<Cell>>,
        new: Vec<Cell>,
    },
    /// A row was deleted.
    Delete { relation: u32, old: Vec<Cell> },
    /// Tables were truncated.
    Truncate { relations: Vec<u32> },
    /// Something this source does not use (type, origin, message).
    Other(u8),
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(pub String);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError(format!(
                "needed {n} bytes, {} left",
                self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("unterminated string".into()))?;
        let s = String::from_utf8(self.0[..end].to_vec())
            .map_err(|_| DecodeError("string is not UTF-8".into()))?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell>, DecodeError> {
        let n = self.i16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Cell::Null),
                b'u' => Ok(Cell::Unchanged),
                b't' => {
                    let len = usize::try_from(self.i32()?)
                        .map_err(|_| DecodeError("negative length".into()))?;
                    let bytes = self.take(len)?;
                    String::from_utf8(bytes.to_vec())
                        .map(Cell::Text)
                        .map_err(|_| DecodeError("text value is not UTF-8".into()))
                }
                b'b' => Err(DecodeError(
                    "binary tuple data; the source asks for text format".into(),
                )),
                k => Err(DecodeError(format!("unknown tuple cell kind {k:#x}"))),
            })
            .collect()
    }
}

/// Decodes one `XLogData` payload.
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader(data);
    let tag = r.u8()?;
    Ok(match tag {
        b'R' => {
            let id = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _replica_identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let _flags = r.u8()?;
                columns.push(r.cstr()?);
                let _type_oid = r.u32()?;
                let _typmod = r.i32()?;
            }
            Message::Relation {
                id,
                schema,
                name,
                columns,
            }
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    relation,
                    new: r.tuple()?,
                },
                k => return Err(DecodeError(format!("insert without new tuple ({k:#x})"))),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!("update without new tuple ({kind:#x})")));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Message::Delete {
                    relation,
                    old: r.tuple()?,
                },
                k => return Err(DecodeError(format!("delete without old tuple ({k:#x})"))),
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        other => Message::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(cells: &[Option<&str>]) -> Vec<u8> {
        let mut v = (cells.len() as i16).to_be_bytes().to_vec();
        for c in cells {
            match c {
                None => v.push(b'n'),
                Some(s) => {
                    v.push(b't');
                    v.extend((s.len() as i32).to_be_bytes());
                    v.extend(s.as_bytes());
                }
            }
        }
        v
    }

    #[test]
    fn pgoutput_decodes_relation_and_changes() {
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"public\0population\0");
        rel.push(b'f');
        rel.extend(2i16.to_be_bytes());
        for name in ["id", "name"] {
            rel.push(1);
            rel.extend(name.as_bytes());
            rel.push(0);
            rel.extend(20u32.to_be_bytes());
            rel.extend((-1i32).to_be_bytes());
        }
        assert_eq!(
            decode(&rel).unwrap(),
            Message::Relation {
                id: 16384,
                schema: "public".into(),
                name: "population".into(),
                columns: vec!["id".into(), "name".into()],
            }
        );
        let mut upd = vec![b'U'];
        upd.extend(16384u32.to_be_bytes());
        upd.push(b'O');
        upd.extend(tuple(&[Some("1"), Some("西湖")]));
        upd.push(b'N');
        upd.extend(tuple(&[Some("1"), None]));
        assert_eq!(
            decode(&upd).unwrap(),
            Message::Update {
                relation: 16384,
                old: Some(vec![Cell::Text("1".into()), Cell::Text("西湖".into())]),
                new: vec![Cell::Text("1".into()), Cell::Null],
            }
        );
        // Truncated input is an error, not a panic.
        for len in 0..upd.len() {
            assert!(decode(&upd[..len]).is_err(), "prefix {len}");
        }
    }
}
