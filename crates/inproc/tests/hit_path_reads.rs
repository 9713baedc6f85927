//! A handler reads the program's memory with `read_bytes` and `read_c_string`: in the hit path,
//! with `keep_traps_open`'s guard alive, the read is made directly inside a nested guarded
//! call, so a bad pointer is that read's error, and the handler goes on (no handler fault,
//! nothing lost); where the thread blocks `SIGSEGV` (whose fault would kill the program), or
//! without the guard, through the kernel. The answers are the same every way.
mod fixtures;
use fixtures::{addr, call2, fx_spare1};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use dprobe_inproc::{keep_traps_open, read_bytes, read_c_string, register, Kprobe, PreAction};

/// `sig` blocked on the calling thread while it lives.
struct Blocked(libc::sigset_t);

impl Blocked {
    fn new(sig: libc::c_int) -> Blocked {
        // SAFETY: valid sets; the old mask is kept to be put back.
        unsafe {
            let (mut set, mut old) = (std::mem::zeroed(), std::mem::zeroed());
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old), 0);
            Blocked(old)
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: the mask saved by `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// What each read gave, in order: `Ok(bytes)` or `Err(())`.
static SEEN: Mutex<Vec<Result<Vec<u8>, ()>>> = Mutex::new(Vec::new());
/// The first of two pages, the second unreadable (set before the probe is hit).
static PAGE: AtomicU64 = AtomicU64::new(0);

fn reads() -> Vec<Result<Vec<u8>, ()>> {
    let page = PAGE.load(Relaxed);
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    let mut string = |at: u64| read_c_string(at, &mut buf).map(<[u8]>::to_vec).map_err(drop);
    out.push(string(c"hello".as_ptr() as u64));
    out.push(string(0));
    out.push(string(0x1234));
    // Ends with its NUL just before the last bytes of the page; then runs into the unreadable
    // page with no NUL.
    out.push(string(page + 4090));
    out.push(string(page + 4093));
    let mut word = [0u8; 8];
    out.push(read_bytes(page + 4096, &mut word).map(|()| word.to_vec()).map_err(drop));
    out.push(read_bytes(page, &mut word).map(|()| word.to_vec()).map_err(drop));
    out
}

#[test]
fn reads_in_a_handler_fault_as_errors_and_the_handler_goes_on() {
    // SAFETY: a new private anonymous mapping of two pages, the second made unreadable (kept
    // mapped: a page unmapped could be taken for dprobe's own pages meanwhile).
    let page = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(libc::mprotect(p.cast::<u8>().add(4096).cast(), 4096, libc::PROT_NONE), 0);
        let bytes = std::slice::from_raw_parts_mut(p.cast::<u8>(), 4096);
        bytes[..8].copy_from_slice(b"firstpg!");
        bytes[4090..].copy_from_slice(b"ab\0xyz");
        p as u64
    };
    PAGE.store(page, Relaxed);
    let probe = register(Kprobe::addr(addr(fx_spare1)).pre(|_| {
        *SEEN.lock().unwrap() = reads();
        PreAction::Continue
    }))
    .unwrap();
    let expected: Vec<Result<Vec<u8>, ()>> =
        vec![Ok(b"hello".to_vec()), Err(()), Err(()), Ok(b"ab".to_vec()), Err(()), Err(()), Ok(b"firstpg!".to_vec())];
    for (guarded, segv_blocked) in [(true, false), (true, true), (false, false)] {
        let guard = guarded.then(|| keep_traps_open().unwrap());
        let how = format!("guard: {guarded}, SIGSEGV blocked: {segv_blocked}");
        let _blocked = segv_blocked.then(|| Blocked::new(libc::SIGSEGV));
        assert_eq!(call2(fx_spare1, 6, 7), 42, "the program's result, {how}");
        let in_handler = std::mem::take(&mut *SEEN.lock().unwrap());
        assert_eq!(in_handler, expected, "{how}");
        drop(guard);
    }
    let stats = probe.stats();
    assert_eq!((stats.hits, stats.handler_faults), (3, 0), "{stats:?}");
    // The same reads outside the hit path (through the kernel) give the same answers.
    assert_eq!(reads(), expected, "outside the hit path");
    // SAFETY: the page mapped above.
    unsafe { libc::munmap(page as *mut libc::c_void, 8192) };
}
