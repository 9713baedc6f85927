//! The kernel engine: system-wide and kernel-function probes through the kernel's own
//! probing machinery. dprobe's probe specs become tracefs dynamic events (`uprobe_events`
//! for user code, `kprobe_events` for kernel functions) or name existing tracepoints; their
//! records are read from per-CPU perf ring buffers and decoded with each event's `format`
//! file. Everything dprobe defines lives in a group of its own and is removed on every exit
//! path; nothing global (`tracing_on`, the trace buffer, other users' events) is touched.
//!
//! ```no_run
//! use dprobe_kernel::Session;
//! let spec = dprobe_spec::parse_probe("libc:open path=+0($arg1):string").unwrap();
//! let mut s = Session::new()?;
//! s.add(&spec, None, None)?;
//! s.start(None)?; // every process
//! s.poll(1000, &mut |hit| println!("{} {:?}", hit.tid, hit.field("path")))?;
//! # Ok::<(), dprobe_kernel::KernelError>(())
//! ```
pub mod bpf;
mod define;
mod engine;
mod error;
mod exit_pairing;
mod exit_sites;
mod format;
mod perf;
mod session;
mod tracefs;

pub use define::{definition, kernel_optimizes_nop5, Definition, EventKind};
pub use engine::{InKernel, KernelEngine, KernelOptions};
pub use error::KernelError;
pub use exit_sites::{return_plan, tail_call_hops, ExitPlan};
pub use format::{EventFormat, Field, FieldKind, FieldValue, FormatError};
pub use perf::{check_buffer_size, SampleStacks, StackSampling, DEFAULT_BUFFER_BYTES, USER_STACK_BYTES};
pub use session::{DefinedEvent, Hit, Session, SITE_FIELD};
pub use tracefs::Tracefs;
