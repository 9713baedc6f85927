//! What a user registers: where, and up to three handlers.

use dprobe_arch::{Addr, Regs};
use dprobe_sym::{Mapping, ResolveError, Symbols, Target};

/// What a pre-handler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreAction {
    /// Execute the probed instruction, then the post-handlers.
    Continue,
    /// The handler set `regs.rip` (and whatever else) itself: do not execute the probed
    /// instruction and run no post-handler. Used to override a function or inject a fault.
    /// Later probes of the same address are not called either.
    SkipInstruction,
}

/// Where a fault happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStage {
    /// Inside a pre-handler.
    PreHandler,
    /// Inside a post-handler.
    PostHandler,
    /// In the probed instruction, executed out of line or emulated.
    Instruction,
}

/// A fault reported to a fault handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultInfo {
    /// The signal (`SIGSEGV`, `SIGBUS`, ...).
    pub signal: i32,
    /// The faulting data address, when the kernel reported one.
    pub fault_addr: Option<Addr>,
    /// Where it happened.
    pub stage: FaultStage,
}

/// A pre-handler: runs before the probed instruction with its registers.
pub type PreHandler = Box<dyn Fn(&mut Regs) -> PreAction + Send + Sync>;
/// A post-handler: runs after the probed instruction.
pub type PostHandler = Box<dyn Fn(&mut Regs) + Send + Sync>;
/// A fault handler: returns `true` when it handled the fault. For a fault in the instruction,
/// "handled" means the handler changed the registers so the program can go on (e.g. set
/// `rip` past the instruction); otherwise the program receives the fault as it would have
/// without the probe.
pub type FaultHandler = Box<dyn Fn(&mut Regs, &FaultInfo) -> bool + Send + Sync>;

/// What a probe names before it is resolved, as the kernel's `struct kprobe` names it: a
/// symbol and an offset, or an address. [`Kprobe::resolve`] turns it into the one resolved
/// [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    /// An address in the probed process.
    Addr(Addr),
    /// `[OBJECT:]FUNCTION` (or `0xADDR`) and a byte offset, in the spec language.
    Symbol { name: String, offset: u64 },
}

/// A kprobe: where it goes and optional handlers. Every handler is optional.
///
/// Handlers run in the probed thread, in signal context for the in-process engine: they must
/// be async-signal-safe (no locks, no allocation, no blocking I/O).
pub struct Kprobe {
    named: Named,
    pub(crate) pre: Option<PreHandler>,
    pub(crate) post: Option<PostHandler>,
    pub(crate) fault: Option<FaultHandler>,
    pub(crate) enabled: bool,
    pub(crate) optimize: bool,
    pub(crate) last: bool,
}

impl Kprobe {
    /// A probe at an address.
    pub fn addr(addr: Addr) -> Self {
        Self::named(Named::Addr(addr))
    }

    /// A probe at the first instruction of a function: `[OBJECT:]FUNCTION` as the spec
    /// language names it (`libc:openat`, `operator+`, `open@@GLIBC_2.2.5`, or `0xADDR`).
    pub fn symbol(name: &str) -> Self {
        Self::symbol_offset(name, 0)
    }

    /// A probe at `offset` bytes into a function.
    pub fn symbol_offset(name: &str, offset: u64) -> Self {
        Self::named(Named::Symbol { name: name.to_owned(), offset })
    }

    fn named(named: Named) -> Self {
        Kprobe { named, pre: None, post: None, fault: None, enabled: true, optimize: true, last: false }
    }

    /// Set the pre-handler.
    pub fn pre(mut self, f: impl Fn(&mut Regs) -> PreAction + Send + Sync + 'static) -> Self {
        self.pre = Some(Box::new(f));
        self
    }

    /// Set the post-handler.
    pub fn post(mut self, f: impl Fn(&mut Regs) + Send + Sync + 'static) -> Self {
        self.post = Some(Box::new(f));
        self
    }

    /// Set the fault handler.
    pub fn fault(mut self, f: impl Fn(&mut Regs, &FaultInfo) -> bool + Send + Sync + 'static) -> Self {
        self.fault = Some(Box::new(f));
        self
    }

    /// Register the probe disabled (the kernel's `KPROBE_FLAG_DISABLED`).
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }

    /// Keep the probe on `int3` even where a jump could replace it (the kernel's
    /// `debug.kprobes-optimization` off, for one probe).
    pub fn no_optimize(mut self) -> Self {
        self.optimize = false;
        self
    }

    /// Run its handlers after those of the other probes at its address, whenever they were
    /// registered: a probe whose pre-handler may take the call over (skip the instruction) or
    /// change its arguments lets the others see the call as the program made it first (a
    /// tool's own guards on the C library's signal functions). Honoured by the in-process
    /// engine (and the agent, which runs it); the others run a site's probes in registration
    /// order.
    pub fn after_others(mut self) -> Self {
        self.last = true;
        self
    }

    /// Where the probe goes, through the one resolver: its function (object, symbol,
    /// bounds), offset and run-time address, found in `symbols` of the process whose `maps`
    /// are given. An address resolves back to the function that holds it.
    pub fn resolve(&self, symbols: &Symbols, maps: &[Mapping]) -> Result<Target, ResolveError> {
        match &self.named {
            Named::Addr(addr) => symbols.resolve_addr(maps, *addr),
            Named::Symbol { name, offset } => {
                let mut point = dprobe_spec::parse_point(name)?;
                if let dprobe_spec::ProbePoint::User { offset: o, .. } = &mut point {
                    *o += offset;
                }
                symbols.resolve(maps, &point)
            }
        }
    }

    /// Whether it has a post-handler (which needs a trap after the instruction).
    pub fn has_post(&self) -> bool {
        self.post.is_some()
    }
}
