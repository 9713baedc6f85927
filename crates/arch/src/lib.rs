//! x86-64 layer of dprobe: can an instruction be probed, and how is it executed out of line?
//!
//! The interface mirrors the kernel's verbs between the generic and the arch layer:
//!
//! * [`analyze`] decodes the instruction at a probe address (checking that the address is on an
//!   instruction boundary of its function) and classifies it once: emulated in the trap handler,
//!   copied to an out-of-line slot (with a RIP-relative operand fixed up), or refused with a
//!   written reason ([`Unsupported`]);
//! * [`prepare`] decides, once, how a hit executes it ([`ExecPlan`]: emulated, or a copy in an
//!   out-of-line slot that is *boosted* (jumps back to the original stream, one trap per hit)
//!   or *post-step* (ends in `int3` so that a post-handler runs after the instruction)),
//!   builds that slot's code ([`prepare_slot`]) at an address the engine supplies, and falls
//!   back to emulation when a copy is only an optimization. The [`Prepared`] result carries
//!   the [`Patch`]es that arm and disarm the probe ([`arm`], [`disarm`]); an engine applies
//!   them, and undoes them in the code it analyzes ([`Patch::revert_in`]);
//! * [`emulate`] and [`Prepared::finish_step`] update [`Regs`] after the instruction ran;
//! * [`relocate`] copies a run of consecutive instructions ([`analyze_run`]: those a
//!   jump-optimized probe displaces) to run elsewhere, re-targeting RIP-relative operands and
//!   relative branches, or refuses with a [`RelocateError`];
//! * [`find_exits`] finds every instruction through which a function leaves (`ret`, tail
//!   calls), for return probes that never touch the stack, or says why they are not all known
//!   ([`ExitsUnknown`]);
//! * [`can_optimize`] decides, from the whole function, whether a probe can be a jump instead
//!   of an `int3`, or says why not ([`NotOptimized`]); [`can_optimize_exit`] the same for a
//!   return probe's exit, whose jump goes before it.
//!
//! Every byte of machine code dprobe writes into a process (slots, return stubs, injected
//! system calls, trampolines) comes from one [`CodeWriter`], which lays instructions out with
//! iced-x86's block encoder.
//!
//! This crate never touches the running process: memory is reached through the [`Memory`]
//! trait, and addresses are plain numbers ([`Addr`]), never pointers.
//!
//! ```
//! use dprobe_arch::{analyze, plan, Addr, ExecPlan, Emulation};
//! // push %rbp at 0x1000: emulated in the trap handler, no slot needed.
//! let insn = analyze(&[0x55, 0x48, 0x89, 0xe5], Addr(0x1000), Addr(0x1000)).unwrap();
//! assert_eq!(plan(&insn, false), ExecPlan::Emulate(Emulation::Push { value: dprobe_arch::PushValue::Reg(dprobe_arch::Gpr::Rbp) }));
//! ```
#![forbid(unsafe_code)]

mod addr;
mod analyze;
mod branch_scan;
mod detour;
mod emulate;
mod entry_state;
mod error;
mod exit_window;
mod exits;
mod insn_text;
mod kernel_uprobe;
mod memory;
mod object_branches;
mod optimize;
mod patch;
mod prepare;
mod regs;
mod relocate;
mod signal_frame;
mod slot;
mod straight_to_exit;
mod warm_up;
mod writer;

pub use addr::Addr;
pub use analyze::{
    analyze, analyze_run, decode_len, describe, endbr64_len, plan, Condition, Emulation, ExecClass, ExecPlan, Insn,
    MemOperand, PushValue, RipRelative,
};
pub use branch_scan::{BranchCandidates, FunctionStarts};
pub use detour::{
    detour_code, detour_code_with_post, exit_detour_code, post_fits, Detour, DETOUR_ENTRY, DETOUR_POST_STUB,
    DETOUR_REDIRECT, DETOUR_RETURN, DETOUR_STACK_SKIP, DETOUR_WINDOW, POST_DETOUR_BACK, POST_NEXT_BACK,
};
pub use emulate::emulate;
pub use error::{AnalyzeError, EmulateError, PrepareError, Unsupported};
pub use exit_window::can_optimize_exit;
pub use exits::{find_exits, CodePart, ExitKind, ExitSite, Exits, ExitsUnknown};
pub use insn_text::InsnText;
pub use kernel_uprobe::{kernel_uprobe_refusal, KernelUprobeRefusal};
pub use memory::{Memory, MemoryFault, NoMemory};
pub use object_branches::{CodeBranches, CodeRegion, LandingPad};
pub use optimize::{can_optimize, vector_state, window_head, FunctionCode, NotOptimized, VectorState, JUMP_LEN};
pub use patch::{arm, disarm, Patch, INT3};
pub use prepare::{prepare, Prepared};
pub use regs::{Gpr, Regs};
pub use relocate::{relocate, relocate_with, RelocateError, Relocated};
pub use signal_frame::FRAME_GREGS;
pub use slot::{prepare_slot, SlotCode, SlotEnding, SLOT_SIZE};
pub use straight_to_exit::straight_to_exit;
pub use warm_up::warm_up;
pub use writer::{
    call_through_code, jmp_rel32, move_rsp_code, ret_pop_code, syscall_code, trampoline_code, CodeWriter, EncodeError,
    Written,
};
