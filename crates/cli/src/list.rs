//! `dprobe list`: the functions that can be probed, in a running process or an ELF file; or,
//! for one place, whether it can be probed, how, and if not, why not.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use anyhow::{bail, Context as _, Result};
use dprobe_arch::{analyze, can_optimize, describe, kernel_uprobe_refusal, plan, ExecPlan, SlotEnding};
use dprobe_spec::{parse_point, split_binary, split_offset};
use dprobe_sym::{read_maps_of, Function, Mapping, Symbols};

use crate::list_returns::{kernel_return_mode, return_mode, Image};
use crate::options::ListArgs;

/// Run `dprobe list`; returns the exit status (1 when the place asked about cannot be probed).
pub fn run(args: ListArgs, out: &mut dyn std::io::Write) -> Result<i32> {
    let listed = list(args, out).and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match listed {
        // A reader that has read enough (`dprobe list ... | head`) is no error.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(0)
        }
        other => other,
    }
}

fn list(mut args: ListArgs, out: &mut dyn std::io::Write) -> Result<i32> {
    args.spec_form_as_file_and_pattern().map_err(anyhow::Error::msg)?;
    if args.args {
        return crate::vars::list_args(&args, out);
    }
    if args.pid.is_some() && args.rest.len() > 1 {
        bail!("with -p PID, give at most a PATTERN (no FILE)");
    }
    if let Some(glob) = args.pattern().and_then(|p| p.strip_prefix("usdt:")) {
        let files = match (&args.pid, args.file()) {
            (Some(pid), _) => {
                let maps =
                    read_maps_of(*pid as u32).with_context(|| format!("cannot read the maps of process {pid}"))?;
                let mut files: Vec<String> = Vec::new();
                for path in maps.iter().filter(|m| m.exec).filter_map(|m| m.path.clone()) {
                    if path.starts_with('/') && !files.contains(&path) {
                        files.push(path);
                    }
                }
                files
            }
            (None, Some(file)) => vec![file.to_owned()],
            (None, None) => bail!("give `-p PID` or a FILE"),
        };
        return crate::usdt::list(&files, glob, out);
    }
    if let Some(function) = &args.lines {
        if args.pattern().is_some() {
            bail!("--lines FUNCTION lists one function's lines: give no PATTERN");
        }
        let (binary, function) = match (args.pid, args.file()) {
            (Some(pid), _) => {
                let (binary, function) = split_binary(function);
                let traced = crate::sites::Traced::Process(pid);
                let path = crate::sites::object_path(binary, traced)
                    .with_context(|| format!("cannot find `{}` in process {pid}", binary.unwrap_or("its program")))?;
                (path, function)
            }
            (None, Some(file)) => (file.to_owned(), function.as_str()),
            (None, None) => bail!("give `-p PID` or a FILE"),
        };
        return crate::list_lines::list_lines(&binary, function, out);
    }
    let (symbols, maps, code) = match (&args.pid, args.file()) {
        (Some(pid), _) => {
            let maps = read_maps_of(*pid as u32).with_context(|| format!("cannot read the maps of process {pid}"))?;
            let mem = std::fs::File::open(format!("/proc/{pid}/mem"))
                .with_context(|| format!("cannot read the memory of process {pid}"))?;
            (Symbols::load(&maps), maps, Code::Process(mem))
        }
        (None, Some(file)) => {
            let symbols = Symbols::load_file(file).with_context(|| format!("cannot read `{file}`"))?;
            (symbols, Vec::new(), Code::File(std::fs::File::open(file)?))
        }
        (None, None) => bail!("give `-p PID` or a FILE"),
    };
    match args.pattern() {
        Some(p) if names_one_place(p) => check(&symbols, &maps, &code, p, out),
        pattern => {
            let names: BTreeSet<String> = symbols
                .functions()
                .iter()
                .filter(|f| pattern.is_none_or(|p| f.matches_glob(p)))
                .map(|f| format!("{}:{}{}", f.object_file_name(), shown_name(f), ifunc_mark(f)))
                .collect();
            for n in &names {
                writeln!(out, "{n}")?;
            }
            if names.is_empty() {
                if let Some(p) = pattern {
                    bail!("no function matches `{p}`");
                }
            }
            Ok(0)
        }
    }
}

/// A function's name as `dprobe list` shows it.
pub fn shown_name(f: &Function) -> String {
    match &f.demangled {
        Some(d) => d.to_string(),
        None => f.versioned_name(),
    }
}

/// After an indirect function's name: a probe on it goes on the implementation the loader
/// chose, not on the resolver its symbol points at.
fn ifunc_mark(f: &Function) -> &'static str {
    if f.ifunc {
        " (indirect: probes the implementation the loader chose)"
    } else {
        ""
    }
}

enum Code {
    Process(std::fs::File),
    File(std::fs::File),
}

impl Code {
    /// The bytes of function `f`.
    fn read(&self, f: &Function) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; f.size as usize];
        match self {
            Code::Process(mem) => mem.read_exact_at(&mut buf, f.start.0)?,
            Code::File(file) => file.read_exact_at(&mut buf, f.file_offset)?,
        }
        Ok(buf)
    }
}

/// Whether a pattern names one place (`FUNCTION+OFFSET`, `0xADDRESS`) rather than functions.
fn names_one_place(pattern: &str) -> bool {
    let (_, rest) = split_binary(pattern);
    rest.starts_with("0x") || !matches!(split_offset(rest), Ok((_, None)))
}

/// Say whether `[OBJECT:]FUNCTION+OFFSET` or `[OBJECT:]0xADDRESS` can be probed.
fn check(symbols: &Symbols, maps: &[Mapping], code: &Code, place: &str, out: &mut dyn std::io::Write) -> Result<i32> {
    let wanted = parse_point(place).map_err(|e| anyhow::anyhow!("{e}"))?;
    let target = symbols.resolve(maps, &wanted)?;
    let (f, addr) = (&target.function, target.addr);
    let bytes = code.read(f).with_context(|| format!("cannot read the code of `{}`", f.name))?;
    let at = target.offset as usize;
    let here = format!("{addr} ({}:{}+{:#x})", f.object_file_name(), shown_name(f), target.offset);
    match analyze(&bytes, f.start, addr) {
        Ok(insn) => {
            let how = match plan(&insn, false) {
                ExecPlan::Emulate(_) => "emulated at the hit (one stop, no copy)",
                ExecPlan::Slot(SlotEnding::JumpBack) => "copied out of line, jumping back (one stop)",
                ExecPlan::Slot(SlotEnding::Trap) => "copied out of line, trapping after",
            };
            let window = can_optimize(&bytes, f.start, addr).and_then(|_| dprobe_sym::check_object_branches(f, addr));
            let jump = match window {
                Ok(_) => "; in process, jump-optimized (no trap)".to_owned(),
                Err(why) => format!("; in process, not jump-optimized: {why}"),
            };
            writeln!(out, "{here}: `{}` can be probed: {how}{jump}", describe(&bytes[at..], addr))?;
            if let Some(why) = kernel_uprobe_refusal(&bytes, f.start, addr, dprobe_kernel::kernel_optimizes_nop5()) {
                writeln!(out, "  but not by the kernel engine (-a): {why}")?;
            }
            if addr == f.start {
                let mut image = match code {
                    Code::Process(mem) => Some(Image::Process(mem)),
                    Code::File(file) => Image::file(file).ok(),
                };
                if let Some(image) = image.as_mut() {
                    writeln!(
                        out,
                        "  a return probe (ptrace, agent) watches its returns {}",
                        return_mode(symbols, image, f)
                    )?;
                }
                let kernel = kernel_return_mode(target.object(), f);
                writeln!(out, "  a return probe (kernel, -a) watches its returns {kernel}")?;
            }
            Ok(0)
        }
        Err(e) => {
            writeln!(out, "{here}: cannot be probed: {e}")?;
            Ok(1)
        }
    }
}
