//! A child that `posix_spawn` starts runs in the program's memory with every signal blocked
//! until its `exec`; a probe going in or out as a jump is an `int3` for a moment, and a child
//! that ran it then was killed by `SIGTRAP`. While `hold_spawns_while_patching`'s probes live,
//! no such child runs while the engine writes code: every command ends as it would untraced,
//! while a probe on `execve` (which every such child runs) comes and goes as fast as it can.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;

use dprobe_inproc::{hold_spawns_while_patching, register, Kprobe, PreAction};

static EXECS: AtomicU64 = AtomicU64::new(0);

/// `/bin/true` through `posix_spawn` (`posix_spawnp` when `by_path`): its wait status.
fn spawn_true(by_path: bool) -> libc::c_int {
    let program = CString::new(if by_path { "true" } else { "/bin/true" }).unwrap();
    let argv = [program.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [c"PATH=/usr/bin:/bin".as_ptr().cast_mut(), std::ptr::null_mut()];
    let mut pid = 0;
    // SAFETY: argv and envp are null-terminated arrays of C strings that outlive the call; no
    // file actions or attributes.
    let started = unsafe {
        let spawn = if by_path { libc::posix_spawnp } else { libc::posix_spawn };
        spawn(&mut pid, program.as_ptr(), std::ptr::null(), std::ptr::null(), argv.as_ptr(), envp.as_ptr())
    };
    assert_eq!(started, 0);
    let mut status = 0;
    // SAFETY: waits for the child just started.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn no_child_of_posix_spawn_meets_a_probe_going_in_or_out() {
    let hold = hold_spawns_while_patching().unwrap();
    assert!(hold.holds(), "posix_spawn and posix_spawnp are held while code changes");
    let count = |_: &mut _| {
        EXECS.fetch_add(1, Relaxed);
        PreAction::Continue
    };
    let probe = register(Kprobe::symbol("libc:execve").pre(count)).unwrap();
    probe.optimized().expect("the probe on execve jumps");
    let done = Arc::new(AtomicBool::new(false));
    let toggles = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut toggles = 0u64;
            while !done.load(Relaxed) {
                probe.disable().unwrap();
                probe.enable().unwrap();
                toggles += 1;
            }
            toggles
        })
    };
    const SPAWNS: usize = 300;
    let statuses: Vec<libc::c_int> = (0..SPAWNS).map(|k| spawn_true(k % 2 == 1)).collect();
    done.store(true, Relaxed);
    let toggles = toggles.join().unwrap();
    let killed: Vec<_> = statuses.iter().filter(|s| libc::WIFSIGNALED(**s)).map(|s| libc::WTERMSIG(*s)).collect();
    let held = hold.calls_held();
    println!(
        "{SPAWNS} spawns while the probe on execve went out and in {toggles} times: {held} held, {} killed",
        killed.len()
    );
    assert_eq!(killed, Vec::<i32>::new(), "children killed by these signals");
    assert!(statuses.iter().all(|s| libc::WIFEXITED(*s) && libc::WEXITSTATUS(*s) == 0));
    assert!(toggles > 10, "the probe changed while the children ran ({toggles} times)");
    // Held calls went in through the stub, their arguments intact: each child ran `true`.
    assert!(held > 0, "some calls came while code changed");
    // Every child ran `execve` in the program's memory: hits while the probe was in.
    assert!(EXECS.load(Relaxed) > 0);
    drop(hold);
}
