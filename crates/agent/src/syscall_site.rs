//! Where the agent's probe on the C library's `syscall` goes: on the instruction that loads
//! the call's sixth argument, past the moves of the others, where the C library is the one
//! built from glibc's `syscall.S` for x86-64; at the entry elsewhere.
//!
//! Why not the entry: the agent places this probe in every program it is loaded into, while
//! the program runs, and the entry's first two instructions (`mov %rdi,%rax; mov %rsi,%rdi`)
//! are both under the five bytes of the jump. Such a jump goes in over an `int3` for a moment,
//! and a thread that calls `syscall` then with every signal blocked (a program that blocks them
//! with `syscall(SYS_rt_sigprocmask, ...)` itself) is killed by the trap: the kernel forces the
//! signal of a trap the thread blocks. The load of the sixth argument (`mov 0x8(%rsp),%r9`) is
//! five bytes alone: where they lie in one aligned 8-byte word (an entry aligned on 16 bytes,
//! with no `endbr64`: at +0x12), the jump replaces it in one store, with no `int3` ever
//! (`dprobe_inproc`'s `code_writes/one_store.rs`). After an `endbr64` (a C library built for
//! CET) they cross two words, and the probe stays at the entry, as harmful as before there.
//!
//! Its hits cost what an entry's do: only moves of general registers come before it, so the
//! detour keeps the entry's vector registers, not the whole extended state
//! (`dprobe_arch`'s `entry_state.rs`). A call sent to wait has run the handlers of other
//! probes at `syscall`'s entry once before it enters again (a user's own probe there sees
//! it twice where the agent stays).
//!
//! There the call's number and first arguments are already in the kernel's registers (`rax`,
//! `rdi`, `rsi`, `rdx`), and a call sent to wait before it enters again from the entry, its
//! registers first set back to what they were there (every move undone: each source is still
//! in the register it was moved to), as an entry probe's would be. No instruction before the
//! probe touches `r11`, which brings the token of the call let in (`reenter.rs`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{Kprobe, Regs};

/// `endbr64`, which a C library built for CET starts each function with.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// `syscall.S`: `mov %rdi,%rax; mov %rsi,%rdi; mov %rdx,%rsi; mov %rcx,%rdx; mov %r8,%r10;
/// mov %r9,%r8`, then `mov 0x8(%rsp),%r9` (where the probe goes), then `syscall`.
const MOVES: [u8; 18] =
    [0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x89, 0xd6, 0x48, 0x89, 0xca, 0x4d, 0x89, 0xc2, 0x4d, 0x89, 0xc8];
const LOAD_SIXTH_THEN_SYSCALL: [u8; 7] = [0x4c, 0x8b, 0x4c, 0x24, 0x08, 0x0f, 0x05];

/// How far past the entry the probe is (0: at the entry).
static PAST_ENTRY: AtomicU64 = AtomicU64::new(0);

/// The probe on `syscall`, at the load of its sixth argument where the C library's code is
/// `syscall.S`'s (its file read, not memory, where a jump of dprobe's may be already), else at
/// its entry. `pre` reads the call's arguments with [`arguments`].
pub(crate) fn probe() -> Kprobe {
    let past_entry = load_of_sixth().unwrap_or(0);
    PAST_ENTRY.store(past_entry, Relaxed);
    Kprobe::symbol_offset("libc:syscall", past_entry)
}

/// The offset in `syscall` of `mov 0x8(%rsp),%r9`, if its code is `syscall.S`'s and the
/// instruction's five bytes lie in one aligned 8-byte word.
fn load_of_sixth() -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let function = dprobe_inproc::resolve(&Kprobe::symbol("libc:syscall")).ok()?.function;
    let mut code = [0u8; 4 + MOVES.len() + LOAD_SIXTH_THEN_SYSCALL.len()];
    let file = std::fs::File::open(&*function.object).ok()?;
    file.read_exact_at(&mut code, function.file_offset).ok()?;
    let moves_at = if code.starts_with(&ENDBR64) { ENDBR64.len() } else { 0 };
    let after = &code[moves_at..];
    let matches = after.starts_with(&MOVES) && after[MOVES.len()..].starts_with(&LOAD_SIXTH_THEN_SYSCALL);
    let past_entry = (moves_at + MOVES.len()) as u64;
    // Where its five bytes cross an aligned word (after `endbr64`), its jump would go in over
    // an `int3` as the entry's does: the entry keeps the probe then.
    let one_word = (function.start.0 + past_entry) % 8 + 5 <= 8;
    (matches && one_word).then_some(past_entry)
}

/// The call's number and first three arguments, as the probe finds them.
pub(crate) fn arguments(regs: &Regs) -> [u64; 4] {
    arguments_past(regs, PAST_ENTRY.load(Relaxed))
}

/// Set `regs`, the probe's, back to the call's at the entry of `syscall` (where it enters
/// again after its wait).
pub(crate) fn back_to_entry(regs: &mut Regs) {
    back_to_entry_from(regs, PAST_ENTRY.load(Relaxed));
}

/// [`arguments`] for a probe `past_entry` bytes into `syscall`.
fn arguments_past(regs: &Regs, past_entry: u64) -> [u64; 4] {
    match past_entry {
        0 => [regs.rdi, regs.rsi, regs.rdx, regs.rcx],
        _ => [regs.rax, regs.rdi, regs.rsi, regs.rdx],
    }
}

/// [`back_to_entry`] from a probe `past_entry` bytes into `syscall`.
fn back_to_entry_from(regs: &mut Regs, past_entry: u64) {
    if past_entry == 0 {
        return;
    }
    // `mov %r9,%r8`, `mov %r8,%r10`, `mov %rcx,%rdx` (rcx kept), `mov %rdx,%rsi`,
    // `mov %rsi,%rdi`, `mov %rdi,%rax`, undone last first.
    regs.r9 = regs.r8;
    regs.r8 = regs.r10;
    regs.rcx = regs.rdx;
    regs.rdx = regs.rsi;
    regs.rsi = regs.rdi;
    regs.rdi = regs.rax;
    regs.rip -= past_entry;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the moves, the probe reads the call's arguments where they were moved to, and its
    /// registers go back to the call's at the entry (but `rax` and `r10`, which the entry does
    /// not take and the moves overwrite).
    #[test]
    fn the_registers_past_the_moves_go_back_to_the_calls() {
        let (entry, past_entry) = (0x1000, MOVES.len() as u64);
        let call = Regs { rdi: 317, rsi: 1, rdx: 8, rcx: 0x7000, r8: 5, r9: 6, rip: entry, ..Regs::default() };
        assert_eq!(arguments_past(&call, 0), [317, 1, 8, 0x7000]);
        // What the six moves make of it.
        let mut there = call;
        there.rax = call.rdi;
        there.rdi = call.rsi;
        there.rsi = call.rdx;
        there.rdx = call.rcx;
        there.r10 = call.r8;
        there.r8 = call.r9;
        there.rip = entry + past_entry;
        assert_eq!(arguments_past(&there, past_entry), [317, 1, 8, 0x7000]);
        back_to_entry_from(&mut there, past_entry);
        assert_eq!(Regs { rax: 0, r10: 0, ..there }, call);
    }
}
