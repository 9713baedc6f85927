//! A program entering a new user namespace must be alone in its process.
//!
//! `unshare(CLONE_NEWUSER)`, and `setns` into a user, mount or time namespace, fail (`EINVAL`,
//! `EUSERS`) while another thread of the process lives, and the agent's thread is one:
//! `unshare --user`, `nsenter --mount`, a rootless container's start or a sandbox failed
//! under dprobe. So a probe at the C library's `unshare`
//! and `setns` sends such a call to wait, outside any hit (`dprobe_inproc::wait_then_reenter`),
//! until the agent has left: its thread, asked through a word it looks at between its waits
//! (at most 20 ms), says so in the shared memory with the caller's thread, which dprobe then
//! watches for its `exec` (the program it executes gets an agent again), removes every probe
//! as when dprobe goes away, and ends. The call then enters the function again, alone, and
//! goes on as it would untraced. Where the program has
//! other threads of its own, the call would fail anyway: the agent stays, and the call goes
//! on at once. Not seen: the system call made without the C library.
//!
//! A seccomp filter installed on every thread at once (`seccomp(SECCOMP_SET_MODE_FILTER)` with
//! `SECCOMP_FILTER_FLAG_TSYNC`, through the C library's `syscall`, as libseccomp does) would
//! bind the agent's thread too, and a sandbox's filter may kill the process at the agent's
//! next system call (an allow-list made for the program's own): the agent leaves the same
//! way, the program's other threads there or not. So it does for a filter (or strict mode)
//! that binds the calling thread alone (`prctl(PR_SET_SECCOMP)`, or `seccomp` without
//! `TSYNC`): that thread's hits make system calls too (`sigaltstack` every 1,024 hits, reads
//! of memory for fetches), and an allow-list killed the process at its 1,025th hit. Whether a
//! filter would forbid those calls is not known without running it.
//!
//! And so it does for a thread that blocks `SIGTRAP` by name (`pthread_sigmask`, or
//! `sigprocmask`, which calls it, with a set of few signals that holds it: a program that
//! uses `SIGTRAP` itself, and `sigwait`s for it): the kernel kills a thread at a trap it
//! blocks, and the agent's probes on `int3` trap. Sets that block most signals have `SIGTRAP`
//! left out by `dprobe_inproc::keep_traps_open`, which is no answer here: the program's own
//! `SIGTRAP` would be delivered where it waits for it. (The ptrace engine, which takes traps
//! as the tracer, is chosen for a program that blocks it at an attach; one that blocks it
//! later is its documented gap, `trap_mask.rs`.)

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::*};

use dprobe_inproc::{raw_calls, register_all, Kprobe, PreAction, Probe, Regs};

use crate::hit::on_agent_thread;

/// `CLONE_NEWUSER`, as `unshare` and `setns` take it.
const NEW_USER: u64 = libc::CLONE_NEWUSER as u64;
/// The namespaces `setns` lets only a process alone enter: user, mount, time.
const ALONE_FOR_SETNS: u64 = (libc::CLONE_NEWUSER | libc::CLONE_NEWNS | CLONE_NEWTIME) as u64;
/// `CLONE_NEWTIME` (Linux 5.6).
const CLONE_NEWTIME: libc::c_int = 0x80;

/// How long a call waits for the agent to leave (its thread removes every probe: a safepoint
/// each, a fraction of a second on a busy process).
const PATIENCE_NS: u64 = 5_000_000_000;

/// Why a call asks the agent to leave: [`ALONE`] (it enters a namespace, which a process does
/// alone), [`SANDBOXED`] (it puts a thread, or every thread, under a seccomp filter) or
/// [`TRAP_BLOCKED`] (a thread blocks `SIGTRAP` by name).
static WHY: AtomicU32 = AtomicU32::new(ALONE);
pub(crate) const ALONE: u32 = 0;
pub(crate) const SANDBOXED: u32 = 1;
pub(crate) const TRAP_BLOCKED: u32 = 2;
/// `seccomp`'s operations that put the calling thread (or, with `SECCOMP_FILTER_FLAG_TSYNC`,
/// every thread) under a filter, or in strict mode.
const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
/// `prctl`'s option for the same, and its modes.
const PR_SET_SECCOMP: u64 = libc::PR_SET_SECCOMP as u64;
const SECCOMP_MODE_STRICT: u64 = 1;
const SECCOMP_MODE_FILTER: u64 = 2;

/// The process whose agent thread leaves when asked (a forked child has its own).
static OWNER: AtomicI32 = AtomicI32::new(0);
/// That thread.
static AGENT_TID: AtomicI32 = AtomicI32::new(0);
/// The thread whose request is the one asked (the one that enters the namespace; 0: none).
static CALLER: AtomicI32 = AtomicI32::new(0);
/// [`IDLE`], [`ASKED`] (a call waits for the agent to leave) or [`STAYS`] (it will not: the
/// program has other threads).
static STATE: AtomicU32 = AtomicU32::new(IDLE);
const IDLE: u32 = 0;
const ASKED: u32 = 1;
const STAYS: u32 = 2;

/// The probes on `unshare`, `setns`, `syscall` and `prctl`, removed when dropped.
pub(crate) struct LeavesForUserNamespaces {
    _probes: Vec<Probe>,
}

/// Place the probes, on the agent's thread (the one that leaves when asked). `None` where none
/// could be placed.
pub(crate) fn watch() -> Option<LeavesForUserNamespaces> {
    // One batch; where one function is missing (or cannot be probed), each on its own.
    let probes = register_all(probes())
        .unwrap_or_else(|_| probes().into_iter().filter_map(|p| dprobe_inproc::register(p).ok()).collect());
    (!probes.is_empty()).then(|| LeavesForUserNamespaces::of(probes))
}

/// The probes [`watch`] places, for a batch of the caller's (the calling thread is the one
/// that leaves); [`LeavesForUserNamespaces::of`] takes them once placed.
pub(crate) fn probes() -> Vec<Kprobe> {
    serve_here();
    vec![
        Kprobe::symbol("libc:unshare").pre(at_unshare),
        Kprobe::symbol("libc:setns").pre(at_setns),
        crate::syscall_site::probe().pre(at_syscall),
        Kprobe::symbol("libc:prctl").pre(at_prctl),
        Kprobe::symbol("libc:pthread_sigmask").pre(at_sigmask),
    ]
}

impl LeavesForUserNamespaces {
    /// The probes [`probes`] gave, placed; the ones on `syscall` and `pthread_sigmask` only as
    /// jumps (programs call them often, Rust's locks `syscall` for each wait: a trap there
    /// would cost each call a signal; and a signal handler running with `SIGTRAP` blocked
    /// already would be killed by one at its `pthread_sigmask`).
    pub(crate) fn of(probes: Vec<Probe>) -> LeavesForUserNamespaces {
        let jump_only = |p: &Probe| matches!(&*p.target().function.name, "syscall" | "pthread_sigmask");
        let kept = |p: &Probe| !jump_only(p) || p.optimized().is_ok();
        LeavesForUserNamespaces { _probes: probes.into_iter().filter(kept).collect() }
    }
}

/// On a forked child's agent thread: it is the one that leaves (the probes are the child's
/// copies).
pub(crate) fn serve_here() {
    STATE.store(IDLE, Release);
    CALLER.store(0, Release);
    AGENT_TID.store(raw_calls::gettid(), Release);
    OWNER.store(raw_calls::getpid(), Release);
}

/// What a process did that made the agent leave it, for `why` ([`ALONE`], [`SANDBOXED`],
/// [`TRAP_BLOCKED`]), as dprobe says it.
pub fn agent_left_because(why: u32) -> &'static str {
    match why {
        SANDBOXED => {
            "asked to put its threads, or one, under a seccomp filter or in strict mode, which may forbid the \
             agent's system calls"
        }
        TRAP_BLOCKED => {
            "blocked SIGTRAP by name in a thread (as a program that uses that signal itself does), and the kernel \
             kills a thread at a trap it blocks, which the agent's probes on int3 would be"
        }
        _ => "entered a new user, mount or time namespace, which a process does alone",
    }
}

/// Why the call that asks the agent to leave does ([`ALONE`], [`SANDBOXED`], [`TRAP_BLOCKED`]).
pub(crate) fn why() -> u32 {
    WHY.load(Acquire)
}

/// Whether a call waits for the agent to leave (looked at by the agent's thread).
pub(crate) fn asked() -> bool {
    STATE.load(Acquire) == ASKED && OWNER.load(Acquire) == raw_calls::getpid()
}

/// On the agent's thread, asked: the thread that asked (it enters the namespace, or binds every
/// thread to a seccomp filter), if the agent leaves. It does where the caller still waits and,
/// for a namespace, the program has no other thread (the caller's alone); else the call goes
/// on at once (into a namespace, it fails as it would untraced).
pub(crate) fn leaves() -> Option<i32> {
    let threads = std::fs::read_dir("/proc/thread-self/..").map_or(0, |tasks| tasks.count());
    let caller = CALLER.load(Acquire);
    let alone = threads == 2 || WHY.load(Acquire) != ALONE;
    if alone && caller != 0 && raw_calls::thread_lives(caller) && STATE.load(Acquire) == ASKED {
        return Some(caller);
    }
    if STATE.compare_exchange(ASKED, STAYS, AcqRel, Acquire).is_ok() {
        raw_calls::futex_wake(&STATE, true);
    }
    None
}

/// At the entry of `unshare(flags)`: a call into a new user namespace waits until the agent
/// has left.
fn at_unshare(regs: &mut Regs) -> PreAction {
    let into_user_namespace = regs.rdi & NEW_USER != 0;
    at_call(regs, into_user_namespace)
}

/// At the entry of `setns(fd, nstype)`: the same for a user, mount or time namespace, where
/// the namespace's type is given (0, any type, is not looked into; a pid file descriptor's
/// flags are).
fn at_setns(regs: &mut Regs) -> PreAction {
    let into_user_namespace = regs.rsi & ALONE_FOR_SETNS != 0;
    at_call(regs, into_user_namespace)
}

/// At `syscall(number, ...)`: a `seccomp` call that puts a thread under a filter,
/// or in strict mode, waits until the agent has left (see the module's comment). Calls that
/// only ask whether the kernel supports an operation or a flag, and cannot install anything
/// (libseccomp's `seccomp(SECCOMP_SET_MODE_STRICT, 1, NULL)`, a filter's flags tried with no
/// filter), go on at once.
fn at_syscall(regs: &mut Regs) -> PreAction {
    // `syscall`'s arguments: the number, then the call's (operation, flags, filter). The
    // operation and the flags are `unsigned int`s: their upper halves are anything.
    // (Read where the probe finds them: past the moves of `syscall`'s arguments, where it
    // can go in with no trap, `syscall_site.rs`.)
    let [number, operation, flags, filter] = crate::syscall_site::arguments(regs);
    let (operation, flags) = (u64::from(operation as u32), u64::from(flags as u32));
    let sandboxes = number == libc::SYS_seccomp as u64
        && match operation {
            SECCOMP_SET_MODE_FILTER => filter != 0,
            SECCOMP_SET_MODE_STRICT => flags == 0 && filter == 0,
            _ => false,
        };
    asks_to_leave(regs, sandboxes, ask_and_wait_sandboxed, crate::syscall_site::back_to_entry)
}

/// At the entry of `prctl(option, ...)`: the same for `PR_SET_SECCOMP` (a filter mode with no
/// filter, as systemd asks whether seccomp is there, installs nothing).
fn at_prctl(regs: &mut Regs) -> PreAction {
    // (The option is an `int`, the mode an `unsigned long`, then the filter.)
    let sandboxes = u64::from(regs.rdi as u32) == PR_SET_SECCOMP
        && match regs.rsi {
            SECCOMP_MODE_FILTER => regs.rdx != 0,
            mode => mode == SECCOMP_MODE_STRICT,
        };
    asks_to_leave(regs, sandboxes, ask_and_wait_sandboxed, at_entry)
}

/// At the entry of `pthread_sigmask(how, set, old)`: a call that blocks `SIGTRAP` by name
/// waits until the agent has left (see the module's comment).
fn at_sigmask(regs: &mut Regs) -> PreAction {
    let (how, set) = (regs.rdi as i32, regs.rsi);
    let blocks = set != 0 && (how == libc::SIG_BLOCK || how == libc::SIG_SETMASK) && {
        let mut word = [0u8; 8];
        dprobe_inproc::read_bytes(set, &mut word).is_ok()
            && dprobe_inproc::blocks_trap_by_name(u64::from_le_bytes(word))
    };
    asks_to_leave(regs, blocks, ask_and_wait_trap_blocked, at_entry)
}

fn at_call(regs: &mut Regs, into_user_namespace: bool) -> PreAction {
    asks_to_leave(regs, into_user_namespace, ask_and_wait, at_entry)
}

/// A call that `needs_it` (and is not the same call entered again, nor the agent's own) waits,
/// in `wait`, until the agent has left, then enters the function again from its entry, where
/// `back_to_entry` sets its registers back first.
fn asks_to_leave(
    regs: &mut Regs,
    needs_it: bool,
    wait: extern "C" fn() -> u64,
    back_to_entry: fn(&mut Regs),
) -> PreAction {
    if dprobe_inproc::reentered(regs, let_in_token()) {
        return PreAction::Continue;
    }
    if !needs_it || on_agent_thread(regs.rsp) || OWNER.load(Acquire) != raw_calls::getpid() {
        return PreAction::Continue;
    }
    back_to_entry(regs);
    dprobe_inproc::wait_then_reenter(regs, wait)
}

/// A probe at a function's entry: its registers are the call's there.
fn at_entry(_: &mut Regs) {}

/// [`ask_and_wait`] for a call that puts a thread, or every thread, under a seccomp filter.
extern "C" fn ask_and_wait_sandboxed() -> u64 {
    ask_and_wait_for(SANDBOXED)
}

/// [`ask_and_wait`] for a call that blocks `SIGTRAP` by name.
extern "C" fn ask_and_wait_trap_blocked() -> u64 {
    ask_and_wait_for(TRAP_BLOCKED)
}

/// Run by the stub on the program's thread, outside any hit: ask the agent to leave, and wait
/// until its thread is gone, or it stays, or the patience is out. No call of the C library.
extern "C" fn ask_and_wait() -> u64 {
    ask_and_wait_for(ALONE)
}

/// [`ask_and_wait`], the call asking for reason `why` ([`ALONE`], [`SANDBOXED`]).
fn ask_and_wait_for(why: u32) -> u64 {
    let me = raw_calls::gettid();
    let start = raw_calls::monotonic_ns();
    let slice = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
    // One request at a time, its caller's: another thread asking waits its turn.
    let done = |state: u32| {
        if CALLER.load(Acquire) == me {
            let _ = STATE.compare_exchange(state, IDLE, AcqRel, Acquire);
            CALLER.store(0, Release);
            raw_calls::futex_wake(&STATE, true);
        }
    };
    loop {
        let agent = AGENT_TID.load(Acquire);
        if agent == 0 || !raw_calls::thread_lives(agent) {
            done(ASKED);
            break;
        }
        if CALLER.compare_exchange(0, me, AcqRel, Acquire).is_ok() {
            WHY.store(why, Release);
            STATE.store(ASKED, Release);
        }
        let state = STATE.load(Acquire);
        if state == STAYS && CALLER.load(Acquire) == me {
            done(STAYS);
            break;
        }
        // A thread about to block SIGTRAP waits for as long as the agent's thread lives: gone
        // on with the agent's probes still on `int3`, it would be killed at its next hit.
        if why != TRAP_BLOCKED && raw_calls::monotonic_ns().saturating_sub(start) >= PATIENCE_NS {
            // Taken back, so that the agent never leaves later for a call that went on.
            done(ASKED);
            break;
        }
        raw_calls::futex_wait(&STATE, state, &slice, true);
    }
    let_in_token()
}

/// What [`ask_and_wait`] returns (the stub leaves it in `r11`): a value of this process that
/// a caller's `r11` does not hold by chance.
fn let_in_token() -> u64 {
    0x05e7_0115_0000_0000 ^ (&STATE as *const AtomicU32 as u64)
}
