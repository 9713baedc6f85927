//! Whether a thread is inside the program's own `malloc`: never a place to load the agent from
//! (see `library.rs`). A program that brings its own allocator (jemalloc or tcmalloc linked in
//! or preloaded, or its own `malloc`) has the loader's allocations go to it too, so `dlopen`
//! called by a thread stopped inside it, holding its lock, waits for that lock for ever: the
//! call was abandoned after its timeout with the loader's own lock taken, and the program's
//! next `dlopen` hung (2 of 2). Outside the C library, that thread looked safe.
//!
//! The allocator is whichever object other than the C library exports `malloc`. A thread is
//! inside it when a frame of its stack (unwound from its registers) is in that object, for a
//! shared library; for the program itself, in one of its entry points (`malloc`, `free`,
//! `operator new`, ...). A thread whose stack cannot be unwound that far is taken as it was.

use dprobe_stack::Unwinder;
use dprobe_sym::{read_maps_of, Function, Symbols};

use crate::c_library::{is_c_library, is_loader};
use crate::sys::{self, RemoteMemory};

/// How many frames are looked at.
const DEPTH: usize = 64;

/// What the check needs of one process, read at the first thread it looks at.
pub(crate) struct AllocatorCheck {
    pid: i32,
    /// `None` until read; then the allocator's code ranges (empty: the C library's own).
    ranges: Option<Vec<(u64, u64)>>,
    unwinder: Unwinder,
}

impl AllocatorCheck {
    pub(crate) fn new(pid: i32) -> AllocatorCheck {
        AllocatorCheck { pid, ranges: None, unwinder: Unwinder::new() }
    }

    /// Whether the thread stopped with registers `r` is inside the program's own allocator.
    pub(crate) fn inside(&mut self, r: &libc::user_regs_struct) -> bool {
        let pid = self.pid;
        let ranges = self.ranges.get_or_insert_with(|| allocator_ranges(pid));
        if ranges.is_empty() {
            return false;
        }
        // Unreadable: the try is refused (the load could not go on anyway).
        let Ok(mut memory) = RemoteMemory::open(pid) else { return true };
        let stack =
            crate::backtrace::stack_of(&mut self.unwinder, pid as u32, &sys::to_regs(r), &mut memory, &[], DEPTH);
        stack.iter().any(|&a| ranges.iter().any(|&(start, end)| start <= a && a < end))
    }
}

/// The allocator's entry points: one of them is on the stack of a thread inside it.
const ENTRIES: [&str; 12] = [
    "malloc",
    "free",
    "calloc",
    "realloc",
    "reallocarray",
    "memalign",
    "posix_memalign",
    "aligned_alloc",
    "valloc",
    "pvalloc",
    "malloc_usable_size",
    "cfree",
];

/// Whether `name` is C++'s `operator new`, `new[]`, `delete` or `delete[]` (mangled).
fn is_operator_new_or_delete(name: &str) -> bool {
    ["_Znw", "_Zna", "_Zdl", "_Zda"].iter().any(|p| name.starts_with(p))
}

/// The code of process `pid`'s own allocator: the whole of a shared library that exports
/// `malloc` (all its code is the allocator's), or the entry points of a program that does;
/// none when the C library's `malloc` is the one in use.
fn allocator_ranges(pid: i32) -> Vec<(u64, u64)> {
    let Ok(maps) = read_maps_of(pid as u32) else { return Vec::new() };
    let symbols = Symbols::load(&maps);
    let Ok(program) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return Vec::new() };
    let program = program.to_string_lossy();
    let own = |object: &str| !is_c_library(object) && !is_loader(object);
    let mut ranges = Vec::new();
    for malloc in symbols.functions().iter().filter(|f| &*f.name == "malloc" && own(&f.object)) {
        if *malloc.object == program {
            let entry = |f: &&Function| ENTRIES.contains(&&*f.name) || is_operator_new_or_delete(&f.name);
            let entries = symbols.functions().iter().filter(|f| *f.object == program).filter(entry);
            ranges.extend(entries.map(|f| (f.start.0, f.start.0 + f.size.max(1))));
        } else {
            let library = maps.iter().filter(|m| m.exec && m.path.as_deref() == Some(&*malloc.object));
            ranges.extend(library.map(|m| (m.start.0, m.end.0)));
        }
    }
    ranges
}
