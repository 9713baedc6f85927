//! Which stack an address lies on, for the pairing rules of return probes (kprobe rule 12):
//! a stack is named by the end of the mapping holding it, as the ptrace and kernel engines
//! name it from the process's maps. The end stays put as a stack grows down, and coroutines
//! and green threads that switch stacks by themselves (`swapcontext`, a stack mapped per
//! coroutine) get one name per stack. Stacks carved out of one mapping (coroutine stacks
//! taken from the heap), or mapped next to each other with no guard page between (the kernel
//! merges them), share its name.
//!
//! The kernel is asked for one mapping (`PROCMAP_QUERY` on `/proc/self/maps`, Linux 6.11;
//! before it, the maps are read through a buffer on the stack), with the `syscall`
//! instruction itself, and each thread keeps the last few mappings it was told of, so the
//! question costs a system call only for a stack the thread has not met yet. No allocation,
//! no lock: async-signal-safe.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, Ordering::SeqCst};

use crate::sys::raw_syscall6;

/// How many mappings a thread remembers.
const REMEMBERED: usize = 8;

/// A thread's recently met stack mappings. Touched by its thread only (and by the signal
/// handlers nested in it, which run to completion inside it).
#[derive(Debug, Default)]
pub(crate) struct KnownStacks {
    /// `[start, end)`; an empty range is no entry.
    ranges: [Cell<(u64, u64)>; REMEMBERED],
    /// Counts the ranges written: a reader that a nested write interrupted (it sees the count
    /// change) does not trust what it read.
    written: Cell<u32>,
    /// A range is being written: a nested hit neither reads nor writes them then.
    writing: Cell<bool>,
    /// The kernel would not say (no `/proc`, no descriptor, a sandbox): not asked again.
    unavailable: Cell<bool>,
}

impl KnownStacks {
    /// The name of the stack holding `addr`: the end of its mapping, or 0 when the kernel
    /// does not say (no such mapping, no `/proc`, no file descriptor left).
    ///
    /// The ranges remembered are not told when the program unmaps a stack or a mapping
    /// grows: a stale one may give a stack a second name, or two stacks one, until it is
    /// replaced. Where the pairing rule would act on two names being equal (drop a call as
    /// stale, stop at an outer frame), it asks again ([`KnownStacks::fresh_name_of`]); a
    /// second name for one stack can still lose a handler call, never the program's return.
    pub(crate) fn name_of(&self, addr: u64) -> u64 {
        if !self.writing.get() {
            let before = self.written.get();
            compiler_fence(SeqCst);
            let found = self.ranges.iter().map(Cell::get).find(|&(s, e)| s <= addr && addr < e);
            compiler_fence(SeqCst);
            if let Some((_, end)) = found.filter(|_| self.written.get() == before) {
                return end;
            }
        }
        self.fresh_name_of(addr)
    }

    /// The name of the stack holding `addr` as the kernel has it now, remembered in place of
    /// the ranges it overlaps (out of date, or the same mapping grown). For the decisions a
    /// range out of date would get wrong (`dprobe_core::returns::StackNames::same_stack`).
    pub(crate) fn fresh_name_of(&self, addr: u64) -> u64 {
        if self.unavailable.get() {
            return 0;
        }
        let (start, end) = match mapping_of(addr) {
            Ok(Some(range)) => range,
            Ok(None) => return 0,
            Err(Unavailable) => {
                self.unavailable.set(true);
                return 0;
            }
        };
        if !self.writing.replace(true) {
            // The flag is set before the ranges are written and cleared after, in program
            // order as a nested handler on this thread sees it.
            compiler_fence(SeqCst);
            let n = self.written.get();
            for r in &self.ranges {
                let (s, e) = r.get();
                if s < end && start < e {
                    r.set((0, 0));
                }
            }
            let k = self.ranges.iter().position(|r| r.get() == (0, 0)).unwrap_or(n as usize % REMEMBERED);
            self.ranges[k].set((start, end));
            self.written.set(n.wrapping_add(1));
            compiler_fence(SeqCst);
            self.writing.set(false);
        }
        end
    }
}

/// The kernel cannot be asked about this process's mappings.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unavailable;

/// The mapping `[start, end)` of this process holding `addr` (none: no mapping holds it),
/// asked of the kernel.
pub(crate) fn mapping_of(addr: u64) -> Result<Option<(u64, u64)>, Unavailable> {
    mapping_with(addr, Need::Any)
}

/// [`mapping_of`], where the mapping must be readable (none: no readable mapping holds it).
pub(crate) fn readable_mapping_of(addr: u64) -> Result<Option<(u64, u64)>, Unavailable> {
    mapping_with(addr, Need::Readable)
}

/// What the mapping asked for must allow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Any,
    Readable,
}

fn mapping_with(addr: u64, need: Need) -> Result<Option<(u64, u64)>, Unavailable> {
    let fd = open_maps().ok_or(Unavailable)?;
    let found = match query(fd, addr, need) {
        Query::Found(range) => Some(range),
        Query::Absent => None,
        Query::Unsupported => read_through(fd, addr, need),
    };
    // SAFETY: closes the descriptor opened above, which nothing else uses.
    unsafe { raw_syscall6(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) };
    Ok(found)
}

fn open_maps() -> Option<i32> {
    const PATH: &[u8] = b"/proc/self/maps\0";
    let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    // SAFETY: openat reads the NUL-terminated path, a static.
    let fd = unsafe { raw_syscall6(libc::SYS_openat, [libc::AT_FDCWD as u64, PATH.as_ptr() as u64, flags, 0, 0, 0]) };
    (fd >= 0).then_some(fd as i32)
}

enum Query {
    Found((u64, u64)),
    Absent,
    Unsupported,
}

/// `struct procmap_query` of `linux/fs.h`.
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 = 0xC068_6611;
/// `PROCMAP_QUERY_VMA_READABLE`: only a readable mapping answers.
const VMA_READABLE: u64 = 1;

fn query(fd: i32, addr: u64, need: Need) -> Query {
    let query_flags = if need == Need::Readable { VMA_READABLE } else { 0 };
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_flags,
        query_addr: addr,
        ..Default::default()
    };
    // SAFETY: the ioctl reads and writes the `procmap_query` it is given (no name or build id
    // buffer asked for), which lives on this frame.
    let ret = unsafe { raw_syscall6(libc::SYS_ioctl, [fd as u64, PROCMAP_QUERY, &mut q as *mut _ as u64, 0, 0, 0]) };
    match ret {
        0 => Query::Found((q.vma_start, q.vma_end)),
        r if r == -(libc::ENOENT as i64) => Query::Absent,
        _ => Query::Unsupported,
    }
}

/// The maps read through, in small pieces (the hit path may run on a small stack): each line
/// starts `start-end ` in hexadecimal, then the permissions (`r` first where readable).
fn read_through(fd: i32, addr: u64, need: Need) -> Option<(u64, u64)> {
    let mut lines = MapsLines::default();
    let mut buf = [0u8; 256];
    loop {
        let n = crate::raw_calls::read(fd, &mut buf);
        if n <= 0 {
            return None;
        }
        for &b in &buf[..n as usize] {
            if let Some((start, end, readable)) = lines.push(b) {
                if start <= addr && addr < end {
                    return (readable || need == Need::Any).then_some((start, end));
                }
                if start > addr {
                    return None;
                }
            }
        }
    }
}

/// The ranges at the start of the lines of a maps file, and whether each is readable, fed a
/// byte at a time.
#[derive(Default)]
struct MapsLines {
    start: u64,
    end: u64,
    /// 0: reading the start, 1: the end, 2: the permissions' first letter, 3: the rest.
    field: u8,
}

impl MapsLines {
    /// Take one byte in; a line's range, and whether it is readable, once its permissions'
    /// first letter is read.
    fn push(&mut self, b: u8) -> Option<(u64, u64, bool)> {
        match (self.field, b) {
            (_, b'\n') => {
                *self = MapsLines::default();
                None
            }
            (0, b'-') => {
                self.field = 1;
                None
            }
            (1, b' ') => {
                self.field = 2;
                None
            }
            (2, _) => {
                self.field = 3;
                Some((self.start, self.end, b == b'r'))
            }
            (0 | 1, _) => {
                let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                let word = if self.field == 0 { &mut self.start } else { &mut self.end };
                *word = *word << 4 | digit;
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(text: &str) -> Vec<(u64, u64, bool)> {
        let mut lines = MapsLines::default();
        text.bytes().filter_map(|b| lines.push(b)).collect()
    }

    #[test]
    fn a_maps_line_gives_its_range_whatever_follows_it() {
        let text = "55d0c2a00000-55d0c2a21000 rw-p 00000000 00:00 0  [heap]\n\
                    7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0  [stack]\n\
                    7ffd1c021000-7ffd1c022000 ---p 00000000 00:00 0\n";
        assert_eq!(
            ranges(text),
            [
                (0x55d0c2a00000, 0x55d0c2a21000, true),
                (0x7ffd1c000000, 0x7ffd1c021000, true),
                (0x7ffd1c021000, 0x7ffd1c022000, false)
            ]
        );
    }

    #[test]
    fn the_kernel_names_each_mapping_by_its_end_and_both_ways_agree() {
        let size = 19 * 4096;
        // SAFETY: a new private anonymous mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), size, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(p, libc::MAP_FAILED);
        // Two writable mappings with a guard page between them, as below a thread's stack, and
        // guard pages around them (a neighbour made meanwhile by another test would merge).
        let base = p as u64 + 4096;
        for (start, pages) in [(base, 8), (base + 9 * 4096, 8)] {
            // SAFETY: pages inside the mapping just made.
            let made =
                unsafe { libc::mprotect(start as *mut libc::c_void, pages * 4096, libc::PROT_READ | libc::PROT_WRITE) };
            assert_eq!(made, 0);
        }
        let fd = open_maps().expect("/proc/self/maps");
        for (addr, expected) in [
            (base, Some((base, base + 8 * 4096))),
            (base + 8 * 4096 - 1, Some((base, base + 8 * 4096))),
            (base + 9 * 4096, Some((base + 9 * 4096, base + 17 * 4096))),
            (8, None),
        ] {
            assert_eq!(mapping_of(addr), Ok(expected), "{addr:#x}");
            assert_eq!(read_through(fd, addr, Need::Any), expected, "read through, {addr:#x}");
            // SAFETY: seeks the descriptor opened above back to its start.
            unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
        }
        // The guard page between them is a mapping, but no readable one.
        let guard = base + 8 * 4096;
        assert_eq!(mapping_of(guard), Ok(Some((guard, guard + 4096))));
        assert_eq!(readable_mapping_of(guard), Ok(None));
        assert_eq!(readable_mapping_of(base + 100), Ok(Some((base, guard))));
        for (need, expected) in [(Need::Any, Some((guard, guard + 4096))), (Need::Readable, None)] {
            // SAFETY: seeks the descriptor opened above back to its start.
            unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
            assert_eq!(read_through(fd, guard, need), expected, "read through");
        }
        let known = KnownStacks::default();
        assert_eq!(known.name_of(base + 100), base + 8 * 4096);
        assert_eq!(known.name_of(base + 9 * 4096 + 100), base + 17 * 4096);
        assert_eq!(known.name_of(8), 0);
        // SAFETY: the mapping made above, and the descriptor opened above.
        unsafe {
            libc::munmap(p, size);
            libc::close(fd);
        }
    }
}
