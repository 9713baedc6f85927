//! Memory for tables that grow on the hit path: anonymous mappings made and unmade with the
//! `mmap` and `munmap` system calls themselves. Both are async-signal-safe and take no lock
//! (unlike `malloc`), and going around the C library's wrappers keeps them safe from a probe
//! placed on those.

use std::ptr::NonNull;

use crate::sys;

/// `bytes` of fresh zeroed memory, readable and writable, or `None` when the kernel has none
/// to give (`ENOMEM`, an address-space limit).
pub(crate) fn map_zeroed(bytes: usize) -> Option<NonNull<u8>> {
    if bytes == 0 {
        return None;
    }
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    // SAFETY: a new private anonymous mapping at an address the kernel picks; nothing of the
    // process is touched.
    let p = unsafe { sys::raw_syscall6(libc::SYS_mmap, [0, bytes as u64, prot, flags, u64::MAX, 0]) };
    // The kernel returns -errno (in the last page of the address space) on failure.
    if (-4095..0).contains(&p) {
        return None;
    }
    NonNull::new(p as *mut u8)
}

/// Give back a mapping [`map_zeroed`] made.
///
/// # Safety
/// `p` and `bytes` are those of a mapping made by [`map_zeroed`], not unmapped yet, and
/// nothing will use it again.
pub(crate) unsafe fn unmap(p: NonNull<u8>, bytes: usize) {
    // SAFETY: the caller vouches that the range is one of ours and unused.
    unsafe { sys::raw_syscall6(libc::SYS_munmap, [p.as_ptr() as u64, bytes as u64, 0, 0, 0, 0]) };
}
