//! One event as a line: for people (the article's `process 'cat' (1234) call openat(...)`)
//! or as a JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use crate::clock::{Clock, TimeFormat};
use dprobe_core::fetch::{Fetched, Values};
use dprobe_core::Side;
use dprobe_dwarf::Shown;
use dprobe_spec::{ArgType, NamedArg};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// What the output needs to know about a probe.
#[derive(Clone)]
pub struct ProbeInfo {
    /// The spec as written.
    pub spec: String,
    /// The function (`openat`, `parse+4`).
    pub label: String,
    /// Its fetch arguments.
    pub args: Vec<NamedArg>,
    /// How each is shown (enumerators by name, `bool`s as `true`/`false`); missing: plainly.
    pub shown: Vec<Shown>,
    /// A return probe.
    pub is_return: bool,
    /// Which argument is the return value, which one `errno`.
    pub retval_index: Option<usize>,
    /// See `retval_index`.
    pub errno_index: Option<usize>,
    /// A tracepoint (an event, not a call).
    pub tracepoint: bool,
    /// A kernel function: a return value from -4095 to -1 is an error number.
    pub errno_in_retval: bool,
}

/// One event, ready to be written.
pub struct Line<'a> {
    /// When, in `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    /// The trace's time base.
    pub clock: &'a Clock,
    /// How the human line shows the time, if it does (`-T`).
    pub show_time: Option<TimeFormat>,
    /// Process and thread.
    pub pid: u32,
    /// See `pid`.
    pub tid: u32,
    /// The thread's name.
    pub comm: &'a [u8],
    /// The probe.
    pub probe: &'a ProbeInfo,
    /// Entry or return.
    pub side: Side,
    /// The values, in the order of the probe's arguments.
    pub values: &'a Values,
    /// At a return: time since the entry.
    pub latency: Option<Duration>,
    /// With `--stack`: the stacks' frames, innermost first.
    pub stack: &'a [crate::stacks::StackFrame],
}

impl Line<'_> {
    fn value(&self, i: usize) -> Fetched<'_> {
        self.values.get(i).unwrap_or(Fetched::Fault(0))
    }
}

/// `process 'cat' (1234) call openat(path="/etc/hostname", flags=0x0)` or
/// `process 'cat' (1234) openat returns -1 (ENOENT)`.
pub fn human(e: &Line<'_>, out: &mut String) {
    if let Some(format) = e.show_time {
        e.clock.show(format, e.time_ns, out);
    }
    let _ = write!(out, "process '{}' ({}) ", String::from_utf8_lossy(e.comm), e.tid);
    let p = e.probe;
    let shown: Vec<usize> =
        (0..p.args.len()).filter(|&i| Some(i) != p.retval_index && Some(i) != p.errno_index).collect();
    if !p.is_return && !p.tracepoint {
        out.push_str("call ");
    }
    out.push_str(&p.label);
    if !p.is_return || !shown.is_empty() {
        out.push('(');
        for (n, &i) in shown.iter().enumerate() {
            if n > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}=", p.args[i].name);
            shown_value(e.value(i), p.shown.get(i).unwrap_or(&Shown::Plain), out);
        }
        out.push(')');
    }
    if let Some(r) = p.retval_index {
        out.push_str(" returns ");
        human_value(e.value(r), out);
        let ret = e.value(r).as_i64();
        let errno_value = match p.errno_index {
            Some(i) => e.value(i).as_i64(),
            None if p.errno_in_retval => ret.filter(|v| (-4095..0).contains(v)).map(|v| -v),
            None => None,
        };
        if let (Some(ret), Some(err)) = (ret, errno_value) {
            if ret < 0 {
                let _ = write!(out, " ({})", errno_name(err).unwrap_or_else(|| format!("errno {err}")));
            }
        }
    }
    out.push('\n');
    crate::stacks::human(e.stack, out);
}

/// A value as its C type shows it: an enumerator by its name, a `bool` as `true`/`false`.
pub fn shown_value(v: Fetched<'_>, shown: &Shown, out: &mut String) {
    match (shown, v.as_i64()) {
        (Shown::Bool, Some(n)) => out.push_str(if n == 0 { "false" } else { "true" }),
        (Shown::Enum(names), Some(n)) => match names.iter().find(|(value, _)| *value == n) {
            Some((_, name)) => out.push_str(name),
            None => {
                let _ = write!(out, "{n}");
            }
        },
        _ => human_value(v, out),
    }
}

/// A value as the human lines write it (strings quoted and escaped).
pub fn human_value(v: Fetched<'_>, out: &mut String) {
    match v {
        Fetched::Int(raw, ty) => match ty {
            ArgType::X(_) => {
                let _ = write!(out, "{raw:#x}");
            }
            ArgType::U(_) => {
                let _ = write!(out, "{raw}");
            }
            _ => {
                let _ = write!(out, "{}", v.as_i64().unwrap_or(0));
            }
        },
        Fetched::Str { bytes, cut } => {
            out.push('"');
            for &b in bytes {
                match b {
                    b'"' => out.push_str("\\\""),
                    b'\\' => out.push_str("\\\\"),
                    b'\n' => out.push_str("\\n"),
                    b'\t' => out.push_str("\\t"),
                    0x20..=0x7e => out.push(b as char),
                    b => {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
            }
            out.push('"');
            if cut {
                out.push_str("...");
            }
        }
        Fetched::Fault(_) => out.push_str("(fault)"),
    }
}

/// `1.234 ms`.
pub fn human_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", d.as_secs_f64()),
    }
}

/// The name of error number `n` (`ENOENT`), as the C library names it.
pub fn errno_name(n: i64) -> Option<String> {
    let n = i32::try_from(n).ok().filter(|n| *n > 0)?;
    match nix::errno::Errno::from_raw(n) {
        nix::errno::Errno::UnknownErrno => None,
        e => Some(format!("{e:?}")),
    }
}

/// One JSON object (one line). Fields: `time` (seconds since tracing started), `time_ns`
/// (`CLOCK_MONOTONIC` nanoseconds), `wall_time` (RFC 3339, UTC), `pid`, `tid`,
/// `comm`, `probe` (the spec's target), `function`, `kind` (`entry` or `return`), `args` (an
/// object: numbers for integer types, strings for `string`, `null` for a fault), and at a
/// return `retval`, `errno` and `errno_name` when fetched, and `latency_ns`; with `--stack`
/// `stack`, its frames innermost first (`addr`, `function`, `offset`, `object`, `file`,
/// `line`, `inlined`, `kernel`); `truncated`, the names of the string arguments cut at the
/// length read, when any was. Strings are the
/// bytes read: where they are not UTF-8, each such byte is written `\xNN`.
pub fn json(e: &Line<'_>, out: &mut String) {
    let p = e.probe;
    let errno = p.errno_index.map(|i| e.value(i));
    let mut wall_time = String::new();
    e.clock.rfc3339(e.time_ns, &mut wall_time);
    let object = JsonEvent {
        time: (e.clock.relative(e.time_ns) * 1e6).round() / 1e6,
        time_ns: e.time_ns,
        wall_time,
        pid: e.pid,
        tid: e.tid,
        comm: Bytes(e.comm),
        probe: p.spec.split_whitespace().next().unwrap_or(""),
        function: &p.label,
        kind: if e.side == Side::Return || p.is_return { "return" } else { "entry" },
        args: Args(e),
        retval: p.retval_index.map(|i| JsonValue(e.value(i))),
        errno: errno.map(JsonValue),
        errno_name: errno.and_then(|v| v.as_i64()).and_then(errno_name),
        latency_ns: e.latency.map(|l| l.as_nanos() as u64),
        stack: e.stack.iter().map(crate::stacks::JsonFrame::of).collect(),
        truncated: truncated(e),
    };
    // Writing to a String cannot fail, and every value is representable.
    out.push_str(&serde_json::to_string(&object).unwrap_or_default());
    out.push('\n');
}

#[derive(serde::Serialize)]
struct JsonEvent<'a> {
    time: f64,
    time_ns: u64,
    wall_time: String,
    pid: u32,
    tid: u32,
    comm: Bytes<'a>,
    probe: &'a str,
    function: &'a str,
    kind: &'static str,
    args: Args<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retval: Option<JsonValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<JsonValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ns: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stack: Vec<crate::stacks::JsonFrame<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    truncated: Vec<&'a str>,
}

/// The names of the event's string arguments that were cut at the length read (the human
/// lines end such a string with `...`).
fn truncated<'a>(e: &'a Line<'a>) -> Vec<&'a str> {
    let cut = |i: usize| matches!(e.value(i), Fetched::Str { cut: true, .. });
    e.probe.args.iter().enumerate().filter(|&(i, _)| cut(i)).map(|(_, a)| a.name.as_str()).collect()
}

/// The fetched values by name, in the probe's order.
struct Args<'a>(&'a Line<'a>);

impl Serialize for Args<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = s.serialize_map(Some(e.probe.args.len()))?;
        for (i, arg) in e.probe.args.iter().enumerate() {
            map.serialize_entry(&arg.name, &JsonValue(e.value(i)))?;
        }
        map.end()
    }
}

/// A value: a number by its type's sign, a string, or `null` for a fault.
struct JsonValue<'a>(Fetched<'a>);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Fetched::Int(raw, ArgType::S(_)) => s.serialize_i64(self.0.as_i64().unwrap_or(raw as i64)),
            Fetched::Int(raw, _) => s.serialize_u64(raw),
            Fetched::Str { bytes, .. } => Bytes(bytes).serialize(s),
            Fetched::Fault(_) => s.serialize_none(),
        }
    }
}

/// Bytes as a JSON string: UTF-8 as it is, any other byte as `\xNN` (never replaced).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_str(&escape_non_utf8(self.0)),
        }
    }
}

/// Bytes as text: UTF-8 as it is, any other byte as `\xNN`.
pub fn escape_non_utf8(mut bytes: &[u8]) -> String {
    let mut out = String::new();
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                out.push_str(text);
                break;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    let _ = write!(out, "\\x{b:02x}");
                }
                bytes = &rest[bad..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_spec::parse_probe;

    #[test]
    fn enums_by_name_and_bools_as_words() {
        let names = Shown::Enum(vec![(1, "GET".into()), (-3, "PURGE".into())]);
        let mut out = String::new();
        for (v, ty, shown) in [
            (1, ArgType::S(32), &names),
            (0xffff_fffd, ArgType::S(32), &names),
            (7, ArgType::S(32), &names),
            (0, ArgType::U(8), &Shown::Bool),
            (2, ArgType::U(8), &Shown::Bool),
        ] {
            shown_value(Fetched::Int(v, ty), shown, &mut out);
            out.push(' ');
        }
        assert_eq!(out, "GET PURGE 7 false true ");
    }

    fn info(spec: &str) -> ProbeInfo {
        let p = parse_probe(spec).unwrap();
        let retval_index = p.args.iter().position(|a| a.fetch == dprobe_spec::Fetch::RetVal);
        let errno_index = p.args.iter().position(|a| a.fetch == dprobe_spec::Fetch::Errno);
        ProbeInfo {
            spec: spec.into(),
            label: "openat".into(),
            is_return: p.kind == dprobe_spec::ProbeKind::Return,
            args: p.args,
            shown: Vec::new(),
            retval_index,
            errno_index,
            tracepoint: false,
            errno_in_retval: false,
        }
    }

    enum V<'a> {
        I(u64, ArgType),
        S(&'a [u8]),
        F,
    }

    fn values(vs: &[V<'_>]) -> Values {
        let mut v = Values::with_capacity(vs.len());
        for x in vs {
            match x {
                V::I(n, ty) => v.push_int(*n, *ty),
                V::S(s) => v.push_str(s),
                V::F => v.push_fault(0),
            }
        }
        v
    }

    fn line<'a>(probe: &'a ProbeInfo, values: &'a Values) -> Line<'a> {
        let side = if probe.is_return { Side::Return } else { Side::Entry };
        let clock = Box::leak(Box::new(Clock::from_parts(0, 0, jiff::tz::TimeZone::UTC)));
        Line {
            time_ns: 500_000_000,
            clock,
            show_time: None,
            pid: 10,
            tid: 11,
            comm: b"cat",
            probe,
            side,
            values,
            latency: None,
            stack: &[],
        }
    }

    fn human_text(p: &ProbeInfo, v: &Values) -> String {
        let mut s = String::new();
        human(&line(p, v), &mut s);
        s
    }

    #[test]
    fn entries_and_returns_read_like_the_article() {
        let p = info("libc:openat path=+0($arg2):string flags=$arg3:x32");
        let v = values(&[V::S(b"/etc/hostname"), V::I(0, ArgType::X(32))]);
        assert_eq!(human_text(&p, &v), "process 'cat' (11) call openat(path=\"/etc/hostname\", flags=0x0)\n");

        let p = info("libc:openat%return ret=$retval err=$errno");
        let v = values(&[V::I(u64::MAX, ArgType::S(64)), V::I(2, ArgType::S(32))]);
        assert_eq!(human_text(&p, &v), "process 'cat' (11) openat returns -1 (ENOENT)\n");

        let v = values(&[V::I(3, ArgType::S(64)), V::I(2, ArgType::S(32))]);
        assert_eq!(
            human_text(&p, &v),
            "process 'cat' (11) openat returns 3\n",
            "errno is stale when the call succeeded"
        );

        let mut p = info("kernel:do_sys_openat2%return ret=$retval:s32");
        p.errno_in_retval = true;
        let v = values(&[V::I(0xffff_fffe, ArgType::S(32))]);
        assert_eq!(
            human_text(&p, &v),
            "process 'cat' (11) openat returns -2 (ENOENT)\n",
            "kernel functions return -errno"
        );
    }

    #[test]
    fn strings_are_escaped_and_faults_named() {
        let p = info("libc:openat path=+0($arg2):string flags=$arg3:x32");
        let v = values(&[V::S(b"a\"b\n\x01"), V::F]);
        assert_eq!(human_text(&p, &v), "process 'cat' (11) call openat(path=\"a\\\"b\\n\\x01\", flags=(fault))\n");
        let mut j = String::new();
        json(&line(&p, &v), &mut j);
        assert_eq!(
            j,
            "{\"time\":0.5,\"time_ns\":500000000,\"wall_time\":\"1970-01-01T00:00:00.500000000Z\",\"pid\":10,\"tid\":11,\"comm\":\"cat\",\"probe\":\"libc:openat\",\
             \"function\":\"openat\",\"kind\":\"entry\",\"args\":{\"path\":\"a\\\"b\\n\\u0001\",\"flags\":null}}\n"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_escaped_in_json_not_replaced() {
        let p = info("libc:openat path=+0($arg2):string");
        let v = values(&[V::S(b"caf\xc3\xa9-\xff\xfe.txt")]);
        let mut j = String::new();
        json(&line(&p, &v), &mut j);
        assert!(j.contains("\"args\":{\"path\":\"café-\\\\xff\\\\xfe.txt\"}"), "{j}");
        let parsed: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(parsed["args"]["path"], "café-\\xff\\xfe.txt");
    }

    #[test]
    fn returns_in_json_carry_the_value_errno_and_latency() {
        let p = info("libc:openat%return ret=$retval err=$errno");
        let v = values(&[V::I(u64::MAX, ArgType::S(64)), V::I(13, ArgType::S(32))]);
        let mut e = line(&p, &v);
        e.latency = Some(Duration::from_nanos(1500));
        let mut j = String::new();
        json(&e, &mut j);
        assert!(j.contains("\"kind\":\"return\",\"args\":{\"ret\":-1,\"err\":13},\"retval\":-1,\"errno\":13,\"errno_name\":\"EACCES\",\"latency_ns\":1500}"), "{j}");
    }

    #[test]
    fn errno_names_come_from_the_c_library() {
        assert_eq!(errno_name(2).as_deref(), Some("ENOENT"));
        assert_eq!(errno_name(13).as_deref(), Some("EACCES"));
        assert_eq!(errno_name(131).as_deref(), Some("ENOTRECOVERABLE"));
        assert_eq!((errno_name(0), errno_name(41), errno_name(134), errno_name(-2)), (None, None, None, None));
    }
}
