//! Whether a thread is running one of the program's signal handlers: never a place to load the
//! agent from (see `library.rs`). `dlopen` is not async-signal-safe, and the handler may have
//! interrupted `malloc`: a single-threaded program's `malloc` takes no lock at all, so the
//! loading re-entered it halfway through a change, and the program later aborted with
//! "corrupted size vs. prev_size" (3 of 6 attaches to a program whose handler slept in
//! `nanosleep`, found stopped in a system call that waits).
//!
//! A handler returns to the C library's signal trampoline (`__restore_rt`: `mov $15, %rax;
//! syscall`, that is `rt_sigreturn`), whose address the kernel put on the stack as the
//! handler's return address. The thread's stack is scanned from its stack pointer up for that
//! address. A stale copy of it in a live frame reads as a handler: that try is refused, and
//! the next interrupt tries again.

use dprobe_arch::{Addr, Memory};
use dprobe_sym::read_maps_of;

use crate::lock_free_wait::is_c_library;
use crate::sys::RemoteMemory;

/// The trampoline's code: `mov $15, %rax; syscall`.
const RESTORER: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// How much of a stack is scanned above its pointer: a handler's frames are rarely deeper.
const STACK_SCAN: u64 = 256 * 1024;

/// What the check needs of one process, read at the first thread it looks at.
pub(crate) struct HandlerCheck {
    pid: i32,
    /// The trampolines' addresses (none found: the check cannot tell, and says no).
    restorers: Option<Vec<u64>>,
}

impl HandlerCheck {
    pub(crate) fn new(pid: i32) -> HandlerCheck {
        HandlerCheck { pid, restorers: None }
    }

    /// Whether the thread stopped with stack pointer `sp` is inside a signal handler.
    pub(crate) fn running_a_handler(&mut self, sp: u64) -> bool {
        let pid = self.pid;
        let restorers = self.restorers.get_or_insert_with(|| restorers_of(pid));
        if restorers.is_empty() {
            return false;
        }
        let Ok(maps) = read_maps_of(pid as u32) else { return false };
        let Some(stack) = maps.iter().find(|m| m.contains(Addr(sp))) else { return false };
        let from = sp & !7;
        let to = stack.end.0.min(from + STACK_SCAN);
        let Ok(mut memory) = RemoteMemory::open(pid) else { return false };
        let mut bytes = vec![0u8; (to - from) as usize];
        if memory.read(Addr(from), &mut bytes).is_err() {
            return false;
        }
        bytes.chunks_exact(8).any(|w| restorers.contains(&u64::from_le_bytes(w.try_into().unwrap_or_default())))
    }
}

/// Where the C library's signal trampolines are in process `pid`.
fn restorers_of(pid: i32) -> Vec<u64> {
    let Ok(maps) = read_maps_of(pid as u32) else { return Vec::new() };
    let Ok(mut memory) = RemoteMemory::open(pid) else { return Vec::new() };
    let mut found = Vec::new();
    for m in maps.iter().filter(|m| m.exec && m.path.as_deref().is_some_and(is_c_library)) {
        let mut code = vec![0u8; (m.end.0 - m.start.0) as usize];
        if memory.read(m.start, &mut code).is_err() {
            continue;
        }
        let at = code.windows(RESTORER.len()).enumerate().filter(|(_, w)| *w == RESTORER);
        found.extend(at.map(|(i, _)| m.start.0 + i as u64));
    }
    found
}
