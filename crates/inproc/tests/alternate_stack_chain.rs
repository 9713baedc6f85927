//! A trap taken on a program's alternate signal stack moves dprobe's hit path to a stack of
//! dprobe's, with the program's signals held (`hit_stack.rs`); the kernel's `rt_sigreturn`
//! puts both back. Two of the program's own handlers are called from dprobe's trap handler:
//! its `SIGTRAP` handler, for a breakpoint that is not dprobe's, and its `SIGSEGV` handler, for
//! an emulated instruction whose access faults. Either may never return (`siglongjmp` out of
//! them is common): each must find the thread's alternate stack and signal mask as the
//! program left them, on the thread's stack and on its alternate stack alike.
mod fixtures;
use fixtures::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, Once};

use dprobe_inproc::{register, FaultInfo, FaultStage, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    // An indirect jump through memory: emulated (its probe has a post-handler), its read made
    // by dprobe's emulator.
    ".globl chain_jump_through",
    ".type chain_jump_through,@function",
    "chain_jump_through:",
    "jmp qword ptr [rdi]",
    ".size chain_jump_through, . - chain_jump_through",
    // Where the program's SIGSEGV handler sends the thread instead: returns 99.
    ".globl chain_recovered",
    ".type chain_recovered,@function",
    "chain_recovered:",
    "mov eax, 99",
    "ret",
    ".size chain_recovered, . - chain_recovered",
    // A function whose probe's handler calls the faulting jump: returns 7.
    ".globl chain_seven",
    ".type chain_seven,@function",
    "chain_seven:",
    "mov eax, 7",
    "ret",
    ".size chain_seven, . - chain_seven",
);

extern "C" {
    fn chain_jump_through(target: *const u64) -> u64;
    fn chain_recovered() -> u64;
    fn chain_seven() -> u64;
}

/// An address nothing is mapped at.
const UNMAPPED: u64 = 0x10;

/// The child's alternate stack.
static mut ALTERNATE: [u8; 64 << 10] = [0; 64 << 10];

/// What the program's SIGSEGV handler saw: the faulting address, the alternate stack's base,
/// and whether a signal it should not was blocked.
static SEGV_ADDR: AtomicU64 = AtomicU64::new(0);
static SEGV_STACK: AtomicU64 = AtomicU64::new(0);
static SEGV_HELD: AtomicBool = AtomicBool::new(false);

/// The thread's alternate stack's base (0: none), and whether a signal that no handler of
/// these tests blocks is blocked.
fn alternate_and_held() -> (u64, bool) {
    // SAFETY: queries of this thread's state into locals.
    unsafe {
        let mut now = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: 0, ss_size: 0 };
        libc::sigaltstack(std::ptr::null(), &mut now);
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        let held = [libc::SIGINT, libc::SIGTERM, libc::SIGALRM, libc::SIGCHLD, libc::SIGUSR1];
        let base = if now.ss_flags & libc::SS_DISABLE != 0 { 0 } else { now.ss_sp as u64 };
        (base, held.iter().any(|&sig| libc::sigismember(&mask, sig) == 1))
    }
}

/// The program's `SIGTRAP` handler: leaves the child at once (as a `siglongjmp` out would),
/// with 0 when the alternate stack is the program's and none of its signals is held, 3 and 4
/// when not.
extern "C" fn programs_trap_handler(_: libc::c_int) {
    let (base, held) = alternate_and_held();
    let code = if base != std::ptr::addr_of!(ALTERNATE) as u64 {
        3
    } else if held {
        4
    } else {
        0
    };
    // SAFETY: leaves the child.
    unsafe { libc::_exit(code) };
}

/// The program's `SIGSEGV` handler: notes what it saw and sends the thread to
/// `chain_recovered`, as a program's handler that recovers from its own faults does.
extern "C" fn programs_segv_handler(_: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let (base, held) = alternate_and_held();
    SEGV_STACK.store(base, Relaxed);
    SEGV_HELD.store(held, Relaxed);
    // SAFETY: the kernel's (here, dprobe's chained) arguments to an SA_SIGINFO handler.
    unsafe {
        SEGV_ADDR.store((*info).si_addr() as u64, Relaxed);
        (*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RIP as usize] =
            chain_recovered as *const () as i64;
    }
}

/// The program's handlers first, so that dprobe's, installed at the first registration, pass
/// the program's own signals on to them; then a probe on the emulated jump. Held by each test
/// while it runs: they share the figures above, and two of them probe `chain_seven`.
fn programs_handlers_then_probes() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: all-zero is a valid sigaction; plain handlers, empty masks.
        let (mut trap, mut segv): (libc::sigaction, libc::sigaction) = unsafe { std::mem::zeroed() };
        trap.sa_sigaction = programs_trap_handler as *const () as usize;
        segv.sa_sigaction = programs_segv_handler as *const () as usize;
        segv.sa_flags = libc::SA_SIGINFO;
        // SAFETY: valid actions for SIGTRAP and SIGSEGV.
        unsafe {
            assert_eq!(libc::sigaction(libc::SIGTRAP, &trap, std::ptr::null_mut()), 0);
            assert_eq!(libc::sigaction(libc::SIGSEGV, &segv, std::ptr::null_mut()), 0);
        }
        let at = dprobe_inproc::Addr(chain_jump_through as *const () as usize as u64);
        // With a post-handler, `jmp [mem]` is emulated (without one, a copy runs out of line).
        let probe = register(Kprobe::addr(at).no_optimize().pre(|_| PreAction::Continue).post(|_| {})).unwrap();
        // Placed for the rest of the test program.
        std::mem::forget(probe);
    });
    one
}

/// In a child: `on_usr2` runs on a 64 KiB alternate stack of the child's; its exit status.
fn in_child_on_alternate_stack(on_usr2: extern "C" fn(libc::c_int)) -> libc::c_int {
    // SAFETY: the child only makes system calls and runs the fixtures, then leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: this single-threaded child's alternate stack and SIGUSR2 handler.
        unsafe {
            libc::alarm(60);
            let ss = libc::stack_t {
                ss_sp: std::ptr::addr_of_mut!(ALTERNATE).cast(),
                ss_flags: 0,
                ss_size: std::mem::size_of_val(&*std::ptr::addr_of!(ALTERNATE)),
            };
            let mut usr2: libc::sigaction = std::mem::zeroed();
            usr2.sa_sigaction = on_usr2 as *const () as usize;
            usr2.sa_flags = libc::SA_ONSTACK;
            if libc::sigaltstack(&ss, std::ptr::null_mut()) != 0
                || libc::sigaction(libc::SIGUSR2, &usr2, std::ptr::null_mut()) != 0
            {
                libc::_exit(2);
            }
            libc::raise(libc::SIGUSR2);
            libc::_exit(5);
        }
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// On the alternate stack: the program's own breakpoint.
extern "C" fn own_breakpoint(_: libc::c_int) {
    // SAFETY: the fixture's `int3` goes to the program's SIGTRAP handler, which exits.
    unsafe { fx_own_int3() };
}

#[test]
fn the_programs_own_trap_handler_finds_its_alternate_stack_and_mask_as_it_left_them() {
    let _one = programs_handlers_then_probes();
    let reasons = [
        (2, "the child could not set up its alternate stack"),
        (3, "dprobe's stack was still the alternate stack"),
        (4, "the program's signals were still held"),
        (5, "the program's SIGTRAP handler returned"),
    ];
    child_exited_cleanly("in the program's SIGTRAP handler", in_child_on_alternate_stack(own_breakpoint), &reasons);
}

/// Call the probed jump with an unmapped target: whether the program's SIGSEGV handler got
/// the fault, with the thread's alternate stack as it is here and nothing held, and sent it on.
fn faulting_jump_recovered() -> Result<(), &'static str> {
    let (base, _) = alternate_and_held();
    SEGV_ADDR.store(0, Relaxed);
    // SAFETY: the jump reads an unmapped word; the program's handler recovers.
    let result = unsafe { chain_jump_through(std::hint::black_box(UNMAPPED as *const u64)) };
    match () {
        _ if result != 99 => Err("the program did not go on where its handler sent it"),
        _ if SEGV_ADDR.load(Relaxed) != UNMAPPED => Err("the handler was not told the faulting address"),
        _ if SEGV_STACK.load(Relaxed) != base => Err("the alternate stack was not the program's"),
        _ if SEGV_HELD.load(Relaxed) => Err("the program's signals were held"),
        _ => Ok(()),
    }
}

/// On the alternate stack: the emulated access that faults.
extern "C" fn faulting_access(_: libc::c_int) {
    // SAFETY: leaves the child.
    unsafe { libc::_exit(if faulting_jump_recovered().is_ok() { 0 } else { 1 }) };
}

#[test]
fn an_emulated_access_that_faults_goes_to_the_programs_segv_handler_as_the_program_left_things() {
    let _one = programs_handlers_then_probes();
    // On the thread's stack.
    for _ in 0..3 {
        assert_eq!(faulting_jump_recovered(), Ok(()));
    }
    // In a signal handler on the alternate stack, where the hit path runs off it.
    let reasons = [
        (1, "the program's SIGSEGV handler did not find things as the program left them"),
        (2, "the child could not set up its alternate stack"),
        (5, "the signal handler returned"),
    ];
    child_exited_cleanly(
        "an emulated fault on the alternate stack",
        in_child_on_alternate_stack(faulting_access),
        &reasons,
    );
}

/// What the handler-fault test's probe saw: whether its pre-handler went on past the
/// faulting call, and the faults its fault handler was told of (signal, address, stage).
static HANDLER_WENT_ON: AtomicBool = AtomicBool::new(false);
static HANDLER_FAULTS: AtomicU64 = AtomicU64::new(0);
static HANDLER_FAULT_ADDR: AtomicU64 = AtomicU64::new(0);

/// Call `chain_seven`, whose probe's handler calls the faulting jump: whether it returned 7,
/// the handler was abandoned at the fault (told to its fault handler, as a pre-handler's
/// fault at the unmapped address), and the program's SIGSEGV handler never ran.
fn handler_abandoned_at_the_emulated_fault() -> Result<(), &'static str> {
    SEGV_ADDR.store(0, Relaxed);
    HANDLER_WENT_ON.store(false, Relaxed);
    HANDLER_FAULT_ADDR.store(0, Relaxed);
    let faults = HANDLER_FAULTS.load(Relaxed);
    // SAFETY: returns 7; its probe's handler faults and is abandoned.
    let result = unsafe { chain_seven() };
    match () {
        _ if result != 7 => Err("the probed function did not return its value"),
        _ if SEGV_ADDR.load(Relaxed) != 0 => Err("the program's SIGSEGV handler got the handler's fault"),
        _ if HANDLER_WENT_ON.load(Relaxed) => Err("the handler went on past its fault"),
        _ if HANDLER_FAULTS.load(Relaxed) != faults + 1 => Err("the fault handler was not told once"),
        _ if HANDLER_FAULT_ADDR.load(Relaxed) != UNMAPPED => Err("the fault handler was not told the address"),
        _ => Ok(()),
    }
}

/// On the alternate stack, where the trap path's handlers run on dprobe's stack and the
/// nested trap stays there.
extern "C" fn handler_fault_on_alternate_stack(_: libc::c_int) {
    // SAFETY: leaves the child.
    unsafe { libc::_exit(if handler_abandoned_at_the_emulated_fault().is_ok() { 0 } else { 1 }) };
}

#[test]
fn an_emulated_access_that_faults_in_a_handlers_call_abandons_the_handler_as_its_own_fault_would() {
    let _one = programs_handlers_then_probes();
    let at = dprobe_inproc::Addr(chain_seven as *const () as usize as u64);
    for optimize in [false, true] {
        let probe = Kprobe::addr(at)
            .pre(|_| {
                // SAFETY: the jump reads an unmapped word: a fault in this handler.
                unsafe { chain_jump_through(std::hint::black_box(UNMAPPED as *const u64)) };
                HANDLER_WENT_ON.store(true, Relaxed);
                PreAction::Continue
            })
            .fault(|_, info: &FaultInfo| {
                if (info.signal, info.stage) == (libc::SIGSEGV, FaultStage::PreHandler) {
                    HANDLER_FAULT_ADDR.store(info.fault_addr.map_or(0, |a| a.0), Relaxed);
                    HANDLER_FAULTS.fetch_add(1, Relaxed);
                }
                // Handled: the probe stays enabled.
                true
            });
        let probe = register(if optimize { probe } else { probe.no_optimize() }).unwrap();
        assert_eq!(probe.optimized().is_ok(), optimize, "{:?}", probe.optimized());
        for _ in 0..3 {
            assert_eq!(handler_abandoned_at_the_emulated_fault(), Ok(()), "optimized: {optimize}");
        }
        let reasons = [
            (1, "the handler's fault did not abandon it, or reached the program's handler"),
            (2, "the child could not set up its alternate stack"),
            (5, "the signal handler returned"),
        ];
        child_exited_cleanly(
            "a handler's emulated fault on the alternate stack",
            in_child_on_alternate_stack(handler_fault_on_alternate_stack),
            &reasons,
        );
        let stats = probe.stats();
        assert_eq!((stats.hits, stats.handler_faults), (3, 3), "optimized: {optimize}");
    }
}

/// Whether the program's SIGUSR1 handler ran to its end (after the fault its access raised
/// was handled by the program's SIGSEGV handler).
static USR1_DONE: AtomicBool = AtomicBool::new(false);

/// The program's SIGUSR1 handler: an access that faults, which its own SIGSEGV handler sends
/// on (as a profiler's safe read does).
extern "C" fn programs_usr1_handler(_: libc::c_int) {
    // SAFETY: the jump reads an unmapped word; the program's SIGSEGV handler recovers.
    let result = unsafe { chain_jump_through(std::hint::black_box(UNMAPPED as *const u64)) };
    USR1_DONE.store(result == 99, Relaxed);
}

#[test]
fn an_emulated_fault_in_a_programs_signal_handler_that_interrupted_a_handler_stays_the_programs() {
    let _one = programs_handlers_then_probes();
    // SAFETY: all-zero is a valid sigaction; a plain handler with an empty mask.
    unsafe {
        let mut usr1: libc::sigaction = std::mem::zeroed();
        usr1.sa_sigaction = programs_usr1_handler as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGUSR1, &usr1, std::ptr::null_mut()), 0);
    }
    let at = dprobe_inproc::Addr(chain_seven as *const () as usize as u64);
    for optimize in [false, true] {
        let probe = Kprobe::addr(at).pre(|_| {
            // The program's signal arrives while this handler runs.
            // SAFETY: a signal to the calling thread, handled by the program's handler above.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), libc::SIGUSR1) };
            HANDLER_WENT_ON.store(true, Relaxed);
            PreAction::Continue
        });
        let probe = register(if optimize { probe } else { probe.no_optimize() }).unwrap();
        assert_eq!(probe.optimized().is_ok(), optimize, "{:?}", probe.optimized());
        for _ in 0..3 {
            USR1_DONE.store(false, Relaxed);
            HANDLER_WENT_ON.store(false, Relaxed);
            SEGV_ADDR.store(0, Relaxed);
            // SAFETY: returns 7.
            assert_eq!(unsafe { chain_seven() }, 7);
            let seen = (SEGV_ADDR.load(Relaxed), USR1_DONE.load(Relaxed), HANDLER_WENT_ON.load(Relaxed));
            assert_eq!(seen, (UNMAPPED, true, true), "optimized: {optimize}: (the program's SIGSEGV handler's address, its SIGUSR1 handler done, the probe's handler done)");
        }
        // SAFETY: reads this thread's signal mask.
        let held = unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
            libc::sigismember(&mask, libc::SIGUSR1) == 1
        };
        assert!(!held, "optimized: {optimize}: SIGUSR1 left blocked");
        assert_eq!(probe.stats().handler_faults, 0, "optimized: {optimize}");
    }
}
