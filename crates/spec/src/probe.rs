//! Probe specs: where to probe and what to fetch.

use std::collections::HashSet;

use crate::error::{SpecError, SpecErrorKind as K};

/// Entry or return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// At the address (a function's entry, or `+OFFSET` into it).
    Entry,
    /// At the function's return (`%return`).
    Return,
}

/// What a probe spec names, as written: the syntax tree of its first word. Nothing here is
/// resolved; `dprobe_sym` resolves a user-space point to code (its `Target`: object, function,
/// offset and addresses), the kernel engine a kernel one, and a static probe or a source line
/// may stand for several places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbePoint {
    /// A function (or a virtual address, `0x...`) in a user-space binary or library.
    User {
        /// The binary or library (`libc`, `./app`, `/usr/bin/cat`); `None`: the traced program
        /// and its libraries.
        binary: Option<String>,
        /// The function's name (possibly versioned or demangled) or `0x` address.
        function: String,
        /// Bytes into the function.
        offset: u64,
    },
    /// A kernel function (`kernel:FUNCTION`).
    Kernel {
        /// Its name.
        function: String,
        /// Bytes into it.
        offset: u64,
    },
    /// A static probe of a program or library (USDT, `<sys/sdt.h>`):
    /// `usdt:BINARY:[PROVIDER:]NAME`; provider and name may be globs.
    Usdt {
        /// The binary or library that holds it.
        binary: String,
        /// Its provider; `None`: any.
        provider: Option<String>,
        /// Its name.
        name: String,
    },
    /// A line of source in a user-space binary (`[BINARY:]FILE:LINE` or
    /// `[BINARY:]FUNCTION:+N`), found through the binary's debug information.
    Line {
        /// The binary or library, as for [`ProbePoint::User`].
        binary: Option<String>,
        /// Which line.
        line: SourceLine,
    },
    /// A static tracepoint (`tracepoint:SUBSYSTEM:EVENT`).
    Tracepoint {
        /// Its subsystem (`sched`, `syscalls`).
        subsystem: String,
        /// Its event (`sched_switch`).
        event: String,
    },
}

/// A line of source, as a probe names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLine {
    /// `FILE:LINE`: a line of a source file, matched by its name or a suffix of its path.
    File {
        /// The file as written (`lines.c`, `src/lines.c`).
        file: String,
        /// Its line number (from 1).
        line: u32,
    },
    /// `FUNCTION:+N`: the N-th line after the line where the function's definition starts
    /// (`perf probe`'s relative line numbers; `+0` is that line).
    InFunction {
        /// The function.
        function: String,
        /// Lines after its first.
        relative: u32,
    },
}

impl std::fmt::Display for SourceLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceLine::File { file, line } => write!(f, "{file}:{line}"),
            SourceLine::InFunction { function, relative } => write!(f, "{function}:+{relative}"),
        }
    }
}

/// A register, by its kernel fetch-arg name (`di`, `si`, `ax`, `ip`, `r8`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register(pub &'static str);

/// Dereferences inside one another a fetch may hold (the kernel's probes evaluate 16 steps;
/// dprobe's agent reads as many).
pub const MAX_DEREFERENCES: usize = 16;

/// How many dereferences `f` holds inside one another.
fn dereferences<R>(f: &Fetch<R>) -> usize {
    match f {
        Fetch::Deref { inner, .. } => 1 + dereferences(inner),
        _ => 0,
    }
}

const REGISTERS: [&str; 19] = [
    "ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip", "flags", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15", "orig_ax",
];

/// How a value is fetched. `R` is how a register is named: by its [`Register`] name as
/// parsed, or by what an engine compiled the name to ([`Fetch::map_registers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch<R = Register> {
    /// A register.
    Reg(R),
    /// The N-th argument (1-based) by the calling convention.
    Arg(u32),
    /// The return value.
    RetVal,
    /// The process (thread) name.
    Comm,
    /// The thread's C `errno` (user-space probes; a dprobe extension, mostly for return
    /// probes on libc functions, which report errors through it).
    Errno,
    /// The N-th stack entry.
    Stack(u32),
    /// The stack pointer.
    StackPointer,
    /// Memory at an absolute address.
    Memory(u64),
    /// Memory at an offset in the probed file (`@+OFFSET`, the kernel's uprobe syntax): the
    /// probe's run-time address, minus its own offset in the file, plus OFFSET. A static
    /// variable of the probed object is there in every process, wherever the object was
    /// loaded, and at every site of the probe (its exits too).
    FileOffset(u64),
    /// An immediate value.
    Immediate(i64),
    /// A variable of the program by name, from its DWARF (`req`, `req->hdr.len`, `argv[1]`,
    /// `$params`): the tracer turns it into the other fetches before placing the probe.
    Var {
        /// The path as written.
        path: String,
    },
    /// Memory at `inner + offset`.
    Deref {
        /// Added to the inner value.
        offset: i64,
        /// The address base.
        inner: Box<Fetch<R>>,
    },
}

impl<R> Fetch<R> {
    /// The same fetch with every register named by `f` of its name.
    pub fn map_registers<S>(&self, f: &impl Fn(&R) -> S) -> Fetch<S> {
        match self {
            Fetch::Reg(r) => Fetch::Reg(f(r)),
            Fetch::Arg(n) => Fetch::Arg(*n),
            Fetch::RetVal => Fetch::RetVal,
            Fetch::Comm => Fetch::Comm,
            Fetch::Errno => Fetch::Errno,
            Fetch::Stack(n) => Fetch::Stack(*n),
            Fetch::StackPointer => Fetch::StackPointer,
            Fetch::Memory(a) => Fetch::Memory(*a),
            Fetch::FileOffset(o) => Fetch::FileOffset(*o),
            Fetch::Immediate(i) => Fetch::Immediate(*i),
            Fetch::Var { path } => Fetch::Var { path: path.clone() },
            Fetch::Deref { offset, inner } => Fetch::Deref { offset: *offset, inner: Box::new(inner.map_registers(f)) },
        }
    }
}

/// How a fetched value is typed and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    /// Signed integer of this many bits.
    S(u8),
    /// Unsigned integer, decimal.
    U(u8),
    /// Unsigned integer, hexadecimal.
    X(u8),
    /// The value is the address of a NUL-terminated string.
    String,
}

/// `NAME=FETCHARG:TYPE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedArg {
    /// Its name (given, or derived: `arg2`, `ret`, `comm`, `di`).
    pub name: String,
    /// How to fetch it.
    pub fetch: Fetch,
    /// How to type it.
    pub ty: ArgType,
    /// Whether `ty` was written (`:TYPE`): a written type overrides what a variable's DWARF
    /// or a static probe's note says; otherwise `ty` is the fetch's default, which they replace.
    pub typed: bool,
}

impl NamedArg {
    /// An argument whose type is given (not to be replaced by a variable's or a static
    /// probe's own).
    pub fn typed(name: impl Into<String>, fetch: Fetch, ty: ArgType) -> NamedArg {
        NamedArg { name: name.into(), fetch, ty, typed: true }
    }
}

/// A parsed probe spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// What to probe.
    pub point: ProbePoint,
    /// Entry or return.
    pub kind: ProbeKind,
    /// What to fetch at each hit, in order.
    pub args: Vec<NamedArg>,
}

/// Words of `text` with their byte offsets.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

/// Parse a probe spec.
pub fn parse_probe(text: &str) -> Result<ProbeSpec, SpecError> {
    let ws = words(text);
    let Some(&(at, first)) = ws.first() else {
        return Err(SpecError::new(
            K::Empty,
            text,
            0..text.len(),
            "a probe such as `libc:openat` or `kernel:do_sys_openat2%return`",
        ));
    };
    let p = Parser { text };
    let (point, kind) = p.point(at, first)?;
    let mut args = Vec::new();
    let mut names = HashSet::new();
    for (i, &(at, word)) in ws.iter().enumerate().skip(1) {
        if matches!(point, ProbePoint::Tracepoint { .. }) {
            return Err(SpecError::new(
                K::ArgsOnTracepoint,
                text,
                at..at + word.len(),
                "nothing after the tracepoint: its fields are fetched for you",
            ));
        }
        let arg = p.arg(at, word, i, kind)?;
        if !names.insert(arg.name.clone()) {
            let end = at + word.find('=').unwrap_or(word.len());
            return Err(SpecError::new(K::DuplicateName, text, at..end, "a different name (NAME=FETCHARG)"));
        }
        args.push(arg);
    }
    Ok(ProbeSpec { point, kind, args })
}

struct Parser<'a> {
    text: &'a str,
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

fn signed_number(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(rest) => number(rest).and_then(|n| i64::try_from(n).ok()).map(|n| -n),
        None => number(s.strip_prefix('+').unwrap_or(s)).and_then(|n| i64::try_from(n).ok()),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `BINARY:REST` split at the first `:` that is not part of a C++ `::`: the binary (a
/// library name or a path; a `+` in it is part of it, as in `libstdc++`) and the rest.
pub fn split_binary(word: &str) -> (Option<&str>, &str) {
    let b = word.as_bytes();
    let sep = (0..b.len()).find(|&i| b[i] == b':' && b.get(i + 1) != Some(&b':') && (i == 0 || b[i - 1] != b':'));
    match sep {
        Some(i) => (Some(&word[..i]), &word[i + 1..]),
        None => (None, word),
    }
}

/// `FUNCTION[+OFFSET]` split into the name and the offset. Only a trailing `+NUMBER`
/// (decimal or `0x` hex) is an offset; a `+` of a C++ operator name (`operator+`,
/// `operator++`, `operator+=`) is part of the name, so `operator++4` is `operator+` at 4.
/// Any other `+` is a malformed offset: `Err` holds its byte index.
pub fn split_offset(function: &str) -> Result<(&str, Option<u64>), usize> {
    let Some(plus) = function.rfind('+') else { return Ok((function, None)) };
    if let Some(n) = number(&function[plus + 1..]) {
        return Ok((&function[..plus], Some(n)));
    }
    let in_operator = |i: usize| function[..i].ends_with("operator") || function[..i].ends_with("operator+");
    match function.match_indices('+').map(|(i, _)| i).find(|&i| !in_operator(i)) {
        None => Ok((function, None)),
        Some(_) => Err(plus),
    }
}

/// `[BINARY:]FILE:LINE` or `[BINARY:]FUNCTION:+N`: a target whose last part, after a `:`
/// that is not half of a C++ `::`, is a decimal line number (with `+`, relative to a
/// function). Returns what comes before that `:`, the number, and whether it had a `+`;
/// `None` for any other target. `FUNCTION+N` (no `:`) stays a byte offset.
pub fn split_line(word: &str) -> Option<(&str, u32, bool)> {
    let colon = word.rfind(':')?;
    if colon == 0 || word.as_bytes()[colon - 1] == b':' {
        return None;
    }
    let number = &word[colon + 1..];
    let (digits, relative) = match number.strip_prefix('+') {
        Some(d) => (d, true),
        None => (number, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((&word[..colon], digits.parse().ok()?, relative))
}

/// Parse the probe point of a spec alone (`[BINARY:]FUNCTION[+OFFSET]`, `kernel:...`,
/// `tracepoint:...`), as the in-process and ptrace APIs take it; a `%return` is refused.
pub fn parse_point(text: &str) -> Result<ProbePoint, SpecError> {
    let p = Parser { text };
    match p.point(0, text)? {
        (point, ProbeKind::Entry) => Ok(point),
        (_, ProbeKind::Return) => Err(p.err(
            K::UnknownSuffix,
            text.rfind('%').unwrap_or(0)..text.len(),
            "the target alone; the API says whether the probe is at the return",
        )),
    }
}

impl Parser<'_> {
    fn err(&self, kind: K, span: std::ops::Range<usize>, expected: &str) -> SpecError {
        SpecError::new(kind, self.text, span, expected)
    }

    /// `FUNCTION[+OFFSET]` starting at `at`: the name and the offset (0 when none).
    fn offset<'w>(&self, at: usize, function: &'w str, kind: ProbeKind) -> Result<(&'w str, u64), SpecError> {
        match split_offset(function) {
            Ok((name, None)) => Ok((name, 0)),
            Ok((name, Some(n))) => {
                if kind == ProbeKind::Return && n != 0 {
                    return Err(self.err(
                        K::OffsetOnReturn,
                        at + name.len()..at + function.len(),
                        "FUNCTION%return, on the function's entry",
                    ));
                }
                Ok((name, n))
            }
            Err(plus) => {
                Err(self.err(K::BadOffset, at + plus + 1..at + function.len(), "a byte offset such as +4 or +0x1c"))
            }
        }
    }

    fn point(&self, at: usize, word: &str) -> Result<(ProbePoint, ProbeKind), SpecError> {
        if let Some(rest) = word.strip_prefix("tracepoint:") {
            let base = at + "tracepoint:".len();
            if rest.is_empty() {
                return Err(self.err(
                    K::MissingFunction,
                    at..base,
                    "SUBSYSTEM:EVENT, e.g. tracepoint:sched:sched_switch",
                ));
            }
            if let Some(i) = rest.find(['%', '+']) {
                return Err(self.err(
                    K::TracepointModifier,
                    base + i..at + word.len(),
                    "tracepoint:SUBSYSTEM:EVENT alone",
                ));
            }
            return match rest.split_once(':') {
                Some((sub, ev)) if is_identifier(sub) && is_identifier(ev) => {
                    Ok((ProbePoint::Tracepoint { subsystem: sub.into(), event: ev.into() }, ProbeKind::Entry))
                }
                _ => Err(self.err(K::BadTracepoint, base..at + word.len(), "SUBSYSTEM:EVENT, e.g. sched:sched_switch")),
            };
        }
        if let Some(rest) = word.strip_prefix("usdt:") {
            return self.usdt(at, at + "usdt:".len(), rest).map(|t| (t, ProbeKind::Entry));
        }
        // Suffix: %return.
        let (body, kind) = match word.rfind('%') {
            Some(i) if &word[i..] == "%return" => (&word[..i], ProbeKind::Return),
            Some(i) => {
                return Err(self.err(
                    K::UnknownSuffix,
                    at + i..at + word.len(),
                    "%return, or nothing for an entry probe",
                ))
            }
            None => (word, ProbeKind::Entry),
        };
        if let Some(function) = body.strip_prefix("kernel:") {
            let base = at + "kernel:".len();
            let (function, offset) = self.offset(base, function, kind)?;
            if function.is_empty() {
                return Err(self.err(K::MissingFunction, at..base, "a kernel function, e.g. kernel:do_sys_openat2"));
            }
            return Ok((ProbePoint::Kernel { function: function.into(), offset }, kind));
        }
        if let Some((place, number, relative)) = split_line(body) {
            return self.line_target(at, word, place, number, relative, kind);
        }
        let (binary, rest, fn_at) = match split_binary(body) {
            (Some(b), rest) => (Some(b), rest, at + b.len() + 1),
            (None, rest) => (None, rest, at),
        };
        let (function, offset) = self.offset(fn_at, rest, kind)?;
        if binary == Some("") || function.is_empty() {
            let span = if function.is_empty() { at..fn_at } else { at..at + 1 };
            let kind = if binary.is_none() && function.is_empty() { K::MissingTarget } else { K::MissingFunction };
            return Err(self.err(kind, span, "[BINARY:]FUNCTION, e.g. libc:openat or ./app:main+4"));
        }
        Ok((ProbePoint::User { binary: binary.map(str::to_owned), function: function.into(), offset }, kind))
    }

    /// `usdt:BINARY:[PROVIDER:]NAME` after its prefix (`rest`, at `base`).
    fn usdt(&self, at: usize, base: usize, rest: &str) -> Result<ProbePoint, SpecError> {
        const EXPECTED: &str = "usdt:BINARY:[PROVIDER:]NAME, e.g. usdt:./app:server:request";
        if let Some(i) = rest.find(['%', '+']) {
            return Err(self.err(K::UsdtModifier, base + i..base + rest.len(), "usdt:BINARY:[PROVIDER:]NAME alone"));
        }
        if rest.is_empty() {
            return Err(self.err(K::MissingFunction, at..base, EXPECTED));
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let (binary, provider, name) = match parts[..] {
            [binary, name] => (binary, None, name),
            [binary, provider, name] => (binary, Some(provider), name),
            _ => return Err(self.err(K::BadUsdt, at..base + rest.len(), EXPECTED)),
        };
        if binary.is_empty() || name.is_empty() || provider == Some("") {
            return Err(self.err(K::BadUsdt, at..base + rest.len(), EXPECTED));
        }
        Ok(ProbePoint::Usdt { binary: binary.into(), provider: provider.map(str::to_owned), name: name.into() })
    }

    /// `[BINARY:]FILE:LINE` or `[BINARY:]FUNCTION:+N` (split by [`split_line`]).
    fn line_target(
        &self,
        at: usize,
        word: &str,
        place: &str,
        number: u32,
        relative: bool,
        kind: ProbeKind,
    ) -> Result<(ProbePoint, ProbeKind), SpecError> {
        let end = at + word.len();
        if kind == ProbeKind::Return {
            return Err(self.err(
                K::ReturnOnLine,
                at + place.len()..end,
                "FUNCTION%return for a function's return, or the line alone",
            ));
        }
        if !relative && number == 0 {
            return Err(self.err(K::BadLine, at + place.len() + 1..end, "a line number from 1, e.g. lines.c:47"));
        }
        let (binary, name, name_at) = match split_binary(place) {
            (Some(b), rest) => (Some(b), rest, at + b.len() + 1),
            (None, rest) => (None, rest, at),
        };
        if binary == Some("") || name.is_empty() {
            let expected = if relative { "FUNCTION:+N, e.g. main:+3" } else { "FILE:LINE, e.g. lines.c:47" };
            return Err(self.err(K::MissingFunction, at..name_at.max(at + 1), expected));
        }
        let line = if relative {
            SourceLine::InFunction { function: name.into(), relative: number }
        } else {
            SourceLine::File { file: name.into(), line: number }
        };
        Ok((ProbePoint::Line { binary: binary.map(str::to_owned), line }, kind))
    }

    /// `[NAME=]FETCHARG[:TYPE]`, the `index`-th word.
    fn arg(&self, at: usize, word: &str, index: usize, kind: ProbeKind) -> Result<NamedArg, SpecError> {
        let (name, fetch_at, rest) = match word.find('=') {
            Some(i) => {
                let name = &word[..i];
                if !is_identifier(name) {
                    return Err(self.err(
                        K::BadName,
                        at..at + i,
                        "a name of letters, digits and _ (not starting with a digit)",
                    ));
                }
                (Some(name), at + i + 1, &word[i + 1..])
            }
            None => (None, at, word),
        };
        let (fetch_text, ty_text) = split_type(rest);
        if split_type(fetch_text).1.is_some_and(|t| parse_type(t).is_some()) {
            return Err(self.err(
                K::TwoTypes,
                fetch_at..fetch_at + rest.len(),
                "one :TYPE after the fetch, e.g. +0($arg1):string",
            ));
        }
        let fetch = self.fetch(fetch_at, fetch_text, kind)?;
        let ty = match ty_text {
            None => default_type(&fetch),
            Some(t) => {
                let t_at = fetch_at + fetch_text.len() + 1;
                parse_type(t).ok_or_else(|| {
                    self.err(K::UnknownType, t_at..t_at + t.len(), "s8, s16, s32, s64, u8..u64, x8..x64 or string")
                })?
            }
        };
        let name = name.map_or_else(|| default_name(&fetch, index), str::to_owned);
        Ok(NamedArg { name, fetch, ty, typed: ty_text.is_some() })
    }

    fn fetch(&self, at: usize, s: &str, kind: ProbeKind) -> Result<Fetch, SpecError> {
        let span = at..at + s.len();
        let bad = |kind, expected: &str| self.err(kind, span.clone(), expected);
        if let Some(reg) = s.strip_prefix('%') {
            let name = canonical_register(reg)
                .ok_or_else(|| bad(K::UnknownRegister, "a register such as %di, %si, %dx, %cx, %ax, %ip, %sp, %r8"))?;
            return Ok(Fetch::Reg(Register(name)));
        }
        if s == "$params" || is_var_path(s) {
            return Ok(Fetch::Var { path: s.to_owned() });
        }
        if let Some(var) = s.strip_prefix('$') {
            return match var {
                "retval" if kind == ProbeKind::Return => Ok(Fetch::RetVal),
                "retval" => Err(bad(K::RetvalOnEntry, "FUNCTION%return to fetch $retval")),
                "comm" => Ok(Fetch::Comm),
                "errno" => Ok(Fetch::Errno),
                "stack" => Ok(Fetch::StackPointer),
                _ => {
                    if let Some(n) = var.strip_prefix("arg") {
                        let n = number(n)
                            .filter(|n| (1..=16).contains(n))
                            .ok_or_else(|| bad(K::BadArgIndex, "$arg1 .. $arg16"))?;
                        Ok(Fetch::Arg(n as u32))
                    } else if let Some(n) = var.strip_prefix("stack") {
                        let n =
                            number(n).filter(|n| *n < 64).ok_or_else(|| bad(K::BadArgIndex, "$stack0 .. $stack63"))?;
                        Ok(Fetch::Stack(n as u32))
                    } else {
                        Err(bad(K::UnknownVariable, "$argN, $retval, $comm, $errno, $stack, $stackN or $params"))
                    }
                }
            };
        }
        if let Some(offset) = s.strip_prefix("@+") {
            return number(offset)
                .map(Fetch::FileOffset)
                .ok_or_else(|| bad(K::BadAddress, "an offset in the probed file such as @+0x3010"));
        }
        if let Some(addr) = s.strip_prefix('@') {
            return number(addr).map(Fetch::Memory).ok_or_else(|| bad(K::BadAddress, "an address such as @0x601040"));
        }
        if let Some(imm) = s.strip_prefix('\\') {
            return signed_number(imm)
                .map(Fetch::Immediate)
                .ok_or_else(|| bad(K::BadImmediate, "a number such as \\42 or \\-1"));
        }
        if s.starts_with(['+', '-']) {
            let open = s.find('(').ok_or_else(|| bad(K::BadDereference, "+OFFSET(FETCHARG), e.g. +0(%si)"))?;
            if !s.ends_with(')') {
                return Err(bad(K::BadDereference, "a closing parenthesis: +OFFSET(FETCHARG)"));
            }
            let offset = signed_number(&s[..open]).ok_or_else(|| {
                self.err(K::BadDereference, at..at + open, "a number before the parenthesis: +8(%di), -0x10(%bp)")
            })?;
            let inner = self.fetch(at + open + 1, &s[open + 1..s.len() - 1], kind)?;
            if dereferences(&inner) >= MAX_DEREFERENCES {
                let most =
                    format!("at most {MAX_DEREFERENCES} dereferences inside one another, as the kernel's probes");
                return Err(self.err(K::DereferenceTooDeep, at..at + s.len(), &most));
            }
            return Ok(Fetch::Deref { offset, inner: Box::new(inner) });
        }
        Err(bad(
            K::BadFetchArg,
            "%REG, $argN, $retval, $comm, @ADDR, \\IMM, +OFFSET(FETCHARG) or a variable (req->hdr.len)",
        ))
    }
}

/// Split `FETCHARG:TYPE` at the last `:` outside parentheses.
fn split_type(s: &str) -> (&str, Option<&str>) {
    let mut depth = 0i32;
    let mut split = None;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ':' if depth == 0 => split = Some(i),
            _ => {}
        }
    }
    match split {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

fn parse_type(t: &str) -> Option<ArgType> {
    if t == "string" {
        return Some(ArgType::String);
    }
    let (kind, bits) = t.split_at_checked(1)?;
    let bits: u8 = bits.parse().ok().filter(|b| matches!(b, 8 | 16 | 32 | 64))?;
    match kind {
        "s" => Some(ArgType::S(bits)),
        "u" => Some(ArgType::U(bits)),
        "x" => Some(ArgType::X(bits)),
        _ => None,
    }
}

/// `$retval` is shown signed (errors are negative), `$comm` as a string, the rest in hex.
fn default_type(f: &Fetch) -> ArgType {
    match f {
        Fetch::RetVal => ArgType::S(64),
        Fetch::Errno => ArgType::S(32),
        Fetch::Comm => ArgType::String,
        _ => ArgType::X(64),
    }
}

/// `name`, `req->hdr.len`, `argv[1]`, `a.b[2]`: a variable by its DWARF name, with members
/// and elements (checked in full against the DWARF later).
fn is_var_path(s: &str) -> bool {
    // `*PATH` reads what PATH points to.
    let s = s.trim_start_matches('*');
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_->.[]".contains(c))
}

fn default_name(f: &Fetch, index: usize) -> String {
    match f {
        Fetch::Var { path, .. } => path.clone(),
        Fetch::RetVal => "ret".into(),
        Fetch::Comm => "comm".into(),
        Fetch::Errno => "errno".into(),
        Fetch::Arg(n) => format!("arg{n}"),
        Fetch::Reg(r) => r.0.into(),
        _ => format!("arg{index}"),
    }
}

/// `rdi`, `edi` and `di` all name the kernel's `di`.
fn canonical_register(r: &str) -> Option<&'static str> {
    let r = r.to_ascii_lowercase();
    let short = match r.as_str() {
        "rax" | "eax" => "ax",
        "rbx" | "ebx" => "bx",
        "rcx" | "ecx" => "cx",
        "rdx" | "edx" => "dx",
        "rsi" | "esi" => "si",
        "rdi" | "edi" => "di",
        "rbp" | "ebp" => "bp",
        "rsp" | "esp" => "sp",
        "rip" | "eip" => "ip",
        "rflags" | "eflags" => "flags",
        other => other,
    };
    REGISTERS.iter().copied().find(|n| *n == short)
}
