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
        let g = self.gregs();
        let r = |i: libc::c_int| g[i as usize] as u64;
        let mut regs = Regs {
            rax: r(libc::REG_RAX),
            rcx: r(libc::REG_RCX),
            rdx: r(libc::REG_RDX),
            rbx: r(libc::REG_RBX),
            rsp: r(libc::REG_RSP),
            rbp: r(libc::REG_RBP),
            rsi: r(libc::REG_RSI),
            rdi: r(libc::REG_RDI),
            r8: r(libc::REG_R8),
            r9: r(libc::REG_R9),
            r10: r(libc::REG_R10),
            r11: r(libc::REG_R11),
            r12: r(libc::REG_R12),
            r13: r(libc::REG_R13),
            r14: r(libc::REG_R14),
            r15: r(libc::REG_R15),
            rip: r(libc::REG_RIP),
            rflags: r(libc::REG_EFL),
            xmm: [0; 16],
        };
        if let Some(fp) = self.fpstate() {
            // SAFETY: the kernel points `fpregs` at the frame's FPU save area, valid for the
            // handler's run.
            let xmm = unsafe { &(*fp)._xmm };
            for (dst, src) in regs.xmm.iter_mut().zip(xmm.iter()) {
                let e = src.element;
                *dst = u128::from(e[0]) | u128::from(e[1]) << 32 | u128::from(e[2]) << 64 | u128::from(e[3]) << 96;
            }
        }
        regs
    }

    /// Write back what handlers may change; the kernel restores it at `sigreturn`.
    pub fn set_regs(&mut self, regs: &Regs) {
        let g = self.gregs_mut();
        let mut w = |i: libc::c_int, v: u64| g[i as usize] = v as i64;
        w(libc::REG_RAX, regs.rax);
        w(libc::REG_RCX, regs.rcx);
        w(libc::REG_RDX, regs.rdx);
        w(libc::REG_RBX, regs.rbx);
        w(libc::REG_RSP, regs.rsp);
        w(libc::REG_RBP, regs.rbp);
        w(libc::REG_RSI, regs.rsi);
        w(libc::REG_RDI, regs.rdi);
        w(libc::REG_R8, regs.r8);
        w(libc::REG_R9, regs.r9);
        w(libc::REG_R10, regs.r10);
        w(libc::REG_R11, regs.r11);
        w(libc::REG_R12, regs.r12);
        w(libc::REG_R13, regs.r13);
        w(libc::REG_R14, regs.r14);
        w(libc::REG_R15, regs.r15);
        w(libc::REG_RIP, regs.rip);
        // Only the arithmetic and direction flags; the kernel masks the rest anyway.
        const USER_FLAGS: u64 = 0x0cd5 | (1 << 10);
        let old = g[libc::REG_EFL as usize] as u64;
        g[libc::REG_EFL as usize] = ((old & !USER_FLAGS) | (regs.rflags & USER_FLAGS)) as i64;
        if let Some(fp) = self.fpstate() {
            // SAFETY: as in `regs`; this thread owns its signal frame.
            let xmm = unsafe { &mut (*fp)._xmm };
            for (dst, src) in xmm.iter_mut().zip(regs.xmm.iter()) {
                let new = [*src as u32, (*src >> 32) as u32, (*src >> 64) as u32, (*src >> 96) as u32];
                // Handlers rarely change vector registers: leave the kernel's save area alone
                // unless they did.
                if dst.element != new {
                    dst.element = new;
                }
            }
        }
    }
}
