//! A probed address and its aggregate of probes (the kernel's "aggregate probe").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use dprobe_arch::{Addr, Regs};

use crate::{FaultHandler, FaultInfo, FaultStage, Kprobe, PostHandler, PreAction, PreHandler, ProbeStats};

/// Identity of a registered probe, unique within an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

/// A registered probe as the hit path sees it: its handlers and counters.
pub struct ProbeEntry {
    /// Its identity.
    pub id: ProbeId,
    /// Its counters, shared with the user's handle.
    pub stats: Arc<ProbeStats>,
    pre: Option<PreHandler>,
    post: Option<PostHandler>,
    fault: Option<FaultHandler>,
}

impl ProbeEntry {
    /// Take the handlers out of a [`Kprobe`].
    pub fn new(id: ProbeId, probe: Kprobe) -> Self {
        ProbeEntry {
            id,
            stats: Arc::new(ProbeStats::new(probe.enabled)),
            pre: probe.pre,
            post: probe.post,
            fault: probe.fault,
        }
    }

    /// Whether it has a post-handler.
    pub fn has_post(&self) -> bool {
        self.post.is_some()
    }
}

/// Runs a handler on behalf of the dispatch loop, so an engine can arm its fault recovery
/// around it. Returns `false` when the handler did not complete (it faulted and the engine
/// abandoned it).
pub trait HandlerCall {
    /// Run `f`, a handler of `entry` at `stage`.
    fn call(&mut self, entry: &ProbeEntry, stage: FaultStage, f: &mut dyn FnMut()) -> bool;
}

/// Calls handlers directly (no fault recovery).
impl HandlerCall for () {
    fn call(&mut self, _entry: &ProbeEntry, _stage: FaultStage, f: &mut dyn FnMut()) -> bool {
        f();
        true
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

/// One probed address: the engine's execution data `A` and the probes, in registration order.
pub struct Site<A> {
    /// The probed address.
    pub addr: Addr,
    /// How the engine executes the displaced instruction here.
    pub arch: A,
    /// The probes, in registration order.
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
        for p in self.probes.iter().filter(|p| p.stats.is_enabled()) {
            p.stats.hit();
            post |= p.post.is_some();
            let Some(pre) = &p.pre else { continue };
            let mut action = PreAction::Continue;
            let completed =
                caller.call(p, FaultStage::PreHandler, &mut || match catch_unwind(AssertUnwindSafe(|| pre(regs))) {
                    Ok(a) => action = a,
                    Err(_) => p.stats.panicked(),
                });
            if completed && action == PreAction::SkipInstruction {
                return PreOutcome::Skip;
            }
        }
        PreOutcome::Execute { post }
    }

    /// Run the enabled probes' post-handlers in registration order.
    pub fn run_post<C: HandlerCall>(&self, regs: &mut Regs, caller: &mut C) {
        for p in self.probes.iter().filter(|p| p.stats.is_enabled()) {
            let Some(post) = &p.post else { continue };
            caller.call(p, FaultStage::PostHandler, &mut || {
                if catch_unwind(AssertUnwindSafe(|| post(regs))).is_err() {
                    p.stats.panicked();
                }
            });
        }
    }

    /// Offer a fault to the fault handlers in registration order; `true` when one handled it.
    pub fn run_fault(&self, regs: &mut Regs, info: &FaultInfo) -> bool {
        self.probes.iter().filter_map(|p| p.fault.as_ref().map(|f| (p, f))).any(|(p, f)| {
            catch_unwind(AssertUnwindSafe(|| f(regs, info))).unwrap_or_else(|_| {
                p.stats.panicked();
                false
            })
        })
    }

    /// Offer a fault to one probe's fault handler.
    pub fn run_fault_of(&self, entry: &ProbeEntry, regs: &mut Regs, info: &FaultInfo) -> bool {
        entry.fault.as_ref().is_some_and(|f| catch_unwind(AssertUnwindSafe(|| f(regs, info))).unwrap_or(false))
    }
}
