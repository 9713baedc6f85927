//! Every way out of a function, found from its whole code: the sites where a return probe can
//! watch the function leave without touching its stack.
//!
//! A function leaves through a `ret`, or through a jump to code outside it: a tail call by
//! `jmp`/`jcc` to another function, or `jmp *GOT` through a PLT-less call. Its *parts* are its
//! body and the cold parts the compiler split off (`foo.cold`): a jump between them is not an
//! exit. An indirect jump is allowed only as a recognised jump table whose every entry lands in
//! the function; any other one could leave to anywhere, and the function's exits are then not
//! all known (the engine falls back to hijacking the return address).
//!
//! Only the bytes of the function are seen: another function jumping into the middle of this
//! one is not detected here (compilers do not emit it; hand-written assembly that does is the
//! reason a resolver's "entered mid-body" list may refuse a function before this runs).

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register};

use crate::InsnText;
use crate::{Addr, Memory};

/// One contiguous piece of a function's original code (never an armed probe's `int3`).
#[derive(Debug, Clone, Copy)]
pub struct CodePart<'a> {
    /// Its first instruction.
    pub start: Addr,
    /// Its bytes.
    pub code: &'a [u8],
}

impl CodePart<'_> {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.start.0 && addr - self.start.0 < self.code.len() as u64
    }
}

/// How a function leaves at an exit site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// `ret` or `ret imm16`: the return value is in `rax`.
    Ret,
    /// `jmp rel` to code outside the function: a tail call; the callee's return is its own.
    TailJump {
        /// Where it goes.
        target: Addr,
    },
    /// `jcc rel` (or `loop`/`jrcxz`) to outside the function: an exit only when taken.
    TailBranch {
        /// Where it goes when taken.
        target: Addr,
    },
    /// `jmp *slot(%rip)`: a tail call through a pointer (a GOT entry).
    TailJumpThrough {
        /// Where the target is read from.
        slot: Addr,
    },
}

impl ExitKind {
    /// Whether the function has returned when the instruction ran (a `ret`), as opposed to
    /// having handed its caller's return over to another function.
    pub fn is_ret(self) -> bool {
        self == ExitKind::Ret
    }
}

/// An instruction through which the function leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitSite {
    /// The instruction.
    pub addr: Addr,
    /// How it leaves.
    pub kind: ExitKind,
}

/// Every exit of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exits {
    /// Its exit sites, in address order.
    pub sites: Vec<ExitSite>,
    /// Jump tables recognised and proven to stay inside the function.
    pub jump_tables: usize,
}

impl Exits {
    /// Whether `addr` is one of the exit sites, and how it leaves there.
    pub fn at(&self, addr: Addr) -> Option<ExitKind> {
        self.sites.iter().find(|s| s.addr == addr).map(|s| s.kind)
    }
}

/// Why a function's exits are not all known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExitsUnknown {
    /// No symbol gives the function's size.
    #[error("the function's bounds are unknown")]
    UnknownBounds,
    /// Bytes of the function do not decode.
    #[error("the function does not decode as a whole: invalid bytes at +{offset:#x}")]
    Undecodable {
        /// Where.
        at: Addr,
        /// From the function's start (negative in a cold part placed before it).
        offset: i64,
    },
    /// An `int3` in the function: another debugger's breakpoint hides an instruction.
    #[error("an int3 at +{offset:#x} hides an instruction")]
    ForeignBreakpoint {
        /// Where.
        at: Addr,
        /// From the function's start.
        offset: i64,
    },
    /// An indirect jump that is not a jump table proven to stay inside the function.
    #[error("`{text}` at +{offset:#x} is an indirect jump whose targets cannot be bounded")]
    IndirectJump {
        /// Where.
        at: Addr,
        /// From the function's start.
        offset: i64,
        /// The instruction.
        text: InsnText,
    },
    /// The last instruction of a part goes on past its end (into whatever follows).
    #[error("`{text}` at +{offset:#x} is the last instruction and execution falls off the function's end")]
    FallsOffEnd {
        /// Where.
        at: Addr,
        /// From the function's start.
        offset: i64,
        /// The instruction.
        text: InsnText,
    },
}

/// The most entries a jump table may have; a bound above it is not believed.
const MAX_TABLE: u64 = 4096;
/// How far back from an indirect jump its table's setup is looked for.
const LOOK_BACK: usize = 16;

/// Find every exit of the function whose body is `parts[0]` and whose cold parts are the rest.
/// `data` is the memory jump tables are read from (the process's, or the file's laid out at
/// run-time addresses).
pub fn find_exits(parts: &[CodePart<'_>], data: &mut dyn Memory) -> Result<Exits, ExitsUnknown> {
    let Some(body) = parts.first().filter(|p| !p.code.is_empty()) else {
        return Err(ExitsUnknown::UnknownBounds);
    };
    let offset = |at: Addr| at.0.wrapping_sub(body.start.0) as i64;
    let inside = |t: u64| parts.iter().any(|p| p.contains(t));
    let mut sites = Vec::new();
    let mut jump_tables = 0;
    for part in parts {
        let insns = decode(part).map_err(|at| ExitsUnknown::Undecodable { at, offset: offset(at) })?;
        let text = |i: &Instruction| InsnText::of(&part.code[(i.ip() - part.start.0) as usize..], Addr(i.ip()));
        for (k, i) in insns.iter().enumerate() {
            let at = Addr(i.ip());
            let target = i.near_branch_target();
            let kind = match i.flow_control() {
                FlowControl::Return => Some(ExitKind::Ret),
                FlowControl::UnconditionalBranch if !inside(target) => {
                    Some(ExitKind::TailJump { target: Addr(target) })
                }
                FlowControl::ConditionalBranch if !inside(target) => {
                    Some(ExitKind::TailBranch { target: Addr(target) })
                }
                FlowControl::IndirectBranch if i.op0_kind() == OpKind::Memory && i.is_ip_rel_memory_operand() => {
                    Some(ExitKind::TailJumpThrough { slot: Addr(i.ip_rel_memory_address()) })
                }
                FlowControl::IndirectBranch if installs_another_frame(&insns, k) => None,
                FlowControl::IndirectBranch => {
                    let targets = jump_table(&insns[..=k], data).ok_or_else(|| ExitsUnknown::IndirectJump {
                        at,
                        offset: offset(at),
                        text: text(i),
                    })?;
                    if !targets.iter().all(|&t| inside(t)) {
                        return Err(ExitsUnknown::IndirectJump { at, offset: offset(at), text: text(i) });
                    }
                    jump_tables += 1;
                    None
                }
                FlowControl::Interrupt if i.mnemonic() == Mnemonic::Int3 => {
                    return Err(ExitsUnknown::ForeignBreakpoint { at, offset: offset(at) });
                }
                _ => None,
            };
            if let Some(kind) = kind {
                sites.push(ExitSite { addr: at, kind });
            }
        }
        if let Some(last) = insns.iter().rev().find(|i| !is_padding(i)) {
            if falls_through(last) {
                let at = Addr(last.ip());
                return Err(ExitsUnknown::FallsOffEnd { at, offset: offset(at), text: text(last) });
            }
        }
    }
    sites.sort_by_key(|s| s.addr);
    Ok(Exits { sites, jump_tables })
}

/// Whether the indirect jump ending `insns` is `mov X,%rsp; pop %rR; jmp *%rR`: the end of
/// a `__builtin_eh_return` (libgcc's unwinder installing the context of the frame that catches
/// an exception: `_Unwind_RaiseException`, `_Unwind_Resume`), which loads another frame's
/// stack pointer and jumps to the address stored there. The function leaves for good, to a
/// frame above, as `longjmp` does: no return to watch, and its call is dropped as abandoned by
/// the next entry or exit above it. (Were the jump found unbounded instead, the function's
/// return address would be replaced, and the unwinder, which starts from its own frame's
/// return address, would find dprobe's trampoline there and end every throw in `terminate`.)
///
/// `insns` is the whole part, `k` the jump's index. No branch of the part may land on the
/// `pop` or the jump: reached from elsewhere, they could be a plain return.
fn installs_another_frame(insns: &[Instruction], k: usize) -> bool {
    let [.., load, pop, jmp] = &insns[..=k] else { return false };
    let landed_on = |at: &Instruction| insns.iter().any(|i| i.near_branch_target() == at.ip());
    !landed_on(pop)
        && !landed_on(jmp)
        && jmp.op0_kind() == OpKind::Register
        && pop.mnemonic() == Mnemonic::Pop
        && pop.op0_kind() == OpKind::Register
        && pop.op0_register() == jmp.op0_register()
        && load.mnemonic() == Mnemonic::Mov
        && load.op0_kind() == OpKind::Register
        && load.op0_register() == Register::RSP
}

/// Decode a whole part; the address of the first invalid instruction if it does not decode.
fn decode(part: &CodePart<'_>) -> Result<Vec<Instruction>, Addr> {
    let mut decoder = Decoder::with_ip(64, part.code, part.start.0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let at = Addr(decoder.ip());
        let i = decoder.decode();
        if i.is_invalid() {
            return Err(at);
        }
        out.push(i);
    }
    Ok(out)
}

/// Alignment padding a symbol's size may include after its last real instruction.
fn is_padding(i: &Instruction) -> bool {
    matches!(i.mnemonic(), Mnemonic::Nop)
}

/// Whether the part's last instruction lets execution go on past it. A call there is taken
/// as a call that does not return (`__stack_chk_fail`, `abort`): compilers end a function
/// with one only then.
fn falls_through(last: &Instruction) -> bool {
    match last.flow_control() {
        FlowControl::Next | FlowControl::ConditionalBranch | FlowControl::XbeginXabortXend => true,
        FlowControl::Interrupt => last.mnemonic() != Mnemonic::Int3 && last.code() != Code::Ud2,
        _ => false,
    }
}

/// The targets of the jump table that the indirect jump ending `insns` dispatches through, if
/// it is one of the compilers' patterns with a provable bound:
///
/// * position-independent (gcc, clang): `lea T(%rip),%rT; movslq (%rT,%rI,4),%rX;
///   add %rB,%rX; jmp *%rX`, targets `B + entry` (B is T for a `switch`, another `lea` for a
///   computed `goto`);
/// * absolute: `jmp *T(,%rI,8)`, targets the table's 64-bit entries.
///
/// The bound is a `cmp $N,%rI` followed by `ja` (N + 1 entries) or `jae` (N), or an
/// `and $2^k-1,%rI`, on the index register before the table is read.
fn jump_table(insns: &[Instruction], data: &mut dyn Memory) -> Option<Vec<u64>> {
    let (jmp, before) = insns.split_last()?;
    let window = &before[before.len().saturating_sub(LOOK_BACK)..];
    if jmp.op0_kind() == OpKind::Memory {
        // jmp *T(,%rI,8)
        if jmp.memory_base() != Register::None || jmp.memory_index_scale() != 8 {
            return None;
        }
        let index = jmp.memory_index().full_register();
        let count = bound(window, index)?;
        let table = jmp.memory_displacement64();
        return (0..count).map(|k| data.read_u64(Addr(table + 8 * k)).ok()).collect();
    }
    let x = jmp.op0_register().full_register();
    let (add_at, add) = last_write(window, window.len(), x)?;
    if add.mnemonic() != Mnemonic::Add || add.op1_kind() != OpKind::Register {
        return None;
    }
    let b = add.op1_register().full_register();
    let (load_at, load) = last_write(window, add_at, x)?;
    if load.code() != Code::Movsxd_r64_rm32 || load.op1_kind() != OpKind::Memory || load.memory_index_scale() != 4 {
        return None;
    }
    let (t, index) = (load.memory_base().full_register(), load.memory_index().full_register());
    let table = rip_lea(window, load_at, t)?;
    let base = if b == t { table } else { rip_lea(window, add_at, b)? };
    let count = bound(&window[..load_at], index)?;
    (0..count)
        .map(|k| {
            let mut entry = [0u8; 4];
            data.read(Addr(table + 4 * k), &mut entry).ok()?;
            Some(base.wrapping_add(i32::from_le_bytes(entry) as i64 as u64))
        })
        .collect()
}

/// The last instruction before `insns[end]` that writes register `reg` (by its 64-bit name).
fn last_write(insns: &[Instruction], end: usize, reg: Register) -> Option<(usize, &Instruction)> {
    insns[..end].iter().enumerate().rev().find(|(_, i)| writes(i, reg))
}

/// Whether `i` changes the value of `reg` (64-bit name). A 32-bit move of a register onto
/// itself (`mov %edi,%edi`) only clears the upper half, which a 32-bit bounds check already
/// implies is clear, so it does not count.
fn writes(i: &Instruction, reg: Register) -> bool {
    let self_move =
        i.mnemonic() == Mnemonic::Mov && i.op1_kind() == OpKind::Register && i.op1_register() == i.op0_register();
    i.op_count() > 0
        && i.op0_kind() == OpKind::Register
        && i.op0_register().full_register() == reg
        && !matches!(i.mnemonic(), Mnemonic::Cmp | Mnemonic::Test)
        && !self_move
}

/// The address a `lea disp(%rip),%reg` loads into `reg`, if that is the last write to it
/// before `insns[end]`.
fn rip_lea(insns: &[Instruction], end: usize, reg: Register) -> Option<u64> {
    let (_, lea) = last_write(insns, end, reg)?;
    (lea.mnemonic() == Mnemonic::Lea && lea.is_ip_rel_memory_operand()).then(|| lea.ip_rel_memory_address())
}

/// How many entries the index in `index` (64-bit name) can select, from the bounds check on
/// it in `insns` (which end right before the table is read): a `cmp`/`ja` on the index after
/// its last write, or on a register it was copied from while that still held the same value,
/// or an `and` mask as its last write.
fn bound(insns: &[Instruction], index: Register) -> Option<u64> {
    // `reg` holds the index's value from its last write before `end` up to `end`.
    let (mut reg, mut end) = (index, insns.len());
    for _ in 0..4 {
        if let Some(n) = checked(&insns[..end], reg) {
            return Some(n);
        }
        let (at, w) = last_write(insns, end, reg)?;
        if w.mnemonic() == Mnemonic::And
            && matches!(
                w.op1_kind(),
                OpKind::Immediate8to32 | OpKind::Immediate8to64 | OpKind::Immediate32 | OpKind::Immediate32to64
            )
        {
            let mask = w.immediate(1);
            return (mask < MAX_TABLE && (mask + 1).is_power_of_two()).then_some(mask + 1);
        }
        let copy =
            matches!(w.mnemonic(), Mnemonic::Mov) && w.op1_kind() == OpKind::Register && w.op0_register().size() >= 4;
        if !copy {
            return None;
        }
        // The source holds the same value until its next write after the copy.
        let from = w.op1_register().full_register();
        end = insns[at + 1..].iter().position(|i| writes(i, from)).map_or(insns.len(), |p| at + 1 + p);
        reg = from;
    }
    None
}

/// The number of entries a `cmp $N,%reg; ja/jae` in `insns` allows, when `reg` is not written
/// after it.
fn checked(insns: &[Instruction], reg: Register) -> Option<u64> {
    for (k, i) in insns.iter().enumerate().rev() {
        if writes(i, reg) {
            return None;
        }
        let is_cmp = i.mnemonic() == Mnemonic::Cmp
            && i.op0_kind() == OpKind::Register
            && i.op0_register().full_register() == reg
            && i.op0_register().size() >= 4
            && matches!(
                i.op1_kind(),
                OpKind::Immediate8to32
                    | OpKind::Immediate8to64
                    | OpKind::Immediate32
                    | OpKind::Immediate8
                    | OpKind::Immediate32to64
            );
        if !is_cmp {
            continue;
        }
        let n = i.immediate(1);
        let count = match insns.get(k + 1).map(Instruction::code) {
            Some(Code::Ja_rel8_64 | Code::Ja_rel32_64) => n.checked_add(1)?,
            Some(Code::Jae_rel8_64 | Code::Jae_rel32_64) => n,
            _ => return None,
        };
        return (count > 0 && count <= MAX_TABLE).then_some(count);
    }
    None
}
