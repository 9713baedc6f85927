//! Probes on the C library's `memcpy`, `memmove` and `memset`, which dprobe's own hit path
//! may call: the program keeps running, its results are right, and every one of its calls is
//! counted once. A hit from inside dprobe (its handlers' machinery copying registers, the
//! registrar writing the jump) runs no handler: it is never taken for the program's.
//!
//! The handlers count only the calls whose destination lies in this test's buffers (the
//! process's other threads call these functions too), so the counts asserted are exact: each
//! probe sees exactly the test's calls of the functions that share its address (`memcpy` and
//! `memmove` are often one implementation).
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Addr, Kprobe, PreAction};

const THREADS: usize = 4;
const CALLS: usize = 20_000;
/// Bytes of one thread's buffer in one region.
const CHUNK: usize = 256;
/// The regions of the test's buffers: what `memcpy`, `memmove` and `memset` write to.
const REGIONS: usize = 3;

type CopyFn = unsafe extern "C" fn(*mut libc::c_void, *const libc::c_void, usize) -> *mut libc::c_void;
type FillFn = unsafe extern "C" fn(*mut libc::c_void, libc::c_int, usize) -> *mut libc::c_void;

static BASE: AtomicU64 = AtomicU64::new(0);
/// `COUNTS[probe][region]`: the probe's hits whose destination is in that region.
static COUNTS: [[AtomicU64; REGIONS]; REGIONS] = [const { [const { AtomicU64::new(0) }; REGIONS] }; REGIONS];

fn region_of(dst: u64) -> Option<usize> {
    let base = BASE.load(Relaxed);
    let size = (THREADS * CHUNK) as u64;
    (dst >= base && dst < base + REGIONS as u64 * size).then(|| ((dst - base) / size) as usize)
}

fn code_bytes(at: usize) -> [u8; 16] {
    // SAFETY: `at` is the start of a C library function: 16 bytes of mapped code.
    std::array::from_fn(|i| unsafe { std::ptr::read_volatile((at + i) as *const u8) })
}

/// One thread's calls: `memcpy` into region 0, `memmove` (overlapping) in region 1, `memset`
/// in region 2, each checked.
fn calls(t: usize, memcpy: CopyFn, memmove: CopyFn, memset: FillFn) {
    let base = BASE.load(Relaxed) as usize;
    let chunk = |r: usize| (base + (r * THREADS + t) * CHUNK) as *mut u8;
    let src: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + t) as u8).collect();
    for i in 0..CALLS {
        let n = 1 + i % 120;
        // SAFETY: each chunk is CHUNK bytes of this thread's own, and n + 8 < CHUNK.
        unsafe {
            memcpy(chunk(0).cast(), src.as_ptr().cast(), n);
            assert_eq!(std::slice::from_raw_parts(chunk(0), n), &src[..n], "memcpy of {n} bytes");
            // Byte by byte: a copy the compiler made would be a `memcpy` into region 1.
            for (k, &b) in src[..n + 8].iter().enumerate() {
                std::ptr::write_volatile(chunk(1).add(k), b);
            }
            memmove(chunk(1).add(8).cast(), chunk(1).cast(), n);
            assert_eq!(std::slice::from_raw_parts(chunk(1).add(8), n), &src[..n], "memmove of {n} bytes");
            memset(chunk(2).cast(), (i % 251) as libc::c_int, n);
            assert!(std::slice::from_raw_parts(chunk(2), n).iter().all(|&b| b == (i % 251) as u8), "memset");
        }
    }
}

#[test]
fn the_c_librarys_memcpy_memmove_and_memset_probed_in_process() {
    let buffers: &'static mut [u8] = Box::leak(vec![0u8; REGIONS * THREADS * CHUNK].into_boxed_slice());
    BASE.store(buffers.as_mut_ptr() as u64, Relaxed);
    // What the process's own calls reach: for an indirect function (IFUNC) the dynamic linker
    // resolved the address to the implementation it chose, and a probe on the name must land
    // there. The probes stay on `int3` (the trap path, whose nested hits are the point here;
    // glibc's `mempcpy` also branches into the first bytes of `memcpy`'s implementation, which
    // a jump would cover).
    let names = ["memcpy", "memmove", "memset"];
    let targets =
        [libc::memcpy as *const () as usize, libc::memmove as *const () as usize, libc::memset as *const () as usize];
    let before = targets.map(code_bytes);
    let probes: Vec<_> = (0..REGIONS)
        .map(|p| {
            register(Kprobe::symbol(names[p]).no_optimize().pre(move |regs| {
                if let Some(r) = region_of(regs.rdi) {
                    COUNTS[p][r].fetch_add(1, Relaxed);
                }
                PreAction::Continue
            }))
            .unwrap()
        })
        .collect();
    for (p, probe) in probes.iter().enumerate() {
        assert_eq!(probe.addr(), Addr(targets[p] as u64), "`{}` probed where the process's calls go", names[p]);
    }

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let memcpy: CopyFn = black_box(libc::memcpy);
                let memmove: CopyFn = black_box(libc::memmove);
                let memset: FillFn = black_box(libc::memset);
                calls(t, memcpy, memmove, memset)
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    let hits: Vec<u64> = probes.iter().map(|p| p.hits()).collect();
    for p in probes {
        p.unregister().unwrap();
    }
    let per_region = (THREADS * CALLS) as u64;
    for (p, row) in COUNTS.iter().enumerate() {
        let seen: Vec<u64> = row.iter().map(|c| c.load(Relaxed)).collect();
        let want: Vec<u64> = (0..REGIONS).map(|r| if targets[r] == targets[p] { per_region } else { 0 }).collect();
        assert_eq!(seen, want, "the test's calls seen by the probe on function {p} (at {:#x})", targets[p]);
        let own: u64 = want.iter().sum();
        assert!(hits[p] >= own, "probe {p}: {} hits, fewer than the test's {own} calls", hits[p]);
    }
    assert_eq!(targets.map(code_bytes), before, "the functions' bytes are back after unregistering");
    // The functions still work unprobed.
    let mut out = [0u8; 5];
    // SAFETY: 5 bytes from a 5-byte literal into a 5-byte array.
    unsafe { black_box(libc::memcpy as CopyFn)(out.as_mut_ptr().cast(), b"after".as_ptr().cast(), 5) };
    assert_eq!(&out, b"after");
}
