//! A probed address and its aggregate of probes (the kernel's "aggregate probe").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use dprobe_arch::{Addr, Regs};

use crate::{FaultHandler, FaultInfo, FaultStage, Kprobe, PostHandler, PreAction, PreHandler, ProbeCounters};

/// Identity of a registered probe, unique within an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

/// A registered probe as the hit path sees it: its handlers and counters.
pub struct ProbeEntry {
    /// Its identity.
    pub id: ProbeId,
    /// Its counters, shared with the user's handle.
    pub stats: Arc<ProbeCounters>,
    pre: Option<PreHandler>,
    post: Option<PostHandler>,
    fault: Option<FaultHandler>,
    /// Whether an engine may replace its `int3` with a jump (`Kprobe::no_optimize`).
    pub optimize: bool,
    /// Whether it runs after the site's other probes (`Kprobe::after_others`).
    pub last: bool,
}

impl ProbeEntry {
    /// Take the handlers out of a [`Kprobe`].
    pub fn new(id: ProbeId, probe: Kprobe) -> Self {
        ProbeEntry {
            id,
            stats: Arc::new(ProbeCounters::new(probe.enabled)),
            pre: probe.pre,
            post: probe.post,
            fault: probe.fault,
            optimize: probe.optimize,
            last: probe.last,
        }
    }

    /// Add `entry` to a site's `probes`: after the others, but before those that run last.
    pub fn add_to(probes: &mut Vec<Arc<ProbeEntry>>, entry: Arc<ProbeEntry>) {
        let at = if entry.last { probes.len() } else { probes.iter().position(|p| p.last).unwrap_or(probes.len()) };
        probes.insert(at, entry);
    }

    /// Whether it has a post-handler.
    pub fn has_post(&self) -> bool {
        self.post.is_some()
    }
}

/// A fault that ended a handler call (reported by an engine's [`HandlerCall`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerFault {
    /// The signal.
    pub signal: i32,
    /// The faulting data address, if known.
    pub addr: Option<Addr>,
}

/// Runs a handler on behalf of the dispatch loop, so that an engine can arm its fault
/// recovery around it.
pub trait HandlerCall {
    /// Run `f`; `Err` when it faulted and the engine abandoned it.
    fn call(&mut self, f: impl FnMut()) -> Result<(), HandlerFault>;

    /// The calling thread, for the probes' hit counts ([`ProbeCounters::hit_by`]): a word no
    /// other live thread's caller gives, whose hits of one site never nest in `run_pre`; 0
    /// (the default) where there is none.
    fn thread(&self) -> u64 {
        0
    }
}

/// Calls handlers directly (no fault recovery).
impl HandlerCall for () {
    fn call(&mut self, mut f: impl FnMut()) -> Result<(), HandlerFault> {
        f();
        Ok(())
    }
}

/// What the pre-handlers of a site decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreOutcome {
    /// Execute the instruction; `post` tells whether an enabled probe has a post-handler.
    Execute {
        /// Run post-handlers after the instruction.
        post: bool,
    },
    /// A pre-handler changed RIP: skip the instruction and the post-handlers.
    Skip,
}

/// One probed address: the engine's execution data `A` and the probes, in registration order
/// (those that run after the others last, [`ProbeEntry::add_to`]).
pub struct Site<A> {
    /// The probed address.
    pub addr: Addr,
    /// How the engine executes the displaced instruction here.
    pub arch: A,
    /// The probes, in registration order (those that run after the others last).
    pub probes: Vec<Arc<ProbeEntry>>,
}

impl<A> Site<A> {
    /// Whether any probe of the site is enabled (an engine disarms a site with none).
    pub fn any_enabled(&self) -> bool {
        self.probes.iter().any(|p| p.stats.is_enabled())
    }

    /// Whether some probe has a post-handler (then the site needs a trap after the
    /// instruction, unless it is emulated).
    pub fn needs_post(&self) -> bool {
        self.probes.iter().any(|p| p.has_post())
    }

    /// A hit that must not run handlers (it happened inside a handler): count it as missed on
    /// every enabled probe.
    pub fn miss(&self) {
        for p in self.probes.iter().filter(|p| p.stats.is_enabled()) {
            p.stats.miss();
        }
    }

    /// Run the enabled probes' pre-handlers in registration order; stop at the first that
    /// asks to skip the instruction. A handler that panics is caught, counted and its probe
    /// disabled. Allocates nothing unless a handler panics.
    pub fn run_pre<C: HandlerCall>(&self, regs: &mut Regs, caller: &mut C) -> PreOutcome {
        let mut post = false;
        let thread = caller.thread();
        for p in self.probes.iter().filter(|p| p.stats.is_enabled()) {
            p.stats.hit_by(thread);
            post |= p.post.is_some();
            let Some(pre) = &p.pre else { continue };
            let mut action = PreAction::Continue;
            let called = caller.call(|| match catch_unwind(AssertUnwindSafe(|| pre(regs))) {
                Ok(a) => action = a,
                Err(_) => p.stats.panicked(),
            });
            if let Err(fault) = called {
                handler_faulted(p, regs, fault, FaultStage::PreHandler, caller);
                continue;
            }
            if action == PreAction::SkipInstruction {
                return PreOutcome::Skip;
            }
        }
        PreOutcome::Execute { post }
    }

    /// Run the enabled probes' post-handlers in registration order.
    pub fn run_post<C: HandlerCall>(&self, regs: &mut Regs, caller: &mut C) {
        for p in self.probes.iter().filter(|p| p.stats.is_enabled()) {
            let Some(post) = &p.post else { continue };
            let called = caller.call(|| {
                if catch_unwind(AssertUnwindSafe(|| post(regs))).is_err() {
                    p.stats.panicked();
                }
            });
            if let Err(fault) = called {
                handler_faulted(p, regs, fault, FaultStage::PostHandler, caller);
            }
        }
    }

    /// Offer a fault to the fault handlers in registration order, each run through `caller`
    /// as the other handlers are; `true` when one handled it (a fault handler that faults
    /// itself did not).
    pub fn run_fault<C: HandlerCall>(&self, regs: &mut Regs, info: &FaultInfo, caller: &mut C) -> bool {
        self.probes.iter().filter_map(|p| p.fault.as_ref().map(|f| (p, f))).any(|(p, f)| {
            let mut handled = false;
            let called = caller.call(|| {
                handled = catch_unwind(AssertUnwindSafe(|| f(regs, info))).unwrap_or_else(|_| {
                    p.stats.panicked();
                    false
                })
            });
            handled && called.is_ok()
        })
    }
}

/// A handler of `p` faulted and was abandoned: count it, tell the probe's fault handler, and
/// disable the probe unless the fault handler says it handled the fault. The fault handler is
/// a handler too: it runs through `caller` (guarded against its own faults, which leave the
/// fault unhandled), as the handler did.
fn handler_faulted<C: HandlerCall>(
    p: &ProbeEntry,
    regs: &mut Regs,
    fault: HandlerFault,
    stage: FaultStage,
    caller: &mut C,
) {
    p.stats.faulted();
    let info = FaultInfo { signal: fault.signal, fault_addr: fault.addr, stage };
    let mut handled = false;
    if let Some(f) = p.fault.as_ref() {
        let called = caller.call(|| handled = catch_unwind(AssertUnwindSafe(|| f(regs, &info))).unwrap_or(false));
        handled &= called.is_ok();
    }
    if !handled {
        p.stats.set_enabled(false);
    }
}
