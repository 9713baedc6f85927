//! Following the dynamic linker: a probe on a library that is not loaded yet waits, and is
//! placed when the program loads the library (at start or by `dlopen`). dprobe watches the
//! dynamic linker's `_dl_debug_state`, the function it calls after every change to the list
//! of loaded objects (the `r_brk` of the `r_debug` protocol that debuggers use).

use dprobe_core::ProbeId;
use dprobe_sym::{read_maps_of, Symbols};

use crate::error::TraceError;
use crate::probes::resolve;
use crate::tracee::Tracee;

const HOOK: &str = "_dl_debug_state";

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
        let Some(f) = symbols.functions().iter().find(|f| f.name == HOOK && f.object_file_name().starts_with("ld-"))
        else {
            return Ok(false);
        };
        let (f, addr) = (f.clone(), f.start);
        if let Some(site) = self.sites.get_mut(&addr) {
            site.loader_hook = true;
            return Ok(true);
        }
        self.new_site(tid, addr, &f, &maps, None)?;
        Ok(true)
    }

    /// The dynamic linker changed the list of loaded objects (thread `tid` is stopped in its
    /// notification function): place the waiting probes whose library is there now.
    pub(crate) fn on_loads_changed(&mut self, tid: i32) -> Result<(), TraceError> {
        let waiting: Vec<ProbeId> = self
            .probes
            .iter()
            .filter(|(_, p)| p.stats.addr.is_none() && p.stats.failed.is_none())
            .map(|(id, _)| *id)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let maps = read_maps_of(self.pid as u32)?;
        let symbols = Symbols::load(&maps);
        for id in waiting {
            let (resolved, is_return) = {
                let p = &self.probes[&id];
                (p.def.target().and_then(|t| resolve(&symbols, &maps, t)), p.def.on_return.is_some())
            };
            let placed = match resolved {
                Ok(at) => self.place_at(tid, id, at, is_return, &maps).map(Some),
                Err(e) if e.may_load_later() => Ok(None),
                Err(e) => Err(e.into()),
            };
            let p = self.probes.get_mut(&id).expect("waiting probe");
            match placed {
                Ok(addr) => p.stats.addr = addr,
                Err(e) => p.stats.failed = Some(e.to_string()),
            }
        }
        Ok(())
    }

    /// The process executed a new program (thread `tid`, stopped, is all that is left): the
    /// probes went with the old image. They wait for their targets in the new one, as probes
    /// on libraries not loaded yet do: placed now if the new executable has them, or when
    /// the new program's dynamic linker loads their library.
    pub(crate) fn on_exec(&mut self, tid: i32) -> Result<(), TraceError> {
        self.forget_all_returns();
        self.sites.clear();
        self.xol.clear();
        self.stubs.clear();
        self.memory = crate::sys::RemoteMemory::open(self.pid)?;
        for p in self.probes.values_mut() {
            p.pool.reset();
            p.stats.addr = None;
            p.stats.failed = None;
        }
        let dynamic = self.watch_loads(tid)?;
        self.on_loads_changed(tid)?;
        if !dynamic {
            // A static program: what is not in it now never will be.
            for p in self.probes.values_mut().filter(|p| p.stats.addr.is_none()) {
                p.stats.failed = Some("not in the program the process executed".into());
            }
        }
        Ok(())
    }
}
