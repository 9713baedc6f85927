//! The kernel's x86-64 signal frame (`struct rt_sigframe`) as dprobe finds it on a thread's
//! stack: the handler's return address (`pretcode`, the C library's `sa_restorer`), then the
//! `ucontext_t` with the interrupted registers, the floating-point state a little above.
//!
//! A frame is recognized by that return address at a place 8 modulo 16 (where the kernel
//! aligns a frame's start), no `uc_link`, and the floating-point state's pointer just above.
//! Frames of handlers installed with another restorer (a program's own `rt_sigaction` system
//! calls) are not seen.

/// Where the `ucontext_t` starts in a frame.
pub(crate) const UC_AT: u64 = 8;
/// Offsets of fields of the frame.
pub(crate) const LINK_AT: u64 = UC_AT + std::mem::offset_of!(libc::ucontext_t, uc_link) as u64;
const GREGS_AT: u64 = UC_AT + std::mem::offset_of!(libc::ucontext_t, uc_mcontext) as u64;
pub(crate) const RIP_AT: u64 = GREGS_AT + 8 * libc::REG_RIP as u64;
pub(crate) const RSP_AT: u64 = GREGS_AT + 8 * libc::REG_RSP as u64;
pub(crate) const FPREGS_AT: u64 = GREGS_AT + std::mem::offset_of!(libc::mcontext_t, fpregs) as u64;
/// The bytes a frame's recognition reads from its start.
pub(crate) const READ_BYTES: u64 = FPREGS_AT + 8;
/// Where the signal mask of the interrupted code is: the kernel's `ucontext` has it where the
/// C library's does, 8 bytes of it (the C library's `sigset_t` is longer).
pub(crate) const MASK_AT: u64 = UC_AT + std::mem::offset_of!(libc::ucontext_t, uc_sigmask) as u64;
/// Where the `siginfo_t` is: just after the kernel's `ucontext`. Written only for a handler
/// installed with `SA_SIGINFO`: elsewhere the words there are whatever the stack held.
pub(crate) const SIGINFO_AT: u64 = MASK_AT + 8;

// The kernel's layout: the machine context's 23 general registers, then the pointer to the
// floating-point state.
const _: () = assert!(RSP_AT == 168 && RIP_AT == 176 && FPREGS_AT == 232 && MASK_AT == 304);

/// Where a frame's copy of its thread's alternate-stack settings at its delivery is
/// (`uc_stack`), and its fields.
const ALTERNATE_AT: u64 = UC_AT + std::mem::offset_of!(libc::ucontext_t, uc_stack) as u64;
const ALTERNATE_SP_AT: u64 = ALTERNATE_AT + std::mem::offset_of!(libc::stack_t, ss_sp) as u64;
const ALTERNATE_FLAGS_AT: u64 = ALTERNATE_AT + std::mem::offset_of!(libc::stack_t, ss_flags) as u64;
const ALTERNATE_SIZE_AT: u64 = ALTERNATE_AT + std::mem::offset_of!(libc::stack_t, ss_size) as u64;
const _: () = assert!(ALTERNATE_SIZE_AT + 8 <= READ_BYTES);

/// The alternate signal stack (`[start, end)`) that the frame starting at `at` lies on, as
/// the frame's own copy of the thread's settings at its delivery gives it: the kernel put the
/// frame there, switching to that stack (or the thread ran on it already). `None` for a frame
/// on any other stack, where the kernel put it below the place it interrupted, on the same
/// stack. (The thread's settings now may differ: with `SS_AUTODISARM` they are cleared while
/// a handler runs on the alternate stack.) `word` reads the stack, from `at` to
/// `at + READ_BYTES`.
pub(crate) fn alternate_stack_holding(at: u64, word: impl Fn(u64) -> u64) -> Option<(u64, u64)> {
    let (start, size) = (word(at + ALTERNATE_SP_AT), word(at + ALTERNATE_SIZE_AT));
    let flags = word(at + ALTERNATE_FLAGS_AT) as u32 as i32;
    (flags & libc::SS_DISABLE == 0 && start <= at && at - start < size).then(|| (start, start.saturating_add(size)))
}

/// How far above a frame its floating-point state may be (a few KiB; about 11 with AMX tiles).
const FPREGS_WITHIN: u64 = 64 * 1024;

/// Whether a signal frame returning through `restorer` starts at `at`, reading the stack's
/// words with `word` (from `at` to `at + READ_BYTES`, which the caller knows are readable).
pub(crate) fn starts_at(at: u64, restorer: u64, word: impl Fn(u64) -> u64) -> bool {
    if at % 16 != 8 || word(at) != restorer || word(at + LINK_AT) != 0 {
        return false;
    }
    let fp = word(at + FPREGS_AT);
    fp > at && fp - at < FPREGS_WITHIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    static FRAME: AtomicU64 = AtomicU64::new(0);
    static RECOGNIZED: AtomicU64 = AtomicU64::new(0);
    static SIGNO: AtomicU64 = AtomicU64::new(0);

    extern "C" fn note_frame(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        let frame = uc as u64 - UC_AT;
        FRAME.store(frame, Relaxed);
        let restorer = crate::blocked::restorer(libc::SIGWINCH);
        // SAFETY: the words read are this handler's own frame, from its start on.
        let word = |at: u64| unsafe { std::ptr::read_volatile(at as *const u64) };
        RECOGNIZED.store(starts_at(frame, restorer, word) as u64, Relaxed);
        SIGNO.store(word(frame + SIGINFO_AT) & 0xffff_ffff, Relaxed);
    }

    #[test]
    fn the_kernels_own_frame_is_recognized() {
        // SAFETY: all-zero is a valid sigaction; a handler that looks at its own frame.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = note_frame as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: a valid action for SIGWINCH, which nothing else in these tests uses.
        unsafe {
            assert_eq!(libc::sigaction(libc::SIGWINCH, &sa, std::ptr::null_mut()), 0);
            libc::raise(libc::SIGWINCH);
        }
        assert_eq!(FRAME.load(Relaxed) % 16, 8);
        assert_eq!(RECOGNIZED.load(Relaxed), 1);
        assert_eq!(SIGNO.load(Relaxed), libc::SIGWINCH as u64, "the siginfo where the frame says");
    }

    /// What `alternate_stack_holding` said of the frame of each handler: on the alternate
    /// stack, then on the thread's own; and the thread's alternate stack as the first handler
    /// saw it (`SS_DISABLE` while disarmed).
    static ON_ALTERNATE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    static ON_OWN: AtomicU64 = AtomicU64::new(1);
    static FLAGS_SEEN: AtomicU64 = AtomicU64::new(0);

    extern "C" fn on_alternate(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // SAFETY: the words read are this handler's own frame, from its start on.
        let word = |at: u64| unsafe { std::ptr::read_volatile(at as *const u64) };
        let (start, end) = alternate_stack_holding(uc as u64 - UC_AT, word).unwrap_or_default();
        ON_ALTERNATE[0].store(start, Relaxed);
        ON_ALTERNATE[1].store(end, Relaxed);
        // SAFETY: reads the thread's alternate stack into a local.
        let mut now: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::sigaltstack(std::ptr::null(), &mut now) };
        FLAGS_SEEN.store(now.ss_flags as u32 as u64, Relaxed);
    }

    extern "C" fn on_own(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // SAFETY: as in `on_alternate`.
        let word = |at: u64| unsafe { std::ptr::read_volatile(at as *const u64) };
        ON_OWN.store(alternate_stack_holding(uc as u64 - UC_AT, word).is_some() as u64, Relaxed);
    }

    /// A frame the kernel put on the alternate stack says so from its own copy of the
    /// settings, even while `SS_AUTODISARM` has the thread's settings cleared; one on the
    /// thread's own stack does not.
    #[test]
    fn a_frame_on_a_disarmed_alternate_stack_knows_it_is_there() {
        const SS_AUTODISARM: i32 = 1 << 31;
        std::thread::spawn(|| {
            let alternate = vec![0u8; 64 << 10];
            let (start, end) = (alternate.as_ptr() as u64, alternate.as_ptr() as u64 + alternate.len() as u64);
            let stack = libc::stack_t {
                ss_sp: alternate.as_ptr() as *mut libc::c_void,
                ss_flags: SS_AUTODISARM,
                ss_size: alternate.len(),
            };
            for (sig, handler, flags) in [
                (libc::SIGXFSZ, on_alternate as extern "C" fn(_, _, _), libc::SA_ONSTACK),
                (libc::SIGVTALRM, on_own, 0),
            ] {
                // SAFETY: all-zero is a valid sigaction; a handler that looks at its own frame,
                // for a signal no other test of this crate uses.
                let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
                sa.sa_sigaction = handler as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | flags;
                // SAFETY: as above; the alternate stack lives until the handlers returned.
                unsafe {
                    assert_eq!(libc::sigaltstack(&stack, std::ptr::null_mut()), 0);
                    let mut old: libc::sigaction = std::mem::zeroed();
                    assert_eq!(libc::sigaction(sig, &sa, &mut old), 0);
                    libc::raise(sig);
                    assert_eq!(libc::sigaction(sig, &old, std::ptr::null_mut()), 0);
                }
            }
            assert_ne!(FLAGS_SEEN.load(Relaxed) as u32 as i32 & libc::SS_DISABLE, 0, "disarmed in the handler");
            assert_eq!((ON_ALTERNATE[0].load(Relaxed), ON_ALTERNATE[1].load(Relaxed)), (start, end));
            assert_eq!(ON_OWN.load(Relaxed), 0, "a frame on the thread's own stack");
            // SAFETY: takes the alternate stack away before it is freed.
            let off = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
            // SAFETY: as above.
            unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) };
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_frame_is_its_restorer_no_link_and_its_state_above() {
        let frame = |at: u64, fp: u64| {
            move |a: u64| match a - at {
                0 => 0x4242,
                FPREGS_AT => fp,
                _ => 0,
            }
        };
        assert!(starts_at(0x1008, 0x4242, frame(0x1008, 0x1800)));
        assert!(!starts_at(0x1010, 0x4242, frame(0x1010, 0x1800)), "not 8 modulo 16");
        assert!(!starts_at(0x1008, 0x4343, frame(0x1008, 0x1800)), "another return address");
        assert!(!starts_at(0x1008, 0x4242, frame(0x1008, 0x1000)), "its state below it");
        assert!(!starts_at(0x1008, 0x4242, frame(0x1008, 0x1008 + FPREGS_WITHIN)), "its state far above");
        let linked = |a: u64| if a == 0x1008 + LINK_AT { 1 } else { frame(0x1008, 0x1800)(a) };
        assert!(!starts_at(0x1008, 0x4242, linked), "a uc_link");
    }
}
