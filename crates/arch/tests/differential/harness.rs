//! Runs one instruction from a fully controlled register state and captures the state at the
//! trap or fault that follows it.
//!
//! `dx_run` saves the host's callee-saved registers, loads every general register, RFLAGS and
//! xmm0-15 from a `Ctx` (and clears the rest of the vector state), and jumps to the code. The
//! code ends in an `int3` (or faults); the signal handler copies the signal frame into
//! `LAST` and resumes at `dx_return` on the host stack.
//!
//! The code runs with the thread pointer (the FS base) moved to a block of the test's data
//! (`Ctx::fs_base`), and `dx_return` moves it back. Compiled code reads pointers from
//! thread-local storage (`mov %fs:0x10,%rax` is glibc's own thread block, `mov %fs:0,%rax` the
//! TLS base) and then writes through them: run on the harness thread's real thread pointer,
//! such a run would write into the harness's own thread block, which later crashes the test
//! binary far from the cause. With the FS base in the data, what a run reads there is test data
//! and what it writes is compared like any other memory. The signal handler runs with that FS
//! base too, so it touches no thread-local storage.

use std::cell::UnsafeCell;

use dprobe_arch::Regs;

/// The state loaded before a run. Layout known to the assembly below.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct Ctx {
    /// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15.
    pub gpr: [u64; 16],
    pub rflags: u64,
    pub avx512: u64,
    pub xmm: [u128; 16],
    /// The thread pointer (FS base) while the code runs: a block of the test's data.
    pub fs_base: u64,
}

// The offsets the assembly below reads.
const _: () = assert!(std::mem::offset_of!(Ctx, rflags) == 128);
const _: () = assert!(std::mem::offset_of!(Ctx, avx512) == 136);
const _: () = assert!(std::mem::offset_of!(Ctx, xmm) == 144);
const _: () = assert!(std::mem::offset_of!(Ctx, fs_base) == 400);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub signal: i32,
    /// For faults, the faulting data address the kernel reported.
    pub fault_addr: u64,
    pub regs: Regs,
}

std::arch::global_asm!(
    ".text",
    ".globl dx_run",
    "dx_run:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rip + dx_host_rsp], rsp",
    "mov [rip + dx_entry], rsi",
    "mov [rip + dx_ctx], rdi",
    // The thread pointer: the host's saved, the run's loaded (arch_prctl GET_FS, SET_FS).
    "mov eax, 158",
    "mov edi, 0x1003",
    "lea rsi, [rip + dx_host_fs]",
    "syscall",
    "mov rdi, [rip + dx_ctx]",
    "mov rsi, [rdi + 400]",
    "mov eax, 158",
    "mov edi, 0x1002",
    "syscall",
    "mov rdi, [rip + dx_ctx]",
    // Vector state: clear the upper halves and the AVX-512 registers, then load xmm0-15.
    "vzeroupper",
    "test qword ptr [rdi + 136], 1",
    "jz 2f",
    "vpxord zmm16, zmm16, zmm16",
    "vpxord zmm17, zmm17, zmm17",
    "vpxord zmm18, zmm18, zmm18",
    "vpxord zmm19, zmm19, zmm19",
    "vpxord zmm20, zmm20, zmm20",
    "vpxord zmm21, zmm21, zmm21",
    "vpxord zmm22, zmm22, zmm22",
    "vpxord zmm23, zmm23, zmm23",
    "vpxord zmm24, zmm24, zmm24",
    "vpxord zmm25, zmm25, zmm25",
    "vpxord zmm26, zmm26, zmm26",
    "vpxord zmm27, zmm27, zmm27",
    "vpxord zmm28, zmm28, zmm28",
    "vpxord zmm29, zmm29, zmm29",
    "vpxord zmm30, zmm30, zmm30",
    "vpxord zmm31, zmm31, zmm31",
    "kxorw k1, k1, k1",
    "kxorw k2, k2, k2",
    "kxorw k3, k3, k3",
    "kxorw k4, k4, k4",
    "kxorw k5, k5, k5",
    "kxorw k6, k6, k6",
    "kxorw k7, k7, k7",
    "2:",
    "fninit",
    "movdqu xmm0, [rdi + 144]",
    "movdqu xmm1, [rdi + 160]",
    "movdqu xmm2, [rdi + 176]",
    "movdqu xmm3, [rdi + 192]",
    "movdqu xmm4, [rdi + 208]",
    "movdqu xmm5, [rdi + 224]",
    "movdqu xmm6, [rdi + 240]",
    "movdqu xmm7, [rdi + 256]",
    "movdqu xmm8, [rdi + 272]",
    "movdqu xmm9, [rdi + 288]",
    "movdqu xmm10, [rdi + 304]",
    "movdqu xmm11, [rdi + 320]",
    "movdqu xmm12, [rdi + 336]",
    "movdqu xmm13, [rdi + 352]",
    "movdqu xmm14, [rdi + 368]",
    "movdqu xmm15, [rdi + 384]",
    "push qword ptr [rdi + 128]",
    "popfq",
    "mov rax, [rdi + 0]",
    "mov rcx, [rdi + 8]",
    "mov rdx, [rdi + 16]",
    "mov rbx, [rdi + 24]",
    "mov rbp, [rdi + 40]",
    "mov rsi, [rdi + 48]",
    "mov r8, [rdi + 64]",
    "mov r9, [rdi + 72]",
    "mov r10, [rdi + 80]",
    "mov r11, [rdi + 88]",
    "mov r12, [rdi + 96]",
    "mov r13, [rdi + 104]",
    "mov r14, [rdi + 112]",
    "mov r15, [rdi + 120]",
    "mov rsp, [rdi + 32]",
    "mov rdi, [rdi + 56]",
    "jmp qword ptr [rip + dx_entry]",
    ".globl dx_return",
    "dx_return:",
    "mov rsp, [rip + dx_host_rsp]",
    "mov eax, 158",
    "mov edi, 0x1002",
    "mov rsi, [rip + dx_host_fs]",
    "syscall",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".pushsection .bss",
    ".p2align 3",
    "dx_host_rsp: .quad 0",
    "dx_entry: .quad 0",
    "dx_ctx: .quad 0",
    "dx_host_fs: .quad 0",
    ".popsection",
);

extern "C" {
    fn dx_run(ctx: *const Ctx, entry: u64);
    fn dx_return();
}

struct Last(UnsafeCell<Option<Outcome>>);
// SAFETY: the harness runs on one thread; the signal handler writes LAST on that same thread
// while `run` waits for it.
unsafe impl Sync for Last {}
static LAST: Last = Last(UnsafeCell::new(None));

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: the kernel's arguments to an SA_SIGINFO handler.
    unsafe {
        let uc = &mut *(uc as *mut libc::ucontext_t);
        let mut regs = Regs::from_signal_frame(&uc.uc_mcontext.gregs);
        let fp = uc.uc_mcontext.fpregs;
        if !fp.is_null() {
            for (dst, src) in regs.xmm.iter_mut().zip((*fp)._xmm) {
                *dst = Regs::xmm_from_frame(src.element);
            }
            // Whatever the instruction did to the floating-point control state stays here.
            (*fp).mxcsr = 0x1f80;
            (*fp).cwd = 0x37f;
            (*fp).swd = 0;
            (*fp).ftw = 0;
        }
        let g = &mut uc.uc_mcontext.gregs;
        let fault_addr = if sig == libc::SIGTRAP { 0 } else { (*info).si_addr() as u64 };
        *LAST.0.get() = Some(Outcome { signal: sig, fault_addr, regs });
        g[libc::REG_RIP as usize] = dx_return as *const () as usize as i64;
        // Clear TF/DF/AC so the host resumes sane.
        g[libc::REG_EFL as usize] &= !(0x100 | 0x400 | 0x40000);
    }
}

/// Install the handlers and an alternate stack big enough for AVX-512 signal frames (so
/// instructions that move the stack pointer anywhere still end in a captured trap).
pub fn install() {
    // SAFETY: a leaked 256 KiB buffer becomes this thread's alternate signal stack; the
    // handler is installed for the synchronous signals an instruction can raise.
    unsafe {
        let stack = Box::leak(vec![0u8; 256 * 1024].into_boxed_slice());
        let ss = libc::stack_t { ss_sp: stack.as_mut_ptr().cast(), ss_flags: 0, ss_size: stack.len() };
        assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
        for sig in [libc::SIGTRAP, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, RUNAWAY] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            assert_eq!(libc::sigaction(sig, &sa, std::ptr::null_mut()), 0);
        }
    }
}

/// The signal that ends code which runs away (a branch that loops back with random
/// registers): after a second of this thread's CPU time, so that a loop ends in an outcome
/// instead of hanging the test, whatever the machine's load.
pub const RUNAWAY: libc::c_int = libc::SIGALRM;

/// This thread's CPU-time timer, sending [`RUNAWAY`] to this thread alone.
fn watchdog() -> libc::timer_t {
    thread_local! {
        static TIMER: libc::timer_t = {
            // SAFETY: a zeroed sigevent is valid; the timer is created once per thread and
            // never deleted (the harness thread lives as long as the test).
            unsafe {
                let mut ev: libc::sigevent = std::mem::zeroed();
                ev.sigev_notify = libc::SIGEV_THREAD_ID;
                ev.sigev_signo = RUNAWAY;
                ev.sigev_notify_thread_id = libc::gettid();
                let mut t: libc::timer_t = std::ptr::null_mut();
                assert_eq!(libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut ev, &mut t), 0);
                t
            }
        };
    }
    TIMER.with(|t| *t)
}

fn arm(timer: libc::timer_t, secs: i64) {
    let spec = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec { tv_sec: secs, tv_nsec: 0 },
    };
    // SAFETY: a timer of this thread and a valid itimerspec.
    assert_eq!(unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) }, 0);
}

/// Run the code at `entry` from `ctx` until it traps or faults (or runs away: [`RUNAWAY`]).
pub fn run(ctx: &Ctx, entry: u64) -> Outcome {
    let timer = watchdog();
    arm(timer, 1);
    // SAFETY: `entry` is code the caller wrote into an executable test page, which ends in
    // int3 or faults (or is stopped by the watchdog); `dx_run` restores the host's
    // callee-saved registers and stack pointer when the handler resumes it at `dx_return`,
    // so it returns like a normal call.
    let outcome = unsafe {
        *LAST.0.get() = None;
        dx_run(ctx, entry);
        (*LAST.0.get()).take().expect("the run ended without a signal")
    };
    arm(timer, 0);
    outcome
}
