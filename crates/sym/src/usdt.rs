//! Static probes (USDT) of an ELF file: the `stapsdt` notes that `<sys/sdt.h>` leaves in
//! `.note.stapsdt`, one per probe site, each with its address, its semaphore and the
//! assembler operands of its arguments (`-4@%edi 8@-16(%rbp) -1@$5`), decoded into dprobe's
//! fetch arguments with their sizes and signs.

use dprobe_spec::{ArgType, Fetch, Register};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{elf, Endianness};

/// The note type of a `stapsdt` note.
const NT_STAPSDT: u32 = 3;

/// One argument of a static probe, as the note gives it and as dprobe fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtArg {
    /// The note's text (`-4@%edi`).
    pub text: String,
    /// How to fetch it and its type; why not, when the operand is not one dprobe can read.
    pub fetch: Result<(Fetch, ArgType), String>,
}

/// One static probe site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtProbe {
    /// Its provider (`app`).
    pub provider: String,
    /// Its name (`req`).
    pub name: String,
    /// The address of its `nop`, at link time (moved as `.stapsdt.base` was, by prelink).
    pub pc: u64,
    /// Where the `nop` is in the file.
    pub file_offset: u64,
    /// Its semaphore, if it has one: the counter the program tests before preparing the
    /// probe's arguments.
    pub semaphore: Option<Semaphore>,
    /// Its arguments, in order (`$arg1` is the first).
    pub args: Vec<UsdtArg>,
}

impl UsdtProbe {
    /// `provider:name`.
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.provider, self.name)
    }

    /// The arguments as the note writes them (`-4@%edi 8@%rsi`).
    pub fn arg_text(&self) -> String {
        self.args.iter().map(|a| a.text.as_str()).collect::<Vec<_>>().join(" ")
    }
}

/// A probe's semaphore: a 16-bit counter in the program's data, non-zero while something
/// probes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semaphore {
    /// The object that holds it (its canonical path).
    pub object: String,
    /// Its link-time address.
    pub addr: u64,
    /// Where it is in the file (the kernel's `ref_ctr_offset`).
    pub file_offset: u64,
}

/// Why the static probes of a file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsdtError {
    /// The file is not a 64-bit ELF file.
    #[error("it is not an ELF file")]
    NotElf,
    /// A note that does not hold what a `stapsdt` note holds.
    #[error("its .note.stapsdt is damaged: {0}")]
    Damaged(String),
}

/// The static probes of the ELF file in `data`, whose canonical path is `object`, in the
/// order of their notes. A file without `.note.stapsdt` has none.
pub fn usdt_probes(object: &str, data: &[u8]) -> Result<Vec<UsdtProbe>, UsdtError> {
    let file = ElfFile64::<Endianness>::parse(data).map_err(|_| UsdtError::NotElf)?;
    let endian = file.endian();
    let sections = file.elf_section_table();
    let base_now =
        sections.section_by_name(endian, b".stapsdt.base").map(|(_, s)| s.sh_addr(endian)).filter(|a| *a != 0);
    let segments = file.elf_header().program_headers(endian, data).unwrap_or(&[]);
    let file_offset_of = |vaddr: u64| {
        segments.iter().filter(|p| p.p_type(endian) == elf::PT_LOAD).find_map(|p| {
            let into = vaddr.checked_sub(p.p_vaddr(endian))?;
            (into < p.p_filesz(endian)).then(|| p.p_offset(endian) + into)
        })
    };
    let damaged = |why: &str| UsdtError::Damaged(why.to_owned());
    let mut out = Vec::new();
    for section in sections.iter().filter(|s| sections.section_name(endian, s).ok() == Some(b".note.stapsdt")) {
        let Some(mut notes) = section.notes(endian, data).map_err(|e| damaged(&e.to_string()))? else { continue };
        while let Some(note) = notes.next().map_err(|e| damaged(&e.to_string()))? {
            if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
                continue;
            }
            let desc = note.desc();
            let word =
                |i: usize| desc.get(i * 8..i * 8 + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            let (Some(mut pc), Some(base), Some(mut semaphore)) = (word(0), word(1), word(2)) else {
                return Err(damaged("a note shorter than its three addresses"));
            };
            // Prelink moves the code after the notes were written: the base section moved
            // with it, by as much.
            if let Some(now) = base_now.filter(|_| base != 0) {
                let moved = now.wrapping_sub(base);
                pc = pc.wrapping_add(moved);
                if semaphore != 0 {
                    semaphore = semaphore.wrapping_add(moved);
                }
            }
            let mut strings = desc[24..].split(|&b| b == 0);
            let mut text = || strings.next().map(|s| String::from_utf8_lossy(s).into_owned());
            let (Some(provider), Some(name)) = (text(), text()) else {
                return Err(damaged("a note without provider and name"));
            };
            let args_text = text().unwrap_or_default();
            let file_offset = file_offset_of(pc).ok_or_else(|| damaged("a probe outside the loaded code"))?;
            let semaphore = match semaphore {
                0 => None,
                addr => Some(Semaphore {
                    object: object.to_owned(),
                    addr,
                    file_offset: file_offset_of(addr).ok_or_else(|| damaged("a semaphore outside the file's data"))?,
                }),
            };
            let args =
                args_text.split_whitespace().map(|t| UsdtArg { text: t.to_owned(), fetch: parse_arg(t) }).collect();
            out.push(UsdtProbe { provider, name, pc, file_offset, semaphore, args });
        }
    }
    Ok(out)
}

/// One argument of a note, `[-]SIZE@OPERAND` (the size in bytes, negative when signed), into a
/// fetch argument and its type: `%REG`, `$CONSTANT`, `[DISP](%REG)`. Operands that name a
/// global variable (`counter(%rip)`), use an index register (`8@(%rax,%rdx,8)`) or a segment
/// are refused with the reason.
pub fn parse_arg(text: &str) -> Result<(Fetch, ArgType), String> {
    let (size, operand) = match text.split_once('@') {
        Some((s, o)) => (s.parse::<i32>().map_err(|_| format!("`{s}` is not an argument size"))?, o),
        None => (8, text),
    };
    let bits = match size.unsigned_abs() {
        b @ (1 | 2 | 4 | 8) => (b * 8) as u8,
        _ => return Err(format!("an argument of {size} bytes")),
    };
    let ty = if size < 0 { ArgType::S(bits) } else { ArgType::U(bits) };
    if let Some(constant) = operand.strip_prefix('$') {
        return signed_number(constant)
            .map(|n| (Fetch::Immediate(n), ty))
            .ok_or_else(|| format!("the constant `{constant}` is not a number (a symbol's address?)"));
    }
    if let Some(reg) = operand.strip_prefix('%') {
        if reg.contains(':') {
            return Err(format!("`{operand}` is relative to a segment register"));
        }
        return Ok((Fetch::Reg(register(reg)?), ty));
    }
    let Some(open) = operand.find('(') else {
        return Err(format!("`{operand}` is an absolute address or a symbol, which dprobe does not read"));
    };
    let inside = operand[open + 1..].strip_suffix(')').ok_or_else(|| format!("`{operand}` is not closed"))?;
    if inside.contains(',') {
        return Err(format!("`{operand}` uses an index register, which dprobe's fetch arguments cannot express"));
    }
    let base = inside.strip_prefix('%').ok_or_else(|| format!("`{operand}` has no base register"))?;
    if matches!(base, "rip" | "eip") {
        return Err(format!(
            "`{operand}` is relative to the instruction pointer (a global variable), which dprobe does not read"
        ));
    }
    let displacement = &operand[..open];
    let offset = if displacement.is_empty() {
        0
    } else {
        signed_number(displacement)
            .ok_or_else(|| format!("`{operand}`: `{displacement}` is a symbol, which dprobe does not resolve"))?
    };
    Ok((Fetch::Deref { offset, inner: Box::new(Fetch::Reg(register(base)?)) }, ty))
}

fn signed_number(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let n = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    let n = n as i64;
    Some(if negative { n.wrapping_neg() } else { n })
}

/// Any name of a general register (`%rdi`, `%edi`, `%di`, `%dil`, `%r8d`) as the spec's
/// register; the value is cut to the argument's size when fetched.
fn register(name: &str) -> Result<Register, String> {
    const LEGACY: [(&str, [&str; 4]); 8] = [
        ("ax", ["rax", "eax", "ax", "al"]),
        ("bx", ["rbx", "ebx", "bx", "bl"]),
        ("cx", ["rcx", "ecx", "cx", "cl"]),
        ("dx", ["rdx", "edx", "dx", "dl"]),
        ("si", ["rsi", "esi", "si", "sil"]),
        ("di", ["rdi", "edi", "di", "dil"]),
        ("bp", ["rbp", "ebp", "bp", "bpl"]),
        ("sp", ["rsp", "esp", "sp", "spl"]),
    ];
    const NUMBERED: [&str; 8] = ["r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    let name = name.to_ascii_lowercase();
    if let Some((short, _)) = LEGACY.iter().find(|(_, names)| names.contains(&name.as_str())) {
        return Ok(Register(short));
    }
    let numbered = name.trim_end_matches(['d', 'w', 'b']);
    if let Some(r) = NUMBERED.iter().find(|r| **r == numbered) {
        return Ok(Register(r));
    }
    if matches!(name.as_str(), "ah" | "bh" | "ch" | "dh") {
        return Err(format!("`%{name}` is the high byte of a register, which dprobe's fetch arguments cannot express"));
    }
    Err(format!("`%{name}` is not a general register"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(r: &'static str) -> Fetch {
        Fetch::Reg(Register(r))
    }

    #[test]
    fn argument_specs_with_sizes_and_signs() {
        let ok = |t| parse_arg(t).unwrap();
        assert_eq!(ok("-4@%edi"), (reg("di"), ArgType::S(32)));
        assert_eq!(ok("8@%rax"), (reg("ax"), ArgType::U(64)));
        assert_eq!(ok("1@%dil"), (reg("di"), ArgType::U(8)));
        assert_eq!(ok("-2@%r9w"), (reg("r9"), ArgType::S(16)));
        assert_eq!(ok("8@%r13"), (reg("r13"), ArgType::U(64)));
        assert_eq!(ok("-1@$5"), (Fetch::Immediate(5), ArgType::S(8)));
        assert_eq!(ok("-4@$-3"), (Fetch::Immediate(-3), ArgType::S(32)));
        assert_eq!(ok("8@$0x10"), (Fetch::Immediate(16), ArgType::U(64)));
        assert_eq!(ok("8@-16(%rbp)"), (Fetch::Deref { offset: -16, inner: Box::new(reg("bp")) }, ArgType::U(64)));
        assert_eq!(ok("-4@(%rsp)"), (Fetch::Deref { offset: 0, inner: Box::new(reg("sp")) }, ArgType::S(32)));
        assert_eq!(ok("%rsi"), (reg("si"), ArgType::U(64)));
    }

    #[test]
    fn operands_that_cannot_be_fetched_say_why() {
        let cases = [
            ("8@(%rax,%rdx,8)", "index register"),
            ("-4@counter(%rip)", "instruction pointer"),
            ("1@%ah", "high byte"),
            ("3@%eax", "3 bytes"),
            ("8@%xmm0", "not a general register"),
            ("8@$sym", "not a number"),
            ("8@%fs:0x28", "segment"),
        ];
        for (operand, reason) in cases {
            let why = parse_arg(operand).unwrap_err();
            assert!(why.contains(reason), "{operand}: {why}");
        }
    }
}
