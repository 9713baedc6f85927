//! Following the dynamic linker: a probe on a library that is not loaded yet waits, and is
//! placed when the program loads the library (at start or by `dlopen`). dprobe watches the
//! dynamic linker's `_dl_debug_state`, the function it calls after every change to the list
//! of loaded objects (the `r_brk` of the `r_debug` protocol that debuggers use).
//!
//! A started program is held at the linker's first notification of a consistent list of
//! objects (`r_state == RT_CONSISTENT`, read through the program's `DT_DEBUG` entry): every
//! library it needs is mapped and relocated there, and no constructor has run yet (the linker
//! runs them after, then jumps to the program's entry point). The same holds for `dlopen`:
//! the notification comes before the new library's constructors.
//!
//! A library unloaded (`dlclose`) takes its probes' sites with it: at each notification the
//! sites whose file is no longer mapped where it was are forgotten, never written to again
//! (the range may hold something else by then), and their probes wait for the next load.

use std::collections::BTreeSet;

use dprobe_arch::{Addr, Memory};
use dprobe_core::{Placement, ProbeId};
use dprobe_sym::{read_maps_of, Mapping, Symbols};
use object::elf::{DT_DEBUG, PT_DYNAMIC, PT_PHDR};

use crate::error::TraceError;
use crate::probes::{origin_at, resolve};
use crate::remote_elf::{dynamic_entries, program_headers};
use crate::sys;
use crate::thread::{Stop, Thread};
use crate::tracee::Tracee;

const HOOK: &str = "_dl_debug_state";

/// Where an unwinder starts walking a thread's stack: a C++ `throw` (or a Rust panic), and
/// thread cancellation and `pthread_exit`.
const UNWINDERS: [&str; 2] = ["_Unwind_RaiseException", "_Unwind_ForcedUnwind"];
/// Where a C++ exception is caught.
const CATCH: &str = "__cxa_begin_catch";

/// `r_debug.r_state` when the list of objects is consistent (`RT_CONSISTENT`).
const RT_CONSISTENT: i32 = 0;

/// Waiting for a started program's start ([`Tracee::run_to_start`]).
#[derive(Default)]
pub(crate) struct StartWatch {
    /// Still waiting for it.
    awaiting: bool,
    /// Notifications seen while waiting.
    notifications: u32,
    /// The thread held at the start, with the signal it is to get when it resumes.
    pub reached: Option<(i32, i32)>,
    /// Where the linker's `r_debug` is, once found.
    r_debug: Option<Addr>,
}

impl Tracee {
    /// Make sure the dynamic linker's notification function is watched (placed through held
    /// thread `tid`); `false` when the program has no dynamic linker (a static binary), so
    /// nothing can be loaded later.
    pub(crate) fn watch_loads(&mut self, tid: i32) -> Result<bool, TraceError> {
        if self.sites.values().any(|s| s.loader_hook) {
            return Ok(true);
        }
        let maps = read_maps_of(self.pid as u32)?;
        let symbols = Symbols::load(&maps);
        let Some(f) = symbols.functions().iter().find(|f| &*f.name == HOOK && f.object_file_name().starts_with("ld-"))
        else {
            return Ok(false);
        };
        let (f, addr) = (f.clone(), f.start);
        if let Some(site) = self.sites.get_mut(&addr) {
            site.loader_hook = true;
            return Ok(true);
        }
        self.new_site(tid, addr, &f, &maps, None)?;
        self.sites.get_mut(&addr).expect("placed").loader_hook = true;
        Ok(true)
    }

    /// With return probes, watch the entries of every unwinder loaded, and where C++ catches
    /// exceptions (placed through held thread `tid`): see `returns`.
    pub(crate) fn watch_unwinders(&mut self, tid: i32, maps: &[Mapping], symbols: &Symbols) -> Result<(), TraceError> {
        self.unwinders_watched = true;
        let entries: Vec<_> = symbols
            .functions()
            .iter()
            .filter(|f| UNWINDERS.contains(&&*f.name) || &*f.name == CATCH)
            .cloned()
            .collect();
        for f in entries {
            // One dprobe cannot probe leaves exceptions as they were (see `returns`).
            if !self.sites.contains_key(&f.start) && self.new_site(tid, f.start, &f, maps, None).is_err() {
                continue;
            }
            let site = self.sites.get_mut(&f.start).expect("placed");
            site.unwinder |= &*f.name != CATCH;
            site.catcher |= &*f.name == CATCH;
        }
        Ok(())
    }

    /// Run a program stopped at its `execve` until its libraries are mapped and before any
    /// constructor has run (the program's or a library's): probes placed then see every call.
    /// A program without a dynamic linker (static) runs to its entry point: its constructors
    /// run after it.
    pub fn run_to_start(&mut self) -> Result<(), TraceError> {
        let tid = self.a_stopped_thread()?;
        if !self.watch_loads(tid)? {
            return self.run_to_entry();
        }
        self.start = StartWatch { awaiting: true, ..StartWatch::default() };
        self.resume_stopped()?;
        loop {
            let (t, status) = sys::wait(-1)?;
            if let Some(exit) = self.handle(t, status)? {
                return Err(TraceError::EndedBeforeEntry(exit));
            }
            if let Some((t, signal)) = self.start.reached.take() {
                self.threads.insert(t, Thread::stopped(Stop::Signal(signal)));
                return Ok(());
            }
        }
    }

    /// At the dynamic linker's notification: whether this is the program's start (the first
    /// consistent list of objects) that [`Tracee::run_to_start`] waits for.
    pub(crate) fn at_start(&mut self) -> bool {
        if !self.start.awaiting {
            return false;
        }
        self.start.notifications += 1;
        let consistent = match self.loader_state() {
            Some(state) => state == RT_CONSISTENT,
            // No `r_debug` to read: the linker says "adding" first, then "consistent".
            None => self.start.notifications >= 2,
        };
        self.start.awaiting = !consistent;
        consistent
    }

    /// The dynamic linker's `r_state`, through the `r_debug` address in the program's
    /// dynamic section.
    fn loader_state(&mut self) -> Option<i32> {
        let r_debug = match self.start.r_debug {
            Some(a) => a,
            None => {
                let a = r_debug_addr(self.pid, &mut self.memory)?;
                self.start.r_debug = Some(a);
                a
            }
        };
        let mut state = [0u8; 4];
        self.memory.read(r_debug.offset(24), &mut state).ok()?;
        Some(i32::from_le_bytes(state))
    }

    /// The dynamic linker changed the list of loaded objects (thread `tid` is stopped in its
    /// notification function): forget the sites of unloaded code, place the waiting probes
    /// whose library is there now.
    pub(crate) fn on_loads_changed(&mut self, tid: i32) -> Result<(), TraceError> {
        let maps = read_maps_of(self.pid as u32)?;
        self.forget_unloaded(&maps);
        // Nothing new is mapped (the notification before a load, or after an unload): the
        // symbols would be the same.
        let objects: BTreeSet<(u64, String)> = maps
            .iter()
            .filter_map(|m| Some((m.start.0, m.path.clone()?)))
            .filter(|(_, p)| p.starts_with('/'))
            .collect();
        let new = !objects.is_subset(&self.objects);
        self.objects = objects;
        if !new {
            return Ok(());
        }
        let waiting: Vec<ProbeId> = self
            .probes
            .iter()
            .filter(|(_, p)| matches!(p.stats.placement, Placement::Waiting | Placement::Unloaded))
            .map(|(id, _)| *id)
            .collect();
        if waiting.is_empty() && !self.unwinders_watched {
            return Ok(());
        }
        let symbols = Symbols::load(&maps);
        if self.unwinders_watched {
            // An unwinder loaded now (`pthread_cancel` loads libgcc_s on its first use).
            self.watch_unwinders(tid, &maps, &symbols)?;
        }
        for id in waiting {
            let (resolved, def) = {
                let p = &self.probes[&id];
                (p.def.target().and_then(|t| resolve(&symbols, &maps, t)), p.def.share())
            };
            let placed = match resolved {
                Ok(at) => self.place_at(tid, id, at, &def, &maps, &symbols).map(Some),
                Err(e) if e.may_load_later() => Ok(None),
                Err(e) => Err(e.into()),
            };
            let p = self.probes.get_mut(&id).expect("waiting probe");
            match placed {
                Ok(Some(addr)) => p.stats.placement = Placement::At(addr),
                // Still waiting (or unloaded, waiting for the next load).
                Ok(None) => {}
                Err(e) => p.stats.placement = Placement::Failed(e.to_string()),
            }
        }
        Ok(())
    }

    /// The process executed a new program, thread `tid` is all that is left: everything
    /// dprobe put in the old image (sites, pages, hijacked returns) went with it.
    pub(crate) fn image_replaced(&mut self, tid: i32) -> Result<(), TraceError> {
        self.threads.retain(|t, _| *t == tid);
        self.forget_all_returns();
        self.sites.clear();
        self.xol.clear();
        self.stubs.clear();
        self.start = StartWatch::default();
        self.unwinders_watched = false;
        self.objects.clear();
        self.raised.clear();
        self.unraised.clear();
        self.memory = crate::sys::RemoteMemory::open(self.pid)?;
        Ok(())
    }

    /// Probes on code that is no longer mapped where it was (a library unloaded by
    /// `dlclose`, the range perhaps mapped again by something else): their sites are
    /// forgotten, never written to again, and the probes wait for their library's next load
    /// (at the same address or another).
    fn forget_unloaded(&mut self, maps: &[Mapping]) {
        let gone: Vec<Addr> = self
            .sites
            .iter()
            .filter(|(addr, s)| s.origin.is_some() && origin_at(maps, **addr) != s.origin)
            .map(|(addr, _)| *addr)
            .collect();
        for addr in gone {
            let Some(site) = self.sites.remove(&addr) else { continue };
            for id in site.probes {
                if let Some(p) = self.probes.get_mut(&id).filter(|p| p.stats.placement == Placement::At(addr)) {
                    p.stats.placement = Placement::Unloaded;
                }
            }
        }
        self.forget_unloaded_semaphores();
    }

    /// The process executed a new program (thread `tid`, stopped, is all that is left): the
    /// probes went with the old image. They wait for their targets in the new one, as probes
    /// on libraries not loaded yet do: placed now if the new executable has them, or when
    /// the new program's dynamic linker loads their library.
    pub(crate) fn on_exec(&mut self, tid: i32) -> Result<(), TraceError> {
        self.image_replaced(tid)?;
        for p in self.probes.values_mut() {
            p.pool.reset();
            // Placed before: its code went with the old image.
            p.stats.placement = match p.stats.placement {
                Placement::At(_) | Placement::Unloaded => Placement::Unloaded,
                _ => Placement::Waiting,
            };
        }
        let dynamic = self.watch_loads(tid)?;
        self.on_loads_changed(tid)?;
        if !dynamic {
            // A static program: what is not in it now never will be.
            for p in self.probes.values_mut().filter(|p| p.stats.addr().is_none()) {
                p.stats.placement = Placement::Failed("not in the program the process executed".into());
            }
        }
        Ok(())
    }
}

/// A value of process `pid`'s auxiliary vector.
fn auxv(pid: i32, key: u64) -> Option<u64> {
    auxv_value(&std::fs::read(format!("/proc/{pid}/auxv")).ok()?, key)
}

/// The value of `key` in `auxv`, an auxiliary vector as `/proc/PID/auxv` gives it.
pub fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    auxv.chunks_exact(16)
        .map(|c| (u64::from_le_bytes(c[..8].try_into().expect("8")), u64::from_le_bytes(c[8..].try_into().expect("8"))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The address of the dynamic linker's `r_debug`, from the `DT_DEBUG` entry of the program's
/// dynamic section (found through its program headers, `AT_PHDR`); `None` before the linker
/// filled it in, or for a program without one.
pub(crate) fn r_debug_addr(pid: i32, memory: &mut dyn Memory) -> Option<Addr> {
    let (phdr, phnum) = (auxv(pid, libc::AT_PHDR)?, auxv(pid, libc::AT_PHNUM)?);
    let (mut bias, mut dynamic) = (None, None);
    for header in program_headers(memory, phdr, phnum) {
        let (p_type, vaddr) = header?;
        match p_type {
            PT_PHDR => bias = Some(phdr.wrapping_sub(vaddr)),
            PT_DYNAMIC => dynamic = Some(vaddr),
            _ => {}
        }
    }
    for entry in dynamic_entries(memory, bias?.wrapping_add(dynamic?), 512) {
        let (tag, value) = entry?;
        // `DT_DEBUG`: the address of `r_debug`, filled in by the linker.
        if tag == u64::from(DT_DEBUG) && value != 0 {
            return Some(Addr(value));
        }
    }
    None
}
