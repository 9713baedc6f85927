//! Return probes: exact returns under threads, changed return values, recursion, maxactive,
//! longjmp, C++ exceptions, exiting threads, and the real return address behind the
//! trampoline. Typed entry probes and non-faulting reads.
mod fixtures;
use fixtures::*;

use dprobe_inproc::*;
use dprobe_test_fixtures as c;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn at(f: *const ()) -> Addr {
    Addr(f as u64)
}

#[test]
fn return_values_are_observed_exactly_under_four_threads() {
    static SUM: AtomicU64 = AtomicU64::new(0);
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_add as *const ())).handler(|r, _| {
        SUM.fetch_add(r.rax, Relaxed);
    }))
    .unwrap();
    const CALLS: i64 = 100_000;
    let threads: Vec<_> = (0..4i64)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    // SAFETY: fxc_add adds two integers.
                    assert_eq!(unsafe { c::fxc_add(black_box(t), black_box(i)) }, t + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let expected: i64 = (0..4).map(|t| (0..CALLS).map(|i| t + i).sum::<i64>()).sum();
    let st = p.stats();
    assert_eq!((st.returns, (st.missed + st.reentered), p.pending()), (4 * CALLS as u64, 0, 0));
    assert_eq!(SUM.load(Relaxed), expected as u64);
}

#[test]
fn a_handler_changes_the_return_value() {
    let p = register_kretprobe(Kretprobe::addr(addr(fx_spare1)).handler(|r, _| r.rax = 42)).unwrap();
    assert_eq!(call2(fx_spare1, 2, 3), 42);
    drop(p);
    assert_eq!(call2(fx_spare1, 2, 3), 6);
}

#[test]
fn entry_handler_data_reaches_the_return_handler_and_can_veto() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let p = register_kretprobe(
        Kretprobe::addr(addr(fx_spare2))
            .entry_handler(|r, data| {
                data.0[0] = r.rdi * 1000;
                if r.rdi == 13 {
                    EntryAction::Skip
                } else {
                    EntryAction::Track
                }
            })
            .handler(|r, data| {
                SEEN.store(data.0[0] + r.rax, Relaxed);
            }),
    )
    .unwrap();
    assert_eq!(call2(fx_spare2, 9, 4), 5);
    assert_eq!(SEEN.load(Relaxed), 9005);
    assert_eq!(call2(fx_spare2, 13, 4), 9, "vetoed: returns normally");
    assert_eq!(SEEN.load(Relaxed), 9005, "vetoed: no return handler");
    let st = p.stats();
    assert_eq!((st.returns, (st.missed + st.reentered), p.pending()), (1, 0, 0));
}

#[test]
fn two_return_probes_on_one_function_both_run() {
    static ORDER: AtomicU64 = AtomicU64::new(0);
    let a = register_kretprobe(Kretprobe::addr(addr(fx_push_add)).handler(|r, _| {
        ORDER.store(ORDER.load(Relaxed) * 10 + 1, Relaxed);
        r.rax += 100;
    }))
    .unwrap();
    let b = register_kretprobe(Kretprobe::addr(addr(fx_push_add)).handler(|r, _| {
        ORDER.store(ORDER.load(Relaxed) * 10 + 2, Relaxed);
        r.rax += 1000;
    }))
    .unwrap();
    assert_eq!(call2(fx_push_add, 1, 2), 1103);
    assert_eq!(ORDER.load(Relaxed), 21, "the last hijack returns first");
    assert_eq!((a.stats().returns, b.stats().returns), (1, 1));
    assert_eq!((a.stats().abandoned, b.stats().abandoned), (0, 0));
}

#[test]
fn recursion_two_hundred_deep() {
    static DEPTHS: AtomicU64 = AtomicU64::new(0);
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_recurse as *const ())).maxactive(256).handler(|r, _| {
        DEPTHS.fetch_add(r.rax, Relaxed);
    }))
    .unwrap();
    // SAFETY: fxc_recurse(n) recurses n deep and returns n.
    assert_eq!(unsafe { c::fxc_recurse(black_box(200)) }, 200);
    let st = p.stats();
    assert_eq!((st.returns, (st.missed + st.reentered), p.pending()), (201, 0, 0));
    assert_eq!(DEPTHS.load(Relaxed), (0..=200).sum::<u64>(), "every level saw its own return value");
}

/// Returns its argument after some work, so that calls from several threads overlap.
#[no_mangle]
#[inline(never)]
pub extern "C" fn slow_identity(x: u64) -> u64 {
    let mut acc = x;
    for i in 0..2000 {
        acc = black_box(acc.wrapping_add(i)).wrapping_sub(i);
    }
    acc
}

#[test]
fn maxactive_one_with_four_threads_misses_and_accounts_for_every_call() {
    let p =
        register_kretprobe(Kretprobe::addr(at(slow_identity as *const ())).maxactive(1).handler(|_, _| {})).unwrap();
    const CALLS: u64 = 20_000;
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for i in 0..CALLS {
                    assert_eq!(slow_identity(black_box(i)), i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = p.stats();
    assert!((st.missed + st.reentered) > 0, "maxactive = 1 with four threads must miss some calls: {st:?}");
    assert_eq!(st.returns + (st.missed + st.reentered), 4 * CALLS, "{st:?}");
    assert_eq!(p.pending(), 0);
}

/// A return probe on `f`, at its exits or through the return address.
fn kret(f: *const (), via_return_address: bool) -> Kretprobe {
    let k = Kretprobe::addr(at(f));
    if via_return_address {
        k.via_return_address()
    } else {
        k
    }
}

/// One call returned normally and `abandoned` never returned (left by `longjmp` or an
/// exception); none missed, none pending.
fn assert_one_return_and_abandoned(p: &ReturnProbe, abandoned: u64) {
    let st = p.stats();
    assert_eq!(
        (st.returns, (st.missed + st.reentered), st.abandoned, p.pending()),
        (1, 0, abandoned, 0),
        "{:?}: {st:?}",
        p.return_mode()
    );
}

#[test]
fn longjmp_out_of_a_probed_function_ten_thousand_times() {
    for via_return_address in [false, true] {
        let p =
            register_kretprobe(kret(c::fxc_victim as *const (), via_return_address).maxactive(2).handler(|_, _| {}))
                .unwrap();
        assert_eq!(matches!(p.return_mode(), ReturnMode::Exits { .. }), !via_return_address, "{:?}", p.return_mode());
        for i in 0..10_000 {
            // SAFETY: fxc_jump_out setjmps, calls fxc_victim, which longjmps back: returns -1.
            assert_eq!(unsafe { c::fxc_jump_out(black_box(i)) }, -1);
        }
        // A normal call from the same place finds the last abandoned instance stale and is
        // traced.
        // SAFETY: with a negative argument fxc_victim returns it.
        assert_eq!(unsafe { c::fxc_jump_out(black_box(-5)) }, -5);
        assert_one_return_and_abandoned(&p, 10_000);
    }
}

#[test]
fn a_cpp_exception_through_a_probed_function_ten_thousand_times() {
    for via_return_address in [false, true] {
        let p =
            register_kretprobe(kret(c::fxcpp_thrower as *const (), via_return_address).maxactive(2).handler(|_, _| {}))
                .unwrap();
        for i in 0..10_000 {
            // SAFETY: fxcpp_catch calls fxcpp_thrower, which throws i; the catch returns -i - 1.
            assert_eq!(unsafe { c::fxcpp_catch(black_box(i)) }, -i - 1);
        }
        // SAFETY: a negative argument returns normally.
        assert_eq!(unsafe { c::fxcpp_catch(black_box(-3)) }, -3);
        assert_one_return_and_abandoned(&p, 10_000);
    }
}

/// The thread of `exit_in_probed_function`.
static EXITING_TID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn exit_in_probed_function(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: gettid takes no argument.
    EXITING_TID.store(unsafe { libc::gettid() }, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: ends this thread inside the probed function.
    unsafe { c::fxc_exit_thread(0) };
    std::ptr::null_mut()
}

#[test]
fn a_thread_that_exits_with_a_pending_instance_gives_it_back() {
    let p = register_kretprobe(Kretprobe::addr(at(c::fxc_exit_thread as *const ())).maxactive(1).handler(|_, _| {}))
        .unwrap();
    // SAFETY: a plain pthread running a C-ABI function; joined below.
    unsafe {
        let mut t: libc::pthread_t = std::mem::zeroed();
        assert_eq!(libc::pthread_create(&mut t, std::ptr::null(), exit_in_probed_function, std::ptr::null_mut()), 0);
        assert_eq!(libc::pthread_join(t, std::ptr::null_mut()), 0);
    }
    assert_eq!(p.pending(), 1, "the dead thread's instance is still held");
    // `pthread_join` returns before the kernel lets go of the thread; the instance is given back
    // once it is gone (`tgkill` says so), however long a busy machine takes.
    let tid = EXITING_TID.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // SAFETY: signal 0 only asks whether the thread is there.
    while unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) } == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: a negative code returns it.
    assert_eq!(unsafe { c::fxc_exit_thread(black_box(-1)) }, -1);
    let st = p.stats();
    assert_eq!((st.returns, (st.missed + st.reentered), st.abandoned, p.pending()), (1, 0, 1, 0), "{st:?}");
}

#[test]
fn the_real_return_address_behind_the_trampoline() {
    static BEFORE: AtomicU64 = AtomicU64::new(0);
    static SEEN: AtomicU64 = AtomicU64::new(0);
    static MAPPED: AtomicU64 = AtomicU64::new(0);
    let f = addr(fx_mov_add);
    // Registered first, so it runs before the return probe's entry hijacks the address.
    let first = register(Kprobe::addr(f).pre(|r| {
        // SAFETY: at the function's first instruction rsp points at the return address.
        BEFORE.store(unsafe { *(r.rsp as *const u64) }, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let ret = register_kretprobe(Kretprobe::addr(f).via_return_address().handler(|_, _| {})).unwrap();
    assert_eq!(ret.return_mode(), &ReturnMode::ReturnAddress { why: "asked for".into() });
    // At `add %rsi,%rax` (offset 3) the return address slot holds the trampoline's address.
    let inside = register(Kprobe::addr(f.offset(3)).pre(|r| {
        // SAFETY: fx_mov_add has no prologue: rsp still points at the return address.
        let seen = unsafe { *(r.rsp as *const u64) };
        SEEN.store(seen, Relaxed);
        MAPPED.store(real_return_address(seen, r.rsp), Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(call2(fx_mov_add, 1, 2), 3);
    assert_eq!(SEEN.load(Relaxed), trampoline_addr());
    assert_ne!(BEFORE.load(Relaxed), 0);
    assert_eq!(MAPPED.load(Relaxed), BEFORE.load(Relaxed));
    assert_eq!(ret.stats().returns, 1);
    drop((first, inside));
}

#[test]
fn a_return_probe_needs_a_function_entry() {
    let e = register_kretprobe(Kretprobe::addr(addr(fx_push_add).offset(1))).unwrap_err();
    assert!(matches!(e, ProbeError::NotFunctionEntry { .. }), "{e:?}");
}

#[test]
fn typed_arguments_of_eight_integers_and_two_doubles() {
    type Args10 = (i64, i32, i16, i8, u64, i64, i64, i64, f64, f32);
    static GOT: std::sync::Mutex<Option<Args10>> = std::sync::Mutex::new(None);
    let p = register_jprobe(Kprobe::addr(at(c::fxc_many_args as *const ())), |args: Args10, _| {
        if let Ok(mut g) = GOT.try_lock() {
            *g = Some(args);
        }
    })
    .unwrap();
    // SAFETY: fxc_many_args sums its arguments.
    let sum = unsafe { c::fxc_many_args(-1, -2, -3, -4, 5, 6, 7, 8, 0.5, 0.25) };
    assert_eq!(sum, 16.0 + 0.75);
    assert_eq!(*GOT.lock().unwrap(), Some((-1, -2, -3, -4, 5, 6, 7, 8, 0.5, 0.25)));
    assert_eq!(p.hits(), 1);
}

#[test]
fn reading_through_a_bad_pointer_is_an_error_not_a_crash() {
    let mut buf = [0u8; 64];
    assert!(read_c_string(16, &mut buf).is_err());
    assert!(read_bytes(0, &mut buf[..8]).is_err());
    let s = b"/etc/hostname\0";
    assert_eq!(read_c_string(s.as_ptr() as u64, &mut buf).unwrap(), b"/etc/hostname");
    let mut small = [0u8; 4];
    assert_eq!(read_c_string(s.as_ptr() as u64, &mut small).unwrap(), b"/etc", "truncated to the buffer");
}
