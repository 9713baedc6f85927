//! How a process given with `-p` ended, where the engine cannot tell (the agent and the
//! kernel engine are neither its parent nor its tracer): read through a pidfd opened before
//! any engine attaches (`dprobe_ptrace::ProcessEnd`).

use std::sync::OnceLock;

use dprobe_core::Exit;
use dprobe_ptrace::ProcessEnd;

/// The process given with `-p`, watched by [`watch`].
static WATCHED: OnceLock<ProcessEnd> = OnceLock::new();

/// Watch process `pid` for [`how_it_ended`]: called before the trace starts.
pub fn watch(pid: i32) {
    if let Some(end) = ProcessEnd::watch(pid) {
        let _ = WATCHED.set(end);
    }
}

/// How the watched process ended, if it has and that can be known.
pub fn how_it_ended() -> Option<Exit> {
    WATCHED.get()?.how_it_ended()
}
