//! A thread that executes another program while another thread makes jumps: each jump's
//! safepoint signals it while it runs, and a thread inside `execve` (the kernel loading the
//! new program) is running too. The signal is then still pending in the new program, where
//! its action is the default one: the new program must not die of it.
//! (A test binary of its own: its children are forked from a process with no other test.)
mod fixtures;
use fixtures::{addr, fx_push_push_mov};

use std::time::{Duration, Instant};

use dprobe_inproc::{register, Kprobe, PreAction};

/// Children that execute `/bin/true` while their other thread makes jumps.
const CHILDREN: u32 = 40;

/// In a forked child: a thread places and removes a jump-optimized probe again and again (a
/// safepoint each), while this thread spins for `spin` and then executes `/bin/true`. Its
/// wait status (exit status 2: the first jump was never made, 3: the `exec` failed).
fn exec_during_safepoints(spin: Duration) -> libc::c_int {
    // SAFETY: the child makes a thread and probes in its own copy of memory, then executes
    // another program or leaves with `_exit`. This test binary's only other thread is the
    // harness's, waiting: no lock of dprobe's or the allocator's is held across the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: in the child (see above): a thread, probes on this process's own fixture,
        // and `execve` with arguments that live until it returns.
        unsafe {
            libc::alarm(60);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || loop {
                let probe = register(Kprobe::addr(addr(fx_push_push_mov)).pre(|_| PreAction::Continue)).unwrap();
                let _ = tx.send(probe.optimized().is_ok());
                drop(probe);
            });
            if rx.recv() != Ok(true) {
                libc::_exit(2);
            }
            let until = Instant::now() + spin;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            // Arguments that take the kernel a while to copy, before the `exec` ends the
            // other thread: a long time inside `execve` while safepoints run.
            let long = vec![b'x'; 127 << 10].into_iter().chain([0]).collect::<Vec<u8>>();
            let program = c"/bin/true".as_ptr();
            let mut argv = vec![program; 13];
            argv[1..].fill(long.as_ptr().cast());
            argv.push(std::ptr::null());
            let envp = [std::ptr::null()];
            libc::execve(program, argv.as_ptr(), envp.as_ptr());
            libc::_exit(3);
        }
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn a_program_executed_while_safepoints_run_is_not_killed_by_their_signal() {
    // The engine's start (reading this binary's symbols) made once, before the children.
    let warm = register(Kprobe::addr(addr(fx_push_push_mov)).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(warm.optimized(), Ok(()));
    drop(warm);
    let mut killed = Vec::new();
    for i in 0..CHILDREN {
        // Spread over the time a safepoint takes, so that some `exec`s meet one.
        let status = exec_during_safepoints(Duration::from_micros(u64::from(i % 30) * 40));
        assert!(!libc::WIFEXITED(status) || libc::WEXITSTATUS(status) == 0, "child {i}: exit status {status:#x}");
        if libc::WIFSIGNALED(status) {
            killed.push(libc::WTERMSIG(status));
        }
    }
    assert!(killed.is_empty(), "{} of {CHILDREN} executed programs killed, by signals {killed:?}", killed.len());
}
