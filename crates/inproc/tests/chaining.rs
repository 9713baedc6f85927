//! The program's own SIGTRAP handler keeps working under dprobe.
mod fixtures;
use fixtures::*;

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static PROGRAM_TRAPS: AtomicU64 = AtomicU64::new(0);

extern "C" fn program_handler(_sig: libc::c_int, _info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    PROGRAM_TRAPS.fetch_add(1, Relaxed);
}

#[test]
fn the_programs_own_int3_reaches_the_programs_handler() {
    // SAFETY: installing a plain SA_SIGINFO handler for SIGTRAP, before dprobe's.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = program_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
    let p = register(Kprobe::addr(addr(fx_mov_add)).pre(|_| PreAction::Continue)).unwrap();
    // SAFETY: fx_own_int3 executes int3 (the program's handler returns) and returns 7.
    assert_eq!(unsafe { fx_own_int3() }, 7);
    assert_eq!(PROGRAM_TRAPS.load(Relaxed), 1);
    assert_eq!(call2(fx_mov_add, 2, 3), 5);
    assert_eq!(p.hits(), 1);
    assert_eq!(PROGRAM_TRAPS.load(Relaxed), 1, "dprobe's traps are not passed on");
}
