//! How far above a stack pointer a safepoint's signal handler may read its thread's stack.
//!
//! The safepoint lists the process's stack-like mappings once, as it starts (`Plan::stacks`),
//! and its handler, in each thread, reads from the interrupted stack pointer up to the end of
//! the listed mapping holding it. In a program that starts and ends threads all the time, the
//! list is out of date by the time a thread answers: a thread started since may have its stack
//! where a larger mapping was listed, and the handler read past its stack's end into memory
//! no longer mapped (`SIGSEGV` in the program: the agent attached again and again to a program
//! that starts and joins threads killed it at the 14th, 20th and 48th attach). So where the
//! thread's own thread pointer lies between the stack pointer and the listed end (the C library
//! keeps a thread's control block at the top of the mapping it gives the thread's stack), the
//! end is the thread pointer: the thread's own block, which no other thread unmaps (an anonymous
//! mapping the kernel merged into it, above, may be). Elsewhere it is the nearer of the listed
//! end and that of the mapping holding the stack pointer now (asked of the kernel,
//! `stack_mappings::readable_mapping_of`: a mapping that cannot be read is not read).

use crate::stack_mappings::readable_mapping_of;
use crate::sys::raw_syscall6;

/// `arch_prctl`'s request for the `fs` base: the thread pointer.
const ARCH_GET_FS: u64 = 0x1003;

/// Where reading the stack holding `sp`, listed as `listed` (`[start, end)`), must stop; `None`
/// where no readable mapping holds `sp` now. Async-signal-safe: system calls made by the
/// `syscall` instruction, no allocation, no lock; and no file opened for a thread the C library
/// started (every thread of the program answers a safepoint at once, and a descriptor of
/// dprobe's in the program's table could meet the program's own `close_range`, or be taken for
/// one of its own once closed there).
pub(crate) fn readable_end(sp: u64, listed: Option<(u64, u64)>) -> Option<u64> {
    let (_, listed_end) = listed?;
    let tp = thread_pointer();
    if sp < tp && tp < listed_end {
        return Some(tp);
    }
    match readable_mapping_of(sp) {
        Ok(Some((_, now))) => Some(listed_end.min(now)),
        Ok(None) => None,
        // No `/proc` to ask (a sandbox): the listed end, as the safepoint found it.
        Err(_) => Some(listed_end),
    }
}

/// This thread's `fs` base (0 where the kernel does not say).
fn thread_pointer() -> u64 {
    let mut tp = 0u64;
    // SAFETY: ARCH_GET_FS writes the thread's fs base into the u64 it is given, on this frame.
    let ret = unsafe { raw_syscall6(libc::SYS_arch_prctl, [ARCH_GET_FS, &mut tp as *mut u64 as u64, 0, 0, 0, 0]) };
    if ret == 0 {
        tp
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's stack is read up to its thread pointer, below the listed end and below the
    /// end of its mapping; a listed range larger than the mapping now is cut at the mapping's
    /// end; an unreadable one is not read.
    #[test]
    fn the_end_is_the_nearest_of_the_listed_one_the_mappings_and_the_thread_pointer() {
        std::thread::spawn(|| {
            let local = 0u64;
            let sp = &local as *const u64 as u64;
            let (start, end) = readable_mapping_of(sp).unwrap().unwrap();
            let tp = thread_pointer();
            assert!(sp < tp && tp < end, "a thread's control block tops its stack: {sp:x} {tp:x} {end:x}");
            assert_eq!(readable_end(sp, Some((start, end + (1 << 20)))), Some(tp));
            assert_eq!(readable_end(sp, None), None);
        })
        .join()
        .unwrap();
        // A mapping listed whole, its last page unmapped since: read up to that page only
        // (on this thread, whose thread pointer lies elsewhere).
        let pages = crate::mapped::map_zeroed(3 * 4096).unwrap();
        let at = pages.as_ptr() as u64;
        // SAFETY: the last page of the mapping made just above, unused.
        unsafe { crate::mapped::unmap(std::ptr::NonNull::new((at + 2 * 4096) as *mut u8).unwrap(), 4096) };
        assert_eq!(readable_end(at + 100, Some((at, at + 3 * 4096))), Some(at + 2 * 4096));
        // A page that cannot be read is not read (a stack pointer a stale frame saved may
        // point into a guard page).
        // SAFETY: the first page of that mapping, unused.
        assert_eq!(unsafe { libc::mprotect(at as *mut libc::c_void, 4096, libc::PROT_NONE) }, 0);
        assert_eq!(readable_end(at + 100, Some((at, at + 3 * 4096))), None);
        // Where nothing is mapped now, however it was listed.
        // SAFETY: the rest of that mapping, unused.
        unsafe { crate::mapped::unmap(pages, 2 * 4096) };
        assert_eq!(readable_end(at + 100, Some((at, at + 3 * 4096))), None);
    }
}
