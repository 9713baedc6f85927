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
//! address, and what follows it must look like the kernel's signal frame (the old action a
//! function saved in a local holds that address too, as its `sa_restorer`).

use dprobe_arch::{Addr, Memory};
use dprobe_sym::{read_maps_of, Mapping};

use crate::c_library::{is_c_library, is_loader};
use crate::sys::RemoteMemory;

/// The trampoline's code: `mov $15, %rax; syscall`.
const RESTORER: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// How much of a stack is scanned above its pointer: a handler's frames are rarely deeper.
const STACK_SCAN: u64 = 256 * 1024;

/// Where the kernel's signal frame (`struct rt_sigframe`) keeps what the frame is checked by,
/// from its first word (the trampoline's address): `uc_flags`, `uc_link`, and the interrupted
/// `rsp` and `rip` in `uc_mcontext`.
const UC_FLAGS: usize = 8;
const UC_LINK: usize = 16;
const SAVED_RSP: usize = 168;
const SAVED_RIP: usize = 176;

/// What the check needs of one process, read at the first thread it looks at.
pub(crate) struct HandlerCheck {
    pid: i32,
    /// The trampolines' addresses, once found.
    restorers: Vec<u64>,
    /// Looks for them so far: given up after two (the check then cannot tell, and says no).
    looked: u32,
    memory: Option<RemoteMemory>,
}

impl HandlerCheck {
    pub(crate) fn new(pid: i32) -> HandlerCheck {
        HandlerCheck { pid, restorers: Vec::new(), looked: 0, memory: None }
    }

    /// Whether the thread stopped with stack pointer `sp` is inside a signal handler (or its
    /// stack cannot be read, which refuses the try as well).
    pub(crate) fn running_a_handler(&mut self, sp: u64) -> bool {
        self.in_a_handler(sp).unwrap_or(true)
    }

    /// Whether the thread stopped with stack pointer `sp` is inside a signal handler; `None`
    /// when its stack cannot be read.
    pub(crate) fn in_a_handler(&mut self, sp: u64) -> Option<bool> {
        let pid = self.pid;
        if self.memory.is_none() {
            self.memory = RemoteMemory::open(pid).ok();
        }
        let memory = self.memory.as_mut()?;
        let maps = read_maps_of(pid as u32).ok()?;
        if self.restorers.is_empty() && self.looked < 2 {
            self.looked += 1;
            self.restorers = restorers_in(&maps, memory);
        }
        if self.restorers.is_empty() {
            return Some(false);
        }
        let stack = maps.iter().find(|m| m.contains(Addr(sp)))?;
        let from = sp & !7;
        let to = stack.end.0.min(from + STACK_SCAN);
        let mut bytes = vec![0u8; (to - from) as usize];
        memory.read(Addr(from), &mut bytes).ok()?;
        let word = |at: usize| bytes.get(at..at + 8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()));
        Some(
            (0..bytes.len())
                .step_by(8)
                .any(|at| word(at).is_some_and(|w| self.restorers.contains(&w)) && is_signal_frame(&maps, &word, at)),
        )
    }
}

/// Whether the words after the trampoline's address at offset `at` of what `word` reads are a
/// signal frame's: no linked context, known flags, and an interrupted stack pointer and
/// instruction pointer that point into the stack and the code. A copy of the
/// address kept elsewhere (the `sa_restorer` of an old action a function saved in a local)
/// is not one.
fn is_signal_frame(maps: &[Mapping], word: &dyn Fn(usize) -> Option<u64>, at: usize) -> bool {
    let (Some(flags), Some(link), Some(rsp), Some(rip)) =
        (word(at + UC_FLAGS), word(at + UC_LINK), word(at + SAVED_RSP), word(at + SAVED_RIP))
    else {
        // The frame runs past the part read: taken as one.
        return true;
    };
    let mapped = |addr: u64, exec: bool| maps.iter().any(|m| m.contains(Addr(addr)) && m.exec == exec);
    flags <= 0xf && link == 0 && mapped(rsp, false) && mapped(rip, true)
}

/// Where the C library's signal trampolines are.
fn restorers_in(maps: &[Mapping], memory: &mut RemoteMemory) -> Vec<u64> {
    let mut found = Vec::new();
    let c_library = |p: &str| is_c_library(p) || is_loader(p) && p.contains("musl");
    for m in maps.iter().filter(|m| m.exec && m.path.as_deref().is_some_and(c_library)) {
        let mut code = vec![0u8; (m.end.0 - m.start.0) as usize];
        if memory.read(m.start, &mut code).is_err() {
            continue;
        }
        let at = code.windows(RESTORER.len()).enumerate().filter(|(_, w)| *w == RESTORER);
        found.extend(at.map(|(i, _)| m.start.0 + i as u64));
    }
    found
}
