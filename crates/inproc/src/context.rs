//! Converting between the kernel's signal frame (`ucontext_t`) and [`Regs`].
//!
//! Async-signal-safe: plain loads and stores.

use dprobe_arch::Regs;

/// The registers saved in a signal frame.
pub struct SignalContext {
    uc: *mut libc::ucontext_t,
}

impl SignalContext {
    /// Wrap the third argument of an `SA_SIGINFO` handler.
    ///
    /// # Safety
    /// `uc` must be the `ucontext_t` the kernel passed to the running signal handler, valid for
    /// the handler's whole run.
    pub unsafe fn new(uc: *mut libc::c_void) -> Self {
        SignalContext { uc: uc.cast() }
    }

    /// The raw context, to pass on when chaining to the program's handler.
    pub fn raw(&mut self) -> *mut libc::c_void {
        self.uc.cast()
    }

    fn gregs(&self) -> &[libc::greg_t; 23] {
        // SAFETY: `uc` is valid for the handler's run (constructor contract); only this
        // thread touches its own signal frame.
        unsafe { &(*self.uc).uc_mcontext.gregs }
    }

    fn gregs_mut(&mut self) -> &mut [libc::greg_t; 23] {
        // SAFETY: as in `gregs`, and `&mut self` makes this the only reference.
        unsafe { &mut (*self.uc).uc_mcontext.gregs }
    }

    fn fpstate(&self) -> Option<*mut libc::_libc_fpstate> {
        // SAFETY: as in `gregs`.
        let p = unsafe { (*self.uc).uc_mcontext.fpregs };
        (!p.is_null()).then_some(p)
    }

    /// The thread's alternate signal stack `(base, size)` (size 0: none). The kernel copies
    /// the thread's alternate-stack settings into the frame's `uc_stack`.
    pub fn alternate_stack(&self) -> (u64, u64) {
        // SAFETY: as in `gregs`.
        let ss = unsafe { (*self.uc).uc_stack };
        if ss.ss_flags & libc::SS_DISABLE != 0 {
            return (0, 0);
        }
        (ss.ss_sp as u64, ss.ss_size as u64)
    }

    /// The instruction pointer.
    pub fn rip(&self) -> u64 {
        self.gregs()[libc::REG_RIP as usize] as u64
    }

    /// Set the instruction pointer.
    pub fn set_rip(&mut self, rip: u64) {
        self.gregs_mut()[libc::REG_RIP as usize] = rip as i64;
    }

    /// The stack pointer.
    pub fn rsp(&self) -> u64 {
        self.gregs()[libc::REG_RSP as usize] as u64
    }

    /// Set the stack pointer.
    pub fn set_rsp(&mut self, rsp: u64) {
        self.gregs_mut()[libc::REG_RSP as usize] = rsp as i64;
    }

    /// Read every register handlers may see.
    pub fn regs(&self) -> Regs {
        let mut regs = Regs::from_signal_frame(self.gregs());
        if let Some(fp) = self.fpstate() {
            // SAFETY: the kernel points `fpregs` at the frame's FPU save area, valid for the
            // handler's run.
            let xmm = unsafe { &(*fp)._xmm };
            for (dst, src) in regs.xmm.iter_mut().zip(xmm.iter()) {
                *dst = Regs::xmm_from_frame(src.element);
            }
        }
        regs
    }

    /// Write back what handlers may change; the kernel restores it at `sigreturn`.
    pub fn set_regs(&mut self, regs: &Regs) {
        regs.to_signal_frame(self.gregs_mut());
        if let Some(fp) = self.fpstate() {
            // SAFETY: as in `regs`; this thread owns its signal frame.
            let xmm = unsafe { &mut (*fp)._xmm };
            for (i, dst) in xmm.iter_mut().enumerate() {
                let new = regs.xmm_frame_words(i);
                // Handlers rarely change vector registers: leave the kernel's save area alone
                // unless they did.
                if dst.element != new {
                    dst.element = new;
                }
            }
        }
    }
}
