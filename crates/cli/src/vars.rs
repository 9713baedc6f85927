//! Variables by name in probe specs (`req`, `req->hdr.len`, `argv[1]`, `$params`): read from
//! the binary's DWARF and turned into the registers and memory every engine fetches, before
//! anything is placed. A function-entry probe that needs stack slots the prologue fills is
//! moved past the prologue.

use anyhow::{anyhow, bail, Result};
use dprobe_dwarf::{fetch_text, place_vars, place_vars_at_return, DebugInfo, Request, Search, Shown};
use dprobe_spec::{Fetch, NamedArg, ProbeKind, ProbePoint, ProbeSpec, SourceLine};
use dprobe_sym::{ObjectName, Symbols};

use crate::options::{ListArgs, TraceArgs};
use crate::sites::{line_addresses, DebugFiles, Traced};

/// Whether the spec names variables.
pub fn has_vars(spec: &ProbeSpec) -> bool {
    spec.args.iter().any(|a| matches!(a.fetch, Fetch::Var { .. }))
}

/// The file whose DWARF describes the probe: its `BINARY`, or the program traced.
fn binary_file(binary: Option<&str>, args: &TraceArgs) -> Result<String> {
    if let Some(b) = binary {
        let name = ObjectName::new(b)?;
        return name.find_file().ok_or_else(|| anyhow!("`{b}`: no such file or library"));
    }
    if let Some(pid) = args.pid {
        return Ok(std::fs::read_link(format!("/proc/{pid}/exe"))?.to_string_lossy().into_owned());
    }
    match args.command.first() {
        Some(program) => crate::trace::find_program(program),
        None => bail!("variables by name need the binary: write BINARY:FUNCTION"),
    }
}

/// How to get DWARF for `file` when there is none.
fn no_dwarf(file: &str) -> String {
    let places = Search::default().places(file.as_ref()).unwrap_or_default();
    let places: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    format!(
        "no DWARF for {file} (looked in {}): rebuild it with -g, or install its debug symbols (Debian: its -dbgsym \
         package; `debuginfod-find debuginfo {file}` fills the local debuginfod cache)",
        places.join(", ")
    )
}

/// Turn the spec's variables into fetches (moving an entry probe past the prologue when
/// needed); returns how each argument is shown.
pub fn resolve(text: &str, spec: &mut ProbeSpec, args: &TraceArgs) -> Result<Vec<Shown>> {
    if !has_vars(spec) {
        return Ok(vec![Shown::Plain; spec.args.len()]);
    }
    if spec.kind == ProbeKind::Return {
        return resolve_at_return(text, spec, args);
    }
    if let ProbePoint::Line { binary, line } = &spec.point {
        let (binary, line) = (binary.clone(), line.clone());
        return resolve_at_line(text, spec, binary.as_deref(), &line, args);
    }
    let ProbePoint::User { binary, function, offset } = &mut spec.point else {
        bail!("`{text}`: variables by name are read from a user-space binary's DWARF");
    };
    let file = binary_file(binary.as_deref(), args)?;
    let info = DebugInfo::load(&file)?.ok_or_else(|| anyhow!("`{text}`: {}", no_dwarf(&file)))?;
    let request = |a: &NamedArg| match &a.fetch {
        Fetch::Var { path } => Some(Request { path: path.clone(), name: a.name.clone(), ty: a.typed.then_some(a.ty) }),
        _ => None,
    };
    let requests: Vec<Request> = spec.args.iter().filter_map(request).collect();
    let wanted = if *offset == 0 { None } else { Some(*offset) };
    let at = place_vars(&info, function, wanted, &requests).map_err(|e| anyhow!("`{text}`: {e}"))?;
    let mut out_args = Vec::new();
    let mut shown = Vec::new();
    for a in &spec.args {
        let Some(q) = request(a) else {
            out_args.push(a.clone());
            shown.push(Shown::Plain);
            continue;
        };
        let placed = place_vars(&info, function, Some(at.offset), &[q]).map_err(|e| anyhow!("`{text}`: {e}"))?;
        for (name, why) in &placed.skipped {
            eprintln!("dprobe: `{text}`: $params leaves out `{name}`: {why}");
        }
        for v in placed.args {
            // `$params` does not repeat a parameter named on its own.
            if spec.args.iter().any(|o| o.name == v.name && !std::ptr::eq(o, a)) && a.name == "$params" {
                continue;
            }
            out_args.push(NamedArg::typed(v.name, v.fetch, v.ty));
            shown.push(v.shown);
        }
    }
    if *offset == 0 && at.offset != 0 {
        *offset = at.offset;
    }
    spec.args = out_args;
    Ok(shown)
}

/// The spec's variables at a function's return: its globals and statics, read through where
/// its binary is (its parameters and locals are gone, and refused).
fn resolve_at_return(text: &str, spec: &mut ProbeSpec, args: &TraceArgs) -> Result<Vec<Shown>> {
    let ProbePoint::User { binary, function, offset: 0 } = &spec.point else {
        bail!("`{text}`: variables by name at %return are read from a user-space function's DWARF");
    };
    let file = binary_file(binary.as_deref(), args)?;
    let info = DebugInfo::load(&file)?.ok_or_else(|| anyhow!("`{text}`: {}", no_dwarf(&file)))?;
    let symbols = Symbols::load_file(&file).map_err(|e| anyhow!("`{text}`: cannot read `{file}`: {e}"))?;
    let f = symbols.find_in(None, function).ok_or_else(|| anyhow!("`{text}`: no function `{function}` in `{file}`"))?;
    // The function's link-time address minus its file offset: what turns a static's link-time
    // address into an offset from where the file is (`@+OFFSET`).
    let delta = f.start.0.wrapping_sub(f.bias).wrapping_sub(f.file_offset);
    let mut out_args = Vec::new();
    let mut shown = Vec::new();
    for a in &spec.args {
        let Fetch::Var { path } = &a.fetch else {
            out_args.push(a.clone());
            shown.push(Shown::Plain);
            continue;
        };
        let request = Request { path: path.clone(), name: a.name.clone(), ty: a.typed.then_some(a.ty) };
        let placed = place_vars_at_return(&info, function, delta, &[request]).map_err(|e| anyhow!("`{text}`: {e}"))?;
        for v in placed {
            out_args.push(NamedArg::typed(v.name, v.fetch, v.ty));
            shown.push(v.shown);
        }
    }
    spec.args = out_args;
    Ok(shown)
}

/// The spec's variables read at a source line: where they are at the line's address, the
/// same at every copy of its code (or refused, naming the copies that differ).
fn resolve_at_line(
    text: &str,
    spec: &mut ProbeSpec,
    binary: Option<&str>,
    line: &SourceLine,
    args: &TraceArgs,
) -> Result<Vec<Shown>> {
    let command = args.command.first().and_then(|p| crate::trace::find_program(p).ok());
    let traced = match (&command, args.pid) {
        (_, Some(pid)) => Traced::Process(pid),
        (Some(program), None) => Traced::Command(program),
        (None, None) => Traced::Nothing,
    };
    let (file, addresses) =
        line_addresses(binary, line, traced, &mut DebugFiles::default()).map_err(|e| anyhow!("`{text}`: {e}"))?;
    let info = DebugInfo::load(&file)?.ok_or_else(|| anyhow!("`{text}`: {}", no_dwarf(&file)))?;
    let mut requests = Vec::new();
    for a in &spec.args {
        match &a.fetch {
            Fetch::Var { path } if path == "$params" => {
                bail!("`{text}`: $params is for a function's probe; name the variables")
            }
            Fetch::Var { path } => {
                requests.push(Some(Request { path: path.clone(), name: a.name.clone(), ty: a.typed.then_some(a.ty) }))
            }
            _ => requests.push(None),
        }
    }
    let wanted: Vec<Request> = requests.iter().flatten().cloned().collect();
    let mut first: Option<(u64, Vec<dprobe_dwarf::VarFetch>)> = None;
    for &address in &addresses {
        let f = info
            .function_at(address)
            .map_err(|e| anyhow!("`{text}`: {e}"))?
            .ok_or_else(|| anyhow!("`{text}`: no function in the DWARF holds {address:#x}, where `{line}` is"))?;
        let placed = dprobe_dwarf::place_vars_in(&info, &f, Some(address.wrapping_sub(f.low_pc)), &wanted)
            .map_err(|e| anyhow!("`{text}` (in {} at {address:#x}): {e}", f.name))?;
        match &first {
            None => first = Some((address, placed.args)),
            Some((at, args)) => {
                let same = |a: &dprobe_dwarf::VarFetch, b: &dprobe_dwarf::VarFetch| a.fetch == b.fetch && a.ty == b.ty;
                if let Some((a, b)) = args.iter().zip(&placed.args).find(|(a, b)| !same(a, b)) {
                    bail!(
                        "`{text}`: the line has {} copies of code, and `{}` is in different places in them ({} at \
                         {at:#x}, {} at {address:#x}); probe one copy by FUNCTION+OFFSET",
                        addresses.len(),
                        a.name,
                        fetch_text(&a.fetch),
                        fetch_text(&b.fetch),
                    );
                }
            }
        }
    }
    let mut fetched = first.map(|(_, a)| a).unwrap_or_default().into_iter();
    let mut out_args = Vec::new();
    let mut shown = Vec::new();
    for (a, q) in spec.args.iter().zip(&requests) {
        match q.as_ref().and_then(|_| fetched.next()) {
            Some(v) => {
                out_args.push(NamedArg::typed(v.name, v.fetch, v.ty));
                shown.push(v.shown);
            }
            _ => {
                out_args.push(a.clone());
                shown.push(Shown::Plain);
            }
        }
    }
    spec.args = out_args;
    Ok(shown)
}

/// `dprobe list FILE FUNCTION --args`: the signature, then each variable with its type and
/// where a probe on the function reads it.
pub fn list_args(args: &ListArgs, out: &mut dyn std::io::Write) -> Result<i32> {
    let file = match (args.pid, args.file()) {
        (Some(pid), _) => std::fs::read_link(format!("/proc/{pid}/exe"))?.to_string_lossy().into_owned(),
        (None, Some(file)) => ObjectName::new(file)?.find_file().ok_or_else(|| anyhow!("`{file}`: no such file"))?,
        (None, None) => bail!("give a FILE (or -p PID) and a FUNCTION"),
    };
    let Some(function) = args.pattern() else { bail!("--args needs a FUNCTION") };
    let info = DebugInfo::load(&file)?.ok_or_else(|| anyhow!("{}", no_dwarf(&file)))?;
    let s = dprobe_dwarf::signature(&info, function)?;
    let params: Vec<String> = s.params.iter().map(|p| format!("{} {}", p.type_name, p.name)).collect();
    writeln!(out, "{} {}({})", s.returns, s.name, params.join(", "))?;
    let place =
        if s.offset == 0 { "at the entry".to_owned() } else { format!("at +{:#x}, after the prologue", s.offset) };
    writeln!(out, "  variables {place} (DWARF {}):", info.origin())?;
    let width = s.params.iter().chain(&s.locals).map(|v| v.type_name.len() + v.name.len() + 1).max().unwrap_or(0);
    for (kind, vars) in [("param", &s.params), ("local", &s.locals)] {
        for v in vars {
            let decl = format!("{} {}", v.type_name, v.name);
            let at = match &v.location {
                Ok(l) => l.clone(),
                Err(why) => format!("({why})"),
            };
            writeln!(out, "    {kind}  {decl:<width$}  {at}")?;
        }
    }
    Ok(0)
}
