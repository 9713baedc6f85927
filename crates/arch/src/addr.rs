//! Typed addresses in the probed address space.

use std::fmt;

/// An address in the probed process's address space.
///
/// It is a number, never a pointer: the pure crates cannot dereference it, and an engine turns it
/// into memory accesses through its own [`crate::Memory`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Addr(pub u64);

impl Addr {
    /// This address plus `bytes` (wrapping, as the CPU's address arithmetic does).
    pub fn offset(self, bytes: u64) -> Addr {
        Addr(self.0.wrapping_add(bytes))
    }

    /// Signed distance from `self` to `other`.
    pub fn distance_to(self, other: Addr) -> i128 {
        other.0 as i128 - self.0 as i128
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}
