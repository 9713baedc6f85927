//! A hit path the program left for good: a signal handler of its own that interrupted
//! dprobe's work at a hit (a timer's, say) and jumped out with `siglongjmp`, to a frame
//! above the hit. The thread's marks of that hit stay as they were (inside the hit path,
//! inside a handler, in a read section): every later hit would be taken for a nested one and
//! run no handler, and a grace period would wait for the read section for ever (probes could
//! not be removed).
//!
//! So each hit path's entry first looks whether the thread's marks are stale: they say it is
//! inside a hit path, yet the new hit's stack pointer is above the mark that path left (its
//! stack pointer as it began, `ThreadState::quiet_sp`), on the same stack: every frame of
//! that path is gone. A hit nested in a hit path is always below its mark (a signal frame and
//! the handler's frames go below the interrupted code), except on another stack: dprobe's
//! own hit stacks and the program's alternate stack, where nothing is concluded. Then the
//! marks are cleared, and the section the old path held is ended, as its own end would have.

use std::sync::atomic::Ordering::*;

use crate::thread_state::ThreadState;
use crate::{hit_stack, sys};

/// Before a hit path of `state`'s thread begins at stack pointer `rsp` (the program's, at
/// the hit): clear the marks of one it left without returning. Whether there was one.
/// Inlined: a hit outside any hit path (nearly every one) pays a load and a test.
#[inline(always)]
pub(crate) fn forget_left_hit_path(state: &ThreadState, rsp: u64) -> bool {
    state.in_hit_path.get() != 0 && forget_if_left(state, rsp)
}

/// [`forget_left_hit_path`] for a thread whose marks say it is inside a hit path.
#[cold]
#[inline(never)]
fn forget_if_left(state: &ThreadState, rsp: u64) -> bool {
    let mark = state.quiet_sp.get();
    if mark == 0 || rsp <= mark {
        return false;
    }
    // Not on the same stack as the mark: nothing to conclude.
    if hit_stack::on_any_hit_stack(mark) || hit_stack::on_any_hit_stack(rsp) {
        return false;
    }
    // The alternate stack the kernel reports, and those the thread was last seen with (one
    // armed with `SS_AUTODISARM` is not reported while a handler runs on it).
    let (seen_base, seen_size, _) = state.alternate_seen.get();
    let stacks =
        [sys::alternate_stack(), (seen_base, seen_size), state.autodisarm_seen.get(), state.program_alternate.get()];
    let on = |sp: u64, (base, size): (u64, u64)| size != 0 && sp.wrapping_sub(base) <= size;
    if stacks.into_iter().any(|s| on(rsp, s) || on(mark, s)) {
        return false;
    }
    state.in_hit_path.set(0);
    state.in_handler.set(false);
    state.handler_body.set(0);
    state.own_work.set(0);
    state.tool_work.set(0);
    state.own_frames_len.set(0);
    state.guard_point.set(std::ptr::null_mut());
    state.faulted.set(false);
    // A section of its own that ended: a grace period waiting for it goes on.
    let word = state.jump_reading.load(Relaxed);
    state.jump_reading.store(((word >> 32) + 1) << 32, Release);
    true
}
