//! From one probe spec to the probes it names, checked against the files before anything is
//! placed: a glob (`libc:str*`) becomes one probe per function, a static probe (`usdt:`) one
//! per site, anything else itself; a name that cannot be found is an error that says which
//! part of the spec is wrong, never a probe that silently never fires.

use anyhow::{anyhow, bail, Result};
use dprobe_arch::{analyze, kernel_uprobe_refusal, Addr};
use dprobe_spec::{ProbePoint, ProbeSpec};
use dprobe_sym::{Function, ObjectName, ResolveError, Semaphore, Symbols};

/// One probe a spec names.
pub struct Named {
    /// What the engines place.
    pub spec: ProbeSpec,
    /// The spec's text for this one probe (a glob's or a static probe's with its own target).
    pub text: String,
    /// What events call it (`openat`, `app:req`).
    pub label: String,
    /// A static probe's semaphore.
    pub semaphore: Option<Semaphore>,
    /// The glob it matched: a glob's function that cannot be placed is skipped, not fatal.
    pub glob: Option<String>,
    /// At a function's first instruction (`--latency` times such probes).
    pub at_entry: bool,
}

/// What expanding needs to know of the trace.
pub struct Context {
    /// The kernel engine places the probes (it refuses more places than the others).
    pub kernel: bool,
    /// The traced program's file, for globs without `BINARY:`.
    pub program: Option<String>,
    /// The most probes one spec may expand to.
    pub max_probes: usize,
}

/// The probes `spec` (parsed from `text`) names.
pub fn expand(text: &str, spec: ProbeSpec, cx: &Context) -> Result<Vec<Named>> {
    match &spec.point {
        ProbePoint::Usdt { binary, provider, name } => {
            let (binary, provider, name) = (binary.clone(), provider.clone(), name.clone());
            crate::usdt::expand(text, spec, &binary, provider.as_deref(), &name)
        }
        ProbePoint::User { binary, function, offset } if function.contains(['*', '?']) => {
            let (binary, function, offset) = (binary.clone(), function.clone(), *offset);
            expand_glob(text, spec, binary.as_deref(), &function, offset, cx)
        }
        ProbePoint::User { binary: Some(binary), function, offset } => {
            check_user(text, binary, function, *offset)?;
            Ok(vec![itself(text, spec)])
        }
        _ => Ok(vec![itself(text, spec)]),
    }
}

/// A spec that names one probe.
fn itself(text: &str, spec: ProbeSpec) -> Named {
    let (label, at_entry) = match &spec.point {
        ProbePoint::User { function, offset, .. } | ProbePoint::Kernel { function, offset } => {
            if *offset == 0 {
                (function.clone(), true)
            } else {
                (format!("{function}+{offset:#x}"), false)
            }
        }
        ProbePoint::Tracepoint { event, .. } => (event.clone(), false),
        ProbePoint::Usdt { name, .. } => (name.clone(), false),
        ProbePoint::Line { line, .. } => (line.to_string(), false),
    };
    Named { spec, text: text.to_owned(), label, semaphore: None, glob: None, at_entry }
}

/// The spec's text after its target (its fetch arguments, with the space before them).
pub fn after_target(text: &str) -> &str {
    let t = text.trim_start();
    &t[t.find(char::is_whitespace).unwrap_or(t.len())..]
}

/// The prefixes of the spec language, for telling a misspelt one from a library's name.
const PREFIXES: [&str; 3] = ["kernel", "tracepoint", "usdt"];

/// The file `binary` names: a path, which must be an ELF file, or a library name, looked for
/// among dprobe's own libraries and in the library directories (`None`: not found there; the
/// traced program may still load it).
pub fn binary_file(text: &str, binary: &str) -> Result<Option<String>> {
    let object = ObjectName::new(binary).map_err(|e| anyhow!("`{text}`: {e}"))?;
    match &object {
        ObjectName::Path(path) => {
            let mut head = [0u8; 4];
            let is_elf = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok_and(|()| head == *b"\x7fELF");
            if !is_elf {
                bail!("`{text}`: `{binary}` is not an ELF file (a program or a shared library)");
            }
            Ok(Some(path.clone()))
        }
        ObjectName::Name(name) => {
            let found = object.find_file();
            if found.is_none() {
                if let Some(prefix) = PREFIXES.iter().find(|p| close(name, p)) {
                    bail!(
                        "`{text}`: unknown prefix `{name}:` (did you mean `{prefix}:`?), and no library `{name}` is \
                         loaded or in the library directories"
                    );
                }
            }
            Ok(found)
        }
    }
}

/// Whether `word` is one or two typing mistakes away from `prefix` (not equal to it).
fn close(word: &str, prefix: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (word.chars().collect(), prefix.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut next = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            next.push((row[j] + usize::from(ca != cb)).min(row[j + 1] + 1).min(next[j] + 1));
        }
        row = next;
    }
    (1..=2).contains(&row[b.len()])
}

/// A named function (or `0xADDR`) in a file the user gave by its path must be there.
fn check_user(text: &str, binary: &str, function: &str, offset: u64) -> Result<()> {
    let Some(path) = binary_file(text, binary)? else { return Ok(()) };
    if !binary.contains('/') {
        // A library by name: the traced program may load another file of that name; its
        // engine resolves it there.
        return Ok(());
    }
    let symbols = Symbols::load_file(&path).map_err(|e| anyhow!("`{text}`: cannot read `{binary}`: {e}"))?;
    match symbols.resolve_name(&[], None, function, offset) {
        Ok(_) => Ok(()),
        // A function the compiler inlined everywhere has no symbol, only its inlined copies.
        Err(ResolveError::SymbolNotFound { .. }) if crate::sites::has_inlined_copies(&path, function) => Ok(()),
        Err(ResolveError::SymbolNotFound { .. }) => bail!("`{text}`: no function `{function}` in `{binary}`"),
        Err(e) => bail!("`{text}`: {e}"),
    }
}

/// `[BINARY:]GLOB[+OFFSET]`: one probe per function of the binary (the traced program without
/// BINARY) that matches, under the same name rules as `dprobe list`; functions that cannot be
/// probed are listed with the reason and left out.
fn expand_glob(
    text: &str,
    spec: ProbeSpec,
    binary: Option<&str>,
    glob: &str,
    offset: u64,
    cx: &Context,
) -> Result<Vec<Named>> {
    let target = text.split_whitespace().next().unwrap_or(text);
    let path = match binary {
        Some(b) => binary_file(text, b)?.ok_or_else(|| {
            anyhow!(
                "`{text}`: cannot list the functions of `{b}`: no library of that name is loaded or in the \
                 library directories (give its path)"
            )
        })?,
        None => cx.program.clone().ok_or_else(|| {
            anyhow!("`{text}`: a glob without BINARY: matches the traced program's functions; give BINARY:{glob}")
        })?,
    };
    let symbols = Symbols::load_file(&path).map_err(|e| anyhow!("`{text}`: cannot read `{path}`: {e}"))?;
    // A C++ operator (`operator*`) is a name, not a glob.
    if symbols.find_in(None, glob).is_some() {
        let mut one = itself(text, spec);
        if let (None, ProbePoint::User { binary, .. }) = (binary, &mut one.spec.point) {
            *binary = Some(path);
        }
        return Ok(vec![one]);
    }
    let mut matched: Vec<&Function> = symbols.functions().iter().filter(|f| f.matches_glob(glob)).collect();
    // Aliases (`open`, `open64`, `__open`) are one function: probed once.
    matched.dedup_by_key(|f| f.start);
    if matched.is_empty() {
        bail!("`{text}`: no function matches `{glob}` in `{path}`");
    }
    if matched.len() > cx.max_probes {
        bail!(
            "`{text}`: `{glob}` matches {} functions, more than --max-probes ({}); narrow it or raise --max-probes",
            matched.len(),
            cx.max_probes
        );
    }
    let code = std::fs::read(&path).map_err(|e| anyhow!("`{text}`: cannot read `{path}`: {e}"))?;
    let short = |f: &Function| f.short_name().unwrap_or(&f.name).to_owned();
    let mut times: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for f in &matched {
        *times.entry(short(f)).or_default() += 1;
    }
    let shown_binary = binary.map_or_else(|| path.rsplit('/').next().unwrap_or(&path).to_owned(), str::to_owned);
    let mut named = Vec::new();
    let mut skipped = Vec::new();
    for f in matched {
        // Two functions of one name (two versions, two static functions): told apart by
        // version, or else by address.
        let name = match (times[&short(f)], &f.version) {
            (1, _) => short(f),
            (_, Some(_)) => f.versioned_name(),
            (_, None) => format!("{}@{:#x}", short(f), f.start.0),
        };
        if let Err(why) = probe_able(f, offset, &code, cx.kernel, &symbols) {
            skipped.push(format!("{name}: {why}"));
            continue;
        }
        // By name where the name finds this very function (it may be another file of that
        // library in the traced program); by its address in the file where it does not.
        let by_name = symbols.find_in(None, &f.name).is_some_and(|g| g.start == f.start);
        let function = if by_name { f.name.to_string() } else { format!("{:#x}", f.start.0) };
        let mut spec = spec.clone();
        spec.point =
            ProbePoint::User { binary: Some(binary.map_or_else(|| path.clone(), str::to_owned)), function, offset };
        let label = if offset == 0 { name.clone() } else { format!("{name}+{offset:#x}") };
        let text = format!("{shown_binary}:{label}{}", after_target(text));
        let glob = Some(target.to_owned());
        named.push(Named { spec, text, label, semaphore: None, glob, at_entry: offset == 0 });
    }
    if !skipped.is_empty() {
        eprintln!("dprobe: `{target}`: {} of the matching functions cannot be probed, left out:", skipped.len());
        for s in &skipped {
            eprintln!("  {s}");
        }
    }
    if named.is_empty() {
        bail!("`{text}`: none of the {} functions that match `{glob}` can be probed", skipped.len());
    }
    Ok(named)
}

/// Whether function `f` can be probed `offset` bytes in, from its code in the file.
fn probe_able(f: &Function, offset: u64, file: &[u8], kernel: bool, symbols: &Symbols) -> Result<(), String> {
    // The kernel engine probes the implementation an indirect function stands for
    // (`strchr`: `__strchr_evex`), so that is the code the kernel's rules apply to.
    let implementation;
    let f = if kernel && f.ifunc {
        implementation = symbols.resolve_name(&[], None, &f.name, offset).map_err(|e| e.to_string())?.function;
        &implementation
    } else {
        f
    };
    if offset >= f.size {
        return Err(format!("offset {offset:#x} is past its end ({} bytes)", f.size));
    }
    let code = usize::try_from(f.file_offset)
        .ok()
        .and_then(|start| file.get(start..start.checked_add(f.size as usize)?))
        .ok_or("its code is not in the file")?;
    let addr = Addr(f.start.0 + offset);
    analyze(code, f.start, addr).map_err(|e| e.to_string())?;
    if kernel {
        if let Some(why) = kernel_uprobe_refusal(code, f.start, addr, dprobe_kernel::kernel_optimizes_nop5()) {
            return Err(format!("not by the kernel engine: {why}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_prefixes_are_close_and_library_names_are_not() {
        assert!(close("kernal", "kernel"));
        assert!(!close("kprobe", "kernel"));
        assert!(close("tracepiont", "tracepoint"));
        assert!(close("usd", "usdt"));
        assert!(!close("usdt", "usdt"));
        assert!(!close("libc", "usdt"));
        assert!(!close("libm", "kernel"));
    }

    #[test]
    fn the_arguments_after_the_target() {
        assert_eq!(after_target("libc:str* a=$arg1 b=$arg2"), " a=$arg1 b=$arg2");
        assert_eq!(after_target("libc:str*"), "");
    }
}
