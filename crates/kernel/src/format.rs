//! Trace event `format` files, and decoding raw records with them.
//!
//! ```text
//! name: sched_switch
//! ID: 316
//! format:
//!     field:unsigned short common_type;  offset:0;  size:2;  signed:0;
//!     ...
//!     field:char prev_comm[16];  offset:8;  size:16;  signed:0;
//!     field:__data_loc char[] path;  offset:24;  size:4;  signed:1;
//! ```

/// How a field's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// An integer of the field's size.
    Int {
        /// Signed.
        signed: bool,
    },
    /// A fixed `char name[N]` array, NUL-padded.
    Chars,
    /// `__data_loc char[]`: a 32-bit word, offset in the low half and length in the high
    /// half, pointing at the string inside the record.
    DataLocString,
    /// Anything else (other arrays, `__rel_loc`): shown as bytes.
    Bytes,
}

/// One field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name.
    pub name: String,
    /// Its C type as written.
    pub c_type: String,
    /// Byte offset in the record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// Layout.
    pub kind: FieldKind,
}

/// An event's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// The event's name.
    pub name: String,
    /// Its id (the `common_type` of its records, the `config` of a tracepoint perf event).
    pub id: u64,
    /// Every field, common ones first.
    pub fields: Vec<Field>,
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    /// A signed integer.
    Signed(i64),
    /// An unsigned integer.
    Unsigned(u64),
    /// A string (without its NUL).
    Str(Vec<u8>),
    /// Other bytes.
    Bytes(Vec<u8>),
    /// A string the kernel could not read (a NULL or unmapped pointer): `(fault)`.
    Fault,
    /// The first bytes of a string longer than the kernel keeps (its `MAX_STRING_SIZE`, or
    /// the room left in the record): shown with a `...` marker.
    Truncated(Vec<u8>),
}

/// Why a format file did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad event format: {0}")]
pub struct FormatError(pub String);

impl EventFormat {
    /// Parse a `format` file.
    pub fn parse(text: &str) -> Result<EventFormat, FormatError> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(n) = line.strip_prefix("name:") {
                name = Some(n.trim().to_owned());
            } else if let Some(i) = line.strip_prefix("ID:") {
                id = Some(i.trim().parse().map_err(|_| FormatError(format!("bad ID `{}`", i.trim())))?);
            } else if line.starts_with("field:") {
                fields.push(parse_field(line)?);
            }
        }
        Ok(EventFormat {
            name: name.ok_or_else(|| FormatError("no name".into()))?,
            id: id.ok_or_else(|| FormatError("no ID".into()))?,
            fields,
        })
    }

    /// The fields that are the event's own (not `common_*`, not the probe's own addresses).
    pub fn own_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| !f.name.starts_with("common_") && !f.name.starts_with("__probe_"))
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Decode field `f` of a raw record; `None` when the record is too short for it.
    pub fn decode(&self, f: &Field, raw: &[u8]) -> Option<FieldValue> {
        let bytes = raw.get(f.offset..f.offset + f.size)?;
        Some(match f.kind {
            FieldKind::Int { signed } => {
                let mut word = [0u8; 8];
                let n = f.size.min(8);
                word[..n].copy_from_slice(&bytes[..n]);
                let v = u64::from_le_bytes(word);
                if signed {
                    let shift = 64 - 8 * n as u32;
                    FieldValue::Signed(((v << shift) as i64) >> shift)
                } else {
                    FieldValue::Unsigned(v)
                }
            }
            FieldKind::Chars => FieldValue::Str(until_nul(bytes).to_vec()),
            FieldKind::DataLocString => {
                let (start, len) = data_loc(bytes)?;
                FieldValue::Str(until_nul(raw.get(start..start + len)?).to_vec())
            }
            FieldKind::Bytes => FieldValue::Bytes(bytes.to_vec()),
        })
    }
}

/// A `__data_loc` word: the offset of the data in the record and its length.
pub(crate) fn data_loc(field_bytes: &[u8]) -> Option<(usize, usize)> {
    let loc = u32::from_le_bytes(field_bytes.get(..4)?.try_into().ok()?);
    Some(((loc & 0xffff) as usize, (loc >> 16) as usize))
}

fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

/// `field:TYPE NAME[N];\toffset:O;\tsize:S;\tsigned:G;`
fn parse_field(line: &str) -> Result<Field, FormatError> {
    let bad = || FormatError(format!("bad field line `{line}`"));
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':').ok_or_else(bad)?;
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = value.trim().parse().ok(),
            "size" => size = value.trim().parse().ok(),
            "signed" => signed = value.trim() == "1",
            _ => {}
        }
    }
    let decl = decl.ok_or_else(bad)?;
    let (offset, size) = (offset.ok_or_else(bad)?, size.ok_or_else(bad)?);
    // The name is the last word, without any `[N]`.
    let (c_type, last) = decl.rsplit_once(char::is_whitespace).ok_or_else(bad)?;
    let (name, array) = match last.split_once('[') {
        Some((n, _)) => (n, true),
        None => (last, false),
    };
    let c_type = c_type.trim().to_owned();
    let kind = if c_type.starts_with("__data_loc") && c_type.contains("char") {
        FieldKind::DataLocString
    } else if c_type.starts_with("__data_loc") || c_type.starts_with("__rel_loc") {
        FieldKind::Bytes
    } else if array && c_type.ends_with("char") {
        FieldKind::Chars
    } else if array || size > 8 {
        FieldKind::Bytes
    } else {
        FieldKind::Int { signed }
    };
    Ok(Field { name: name.to_owned(), c_type, offset, size, kind })
}
