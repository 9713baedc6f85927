//! A program traced with stacks waits, as it exits, for the tracer to take the stacks it
//! left in the shared memory: the tracer unwinds and symbolizes them with the process's maps,
//! which go with the process. Without stacks, or once the tracer has them, there is no wait;
//! it is bounded (the tracer may be stopped or gone). A program that leaves through `_exit`
//! skips this, and its last stacks may lack their symbols.

use std::time::Duration;

use crate::child::LIVE;
use crate::hit::now_ns;

/// The longest an exit waits for the tracer.
const AT_MOST: Duration = Duration::from_secs(1);

/// Run by the C library at `exit` (and when the library is unloaded), with the other
/// objects' destructors.
#[used]
#[link_section = ".fini_array"]
static WAIT_FOR_THE_TRACER: extern "C" fn() = wait_for_the_tracer;

extern "C" fn wait_for_the_tracer() {
    let Some(shm) = LIVE.with(|live| live.as_ref().map(|l| l.shm.clone())) else { return };
    // (The clock read only when there is something to wait for: a call of the program's
    // thread that is dprobe's, which a probe on `clock_gettime` would count.)
    if !shm.stacks_pending() {
        return;
    }
    let deadline = now_ns() + AT_MOST.as_nanos() as u64;
    while shm.stacks_pending() && now_ns() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}
