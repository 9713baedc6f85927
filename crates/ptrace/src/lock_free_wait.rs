//! Whether a thread waiting in `futex` waits holding none of the C library's locks, so that
//! it may call `dlopen` (see `library.rs`).
//!
//! A `futex` wait alone says nothing: the C library's own locks wait there too (a thread in
//! `fork` holds every `malloc` arena while it waits for the next one, and `dlopen` would
//! deadlock on them). But a thread that entered the C library through one of the waits a
//! program makes, a condition variable, a semaphore, a join or a barrier, and is still
//! inside it, holds none: those calls take no lock of the library's own while they sleep
//! (they are cancellation points, where a thread may end, so they cannot). A process whose
//! every thread sleeps that way (a JVM, a thread pool at rest) can then load the agent.
//!
//! The thread's stack is unwound (call-frame information) up to the first frame outside the
//! C library. The wait is recognised in either of two ways, both from exported symbols, so
//! that a stripped C library will do:
//! - a return address inside one of those functions (`pthread_cond_wait` waits in a callee);
//! - the program's call into the C library, decoded at the return address, whose target (or
//!   the target of the PLT stub it calls) is one of them: `sem_wait` and `pthread_join`
//!   jump to their inner functions, leaving no frame of their own.

use dprobe_arch::{Addr, Memory};
use dprobe_stack::Unwinder;
use dprobe_sym::{read_maps_of, Mapping, Symbols};

use crate::sys::{self, RemoteMemory};

/// The waits of a program that hold no lock of the C library's while they sleep.
const WAITS: [&str; 13] = [
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "pthread_cond_clockwait",
    "cnd_wait",
    "cnd_timedwait",
    "sem_wait",
    "sem_timedwait",
    "sem_clockwait",
    "pthread_join",
    "pthread_timedjoin_np",
    "pthread_clockjoin_np",
    "thrd_join",
    "pthread_barrier_wait",
];

/// How many frames are unwound: the waits sit three to five deep.
const DEPTH: usize = 12;

/// What the check needs of one process, read at the first thread that waits in `futex`
/// and kept while its threads are tried.
pub(crate) struct WaitCheck {
    pid: i32,
    known: Option<Known>,
}

struct Known {
    maps: Vec<Mapping>,
    memory: RemoteMemory,
    unwinder: Unwinder,
    /// Where each of [`WAITS`] lies: start and end.
    waits: Vec<(u64, u64)>,
}

impl WaitCheck {
    pub(crate) fn new(pid: i32) -> WaitCheck {
        WaitCheck { pid, known: None }
    }

    /// Whether a thread stopped in `futex` with registers `r` is inside one of the program's
    /// waits ([`WAITS`]) and nowhere else in the C library or the loader.
    pub(crate) fn holds_no_library_lock(&mut self, r: &libc::user_regs_struct) -> bool {
        let pid = self.pid;
        if self.known.is_none() {
            self.known = Known::read(pid);
        }
        let Some(k) = self.known.as_mut() else { return false };
        let regs = sys::to_regs(r);
        let stack = crate::backtrace::stack_of(&mut k.unwinder, pid as u32, &regs, &mut k.memory, &[], DEPTH);
        // The frames inside the C library, innermost first, then the program's frame.
        let Some(outside) = stack.iter().position(|&a| !in_c_library(&k.maps, a)) else { return false };
        if outside == 0 || in_loader(&k.maps, stack[outside]) {
            return false;
        }
        // The outermost frame of the C library's is one of the waits: what the program called.
        let outermost = stack[outside - 1];
        if k.waits.iter().any(|&(start, end)| start <= outermost && outermost < end) {
            return true;
        }
        // Or the program called one that jumped on, leaving no frame.
        called_before(&mut k.memory, stack[outside])
            .is_some_and(|callee| k.waits.iter().any(|&(start, _)| start == callee))
    }
}

impl Known {
    fn read(pid: i32) -> Option<Known> {
        let maps = read_maps_of(pid as u32).ok()?;
        let memory = RemoteMemory::open(pid).ok()?;
        let library: Vec<Mapping> =
            maps.iter().filter(|m| m.path.as_deref().is_some_and(is_c_library)).cloned().collect();
        let waits: Vec<(u64, u64)> = Symbols::load(&library)
            .functions()
            .iter()
            .filter(|f| WAITS.contains(&&*f.name))
            .map(|f| (f.start.0, f.start.0 + f.size.max(1)))
            .collect();
        (!waits.is_empty()).then_some(Known { maps, memory, unwinder: Unwinder::new(), waits })
    }
}

fn file_name(maps: &[Mapping], addr: u64) -> Option<&str> {
    let path = maps.iter().find(|m| m.contains(Addr(addr)))?.path.as_deref()?;
    Some(path.rsplit('/').next().unwrap_or(path))
}

/// Whether the file at `path` is the C library (or its threads library, before glibc 2.34).
pub(crate) fn is_c_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.") || name.starts_with("libc-") || name.starts_with("libpthread")
}

fn in_c_library(maps: &[Mapping], addr: u64) -> bool {
    file_name(maps, addr).is_some_and(is_c_library)
}

fn in_loader(maps: &[Mapping], addr: u64) -> bool {
    file_name(maps, addr).is_some_and(|f| f.starts_with("ld-"))
}

/// The function that the call instruction ending at `ret` called (`call rel32`, or `call
/// *disp32(%rip)` through a pointer in memory), through a PLT stub if it called one.
fn called_before(memory: &mut dyn Memory, ret: u64) -> Option<u64> {
    let mut before = [0u8; 6];
    memory.read(Addr(ret.checked_sub(6)?), &mut before).ok()?;
    let target = if before[1] == 0xe8 {
        ret.wrapping_add(i32::from_le_bytes(before[2..6].try_into().ok()?) as i64 as u64)
    } else if before[0] == 0xff && before[1] == 0x15 {
        let slot = ret.wrapping_add(i32::from_le_bytes(before[2..6].try_into().ok()?) as i64 as u64);
        read_word(memory, slot)?
    } else {
        return None;
    };
    Some(through_stub(memory, target).unwrap_or(target))
}

/// Where a PLT stub at `at` jumps: `[endbr64] [bnd] jmp *disp32(%rip)`, its slot read.
fn through_stub(memory: &mut dyn Memory, at: u64) -> Option<u64> {
    let mut code = [0u8; 11];
    memory.read(Addr(at), &mut code).ok()?;
    let mut i = 0;
    if code[..4] == [0xf3, 0x0f, 0x1e, 0xfa] {
        i += 4;
    }
    if code[i] == 0xf2 {
        i += 1;
    }
    if code[i..i + 2] != [0xff, 0x25] {
        return None;
    }
    let next = at + i as u64 + 6;
    let slot = next.wrapping_add(i32::from_le_bytes(code[i + 2..i + 6].try_into().ok()?) as i64 as u64);
    read_word(memory, slot)
}

fn read_word(memory: &mut dyn Memory, at: u64) -> Option<u64> {
    let mut word = [0u8; 8];
    memory.read(Addr(at), &mut word).ok()?;
    Some(u64::from_le_bytes(word))
}
