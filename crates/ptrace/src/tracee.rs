//! A traced process: spawning it, placing probes, the stop loop, and letting it go.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;

use dprobe_arch::{analyze, emulate, plan, prepare_slot, Addr, Insn, Memory, Regs, SlotCode, SlotEnding, INT3};
use dprobe_arch::{ExecClass, ExecPlan};
use dprobe_core::{ProbeError, ProbeId};
use dprobe_sym::{free_pages_near, read_maps_of, Symbols};

use crate::sys::{self, RemoteMemory};

/// Why tracing failed.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Starting the program failed.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// A ptrace or memory operation failed.
    #[error("{0}")]
    Os(#[from] io::Error),
    /// The probe cannot be placed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The tracee is not stopped where the operation needs it to be.
    #[error("the traced process is not stopped")]
    NotStopped,
}

/// How the traced process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// What a handler sees at a hit.
pub struct Hit<'a> {
    /// Which probe.
    pub probe: ProbeId,
    /// The thread that hit it.
    pub tid: i32,
    /// Its registers (changes are written back).
    pub regs: &'a mut Regs,
    /// The process's memory.
    pub memory: &'a mut dyn Memory,
}

/// A handler, run in the tracer while the thread is stopped.
pub type Handler = Box<dyn FnMut(&mut Hit<'_>) + Send>;

struct Probe {
    id: ProbeId,
    handler: Handler,
    hits: u64,
}

struct Site {
    insn: Insn,
    plan: ExecPlan,
    slot: Option<SlotCode>,
    probes: Vec<Probe>,
}

/// Slot pages mapped into the tracee.
struct XolPage {
    base: Addr,
    used: usize,
}

const PAGE: usize = 4096;
const REACH: u64 = 1 << 30;

/// A process under the tracer's control.
pub struct Tracee {
    pid: i32,
    threads: BTreeSet<i32>,
    /// Threads whose first stop (the SIGSTOP of a new traced thread) is still to come.
    fresh: BTreeSet<i32>,
    /// Threads that are stopped and must be resumed by `run`.
    stopped: Vec<i32>,
    memory: RemoteMemory,
    sites: BTreeMap<Addr, Site>,
    pages: Vec<XolPage>,
    next_id: u64,
    exit: Option<Exit>,
}

impl Tracee {
    /// Start `program` with `args`, stopped before its first instruction (right after
    /// `execve`).
    pub fn spawn(program: &str, args: &[&str]) -> Result<Tracee, TraceError> {
        let spawn_err = |source| TraceError::Spawn { program: program.to_owned(), source };
        let c_program = CString::new(program).map_err(|e| spawn_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let c_args: Vec<CString> = std::iter::once(program)
            .chain(args.iter().copied())
            .map(CString::new)
            .collect::<Result<_, _>>()
            .map_err(|e| spawn_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let pid = sys::fork_traced(&c_program, &c_args).map_err(spawn_err)?;
        let (_, status) = sys::wait(pid)?;
        if !libc::WIFSTOPPED(status) || libc::WSTOPSIG(status) != libc::SIGTRAP {
            return Err(spawn_err(io::Error::other(format!(
                "did not stop at exec (status {status:#x}): cannot execute it?"
            ))));
        }
        let options = libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_EXITKILL;
        sys::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options as u64, "PTRACE_SETOPTIONS")?;
        Ok(Tracee {
            pid,
            threads: BTreeSet::from([pid]),
            fresh: BTreeSet::new(),
            stopped: vec![pid],
            memory: RemoteMemory::open(pid)?,
            sites: BTreeMap::new(),
            pages: Vec::new(),
            next_id: 0,
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Run until the program reaches its entry point, where the dynamic loader has mapped its
    /// libraries (probes on them can then be placed).
    pub fn run_to_entry(&mut self) -> Result<(), TraceError> {
        let tid = *self.stopped.first().ok_or(TraceError::NotStopped)?;
        let entry = auxv_entry(self.pid)?;
        let mut original = [0u8];
        self.read(entry, &mut original)?;
        self.write(entry, &[INT3])?;
        self.stopped.clear();
        sys::cont(tid, 0)?;
        loop {
            let (t, status) = sys::wait(tid)?;
            if !libc::WIFSTOPPED(status) {
                return Err(TraceError::Os(io::Error::other("the program ended before its entry point")));
            }
            let sig = libc::WSTOPSIG(status);
            let mut r = sys::get_regs(t)?;
            if sig == libc::SIGTRAP && r.rip == entry.0 + 1 {
                self.write(entry, &original)?;
                r.rip = entry.0;
                sys::set_regs(t, &r)?;
                self.stopped.push(t);
                return Ok(());
            }
            // Anything else (a library constructor's own int3 included) is the program's.
            sys::cont(t, sig)?;
        }
    }

    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), TraceError> {
        self.memory.read(addr, buf).map_err(|e| TraceError::Os(io::Error::other(e.to_string())))
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), TraceError> {
        self.memory.write(addr, data).map_err(|e| TraceError::Os(io::Error::other(e.to_string())))
    }

    /// Place a probe on `[OBJECT:]FUNCTION[+OFFSET]` (or a `0x` address). The tracee must be
    /// stopped (after `spawn`, `run_to_entry`).
    pub fn add_probe(&mut self, target: &str, handler: Handler) -> Result<ProbeId, TraceError> {
        let tid = *self.stopped.first().ok_or(TraceError::NotStopped)?;
        let maps = read_maps_of(self.pid as u32)?;
        let symbols = Symbols::load(&maps);
        let (name, offset) = match target.rsplit_once('+') {
            Some((n, off)) => (
                n,
                parse_number(off).ok_or_else(|| ProbeError::InvalidAddress {
                    addr: Addr(0),
                    reason: format!("bad offset in `{target}`"),
                })?,
            ),
            None => (target, 0),
        };
        let addr = match parse_number(name) {
            Some(a) => Addr(a + offset),
            None => {
                let f = symbols.find(name).ok_or_else(|| ProbeError::SymbolNotFound { symbol: name.to_owned() })?;
                if offset >= f.size {
                    return Err(
                        ProbeError::OffsetOutOfFunction { symbol: name.to_owned(), offset, size: f.size }.into()
                    );
                }
                f.start.offset(offset)
            }
        };
        let invalid = |reason: &str| ProbeError::InvalidAddress { addr, reason: reason.to_owned() };
        let mapping = maps.iter().find(|m| m.contains(addr)).ok_or_else(|| invalid("nothing is mapped there"))?;
        if !mapping.exec {
            return Err(invalid("it is data, not code").into());
        }
        self.next_id += 1;
        let id = ProbeId(self.next_id);
        if let Some(site) = self.sites.get_mut(&addr) {
            site.probes.push(Probe { id, handler, hits: 0 });
            return Ok(id);
        }
        let f = symbols
            .containing(addr)
            .ok_or_else(|| invalid("no function symbol covers it, so its instruction boundaries cannot be checked"))?;
        let mut code = vec![0u8; f.size as usize];
        self.read(f.start, &mut code)?;
        for (a, s) in self.sites.range(f.start..f.start.offset(f.size)) {
            code[(a.0 - f.start.0) as usize] = s.insn.bytes[0];
        }
        let insn = analyze(&code, f.start, addr).map_err(ProbeError::from)?;
        let (exec_plan, slot) = match plan(&insn, false) {
            ExecPlan::Slot(ending) => match self.slot_for(tid, &insn, ending, &maps) {
                Ok(slot) => (ExecPlan::Slot(ending), Some(slot)),
                Err(e) => match insn.class {
                    ExecClass::Emulate { emulation, .. } => (ExecPlan::Emulate(emulation), None),
                    _ => return Err(e),
                },
            },
            emulated => (emulated, None),
        };
        let mut now = [0u8];
        self.read(addr, &mut now)?;
        if now[0] != insn.bytes[0] {
            return Err(ProbeError::ForeignBreakpoint { addr }.into());
        }
        self.sites.insert(addr, Site { insn, plan: exec_plan, slot, probes: vec![Probe { id, handler, hits: 0 }] });
        self.write(addr, &[INT3])?;
        Ok(id)
    }

    /// A slot for `insn` in a page near it, mapping one into the tracee if needed.
    fn slot_for(
        &mut self,
        tid: i32,
        insn: &Insn,
        ending: SlotEnding,
        maps: &[dprobe_sym::Mapping],
    ) -> Result<SlotCode, TraceError> {
        let per_page = PAGE / dprobe_arch::SLOT_SIZE;
        let page = match self.pages.iter().position(|p| p.used < per_page && p.base.0.abs_diff(insn.addr.0) < REACH) {
            Some(i) => i,
            None => {
                let base = self.map_page_near(tid, insn.addr, maps)?;
                self.pages.push(XolPage { base, used: 0 });
                self.pages.len() - 1
            }
        };
        let at = self.pages[page].base.offset((self.pages[page].used * dprobe_arch::SLOT_SIZE) as u64);
        let slot = prepare_slot(insn, at, ending).map_err(ProbeError::from)?;
        self.write(slot.addr, slot.code())?;
        self.pages[page].used += 1;
        Ok(slot)
    }

    /// Map an `r-x` page into the tracee near `near` by making thread `tid` execute an `mmap`
    /// system call: its registers and the two bytes at its RIP are saved, a `syscall` is
    /// written there and stepped, and everything is put back.
    fn map_page_near(&mut self, tid: i32, near: Addr, maps: &[dprobe_sym::Mapping]) -> Result<Addr, TraceError> {
        let saved = sys::get_regs(tid)?;
        let at = Addr(saved.rip);
        let mut original = [0u8; 2];
        self.read(at, &mut original)?;
        let mut result = Err(TraceError::Os(io::Error::other("no free address range within 1 GiB of the probe")));
        for hint in free_pages_near(maps, near, REACH).into_iter().take(8) {
            self.write(at, &[0x0f, 0x05])?;
            let mut r = saved;
            r.rax = libc::SYS_mmap as u64;
            r.rdi = hint.0;
            r.rsi = PAGE as u64;
            r.rdx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
            r.r10 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
            r.r8 = u64::MAX;
            r.r9 = 0;
            sys::set_regs(tid, &r)?;
            sys::single_step(tid)?;
            sys::wait(tid)?;
            let got = sys::get_regs(tid)?.rax;
            self.write(at, &original)?;
            sys::set_regs(tid, &saved)?;
            if got == hint.0 {
                result = Ok(hint);
                break;
            }
        }
        result
    }

    /// Hits of a probe so far.
    pub fn hits(&self, id: ProbeId) -> u64 {
        self.sites.values().flat_map(|s| &s.probes).find(|p| p.id == id).map_or(0, |p| p.hits)
    }

    /// Resume the program and trace it until it ends; returns how it ended.
    pub fn run(&mut self) -> Result<Exit, TraceError> {
        self.resume_stopped()?;
        loop {
            let (tid, status) = sys::wait(-1)?;
            if let Some(exit) = self.handle(tid, status)? {
                return Ok(exit);
            }
        }
    }

    /// Trace for at most `duration`: `Some` when the program ended within it, `None` when it
    /// still runs (traced, until [`Tracee::detach`] or another `run`).
    pub fn run_for(&mut self, duration: std::time::Duration) -> Result<Option<Exit>, TraceError> {
        self.resume_stopped()?;
        let deadline = std::time::Instant::now() + duration;
        while std::time::Instant::now() < deadline {
            match sys::try_wait_any()? {
                Some((tid, status)) => {
                    if let Some(exit) = self.handle(tid, status)? {
                        return Ok(Some(exit));
                    }
                }
                None => std::thread::sleep(std::time::Duration::from_micros(200)),
            }
        }
        Ok(None)
    }

    fn resume_stopped(&mut self) -> Result<(), TraceError> {
        for tid in std::mem::take(&mut self.stopped) {
            sys::cont(tid, 0)?;
        }
        Ok(())
    }

    /// One wait status; `Some` when the process is gone.
    fn handle(&mut self, tid: i32, status: i32) -> Result<Option<Exit>, TraceError> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            self.threads.remove(&tid);
            if tid == self.pid {
                self.exit = Some(if libc::WIFEXITED(status) {
                    Exit::Code(libc::WEXITSTATUS(status))
                } else {
                    Exit::Signal(libc::WTERMSIG(status))
                });
            }
            if self.threads.is_empty() {
                return Ok(Some(self.exit.unwrap_or(Exit::Code(0))));
            }
            return Ok(None);
        }
        if !libc::WIFSTOPPED(status) {
            return Ok(None);
        }
        let signal = libc::WSTOPSIG(status);
        match (status >> 16) & 0xff {
            0 => {}
            libc::PTRACE_EVENT_CLONE => {
                let new = sys::event_message(tid)? as i32;
                if self.threads.insert(new) {
                    self.fresh.insert(new);
                }
                sys::cont(tid, 0)?;
                return Ok(None);
            }
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                let child = sys::event_message(tid)? as i32;
                self.release_child(child)?;
                sys::cont(tid, 0)?;
                return Ok(None);
            }
            libc::PTRACE_EVENT_EXEC => {
                // A new program image: the probes went with the old one.
                self.sites.clear();
                self.pages.clear();
                self.threads.retain(|t| *t == tid);
                self.memory = RemoteMemory::open(self.pid)?;
                sys::cont(tid, 0)?;
                return Ok(None);
            }
            _ => {
                sys::cont(tid, 0)?;
                return Ok(None);
            }
        }
        if !self.threads.contains(&tid) {
            // A new thread's first stop came before its parent's clone event.
            self.threads.insert(tid);
            self.fresh.insert(tid);
        }
        if signal == libc::SIGSTOP && self.fresh.remove(&tid) {
            sys::cont(tid, 0)?;
            return Ok(None);
        }
        if signal == libc::SIGTRAP {
            let deliver = self.on_trap(tid)?;
            sys::cont(tid, deliver)?;
            return Ok(None);
        }
        sys::cont(tid, signal)?;
        Ok(None)
    }

    /// Stop tracing and let the program go on as if it had never been traced: the original
    /// code is written back first (while threads may run: one byte per probe), then every
    /// thread is stopped; a thread that trapped on a probe just before is moved back onto
    /// the original instruction, a thread inside an out-of-line copy onto the original
    /// code; then each thread is detached, with any signal it was about to receive.
    pub fn detach(mut self) -> Result<(), TraceError> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), TraceError> {
        if self.threads.is_empty() {
            return Ok(());
        }
        let sites: Vec<(Addr, u8)> = self.sites.iter().map(|(a, s)| (*a, s.insn.bytes[0])).collect();
        for (addr, original) in &sites {
            self.write(*addr, &[*original])?;
        }
        let mut pending: BTreeMap<i32, i32> = BTreeMap::new();
        let mut to_stop: BTreeSet<i32> = self.threads.iter().copied().filter(|t| !self.stopped.contains(t)).collect();
        for tid in &to_stop {
            let _ = sys::tgkill(self.pid, *tid, libc::SIGSTOP);
        }
        while !to_stop.is_empty() {
            let (tid, status) = sys::wait(-1)?;
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.threads.remove(&tid);
                to_stop.remove(&tid);
                continue;
            }
            if !libc::WIFSTOPPED(status) || !to_stop.contains(&tid) {
                continue;
            }
            let signal = libc::WSTOPSIG(status);
            if signal == libc::SIGSTOP && (status >> 16) == 0 {
                to_stop.remove(&tid);
                self.stopped.push(tid);
                continue;
            }
            if signal == libc::SIGTRAP && (status >> 16) == 0 {
                let mut r = sys::get_regs(tid)?;
                if sites.iter().any(|(a, _)| a.0 == r.rip.wrapping_sub(1)) {
                    r.rip -= 1; // the probe is gone: run the original instruction
                    sys::set_regs(tid, &r)?;
                } else {
                    pending.insert(tid, signal);
                }
            } else if (status >> 16) == 0 {
                pending.insert(tid, signal);
            }
            sys::cont(tid, 0)?;
        }
        for tid in std::mem::take(&mut self.stopped) {
            self.leave_slots(tid)?;
            let signal = pending.get(&tid).copied().unwrap_or(0);
            sys::ptrace(libc::PTRACE_DETACH, tid, 0, signal as u64, "PTRACE_DETACH")?;
        }
        self.threads.clear();
        self.sites.clear();
        Ok(())
    }

    /// A `SIGTRAP` stop: a probe hit (returns 0: consumed), or the program's own trap (returns
    /// `SIGTRAP`, to be delivered).
    fn on_trap(&mut self, tid: i32) -> Result<i32, TraceError> {
        let mut r = sys::get_regs(tid)?;
        let key = Addr(r.rip.wrapping_sub(1));
        let Some(site) = self.sites.get_mut(&key) else { return Ok(libc::SIGTRAP) };
        let mut regs = sys::to_regs(&r);
        regs.rip = key.0;
        for p in &mut site.probes {
            p.hits += 1;
            (p.handler)(&mut Hit { probe: p.id, tid, regs: &mut regs, memory: &mut self.memory });
        }
        let mut deliver = 0;
        match site.plan {
            ExecPlan::Emulate(e) => {
                if emulate(e, site.insn.next(), &mut regs, &mut self.memory).is_err() {
                    // The original would have faulted: let the program see the fault there.
                    regs.rip = key.0;
                    deliver = libc::SIGSEGV;
                }
            }
            ExecPlan::Slot(_) => regs.rip = site.slot.as_ref().map_or(key.0, |s| s.entry().0),
        }
        sys::from_regs(&regs, &mut r);
        sys::set_regs(tid, &r)?;
        Ok(deliver)
    }

    /// A forked child inherits the probes' `int3`s but not the tracer: give it its original
    /// code back, then let it go.
    fn release_child(&mut self, child: i32) -> Result<(), TraceError> {
        let (_, status) = sys::wait(child)?;
        if libc::WIFSTOPPED(status) {
            let mut mem = RemoteMemory::open(child)?;
            for (addr, site) in &self.sites {
                let _ = mem.write(*addr, &site.insn.bytes[..1]);
            }
            sys::ptrace(libc::PTRACE_DETACH, child, 0, 0, "PTRACE_DETACH")?;
        }
        Ok(())
    }

    /// The bytes at `addr` now (to check that probes are gone).
    pub fn read_code(&mut self, addr: Addr, len: usize) -> Result<Vec<u8>, TraceError> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    /// Where a probe target resolves in the tracee.
    pub fn resolve(&self, target: &str) -> Result<Addr, TraceError> {
        let symbols = Symbols::load(&read_maps_of(self.pid as u32)?);
        symbols
            .find(target)
            .map(|f| f.start)
            .ok_or_else(|| ProbeError::SymbolNotFound { symbol: target.to_owned() }.into())
    }
}

impl Tracee {
    /// Move a stopped thread out of the out-of-line copies: at a copy's start it has not run
    /// the instruction yet and goes back to the original one; further in, it is stepped until
    /// the copy has jumped back.
    fn leave_slots(&mut self, tid: i32) -> Result<(), TraceError> {
        let slots: Vec<SlotCode> = self.sites.values().filter_map(|s| s.slot.clone()).collect();
        for _ in 0..64 {
            let mut r = sys::get_regs(tid)?;
            let Some(slot) = slots.iter().find(|s| s.contains(Addr(r.rip))) else { return Ok(()) };
            if r.rip == slot.entry().0 && slot.far_scratch.is_none() {
                r.rip = slot.original.0;
                return Ok(sys::set_regs(tid, &r)?);
            }
            sys::single_step(tid)?;
            sys::wait(tid)?;
        }
        Err(TraceError::Os(io::Error::other("a thread did not leave an out-of-line copy")))
    }
}

impl Drop for Tracee {
    /// A tracee that is dropped while traced is detached (see [`Tracee::detach`]).
    fn drop(&mut self) {
        if self.exit.is_none() || !self.threads.is_empty() {
            let _ = self.detach_all();
        }
    }
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The program's entry point, from its auxiliary vector (`AT_ENTRY`).
fn auxv_entry(pid: i32) -> Result<Addr, TraceError> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv"))?;
    auxv.chunks_exact(16)
        .map(|c| (u64::from_le_bytes(c[..8].try_into().expect("8")), u64::from_le_bytes(c[8..].try_into().expect("8"))))
        .find(|(k, _)| *k == libc::AT_ENTRY)
        .map(|(_, v)| Addr(v))
        .ok_or_else(|| TraceError::Os(io::Error::other("no AT_ENTRY in the auxiliary vector")))
}
