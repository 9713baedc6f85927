//! The files dprobe keeps open inside a traced program: out of the program's way, and never
//! taken for the program's.
//!
//! # Why
//!
//! A program expects the descriptors it did not open to be free: its first `open` returns 3
//! untraced, a shell script's `exec 3<file` replaces whatever is at 3, a daemon closes every
//! descriptor it inherited (`close_range(3, ~0U)`) and opens its own files, which then get
//! the numbers dprobe's had. So dprobe's long-lived descriptors (the engine's
//! `/proc/self/mem`, the agent's connection where its thread shares the program's table) are
//! moved above the soft
//! limit on open files where the hard limit leaves room, else to numbers near the top of the
//! usual 1,024 ([`keep_high`]), and each is known by its file's identity
//! (device and inode, [`FileId`]): before dprobe writes through one, it checks that the number
//! still names the file it opened. A number the program closed, or closed and opened again
//! for one of its own files, is left alone (closing it would close the program's file;
//! writing to it would write code bytes into it): dprobe opens its file again, or, for a
//! connection, ends its session.
//!
//! A check and the use after it are two system calls: a program that closes the descriptor
//! and opens a file in between, from another thread, is not caught. Everything here is a raw
//! system call: it runs while the C library's functions may be probed on `int3`.
//!
//! A tool's own thread inside the program (the agent's) does better: it takes a descriptor
//! table of its own ([`PrivateTable`]). What it opens is then never among the program's
//! descriptors, whatever number it gets, and nothing the program closes is its.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::*};

use crate::sys::{own_tid, raw_syscall6};

/// A file's identity: its device and inode, as `fstat` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file `fd` names, if it names one. Async-signal-safe.
    pub fn of(fd: i32) -> Option<FileId> {
        // SAFETY: a plain struct of integers, filled by the kernel below.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes the `stat` it is given, which lives for the call.
        let rc = unsafe { raw_syscall6(libc::SYS_fstat, [fd as u64, &mut st as *mut libc::stat as u64, 0, 0, 0, 0]) };
        (rc == 0).then_some(FileId { dev: st.st_dev, ino: st.st_ino })
    }

    /// Whether `fd` names this file still. Async-signal-safe.
    pub fn is(&self, fd: i32) -> bool {
        FileId::of(fd) == Some(*self)
    }
}

/// A [`FileId`] other threads read: set before the descriptor it names is published.
pub struct AtomicFileId {
    dev: AtomicU64,
    ino: AtomicU64,
}

impl AtomicFileId {
    /// No file yet (no descriptor names it).
    pub const fn new() -> AtomicFileId {
        AtomicFileId { dev: AtomicU64::new(u64::MAX), ino: AtomicU64::new(u64::MAX) }
    }

    /// Set the identity, before the descriptor it names is published.
    pub fn store(&self, id: FileId) {
        self.dev.store(id.dev, Release);
        self.ino.store(id.ino, Release);
    }

    /// Whether `fd` names the file stored last. Async-signal-safe.
    pub fn is(&self, fd: i32) -> bool {
        FileId { dev: self.dev.load(Acquire), ino: self.ino.load(Acquire) }.is(fd)
    }
}

impl Default for AtomicFileId {
    fn default() -> Self {
        AtomicFileId::new()
    }
}

/// The soft and hard limits on open files (`u64::MAX` for a limit that cannot be read).
fn limits() -> (u64, u64) {
    let mut limit = libc::rlimit64 { rlim_cur: u64::MAX, rlim_max: u64::MAX };
    // SAFETY: prlimit64 of this process, reading only: it writes the `rlimit64` it is given.
    let rc = unsafe {
        raw_syscall6(
            libc::SYS_prlimit64,
            [0, libc::RLIMIT_NOFILE as u64, 0, &mut limit as *mut libc::rlimit64 as u64, 0, 0],
        )
    };
    if rc == 0 {
        (limit.rlim_cur, limit.rlim_max)
    } else {
        (u64::MAX, u64::MAX)
    }
}

/// Set the soft limit on open files to `soft`, the hard one left at `hard`; whether it was.
fn set_soft_limit(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit64 { rlim_cur: soft, rlim_max: hard };
    // SAFETY: prlimit64 of this process: it reads the `rlimit64` it is given.
    let rc = unsafe {
        raw_syscall6(
            libc::SYS_prlimit64,
            [0, libc::RLIMIT_NOFILE as u64, &limit as *const libc::rlimit64 as u64, 0, 0, 0],
        )
    };
    rc == 0
}

/// Move descriptor `fd` (dprobe's, closed at `exec`) out of the program's way, closing `fd`:
/// the new number, or `fd` itself where it cannot be moved.
///
/// Where the hard limit on open files leaves room ([`dprobe_core::raised_soft_limit`]), to
/// the first free number at or above the soft limit, raised for the moment and put back:
/// the program's own descriptors never reach those numbers, so it opens as many files as it
/// does untraced. A program thread that changes the limit in that moment has its change
/// undone. Elsewhere, to the first free number from [`dprobe_core::high_descriptor_floor`],
/// under the soft limit.
pub fn keep_high(fd: i32) -> i32 {
    if in_private_table() {
        // No number of this table is the program's.
        return fd;
    }
    let (soft, hard) = limits();
    if fd < 0 || fd as u64 >= soft {
        return fd;
    }
    let floor = dprobe_core::high_descriptor_floor(soft);
    let high = match dprobe_core::raised_soft_limit(soft, hard) {
        Some(raised) if set_soft_limit(raised, hard) => {
            let high = duplicate_from(fd, soft);
            set_soft_limit(soft, hard);
            high
        }
        _ if fd as u64 >= floor => return fd,
        _ => duplicate_from(fd, floor),
    };
    if high < 0 {
        return fd;
    }
    close(fd);
    high as i32
}

/// A duplicate of `fd`, closed at `exec`, at the first free number from `from` (negative: the
/// kernel's error).
fn duplicate_from(fd: i32, from: u64) -> i64 {
    // SAFETY: duplicates a descriptor of dprobe's; the kernel checks the rest.
    unsafe { raw_syscall6(libc::SYS_fcntl, [fd as u64, libc::F_DUPFD_CLOEXEC as u64, from, 0, 0, 0]) }
}

/// Close descriptor `fd`, dprobe's own.
pub fn close(fd: i32) {
    // SAFETY: closes a descriptor the caller owns.
    unsafe { raw_syscall6(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) };
}

/// Close `fd` if it still names the file `id` (dprobe's); otherwise it is the program's now,
/// and stays open.
pub fn close_if_ours(fd: i32, id: FileId) {
    if id.is(fd) {
        close(fd);
    }
}

/// The thread whose descriptor table is its own (0: none). Threads that reach dprobe's code
/// from the program's table (a hit's, a forked child's) see it is not theirs.
static PRIVATE_TID: AtomicI32 = AtomicI32::new(0);

/// While it lives, the calling thread has a descriptor table of its own
/// (`unshare(CLONE_FILES)`), which held none of the program's descriptors from the start:
/// what the thread opens takes no number of the program's, even for a moment; a program
/// that closes every descriptor it did not open (`close_range(3, ~0U)`, or each number
/// `/proc/self/fd` lists) closes none of the thread's, which the program does not see; a
/// child it forks inherits none. One thread at a time (the agent's; the next session's may
/// take it while the last one's thread ends).
pub struct PrivateTable(());

impl PrivateTable {
    /// Give the calling thread its own table: a copy of the program's, whose copies of the
    /// program's descriptors are closed at once (closing a copy leaves the program's own
    /// open, its `fcntl` locks included: those belong to the table that took them). Numbers
    /// 0 to 2 then name a file that takes nothing written to it, so that whatever dprobe's
    /// code would print (a panic's message) lands in none of the thread's files. None where
    /// the kernel refuses (a seccomp filter): the thread then shares the program's table, as
    /// before.
    pub fn take() -> Option<PrivateTable> {
        // SAFETY: unshare of the calling thread's descriptor table alone: the program's
        // table and descriptors are untouched.
        let rc = unsafe { raw_syscall6(libc::SYS_unshare, [libc::CLONE_FILES as u64, 0, 0, 0, 0, 0]) };
        if rc != 0 {
            return None;
        }
        close_every_descriptor();
        fill_standard_numbers();
        PRIVATE_TID.store(own_tid(), Release);
        Some(PrivateTable(()))
    }
}

impl Drop for PrivateTable {
    fn drop(&mut self) {
        // Before the thread ends: its id may be a program thread's next. Not another's (the
        // next session's agent thread may have started already).
        let _ = PRIVATE_TID.compare_exchange(own_tid(), 0, AcqRel, Acquire);
    }
}

/// Whether the calling thread has a table of its own ([`PrivateTable`]).
pub fn in_private_table() -> bool {
    PRIVATE_TID.load(Acquire) == own_tid()
}

/// Close every descriptor of the calling thread's table (a private one, just copied).
fn close_every_descriptor() {
    // SAFETY: closes descriptors of the calling thread's own table.
    let rc = unsafe { raw_syscall6(libc::SYS_close_range, [0, u64::from(u32::MAX), 0, 0, 0, 0]) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: each number the table lists (the listing's own descriptor, closed
    // before, among them).
    let listed: Vec<i32> = std::fs::read_dir("/proc/thread-self/fd")
        .map(|dir| dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    listed.into_iter().for_each(close);
}

/// Numbers 0, 1 and 2 of an empty table given to an event counter, which refuses text.
fn fill_standard_numbers() {
    // SAFETY: creates a descriptor in the calling thread's own table.
    let fd = unsafe { raw_syscall6(libc::SYS_eventfd2, [0, libc::EFD_CLOEXEC as u64, 0, 0, 0, 0]) };
    for number in 1..=2 {
        if fd == 0 {
            // SAFETY: duplicates the descriptor just made onto a free number of the table.
            unsafe { raw_syscall6(libc::SYS_dup3, [0, number, libc::O_CLOEXEC as u64, 0, 0, 0]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that read or change the limits on open files (the process's own).
    static LIMITS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn open_null() -> i32 {
        // SAFETY: opens a file by a NUL-terminated path.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }
    }

    #[test]
    fn a_descriptor_kept_high_is_out_of_the_programs_way_and_the_low_number_is_free_again() {
        let _limits = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
        let (soft, hard) = limits();
        let low = open_null();
        let high = keep_high(low);
        let from = match dprobe_core::raised_soft_limit(soft, hard) {
            Some(_) => soft,
            None => dprobe_core::high_descriptor_floor(soft),
        };
        assert!(high as u64 >= from && high != low, "{low} -> {high} (limits {soft}, {hard})");
        assert_eq!(limits(), (soft, hard), "the limits put back");
        assert!(FileId::of(low).is_none(), "the low number was closed");
        assert!(FileId::of(high).is_some());
        // SAFETY: the descriptor's flags, read.
        assert_ne!(unsafe { libc::fcntl(high, libc::F_GETFD) } & libc::FD_CLOEXEC, 0, "closed at exec");
        close(high);
    }

    #[test]
    fn a_number_the_program_reused_is_not_taken_for_dprobes_file() {
        let _limits = LIMITS.lock().unwrap_or_else(|e| e.into_inner());
        let ours = keep_high(open_null());
        let id = FileId::of(ours).unwrap();
        assert!(id.is(ours));
        // The program closes it and a file of its own gets the number (its soft limit raised
        // first, where dprobe's number is above it).
        let (soft, hard) = limits();
        assert!(set_soft_limit(hard, hard));
        close(ours);
        assert!(!id.is(ours));
        // SAFETY: opens a file by a NUL-terminated path, duplicated onto the number.
        let programs = unsafe { libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY) };
        // SAFETY: dup2 of a descriptor this test owns.
        assert_eq!(unsafe { libc::dup2(programs, ours) }, ours);
        assert!(!id.is(ours));
        assert!(set_soft_limit(soft, hard));
        close_if_ours(ours, id);
        assert!(FileId::of(ours).is_some(), "the program's file is left open");
        close(ours);
        close(programs);
    }

    fn new_memory_file() -> i32 {
        // SAFETY: creates a descriptor by a NUL-terminated name.
        unsafe { libc::memfd_create(c"dprobe-own-files-test".as_ptr(), libc::MFD_CLOEXEC) }
    }

    #[test]
    fn a_thread_with_a_table_of_its_own_and_the_program_see_none_of_each_others_descriptors() {
        let programs = new_memory_file();
        let programs_id = FileId::of(programs).unwrap();
        let (opened, go_on) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let thread = std::thread::spawn(move || {
            let table = PrivateTable::take().expect("the kernel gives a thread its own table");
            assert!(in_private_table());
            assert!(!programs_id.is(programs), "the program's descriptor is not in the thread's table");
            assert!((0..=2).all(|n| FileId::of(n).is_some()), "0 to 2 are taken");
            let own = new_memory_file();
            assert_eq!(own, 3, "the lowest free number of the thread's table");
            assert_eq!(keep_high(own), own, "no number of the table is the program's");
            opened.0.send((own, FileId::of(own).unwrap())).unwrap();
            go_on.1.recv().unwrap();
            drop(table);
            assert!(!in_private_table());
        });
        let (own, id) = opened.1.recv().unwrap();
        assert!(!in_private_table());
        assert!(!id.is(own), "the thread's file is not in the program's table");
        assert!(programs_id.is(programs), "the program's descriptor is open");
        go_on.0.send(()).unwrap();
        thread.join().unwrap();
        close(programs);
    }
}
