//! The program's signals and dprobe's out-of-line copies. A thread resumed into a copy with a
//! signal pending (one that came while it was stopped at the probe, or during the copy's few
//! instructions) would run the handler with its interrupted address inside dprobe's page: a
//! page that is unmapped at detach, and the handler may still be running then (or block, or
//! `longjmp` later). As the kernel holds signals back while a uprobe's instruction executes
//! out of line (`uprobe_deny_signal`), such a signal is delivered only once the thread has
//! stepped out of the copy, back in the program's code, with its information unchanged.
//! A fault of the copy itself (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE` raised by the
//! instruction) is the program's to see where it happened: at the original instruction.

use dprobe_arch::Addr;

use dprobe_sym::read_maps_of;

use crate::error::TraceError;
use crate::sys;
use crate::tracee::Tracee;

/// The most instructions of a copy (its relocated instruction and the jump back, with the
/// few moves around a far operand).
const MAX_STEPS: usize = 64;

impl Tracee {
    /// Whether `rip` is inside an out-of-line copy.
    pub(crate) fn in_copy(&self, rip: u64) -> bool {
        self.sites.values().filter_map(|s| s.prepared.slot.as_ref()).any(|s| s.contains(Addr(rip)))
    }

    /// Resume thread `tid` from the signal-delivery stop of `signal`, delivering it; a thread
    /// inside an out-of-line copy first steps out of it (signals that come meanwhile stay
    /// pending).
    pub(crate) fn deliver_signal(&mut self, tid: i32, signal: i32) -> Result<(), TraceError> {
        if signal == 0 || !self.in_copy(sys::get_regs(tid)?.rip) {
            return Ok(sys::cont(tid, signal)?);
        }
        let info = sys::siginfo(tid)?;
        let fault = matches!(signal, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE) && info.si_code > 0;
        if fault {
            self.fault_where_the_program_sees_it(tid)?;
            return Ok(sys::cont(tid, signal)?);
        }
        for _ in 0..MAX_STEPS {
            self.step(tid)?;
            if !self.in_copy(sys::get_regs(tid)?.rip) {
                // A single-step stop is a signal-delivery stop: the signal goes from there,
                // with the information it came with.
                sys::set_siginfo(tid, &info)?;
                return Ok(sys::cont(tid, signal)?);
            }
        }
        Err(TraceError::Stuck { tid, place: "an out-of-line copy" })
    }

    /// A fault raised by a copied instruction (the thread stopped at the copy's start, the
    /// instruction not done): the thread is moved back to the original instruction, so that
    /// the program's handler sees the fault where its code has it (a crash report, a JIT or a
    /// garbage collector that looks up the faulting instruction), and a handler that returns
    /// runs the instruction again from there (its probe is hit again, as the kernel's
    /// uprobes do: `arch_uprobe_abort_xol`).
    fn fault_where_the_program_sees_it(&mut self, tid: i32) -> Result<(), TraceError> {
        let mut r = sys::get_regs(tid)?;
        let slots = self.sites.values().filter_map(|s| s.prepared.slot.as_ref());
        let Some(slot) = slots.filter(|s| s.far_scratch.is_none()).find(|s| s.entry().0 == r.rip) else {
            return Ok(());
        };
        r.rip = slot.original.0;
        self.faulted_at.insert(tid, (r.rip, r.rsp));
        Ok(sys::set_regs(tid, &r)?)
    }

    /// The emulation of the probed instruction at `key` by thread `tid` of process `pid`
    /// (stack pointer `rsp`) failed to access `addr`: the thread, at the original
    /// instruction, is given the `SIGSEGV` the instruction would have raised (the kernel's
    /// information, not a signal from the tracer: a handler looks at the address and the
    /// code), and a handler that returns runs the instruction again there, which is the same
    /// hit.
    pub(crate) fn emulated_fault(
        &mut self,
        tid: i32,
        pid: i32,
        key: Addr,
        rsp: u64,
        addr: Addr,
    ) -> Result<(), TraceError> {
        let mapped = read_maps_of(pid as u32).is_ok_and(|maps| maps.iter().any(|m| m.start <= addr && addr < m.end));
        let code = if mapped { SEGV_ACCERR } else { SEGV_MAPERR };
        sys::set_siginfo(tid, &fault_info(libc::SIGSEGV, code, addr.0))?;
        self.faulted_at.insert(tid, (key.0, rsp));
        Ok(())
    }
}

/// `SIGSEGV`'s codes (`asm-generic/siginfo.h`): no mapping there, or one that forbids the access.
const SEGV_MAPERR: i32 = 1;
const SEGV_ACCERR: i32 = 2;

/// The information of signal `signo` raised by the kernel for an access at `addr` (`code`).
fn fault_info(signo: i32, code: i32, addr: u64) -> libc::siginfo_t {
    #[repr(C)]
    struct FaultInfo {
        signo: i32,
        errno: i32,
        code: i32,
        pad: i32,
        addr: u64,
        rest: [u64; 13],
    }
    const _: () = assert!(std::mem::size_of::<FaultInfo>() == std::mem::size_of::<libc::siginfo_t>());
    let info = FaultInfo { signo, errno: 0, code, pad: 0, addr, rest: [0; 13] };
    // SAFETY: the two types have the same size, and `FaultInfo` is the kernel's layout of a
    // fault's `siginfo_t` on x86-64 (number, errno, code, then the address at byte 16).
    unsafe { std::mem::transmute::<FaultInfo, libc::siginfo_t>(info) }
}
