//! Telling the program's own signal handler, run on top of dprobe's hit path, from dprobe's
//! own calls.
//!
//! A hit while the thread is already in dprobe's hit path (or in dprobe's own work) is
//! normally dprobe's own call: a C library function its machinery calls is probed, and such a
//! hit counts nothing, as the same call made by a tracer in another process would not. But an
//! asynchronous signal may arrive there too, and the program's handler for it then runs on
//! top of dprobe's frames: the probes it passes through are the program's hits, which came
//! while another probe ran (kprobe rule 6: counted as missed, not lost).
//!
//! The stack tells them apart. When the hit path (or own work) began, the thread noted its
//! stack pointer ([`ThreadState::quiet_sp`]). Between a nested hit's stack pointer and that
//! mark, a program's handler that interrupted dprobe left the kernel's signal frame: the
//! handler's return address (the C library's `sigreturn` stub, the restorer every `sigaction`
//! of the C library installs) followed by the interrupted context, whose stack pointer lies
//! at or below the mark. dprobe's own handlers that interrupt the hit path (the safepoint's,
//! a trap of a C library function it calls) note their frames ([`OwnFrame`]), which are then
//! not taken for the program's.
//!
//! Inside a tool's own work (`tool_work`: the agent's handlers), such a frame is enough. In the
//! rest of dprobe's hit path, the frames between hold stale bytes of earlier signal frames
//! (dprobe's own traps at the same depth) often enough to be taken for a live one: a frame
//! there counts only if the mask at the nested hit shows its handler still running (it holds
//! the handled signal, which the frame's saved mask does not). dprobe's own work (registering)
//! is not looked at.
//!
//! Only words known to be the thread's stack are read: the run from the nested stack pointer
//! up to the mark when both are on the same stack (its first [`SCAN_LIMIT`] bytes), or up to the
//! top of the alternate stack when the program's handler runs there. The alternate stack is
//! asked of the kernel directly (`sigaltstack` without the C library, which may be probed).
//! Nothing here calls the C library. A program whose handlers return through another restorer
//! than the C library's (its own `rt_sigaction` system calls) is not recognized: its hits there
//! count nothing, as before.
//!
//! [`ThreadState::quiet_sp`]: crate::thread_state::ThreadState

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::blocked;
use crate::signal_frame::{self, RSP_AT};
use crate::thread_state::ThreadState;

/// How far above a nested hit's stack pointer its stack is scanned: the signal frame of the
/// handler it runs in is the innermost one, near it. Handlers nested in handlers (one installed
/// with `SA_NODEFER`, its signal coming again and again on a loaded machine) put each level's
/// hit path between the mark and the innermost frame: the mark may be much farther.
pub(crate) const SCAN_LIMIT: u64 = 64 * 1024;

/// The restorer the C library's `sigaction` installs (0: not known yet).
static RESTORER: AtomicU64 = AtomicU64::new(0);

/// Note the restorer of the handler just installed for `sig` (the C library's `sigreturn`
/// stub, the same for every handler it installs).
pub(crate) fn learn_restorer(sig: libc::c_int) {
    RESTORER.store(blocked::restorer(sig), Relaxed);
}

/// Whether a program's signal handler interrupted thread `state` between the mark
/// (`quiet_sp`: its stack pointer when its hit path or own work began) and a nested hit at
/// stack pointer `rsp`. `trapped` is the alternate stack `(base, size)` the nested hit's trap
/// frame holds: the one registered where the nested code ran (the program's, for a handler of
/// the program's that runs there while a hit path ran on dprobe's stack, `hit_stack.rs`);
/// `None` (a jump, no frame) asks the kernel (`hit_stack::program_alternate_stack`).
/// Async-signal-safe; calls no C library function.
pub(crate) fn by_program_signal(state: &ThreadState, rsp: u64, trapped: Option<(u64, u64)>) -> bool {
    let (restorer, mark) = (RESTORER.load(Relaxed), state.quiet_sp.get());
    if restorer == 0 || mark == 0 {
        return false;
    }
    // Without a frame, the kernel's word, or the program's while the hit path runs on
    // dprobe's stack (which the kernel then reports).
    let (base, size) = trapped.unwrap_or_else(crate::hit_stack::program_alternate_stack);
    let alternate = Some((base, size, size != 0 && rsp >= base && rsp - base <= size));
    let Some((from, to)) = scan_range(rsp, mark, alternate) else { return false };
    // The range is taken for one stack's: a handler that switched stacks itself (a coroutine's,
    // just below the mark) may leave a hole in it.
    if !readable(from, to, None) {
        return false;
    }
    // SAFETY: `scan_range` keeps to the live part of one stack of this thread, `from..to`,
    // shown readable; nothing else writes it while this runs.
    unsafe { signal_frame_in(from, to, mark, restorer, |at| state.own_frame_at(at)) }
}

/// Whether a fault at stack pointer `rsp` was raised in a program's signal handler that
/// interrupted a guarded call (`guard.rs`) whose stack pointer was `guarded_sp`: a handler
/// dprobe calls, run on top of by a signal the program handles. The fault is then the
/// program's to handle: recovering from it as the guarded handler's would abandon the
/// program's handler where it stood and leave its signal blocked. `blocked` is the mask at
/// the fault; see [`running_program_handler`].
pub(crate) fn fault_in_program_handler(
    state: &ThreadState,
    rsp: u64,
    guarded_sp: u64,
    alternate: (u64, u64),
    blocked: u64,
) -> bool {
    running_program_handler(state, rsp, guarded_sp, alternate, || blocked)
}

/// Whether a nested hit at stack pointer `rsp`, in dprobe's hit path outside a tool's own
/// work, came from a program's signal handler that interrupted the hit path (below its mark,
/// `quiet_sp`); see [`running_program_handler`]. `trapped` is the alternate stack the hit's
/// trap frame holds (`None`: a jump, asked of the kernel), `blocked` the mask at the hit
/// (asked only once a frame is found: a jump has none, and asking costs a system call).
pub(crate) fn by_running_program_handler(
    state: &ThreadState,
    rsp: u64,
    trapped: Option<(u64, u64)>,
    blocked: impl FnOnce() -> u64,
) -> bool {
    let mark = state.quiet_sp.get();
    if mark == 0 {
        return false;
    }
    let alternate = trapped.unwrap_or_else(crate::hit_stack::program_alternate_stack);
    running_program_handler(state, rsp, mark, alternate, blocked)
}

/// Whether a program's signal handler that has not returned yet runs between stack pointers
/// `rsp` and `mark` (above it, dprobe's code it interrupted).
///
/// The kernel's frame of that signal lies between the two, and the mask now, `blocked`,
/// holds more than the mask the frame saved (that of the interrupted code): the handled
/// signal, and its handler's `sa_mask`, until the handler returns. Words left by a handler
/// that has returned (or by dprobe's own traps at the same depth) show no such difference
/// (the mask came back), unless the interrupted code blocked more since and none less. The
/// signals of dprobe's own handlers do not count (the safepoint signal, blocked in dprobe's
/// trap handler, where a frame of an earlier one may linger). A handler installed with
/// `SA_NODEFER` and an `sa_mask` that blocks none of the program's signals changes no mask:
/// where the program has one (as dprobe's guard on `sigaction` saw it installed,
/// `handler_masks.rs`), a frame whose mask is the mask now counts too, and a stale frame
/// with it is taken for a running handler (a call of dprobe's own counted as the program's,
/// missed, rather than the program's calls lost). Without the guard, such a handler's hits
/// count nothing. Nothing is looked at where no program handler
/// can run: while dprobe holds the program's asynchronous signals back (its code writer's
/// stores, the hit path on a stack of dprobe's), or where the stack cannot be read (a
/// handler that overflowed it). `alternate` is the thread's alternate stack `(base, size)`.
/// Async-signal-safe; calls no C library function.
fn running_program_handler(
    state: &ThreadState,
    rsp: u64,
    mark: u64,
    alternate: (u64, u64),
    blocked: impl FnOnce() -> u64,
) -> bool {
    let restorer = RESTORER.load(Relaxed);
    if restorer == 0 || state.signals_held.get() || crate::hit_stack::on_any_hit_stack(rsp) {
        return false;
    }
    let (base, size) = alternate;
    let on_alternate = size != 0 && rsp >= base && rsp - base <= size;
    let Some((from, to)) = scan_range(rsp, mark, Some((base, size, on_alternate))) else { return false };
    // The mask at the hit: the one a fault there is delivered with too (dprobe's handlers add
    // only the safepoint signal to it), so that the stack's reads need not ask again.
    let blocked = blocked();
    if !readable(from, to, Some(blocked)) {
        return false;
    }
    let programs = !crate::signals::dprobes_signals();
    let unmasked = crate::handler_masks::unmasked_handlers();
    // SAFETY: `scan_range` keeps to the live part of one stack of this thread, `from..to`,
    // shown readable; the saved mask is read only where it lies below `to` too.
    let word = |at: u64| unsafe { std::ptr::read_volatile(at as *const u64) };
    // A running handler's mask holds all of the mask it interrupted, and more; or the same,
    // where the program has handlers that block nothing more.
    let running = |at: u64| {
        let saved = (at + signal_frame::MASK_AT + 8 <= to).then(|| word(at + signal_frame::MASK_AT));
        saved.is_some_and(|saved| {
            let (more, fewer) = (blocked & !saved & programs, saved & !blocked & programs);
            fewer == 0 && (more != 0 || unmasked)
        })
    };
    // SAFETY: as above, for every word of `from..to`.
    unsafe { signal_frame_in(from, to, mark, restorer, |at| state.own_frame_at(at) || !running(at)) }
}

/// Whether every page of `from..to` (at most [`SCAN_LIMIT`] bytes) can be read: a byte of
/// each, read inside a guarded call where a fault is sure to be recovered from
/// (`memory::pages_readable`; `blocked`: the thread's mask, if known), else with one system
/// call, which fails rather than faults.
///
/// The guarded reads cost one cheap system call (the signal mask); `process_vm_readv` pins
/// the pages it reads, several times dearer. A program whose handler installed with
/// `SA_NODEFER` calls a probed function while its signals keep coming pays it at every
/// nested hit: with `process_vm_readv`, the handlers nested faster than they returned, until
/// the program's stack was used up (`tests/agent_signals.rs`: 4 to 8 runs in 12 killed on an
/// Intel Xeon).
fn readable(from: u64, to: u64, blocked: Option<u64>) -> bool {
    if let Some(readable) = crate::memory::pages_readable(from, to, blocked) {
        return readable;
    }
    const PAGES: usize = (SCAN_LIMIT / 4096) as usize + 2;
    let mut ranges = [(dprobe_arch::Addr(0), 1usize); PAGES];
    let mut n = 0;
    let mut at = from;
    while at < to {
        let Some(range) = ranges.get_mut(n) else { return false };
        range.0 = dprobe_arch::Addr(at);
        n += 1;
        at = (at & !4095) + 4096;
    }
    let mut bytes = [0u8; PAGES];
    crate::sys::read_few_ranges::<PAGES>(&ranges[..n], &mut bytes) == n
}

/// Marks, while it lives, the signal frame of a dprobe handler running on this thread, so
/// that a scan does not take it for the program's (dprobe's handlers interrupt its hit path
/// too: the safepoint's, a trap of a C library function the hit path calls).
pub(crate) struct OwnFrame(Option<&'static ThreadState>);

impl OwnFrame {
    /// For the handler the kernel called with context `uc` (its frame starts just below).
    pub(crate) fn enter(state: Option<&'static ThreadState>, uc: *mut libc::c_void) -> OwnFrame {
        if let Some(s) = state {
            let n = s.own_frames_len.get();
            // Deeper than the record: such a frame is taken for the program's (its hits there
            // count as missed, not as nothing).
            if let Some(slot) = s.own_frames.get(n as usize) {
                slot.set(uc as u64 - signal_frame::UC_AT);
            }
            s.own_frames_len.set(n + 1);
        }
        OwnFrame(state)
    }
}

impl Drop for OwnFrame {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.own_frames_len.set(s.own_frames_len.get().saturating_sub(1));
        }
    }
}

/// The words to scan, `from..to`, for a nested hit at `rsp` below `mark`; `alternate` is the
/// thread's alternate stack `(base, size, running on it)`. None when they are not known to be
/// one stack's.
fn scan_range(rsp: u64, mark: u64, alternate: Option<(u64, u64, bool)>) -> Option<(u64, u64)> {
    let from = rsp.checked_add(7)? & !7;
    match alternate {
        Some((base, size, true)) => {
            let top = base.checked_add(size)?;
            let on_it = |sp: u64| (base..=top).contains(&sp);
            if !on_it(from) {
                return None;
            }
            // Both on the alternate stack: one stack, up to the mark. Otherwise the nested
            // code was moved there by a signal: its frame is at the top.
            let to = if on_it(mark) { mark } else { top };
            (from < to).then_some((from, to.min(from.saturating_add(SCAN_LIMIT))))
        }
        // Not on the alternate stack: the nested code runs on the stack the hit path began on.
        Some((_, _, false)) => (from < mark).then_some((from, mark.min(from.saturating_add(SCAN_LIMIT)))),
        None => None,
    }
}

/// Whether `from..to` holds a signal frame returning through `restorer` whose interrupted
/// stack pointer is at or below `mark`, other than dprobe's `own`.
///
/// # Safety
/// Every 8-byte word in `from..to` must be readable; `from` is 8-aligned.
unsafe fn signal_frame_in(from: u64, to: u64, mark: u64, restorer: u64, mut own: impl FnMut(u64) -> bool) -> bool {
    // SAFETY: the caller vouches for `from..to`; offsets past `to` are not read.
    let word = |at: u64| unsafe { std::ptr::read_volatile(at as *const u64) };
    let mut at = from;
    while at + signal_frame::READ_BYTES <= to {
        if signal_frame::starts_at(at, restorer, word) {
            let interrupted = word(at + RSP_AT);
            if interrupted <= mark && !own(at) {
                return true;
            }
        }
        at += 8;
    }
    false
}

/// The stack pointer of the caller (inlined: of the function that holds the mark).
#[inline(always)]
pub(crate) fn stack_pointer() -> u64 {
    let sp: u64;
    // SAFETY: reads rsp into a register; touches no memory and no flags.
    unsafe { std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_only_one_stack() {
        let none = |rsp, mark, alt| scan_range(rsp, mark, alt).is_none();
        // On the thread's stack: up to the mark, never past SCAN_LIMIT or above the mark.
        assert_eq!(scan_range(0x7000_0003, 0x7000_1000, Some((0, 0, false))), Some((0x7000_0008, 0x7000_1000)));
        assert!(none(0x7000_2000, 0x7000_1000, Some((0, 0, false))));
        let far = 0x7000_0000 + 4 * SCAN_LIMIT;
        assert_eq!(
            scan_range(0x7000_0000, far, Some((0, 0, false))),
            Some((0x7000_0000, 0x7000_0000 + SCAN_LIMIT)),
            "a mark far above (handlers nested in handlers): the nearest SCAN_LIMIT bytes"
        );
        assert!(none(0x7000_0000, 0x7000_1000, None), "the alternate stack unknown: nothing read");
        // On the alternate stack, the mark elsewhere: up to the alternate stack's top.
        let alt = Some((0x1000_0000, 0x8000, true));
        assert_eq!(scan_range(0x1000_7000, 0x7000_1000, alt), Some((0x1000_7000, 0x1000_8000)));
        // Both on it: up to the mark.
        assert_eq!(scan_range(0x1000_1000, 0x1000_2000, alt), Some((0x1000_1000, 0x1000_2000)));
        // Said to be on it but not inside it: nothing read.
        assert!(none(0x2000_0000, 0x7000_1000, alt));
    }

    /// A fake signal frame at `at` in `stack` (words), as the kernel lays it out.
    fn frame(stack: &mut [u64], base: u64, at: usize, restorer: u64, interrupted: u64) {
        stack[at] = restorer;
        stack[at + (RSP_AT / 8) as usize] = interrupted;
        stack[at + (signal_frame::FPREGS_AT / 8) as usize] = base + 8 * (at as u64 + 64);
    }

    #[test]
    fn finds_a_signal_frame_whose_interrupted_stack_is_below_the_mark() {
        let mut stack = vec![0u64; 1024];
        let base = stack.as_ptr() as u64;
        let at = (0..8).find(|i| (base + 8 * i) % 16 == 8).unwrap() as usize + 16;
        let to = base + 8 * 1024;
        let mark = to;
        let found = |s: &[u64], mark, own_at: u64| {
            assert_eq!(s.as_ptr() as u64 + 8 * s.len() as u64, to);
            // SAFETY: the words scanned are those of `s`, alive and readable.
            unsafe { signal_frame_in(s.as_ptr() as u64, to, mark, 0x4242, |at| at == own_at) }
        };
        assert!(!found(&stack, mark, 0), "no frame: dprobe's own call");
        frame(&mut stack, base, at, 0x4242, mark - 512);
        assert!(found(&stack, mark, 0));
        frame(&mut stack, base, at, 0x4243, mark - 512);
        assert!(!found(&stack, mark, 0), "another return address");
        frame(&mut stack, base, at, 0x4242, mark + 8);
        assert!(!found(&stack, mark, 0), "the interrupted stack above the mark: the hit path's own trap frame");
        frame(&mut stack, base, at + 1, 0x4242, mark - 512);
        stack[at] = 0;
        assert!(!found(&stack, mark, 0), "misaligned for a handler's entry");
        frame(&mut stack, base, at, 0x4242, mark - 512);
        stack[at + 1] = 0;
        assert!(found(&stack, mark, 0));
        assert!(!found(&stack, mark, base + 8 * at as u64), "a frame of dprobe's own handler is not the program's");
    }
}
