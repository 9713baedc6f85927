//! What every engine delivers at a hit: one [`ProbeEvent`], whatever reached the probed code
//! (a ptrace stop, a kernel perf record). Its values borrow the engine's storage: a consumer
//! copies what it keeps.

use crate::fetch::Values;

/// Which side of a call an event is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The probed instruction (a function's entry, an offset into it, a tracepoint).
    Entry,
    /// The function's return.
    Return,
}

/// One hit, fetched.
#[derive(Debug, Clone, Copy)]
pub struct ProbeEvent<'a> {
    /// Which probe: its index in the order the engine placed them.
    pub probe: usize,
    /// Entry or return.
    pub side: Side,
    /// The process (thread group).
    pub pid: u32,
    /// The thread.
    pub tid: u32,
    /// The process whose memory map the stacks' addresses are in: `pid`, or the program a
    /// forked child (that has not executed another program) was forked from, whose map is the
    /// child's too, for when the child has ended before its stacks are symbolized.
    pub maps_of: u32,
    /// When, in `CLOCK_MONOTONIC` nanoseconds: for the kernel engine the record's perf
    /// time (asked on that clock), for ptrace when dprobe saw the stop, for the agent when
    /// the probed thread took the hit. One clock for all, so that one offset taken at the
    /// start turns any of them into wall-clock time.
    pub time_ns: u64,
    /// At a return whose entry the engine paired itself (it watched the call): when that
    /// entry was, on the same clock.
    pub entry_time_ns: Option<u64>,
    /// The thread's name (empty when the engine was not asked for it).
    pub comm: &'a [u8],
    /// The values of the probe's fetch plan, in its order.
    pub values: &'a Values,
    /// With stacks asked for ([`crate::Engine::stacks`]): the user stack, innermost first:
    /// where the thread was, then the return addresses of its callers (real ones, where a
    /// return probe had replaced them). Empty otherwise.
    pub user_stack: &'a [u64],
    /// The kernel stack the same way, when asked for and the probe is the kernel's.
    pub kernel_stack: &'a [u64],
}

/// Where an engine hands its events, in order: the tracer's consumer behind
/// [`Engine::run`](crate::Engine::run) and every helper of an engine that delivers on its behalf.
pub type EventSink<'a> = &'a mut (dyn FnMut(&ProbeEvent<'_>) + 'a);
