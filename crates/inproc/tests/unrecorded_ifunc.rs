//! Indirect functions whose library records no choice of implementation (nothing inside glibc
//! calls `strstr` or `wcsrchr` through its own GOT): the engine runs the C library's resolver
//! (and libm's, for `floor`) to see what the loader chose, and the probe lands where this
//! process's calls go. `time`
//! chooses the kernel's vDSO, which is not probed: refused with that reason.
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_inproc::{register, Addr, Kprobe, PreAction, ProbeError};

const CALLS: u64 = 1_000;

/// The test's needle: only the test's own calls are counted (other threads may call `strstr`).
static NEEDLE: &std::ffi::CStr = c"in-a";
static HITS: AtomicU64 = AtomicU64::new(0);

type FindFn = unsafe extern "C" fn(*const libc::c_char, *const libc::c_char) -> *mut libc::c_char;

#[test]
fn strstr_is_probed_where_this_processs_calls_go() {
    let strstr: FindFn = black_box(libc::strstr);
    let probe = register(Kprobe::symbol("libc:strstr").pre(|regs| {
        if regs.rsi == NEEDLE.as_ptr() as u64 {
            HITS.fetch_add(1, Relaxed);
        }
        PreAction::Continue
    }))
    .expect("strstr is probed: the C library's resolver says which implementation runs");
    assert_eq!(probe.addr(), Addr(strstr as usize as u64), "probed where the process's calls go");
    let haystack = c"dprobe-needle-in-a-haystack";
    let mut found = 0;
    for _ in 0..CALLS {
        // SAFETY: two NUL-terminated strings.
        found += !unsafe { strstr(black_box(haystack.as_ptr()), black_box(NEEDLE.as_ptr())) }.is_null() as u64;
    }
    probe.unregister().unwrap();
    assert_eq!(found, CALLS, "strstr still finds the needle");
    assert_eq!(HITS.load(Relaxed), CALLS, "each of the test's calls counted once");
}

/// The maths library's `floor` (this test program needs libm, see `floor_import`): its
/// resolver run too, the probe where this process's calls go.
#[test]
fn floor_of_the_maths_library_is_probed_where_this_processs_calls_go() {
    static FLOOR_HITS: AtomicU64 = AtomicU64::new(0);
    // SAFETY: a NUL-terminated name; for an indirect function the loader gives the
    // implementation it chose, which is where this process's calls of `floor` go.
    let at = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"floor".as_ptr()) };
    assert!(!at.is_null(), "this process has libm");
    // SAFETY: floor has no preconditions; the call keeps libm among the program's needs.
    assert_eq!(unsafe { floor_import(black_box(2.5)) }, 2.0);
    // SAFETY: `floor`'s implementation: double floor(double).
    let floor: extern "C" fn(f64) -> f64 = unsafe { std::mem::transmute(at) };
    let probe = register(Kprobe::symbol("libm:floor").pre(|regs| {
        // Only the test's own calls: a value no other caller passes.
        if regs.xmm[0] as u64 == (-1234.5f64).to_bits() {
            FLOOR_HITS.fetch_add(1, Relaxed);
        }
        PreAction::Continue
    }))
    .expect("floor is probed: the maths library's resolver says which implementation runs");
    assert_eq!(probe.addr(), Addr(floor as usize as u64), "probed where the process's calls go");
    let mut sum = 0.0;
    for _ in 0..CALLS {
        sum += floor(black_box(-1234.5));
    }
    probe.unregister().unwrap();
    assert_eq!(sum, -1235.0 * CALLS as f64, "floor still rounds down");
    assert_eq!(FLOOR_HITS.load(Relaxed), CALLS, "each of the test's calls counted once");
}

// The test program names libm as needed, as a C program using `floor` does (the loader then
// never unloads it, and dprobe runs its resolvers).
#[link(name = "m")]
extern "C" {
    #[link_name = "floor"]
    fn floor_import(x: f64) -> f64;
}

#[test]
fn time_which_chooses_the_vdso_is_refused_with_the_reason() {
    let e = register(Kprobe::symbol("libc:time")).map(|_| ()).unwrap_err();
    let message = e.to_string();
    assert!(matches!(e, ProbeError::Target(_)), "{e:?}");
    assert!(message.contains("the kernel's vDSO"), "{message}");
}
