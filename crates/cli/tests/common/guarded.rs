//! Reading a traced program's output to its end, for a test that must never hang: a program
//! dprobe harmed may never end, and is killed a minute after the test told it to (the test
//! then fails rather than hangs). The program itself is held as an `ending::Running`.
#![allow(dead_code)]

use std::io::Read;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// The rest of what `program` writes to `out`, up to its end; the program is killed if that
/// takes more than a minute. `program` must not have been reaped.
pub fn rest_of(program: &Child, out: &mut impl Read) -> String {
    let pid = program.id() as i32;
    let (ended, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(60)).is_err() {
            // SAFETY: the program is not reaped before this thread is joined (the caller holds
            // it, unreaped): the pid is still its.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let _ = ended.send(());
    watchdog.join().unwrap();
    rest
}
