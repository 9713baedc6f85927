//! The program's `errno` across handlers: a handler's failing calls do not change what the
//! program reads after the hit; a handler can set it on purpose (fault injection).
mod fixtures;
use fixtures::*;

use dprobe_inproc::{program_errno, register, register_kretprobe, set_program_errno, Kprobe, Kretprobe, PreAction};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

fn errno() -> i32 {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// A call that fails with `ENOENT`, as a handler's own work might.
fn fail_with_enoent() -> i32 {
    assert!(std::fs::File::open("/nonexistent/dprobe-errno").is_err());
    errno()
}

/// `errno` as the program reads it right after calling `f`, having set it to `EBADF` just
/// before (a failed `close`, the program's own error).
fn errno_across(f: unsafe extern "C" fn(u64, u64) -> u64) -> i32 {
    // SAFETY: closing an invalid descriptor only fails.
    assert_eq!(unsafe { libc::close(-1) }, -1);
    call2(f, 1, 2);
    errno()
}

/// What a handler saw: `errno` after its own failing call, and the program's.
struct Seen {
    own: AtomicI32,
    program: AtomicI32,
}

impl Seen {
    const fn new() -> Seen {
        Seen { own: AtomicI32::new(0), program: AtomicI32::new(0) }
    }
    fn note(&self) {
        self.own.store(fail_with_enoent(), Relaxed);
        self.program.store(program_errno(), Relaxed);
    }
    fn assert_saw_both(&self) {
        assert_eq!(self.own.load(Relaxed), libc::ENOENT, "the handler's own call failed");
        assert_eq!(self.program.load(Relaxed), libc::EBADF, "program_errno() is the program's");
    }
}

#[test]
fn a_pre_handler_on_a_jump_leaves_the_programs_errno() {
    static SEEN: Seen = Seen::new();
    let p = register(Kprobe::addr(addr(fx_push_add)).pre(|_| {
        SEEN.note();
        PreAction::Continue
    }))
    .unwrap();
    assert!(p.optimized().is_ok(), "{:?}", p.optimized());
    assert_eq!(errno_across(fx_push_add), libc::EBADF);
    assert_eq!(p.hits(), 1);
    SEEN.assert_saw_both();
}

#[test]
fn pre_and_post_handlers_on_int3_leave_the_programs_errno() {
    static SEEN: [Seen; 2] = [Seen::new(), Seen::new()];
    let p = register(
        Kprobe::addr(addr(fx_mov_add))
            .no_optimize()
            .pre(|_| {
                SEEN[0].note();
                PreAction::Continue
            })
            .post(|_| SEEN[1].note()),
    )
    .unwrap();
    assert!(p.optimized().is_err());
    assert_eq!(errno_across(fx_mov_add), libc::EBADF);
    assert_eq!(p.hits(), 1);
    SEEN.iter().for_each(Seen::assert_saw_both);
}

#[test]
fn a_return_handler_leaves_the_programs_errno() {
    static SEEN: Seen = Seen::new();
    let p = register_kretprobe(Kretprobe::addr(addr(fx_spare2)).handler(|_, _| SEEN.note())).unwrap();
    assert_eq!(errno_across(fx_spare2), libc::EBADF);
    assert_eq!(p.stats().returns, 1);
    SEEN.assert_saw_both();
}

#[test]
fn a_handler_that_faults_leaves_the_programs_errno() {
    static FAULTS: AtomicU64 = AtomicU64::new(0);
    let p = register(
        Kprobe::addr(addr(fx_push_push_mov))
            .pre(|_| {
                fail_with_enoent();
                // SAFETY: not safe: the handler faults on purpose, and the guard ends it.
                unsafe { std::ptr::read_volatile(16 as *const u64) };
                PreAction::Continue
            })
            .fault(|_, _| {
                FAULTS.fetch_add(1, Relaxed);
                false
            }),
    )
    .unwrap();
    assert_eq!(errno_across(fx_push_push_mov), libc::EBADF);
    assert_eq!(call2(fx_push_push_mov, 1, 2), 16, "the function ran");
    assert!(FAULTS.load(Relaxed) >= 1);
    drop(p);
}

#[test]
fn a_return_handler_can_make_a_call_fail_with_an_errno() {
    // Fault injection: the function returns -1 with errno EACCES, as a refused system call.
    let p = register_kretprobe(Kretprobe::addr(addr(fx_spare1)).handler(|r, _| {
        fail_with_enoent();
        r.rax = u64::MAX;
        set_program_errno(libc::EACCES);
    }))
    .unwrap();
    // SAFETY: as in errno_across.
    assert_eq!(unsafe { libc::close(-1) }, -1);
    assert_eq!(call2(fx_spare1, 5, 3) as i64, -1);
    assert_eq!(errno(), libc::EACCES);
    drop(p);
    assert_eq!(call2(fx_spare1, 5, 3), 15);
}

#[test]
fn outside_a_handler_the_calls_read_and_set_errno() {
    set_program_errno(libc::EPERM);
    assert_eq!(errno(), libc::EPERM);
    assert_eq!(program_errno(), libc::EPERM);
}

#[test]
fn four_threads_each_keep_their_own_errno() {
    // Each thread's errno is its own: a handler running on one thread gives that thread's back,
    // while the others' hits do the same with theirs.
    static HANDLED: AtomicU64 = AtomicU64::new(0);
    let p = register(Kprobe::addr(addr(fx_park)).pre(|_| {
        fail_with_enoent();
        HANDLED.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let errors = [libc::EBADF, libc::EPERM, libc::EINVAL, libc::EAGAIN];
    let wrong: u64 = std::thread::scope(|s| {
        let threads: Vec<_> = errors
            .iter()
            .map(|&e| {
                s.spawn(move || {
                    (0..20_000)
                        .filter(|&i| {
                            set_program_errno(e);
                            let result = call2(fx_park, i, 1);
                            errno() != e || result != i + 4
                        })
                        .count() as u64
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(wrong, 0);
    assert_eq!(HANDLED.load(Relaxed), 80_000);
    assert_eq!(p.hits(), 80_000);
}
