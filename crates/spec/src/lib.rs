//! The probe spec language of `dprobe trace`. It reads like the kernel's own dynamic-event
//! definitions (`uprobe_events`, `kprobe_events`), so one language serves every engine:
//!
//! ```text
//! [BINARY:]FUNCTION[+OFFSET][%return] [NAME=]FETCHARG[:TYPE] ...
//! [BINARY:]FILE:LINE ...          a line of source (its first statement)
//! [BINARY:]FUNCTION:+N ...        the N-th line after the function's first line
//! kernel:FUNCTION[+OFFSET][%return] ...
//! tracepoint:SUBSYSTEM:EVENT
//! usdt:BINARY:[PROVIDER:]NAME ...
//! ```
//!
//! `FUNCTION+N` is N bytes into the function, `FUNCTION:+N` N lines into it: a target whose
//! last `:`-separated part is a number names a line.
//!
//! Fetch arguments: `%REG` (`%di`, `%rdi`, `%ax`, `%ip`, `%sp`, ...), `$argN` (1-based),
//! `$retval`, `$comm`, `$errno` (user space), `$stackN`, `@ADDR`, `\IMM`, and `+|-OFFSET(FETCHARG)` to dereference;
//! a variable of the program by name (`req`, `req->hdr.len`, `argv[1]`, `$params`), read from
//! its DWARF by the tracer ([`Fetch::Var`]).
//! Types: `s8`..`s64`, `u8`..`u64`, `x8`..`x64`, `string` (the value is the address of a
//! NUL-terminated string). Filters (`--filter`) compare fetched values:
//! `ret < 0 && path ~ "/etc/*"`.
//!
//! ```
//! use dprobe_spec::{parse_probe, ProbeKind, Fetch, ArgType};
//! let p = parse_probe("libc:openat path=+0($arg2):string flags=$arg3:x32").unwrap();
//! assert_eq!(p.kind, ProbeKind::Entry);
//! assert_eq!(p.args[0].name, "path");
//! assert_eq!(p.args[0].ty, ArgType::String);
//! assert!(matches!(p.args[1].fetch, Fetch::Arg(3)));
//! ```
#![forbid(unsafe_code)]

mod error;
mod filter;
mod probe;

pub use error::{SpecError, SpecErrorKind};
pub use filter::{
    compare, glob, parse_filter, CmpOp, Filter, Literal, Value, MAX_FILTER_COMPARISONS, MAX_FILTER_DEPTH,
};
pub use probe::{
    parse_point, parse_probe, split_binary, split_line, split_offset, ArgType, Fetch, NamedArg, ProbeKind, ProbePoint,
    ProbeSpec, Register, SourceLine,
};
