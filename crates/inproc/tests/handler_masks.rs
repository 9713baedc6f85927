//! A signal handler installed with a full mask (`sigfillset(&sa.sa_mask)`) runs with
//! `SIGTRAP` blocked, and a probe on `int3` hit in it is a forced signal the thread blocks:
//! the kernel kills the program. While `keep_traps_open`'s guard lives, handlers' masks leave
//! `SIGTRAP` out (those installed before it and after), and when it goes they are as the
//! program set them again.
mod fixtures;
use fixtures::fx_mov_add;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::keep_traps_open;

const TRAP: u64 = 1 << (libc::SIGTRAP - 1);
static HITS: AtomicU64 = AtomicU64::new(0);
static RESULTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: the fixture adds its arguments.
    RESULTS.fetch_add(unsafe { fx_mov_add(40, 2) }, Relaxed);
}

/// Install `handler` for `sig` through the C library, with every signal in its mask when
/// `full` (none otherwise).
fn install(sig: libc::c_int, handler: libc::sighandler_t, full: bool) {
    // SAFETY: a zeroed action with a valid handler (or disposition) and mask.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        if full {
            libc::sigfillset(&mut action.sa_mask);
        }
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
    }
}

/// Try to install `handler` for `sig` with a full mask, which the C library refuses.
fn install_refused(sig: libc::c_int, handler: libc::sighandler_t) {
    // SAFETY: a zeroed action with a valid handler and mask; the call fails.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigfillset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), -1);
    }
}

/// `sig`'s action as the kernel has it: handler, flags, restorer, mask.
fn kernel_action(sig: libc::c_int) -> [u64; 4] {
    let mut action = [0u64; 4];
    // SAFETY: rt_sigaction with no new action writes the current one into `action`, as large
    // as the kernel's structure for an 8-byte set.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, 0usize, action.as_mut_ptr(), 8usize) };
    assert_eq!(r, 0);
    action
}

/// Raise `sig` in a child and wait: how it ended.
fn raised_in_child(sig: libc::c_int) -> libc::c_int {
    // SAFETY: the child raises one signal (whose handler calls the fixture) and leaves.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raises a handled signal, then ends the child at once.
        unsafe {
            libc::raise(sig);
            libc::_exit(7);
        }
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn handlers_with_full_masks_take_their_int3_hits_and_get_their_masks_back() {
    let probe = fixtures::counting_int3_probe(&HITS);
    let handler = on_signal as *const () as libc::sighandler_t;
    install(libc::SIGUSR1, handler, true);
    let usr1_before = kernel_action(libc::SIGUSR1);
    assert_ne!(usr1_before[3] & TRAP, 0);
    // A disposition's mask is never in force: left as it is.
    install(libc::SIGWINCH, libc::SIG_IGN, true);
    let winch_before = kernel_action(libc::SIGWINCH);

    // Without the guard: killed at the handler's first hit.
    let status = raised_in_child(libc::SIGUSR1);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTRAP, "status {status:#x}");

    let guard = keep_traps_open().unwrap();
    assert_eq!(guard.optimized(), Ok(()));
    // Installed before: its mask changed in place, all but SIGTRAP kept.
    assert_eq!(kernel_action(libc::SIGUSR1), [usr1_before[0], usr1_before[1], usr1_before[2], usr1_before[3] & !TRAP]);
    assert_eq!(kernel_action(libc::SIGWINCH), winch_before);
    // Installed while it lives.
    install(libc::SIGUSR2, handler, true);
    let usr2 = kernel_action(libc::SIGUSR2);
    assert_eq!((usr2[3] & TRAP, usr2[3].count_ones() > 50), (0, true), "{:#x}", usr2[3]);
    // Installed with a full mask, then again with an empty one: nothing to put back.
    install(libc::SIGHUP, handler, true);
    install(libc::SIGHUP, handler, false);

    // Saved (shown without SIGTRAP), replaced, and put back: still dprobe's to put back.
    // SAFETY: valid actions; `saved` receives the current one.
    unsafe {
        let mut saved: libc::sigaction = std::mem::zeroed();
        let mut other: libc::sigaction = std::mem::zeroed();
        other.sa_sigaction = libc::SIG_IGN;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &other, &mut saved), 0);
        assert_eq!(libc::sigismember(&saved.sa_mask, libc::SIGTRAP), 0);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &saved, std::ptr::null_mut()), 0);
    }
    // A call the C library refuses (its own signal) changes nothing.
    let cancel_before = kernel_action(32);
    install_refused(32, handler);
    // A second guard: the masks come back only when the last one goes.
    let second = keep_traps_open().unwrap();
    install(libc::SIGALRM, handler, true);
    assert_eq!(kernel_action(libc::SIGALRM)[3] & TRAP, 0);
    drop(second);
    assert_eq!(kernel_action(libc::SIGUSR1)[3] & TRAP, 0);

    // The handlers run their hits, here and in a child.
    for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM] {
        let status = raised_in_child(sig);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7, "signal {sig}: status {status:#x}");
        // SAFETY: raises a signal whose handler calls the fixture.
        assert_eq!(unsafe { libc::raise(sig) }, 0);
    }
    assert_eq!(RESULTS.load(Relaxed), 3 * 42);
    assert_eq!((HITS.load(Relaxed), probe.hits()), (3, 3));

    drop(guard);
    // As the program set them, whole.
    assert_eq!(kernel_action(libc::SIGUSR1), usr1_before);
    let mut usr2_set = usr2;
    usr2_set[3] |= TRAP;
    assert_eq!(kernel_action(libc::SIGUSR2), usr2_set);
    assert_eq!(kernel_action(libc::SIGALRM)[3] & TRAP, TRAP);
    assert_eq!(kernel_action(libc::SIGHUP)[3], 0);
    assert_eq!(kernel_action(libc::SIGWINCH), winch_before);
    assert_eq!(kernel_action(32), cancel_before);
    drop(probe);
}
