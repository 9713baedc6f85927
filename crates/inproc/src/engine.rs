//! The in-process registry: where probes are placed, how their code is patched, and in which
//! order, so that threads running the probed code at the same time never see a broken state.
//!
//! # The patching protocol
//!
//! A probe changes one byte of the program: the first byte of the probed instruction becomes
//! `int3`. A one-byte store is atomic, so a thread fetching the instruction sees either the
//! original or the `int3`, never a mixture; after each step every thread is made to execute a
//! serializing instruction (`membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`). A batch of probes
//! (`register_all`, `unregister_all`) takes each step for all of its sites, then serializes
//! once: writing the slots, disarming, arming, and each step of the jumps cost one
//! `membarrier` per batch, not one per site. The order of the other steps is what keeps a
//! trapping thread safe:
//!
//! * **arm**: publish the site in the table first, then write the `int3`. A thread can only
//!   trap once the site is there to be found.
//! * **disarm** (last enabled probe of a site gone): write the original byte back first, then
//!   publish the site without its probes, then wait for the table's grace period. A thread
//!   that trapped just before the write finds either the old site (its handlers still run:
//!   unregister has not returned) or the site without probes, whose hit path sees the original
//!   byte back and re-executes the instruction. A site is never removed from the table, so
//!   such a late trap is never mistaken for a foreign one.
//! * **slots** are written before they are published and never reused for other code, so a
//!   thread that is still inside a slot after its probe went away finishes there correctly.
//!
//! * **jumps**: an armed site whose window (the instructions covering the 5 bytes of a
//!   `jmp rel32`) can be relocated then becomes a jump to its detour (no trap per hit), and
//!   turns back into an `int3` (or its original code, its last enabled probe gone) before
//!   anything else changes at the site, or at a site inside its window; the order of those
//!   writes, the safepoint that moves threads out of a window of several instructions, and
//!   the jumps that go in or come off in one store with no `int3` between (a window of one
//!   instruction in one aligned word goes in so, never on `int3`) are in `optimizer.rs` and
//!   `safepoint.rs`.
//!
//! Unregistration returns after the grace period: from then on no handler of the probe runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use dprobe_arch::{
    analyze, arm, detour_code, detour_code_with_post, endbr64_len, exit_detour_code, plan, prepare, vector_state,
    window_head, Addr, Detour, Emulation, ExecClass, ExecPlan, FunctionCode, Insn, NotOptimized, Patch, Prepared,
    SlotCode, SlotEnding, VectorState, DETOUR_WINDOW, INT3, JUMP_LEN, SLOT_SIZE,
};
use dprobe_core::{Kprobe, ProbeEntry, ProbeError, ProbeId, Site, SiteTable, Stats, TableEntry, TrapKind};
use dprobe_rcu::Rcu;

use crate::code_pages::CodePages;
use crate::code_writes::{self, Change, Fresh};
use crate::site_map::SiteMap;
use crate::slots::SlotPool;
use crate::{file_code, guard, hit_stack, jump, optimizer, rearm, safepoint, signals, spawn_hold, sys, trap};
use dprobe_sym::{read_maps, Function, Mapping, ResolveError, Symbols, Target};

mod locating;
mod sites;
use locating::{
    drop_moved_symbols, hit_path_region, loaded_files, locate, locate_target, resolve, revert_own_patches,
    FunctionCache, LoadedFile, Located,
};
use sites::{
    behind_a_breakpoint, blocks, code_gone, holds, jump_of, jump_span, jump_start, kept_jump, near, set_armed,
    symbol_at, window_copy,
};

/// The process-wide in-process engine.
pub struct Engine {
    pub(crate) table: SiteTable<Prepared>,
    /// Every slot ever written, sorted by address (for mapping faults back).
    slots: Rcu<Vec<SlotCode>>,
    /// Every detour's relocated instructions, sorted by address (for mapping faults back).
    windows: Rcu<Vec<WindowCopy>>,
    /// `(site, copy)`, sorted: sites of several-instruction windows that are jumps, or about to
    /// be, whose trap path must continue in the detour's copy (never in the window).
    routes: Rcu<Vec<(Addr, Addr)>>,
    /// `(window start, copy)`, sorted: the first byte of each exit window ever made a jump,
    /// where an `int3` stands while the jump goes in or out, and where a thread that trapped
    /// on it continues (the detour's copy of the instructions before the exit; `None` once
    /// the original byte is back: the thread runs it). Never removed, so that a late trap is
    /// never taken for a foreign one.
    window_starts: Rcu<Vec<(Addr, Option<Addr>)>>,
    state: Mutex<State>,
}

/// Where a detour runs its copy of the probed instructions.
#[derive(Debug, Clone, Copy)]
pub struct WindowCopy {
    /// The copy.
    pub copy: Addr,
    /// The end of the copy (its jump back included).
    pub end: Addr,
    /// The probed instruction.
    pub original: Addr,
    /// The window: where each instruction is and where its copy starts.
    pub window: safepoint::Window,
}

impl WindowCopy {
    /// The original instruction whose copy contains `rip`, and where that copy starts.
    pub(crate) fn instruction_at(&self, rip: Addr) -> (Addr, Addr) {
        let map = &self.window.map[..self.window.len];
        map.iter().rev().find(|(_, c)| *c <= rip).copied().unwrap_or(map[0])
    }
}

#[derive(Default)]
struct State {
    sites: SiteMap<SiteState>,
    pool: SlotPool,
    next_id: u64,
    symbols: Option<Symbols>,
    /// Where each file was loaded when `symbols` were read (see [`loaded_files`]).
    symbols_of: Vec<LoadedFile>,
    /// Detours of sites left without probes, not yet shown to be free of threads.
    retired: BTreeMap<Addr, Retired>,
    /// Detours of the other kind (with or without the post block) that sites kept aside, given
    /// up when their site was left without probes or took another detour back, not yet shown
    /// to be free of threads; their `JumpSite` stays with the site.
    orphans: Vec<Detour>,
    /// Detours shown free of threads since they were retired: reused for new ones.
    free_detours: Vec<Addr>,
    /// The code pages under live jumps, kept writable while a jump is there.
    pages: CodePages,
}

/// A detour taken from its site (see [`Engine::reclaim_detours`]).
struct Retired {
    detour: Box<Detour>,
    hot: &'static jump::JumpSite,
    /// Whether the detour has a post block.
    post: bool,
}

struct SiteState {
    insn: Insn,
    /// The change that arms the site (its undo disarms it), made once: applying it
    /// allocates nothing.
    arm: Change,
    probes: Vec<Arc<ProbeEntry>>,
    /// Slots built for this site, at most one per ending; kept for re-registration.
    slots: Vec<SlotCode>,
    /// How a hit executes the instruction, without and with a post-handler, once prepared
    /// with a slot of `slots` (or with none needed): the same each time the site is applied.
    prepared: Box<[Option<Prepared>; 2]>,
    armed: bool,
    /// The window a jump would replace, or why there can be no jump here.
    window: Result<Vec<Insn>, NotOptimized>,
    /// The detour, once built; kept while the site has probes, then retired.
    detour: Option<Box<Detour>>,
    /// Whether `detour` has a post block.
    detour_post: bool,
    /// The detour of the other kind, kept aside when post-handlers came or went, and taken
    /// back as it is when they go or come again (its code is the same: a thread still inside
    /// it may go on).
    spare: Option<Box<Detour>>,
    /// The vector state the detour keeps (decided from where the site is in its function).
    vector: VectorState,
    /// What the detour's dispatcher reads the site from (with the detour: never freed).
    hot: Option<&'static jump::JumpSite>,
    /// The site as last published in the table, which `hot` points to.
    published: Option<Arc<Site<Prepared>>>,
    /// Whether the jump is in the code now (byte 0 is `e9`).
    jumping: bool,
    /// Whether the jump stays, though its last probe went, behind a debugger's breakpoint
    /// (see `behind_a_breakpoint`).
    kept_behind_breakpoint: bool,
    /// Why the site is not a jump now, if it is not.
    jump_status: Result<(), NotOptimized>,
    /// The file and offset of the code analyzed here (`None`: anonymous code).
    origin: Option<CodeOrigin>,
}

/// Where code comes from: a file's device and inode, and the offset in it.
type CodeOrigin = ((u32, u32), u64, u64);

/// The origin of the code at `addr` in `maps`.
fn origin_of(maps: &[Mapping], addr: Addr) -> Option<CodeOrigin> {
    let m = &maps[dprobe_sym::mapping_index(maps, addr)?];
    (m.inode != 0).then_some((m.device, m.inode, m.offset + (addr.0 - m.start.0)))
}

/// A site of a batch with its new probe list, and what the passes of [`Engine::apply`] ask
/// of that list, worked out once: each question reads every probe's record (a cache miss
/// each, with thousands of sites), and the passes would ask it again and again.
struct Listed<'a> {
    addr: Addr,
    probes: &'a [Arc<ProbeEntry>],
    /// Some probe has a post-handler.
    post: bool,
    /// Some probe is enabled.
    enabled: bool,
    /// Whether the list wants a jump, or why not (`optimizer::wanted`).
    wanted: Result<(), NotOptimized>,
}

impl<'a> Listed<'a> {
    fn new(st: &State, addr: Addr, probes: &'a [Arc<ProbeEntry>]) -> Listed<'a> {
        let wanted = optimizer::wanted(addr, &st.sites[&addr].window, probes);
        let post = probes.iter().any(|p| p.has_post());
        let enabled = probes.iter().any(|p| p.stats.is_enabled());
        Listed { addr, probes, post, enabled, wanted }
    }
}

impl SiteState {
    /// A site not armed yet, with no probe, at `insn`.
    fn new(
        insn: Insn,
        window: Result<Vec<Insn>, NotOptimized>,
        vector: VectorState,
        origin: Option<CodeOrigin>,
    ) -> SiteState {
        SiteState {
            origin,
            arm: Change::of(&arm(&insn)),
            insn,
            probes: Vec::new(),
            slots: Vec::new(),
            prepared: Box::new([None, None]),
            armed: false,
            window,
            detour: None,
            detour_post: false,
            spare: None,
            vector,
            hot: None,
            published: None,
            jumping: false,
            kept_behind_breakpoint: false,
            jump_status: Err(NotOptimized::Disarmed),
        }
    }
}

/// One row of [`crate::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeInfo {
    /// The probe.
    pub id: ProbeId,
    /// Where it is.
    pub addr: Addr,
    /// `object:function+offset`, when a symbol covers it.
    pub symbol: Option<String>,
    /// Enabled?
    pub enabled: bool,
    /// Whether its `int3` is in the code now.
    pub armed: bool,
    /// How the displaced instruction is executed: `emulated`, `boosted` or `post-step`.
    pub execution: &'static str,
    /// Whether hits take the jump path, or why not.
    pub jump: Result<(), NotOptimized>,
    /// Whether its hits take the jump path through a detour that keeps the whole extended
    /// state (`XSAVE`: inside a function, where any vector register may be live; it costs
    /// more a hit, BENCHMARKS.md) rather than the vector registers the calling convention
    /// passes (at an entry, a `ret`, a tail call). False on the trap path.
    pub whole_vector_state: bool,
    /// Counters.
    pub stats: Stats,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

/// How [`Engine::make_jumps`] puts the jumps in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placing {
    /// Over armed sites, in the protocol's steps (`optimizer.rs`).
    OverInt3s,
    /// Over sites not armed, each in one store (`optimizer::in_one_store`).
    InOneStore,
}

/// Sites in address order whose pages under their jump to come were made writable before
/// they were armed, with the outcome (`None` once [`Engine::make_jumps`] took it over).
type HeldPages = Vec<(Addr, Option<Result<(), String>>)>;

impl Engine {
    /// The engine, if any probe was ever registered. Async-signal-safe.
    pub fn get() -> Option<&'static Engine> {
        ENGINE.get()
    }

    /// In a child process just forked (one thread, outside any hit): the parent's other
    /// threads that were reading the engine's tables are not in it.
    pub(crate) fn forget_readers_after_fork(&self) {
        self.table.forget_readers_after_fork();
        self.slots.forget_readers_after_fork();
        self.windows.forget_readers_after_fork();
        self.routes.forget_readers_after_fork();
        self.window_starts.forget_readers_after_fork();
    }

    /// The engine, installing dprobe's signal handlers on first use.
    pub fn global() -> Result<&'static Engine, ProbeError> {
        let engine = ENGINE.get_or_init(|| Engine {
            table: SiteTable::new(),
            slots: Rcu::new(Vec::new()),
            windows: Rcu::new(Vec::new()),
            routes: Rcu::new(Vec::new()),
            window_starts: Rcu::new(Vec::new()),
            state: Mutex::default(),
        });
        static QUIET_PANICS: std::sync::Once = std::sync::Once::new();
        QUIET_PANICS.call_once(install_quiet_panic_hook);
        dprobe_sym::run_resolvers_with(crate::run_resolver);
        let os = |source| ProbeError::Os { what: "installing dprobe's signal handlers", error: source };
        signals::install(libc::SIGTRAP, trap::on_sigtrap).map_err(os)?;
        for sig in signals::FAULT_SIGNALS {
            signals::install(sig, trap::on_fault).map_err(os)?;
        }
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registration lock, then the process's maps read under it: the registrar changes
    /// mappings (the pages under jumps made writable, the file's mapping put back), and a read
    /// of `/proc/self/maps` made meanwhile can miss or repeat some.
    fn lock_with_maps(&self) -> Result<(MutexGuard<'_, State>, Vec<Mapping>), ProbeError> {
        let st = self.lock();
        Ok((st, maps()?))
    }

    /// The registration lock, held (see [`crate::hold_registration_locks`]).
    pub(crate) fn hold_lock() -> Option<MutexGuard<'static, impl Sized>> {
        ENGINE.get().map(|e| e.lock())
    }

    /// The slot containing `rip`, if any. Async-signal-safe.
    pub fn slot_containing(&self, rip: Addr) -> Option<SlotCode> {
        self.slots.read(|slots| {
            let i = slots.partition_point(|s| s.addr <= rip);
            i.checked_sub(1).map(|i| &slots[i]).filter(|s| s.contains(rip)).cloned()
        })
    }

    /// The detour copy containing `rip`, if any. Async-signal-safe.
    pub fn window_containing(&self, rip: Addr) -> Option<WindowCopy> {
        self.windows.read(|windows| {
            let i = windows.partition_point(|w| w.copy <= rip);
            i.checked_sub(1).map(|i| windows[i]).filter(|w| rip < w.end)
        })
    }

    /// Where a trap at the site `addr` continues instead of executing the displaced
    /// instruction, when its jump is live or about to be. Async-signal-safe.
    pub(crate) fn route(&self, addr: Addr) -> Option<Addr> {
        self.routes.read(|routes| routes.binary_search_by_key(&addr, |r| r.0).ok().map(|i| routes[i].1))
    }

    /// Where a thread that trapped on the `int3` at `addr`, the start of an exit window and
    /// no probe's, continues: `Some(Some(copy))` while the window changes, `Some(None)` once
    /// its original byte is back (the thread runs it again), `None` for an address that never
    /// started an exit window. Async-signal-safe.
    pub(crate) fn window_start(&self, addr: Addr) -> Option<Option<Addr>> {
        self.window_starts.read(|s| s.binary_search_by_key(&addr, |r| r.0).ok().map(|i| s[i].1))
    }

    /// Set where traps at the exit window starts `starts` continue, in one update.
    fn set_window_starts(&self, starts: &[(Addr, Option<Addr>)]) {
        if starts.is_empty() {
            return;
        }
        self.window_starts.update(|old| {
            let mut next: Vec<(Addr, Option<Addr>)> =
                old.iter().copied().filter(|r| !starts.iter().any(|n| n.0 == r.0)).collect();
            next.extend_from_slice(starts);
            next.sort_by_key(|r| r.0);
            next
        });
    }

    /// Remove the routes of the sites `remove` and add `add`, in one update.
    fn set_routes(&self, remove: &[Addr], add: &[(Addr, Addr)]) {
        if remove.is_empty() && add.is_empty() {
            return;
        }
        // A sorted vector, not a tree: one allocation (the registrar calls this while the
        // C library's allocator may be probed on `int3`, each allocation a trap).
        let mut gone: Vec<Addr> = Vec::with_capacity(remove.len() + add.len());
        gone.extend(remove.iter().chain(add.iter().map(|r| &r.0)));
        gone.sort_unstable();
        self.routes.update(|routes| {
            let mut next: Vec<(Addr, Addr)> =
                routes.iter().copied().filter(|r| gone.binary_search(&r.0).is_err()).collect();
            next.extend_from_slice(add);
            next.sort_by_key(|r| r.0);
            next
        });
    }

    /// Turn the jumps of `sites` back into `int3`s, saying why, each step of the protocol
    /// once for all of them: the spans of the jumps undone, whose pages the caller gives back
    /// (`CodePages::release_all`), and the first error.
    fn unjump_all(
        &self,
        st: &mut State,
        sites: BTreeMap<Addr, NotOptimized>,
    ) -> (Vec<(Addr, u64)>, Result<(), ProbeError>) {
        if sites.is_empty() {
            return (Vec::new(), Ok(()));
        }
        // Out of the tree before the first write: from then on the registrar's allocations and
        // frees may trap on a probed allocator turned back into an `int3`.
        let sites: Vec<(Addr, NotOptimized)> = sites.into_iter().collect();
        // Looked at before dprobe writes its own `int3` there (see `behind_a_breakpoint`).
        let behind: Vec<bool> = sites
            .iter()
            .map(|(a, _)| behind_a_breakpoint(jump_start(*a, &st.sites[a]), &jump_of(&st.sites[a]).1.jump()))
            .collect();
        // A jump whose site is left with no enabled probe comes off in one store where it can
        // (`code_writes/one_store.rs`: no `int3` in between), its original code back; the
        // others, and any refused, take the protocol's steps back to their `int3`.
        let mut taken_off = vec![false; sites.len()];
        let results = {
            let jumps: Vec<optimizer::Jump<'_>> = sites.iter().map(|(a, _)| jump_of(&st.sites[a])).collect();
            let quick: Vec<usize> = (0..jumps.len())
                .filter(|&i| {
                    sites[i].1 == NotOptimized::Disarmed && !behind[i] && optimizer::off_in_one_store(jumps[i])
                })
                .collect();
            let quick_jumps: Vec<optimizer::Jump<'_>> = quick.iter().map(|&i| jumps[i]).collect();
            for (&i, outcome) in quick.iter().zip(optimizer::remove_in_one_store(&quick_jumps)) {
                taken_off[i] = outcome.is_ok();
            }
            let slow: Vec<usize> = (0..jumps.len()).filter(|&i| !taken_off[i]).collect();
            let slow_jumps: Vec<optimizer::Jump<'_>> = slow.iter().map(|&i| jumps[i]).collect();
            let mut results: Vec<Result<(), ProbeError>> = taken_off.iter().map(|_| Ok(())).collect();
            for (&i, outcome) in slow.iter().zip(optimizer::unoptimize_all(&slow_jumps)) {
                results[i] = outcome;
            }
            results
        };
        let (mut first_error, mut unrouted, mut gone, mut starts) =
            (None, Vec::with_capacity(sites.len()), Vec::with_capacity(sites.len()), Vec::new());
        for ((((addr, why), result), behind), taken_off) in sites.into_iter().zip(results).zip(behind).zip(taken_off) {
            let mut taken_over = false;
            let (start, jump) = (jump_start(addr, &st.sites[&addr]), jump_of(&st.sites[&addr]).1.jump());
            match result {
                // Nothing to undo where the code is gone (its library unloaded under it).
                Err(_) if code_gone(addr) => {}
                // A debugger's breakpoint on the jump's first byte: it saved the `e9` and
                // writes it back when it goes. Its last probe gone, the jump and its detour
                // stay, running no handler, until then (`behind_a_breakpoint`); no other
                // change of the jump can be made meanwhile.
                Err(_) if behind && why == NotOptimized::Disarmed => {
                    st.sites.get_mut(&addr).expect("a jumping site").kept_behind_breakpoint = true;
                    continue;
                }
                Err(_) if behind => {
                    first_error.get_or_insert(ProbeError::Patch {
                        addr: start,
                        reason: "a debugger's breakpoint is on the first byte of dprobe's jump there: the jump \
                                 cannot change until the breakpoint is removed"
                            .into(),
                    });
                    continue;
                }
                // Nor where the program wrote its own code over the jump (a hot patch): the
                // site's `int3` went with it.
                Err(_) if !holds(start, &jump) => {
                    taken_over = true;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
                Ok(()) => {}
            }
            let site = st.sites.get_mut(&addr).expect("a jumping site");
            // (A jump that came off in one store with its last enabled probe took its `int3`
            // with it.)
            site.armed &= !taken_over && !taken_off;
            site.jumping = false;
            site.kept_behind_breakpoint = false;
            site.jump_status = Err(why);
            if site.window.as_ref().is_ok_and(|w| w.len() > 1) {
                unrouted.push(addr);
            }
            let start = jump_start(addr, site);
            if start != addr {
                starts.push((start, None));
            }
            gone.push((start, JUMP_LEN as u64));
        }
        self.set_routes(&unrouted, &[]);
        self.set_window_starts(&starts);
        (gone, first_error.map_or(Ok(()), Err))
    }

    /// Where a probe would go, without registering anything.
    pub fn resolve(&self, probe: &Kprobe) -> Result<Target, ProbeError> {
        let _own = trap::OwnWork::enter();
        let (mut st, maps) = self.lock_with_maps()?;
        drop_moved_symbols(&mut st, &maps);
        Ok(locate(&mut st, &maps, probe, &mut FunctionCache::default())?.0)
    }

    /// Where each of `probes` would go, or why it cannot, as [`Engine::register`] finds it
    /// now: the process's maps read once for all of them (the error: they could not be read).
    pub fn resolve_each(&self, probes: &[Kprobe]) -> Result<Vec<Result<Target, ProbeError>>, ProbeError> {
        let _own = trap::OwnWork::enter();
        let (mut st, maps) = self.lock_with_maps()?;
        drop_moved_symbols(&mut st, &maps);
        let mut functions = FunctionCache::default();
        Ok(probes.iter().map(|p| locate(&mut st, &maps, p, &mut functions).map(|(target, _)| target)).collect())
    }

    /// Where a probe would go, checked to be the first instruction of a function (after an
    /// `endbr64`, the instruction after it counts as the entry too).
    pub fn function_entry(&self, probe: &Kprobe) -> Result<Target, ProbeError> {
        let target = self.resolve(probe)?;
        let (addr, f) = (target.addr, &target.function);
        let mut first = [0u8; 15];
        let endbr = if sys::read_memory(f.start, &mut first).is_ok() { endbr64_len(&first) } else { 0 };
        if addr == f.start || (endbr > 0 && addr == f.start.offset(endbr as u64)) {
            Ok(target)
        } else {
            Err(ProbeError::NotFunctionEntry { addr, function: f.name.to_string(), start: f.start })
        }
    }

    /// The original code (dprobe's patches undone) of function `f`, then of its cold part if
    /// it has one: `(start, bytes)` of each part.
    pub(crate) fn function_code(&self, f: &Function) -> Result<Vec<(Addr, Vec<u8>)>, ProbeError> {
        let _own = trap::OwnWork::enter();
        let st = self.lock();
        let cold = st.symbols.as_ref().and_then(|s| s.cold_part(f)).cloned();
        let mut parts = Vec::new();
        for part in std::iter::once(f).chain(cold.as_ref()) {
            let mut code = vec![0u8; part.size as usize];
            sys::read_memory(part.start, &mut code).map_err(|e| ProbeError::InvalidAddress {
                addr: part.start,
                reason: format!("cannot read the function's code: {e}"),
            })?;
            revert_own_patches(&st, part.start, &mut code);
            parts.push((part.start, code));
        }
        Ok(parts)
    }

    /// Register probes, all or nothing: on error nothing is patched and no probe remains.
    pub fn register(
        &self,
        probes: Vec<Kprobe>,
    ) -> Result<Vec<(ProbeId, Target, Arc<dprobe_core::ProbeCounters>)>, ProbeError> {
        if trap::in_handler() {
            return Err(ProbeError::InHandler);
        }
        let _own = trap::OwnWork::enter();
        let (mut st, maps) = self.lock_with_maps()?;
        let mut placed = Vec::with_capacity(probes.len());
        let mut functions = FunctionCache::default();
        drop_moved_symbols(&mut st, &maps);
        // Every probe resolved first (up to the first that cannot be: the batch's error), so
        // that their functions' code is read together.
        let mut targets: Vec<Result<Target, ProbeError>> = Vec::with_capacity(probes.len());
        for p in &probes {
            targets.push(resolve(&mut st, &maps, p));
            if targets.last().is_some_and(Result::is_err) {
                break;
            }
        }
        functions.read_ahead(&st, &targets);
        for target in targets {
            placed.push(locate_target(&mut st, &maps, target?, &mut functions)?);
        }
        drop(functions);
        let placed: Vec<Located> = placed;
        let mut lists = BTreeMap::new();
        let mut out = Vec::with_capacity(probes.len());
        let first_new = ProbeId(st.next_id + 1);
        let mut new_sites = Vec::with_capacity(placed.iter().filter(|(_, analyzed)| analyzed.is_some()).count());
        for (probe, (target, analyzed)) in probes.into_iter().zip(placed) {
            st.next_id += 1;
            let addr = target.addr;
            let entry = Arc::new(ProbeEntry::new(ProbeId(st.next_id), probe));
            out.push((entry.id, target, entry.stats.clone()));
            let list = lists.entry(addr).or_insert_with(|| match (st.sites.get(&addr), analyzed) {
                (Some(site), _) => site.probes.clone(),
                (None, Some((insn, window, vector))) => {
                    new_sites.push((addr, SiteState::new(insn, window, vector, origin_of(&maps, addr))));
                    Vec::new()
                }
                (None, None) => unreachable!("a site not analyzed is one that exists"),
            });
            ProbeEntry::add_to(list, entry);
        }
        st.sites.insert_new(new_sites);
        let batch: Vec<Addr> = lists.keys().copied().collect();
        if let Err(e) = self.apply(&mut st, &maps, lists) {
            // A step failed after others were taken: put every site of the batch back as it
            // was (its probes without this batch's), so that a refused batch leaves no probe
            // of it behind; sites left with nothing to keep go.
            let before: BTreeMap<Addr, Vec<Arc<ProbeEntry>>> = batch
                .iter()
                .map(|a| (*a, st.sites[a].probes.iter().filter(|p| p.id < first_new).cloned().collect()))
                .collect();
            let _ = self.apply(&mut st, &maps, before);
            for a in batch {
                if st.sites.get(&a).is_some_and(|s| s.slots.is_empty() && s.probes.is_empty() && !s.armed) {
                    st.sites.remove(&a);
                }
            }
            return Err(e);
        }
        Ok(out)
    }

    /// Unregister probes; returns their final counters. When this returns, no handler of
    /// these probes runs any more and each site without probes has its original bytes back.
    pub fn unregister(&self, probes: &[(ProbeId, Addr)]) -> Result<Vec<Stats>, ProbeError> {
        if trap::in_handler() {
            return Err(ProbeError::InHandler);
        }
        let _own = trap::OwnWork::enter();
        let (mut st, maps) = self.lock_with_maps()?;
        // Each site's list without the probes that go, and those probes, in the order asked.
        let mut by_site: Vec<(Addr, ProbeId, usize)> =
            probes.iter().enumerate().map(|(k, (id, a))| (*a, *id, k)).collect();
        by_site.sort_unstable();
        let mut finals: Vec<Option<Arc<ProbeEntry>>> = vec![None; probes.len()];
        let mut lists = BTreeMap::new();
        for going in by_site.chunk_by(|a, b| a.0 == b.0) {
            let addr = going[0].0;
            let Some(site) = st.sites.get(&addr) else { continue };
            let mut kept = Vec::with_capacity(site.probes.len());
            for p in &site.probes {
                match going.binary_search_by_key(&p.id, |g| g.1) {
                    Ok(i) => finals[going[i].2] = Some(p.clone()),
                    Err(_) => kept.push(p.clone()),
                }
            }
            lists.insert(addr, kept);
        }
        let finals: Vec<Arc<ProbeEntry>> = finals
            .into_iter()
            .zip(probes)
            .map(|(found, (id, _))| found.ok_or(ProbeError::NotRegistered(id.0)))
            .collect::<Result<_, _>>()?;
        self.apply(&mut st, &maps, lists)?;
        Ok(finals.iter().map(|e| e.stats.snapshot()).collect())
    }

    /// Enable or disable a probe: its handlers stop or start running at once, and its site is
    /// disarmed when no enabled probe is left there (the kernel's `disable_kprobe`).
    pub fn set_enabled(&self, id: ProbeId, addr: Addr, on: bool) -> Result<(), ProbeError> {
        if trap::in_handler() {
            return Err(ProbeError::InHandler);
        }
        let _own = trap::OwnWork::enter();
        let (mut st, maps) = self.lock_with_maps()?;
        let entry = st
            .sites
            .get(&addr)
            .and_then(|s| s.probes.iter().find(|p| p.id == id).cloned())
            .ok_or(ProbeError::NotRegistered(id.0))?;
        let was = entry.stats.set_enabled(on);
        let list = st.sites[&addr].probes.clone();
        if let Err(e) = self.apply(&mut st, &maps, BTreeMap::from([(addr, list)])) {
            entry.stats.set_enabled(was);
            return Err(e);
        }
        Ok(())
    }

    /// Put back the `int3` of every site that should hold one and holds its original
    /// instruction again (another tool's uprobe there was removed; see `rearm.rs`), counting
    /// it against the site's probes: how many sites were re-armed.
    pub fn rearm_undone(&self) -> usize {
        if trap::in_handler() {
            return 0;
        }
        let _own = trap::OwnWork::enter();
        self.finish_kept_jumps();
        let st = self.lock();
        let mut undone = rearm::undone(st.sites.values().filter(|s| s.armed && !s.jumping).map(|s| &s.insn));
        // In address order: neighbouring changes go together (`code_writes`).
        undone.sort_unstable();
        if undone.is_empty() {
            return 0;
        }
        let changes: Vec<Change> = undone.iter().map(|a| st.sites[a].arm).collect();
        let _spawns = spawn_hold::hold();
        let results = code_writes::apply(&changes);
        sys::sync_cores();
        let mut rearmed = 0;
        for (addr, result) in undone.iter().zip(results) {
            if result.is_ok() {
                rearmed += 1;
                st.sites[addr].probes.iter().for_each(|p| p.stats.rearmed());
            }
        }
        rearmed
    }

    /// The jumps of sites without an enabled probe that stay behind a debugger's breakpoint
    /// on their first byte (see [`behind_a_breakpoint`]), each a detour that runs no handler.
    /// Each is its jump's first byte (before the probed exit, for an exit's), with its place as
    /// `object:function+offset` where the symbols say.
    pub fn kept_jumps(&self) -> Vec<(Addr, Option<String>)> {
        let st = self.lock();
        let mut kept: Vec<Addr> =
            st.sites.iter().filter(|(_, s)| kept_jump(s)).map(|(a, s)| jump_start(*a, s)).collect();
        kept.sort_unstable();
        kept.into_iter().map(|a| (a, symbol_at(&st, a))).collect()
    }

    /// Put the original code back under the jumps kept behind a debugger's breakpoint that has
    /// gone: their first byte is the `e9` again (or the code changed or went, its library
    /// unloaded: there is nothing to put back, and the jump is forgotten).
    fn finish_kept_jumps(&self) {
        let mut st = self.lock();
        let lists: BTreeMap<Addr, Vec<Arc<ProbeEntry>>> = st
            .sites
            .iter()
            .filter(|(a, s)| kept_jump(s) && !behind_a_breakpoint(jump_start(**a, s), &jump_of(s).1.jump()))
            .map(|(a, s)| (*a, s.probes.clone()))
            .collect();
        if lists.is_empty() {
            return;
        }
        // A failure leaves the jump as it is: looked at again next time.
        if let Ok(maps) = maps() {
            let _ = self.apply(&mut st, &maps, lists);
        }
    }

    /// The registered probes.
    pub fn list(&self) -> Vec<ProbeInfo> {
        let st = self.lock();
        let mut out = Vec::new();
        for row in self.table.rows().iter().filter(|r| r.kind == TrapKind::Entry) {
            let (addr, site) = (row.site.addr, &row.site);
            let symbol = symbol_at(&st, addr);
            let execution = site.arch.execution();
            let armed = st.sites.get(&addr).is_some_and(|s| s.armed);
            let jump = st.sites.get(&addr).map_or(Err(NotOptimized::Disarmed), |s| s.jump_status.clone());
            let whole_vector_state =
                st.sites.get(&addr).is_some_and(|s| s.jump_status.is_ok() && s.vector == VectorState::Full);
            for p in &site.probes {
                out.push(ProbeInfo {
                    id: p.id,
                    addr,
                    symbol: symbol.clone(),
                    enabled: p.stats.is_enabled(),
                    armed,
                    execution,
                    jump: jump.clone(),
                    whole_vector_state,
                    stats: p.stats.snapshot(),
                });
            }
        }
        out
    }

    /// Address ranges that can never be probed: dprobe's own hit path in the loaded objects,
    /// with the reason (the kernel's `kprobes/blacklist`).
    pub fn blacklist(&self) -> Result<Vec<(Addr, Addr, String)>, ProbeError> {
        let _own = trap::OwnWork::enter();
        let (mut st, maps) = self.lock_with_maps()?;
        st.symbols_of = loaded_files(&maps);
        let symbols = st.symbols.insert(Symbols::load(&maps));
        Ok(symbols
            .functions()
            .iter()
            .filter_map(|f| hit_path_region(&f.name).map(|why| (f.start, f.start.offset(f.size), why)))
            .collect())
    }

    /// Make the code and the table say what `lists` (the new probe list of each site) says.
    fn apply(
        &self,
        st: &mut State,
        maps: &[Mapping],
        lists: BTreeMap<Addr, Vec<Arc<ProbeEntry>>>,
    ) -> Result<(), ProbeError> {
        // No child of `posix_spawn` runs in the program's memory while its code changes
        // (`spawn_hold.rs`).
        let _spawns = spawn_hold::hold();
        let listed: Vec<Listed<'_>> = lists.iter().map(|(addr, probes)| Listed::new(st, *addr, probes)).collect();
        // 1. Everything that can fail without side effects on the program: plans and slots.
        //    New slots are written first, then published together, then every thread is
        //    serialized once before any site can lead to them. This comes before any jump
        //    turns back into an `int3`: the registrar's own calls into probed functions (the
        //    C library's allocator) would trap meanwhile.
        let mut execs = Vec::with_capacity(listed.len());
        let mut new_slots = Vec::new();
        let mut prepared_all = || -> Result<(), ProbeError> {
            for &Listed { addr, post, .. } in &listed {
                if let Some(prepared) = &st.sites[&addr].prepared[post as usize] {
                    execs.push(prepared.clone());
                    continue;
                }
                let insn = st.sites[&addr].insn.clone();
                let prepared = prepare(&insn, post, |ending| self.slot_for(st, maps, addr, ending))?;
                let new_slot =
                    prepared.slot.as_ref().filter(|s| !st.sites[&addr].slots.iter().any(|o| o.addr == s.addr));
                if let Some(slot) = new_slot {
                    new_slots.push(slot.clone());
                } else if prepared.slot.is_some() || !matches!(plan(&insn, post), ExecPlan::Slot(_)) {
                    // The same again next time (one that fell back to emulation for want
                    // of a slot may get one later; one with a new slot is kept once the
                    // slot is written, the next time).
                    st.sites.get_mut(&addr).expect("site of a list").prepared[post as usize] = Some(prepared.clone());
                }
                execs.push(prepared);
            }
            Ok(())
        };
        let mut prepared = prepared_all();
        if let Err(e) = self.install_slots(st, &mut new_slots) {
            prepared = prepared.and(Err(e));
        }
        if !new_slots.is_empty() {
            self.slots.update(|slots| {
                let mut next = slots.clone();
                next.extend(new_slots.iter().cloned());
                next.sort_by_key(|s| s.addr);
                next
            });
            sys::sync_cores();
        }
        prepared?;
        // 1b. Sites whose jump must go (no enabled probe left, a post-handler after a branch or
        //    a probe that asks for int3 added), or must change detour (post-handlers came or
        //    went), are turned back into int3 probes first.
        //    So are jumps over a site that gets a probe now.
        let mut unjumps = BTreeMap::new();
        for l in &listed {
            let site = &st.sites[&l.addr];
            if site.jumping {
                if let Err(why) = &l.wanted {
                    unjumps.entry(l.addr).or_insert_with(|| why.clone());
                } else if site.detour_post != l.post {
                    // Post-handlers came or went: the jump goes to a detour with (or without)
                    // the post block.
                    unjumps.entry(l.addr).or_insert(NotOptimized::PostHandler);
                }
            }
            // (A site left without probes puts no `int3` in a jump's window.)
            let over = (!l.probes.is_empty())
                .then(|| near(&st.sites, l.addr).find(|(a, s)| s.jumping && blocks(**a, s, l.addr, site)))
                .flatten();
            if let Some((&outer, _)) = over {
                unjumps.entry(outer).or_insert(NotOptimized::ProbeInWindow { other: l.addr });
            }
        }
        let (unjumped, unjumping) = self.unjump_all(st, unjumps);
        // 2. Disarm sites left without an enabled probe, before they are published so. The
        //    pages of the jumps just undone get their protection back after that: writes to
        //    pages still held writable cost less (`code_writes.rs`).
        // (A jump kept behind a debugger's breakpoint stays armed.)
        let disarms: Vec<Addr> = listed
            .iter()
            .filter(|l| !l.enabled && st.sites[&l.addr].armed && !st.sites[&l.addr].jumping)
            .map(|l| l.addr)
            .collect();
        let disarmed = unjumping.and_then(|()| set_armed(&mut st.sites, &disarms, false));
        st.pages.release_all(&unjumped);
        disarmed?;
        // 3. Publish, and wait for readers of the old rows.
        let mut published = Vec::with_capacity(listed.len());
        let rows: Vec<TableEntry<Prepared>> = listed
            .iter()
            .zip(execs)
            .flat_map(|(l, exec)| {
                let addr = l.addr;
                let traps: Vec<u64> = st.sites[&addr].slots.iter().filter_map(|s| s.trap_addr()).map(|a| a.0).collect();
                let site = Arc::new(Site { addr, arch: exec, probes: l.probes.to_vec() });
                published.push((addr, site.clone()));
                let entry = TableEntry { key: addr.0, kind: TrapKind::Entry, site: site.clone() };
                std::iter::once(entry).chain(traps.into_iter().map(move |key| TableEntry {
                    key,
                    kind: TrapKind::PostStep,
                    site: site.clone(),
                }))
            })
            .collect();
        let old_rows = self.table.change(|table| {
            table.retain(|r| listed.binary_search_by_key(&r.site.addr, |l| l.addr).is_err());
            table.extend(rows);
        });
        // Detours read their site through `hot`: point them at the new one, and keep the old
        // alive until no dispatcher can still be reading it.
        let (mut retired, mut read_by_detours) = (Vec::new(), false);
        for (addr, site) in published {
            let state = st.sites.get_mut(&addr).expect("site of a list");
            if let Some(hot) = state.hot {
                hot.site.store(Arc::as_ptr(&site).cast_mut(), std::sync::atomic::Ordering::Release);
                read_by_detours = true;
            }
            retired.extend(state.published.replace(site));
        }
        if read_by_detours {
            jump::grace();
        }
        drop(retired);
        drop(old_rows);
        // 4. Build the detours of sites that will be jumps while nothing is armed yet: the
        //    registrar's own calls into probed functions (the C library's allocator) would
        //    trap meanwhile. Then arm sites that have an enabled probe now.
        let lacks_detour = |site: &SiteState, post: bool| site.detour.is_none() || site.detour_post != post;
        let want_detours: Vec<(Addr, bool)> = listed
            .iter()
            .filter(|l| l.wanted.is_ok() && lacks_detour(&st.sites[&l.addr], l.post))
            .map(|l| (l.addr, l.post))
            .collect();
        if !want_detours.is_empty() && !shadow_stack() {
            self.build_detours(st, maps, &want_detours);
        }
        // The pages under the jumps to come are made writable before their sites are armed:
        // the `int3`s then go in as plain stores (`code_writes.rs`), and each page's alias is
        // made while the C library's functions are not armed yet (making it opens the file).
        let (mut arms, mut ready) = (Vec::new(), Vec::new());
        for l in &listed {
            let site = st.sites.get_mut(&l.addr).expect("site of a list");
            site.probes = l.probes.to_vec();
            if !site.armed && l.enabled {
                arms.push(l.addr);
                if l.wanted.is_ok() && !lacks_detour(site, l.post) {
                    ready.push(l.addr);
                }
            }
        }
        let mut held = self.hold_pages_before_arming(st, maps, ready);
        // 4b. Jumps that can go in over the original code in one store do so, never armed on
        //     `int3` (`code_writes/one_store.rs`: a thread that blocks every signal would be
        //     killed at it). Those refused are armed with the others and go on as they do.
        let in_one_store: Vec<Addr> = held
            .iter()
            .filter(|(a, h)| h.as_ref().is_some_and(Result::is_ok) && optimizer::in_one_store(jump_of(&st.sites[a])))
            .map(|(a, _)| *a)
            .collect();
        let mut placed = Vec::with_capacity(in_one_store.len());
        for (addr, status) in self.make_jumps(st, maps, &in_one_store, &mut held, Placing::InOneStore) {
            if status.is_ok() {
                let site = st.sites.get_mut(&addr).expect("site of a list");
                (site.armed, site.jump_status) = (true, Ok(()));
                placed.push(addr);
            }
        }
        placed.sort_unstable();
        arms.retain(|a| placed.binary_search(a).is_err());
        let armed = set_armed(&mut st.sites, &arms, true);
        // 5. Armed sites that can be jumps become jumps; the others say why not. A site that
        //    cannot become one stays a working int3 probe: this never fails the call. Sites
        //    kept on int3 by a probe inside their window are looked at again too: that probe
        //    may be gone or disabled now.
        //    (Only a site whose probes are all gone or disabled now can have kept one on int3.)
        let mut blocked: Vec<Addr> = listed
            .iter()
            .filter(|l| !l.enabled)
            .flat_map(|l| {
                near(&st.sites, l.addr).filter_map(|(a, s)| {
                    let waits =
                        s.armed && !s.jumping && matches!(s.jump_status, Err(NotOptimized::ProbeInWindow { .. }));
                    waits.then_some(*a)
                })
            })
            .filter(|a| listed.binary_search_by_key(a, |l| l.addr).is_err())
            .collect();
        blocked.sort_unstable();
        blocked.dedup();
        let blocked_wanted: Vec<Result<(), NotOptimized>> =
            blocked.iter().map(|a| optimizer::wanted(*a, &st.sites[a].window, &st.sites[a].probes)).collect();
        let consider = listed.iter().map(|l| (l.addr, &l.wanted)).chain(blocked.iter().copied().zip(&blocked_wanted));
        let mut to_jump = Vec::new();
        let mut statuses = Vec::new();
        for (addr, wanted) in consider {
            let site = &st.sites[&addr];
            let inside = || near(&st.sites, addr).find(|(b, other)| other.armed && blocks(addr, site, **b, other));
            let wanted = wanted
                .clone()
                .and_then(|()| inside().map_or(Ok(()), |(&other, _)| Err(NotOptimized::ProbeInWindow { other })));
            let status = match wanted {
                Ok(()) if site.jumping => Ok(()),
                Ok(()) if site.armed => {
                    to_jump.push(addr);
                    continue;
                }
                Ok(()) => Err(NotOptimized::Disarmed),
                Err(why) => Err(why),
            };
            statuses.push((addr, status));
        }
        for (addr, status) in statuses {
            st.sites.get_mut(&addr).expect("site of a list").jump_status = status;
        }
        to_jump.sort_unstable();
        for (addr, status) in self.make_jumps(st, maps, &to_jump, &mut held, Placing::OverInt3s) {
            st.sites.get_mut(&addr).expect("site of a list").jump_status = status;
        }
        // Pages held for sites that did not become jumps after all (a probe inside the
        // window, say) get their protection back.
        let unused: Vec<(Addr, u64)> = held
            .into_iter()
            .filter(|(_, h)| h.as_ref().is_some_and(Result::is_ok))
            .map(|(a, _)| jump_span(a, &st.sites[&a]))
            .collect();
        st.pages.release_all(&unused);
        // 6. Sites left without probes give their detours up, to be reused once no thread
        //    can be inside them.
        //    A hit still running through one finds no site (it runs no handler): the site
        //    it read before is kept alive until then, and the next publication of the site
        //    does not go through the detour.
        let mut retired_now = false;
        for addr in listed.iter().map(|l| l.addr).chain(blocked) {
            let site = st.sites.get_mut(&addr).expect("site of a list");
            if site.probes.is_empty() && !site.armed && !site.jumping {
                st.orphans.extend(site.spare.take().map(|d| *d));
                if let (Some(detour), Some(hot)) = (site.detour.take(), site.hot.take()) {
                    hot.site.store(std::ptr::null_mut(), std::sync::atomic::Ordering::Release);
                    st.retired.insert(addr, Retired { detour, hot, post: site.detour_post });
                    retired_now = true;
                }
            }
        }
        if retired_now {
            jump::grace();
        }
        armed
    }

    /// Make retired detours reusable once no thread can be inside one: a safepoint in which
    /// every other thread is found with its program counter outside them and no address
    /// inside them on its stack (no hit in progress through one, no signal frame saved there).
    /// A thread found there (preempted, or parked by a signal handler of the program) keeps
    /// them retired until a later registration tries again.
    fn reclaim_detours(&self, st: &mut State) {
        if st.retired.is_empty() && st.orphans.is_empty() {
            return;
        }
        let span = DETOUR_SLOTS * SLOT_SIZE as u64;
        let starts = st.retired.values().map(|r| r.detour.addr.0).chain(st.orphans.iter().map(|d| d.addr.0));
        let mut retired: Vec<(u64, u64)> = starts.map(|a| (a, a + span)).collect();
        retired.sort_unstable();
        let patience = Some(std::time::Duration::from_millis(50));
        let mut plan = safepoint::Plan { retired, patience, ..safepoint::Plan::default() };
        if safepoint::run(&mut plan).is_err() {
            return;
        }
        for r in std::mem::take(&mut st.retired).into_values() {
            // SAFETY: the `JumpSite` was leaked from a box for this detour; its site no longer
            // points to it, and the safepoint showed that no thread is inside the detour or
            // in a hit through it, the only readers.
            drop(unsafe { Box::from_raw((r.hot as *const jump::JumpSite).cast_mut()) });
            st.free_detours.push(r.detour.addr);
        }
        for d in std::mem::take(&mut st.orphans) {
            st.free_detours.push(d.addr);
        }
    }

    /// Make the pages under the jumps that `sites` (about to be armed, in address order, each
    /// with the detour its probes want) will take writable: for each, in address order,
    /// whether its pages are held (see [`Engine::make_jumps`], which takes them over).
    fn hold_pages_before_arming(&self, st: &mut State, maps: &[Mapping], sites: Vec<Addr>) -> HeldPages {
        if shadow_stack() {
            return Vec::new();
        }
        debug_assert!(sites.windows(2).all(|w| w[0] < w[1]), "in address order, for make_jumps' search");
        let spans: Vec<(Addr, u64)> = sites.iter().map(|a| jump_span(*a, &st.sites[a])).collect();
        let held = st.pages.acquire_all(maps, &spans);
        sites.into_iter().zip(held.into_iter().map(Some)).collect()
    }

    /// Build (once) and write the detours of armed sites, then put their jumps in place, each
    /// step of the protocol once for all of them (one serialization of every thread per step,
    /// one safepoint): for each site, whether it is a jump now or why not. `held` has the
    /// sites whose pages were made writable already ([`Engine::hold_pages_before_arming`]):
    /// those of `addrs` are taken out of it, and their pages given back if they do not become
    /// jumps.
    fn make_jumps(
        &self,
        st: &mut State,
        maps: &[Mapping],
        addrs: &[Addr],
        held: &mut HeldPages,
        how: Placing,
    ) -> Vec<(Addr, Result<(), NotOptimized>)> {
        // A vector, not a map: this runs while the sites are armed, the C library's allocator
        // among them, and a map's nodes are freed as its entries go.
        let mut take = |a: &Addr| held.binary_search_by_key(a, |(h, _)| *h).ok().and_then(|i| held[i].1.take());
        if addrs.is_empty() {
            return Vec::new();
        }
        if shadow_stack() {
            return addrs.iter().map(|a| (*a, Err(NotOptimized::ShadowStack))).collect();
        }
        // 1. Detours (most were built before the sites were armed, see `apply`: here only
        //    those of sites that were kept on int3 by a probe inside their window).
        let wants: Vec<(Addr, bool)> = addrs
            .iter()
            .map(|a| (*a, st.sites[a].probes.iter().any(|p| p.has_post())))
            .filter(|(a, post)| st.sites[a].detour.is_none() || st.sites[a].detour_post != *post)
            .collect();
        let mut status = if wants.is_empty() { BTreeMap::new() } else { self.build_detours(st, maps, &wants) };
        // 1b. The pages under the jumps become writable (most did before their sites were
        //     armed, see `apply`), which keeps kernel uprobes registered from now on off them;
        //     then the windows are compared with their files, which finds a uprobe or another
        //     tool's patch placed before (`code_pages.rs`, `file_code.rs`). One placed since is
        //     found by the patching step's own check.
        let failed: Vec<(Addr, u64)> = addrs
            .iter()
            .filter(|a| status.contains_key(a) && take(a).is_some_and(|h| h.is_ok()))
            .map(|a| jump_span(*a, &st.sites[a]))
            .collect();
        st.pages.release_all(&failed);
        let checked: Vec<Addr> = addrs.iter().copied().filter(|a| !status.contains_key(a)).collect();
        let spans: Vec<(Addr, u64)> = checked.iter().map(|a| jump_span(*a, &st.sites[a])).collect();
        let taken: Vec<Option<Result<(), String>>> = checked.iter().map(&mut take).collect();
        let pending: Vec<(Addr, u64)> =
            taken.iter().zip(&spans).filter(|(h, _)| h.is_none()).map(|(_, s)| *s).collect();
        let mut acquired = st.pages.acquire_all(maps, &pending).into_iter();
        let held: Vec<Result<(), String>> =
            taken.into_iter().map(|h| h.unwrap_or_else(|| acquired.next().expect("one outcome per span"))).collect();
        let windows: Vec<&[Insn]> = checked.iter().map(|a| st.sites[a].window.as_deref().unwrap_or_default()).collect();
        let in_files = file_code::check_windows(maps, &windows);
        let mut refused = Vec::new();
        for (((&addr, &(start, len)), held), in_file) in checked.iter().zip(&spans).zip(held).zip(in_files) {
            let checked = match held {
                Err(reason) => Err(NotOptimized::CodeNotWritable { addr, reason }),
                Ok(()) => in_file.inspect_err(|_| refused.push((start, len))),
            };
            if let Err(why) = checked {
                status.insert(addr, Err(why));
            }
        }
        st.pages.release_all(&refused);
        // 2a. Exit windows: a trap at the first byte continues in the detour's copy, then that
        //     byte becomes an `int3`, before the safepoint: no thread can enter the window
        //     once moved out (see `optimizer.rs`).
        self.arm_window_starts(st, addrs, &mut status);
        // 2. Windows of several instructions: hits that trap from now on continue in the
        //    copy; then no thread may be left inside the windows or the slots (one safepoint
        //    for all; see `optimizer.rs`).
        //    (From here on sites are armed: the registrar allocates little, since each
        //    allocation may trap on a probed allocator.)
        let several: Vec<Addr> = addrs
            .iter()
            .copied()
            .filter(|a| !status.contains_key(a) && st.sites[a].window.as_ref().is_ok_and(|w| w.len() > 1))
            .collect();
        if !several.is_empty() {
            let mut plan = safepoint::Plan::default();
            plan.windows.reserve(several.len());
            let mut routes = Vec::with_capacity(several.len());
            for a in &several {
                let site = &st.sites[a];
                let detour = site.detour.as_ref().expect("built above");
                routes.push((*a, detour.window.addr));
                let window = plan.windows.len();
                plan.windows.push(window_copy(*a, detour).window);
                // An exit's slot runs the exit itself and jumps back after the window.
                let slots = if optimizer::is_exit(detour) { &[][..] } else { &site.slots[..] };
                plan.slots.extend(slots.iter().map(|s| safepoint::Slot {
                    start: s.addr,
                    end: s.addr.offset(s.len as u64),
                    after_insn: s.far_scratch.is_none().then(|| s.insn_addr().offset(site.insn.len as u64)),
                    traps: s.trap_addr().is_some(),
                    window,
                }));
            }
            self.set_routes(&[], &routes);
            if let Err(why) = safepoint::run(&mut plan) {
                self.set_routes(&several, &[]);
                self.disarm_window_starts(st, &several);
                // No jump goes in: the pages made writable for them are given back (a site
                // whose window start could not be armed gave its own back already).
                let spans: Vec<(Addr, u64)> = several.iter().map(|a| jump_span(*a, &st.sites[a])).collect();
                st.pages.release_all(&spans);
                for a in &several {
                    status.insert(*a, Err(why.clone()));
                }
            }
        }
        // 3. The jumps: bytes +1..+4 of every site, then byte 0 of every site (or the five
        //    bytes in one store).
        let go: Vec<Addr> = addrs.iter().copied().filter(|a| !status.contains_key(a)).collect();
        let results = {
            let jumps: Vec<optimizer::Jump<'_>> = go.iter().map(|a| jump_of(&st.sites[a])).collect();
            match how {
                Placing::OverInt3s => optimizer::optimize_all(&jumps),
                Placing::InOneStore => optimizer::place_in_one_store(&jumps),
            }
        };
        let mut unrouted = Vec::new();
        let mut out = Vec::with_capacity(addrs.len());
        for (addr, result) in go.into_iter().zip(results) {
            let outcome = match result {
                Ok(()) => {
                    st.sites.get_mut(&addr).expect("site").jumping = true;
                    Ok(())
                }
                Err(e) => {
                    if several.binary_search(&addr).is_ok() {
                        unrouted.push(addr);
                    }
                    self.disarm_window_starts(st, &[addr]);
                    st.pages.release_all(&[jump_span(addr, &st.sites[&addr])]);
                    Err(NotOptimized::NoDetourPage { addr, reason: format!("patching the jump: {e}") })
                }
            };
            out.push((addr, outcome));
        }
        self.set_routes(&unrouted, &[]);
        out.extend(status);
        out
    }

    /// The first step of the exit windows among `addrs` (those without a `status` yet):
    /// publish where a trap at the window's start continues, then write the `int3` there
    /// (one serialization for all). A site whose byte could not be written gets its status.
    fn arm_window_starts(&self, st: &mut State, addrs: &[Addr], status: &mut BTreeMap<Addr, Result<(), NotOptimized>>) {
        let exits: Vec<Addr> = addrs
            .iter()
            .copied()
            .filter(|a| !status.contains_key(a) && st.sites[a].detour.as_deref().is_some_and(optimizer::is_exit))
            .collect();
        if exits.is_empty() {
            return;
        }
        let starts: Vec<(Addr, Option<Addr>)> = exits
            .iter()
            .map(|a| {
                let d = st.sites[a].detour.as_ref().expect("an exit's detour");
                (d.jump_from, Some(d.target()))
            })
            .collect();
        self.set_window_starts(&starts);
        let results = {
            let jumps: Vec<optimizer::Jump<'_>> = exits.iter().map(|a| jump_of(&st.sites[a])).collect();
            optimizer::set_window_starts(&jumps, true)
        };
        for ((addr, (start, _)), result) in exits.into_iter().zip(starts).zip(results) {
            if let Err(e) = result {
                self.set_window_starts(&[(start, None)]);
                st.pages.release_all(&[(start, JUMP_LEN as u64)]);
                let reason = format!("placing the int3 at the window's start: {e}");
                status.insert(addr, Err(NotOptimized::NoDetourPage { addr, reason }));
            }
        }
    }

    /// Undo [`Engine::arm_window_starts`] for the exit windows among `addrs` (a step after
    /// it failed): their first byte back, then traps there run it.
    fn disarm_window_starts(&self, st: &State, addrs: &[Addr]) {
        let exits: Vec<Addr> =
            addrs.iter().copied().filter(|a| st.sites[a].detour.as_deref().is_some_and(optimizer::is_exit)).collect();
        if exits.is_empty() {
            return;
        }
        {
            let jumps: Vec<optimizer::Jump<'_>> = exits.iter().map(|a| jump_of(&st.sites[a])).collect();
            let _ = optimizer::set_window_starts(&jumps, false);
        }
        let starts: Vec<(Addr, Option<Addr>)> = exits.iter().map(|a| (jump_start(*a, &st.sites[a]), None)).collect();
        self.set_window_starts(&starts);
    }

    /// Build the detours the sites `addrs` lack, reusing freed ones, and publish them: why
    /// each site that could get none has none. Detours are written where no thread can reach
    /// them yet, then published (to map faults back) and made visible to every thread by one
    /// serialization.
    fn build_detours(
        &self,
        st: &mut State,
        maps: &[Mapping],
        wants: &[(Addr, bool)],
    ) -> BTreeMap<Addr, Result<(), NotOptimized>> {
        let mut status: BTreeMap<Addr, Result<(), NotOptimized>> = BTreeMap::new();
        let lacks =
            |st: &State, addr: &Addr, post: bool| st.sites[addr].detour.is_none() || st.sites[addr].detour_post != post;
        let new = wants
            .iter()
            .filter(|(a, post)| lacks(st, a, *post) && st.retired.get(a).is_none_or(|r| r.post != *post))
            .count();
        if new > st.free_detours.len() {
            self.reclaim_detours(st);
        }
        let mut copies = Vec::with_capacity(new);
        for &(addr, post) in wants {
            if lacks(st, &addr, post) {
                match self.build_detour(st, maps, addr, post) {
                    Ok(copy) => copies.extend(copy),
                    Err(why) => {
                        status.insert(addr, Err(why));
                    }
                }
            }
        }
        // The new detours' code, one system call per run of them.
        let written = {
            let room = (DETOUR_SLOTS * SLOT_SIZE as u64) as usize;
            let detour = |c: &WindowCopy| st.sites[&c.original].detour.as_ref().expect("built above");
            let pieces: Vec<Fresh<'_>> =
                copies.iter().map(|c| Fresh { addr: detour(c).addr, code: &detour(c).code, room }).collect();
            code_writes::write_fresh(&pieces)
        };
        let mut kept = Vec::with_capacity(copies.len());
        for (copy, result) in copies.into_iter().zip(written) {
            let addr = copy.original;
            match result {
                Ok(()) => kept.push(copy),
                Err(e) => {
                    // The memory goes back for another detour.
                    let state = st.sites.get_mut(&addr).expect("site");
                    st.free_detours.extend(state.detour.take().map(|d| d.addr));
                    let reason = format!("writing the detour: {e}");
                    status.insert(addr, Err(NotOptimized::NoDetourPage { addr, reason }));
                }
            }
        }
        let copies = kept;
        jump::prepare_readers();
        if !copies.is_empty() {
            // A reused detour's memory replaces the copy of its former site.
            let span = DETOUR_SLOTS * SLOT_SIZE as u64;
            let mut starts: Vec<u64> = copies.iter().map(|c| c.copy.0 - DETOUR_WINDOW).collect();
            starts.sort_unstable();
            let reused = |w: &WindowCopy| {
                let i = starts.partition_point(|s| *s <= w.copy.0);
                i.checked_sub(1).is_some_and(|i| w.copy.0 < starts[i] + span)
            };
            self.windows.update(|windows| {
                let mut next: Vec<WindowCopy> = windows.iter().filter(|w| !reused(w)).copied().collect();
                next.extend_from_slice(&copies);
                next.sort_by_key(|w| w.copy);
                next
            });
        }
        status
    }

    /// Build the detour of a site (not yet reachable: no jump leads to it), with a post block
    /// when `post`; the caller writes the new code. A detour it has of the other kind is kept
    /// aside, and one kept aside before is taken back as it is; a retired one of the other kind
    /// waits for a safepoint before its memory is reused.
    fn build_detour(
        &self,
        st: &mut State,
        maps: &[Mapping],
        addr: Addr,
        post: bool,
    ) -> Result<Option<WindowCopy>, NotOptimized> {
        let vector = st.sites[&addr].vector;
        if vector == VectorState::Full {
            jump::xsave_ready().map_err(|reason| NotOptimized::LiveVectorState { addr, reason })?;
        }
        let published = st.sites[&addr].published.as_ref().map_or(std::ptr::null_mut(), |s| Arc::as_ptr(s).cast_mut());
        if let Some(Retired { detour, hot, post: was }) = st.retired.remove(&addr) {
            hot.site.store(published, std::sync::atomic::Ordering::Release);
            let state = st.sites.get_mut(&addr).expect("site");
            state.hot = Some(hot);
            if was == post {
                // Its own detour, not reused since: the same code, taken back as it is.
                state.detour = Some(detour);
                state.detour_post = post;
                return Ok(None);
            }
            st.orphans.push(*detour);
        }
        let state = st.sites.get_mut(&addr).expect("site");
        if state.detour_post != post {
            if let Some(old) = state.detour.take() {
                // Post-handlers came or went: the detour of the other kind, built before, is
                // taken back as it is, and this one kept aside for the next change.
                let back = state.spare.replace(old);
                if let Some(back) = back {
                    state.detour = Some(back);
                    state.detour_post = post;
                    return Ok(None);
                }
            }
        }
        let no_page = |reason: String| NotOptimized::NoDetourPage { addr, reason };
        let at = match st.free_detours.iter().position(|a| a.0.abs_diff(addr.0) < DETOUR_REACH) {
            Some(i) => st.free_detours.swap_remove(i),
            None => st.pool.alloc_run_near(addr, maps, DETOUR_SLOTS).map_err(|e| no_page(e.to_string()))?,
        };
        let (entry_stub, post_stub) = jump::stubs(vector);
        let built = st.sites[&addr].window.clone().and_then(|window| match post {
            _ if window.first().is_some_and(|i| i.addr != addr) => exit_detour_code(addr, &window, at, entry_stub),
            true => detour_code_with_post(addr, &window, at, entry_stub, post_stub),
            false => detour_code(addr, &window, at, entry_stub),
        });
        let mut detour = match built {
            Ok(d) if d.code.len() <= DETOUR_SLOTS as usize * SLOT_SIZE => d,
            refused => {
                // The memory goes back for another detour.
                st.free_detours.push(at);
                let why = refused.map(|d| no_page(format!("the detour takes {} bytes", d.code.len())));
                return Err(why.unwrap_or_else(|e| e));
            }
        };
        // One per site, shared by the detours it has in turn.
        let hot: &'static jump::JumpSite = st.sites[&addr].hot.unwrap_or_else(|| {
            Box::leak(Box::new(jump::JumpSite { addr, site: std::sync::atomic::AtomicPtr::new(published) }))
        });
        detour.set_word(hot as *const jump::JumpSite as u64);
        // Written by the caller, with the other new detours.
        let copy = window_copy(addr, &detour);
        let state = st.sites.get_mut(&addr).expect("site");
        state.detour = Some(Box::new(detour));
        state.detour_post = post;
        state.hot = Some(hot);
        Ok(Some(copy))
    }

    /// Whether the probe `id`, at `addr`, takes the jump path, or why not.
    pub fn optimized(&self, id: ProbeId, addr: Addr) -> Result<(), NotOptimized> {
        let st = self.lock();
        st.sites
            .get(&addr)
            .filter(|s| s.probes.iter().any(|p| p.id == id))
            .map_or(Err(NotOptimized::Disarmed), |s| s.jump_status.clone())
    }

    /// Where the slot of `addr` with `ending` is: the one built before, or a new one near the
    /// site.
    fn slot_for(&self, st: &mut State, maps: &[Mapping], addr: Addr, ending: SlotEnding) -> Result<Addr, ProbeError> {
        if let Some(s) = st.sites[&addr].slots.iter().find(|s| s.ending == ending) {
            return Ok(s.addr);
        }
        st.pool.alloc_near(addr, maps).map_err(|e| ProbeError::NoSlot { addr, reason: e.to_string() })
    }

    /// Write the slots prepared for new slot addresses (the caller publishes them and
    /// serializes every thread), one system call per run of them; `slots` keeps those
    /// written. The first failure.
    fn install_slots(&self, st: &mut State, slots: &mut Vec<SlotCode>) -> Result<(), ProbeError> {
        if slots.is_empty() {
            return Ok(());
        }
        let pieces: Vec<Fresh<'_>> =
            slots.iter().map(|s| Fresh { addr: s.addr, code: s.code(), room: SLOT_SIZE }).collect();
        let written = code_writes::write_fresh(&pieces);
        drop(pieces);
        let mut failure = None;
        let mut kept = Vec::with_capacity(slots.len());
        for (slot, result) in slots.drain(..).zip(written) {
            match result {
                Ok(()) => {
                    st.sites.get_mut(&slot.original).expect("site of a slot").slots.push(slot.clone());
                    kept.push(slot);
                }
                Err(e) => {
                    let reason = format!("writing the slot: {e}");
                    failure.get_or_insert(ProbeError::NoSlot { addr: slot.original, reason });
                }
            }
        }
        *slots = kept;
        failure.map_or(Ok(()), Err)
    }
}

/// Whether the process runs with a CET shadow stack (read once: it is enabled at start-up).
fn shadow_stack() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().any(|l| l.starts_with("x86_Thread_features:") && l.contains("shstk"))
    })
}

/// The longest window: four bytes of its first instructions, then one of 15 bytes.
const MAX_WINDOW_BYTES: u64 = 4 + 15;

/// Slots a detour takes (its head and a relocated window of one instruction fit in two).
const DETOUR_SLOTS: u64 = 2;

/// How far from a probe a freed detour may be reused for it (as slots are placed).
const DETOUR_REACH: u64 = 1 << 30;

/// A handler that panics is caught by the dispatcher (counted, its probe disabled), but the
/// panic hook runs first, on the hit path, where printing would take the stderr lock the
/// interrupted thread may hold. Wrap the program's hook so that it stays silent there; the
/// panic shows in the probe's `handler_panics` counter instead. Outside dprobe's hit path the
/// program's hook runs as before.
fn install_quiet_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !trap::in_hit_path() && !trap::in_handler() {
            previous(info);
        }
    }));
}

fn maps() -> Result<Vec<Mapping>, ProbeError> {
    read_maps().map_err(|source| ProbeError::Os { what: "reading /proc/self/maps", error: source })
}
