//! dprobe's own probes on the C library's signal functions (`keep_traps_open`'s) answer some
//! calls themselves and point others at copies of their arguments. A user's probe on the same
//! function sees every call as the program made it, whether it was placed before the guard or
//! after; a return probe on it sees each call return, the ones the guard answers too.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{keep_traps_open, register, register_kretprobe, Kprobe, Kretprobe, PreAction, ReturnMode};

/// Calls of `sigaction` for `SIGSEGV` and of `pthread_sigmask` with the program's own set, as
/// each user probe saw them (before the guard, after it).
static SEGV_ACTIONS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static OWN_SETS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// The address of the set the program passes.
static SET_AT: AtomicU64 = AtomicU64::new(0);

fn user_probes(k: usize) -> [dprobe_inproc::Probe; 2] {
    let actions = register(Kprobe::symbol("libc:sigaction").pre(move |regs| {
        if regs.rdi == libc::SIGSEGV as u64 {
            SEGV_ACTIONS[k].fetch_add(1, Relaxed);
        }
        PreAction::Continue
    }))
    .unwrap();
    let masks = register(Kprobe::symbol("libc:pthread_sigmask").pre(move |regs| {
        if regs.rsi == SET_AT.load(Relaxed) {
            OWN_SETS[k].fetch_add(1, Relaxed);
        }
        PreAction::Continue
    }))
    .unwrap();
    [actions, masks]
}

#[test]
fn a_users_probe_sees_the_calls_dprobes_guards_answer_or_change() {
    let before = user_probes(0);
    let guard = keep_traps_open().unwrap();
    assert_eq!(guard.optimized(), Ok(()));
    let after = user_probes(1);
    static RETURNED_ZERO: AtomicU64 = AtomicU64::new(0);
    let returns = register_kretprobe(Kretprobe::symbol("libc:sigaction").handler(|regs, _| {
        if regs.rax == 0 {
            RETURNED_ZERO.fetch_add(1, Relaxed);
        }
    }))
    .unwrap();
    assert!(matches!(returns.return_mode(), ReturnMode::Exits { .. }), "{:?}", returns.return_mode());
    // SAFETY: valid actions and sets; each call is undone by the next.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        for _ in 0..3 {
            // dprobe's handler holds SIGSEGV: the guard answers the call itself.
            assert_eq!(libc::sigaction(libc::SIGSEGV, &action, &mut old), 0);
            assert_eq!(libc::sigaction(libc::SIGSEGV, &old, std::ptr::null_mut()), 0);
        }
        // A set of every signal: the guard points the call at a copy without SIGTRAP.
        let mut every: libc::sigset_t = std::mem::zeroed();
        let mut was: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut every);
        SET_AT.store(&every as *const libc::sigset_t as u64, Relaxed);
        for _ in 0..3 {
            assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &every, &mut was), 0);
            assert_eq!(libc::pthread_sigmask(libc::SIG_SETMASK, &was, std::ptr::null_mut()), 0);
        }
    }
    for k in 0..2 {
        assert_eq!(SEGV_ACTIONS[k].load(Relaxed), 6, "placed {}", ["before", "after"][k]);
        assert_eq!(OWN_SETS[k].load(Relaxed), 3, "placed {}", ["before", "after"][k]);
    }
    // Every `sigaction` call of this thread returned 0, the six the guard answered included
    // (other threads of the test process make none).
    let st = returns.stats();
    assert_eq!((st.hits, st.returns, RETURNED_ZERO.load(Relaxed)), (6, 6, 6), "{st:?}");
    drop((before, after, returns, guard));
}
