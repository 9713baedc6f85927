//! Where a probe goes when its binary's debug information says more than its symbols: a
//! source line (each copy of its code), and a function the compiler inlined into its
//! callers (each inlined copy, besides the out-of-line one). Such a probe has several sites,
//! which the engines place as one probe ([`dprobe_core::MultiSite`]).

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, Result};
use dprobe_dwarf::{find_function, find_functions, DebugInfo, FunctionInfo, LineError, LineTable};
use dprobe_spec::{ProbeKind, ProbePoint, ProbeSpec, SourceLine};
use dprobe_sym::{read_maps_of, ObjectName};

/// The program being traced, to find a `BINARY` that names it (or none).
#[derive(Debug, Clone, Copy)]
pub enum Traced<'a> {
    /// A command dprobe starts (its program, found in `PATH`).
    Command(&'a str),
    /// A running process.
    Process(i32),
    /// Nothing in particular (system-wide).
    Nothing,
}

/// A binary's debug information, read once per trace, and what was found in it.
struct Debug {
    info: DebugInfo,
    lines: Option<LineTable>,
    functions: HashMap<String, Option<FunctionInfo>>,
}

/// The debug information of the binaries probes name, read once each.
#[derive(Default)]
pub struct DebugFiles {
    by_path: HashMap<String, Option<Rc<std::cell::RefCell<Debug>>>>,
}

impl DebugFiles {
    /// The debug information of `path`; `None` when it has none.
    fn get(&mut self, path: &str) -> Result<Option<Rc<std::cell::RefCell<Debug>>>> {
        if let Some(d) = self.by_path.get(path) {
            return Ok(d.clone());
        }
        let info = DebugInfo::load(path).map_err(|e| anyhow!("{e}"))?;
        let debug =
            info.map(|info| Rc::new(std::cell::RefCell::new(Debug { info, lines: None, functions: HashMap::new() })));
        self.by_path.insert(path.to_owned(), debug.clone());
        Ok(debug)
    }

    /// Look up, in one pass over each binary's debug information, every function that
    /// `specs` name (a glob's hundreds of probes read a binary once).
    pub fn prefetch(&mut self, specs: &[&ProbeSpec], traced: Traced<'_>) {
        let mut wanted: HashMap<String, Vec<&str>> = HashMap::new();
        for spec in specs {
            let (binary, function) = match &spec.point {
                ProbePoint::User { binary, function, offset: 0 } if !function.starts_with("0x") => (binary, function),
                ProbePoint::Line { binary, line: SourceLine::InFunction { function, .. } } => (binary, function),
                _ => continue,
            };
            if let Some(path) = object_path(binary.as_deref(), traced) {
                wanted.entry(path).or_default().push(function);
            }
        }
        for (path, names) in wanted {
            let Ok(Some(debug)) = self.get(&path) else { continue };
            let mut debug = debug.borrow_mut();
            let Ok(mut found) = find_functions(debug.info.dwarf(), &names) else { continue };
            for name in names {
                let f = found.remove(name);
                debug.functions.entry(name.to_owned()).or_insert(f);
            }
        }
    }
}

impl Debug {
    /// The function `name`, from what [`DebugFiles::prefetch`] found or looked up now.
    fn function(&mut self, name: &str) -> Result<Option<FunctionInfo>> {
        if let Some(f) = self.functions.get(name) {
            return Ok(f.clone());
        }
        let f = find_function(self.info.dwarf(), name).map_err(|e| anyhow!("reading its debug information: {e}"))?;
        self.functions.insert(name.to_owned(), f.clone());
        Ok(f)
    }

    fn lines(&mut self) -> Result<&LineTable> {
        if self.lines.is_none() {
            self.lines = Some(LineTable::load(self.info.dwarf()).map_err(|e| anyhow!("reading its line tables: {e}"))?);
        }
        Ok(self.lines.as_ref().expect("loaded"))
    }
}

/// What the debug information adds to a probe.
#[derive(Debug, Default)]
pub struct Sites {
    /// Where to place it (none: at its own target).
    pub targets: Vec<ProbePoint>,
    /// Said to the user before tracing.
    pub note: Option<String>,
}

/// The file of the object `binary` names (the traced program without one): a path as is;
/// a file or library name among the traced process's objects, then the command's program,
/// then the libraries dprobe finds itself.
pub fn object_path(binary: Option<&str>, traced: Traced<'_>) -> Option<String> {
    let canonical = |p: &str| std::fs::canonicalize(p).ok().map(|p| p.to_string_lossy().into_owned());
    let Some(binary) = binary else {
        return match traced {
            Traced::Command(program) => canonical(program),
            Traced::Process(pid) => canonical(&format!("/proc/{pid}/exe")),
            Traced::Nothing => None,
        };
    };
    let name = ObjectName::new(binary).ok()?;
    if let ObjectName::Path(p) = &name {
        return Some(p.clone());
    }
    match traced {
        Traced::Process(pid) => {
            let maps = read_maps_of(pid as u32).ok()?;
            if let Some(p) =
                maps.iter().filter_map(|m| m.path.as_deref()).find(|p| p.starts_with('/') && name.matches(p))
            {
                return Some(p.to_owned());
            }
        }
        Traced::Command(program) => {
            if let Some(p) = canonical(program).filter(|p| name.matches(p)) {
                return Some(p);
            }
        }
        Traced::Nothing => {}
    }
    name.find_file()
}

/// Whether the debug information of `path` knows copies of `function` inlined into callers.
pub fn has_inlined_copies(path: &str, function: &str) -> bool {
    let Ok(Some(info)) = DebugInfo::load(path) else { return false };
    find_function(info.dwarf(), function).is_ok_and(|f| f.is_some_and(|f| !f.inlined.is_empty()))
}

fn address_site(path: &str, address: u64) -> ProbePoint {
    ProbePoint::User { binary: Some(path.to_owned()), function: format!("{address:#x}"), offset: 0 }
}

/// The sites of `spec` (for an entry probe timed to its return when `timed`).
pub fn sites(spec: &ProbeSpec, timed: bool, traced: Traced<'_>, files: &mut DebugFiles) -> Result<Sites> {
    match &spec.point {
        ProbePoint::Line { binary, line } => line_sites(binary.as_deref(), line, traced, files),
        ProbePoint::User { binary, function, offset: 0 } if !function.starts_with("0x") => {
            let Some(path) = object_path(binary.as_deref(), traced) else { return Ok(Sites::default()) };
            // A function's inlined copies are a bonus: a binary without readable debug
            // information is probed by its symbols alone.
            let Ok(Some(debug)) = files.get(&path) else { return Ok(Sites::default()) };
            let Ok(Some(f)) = debug.borrow_mut().function(function) else { return Ok(Sites::default()) };
            inlined_sites(spec, timed, &path, function, &f)
        }
        _ => Ok(Sites::default()),
    }
}

/// A function with inlined copies: each copy's entry, and the out-of-line copy by its name;
/// one with out-of-line copies in several files (each its own `static` copy): each one's
/// entry.
fn inlined_sites(spec: &ProbeSpec, timed: bool, path: &str, function: &str, f: &FunctionInfo) -> Result<Sites> {
    let n = f.inlined.len();
    let entry_only = spec.kind != ProbeKind::Return && !timed;
    if n == 0 && !(entry_only && f.out_of_line_entries.len() > 1) {
        return Ok(Sites::default());
    }
    let copies = if n == 1 { "copy".to_owned() } else { format!("{n} copies") };
    if spec.kind == ProbeKind::Return || timed {
        let what = if spec.kind == ProbeKind::Return { "return-probed" } else { "timed" };
        let why = "a copy inlined into its caller has no call and no return of its own";
        if f.out_of_line.is_empty() {
            bail!(
                "`{function}` has no out-of-line copy to be {what}: every call of it was inlined ({copies}), and {why}; \
                 probe its entry (`{function}`) or its lines (`{function}:+N`)"
            );
        }
        let these = if n == 1 { "the inlined copy".to_owned() } else { format!("the {n} inlined copies") };
        let are = if n == 1 { "is" } else { "are" };
        let note = format!("{these} of `{function}` {are} not {what} ({why}): only calls of its out-of-line copy are");
        return Ok(Sites { targets: Vec::new(), note: Some(note) });
    }
    let mut targets = Vec::new();
    if f.out_of_line_entries.len() > 1 {
        targets.extend(f.out_of_line_entries.iter().map(|a| address_site(path, *a)));
    } else if !f.out_of_line.is_empty() {
        targets.push(spec.point.clone());
    }
    targets.extend(f.inlined.iter().map(|c| address_site(path, c.entry)));
    Ok(Sites { targets, note: None })
}

/// A source line: the start of each copy of its code.
fn line_sites(binary: Option<&str>, line: &SourceLine, traced: Traced<'_>, files: &mut DebugFiles) -> Result<Sites> {
    let (path, addresses) = line_addresses(binary, line, traced, files)?;
    Ok(Sites { targets: addresses.into_iter().map(|a| address_site(&path, a)).collect(), note: None })
}

/// The file a source line is in, and the link-time address of each copy of its code.
pub fn line_addresses(
    binary: Option<&str>,
    line: &SourceLine,
    traced: Traced<'_>,
    files: &mut DebugFiles,
) -> Result<(String, Vec<u64>)> {
    if let Some(b) = binary {
        // A path that names no file is a typo, said as such.
        ObjectName::new(b)?;
    }
    let path = object_path(binary, traced).ok_or_else(|| match binary {
        Some(b) => anyhow!("cannot find `{b}` to read its debug information"),
        None => anyhow!("a source line needs its binary: BINARY:{line}"),
    })?;
    let debug = files.get(&path)?.ok_or_else(|| {
        anyhow!("`{path}` has no debug information (build it with -g, or install its debug file) to find `{line}`")
    })?;
    let mut debug = debug.borrow_mut();
    let addresses = match line {
        SourceLine::File { file, line } => {
            let table = debug.lines()?;
            let file = table.find_file(file).map_err(|e| anyhow!("{e}"))?.to_owned();
            table.line_addresses(&file, *line).map_err(|e| anyhow!("{e}"))?
        }
        SourceLine::InFunction { function, relative } => {
            let f = debug
                .function(function)
                .map_err(|e| anyhow!("`{path}`: {e}"))?
                .ok_or_else(|| anyhow!("no function `{function}` in the debug information of `{path}`"))?;
            let table = debug.lines()?;
            let Some((file, first, last)) = f.line_span(table) else {
                bail!("the debug information does not say where `{function}` is defined")
            };
            let wanted = first.saturating_add(*relative);
            if wanted > last {
                bail!(
                    "`{line}` is past the end of `{function}`: its lines are +0 to +{} ({first}-{last})",
                    last - first
                );
            }
            table.line_addresses(file, wanted).map_err(|e| relative_no_code(e, function, first))?
        }
    };
    drop(debug);
    Ok((path, addresses))
}

/// A line of a function with no code, said in lines relative to the function too.
fn relative_no_code(e: LineError, function: &str, first: u32) -> anyhow::Error {
    let LineError::NoCode { file, line, above, below } = &e else { return anyhow!("{e}") };
    let rel = |l: &u32| match l.checked_sub(first) {
        Some(r) => format!("{function}:+{r}"),
        None => format!("{l}"),
    };
    let near: Vec<String> =
        [above.map(|a| format!("{} (above)", rel(&a))), below.map(|b| format!("{} (below)", rel(&b)))]
            .into_iter()
            .flatten()
            .collect();
    let near = if near.is_empty() {
        "it has no line with code".to_owned()
    } else {
        format!("the nearest lines with code are {}", near.join(" and "))
    };
    anyhow!("{function}:+{} ({file}:{line}) has no code; {near}", line - first)
}
