//! The calls the agent's own objects make as the program exits: dprobe's, not the program's.
//!
//! At `exit` the C library runs every object's finalizers, on the thread that exits: the
//! agent's library has them (its C runtime's, which calls `__cxa_finalize`), and so do the
//! libraries it brought into the program (the unwinder `libgcc_s`, where the program had
//! none). A probe on a function they call would count calls the untraced program never makes:
//! `libc:__cxa_finalize` counted 3 where the program makes 1.
//!
//! The objects are noted as the agent starts ([`note`]: its library, and every object loaded
//! after it by the same `dlopen`); the agent's own finalizer, which the C library runs before
//! the C runtime's (an object's finalizers run last-listed first), marks the exit. From then,
//! a hit at a function's entry whose return address lies in one of those objects is dprobe's
//! own call. Before the exit nothing is read: elsewhere the agent's code calls no probed
//! function on the program's threads (raw system calls, its own memory functions), and its
//! own thread is told apart by its stack.
//!
//! Not covered: a library the agent brought that the program would have loaded itself later
//! (its finalizer's calls are the program's then); calls made inside the C library on behalf
//! of those finalizers (from `__cxa_finalize` itself) count as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use dprobe_core::Regs;

/// The most objects noted: the agent's library and what it brought.
const MOST: usize = 4;

/// The code of each object noted, `[start, end)`; unused entries are empty.
static CODE: [[AtomicU64; 2]; MOST] = [const { [AtomicU64::new(0), AtomicU64::new(0)] }; MOST];

/// Set by the agent's finalizers: the program is exiting.
static EXITING: AtomicBool = AtomicBool::new(false);

#[used]
#[link_section = ".fini_array"]
static MARK_THE_EXIT: extern "C" fn() = mark_the_exit;

/// Note that the program is exiting (the C library runs the finalizers). Every finalizer of
/// the agent's that depends on it calls it first: their order among themselves is the link's.
pub(crate) extern "C" fn mark_the_exit() {
    EXITING.store(true, Relaxed);
}

/// Whether the program is exiting.
pub(crate) fn exiting() -> bool {
    EXITING.load(Relaxed)
}

/// Note the code of the agent's library and of the objects loaded after it (by the `dlopen`
/// that loaded it). Called once, as the agent starts.
pub(crate) fn note() {
    let mut found = Found { next: 0, seen_agent: false };
    // SAFETY: the callback only reads the program headers the C library hands it, for the
    // duration of each call, and writes `found`, which outlives the walk.
    unsafe { libc::dl_iterate_phdr(Some(each_object), (&mut found as *mut Found).cast()) };
}

/// What the walk of the loaded objects keeps.
struct Found {
    next: usize,
    seen_agent: bool,
}

/// `dl_iterate_phdr`'s callback for [`note`].
///
/// # Safety
/// `info` is the C library's description of one loaded object, valid for the call; `data` is
/// the `Found` that `note` passed.
unsafe extern "C" fn each_object(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `data` is the `Found` of `note`; `info` is the C library's, valid for this call.
    let (found, info) = unsafe { (&mut *data.cast::<Found>(), &*info) };
    // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let code = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_X != 0)
        .map(|h| (info.dlpi_addr + h.p_vaddr, info.dlpi_addr + h.p_vaddr + h.p_memsz))
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    let Some((start, end)) = code else { return 0 };
    let here = note as *const () as u64;
    found.seen_agent |= (start..end).contains(&here);
    if found.seen_agent && found.next < MOST {
        CODE[found.next][0].store(start, Relaxed);
        CODE[found.next][1].store(end, Relaxed);
        found.next += 1;
    }
    0
}

/// Whether a hit with registers `regs` at a function's entry (`at_entry`: its return address
/// at the stack pointer) is a call the agent's objects make as the program exits.
pub(crate) fn called_at_exit(regs: &Regs, at_entry: bool) -> bool {
    if !at_entry || !exiting() {
        return false;
    }
    // SAFETY: at a function's first instruction the stack pointer points at the return
    // address its call pushed, on the thread's live stack.
    let caller = unsafe { (regs.rsp as *const u64).read_volatile() };
    CODE.iter().any(|[start, end]| (start.load(Relaxed)..end.load(Relaxed)).contains(&caller))
}
