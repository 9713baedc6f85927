//! A trap taken on a program's alternate signal stack moves dprobe's hit path to a stack of
//! dprobe's, with the program's signals held (`hit_stack.rs`); the kernel's `rt_sigreturn`
//! puts both back. A trap that is the program's own (its `int3`) goes to the program's
//! `SIGTRAP` handler, which may never return (`siglongjmp` out of it is common): it must find
//! the thread's alternate stack and signal mask as the program left them.
mod fixtures;
use fixtures::*;

use dprobe_inproc::{register, Kprobe, PreAction};

/// The child's alternate stack.
static mut ALTERNATE: [u8; 64 << 10] = [0; 64 << 10];

/// The program's `SIGTRAP` handler: leaves the child at once (as a `siglongjmp` out would),
/// with 0 when the alternate stack is the program's and no signal but the handlers' own is
/// blocked, 3 and 4 when not.
extern "C" fn programs_trap_handler(_: libc::c_int) {
    // SAFETY: queries of this thread's state into locals, then `_exit`.
    unsafe {
        let mut now = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: -1, ss_size: 0 };
        libc::sigaltstack(std::ptr::null(), &mut now);
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        let programs = (now.ss_sp as usize, now.ss_size) == (std::ptr::addr_of!(ALTERNATE) as usize, 64 << 10);
        // SIGUSR2's handler runs with SIGUSR2 blocked, nothing else.
        let held = [libc::SIGINT, libc::SIGTERM, libc::SIGALRM, libc::SIGCHLD, libc::SIGUSR1];
        let free = held.iter().all(|&sig| libc::sigismember(&mask, sig) == 0);
        libc::_exit(if !programs {
            3
        } else if !free {
            4
        } else {
            0
        });
    }
}

/// On the alternate stack: the program's own breakpoint.
extern "C" fn on_usr2(_: libc::c_int) {
    // SAFETY: the fixture's `int3` goes to the program's SIGTRAP handler, which exits.
    unsafe { fx_own_int3() };
}

#[test]
fn the_programs_own_trap_handler_finds_its_alternate_stack_and_mask_as_it_left_them() {
    // The program's handler first, so that dprobe's, installed at the first registration,
    // passes the program's own traps on to it.
    // SAFETY: all-zero is a valid sigaction; a plain handler, an empty mask.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = programs_trap_handler as *const () as usize;
    // SAFETY: a valid action for SIGTRAP.
    assert_eq!(unsafe { libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()) }, 0);
    let _probe = register(Kprobe::addr(addr(fx_push_add)).no_optimize().pre(|_| PreAction::Continue)).unwrap();
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
            // The program's SIGTRAP handler never returns.
            libc::_exit(5);
        }
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "killed by signal {}", libc::WTERMSIG(status));
    let why = match libc::WEXITSTATUS(status) {
        0 => return,
        3 => "dprobe's stack was still the alternate stack",
        4 => "the program's signals were still held",
        5 => "the program's SIGTRAP handler returned",
        n => panic!("the child failed to start: {n}"),
    };
    panic!("in the program's SIGTRAP handler: {why}");
}
