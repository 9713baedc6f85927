//! Fault recovery around handler calls.
//!
//! A handler that dereferences a bad pointer raises `SIGSEGV` inside dprobe's `SIGTRAP`
//! handler. Instead of killing the program, the fault handler of the engine resumes execution
//! at a recovery point saved by [`call_guarded_in`], abandoning the faulting handler where it
//! stood, and the probe's fault handler is told (the kernel's fixup of faulting kprobe
//! handlers). The abandoned handler's destructors do not run, as with `longjmp`; a handler
//! that faults while holding a resource leaks it. That is the price of not crashing.

use dprobe_core::{Addr, HandlerFault};

use crate::{program_errno, thread_state};

std::arch::global_asm!(
    ".text",
    ".globl __dprobe_guarded_call",
    // Hidden: called directly, not through the global offset table.
    ".hidden __dprobe_guarded_call",
    ".type __dprobe_guarded_call,@function",
    "__dprobe_guarded_call:",
    // Save the callee-saved registers: the recovery path restores them from here.
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    // The point's address, for the way out (and the call's 16-byte alignment).
    "push rdx",
    // point[1] = where to resume, then point[0] = the stack pointer to resume with: a point
    // whose stack pointer is set is whole (`recovery_point`).
    "lea rax, [rip + 2f]",
    "mov [rdx + 8], rax",
    "mov [rdx], rsp",
    "mov rax, rdi",
    "mov rdi, rsi",
    "call rax",
    "xor eax, eax",
    "jmp 3f",
    "2:",
    "mov eax, 1",
    "3:",
    // Out of the guarded call: a fault from here on is not its (the point's stack pointer
    // is 0 again, see `recovery_point`).
    "pop rdx",
    "mov qword ptr [rdx], 0",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".globl __dprobe_guarded_call_end",
    ".hidden __dprobe_guarded_call_end",
    "__dprobe_guarded_call_end:",
    ".size __dprobe_guarded_call, . - __dprobe_guarded_call",
);

extern "C" {
    /// Call `f(arg)`; returns 0 when it returned, 1 when a fault resumed at the recovery point.
    fn __dprobe_guarded_call(f: extern "C" fn(*mut u8), arg: *mut u8, point: *mut [u64; 2]) -> u64;
    /// Just past the end of `__dprobe_guarded_call`.
    fn __dprobe_guarded_call_end();
}

extern "C" fn trampoline<F: FnMut()>(arg: *mut u8) {
    // SAFETY: `arg` is the `&mut F` that `call_guarded_in` passed, alive for the duration of
    // this call. `f` catches panics itself (the dispatch closure of dprobe-core) or cannot
    // panic (the code writer's stores), so nothing unwinds through this extern "C" frame.
    let f = unsafe { &mut *(arg as *mut F) };
    f();
}

/// Run `f` on the thread whose state is `state`; if it faults, resume here and return the
/// fault. Async-signal-safe; nests. Generic, so that the hit path calls the handler's closure
/// directly from [`trampoline`] rather than through a `dyn` call (about 2 ns a hit,
/// BENCHMARKS.md), and its callers pass the state they found already.
pub(crate) fn call_guarded_in<F: FnMut()>(
    state: Option<&thread_state::ThreadState>,
    mut f: F,
) -> Result<(), HandlerFault> {
    // A thread without state cannot be guarded: `f` does not run.
    let Some(state) = state else { return Err(HandlerFault { signal: 0, addr: None }) };
    let mut point = [0u64; 2];
    let outer = state.guard_point.replace(&mut point);
    // What runs inside is a handler's body (see `ThreadState::handler_body`).
    state.handler_body.set(state.handler_body.get() + 1);
    // A fault abandons `f` where it stood, without its destructors: counters it raised and
    // would have lowered (a tool's `ToolWork`) are put back as they were, or every later hit
    // of this thread would count nothing.
    let (own_work, in_hit_path) = (state.own_work.get(), state.in_hit_path.get());
    let (tool_work, own_frames) = (state.tool_work.get(), state.own_frames_len.get());
    // The program's errno is its own: what `f`'s calls do to it is undone.
    let errno = program_errno::keep(state, state.handler_body.get() == 1);
    // SAFETY: the assembly saves the callee-saved registers and stack pointer in `point`,
    // calls `trampoline(&mut f)` with an aligned stack, and returns 0; or, when the fault
    // handler redirected the faulting thread to the recovery label with `point`'s stack
    // pointer, restores the callee-saved registers from that frame and returns 1. Either
    // way it returns to this frame as a normal call would.
    let faulted = unsafe { __dprobe_guarded_call(trampoline::<F>, (&mut f as *mut F).cast(), &mut point) };
    program_errno::give_back(state, errno);
    state.handler_body.set(state.handler_body.get() - 1);
    state.guard_point.set(outer);
    if faulted != 0 {
        state.own_work.set(own_work);
        state.in_hit_path.set(in_hit_path);
        state.tool_work.set(tool_work);
        state.own_frames_len.set(own_frames);
    }
    if faulted == 0 {
        Ok(())
    } else if state.faulted.replace(false) {
        let (signal, addr) = state.fault.get();
        Err(HandlerFault { signal, addr: Some(Addr(addr)) })
    } else {
        Err(HandlerFault { signal: 0, addr: None })
    }
}

/// Called from the fault signal handler: if this thread is inside a guarded call, record the
/// fault and return the `(rsp, rip)` to resume with.
pub fn recovery_point(signal: i32, addr: u64) -> Option<(u64, u64)> {
    let state = thread_state::existing()?;
    let p = state.guard_point.get();
    // SAFETY: as below.
    if p.is_null() || unsafe { (*p)[0] } == 0 {
        // Not inside the guarded call (yet, or any more): no recovery point.
        return None;
    }
    state.fault.set((signal, addr));
    state.faulted.set(true);
    // SAFETY: a non-null POINT is the `point` array of a `call_guarded_in` frame that is still
    // live on this thread's stack (it is reset before that frame returns).
    let [rsp, rip] = unsafe { *p };
    Some((rsp, rip))
}

/// The stack pointer of this thread's innermost guarded call, if it is inside one.
pub(crate) fn guarded_stack_pointer(state: &thread_state::ThreadState) -> Option<u64> {
    let p = state.guard_point.get();
    // SAFETY: a non-null point is a live `call_guarded_in` frame's (see `recovery_point`).
    // Its stack pointer is 0 outside the assembly's call: not inside the guarded call.
    (!p.is_null()).then(|| unsafe { (*p)[0] }).filter(|&sp| sp != 0)
}

/// Whether `rip` is inside the guarded-call assembly (dprobe's own hit path).
pub fn guard_code_contains(rip: u64) -> bool {
    let (start, end) = (__dprobe_guarded_call as *const () as u64, __dprobe_guarded_call_end as *const () as u64);
    rip >= start && rip < end
}
