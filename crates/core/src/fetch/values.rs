//! Where an evaluation writes: fixed storage sized once for a plan, so that evaluating a hit
//! allocates nothing (the same storage serves every hit).

use dprobe_spec::{ArgType, Value};

/// Longest string fetched, as the kernel's `MAX_STRING_SIZE`.
pub const MAX_STRING: usize = 256;

/// One fetched value, as read from [`Values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched<'a> {
    /// An integer, with its type (already truncated to the type's width).
    Int(u64, ArgType),
    /// A string, without its NUL.
    Str {
        /// Its bytes, at most [`MAX_STRING`].
        bytes: &'a [u8],
        /// Whether it was cut: longer than [`MAX_STRING`], or than the room the kernel's
        /// record had for it (shown with `...`).
        cut: bool,
    },
    /// Reading memory at this address failed (the kernel prints `(fault)`).
    Fault(u64),
}

impl Fetched<'_> {
    /// The value as a filter sees it: integers signed or not by their type.
    pub fn filter_value(&self) -> Option<Value<'_>> {
        match *self {
            Fetched::Int(v, ty) => Some(Value::Int(signed(v, ty))),
            Fetched::Str { bytes, .. } => Some(Value::Str(bytes)),
            Fetched::Fault(_) => None,
        }
    }

    /// As a number, signed when its type is (for histograms and error numbers).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Fetched::Int(v, ty) => Some(signed(v, ty)),
            _ => None,
        }
    }
}

/// `v` read as a signed integer of `ty`'s width when `ty` is signed.
pub(crate) fn signed(v: u64, ty: ArgType) -> i64 {
    match ty {
        ArgType::S(bits) if bits > 0 && bits < 64 => ((v << (64 - bits)) as i64) >> (64 - bits),
        _ => v as i64,
    }
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Int(u64, ArgType),
    Str { at: usize, len: usize, cut: bool },
    Fault(u64),
}

/// The values of one hit, in the order of the plan's arguments. Its capacity is fixed when it
/// is made: pushing past it is ignored rather than growing.
#[derive(Debug, Clone)]
pub struct Values {
    slots: Box<[Slot]>,
    len: usize,
    bytes: Box<[u8]>,
    used: usize,
}

impl Values {
    /// Storage for `args` values, each string up to [`MAX_STRING`] bytes.
    pub fn with_capacity(args: usize) -> Values {
        Values {
            slots: vec![Slot::Fault(0); args].into_boxed_slice(),
            len: 0,
            bytes: vec![0; args * MAX_STRING].into_boxed_slice(),
            used: 0,
        }
    }

    /// Forget the values (the storage stays).
    pub fn clear(&mut self) {
        self.len = 0;
        self.used = 0;
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many values fit.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn push(&mut self, slot: Slot) {
        if let Some(s) = self.slots.get_mut(self.len) {
            *s = slot;
            self.len += 1;
        }
    }

    /// Add an integer (truncated to its type's width).
    pub fn push_int(&mut self, v: u64, ty: ArgType) {
        let bits = match ty {
            ArgType::S(b) | ArgType::U(b) | ArgType::X(b) => b,
            ArgType::String => 64,
        };
        let v = if bits < 64 { v & ((1u64 << bits) - 1) } else { v };
        self.push(Slot::Int(v, ty));
    }

    /// Add a fault at `addr`.
    pub fn push_fault(&mut self, addr: u64) {
        self.push(Slot::Fault(addr));
    }

    /// Add a string (cut at [`MAX_STRING`] bytes).
    pub fn push_str(&mut self, s: &[u8]) {
        self.push_str_cut(s, false);
    }

    /// Add a string that was cut already (`cut`) or is cut here (longer than [`MAX_STRING`]).
    pub fn push_str_cut(&mut self, s: &[u8], cut: bool) {
        let at = self.used;
        let len = s.len().min(MAX_STRING).min(self.bytes.len() - at);
        self.bytes[at..at + len].copy_from_slice(&s[..len]);
        self.used += len;
        self.push(Slot::Str { at, len, cut: cut || len < s.len() });
    }

    /// Start a string that is filled piece by piece ([`Values::extend_str`]); returns its index.
    pub(crate) fn begin_str(&mut self) -> usize {
        self.push(Slot::Str { at: self.used, len: 0, cut: false });
        self.len - 1
    }

    /// Mark the string at `index` as cut.
    pub(crate) fn cut_str(&mut self, index: usize) {
        if let Some(Slot::Str { cut, .. }) = self.slots.get_mut(index) {
            *cut = true;
        }
    }

    /// Add bytes to the string at `index` (begun last); returns how many more fit.
    pub(crate) fn extend_str(&mut self, index: usize, piece: &[u8]) -> usize {
        let Some(Slot::Str { at, len, .. }) = self.slots.get_mut(index) else { return 0 };
        let room = MAX_STRING.saturating_sub(*len).min(self.bytes.len() - (*at + *len));
        let n = piece.len().min(room);
        let start = *at + *len;
        self.bytes[start..start + n].copy_from_slice(&piece[..n]);
        *len += n;
        self.used = start + n;
        room - n
    }

    /// Replace the value at `index` (begun last) by a fault.
    pub(crate) fn fault_last(&mut self, index: usize, addr: u64) {
        if let (Some(Slot::Str { at, .. }), true) = (self.slots.get(index).copied(), index + 1 == self.len) {
            self.used = at;
        }
        if let Some(s) = self.slots.get_mut(index) {
            *s = Slot::Fault(addr);
        }
    }

    /// The value at `index`.
    pub fn get(&self, index: usize) -> Option<Fetched<'_>> {
        let slot = self.slots[..self.len].get(index)?;
        Some(match *slot {
            Slot::Int(v, ty) => Fetched::Int(v, ty),
            Slot::Str { at, len, cut } => Fetched::Str { bytes: &self.bytes[at..at + len], cut },
            Slot::Fault(a) => Fetched::Fault(a),
        })
    }

    /// Every value, in order.
    pub fn iter(&self) -> impl Iterator<Item = Fetched<'_>> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_order_and_never_grow() {
        let mut v = Values::with_capacity(3);
        v.push_int(0x1ff, ArgType::U(8));
        v.push_str(&[b'a'; 300]);
        v.push_fault(16);
        v.push_int(1, ArgType::U(8)); // past the capacity: ignored
        assert_eq!(v.len(), 3);
        assert_eq!(v.get(0), Some(Fetched::Int(0xff, ArgType::U(8))));
        assert_eq!(v.get(1), Some(Fetched::Str { bytes: &[b'a'; MAX_STRING], cut: true }));
        assert_eq!(v.get(2), Some(Fetched::Fault(16)));
        assert_eq!(v.get(3), None);
        v.clear();
        assert!(v.is_empty());
        v.push_str(&[b'b'; MAX_STRING]);
        v.push_str_cut(b"short", true);
        assert_eq!(v.get(0), Some(Fetched::Str { bytes: &[b'b'; MAX_STRING], cut: false }), "exactly as long: whole");
        assert_eq!(v.get(1), Some(Fetched::Str { bytes: b"short", cut: true }), "cut by whoever read it");
        assert_eq!(Fetched::Int(0xfe, ArgType::S(8)).as_i64(), Some(-2));
    }
}
