//! The hit path allocates nothing: a global allocator counts every allocation made while
//! the calling thread is inside dprobe's signal handlers.
mod fixtures;
use fixtures::*;

use dprobe_inproc::{register, register_kretprobe, EntryAction, Kprobe, Kretprobe, PreAction, ReturnMode};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Watching;

static ALLOCS_ON_HIT_PATH: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if dprobe_inproc::in_hit_path() {
            ALLOCS_ON_HIT_PATH.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if dprobe_inproc::in_hit_path() {
            ALLOCS_ON_HIT_PATH.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Watching = Watching;

#[test]
fn no_allocation_on_any_hit_path() {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let count = |_: &mut dprobe_inproc::Regs| {
        SEEN.fetch_add(1, Relaxed);
        PreAction::Continue
    };
    let emulated = register(Kprobe::addr(addr(fx_push_add)).pre(count)).unwrap();
    let boosted = register(Kprobe::addr(addr(fx_mov_add)).pre(count)).unwrap();
    static POSTS: AtomicU64 = AtomicU64::new(0);
    let post = |_: &mut dprobe_inproc::Regs| {
        POSTS.fetch_add(1, Relaxed);
    };
    let post_step = register(Kprobe::addr(addr(fx_spare1)).pre(count).post(post).no_optimize()).unwrap();
    // Inside a function (the whole extended state kept on a CPU with AVX), with a
    // post-handler: the detour's post block.
    let inner = register(Kprobe::addr(addr(fx_push_add).offset(1)).pre(count).post(post)).unwrap();
    assert_eq!(inner.optimized(), Ok(()), "a jump inside a function, with a post-handler");
    let riprel =
        register(Kprobe::addr(dprobe_inproc::Addr(fx_riprel as *const () as usize as u64)).pre(count)).unwrap();
    assert_eq!(riprel.optimized(), Ok(()), "one probe takes the jump path");
    // Return probes: at the function's exits (entry and exit handlers), and through the
    // return address (the trampoline).
    let returns = |via_return_address: bool| {
        let k = Kretprobe::addr(addr(fx_push_add))
            .entry_handler(|regs, data| {
                data.0[0] = regs.rdi;
                EntryAction::Track
            })
            .handler(|regs, data| {
                SEEN.fetch_add(u64::from(regs.rax == data.0[0] + 1), Relaxed);
            });
        register_kretprobe(if via_return_address { k.via_return_address() } else { k }).unwrap()
    };
    let at_exits = returns(false);
    let through_return_address = returns(true);
    assert!(matches!(at_exits.return_mode(), ReturnMode::Exits { .. }));
    // At its exits, a function that tail-calls an unprobed one: its return comes through the
    // trampoline written into the return address at the jump.
    let tail_outer = dprobe_inproc::Addr(dprobe_test_fixtures::fxc_tail_outer as *const () as u64);
    let tail = register_kretprobe(Kretprobe::addr(tail_outer).handler(|regs, _| {
        SEEN.fetch_add(u64::from(regs.rax % 3 == 0), Relaxed);
    }))
    .unwrap();
    assert!(matches!(tail.return_mode(), ReturnMode::Exits { .. }));
    for i in 0..10_000 {
        call2(fx_push_add, i, 1);
        call2(fx_mov_add, i, 1);
        call2(fx_spare1, i, 1);
        // SAFETY: reads a static.
        unsafe { fx_riprel(std::hint::black_box(i)) };
        // SAFETY: plain arithmetic, 3 (i + 1).
        let tail = unsafe { dprobe_test_fixtures::fxc_tail_outer(std::hint::black_box(i as i64)) };
        assert_eq!(tail, 3 * (i as i64 + 1));
    }
    assert_eq!((SEEN.load(Relaxed), POSTS.load(Relaxed)), (80_000, 20_000));
    for p in [&emulated, &boosted, &post_step, &riprel, &inner] {
        assert_eq!(p.hits(), 10_000);
    }
    for p in [&at_exits, &through_return_address, &tail] {
        assert_eq!(p.stats().returns, 10_000);
    }
    assert_eq!(ALLOCS_ON_HIT_PATH.load(Relaxed), 0, "the hit path allocated");
    // The check itself works: an allocating handler is seen.
    let allocating = register(Kprobe::addr(addr(fx_spare2)).pre(|_| {
        std::hint::black_box(vec![1u8; 16]);
        PreAction::Continue
    }))
    .unwrap();
    call2(fx_spare2, 1, 1);
    assert!(ALLOCS_ON_HIT_PATH.load(Relaxed) >= 1, "the allocation check cannot see allocations");
    drop(allocating);
}
