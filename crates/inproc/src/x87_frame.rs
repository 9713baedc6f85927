//! x87 left unused by dprobe's own signals.
//!
//! The kernel marks x87 (and SSE) as present in every signal frame's `XSAVE` header, whatever
//! the thread did, so the `XRSTOR` of `rt_sigreturn` leaves x87 "in use" (`XGETBV` with `ECX`
//! = 1, bit 0) on a thread that never ran an x87 instruction. A jump's whole-state stub saves
//! x87 only where it is in use (`x87_kept` in `jump_stub.rs`): one trap-path hit of a thread
//! (a probe on `int3`), or one safepoint signal (every thread gets one as probes are
//! optimized), would make the next jump hit inside a function of that thread save it.
//!
//! So, as dprobe's `SIGTRAP` handler returns from its own trap, and its safepoint handler
//! from its own signal, an x87 state in the frame that is exactly the initial one (control
//! word `0x37f`, status word 0, every register empty and zero, no last instruction or
//! operand) is marked absent in the frame's header: the `XRSTOR` then puts the same initial
//! state back, and leaves it not in use. The program's own signals still mark it; the first
//! jump hit inside a function after one leaves it unused again (`x87_back`).

/// The kernel's `FP_XSTATE_MAGIC1`: the frame's floating-point state is `XSAVE`'s, with a
/// header after the legacy area.
const XSTATE_MAGIC1: u32 = 0x4650_5853;
/// Offsets in the legacy (`FXSAVE`) area: the kernel's software bytes, then the header.
const SW_BYTES_AT: usize = 464;
const HEADER_AT: usize = 512;

/// Mark x87 absent in the signal frame of context `uc` where its state there is the
/// initial one. Async-signal-safe.
///
/// # Safety
/// `uc` is the context the kernel passed to the running signal handler.
pub(crate) unsafe fn leave_initial_x87_unused(uc: *mut libc::c_void) {
    // SAFETY: per the contract, `uc` is a live `ucontext_t`; its `fpregs` points into the same
    // signal frame (or is null).
    let fp = unsafe { (*(uc as *mut libc::ucontext_t)).uc_mcontext.fpregs } as *mut u8;
    if fp.is_null() {
        return;
    }
    // SAFETY: `fp` is the frame's legacy area (512 bytes, then the header where the magic
    // says so), written by the kernel for this handler; nothing else uses it meanwhile.
    unsafe {
        let fx = &*(fp as *const libc::_libc_fpstate);
        if (fp.add(SW_BYTES_AT) as *const u32).read() != XSTATE_MAGIC1 {
            return;
        }
        // The registers' contents too: empty registers still hold their bits (after `emms`,
        // the MMX registers; after `fninit`, the x87 stack's), which `XRSTOR` would zero.
        let registers = std::slice::from_raw_parts(fx._st.as_ptr().cast::<u8>(), std::mem::size_of_val(&fx._st));
        let initial = fx.cwd == 0x37f
            && fx.swd == 0
            && fx.ftw == 0
            && fx.fop == 0
            && fx.rip == 0
            && fx.rdp == 0
            && registers.iter().all(|&b| b == 0);
        if initial {
            let features = fp.add(HEADER_AT) as *mut u64;
            features.write(features.read() & !1);
        }
    }
}
