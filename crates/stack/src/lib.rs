//! Stacks for dprobe: the user stack of a thread unwound from its registers and its stack
//! memory with the DWARF call-frame information of each object (`.eh_frame`,
//! `.debug_frame`), so that code built without frame pointers unwinds too
//! ([`Unwinder`], on `framehop`), and the addresses of a stack turned into functions with
//! their offsets, `file:line` and the calls inlined there ([`Symbolizer`], on `addr2line`).
//!
//! Both keep what they read per object file (sections, symbols, line tables) and per process
//! (its maps), so that an event's stack costs a walk and table look-ups, not file reads.
//!
//! A stack is a list of addresses, innermost first: the first is where the thread was, each
//! next one a return address (the caller resumes there). Return probes replace return
//! addresses on the stack with their trampoline; the memory reader an engine gives the
//! unwinder answers with the real return address for such a slot, so the callers stay in the
//! stack.
#![forbid(unsafe_code)]

mod elf;
mod kernel;
mod symbolize;
mod unwind;

pub use kernel::KernelSymbols;
pub use symbolize::{Frame, Symbolizer};
pub use unwind::{StackMemory, Unwinder, UserRegs};
