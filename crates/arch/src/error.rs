//! Typed errors of the arch layer. Every refusal carries a reason a person can read.

use crate::InsnText;
use crate::{Addr, MemoryFault};

/// Why an instruction cannot be probed: each class has its written reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// `int3`, `int1`/`icebp`: another debugger's breakpoint, or the program's own trap.
    #[error("it is a breakpoint instruction: it belongs to the program or another debugger, and a copy would trap at the copy's address")]
    Breakpoint,
    /// `int n`: a software interrupt.
    #[error("it is a software interrupt (int n): the kernel would see the copy's address, and interrupt-based system calls cannot be restarted from a copy")]
    SoftwareInterrupt,
    /// `syscall`, `sysenter`.
    #[error("it is a system call instruction: the kernel, seccomp and tracers would see the copy's address, and an interrupted call would restart in the copy")]
    SystemCall,
    /// CPL-0 and I/O instructions.
    #[error("it is a privileged or I/O instruction: it faults in user mode, and a copy would report the fault at the wrong address")]
    Privileged,
    /// Far call/jmp/ret, `iret`, `sysret`.
    #[error(
        "it is a far control transfer or interrupt return: it changes the code segment, which dprobe does not emulate"
    )]
    FarTransfer,
    /// `ud0`/`ud1`/`ud2` and undecodable bytes.
    #[error("it is an undefined or invalid instruction: it raises #UD by design, and a copy would report it at the wrong address")]
    Undefined,
    /// `xbegin`: its abort handler is addressed relative to the instruction.
    #[error("it starts a hardware transaction (xbegin): its abort target is relative to the instruction and cannot be relocated")]
    Transactional,
    /// `mov ss`, `pop ss`.
    #[error("it loads the stack segment: it masks interrupts and traps for one instruction")]
    StackSegmentLoad,
    /// A branch with an operand-size or address-size override (truncates RIP or RCX).
    #[error("it is a branch with an operand- or address-size override, which truncates the target; dprobe does not emulate it")]
    SizeOverriddenBranch,
    /// An indirect branch through an `fs:`/`gs:` based memory operand.
    #[error(
        "it is an indirect branch through an fs:/gs: memory operand, whose segment base the emulator does not know"
    )]
    SegmentIndirectBranch,
}

/// Why [`crate::analyze`] refused an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    /// The address is in the middle of an instruction (the kernel's `EILSEQ`).
    #[error("{addr} is not on an instruction boundary: the instruction at {insn_start} covers it ({insn_len} bytes)")]
    NotInstructionBoundary {
        /// The address asked for.
        addr: Addr,
        /// Start of the instruction that covers it.
        insn_start: Addr,
        /// Length of that instruction.
        insn_len: usize,
    },
    /// The address lies outside the code given (e.g. past the function's end).
    #[error("{addr} is outside the function's code ({start}..{end})")]
    OutsideCode {
        /// The address asked for.
        addr: Addr,
        /// Start of the code.
        start: Addr,
        /// End of the code (exclusive).
        end: Addr,
    },
    /// The function's code cannot be decoded from its start up to the address, so the address
    /// cannot be shown to be an instruction boundary.
    #[error("cannot decode the function from {start} up to {addr}: invalid bytes at {at}")]
    UndecodableBefore {
        /// The address asked for.
        addr: Addr,
        /// Start of the function.
        start: Addr,
        /// Where decoding failed.
        at: Addr,
    },
    /// The bytes end before the instruction does.
    #[error("the code ends inside the instruction at {addr}")]
    Truncated {
        /// Start of the cut instruction.
        addr: Addr,
    },
    /// The instruction cannot be probed.
    #[error("cannot probe `{text}` at {addr}: {reason}")]
    Unsupported {
        /// Where it is.
        addr: Addr,
        /// The instruction, disassembled.
        text: InsnText,
        /// Why.
        reason: Unsupported,
    },
}

/// Why [`crate::prepare_slot`] cannot build a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// The instruction is emulated and needs no slot.
    #[error("the instruction at {0} is emulated and takes no slot")]
    Emulated(Addr),
    /// A RIP-relative operand cannot reach its target from the slot, and it cannot be rewritten
    /// through a scratch register (it uses the stack pointer or no register is free).
    #[error("the RIP-relative instruction at {addr} needs a slot within 2 GiB of {target}, and cannot be rewritten through a scratch register: {why}")]
    OutOfReach {
        /// The instruction.
        addr: Addr,
        /// Its operand's target.
        target: Addr,
        /// Why the scratch-register rewrite is not possible.
        why: &'static str,
    },
    /// The encoder rejected the relocated instruction.
    #[error("cannot re-encode the instruction at {addr} for the slot: {why}")]
    Encode {
        /// The instruction.
        addr: Addr,
        /// The encoder's message.
        why: String,
    },
}

/// Why emulation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmulateError {
    /// A memory access of the emulated instruction failed: the original instruction would
    /// have faulted too. The registers are unchanged.
    #[error("emulated access failed: {0}")]
    Fault(#[from] MemoryFault),
}
