//! The stubs a detour calls: they store the registers straight into a [`Regs`] on the stack,
//! hand that very frame to a dispatcher of `jump.rs` (handlers read and change it in place: no
//! copy into another layout and back), and restore from it.
//!
//! The stub is entered by the detour's `call`, with the stack pointer `S` at the return address
//! into the detour (the program's red zone and a redirect slot are above it). It pushes the
//! flags and `rbx` (`S-8`, `S-16`), takes a 16-byte aligned [`Regs`] below them, stores every
//! register but `rsp` and `rip` there (the flags and `rbx` copied from their pushes, `xmm0`-
//! `xmm15` with aligned stores), clears the direction flag (the ABI's state at a call), and
//! calls `dispatch(frame, S)`. The dispatcher fills in `rsp` and `rip` for the handlers and,
//! before it returns, leaves in the frame's `rsp` where the stub's last steps run: the address
//! of the flags to restore, just below the return address the stub's `ret` takes (`S` itself,
//! or the redirect the dispatcher wrote, see `jump::resume`). The stub loads every register
//! from the frame, switches to that stack pointer, `popfq`, `ret`.
//!
//! On a CPU with AVX, the stubs at an entry or a `ret` also keep `ymm0`-`ymm7` whole (with
//! AVX-512, `zmm0`-`zmm7`): the calling convention passes `__m256`/`__m512` arguments and
//! return values there, and a handler's library calls end with `vzeroupper`. They are stored
//! below the frame and loaded back after the dispatcher, before the frame's `xmm` registers
//! (which a handler may have changed) are written over their low halves.
//!
//! The whole-state stubs (inside a function on a CPU with AVX) also keep the extended state
//! (`ymm`/`zmm` upper halves, `zmm16`-`zmm31`, mask registers, x87/MXCSR): `XSAVE`/`XSAVEC`
//! into a 64-byte aligned area below the frame, `XRSTOR` after the dispatcher, before the
//! frame's `xmm0`-`xmm15` (which a handler may have changed) are written over the restored low
//! halves: the legacy SSE moves leave the upper halves as `XRSTOR` put them. The area's header
//! is zeroed first, as `XRSTOR` requires. `rbx` keeps the frame and `r12` the area across the
//! call (both are in the frame).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};

use dprobe_arch::{Addr, Regs, VectorState};

use crate::jump::{jump_dispatch, post_dispatch};

/// The bytes of an `XSAVE` area for the enabled state components (from CPUID), 0 until
/// [`xsave_ready`] found them; read by the whole-state stubs.
static XSAVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Whether the whole-state stubs use `XSAVEC` (compacted, skips components in their initial
/// state) rather than `XSAVE`.
static XSAVE_COMPACT: AtomicBool = AtomicBool::new(false);

// The offsets the assembly below uses.
const _: () = {
    assert!(std::mem::offset_of!(Regs, rax) == 0 && std::mem::offset_of!(Regs, rbx) == 24);
    assert!(std::mem::offset_of!(Regs, rsp) == 32 && std::mem::offset_of!(Regs, rbp) == 40);
    assert!(std::mem::offset_of!(Regs, r8) == 64 && std::mem::offset_of!(Regs, r15) == 120);
    assert!(std::mem::offset_of!(Regs, rflags) == 136 && std::mem::offset_of!(Regs, xmm) == 144);
    assert!(std::mem::size_of::<Regs>() == 400 && std::mem::align_of::<Regs>() == 16);
};

/// One stub: store the frame (see the module's comment), run `$call` (which calls
/// `{dispatch}` with `rdi` = the frame and `rsi` = `S`, and leaves `rsp` at the frame), restore.
macro_rules! jump_stub {
    ($name:literal, $dispatch:path, [$($call:tt)*] $(, $op:ident = sym $sym:path)*) => {
        std::arch::global_asm!(
            ".text",
            concat!(".globl ", $name),
            concat!(".type ", $name, ",@function"),
            concat!($name, ":"),
            "pushfq",
            "push rbx",
            "lea rbx, [rsp + 16]",
            "sub rsp, 400",
            "and rsp, -16",
            "mov [rsp + 0], rax",
            "mov [rsp + 8], rcx",
            "mov [rsp + 16], rdx",
            "mov rax, [rbx - 16]",
            "mov [rsp + 24], rax",
            "mov [rsp + 40], rbp",
            "mov [rsp + 48], rsi",
            "mov [rsp + 56], rdi",
            "mov [rsp + 64], r8",
            "mov [rsp + 72], r9",
            "mov [rsp + 80], r10",
            "mov [rsp + 88], r11",
            "mov [rsp + 96], r12",
            "mov [rsp + 104], r13",
            "mov [rsp + 112], r14",
            "mov [rsp + 120], r15",
            "mov rax, [rbx - 8]",
            "mov [rsp + 136], rax",
            "movaps [rsp + 144], xmm0",
            "movaps [rsp + 160], xmm1",
            "movaps [rsp + 176], xmm2",
            "movaps [rsp + 192], xmm3",
            "movaps [rsp + 208], xmm4",
            "movaps [rsp + 224], xmm5",
            "movaps [rsp + 240], xmm6",
            "movaps [rsp + 256], xmm7",
            "movaps [rsp + 272], xmm8",
            "movaps [rsp + 288], xmm9",
            "movaps [rsp + 304], xmm10",
            "movaps [rsp + 320], xmm11",
            "movaps [rsp + 336], xmm12",
            "movaps [rsp + 352], xmm13",
            "movaps [rsp + 368], xmm14",
            "movaps [rsp + 384], xmm15",
            "cld",
            "mov rdi, rsp",
            "mov rsi, rbx",
            "mov rbx, rsp",
            $($call)*
            "movaps xmm0, [rsp + 144]",
            "movaps xmm1, [rsp + 160]",
            "movaps xmm2, [rsp + 176]",
            "movaps xmm3, [rsp + 192]",
            "movaps xmm4, [rsp + 208]",
            "movaps xmm5, [rsp + 224]",
            "movaps xmm6, [rsp + 240]",
            "movaps xmm7, [rsp + 256]",
            "movaps xmm8, [rsp + 272]",
            "movaps xmm9, [rsp + 288]",
            "movaps xmm10, [rsp + 304]",
            "movaps xmm11, [rsp + 320]",
            "movaps xmm12, [rsp + 336]",
            "movaps xmm13, [rsp + 352]",
            "movaps xmm14, [rsp + 368]",
            "movaps xmm15, [rsp + 384]",
            "mov rax, [rsp + 0]",
            "mov rcx, [rsp + 8]",
            "mov rdx, [rsp + 16]",
            "mov rbx, [rsp + 24]",
            "mov rbp, [rsp + 40]",
            "mov rsi, [rsp + 48]",
            "mov rdi, [rsp + 56]",
            "mov r8, [rsp + 64]",
            "mov r9, [rsp + 72]",
            "mov r10, [rsp + 80]",
            "mov r11, [rsp + 88]",
            "mov r12, [rsp + 96]",
            "mov r13, [rsp + 104]",
            "mov r14, [rsp + 112]",
            "mov r15, [rsp + 120]",
            // The dispatcher's choice: the flags, then the return address.
            "mov rsp, [rsp + 32]",
            "popfq",
            "ret",
            concat!(".size ", $name, ", . - ", $name),
            dispatch = sym $dispatch,
            $($op = sym $sym,)*
        );
    };
}

/// The call of a whole-state stub: the extended state saved around it.
macro_rules! whole_state_call {
    () => {
        concat!(
            "sub rsp, qword ptr [rip + {bytes}]\n and rsp, -64\n mov r12, rsp\n",
            "xor eax, eax\n",
            "mov qword ptr [r12 + 512], rax\n mov qword ptr [r12 + 520], rax\n",
            "mov qword ptr [r12 + 528], rax\n mov qword ptr [r12 + 536], rax\n",
            "mov qword ptr [r12 + 544], rax\n mov qword ptr [r12 + 552], rax\n",
            "mov qword ptr [r12 + 560], rax\n mov qword ptr [r12 + 568], rax\n",
            "mov eax, -1\n mov edx, -1\n",
            "cmp byte ptr [rip + {compact}], 0\n je 2f\n xsavec64 [r12]\n jmp 3f\n",
            "2:\n xsave64 [r12]\n 3:\n",
            "call {dispatch}\n",
            "mov eax, -1\n mov edx, -1\n xrstor64 [r12]\n",
            "mov rsp, rbx\n",
        )
    };
}

/// The call of an argument-keeping stub on a CPU with AVX: `ymm0`-`ymm7` (the vector
/// arguments and return values of the calling convention, `__m256`) kept whole around it.
macro_rules! ymm_args_call {
    () => {
        concat!(
            "sub rsp, 256\n",
            "vmovdqu [rsp + 0], ymm0\n vmovdqu [rsp + 32], ymm1\n",
            "vmovdqu [rsp + 64], ymm2\n vmovdqu [rsp + 96], ymm3\n",
            "vmovdqu [rsp + 128], ymm4\n vmovdqu [rsp + 160], ymm5\n",
            "vmovdqu [rsp + 192], ymm6\n vmovdqu [rsp + 224], ymm7\n",
            "call {dispatch}\n",
            "vmovdqu ymm0, [rsp + 0]\n vmovdqu ymm1, [rsp + 32]\n",
            "vmovdqu ymm2, [rsp + 64]\n vmovdqu ymm3, [rsp + 96]\n",
            "vmovdqu ymm4, [rsp + 128]\n vmovdqu ymm5, [rsp + 160]\n",
            "vmovdqu ymm6, [rsp + 192]\n vmovdqu ymm7, [rsp + 224]\n",
            "mov rsp, rbx\n",
        )
    };
}

/// The same with AVX-512: `zmm0`-`zmm7` (`__m512`) kept whole.
macro_rules! zmm_args_call {
    () => {
        concat!(
            "sub rsp, 512\n",
            "vmovdqu64 [rsp + 0], zmm0\n vmovdqu64 [rsp + 64], zmm1\n",
            "vmovdqu64 [rsp + 128], zmm2\n vmovdqu64 [rsp + 192], zmm3\n",
            "vmovdqu64 [rsp + 256], zmm4\n vmovdqu64 [rsp + 320], zmm5\n",
            "vmovdqu64 [rsp + 384], zmm6\n vmovdqu64 [rsp + 448], zmm7\n",
            "call {dispatch}\n",
            "vmovdqu64 zmm0, [rsp + 0]\n vmovdqu64 zmm1, [rsp + 64]\n",
            "vmovdqu64 zmm2, [rsp + 128]\n vmovdqu64 zmm3, [rsp + 192]\n",
            "vmovdqu64 zmm4, [rsp + 256]\n vmovdqu64 zmm5, [rsp + 320]\n",
            "vmovdqu64 zmm6, [rsp + 384]\n vmovdqu64 zmm7, [rsp + 448]\n",
            "mov rsp, rbx\n",
        )
    };
}

jump_stub!("__dprobe_jump_entry", jump_dispatch, ["call {dispatch}",]);
jump_stub!("__dprobe_jump_post", post_dispatch, ["call {dispatch}",]);
jump_stub!("__dprobe_jump_entry_full", jump_dispatch, [whole_state_call!(),], bytes = sym XSAVE_BYTES, compact = sym XSAVE_COMPACT);
jump_stub!("__dprobe_jump_post_full", post_dispatch, [whole_state_call!(),], bytes = sym XSAVE_BYTES, compact = sym XSAVE_COMPACT);
jump_stub!("__dprobe_jump_entry_ymm", jump_dispatch, [ymm_args_call!(),]);
jump_stub!("__dprobe_jump_post_ymm", post_dispatch, [ymm_args_call!(),]);
jump_stub!("__dprobe_jump_entry_zmm", jump_dispatch, [zmm_args_call!(),]);
jump_stub!("__dprobe_jump_post_zmm", post_dispatch, [zmm_args_call!(),]);

extern "C" {
    fn __dprobe_jump_entry();
    fn __dprobe_jump_post();
    fn __dprobe_jump_entry_full();
    fn __dprobe_jump_post_full();
    fn __dprobe_jump_entry_ymm();
    fn __dprobe_jump_post_ymm();
    fn __dprobe_jump_entry_zmm();
    fn __dprobe_jump_post_zmm();
}

/// The stubs a detour calls: at its entry, and after the probed instruction (post-handlers),
/// for the vector state it keeps.
pub(crate) fn stubs(state: VectorState) -> (Addr, Addr) {
    let at = |f: unsafe extern "C" fn()| Addr(f as *const () as u64);
    match state {
        // At an entry or a `ret` the calling convention's vector arguments and return values
        // may be live in full (`__m256`, `__m512`), and a handler's library calls end with
        // `vzeroupper` (or use the upper registers): kept whole where the CPU has them.
        VectorState::Xmm if std::arch::is_x86_feature_detected!("avx512f") => {
            (at(__dprobe_jump_entry_zmm), at(__dprobe_jump_post_zmm))
        }
        VectorState::Xmm if std::arch::is_x86_feature_detected!("avx") => {
            (at(__dprobe_jump_entry_ymm), at(__dprobe_jump_post_ymm))
        }
        VectorState::Xmm => (at(__dprobe_jump_entry), at(__dprobe_jump_post)),
        VectorState::Full => (at(__dprobe_jump_entry_full), at(__dprobe_jump_post_full)),
    }
}

/// Make the whole-state stubs usable: the size of the area `XSAVE` (or `XSAVEC`) writes for
/// the state components the kernel enabled, from CPUID leaf 0xD. Why not, when they cannot be.
pub(crate) fn xsave_ready() -> Result<(), String> {
    use std::arch::x86_64::__cpuid_count;
    if XSAVE_BYTES.load(Relaxed) != 0 {
        return Ok(());
    }
    // CPUID is available on every x86-64 CPU.
    let leaf1 = __cpuid_count(1, 0);
    if leaf1.ecx & (1 << 27) == 0 {
        return Err("the kernel has not enabled XSAVE (CPUID.1:ECX.OSXSAVE is clear)".into());
    }
    // Leaf 0xD exists wherever OSXSAVE is set.
    let (main, sub1) = (__cpuid_count(0xd, 0), __cpuid_count(0xd, 1));
    // Leaf 0xD sub-leaf 1: EAX bit 1 is XSAVEC, EBX the compacted size of the enabled
    // components; sub-leaf 0: EBX the standard-format size for those enabled in XCR0.
    let compact = sub1.eax & 2 != 0 && sub1.ebx != 0;
    let bytes = if compact { sub1.ebx } else { main.ebx };
    if bytes < 576 {
        return Err(format!("CPUID reports an XSAVE area of {bytes} bytes"));
    }
    XSAVE_COMPACT.store(compact, Relaxed);
    // Room to align the area down to 64 bytes.
    XSAVE_BYTES.store(u64::from(bytes) + 64, SeqCst);
    Ok(())
}
