//! A child that `posix_spawn` or `system` starts runs in the program's memory until its
//! `exec`, with every signal blocked and its handlers reset to the default action first: a
//! probe on `int3` it hits (its `dup2` file action, its `execve`) killed it with `SIGTRAP`.
//! While `keep_traps_open`'s guard lives, such a child keeps `SIGTRAP` handled until its
//! `exec`: its hits are counted, and the command runs and ends as it would untraced.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{keep_traps_open, register, Kprobe, PreAction, Probe};

static EXECS: AtomicU64 = AtomicU64::new(0);
static DUPS: AtomicU64 = AtomicU64::new(0);

fn counting_int3(symbol: &str, hits: &'static AtomicU64) -> Probe {
    let count = move |_: &mut _| {
        hits.fetch_add(1, Relaxed);
        PreAction::Continue
    };
    let probe = register(Kprobe::symbol(symbol).pre(count).no_optimize()).unwrap();
    assert!(probe.optimized().is_err());
    probe
}

fn system(command: &str) -> libc::c_int {
    let command = CString::new(command).unwrap();
    // SAFETY: a valid C string.
    unsafe { libc::system(command.as_ptr()) }
}

/// `sh -c script` through `posix_spawn`, with `dup2(2, 1)` as a file action and the actions
/// of `signals_default` reset to the default in the child: how it ended.
fn spawn_shell(script: &str, signals_default: &[libc::c_int]) -> libc::c_int {
    let (sh, dash_c, script) =
        (CString::new("/bin/sh").unwrap(), CString::new("-c").unwrap(), CString::new(script).unwrap());
    let argv = [sh.as_ptr().cast_mut(), dash_c.as_ptr().cast_mut(), script.as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [std::ptr::null_mut()];
    // SAFETY: the actions and attributes are initialized before use and destroyed after;
    // argv and envp are null-terminated arrays of C strings that outlive the call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attributes: libc::posix_spawnattr_t = std::mem::zeroed();
        assert_eq!(libc::posix_spawn_file_actions_init(&mut actions), 0);
        assert_eq!(libc::posix_spawn_file_actions_adddup2(&mut actions, 2, 1), 0);
        assert_eq!(libc::posix_spawnattr_init(&mut attributes), 0);
        if !signals_default.is_empty() {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            signals_default.iter().for_each(|&sig| _ = libc::sigaddset(&mut set, sig));
            assert_eq!(libc::posix_spawnattr_setsigdefault(&mut attributes, &set), 0);
            assert_eq!(libc::posix_spawnattr_setflags(&mut attributes, libc::POSIX_SPAWN_SETSIGDEF as _), 0);
        }
        let mut pid = 0;
        assert_eq!(libc::posix_spawn(&mut pid, sh.as_ptr(), &actions, &attributes, argv.as_ptr(), envp.as_ptr()), 0);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attributes);
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    }
}

fn exited(status: libc::c_int, code: libc::c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code
}

fn killed_by_trap(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTRAP
}

/// `SIGTRAP`'s handler as the kernel has it.
fn trap_handler() -> u64 {
    let mut action = [0u64; 4];
    // SAFETY: rt_sigaction with no new action writes the current one into `action`, as large
    // as the kernel's structure for an 8-byte set.
    assert_eq!(unsafe { libc::syscall(libc::SYS_rt_sigaction, libc::SIGTRAP, 0usize, action.as_mut_ptr(), 8usize) }, 0);
    action[0]
}

#[test]
fn spawned_children_take_their_int3_hits_and_run_their_commands() {
    let execve = counting_int3("libc:execve", &EXECS);
    let dup2 = counting_int3("libc:dup2", &DUPS);
    let handler = trap_handler();

    // Without the guard: the child is killed at its `execve`, before the shell runs.
    assert!(killed_by_trap(system("exit 3")));
    assert_eq!(EXECS.load(Relaxed), 0);

    let guard = keep_traps_open().unwrap();
    assert_eq!((guard.optimized(), guard.keeps_children()), (Ok(()), true));
    for _ in 0..20 {
        let status = system("exit 3");
        assert!(exited(status, 3), "status {status:#x}");
    }
    assert_eq!(EXECS.load(Relaxed), 20);
    for _ in 0..20 {
        let status = spawn_shell("exit 4", &[]);
        assert!(exited(status, 4), "status {status:#x}");
    }
    assert_eq!((EXECS.load(Relaxed), DUPS.load(Relaxed)), (40, 20));

    // Four threads starting commands at once.
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for _ in 0..10 {
                    let status = system(&format!("exit {}", 10 + t));
                    assert!(exited(status, 10 + t), "status {status:#x}");
                }
            });
        }
    });
    assert_eq!((EXECS.load(Relaxed), execve.hits()), (80, 80));
    assert_eq!((DUPS.load(Relaxed), dup2.hits()), (20, 20));

    // A child asked to reset `SIGTRAP` has its hit counted, and runs its program with the
    // default action all the same (not ignored: the shell would exit 9).
    assert!(killed_by_trap(spawn_shell("kill -TRAP $$; exit 9", &[libc::SIGTRAP])));
    assert_eq!(EXECS.load(Relaxed), 81);

    // The program's own call to reset it is recorded as the program's action: the kernel's
    // stays dprobe's (its probes keep their traps), and `sigaction` shows the default.
    // SAFETY: a zeroed action is the default one; `shown` is written by the second call.
    let shown = unsafe {
        let mut shown: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGTRAP, &std::mem::zeroed(), std::ptr::null_mut()), 0);
        assert_eq!(libc::sigaction(libc::SIGTRAP, std::ptr::null(), &mut shown), 0);
        shown.sa_sigaction
    };
    assert_eq!((shown, trap_handler()), (libc::SIG_DFL, handler));

    // A forked child (a process of its own) that resets `SIGTRAP` and raises one ends by it,
    // as it would untraced.
    // SAFETY: the child sets one action, raises the signal and leaves.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: a zeroed action is the default one, with an empty mask.
        unsafe {
            libc::sigaction(libc::SIGTRAP, &std::mem::zeroed(), std::ptr::null_mut());
            libc::raise(libc::SIGTRAP);
            libc::_exit(1);
        }
    }
    let mut status = 0;
    // SAFETY: our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(killed_by_trap(status), "status {status:#x}");
    drop(guard);
}
