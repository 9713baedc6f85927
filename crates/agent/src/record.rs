//! One event as it travels through the shared ring: a fixed header, then each fetched value
//! (an integer, a string's bytes, or the address of a fault). The tracer decodes it back into
//! [`Values`] with the value types of the probe's plan, which it knows.

use dprobe_core::fetch::{Fetched, Values};
use dprobe_core::Side;
use dprobe_spec::ArgType;

const HEADER: usize = 48;
const INT: u8 = 0;
const STR: u8 = 1;
const FAULT: u8 = 2;
/// A string cut short (by the reader, or here for want of room).
const STR_CUT: u8 = 3;
const NO_TIME: u64 = u64::MAX;
const NO_STACK: u16 = u16::MAX;

/// The header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The probe's index.
    pub probe: u32,
    /// Entry or return.
    pub side: Side,
    /// The process.
    pub pid: u32,
    /// The thread.
    pub tid: u32,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    /// At a return: when its entry was.
    pub entry_time_ns: Option<u64>,
    /// The thread's name, NUL-padded (read at the hit: the thread may be gone when the
    /// tracer reads the record).
    pub comm: [u8; 16],
    /// The stack slot holding this event's stack, if it has one.
    pub stack: Option<u16>,
}

impl Header {
    /// The thread's name without its padding.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|b| *b == 0).unwrap_or(self.comm.len());
        &self.comm[..end]
    }
}

/// Write `header` and `values` into `out`; returns the bytes used. A string that does not fit
/// is cut; a value that does not fit at all is left out. Allocates nothing.
pub fn encode(header: &Header, values: &Values, out: &mut [u8]) -> usize {
    if out.len() < HEADER {
        return 0;
    }
    out[0..4].copy_from_slice(&header.probe.to_le_bytes());
    out[4] = matches!(header.side, Side::Return) as u8;
    out[6..8].copy_from_slice(&header.stack.unwrap_or(NO_STACK).to_le_bytes());
    out[8..12].copy_from_slice(&header.pid.to_le_bytes());
    out[12..16].copy_from_slice(&header.tid.to_le_bytes());
    out[16..24].copy_from_slice(&header.time_ns.to_le_bytes());
    out[24..32].copy_from_slice(&header.entry_time_ns.unwrap_or(NO_TIME).to_le_bytes());
    out[32..48].copy_from_slice(&header.comm);
    let mut at = HEADER;
    let mut count = 0u8;
    for v in values.iter() {
        let room = out.len() - at;
        match v {
            Fetched::Int(n, _) | Fetched::Fault(n) if room >= 9 => {
                out[at] = if matches!(v, Fetched::Int(..)) { INT } else { FAULT };
                out[at + 1..at + 9].copy_from_slice(&n.to_le_bytes());
                at += 9;
            }
            Fetched::Str { bytes: s, cut } if room >= 3 => {
                let len = s.len().min(room - 3);
                out[at] = if cut || len < s.len() { STR_CUT } else { STR };
                out[at + 1..at + 3].copy_from_slice(&(len as u16).to_le_bytes());
                out[at + 3..at + 3 + len].copy_from_slice(&s[..len]);
                at += 3 + len;
            }
            _ => break,
        }
        count += 1;
    }
    out[5] = count;
    at
}

/// Read a record's header and its values into `values` (cleared first), typed by `types`.
/// `None` for a record too short to be one.
pub fn decode(record: &[u8], types: &[ArgType], values: &mut Values) -> Option<Header> {
    if record.len() < HEADER {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(record[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(record[i..i + 8].try_into().expect("8 bytes"));
    let entry = u64_at(24);
    let header = Header {
        probe: u32_at(0),
        side: if record[4] == 1 { Side::Return } else { Side::Entry },
        pid: u32_at(8),
        tid: u32_at(12),
        time_ns: u64_at(16),
        entry_time_ns: (entry != NO_TIME).then_some(entry),
        comm: record[32..48].try_into().expect("16 bytes"),
        stack: Some(u16::from_le_bytes([record[6], record[7]])).filter(|s| *s != NO_STACK),
    };
    values.clear();
    let mut at = HEADER;
    for i in 0..usize::from(record[5]) {
        match *record.get(at)? {
            INT | FAULT if record.len() >= at + 9 => {
                let n = u64_at(at + 1);
                if record[at] == INT {
                    values.push_int(n, types.get(i).copied().unwrap_or(ArgType::U(64)));
                } else {
                    values.push_fault(n);
                }
                at += 9;
            }
            STR | STR_CUT if record.len() >= at + 3 => {
                let len = usize::from(u16::from_le_bytes([record[at + 1], record[at + 2]]));
                let bytes = record.get(at + 3..at + 3 + len)?;
                values.push_str_cut(bytes, record[at] == STR_CUT);
                at += 3 + len;
            }
            _ => return None,
        }
    }
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_to_the_same_values() {
        let mut v = Values::with_capacity(3);
        v.push_int(-2i64 as u64, ArgType::S(32));
        v.push_str(b"/etc/hostname");
        v.push_fault(0x10);
        let h = Header {
            probe: 3,
            side: Side::Return,
            pid: 7,
            tid: 8,
            time_ns: 99,
            entry_time_ns: Some(42),
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
            stack: Some(5),
        };
        let mut buf = [0u8; 128];
        let n = encode(&h, &v, &mut buf);
        let mut back = Values::with_capacity(3);
        assert_eq!(decode(&buf[..n], &[ArgType::S(32), ArgType::String, ArgType::U(8)], &mut back), Some(h));
        assert_eq!(back.iter().collect::<Vec<_>>(), v.iter().collect::<Vec<_>>());
        assert_eq!(h.comm(), b"cat");
    }

    #[test]
    fn a_string_that_does_not_fit_is_cut() {
        let mut v = Values::with_capacity(1);
        v.push_str(&[b'a'; 200]);
        let h = Header {
            probe: 0,
            side: Side::Entry,
            pid: 1,
            tid: 1,
            time_ns: 0,
            entry_time_ns: None,
            comm: [0; 16],
            stack: None,
        };
        let mut buf = [0u8; HEADER + 3 + 50];
        let n = encode(&h, &v, &mut buf);
        let mut back = Values::with_capacity(1);
        decode(&buf[..n], &[ArgType::String], &mut back).unwrap();
        assert_eq!(back.get(0), Some(Fetched::Str { bytes: &[b'a'; 50], cut: true }));
    }
}
