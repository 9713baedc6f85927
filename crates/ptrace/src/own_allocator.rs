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
use dprobe_sym::{read_maps_of, Function, Mapping, Symbols};

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
    let Some(program) = program_file(pid, &maps) else { return Vec::new() };
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

/// The file of process `pid`'s program: `/proc/PID/exe`, or, where that is the loader (a
/// program started as `ld.so ./prog`, mapped like a library: all of whose code would be taken
/// for the allocator's, and every thread refused), the mapped file that names an interpreter
/// (`PT_INTERP`), as executables do and libraries do not (the C library, which does, aside).
fn program_file(pid: i32, maps: &[Mapping]) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?.to_string_lossy().into_owned();
    if !is_loader(&exe) {
        return Some(exe);
    }
    let mut files: Vec<&str> = maps.iter().filter_map(|m| m.path.as_deref()).filter(|p| p.starts_with('/')).collect();
    files.dedup();
    let program = files.into_iter().find(|p| !is_c_library(p) && !is_loader(p) && names_an_interpreter(p));
    Some(program.map_or(exe, str::to_owned))
}

/// Whether the ELF file at `path` has a `PT_INTERP` program header.
fn names_an_interpreter(path: &str) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(bytes) = read_head(path) else { return false };
    let word = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at + n)?;
        Some(b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)))
    };
    let (Some(phoff), Some(size), Some(count)) = (word(32, 8), word(54, 2), word(56, 2)) else { return false };
    if bytes.get(..4) != Some(b"\x7fELF") {
        return false;
    }
    (0..count).any(|i| word((phoff + i * size) as usize, 4) == Some(u64::from(PT_INTERP)))
}

/// The first 16 KiB of the file at `path` (its ELF and program headers).
fn read_head(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16 * 1024);
    std::fs::File::open(path)?.take(16 * 1024).read_to_end(&mut head)?;
    Ok(head)
}
