//! The bytes an engine writes to arm and disarm a probe.

use crate::{Addr, Insn};

/// The breakpoint instruction.
pub const INT3: u8 = 0xcc;

/// Bytes to write at `addr`, replacing `old`. An engine applies it with whatever protocol is
/// safe for its target (one byte at a time for `int3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Where to write.
    pub addr: Addr,
    /// What must be there before (checked by the engine before it writes).
    pub old: Vec<u8>,
    /// What to write.
    pub new: Vec<u8>,
}

/// The patch that arms an `int3` probe on `insn`: its first byte becomes `int3`.
pub fn arm(insn: &Insn) -> Patch {
    Patch { addr: insn.addr, old: vec![insn.bytes[0]], new: vec![INT3] }
}

/// The patch that disarms it again, restoring the original first byte.
pub fn disarm(insn: &Insn) -> Patch {
    Patch { addr: insn.addr, old: vec![INT3], new: vec![insn.bytes[0]] }
}

impl Patch {
    /// Undo this patch in a copy of the code that starts at `code_start`, so that analysis
    /// sees the original bytes and never an armed probe's `int3`. Bytes outside `code` are
    /// left alone.
    pub fn revert_in(&self, code: &mut [u8], code_start: Addr) {
        for (i, &b) in self.old.iter().enumerate() {
            let at = self.addr.0.wrapping_add(i as u64).wrapping_sub(code_start.0);
            if let Some(byte) = usize::try_from(at).ok().and_then(|at| code.get_mut(at)) {
                *byte = b;
            }
        }
    }
}
