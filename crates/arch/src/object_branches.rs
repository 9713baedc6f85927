//! The direct branches of a whole object's code, for the jump check's view beyond one function.
//!
//! [`FunctionCode`](crate::FunctionCode) sees the branches of the probed function
//! only. Hand-written code branches into the middle of other functions: glibc's
//! `__mempcpy_avx512_unaligned_erms` ends with a jump to `__memmove_avx512_unaligned_erms+3`,
//! and gcc's split-off `foo.cold` parts jump back into the middle of `foo`. A jump over such a
//! target would send those branches into the middle of the `jmp rel32`, so every direct branch
//! of the object is decoded once and a window any of them lands inside stays on `int3`.
//!
//! The code is decoded linearly, as `objdump -d` does, restarting at every known function
//! start so that bytes between functions (padding, a table) cannot shift the decoding of the
//! next function; bytes that do not decode are stepped over one at a time. A branch decoded
//! from bytes that are not really code only keeps a window on `int3`, never the reverse.
//!
//! The engine checks a window without decoding the whole object
//! ([`BranchCandidates`](crate::BranchCandidates), which finds the same branches); this
//! whole-object decoding is the reference it is tested against, and serves whoever wants every
//! branch.
//!
//! No branch names a C++ exception's landing pad: the unwinder resumes a frame there from the
//! call a throw passed through, as the object's unwind tables say. The landing pads are kept
//! beside the branches ([`CodeBranches::with_landing_pads`]), and a window one of them lies
//! inside stays on `int3` too.

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};

use crate::{Addr, FunctionStarts, JUMP_LEN};

/// One region of an object's code: its address and its bytes.
pub type CodeRegion<'a> = (Addr, &'a [u8]);

/// A C++ exception's landing pad: where the unwinder resumes a frame when a throw passes
/// through one of its calls (from the object's `.eh_frame` and `.gcc_except_table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LandingPad {
    /// The landing pad.
    pub pad: Addr,
    /// The first byte of the calls whose throws resume there.
    pub calls: Addr,
}

/// Every direct jump, conditional branch and call of an object's code whose target is not a
/// known function start (a window begins at a function start, never one byte after it), and
/// every landing pad of its exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeBranches {
    /// `(target, from)`, sorted.
    branches: Vec<(u64, u64)>,
    /// Sorted by landing pad.
    pads: Vec<LandingPad>,
}

impl CodeBranches {
    /// Decode `regions` (an object's executable sections), restarting at each of `starts`
    /// (its function starts, in any order) that lies inside one.
    pub fn decode(regions: &[CodeRegion<'_>], starts: &[Addr]) -> CodeBranches {
        CodeBranches::decode_sorted(regions, &FunctionStarts::new(starts))
    }

    /// [`CodeBranches::decode`] with the starts sorted already.
    pub fn decode_sorted(regions: &[CodeRegion<'_>], starts: &FunctionStarts) -> CodeBranches {
        let starts = starts.as_slice();
        let mut branches = Vec::new();
        for &(base, code) in regions {
            let end = base.0 + code.len() as u64;
            let first = starts.partition_point(|&s| s <= base.0);
            let mut from = base.0;
            for &next in starts[first..].iter().take_while(|&&s| s < end).chain(std::iter::once(&end)) {
                decode_run(code, base.0, from, next, starts, &mut branches);
                from = next;
            }
        }
        branches.sort_unstable();
        CodeBranches { branches, pads: Vec::new() }
    }

    /// These branches and the landing pads `pads` (in any order).
    pub fn with_landing_pads(mut self, pads: impl IntoIterator<Item = LandingPad>) -> CodeBranches {
        self.pads.extend(pads);
        self.pads.sort_unstable();
        self.pads.dedup();
        self
    }

    /// Its landing pads, in order.
    pub fn pads(&self) -> &[LandingPad] {
        &self.pads
    }

    /// The landing pad (the lowest) on bytes +1..+`len`-1 of the `len` bytes at `addr`.
    pub fn landing_pad_in(&self, addr: Addr, len: u64) -> Option<LandingPad> {
        let first = self.pads.partition_point(|p| p.pad.0 <= addr.0);
        self.pads.get(first).filter(|p| p.pad.0 < addr.0.saturating_add(len)).copied()
    }

    /// How many landing pads are kept.
    pub fn landing_pads(&self) -> usize {
        self.pads.len()
    }

    /// The branch (the lowest in address order) that lands on bytes +1..+4 of a jump written
    /// at `addr`, as `(from, target)`.
    pub fn into_window(&self, addr: Addr) -> Option<(Addr, Addr)> {
        self.into_range(addr, JUMP_LEN as u64)
    }

    /// The branch (the lowest in address order) that lands on any byte of the `len` bytes at
    /// `addr` after the first (a window whose every instruction is replaced, such as a return
    /// probe's exit window), as `(from, target)`.
    pub fn into_range(&self, addr: Addr, len: u64) -> Option<(Addr, Addr)> {
        let first = self.branches.partition_point(|&(target, _)| target <= addr.0);
        let last = self.branches.partition_point(|&(target, _)| target < addr.0 + len);
        self.branches[first..last]
            .iter()
            .min_by_key(|&&(_, from)| from)
            .map(|&(target, from)| (Addr(from), Addr(target)))
    }

    /// How many branches are kept.
    pub fn len(&self) -> usize {
        self.branches.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.branches.is_empty()
    }
}

/// Decode the instructions starting in `[from, to)` of `code` (which starts at `base`), and
/// push each direct branch (a near branch operand: jumps, conditional branches, calls, `loop`,
/// `jrcxz`, `xbegin`'s fallback) whose target is not in `starts` (sorted).
pub(crate) fn decode_run(code: &[u8], base: u64, from: u64, to: u64, starts: &[u64], out: &mut Vec<(u64, u64)>) {
    let mut at = from;
    let mut i = Instruction::default();
    // One decoder per stretch of valid code; bytes that do not decode restart it one further.
    while at < to {
        let Some(bytes) = code.get((at - base) as usize..) else { return };
        let mut decoder = Decoder::with_ip(64, bytes, at, DecoderOptions::NONE);
        while at < to && decoder.can_decode() {
            decoder.decode_out(&mut i);
            if i.is_invalid() {
                break;
            }
            if i.op0_kind() == OpKind::NearBranch64 {
                let target = i.near_branch64();
                if starts.binary_search(&target).is_err() {
                    out.push((target, at));
                }
            }
            at = decoder.ip();
        }
        if !decoder.can_decode() && at < to {
            return;
        }
        if at < to {
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` at 0x1000: `nop; nop; nop; nop; nop; nop; ret`; `g` at 0x1007:
    /// `call f; jmp f+3; nop; ret`.
    fn two_functions() -> Vec<u8> {
        let mut code = vec![0x90; 6];
        code.push(0xc3);
        // call rel32 to 0x1000 from 0x1007 (next 0x100c).
        code.extend([0xe8, 0xf4, 0xff, 0xff, 0xff]);
        // jmp rel32 to 0x1003 from 0x100c (next 0x1011).
        code.extend([0xe9, 0xf2, 0xff, 0xff, 0xff]);
        code.extend([0x90, 0xc3]);
        code
    }

    #[test]
    fn a_branch_from_another_function_into_a_window_is_found() {
        let code = two_functions();
        let b = CodeBranches::decode(&[(Addr(0x1000), &code)], &[Addr(0x1000), Addr(0x1007)]);
        assert_eq!(b.into_window(Addr(0x1000)), Some((Addr(0x100c), Addr(0x1003))));
        assert_eq!(b.into_window(Addr(0x1001)), Some((Addr(0x100c), Addr(0x1003))));
        // A window starting at the target itself, or ending before it, is free.
        assert_eq!(b.into_window(Addr(0x1003)), None);
        assert_eq!(b.into_range(Addr(0x0ffc), 7), None);
        assert_eq!(b.into_range(Addr(0x0ffc), 8), Some((Addr(0x100c), Addr(0x1003))));
        assert_eq!(b.into_window(Addr(0x0ffe)), None);
        // The call lands on `f`'s start, which is kept only as a start.
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_call_to_a_place_that_is_no_known_start_is_kept() {
        let code = two_functions();
        let b = CodeBranches::decode(&[(Addr(0x1000), &code)], &[]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.into_window(Addr(0x0fff)), Some((Addr(0x1007), Addr(0x1000))));
    }

    #[test]
    fn decoding_restarts_at_each_function_start() {
        // Two bytes of a table before `g` (0x0f 0x1f begins a long nop that would swallow
        // `g`'s jump) must not shift the decoding of `g`.
        let mut code = vec![0xc3, 0x0f, 0x1f];
        // g at 0x1003: jmp rel32 to 0x1011 (next 0x1008), then padding.
        code.extend([0xe9, 0x09, 0x00, 0x00, 0x00]);
        code.extend([0x90; 12]);
        let starts = [Addr(0x1000), Addr(0x1003)];
        let b = CodeBranches::decode(&[(Addr(0x1000), &code)], &starts);
        assert_eq!(b.into_window(Addr(0x1010)), Some((Addr(0x1003), Addr(0x1011))));
        // Without the start, the long nop swallows the jump.
        let linear = CodeBranches::decode(&[(Addr(0x1000), &code)], &starts[..1]);
        assert_eq!(linear.into_window(Addr(0x1010)), None);
    }

    #[test]
    fn a_landing_pad_inside_a_window_is_found() {
        let code = two_functions();
        let pads = [
            LandingPad { pad: Addr(0x1005), calls: Addr(0x1001) },
            LandingPad { pad: Addr(0x1002), calls: Addr(0x1000) },
        ];
        let b = CodeBranches::decode(&[(Addr(0x1000), &code)], &[Addr(0x1000), Addr(0x1007)]).with_landing_pads(pads);
        assert_eq!(b.landing_pads(), 2);
        assert_eq!(b.landing_pad_in(Addr(0x1000), 5), Some(pads[1]), "the lowest pad inside");
        assert_eq!(b.landing_pad_in(Addr(0x1002), 5), Some(pads[0]), "a pad at the window's first byte is free");
        assert_eq!(b.landing_pad_in(Addr(0x1005), 5), None);
        assert_eq!(b.landing_pad_in(Addr(0x0ffd), 5), None, "a pad just past the window is free");
        assert_eq!(b.landing_pad_in(Addr(0x0ffe), 5), Some(pads[1]));
    }

    #[test]
    fn bytes_that_do_not_decode_are_stepped_over() {
        // 0x06 is invalid in 64-bit mode; the jmp rel8 after it (to 0x1006) is still seen.
        let code = [0x06, 0x06, 0xeb, 0x02, 0x90, 0x90, 0x90, 0xc3];
        let b = CodeBranches::decode(&[(Addr(0x1000), &code)], &[]);
        assert_eq!(b.into_window(Addr(0x1004)), Some((Addr(0x1002), Addr(0x1006))));
    }
}
