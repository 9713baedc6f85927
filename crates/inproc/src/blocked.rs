//! Threads a safepoint need not signal: those blocked in a system call.
//!
//! Interrupting a blocked system call harms the program: `poll`, `nanosleep`, `epoll_wait`,
//! `select` and a few others return `EINTR` after any handler ran, whatever `SA_RESTART`
//! says (`sleep(5)` returns early). So the safepoint first asks the kernel where each thread
//! is (`/proc/self/task/TID/syscall`: the system call's number, the user stack pointer and
//! program counter of a thread blocked in one, or `running`).
//!
//! # Why a blocked thread needs no signal
//!
//! The registrar examines threads after the trap path sends hits to the detour's copy, while
//! the window's first byte is an `int3`. From then on a thread reaches the middle of the
//! window in one way only: by resuming a context saved earlier in the middle of it. Entering
//! at the first byte traps and continues in the copy; a fresh signal frame saves the place
//! the thread is at, which is in the middle of the window only if it already got there. For a
//! thread asleep in the kernel, the saved contexts are its user program counter (where the
//! system call returns) and the program counters in the signal frames on its stack (where
//! the handlers it is nested in return). If none of them is inside a window or a slot, the
//! thread can never be stopped there, now or later, and it is left alone; if one is, the
//! site stays on `int3` for now ([`NotOptimized::ThreadParkedInWindow`]).
//!
//! The look is taken while the thread sleeps: its context-switch counts and its system call
//! line are read before and after, and must be unchanged (a thread that ran in between was
//! switched out again to block, which counts). Otherwise, or when its stack cannot be found
//! (an alternate signal stack on the heap, or dprobe's own stack for a hit path that moved
//! off the program's alternate stack, `hit_stack.rs`), the thread is signalled as before.
//!
//! Signal frames are recognized as the safepoint's handler does (`safepoint.rs`): the C
//! library's `sa_restorer` as return address, no `uc_link`, the floating-point state just
//! above. Frames of handlers installed with another restorer are not seen, as there.

use dprobe_arch::{Addr, NotOptimized};

use crate::safepoint::Plan;
use crate::signal_frame::{self, RIP_AT};
use crate::sys;

/// What a safepoint does with one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send it the signal: it runs, or what it would resume could not be read.
    Signal,
    /// Nothing: it is blocked in a system call and would resume outside every window.
    LeaveAlone,
}

/// How many times a thread that ran while being examined is examined again.
const TRIES: usize = 3;
/// The same, for a thread about to be signalled (see [`examine_before_signal`]).
const TRIES_BEFORE_SIGNAL: usize = 16;
/// Of which so many may find it running (one that keeps running is signalled then: a thread
/// busy in the program's code, which each of dprobe's registrations would wait for).
const RUNNING_LOOKS: usize = 4;

/// The signal frames' return address of this process's handlers: the C library's restorer
/// of the safepoint's own handler (installed by then), 0 if unknown.
pub(crate) fn restorer(sig: libc::c_int) -> u64 {
    crate::sys::swap_action(sig, None).map_or(0, |[_, _, restorer, _]| restorer)
}

/// Decide for thread `tid`, or say why the site must stay on `int3`.
pub(crate) fn examine(tid: libc::pid_t, plan: &Plan, restorer: u64) -> Result<Decision, NotOptimized> {
    examine_with(tid, plan, restorer, TRIES, false)
}

/// Decide again for thread `tid`, which [`examine`] said to signal, right before it is: a
/// thread that runs between short sleeps (a `poll` of a millisecond, a `nanosleep` of a few
/// microseconds) was often running, or ran while looked at, and asleep again by the time its
/// signal came, which ended its sleep with `EINTR` (4 threads sleeping 30 µs: 13 `EINTR`s in 5
/// attaches of the agent). Looked at more patiently, it is usually found asleep. Where the
/// look says the site must stay on `int3`, the thread is signalled, as decided before.
pub(crate) fn examine_before_signal(tid: libc::pid_t, plan: &Plan, restorer: u64) -> Decision {
    examine_with(tid, plan, restorer, TRIES_BEFORE_SIGNAL, true).unwrap_or(Decision::Signal)
}

/// [`examine`], `tries` times at most; a thread found running is looked at again too where
/// `until_asleep` says so (it is signalled once found running [`RUNNING_LOOKS`] times).
fn examine_with(
    tid: libc::pid_t,
    plan: &Plan,
    restorer: u64,
    tries: usize,
    until_asleep: bool,
) -> Result<Decision, NotOptimized> {
    if restorer == 0 {
        return Ok(Decision::Signal);
    }
    let mut running = 0;
    for _ in 0..tries {
        let Some(before) = switches(tid) else { return Ok(Decision::Signal) };
        let Some(call) = syscall(tid) else {
            running += 1;
            if until_asleep && running < RUNNING_LOOKS {
                continue;
            }
            return Ok(Decision::Signal);
        };
        let parked = match plan.touches(call.pc) {
            true => Some(true),
            false => saved_in_window(plan, call.sp, restorer),
        };
        if switches(tid) != Some(before) || syscall(tid) != Some(call) {
            continue;
        }
        return match parked {
            None => Ok(Decision::Signal),
            Some(false) => Ok(Decision::LeaveAlone),
            Some(true) => Err(NotOptimized::ThreadParkedInWindow { tid, syscall: call.nr }),
        };
    }
    Ok(Decision::Signal)
}

/// A thread's system call, as `/proc/self/task/TID/syscall` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Syscall {
    nr: i64,
    args: [u64; 6],
    sp: u64,
    pc: u64,
}

/// The system call `tid` is blocked in; `None` when it runs or is gone. A thread stopped
/// outside a system call (`-1`: held by a tracer, or in a group-stop) is asleep all the same,
/// with the place it resumes known, and counts as blocked in call `-1`: a signal could not
/// reach its handler before whoever stopped it lets it go (a program started by dprobe is
/// held so while the agent places its probes), and the same reasoning says it cannot be
/// inside a window unless that place or one of its signal frames is.
fn syscall(tid: libc::pid_t) -> Option<Syscall> {
    let line = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let mut fields = line.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    let hex = |f: Option<&str>| u64::from_str_radix(f?.strip_prefix("0x")?, 16).ok();
    let mut args = [0u64; 6];
    if nr >= 0 {
        for a in &mut args {
            *a = hex(fields.next())?;
        }
    } else if !stopped(tid) {
        return None;
    }
    let (sp, pc) = (hex(fields.next())?, hex(fields.next())?);
    Some(Syscall { nr, args, sp, pc })
}

/// Whether `tid` is stopped (`T`) or held by a tracer (`t`).
fn stopped(tid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('t') || rest.starts_with('T'))
}

/// How many times `tid` was switched out, voluntarily and not.
fn switches(tid: libc::pid_t) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name))?.trim().parse().ok();
    Some((field("voluntary_ctxt_switches:")?, field("nonvoluntary_ctxt_switches:")?))
}

/// Whether a signal frame on the stack above `sp` saved a program counter inside a window or
/// a slot, or any word there points into a retired detour; `None` when the stack is not one
/// of the plan's (it cannot be read safely).
fn saved_in_window(plan: &Plan, sp: u64, restorer: u64) -> Option<bool> {
    if crate::hit_stack::on_any_hit_stack(sp) {
        // Blocked in a handler whose hit path moved off the program's alternate stack: the
        // frames it came from are there, not on this stack.
        return None;
    }
    let (_, end) = plan.stack_of(sp)?;
    let start = sp & !15;
    let mut stack = vec![0u8; (end - start) as usize];
    sys::read_memory(Addr(start), &mut stack).ok()?;
    let word = |at: u64| {
        let i = (at - start) as usize;
        u64::from_ne_bytes(stack[i..i + 8].try_into().expect("8 bytes"))
    };
    if !plan.retired.is_empty() && (start..end).step_by(8).any(|at| plan.in_retired(word(at))) {
        // A hit in progress through a retired detour (or a saved program counter inside one).
        return Some(true);
    }
    // The kernel aligns a frame so that its start is 8 modulo 16.
    let mut frame = start + 8;
    while frame + signal_frame::READ_BYTES <= end {
        if signal_frame::starts_at(frame, restorer, word) && plan.frame_touches(word(frame + RIP_AT)) {
            return Some(true);
        }
        frame += 16;
    }
    Some(false)
}
