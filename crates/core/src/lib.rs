//! The kprobe programming model, independent of how an engine reaches the probed code.
//!
//! * [`Kprobe`]: where to probe and the optional pre/post/fault handlers. A pre-handler returns
//!   [`PreAction`]: go on, or "I changed RIP, skip the instruction" (the kernel's non-zero
//!   return).
//! * [`Site`]: one probed address with its aggregate of probes, run in registration order;
//!   the dispatch functions catch handler panics and keep the statistics.
//! * [`SiteTable`]: the address → site map the trap handler reads while other threads
//!   register probes. Reads are lock-free and async-signal-safe ([`dprobe_rcu::Rcu`]).
//! * [`EventRing`]: a lock-free ring through which handlers hand records to a normal thread.
//! * [`returns`]: return instances and the one rule that says which are still alive.
//! * [`ProbeError`]: the typed errors engines return.
//! * [`fetch::FetchPlan`]: what a probe reads at each hit, compiled once from its spec and
//!   evaluated through the hit's registers and memory.
//! * [`Engine`], [`ProbeEvent`], [`Stats`]: the seam every engine implements, the event it
//!   delivers at each hit and the figures it reports; [`Pairing`] times calls from them;
//!   [`MultiSite`] gives any engine probes with several sites (one line, inlined copies).
//!
//! ```
//! use dprobe_core::{Kprobe, PreAction};
//! let probe = Kprobe::symbol("getpid")
//!     .pre(|regs| { regs.rax = 0; PreAction::Continue })
//!     .post(|_regs| {});
//! assert!(probe.has_post());
//! ```
#![forbid(unsafe_code)]

mod comm;
mod descriptors;
mod engine;
mod error;
mod event;
pub mod fetch;
mod hit_count;
mod multi_site;
mod pairing;
mod probe;
pub mod returns;
pub mod ring;
mod site;
mod stats;
mod table;

pub use comm::ThreadNames;
pub use descriptors::{high_descriptor_floor, raised_soft_limit};
pub use dprobe_arch::{Addr, Regs};
pub use engine::{
    untraced_children, Ending, Engine, Exit, FinishNotes, KeyedTally, LiveTallies, Placed, ProbeRequest, StackRequest,
    WaitForProgram,
};
pub use error::ProbeError;
pub use event::{EventSink, ProbeEvent, Side};
pub use hit_count::HitCount;
pub use multi_site::{merge_stats, MultiSite};
pub use pairing::Pairing;
pub use probe::{FaultHandler, FaultInfo, FaultStage, Kprobe, PostHandler, PreAction, PreHandler};
pub use ring::{EventRing, RingRecord, PAYLOAD_BYTES, VALUES};
pub use site::{HandlerCall, HandlerFault, PreOutcome, ProbeEntry, ProbeId, Site};
pub use stats::{Placement, ProbeCounters, Stats};
pub use table::{SiteTable, TableEntry, TrapKind};
