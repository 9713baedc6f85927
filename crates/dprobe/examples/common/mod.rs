//! Shared by the examples: thread names for the thread ids events carry.
#![allow(dead_code)]

use std::sync::Mutex;

static NAMES: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

/// Remember the calling thread's name (call at thread start, never from a handler).
pub fn register_thread_name(name: &str) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    NAMES.lock().expect("names").push((tid, name.to_owned()));
}

/// The name recorded for `tid`.
pub fn thread_name(tid: u32) -> String {
    let names = NAMES.lock().expect("names");
    names.iter().rev().find(|(t, _)| *t == tid).map(|(_, n)| n.clone()).unwrap_or_else(|| format!("tid {tid}"))
}

/// The symbolic name of an errno value.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EMFILE => "EMFILE",
        libc::EINVAL => "EINVAL",
        _ => "E?",
    }
}
