//! The agent's own `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`.
//!
//! The agent runs inside the traced program, and its code (Rust's, and the compiler's copies
//! of structures) calls these functions all the time: to place probes, to write events, in
//! its handlers. Taken from the C library, they are the program's functions, which the user
//! may probe, and some of their probes stay on `int3` (glibc's `mempcpy` jumps into the first
//! bytes of `memcpy`'s implementation, where a jump cannot go): every call the agent made
//! then trapped, about three microseconds for nothing, as dprobe's own calls count nothing.
//! Placing `libc:*` took 88,000 such traps.
//!
//! The agent's library is linked with `--wrap` for each (see `build.rs`): its references to
//! `memcpy` go to `__wrap_memcpy` here, and the program's own calls are untouched. Each is a
//! string instruction (`rep movsb`, fast on the processors with ERMS/FSRM this runs on) or a
//! plain loop the compiler does not turn back into a call.

use std::arch::asm;

/// See the module's documentation.
///
/// # Safety
///
/// `memcpy`'s contract: `src` readable and `dst` writable for `n` bytes, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn __wrap_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; the direction flag is clear at a call (the ABI).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// See the module's documentation.
///
/// # Safety
///
/// `memmove`'s contract: `src` readable and `dst` writable for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn __wrap_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // Below the source, or past its end: a forward copy reads each byte before it is
        // overwritten.
        // SAFETY: the caller's contract, as above.
        unsafe { __wrap_memcpy(dst, src, n) };
    } else {
        // Inside the source, above its start: copied from the end down.
        // SAFETY: the caller's contract; the last bytes of both are within them (n > 0 here,
        // as the distance is below n); the direction flag is set for the copy alone.
        unsafe {
            asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dst
}

/// See the module's documentation.
///
/// # Safety
///
/// `memset`'s contract: `dst` writable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn __wrap_memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; the direction flag is clear at a call.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// See the module's documentation.
///
/// # Safety
///
/// `memcmp`'s contract: `a` and `b` readable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn __wrap_memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    // Eight bytes at a time while they are equal; the first difference is found byte by byte.
    while i + 8 <= n {
        // SAFETY: within the first n bytes of both (the caller's contract).
        let (x, y) = unsafe { (a.add(i).cast::<u64>().read_unaligned(), b.add(i).cast::<u64>().read_unaligned()) };
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n {
        // SAFETY: as above.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// See the module's documentation.
///
/// # Safety
///
/// `bcmp`'s contract: `a` and `b` readable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn __wrap_bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { __wrap_memcmp(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_moves_sets_and_compares_as_the_c_library_does() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 255, 300] {
            let mut dst = vec![0u8; 300];
            // SAFETY: both hold 300 bytes.
            assert_eq!(unsafe { __wrap_memcpy(dst.as_mut_ptr(), src.as_ptr(), n) }, dst.as_mut_ptr());
            assert_eq!(&dst[..n], &src[..n]);
            assert!(dst[n..].iter().all(|&b| b == 0), "nothing past n");
            // SAFETY: as above.
            unsafe { __wrap_memset(dst.as_mut_ptr(), 0x1ab, n) };
            assert!(dst[..n].iter().all(|&b| b == 0xab));
        }
        // Overlapping moves, both ways, against a copy made through a second buffer.
        for (from, to, n) in [(0, 5, 200), (5, 0, 200), (10, 11, 100), (11, 10, 100), (3, 3, 50), (0, 100, 100)] {
            let mut buf = src.clone();
            let mut expected = src.clone();
            expected[to..to + n].copy_from_slice(&src[from..from + n]);
            let p = buf.as_mut_ptr();
            // SAFETY: both ranges lie in the 300 bytes of `buf`.
            unsafe { __wrap_memmove(p.add(to), p.add(from), n) };
            assert_eq!(buf, expected, "move {n} bytes from {from} to {to}");
        }
        let cmp = |a: &[u8], b: &[u8]| {
            // SAFETY: both hold at least the shorter length.
            let (ours, theirs) = unsafe {
                let n = a.len().min(b.len());
                (__wrap_memcmp(a.as_ptr(), b.as_ptr(), n), libc::memcmp(a.as_ptr().cast(), b.as_ptr().cast(), n))
            };
            assert_eq!(ours.signum(), theirs.signum(), "{a:?} {b:?}");
            // SAFETY: as above.
            let bcmp = unsafe { __wrap_bcmp(a.as_ptr(), b.as_ptr(), a.len().min(b.len())) };
            assert_eq!(bcmp == 0, theirs == 0);
        };
        cmp(b"", b"");
        cmp(b"abcdefghij", b"abcdefghij");
        cmp(b"abcdefghij", b"abcdefghiz");
        cmp(b"abcdefgh-rest", b"abcdefgX-rest");
        cmp(&[0xff, 1], &[0x01, 1]);
        cmp(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 0x80], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 0x7f]);
    }
}
