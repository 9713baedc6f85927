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
//!
//! A frame of the loader anywhere on the stack refuses the thread: a constructor or a
//! `dl_iterate_phdr` callback that waits runs inside the loader, holding its lock.

use dprobe_arch::{Addr, Memory};
use dprobe_stack::Unwinder;
use dprobe_sym::{read_maps_of, Mapping, Symbols};

use crate::c_library::{is_c_library, is_loader, object_at};
use crate::sys::{self, RemoteMemory};

/// The waits of a program that hold no lock of the C library's while they sleep.
const WAITS: [&str; 14] = [
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
    // Called by the program itself: how Rust's `Mutex`, `Condvar`, `park` and channels, and
    // C++20's `atomic::wait`, wait (the C library's own locks never come through it).
    "syscall",
];

/// The C library's functions whose sleep the kernel resumes with `restart_syscall` after a
/// stop or a signal (their timeouts kept in the thread): a thread in `restart_syscall` under
/// one of these, or of [`WAITS`], sleeps holding no lock of the library's either. (One
/// attached and let go before sat there, and the next attach was refused.)
const SLEEPS: [&str; 9] =
    ["poll", "ppoll", "select", "pselect", "nanosleep", "clock_nanosleep", "usleep", "sleep", "thrd_sleep"];

/// Parts of the names of the C library's functions that may return with the caller's signal
/// mask or actions changed (`sigprocmask`, `pthread_sigmask`, `sigaction`, `signal`,
/// `sigset`...), or to another place than their return address (`longjmp`, `setcontext`...),
/// or that wait where an interrupt does not stop their thread (the parent of a `vfork`, in
/// `posix_spawn`, `system`, `popen`); and `syscall` and `clone`, which may do any of it.
const NOT_RUN_THROUGH: [&str; 9] = ["sig", "context", "jmp", "spawn", "fork", "system", "popen", "syscall", "clone"];

/// How many of the outermost frames of a whole stack may be the C library's: where a thread
/// starts (`start_thread` and `clone3`; `__libc_start_call_main` and `__libc_start_main`, then
/// the program's `_start`).
const STARTING_FRAMES: usize = 3;

/// How many frames are unwound: the waits sit three to five deep, and a frame of the loader
/// further out (a constructor waiting, within `dlopen`) refuses the thread.
const DEPTH: usize = 32;

/// How many times what the check needs is read before it is given up: a process just started
/// may be read while the loader maps the C library, its symbols not there yet (every attach
/// of the agent then refused its running thread, one in twenty times at the first attach).
const READS: u32 = 20;

/// What the check needs of one process, read at the first thread that needs it and kept while
/// its threads are tried.
pub(crate) struct WaitCheck {
    pid: i32,
    known: Option<Known>,
    /// Reads of it that failed (read again at a later stop, up to [`READS`]).
    failed_reads: u32,
}

struct Known {
    maps: Vec<Mapping>,
    memory: RemoteMemory,
    unwinder: Unwinder,
    /// Where each of [`WAITS`] lies: start and end.
    waits: Vec<(u64, u64)>,
    /// And each of [`SLEEPS`].
    sleeps: Vec<(u64, u64)>,
    /// And each function of the C library that a thread is not let run through
    /// ([`NOT_RUN_THROUGH`], see [`WaitCheck::return_into_program`]).
    not_run_through: Vec<(u64, u64)>,
}

impl WaitCheck {
    pub(crate) fn new(pid: i32) -> WaitCheck {
        WaitCheck { pid, known: None, failed_reads: 0 }
    }

    /// Whether a thread stopped in `futex` (or `restart_syscall`) with registers `r` is inside one of the program's
    /// waits ([`WAITS`]), called by the program, with no frame of the loader on its stack.
    /// `restarted`: stopped in `restart_syscall`, [`SLEEPS`] count too.
    pub(crate) fn holds_no_library_lock(&mut self, r: &libc::user_regs_struct, restarted: bool) -> bool {
        let Some((k, stack, outside)) = self.called_by_the_program(r) else { return false };
        let sleeps: &[(u64, u64)] = if restarted { &k.sleeps } else { &[] };
        let mut ranges = k.waits.iter().chain(sleeps);
        // The outermost frame of the C library's is one of the waits: what the program called.
        let outermost = stack[outside - 1];
        if ranges.clone().any(|&(start, end)| start <= outermost && outermost < end) {
            return true;
        }
        // Or the program called one that jumped on, leaving no frame.
        called_before(&mut k.memory, stack[outside]).is_some_and(|callee| ranges.any(|&(start, _)| start == callee))
    }
}

impl WaitCheck {
    /// The stack of a thread stopped with registers `r` inside the C library, called by the
    /// program, with no frame of the loader on it: what is known of the process, the return
    /// addresses (innermost first), and the index of the first outside the C library.
    fn called_by_the_program(&mut self, r: &libc::user_regs_struct) -> Option<(&mut Known, Vec<u64>, usize)> {
        if self.known.is_none() && self.failed_reads < READS {
            self.known = Known::read(self.pid);
            self.failed_reads += u32::from(self.known.is_none());
        }
        let pid = self.pid;
        let k = self.known.as_mut()?;
        let regs = sys::to_regs(r);
        let stack = crate::backtrace::stack_of(&mut k.unwinder, pid as u32, &regs, &mut k.memory, &[], DEPTH);
        // The frames inside the C library, innermost first, then the program's frame.
        let outside = stack.iter().position(|&a| !in_c_library(&k.maps, a))?;
        if outside == 0 || stack.iter().any(|&a| in_loader(&k.maps, a)) {
            return None;
        }
        Some((k, stack, outside))
    }

    /// Where a thread stopped with registers `r`, running in the C library (or just back from
    /// one of its system calls), returns into the program's code: the return address of the
    /// C library's outermost frame. `None` where it was not called by the program (a thread
    /// starting or ending), a frame of the loader is on the stack, or the function the program
    /// called may change how the thread takes `SIGTRAP`, not return where it was called, or
    /// wait where an interrupt does not stop it ([`NOT_RUN_THROUGH`]).
    pub(crate) fn return_into_program(&mut self, r: &libc::user_regs_struct) -> Option<u64> {
        let (k, stack, outside) = self.called_by_the_program(r)?;
        // No frame of the C library further out, but where the thread started: the program's
        // code there would be a callback the library runs (for `qsort`, `dl_iterate_phdr`,
        // `fopencookie`), maybe holding one of its locks. A stack cut short cannot say.
        let starts = stack.len().saturating_sub(STARTING_FRAMES);
        if stack.len() >= DEPTH || stack[outside + 1..starts.max(outside + 1)].iter().any(|&a| in_c_library(&k.maps, a))
        {
            return None;
        }
        let outermost = stack[outside - 1];
        let inside = |&(start, end): &(u64, u64)| start <= outermost && outermost < end;
        if k.not_run_through.iter().any(inside) {
            return None;
        }
        let returned_to = stack[outside];
        if called_before(&mut k.memory, returned_to)
            .is_some_and(|callee| k.not_run_through.iter().any(|&(start, _)| start == callee))
        {
            return None;
        }
        // In an executable mapping of the program's (not a stray word the unwinder read).
        k.maps.iter().any(|m| m.exec && m.start.0 <= returned_to && returned_to < m.end.0).then_some(returned_to)
    }
}

impl Known {
    fn read(pid: i32) -> Option<Known> {
        let maps = read_maps_of(pid as u32).ok()?;
        let memory = RemoteMemory::open(pid).ok()?;
        let library: Vec<Mapping> =
            maps.iter().filter(|m| m.path.as_deref().is_some_and(is_c_library)).cloned().collect();
        let symbols = Symbols::load(&library);
        let ranges_where = |chosen: &dyn Fn(&str) -> bool| -> Vec<(u64, u64)> {
            let named = symbols.functions().iter().filter(|f| chosen(&f.name));
            named.map(|f| (f.start.0, f.start.0 + f.size.max(1))).collect()
        };
        let (waits, sleeps) = (ranges_where(&|n| WAITS.contains(&n)), ranges_where(&|n| SLEEPS.contains(&n)));
        let not_run_through = ranges_where(&|n| NOT_RUN_THROUGH.iter().any(|part| n.contains(part)));
        (!waits.is_empty()).then_some(Known { maps, memory, unwinder: Unwinder::new(), waits, sleeps, not_run_through })
    }
}

fn in_c_library(maps: &[Mapping], addr: u64) -> bool {
    object_at(maps, addr).is_some_and(is_c_library)
}

fn in_loader(maps: &[Mapping], addr: u64) -> bool {
    object_at(maps, addr).is_some_and(is_loader)
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
