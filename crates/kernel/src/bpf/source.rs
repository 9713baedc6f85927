//! Where the BPF program finds a histogram's value: the fetch of the probe spec turned into a
//! register of the probe's `pt_regs` (or a tracepoint's field), then memory reads, then a
//! width. What it cannot express (strings, the thread's name, errno, too many reads) is
//! refused with the reason, and the probe goes the perf way.

use dprobe_spec::{ArgType, Fetch, Register};

/// Memory reads the program makes at most for one value.
pub const MAX_DEREFS: usize = 4;

/// Where the reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The register at this byte offset of x86-64's `struct pt_regs`.
    Regs(u32),
    /// The tracepoint record's bytes at this offset.
    Record(u32),
    /// A constant.
    Constant(i64),
}

/// How the program reads one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSource {
    /// Where it starts.
    pub origin: Origin,
    /// Then memory is read at the value plus each offset, in turn.
    pub derefs: Vec<i64>,
    /// The memory is the probed process's (uprobes) or the kernel's (kprobes).
    pub user_memory: bool,
    /// The value's width in bits, and whether it is signed.
    pub bits: u32,
    /// See `bits`.
    pub signed: bool,
}

/// The byte offset of register `name` in x86-64's `struct pt_regs`.
fn regs_offset(name: &str) -> Option<u32> {
    const ORDER: [&str; 21] = [
        "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di", "orig_ax",
        "ip", "cs", "flags", "sp", "ss",
    ];
    ORDER.iter().position(|r| *r == name).map(|i| 8 * i as u32)
}

/// The source of `fetch` typed `ty`, at a uprobe (`user_memory`) or kprobe, at an entry or
/// a return; the reason when the program cannot read it.
pub fn value_source(fetch: &Fetch, ty: ArgType, user_memory: bool, is_return: bool) -> Result<ValueSource, String> {
    let (bits, signed) = match ty {
        ArgType::S(b) => (u32::from(b), true),
        ArgType::U(b) | ArgType::X(b) => (u32::from(b), false),
        ArgType::String => return Err("a string is no number to put in a histogram".into()),
    };
    if !(1..=64).contains(&bits) {
        return Err(format!("a width of {bits} bits"));
    }
    let mut derefs = Vec::new();
    let origin = origin(fetch, is_return, &mut derefs)?;
    if derefs.len() > MAX_DEREFS {
        return Err(format!("{} memory reads (the BPF program makes at most {MAX_DEREFS})", derefs.len()));
    }
    Ok(ValueSource { origin, derefs, user_memory, bits, signed })
}

fn register(name: &str) -> Result<Origin, String> {
    regs_offset(name).map(Origin::Regs).ok_or_else(|| format!("the register %{name}"))
}

/// Where `fetch` starts, the memory reads it adds pushed on `derefs` in order.
fn origin(fetch: &Fetch, is_return: bool, derefs: &mut Vec<i64>) -> Result<Origin, String> {
    Ok(match fetch {
        Fetch::Reg(Register(name)) => register(name)?,
        Fetch::Arg(_) if is_return => return Err("the arguments at a return".into()),
        Fetch::Arg(n @ 1..=6) => register(["di", "si", "dx", "cx", "r8", "r9"][*n as usize - 1])?,
        Fetch::Arg(n) => {
            // At a function's entry the return address is at the stack pointer; the 7th
            // argument is just above it.
            derefs.push(8 * (i64::from(*n) - 6));
            register("sp")?
        }
        Fetch::RetVal => register("ax")?,
        Fetch::Stack(n) => {
            derefs.push(8 * i64::from(*n));
            register("sp")?
        }
        Fetch::StackPointer => register("sp")?,
        Fetch::Memory(address) => {
            derefs.push(*address as i64);
            Origin::Constant(0)
        }
        Fetch::FileOffset(_) => return Err("memory at an offset of the probed file (@+OFFSET)".into()),
        Fetch::Immediate(v) => Origin::Constant(*v),
        Fetch::Deref { offset, inner } => {
            let o = origin(inner, is_return, derefs)?;
            derefs.push(*offset);
            o
        }
        Fetch::Comm => return Err("the thread's name is no number".into()),
        Fetch::Errno => return Err("errno".into()),
        Fetch::Var { path, .. } => return Err(format!("the variable `{path}` (not resolved)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_spec::parse_probe;

    fn source(spec: &str) -> Result<ValueSource, String> {
        let p = parse_probe(spec).unwrap();
        let a = &p.args[0];
        value_source(&a.fetch, a.ty, true, p.kind == dprobe_spec::ProbeKind::Return)
    }

    #[test]
    fn registers_arguments_and_memory() {
        let s = source("f x=$arg1:s32").unwrap();
        assert_eq!((s.origin, s.derefs.len(), s.bits, s.signed), (Origin::Regs(112), 0, 32, true));
        assert_eq!(source("f x=$arg6").unwrap().origin, Origin::Regs(64), "r9");
        let s = source("f x=$arg8:u16").unwrap();
        assert_eq!((s.origin, s.derefs, s.bits, s.signed), (Origin::Regs(152), vec![16], 16, false));
        assert_eq!(source("f%return r=$retval").unwrap().origin, Origin::Regs(80), "ax");
        assert_eq!(source("f x=%r15").unwrap().origin, Origin::Regs(0));
        let s = source("f x=+8(+16($arg2)):u64").unwrap();
        assert_eq!((s.origin, s.derefs), (Origin::Regs(104), vec![16, 8]), "inner read first");
        let s = source("f x=@0x1000:u32").unwrap();
        assert_eq!((s.origin, s.derefs), (Origin::Constant(0), vec![0x1000]));
        assert_eq!(source("f x=\\7").unwrap().origin, Origin::Constant(7));
    }

    #[test]
    fn what_the_program_cannot_read_is_refused() {
        assert!(source("f s=+0($arg1):string").unwrap_err().contains("string"));
        assert!(source("f c=$comm").is_err());
        assert!(source("f%return a=$arg1").unwrap_err().contains("at a return"));
        assert!(source("f x=+0(+0(+0(+0(+0($arg1))))):u8").unwrap_err().contains("5 memory reads"));
    }
}
