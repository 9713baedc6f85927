//! A thread that blocks `SIGTRAP` traps with it open while traced, and has it blocked again
//! when let go.
//!
//! The kernel cannot deliver a trap's `SIGTRAP` to a thread that blocks it: before the tracer
//! sees the stop, it unblocks the signal in that thread and sets its action to the default,
//! for the whole process (`force_sig_info_to_task`). A program's own `SIGTRAP` handler would
//! be gone at each of dprobe's traps in such a thread (a thread that blocks every signal, as
//! worker threads of many servers do), and the program's next `SIGTRAP` could come between the
//! action put back (`trap_action.rs`) and another such trap. So each thread that blocks
//! `SIGTRAP` when the tracer attaches (every thread held), at a stop before its first trap
//! (a new thread's first stop), or as its program starts (a mask inherited, or kept through an
//! `execve`), has it unblocked, its mask noted; its traps then change nothing.
//!
//! What the program sees of it while traced: a `SIGTRAP` it sends such a thread is blocked
//! again and given back to the kernel, which queues it as pending, as untraced (the thread's
//! mask is then its own again, and blocked again after each of dprobe's traps there, which
//! open it, and which the kernel gives the pending signal in place of their own: queued again,
//! [`Tracee::trap_taken`]); a thread that asks for its mask sees `SIGTRAP` open. When the
//! tracer lets it go, the signal is blocked again in each such thread whose mask is otherwise
//! as noted (one whose program changed its mask since wants what it set), so that a `SIGTRAP`
//! of its own later stays pending instead of killing it.
//!
//! Not covered: a thread that blocks `SIGTRAP` itself after its first stop (a worker that
//! calls `pthread_sigmask` as it starts) traps once with it blocked, and the kernel opens it
//! then. That trap resets the action; should it come in the moment between the action put
//! back and the delivery of the program's own `SIGTRAP` in another thread, the program dies
//! of it. Seen once in about twenty runs of a test whose program raised its first `SIGTRAP`
//! as four such threads trapped for the first time (the test now raises after them). Closing
//! the moment would take every other thread stopped around each delivery of the program's
//! own `SIGTRAP`.

use std::collections::BTreeMap;

use dprobe_arch::Memory;

use crate::error::TraceError;
use crate::kept::bit;
use crate::sys;
use crate::tracee::Tracee;

/// The C library's own two signals (32 and 33: thread cancellation and `setuid` across
/// threads), which it blocks only in its windows that block every signal (a thread starting,
/// `pthread_create`, a thread ending), never in a mask set through its functions.
const LIBRARY_OWN: u64 = bit(32) | bit(33);

/// The threads that blocked `SIGTRAP`, with their masks then.
#[derive(Debug, Default)]
pub(crate) struct TrapMasks(BTreeMap<i32, Noted>);

#[derive(Debug, Clone, Copy)]
struct Noted {
    /// The mask, `SIGTRAP` blocked.
    mask: u64,
    /// Whether `SIGTRAP` is blocked again, a signal of the program's pending.
    closed: bool,
    /// Whether the mask is the creating thread's, noted as the thread was created.
    inherited: bool,
}

impl Tracee {
    /// Open `SIGTRAP` in the threads just attached that block it, noting their masks; not in
    /// one that runs a signal handler, whose mask is the handler's for a while (its frame's
    /// return address, the C library's restorer, is on its stack; known where the program's
    /// `SIGTRAP` action is).
    pub(crate) fn note_trap_masks(&mut self) {
        for tid in self.threads.keys().copied().collect::<Vec<_>>() {
            let _ = self.open_trap(tid);
        }
    }

    /// Whether stopped thread `tid`'s stack holds return address `restorer` above its stack
    /// pointer (within 64 KiB): a signal frame, under a handler that runs.
    fn in_a_handler(&mut self, tid: i32, restorer: u64) -> bool {
        const SCAN: u64 = 64 << 10;
        let Ok(r) = sys::get_regs(tid) else { return false };
        let mut page = [0u8; 4096];
        let mut at = r.rsp & !7;
        let end = at.saturating_add(SCAN);
        while at < end {
            // To the end of its page: the stack's top is a page's end.
            let len = (4096 - (at & 4095)) as usize;
            if self.memory.read(dprobe_arch::Addr(at), &mut page[..len]).is_err() {
                return false;
            }
            if page[..len].chunks_exact(8).any(|w| u64::from_le_bytes(w.try_into().unwrap()) == restorer) {
                return true;
            }
            at += len as u64;
        }
        false
    }

    /// Open `SIGTRAP` in stopped thread `tid` if it blocks it (a new thread, at its first
    /// stop) and runs no handler (see [`Tracee::note_trap_masks`]), noting its mask.
    pub(crate) fn open_trap(&mut self, tid: i32) -> Result<(), TraceError> {
        let mask = sys::sigmask(tid)?;
        if mask & bit(libc::SIGTRAP) == 0 {
            return Ok(());
        }
        if self.trap_masks.0.get(&tid).is_some_and(|n| n.inherited && !n.closed) {
            // A new thread whose creator's mask was noted ([`Tracee::inherit_trap_mask`]),
            // seen blocking `SIGTRAP` (the C library's window at its start): opened all the
            // same, its creator's mask kept as its own.
            sys::set_sigmask(tid, mask & !bit(libc::SIGTRAP))?;
            return Ok(());
        }
        if self.trap_masks.0.contains_key(&tid) {
            return Ok(());
        }
        if !self.trap_restorer().is_some_and(|r| self.in_a_handler(tid, r)) {
            sys::set_sigmask(tid, mask & !bit(libc::SIGTRAP))?;
            self.trap_masks.0.insert(tid, Noted { mask, closed: false, inherited: false });
        }
        Ok(())
    }

    /// Whether thread `tid` blocks `SIGTRAP` as far as its program knows (its mask noted,
    /// `SIGTRAP` opened by dprobe).
    pub(crate) fn blocks_trap(&self, tid: i32) -> bool {
        self.trap_masks.0.contains_key(&tid)
    }

    /// Thread `tid` created thread `new`: where `tid`'s mask is noted (dprobe opened `SIGTRAP`
    /// in it), `new` starts with that mask as opened, or takes it once the C library's start
    /// of the thread puts it back, and untraced would have it as noted: noted so for `new`
    /// (in place of whatever its own first stop noted, inside the library's window that blocks
    /// every signal), to be blocked again at the detach. A thread created by a thread whose
    /// program had `SIGTRAP` open is left as it is.
    pub(crate) fn inherit_trap_mask(&mut self, tid: i32, new: i32) {
        if let Some(&Noted { mask, closed: false, .. }) = self.trap_masks.0.get(&tid) {
            self.trap_masks.0.insert(new, Noted { mask, closed: false, inherited: true });
        }
    }

    /// Thread `tid`, whose program blocks `SIGTRAP`, is in the delivery stop of a `SIGTRAP`
    /// sent to it: blocked again, the signal is queued again by the kernel as the thread
    /// resumes with it, pending as untraced. Its mask is its program's again.
    pub(crate) fn keep_trap_pending(&mut self, tid: i32) -> Result<(), TraceError> {
        if let Some(noted) = self.trap_masks.0.get_mut(&tid) {
            noted.closed = true;
        }
        Ok(sys::set_sigmask(tid, sys::sigmask(tid)? | bit(libc::SIGTRAP))?)
    }

    /// After one of dprobe's traps in stopped thread `tid` (a hit, or a trap consumed while
    /// every thread is being stopped): where `SIGTRAP` was blocked again for a pending signal,
    /// the kernel opened it; blocked again.
    ///
    /// Where the program's own `SIGTRAP` was pending, blocked, the kernel gave the thread that
    /// one in place of the trap's (it queues one standard signal of a kind): the stop says a
    /// process sent it (a code of zero or less), and it would be lost with the trap (a
    /// program that blocks `SIGTRAP`, raises it, and takes it with `sigwait` found nothing
    /// pending once it met a probe). Its information is returned, for the caller to give it
    /// back: best as the signal the thread resumes with ([`Tracee::deliverable`] then keeps it
    /// pending, with its information, where the program blocks it), else
    /// [`Tracee::queue_own_trap_again`].
    pub(crate) fn trap_taken(&mut self, tid: i32) -> Result<Option<libc::siginfo_t>, TraceError> {
        let info = sys::siginfo(tid)?;
        if info.si_code <= 0 {
            return Ok(Some(info));
        }
        if self.trap_masks.0.get(&tid).is_some_and(|n| n.closed) {
            sys::set_sigmask(tid, sys::sigmask(tid)? | bit(libc::SIGTRAP))?;
        }
        Ok(None)
    }

    /// The program's own `SIGTRAP` `info`, which came in place of one of dprobe's traps in
    /// thread `tid` ([`Tracee::trap_taken`]) and which the thread cannot resume with: queued
    /// again (as sent by dprobe where the kernel refuses to queue it with its sender), and
    /// blocked again where its program blocks it. Best effort: a signal not queued again is
    /// lost, as it was before, and the trace goes on.
    pub(crate) fn queue_own_trap_again(&mut self, tid: i32, info: &libc::siginfo_t) {
        let _ = crate::continued::queue_again(self.process_of(tid), tid, info);
        if let Some(noted) = self.trap_masks.0.get_mut(&tid) {
            noted.closed = true;
            if let Ok(mask) = sys::sigmask(tid) {
                let _ = sys::set_sigmask(tid, mask | bit(libc::SIGTRAP));
            }
        }
    }

    /// Block `SIGTRAP` again in the stopped threads it was opened in, whose masks are
    /// otherwise as noted: the program is let go.
    ///
    /// A thread started while traced has its creator's mask noted
    /// ([`Tracee::inherit_trap_mask`]): a server's workers, started by a main thread that
    /// blocks every signal, were left with `SIGTRAP` open. A mask noted inside one of the C
    /// library's windows that block every signal (its own two among them, which no mask set
    /// through it holds) at the attach is not the one the thread goes back to: one caught
    /// inside `pthread_create` puts back the mask it had before. Such a thread whose mask is
    /// now that mask of every signal but the library's own, `SIGTRAP` open, has it blocked
    /// again.
    ///
    /// Not told apart: a thread whose program opened `SIGTRAP` itself since (a worker that
    /// unblocks it to take its own traps) in a mask otherwise as noted; it is blocked again.
    pub(crate) fn close_traps(&mut self) {
        for (tid, noted) in std::mem::take(&mut self.trap_masks.0) {
            if noted.closed || !self.threads.get(&tid).is_some_and(|t| t.is_stopped()) {
                continue;
            }
            if let Ok(now) = sys::sigmask(tid) {
                let trap = bit(libc::SIGTRAP);
                let as_noted = now | trap == noted.mask
                    || noted.mask & LIBRARY_OWN == LIBRARY_OWN
                        && (now | trap) & !LIBRARY_OWN == noted.mask & !LIBRARY_OWN;
                if now & trap == 0 && as_noted {
                    let _ = sys::set_sigmask(tid, now | trap);
                }
            }
        }
    }

    /// Thread `tid` is gone: its number may come back as another thread's.
    pub(crate) fn forget_trap_mask(&mut self, tid: i32) {
        self.trap_masks.0.remove(&tid);
    }
}
