//! From dprobe's probe specs to the kernel's dynamic-event definitions: the same language,
//! with the parts the kernel does not take translated (`$argN` becomes the register or stack
//! slot of the x86-64 calling convention; a user function becomes `PATH:FILE_OFFSET`).

use dprobe_arch::{analyze, kernel_uprobe_refusal};
use dprobe_spec::{ArgType, Fetch, NamedArg, ProbeKind, ProbePoint, ProbeSpec};
use dprobe_sym::{ObjectName, ResolveError, Symbols};

use crate::error::KernelError;

/// Which kernel file takes a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `uprobe_events`.
    Uprobe,
    /// `kprobe_events`.
    Kprobe,
    /// An existing static tracepoint.
    Tracepoint,
}

/// A probe, ready for the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// Which file.
    pub kind: EventKind,
    /// For dynamic events, the text after `p:GROUP/NAME` / `r:GROUP/NAME`: place and args.
    pub body: String,
    /// A return probe.
    pub is_return: bool,
    /// For tracepoints, `SUBSYSTEM/EVENT`.
    pub tracepoint: Option<String>,
    /// Where a user probe sits (for messages): `path:function+offset`.
    pub place: String,
    /// A user probe's file and file offset.
    pub file: Option<(String, u64)>,
    /// A user probe's semaphore (a static probe's): its file offset ([`Definition::counting`]).
    pub semaphore: Option<u64>,
}

/// The hidden last argument of events that fetch strings. The kernel keeps a record's
/// strings in one area of bounded size, in the order of the arguments, and gives a string
/// longer than its limit the whole room left: the arguments after it then get no room (a
/// length of 0). This one (the thread's name, never unreadable, never empty) tells such a
/// record apart: when it has no room, the string that took it was cut.
pub const END_FIELD: &str = "dprobe_end";

/// The kernel's definition of `spec`.
pub fn definition(spec: &ProbeSpec) -> Result<Definition, KernelError> {
    let is_return = spec.kind == ProbeKind::Return;
    // Strings read from memory go after every other field (fields are read back by name, so
    // their order in the record is free): one cut for want of room then takes no room from
    // the numbers or the thread's name that follow it in the spec.
    let from_memory = |a: &&NamedArg| a.ty == ArgType::String && a.fetch != Fetch::Comm;
    let (strings, others): (Vec<&NamedArg>, Vec<&NamedArg>) = spec.args.iter().partition(from_memory);
    let ordered = others.into_iter().chain(strings);
    let mut args = ordered.map(|a| fetch_arg(a, is_return)).collect::<Result<Vec<_>, _>>()?;
    // `$comm` is never unreadable, and no longer than 16 bytes: it needs no marker.
    if spec.args.iter().any(|a| a.ty == ArgType::String && a.fetch != Fetch::Comm) {
        args.push(format!("{END_FIELD}=$comm:string"));
    }
    let args = args.join(" ");
    match &spec.point {
        ProbePoint::Tracepoint { subsystem, event } => Ok(Definition {
            kind: EventKind::Tracepoint,
            body: String::new(),
            is_return: false,
            tracepoint: Some(format!("{subsystem}/{event}")),
            place: format!("{subsystem}:{event}"),
            file: None,
            semaphore: None,
        }),
        ProbePoint::Kernel { function, offset } => {
            let place = if *offset == 0 { function.clone() } else { format!("{function}+{offset}") };
            Ok(Definition {
                kind: EventKind::Kprobe,
                body: format!("{place} {args}").trim_end().to_owned(),
                is_return,
                tracepoint: None,
                place: format!("kernel:{place}"),
                file: None,
                semaphore: None,
            })
        }
        ProbePoint::Usdt { .. } => Err(KernelError::Unsupported {
            what: "a static probe (usdt:) as one event".into(),
            why: "each of its sites is an address of its binary: define BINARY:0xADDRESS for each".into(),
        }),
        ProbePoint::Line { line, .. } => Err(KernelError::Unsupported {
            what: format!("`{line}`"),
            why: "a source line is placed at the addresses the debug information gives for it".into(),
        }),
        ProbePoint::User { binary, function, offset } => {
            let (path, file_offset, shown) = user_place(binary.as_deref(), function, *offset)?;
            Ok(Definition {
                kind: EventKind::Uprobe,
                body: format!("{path}:{file_offset:#x} {args}").trim_end().to_owned(),
                is_return,
                tracepoint: None,
                place: shown,
                file: Some((path, file_offset)),
                semaphore: None,
            })
        }
    }
}

impl Definition {
    /// The uprobe with a reference counter: a static probe's semaphore, at `file_offset` in
    /// the probed file, which the kernel increments in every process that maps the file while
    /// the event is enabled and decrements after (`PATH:OFFSET(REF_CTR_OFFSET)`).
    pub fn counting(mut self, file_offset: u64) -> Definition {
        if self.kind == EventKind::Uprobe {
            let end = self.body.find(' ').unwrap_or(self.body.len());
            self.body.insert_str(end, &format!("({file_offset:#x})"));
            self.semaphore = Some(file_offset);
        }
        self
    }
}

/// One fetch argument in the kernel's syntax.
fn fetch_arg(a: &NamedArg, is_return: bool) -> Result<String, KernelError> {
    let ty = match a.ty {
        ArgType::S(b) => format!("s{b}"),
        ArgType::U(b) => format!("u{b}"),
        ArgType::X(b) => format!("x{b}"),
        ArgType::String => "string".into(),
    };
    Ok(format!("{}={}:{ty}", a.name, fetch(&a.fetch, is_return, &a.name)?))
}

fn fetch(f: &Fetch, is_return: bool, name: &str) -> Result<String, KernelError> {
    Ok(match f {
        Fetch::Reg(r) => format!("%{}", r.0),
        Fetch::Arg(n) if is_return => {
            return Err(KernelError::Unsupported {
                what: format!("`{name}`: $arg{n} at a return"),
                why: "the kernel's return probes do not keep the arguments; use the ptrace engine, or \
                      fetch it with an entry probe"
                    .into(),
            })
        }
        Fetch::Arg(n) => match n {
            1 => "%di".into(),
            2 => "%si".into(),
            3 => "%dx".into(),
            4 => "%cx".into(),
            5 => "%r8".into(),
            6 => "%r9".into(),
            // At a function's entry the return address is at the stack pointer; the 7th
            // argument is just above it.
            n => format!("+{}(%sp)", 8 * (n - 6)),
        },
        Fetch::RetVal => "$retval".into(),
        Fetch::Comm => "$comm".into(),
        Fetch::Errno => {
            return Err(KernelError::Unsupported {
                what: format!("`{name}`: $errno"),
                why: "the kernel engine cannot read a thread's C errno; use the ptrace engine".into(),
            })
        }
        Fetch::Stack(n) => format!("$stack{n}"),
        Fetch::StackPointer => "$stack".into(),
        Fetch::Memory(a) => format!("@{a:#x}"),
        Fetch::FileOffset(o) => format!("@+{o:#x}"),
        Fetch::Immediate(i) => format!("\\{i}"),
        Fetch::Deref { offset, inner } => {
            let sign = if *offset < 0 { "-" } else { "+" };
            format!("{sign}{}({})", offset.unsigned_abs(), fetch(inner, is_return, name)?)
        }
        Fetch::Var { path, .. } => {
            return Err(KernelError::Unsupported {
                what: format!("`{name}`: the variable `{path}`"),
                why: "variables by name are turned into registers and memory before placing".into(),
            })
        }
    })
}

/// The file and file offset of `[BINARY:]FUNCTION+OFFSET` (or `BINARY:0xADDR`), checked to be
/// on an instruction boundary. BINARY is a path, or a library name (`libc`) found among the
/// libraries dprobe itself has loaded or in the usual library directories.
fn user_place(binary: Option<&str>, function: &str, offset: u64) -> Result<(String, u64, String), KernelError> {
    let binary = binary.ok_or_else(|| KernelError::Unsupported {
        what: format!("`{function}` without a binary"),
        why: "a system-wide probe needs BINARY:FUNCTION (a path, or a library such as libc)".into(),
    })?;
    let not_found = |why: String| KernelError::NotFound { what: format!("`{binary}`"), why };
    let object = ObjectName::new(binary).map_err(|e| not_found(e.to_string()))?;
    let path = object.find_file().ok_or_else(|| {
        not_found("no such file, and no library of that name is loaded or in the library directories".into())
    })?;
    let symbols = Symbols::load_file(&path).map_err(|e| KernelError::NotFound {
        what: format!("`{path}`"),
        why: format!("cannot read its symbols: {e}"),
    })?;
    let target = symbols.resolve_name(&[], None, function, offset).map_err(|e| match e {
        ResolveError::SymbolNotFound { .. } => {
            KernelError::NotFound { what: format!("`{function}`"), why: format!("no such function in `{path}`") }
        }
        ResolveError::OffsetOutOfFunction { size, .. } => KernelError::NotFound {
            what: format!("`{function}+{offset}`"),
            why: format!("past the end of the function ({size} bytes)"),
        },
        ResolveError::NoFunction { addr } => {
            KernelError::NotFound { what: format!("{addr} in `{path}`"), why: "no function symbol covers it".into() }
        }
        other => KernelError::NotFound { what: format!("`{function}` in `{path}`"), why: other.to_string() },
    })?;
    let f = &target.function;
    let path = target.object().to_owned();
    let code = read_at(&path, f.file_offset, f.size as usize)?;
    analyze(&code, f.start, target.addr).map_err(|e| KernelError::Unsupported {
        what: format!("`{}+{:#x}` in `{path}`", f.name, target.offset),
        why: e.to_string(),
    })?;
    // What the kernel would refuse only once a process maps the file (the probe would then
    // never fire) is refused here, with the reason.
    if let Some(why) = kernel_uprobe_refusal(&code, f.start, target.addr, kernel_optimizes_nop5()) {
        return Err(KernelError::Unsupported {
            what: format!("`{}+{:#x}` in `{path}`", f.name, target.offset),
            why: why.to_string(),
        });
    }
    let shown = format!("{path}:{}+{:#x}", f.name, target.offset);
    Ok((path, target.file_offset, shown))
}

/// Whether this kernel turns a uprobe on a 5-byte nop into a call (Linux 6.18 and later).
pub fn kernel_optimizes_nop5() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 18)
}

fn read_at(path: &str, offset: u64, len: usize) -> Result<Vec<u8>, KernelError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .map_err(|e| KernelError::NotFound { what: format!("`{path}`"), why: e.to_string() })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_spec::parse_probe;

    fn def(text: &str) -> Result<Definition, KernelError> {
        definition(&parse_probe(text).unwrap())
    }

    #[test]
    fn kernel_probes_pass_through_with_arguments_in_registers() {
        let d = def("kernel:do_sys_openat2 dfd=$arg1:s32 path=+0($arg2):string how=$arg3 c=$comm").unwrap();
        assert_eq!(d.kind, EventKind::Kprobe);
        // The string read from memory after the other fields, then the end marker.
        assert_eq!(
            d.body,
            "do_sys_openat2 dfd=%di:s32 how=%dx:x64 c=$comm:string path=+0(%si):string dprobe_end=$comm:string"
        );
        let d = def("kernel:do_sys_openat2%return ret=$retval").unwrap();
        assert_eq!((d.body.as_str(), d.is_return), ("do_sys_openat2 ret=$retval:s64", true));
        let d = def("kernel:vfs_read+4 x=$arg8:u32 y=-8(+16(%sp)):x8").unwrap();
        assert_eq!(d.body, "vfs_read+4 x=+16(%sp):u32 y=-8(+16(%sp)):x8");
    }

    #[test]
    fn user_probes_become_path_and_file_offset() {
        let d = def("libc:open path=+0($arg1):string").unwrap();
        assert_eq!(d.kind, EventKind::Uprobe);
        let (place, args) = d.body.split_once(' ').unwrap();
        let (path, offset) = place.rsplit_once(':').unwrap();
        assert!(path.contains("libc.so"), "{path}");
        let symbols = Symbols::load_file(path).unwrap();
        let f = symbols.find("open").unwrap();
        assert_eq!(offset, format!("{:#x}", f.file_offset));
        assert_eq!(args, "path=+0(%di):string dprobe_end=$comm:string");
        // A static of the file, at a return too: the kernel's own `@+OFFSET`.
        let d = def("libc:open%return n=@+0x1d0:s32 name=+0(@+0x1d8):string").unwrap();
        let args = d.body.split_once(' ').unwrap().1;
        assert_eq!(args, "n=@+0x1d0:s32 name=+0(@+0x1d8):string dprobe_end=$comm:string");
    }

    #[test]
    fn what_the_kernel_cannot_do_is_refused_with_the_reason() {
        let refused: [(&str, &[&str]); 7] = [
            ("libc:open%return a=$arg1", &["$arg1 at a return"]),
            ("libc:open%return e=$errno", &["$errno"]),
            ("open", &["needs BINARY:FUNCTION"]),
            ("libnosuchthing:f", &["`libnosuchthing`"]),
            ("libc:no_such_function_here", &["no such function"]),
            ("libc:open+1000000", &["past the end"]),
            ("./no/such/program:main", &["`./no/such/program`", "no such file"]),
        ];
        for (spec, reasons) in refused {
            let e = def(spec).unwrap_err().to_string();
            assert!(reasons.iter().all(|r| e.contains(r)), "{spec}: {e}");
        }
    }

    /// The C++ program whose `operator+` the other engines' tests probe.
    fn operators() -> String {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../ptrace/tests/fixtures/operators.cpp");
        let path = dprobe_test_fixtures::c_program(src, "operators", &["-O2"]);
        std::fs::canonicalize(path).unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn a_cpp_operator_plus_becomes_its_file_offset() {
        let prog = operators();
        let f = Symbols::load_file(&prog).unwrap().find("operator+").unwrap().clone();
        let d = def(&format!("{prog}:operator+ a=$arg1")).unwrap();
        assert_eq!(d.body, format!("{prog}:{:#x} a=%di:x64", f.file_offset));
        let d = def(&format!("{prog}:operator+%return")).unwrap();
        assert_eq!((d.body, d.is_return), (format!("{prog}:{:#x}", f.file_offset), true));
        // The same place by its address in the binary.
        let d = def(&format!("{prog}:{:#x}", f.start.0)).unwrap();
        assert_eq!(d.body, format!("{prog}:{:#x}", f.file_offset));
    }

    #[test]
    fn a_semaphore_becomes_the_reference_counter_after_the_offset() {
        let d = def("libc:open a=$arg1").unwrap().counting(0x3048);
        let (place, args) = d.body.split_once(' ').unwrap();
        assert!(place.ends_with(")") && place.contains(":0x") && place.ends_with("(0x3048)"), "{place}");
        assert_eq!(args, "a=%di:x64");
        let d = def("libc:open").unwrap().counting(0x10);
        assert!(d.body.ends_with("(0x10)") && !d.body.contains(' '), "{}", d.body);
    }

    #[test]
    fn a_library_with_a_plus_in_its_name() {
        let d = def("libstdc++:__cxa_throw").unwrap();
        let (place, offset) = d.body.rsplit_once(':').unwrap();
        assert!(place.rsplit('/').next().unwrap().starts_with("libstdc++.so"), "{place}");
        let f = Symbols::load_file(place).unwrap().find("__cxa_throw").unwrap().clone();
        assert_eq!(offset, format!("{:#x}", f.file_offset));
    }
}
