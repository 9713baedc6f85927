//! Holding `posix_spawn` off while code is patched.
//!
//! The C library's `posix_spawn` and `posix_spawnp` (which `system` and `popen` call) start
//! their child with `clone(CLONE_VM | CLONE_VFORK)`: it runs in the program's memory, with
//! every signal blocked and its handlers reset, until its `exec`. Placing a probe as a jump,
//! or taking one away, puts an `int3` at the site for a moment (`optimizer.rs`); arming a site
//! puts one there for good. A child that runs the site then is killed by the forced `SIGTRAP`
//! before its `exec`, and the program sees its command die of signal 5. The child runs the
//! C library's own functions (`__libc_sigaction`, `pthread_sigmask`, `dup2`, `execve`): the
//! very functions dprobe's own guards and exec gate probe.
//!
//! So while the engine writes code, no such child runs. Probes on the two functions count the
//! calls under way in one word: the entry's handler lets a call in only while the engine is
//! not patching; the handler of the function's `ret` (its only exit: the parent returns there
//! once its child has called `exec` or exited) counts it out. The engine, before its first
//! write ([`hold`]), marks the word held and waits for the calls under way to end; when it is
//! done, it clears the mark and wakes the calls it held.
//!
//! A held call must not wait inside its hit: the engine waits for every hit in progress to end
//! before it goes on (its grace period). Its handler sends it instead to a stub
//! (`reenter.rs`) that keeps the function's arguments, waits on the word as any
//! program code would, and jumps back to the function's entry: its hit, again, lets it in.
//! Held calls go in before the next change holds them again (the next [`hold`] waits for them
//! first), so a program that spawns while a tool changes probes back to back is slowed, never
//! stopped. Both waits are bounded (a child can block before its `exec`, on a FIFO it opens):
//! past their bounds, the engine patches, and the call goes in, as they would without this.
//!
//! The probes are kept only where they all jump (an `int3` at these functions would be a trap
//! in every call). Not covered: `vfork` called by the program itself (its child runs the
//! program's own code until its `exec`), a raw `clone` with `CLONE_VM`, and the C library's
//! compatibility versions of the two functions (for programs linked before glibc 2.15).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

use dprobe_arch::{find_exits, CodePart, ExitKind, NoMemory, Regs};
use dprobe_core::{Kprobe, PreAction, ProbeError};

use crate::probe::{code_in_file, register_all, Probe};
use crate::{raw_calls, thread_state};

/// The functions whose calls are held.
const SPAWNERS: [&str; 2] = ["libc:posix_spawn", "libc:posix_spawnp"];

/// Calls under way (the low 16 bits), calls held and not let in yet (the next 15), and
/// whether the engine is patching ([`HELD`]).
static WORD: AtomicU32 = AtomicU32::new(0);
const UNDER_WAY: u32 = 1;
const UNDER_WAY_MASK: u32 = 0xffff;
const WAITER: u32 = 1 << 16;
const WAITERS_MASK: u32 = 0x7fff << 16;
const HELD: u32 = 1 << 31;

/// Whether a [`SpawnHold`] has its probes placed: the engine holds nothing otherwise.
static PLACED: AtomicBool = AtomicBool::new(false);

/// The thread that holds (its state's address; 0: none known): a call it makes itself, from a
/// signal handler that interrupted its patching, is let in (it would wait for itself).
static HOLDER: AtomicU64 = AtomicU64::new(0);

/// Calls sent to wait, since the process started.
static CALLS_HELD: AtomicU64 = AtomicU64::new(0);

/// How long the engine waits for the calls it held last time to go in, and for the calls
/// under way to end (a child's time before its `exec` is well under a millisecond).
const ENGINE_WAITS_NS: u64 = 100_000_000;
/// How long a held call waits for the engine to finish (a batch of thousands of probes takes
/// tens of milliseconds).
const CALL_WAITS_NS: u64 = 2_000_000_000;

/// The probes that hold `posix_spawn` and `posix_spawnp` off while the engine patches code
/// (see the module's comment); removed when dropped.
#[derive(Debug)]
pub struct SpawnHold {
    probes: Vec<Probe>,
}

impl SpawnHold {
    /// Whether the calls are held (the probes are placed, as jumps).
    pub fn holds(&self) -> bool {
        !self.probes.is_empty()
    }

    /// How many calls were sent to wait while code changed, in this process so far.
    pub fn calls_held(&self) -> u64 {
        CALLS_HELD.load(Relaxed)
    }
}

impl Drop for SpawnHold {
    fn drop(&mut self) {
        if self.probes.is_empty() {
            return;
        }
        PLACED.store(false, SeqCst);
        self.probes.clear();
        // No probe counts any more: the next hold starts from nothing under way (a call let
        // in before is not counted out, nor is one that began before the next is placed).
        WORD.store(0, SeqCst);
        raw_calls::futex_wake(&WORD, true);
    }
}

/// Place the probes that hold `posix_spawn` and `posix_spawnp` off while the engine patches
/// code, before any other probe on those functions (a probe placed before sees a held call
/// twice). Where one of them cannot be found, has an exit other than `ret`, or cannot jump,
/// nothing is held ([`SpawnHold::holds`]); so too where another hold is placed already.
pub fn hold_spawns_while_patching() -> Result<SpawnHold, ProbeError> {
    if PLACED.load(SeqCst) {
        return Ok(SpawnHold { probes: Vec::new() });
    }
    WORD.store(0, SeqCst);
    let mut asked = Vec::new();
    for symbol in SPAWNERS {
        let Some(rets) = rets_of(symbol)? else { return Ok(SpawnHold { probes: Vec::new() }) };
        asked.push(Kprobe::symbol(symbol).pre(let_in));
        asked.extend(rets.into_iter().map(|ret| Kprobe::addr(ret).pre(count_out)));
    }
    // One batch: one round of code changes (a program the agent is loaded into pays each).
    let probes = register_all(asked)?;
    if probes.iter().any(|p| p.optimized().is_err()) {
        return Ok(SpawnHold { probes: Vec::new() });
    }
    PLACED.store(true, SeqCst);
    Ok(SpawnHold { probes })
}

/// The `ret`s of `symbol`, if they are its only exits (read from its file: in memory, its
/// first bytes may be a probe's jump already).
fn rets_of(symbol: &str) -> Result<Option<Vec<dprobe_arch::Addr>>, ProbeError> {
    let Some((start, code)) = code_in_file(symbol)? else { return Ok(None) };
    let Ok(exits) = find_exits(&[CodePart { start, code: &code }], &mut NoMemory) else { return Ok(None) };
    let rets: Vec<_> = exits.sites.iter().filter(|s| s.kind == ExitKind::Ret).map(|s| s.addr).collect();
    Ok((!rets.is_empty() && rets.len() == exits.sites.len()).then_some(rets))
}

/// The engine is about to write code: no call is let in until the returned value is dropped,
/// and the calls under way have ended (or the bound passed). Not on the hit path.
pub(crate) fn hold() -> Holding {
    if !PLACED.load(SeqCst) {
        return Holding { held: false };
    }
    let start = raw_calls::monotonic_ns();
    let past_bound = || raw_calls::monotonic_ns().saturating_sub(start) > ENGINE_WAITS_NS;
    // One engine holds at a time (under its registration lock); the thread is known as the
    // holder before it holds.
    HOLDER.store(thread_state::current().map_or(0, |s| s as *const _ as u64), SeqCst);
    // The calls held last time go in first (see the module's comment).
    loop {
        let word = WORD.load(SeqCst);
        if word & WAITERS_MASK == 0 || past_bound() {
            if WORD.compare_exchange(word, word | HELD, SeqCst, SeqCst).is_ok() {
                break;
            }
            continue;
        }
        wait_while(word);
    }
    loop {
        let word = WORD.load(SeqCst);
        if word & UNDER_WAY_MASK == 0 || past_bound() {
            break;
        }
        wait_while(word);
    }
    Holding { held: true }
}

/// Calls held while it lives ([`hold`]).
pub(crate) struct Holding {
    held: bool,
}

impl Drop for Holding {
    fn drop(&mut self) {
        if self.held {
            HOLDER.store(0, SeqCst);
            WORD.fetch_and(!HELD, SeqCst);
            raw_calls::futex_wake(&WORD, true);
        }
    }
}

/// In a forked child: no call of another thread is under way there, and no engine holds.
pub(crate) fn forget_after_fork() {
    WORD.store(0, SeqCst);
}

/// Wait on the word while it is `word`, a millisecond at most (it is woken when it changes as
/// its waiters care).
fn wait_while(word: u32) {
    let timeout = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
    raw_calls::futex_wait(&WORD, word, &timeout, true);
}

/// What [`spawn_wait`] returns when it let its call in (the stub leaves it in `r11`,
/// `reenter.rs`): a value of this process that a caller's `r11` does not hold by chance.
fn let_in_token() -> u64 {
    0xd9b0_5a17_0000_0000 ^ (&WORD as *const AtomicU32 as u64)
}

/// At the entry of `posix_spawn` or `posix_spawnp`: let the call in, or send it to wait.
fn let_in(regs: &mut Regs) -> PreAction {
    let state = thread_state::current();
    if crate::reenter::reentered(regs, let_in_token()) {
        // Back from the stub, let in there.
        started_here(state);
        return PreAction::Continue;
    }
    let holder = state.is_some_and(|s| s as *const _ as u64 == HOLDER.load(SeqCst));
    loop {
        let word = WORD.load(SeqCst);
        if word & HELD == 0 || holder {
            if WORD.compare_exchange_weak(word, word + UNDER_WAY, SeqCst, SeqCst).is_ok() {
                started_here(state);
                return PreAction::Continue;
            }
        } else if WORD.compare_exchange_weak(word, word + WAITER, SeqCst, SeqCst).is_ok() {
            CALLS_HELD.fetch_add(1, Relaxed);
            return crate::reenter::wait_then_reenter(regs, spawn_wait);
        }
    }
}

/// The thread's calls let in and not counted out yet (a thread without a state: none known,
/// and the word is counted down while it is above zero).
fn started_here(state: Option<&thread_state::ThreadState>) {
    if let Some(state) = state {
        state.spawns.set(state.spawns.get() + 1);
    }
}

/// At the `ret` of `posix_spawn` or `posix_spawnp`: the call is over, its child gone from the
/// program's memory.
fn count_out(_: &mut Regs) -> PreAction {
    if let Some(state) = thread_state::current() {
        match state.spawns.get() {
            // A call that began before the probes were placed.
            0 => return PreAction::Continue,
            n => state.spawns.set(n - 1),
        }
    }
    let Ok(word) = WORD.fetch_update(SeqCst, SeqCst, |w| (w & UNDER_WAY_MASK != 0).then(|| w - UNDER_WAY)) else {
        return PreAction::Continue;
    };
    if word & HELD != 0 && word & UNDER_WAY_MASK == UNDER_WAY {
        raw_calls::futex_wake(&WORD, true);
    }
    PreAction::Continue
}

/// Called by the stub, on the program's thread outside any hit: wait until the engine is done
/// (or the bound passed), then let the call in; returns the token the entry recognises.
extern "C" fn spawn_wait() -> u64 {
    let start = raw_calls::monotonic_ns();
    loop {
        let word = WORD.load(SeqCst);
        let past = raw_calls::monotonic_ns().saturating_sub(start) > CALL_WAITS_NS;
        if word & HELD == 0 || past {
            let waiter = if word & WAITERS_MASK != 0 { WAITER } else { 0 };
            if WORD.compare_exchange(word, word - waiter + UNDER_WAY, SeqCst, SeqCst).is_ok() {
                if waiter != 0 {
                    // The engine may wait for the held calls to go in.
                    raw_calls::futex_wake(&WORD, true);
                }
                return let_in_token();
            }
            continue;
        }
        wait_while(word);
    }
}
