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
//! from the frame, switches to that stack pointer, restores the flags (`popfq`, or the status
//! flags alone where nothing else changed: see the tail), `ret`.
//!
//! On a CPU with AVX, the stubs at an entry or a `ret` also keep the upper halves of the
//! vector registers (with AVX-512, `zmm0`-`zmm7` whole): the calling convention passes
//! `__m256`/`__m512` arguments and return values there, and a handler's library calls end
//! with `vzeroupper`. How, without the cost of mixing SSE and AVX, see `ymm_args_call`; with
//! AVX-512 (`zmm_args_call`), where a bit above the low 128 is set, `zmm0`-`zmm7` are stored
//! below the frame and loaded back after the dispatcher, before the frame's `xmm` registers
//! (which a handler may have changed) are written over their low halves.
//!
//! Every stub keeps `MXCSR` as the trap path's signal frame does: the handlers get it at
//! reset where the program's control bits differ (`mxcsr_reset!`), and the program's value is
//! loaded back where the handlers changed it (their arithmetic raises its sticky flags): at
//! an entry or a `ret`, see `mxcsr_kept!` and `mxcsr_back!`.
//!
//! The whole-state stubs (inside a function on a CPU with AVX) also keep the extended state
//! (`ymm`/`zmm` upper halves, `zmm16`-`zmm31`, mask registers, x87/MXCSR). Where that state is
//! x87, SSE and AVX alone, without `XSAVE` of the whole state (x87 with `FXSAVE` where in
//! use): see `avx_state_call`; with AVX-512 (and AMX) too, where the tiles are unused: see
//! `avx512_state_call` (and `x87_frame.rs`, which keeps dprobe's own traps from marking x87
//! in use, sparing the x87 save). Elsewhere
//! `XSAVE`/`XSAVEC` into a 64-byte aligned area below the frame, `XRSTOR` after the
//! dispatcher, before the frame's `xmm0`-`xmm15` (which a handler may have changed) are
//! written over the restored low halves: the legacy SSE moves leave the upper halves as
//! `XRSTOR` put them. The area's header is zeroed first, as `XRSTOR` requires. `rbx` keeps
//! the frame and `r12` the area across the call (both are in the frame); in every stub, `r13`
//! keeps the flags at entry.

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

/// The tail's loads of the general registers from the frame, then the stack pointer the
/// dispatcher chose: at the flags' word, below the return address.
macro_rules! gpr_loads {
    () => {
        concat!(
            "mov rax, [rsp + 0]\n mov rcx, [rsp + 8]\n mov rdx, [rsp + 16]\n mov rbx, [rsp + 24]\n",
            "mov rbp, [rsp + 40]\n mov rsi, [rsp + 48]\n mov rdi, [rsp + 56]\n mov r8, [rsp + 64]\n",
            "mov r9, [rsp + 72]\n mov r10, [rsp + 80]\n mov r11, [rsp + 88]\n mov r12, [rsp + 96]\n",
            "mov r13, [rsp + 104]\n mov r14, [rsp + 112]\n mov r15, [rsp + 120]\n",
            "mov rsp, [rsp + 32]\n",
        )
    };
}

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
            "mov r13, rax",
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
            // Where a call that restored the vector registers itself goes on.
            "7:",
            // The flags: `popfq` costs about 7 ns (against 1 for the rest of the tail), so
            // where the handlers changed no flag but the status flags, and the direction flag
            // the stub cleared was already clear (`r13` holds the flags at entry), only the
            // status flags are set: OF by an addition that overflows exactly when it was set,
            // the others by `sahf`. Then the registers (moves keep the flags), the stack
            // pointer past the flags' word, and the return address.
            "mov rcx, [rsp + 136]",
            "mov rax, rcx",
            "xor rax, r13",
            "mov rdx, r13",
            "and edx, 0x400",
            "or rax, rdx",
            "test rax, -0x8d6",
            "jnz 8f",
            "mov eax, ecx",
            "shr eax, 11",
            "and eax, 1",
            "add al, 0x7f",
            "mov ah, cl",
            "sahf",
            gpr_loads!(),
            "lea rsp, [rsp + 8]",
            "ret",
            // Any other flag: all of them, as the dispatcher left them.
            "8:",
            gpr_loads!(),
            "popfq",
            "ret",
            concat!(".size ", $name, ", . - ", $name),
            dispatch = sym $dispatch,
            $($op = sym $sym,)*
        );
    };
}

/// The call of a whole-state stub: the extended state saved around it, the handlers run after
/// `vzeroupper` and with x87 made clean (`x87_clean`).
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
            // The handlers without the upper halves: with them dirty, their SSE instructions
            // each merge with them (about 120 ns a hit with `zmm0`-`zmm15` in use here).
            "vzeroupper\n",
            // `MXCSR` as `XSAVE` stored it in the legacy area.
            mxcsr_reset!("r12 + 24"),
            x87_clean!(),
            "call {dispatch}\n",
            "mov eax, -1\n mov edx, -1\n xrstor64 [r12]\n",
            "mov rsp, rbx\n",
        )
    };
}

/// The upper halves of `ymm0`-`ymm7` and `ymm10`-`ymm15` stored at `[rsp + 16 * N]` (those of
/// `ymm8` and `ymm9` go first, see `ymm_args_call`).
macro_rules! uppers_store {
    () => {
        concat!(
            "vextractf128 [rsp + 0], ymm0, 1\n vextractf128 [rsp + 16], ymm1, 1\n",
            "vextractf128 [rsp + 32], ymm2, 1\n vextractf128 [rsp + 48], ymm3, 1\n",
            "vextractf128 [rsp + 64], ymm4, 1\n vextractf128 [rsp + 80], ymm5, 1\n",
            "vextractf128 [rsp + 96], ymm6, 1\n vextractf128 [rsp + 112], ymm7, 1\n",
            "vextractf128 [rsp + 160], ymm10, 1\n vextractf128 [rsp + 176], ymm11, 1\n",
            "vextractf128 [rsp + 192], ymm12, 1\n vextractf128 [rsp + 208], ymm13, 1\n",
            "vextractf128 [rsp + 224], ymm14, 1\n vextractf128 [rsp + 240], ymm15, 1\n",
        )
    };
}

/// Every `ymm` register back: its low half from the frame (`rbx`, as a handler left it), its
/// upper half from `[rsp + 16 * N]`. VEX moves only: no SSE/AVX transition.
macro_rules! uppers_restore {
    () => {
        concat!(
            "vmovaps xmm0, [rbx + 144]\n vinsertf128 ymm0, ymm0, [rsp + 0], 1\n",
            "vmovaps xmm1, [rbx + 160]\n vinsertf128 ymm1, ymm1, [rsp + 16], 1\n",
            "vmovaps xmm2, [rbx + 176]\n vinsertf128 ymm2, ymm2, [rsp + 32], 1\n",
            "vmovaps xmm3, [rbx + 192]\n vinsertf128 ymm3, ymm3, [rsp + 48], 1\n",
            "vmovaps xmm4, [rbx + 208]\n vinsertf128 ymm4, ymm4, [rsp + 64], 1\n",
            "vmovaps xmm5, [rbx + 224]\n vinsertf128 ymm5, ymm5, [rsp + 80], 1\n",
            "vmovaps xmm6, [rbx + 240]\n vinsertf128 ymm6, ymm6, [rsp + 96], 1\n",
            "vmovaps xmm7, [rbx + 256]\n vinsertf128 ymm7, ymm7, [rsp + 112], 1\n",
            "vmovaps xmm8, [rbx + 272]\n vinsertf128 ymm8, ymm8, [rsp + 128], 1\n",
            "vmovaps xmm9, [rbx + 288]\n vinsertf128 ymm9, ymm9, [rsp + 144], 1\n",
            "vmovaps xmm10, [rbx + 304]\n vinsertf128 ymm10, ymm10, [rsp + 160], 1\n",
            "vmovaps xmm11, [rbx + 320]\n vinsertf128 ymm11, ymm11, [rsp + 176], 1\n",
            "vmovaps xmm12, [rbx + 336]\n vinsertf128 ymm12, ymm12, [rsp + 192], 1\n",
            "vmovaps xmm13, [rbx + 352]\n vinsertf128 ymm13, ymm13, [rsp + 208], 1\n",
            "vmovaps xmm14, [rbx + 368]\n vinsertf128 ymm14, ymm14, [rsp + 224], 1\n",
            "vmovaps xmm15, [rbx + 384]\n vinsertf128 ymm15, ymm15, [rsp + 240], 1\n",
        )
    };
}

/// The call of an argument-keeping stub on a CPU with AVX (without AVX-512): the upper
/// halves of `ymm0`-`ymm15` kept around it. `ymm0`-`ymm7` carry the calling convention's
/// `__m256` arguments and return values; the others are dead at a call for the ABI, but gcc's
/// `-fipa-ra` lets a caller keep values in registers its callee is known not to touch.
///
/// The legacy SSE instructions of the handlers and of the stub's own loads must never run
/// while an upper half is dirty: on some CPUs each such instruction costs a state transition
/// (about 107 ns on the AMD EPYC machines dprobe's figures come from, against 0.3 ns for a
/// `vzeroupper`). So the handlers always run after `vzeroupper`, and:
/// - when every upper half is zero (the common case: code that uses AVX ends with
///   `vzeroupper`), which the OR of all sixteen registers tells, nothing is stored, and a
///   second `vzeroupper` after the dispatcher puts back exactly what was there;
/// - otherwise the upper halves are stored below the frame, and after the dispatcher each
///   register is loaded from the frame (the low half, which a handler may have changed) with
///   `vmovaps` and its upper half put back with `vinsertf128`; the stub's legacy loads are
///   skipped (`7:`).
///
/// `ymm8` and `ymm9` are the accumulators of the OR: their upper halves are stored first.
macro_rules! ymm_args_call {
    () => {
        concat!(
            "sub rsp, 256\n",
            "vextractf128 [rsp + 128], ymm8, 1\n vextractf128 [rsp + 144], ymm9, 1\n",
            "vorps ymm8, ymm8, ymm0\n vorps ymm9, ymm9, ymm1\n vorps ymm8, ymm8, ymm2\n vorps ymm9, ymm9, ymm3\n",
            "vorps ymm8, ymm8, ymm4\n vorps ymm9, ymm9, ymm5\n vorps ymm8, ymm8, ymm6\n vorps ymm9, ymm9, ymm7\n",
            "vorps ymm8, ymm8, ymm10\n vorps ymm9, ymm9, ymm11\n vorps ymm8, ymm8, ymm12\n vorps ymm9, ymm9, ymm13\n",
            "vorps ymm8, ymm8, ymm14\n vorps ymm9, ymm9, ymm15\n",
            "vorps ymm8, ymm8, ymm9\n vextractf128 xmm8, ymm8, 1\n vptest xmm8, xmm8\n jnz 4f\n",
            "vzeroupper\n call {dispatch}\n vzeroupper\n",
            mxcsr_back!(),
            "mov rsp, rbx\n jmp 5f\n",
            "4:\n",
            uppers_store!(),
            "vzeroupper\n call {dispatch}\n",
            mxcsr_back!(),
            uppers_restore!(),
            "mov rsp, rbx\n jmp 7f\n",
            "5:\n",
        )
    };
}

/// The call of a whole-state stub where the state the kernel enabled is x87, SSE and AVX
/// alone (`XCR0` = 7, and `PKRU`, left as it is: every AVX CPU without AVX-512), the common case
/// kept without `XSAVE`/`XRSTOR` of the whole state, which cost about 150 ns a pair on the
/// machines dprobe's figures come from. `XGETBV` with `ECX` = 1 (about 15 ns) says which
/// components are in use:
/// - x87 in use (values on its stack, a changed control word, or only marked in use: see
///   `x87_kept`): x87 is saved with `FXSAVE` and put back after the dispatcher;
/// - otherwise x87 is in its initial state: after the dispatcher, if the handlers left it in
///   use, the initial state is put back (`x87_back`). `MXCSR` (a handler's arithmetic
///   sets its sticky exception flags) is stored, set to its reset value for the handlers
///   (`MXCSR_AT_RESET`) and loaded back. The `ymm` upper halves are
///   kept as in `ymm_args_call`, with the in-use bit of AVX instead of the OR: nothing to keep
///   (and a `vzeroupper` after) when it is clear.
///
/// Below the frame: the upper halves at `[rsp + 16 * N]`, `MXCSR` at `[rsp + 256]`, the in-use
/// bits at `[rsp + 264]`, x87's `FXSAVE` area at
/// `[rsp + 320]`.
macro_rules! avx_state_call {
    () => {
        concat!(
            "mov ecx, 1\n xgetbv\n",
            "sub rsp, 832\n stmxcsr [rsp + 256]\n mov [rsp + 264], rax\n",
            mxcsr_reset!("rsp + 256"),
            x87_kept!("320"),
            "test al, 4\n jnz 4f\n",
            "call {dispatch}\n vzeroupper\n",
            x87_back!(),
            "ldmxcsr [rsp + 256]\n mov rsp, rbx\n jmp 5f\n",
            uppers_kept_call!(),
            "5:\n",
        )
    };
}

/// The call of a whole-state stub on a CPU with AVX-512 (and AVX512BW: 64-bit mask registers)
/// whose enabled state is x87, SSE, AVX, AVX-512 and AMX's tiles alone: the usual state kept
/// without `XSAVEC`/`XRSTOR`, which cost about 69 ns a pair on the Intel Xeon of BENCHMARKS.md,
/// where `XGETBV` with `ECX` = 1 costs about 5 ns. The C library's string functions leave the
/// mask registers and `zmm16`-`zmm31` in use (their EVEX code needs no `vzeroupper`), so those
/// are kept here, each only where in use:
/// - a tile in use: the `XSAVE` call;
/// - otherwise `MXCSR` is stored and loaded back, and x87 kept as in `avx_state_call` (saved
///   where in use, put back in its initial state where it was in it), and so are the `ymm` upper
///   halves (a `vzeroupper` after the dispatcher where AVX was not in use);
/// - the upper halves of `zmm0`-`zmm15` in use (`ZMM_Hi256`: 512-bit code between its
///   instructions): `zmm0`-`zmm15` stored whole instead, see `zmm_whole_kept_call`;
/// - the mask registers (`k0`-`k7`), where in use, are stored and loaded back; where not, they
///   were zero and are zeroed after the dispatcher (a handler's library calls use them);
/// - the same for `zmm16`-`zmm31`, whole.
///
/// Below the frame: the upper halves at `[rsp + 16 * N]`, `MXCSR` at `[rsp + 256]`, the
/// in-use bits at `[rsp + 264]`, `k0`-`k7` at
/// `[rsp + 320]`, `zmm16`-`zmm31` at `[rsp + 384]`, x87's `FXSAVE` area at `[rsp + 1408]`,
/// `zmm0`-`zmm15` at `[rsp + 1920]`.
macro_rules! avx512_state_call {
    () => {
        concat!(
            "mov ecx, 1\n xgetbv\n test eax, 0x60000\n jnz 6f\n",
            "sub rsp, 2944\n stmxcsr [rsp + 256]\n mov [rsp + 264], rax\n",
            mxcsr_reset!("rsp + 256"),
            x87_kept!("1408"),
            "test al, 0x20\n jz 10f\n",
            "kmovq [rsp + 320], k0\n kmovq [rsp + 328], k1\n kmovq [rsp + 336], k2\n kmovq [rsp + 344], k3\n",
            "kmovq [rsp + 352], k4\n kmovq [rsp + 360], k5\n kmovq [rsp + 368], k6\n kmovq [rsp + 376], k7\n",
            "10:\n test al, 0x80\n jz 11f\n",
            "vmovdqu64 [rsp + 384], zmm16\n vmovdqu64 [rsp + 448], zmm17\n vmovdqu64 [rsp + 512], zmm18\n",
            "vmovdqu64 [rsp + 576], zmm19\n vmovdqu64 [rsp + 640], zmm20\n vmovdqu64 [rsp + 704], zmm21\n",
            "vmovdqu64 [rsp + 768], zmm22\n vmovdqu64 [rsp + 832], zmm23\n vmovdqu64 [rsp + 896], zmm24\n",
            "vmovdqu64 [rsp + 960], zmm25\n vmovdqu64 [rsp + 1024], zmm26\n vmovdqu64 [rsp + 1088], zmm27\n",
            "vmovdqu64 [rsp + 1152], zmm28\n vmovdqu64 [rsp + 1216], zmm29\n vmovdqu64 [rsp + 1280], zmm30\n",
            "vmovdqu64 [rsp + 1344], zmm31\n",
            "11:\n test al, 0x40\n jnz 19f\n test al, 4\n jnz 4f\n",
            "call {dispatch}\n vzeroupper\n",
            x87_back!(),
            avx512_back!(),
            "ldmxcsr [rsp + 256]\n mov rsp, rbx\n jmp 5f\n",
            uppers_kept_call!(avx512_back!(),),
            zmm_whole_kept_call!(),
            "6:\n",
            whole_state_call!(),
            "5:\n",
        )
    };
}

/// The mask registers and `zmm16`-`zmm31` back as `avx512_state_call` found them: loaded where
/// they were in use (the in-use bits at `[rsp + 264]`), zeroed where not.
macro_rules! avx512_back {
    () => {
        concat!(
            "mov rax, [rsp + 264]\n test al, 0x20\n jz 12f\n",
            "kmovq k0, [rsp + 320]\n kmovq k1, [rsp + 328]\n kmovq k2, [rsp + 336]\n kmovq k3, [rsp + 344]\n",
            "kmovq k4, [rsp + 352]\n kmovq k5, [rsp + 360]\n kmovq k6, [rsp + 368]\n kmovq k7, [rsp + 376]\n",
            "jmp 13f\n 12:\n",
            "kxorq k0, k0, k0\n kxorq k1, k1, k1\n kxorq k2, k2, k2\n kxorq k3, k3, k3\n",
            "kxorq k4, k4, k4\n kxorq k5, k5, k5\n kxorq k6, k6, k6\n kxorq k7, k7, k7\n",
            "13:\n test al, 0x80\n jz 14f\n",
            "vmovdqu64 zmm16, [rsp + 384]\n vmovdqu64 zmm17, [rsp + 448]\n vmovdqu64 zmm18, [rsp + 512]\n",
            "vmovdqu64 zmm19, [rsp + 576]\n vmovdqu64 zmm20, [rsp + 640]\n vmovdqu64 zmm21, [rsp + 704]\n",
            "vmovdqu64 zmm22, [rsp + 768]\n vmovdqu64 zmm23, [rsp + 832]\n vmovdqu64 zmm24, [rsp + 896]\n",
            "vmovdqu64 zmm25, [rsp + 960]\n vmovdqu64 zmm26, [rsp + 1024]\n vmovdqu64 zmm27, [rsp + 1088]\n",
            "vmovdqu64 zmm28, [rsp + 1152]\n vmovdqu64 zmm29, [rsp + 1216]\n vmovdqu64 zmm30, [rsp + 1280]\n",
            "vmovdqu64 zmm31, [rsp + 1344]\n",
            "jmp 15f\n 14:\n",
            "vpxord zmm16, zmm16, zmm16\n vpxord zmm17, zmm17, zmm17\n vpxord zmm18, zmm18, zmm18\n",
            "vpxord zmm19, zmm19, zmm19\n vpxord zmm20, zmm20, zmm20\n vpxord zmm21, zmm21, zmm21\n",
            "vpxord zmm22, zmm22, zmm22\n vpxord zmm23, zmm23, zmm23\n vpxord zmm24, zmm24, zmm24\n",
            "vpxord zmm25, zmm25, zmm25\n vpxord zmm26, zmm26, zmm26\n vpxord zmm27, zmm27, zmm27\n",
            "vpxord zmm28, zmm28, zmm28\n vpxord zmm29, zmm29, zmm29\n vpxord zmm30, zmm30, zmm30\n",
            "vpxord zmm31, zmm31, zmm31\n",
            "15:\n",
        )
    };
}

/// The branch (`4:`) of `avx_state_call` and `avx512_state_call` where AVX is in use: the
/// `ymm` upper halves stored, the dispatcher called, x87 put back, then `$back` (what the
/// caller keeps besides), `MXCSR` and every `ymm` register loaded back; the stub's legacy
/// loads are skipped (`7:`).
macro_rules! uppers_kept_call {
    ($($back:tt)*) => {
        concat!(
            "4:\n",
            "vextractf128 [rsp + 128], ymm8, 1\n vextractf128 [rsp + 144], ymm9, 1\n",
            uppers_store!(),
            "vzeroupper\n call {dispatch}\n vzeroupper\n",
            x87_back!(),
            $($back)*
            "ldmxcsr [rsp + 256]\n",
            uppers_restore!(),
            "mov rsp, rbx\n jmp 7f\n",
        )
    };
}

/// The branch (`19:`) of `avx512_state_call` where the upper halves of `zmm0`-`zmm15` are in
/// use: those registers stored whole at `[rsp + 1920 + 64 * N]`, the handlers run after
/// `vzeroupper`, then x87, the mask registers, `zmm16`-`zmm31` and `MXCSR` put back as on the
/// other branches, and each of `zmm0`-`zmm15` loaded whole with its low 128 bits from the frame
/// (`rbx`, as a handler left them); the stub's legacy loads are skipped (`7:`). About 1 KiB of
/// stores and loads, where `XSAVEC`/`XRSTOR` cost about 69 ns.
macro_rules! zmm_whole_kept_call {
    () => {
        concat!(
            "19:\n",
            "vmovdqu64 [rsp + 1920], zmm0\n vmovdqu64 [rsp + 1984], zmm1\n",
            "vmovdqu64 [rsp + 2048], zmm2\n vmovdqu64 [rsp + 2112], zmm3\n",
            "vmovdqu64 [rsp + 2176], zmm4\n vmovdqu64 [rsp + 2240], zmm5\n",
            "vmovdqu64 [rsp + 2304], zmm6\n vmovdqu64 [rsp + 2368], zmm7\n",
            "vmovdqu64 [rsp + 2432], zmm8\n vmovdqu64 [rsp + 2496], zmm9\n",
            "vmovdqu64 [rsp + 2560], zmm10\n vmovdqu64 [rsp + 2624], zmm11\n",
            "vmovdqu64 [rsp + 2688], zmm12\n vmovdqu64 [rsp + 2752], zmm13\n",
            "vmovdqu64 [rsp + 2816], zmm14\n vmovdqu64 [rsp + 2880], zmm15\n",
            "vzeroupper\n call {dispatch}\n vzeroupper\n",
            x87_back!(),
            avx512_back!(),
            "ldmxcsr [rsp + 256]\n",
            "vmovdqu64 zmm0, [rsp + 1920]\n vinserti32x4 zmm0, zmm0, [rbx + 144], 0\n",
            "vmovdqu64 zmm1, [rsp + 1984]\n vinserti32x4 zmm1, zmm1, [rbx + 160], 0\n",
            "vmovdqu64 zmm2, [rsp + 2048]\n vinserti32x4 zmm2, zmm2, [rbx + 176], 0\n",
            "vmovdqu64 zmm3, [rsp + 2112]\n vinserti32x4 zmm3, zmm3, [rbx + 192], 0\n",
            "vmovdqu64 zmm4, [rsp + 2176]\n vinserti32x4 zmm4, zmm4, [rbx + 208], 0\n",
            "vmovdqu64 zmm5, [rsp + 2240]\n vinserti32x4 zmm5, zmm5, [rbx + 224], 0\n",
            "vmovdqu64 zmm6, [rsp + 2304]\n vinserti32x4 zmm6, zmm6, [rbx + 240], 0\n",
            "vmovdqu64 zmm7, [rsp + 2368]\n vinserti32x4 zmm7, zmm7, [rbx + 256], 0\n",
            "vmovdqu64 zmm8, [rsp + 2432]\n vinserti32x4 zmm8, zmm8, [rbx + 272], 0\n",
            "vmovdqu64 zmm9, [rsp + 2496]\n vinserti32x4 zmm9, zmm9, [rbx + 288], 0\n",
            "vmovdqu64 zmm10, [rsp + 2560]\n vinserti32x4 zmm10, zmm10, [rbx + 304], 0\n",
            "vmovdqu64 zmm11, [rsp + 2624]\n vinserti32x4 zmm11, zmm11, [rbx + 320], 0\n",
            "vmovdqu64 zmm12, [rsp + 2688]\n vinserti32x4 zmm12, zmm12, [rbx + 336], 0\n",
            "vmovdqu64 zmm13, [rsp + 2752]\n vinserti32x4 zmm13, zmm13, [rbx + 352], 0\n",
            "vmovdqu64 zmm14, [rsp + 2816]\n vinserti32x4 zmm14, zmm14, [rbx + 368], 0\n",
            "vmovdqu64 zmm15, [rsp + 2880]\n vinserti32x4 zmm15, zmm15, [rbx + 384], 0\n",
            "mov rsp, rbx\n jmp 7f\n",
        )
    };
}

/// x87 kept across the dispatcher where in use (`XINUSE` bit 0 of the in-use bits in `rax`,
/// also stored at `[rsp + 264]`): `FXSAVE` into a 16-byte aligned area at `[rsp + $at]` (512
/// bytes). `r12` (callee-saved; the frame holds the program's) keeps the area's address for
/// `x87_back`'s `FXRSTOR`, or 0 where there is nothing to load back.
/// The handlers run with x87 made clean (`x87_clean`) where they would see the program's
/// state, as on the `XSAVE` path. `FXSAVE` also writes `MXCSR` and `xmm0`-`xmm15`, and
/// `FXRSTOR` loads them: the stub loads both again after it, from its own copy and the frame.
///
/// x87 is in use more often than it is used: the kernel marks it in every signal frame, so
/// any thread that ran a program's signal handler has it in use, its state the initial one.
/// So the saved state is compared with the initial one (control word `0x37f`, all else zero
/// but `MXCSR`: registers empty and zero, no last instruction or operand); where it is, `r12`
/// is 0 and `x87_back` puts the initial state back through `XRSTOR`, which leaves x87
/// unused, and the thread's later hits need no save. Otherwise `FXRSTOR` loads the
/// program's state back. On the Intel Xeon of BENCHMARKS.md an `FXSAVE` and an `FXRSTOR`
/// cost about 19 ns each, an `XSAVE` of x87 alone and its `XRSTOR` 60 the pair, and
/// `XSAVEC`/`XRSTOR` of the whole state 74.
///
/// `rax` holds the in-use bits again after.
macro_rules! x87_kept {
    ($at:literal) => {
        concat!(
            "xor r12d, r12d\n test al, 1\n jz 16f\n lea r12, [rsp + ",
            $at,
            "]\n fxsave64 [r12]\n",
            "mov rcx, [r12]\n xor rcx, 0x37f\n or rcx, [r12 + 8]\n or rcx, [r12 + 16]\n",
            // The registers: 10 bytes of each 16 (the 6 after them are reserved).
            "or rcx, [r12 + 32]\n movzx edx, word ptr [r12 + 40]\n or rcx, rdx\n",
            "or rcx, [r12 + 48]\n movzx edx, word ptr [r12 + 56]\n or rcx, rdx\n",
            "or rcx, [r12 + 64]\n movzx edx, word ptr [r12 + 72]\n or rcx, rdx\n",
            "or rcx, [r12 + 80]\n movzx edx, word ptr [r12 + 88]\n or rcx, rdx\n",
            "or rcx, [r12 + 96]\n movzx edx, word ptr [r12 + 104]\n or rcx, rdx\n",
            "or rcx, [r12 + 112]\n movzx edx, word ptr [r12 + 120]\n or rcx, rdx\n",
            "or rcx, [r12 + 128]\n movzx edx, word ptr [r12 + 136]\n or rcx, rdx\n",
            "or rcx, [r12 + 144]\n movzx edx, word ptr [r12 + 152]\n or rcx, rdx\n",
            "jnz 23f\n xor r12d, r12d\n jmp 20f\n 23:\n",
            // Made clean where a handler would see the difference: the control word changed,
            // an exception pending (the status word's error summary) or a register valid
            // (the abridged tag byte); not where only bits left behind differ.
            "cmp word ptr [r12], 0x37f\n jne 21f\n test byte ptr [r12 + 2], 0x80\n jnz 21f\n",
            "cmp byte ptr [r12 + 4], 0\n je 20f\n",
            "21:\n",
            x87_clean!(),
            "20:\n mov rax, [rsp + 264]\n",
            "16:\n",
        )
    };
}

/// x87 made clean for the handlers (`fninit`), once the program's state is saved, as a signal
/// handler finds it: its stack empty (the program may hold values there, or be between MMX
/// instructions, every register valid: a handler's first push would overflow), no exception
/// pending (an unmasked one would fault at the handler's first x87 instruction), the control
/// word at reset (the program's rounding would be the handler's). `fninit` cost less here in
/// the stub than `emms`, `fnclex` and `fldcw` together: about 25 ns a hit.
macro_rules! x87_clean {
    () => {
        "fninit\n"
    };
}

/// `MXCSR` at reset, as a signal handler finds it: every stub loads it for the handlers where
/// the program's control bits differ (its rounding, flush-to-zero or unmasked exceptions
/// would be the handlers'), and loads the program's back after.
static MXCSR_AT_RESET: u32 = 0x1f80;

/// `MXCSR` at reset loaded for the handlers where the program's, stored at `[$at]`, has other
/// control bits (bits 6-15). Not where only its sticky exception flags differ: `LDMXCSR` of
/// another value costs about 40 ns in the stub on the Intel Xeon of BENCHMARKS.md (3 ns in a
/// loop of its own), so the handlers see the program's flags. Clobbers `ecx`.
macro_rules! mxcsr_reset {
    ($at:literal) => {
        concat!(
            "mov ecx, [",
            $at,
            "]\n and ecx, 0xffc0\n cmp ecx, 0x1f80\n je 22f\n",
            "ldmxcsr [rip + {mxcsr_reset}]\n 22:\n",
        )
    };
}

/// The program's `MXCSR`, stored at `[rbx - 16]` by `mxcsr_kept!`, loaded back where the
/// handlers changed it: their arithmetic sets its sticky exception flags, which a signal
/// handler's return (the trap path) puts back too. Compared first: loading another value
/// costs about 60 ns here on the Intel Xeon of BENCHMARKS.md (the "jump, handler's float
/// flag" row), the store and the compare under 1 ns. Clobbers `ecx`.
macro_rules! mxcsr_back {
    () => {
        concat!(
            "stmxcsr [rbx - 12]\n mov ecx, [rbx - 12]\n cmp ecx, [rbx - 16]\n je 23f\n",
            "ldmxcsr [rbx - 16]\n 23:\n",
        )
    };
}

/// The entry of an argument-keeping stub's call: 16 bytes below the frame (`rbx`), the
/// program's `MXCSR` at `[rbx - 16]`, and `MXCSR` at reset for the handlers where the program's
/// control bits differ (`mxcsr_reset!`). `mxcsr_back!` after the dispatcher.
macro_rules! mxcsr_kept {
    () => {
        concat!("sub rsp, 16\n stmxcsr [rsp]\n", mxcsr_reset!("rsp"))
    };
}

/// x87 back as the program had it:
/// - not in its initial state (`r12` set by `x87_kept`): loaded from that area with `FXRSTOR`;
/// - otherwise the initial state, put back (where x87 is in use now) with `XRSTOR` of x87
///   alone from an area whose header marks it initial: unlike `fninit`, it zeroes the
///   registers a handler used, and leaves x87 unused.
macro_rules! x87_back {
    () => {
        concat!(
            "test r12, r12\n jz 17f\n fxrstor64 [r12]\n jmp 9f\n",
            "17:\n mov ecx, 1\n xgetbv\n test al, 1\n jz 9f\n",
            "mov eax, 1\n xor edx, edx\n xrstor64 [rip + {x87_initial}]\n",
            "9:\n",
        )
    };
}

/// An `XSAVE` area (legacy part and header) whose header marks every component initial: its
/// `XRSTOR` puts x87 in its initial state.
#[repr(C, align(64))]
struct InitialState([u8; 576]);
static X87_INITIAL: InitialState = InitialState([0; 576]);

/// The same with AVX-512: `zmm0`-`zmm7` (`__m512`) kept whole.
///
/// The OR of `zmm0`-`zmm15` says first whether any bit above the low 128 is set (as the OR
/// of `ymm_args_call` does for its upper halves; unlike it, the other path does not keep
/// `zmm8`-`zmm15`'s upper bits for the handlers): when none is (the usual case), nothing is
/// stored, and `vzeroupper` before and after the dispatcher puts back exactly what was there
/// (about 2-3 ns a hit less than storing and loading 512 bytes, measured in BENCHMARKS.md). Otherwise `zmm0`-`zmm7` are stored whole
/// below the frame and loaded back after the dispatcher. `zmm8` and `zmm9` are the OR's
/// accumulators: stored whole first (at `[rsp + 512]`), and loaded back before that store.
macro_rules! zmm_args_call {
    () => {
        concat!(
            "sub rsp, 640\n",
            "vmovdqu64 [rsp + 512], zmm8\n vmovdqu64 [rsp + 576], zmm9\n",
            "vpord zmm8, zmm8, zmm0\n vpord zmm9, zmm9, zmm1\n vpord zmm8, zmm8, zmm2\n vpord zmm9, zmm9, zmm3\n",
            "vpord zmm8, zmm8, zmm4\n vpord zmm9, zmm9, zmm5\n vpord zmm8, zmm8, zmm6\n vpord zmm9, zmm9, zmm7\n",
            "vpord zmm8, zmm8, zmm10\n vpord zmm9, zmm9, zmm11\n vpord zmm8, zmm8, zmm12\n vpord zmm9, zmm9, zmm13\n",
            "vpord zmm8, zmm8, zmm14\n vpord zmm9, zmm9, zmm15\n vpord zmm8, zmm8, zmm9\n",
            // Bits 256-511 into ymm9, bits 128-255 into xmm8 (VEX: the rest of zmm8 zeroed).
            "vextracti64x4 ymm9, zmm8, 1\n vextractf128 xmm8, ymm8, 1\n",
            "vorps ymm9, ymm9, ymm8\n vptest ymm9, ymm9\n jnz 4f\n",
            "vzeroupper\n call {dispatch}\n vzeroupper\n",
            mxcsr_back!(),
            "mov rsp, rbx\n jmp 5f\n",
            "4:\n",
            "vmovdqu64 zmm8, [rsp + 512]\n vmovdqu64 zmm9, [rsp + 576]\n",
            "vmovdqu64 [rsp + 0], zmm0\n vmovdqu64 [rsp + 64], zmm1\n",
            "vmovdqu64 [rsp + 128], zmm2\n vmovdqu64 [rsp + 192], zmm3\n",
            "vmovdqu64 [rsp + 256], zmm4\n vmovdqu64 [rsp + 320], zmm5\n",
            "vmovdqu64 [rsp + 384], zmm6\n vmovdqu64 [rsp + 448], zmm7\n",
            "call {dispatch}\n",
            mxcsr_back!(),
            "vmovdqu64 zmm0, [rsp + 0]\n vmovdqu64 zmm1, [rsp + 64]\n",
            "vmovdqu64 zmm2, [rsp + 128]\n vmovdqu64 zmm3, [rsp + 192]\n",
            "vmovdqu64 zmm4, [rsp + 256]\n vmovdqu64 zmm5, [rsp + 320]\n",
            "vmovdqu64 zmm6, [rsp + 384]\n vmovdqu64 zmm7, [rsp + 448]\n",
            "mov rsp, rbx\n",
            "5:\n",
        )
    };
}

jump_stub!("__dprobe_jump_entry", jump_dispatch, [mxcsr_kept!(), "call {dispatch}", mxcsr_back!(), "mov rsp, rbx",], mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_post", post_dispatch, [mxcsr_kept!(), "call {dispatch}", mxcsr_back!(), "mov rsp, rbx",], mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_entry_full", jump_dispatch, [whole_state_call!(),], bytes = sym XSAVE_BYTES, compact = sym XSAVE_COMPACT, mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_post_full", post_dispatch, [whole_state_call!(),], bytes = sym XSAVE_BYTES, compact = sym XSAVE_COMPACT, mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_entry_avx_state", jump_dispatch, [avx_state_call!(),], x87_initial = sym X87_INITIAL, mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_post_avx_state", post_dispatch, [avx_state_call!(),], x87_initial = sym X87_INITIAL, mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_entry_avx512_state", jump_dispatch, [avx512_state_call!(),], bytes = sym XSAVE_BYTES, compact = sym XSAVE_COMPACT, x87_initial = sym X87_INITIAL, mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_post_avx512_state", post_dispatch, [avx512_state_call!(),], bytes = sym XSAVE_BYTES, compact = sym XSAVE_COMPACT, x87_initial = sym X87_INITIAL, mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_entry_ymm", jump_dispatch, [mxcsr_kept!(), ymm_args_call!(),], mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_post_ymm", post_dispatch, [mxcsr_kept!(), ymm_args_call!(),], mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_entry_zmm", jump_dispatch, [mxcsr_kept!(), zmm_args_call!(),], mxcsr_reset = sym MXCSR_AT_RESET);
jump_stub!("__dprobe_jump_post_zmm", post_dispatch, [mxcsr_kept!(), zmm_args_call!(),], mxcsr_reset = sym MXCSR_AT_RESET);

extern "C" {
    fn __dprobe_jump_entry();
    fn __dprobe_jump_post();
    fn __dprobe_jump_entry_full();
    fn __dprobe_jump_post_full();
    fn __dprobe_jump_entry_avx_state();
    fn __dprobe_jump_post_avx_state();
    fn __dprobe_jump_entry_avx512_state();
    fn __dprobe_jump_post_avx512_state();
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
        VectorState::Xmm if std::arch::is_x86_feature_detected!("avx512f") && !avx_stub_forced() => {
            (at(__dprobe_jump_entry_zmm), at(__dprobe_jump_post_zmm))
        }
        VectorState::Xmm if std::arch::is_x86_feature_detected!("avx") => {
            (at(__dprobe_jump_entry_ymm), at(__dprobe_jump_post_ymm))
        }
        VectorState::Xmm => (at(__dprobe_jump_entry), at(__dprobe_jump_post)),
        VectorState::Full if only_x87_sse_avx() || avx_stub_forced() => {
            (at(__dprobe_jump_entry_avx_state), at(__dprobe_jump_post_avx_state))
        }
        VectorState::Full if avx512_state_only() => {
            (at(__dprobe_jump_entry_avx512_state), at(__dprobe_jump_post_avx512_state))
        }
        VectorState::Full => (at(__dprobe_jump_entry_full), at(__dprobe_jump_post_full)),
    }
}

/// The AVX-512 argument-keeping entry stub, which the crate's tests check the forced choice
/// is not.
#[cfg(test)]
pub(crate) fn avx512_entry_stub() -> Addr {
    Addr(__dprobe_jump_entry_zmm as *const () as u64)
}

/// Set by the crate's own tests, which run the AVX stubs (whole-state and argument-keeping)
/// on a CPU with AVX-512 (where they are never chosen): `avx_stub_tests.rs`.
#[cfg(test)]
pub(crate) static AVX_STUB_FORCED: AtomicBool = AtomicBool::new(false);

fn avx_stub_forced() -> bool {
    #[cfg(test)]
    return AVX_STUB_FORCED.load(Relaxed) && std::arch::is_x86_feature_detected!("avx") && xinuse_known();
    #[cfg(not(test))]
    false
}

/// Whether the kernel enabled exactly the x87, SSE and AVX state (`XCR0` = 7, with [`PKRU`] or
/// not) and the CPU says which of it is in use (`XGETBV` with `ECX` = 1, CPUID leaf 0xD
/// sub-leaf 1 `EAX` bit 2): what `avx_state_call` needs.
fn only_x87_sse_avx() -> bool {
    xinuse_known() && xcr0() & !PKRU == 7
}

/// Whether `XGETBV` with `ECX` = 1 says which state is in use (CPUID leaf 0xD sub-leaf 1
/// `EAX` bit 2; leaf 0xD exists wherever OSXSAVE is set).
fn xinuse_known() -> bool {
    xsave_enabled() && std::arch::x86_64::__cpuid_count(0xd, 1).eax & (1 << 2) != 0
}

/// `XCR0`'s bit for the protection-key rights register (`PKRU`), which Linux enables wherever
/// the CPU has protection keys. The stubs without `XSAVE` leave it as it is: handlers do not
/// change it (a handler's own `pkey_set` would stay, where `XSAVE` would undo it).
const PKRU: u64 = 1 << 9;

/// Whether `avx512_state_call` keeps what the kernel enabled: AVX-512 with 64-bit mask
/// registers (AVX512BW), the CPU says which state is in use (CPUID leaf 0xD sub-leaf 1 `EAX`
/// bit 2), and `XCR0` holds nothing beyond x87, SSE, AVX, the three AVX-512 components, AMX's
/// two and [`PKRU`] (another component is kept by `XSAVE` alone).
fn avx512_state_only() -> bool {
    const KEPT: u64 = 0x7 | 0xe0 | 0x6_0000 | PKRU;
    if !xinuse_known()
        || !std::arch::is_x86_feature_detected!("avx512f")
        || !std::arch::is_x86_feature_detected!("avx512bw")
    {
        return false;
    }
    let enabled = xcr0();
    enabled & !KEPT == 0 && enabled & 0xe0 == 0xe0
}

/// `XCR0`: the state components the kernel enabled. Only where `XSAVE` is enabled.
fn xcr0() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0, allowed in user mode wherever OSXSAVE is set
    // (the callers check it); it touches no memory.
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") high, options(nomem, nostack)) };
    u64::from(high) << 32 | u64::from(low)
}

/// Whether the kernel enabled `XSAVE` (CPUID.1:ECX.OSXSAVE): `XGETBV` and CPUID leaf 0xD may
/// be used.
fn xsave_enabled() -> bool {
    // CPUID is available on every x86-64 CPU.
    std::arch::x86_64::__cpuid_count(1, 0).ecx & (1 << 27) != 0
}

/// Make the whole-state stubs usable: the size of the area `XSAVE` (or `XSAVEC`) writes for
/// the state components the kernel enabled, from CPUID leaf 0xD. Why not, when they cannot be.
pub(crate) fn xsave_ready() -> Result<(), String> {
    use std::arch::x86_64::__cpuid_count;
    if XSAVE_BYTES.load(Relaxed) != 0 {
        return Ok(());
    }
    if !xsave_enabled() {
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
