//! Return probes that never touch the stack, for the kernel engine: a user function whose
//! exits are all known (`dprobe_arch::find_exits`: each `ret`, each unconditional tail call)
//! and all accepted by the kernel's uprobe rules gets one uprobe at its entry and one at each
//! exit, each fetching the stack pointer (and `%ax` at the exits); dprobe pairs them per
//! thread (`dprobe_core::returns::exits`). The kernel's return probes (uretprobes) replace the
//! return address instead: C++ exceptions and `longjmp` then unwind through a trampoline, and
//! the kernel watches at most 64 nested calls per thread.

use dprobe_arch::{analyze, find_exits, kernel_uprobe_refusal, CodePart, ExitKind, NoMemory};
use dprobe_spec::{ProbeKind, ProbePoint, ProbeSpec};
use dprobe_sym::{ObjectName, Symbols};

use crate::define::kernel_optimizes_nop5;

/// Where a return probe's function is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPlan {
    /// The probed file.
    pub path: String,
    /// The function's link-time start.
    pub function: u64,
    /// Its name.
    pub name: String,
    /// Its exits: link-time address and how the function leaves there, in address order.
    pub exits: Vec<(u64, ExitKind)>,
}

impl ExitPlan {
    /// Where the returns are watched, in words (`-v`, `dprobe list`).
    pub fn watched_at(&self) -> String {
        let n = self.exits.len();
        format!("at its {n} exit{} (ret, tail calls): the stack is not touched", if n == 1 { "" } else { "s" })
    }

    /// Whether the function leaves by a tail call somewhere: a `$retval` there is the
    /// callee's, read at the callee's exits (see [`tail_call_hops`]).
    pub fn tail_calls(&self) -> bool {
        self.exits.iter().any(|(_, kind)| !kind.is_ret())
    }

    /// A probe's place at link-time address `addr` of the file.
    pub fn point(&self, addr: u64) -> ProbePoint {
        ProbePoint::User { binary: Some(self.path.clone()), function: format!("{addr:#x}"), offset: 0 }
    }
}

/// The exits of the function `spec` (a `%return` probe at a user function's entry) returns
/// through, each one an instruction start of the function that the kernel takes a uprobe on;
/// why not, when the return address must be used instead.
pub fn plan(spec: &ProbeSpec) -> Result<ExitPlan, String> {
    let ProbePoint::User { binary: Some(binary), function, offset: 0 } = &spec.point else {
        return Err("the probe is not at a user function's entry".into());
    };
    if spec.kind != ProbeKind::Return {
        return Err("not a return probe".into());
    }
    let object = ObjectName::new(binary).map_err(|e| e.to_string())?;
    let path = object.find_file().ok_or("its file is not found")?;
    let symbols = Symbols::load_file(&path).map_err(|e| format!("its symbols cannot be read: {e}"))?;
    let target = symbols.resolve_name(&[], None, function, 0).map_err(|e| e.to_string())?;
    let f = &target.function;
    if target.addr != f.start {
        return Err("the probe is not at the function's first instruction".into());
    }
    let cold = symbols
        .find_in(None, &format!("{}.cold", f.name))
        .filter(|c| c.object == f.object && c.size > 0 && c.start != f.start);
    let parts: Vec<_> = std::iter::once(f).chain(cold).collect();
    let code = parts
        .iter()
        .map(|p| read_at(target.object(), p.file_offset, p.size as usize))
        .collect::<Result<Vec<_>, _>>()?;
    let code_parts: Vec<CodePart<'_>> =
        parts.iter().zip(&code).map(|(p, c)| CodePart { start: p.start, code: c }).collect();
    // Jump tables are not read from the file: a function with one keeps the return address.
    let exits = find_exits(&code_parts, &mut NoMemory).map_err(|e| format!("its exits are not all known: {e}"))?;
    let optimizes_nop5 = kernel_optimizes_nop5();
    if let Some(why) = kernel_uprobe_refusal(&code[0], f.start, f.start, optimizes_nop5) {
        return Err(format!("its entry: {why}"));
    }
    let mut sites = Vec::with_capacity(exits.sites.len());
    for site in &exits.sites {
        match site.kind {
            ExitKind::Ret | ExitKind::TailJump { .. } => {}
            ExitKind::TailBranch { .. } => {
                return Err(format!(
                    "a conditional tail call at {:#x}: an event there cannot tell whether it leaves",
                    site.addr.0
                ))
            }
            ExitKind::TailJumpThrough { .. } => {
                return Err(format!(
                    "a tail call through a pointer at {:#x}: an event there cannot tell where it goes",
                    site.addr.0
                ))
            }
        }
        let (part, bytes) = code_parts
            .iter()
            .zip(&code)
            .find(|(p, _)| site.addr.0 >= p.start.0 && site.addr.0 - p.start.0 < p.code.len() as u64)
            .expect("an exit lies in a part of its function");
        // A uprobe anywhere but at an instruction start of the function would corrupt the
        // code of every process that maps the file: checked again from the part's start.
        let insn = analyze(bytes, part.start, site.addr).map_err(|e| format!("its exit at {:#x}: {e}", site.addr.0));
        assert!(
            insn.as_ref().map_or(true, |i| i.addr == site.addr),
            "an exit site is an instruction start of its function"
        );
        insn?;
        if let Some(why) = kernel_uprobe_refusal(bytes, part.start, site.addr, optimizes_nop5) {
            return Err(format!("its exit at {:#x}: {why}", site.addr.0));
        }
        sites.push((site.addr.0, site.kind));
    }
    Ok(ExitPlan { path: target.object().to_owned(), function: f.start.0, name: f.name.to_string(), exits: sites })
}

/// How the kernel engine watches the returns of a return probe on `function` of the file
/// `path` (one that fetches nothing but `$retval`): at the exits of this plan, or, with the
/// reason, through the return address (a uretprobe).
pub fn return_plan(path: &str, function: &str) -> Result<ExitPlan, String> {
    let point = ProbePoint::User { binary: Some(path.to_owned()), function: function.to_owned(), offset: 0 };
    plan(&ProbeSpec { point, kind: ProbeKind::Return, args: Vec::new() })
}

/// How many functions a return probe's tail calls may lead through, hops included.
const MAX_HOPS: usize = 32;

/// The functions `plan`'s tail calls lead into (and theirs, in turn) that `watched(start)`
/// says no return probe watches at its exits, each planned to be watched at its exits too:
/// the function returns where they do, with their return value (the kernel's return probe
/// sees it so too). Why not, when one of them cannot be: the return address is used instead.
pub fn tail_call_hops(plan: &ExitPlan, watched: &dyn Fn(u64) -> bool) -> Result<Vec<ExitPlan>, String> {
    let targets = |p: &ExitPlan| -> Vec<(u64, u64)> {
        (p.exits.iter())
            .filter_map(|&(at, kind)| match kind {
                ExitKind::TailJump { target } => Some((at, target.0)),
                _ => None,
            })
            .collect()
    };
    let mut hops: Vec<ExitPlan> = Vec::new();
    let mut next = targets(plan);
    while let Some((at, target)) = next.pop() {
        if target == plan.function || watched(target) || hops.iter().any(|h| h.function == target) {
            continue;
        }
        if hops.len() == MAX_HOPS {
            return Err(format!("its tail calls lead through more than {MAX_HOPS} functions"));
        }
        let hop = return_plan(&plan.path, &format!("{target:#x}")).map_err(|why| {
            format!("its tail call at {at:#x} goes to {target:#x}, whose returns cannot be watched at its exits: {why}")
        })?;
        next.extend(targets(&hop));
        hops.push(hop);
    }
    Ok(hops)
}

/// Whether `addr` is the start of an instruction of the function `plan` was made for, as
/// decoded from its start: asserted before any uprobe is defined at it.
pub fn is_planned_site(plan: &ExitPlan, addr: u64) -> bool {
    addr == plan.function || plan.exits.iter().any(|&(a, _)| a == addr)
}

fn read_at(path: &str, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .map_err(|e| format!("its code cannot be read: {e}"))?;
    Ok(buf)
}
