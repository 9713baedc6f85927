//! The fetch plan: what a probe reads at each hit (`$arg2`, `+0($arg2):string`, `%ax`,
//! `$errno`, ...) with the kernel's meaning for each, and the filter its values must pass.
//!
//! A plan is compiled once from a [`ProbeSpec`] and evaluated at every hit through the
//! [`Memory`] and [`Regs`] of the thread that hit: the tracer's view of a stopped thread today,
//! the thread's own view inside a traced process tomorrow. Evaluation writes into [`Values`]
//! made once for the plan and allocates nothing; memory that cannot be read gives a fault
//! value (`(fault)`), never an error.
//!
//! ```
//! use dprobe_arch::{Addr, Memory, MemoryFault, Regs};
//! use dprobe_core::fetch::{FetchContext, FetchPlan, Fetched};
//!
//! struct NoMemory;
//! impl Memory for NoMemory {
//!     fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
//!         Err(MemoryFault { addr, len: buf.len(), write: false })
//!     }
//!     fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
//!         Err(MemoryFault { addr, len: data.len(), write: true })
//!     }
//! }
//!
//! let spec = dprobe_spec::parse_probe("libc:read fd=$arg1:s32 buf=+0($arg2):string").unwrap();
//! let plan = FetchPlan::compile(&spec.args, None);
//! let mut values = plan.values();
//! let regs = Regs { rdi: 3, rsi: 0x1000, ..Regs::default() };
//! let cx = FetchContext { regs: &regs, entry_regs: None, comm: b"cat", errno_addr: None, file_base: None };
//! plan.evaluate(&cx, &mut NoMemory, &mut values);
//! assert_eq!(values.get(1), Some(Fetched::Fault(0x1000)));
//! ```
//!
//! [`ProbeSpec`]: dprobe_spec::ProbeSpec

mod errno;
mod filter;
mod values;

use dprobe_arch::{Addr, Memory, Regs};
use dprobe_spec::{ArgType, Fetch, Filter, NamedArg};

pub use errno::{errno_tls_offset, ErrnoError};
pub use values::{Fetched, Values, MAX_STRING};

use filter::Test;

/// What evaluation can look at besides memory.
pub struct FetchContext<'a> {
    /// The registers now.
    pub regs: &'a Regs,
    /// At a return: the registers at the function's entry (for `$argN`).
    pub entry_regs: Option<&'a Regs>,
    /// The thread's name (`$comm`).
    pub comm: &'a [u8],
    /// The address of the thread's `errno`, if it can be found.
    pub errno_addr: Option<u64>,
    /// Where the probed file's offset 0 is, reckoned from the probe's site (its run-time
    /// address minus its offset in its file), for `@+OFFSET`; `None`: not known.
    pub file_base: Option<u64>,
}

/// A register as the plan reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Register {
    Gpr(dprobe_arch::Gpr),
    Ip,
    Flags,
}

/// A fetch with its register names resolved.
type Op = Fetch<Register>;

fn compile(f: &Fetch) -> Op {
    f.map_registers(&|r| register(r.0))
}

fn register(name: &str) -> Register {
    use dprobe_arch::Gpr::*;
    Register::Gpr(match name {
        "ax" | "orig_ax" => Rax,
        "bx" => Rbx,
        "cx" => Rcx,
        "dx" => Rdx,
        "si" => Rsi,
        "di" => Rdi,
        "bp" => Rbp,
        "sp" => Rsp,
        "r8" => R8,
        "r9" => R9,
        "r10" => R10,
        "r11" => R11,
        "r12" => R12,
        "r13" => R13,
        "r14" => R14,
        "r15" => R15,
        "ip" => return Register::Ip,
        // The spec's parser knows no other name; `flags` is what is left.
        _ => return Register::Flags,
    })
}

/// A probe's compiled fetches and filter.
#[derive(Debug, Clone)]
pub struct FetchPlan {
    args: Vec<NamedArg>,
    ops: Vec<Op>,
    filter: Option<Test>,
}

impl FetchPlan {
    /// Compile `args` (a spec's fetch arguments) and, if given, the filter its values must
    /// pass (fields it does not fetch never match).
    pub fn compile(args: &[NamedArg], filter: Option<&Filter>) -> FetchPlan {
        let names: Vec<&str> = args.iter().map(|a| a.name.as_str()).collect();
        FetchPlan {
            ops: args.iter().map(|a| compile(&a.fetch)).collect(),
            filter: filter.map(|f| Test::compile(f, &names)),
            args: args.to_vec(),
        }
    }

    /// The arguments, as written.
    pub fn args(&self) -> &[NamedArg] {
        &self.args
    }

    /// Storage for this plan's values (made once, reused at every hit).
    pub fn values(&self) -> Values {
        Values::with_capacity(self.args.len())
    }

    /// Whether a filter is set.
    pub fn has_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// Whether `values` pass the filter (always, without one).
    pub fn passes(&self, values: &Values) -> bool {
        self.filter.as_ref().is_none_or(|t| t.passes(values))
    }

    /// Evaluate every argument into `out` (cleared first). Allocates nothing; an unreadable
    /// address becomes [`Fetched::Fault`].
    pub fn evaluate(&self, cx: &FetchContext<'_>, memory: &mut dyn Memory, out: &mut Values) {
        out.clear();
        for (arg, op) in self.args.iter().zip(&self.ops) {
            match arg.ty {
                ArgType::String => match op {
                    Op::Comm => out.push_str(cx.comm),
                    op => match string_address(op, cx, memory) {
                        Ok(addr) => read_string(memory, addr, out),
                        Err(addr) => out.push_fault(addr),
                    },
                },
                ArgType::S(bits) | ArgType::U(bits) | ArgType::X(bits) => {
                    match value(op, cx, memory, usize::from(bits / 8)) {
                        Ok(v) => out.push_int(v, arg.ty),
                        Err(addr) => out.push_fault(addr),
                    }
                }
            }
        }
    }
}

/// The value of `op`; memory is read `size` bytes wide at the outermost level. `Err` is the
/// address that could not be read.
fn value(op: &Op, cx: &FetchContext<'_>, memory: &mut dyn Memory, size: usize) -> Result<u64, u64> {
    let sp = cx.regs.rsp;
    match op {
        Op::Reg(Register::Gpr(g)) => Ok(cx.regs.get(*g)),
        Op::Reg(Register::Ip) => Ok(cx.regs.rip),
        Op::Reg(Register::Flags) => Ok(cx.regs.rflags),
        Op::Arg(n) => {
            let regs = cx.entry_regs.unwrap_or(cx.regs);
            match regs.int_arg((*n as usize).wrapping_sub(1)) {
                Some(v) => Ok(v),
                // Past the sixth, on the stack above the return address.
                None => read(memory, regs.rsp.wrapping_add(8 * u64::from(n.saturating_sub(6))), 8),
            }
        }
        Op::RetVal => Ok(cx.regs.rax),
        Op::Comm => Ok(0),
        Op::Errno => match cx.errno_addr {
            Some(a) => read(memory, a, 4),
            None => Err(0),
        },
        Op::Stack(n) => read(memory, sp.wrapping_add(8 * u64::from(*n)), 8),
        Op::StackPointer => Ok(sp),
        Op::Memory(a) => read(memory, *a, size),
        Op::FileOffset(o) => read(memory, in_file(cx, *o)?, size),
        Op::Immediate(i) => Ok(*i as u64),
        // A variable by name the tracer did not turn into fetches (it always does before
        // placing): reads as a fault.
        Op::Var { .. } => Err(0),
        Op::Deref { offset, inner } => {
            let base = value(inner, cx, memory, 8)?;
            read(memory, base.wrapping_add(*offset as u64), size)
        }
    }
}

/// Where a `:string` argument's characters are: as in the kernel, the outermost dereference
/// (`+0($arg2)`) or `@ADDR` names the string's address rather than a word to load.
fn string_address(op: &Op, cx: &FetchContext<'_>, memory: &mut dyn Memory) -> Result<u64, u64> {
    match op {
        Op::Deref { offset, inner } => Ok(value(inner, cx, memory, 8)?.wrapping_add(*offset as u64)),
        Op::Memory(a) => Ok(*a),
        Op::FileOffset(o) => in_file(cx, *o),
        op => value(op, cx, memory, 8),
    }
}

/// The run-time address of offset `o` of the probed file (`Err(o)` when its place is not known).
fn in_file(cx: &FetchContext<'_>, o: u64) -> Result<u64, u64> {
    cx.file_base.map(|b| b.wrapping_add(o)).ok_or(o)
}

fn read(memory: &mut dyn Memory, addr: u64, size: usize) -> Result<u64, u64> {
    let mut buf = [0u8; 8];
    let size = size.clamp(1, 8);
    memory.read(Addr(addr), &mut buf[..size]).map_err(|_| addr)?;
    Ok(u64::from_le_bytes(buf))
}

/// A NUL-terminated string at `addr` into `out`, read in pieces that never cross a page, so
/// that a string ending just before unmapped memory is still read.
fn read_string(memory: &mut dyn Memory, addr: u64, out: &mut Values) {
    let index = out.begin_str();
    let mut at = addr;
    let mut room = MAX_STRING;
    while room > 0 {
        let to_page_end = (4096 - (at % 4096)) as usize;
        let n = to_page_end.min(64).min(room);
        let mut chunk = [0u8; 64];
        if memory.read(Addr(at), &mut chunk[..n]).is_err() {
            out.fault_last(index, at);
            return;
        }
        let end = chunk[..n].iter().position(|&b| b == 0);
        room = out.extend_str(index, &chunk[..end.unwrap_or(n)]);
        if end.is_some() {
            return;
        }
        at = at.wrapping_add(n as u64);
    }
    // Full without a NUL: cut, unless the NUL comes right after.
    let mut next = [0u8; 1];
    if memory.read(Addr(at), &mut next).is_err() || next[0] != 0 {
        out.cut_str(index);
    }
}

#[cfg(test)]
mod tests;
