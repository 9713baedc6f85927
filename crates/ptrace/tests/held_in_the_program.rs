//! A thread to load a library from is held where it holds none of the C library's locks, even
//! when it is nearly always inside the C library: it is let run back to the program's code to
//! a hardware breakpoint. Its `SIGTRAP` never reaches the
//! program's handler, and its debug registers are clear when it is let go (the kernel keeps
//! them after a detach: one left armed would kill the program when reached).
mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use dprobe_ptrace::Injector;

/// Holds of the program, each of which must find it in its own code.
const HOLDS: u32 = 20;

/// Debug register 7 of stopped thread `tid`, traced by the calling thread.
fn debug_control(tid: i32) -> u64 {
    let offset = std::mem::offset_of!(libc::user, u_debugreg) + 7 * 8;
    // SAFETY: PTRACE_PEEKUSER reads a word of the thread's `struct user`, returned; no memory
    // of ours is written.
    let word = unsafe { libc::ptrace(libc::PTRACE_PEEKUSER, tid, offset as *mut libc::c_void, 0usize) };
    word as u64
}

#[test]
fn a_thread_nearly_always_in_the_c_library_is_held_in_the_programs_code_every_time() {
    let mut program =
        Command::new(common::lives_in_the_c_library()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pid = program.id() as i32;
    for hold in 0..HOLDS {
        let held = Injector::attach(pid).unwrap_or_else(|e| panic!("hold {hold}: {e}"));
        // In its own code, or in its `poll` (which returns at once), where it holds no lock:
        // interrupted there, the `poll` goes on as `restart_syscall`.
        let place = held.held_where();
        let in_poll = place.ends_with("`poll`") || place.ends_with("`restart_syscall`");
        assert!(place.contains("running outside the C library") || in_poll, "hold {hold}: {place}");
        assert_eq!(debug_control(pid), 0, "hold {hold}: the breakpoint is disarmed");
        held.release().unwrap();
    }
    drop(program.stdin.take());
    let mut printed = String::new();
    program.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(program.wait().unwrap().success(), "{printed}");
    assert!(printed.starts_with("rounds ") && printed.ends_with(" wrong 0 traps 0\n"), "{printed}");
}
