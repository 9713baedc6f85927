//! Return probes at the edges: the alternate signal stack, a function that never returns,
//! and backtraces through the trampoline.
use dprobe_inproc::*;
use dprobe_test_fixtures as c;
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

fn at(f: *const ()) -> Addr {
    Addr(f as u64)
}

static FROM_HANDLER: AtomicI64 = AtomicI64::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    // SAFETY: with a negative argument fxc_victim returns it.
    FROM_HANDLER.store(unsafe { c::fxc_victim(black_box(-10)) }, Relaxed);
}

#[test]
fn a_function_entered_on_the_alternate_signal_stack_is_traced_and_returns_correctly() {
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_victim as *const ())).handler(|_, _| {})).unwrap();
    // SAFETY: a dedicated alternate stack for this thread and a SIGUSR1 handler that runs on
    // it; the signal is raised synchronously on this thread.
    unsafe {
        let stack = Box::leak(vec![0u8; 256 * 1024].into_boxed_slice());
        let ss = libc::stack_t { ss_sp: stack.as_mut_ptr().cast(), ss_flags: 0, ss_size: stack.len() };
        assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_ONSTACK;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        libc::raise(libc::SIGUSR1);
    }
    assert_eq!(FROM_HANDLER.load(Relaxed), -10, "returned correctly from the alternate stack");
    // SAFETY: as above, on the thread's own stack.
    assert_eq!(unsafe { c::fxc_victim(black_box(-1)) }, -1);
    let st = p.stats();
    assert_eq!((st.returns, (st.missed + st.reentered), st.abandoned, p.pending()), (2, 0, 0, 0), "{st:?}");
}

#[test]
fn a_probed_function_that_exits_the_process_leaves_nothing_broken() {
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_exit_process as *const ())).handler(|_, _| {})).unwrap();
    // SAFETY: the child only calls a function that _exits; the parent waits for it.
    let status = unsafe {
        match libc::fork() {
            0 => {
                c::fxc_exit_process(7);
                libc::_exit(99)
            }
            child => {
                let mut status = 0;
                assert_eq!(libc::waitpid(child, &mut status, 0), child);
                status
            }
        }
    };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7, "status {status:#x}");
    assert_eq!(p.pending(), 0, "the parent's pool is untouched");
}

static FRAMES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static FRAME_COUNT: AtomicU64 = AtomicU64::new(0);

fn record_backtrace(regs: &mut Regs) -> PreAction {
    let mut out = [0u64; 4];
    let n = backtrace(regs, true, &mut out);
    FRAME_COUNT.store(n as u64, Relaxed);
    for (slot, v) in FRAMES.iter().zip(out) {
        slot.store(v, Relaxed);
    }
    PreAction::Continue
}

fn frames() -> Vec<u64> {
    let n = FRAME_COUNT.load(Relaxed) as usize;
    FRAMES[..n.min(4)].iter().map(|f| f.load(Relaxed)).collect()
}

#[test]
fn backtraces_see_through_the_trampoline() {
    // A backtrace at fxc_add's entry: fxc_add, its caller fxc_middle, then fxc_outer.
    let bt = register(Kprobe::addr(at(c::fxc_add as *const ())).pre(record_backtrace)).unwrap();
    // SAFETY: fxc_outer(a) = a + 3 through fxc_middle and fxc_add.
    assert_eq!(unsafe { c::fxc_outer(black_box(1)) }, 4);
    let plain = frames();
    assert!(plain.len() >= 3, "{plain:x?}");
    // Now the middle frame's return address is the trampoline's.
    let ret =
        register_kretprobe(Kretprobe::addr(at(c::fxc_middle as *const ())).via_return_address().handler(|_, _| {}))
            .unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { c::fxc_outer(black_box(1)) }, 4);
    let through = frames();
    assert!(
        !through.contains(&trampoline_addr()),
        "plain {plain:x?} through {through:x?} trampoline {:x}",
        trampoline_addr()
    );
    assert_eq!(&through[..3], &plain[..3], "the same call chain with and without the return probe");
    assert_eq!(ret.stats().returns, 1);
    // A second return probe on the same function hijacks the same slot again.
    let second =
        register_kretprobe(Kretprobe::addr(at(c::fxc_middle as *const ())).via_return_address().handler(|_, _| {}))
            .unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { c::fxc_outer(black_box(1)) }, 4);
    assert_eq!(&frames()[..3], &plain[..3], "two hijacks of one slot still map to the real caller");
    assert_eq!((ret.stats().returns, second.stats().returns), (2, 1));
    drop(bt);
}
