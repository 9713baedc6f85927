//! A frame-pointer backtrace that sees through return probes' trampolines.
//!
//! It follows the `rbp` chain, so it is as complete as the code's frame pointers (C built
//! with `-fno-omit-frame-pointer`, Rust with `-C force-frame-pointers`). Return addresses
//! that return probes replaced by their trampoline are mapped back with
//! [`real_return_address`] (kprobe rule 10). Reads go through the non-faulting reader, so a
//! broken chain ends the backtrace instead of crashing. Async-signal-safe; meant for
//! handlers, on the calling thread.

use crate::kretprobe::real_return_address;
use crate::memory::read_bytes;
use dprobe_arch::Regs;

/// Fill `out` with the return addresses of the stack described by `regs`, innermost first
/// (`out[0]` is `regs.rip`); returns how many were written.
///
/// `at_entry` says that `regs` is at a function's first instruction, before it pushed
/// `rbp`: the caller's return address is then at `rsp`.
pub fn backtrace(regs: &Regs, at_entry: bool, out: &mut [u64]) -> usize {
    let mut n = 0;
    let mut push = |addr: u64, n: &mut usize| {
        if *n < out.len() {
            out[*n] = addr;
            *n += 1;
        }
        *n < out.len()
    };
    if !push(regs.rip, &mut n) {
        return n;
    }
    if at_entry {
        let Some(ret) = read_u64(regs.rsp) else { return n };
        if !push(real_return_address(ret, regs.rsp), &mut n) {
            return n;
        }
    }
    let mut fp = regs.rbp;
    while fp != 0 && fp % 8 == 0 {
        let (Some(next), Some(ret)) = (read_u64(fp), read_u64(fp + 8)) else { break };
        if ret == 0 || !push(real_return_address(ret, fp + 8), &mut n) {
            break;
        }
        // Frames grow towards higher addresses as we walk out; anything else is a broken chain.
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

fn read_u64(addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    read_bytes(addr, &mut b).ok().map(|()| u64::from_le_bytes(b))
}
