//! In-process kprobes: probes on any instruction of the current process, whose handlers are
//! Rust closures that see and may change the registers.
//!
//! A probe replaces the first byte of an instruction with `int3`. When a thread reaches it,
//! dprobe's `SIGTRAP` handler runs the probe's pre-handlers with the thread's registers, then
//! executes the displaced instruction: emulated in the handler (branches, calls, returns,
//! pushes, nops), or from a relocated copy in an out-of-line slot that jumps back ("boosted":
//! one trap per hit), or that ends in a second `int3` when a post-handler must run after it.
//!
//! ```no_run
//! use dprobe_inproc::{register, Kprobe, PreAction};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! static CALLS: AtomicU64 = AtomicU64::new(0);
//! let probe = register(Kprobe::symbol("getppid").pre(|_regs| {
//!     CALLS.fetch_add(1, Ordering::Relaxed);
//!     PreAction::Continue
//! }))?;
//! // SAFETY: getppid has no preconditions.
//! unsafe { libc::getppid() };
//! assert_eq!(probe.hits(), 1);
//! drop(probe); // unregisters; the original byte is back
//! # Ok::<(), dprobe_inproc::ProbeError>(())
//! ```
//!
//! # Rules for handlers
//! Handlers run in signal context on the probed thread: they must be async-signal-safe (no
//! locks, no allocation, no blocking I/O). A probe hit inside a handler runs no handler and
//! counts as missed; one hit by dprobe's own hit path (a probed `memcpy` it calls) counts
//! nothing, as it is not the program's call. A handler that panics is caught and its probe disabled; a handler that
//! faults is abandoned (its destructors do not run), its probe's fault handler is told, and
//! the probe is disabled unless the fault handler handled it.
//!
//! # Limits
//! A thread that blocks `SIGTRAP` with `sigprocmask` and hits a probe on `int3` is killed by
//! the kernel (synchronous traps cannot be blocked), as is a signal handler whose action's mask
//! holds `SIGTRAP`, and so is a child of `posix_spawn` or `system` that hits one before its
//! `exec` (it resets its handlers and blocks every signal first); [`keep_traps_open`] keeps
//! `SIGTRAP` out of the masks that block every signal and out of handlers' masks, and handled
//! in those children from the reset of their handlers on. A probe going in or out as a jump is
//! an `int3` for a moment, which such a child would meet before that reset too;
//! [`hold_spawns_while_patching`] holds `posix_spawn` off while code changes (place it before
//! the others). A program that replaces dprobe's `SIGTRAP` handler after probes are
//! registered loses them. Making a probe whose jump replaces several instructions sends every
//! other thread `SIGURG` (see `safepoint.rs`: its default action, ignore, is harmless to a
//! thread in the middle of an `exec`; where the program handles `SIGURG` itself, dprobe
//! leaves it alone and sends the last real-time signal), unless it is asleep in a system call;
//! one that went to sleep as the signal came has its wait resumed where it is a bounded
//! `nanosleep`, `clock_nanosleep`, `poll`, `ppoll`, `select` or `futex` wait (`sem_timedwait`;
//! `resumed_waits.rs`), and other calls never restarted after a handler (`epoll_wait`,
//! `sigtimedwait`, a `poll` without a timeout) may return `EINTR` there. While a thread blocks
//! that signal such probes stay on `int3`. While a jump is in a file's code its page is `rwx`
//! (`code_pages.rs`: it keeps other tools' kernel uprobes off the jump), so `/proc/PID/maps`
//! shows that mapping in several pieces.

mod abandoned;
mod args;
#[cfg(test)]
mod avx_stub_tests;
mod backtrace;
mod blocked;
mod chunked_stack;
mod code_pages;
mod code_writes;
mod context;
mod count_key;
mod debugger_leftover;
mod engine;
mod events;
mod exits;
mod file_code;
mod file_page;
mod guard;
mod handler_masks;
mod hijacked;
mod hit_stack;
mod instances;
mod interrupted;
mod jump;
mod jump_stub;
mod kretprobe;
mod lent_threads;
mod mapped;
mod mask_guard;
mod memory;
mod optimizer;
pub mod own_files;
mod page_alias;
mod probe;
mod program_errno;
pub mod raw_calls;
mod rearm;
mod reenter;
mod resolver_runner;
mod resumed_waits;
mod safepoint;
mod saved;
mod signal_frame;
mod signals;
mod signals_released;
mod site_map;
mod slots;
mod spawn_children;
mod spawn_hold;
mod stack_end;
mod stack_mappings;
mod sys;
mod thread_state;
mod trap;
mod x87_frame;

pub use args::{Arg, ArgClass, ArgCursor, Args};
pub use backtrace::backtrace;
pub use count_key::count_key;
pub use debugger_leftover::leftovers_put_right;
pub use dprobe_arch::{Addr, Gpr, NotOptimized, Regs};
pub use dprobe_core::returns::ReturnMode;
pub use dprobe_core::{
    EventRing, FaultInfo, FaultStage, Kprobe, PreAction, ProbeError, ProbeId, RingRecord, Stats, PAYLOAD_BYTES,
};
pub use dprobe_sym::Target;
pub use engine::ProbeInfo;
pub use events::emit;
pub use exits::PER_CALL;
pub use kretprobe::{
    process_return_chunks, real_return_address, register_kretprobe, thread_return_chunks, trampoline_addr, EntryAction,
    InstanceData, Kretprobe, ReturnProbe,
};
pub use lent_threads::{lent_thread_probes, watch_lent_threads, LentThreads};
pub use mask_guard::{blocks_trap_by_name, keep_traps_open, TrapsOpen};
pub use memory::{read_bytes, read_c_string};
pub use probe::{
    blacklist, kept_jumps, list, rearm_undone, register, register_all, register_jprobe, resolve, resolve_each,
    unregister_all, Probe,
};
pub use program_errno::{program_errno, set_program_errno};
pub use reenter::{reentered, wait_then_reenter};
pub use resolver_runner::run_resolver;
pub use safepoint::{moved as safepoint_moves, open_safepoint_signal, safepoint_signal, SafepointSignalOpen};
pub use signals::program_ignores_outright;
pub use spawn_hold::{hold_spawns_while_patching, SpawnHold};
pub use sys::close_mem_file;
pub use thread_state::{process_and_thread_id, thread_id, thread_name};
pub use trap::{in_handler, in_hit_path, mark_own_thread, own_work, tool_work, OwnWork, ToolWork};

/// Make this process ready for the engine's code changes while its caller is its only thread,
/// where that is cheap (the registration of the cross-core serialization
/// `membarrier` offers); the first probe does it otherwise. The agent calls it at its
/// start, before its own thread exists: in a program it is loaded into at `exec`, the
/// difference is most of a followed program's wait.
pub fn ready_for_code_changes() {
    sys::register_core_syncs();
}

/// Every lock of dprobe's registration side, held for as long as the value lives. For tests:
/// probes hit meanwhile must still run (the hit path takes no lock), which
/// `tests/no_lock.rs` checks. Registering or unregistering from the same thread meanwhile
/// would deadlock.
#[doc(hidden)]
pub fn hold_registration_locks() -> impl Drop {
    struct Held<W, A, B, C>(W, A, B, C);
    impl<W, A, B, C> Drop for Held<W, A, B, C> {
        fn drop(&mut self) {}
    }
    Held(exits::hold_lock(), engine::Engine::hold_lock(), kretprobe::hold_unwind_lock(), signals::hold_install_lock())
}
