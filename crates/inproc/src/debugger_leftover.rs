//! A debugger's breakpoint left over a removed probe.
//!
//! A debugger (gdb) that sets a breakpoint on an instruction holding a probe's `int3` reads
//! that `int3` as the instruction's first byte, and saves it to write back when it removes its
//! breakpoint. dprobe, removing its probe meanwhile, writes the original byte over both
//! breakpoints (they are the same byte); the debugger later writes its saved `int3` back (as
//! it leaves, or at its next stop), and the program's next pass there raises a `SIGTRAP` no
//! one handles: the kernel kills it.
//!
//! dprobe's trap handler stays installed after the probes go, and the site's row (its
//! instruction) stays in the trap table: a trap at a site without probes, whose first byte is
//! an `int3` again while the instruction's other bytes are still the original ones, is taken
//! for such a leftover. The original first byte is written back (through `/proc/self/mem`, as
//! a debugger writes, with the system calls themselves: this runs in the trap handler) and the
//! instruction runs. A debugger that is still attached and still has its breakpoint there
//! takes the trap itself (it stops the thread first); it is one it passed on, or had left,
//! that comes here. Only where the trap would end the program: a program with a `SIGTRAP`
//! handler of its own gets it, as does a jump kept behind a debugger's breakpoint (see
//! [`put_right`]). Where the byte cannot be written, the trap goes on as before.

use dprobe_arch::{Addr, Prepared, INT3};
use dprobe_core::Site;

use crate::engine::Engine;
use crate::sys::{self, raw_syscall6};

/// Leftover `int3`s put right, over the process's life (tests read it).
static PUT_RIGHT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Debuggers' leftover breakpoints over removed probes that dprobe took away.
pub fn leftovers_put_right() -> u64 {
    PUT_RIGHT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Put the original first byte of `site`'s instruction back where an `int3` is, if the rest
/// of the instruction is still the original: whether it was put back. Only where the `int3`
/// would end the program (it has no `SIGTRAP` handler of its own: another in-process tool's
/// breakpoint is left to it), and not at a jump that stays (kept behind a debugger's
/// breakpoint: its bytes after the first are the jump's, and a one-byte instruction leaves
/// nothing else to tell the two apart). Async-signal-safe.
pub(crate) fn put_right(site: &Site<Prepared>) -> bool {
    let (addr, insn) = (site.addr, &site.arch.insn);
    let jump_stays = Engine::get().is_none_or(|engine| engine.route(addr).is_some());
    if crate::signals::has_program_handler(libc::SIGTRAP) || jump_stays {
        return false;
    }
    let code = insn.code();
    let mut now = [0u8; 15];
    let now = &mut now[..code.len()];
    if sys::read_memory(addr, now).is_err() || now[0] != INT3 || now[1..] != code[1..] || code[0] == INT3 {
        return false;
    }
    if !write_byte(addr, code[0]) {
        return false;
    }
    PUT_RIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    true
}

/// Write `byte` at `addr` through a `/proc/self/mem` of its own (the engine's is behind a lock).
fn write_byte(addr: Addr, byte: u8) -> bool {
    let path = c"/proc/self/mem";
    let flags = (libc::O_WRONLY | libc::O_CLOEXEC) as u64;
    // SAFETY: opens a file by a NUL-terminated path that lives for the call.
    let fd = unsafe { raw_syscall6(libc::SYS_openat, [libc::AT_FDCWD as u64, path.as_ptr() as u64, flags, 0, 0, 0]) };
    if fd < 0 {
        return false;
    }
    // SAFETY: pwrite64 reads one byte of `byte`, which lives for the call.
    let written = unsafe { raw_syscall6(libc::SYS_pwrite64, [fd as u64, &byte as *const u8 as u64, 1, addr.0, 0, 0]) };
    // SAFETY: closes the descriptor opened above.
    unsafe { raw_syscall6(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) };
    // Not serialized with other threads: one still seeing the `int3` traps, finds the
    // original byte back and runs the instruction, as this one does.
    written == 1
}
