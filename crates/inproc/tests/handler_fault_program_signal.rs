//! A signal the program handles arrives while a dprobe handler runs, and the program's own
//! handler for it faults on purpose (its `SIGSEGV` handler repairs the access and moves on,
//! as runtimes with guard pages or lazily mapped memory do). That fault is the program's: the
//! program's `SIGSEGV` handler gets it, the program's signal handler finishes, and so does
//! dprobe's handler, whose fault recovery is not taken. Through a jump and through a trap,
//! and for a handler installed with `signal()`.
//! (A test binary of its own: the program's `SIGSEGV` handler is installed before dprobe's,
//! which then passes on the faults that are not its own.)
mod fixtures;
use fixtures::{addr, call2, fx_mov_add, fx_push_add};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Kprobe, PreAction};

/// Where the program's signal handler reads: nothing is mapped there.
const HOLE: u64 = 0x10;
/// What the program's `SIGSEGV` handler makes the faulting load return.
const REPAIRED: u64 = 0x5a;

static PROGRAM_SEGVS: AtomicU64 = AtomicU64::new(0);
static HANDLER_DONE: AtomicU64 = AtomicU64::new(0);
static HANDLER_READ: AtomicU64 = AtomicU64::new(0);

/// The program's `SIGSEGV` handler: the load of `program_usr1` from `HOLE` (`mov rax, [rdi]`,
/// 3 bytes) gets `REPAIRED` and the code goes on after it. Any other fault ends the process.
extern "C" fn program_segv(_: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel's arguments to an SA_SIGINFO handler.
    let (addr, uc) = unsafe { ((*info).si_addr() as u64, &mut *(uc as *mut libc::ucontext_t)) };
    if addr != HOLE {
        // SAFETY: async-signal-safe exit.
        unsafe { libc::_exit(98) };
    }
    PROGRAM_SEGVS.fetch_add(1, Relaxed);
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] += 3;
    uc.uc_mcontext.gregs[libc::REG_RAX as usize] = REPAIRED as i64;
}

/// The program's `SIGUSR1` handler: a load that faults, repaired by `program_segv`.
extern "C" fn program_usr1(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    faulting_load();
}

/// A real-time signal nothing else sends this process (a terminal's `SIGWINCH` would).
fn plain_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

/// The program's handler of `plain_signal()`, installed as `signal()` does (no `SA_SIGINFO`: the
/// kernel's frame then holds no `siginfo`): the same.
extern "C" fn program_plain(_: libc::c_int) {
    faulting_load();
}

fn faulting_load() {
    let read: u64;
    // SAFETY: the load faults; `program_segv` skips it and sets `rax`. Nothing else is touched.
    unsafe { std::arch::asm!("mov rax, qword ptr [rdi]", in("rdi") HOLE, lateout("rax") read, options(nostack)) };
    HANDLER_READ.store(read, Relaxed);
    HANDLER_DONE.fetch_add(1, Relaxed);
}

/// The program's handlers, installed once before either test registers a probe: installed
/// after dprobe's, the program's `SIGSEGV` handler would replace it.
fn program_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        install(libc::SIGSEGV, program_segv);
        install(libc::SIGUSR1, program_usr1);
        install(libc::SIGUSR2, program_usr2);
        // SAFETY: a plain handler, with the C library's `signal`.
        let before = unsafe { libc::signal(plain_signal(), program_plain as *const () as libc::sighandler_t) };
        assert_ne!(before, libc::SIG_ERR);
    });
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)) {
    // SAFETY: a plain SA_SIGINFO handler, installed with the C library's sigaction.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
    }
}

fn blocked(sig: libc::c_int) -> bool {
    // SAFETY: reads this thread's signal mask into a zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set), 0);
        libc::sigismember(&set, sig) == 1
    }
}

#[test]
fn a_fault_of_the_programs_signal_handler_that_interrupted_a_dprobe_handler_is_the_programs() {
    program_handlers();
    static RESUMED: AtomicU64 = AtomicU64::new(0);
    let raising = |sig: libc::c_int| {
        move |_: &mut dprobe_inproc::Regs| {
            // SAFETY: raise is async-signal-safe; the program's handler runs before it returns.
            unsafe { libc::raise(sig) };
            RESUMED.fetch_add(1, Relaxed);
            PreAction::Continue
        }
    };
    let jump = register(Kprobe::addr(addr(fx_mov_add)).pre(raising(libc::SIGUSR1))).unwrap();
    let trap = register(Kprobe::addr(addr(fx_push_add)).no_optimize().pre(raising(libc::SIGUSR1))).unwrap();
    let plain = register(Kprobe::addr(addr(fixtures::fx_spare2)).pre(raising(plain_signal()))).unwrap();
    assert_eq!(jump.optimized(), Ok(()), "the first goes through a jump");
    assert!(trap.optimized().is_err(), "the second through a trap");
    let cases: [(&dprobe_inproc::Probe, unsafe extern "C" fn(u64, u64) -> u64, u64, libc::c_int); 3] = [
        (&jump, fx_mov_add, 42, libc::SIGUSR1),
        (&trap, fx_push_add, 42, libc::SIGUSR1),
        (&plain, fixtures::fx_spare2, 38, plain_signal()),
    ];
    for (n, (probe, f, result, sig)) in cases.into_iter().enumerate() {
        let n = n as u64 + 1;
        assert_eq!(call2(f, 40, 2), result, "the probed function's result");
        assert_eq!(PROGRAM_SEGVS.load(Relaxed), n, "the program's SIGSEGV handler got its fault");
        assert_eq!((HANDLER_DONE.load(Relaxed), HANDLER_READ.load(Relaxed)), (n, REPAIRED), "its handler ended");
        assert_eq!(RESUMED.load(Relaxed), n, "dprobe's handler went on after the program's");
        let stats = probe.stats();
        assert_eq!((stats.hits, stats.handler_faults), (1, 0), "no fault of dprobe's handler");
        assert!(!blocked(sig), "the program's signal is not left blocked");
    }
}

static USR2_DONE: AtomicU64 = AtomicU64::new(0);

extern "C" fn program_usr2(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USR2_DONE.fetch_add(1, Relaxed);
}

/// Fault with the stack pointer 16 KiB lower, over words left as they were: what a handled
/// signal left there (its frame) is still between the fault and the handler's call.
#[inline(never)]
fn fault_deeper() -> u64 {
    let room = std::mem::MaybeUninit::<[u64; 2048]>::uninit();
    std::hint::black_box(&room);
    // SAFETY: none: a read of an unmapped address, which dprobe's fault recovery ends.
    unsafe { std::ptr::read_volatile(OTHER_HOLE as *const u64) }
}

/// Where dprobe's handler reads: unmapped too, and not where the program's `SIGSEGV` handler
/// repairs a load (it ends the process for a fault there).
const OTHER_HOLE: u64 = 0x20;

#[test]
fn a_fault_of_a_dprobe_handler_after_a_program_signal_handler_returned_stays_dprobes() {
    program_handlers();
    let p = register(Kprobe::addr(addr(fixtures::fx_spare1)).pre(|_| {
        // SAFETY: raise is async-signal-safe; the program's handler runs and returns.
        unsafe { libc::raise(libc::SIGUSR2) };
        std::hint::black_box(fault_deeper());
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(call2(fixtures::fx_spare1, 40, 2), 80, "the probed function's result");
    assert_eq!(USR2_DONE.load(Relaxed), 1);
    let stats = p.stats();
    assert_eq!((stats.hits, stats.handler_faults), (1, 1), "the handler's own fault, recovered");
}

std::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl fxo_target",
    ".type fxo_target,@function",
    "fxo_target:",
    "lea rax, [rdi + rsi + 0x9000]",
    "ret",
    ".size fxo_target, . - fxo_target",
);

extern "C" {
    fn fxo_target(a: u64, b: u64) -> u64;
}

/// Recurse until the stack runs out.
#[inline(never)]
#[allow(unconditional_recursion)]
fn overflow(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 128]);
    overflow(depth + 1) + frame[(depth % 128) as usize]
}

/// The thread's stack, and how much of it `near_the_end` leaves to the call it makes.
const STACK: usize = 256 << 10;
const LEFT: usize = 24 << 10;

/// Call `f` with `LEFT` bytes of the thread's stack left, and up to 16 KiB more (`top` is an
/// address near the top of it): the handler's overflow then faults within the 64 KiB below
/// the guarded call that a fault's check looks at.
#[inline(never)]
fn near_the_end(top: usize, f: fn() -> u64) -> u64 {
    let frame = std::hint::black_box([0u8; 512]);
    let here = frame.as_ptr() as usize;
    if top - here < STACK - LEFT - (16 << 10) {
        near_the_end(top, f) + u64::from(frame[0])
    } else {
        f()
    }
}

#[test]
fn a_handler_that_overflows_its_threads_stack_is_recovered_and_leaves_no_signal_blocked() {
    program_handlers();
    let p = register(Kprobe::addr(addr(fxo_target)).pre(|_| {
        std::hint::black_box(overflow(0));
        PreAction::Continue
    }))
    .unwrap();
    // A thread of its own, with a small stack (std gives it an alternate signal stack, where
    // dprobe's fault handler runs), called near its stack's end.
    let (result, blocked_after) = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(|| {
            let top = std::hint::black_box(0u8);
            let result = near_the_end(&top as *const u8 as usize, || call2(fxo_target, 40, 2));
            (result, blocked(dprobe_inproc::safepoint_signal()))
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(result, 0x9000 + 42, "the probed function's result");
    assert!(!blocked_after, "dprobe's safepoint signal is not left blocked");
    let stats = p.stats();
    assert_eq!((stats.hits, stats.handler_faults), (1, 1), "the handler's overflow, recovered");
}
