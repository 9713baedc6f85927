//! A thread's word for counts that several processes add to (`dprobe_core::HitCount::add_by`
//! on memory that a program and its forked children share, the agent's counts).
//!
//! A count's stripe is kept by the word that claimed it, for good: the word must be one no
//! other live thread of any of those processes has, and should be one later threads have
//! again (a stripe kept by a word no thread will have is lost to them). The thread's state
//! entry does both in one process (entries are given to later threads), but a forked child's
//! thread keeps its parent's entry, and a child made by a raw `fork` or `clone` system call
//! runs none of the C library's fork handlers. So the word is the process id and the entry's
//! index: the process id comes from a page the kernel zeroes in every child
//! (`MADV_WIPEONFORK`), which tells a child, however it was made, that it must ask again.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*};

use crate::{sys, thread_state};

/// The word holding this process's id (0: not asked yet, or a child of a fork since), in a
/// page of its own that children get zeroed; null where that page could not be had.
static PID_WORD: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

/// Map the page (once, with the thread state table; not on the hit path).
pub(crate) fn prepare() {
    if !PID_WORD.load(Acquire).is_null() {
        return;
    }
    let page = 4096;
    // SAFETY: a new private anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return;
    }
    // SAFETY: the mapping just made, ours; MADV_WIPEONFORK changes only what a child sees.
    if unsafe { libc::madvise(p, page, libc::MADV_WIPEONFORK) } != 0 {
        // A kernel before 4.14: no key (counts take their shared words, exact).
        // SAFETY: the mapping just made, which nothing else knows.
        unsafe { libc::munmap(p, page) };
        return;
    }
    PID_WORD.store(p.cast(), Release);
}

/// The calling thread's word for counts shared with other processes (see the module's
/// comment): its process id << 32 | its state entry's index + 1; 0 (the count's shared
/// words) for a thread without an entry, or where the page could not be had.
/// Async-signal-safe: loads, and one `getpid` in each process.
pub fn count_key() -> u64 {
    let word = PID_WORD.load(Acquire);
    let Some(index) = thread_state::existing_index().filter(|_| !word.is_null()) else { return 0 };
    // SAFETY: a word of the page `prepare` mapped, never unmapped once published.
    let word = unsafe { &*word };
    let pid = match word.load(Relaxed) {
        // Asked again in each process: threads that race store the same value.
        0 => {
            let pid = sys::own_pid() as u64;
            word.store(pid, Relaxed);
            pid
        }
        pid => pid,
    };
    pid << 32 | (index as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_have_keys_of_their_own_and_a_forked_child_another_one() {
        thread_state::init();
        assert!(thread_state::current().is_some(), "an entry");
        let mine = count_key();
        assert_eq!(mine >> 32, std::process::id() as u64, "the process id");
        assert_ne!(mine & 0xffff_ffff, 0, "an entry's index");
        assert_eq!(count_key(), mine, "the same key again");
        let theirs = std::thread::spawn(|| {
            thread_state::current();
            count_key()
        })
        .join()
        .unwrap();
        assert_ne!(theirs, mine);
        let (mut pipe, mut read) = ([0; 2], [0u8; 8]);
        // SAFETY: a pipe; the child writes its key there and leaves with `_exit`, running no
        // code of the harness's; the parent reads it and waits for the child. A raw fork
        // system call: the C library's fork handlers do not run.
        unsafe {
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            let child = libc::syscall(libc::SYS_fork) as libc::pid_t;
            if child == 0 {
                let key = count_key().to_le_bytes();
                libc::write(pipe[1], key.as_ptr().cast(), 8);
                libc::_exit(0);
            }
            assert!(child > 0, "fork");
            assert_eq!(libc::read(pipe[0], read.as_mut_ptr().cast(), 8), 8);
            libc::waitpid(child, std::ptr::null_mut(), 0);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
            let key = u64::from_le_bytes(read);
            assert_eq!(
                (key >> 32, key & 0xffff_ffff),
                (child as u64, mine & 0xffff_ffff),
                "the child's pid, the same entry"
            );
        }
    }
}
