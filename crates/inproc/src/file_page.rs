//! Putting a file's own mapping back under code pages that dprobe held writable, once their
//! bytes are the file's again.
//!
//! # Why
//!
//! Making a page of a file's private mapping writable marks the kernel's area of that page as
//! holding a private copy (`VM_ACCOUNT`), and `mprotect` back to `r-x` keeps the mark: the area
//! no longer merges with its neighbours. `/proc/PID/maps` then shows the library's code split
//! in three for the rest of the program's life, and the page stays a private copy instead of
//! the page cache's, shared with every other process. A traced program should look as it did
//! once dprobe is gone.
//!
//! A new mapping of the page alone does not merge either: the kernel merges areas of the same
//! open file (`struct file`), and the loader's is closed. So the whole run of areas around the
//! pages (contiguous, of the same file at contiguous offsets, private, with the protection the
//! pages get back) is mapped again from one open file, when every byte of it is the file's:
//! every probe there removed, the case of a session's end. The run is then one area, as the
//! loader made it, and its pages are the page cache's again. A kernel uprobe on that part of
//! the file is placed in the new mapping, as in any new mapping (`uprobe_mmap`).
//!
//! The new mapping is made where the kernel chooses first, so that a file that cannot be
//! mapped (a network file system's error, a security policy) changes nothing, then moved over
//! the run (`mremap`), once the run's areas are found as they were. The move is one system
//! call under the address space's lock: a thread running in the run meanwhile faults, waits,
//! and finds the same bytes.
//!
//! The bytes are compared again last, just before the move: a change another tool or the
//! program makes to the run (a debugger's breakpoint written through `/proc/PID/mem` or
//! ptrace, which leaves the areas as they were) before that comparison keeps the run as it
//! is, and one made after it would be lost under the move. So the comparison is short: only
//! the pages that are the process's own copies (written since they were mapped, as
//! `/proc/self/pagemap` says) are compared; the others are the file's pages themselves, or not
//! yet read from it. The moment left is that comparison (a few pages, those dprobe wrote, read
//! twice) and the move's system call, where comparing the whole run and reading the areas'
//! flags took milliseconds (a test that writes code while other tests give pages back lost its
//! write 3 times in 260 runs then, none in 300 since). A write in that moment is still lost.
//!
//! Not done (the pages get their protection back with `mprotect`, and stay split): a byte
//! that differs from the file anywhere in the run (a probe still armed, another tool's uprobe
//! or the program's own change), an area with more than the plain flags of code (locked,
//! advised, registered with `userfaultfd`: see [`PLAIN_FLAGS`]) or with a protection key, a
//! process with locked memory, a forked child (which usually runs another program at once),
//! and runs of more than [`MOST_BYTES`]. Not checked: a memory policy set on the run alone
//! (`mbind`), which the new mapping would not have.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use dprobe_arch::Addr;
use dprobe_sym::Mapping;

use crate::{page_alias, sys};

const PAGE: u64 = 4096;

/// The longest run compared and mapped again (a C library's code is under 2 MiB): a larger
/// program's code keeps its split.
const MOST_BYTES: u64 = 16 << 20;

/// The `VmFlags` of `/proc/PID/smaps` an area may have to be mapped again: readable, writable
/// (the pages dprobe held), executable, the "may" flags every private file mapping has, soft-
/// dirty, accounted (the pages dprobe held) and the old deny-write.
const PLAIN_FLAGS: [&str; 9] = ["rd", "wr", "ex", "mr", "mw", "me", "sd", "ac", "dw"];

/// The process that made pages writable (see [`made_writable`]).
static WRITER: AtomicU32 = AtomicU32::new(0);

/// Say that this process makes code pages writable: only it maps them again (a forked child,
/// which inherits them, gives them back with `mprotect`).
pub(crate) fn made_writable() {
    WRITER.store(std::process::id(), Relaxed);
}

/// A page dprobe gives back: its address, and the protection it gets back.
pub(crate) type Returning = (u64, libc::c_int);

/// Map again, from the file, each run of areas around the pages of `returning` whose bytes are
/// all the file's (see the module's comment). The pages put back so.
pub(crate) fn put_back(returning: &[Returning]) -> BTreeSet<u64> {
    let mut done = BTreeSet::new();
    if returning.is_empty() || WRITER.load(Relaxed) != std::process::id() || memory_locked() {
        return done;
    }
    let Ok(maps) = dprobe_sym::read_maps_of(std::process::id()) else { return done };
    let given: BTreeMap<u64, libc::c_int> = returning.iter().copied().collect();
    // Pages of a run already tried, put back or not: each run is compared once.
    let mut tried = BTreeSet::new();
    let mut flags = None;
    for &(page, prot) in returning {
        if tried.contains(&page) {
            continue;
        }
        let Some((lo, hi)) = run_around(&maps, &given, page, prot) else { continue };
        let (start, end) = (maps[lo].start.0, maps[hi].end.0);
        tried.extend(given.range(start..end).map(|(p, _)| *p));
        if end - start > MOST_BYTES {
            continue;
        }
        let Ok(file) = page_alias::open(&maps[lo]) else { continue };
        let offset = maps[lo].offset;
        // Compared now (a run where a probe is left is given up at once), and again just
        // before the move.
        if !within_file(&file, offset, end - start) || !copies_same_as_file(start, end - start, &file, offset) {
            continue;
        }
        // The flags then (reading them walks every area's pages), once for all runs.
        let flags = flags.get_or_insert_with(area_flags);
        let plain = |m: &Mapping| {
            flags
                .as_ref()
                .and_then(|f| f.get(&m.start.0))
                .is_some_and(|(vm, key)| *key == 0 && vm.split_whitespace().all(|f| PLAIN_FLAGS.contains(&f)))
        };
        if maps[lo..=hi].iter().all(plain) && map_over(&maps[lo..=hi], prot, &file) {
            done.extend(given.range(start..end).map(|(p, _)| *p));
        }
    }
    done
}

/// Map the file's part under `run` (areas that follow each other) with `prot` where the
/// kernel chooses, then move it over the run if the run's areas are still as they were and its
/// bytes the file's: whether it was.
fn map_over(run: &[Mapping], prot: libc::c_int, file: &File) -> bool {
    let (start, len, offset) = (run[0].start.0, run[run.len() - 1].end.0 - run[0].start.0, run[0].offset);
    // SAFETY: a new private mapping of an open file, where the kernel chooses: no existing
    // memory is affected.
    let fresh = unsafe {
        sys::raw_syscall6(
            libc::SYS_mmap,
            [0, len, prot as u64, libc::MAP_PRIVATE as u64, file.as_raw_fd() as u64, offset],
        )
    };
    if fresh < 0 {
        return false;
    }
    let now = dprobe_sym::read_maps_of(std::process::id()).unwrap_or_default();
    let unchanged = dprobe_sym::mapping_index(&now, Addr(start)).is_some_and(|i| now[i..].starts_with(run));
    // Last, as close to the move as can be (see the module's comment).
    let same_bytes = || copies_same_as_file(start, len, file, offset);
    // SAFETY: moves the mapping just made over the run, whose areas are as they were and
    // whose bytes were just found to be the file's (the registrar, which alone of dprobe
    // writes there, holds the engine's lock): every thread reads and runs the same bytes. The
    // kernel replaces the run under the address space's lock, as `mmap` with `MAP_FIXED` does.
    let moved = unchanged
        && same_bytes()
        && unsafe {
            sys::raw_syscall6(
                libc::SYS_mremap,
                [fresh as u64, len, len, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64, start, 0],
            )
        } == start as i64;
    if !moved {
        // SAFETY: unmaps the mapping made above, which nothing uses.
        unsafe { sys::raw_syscall6(libc::SYS_munmap, [fresh as u64, len, 0, 0, 0, 0]) };
    }
    moved
}

/// Whether the pages of `[start, start + len)` that are this process's own copies (see
/// [`private_copies`]) hold the bytes of `file` at `offset` onwards: the others do.
fn copies_same_as_file(start: u64, len: u64, file: &File, offset: u64) -> bool {
    let Some(copies) = private_copies(start, len) else { return false };
    // Pages that follow each other compared together.
    let mut i = 0;
    while i < copies.len() {
        let mut end = i + 1;
        while end < copies.len() && copies[end] == copies[end - 1] + PAGE {
            end += 1;
        }
        let (from, bytes) = (copies[i], (end - i) as u64 * PAGE);
        if !same_as_file(from, bytes, file, offset + (from - start)) {
            return false;
        }
        i = end;
    }
    true
}

/// The pages of `[start, start + len)` that are this process's own copies, from
/// `/proc/self/pagemap`: present or swapped out, and not a file's page. The others are the
/// file's page-cache pages, or not read from it yet: the file's bytes whatever they are.
/// `None` where it cannot be read.
fn private_copies(start: u64, len: u64) -> Option<Vec<u64>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE_PAGE: u64 = 1 << 61;
    let mut entries = vec![0u8; (len / PAGE) as usize * 8];
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    pagemap.read_exact_at(&mut entries, start / PAGE * 8).ok()?;
    let copy = |entry: u64| entry & (PRESENT | SWAPPED) != 0 && entry & FILE_PAGE == 0;
    let entries = entries.chunks_exact(8).map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")));
    Some((start..).step_by(PAGE as usize).zip(entries).filter(|&(_, e)| copy(e)).map(|(page, _)| page).collect())
}

/// Whether `len` bytes from `offset` lie in `file`'s pages (a mapped page wholly past its end
/// would raise `SIGBUS`).
fn within_file(file: &File, offset: u64, len: u64) -> bool {
    file.metadata().is_ok_and(|m| offset + len <= m.len().div_ceil(PAGE) * PAGE)
}

/// The run of areas around `page` that can be mapped again as one: the indices in `maps` of
/// its first and last areas. Each area maps the same file, privately, at the offset that continues
/// the one before, with protection `prot`, or is writable and holds only pages of `given`
/// that get `prot` back.
fn run_around(
    maps: &[Mapping],
    given: &BTreeMap<u64, libc::c_int>,
    page: u64,
    prot: libc::c_int,
) -> Option<(usize, usize)> {
    let i = dprobe_sym::mapping_index(maps, Addr(page))?;
    let home = &maps[i];
    let fits = |m: &Mapping| {
        let same_file = m.device == home.device && m.inode == home.inode && m.inode != 0 && !m.shared;
        let given_back = m.write && (m.start.0..m.end.0).step_by(PAGE as usize).all(|p| given.get(&p) == Some(&prot));
        same_file && (given_back || (!m.write && protection(m) == prot))
    };
    let follows = |a: &Mapping, b: &Mapping| a.end == b.start && a.offset + (a.end.0 - a.start.0) == b.offset;
    if !fits(home) {
        return None;
    }
    let (mut lo, mut hi) = (i, i);
    while lo > 0 && follows(&maps[lo - 1], &maps[lo]) && fits(&maps[lo - 1]) {
        lo -= 1;
    }
    while hi + 1 < maps.len() && follows(&maps[hi], &maps[hi + 1]) && fits(&maps[hi + 1]) {
        hi += 1;
    }
    Some((lo, hi))
}

/// The protection of `m` as `mprotect` takes it.
fn protection(m: &Mapping) -> libc::c_int {
    (if m.read { libc::PROT_READ } else { 0 })
        | (if m.write { libc::PROT_WRITE } else { 0 })
        | (if m.exec { libc::PROT_EXEC } else { 0 })
}

/// Whether the `len` bytes at `start` are the bytes of `file` at `offset` (zeros past its end,
/// as the kernel maps them).
fn same_as_file(start: u64, len: u64, file: &File, offset: u64) -> bool {
    const CHUNK: usize = 64 << 10;
    let size = CHUNK.min(len as usize);
    let (mut here, mut there) = (vec![0u8; size], vec![0u8; size]);
    let mut at = 0;
    while at < len {
        let n = CHUNK.min((len - at) as usize);
        if sys::read_memory(Addr(start + at), &mut here[..n]).is_err() {
            return false;
        }
        let mut read = 0;
        while read < n {
            match file.read_at(&mut there[read..n], offset + at + read as u64) {
                Ok(0) => break,
                Ok(k) => read += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        there[read..n].fill(0);
        if here[..n] != there[..n] {
            return false;
        }
        at += n as u64;
    }
    true
}

/// Each area's `VmFlags` and protection key by its start, from `/proc/self/smaps`.
fn area_flags() -> Option<BTreeMap<u64, (String, u32)>> {
    // (A path that is not UTF-8 is no reason to give up.)
    let smaps = std::fs::read("/proc/self/smaps").ok()?;
    let smaps = String::from_utf8_lossy(&smaps);
    let mut out = BTreeMap::new();
    let (mut start, mut key) = (None, 0);
    for line in smaps.lines() {
        if let Some(k) = line.strip_prefix("ProtectionKey:") {
            key = k.trim().parse().unwrap_or(u32::MAX);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            // The last line of an area's entry.
            out.insert(start.take()?, (flags.trim().to_owned(), key));
            key = 0;
        } else if let Some((s, _)) = line.split_once('-').filter(|(s, _)| !s.contains(':')) {
            if let Ok(s) = u64::from_str_radix(s, 16) {
                start = Some(s);
            }
        }
    }
    Some(out)
}

/// Whether this process has memory locked (`VmLck` in its status), or it cannot be known.
fn memory_locked() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return true };
    let locked = status.lines().find_map(|l| l.strip_prefix("VmLck:")).map(|v| v.trim().trim_end_matches("kB").trim());
    locked.is_none_or(|kb| kb != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(start: u64, end: u64, perms: &str, offset: u64, inode: u64) -> Mapping {
        let line = format!("{start:x}-{end:x} {perms} {offset:08x} fe:00 {inode} /lib/x.so");
        dprobe_sym::parse_maps(&line).remove(0)
    }

    #[test]
    fn a_run_spans_the_split_code_of_one_file_and_stops_elsewhere() {
        let rx = libc::PROT_READ | libc::PROT_EXEC;
        let maps = [
            area(0x1000, 0x3000, "r--p", 0, 7),
            area(0x3000, 0x5000, "r-xp", 0x2000, 7),
            area(0x5000, 0x6000, "rwxp", 0x4000, 7),
            area(0x6000, 0x9000, "r-xp", 0x5000, 7),
            area(0x9000, 0xa000, "rwxp", 0x8000, 7),
            area(0xa000, 0xb000, "r-xp", 0x9000, 8),
        ];
        let given = BTreeMap::from([(0x5000, rx)]);
        assert_eq!(run_around(&maps, &given, 0x5000, rx), Some((1, 3)), "up to a page still held");
        let both = BTreeMap::from([(0x5000, rx), (0x9000, rx)]);
        assert_eq!(run_around(&maps, &both, 0x5000, rx), Some((1, 4)), "up to another file");
        assert_eq!(run_around(&maps, &given, 0x9000, rx), None, "a page not given back");
        let gap = [area(0x3000, 0x5000, "r-xp", 0x2000, 7), area(0x5000, 0x6000, "rwxp", 0x5000, 7)];
        assert_eq!(run_around(&gap, &given, 0x5000, rx), Some((1, 1)), "offsets that do not follow");
        let shared = [area(0x5000, 0x6000, "rwxs", 0x4000, 7)];
        assert_eq!(run_around(&shared, &given, 0x5000, rx), None, "never a shared mapping");
        let other = BTreeMap::from([(0x5000, libc::PROT_READ)]);
        assert_eq!(run_around(&maps, &other, 0x5000, rx), None, "a page that gets another protection back");
    }

    #[test]
    fn smaps_flags_are_read_by_area() {
        // Other tests of this process replace code pages meanwhile, which splits and joins areas:
        // the two files are read until they agree on the area of this code.
        let here = Addr(same_as_file as *const () as u64);
        let (flags, start) = (0..100)
            .find_map(|_| {
                let flags = area_flags()?;
                let code = dprobe_sym::read_maps_of(std::process::id()).ok()?;
                let start = code.iter().find(|m| m.contains(here))?.start.0;
                flags.contains_key(&start).then_some((flags, start))
            })
            .expect("smaps and maps never agreed on this code's area");
        assert!(flags[&start].0.split_whitespace().any(|f| f == "ex"), "{flags:?}");
        assert_eq!(flags[&start].1, 0, "no protection key");
    }
}
