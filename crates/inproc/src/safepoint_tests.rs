//! The safepoint and dprobe's `SIGTRAP` handler, which blocks the safepoint's signal: a
//! safepoint that comes while a thread is in the handler looks at the place the trap sends it,
//! once the handler is done; and the verdicts on signal frames found on a thread's stack.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use super::{moved, run, Plan, Slot, Verdict, Window, MAX_WINDOW};
use crate::{register, Addr, Kprobe, PreAction};

std::arch::global_asm!(
    ".text",
    // A `nop` (emulated: a hit continues at the `lea`) and a `lea`: `a + b + 3`.
    ".globl fxsp_probed",
    ".type fxsp_probed,@function",
    "fxsp_probed:",
    "nop",
    "lea rax, [rdi + rsi + 3]",
    "ret",
    ".size fxsp_probed, . - fxsp_probed",
    // Where the safepoint of the second test moves a thread found at that `lea`: `a + b + 100`.
    ".globl fxsp_landing",
    ".type fxsp_landing,@function",
    "fxsp_landing:",
    "lea rax, [rdi + rsi + 100]",
    "ret",
    ".size fxsp_landing, . - fxsp_landing",
);

extern "C" {
    fn fxsp_probed(a: u64, b: u64) -> u64;
    fn fxsp_landing(a: u64, b: u64) -> u64;
}

fn call(f: unsafe extern "C" fn(u64, u64) -> u64, a: u64, b: u64) -> u64 {
    // SAFETY: the fixtures compute on their register arguments alone.
    unsafe { std::hint::black_box(f)(std::hint::black_box(a), std::hint::black_box(b)) }
}

fn at(f: unsafe extern "C" fn(u64, u64) -> u64) -> u64 {
    f as *const () as u64
}

#[test]
fn a_safepoint_that_finds_a_thread_in_the_trap_handler_looks_where_the_trap_sends_it() {
    static HELD: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    static FIRST: AtomicBool = AtomicBool::new(true);
    let probed = at(fxsp_probed);
    // The pre-handler holds the first thread that hits, inside dprobe's `SIGTRAP` handler.
    let p = register(Kprobe::addr(Addr(probed)).no_optimize().pre(|_| {
        if FIRST.swap(false, SeqCst) {
            HELD.store(true, SeqCst);
            while !RELEASE.load(SeqCst) {
                std::hint::spin_loop();
            }
        }
        PreAction::Continue
    }))
    .unwrap();
    let caller = std::thread::spawn(|| call(fxsp_probed, 20, 1));
    while !HELD.load(SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // A plan that says: a thread at the `lea` (where the trap sends the held thread, the `nop`
    // emulated) goes to `fxsp_landing`. Its trap's frame says `probed + 1` too while the
    // handler runs; the handler writes it again as it ends, so only a look after counts.
    let mut map = [(Addr(probed), Addr(probed)); MAX_WINDOW];
    map[1] = (Addr(probed + 1), Addr(at(fxsp_landing)));
    let window =
        Window { start: Addr(probed), end: Addr(probed + 6), map, len: 2, after_first: Addr(at(fxsp_landing)) };
    let mut plan = Plan { windows: vec![window], ..Plan::default() };
    let moves = moved();
    let releaser = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(200));
        RELEASE.store(true, SeqCst);
    });
    let start = Instant::now();
    let outcome = run(&mut plan);
    let waited = start.elapsed();
    releaser.join().unwrap();
    assert_eq!(outcome, Ok(()));
    assert!(waited >= Duration::from_millis(200), "answered before the trap handler ended ({waited:?})");
    assert_eq!(caller.join().unwrap(), 121, "the thread went on at the landing, not in the window");
    assert!(moved() > moves);
    assert_eq!(p.hits(), 1);
}

#[test]
fn a_frame_saved_one_past_a_post_step_slot_is_busy_and_a_thread_there_is_not() {
    let window = Window {
        start: Addr(0x1000),
        end: Addr(0x1008),
        map: [
            (Addr(0x1000), Addr(0x9000)),
            (Addr(0x1004), Addr(0x9004)),
            (Addr(0), Addr(0)),
            (Addr(0), Addr(0)),
            (Addr(0), Addr(0)),
        ],
        len: 2,
        after_first: Addr(0x9004),
    };
    // A post-step slot: the `lea` of 4 bytes, then `int3`; a boosted one: the instruction,
    // then a jump back of 5 bytes.
    let post_step =
        Slot { start: Addr(0x5000), end: Addr(0x5005), after_insn: Some(Addr(0x5004)), window: 0, traps: true };
    let boosted =
        Slot { start: Addr(0x5010), end: Addr(0x5019), after_insn: Some(Addr(0x5014)), window: 0, traps: false };
    let plan = Plan { windows: vec![window], slots: vec![post_step, boosted], ..Plan::default() };
    // The post-step slot's trap, its handler not done: it will send the thread to 0x1004.
    assert_eq!(plan.frame_verdict(0x5005), Verdict::Busy);
    assert!(plan.frame_touches(0x5005));
    // A thread that is there (the next slot's code, say) is not that trap's.
    assert_eq!(plan.verdict(0x5005), Verdict::Stay);
    assert_eq!(plan.frame_verdict(0x5019), Verdict::Stay, "one past a boosted slot: it jumped away");
    // A trap's frame, its handler perhaps not done: one past a first instruction of one byte
    // is where the trap came from, not a thread that ran it. Busy, never moved.
    assert_eq!(plan.trap_frame_verdict(0x1004), Verdict::Busy);
    assert_eq!(plan.trap_frame_verdict(0x5000), Verdict::Busy);
    assert_eq!(plan.trap_frame_verdict(0x1000), Verdict::Stay);
    // The rest as for a thread.
    assert_eq!(plan.frame_verdict(0x1004), Verdict::Move(0x9004));
    assert_eq!(plan.frame_verdict(0x5000), Verdict::Move(0x9000));
    assert_eq!(plan.frame_verdict(0x5002), Verdict::Busy);
    assert_eq!(plan.frame_verdict(0x1000), Verdict::Stay);
}
