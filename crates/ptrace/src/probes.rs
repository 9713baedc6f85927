//! Probes in the tracee: what a user asks for ([`ProbeDef`]), what a handler sees ([`Hit`]),
//! and placing a probe: resolving its target, checking the instruction, choosing emulation
//! or an out-of-line copy, writing the `int3`.

use std::time::Duration;

use dprobe_arch::{analyze, prepare, Addr, ExitKind, Memory, Prepared, Regs};
use dprobe_core::returns::InstancePool;
use dprobe_core::{Placement, ProbeError, ProbeId, Stats};
use dprobe_spec::SpecError;
use dprobe_sym::{read_maps_of, Function, Mapping, ResolveError, Semaphore, Symbols, Target};

use crate::error::TraceError;
use crate::exits::ReturnMode;
use crate::tracee::Tracee;
use crate::xol::Near;

/// What a handler sees at a hit.
pub struct Hit<'a> {
    /// Which probe.
    pub probe: ProbeId,
    /// The process of the thread: the program's, or a child's that shares its memory (a
    /// `vfork` child before it executes).
    pub pid: i32,
    /// The thread that hit it.
    pub tid: i32,
    /// Its general registers (changes are written back). At a return, `rip` is where the
    /// function returns to and `rax` its return value.
    pub regs: &'a mut Regs,
    /// The thread's `fs` base (its thread pointer, for thread-local variables such as `errno`).
    pub fs_base: u64,
    /// Where the probed file's offset 0 is, reckoned from the probe's site (its run-time
    /// address minus its offset in the file): `@+OFFSET` reads there. `None`: code of no file.
    pub file_base: Option<u64>,
    /// The process's memory (writes allowed).
    pub memory: &'a mut dyn Memory,
    /// Entry or return.
    pub kind: HitKind<'a>,
    /// The slots of the thread's stack where return probes put their trampoline or stub in
    /// place of a return address, with the real return address of each: a backtrace reads
    /// these instead.
    pub hijacked: &'a [(u64, u64)],
}

/// Which side of a function a hit is on.
#[derive(Clone, Copy)]
pub enum HitKind<'a> {
    /// The probed instruction is about to run.
    Entry,
    /// The function is returning.
    Return {
        /// The registers at its entry (its arguments).
        entry_regs: &'a Regs,
        /// Time from the entry stop to the return stop, as the tracer saw them.
        elapsed: Duration,
        /// The function's first instruction.
        function: Addr,
    },
}

/// A handler, run in the tracer while the thread is stopped.
pub type Handler = Box<dyn FnMut(&mut Hit<'_>)>;

/// A handler as the tracer keeps it: one for the probe in every process it follows.
pub(crate) type SharedHandler = std::rc::Rc<std::cell::RefCell<Handler>>;

fn shared(handler: Handler) -> SharedHandler {
    std::rc::Rc::new(std::cell::RefCell::new(handler))
}

/// What a [`ProbeDef`] is placed on: a target of the spec language
/// (`[OBJECT:]FUNCTION[+OFFSET]`, `OBJECT:0xADDR`, or a `0x` address in the process), parsed
/// or as text.
pub trait IntoProbePoint {
    /// The parsed target.
    fn into_point(self) -> Result<dprobe_spec::ProbePoint, SpecError>;
}

impl IntoProbePoint for dprobe_spec::ProbePoint {
    fn into_point(self) -> Result<dprobe_spec::ProbePoint, SpecError> {
        Ok(self)
    }
}

impl IntoProbePoint for &str {
    fn into_point(self) -> Result<dprobe_spec::ProbePoint, SpecError> {
        dprobe_spec::parse_point(self)
    }
}

impl IntoProbePoint for &String {
    fn into_point(self) -> Result<dprobe_spec::ProbePoint, SpecError> {
        dprobe_spec::parse_point(self)
    }
}

/// A probe to place: where, and what to run at entry and at return.
pub struct ProbeDef {
    /// Where; a target whose text does not parse is refused when the probe is added.
    pub(crate) target: Result<dprobe_spec::ProbePoint, SpecError>,
    pub(crate) on_entry: Option<SharedHandler>,
    pub(crate) on_return: Option<SharedHandler>,
    pub(crate) maxactive: usize,
    pub(crate) when_loaded: bool,
    pub(crate) no_return_stop: bool,
    pub(crate) via_return_address: bool,
    pub(crate) semaphore: Option<Semaphore>,
}

impl ProbeDef {
    /// A probe on `[OBJECT:]FUNCTION[+OFFSET]` (or a `0x` address) running `handler` before
    /// the instruction there.
    pub fn entry(target: impl IntoProbePoint, handler: Handler) -> ProbeDef {
        ProbeDef {
            target: target.into_point(),
            on_entry: Some(shared(handler)),
            on_return: None,
            maxactive: 0,
            when_loaded: false,
            no_return_stop: false,
            via_return_address: false,
            semaphore: None,
        }
    }

    /// A return probe on function `[OBJECT:]FUNCTION` running `handler` as it returns.
    pub fn on_return(target: impl IntoProbePoint, handler: Handler) -> ProbeDef {
        ProbeDef {
            target: target.into_point(),
            on_entry: None,
            on_return: Some(shared(handler)),
            maxactive: 0,
            when_loaded: false,
            no_return_stop: false,
            via_return_address: false,
            semaphore: None,
        }
    }

    /// Also run `handler` at the entry of a return probe.
    pub fn with_entry(mut self, handler: Handler) -> ProbeDef {
        self.on_entry = Some(shared(handler));
        self
    }

    /// How many calls of a return probe's function may be pending at once, over all threads;
    /// entries beyond are counted as missed. Default (and 0): no limit.
    pub fn maxactive(mut self, n: usize) -> ProbeDef {
        self.maxactive = n;
        self
    }

    /// Do not stop the thread at the return: a stub records the return value and the time and
    /// the thread goes straight on; the return handler runs when the tracer collects the
    /// record (before it handles any later stop, so events stay in order). The handler sees
    /// `rax`, `rdx`, the callee-saved registers, `rsp` and `rip` (the others are zero),
    /// changes to them are ignored, and memory is read as it is when the handler runs. About
    /// half the cost of a return that stops.
    pub fn no_return_stop(mut self) -> ProbeDef {
        self.no_return_stop = true;
        self
    }

    /// Watch the returns by replacing the return address (a trampoline or a stub), even when
    /// every exit of the function is known and could be watched instead (the default then).
    pub fn via_return_address(mut self) -> ProbeDef {
        self.via_return_address = true;
        self
    }

    /// The same probe, sharing its handlers (for a process the tracer follows).
    pub(crate) fn share(&self) -> ProbeDef {
        ProbeDef {
            target: self.target.clone(),
            on_entry: self.on_entry.clone(),
            on_return: self.on_return.clone(),
            maxactive: self.maxactive,
            when_loaded: self.when_loaded,
            no_return_stop: self.no_return_stop,
            via_return_address: self.via_return_address,
            semaphore: self.semaphore.clone(),
        }
    }

    /// The target, parsed.
    pub(crate) fn target(&self) -> Result<&dprobe_spec::ProbePoint, ProbeError> {
        self.target.as_ref().map_err(|e| ResolveError::from(e.clone()).into())
    }

    /// If the target's library is not loaded yet, place the probe when the program loads it
    /// (`dlopen`) instead of failing.
    pub fn when_loaded(mut self) -> ProbeDef {
        self.when_loaded = true;
        self
    }

    /// A static probe's semaphore, raised in every process where the probe is placed (the
    /// program, a library it loads later, a followed child, a program it executes) and lowered
    /// when the probe leaves it.
    pub fn semaphore(mut self, semaphore: Semaphore) -> ProbeDef {
        self.semaphore = Some(semaphore);
        self
    }
}

pub(crate) struct Probe {
    pub def: ProbeDef,
    /// Its pending returns, against `maxactive`.
    pub pool: InstancePool,
    /// Its figures; `placement` says whether and where it is placed.
    pub stats: Stats,
}

/// Where the file of the code at `site` has its offset 0, reckoned from that site (see
/// [`Hit::file_base`]).
pub(crate) fn file_base(sites: &std::collections::BTreeMap<Addr, Site>, site: Addr) -> Option<u64> {
    let (_, offset) = sites.get(&site)?.origin.as_ref()?;
    Some(site.0.wrapping_sub(*offset))
}

#[derive(Clone)]
pub(crate) struct Site {
    /// The instruction, how it runs and its out-of-line copy.
    pub prepared: Prepared,
    pub probes: Vec<ProbeId>,
    /// dprobe's own probe on the dynamic linker's notification function.
    pub loader_hook: bool,
    /// dprobe's own probe on an unwinder's entry (`_Unwind_RaiseException`,
    /// `_Unwind_ForcedUnwind`): the thread's return addresses go back before it walks the
    /// stack.
    pub unwinder: bool,
    /// dprobe's own probe on `__cxa_begin_catch`: where an exception is caught.
    pub catcher: bool,
    /// dprobe's own probe on the C library's `__libc_sigaction`: the program's `SIGTRAP`
    /// action, as it sets it (`trap_action.rs`).
    pub sigaction_watch: bool,
    /// The file and offset of the code it is on, while that file is mapped there (`None`:
    /// code that is no file's).
    pub origin: Option<(String, u64)>,
    /// The functions (their entries) this instruction is an exit of, for return probes that
    /// watch exits, and how each leaves here.
    pub exit_of: Vec<(Addr, ExitKind)>,
    /// At a function's entry: its return probes that watch its exits (the others replace
    /// the return address).
    pub exit_probes: Vec<ProbeId>,
}

/// The file and the offset in it that `addr` shows, in `maps`.
pub(crate) fn origin_at(maps: &[Mapping], addr: Addr) -> Option<(String, u64)> {
    let m = maps.iter().find(|m| m.contains(addr))?;
    Some((m.path.clone()?, addr.0 - m.start.0 + m.offset))
}

/// Resolve a probe's target in the tracee, through the one resolver.
pub(crate) fn resolve(
    symbols: &Symbols,
    maps: &[Mapping],
    target: &dprobe_spec::ProbePoint,
) -> Result<Target, ProbeError> {
    Ok(symbols.resolve(maps, target)?)
}

impl Tracee {
    /// Place a probe on `[OBJECT:]FUNCTION[+OFFSET]` (or a `0x` address) that runs `handler`.
    /// The tracee must be stopped (after `spawn`, `attach`, `run_to_entry`).
    pub fn add_probe(&mut self, target: impl IntoProbePoint, handler: Handler) -> Result<ProbeId, TraceError> {
        self.add(ProbeDef::entry(target, handler))
    }

    /// Place a probe. Nothing is written when it is refused.
    pub fn add(&mut self, def: ProbeDef) -> Result<ProbeId, TraceError> {
        let pool = InstancePool::new(Some(def.maxactive));
        self.next_id += 1;
        let id = ProbeId(self.next_id);
        let tid = self.a_stopped_thread()?;
        match self.place(tid, id, &def) {
            Ok(addr) => {
                let stats = Stats { placement: Placement::At(addr), ..Stats::default() };
                self.probes.insert(id, Probe { def, pool, stats });
                // Its library may be unloaded, and loaded again: the linker is watched.
                self.watch_loads(tid)?;
                Ok(id)
            }
            Err(TraceError::Probe(e)) if e.may_load_later() && def.when_loaded && self.watch_loads(tid)? => {
                self.probes.insert(id, Probe { def, pool, stats: Stats::default() });
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    /// Place probe `id` at its target through held thread `tid`; returns the address.
    pub(crate) fn place(&mut self, tid: i32, id: ProbeId, def: &ProbeDef) -> Result<Addr, TraceError> {
        let maps = read_maps_of(self.pid as u32)?;
        let symbols = Symbols::load(&maps);
        let at = resolve(&symbols, &maps, def.target()?)?;
        self.place_at(tid, id, at, def, &maps, &symbols)
    }

    /// Place probe `id` at resolved `at` through held thread `tid` (which runs the system
    /// call that maps an out-of-line page, when one is needed); returns the address.
    pub(crate) fn place_at(
        &mut self,
        tid: i32,
        id: ProbeId,
        at: Target,
        def: &ProbeDef,
        maps: &[Mapping],
        symbols: &Symbols,
    ) -> Result<Addr, TraceError> {
        let (addr, f) = (at.addr, at.function);
        let is_return = def.on_return.is_some();
        if is_return && f.start != addr {
            return Err(ProbeError::NotFunctionEntry { addr, function: f.name.to_string(), start: f.start }.into());
        }
        let mut watch_exits = false;
        if is_return {
            let exits = match def.via_return_address {
                true => Err("asked for".to_string()),
                false => self.exits_of(&f, symbols).map_err(|e| format!("the function's exits are not all known: {e}")),
            };
            let mode = match exits {
                Ok((exits, cold)) => {
                    if exits.sites.iter().any(|s| s.kind != ExitKind::Ret) {
                        // A tail call into a function whose returns are not watched returns
                        // through the trampoline (and exceptions must not meet it unseen).
                        if self.xol.trampoline(&mut self.memory, Near { tid, addr, maps }).is_ok()
                            && !self.unwinders_watched
                        {
                            self.watch_unwinders(tid, maps, symbols)?;
                        }
                    }
                    self.arm_exits(tid, &f, cold.as_ref(), &exits, maps)?;
                    watch_exits = true;
                    ReturnMode::Exits { sites: exits.sites.len() }
                }
                Err(why) => {
                    self.xol.trampoline(&mut self.memory, Near { tid, addr, maps })?;
                    if !self.unwinders_watched {
                        self.watch_unwinders(tid, maps, symbols)?;
                    }
                    ReturnMode::ReturnAddress { why }
                }
            };
            self.return_modes.insert(id, mode);
        }
        if !self.sites.contains_key(&addr) {
            self.new_site(tid, addr, &f, maps, None)?;
        }
        self.watch_sigaction(tid, maps, symbols);
        let site = self.sites.get_mut(&addr).expect("placed");
        site.probes.push(id);
        if watch_exits {
            site.exit_probes.push(id);
        }
        // Raised once the probe is in place, so that the program never prepares arguments
        // for a probe that is not there yet.
        if let Some(semaphore) = &def.semaphore {
            self.raise_semaphore(id, semaphore, maps);
        }
        Ok(addr)
    }

    /// Analyze the instruction at `addr` in function `f`, prepare its execution, and arm it
    /// (for probe `probe`, or none: one of dprobe's own).
    pub(crate) fn new_site(
        &mut self,
        tid: i32,
        addr: Addr,
        f: &Function,
        maps: &[Mapping],
        probe: Option<ProbeId>,
    ) -> Result<(), TraceError> {
        let mut code = vec![0u8; f.size as usize];
        self.read(f.start, &mut code)?;
        for s in self.sites.range(f.start..f.start.offset(f.size)).map(|(_, s)| s) {
            s.prepared.arm().revert_in(&mut code, f.start);
        }
        let insn = analyze(&code, f.start, addr).map_err(ProbeError::from)?;
        let (xol, memory) = (&mut self.xol, &mut self.memory);
        let prepared = prepare(&insn, false, |_| xol.slot_at(memory, Near { tid, addr, maps }))?;
        let patch = prepared.arm();
        let mut now = vec![0u8; patch.old.len()];
        self.read(addr, &mut now)?;
        if now != patch.old {
            return Err(ProbeError::ForeignBreakpoint { addr }.into());
        }
        if let Some(slot) = &prepared.slot {
            self.xol.install(&mut self.memory, slot)?;
        }
        let probes = probe.into_iter().collect();
        let origin = origin_at(maps, addr);
        let site = Site {
            prepared,
            probes,
            loader_hook: false,
            unwinder: false,
            catcher: false,
            sigaction_watch: false,
            origin,
            exit_of: Vec::new(),
            exit_probes: Vec::new(),
        };
        self.sites.insert(addr, site);
        self.write(addr, &patch.new)?;
        Ok(())
    }

    /// Put the original code back at every site that is still mapped as it was when placed.
    /// A site whose file is no longer mapped there (its library unloaded, or the process
    /// executing another program that dprobe has not heard of yet) is left alone: the range
    /// is not its any more.
    pub(crate) fn disarm_sites(&mut self) -> Result<(), TraceError> {
        let maps = read_maps_of(self.pid as u32).ok();
        let still_there = |addr: Addr, site: &Site| match (&maps, &site.origin) {
            (Some(maps), Some(_)) => origin_at(maps, addr) == site.origin,
            _ => true,
        };
        let patches: Vec<_> =
            self.sites.iter().filter(|(a, s)| still_there(**a, s)).map(|(_, s)| s.prepared.disarm()).collect();
        for patch in &patches {
            // Only over dprobe's own `int3`: a program that rewrote its code there (a hot
            // patch) keeps what it wrote.
            let mut now = vec![0u8; patch.old.len()];
            if self.read(patch.addr, &mut now).is_ok() && now != patch.old {
                continue;
            }
            self.write(patch.addr, &patch.new)?;
        }
        Ok(())
    }

    /// A probe's figures.
    pub fn stats(&self, id: ProbeId) -> Stats {
        self.probes.get(&id).map(|p| p.stats.clone()).unwrap_or_default()
    }

    /// How a return probe watches its function's returns (`None`: not a return probe, or not
    /// placed yet).
    pub fn return_mode(&self, id: ProbeId) -> Option<ReturnMode> {
        self.return_modes.get(&id).cloned()
    }

    /// Hits of a probe so far.
    pub fn hits(&self, id: ProbeId) -> u64 {
        self.stats(id).hits
    }

    /// Where a probe target resolves in the tracee.
    pub fn resolve(&self, target: impl IntoProbePoint) -> Result<Addr, TraceError> {
        let target = target.into_point().map_err(|e| ProbeError::from(ResolveError::from(e)))?;
        let maps = read_maps_of(self.pid as u32)?;
        Ok(resolve(&Symbols::load(&maps), &maps, &target)?.addr)
    }
}
