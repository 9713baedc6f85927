//! A tool's handlers mark their work as the tool's own (`tool_work`, as the agent's do): the
//! probes that work passes through count nothing. But a signal may arrive in the middle of it,
//! and the program's handler for it then runs there: its calls are the program's, and its hits
//! must be counted, as missed (they came while another probe ran, the kernel's rule), never
//! lost. On the thread's stack and on an alternate signal stack, through the trap path and
//! through jumps.
mod fixtures;
use fixtures::*;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Kprobe, PreAction};

/// Times the inner probe's handler ran.
static INNER_RAN: AtomicU64 = AtomicU64::new(0);

/// The program's handler: it calls the function the inner probe is on.
extern "C" fn program_handler(_: libc::c_int) {
    std::hint::black_box(call2(fx_spare2, 5, 3));
}

fn install_program_handler(on_alternate_stack: bool) {
    // SAFETY: all-zero is a valid sigaction; we set a plain handler and an empty mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = program_handler as *const () as usize;
    sa.sa_flags = if on_alternate_stack { libc::SA_ONSTACK } else { 0 };
    // SAFETY: a valid action for SIGUSR1, whose handler only calls an assembly fixture.
    assert_eq!(unsafe { libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) }, 0);
}

/// Run `f` with an alternate signal stack of 64 KiB of this thread's own.
fn with_alternate_stack(f: impl FnOnce()) {
    let size = 64 * 1024;
    let mut stack = vec![0u8; size];
    let new = libc::stack_t { ss_sp: stack.as_mut_ptr().cast(), ss_flags: 0, ss_size: size };
    let mut old = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: 0, ss_size: 0 };
    // SAFETY: `stack` outlives its use: the old stack is put back before it is freed.
    assert_eq!(unsafe { libc::sigaltstack(&new, &mut old) }, 0);
    f();
    // SAFETY: puts back what the thread had.
    assert_eq!(unsafe { libc::sigaltstack(&old, std::ptr::null_mut()) }, 0);
}

/// Register the two probes (trapping or jumping), call the outer function three times and
/// return the inner probe's (hits, missed) and how often its handler ran.
fn run(jumps: bool) -> (u64, u64, u64) {
    let kprobe = |f| {
        let k = Kprobe::addr(addr(f));
        if jumps {
            k
        } else {
            k.no_optimize()
        }
    };
    INNER_RAN.store(0, Relaxed);
    let inner = register(kprobe(fx_spare2).pre(|_| {
        INNER_RAN.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let outer = register(kprobe(fx_spare1).pre(|_| {
        let _tool = dprobe_inproc::tool_work();
        // The tool's own call: not the program's, nothing counted.
        std::hint::black_box(call2(fx_spare2, 9, 4));
        // A signal now: the program's handler's call is the program's, and missed.
        // SAFETY: raise has no preconditions; the handler is installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!((outer.optimized().is_ok(), inner.optimized().is_ok()), (jumps, jumps), "the path meant");
    for _ in 0..3 {
        assert_eq!(call2(fx_spare1, 6, 7), 42, "the program went on");
    }
    let st = inner.stats();
    (st.hits, st.reentered, INNER_RAN.load(Relaxed))
}

#[test]
fn a_programs_signal_handler_inside_a_tools_work_is_missed_not_lost() {
    for jumps in [false, true] {
        install_program_handler(false);
        assert_eq!(run(jumps), (0, 3, 0), "the handler on the thread's stack, jumps: {jumps}");
        with_alternate_stack(|| {
            install_program_handler(true);
            assert_eq!(run(jumps), (0, 3, 0), "the handler on the alternate stack, jumps: {jumps}");
        });
    }
    // Outside any probe, the program's handler's call is a hit as any other.
    let inner = register(Kprobe::addr(addr(fx_spare2)).pre(|_| PreAction::Continue)).unwrap();
    install_program_handler(false);
    // SAFETY: as above.
    unsafe { libc::raise(libc::SIGUSR1) };
    assert_eq!((inner.stats().hits, inner.stats().reentered), (1, 0));
}

/// Calls of the program's handler (each calls fx_mov_add once).
static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn counting_handler(_: libc::c_int) {
    std::hint::black_box(call2(fx_mov_add, 5, 3));
    HANDLED.fetch_add(1, Relaxed);
}

/// The program's signals, sent by another thread, arrive at any moment of the main thread's
/// calls of a probed function: in its handler (doing the tool's work, or nothing), in
/// dprobe's machinery, or outside both. The calls of the function the program's handler calls
/// are hits or missed hits, never counted twice, most of them counted (other functions than
/// the test above's: the tests run at once).
#[test]
fn signals_from_another_thread_at_any_moment_are_all_counted() {
    const SIGNALS: u64 = 20_000;
    // SAFETY: as in `install_program_handler`.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = counting_handler as *const () as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: a valid action for SIGUSR2.
    assert_eq!(unsafe { libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) }, 0);
    for (jumps, tool) in [(false, true), (true, true), (false, false), (true, false)] {
        let kprobe = |f| if jumps { Kprobe::addr(addr(f)) } else { Kprobe::addr(addr(f)).no_optimize() };
        let inner = register(kprobe(fx_mov_add).pre(|_| PreAction::Continue)).unwrap();
        let outer = register(kprobe(fx_push_add).pre(move |_| {
            if tool {
                let _tool = dprobe_inproc::tool_work();
                std::hint::black_box(call2(fx_mov_add, 9, 4));
            }
            PreAction::Continue
        }))
        .unwrap();
        HANDLED.store(0, Relaxed);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        // Each signal once the last was handled (a pending one sent again would merge), for
        // at most a second: on a loaded machine each takes a few scheduler rounds.
        let sender = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            for i in 0..SIGNALS {
                if start.elapsed() > std::time::Duration::from_secs(1) {
                    break;
                }
                // SAFETY: `me` is alive: it joins this thread.
                unsafe { libc::pthread_kill(me, libc::SIGUSR2) };
                while HANDLED.load(Relaxed) <= i {
                    std::thread::yield_now();
                }
            }
        });
        while !sender.is_finished() {
            std::hint::black_box(call2(fx_push_add, 6, 7));
        }
        sender.join().unwrap();
        let (st, handled) = (inner.stats(), HANDLED.load(Relaxed));
        // Never counted twice. Where the probe's handler does nothing, most of a jump's hit
        // time is dprobe's machinery (the dispatcher's own code), where the stack holds stale
        // bytes of earlier signal frames: a frame there counts once the mask shows its
        // handler still running. Without that, 62-65% were counted through jumps; with it,
        // all, in runs on an idle 2-core AMD EPYC (the bound asks for three quarters, for
        // loaded machines). Through traps, most of a hit's time is the
        // kernel's, and a signal there is handled on the way out, outside the machinery. Under `stress-ng --cpu 2` with the workspace's tests
        // running, the trap path counted 77% of 259 signals (the thread is preempted in the
        // kernel's trap handling, and a signal delivered on the way out lands before dprobe's
        // handler): its bound asks for most, and the exact test above pins the scan itself.
        let counted = st.hits + st.reentered;
        println!("jumps: {jumps}, tool's work: {tool}: {counted} of {handled} signals counted");
        let most = if jumps { counted * 4 >= handled * 3 } else { counted * 2 >= handled };
        assert!(counted <= handled && most, "jumps: {jumps}, tool's work: {tool}, {handled} handled, {st:?}");
        drop((inner, outer));
    }
}
