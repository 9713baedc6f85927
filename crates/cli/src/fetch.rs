//! Evaluating fetch arguments (`$arg2`, `+0($arg2):string`, `%ax`, ...) against a stopped
//! thread's registers and memory, with the kernel's meaning for each.

use dprobe_arch::{Addr, Memory, Regs};
use dprobe_spec::{ArgType, Fetch, NamedArg, Value};

/// Longest string fetched, as the kernel's `MAX_STRING_SIZE`.
pub const MAX_STRING: usize = 256;

/// A fetched value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// An integer, with its type (already truncated to the type's width).
    Int(u64, ArgType),
    /// A string (without its NUL; cut at [`MAX_STRING`]).
    Str(Vec<u8>),
    /// Reading memory at this address failed (the kernel prints `(fault)`).
    Fault(u64),
}

impl Fetched {
    /// The value as a filter sees it: integers signed or not by their type.
    pub fn filter_value(&self) -> Option<Value<'_>> {
        match self {
            Fetched::Int(v, ty) => Some(Value::Int(signed(*v, *ty))),
            Fetched::Str(s) => Some(Value::Str(s)),
            Fetched::Fault(_) => None,
        }
    }

    /// As a signed number when the type is signed, for histograms and errno checks.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Fetched::Int(v, ty) => Some(signed(*v, *ty)),
            _ => None,
        }
    }
}

fn signed(v: u64, ty: ArgType) -> i64 {
    match ty {
        ArgType::S(bits) if bits < 64 => ((v << (64 - bits)) as i64) >> (64 - bits),
        _ => v as i64,
    }
}

/// What a fetch can look at.
pub struct FetchContext<'a> {
    /// The registers now.
    pub regs: &'a Regs,
    /// At a return: the registers at the function's entry (for `$argN`).
    pub entry_regs: Option<&'a Regs>,
    /// The process's memory.
    pub memory: &'a mut dyn Memory,
    /// The thread's name.
    pub comm: &'a [u8],
    /// The address of the thread's `errno`, if it can be found.
    pub errno_addr: Option<u64>,
}

/// Fetch one argument.
pub fn fetch(arg: &NamedArg, cx: &mut FetchContext<'_>) -> Fetched {
    let result = match arg.ty {
        ArgType::String => match &arg.fetch {
            Fetch::Comm => Ok(Fetched::Str(cx.comm.to_vec())),
            f => string_address(f, cx).and_then(|addr| read_string(cx.memory, addr).map(Fetched::Str)),
        },
        ArgType::S(bits) | ArgType::U(bits) | ArgType::X(bits) => value(&arg.fetch, cx, usize::from(bits / 8))
            .map(|v| Fetched::Int(if bits < 64 { v & ((1u64 << bits) - 1) } else { v }, arg.ty)),
    };
    result.unwrap_or_else(Fetched::Fault)
}

/// The value of `f`; memory is read `size` bytes wide at the outermost level. `Err` is the
/// address that could not be read.
fn value(f: &Fetch, cx: &mut FetchContext<'_>, size: usize) -> Result<u64, u64> {
    let sp = cx.regs.rsp;
    match f {
        Fetch::Reg(r) => Ok(register(cx.regs, r.0)),
        Fetch::Arg(n) => {
            let regs = cx.entry_regs.unwrap_or(cx.regs);
            match n {
                1 => Ok(regs.rdi),
                2 => Ok(regs.rsi),
                3 => Ok(regs.rdx),
                4 => Ok(regs.rcx),
                5 => Ok(regs.r8),
                6 => Ok(regs.r9),
                // Past the sixth, on the stack above the return address.
                n => read(cx.memory, regs.rsp + 8 * u64::from(n - 6), 8),
            }
        }
        Fetch::RetVal => Ok(cx.regs.rax),
        Fetch::Comm => Ok(0),
        Fetch::Errno => match cx.errno_addr {
            Some(a) => read(cx.memory, a, 4),
            None => Err(0),
        },
        Fetch::Stack(n) => read(cx.memory, sp + 8 * u64::from(*n), 8),
        Fetch::StackPointer => Ok(sp),
        Fetch::Memory(a) => read(cx.memory, *a, size),
        Fetch::Immediate(i) => Ok(*i as u64),
        Fetch::Deref { offset, inner } => {
            let base = value(inner, cx, 8)?;
            read(cx.memory, base.wrapping_add(*offset as u64), size)
        }
    }
}

/// Where a `:string` argument's characters are: as in the kernel, the outermost dereference
/// (`+0($arg2)`) or `@ADDR` names the string's address rather than a word to load.
fn string_address(f: &Fetch, cx: &mut FetchContext<'_>) -> Result<u64, u64> {
    match f {
        Fetch::Deref { offset, inner } => Ok(value(inner, cx, 8)?.wrapping_add(*offset as u64)),
        Fetch::Memory(a) => Ok(*a),
        f => value(f, cx, 8),
    }
}

fn register(r: &Regs, name: &str) -> u64 {
    match name {
        "ax" | "orig_ax" => r.rax,
        "bx" => r.rbx,
        "cx" => r.rcx,
        "dx" => r.rdx,
        "si" => r.rsi,
        "di" => r.rdi,
        "bp" => r.rbp,
        "sp" => r.rsp,
        "ip" => r.rip,
        "flags" => r.rflags,
        "r8" => r.r8,
        "r9" => r.r9,
        "r10" => r.r10,
        "r11" => r.r11,
        "r12" => r.r12,
        "r13" => r.r13,
        "r14" => r.r14,
        "r15" => r.r15,
        _ => 0,
    }
}

fn read(memory: &mut dyn Memory, addr: u64, size: usize) -> Result<u64, u64> {
    let mut buf = [0u8; 8];
    let size = size.clamp(1, 8);
    memory.read(Addr(addr), &mut buf[..size]).map_err(|_| addr)?;
    Ok(u64::from_le_bytes(buf))
}

/// A NUL-terminated string at `addr`, read a page piece at a time so that a string ending
/// just before unmapped memory is still read.
pub fn read_string(memory: &mut dyn Memory, addr: u64) -> Result<Vec<u8>, u64> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < MAX_STRING {
        let to_page_end = (4096 - (at % 4096)) as usize;
        let n = to_page_end.min(64).min(MAX_STRING - out.len());
        let mut chunk = [0u8; 64];
        memory.read(Addr(at), &mut chunk[..n]).map_err(|_| at)?;
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_arch::MemoryFault;
    use dprobe_spec::parse_probe;

    /// Memory from 0x1000 to 0x3000; the rest faults.
    struct Fake(Vec<u8>);
    impl Memory for Fake {
        fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
            let start = addr.0.checked_sub(0x1000).filter(|s| s + buf.len() as u64 <= self.0.len() as u64);
            let s = start.ok_or(MemoryFault { addr, len: buf.len(), write: false })? as usize;
            buf.copy_from_slice(&self.0[s..s + buf.len()]);
            Ok(())
        }
        fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
            Err(MemoryFault { addr, len: data.len(), write: true })
        }
    }

    fn fetch_all(spec: &str, regs: &Regs, mem: &mut Fake) -> Vec<Fetched> {
        let p = parse_probe(spec).unwrap();
        let mut cx = FetchContext { regs, entry_regs: None, memory: mem, comm: b"cat", errno_addr: Some(0x1100) };
        p.args.iter().map(|a| fetch(a, &mut cx)).collect()
    }

    #[test]
    fn each_fetch_kind_reads_what_the_kernel_would() {
        let mut bytes = vec![0u8; 0x2000];
        bytes[0x10..0x1b].copy_from_slice(b"/etc/hosts\0");
        bytes[0x100..0x104].copy_from_slice(&(-2i32).to_le_bytes());
        bytes[0x200..0x208].copy_from_slice(&0x1010u64.to_le_bytes()); // a pointer to the string
        bytes[0x208..0x210].copy_from_slice(&7u64.to_le_bytes()); // stack: 7th argument
        bytes[0x1ffc..0x2000].copy_from_slice(b"end\0"); // a string ending at the mapping's end
        let regs = Regs { rdi: 5, rsi: 0x1010, rdx: 0xffff_ff01, rsp: 0x1200, rax: (-2i64) as u64, ..Regs::default() };
        let mut mem = Fake(bytes);
        let got = fetch_all(
            "f a=$arg1:u32 p=+0($arg2):string lo=$arg3:x8 neg=$arg3:s8 e=$errno s=+0(+0(%sp)):string \
             seven=$arg7:u64 c=$comm bad=+0(\\16):u8 tail=@0x2ffc:u32 last=\\0x2ffc:string",
            &regs,
            &mut mem,
        );
        let expected = vec![
            Fetched::Int(5, ArgType::U(32)),
            Fetched::Str(b"/etc/hosts".to_vec()),
            Fetched::Int(1, ArgType::X(8)),
            Fetched::Int(1, ArgType::S(8)),
            Fetched::Int(0xffff_fffe, ArgType::S(32)),
            Fetched::Str(b"/etc/hosts".to_vec()),
            Fetched::Int(7, ArgType::U(64)),
            Fetched::Str(b"cat".to_vec()),
            Fetched::Fault(16),
            Fetched::Int(u32::from_le_bytes(*b"end\0") as u64, ArgType::U(32)),
            Fetched::Str(b"end".to_vec()),
        ];
        assert_eq!(got, expected);
        assert_eq!(got[4].as_i64(), Some(-2), "errno is signed 32-bit");
    }

    #[test]
    fn strings_stop_at_the_limit() {
        let mut mem = Fake(vec![b'a'; 0x2000]);
        let got = fetch_all("f s=@0x1000:string", &Regs::default(), &mut mem);
        assert_eq!(got, vec![Fetched::Str(vec![b'a'; MAX_STRING])]);
    }
}
