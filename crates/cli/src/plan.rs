//! From the command line's probe specs to what the engines place: parsed specs, how each
//! prints, and the checks that do not depend on an engine.

use anyhow::{bail, Result};
use dprobe_dwarf::Shown;
use dprobe_spec::{parse_filter, parse_probe, ArgType, Fetch, Filter, NamedArg, ProbeKind, ProbePoint};

use crate::expand::{expand, Context, Named};
use crate::options::{Engine, TraceArgs};
use crate::output::ProbeInfo;
use crate::sites::{sites, DebugFiles, Traced};

/// A parsed probe.
pub struct Planned {
    /// The probe its spec names (the spec with a default `ret=$retval` for return probes
    /// that fetch nothing of it; a static probe's semaphore is raised while it is placed).
    pub probe: Named,
    /// How it prints.
    pub info: ProbeInfo,
    /// Where it is placed when not at its target alone: each copy of a source line's code,
    /// or a function's out-of-line and inlined copies.
    pub sites: Vec<ProbePoint>,
    /// Said to the user before tracing (copies that a return probe does not reach).
    pub note: Option<String>,
}

impl Planned {
    /// A kernel function or a tracepoint: only the kernel engine can place it.
    pub fn needs_kernel(&self) -> bool {
        matches!(self.probe.spec.point, ProbePoint::Kernel { .. } | ProbePoint::Tracepoint { .. })
    }
}

/// Parse every `PROBE` argument, and expand each into the probes it names.
pub fn plan_probes(args: &TraceArgs) -> Result<Vec<Planned>> {
    let cx = Context {
        kernel: args.system_wide || args.engine == Some(Engine::Kernel),
        program: traced_program(args),
        max_probes: args.max_probes,
    };
    // The traced program, to read its debug information (one not found is said later).
    let command = args.command.first().and_then(|p| crate::trace::find_program(p).ok());
    let traced = match (&command, args.pid) {
        (_, Some(pid)) => Traced::Process(pid),
        (Some(program), None) => Traced::Command(program),
        (None, None) => Traced::Nothing,
    };
    let mut all = Vec::new();
    for text in &args.probes {
        let mut spec = parse_probe(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Variables by name become registers and memory; a function-entry probe may move past
        // the prologue, and is still shown and timed as the function's entry.
        let entry_function = match &spec.point {
            ProbePoint::User { function, offset: 0, .. } => Some(function.clone()),
            _ => None,
        };
        let shown = crate::vars::resolve(text, &mut spec, args)?;
        let moved = entry_function.is_some() && !matches!(spec.point, ProbePoint::User { offset: 0, .. });
        for mut named in expand(text, spec, &cx)? {
            if let (true, Some(f)) = (moved, &entry_function) {
                named.label = f.clone();
                named.at_entry = true;
            }
            all.push((named, shown.clone()));
        }
        if all.len() > args.max_probes {
            bail!(
                "`{text}`: the probes come to {}, more than --max-probes ({}); narrow the globs or raise \
                 --max-probes",
                all.len(),
                args.max_probes
            );
        }
    }
    // Source lines and inlined copies: each probe's sites, from the debug information.
    let mut debug_files = DebugFiles::default();
    debug_files.prefetch(&all.iter().map(|(n, _)| &n.spec).collect::<Vec<_>>(), traced);
    let mut planned = Vec::new();
    for (named, shown) in all {
        let found = match (sites(&named.spec, args.latency && named.at_entry, traced, &mut debug_files), &named.glob) {
            (Ok(found), _) => found,
            // One match of a glob that cannot be probed (a function only ever inlined) is
            // left out, as one that cannot be placed is.
            (Err(e), Some(glob)) => {
                eprintln!("dprobe: `{glob}`: {} left out: {e}", named.label);
                continue;
            }
            (Err(e), None) => bail!("`{}`: {e}", named.text),
        };
        let mut p = plan_one(named, shown);
        (p.sites, p.note) = (found.targets, found.note);
        planned.push(p);
    }
    if args.latency {
        if let Some(p) = planned.iter().find(|p| !p.probe.at_entry) {
            bail!("--latency times functions from entry to return; `{}` is not at a function's entry", p.info.spec);
        }
    }
    Ok(planned)
}

/// The traced program's file: the command's, or the process's (`-p`).
fn traced_program(args: &TraceArgs) -> Option<String> {
    if let Some(pid) = args.pid {
        return std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned());
    }
    let program = crate::trace::find_program(args.command.first()?).ok()?;
    std::fs::canonicalize(program).ok().map(|p| p.to_string_lossy().into_owned())
}

fn plan_one(mut probe: Named, mut shown: Vec<Shown>) -> Planned {
    let spec = &mut probe.spec;
    let is_return = spec.kind == ProbeKind::Return;
    if is_return && !spec.args.iter().any(|a| a.fetch == Fetch::RetVal) {
        // A return probe shows its return value unless told otherwise.
        spec.args.insert(0, NamedArg::typed("ret", Fetch::RetVal, ArgType::S(64)));
        shown.insert(0, Shown::Plain);
    }
    let retval_index = spec.args.iter().position(|a| a.fetch == Fetch::RetVal);
    let errno_index = spec.args.iter().position(|a| a.fetch == Fetch::Errno);
    let tracepoint = matches!(spec.point, ProbePoint::Tracepoint { .. });
    let info = ProbeInfo {
        spec: probe.text.clone(),
        label: probe.label.clone(),
        args: spec.args.clone(),
        shown,
        is_return,
        retval_index,
        errno_index,
        tracepoint,
        errno_in_retval: matches!(spec.point, ProbePoint::Kernel { .. }),
    };
    Planned { probe, info, sites: Vec::new(), note: None }
}

/// `--hist NAME` must name a fetched value, and so must `--by NAME` (tracepoint fields are
/// checked once known); `--by` splits an aggregate.
pub fn check_hist(args: &TraceArgs, planned: &[Planned]) -> Result<()> {
    let known: Vec<&str> = planned.iter().flat_map(|p| p.info.args.iter().map(|a| a.name.as_str())).collect();
    for field in &args.hist {
        if !known.contains(&field.as_str()) {
            bail!("--hist {field}: no probe fetches a value named `{field}` (fetched: {})", list_or_none(&known));
        }
    }
    let aggregates = args.count || args.latency || !args.hist.is_empty();
    if !args.by.is_empty() && !aggregates {
        bail!("--by splits --count, --hist or --latency; give one of them");
    }
    crate::keys::parse_by(&args.by, &known)?;
    Ok(())
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Parse `--filter` against the fields the probes fetch.
pub fn parse_the_filter(args: &TraceArgs, planned: &[Planned]) -> Result<Option<Filter>> {
    let Some(text) = &args.filter else { return Ok(None) };
    let mut fields: Vec<&str> = planned.iter().flat_map(|p| p.info.args.iter().map(|a| a.name.as_str())).collect();
    fields.sort_unstable();
    fields.dedup();
    Ok(Some(parse_filter(text, &fields).map_err(|e| anyhow::anyhow!("{e}"))?))
}
