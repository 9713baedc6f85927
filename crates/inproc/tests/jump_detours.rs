//! A detour's memory goes to another probe only once no thread can be inside it: not while a
//! thread is parked there by a signal handler, and again once it has left.
mod fixtures;
use fixtures::{
    addr, call2, call_park_until, code, detour_of, fx_park, park_in, signal_until_parked, DETOUR_BYTES, PARKED, RELEASE,
};

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::Ordering::SeqCst;

std::arch::global_asm!(
    ".text",
    ".globl fxd_b",
    ".type fxd_b,@function",
    "fxd_b:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxd_b, . - fxd_b",
    ".globl fxd_c",
    ".type fxd_c,@function",
    "fxd_c:",
    ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00",
    "lea rax, [rdi + rsi]",
    "ret",
    ".size fxd_c, . - fxd_c",
);

extern "C" {
    fn fxd_b(a: u64, b: u64) -> u64;
    fn fxd_c(a: u64, b: u64) -> u64;
}

#[test]
fn a_detour_is_reused_only_after_the_thread_parked_inside_it_has_left_and_a_probe_registered_again_takes_its_own_back()
{
    let (a, b, c) = (addr(fx_park), addr(fxd_b), addr(fxd_c));
    let original = [code(a, 8), code(b, 8), code(c, 8)];
    let pa = register(Kprobe::addr(a).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(pa.optimized(), Ok(()));
    let detour_a = detour_of(a);
    park_in(detour_a..detour_a + DETOUR_BYTES);
    const AFTER: u64 = 1_000;
    let (worker, tid) = call_park_until(&RELEASE, AFTER);
    signal_until_parked(&worker, tid, detour_a + dprobe_arch::DETOUR_ENTRY, libc::SIGUSR1, &PARKED);

    // The probe goes while the thread is parked in its detour (at the detour's entry: the
    // parked call can be the first through it, so the probe may have counted no hit yet).
    pa.unregister().unwrap();
    assert_eq!(code(a, 8), original[0]);
    // Another probe needs a detour: not that one.
    let pb = register(Kprobe::addr(b).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(pb.optimized(), Ok(()));
    assert_ne!(detour_of(b), detour_a, "a detour reused while a thread is inside it");

    // The thread leaves the detour and finishes its call there, then calls on unprobed.
    RELEASE.store(true, SeqCst);
    let calls = worker.join().unwrap().expect("the parked call and every later one computed the right value");
    assert!(calls > 0);
    // Now it is free: the next detour takes its memory.
    let pc = register(Kprobe::addr(c).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(pc.optimized(), Ok(()));
    assert_eq!(detour_of(c), detour_a, "the freed detour is reused");
    assert_eq!((call2(fxd_b, 1, 2), call2(fxd_c, 3, 4), call2(fx_park, 5, 6)), (3, 7, 14));
    assert_eq!((pb.hits(), pc.hits(), pb.nmissed(), pc.nmissed()), (1, 1, 0, 0));
    drop((pb, pc));
    assert_eq!([code(a, 8), code(b, 8), code(c, 8)], original);

    // A probe registered again where its detour was retired (and not reused) takes it back.
    let again = register(Kprobe::addr(c).pre(|_| PreAction::Continue)).unwrap();
    assert_eq!(detour_of(c), detour_a);
    assert_eq!((call2(fxd_c, 3, 4), again.hits()), (7, 1));
}
