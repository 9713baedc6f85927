//! Analyze: decode the instruction at a probe address and classify, once, how it is executed
//! out of line. The hit path only dispatches on the result.

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderError, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction,
    InstructionInfoFactory, Mnemonic, OpKind, Register,
};

use crate::InsnText;
use crate::{Addr, AnalyzeError, Gpr, SlotEnding, Unsupported};

/// A decoded, classified instruction at a probe address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insn {
    /// Where it is.
    pub addr: Addr,
    /// Its length in bytes (1..=15).
    pub len: usize,
    /// Its original bytes (the first `len` are meaningful). Always the original ones: analysis
    /// never looks at a probe's own `int3`.
    pub bytes: [u8; 15],
    /// How it is executed when the probe hits.
    pub class: ExecClass,
}

impl Insn {
    /// The instruction's bytes.
    pub fn code(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The address right after it.
    pub fn next(&self) -> Addr {
        self.addr.offset(self.len as u64)
    }

    /// The instruction in AT&T syntax, for messages.
    pub fn text(&self) -> String {
        describe(self.code(), self.addr)
    }

    /// [`Insn::text`], formatted when shown (see [`InsnText`]).
    pub fn text_when_shown(&self) -> InsnText {
        InsnText::of(self.code(), self.addr)
    }

    pub(crate) fn decode(&self) -> Instruction {
        let mut d = Decoder::with_ip(64, self.code(), self.addr.0, DecoderOptions::NONE);
        d.decode()
    }
}

/// How an instruction is executed when its probe hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecClass {
    /// The trap handler computes its effect on the registers (and stack) itself: no slot.
    Emulate {
        /// What to do.
        emulation: Emulation,
        /// A boosted copy in a slot is also correct (absolute control transfers), and is
        /// preferred when emulation would have to read memory the engine reaches slowly.
        copyable: bool,
        /// The RIP-relative operand a copy must re-target (`jmp *disp(%rip)`). Such a copy
        /// needs a near slot: the far rewrite cannot restore its scratch register after a jump.
        rip_relative: Option<RipRelative>,
    },
    /// A copy executes it: verbatim, or with its RIP-relative operand re-targeted.
    Copy {
        /// The RIP-relative operand, if any.
        rip_relative: Option<RipRelative>,
    },
}

/// A RIP-relative memory operand of a copied instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RipRelative {
    /// The absolute address the operand refers to.
    pub target: Addr,
    /// Offset of the 32-bit displacement inside the instruction.
    pub disp_offset: u8,
    /// A register the instruction does not use, through which the operand can be rewritten when
    /// no slot within ±2 GiB of `target` can be had. `None` when the instruction uses the stack
    /// pointer (the rewrite moves it) or every candidate register.
    pub scratch: Option<Gpr>,
}

/// Condition of a `jcc`, evaluated on RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Condition {
    O,
    No,
    B,
    Ae,
    E,
    Ne,
    Be,
    A,
    S,
    Ns,
    P,
    Np,
    L,
    Ge,
    Le,
    G,
}

/// A memory operand `base + index * scale + disp` (RIP-relative ones are resolved: no base,
/// `disp` is the absolute address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register.
    pub base: Option<Gpr>,
    /// Index register.
    pub index: Option<Gpr>,
    /// Scale of the index (1, 2, 4, 8).
    pub scale: u8,
    /// Displacement (wrapping 64-bit).
    pub disp: u64,
}

/// What a 64-bit `push` pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushValue {
    /// A register.
    Reg(Gpr),
    /// A sign-extended immediate.
    Imm(u64),
}

/// An instruction the trap handler executes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// Any `nop` form, `endbr64`.
    Nop,
    /// `jmp rel8/rel32`.
    Jmp {
        /// Branch target.
        target: Addr,
    },
    /// `jcc rel8/rel32`.
    Jcc {
        /// Condition.
        cond: Condition,
        /// Branch target.
        target: Addr,
    },
    /// `loop`, `loope`, `loopne` (64-bit RCX).
    Loop {
        /// `None`: plain loop; `Some(true)`: loope; `Some(false)`: loopne.
        zf: Option<bool>,
        /// Branch target.
        target: Addr,
    },
    /// `jrcxz`.
    Jrcxz {
        /// Branch target.
        target: Addr,
    },
    /// `call rel32`.
    Call {
        /// Call target.
        target: Addr,
    },
    /// `call reg`.
    CallReg {
        /// The register holding the target.
        reg: Gpr,
    },
    /// `call [mem]`.
    CallMem {
        /// Where the target is read from.
        mem: MemOperand,
    },
    /// `jmp reg`.
    JmpReg {
        /// The register holding the target.
        reg: Gpr,
    },
    /// `jmp [mem]` (PLT stubs).
    JmpMem {
        /// Where the target is read from.
        mem: MemOperand,
    },
    /// `ret`, `ret imm16`.
    Ret {
        /// Extra bytes popped after the return address.
        pop: u16,
    },
    /// 64-bit `push reg` / `push imm`.
    Push {
        /// What is pushed.
        value: PushValue,
    },
}

/// How an engine executes an instruction on a hit, chosen from its class and whether the site
/// has a post-handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecPlan {
    /// Emulate in the trap handler (one trap; post-handlers run right after).
    Emulate(Emulation),
    /// Run a copy in a slot with this ending.
    Slot(SlotEnding),
}

/// Choose how to execute `insn`. `needs_post` is whether a post-handler must run after it.
///
/// Emulation wins (one trap, no slot), except for `jmp [mem]` without a post-handler, whose
/// boosted copy avoids reading the program's memory from the trap handler.
pub fn plan(insn: &Insn, needs_post: bool) -> ExecPlan {
    match insn.class {
        ExecClass::Emulate { emulation: emulation @ Emulation::JmpMem { .. }, copyable: true, .. } => {
            if needs_post {
                ExecPlan::Emulate(emulation)
            } else {
                ExecPlan::Slot(SlotEnding::JumpBack)
            }
        }
        ExecClass::Emulate { emulation, .. } => ExecPlan::Emulate(emulation),
        ExecClass::Copy { .. } if needs_post => ExecPlan::Slot(SlotEnding::Trap),
        ExecClass::Copy { .. } => ExecPlan::Slot(SlotEnding::JumpBack),
    }
}

/// The length of the instruction at the start of `bytes`, if it decodes.
pub fn decode_len(bytes: &[u8]) -> Option<usize> {
    let mut d = Decoder::new(64, bytes, DecoderOptions::NONE);
    let i = d.decode();
    (!i.is_invalid()).then(|| i.len())
}

/// The length of the `endbr64` at the start of `code` (a function entry marked for indirect
/// branch tracking: the instruction after it counts as the entry too), or 0 if there is none.
pub fn endbr64_len(code: &[u8]) -> usize {
    let i = Decoder::new(64, code, DecoderOptions::NONE).decode();
    if i.code() == Code::Endbr64 {
        i.len()
    } else {
        0
    }
}

/// The instruction at the start of `bytes`, in AT&T syntax.
pub fn describe(bytes: &[u8], addr: Addr) -> String {
    let mut d = Decoder::with_ip(64, bytes, addr.0, DecoderOptions::NONE);
    let i = d.decode();
    if i.is_invalid() {
        return format!("(bad) {:02x?}", &bytes[..bytes.len().min(15)]);
    }
    let mut out = String::new();
    GasFormatter::new().format(&i, &mut out);
    out
}

/// Decode and classify the instruction at `addr`.
///
/// `code` holds the original bytes of the containing function from `code_start` (its first
/// instruction) on; the function is decoded from its start so that an address inside an
/// instruction is refused (the kernel's `can_probe`). When the function's start is not known,
/// pass `code_start == addr`: only the instruction itself is then checked.
///
/// The bytes must be the original ones, never an armed probe's `int3`.
pub fn analyze(code: &[u8], code_start: Addr, addr: Addr) -> Result<Insn, AnalyzeError> {
    let end = code_start.offset(code.len() as u64);
    if addr < code_start || addr >= end {
        return Err(AnalyzeError::OutsideCode { addr, start: code_start, end });
    }
    let mut decoder = Decoder::with_ip(64, code, code_start.0, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    loop {
        let at = Addr(decoder.ip());
        decoder.decode_out(&mut instr);
        if instr.is_invalid() && decoder.last_error() == DecoderError::NoMoreBytes {
            return Err(AnalyzeError::Truncated { addr: at });
        }
        if at == addr {
            break;
        }
        if instr.is_invalid() {
            return Err(AnalyzeError::UndecodableBefore { addr, start: code_start, at });
        }
        let next = at.offset(instr.len() as u64);
        if next > addr {
            return Err(AnalyzeError::NotInstructionBoundary { addr, insn_start: at, insn_len: instr.len() });
        }
    }
    let offset = (addr.0 - code_start.0) as usize;
    let len = instr.len();
    let mut bytes = [0u8; 15];
    bytes[..len].copy_from_slice(&code[offset..offset + len]);
    let refuse = |reason| AnalyzeError::Unsupported { addr, text: InsnText::of(&bytes[..len], addr), reason };
    let class = classify(&instr, &decoder).map_err(refuse)?;
    Ok(Insn { addr, len, bytes, class })
}

/// Analyze the instructions from `addr` on that cover at least `len` bytes: the window a
/// jump of `len` bytes at `addr` displaces. Each is checked as [`analyze`] checks one.
pub fn analyze_run(code: &[u8], code_start: Addr, addr: Addr, len: usize) -> Result<Vec<Insn>, AnalyzeError> {
    let mut run = vec![analyze(code, code_start, addr)?];
    while let Some(next) = run.last().map(Insn::next).filter(|n| n.0.wrapping_sub(addr.0) < len as u64) {
        run.push(analyze(code, code_start, next)?);
    }
    Ok(run)
}

fn classify(i: &Instruction, decoder: &Decoder<'_>) -> Result<ExecClass, Unsupported> {
    if i.is_invalid() {
        return Err(Unsupported::Undefined);
    }
    let emulate = |emulation| Ok(ExecClass::Emulate { emulation, copyable: false, rip_relative: None });
    let target = Addr(i.near_branch_target());
    match i.flow_control() {
        FlowControl::Interrupt => match i.code() {
            Code::Int_imm8 => Err(Unsupported::SoftwareInterrupt),
            _ => Err(Unsupported::Breakpoint),
        },
        FlowControl::Exception => Err(Unsupported::Undefined),
        FlowControl::XbeginXabortXend => Err(Unsupported::Transactional),
        FlowControl::Call => match i.code() {
            Code::Call_rel32_64 => emulate(Emulation::Call { target }),
            Code::Call_rel16 | Code::Call_rel32_32 => Err(Unsupported::SizeOverriddenBranch),
            Code::Syscall | Code::Sysenter => Err(Unsupported::SystemCall),
            c if c.is_privileged() => Err(Unsupported::Privileged),
            _ => Err(Unsupported::FarTransfer),
        },
        FlowControl::IndirectCall => match i.code() {
            Code::Call_rm64 => indirect(i, decoder, true),
            Code::Call_rm16 | Code::Call_rm32 => Err(Unsupported::SizeOverriddenBranch),
            _ => Err(Unsupported::FarTransfer),
        },
        FlowControl::UnconditionalBranch => match i.code() {
            Code::Jmp_rel8_64 | Code::Jmp_rel32_64 => emulate(Emulation::Jmp { target }),
            Code::Jmp_rel8_16 | Code::Jmp_rel16 | Code::Jmp_rel8_32 | Code::Jmp_rel32_32 => {
                Err(Unsupported::SizeOverriddenBranch)
            }
            _ => Err(Unsupported::FarTransfer),
        },
        FlowControl::IndirectBranch => match i.code() {
            Code::Jmp_rm64 => indirect(i, decoder, false),
            Code::Jmp_rm16 | Code::Jmp_rm32 => Err(Unsupported::SizeOverriddenBranch),
            _ => Err(Unsupported::FarTransfer),
        },
        FlowControl::ConditionalBranch => conditional(i, target),
        FlowControl::Return => match i.code() {
            Code::Retnq => {
                Ok(ExecClass::Emulate { emulation: Emulation::Ret { pop: 0 }, copyable: true, rip_relative: None })
            }
            Code::Retnq_imm16 => Ok(ExecClass::Emulate {
                emulation: Emulation::Ret { pop: i.immediate16() },
                copyable: true,
                rip_relative: None,
            }),
            Code::Retnw | Code::Retnw_imm16 | Code::Retnd | Code::Retnd_imm16 => Err(Unsupported::SizeOverriddenBranch),
            c if c.is_privileged() => Err(Unsupported::Privileged),
            _ => Err(Unsupported::FarTransfer),
        },
        FlowControl::Next => sequential(i, decoder),
    }
}

fn conditional(i: &Instruction, target: Addr) -> Result<ExecClass, Unsupported> {
    let emulation = match i.code() {
        Code::Loop_rel8_64_RCX => Emulation::Loop { zf: None, target },
        Code::Loope_rel8_64_RCX => Emulation::Loop { zf: Some(true), target },
        Code::Loopne_rel8_64_RCX => Emulation::Loop { zf: Some(false), target },
        Code::Jrcxz_rel8_64 => Emulation::Jrcxz { target },
        _ if i.is_jcc_short_or_near() && matches!(i.op0_kind(), OpKind::NearBranch64) => {
            Emulation::Jcc { cond: condition(i.condition_code()).ok_or(Unsupported::Undefined)?, target }
        }
        _ => return Err(Unsupported::SizeOverriddenBranch),
    };
    Ok(ExecClass::Emulate { emulation, copyable: false, rip_relative: None })
}

fn condition(cc: ConditionCode) -> Option<Condition> {
    Some(match cc {
        ConditionCode::o => Condition::O,
        ConditionCode::no => Condition::No,
        ConditionCode::b => Condition::B,
        ConditionCode::ae => Condition::Ae,
        ConditionCode::e => Condition::E,
        ConditionCode::ne => Condition::Ne,
        ConditionCode::be => Condition::Be,
        ConditionCode::a => Condition::A,
        ConditionCode::s => Condition::S,
        ConditionCode::ns => Condition::Ns,
        ConditionCode::p => Condition::P,
        ConditionCode::np => Condition::Np,
        ConditionCode::l => Condition::L,
        ConditionCode::ge => Condition::Ge,
        ConditionCode::le => Condition::Le,
        ConditionCode::g => Condition::G,
        ConditionCode::None => return None,
    })
}

/// `call`/`jmp` through a register or memory operand.
fn indirect(i: &Instruction, decoder: &Decoder<'_>, is_call: bool) -> Result<ExecClass, Unsupported> {
    if i.op0_kind() == OpKind::Register {
        let reg = Gpr::from_iced(i.op0_register()).ok_or(Unsupported::Undefined)?;
        let emulation = if is_call { Emulation::CallReg { reg } } else { Emulation::JmpReg { reg } };
        return Ok(ExecClass::Emulate { emulation, copyable: !is_call, rip_relative: None });
    }
    if matches!(i.memory_segment(), Register::FS | Register::GS) {
        return Err(Unsupported::SegmentIndirectBranch);
    }
    let mem = mem_operand(i);
    let emulation = if is_call { Emulation::CallMem { mem } } else { Emulation::JmpMem { mem } };
    let rip_relative = i.is_ip_rel_memory_operand().then(|| RipRelative {
        target: Addr(i.ip_rel_memory_address()),
        disp_offset: decoder.get_constant_offsets(i).displacement_offset() as u8,
        scratch: None,
    });
    Ok(ExecClass::Emulate { emulation, copyable: !is_call, rip_relative })
}

fn mem_operand(i: &Instruction) -> MemOperand {
    if i.is_ip_rel_memory_operand() {
        return MemOperand { base: None, index: None, scale: 1, disp: i.ip_rel_memory_address() };
    }
    MemOperand {
        base: Gpr::from_iced(i.memory_base()),
        index: Gpr::from_iced(i.memory_index()),
        scale: i.memory_index_scale() as u8,
        disp: i.memory_displacement64(),
    }
}

/// Instructions that fall through to the next one.
fn sequential(i: &Instruction, decoder: &Decoder<'_>) -> Result<ExecClass, Unsupported> {
    if i.is_privileged() {
        return Err(Unsupported::Privileged);
    }
    if i.mnemonic() == Mnemonic::Mov && i.op0_kind() == OpKind::Register && i.op0_register() == Register::SS {
        return Err(Unsupported::StackSegmentLoad);
    }
    let emulate = |emulation| Ok(ExecClass::Emulate { emulation, copyable: false, rip_relative: None });
    match i.code() {
        Code::Nopw | Code::Nopd | Code::Nopq | Code::Endbr64 => return emulate(Emulation::Nop),
        // Plain 0x90 only: with REX.B it is `xchg r8, rax` and iced decodes it as such.
        Code::Nop_rm16 | Code::Nop_rm32 | Code::Nop_rm64 => return emulate(Emulation::Nop),
        Code::Push_r64 => {
            let reg = Gpr::from_iced(i.op0_register()).ok_or(Unsupported::Undefined)?;
            return emulate(Emulation::Push { value: PushValue::Reg(reg) });
        }
        Code::Pushq_imm8 | Code::Pushq_imm32 => {
            return emulate(Emulation::Push { value: PushValue::Imm(i.immediate(0)) })
        }
        _ => {}
    }
    if !i.is_ip_rel_memory_operand() {
        return Ok(ExecClass::Copy { rip_relative: None });
    }
    let offsets = decoder.get_constant_offsets(i);
    Ok(ExecClass::Copy {
        rip_relative: Some(RipRelative {
            target: Addr(i.ip_rel_memory_address()),
            disp_offset: offsets.displacement_offset() as u8,
            scratch: scratch_register(i),
        }),
    })
}

/// A register the instruction neither reads nor writes, explicitly or implicitly, for the
/// far-slot rewrite. The rewrite moves the stack pointer, so instructions that use it get none.
fn scratch_register(i: &Instruction) -> Option<Gpr> {
    const CANDIDATES: [Gpr; 10] =
        [Gpr::Rax, Gpr::Rcx, Gpr::Rdx, Gpr::Rbx, Gpr::Rsi, Gpr::Rdi, Gpr::R8, Gpr::R9, Gpr::R10, Gpr::R11];
    if i.is_stack_instruction() {
        return None;
    }
    let mut factory = InstructionInfoFactory::new();
    let used: Vec<Gpr> = factory.info(i).used_registers().iter().filter_map(|u| Gpr::from_iced(u.register())).collect();
    if used.contains(&Gpr::Rsp) {
        return None;
    }
    CANDIDATES.into_iter().find(|c| !used.contains(c))
}
