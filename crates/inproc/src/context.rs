//! Converting between the kernel's signal frame (`ucontext_t`) and [`Regs`].
//!
//! Async-signal-safe: plain loads and stores.

use std::mem::MaybeUninit;

use dprobe_arch::Regs;

/// Where `Regs`' general registers (its first 16 words, in encoding order) are in `gregs`.
const GREG_OF_WORD: [libc::c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

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

    /// The signals blocked where the signal came (1 << (n - 1) for signal n, 1 to 64).
    pub fn blocked_signals(&self) -> u64 {
        // SAFETY: as in `gregs`; the kernel's mask is the first 8 bytes of the C library's.
        unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*self.uc).uc_sigmask).cast::<u64>()) }
    }

    /// General register `reg` (`libc::REG_RAX`, ...).
    pub(crate) fn greg(&self, reg: libc::c_int) -> u64 {
        self.gregs()[reg as usize] as u64
    }

    /// Set general register `reg`.
    pub(crate) fn set_greg(&mut self, reg: libc::c_int, value: u64) {
        self.gregs_mut()[reg as usize] = value as i64;
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

    /// Read every register handlers may see into `slot`, and return it.
    ///
    /// Word by word with volatile stores, never through a `Regs` value built elsewhere and
    /// moved: rustc turns a copy of the 400-byte `Regs` (or zeroing it) into a call to the C
    /// library's `memcpy`/`memset`, which may be probed, and a hit there from this handler
    /// would trap again before the handler knows it is nested.
    pub fn regs_in<'a>(&self, slot: &'a mut MaybeUninit<Regs>) -> &'a mut Regs {
        const WORDS: usize = std::mem::size_of::<Regs>() / 8;
        let out = slot.as_mut_ptr().cast::<u64>();
        let gregs = self.gregs();
        let fp = self.fpstate();
        for w in 0..WORDS {
            let value = match w {
                0..=15 => gregs[GREG_OF_WORD[w] as usize] as u64,
                16 => gregs[libc::REG_RIP as usize] as u64,
                17 => gregs[libc::REG_EFL as usize] as u64,
                _ => fp.map_or(0, |fp| {
                    let (i, half) = ((w - 18) / 2, (w - 18) % 2);
                    // SAFETY: the kernel points `fpregs` at the frame's FPU save area, valid
                    // for the handler's run; i < 16.
                    let words = unsafe { (*fp)._xmm[i].element };
                    u64::from(words[2 * half]) | u64::from(words[2 * half + 1]) << 32
                }),
            };
            // SAFETY: `w` < WORDS: inside `slot`, 8-byte aligned (Regs is 16-aligned).
            unsafe { std::ptr::write_volatile(out.add(w), value) };
        }
        // SAFETY: every word of the plain-old-data `Regs` was written above.
        unsafe { slot.assume_init_mut() }
    }

    /// Write back the general registers, `rip` and the flags of `regs` (not the vector
    /// registers), for a hit that ran no handler.
    pub fn set_gregs(&mut self, regs: &Regs) {
        regs.to_signal_frame(self.gregs_mut());
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
