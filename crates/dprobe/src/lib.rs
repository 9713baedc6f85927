//! dprobe brings the Linux kprobe programming model to Rust: probes on any instruction, with
//! pre-, post- and fault handlers that see and may change the registers.
//!
//! * [`inproc`]: probes on the current process's own code (its executable and every loaded
//!   library), with handlers that are Rust closures.
//! * [`arch`]: the x86-64 layer: can an instruction be probed, and how is it executed out of
//!   line.
//!
//! ```no_run
//! use dprobe::inproc::{register, Kprobe, PreAction};
//!
//! let probe = register(Kprobe::symbol("libc:sched_yield").pre(|regs| {
//!     // Runs in the calling thread before the instruction, in signal context.
//!     let _ = regs.rip;
//!     PreAction::Continue
//! }))?;
//! // ... the program runs ...
//! println!("sched_yield was called {} times", probe.hits());
//! # Ok::<(), dprobe::ProbeError>(())
//! ```
#![forbid(unsafe_code)]

pub use dprobe_arch as arch;
pub use dprobe_core::{Addr, FaultInfo, FaultStage, Kprobe, PreAction, ProbeError, ProbeId, Regs, Stats};
pub use dprobe_inproc::Target;

/// The in-process engine (see [`dprobe_inproc`]).
pub mod inproc {
    pub use dprobe_inproc::*;
}
