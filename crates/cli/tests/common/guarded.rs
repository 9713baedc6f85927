//! A traced program that a test must never leave behind: killed when the test fails with it
//! running, and when it does not end within a minute of being told to (a program dprobe
//! harmed may hang for ever: the test then fails rather than hangs).
#![allow(dead_code)]

use std::io::Read;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// The program; killed and reaped when dropped.
pub struct Guarded(pub Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guarded {
    /// The rest of what the program writes to `out`, up to its end; the program is killed if
    /// that takes more than a minute.
    pub fn rest_of(&self, out: &mut impl Read) -> String {
        let pid = self.0.id() as i32;
        let (ended, watch) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(Duration::from_secs(60)).is_err() {
                // SAFETY: the program is not reaped before this thread is joined (`self`
                // outlives the call): the pid is still its.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        let _ = ended.send(());
        watchdog.join().unwrap();
        rest
    }
}
