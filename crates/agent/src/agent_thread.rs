//! The agent's thread, started with `pthread_create` rather than `std::thread`.
//!
//! It is started from a thread of the program's (its main thread, or the thread dprobe holds
//! to load the agent, or a forked child's only thread). `std::thread::Builder::spawn` touches
//! thread-local values of the standard library's in the calling thread, and one with a
//! destructor makes the C library allocate a record to run it when that thread exits
//! (`__cxa_thread_atexit_impl`) and free it then (`__call_tls_dtors`): a call of `free` in the
//! program's thread that is dprobe's, counted by a probe on `free` as the program's (one more
//! than an untraced run makes). `pthread_create` touches nothing of the kind.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::*};

/// The thread's name, as `top` and `/proc` show it.
const NAME: &CStr = c"dprobe-agent";
/// Its name once its work is done, as it ends: the C library may hold it a while longer (it
/// frees the thread's stack under a lock that another thread's `setuid` holds until every
/// thread answered it), with every signal blocked, and it runs no more of the program's code
/// or of dprobe's: the next attach need not refuse the process for it ([`crate::masks`]).
pub(crate) const ENDED_NAME: &CStr = c"dprobe-ended";

type Body = Box<dyn FnOnce() + Send + 'static>;

/// Start `body` on a new detached thread with a stack of `stack_size` bytes, named
/// `dprobe-agent`.
pub(crate) fn start(stack_size: usize, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    // Known before any agent thread runs (see `c_library_threads`).
    c_library_threads();
    let body: Box<Body> = Box::new(Box::new(body));
    let arg = Box::into_raw(body);
    // SAFETY: the attribute object is ours, initialised before use and destroyed after;
    // `run` takes back the box `arg` points to exactly once, on the new thread; when the
    // thread is not created, the box is taken back here instead.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            drop(Box::from_raw(arg));
            return Err(io::Error::other("pthread_attr_init failed"));
        }
        libc::pthread_attr_setstacksize(&mut attr, stack_size);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let mut thread: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut thread, &attr, run, arg.cast());
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            drop(Box::from_raw(arg));
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

extern "C" fn run(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `start` passed a box made with `Box::into_raw`, taken back only here.
    let body = unsafe { Box::from_raw(arg.cast::<Body>()) };
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, NAME.as_ptr()) };
    let uncounted = c_library_threads().inspect(|count| {
        count.fetch_sub(1, SeqCst);
    });
    // A panic must not unwind out of a C function: the agent's session ends as on an error.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_NAME, ENDED_NAME.as_ptr()) };
    // Counted again, as the C library takes it off once this returns.
    if let Some(count) = uncounted {
        count.fetch_add(1, SeqCst);
    }
    std::ptr::null_mut()
}

/// The C library's count of the process's threads (glibc's `__nptl_nthreads`, a private
/// symbol; `None` in another C library). The thread that takes it to zero as it ends calls
/// `exit(0)`: a program whose first thread left with `pthread_exit` ends when its last thread
/// does, its `atexit` handlers run and its buffered output written. Counted, the agent's thread
/// would be that last thread, with a descriptor table of its own where the program's output
/// is not: the program's buffered lines were lost. So the agent's thread leaves itself out of
/// the count while it runs, and counts itself again just before it ends (the C library
/// takes it off then).
///
/// Looked up once, by [`start`] on the thread that starts the first agent thread (a forked
/// child's agent, started in its `fork` handler, finds it known: the loader's lock may be
/// held there by a thread the child does not have).
fn c_library_threads() -> Option<&'static AtomicU32> {
    /// The count's address; [`UNKNOWN`] until looked up, [`ABSENT`] where there is none.
    static AT: AtomicUsize = AtomicUsize::new(UNKNOWN);
    const UNKNOWN: usize = 0;
    const ABSENT: usize = 1;
    let mut at = AT.load(Acquire);
    if at == UNKNOWN {
        // SAFETY: dlvsym reads two NUL-terminated names and returns the symbol's address or null.
        let found = unsafe { libc::dlvsym(libc::RTLD_DEFAULT, c"__nptl_nthreads".as_ptr(), c"GLIBC_PRIVATE".as_ptr()) };
        at = if found.is_null() { ABSENT } else { found as usize };
        AT.store(at, Release);
    }
    // SAFETY: `at` (not ABSENT) is the address dlvsym gave for glibc's `unsigned int
    // __nptl_nthreads`, aligned, changed only with atomic operations, and there as long as the
    // C library is (for ever).
    (at != ABSENT).then(|| unsafe { &*(at as *const AtomicU32) })
}
