//! The call-site table of a C++ exception's language-specific data area (LSDA, in
//! `.gcc_except_table`): where the unwinder resumes a frame that a throw passes through.
//!
//! The personality routine (`__gxx_personality_v0`, Rust's `rust_eh_personality`) looks the
//! frame's call up in this table and, when the entry has a landing pad, resumes the frame
//! there: an address inside the function that no branch names. The layout is the Itanium
//! C++ ABI's, as GCC's `unwind-pe.h` and libstdc++'s `eh_personality.cc` read it:
//!
//! ```text
//! u8       lpstart encoding      (0xff: omitted, landing pads are relative to the function)
//! encoded  lpstart               (only when not omitted)
//! u8       type table encoding   (0xff: omitted)
//! uleb128  type table offset     (only when not omitted)
//! u8       call-site encoding
//! uleb128  call-site table length, in bytes
//! entries: encoded start, encoded length, encoded landing pad, uleb128 action
//! ```
//!
//! A call site's start is relative to the function's start (the FDE's), its landing pad to
//! `lpstart`, and a landing pad of 0 means "no landing pad: keep unwinding".

/// `DW_EH_PE_omit`: no value follows.
const OMIT: u8 = 0xff;

/// One entry of a call-site table, at absolute (link-time) addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSite {
    /// The first byte of the calls it covers.
    pub start: u64,
    /// How many bytes of calls it covers.
    pub len: u64,
    /// Where the unwinder resumes the frame when a throw passes through these calls; `None`
    /// when it does not stop there.
    pub landing_pad: Option<u64>,
    /// The action record's offset plus one (0: a cleanup only).
    pub action: u64,
}

/// Why an LSDA cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LsdaError {
    /// The data ends inside the header or the table.
    #[error("the exception table ends early")]
    Truncated,
    /// A value's encoding is one this reader does not know, or needs memory it cannot read
    /// (`DW_EH_PE_indirect`) or a base it is not given (`textrel`, `datarel`, `aligned`).
    #[error("the exception table uses pointer encoding {0:#04x}, which dprobe cannot read")]
    Encoding(u8),
}

/// The call sites of the LSDA whose bytes start at `bytes` (up to the end of its section),
/// found at link-time `address`, for the function (FDE) starting at `function`.
pub fn call_sites(bytes: &[u8], address: u64, function: u64) -> Result<Vec<CallSite>, LsdaError> {
    let mut r = Reader { bytes, at: 0, address, function };
    let lpstart_encoding = r.u8()?;
    let lpstart = if lpstart_encoding == OMIT { function } else { r.encoded(lpstart_encoding)? };
    let ttype_encoding = r.u8()?;
    if ttype_encoding != OMIT {
        r.uleb128()?;
    }
    let encoding = r.u8()?;
    let table_len = usize::try_from(r.uleb128()?).map_err(|_| LsdaError::Truncated)?;
    let end = r.at.checked_add(table_len).filter(|&e| e <= bytes.len()).ok_or(LsdaError::Truncated)?;
    let mut sites = Vec::new();
    while r.at < end {
        // Call-site fields are offsets: relative to the function, whatever their encoding's
        // application says (GCC reads them with a base of 0).
        let start = r.value(encoding)?;
        let len = r.value(encoding)?;
        let pad = r.value(encoding)?;
        let action = r.uleb128()?;
        sites.push(CallSite {
            start: function.wrapping_add(start),
            len,
            landing_pad: (pad != 0).then(|| lpstart.wrapping_add(pad)),
            action,
        });
    }
    if r.at != end {
        return Err(LsdaError::Truncated);
    }
    Ok(sites)
}

/// A cursor over an LSDA's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The link-time address of `bytes[0]` (for `pcrel`).
    address: u64,
    /// The function's start (for `funcrel`).
    function: u64,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], LsdaError> {
        let b = self.bytes.get(self.at..self.at + n).ok_or(LsdaError::Truncated)?;
        self.at += n;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, LsdaError> {
        Ok(self.take(1)?[0])
    }

    fn fixed(&mut self, n: usize) -> Result<u64, LsdaError> {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(v))
    }

    fn uleb128(&mut self) -> Result<u64, LsdaError> {
        Ok(self.leb128()?.0)
    }

    fn sleb128(&mut self) -> Result<u64, LsdaError> {
        let (v, bits, last) = self.leb128()?;
        Ok(if bits < 64 && last & 0x40 != 0 { v | u64::MAX << bits } else { v })
    }

    /// A LEB128 number's bits, how many it has, and its last byte (whose bit 6 is the sign of a
    /// signed one).
    fn leb128(&mut self) -> Result<(u64, u32, u8), LsdaError> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Ok((v, shift, b));
            }
        }
    }

    /// A value in `encoding`'s format (its low four bits), sign-extended, without applying
    /// its base.
    fn value(&mut self, encoding: u8) -> Result<u64, LsdaError> {
        let sign = |v: u64, bits: u32| ((v << (64 - bits)) as i64 >> (64 - bits)) as u64;
        Ok(match encoding & 0x0f {
            0x00 | 0x04 | 0x0c => self.fixed(8)?,
            0x01 => self.uleb128()?,
            0x02 => self.fixed(2)?,
            0x03 => self.fixed(4)?,
            0x09 => self.sleb128()?,
            0x0a => sign(self.fixed(2)?, 16),
            0x0b => sign(self.fixed(4)?, 32),
            _ => return Err(LsdaError::Encoding(encoding)),
        })
    }

    /// A pointer in `encoding`: its value plus its base (the field's own address for
    /// `pcrel`, the function's start for `funcrel`).
    fn encoded(&mut self, encoding: u8) -> Result<u64, LsdaError> {
        let field = self.address.wrapping_add(self.at as u64);
        let v = self.value(encoding)?;
        match encoding & 0xf0 {
            0x00 => Ok(v),
            0x10 => Ok(field.wrapping_add(v)),
            0x40 => Ok(self.function.wrapping_add(v)),
            _ => Err(LsdaError::Encoding(encoding)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GCC's usual form: lpstart omitted, a type table, uleb128 call sites (as `g++ -O2`
    /// emits for `try { f(); } catch (long) {}`, with a second call site without a pad).
    #[test]
    fn uleb128_call_sites_with_omitted_lpstart() {
        let lsda = [
            0xff, // lpstart omitted
            0x9b, 0x09, // type table: indirect pcrel sdata4, offset 9
            0x01, // call sites in uleb128
            0x09, // 9 bytes of call sites
            0x04, 0x05, 0x8e, 0x01, 0x01, // [+4, +9) -> pad +142, action 1
            0x14, 0x05, 0x00, 0x00, // [+20, +25): no pad
            0x01, 0x00, 0x00, 0x00, // action table, type table (not read)
        ];
        let sites = call_sites(&lsda, 0x9000, 0x1000).unwrap();
        assert_eq!(
            sites,
            [
                CallSite { start: 0x1004, len: 5, landing_pad: Some(0x1000 + 142), action: 1 },
                CallSite { start: 0x1014, len: 5, landing_pad: None, action: 0 },
            ]
        );
    }

    /// Clang's and older GCC's form: udata4 call sites, no type table (cleanups only).
    #[test]
    fn udata4_call_sites_without_a_type_table() {
        let mut lsda = vec![0xff, 0xff, 0x03, 13];
        lsda.extend(0x10u32.to_le_bytes());
        lsda.extend(0x20u32.to_le_bytes());
        lsda.extend(0x1234u32.to_le_bytes());
        lsda.push(0x00);
        let sites = call_sites(&lsda, 0x9000, 0x40_0000).unwrap();
        assert_eq!(sites, [CallSite { start: 0x40_0010, len: 0x20, landing_pad: Some(0x40_1234), action: 0 }]);
    }

    /// An lpstart given as a pc-relative sdata4: landing pads are relative to it, not to the
    /// function (a function whose pads are in another section).
    #[test]
    fn a_pc_relative_lpstart_moves_the_landing_pads() {
        // At 0x9000: the lpstart field is at 0x9001 and holds -0x8001, so lpstart = 0x1000.
        let mut lsda = vec![0x1b];
        lsda.extend((-0x8001i32).to_le_bytes());
        lsda.extend([0xff, 0x01, 0x04, 0x02, 0x03, 0x10, 0x00]);
        let sites = call_sites(&lsda, 0x9000, 0x5000).unwrap();
        assert_eq!(sites, [CallSite { start: 0x5002, len: 3, landing_pad: Some(0x1010), action: 0 }]);
    }

    #[test]
    fn a_table_longer_than_its_bytes_is_refused() {
        assert_eq!(call_sites(&[0xff, 0xff, 0x01, 0x08, 0x00, 0x01], 0, 0), Err(LsdaError::Truncated));
        assert_eq!(call_sites(&[0xff, 0xff, 0x01, 0x03, 0x00, 0x01, 0x02, 0x03], 0, 0), Err(LsdaError::Truncated));
        assert_eq!(call_sites(&[0xff], 0, 0), Err(LsdaError::Truncated));
    }

    #[test]
    fn an_indirect_lpstart_is_refused() {
        assert_eq!(call_sites(&[0x9b, 0, 0, 0, 0, 0xff, 0x01, 0x00], 0, 0), Err(LsdaError::Encoding(0x9b)));
    }

    #[test]
    fn multi_byte_leb128() {
        // A pad at +0x4000 (uleb128 80 80 01) after a call at +300 (ac 02).
        let lsda = [0xff, 0xff, 0x01, 0x07, 0xac, 0x02, 0x05, 0x80, 0x80, 0x01, 0x00];
        let sites = call_sites(&lsda, 0, 0x10_0000).unwrap();
        assert_eq!(sites, [CallSite { start: 0x10_0000 + 300, len: 5, landing_pad: Some(0x10_4000), action: 0 }]);
    }
}
