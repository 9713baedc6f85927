//! The handle of a registered probe.

use std::sync::Arc;

use dprobe_arch::NotOptimized;
use dprobe_core::{Addr, Kprobe, PreAction, ProbeCounters, ProbeError, ProbeId, Regs, Stats};
use dprobe_sym::Target;

use crate::args::Args;

use crate::engine::{Engine, ProbeInfo};

/// A registered in-process probe. Dropping it unregisters the probe.
#[must_use = "dropping the handle unregisters the probe"]
pub struct Probe {
    id: ProbeId,
    target: Target,
    stats: Arc<ProbeCounters>,
    engine: &'static Engine,
    registered: bool,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("id", &self.id)
            .field("target", &self.target.label())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Register one probe (the kernel's `register_kprobe`).
///
/// The target is checked (mapped, executable, covered by a function symbol, on an instruction
/// boundary, not on dprobe's hit path, an instruction dprobe can execute out of line); any
/// failure returns a typed error and patches nothing.
pub fn register(probe: Kprobe) -> Result<Probe, ProbeError> {
    Ok(register_all(vec![probe])?.pop().expect("one probe registered"))
}

/// Register several probes, all or nothing, with one table update (the kernel's
/// `register_kprobes`).
pub fn register_all(probes: Vec<Kprobe>) -> Result<Vec<Probe>, ProbeError> {
    let engine = Engine::global()?;
    Ok(engine
        .register(probes)?
        .into_iter()
        .map(|(id, target, stats)| Probe { id, target, stats, engine, registered: true })
        .collect())
}

/// Register a typed entry probe (the kernel's jprobe): `handler` receives the arguments of the
/// function `probe` names, decoded as `A` by the System V x86-64 calling convention (a tuple
/// of integers, pointers, `bool`, `f32`, `f64`), and the registers. The place must be a
/// function's first instruction. `handler` becomes the probe's pre-handler (as the kernel's
/// `jprobe.kp`, the probe may carry a fault handler or [`Kprobe::no_optimize`]).
///
/// ```no_run
/// use dprobe_inproc::{register_jprobe, Kprobe};
/// let probe = register_jprobe(Kprobe::symbol("libc:openat"),
///     |(dirfd, path, flags): (i32, *const u8, i32), _regs| {
///         let _ = (dirfd, path, flags); // read `path` with dprobe_inproc::read_c_string
///     })?;
/// # Ok::<(), dprobe_inproc::ProbeError>(())
/// ```
pub fn register_jprobe<A: Args + 'static>(
    probe: Kprobe,
    handler: impl Fn(A, &mut Regs) + Send + Sync + 'static,
) -> Result<Probe, ProbeError> {
    Engine::global()?.function_entry(&probe)?;
    register(probe.pre(move |regs| {
        handler(A::decode(regs), regs);
        PreAction::Continue
    }))
}

/// Unregister several probes with one grace period (the kernel's `unregister_kprobes`);
/// returns their final counters.
pub fn unregister_all(probes: Vec<Probe>) -> Result<Vec<Stats>, ProbeError> {
    let Some(engine) = Engine::get() else { return Ok(Vec::new()) };
    let ids: Vec<(ProbeId, Addr)> = probes.iter().map(|p| (p.id, p.addr())).collect();
    let stats = engine.unregister(&ids)?;
    for mut probe in probes {
        probe.registered = false;
        drop(probe);
    }
    Ok(stats)
}

/// Put back dprobe's `int3` wherever something else took it away and left the original
/// instruction (another tool's kernel uprobe on the same instruction, removed): how many
/// breakpoints were put back, each counted in its probes' [`Stats::rearmed`]. Hits while it was
/// away ran no handler. It also puts the original code back under the jumps kept behind
/// a debugger's breakpoint that has gone ([`kept_jumps`]). Call it now and then (the agent
/// does, every 100 ms); it takes the registration lock, and never from a handler.
pub fn rearm_undone() -> usize {
    Engine::get().map_or(0, Engine::rearm_undone)
}

/// The probe sites whose jump stays although no enabled probe is left there: a debugger's
/// breakpoint was on its first byte when its probes went. The debugger saved the jump's first
/// byte and writes it back when it goes, so the jump and its detour stay, running no handler;
/// [`rearm_undone`] puts the original code back once that byte is the jump's again. With each,
/// its place (`object:function+offset`) where known.
pub fn kept_jumps() -> Vec<(Addr, Option<String>)> {
    Engine::get().map(Engine::kept_jumps).unwrap_or_default()
}

/// Where a probe would go in this process (its function, offset and address), without
/// registering it.
pub fn resolve(probe: &Kprobe) -> Result<Target, ProbeError> {
    Engine::global()?.resolve(probe)
}

/// The start of function `symbol` and its code (its first 4 KiB at most) as its file holds
/// it: in memory, its first bytes may be a probe's jump already (dprobe's own guards on the C
/// library's functions). `None` where the file cannot be read.
pub(crate) fn code_in_file(symbol: &str) -> Result<Option<(Addr, Vec<u8>)>, ProbeError> {
    use std::os::unix::fs::FileExt;
    let function = resolve(&Kprobe::symbol(symbol))?.function;
    let mut code = vec![0u8; function.size.min(4096) as usize];
    let read =
        std::fs::File::open(&*function.object).and_then(|file| file.read_exact_at(&mut code, function.file_offset));
    Ok(read.ok().map(|()| (function.start, code)))
}

/// Where each of `probes` would go, or why it cannot (as [`register`] would say), without
/// registering any: for many probes, one read of the process's maps instead of one each. The
/// error: the maps could not be read.
pub fn resolve_each(probes: &[Kprobe]) -> Result<Vec<Result<Target, ProbeError>>, ProbeError> {
    Engine::global()?.resolve_each(probes)
}

/// The registered probes (the kernel's `kprobes/list`).
pub fn list() -> Vec<ProbeInfo> {
    Engine::get().map(Engine::list).unwrap_or_default()
}

/// Code that can never be probed, with the reason (the kernel's `kprobes/blacklist`).
pub fn blacklist() -> Result<Vec<(Addr, Addr, String)>, ProbeError> {
    Engine::global()?.blacklist()
}

impl Probe {
    /// Its identity.
    pub fn id(&self) -> ProbeId {
        self.id
    }

    /// The probed address.
    pub fn addr(&self) -> Addr {
        self.target.addr
    }

    /// Where it is: its function (object, symbol, bounds), offset and address.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Its counters now.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Hits whose handlers ran.
    pub fn hits(&self) -> u64 {
        self.stats().hits
    }

    /// Hits inside handlers, which ran no handler.
    pub fn nmissed(&self) -> u64 {
        self.stats().reentered
    }

    /// Whether its hits take a jump to a detour instead of a trap, or why not: decided at
    /// registration, and again whenever the probes at its address change (a post-handler, a
    /// probe registered with `Kprobe::no_optimize`, or no enabled probe there keep `int3`).
    pub fn optimized(&self) -> Result<(), NotOptimized> {
        self.engine.optimized(self.id, self.target.addr)
    }

    /// Whether its handlers run.
    pub fn is_enabled(&self) -> bool {
        self.stats.is_enabled()
    }

    /// Stop running its handlers; the `int3` is removed when no enabled probe is left at the
    /// address.
    pub fn disable(&self) -> Result<(), ProbeError> {
        self.engine.set_enabled(self.id, self.addr(), false)
    }

    /// Run its handlers again.
    pub fn enable(&self) -> Result<(), ProbeError> {
        self.engine.set_enabled(self.id, self.addr(), true)
    }

    /// Unregister it and return its final counters. When this returns no handler of the probe
    /// runs any more, and if it was the last probe at its address the original bytes are back.
    pub fn unregister(mut self) -> Result<Stats, ProbeError> {
        self.registered = false;
        Ok(self.engine.unregister(&[(self.id, self.addr())])?.pop().unwrap_or_default())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.registered {
            // Errors cannot be reported from drop; `unregister` returns them.
            let _ = self.engine.unregister(&[(self.id, self.addr())]);
        }
    }
}
