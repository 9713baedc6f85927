//! Static probes (USDT) in `dprobe trace` and `dprobe list`: `usdt:BINARY:[PROVIDER:]NAME`
//! becomes one probe per site, at the site's address in the binary, with `$argN` replaced by
//! the site's own N-th argument (its size and sign the default type) and its semaphore passed
//! to the engine.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use dprobe_spec::{glob, ArgType, Fetch, NamedArg, ProbePoint, ProbeSpec};
use dprobe_sym::{usdt_probes, UsdtProbe};

use crate::expand::{after_target, binary_file, Named};

/// The static probes of `binary`, read from its file.
fn probes_of(text: &str, binary: &str) -> Result<(String, Vec<UsdtProbe>)> {
    let path = binary_file(text, binary)?.ok_or_else(|| {
        anyhow!("`{text}`: no library `{binary}` is loaded or in the library directories (give its path)")
    })?;
    let data = std::fs::read(&path).map_err(|e| anyhow!("`{text}`: cannot read `{path}`: {e}"))?;
    let probes = usdt_probes(&path, &data).map_err(|e| anyhow!("`{text}`: `{binary}`: {e}"))?;
    if probes.is_empty() {
        bail!("`{text}`: `{binary}` has no static probes (no .note.stapsdt section)");
    }
    Ok((path, probes))
}

/// The probes of `usdt:BINARY:[PROVIDER:]NAME ARGS` (`text`, parsed as `spec`).
pub fn expand(text: &str, spec: ProbeSpec, binary: &str, provider: Option<&str>, name: &str) -> Result<Vec<Named>> {
    let (path, probes) = probes_of(text, binary)?;
    let matches = |p: &&UsdtProbe| {
        provider.is_none_or(|pr| glob(pr.as_bytes(), p.provider.as_bytes())) && glob(name.as_bytes(), p.name.as_bytes())
    };
    let matching: Vec<&UsdtProbe> = probes.iter().filter(matches).collect();
    if matching.is_empty() {
        let mut known: Vec<String> = probes.iter().map(UsdtProbe::full_name).collect();
        known.sort();
        known.dedup();
        let wanted = provider.map_or_else(|| name.to_owned(), |p| format!("{p}:{name}"));
        bail!("`{text}`: no static probe `{wanted}` in `{binary}`; it has: {}", known.join(", "));
    }
    let mut sites: BTreeMap<String, usize> = BTreeMap::new();
    for p in &matching {
        *sites.entry(p.full_name()).or_default() += 1;
    }
    let glob_text = (matching.len() > 1).then(|| text.split_whitespace().next().unwrap_or(text).to_owned());
    matching
        .into_iter()
        .map(|p| {
            let mut spec = spec.clone();
            spec.args = arguments(text, &spec, p)?;
            spec.point = ProbePoint::User { binary: Some(path.clone()), function: format!("{:#x}", p.pc), offset: 0 };
            // Several sites of one probe are told apart by their addresses.
            let site = if sites[&p.full_name()] > 1 { format!("@{:#x}", p.pc) } else { String::new() };
            Ok(Named {
                spec,
                text: format!("usdt:{binary}:{}{site}{}", p.full_name(), after_target(text)),
                label: p.full_name(),
                semaphore: p.semaphore.clone(),
                glob: glob_text.clone(),
                // A site is inside a function.
                at_entry: false,
            })
        })
        .collect()
}

/// `spec`'s arguments at site `p`: each `$argN` becomes the site's N-th argument; one that is
/// fetched whole and has no written type takes the argument's size and sign.
fn arguments(text: &str, spec: &ProbeSpec, p: &UsdtProbe) -> Result<Vec<NamedArg>> {
    let mut out = Vec::new();
    for a in &spec.args {
        let mut arg = a.clone();
        arg.fetch = substitute(text, &a.fetch, p)?;
        if let Fetch::Arg(n) = a.fetch {
            let (fetch, ty) = site_arg(text, p, n)?;
            if a.ty == ArgType::String && matches!(fetch, Fetch::Deref { .. }) {
                // The argument's value, read from memory, is the string's address.
                arg.fetch = Fetch::Deref { offset: 0, inner: Box::new(fetch) };
            }
            if !a.typed {
                arg.ty = ty;
                arg.typed = true;
            }
        }
        out.push(arg);
    }
    Ok(out)
}

fn substitute(text: &str, f: &Fetch, p: &UsdtProbe) -> Result<Fetch> {
    Ok(match f {
        Fetch::Arg(n) => site_arg(text, p, *n)?.0,
        Fetch::Deref { offset, inner } => {
            Fetch::Deref { offset: *offset, inner: Box::new(substitute(text, inner, p)?) }
        }
        other => other.clone(),
    })
}

/// The site's `n`-th argument, or why it cannot be fetched.
fn site_arg(text: &str, p: &UsdtProbe, n: u32) -> Result<(Fetch, ArgType)> {
    let Some(a) = p.args.get(n as usize - 1) else {
        let has = match p.args.len() {
            0 => "no arguments".to_owned(),
            1 => format!("1 argument ({})", p.arg_text()),
            k => format!("{k} arguments ({})", p.arg_text()),
        };
        bail!("`{text}`: `$arg{n}`: the static probe {} has {has}", p.full_name());
    };
    a.fetch.clone().map_err(|why| anyhow!("`{text}`: `$arg{n}` of {} is `{}`: {why}", p.full_name(), a.text))
}

/// `dprobe list FILE 'usdt:GLOB'` (or `-p PID`: every file the process maps): each static
/// probe with its arguments and semaphore.
pub fn list(files: &[String], pattern: &str, out: &mut dyn std::io::Write) -> Result<i32> {
    let mut shown = 0;
    for path in files {
        let probes = if files.len() == 1 {
            probes_of(path, path)?.1
        } else {
            // Of a process's files, those without static probes are simply not listed.
            let Ok(data) = std::fs::read(path) else { continue };
            usdt_probes(path, &data).unwrap_or_default()
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        for p in &probes {
            let full = p.full_name();
            if !(glob(pattern.as_bytes(), full.as_bytes()) || glob(pattern.as_bytes(), p.name.as_bytes())) {
                continue;
            }
            let args: Vec<String> = (p.args.iter().enumerate())
                .map(|(i, a)| match &a.fetch {
                    Ok((_, ty)) => format!("$arg{}={}:{}", i + 1, a.text, type_name(*ty)),
                    Err(why) => format!("$arg{}={} (cannot be fetched: {why})", i + 1, a.text),
                })
                .collect();
            let semaphore = p.semaphore.as_ref().map(|s| format!(" (semaphore at {:#x})", s.addr)).unwrap_or_default();
            writeln!(out, "usdt:{file}:{full} at {:#x}{semaphore} {}", p.pc, args.join(" "))?;
            shown += 1;
        }
    }
    if shown == 0 {
        bail!("no static probe matches `{pattern}` in {}", files.join(", "));
    }
    Ok(0)
}

fn type_name(ty: ArgType) -> String {
    match ty {
        ArgType::S(b) => format!("s{b}"),
        ArgType::U(b) => format!("u{b}"),
        ArgType::X(b) => format!("x{b}"),
        ArgType::String => "string".into(),
    }
}
