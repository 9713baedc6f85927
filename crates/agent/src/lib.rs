//! dprobe's agent: the in-process engine put inside a traced program, so that a hit costs
//! what it costs in-process instead of a ptrace stop.
//!
//! This crate is both sides of it:
//! * the shared library (`libdprobe_agent.so`) the tracer loads into the program: its entry
//!   point starts a thread that receives the probes over a unix socket, places them with the
//!   in-process engine, evaluates each probe's fetch plan and filter in the thread that hit
//!   it, writes events into a ring in memory shared with the tracer, and removes every probe
//!   when the socket ends (dprobe stopped, or died);
//! * [`AgentEngine`], the [`dprobe_core::Engine`] the tracer drives: it loads the library
//!   (into a started program before its constructors, again after each `exec`, or into a
//!   running process, through an injected `dlopen`), sends the probes, lets ptrace go, and
//!   reads events and figures from the shared memory.
//!
//! Counts cost no event traffic: every probe's figures are counters in the shared memory,
//! readable even after the program ended.

mod agent_thread;
mod batch;
mod child;
mod connection;
mod credentials;
mod engine;
mod exec_gate;
mod exit;
mod follow;
mod held_off;
mod hit;
mod inside;
mod kept_jumps;
mod masks;
mod own_memory_functions;
mod own_objects;
mod own_probes;
mod program_gone;
pub mod record;
mod requests;
mod seccomp;
mod semaphore;
pub mod shm;
mod startup;
mod syscall_site;
mod taken_images;
mod trace_window;
mod user_namespace;
pub mod wire;

pub use engine::{agent_library, listener_for_agent_in, AgentEngine, AgentError, Library};
pub use inside::dprobe_agent_start;
pub use masks::{starting_thread, thread_blocking_traps};
