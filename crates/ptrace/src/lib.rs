//! The ptrace engine: the kprobe model applied to another process.
//!
//! A traced program is spawned stopped before its first instruction, or a running one is
//! attached (every thread, `PTRACE_SEIZE`); probes are `int3`s written through
//! `/proc/PID/mem`. At each hit the thread stops once: the tracer runs the probe's handlers
//! with the thread's registers and memory, then executes the displaced instruction the way
//! the in-process engine does: emulated (branches, calls, returns, pushes, nops), or by
//! pointing the thread at a relocated copy in an out-of-line page mapped into the tracee (by
//! an injected `mmap` system call) that jumps back. The breakpoint is never lifted to step
//! over it, so another thread can never run past it. Return probes watch every exit of the
//! function (each `ret`, each tail call) as ordinary probe sites, pairing entries and exits by
//! the stack pointer; when those exits are not all known, they replace the return address with
//! a trampoline in that page ([`ReturnMode`]).
//!
//! All threads are followed (`PTRACE_O_TRACECLONE`); signals that are not the tracer's are
//! delivered unchanged, the program's own `SIGTRAP` included; a forked child gets its
//! original code back before it is let go, a `vfork` child (sharing the program's memory and
//! probes) is traced until it executes or exits; an `exec` drops the probes with the old image; a
//! probe on a library loaded later waits for it ([`ProbeDef::when_loaded`]).
//!
//! ```no_run
//! use dprobe_ptrace::Tracee;
//! let mut t = Tracee::spawn("/usr/bin/cat", &["/etc/hostname"])?;
//! t.run_to_entry()?; // the program's libraries are loaded now
//! let opens = t.add_probe("libc:openat", Box::new(|hit| { let _ = hit.regs.rsi; }))?;
//! let exit = t.run()?;
//! println!("{} opens, {exit:?}", t.hits(opens));
//! # Ok::<(), dprobe_ptrace::TraceError>(())
//! ```
mod backtrace;
mod blocked;
mod c_library;
mod command_end;
mod continued;
mod detach;
mod early;
mod engine;
mod error;
mod exec_failure;
mod exec_watch;
mod exits;
mod family;
mod inject;
mod interrupted_wait;
mod kept;
mod let_go;
mod library;
mod loader;
mod lock_free_wait;
mod memory_sharers;
mod own_allocator;
mod probes;
mod proc_ids;
mod process_end;
mod program_view;
mod rearm;
mod remote_elf;
mod returns;
mod run_to_program;
mod safe_place;
mod seccomp_check;
mod semaphores;
mod shared_image;
mod signal_frames;
mod signals;
mod stop;
mod stop_waiter;
mod stubs;
mod sys;
mod thread;
mod tick;
mod tracee;
mod trap_action;
mod trap_mask;
mod waiting_calls;
mod xol;

pub use command_end::wait_for_command;
pub use engine::PtraceEngine;
pub use error::{Exit, Stopped, TraceError};
pub use exec_watch::{ended_unreaped, ExecWatch, Watched};
pub use exits::ReturnMode;
pub use library::{Injector, LoadError};
pub use loader::auxv_value;
pub use memory_sharers::shared_memory_refusal;
pub use probes::{Handler, Hit, HitKind, IntoProbePoint, ProbeDef};
pub use proc_ids::{descends_from_this_process, seccomp_status, thread_ids};
pub use process_end::ProcessEnd;
pub use shared_image::{sealed_memory_file, SharedImage};
pub use tracee::Tracee;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod stop_loop_tests;
