//! `--stack`: each event's stacks as frames, symbolized once for every sink (the lines, the
//! folded stacks, `--by stack`), with what the symbolizer keeps between events (per object:
//! symbols and line tables; per address: its frames).

use std::fmt::Write as _;

use anyhow::{bail, Result};
use dprobe_core::{ProbeEvent, StackRequest};
use dprobe_stack::{Frame, Symbolizer};

/// The default `--stack-depth`.
pub const DEFAULT_DEPTH: usize = 64;

/// One frame of an event's stack, with its address.
#[derive(Debug, Clone)]
pub struct StackFrame {
    /// The address: where the thread was for the first frame of a stack, else a return
    /// address.
    pub addr: u64,
    /// In the kernel.
    pub kernel: bool,
    /// What is there.
    pub frame: Frame,
}

impl StackFrame {
    /// The function's name, or the address in hex.
    pub fn name(&self) -> String {
        self.frame.name_or(self.addr)
    }
}

/// `--stack[=kernel,user]`: which stacks, `depth` frames deep.
pub fn parse_stack(text: Option<&str>, depth: usize, implied: bool) -> Result<Option<StackRequest>> {
    let Some(text) = text.or(implied.then_some("user")) else { return Ok(None) };
    let mut want = StackRequest { user: false, kernel: false, depth };
    for word in text.split(',').map(str::trim) {
        match word {
            "user" | "u" => want.user = true,
            "kernel" | "k" => want.kernel = true,
            _ => bail!("--stack={text}: name the stacks with `user`, `kernel` or `kernel,user`"),
        }
    }
    if depth == 0 {
        bail!("--stack-depth 0: a stack needs one frame at least");
    }
    Ok(Some(want))
}

/// Events' stacks to frames.
pub struct Stacks {
    symbolizer: Symbolizer,
}

impl Stacks {
    /// Nothing symbolized yet.
    pub fn new() -> Stacks {
        Stacks { symbolizer: Symbolizer::new() }
    }

    /// Read what symbolizing the stacks of process `pid` needs now (see
    /// [`Symbolizer::prepare`]).
    pub fn prepare(&mut self, pid: u32) {
        self.symbolizer.prepare(pid);
    }

    /// The frames of `e`'s stacks into `out`, innermost first: the kernel's, then the user's.
    pub fn frames(&mut self, e: &ProbeEvent<'_>, out: &mut Vec<StackFrame>) {
        out.clear();
        for &addr in e.kernel_stack {
            out.push(StackFrame { addr, kernel: true, frame: self.symbolizer.kernel(addr) });
        }
        for (i, &addr) in e.user_stack.iter().enumerate() {
            for frame in self.symbolizer.user_in(e.pid, e.maps_of, addr, i > 0).iter() {
                out.push(StackFrame { addr, kernel: false, frame: frame.clone() });
            }
        }
    }
}

/// The frames under an event's line, one per line, as debuggers print them:
/// `    leaf+0x6 (stack.c:12) [prog]`, an inlined call `    step (inlined) (stack.c:30)`.
pub fn human(frames: &[StackFrame], out: &mut String) {
    for f in frames {
        out.push_str("    ");
        let fr = &f.frame;
        match (&fr.function, fr.offset) {
            (Some(name), Some(off)) => {
                let _ = write!(out, "{name}+0x{off:x}");
            }
            (Some(name), None) => out.push_str(name),
            (None, _) => {
                let _ = write!(out, "0x{:x}", f.addr);
            }
        }
        if fr.inlined {
            out.push_str(" (inlined)");
        }
        if let (Some(file), Some(line)) = (&fr.file, fr.line) {
            let _ = write!(out, " ({}:{line})", file.rsplit('/').next().unwrap_or(file));
        }
        match fr.object.as_deref() {
            // The kernel, or a kernel module: `[kernel]`, `[ext4]`.
            Some(object) if object.starts_with('[') => {
                let _ = write!(out, " {object}");
            }
            Some(object) => {
                let _ = write!(out, " [{}]", object.rsplit('/').next().unwrap_or(object));
            }
            None => {}
        }
        out.push('\n');
    }
}

/// A stack as one folded line's frames, root first: `main;run;leaf` (kernel frames marked
/// `_[k]`, as flame graph tools expect).
pub fn folded(frames: &[StackFrame], out: &mut String) {
    out.clear();
    for (n, f) in frames.iter().rev().enumerate() {
        if n > 0 {
            out.push(';');
        }
        // `;` separates frames and a space ends the stack: neither may appear in a name.
        for c in f.name().chars() {
            out.push(if c == ';' || c.is_whitespace() { '_' } else { c });
        }
        if f.kernel {
            out.push_str("_[k]");
        }
    }
}

/// A frame for JSON: `{"addr":"0x…","function":…,"offset":…,"object":…,"file":…,"line":…,
/// "inlined":…,"kernel":…}`.
#[derive(serde::Serialize)]
pub struct JsonFrame<'a> {
    addr: String,
    function: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    object: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
    inlined: bool,
    kernel: bool,
}

impl<'a> JsonFrame<'a> {
    /// The JSON of `f`.
    pub fn of(f: &'a StackFrame) -> JsonFrame<'a> {
        let fr = &f.frame;
        JsonFrame {
            addr: format!("0x{:x}", f.addr),
            function: fr.function.as_deref(),
            offset: fr.offset,
            object: fr.object.as_deref(),
            file: fr.file.as_deref(),
            line: fr.line,
            inlined: fr.inlined,
            kernel: f.kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, kernel: bool) -> StackFrame {
        let frame = Frame {
            function: Some(name.into()),
            offset: Some(4),
            object: None,
            file: None,
            line: None,
            inlined: false,
        };
        StackFrame { addr: 0x1000, kernel, frame }
    }

    #[test]
    fn folded_stacks_are_root_first_with_kernel_frames_marked() {
        let mut out = String::new();
        folded(&[frame("do_sys_open", true), frame("leaf", false), frame("ns::f(int, char)", false)], &mut out);
        assert_eq!(out, "ns::f(int,_char);leaf;do_sys_open_[k]");
    }

    #[test]
    fn stack_kinds_are_user_kernel_or_both() {
        let want = |t: Option<&str>| parse_stack(t, 8, false).unwrap();
        assert_eq!(want(Some("user")), Some(StackRequest { user: true, kernel: false, depth: 8 }));
        assert_eq!(want(Some("kernel,user")), Some(StackRequest { user: true, kernel: true, depth: 8 }));
        assert_eq!(want(None), None);
        assert_eq!(parse_stack(None, 8, true).unwrap(), Some(StackRequest { user: true, kernel: false, depth: 8 }));
        assert!(parse_stack(Some("both"), 8, false).is_err());
        assert!(parse_stack(Some("user"), 0, false).is_err());
    }
}
