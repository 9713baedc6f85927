//! Breakpoints that disappear, and are put back.
//!
//! Another tool's kernel uprobe (`perf probe`, `bpftrace`, `uprobe_events`, dprobe's own
//! kernel engine) registered on an instruction that holds dprobe's `int3`: the kernel reads
//! the instruction it keeps from the file, finds an `int3` already in the page and writes
//! nothing (it takes the `int3` for its own), but from then on it takes every hit there itself
//! and runs the file's instruction out of line: dprobe's handler sees none. When the uprobe is
//! removed, the kernel writes the file's first byte back wherever it finds an `int3`, and
//! dprobe's breakpoint is gone with it. (A jump is not concerned: its page is writable, where
//! the kernel places no uprobe, and removal writes only over an `int3`; see `code_pages.rs`.)
//!
//! Nothing tells the program: what dprobe can do is look at its `int3` sites now and then
//! ([`crate::rearm_undone`]; the agent looks every 100 ms), put back the `int3` of each whose
//! original instruction is there again, and count it against its probes
//! ([`dprobe_core::Stats::rearmed`]): the hits in between are reported lost, never silently.
//! A site is re-armed only when its whole instruction is the original again, never where the
//! code is something else now (the program rewrote it) or cannot be read (unmapped).
//!
//! Why an `int3` probe's page is not made writable as a jump's is (which would keep uprobes
//! registered later out of it): the kernel looks a trap up by file and offset in any mapping,
//! writable or not, once the process has a uprobe anywhere (`MMF_HAS_UPROBES`). A uprobe at the
//! `int3`'s offset that went into no mapping at all never had its instruction read from the
//! file: a thread hitting the `int3` is sent back to it again and again (it spins in the kernel)
//! for as long as the uprobe is registered, and removing the uprobe writes the instruction copy
//! it never made, a zero byte, over the `int3`: the program then crashes. In a page left `r-x`
//! the uprobe goes in (over dprobe's `int3`, with the file's instruction read), and the worst is
//! the loss put right here. An `int3` site that shares a page made writable for a jump (a
//! return probe's one-byte `ret` exit next to its entry's jump) is in the same case as one in
//! an `r-x` page: while the page is writable a read-only alias of its file page is mapped, in
//! which such a uprobe goes, with its instruction read (`page_alias.rs`).

use dprobe_arch::{Addr, Insn};

use crate::sys;

/// The sites among `sites` (each expected to hold dprobe's `int3`) whose whole original
/// instruction is back, with as few reads as [`sys::read_ranges`] allows.
pub(crate) fn undone<'a>(sites: impl Iterator<Item = &'a Insn>) -> Vec<Addr> {
    let sites: Vec<&Insn> = sites.collect();
    let mut out = Vec::new();
    for batch in sites.chunks(sys::MAX_RANGES) {
        let ranges: Vec<(Addr, usize)> = batch.iter().map(|i| (i.addr, i.len)).collect();
        let total: usize = ranges.iter().map(|r| r.1).sum();
        let mut buf = vec![0u8; total];
        let read = sys::read_ranges(&ranges, &mut buf);
        let mut offset = 0;
        for insn in batch {
            let now = if offset + insn.len <= read {
                Some(&buf[offset..offset + insn.len])
            } else {
                // The read stopped before this one (an unmapped site earlier, or this one).
                None
            };
            let back = match now {
                Some(now) => now == insn.code(),
                None => {
                    let mut one = [0u8; 15];
                    sys::read_memory(insn.addr, &mut one[..insn.len]).is_ok() && one[..insn.len] == *insn.code()
                }
            };
            if back {
                out.push(insn.addr);
            }
            offset += insn.len;
        }
        debug_assert_eq!(offset, total);
    }
    out
}
