//! Exact hit counts under threads, for each way of executing the displaced instruction.
mod fixtures;
use fixtures::*;

use dprobe_inproc::{register, Kprobe, PreAction};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const THREADS: u64 = 4;
const CALLS: u64 = 1_000_000;

fn hammer(f: unsafe extern "C" fn(u64, u64) -> u64) -> u64 {
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut sum = 0u64;
                for i in 0..CALLS {
                    sum = sum.wrapping_add(call2(f, t, i));
                }
                sum
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).fold(0, u64::wrapping_add)
}

fn expected_sum() -> u64 {
    (0..THREADS).map(|t| (0..CALLS).map(|i| t + i).fold(0, u64::wrapping_add)).fold(0, u64::wrapping_add)
}

#[test]
fn four_threads_million_calls_emulated_and_boosted() {
    static PUSH_HITS: AtomicU64 = AtomicU64::new(0);
    static MOV_HITS: AtomicU64 = AtomicU64::new(0);
    let push = register(Kprobe::addr(addr(fx_push_add)).pre(|_| {
        PUSH_HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    let mov = register(Kprobe::addr(addr(fx_mov_add)).pre(|_| {
        MOV_HITS.fetch_add(1, Relaxed);
        PreAction::Continue
    }))
    .unwrap();
    assert_eq!(hammer(fx_push_add), expected_sum(), "emulated push changed the results");
    assert_eq!(hammer(fx_mov_add), expected_sum(), "boosted copy changed the results");
    let total = THREADS * CALLS;
    assert_eq!((PUSH_HITS.load(Relaxed), push.hits(), push.nmissed()), (total, total, 0));
    assert_eq!((MOV_HITS.load(Relaxed), mov.hits(), mov.nmissed()), (total, total, 0));
    let info = dprobe_inproc::list();
    let kind = |a| info.iter().find(|p| p.addr == a).unwrap().execution;
    assert_eq!(kind(push.addr()), "emulated");
    assert_eq!(kind(mov.addr()), "boosted");
}

#[test]
fn post_handler_path_counts_exactly_and_sees_the_result() {
    static POST_HITS: AtomicU64 = AtomicU64::new(0);
    static BAD_POST: AtomicU64 = AtomicU64::new(0);
    // Probe `add rax, rsi` (offset 3): the post-handler sees rax = rdi + rsi and rip after it.
    let at = addr(fx_spare2).offset(4); // push rbx (1) + mov rax, rdi (3)
    let p = register(Kprobe::addr(at).pre(|_| PreAction::Continue).post(move |r| {
        POST_HITS.fetch_add(1, Relaxed);
        if r.rax != r.rdi.wrapping_sub(r.rsi) || r.rip != at.0 + 3 {
            BAD_POST.fetch_add(1, Relaxed);
        }
    }))
    .unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || (0..CALLS / 4).map(|i| call2(fx_spare2, i + t, t)).fold(0, u64::wrapping_add))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(POST_HITS.load(Relaxed), THREADS * CALLS / 4);
    assert_eq!(p.hits(), THREADS * CALLS / 4);
    assert_eq!(BAD_POST.load(Relaxed), 0);
    assert_eq!(dprobe_inproc::list().iter().find(|i| i.addr == at).unwrap().execution, "post-step");
}

#[test]
fn rip_relative_copy_reads_the_original_data() {
    let p = register(Kprobe::addr(addr_of_riprel()).pre(|_| PreAction::Continue)).unwrap();
    for i in 0..1000 {
        // SAFETY: fx_riprel reads fx_data and adds its argument.
        assert_eq!(unsafe { fx_riprel(std::hint::black_box(i)) }, 1000 + i);
    }
    assert_eq!(p.hits(), 1000);
}

fn addr_of_riprel() -> dprobe_inproc::Addr {
    dprobe_inproc::Addr(fx_riprel as *const () as usize as u64)
}
