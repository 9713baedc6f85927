//! The hit path inside the traced program: a probe's fetch plan evaluated in the thread that
//! hit it, its filter tested, and the event written into the shared ring. No allocation, no
//! lock: value storage comes from a pool made when the probe is placed, claimed with an
//! atomic flag; with none free (more threads inside at once than the pool holds) the event is
//! lost and counted, never waited for.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, OnceLock};

use dprobe_arch::{Addr, Memory, MemoryFault, Regs};
use dprobe_core::fetch::{FetchContext, FetchPlan, Values};
use dprobe_core::Side;

use crate::record::{encode, Header};
use crate::shm::{Counter, Shm};

/// Value storages per probe: hits in flight at once on different threads.
const POOL: usize = 64;

struct Storage {
    busy: AtomicBool,
    values: UnsafeCell<Values>,
}

/// One placed probe, as its handlers see it.
pub struct HitProbe {
    index: usize,
    plan: FetchPlan,
    /// The same plan with the tracer's filter compiled in, once it is sent (read with one
    /// atomic load on the hit path).
    filtered: OnceLock<FetchPlan>,
    events: bool,
    /// Events carry the thread's stack.
    stack: bool,
    shm: Arc<Shm>,
    pool: Box<[Storage]>,
    /// Where the probed file's offset 0 is, reckoned from the probe's address (`@+OFFSET`
    /// reads there); 0 until the probe is placed in a file's code.
    file_base: AtomicU64,
}

// SAFETY: a storage's values are only touched by the thread that set its `busy` flag.
unsafe impl Sync for HitProbe {}

/// The lowest and highest stack address of the agent's own thread: its hits are dprobe's
/// (reading the control socket through a probed `read`), not the program's. The thread runs
/// no signal handler of the program's (it blocks their signals), so the stack pointer of its
/// hits is always inside this range, and no other thread's is.
static AGENT_STACK: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Record the calling thread's stack, as its C library laid it out, as the agent's.
pub fn set_agent_stack() -> std::io::Result<()> {
    // SAFETY: pthread_getattr_np fills the attribute object we own, destroyed after use;
    // pthread_attr_getstack writes the two locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let rc = libc::pthread_getattr_np(libc::pthread_self(), &mut attr);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        let mut base = std::ptr::null_mut();
        let mut size = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut base, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        AGENT_STACK[0].store(base as u64, Relaxed);
        AGENT_STACK[1].store(base as u64 + size as u64, Relaxed);
    }
    Ok(())
}

/// Whether a hit with stack pointer `sp` is the agent's own thread.
pub fn on_agent_thread(sp: u64) -> bool {
    (AGENT_STACK[0].load(Relaxed)..AGENT_STACK[1].load(Relaxed)).contains(&sp)
}

/// The process's own memory, read without risking a fault.
struct OwnMemory;

impl Memory for OwnMemory {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        dprobe_inproc::read_bytes(addr.0, buf)
    }
    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the vDSO: no system call).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Copy the stack of the thread at `regs` into `out`, from its stack pointer up, page by
/// page until `out` is full or a page cannot be read (past the stack's end); `r` gets the
/// registers unwinding starts from. Return addresses that a return probe replaced with its
/// trampoline are put back in the copy, so the callers stay in the unwound stack. Returns the
/// bytes copied. Allocates nothing, takes no lock.
fn copy_stack(regs: &Regs, r: &mut [u64; 3], out: &mut [u8]) -> usize {
    const PAGE: u64 = 4096;
    *r = [regs.rip, regs.rsp, regs.rbp];
    let mut done = 0usize;
    while done < out.len() {
        let at = regs.rsp.wrapping_add(done as u64);
        let chunk = ((PAGE - at % PAGE) as usize).min(out.len() - done);
        if dprobe_inproc::read_bytes(at, &mut out[done..done + chunk]).is_err() {
            break;
        }
        done += chunk;
    }
    let trampoline = dprobe_inproc::trampoline_addr();
    for (i, word) in out[..done].chunks_exact_mut(8).enumerate() {
        let value = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        if value == trampoline {
            let real = dprobe_inproc::real_return_address(value, regs.rsp + i as u64 * 8);
            word.copy_from_slice(&real.to_le_bytes());
        }
    }
    done
}

impl HitProbe {
    /// A probe with index `index` and its plan.
    /// The probe is placed at `addr`: where its file's offset 0 is, from the mapping that
    /// holds it (a hit before this, in a running process, reads `@+OFFSET` as a fault).
    pub fn placed_at(&self, addr: u64) {
        // Read by a fetch alone: a probe that only counts need not read the maps (thousands of
        // probes placed at once would read them thousands of times).
        if !self.events {
            return;
        }
        let maps = dprobe_sym::read_maps().unwrap_or_default();
        if let Some(m) =
            maps.iter().find(|m| m.contains(Addr(addr)) && m.path.as_deref().is_some_and(|p| p.starts_with('/')))
        {
            self.file_base.store(m.start.0.wrapping_sub(m.offset), Relaxed);
        }
    }

    pub fn new(index: usize, plan: FetchPlan, events: bool, stack: bool, shm: Arc<Shm>) -> HitProbe {
        // A probe that only counts fetches nothing: no storage (thousands of probes, `libc:*`).
        let storages = if events { POOL } else { 0 };
        let pool =
            (0..storages).map(|_| Storage { busy: AtomicBool::new(false), values: UnsafeCell::new(plan.values()) });
        let filtered = OnceLock::new();
        HitProbe { index, filtered, events, stack, shm, pool: pool.collect(), plan, file_base: AtomicU64::new(0) }
    }

    /// From now on, send only the events that pass `filter`. `false` when one is set already,
    /// or it names a field this probe does not fetch.
    pub fn set_filter(&self, filter: &str) -> bool {
        let names: Vec<&str> = self.plan.args().iter().map(|a| a.name.as_str()).collect();
        let Ok(f) = dprobe_spec::parse_filter(filter, &names) else { return false };
        self.filtered.set(FetchPlan::compile(self.plan.args(), Some(&f))).is_ok()
    }

    /// Count a hit (`Counter::Hits`, `Counter::Returns`: for the calling thread, see
    /// `Shm::count_by`).
    pub fn count(&self, counter: Counter) {
        match counter {
            Counter::Hits | Counter::Returns => self.shm.count_by(self.index, counter, dprobe_inproc::count_key()),
            _ => self.shm.add(self.index, counter, 1),
        }
    }

    /// Whether its hits send events (not when it only counts).
    #[inline(always)]
    pub fn sends_events(&self) -> bool {
        self.events
    }

    /// Fetch, filter and send one event, if the probe sends events. Async-signal-safe (the
    /// engine gives the program its `errno` back after each handler). Inlined into the
    /// handlers, so that a probe that only counts (`--count`) pays a test of a flag, not a call.
    #[inline(always)]
    pub fn event(&self, regs: &Regs, entry: Option<&Regs>, side: Side, entry_time_ns: Option<u64>) {
        if self.sends_events() {
            self.send_event(regs, entry, side, entry_time_ns);
        }
    }

    #[inline(never)]
    fn send_event(&self, regs: &Regs, entry: Option<&Regs>, side: Side, entry_time_ns: Option<u64>) {
        let errno = dprobe_inproc::program_errno();
        let Some(storage) = self.pool.iter().find(|s| s.busy.compare_exchange(false, true, Acquire, Relaxed).is_ok())
        else {
            self.count(Counter::Lost);
            return;
        };
        // SAFETY: the flag just taken makes this thread the storage's only user.
        let values = unsafe { &mut *storage.values.get() };
        let time_ns = now_ns();
        let name = dprobe_inproc::thread_name(time_ns);
        let end = name.iter().position(|b| *b == 0).unwrap_or(16);
        let comm = &name[..end];
        // `$errno` reads the value the program had at the hit, whatever this handler's calls do.
        let file_base = Some(self.file_base.load(Relaxed)).filter(|b| *b != 0);
        let cx =
            FetchContext { regs, entry_regs: entry, comm, errno_addr: Some(&errno as *const i32 as u64), file_base };
        let plan = self.filtered.get().unwrap_or(&self.plan);
        plan.evaluate(&cx, &mut OwnMemory, values);
        if !plan.has_filter() || plan.passes(values) {
            let (pid, tid) = dprobe_inproc::process_and_thread_id(regs.rsp);
            let stack = if self.stack { self.shm.put_stack(|r, bytes| copy_stack(regs, r, bytes)) } else { None };
            let header = Header { probe: self.index as u32, side, pid, tid, time_ns, entry_time_ns, comm: name, stack };
            if !self.shm.push(|out| encode(&header, values, out)) {
                if let Some(s) = stack {
                    self.shm.free_stack(s);
                }
                self.count(Counter::Lost);
            }
        }
        storage.busy.store(false, Release);
    }
}
