//! The hit path off a program's alternate signal stack.
//!
//! A probe hit inside a program's signal handler that runs on its alternate stack traps there:
//! the kernel pushes the `SIGTRAP` frame (3.4 KiB where the XSAVE area holds PKRU) below the
//! program's own signal frame and handler, and dprobe's hit path, with the user's handlers,
//! would run below that (a jump, or a return through dprobe's trampoline, runs them below
//! the program's frames too, without a kernel frame). Alternate stacks are small
//! (`SIGSTKSZ`, 8 KiB, is what Rust's std and most C programs give them): a handler that
//! needs a few KiB of stack would overflow it and kill the program. So the hit path moves to a
//! stack of dprobe's own, one per entry of the thread table, mapped the first time it is
//! needed and kept for the entry's next thread.
//!
//! While the hit path runs there:
//! - the program's asynchronous signals are blocked (`rt_sigprocmask`). A signal whose handler
//!   runs on the alternate stack would otherwise be delivered at that stack's top, over the
//!   live frames of the handler the trap interrupted, since the thread is no longer on it.
//!   They arrive when the trap handler returns, as signals held during any handler do.
//!   Synchronous signals (faults, traps) stay unblocked: the kernel kills a thread whose
//!   synchronous signal is blocked.
//! - dprobe's stack is the thread's alternate stack (`sigaltstack`, called once the thread is
//!   off the program's: the kernel refuses to change the stack a thread runs on), so that
//!   dprobe's fault handler (`SA_ONSTACK`), which recovers from a fault in a handler, runs
//!   below the hit path on that stack rather than at the top of the program's.
//!
//! For a trap, both are undone by the kernel: `rt_sigreturn` restores the signal mask and the
//! alternate stack saved in the `SIGTRAP` frame. A hit without a trap undoes them itself, back
//! on the program's stack ([`off_alternate_stack`]); a jump puts the mask back only once its
//! stub's frames are gone (`signals_released.rs`), so that a signal held meanwhile finds
//! about as much of the program's stack as after a trap. A trap taken while already on dprobe's
//! stack (the hit path calls a probed C library function) stays there. A program whose alternate stack
//! is disarmed while its handler runs (`SS_AUTODISARM`) has none then, for the kernel or in a
//! trap's frame: a hit with no alternate stack set, whose stack pointer is on the stack last
//! seen armed that way, moves too. A thread whose first hit since it set that stack comes
//! inside such a handler runs there, as before.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Release},
};

use crate::thread_state::{self, ThreadState};
use crate::{mapped, sys};

/// The usable size of a hit stack.
const SIZE: usize = 256 << 10;
/// The inaccessible page below it: an overflow faults instead of writing elsewhere.
const GUARD: usize = 4096;

std::arch::global_asm!(
    ".text",
    ".globl __dprobe_on_stack",
    ".hidden __dprobe_on_stack",
    ".type __dprobe_on_stack,@function",
    "__dprobe_on_stack:",
    // rdi: the new stack's top, rsi: the function, rdx: its argument.
    "push rbp",
    "mov rbp, rsp",
    "mov rsp, rdi",
    "and rsp, -16",
    "mov rdi, rdx",
    "call rsi",
    "mov rsp, rbp",
    "pop rbp",
    "ret",
    ".size __dprobe_on_stack, . - __dprobe_on_stack",
);

extern "C" {
    /// Call `f(arg)` with the stack pointer at `top` (aligned down to 16), then come back.
    fn __dprobe_on_stack(top: u64, f: extern "C" fn(*mut u8), arg: *mut u8);
}

/// Whether `rip` is inside the stack switch (dprobe's own hit path, never probed).
pub(crate) fn code_contains(rip: u64) -> bool {
    let start = __dprobe_on_stack as *const () as u64;
    rip >= start && rip < start + 32
}

extern "C" fn trampoline<F: FnMut()>(arg: *mut u8) {
    // SAFETY: `arg` is the `&mut F` that `on_stack` passed, alive during this call; `F`
    // catches the handlers' panics itself, so nothing unwinds through this frame.
    let f = unsafe { &mut *(arg as *mut F) };
    f();
}

/// What moving to dprobe's stack changed, which `rt_sigreturn` puts back after a trap, and
/// [`Moved::undo`] after a hit without one, or before a program's handler is called from the
/// trap handler (it may leave with `longjmp`, and `rt_sigreturn` then never runs).
pub(crate) struct Moved {
    /// The signal mask before the asynchronous signals were blocked.
    mask: u64,
    /// The program's alternate stack, as the trap's frame holds it (or the kernel reported it,
    /// for a hit without a trap).
    program: libc::stack_t,
}

impl Moved {
    /// Put back the program's alternate stack, then its signal mask. Called on the program's
    /// alternate stack, back from dprobe's.
    pub(crate) fn undo(self) {
        sys::set_signal_mask(self.stack_put_back());
    }

    /// Put back the program's alternate stack, and say the signal mask to put back: the
    /// program's asynchronous signals stay held until then.
    fn stack_put_back(self) -> u64 {
        // The thread is not on the stack now registered (dprobe's), so the kernel allows the
        // change, and it took these settings from the program before. Should it refuse them
        // now, the thread is left with no alternate stack rather than with dprobe's: a
        // program handler running there would have its frames under the next hit path's.
        if !set_alternate_stack(&self.program) {
            let none = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
            set_alternate_stack(&none);
        }
        self.mask
    }
}

/// Run `trap`, the `SIGTRAP` handler's work for the frame `uc` of the thread whose state is
/// `state`: on a stack of dprobe's when the frame says the thread was on its alternate stack
/// (see the module's comment), where it was otherwise; what moving changed, when it moved.
/// Everything before the switch keeps a small frame: `trap` is not inlined.
pub(crate) fn run_off_alternate_stack<R>(
    state: Option<&ThreadState>,
    uc: *mut libc::c_void,
    trap: impl FnOnce() -> R,
) -> (R, Option<Moved>) {
    // SAFETY: `uc` is the context the kernel passed to the running handler, valid during it.
    let (program, sp) = unsafe {
        let uc = &*uc.cast::<libc::ucontext_t>();
        (uc.uc_stack, uc.uc_mcontext.gregs[libc::REG_RSP as usize] as u64)
    };
    // The frame keeps the alternate stack's settings (its flags as set, not whether the
    // thread was on it), which hits without a trap then trust anew.
    let Some(state) = state else { return (trap(), None) };
    let Some(mapping) = hit_stack_for(state, &program, sp) else { return (trap(), None) };
    run_moved(state, program, mapping, trap)
}

/// How many hits without a trap trust the program's alternate stack as last seen before the
/// kernel is asked again (one system call).
const TRUSTED_HITS: u32 = 1024;

/// Run `work`, a hit path entered without a signal (a jump, the return trampoline) by a thread
/// whose stack pointer at the probe was `sp`: on a stack of dprobe's when that is on the
/// program's alternate stack, as the trap path does (see the module's comment), then back,
/// with what moving changed put back; where it is otherwise.
///
/// Whether the thread is on its alternate stack takes a system call; a hit makes it only when
/// `sp` is inside the alternate stack last seen, or once every [`TRUSTED_HITS`] hits (so that
/// a program that sets another alternate stack has it seen), and a trap's frame shows it for
/// free (any trap of the thread). Until then a hit on a newly set alternate stack runs there.
#[inline(always)]
pub(crate) fn off_alternate_stack<R>(state: &ThreadState, sp: u64, work: impl FnOnce() -> R) -> R {
    let (result, held) = off_alternate_stack_holding(state, sp, work);
    if let Some(mask) = held {
        sys::set_signal_mask(mask);
    }
    result
}

/// [`off_alternate_stack`], except that the program's asynchronous signals stay held when the
/// hit path moved: the signal mask to put back is returned with the result, for a caller that
/// puts it back once its own frames are off the program's alternate stack (a signal delivered
/// as it is put back gets its frame below the caller's: see `signals_released.rs`).
#[inline(always)]
pub(crate) fn off_alternate_stack_holding<R>(
    state: &ThreadState,
    sp: u64,
    work: impl FnOnce() -> R,
) -> (R, Option<u64>) {
    let (low, size, trusted) = state.alternate_seen.get();
    if outside(sp, low, size) && trusted > 0 {
        state.alternate_seen.set((low, size, trusted - 1));
        return (work(), None);
    }
    // Apart, so that the hit path's common case stays small enough to be inlined whole.
    moving_if_needed(state, sp, work)
}

/// [`off_alternate_stack_holding`] once the kernel is asked.
#[cold]
#[inline(never)]
fn moving_if_needed<R>(state: &ThreadState, sp: u64, work: impl FnOnce() -> R) -> (R, Option<u64>) {
    match moving_needed(state, sp) {
        None => (work(), None),
        Some((program, mapping)) => {
            let (result, moved) = run_moved(state, program, mapping, work);
            // No `rt_sigreturn` here to put them back.
            (result, moved.map(Moved::stack_put_back))
        }
    }
}

/// Whether `sp` is on one of dprobe's hit stacks: a thread's hit path moved there, and the
/// program's frames it came from (a signal frame saved in a window, a call into a detour)
/// are on another stack.
pub(crate) fn on_any_hit_stack(sp: u64) -> bool {
    thread_state::any_hit_stack(|mapping| mapping != 0 && !outside(sp, mapping, (GUARD + SIZE) as u64))
}

/// Whether a stack pointer `sp` is outside the stack of `size` bytes above `low` (a stack
/// pointer at its top is inside, one at its bottom has nothing left: outside).
#[inline(always)]
fn outside(sp: u64, low: u64, size: u64) -> bool {
    sp.wrapping_sub(low).wrapping_sub(1) >= size
}

/// Ask the kernel for the thread's alternate stack: the program's settings and the hit
/// stack's mapping when `sp` is on the program's stack.
#[cold]
#[inline(never)]
fn moving_needed(state: &ThreadState, sp: u64) -> Option<(libc::stack_t, u64)> {
    let (low, size, _) = state.alternate_seen.get();
    state.alternate_seen.set((low, size, TRUSTED_HITS));
    let program = sys::raw_alternate_stack_settings()?;
    let mapping = hit_stack_for(state, &program, sp)?;
    Some((program, mapping))
}

/// With the program's alternate stack settings `program` (a trap's frame's, or the kernel's)
/// and a hit's stack pointer `sp`: note the settings as last seen, and say where the hit stack
/// is mapped when `sp` is on the program's alternate stack. `None` when it is not, or when the
/// settings are dprobe's own stack (a hit of the hit path's own, which stays: what the program
/// had is not what they say then).
fn hit_stack_for(state: &ThreadState, program: &libc::stack_t, sp: u64) -> Option<u64> {
    let (low, size) = match program.ss_flags & libc::SS_DISABLE {
        0 => (program.ss_sp as u64, program.ss_size as u64),
        _ => (0, 0),
    };
    let word = thread_state::hit_stack_word(state);
    if low != 0 && word.is_some_and(|w| w.load(Acquire) == low) {
        return None;
    }
    let (low, size) = if low == 0 {
        on_disarmed_stack(state, sp).unwrap_or((0, 0))
    } else {
        let disarmed = program.ss_flags & SS_AUTODISARM != 0;
        state.autodisarm_seen.set(if disarmed { (low, size) } else { (0, 0) });
        (low, size)
    };
    state.alternate_seen.set((low, size, TRUSTED_HITS));
    if outside(sp, low, size) {
        return None;
    }
    word.and_then(mapping_of)
}

/// `SS_AUTODISARM` (not in the libc crate): the kernel disarms the alternate stack while a
/// handler runs on it.
const SS_AUTODISARM: libc::c_int = 1 << 31;

/// With no alternate stack set: the program's stack last seen armed with `SS_AUTODISARM`,
/// when `sp` is on it. A handler running there has it disarmed (the kernel then reports no
/// alternate stack, and a trap's frame holds none), but it is as small as any. Kept as the
/// stack last seen, so that the next hits on it ask the kernel too.
fn on_disarmed_stack(state: &ThreadState, sp: u64) -> Option<(u64, u64)> {
    let (low, size) = state.autodisarm_seen.get();
    (!outside(sp, low, size)).then_some((low, size))
}

/// Move to the hit stack mapped at `mapping`, with the program's asynchronous signals held and
/// the hit stack as the alternate stack (the program's, `program`, kept for
/// [`program_alternate_stack`]), run `work` there, and come back: what it returned, and what
/// moving changed, for the caller to put back (the kernel does, for a trap).
fn run_moved<R>(
    state: &ThreadState,
    program: libc::stack_t,
    mapping: u64,
    work: impl FnOnce() -> R,
) -> (R, Option<Moved>) {
    let mask = sys::block_asynchronous_signals();
    state.program_alternate.set((program.ss_sp as u64, program.ss_size as u64));
    let (mut work, mut result) = (Some(work), None);
    on_stack(mapping + (GUARD + SIZE) as u64, &mut || {
        if become_alternate_stack(mapping) {
            result = work.take().map(|work| work());
        }
    });
    let moved = Moved { mask, program };
    match (result, work) {
        (Some(result), _) => (result, Some(moved)),
        // The kernel refused the stack (it should not): the hit path runs where it was.
        (None, Some(work)) => {
            moved.undo();
            (work(), None)
        }
        (None, None) => unreachable!("the work ran or is still here"),
    }
}

/// The hit stack whose word is `word`: the start of its mapping (its guard page first),
/// mapped the first time.
fn mapping_of(word: &AtomicU64) -> Option<u64> {
    let mapping = word.load(Acquire);
    if mapping != 0 {
        return Some(mapping);
    }
    let mapping = mapped::map_zeroed(GUARD + SIZE)?.as_ptr() as u64;
    // An overflow meets a page it cannot touch. Without it, the stack is still used: the
    // mapping's neighbours are the kernel's choice, most often unmapped.
    let _ = sys::protect(dprobe_arch::Addr(mapping), GUARD as u64, libc::PROT_NONE);
    word.store(mapping, Release);
    Some(mapping)
}

/// Call `f` with the stack pointer at `top`.
fn on_stack<F: FnMut()>(top: u64, f: &mut F) {
    // SAFETY: the caller's `top` is the top of this thread's hit stack, unused below it (a
    // trap already on it does not switch); `f` lives until the call returns.
    unsafe { __dprobe_on_stack(top, trampoline::<F>, (f as *mut F).cast()) };
}

/// Make the hit stack mapped at `mapping` the calling thread's alternate stack, its guard page
/// included: a fault that overflows the stack then counts as on it, and kills the thread
/// cleanly, rather than being delivered at the stack's top over the hit path's frames.
/// `false` when the kernel refused.
fn become_alternate_stack(mapping: u64) -> bool {
    set_alternate_stack(&libc::stack_t { ss_sp: mapping as *mut libc::c_void, ss_flags: 0, ss_size: GUARD + SIZE })
}

/// Make `ss` the calling thread's alternate stack settings; `false` when the kernel refused.
fn set_alternate_stack(ss: &libc::stack_t) -> bool {
    // SAFETY: sigaltstack reads the stack_t behind the reference and writes no old one.
    unsafe { sys::raw_syscall6(libc::SYS_sigaltstack, [ss as *const libc::stack_t as u64, 0, 0, 0, 0, 0]) == 0 }
}

/// The program's alternate stack `(base, size)` (size 0: none) as the kernel has it, or, while
/// the calling thread's hit path runs on dprobe's stack, as the program had it.
pub(crate) fn program_alternate_stack() -> (u64, u64) {
    let (base, size) = sys::alternate_stack();
    match thread_state::existing() {
        Some(s) if size != 0 && thread_state::hit_stack_word(s).is_some_and(|w| w.load(Acquire) == base) => {
            s.program_alternate.get()
        }
        _ => (base, size),
    }
}
