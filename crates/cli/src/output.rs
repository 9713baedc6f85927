//! One event as a line: for people (the article's `process 'cat' (1234) call openat(...)`)
//! or as a JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use dprobe_spec::{ArgType, NamedArg};

use crate::errno;
use crate::fetch::{Fetched, MAX_STRING};

/// What the output needs to know about a probe.
#[derive(Clone)]
pub struct ProbeInfo {
    /// The spec as written.
    pub spec: String,
    /// The function (`openat`, `parse+4`).
    pub label: String,
    /// Its fetch arguments.
    pub args: Vec<NamedArg>,
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

/// One hit, fetched.
pub struct Event<'a> {
    /// Seconds since tracing started.
    pub time: f64,
    /// Process and thread.
    pub pid: i32,
    /// See `pid`.
    pub tid: i32,
    /// The thread's name.
    pub comm: &'a [u8],
    /// The probe.
    pub probe: &'a ProbeInfo,
    /// The values, in the order of the probe's arguments.
    pub values: &'a [Fetched],
    /// At a return: time since the entry.
    pub latency: Option<Duration>,
}

/// `process 'cat' (1234) call openat(path="/etc/hostname", flags=0x0)` or
/// `process 'cat' (1234) openat returns -1 (ENOENT)`.
pub fn human(e: &Event<'_>, out: &mut String) {
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
            human_value(&e.values[i], out);
        }
        out.push(')');
    }
    if let Some(r) = p.retval_index {
        out.push_str(" returns ");
        human_value(&e.values[r], out);
        let ret = e.values[r].as_i64();
        let errno_value = match p.errno_index {
            Some(i) => e.values[i].as_i64(),
            None if p.errno_in_retval => ret.filter(|v| (-4095..0).contains(v)).map(|v| -v),
            None => None,
        };
        if let (Some(ret), Some(err)) = (ret, errno_value) {
            if ret < 0 {
                let _ = write!(out, " ({})", errno::name(err).map_or_else(|| format!("errno {err}"), str::to_owned));
            }
        }
    }
    out.push('\n');
}

fn human_value(v: &Fetched, out: &mut String) {
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
        Fetched::Str(s) => {
            out.push('"');
            for &b in s {
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
            if s.len() >= MAX_STRING {
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

/// One JSON object (one line). Fields: `time` (seconds since tracing started), `pid`, `tid`,
/// `comm`, `probe` (the spec's target), `function`, `kind` (`entry` or `return`), `args` (an
/// object: numbers for integer types, strings for `string`, `null` for a fault), and at a
/// return `retval`, `errno` and `errno_name` when fetched, and `latency_ns`.
pub fn json(e: &Event<'_>, out: &mut String) {
    let p = e.probe;
    let _ = write!(out, "{{\"time\":{:.6},\"pid\":{},\"tid\":{},\"comm\":", e.time, e.pid, e.tid);
    json_string(e.comm, out);
    out.push_str(",\"probe\":");
    json_string(p.spec.split_whitespace().next().unwrap_or("").as_bytes(), out);
    out.push_str(",\"function\":");
    json_string(p.label.as_bytes(), out);
    let _ = write!(out, ",\"kind\":\"{}\",\"args\":{{", if p.is_return { "return" } else { "entry" });
    for (n, (arg, v)) in p.args.iter().zip(e.values).enumerate() {
        if n > 0 {
            out.push(',');
        }
        json_string(arg.name.as_bytes(), out);
        out.push(':');
        json_value(v, out);
    }
    out.push('}');
    if let Some(r) = p.retval_index {
        out.push_str(",\"retval\":");
        json_value(&e.values[r], out);
    }
    if let Some(i) = p.errno_index {
        out.push_str(",\"errno\":");
        json_value(&e.values[i], out);
        if let Some(name) = e.values[i].as_i64().and_then(errno::name) {
            let _ = write!(out, ",\"errno_name\":\"{name}\"");
        }
    }
    if let Some(l) = e.latency {
        let _ = write!(out, ",\"latency_ns\":{}", l.as_nanos());
    }
    out.push_str("}\n");
}

fn json_value(v: &Fetched, out: &mut String) {
    match v {
        Fetched::Int(raw, ArgType::S(_)) => {
            let _ = write!(out, "{}", v.as_i64().unwrap_or(*raw as i64));
        }
        Fetched::Int(raw, _) => {
            let _ = write!(out, "{raw}");
        }
        Fetched::Str(s) => json_string(s, out),
        Fetched::Fault(_) => out.push_str("null"),
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD.
pub fn json_string(bytes: &[u8], out: &mut String) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_spec::parse_probe;

    fn info(spec: &str) -> ProbeInfo {
        let p = parse_probe(spec).unwrap();
        let retval_index = p.args.iter().position(|a| a.fetch == dprobe_spec::Fetch::RetVal);
        let errno_index = p.args.iter().position(|a| a.fetch == dprobe_spec::Fetch::Errno);
        ProbeInfo {
            spec: spec.into(),
            label: "openat".into(),
            is_return: p.kind == dprobe_spec::ProbeKind::Return,
            args: p.args,
            retval_index,
            errno_index,
            tracepoint: false,
            errno_in_retval: false,
        }
    }

    fn event<'a>(probe: &'a ProbeInfo, values: &'a [Fetched]) -> Event<'a> {
        Event { time: 0.5, pid: 10, tid: 11, comm: b"cat", probe, values, latency: None }
    }

    #[test]
    fn entries_and_returns_read_like_the_article() {
        let p = info("libc:openat path=+0($arg2):string flags=$arg3:x32");
        let values = [Fetched::Str(b"/etc/hostname".to_vec()), Fetched::Int(0, ArgType::X(32))];
        let mut s = String::new();
        human(&event(&p, &values), &mut s);
        assert_eq!(s, "process 'cat' (11) call openat(path=\"/etc/hostname\", flags=0x0)\n");

        let p = info("libc:openat%return ret=$retval err=$errno");
        let values = [Fetched::Int(u64::MAX, ArgType::S(64)), Fetched::Int(2, ArgType::S(32))];
        let mut s = String::new();
        human(&event(&p, &values), &mut s);
        assert_eq!(s, "process 'cat' (11) openat returns -1 (ENOENT)\n");

        let values = [Fetched::Int(3, ArgType::S(64)), Fetched::Int(2, ArgType::S(32))];
        let mut s = String::new();
        human(&event(&p, &values), &mut s);
        assert_eq!(s, "process 'cat' (11) openat returns 3\n", "errno is stale when the call succeeded");

        let mut p = info("kernel:do_sys_openat2%return ret=$retval:s32");
        p.errno_in_retval = true;
        let mut s = String::new();
        human(&event(&p, &[Fetched::Int(0xffff_fffe, ArgType::S(32))]), &mut s);
        assert_eq!(s, "process 'cat' (11) openat returns -2 (ENOENT)\n", "kernel functions return -errno");
    }

    #[test]
    fn strings_are_escaped_and_faults_named() {
        let p = info("libc:openat path=+0($arg2):string flags=$arg3:x32");
        let values = [Fetched::Str(b"a\"b\n\x01".to_vec()), Fetched::Fault(0)];
        let mut s = String::new();
        human(&event(&p, &values), &mut s);
        assert_eq!(s, "process 'cat' (11) call openat(path=\"a\\\"b\\n\\x01\", flags=(fault))\n");
        let mut j = String::new();
        json(&event(&p, &values), &mut j);
        assert_eq!(
            j,
            "{\"time\":0.500000,\"pid\":10,\"tid\":11,\"comm\":\"cat\",\"probe\":\"libc:openat\",\
             \"function\":\"openat\",\"kind\":\"entry\",\"args\":{\"path\":\"a\\\"b\\n\\u0001\",\"flags\":null}}\n"
        );
    }

    #[test]
    fn returns_in_json_carry_the_value_errno_and_latency() {
        let p = info("libc:openat%return ret=$retval err=$errno");
        let values = [Fetched::Int(u64::MAX, ArgType::S(64)), Fetched::Int(13, ArgType::S(32))];
        let mut e = event(&p, &values);
        e.latency = Some(Duration::from_nanos(1500));
        let mut j = String::new();
        json(&e, &mut j);
        assert!(j.contains("\"kind\":\"return\",\"args\":{\"ret\":-1,\"err\":13},\"retval\":-1,\"errno\":13,\"errno_name\":\"EACCES\",\"latency_ns\":1500}"), "{j}");
    }
}
