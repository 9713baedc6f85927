//! A thread that blocks `SIGTRAP` keeps it blocked through dprobe's traps.
//!
//! The kernel cannot deliver a trap's `SIGTRAP` to a thread that blocks it: before the tracer
//! sees the stop, it unblocks the signal in that thread (and sets its action to the default).
//! A thread that blocks `SIGTRAP` (one that blocks every signal: dprobe attaches with this
//! engine for such a program, the agent's traps could not be delivered there) would find it
//! unblocked after each of dprobe's traps, and a `SIGTRAP` of its own later (a `raise`, after
//! dprobe has gone) would kill the program instead of staying pending. So each thread's mask
//! is noted as the tracer attaches, and after each of dprobe's traps in a thread that blocked
//! `SIGTRAP` then, the signal is blocked again, if the rest of its mask is still as noted
//! (otherwise the program changed its mask since, and what it wants for `SIGTRAP` is not
//! known). The action, which the kernel sets to the default there too, is `trap_action.rs`'s.

use std::collections::BTreeMap;

use crate::error::TraceError;
use crate::kept::bit;
use crate::sys;
use crate::tracee::Tracee;

/// The threads that blocked `SIGTRAP` when the tracer attached, with their masks then.
#[derive(Debug, Default)]
pub(crate) struct TrapMasks(BTreeMap<i32, u64>);

impl Tracee {
    /// Note the masks of the threads just attached, where they block `SIGTRAP`.
    pub(crate) fn note_trap_masks(&mut self) {
        for &tid in self.threads.keys() {
            if let Ok(mask) = sys::sigmask(tid) {
                if mask & bit(libc::SIGTRAP) != 0 {
                    self.trap_masks.0.insert(tid, mask);
                }
            }
        }
    }

    /// After one of dprobe's traps in stopped thread `tid` (a hit, or a trap consumed while
    /// every thread is being stopped): `SIGTRAP` blocked again where the thread blocked it
    /// when attached and its mask is otherwise as it was then.
    pub(crate) fn block_trap_again(&mut self, tid: i32) -> Result<(), TraceError> {
        let Some(&noted) = self.trap_masks.0.get(&tid) else { return Ok(()) };
        let now = sys::sigmask(tid)?;
        if now & bit(libc::SIGTRAP) == 0 && now | bit(libc::SIGTRAP) == noted {
            sys::set_sigmask(tid, noted)?;
        }
        Ok(())
    }

    /// Thread `tid` is gone: its number may come back as another thread's.
    pub(crate) fn forget_trap_mask(&mut self, tid: i32) {
        self.trap_masks.0.remove(&tid);
    }
}
