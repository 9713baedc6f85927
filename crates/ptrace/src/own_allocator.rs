//! Whether a thread is inside the program's own `malloc`: never a place to load the agent from
//! (see `library.rs`). A program that brings its own allocator (jemalloc or tcmalloc linked in
//! or preloaded, or its own `malloc`) has the loader's allocations go to it too, so `dlopen`
//! called by a thread stopped inside it, holding its lock, waits for that lock for ever: the
//! call was abandoned after its timeout with the loader's own lock taken, and the program's
//! next `dlopen` hung (2 of 2). Outside the C library, that thread looked safe.
//!
//! The allocator is whichever object other than the C library exports `malloc`. A thread is
//! inside it when a frame of its stack (unwound from its registers) is in that object, for a
//! shared library; for the program itself, in one of its functions whose name says it
//! allocates or frees. A thread whose stack cannot be unwound that far is taken as it was.

use dprobe_stack::Unwinder;
use dprobe_sym::{read_maps_of, Symbols};

use crate::lock_free_wait::is_c_library;
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
        let Ok(mut memory) = RemoteMemory::open(pid) else { return false };
        let stack =
            crate::backtrace::stack_of(&mut self.unwinder, pid as u32, &sys::to_regs(r), &mut memory, &[], DEPTH);
        stack.iter().any(|&a| ranges.iter().any(|&(start, end)| start <= a && a < end))
    }
}

/// The code of process `pid`'s own allocator: the whole of a shared library that exports
/// `malloc`, or the allocating functions of a program that does; none when the C library's
/// `malloc` is the one in use.
fn allocator_ranges(pid: i32) -> Vec<(u64, u64)> {
    let Ok(maps) = read_maps_of(pid as u32) else { return Vec::new() };
    let symbols = Symbols::load(&maps);
    let Ok(program) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return Vec::new() };
    let program = program.to_string_lossy();
    let own = |object: &str| !is_c_library(object) && !file_name(object).starts_with("ld-");
    let mut ranges = Vec::new();
    for malloc in symbols.functions().iter().filter(|f| &*f.name == "malloc" && own(&f.object)) {
        if *malloc.object == program {
            let allocating = |name: &str| {
                let name = name.to_ascii_lowercase();
                name.contains("alloc") || name.contains("free")
            };
            let in_program = symbols.functions().iter().filter(|f| *f.object == program && allocating(&f.name));
            ranges.extend(in_program.map(|f| (f.start.0, f.start.0 + f.size.max(1))));
        } else {
            let library = maps.iter().filter(|m| m.exec && m.path.as_deref() == Some(&*malloc.object));
            ranges.extend(library.map(|m| (m.start.0, m.end.0)));
        }
    }
    ranges
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
