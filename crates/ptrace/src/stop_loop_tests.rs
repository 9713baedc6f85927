//! The stop loop, attach and detach against the fake kernel: each test scripts what the
//! threads report and checks what the tracer asked of the kernel.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use dprobe_arch::{analyze, plan, Addr, Prepared};
use dprobe_core::{ProbeId, Stats};

use crate::error::{Exit, TraceError};
use crate::fake::{event_stop, exited, interrupt_stop, killed, signal_stop, Call, Fake, World};
use crate::inject::inject_syscall;
use crate::probes::{Probe, ProbeDef, Site};
use crate::sys::{self, RemoteMemory};
use crate::thread::{State, Stop, Thread};
use crate::tracee::{Tracee, EVENT_STOP};

const PID: i32 = 100;
/// A probe on a `push %rbp` (emulated by the tracer).
const SITE: u64 = 0x1000;
const STACK: u64 = 0x8000;
/// A `syscall` instruction of the process's.
const SYSCALL: u64 = 0x5000;
/// Where the thread stands (two `nop`s) when a system call is injected.
const AT: u64 = 0x2000;

/// A fake kernel for this thread's system calls, until the guard is dropped (declared before
/// the tracee, it outlives it: a tracee dropped while traced detaches through it).
fn fake_kernel() -> (Rc<RefCell<World>>, sys::FakeGuard) {
    let world = World::new();
    let guard = sys::install_fake(Box::new(Fake(world.clone())));
    (world, guard)
}

/// With a fake kernel (see [`fake_kernel`]; bound before the tracee, it outlives it): a
/// seized process with `threads` (all running) and one probe at `SITE` counting its hits.
fn traced(threads: &[i32]) -> (Rc<RefCell<World>>, sys::FakeGuard, Tracee, Rc<RefCell<u64>>) {
    let (world, guard) = fake_kernel();
    {
        let mut w = world.borrow_mut();
        w.poke(SITE, &[0xcc, 0x48, 0x89, 0xe5, 0xc3]); // int3 (push %rbp); mov %rsp,%rbp; ret
        w.poke(STACK - 16, &[0; 32]);
        for &tid in threads {
            w.regs(tid).rsp = STACK;
        }
    }
    let map: BTreeMap<i32, Thread> = threads.iter().map(|t| (*t, Thread::running())).collect();
    let mut t = Tracee::new(PID, map).unwrap();
    let insn = analyze(&[0x55, 0x48, 0x89, 0xe5, 0xc3], Addr(SITE), Addr(SITE)).unwrap();
    let id = ProbeId(1);
    let site = Site {
        prepared: Prepared { plan: plan(&insn, false), insn, slot: None },
        probes: vec![id],
        loader_hook: false,
        unwinder: false,
        catcher: false,
        sigaction_watch: false,
        origin: None,
        exit_of: Vec::new(),
        exit_probes: Vec::new(),
    };
    t.sites.insert(Addr(SITE), site);
    let hits = Rc::new(RefCell::new(0));
    let h = hits.clone();
    let def = ProbeDef::entry("push", Box::new(move |_| *h.borrow_mut() += 1));
    let pool = dprobe_core::returns::InstancePool::new(None);
    t.probes.insert(id, Probe { def, pool, stats: Stats::default() });
    (world, guard, t, hits)
}

/// With a fake kernel: thread `PID` stopped at `AT`, and the process's memory, with a
/// `syscall` instruction at `SYSCALL` known to it.
fn injecting() -> (Rc<RefCell<World>>, sys::FakeGuard, RemoteMemory) {
    let (world, guard) = fake_kernel();
    {
        let mut w = world.borrow_mut();
        w.poke(AT, &[0x90, 0x90]);
        w.regs(PID).rip = AT;
        w.poke(SYSCALL, &[0x0f, 0x05]);
    }
    let mut memory = RemoteMemory::open(PID).unwrap();
    memory.syscall_insn = Some(Addr(SYSCALL));
    (world, guard, memory)
}

fn calls(world: &Rc<RefCell<World>>) -> Vec<Call> {
    world.borrow().calls.clone()
}

#[test]
fn a_hit_stops_once_runs_its_handler_and_executes_the_instruction() {
    let (world, _k, mut t, hits) = traced(&[PID]);
    {
        let mut w = world.borrow_mut();
        w.regs(PID).rip = SITE + 1;
        w.regs(PID).rbp = 0x1234;
        w.stops.extend([(PID, signal_stop(libc::SIGTRAP)), (PID, exited(3))]);
    }
    assert_eq!(t.run().unwrap(), Exit::Code(3));
    assert_eq!(*hits.borrow(), 1);
    let w = world.borrow();
    assert_eq!(w.calls, [Call::Cont(PID, 0)], "the trap is consumed, not delivered");
    let r = w.regs[&PID];
    assert_eq!((r.rip, r.rsp), (SITE + 1, STACK - 8), "push %rbp emulated");
    assert_eq!(w.peek(STACK - 8), 0x34);
}

#[test]
fn the_programs_signal_is_delivered_from_its_own_stop() {
    let (world, _k, mut t, _) = traced(&[PID]);
    world.borrow_mut().stops.extend([(PID, signal_stop(libc::SIGUSR1)), (PID, exited(0))]);
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    assert_eq!(calls(&world), [Call::Cont(PID, libc::SIGUSR1)]);
}

#[test]
fn a_thread_killed_during_its_stop_is_gone_and_the_trace_goes_on() {
    let (world, _k, mut t, hits) = traced(&[PID, 101]);
    {
        let mut w = world.borrow_mut();
        w.gone.insert(101); // SIGKILL came while the tracer looked at its hit
        w.stops.extend([(101, signal_stop(libc::SIGTRAP)), (101, killed(libc::SIGKILL)), (PID, exited(0))]);
    }
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    assert_eq!(*hits.borrow(), 0);
    assert!(t.threads.is_empty());
}

#[test]
fn a_group_stop_is_kept_with_listen() {
    let (world, _k, mut t, _) = traced(&[PID]);
    world.borrow_mut().stops.extend([(PID, event_stop(EVENT_STOP, libc::SIGSTOP)), (PID, exited(0))]);
    t.run().unwrap();
    assert_eq!(calls(&world), [Call::Listen(PID)]);
}

#[test]
fn detach_recognises_a_trap_still_pending_behind_the_interrupt_stop() {
    let (world, _k, mut t, hits) = traced(&[PID]);
    {
        let mut w = world.borrow_mut();
        // It executed the int3, and reports the interrupt before the SIGTRAP.
        w.regs(PID).rip = SITE + 1;
        w.pending.insert(PID, 1 << (libc::SIGTRAP - 1));
        w.stops.push_back((PID, interrupt_stop()));
    }
    t.detach_all(&|| false).unwrap();
    let w = world.borrow();
    assert_eq!(w.peek(SITE), 0x55, "original byte back");
    assert_eq!(w.regs[&PID].rip, SITE, "back onto the original instruction");
    assert_eq!(w.calls, [Call::Interrupt(PID), Call::Cont(PID, 0), Call::Detach(PID, 0)]);
    assert_eq!(*hits.borrow(), 0);
}

#[test]
fn detach_does_not_wait_for_an_interrupt_a_clone_event_consumed() {
    let (world, _k, mut t, _) = traced(&[PID]);
    {
        let mut w = world.borrow_mut();
        w.messages.insert(PID, 101);
        // The clone stop consumes the interrupt; the new thread reports its first stop; the
        // parent, once out of `clone`, the interrupt sent again.
        w.stops.extend([(PID, event_stop(libc::PTRACE_EVENT_CLONE, libc::SIGTRAP)), (101, interrupt_stop())]);
        w.after_cont.insert(PID, [interrupt_stop()].into());
    }
    t.detach_all(&|| false).unwrap();
    assert_eq!(
        calls(&world),
        [Call::Interrupt(PID), Call::Cont(PID, 0), Call::Interrupt(PID), Call::Detach(PID, 0), Call::Detach(101, 0)]
    );
}

#[test]
fn a_signal_met_while_stopping_is_delivered_at_detach_and_an_exit_is_forgotten() {
    let (world, _k, mut t, _) = traced(&[PID, 101, 102]);
    let rt = libc::SIGRTMIN();
    world.borrow_mut().stops.extend([(101, exited(0)), (PID, signal_stop(rt)), (102, interrupt_stop())]);
    t.detach_all(&|| false).unwrap();
    let detached: Vec<Call> = calls(&world).into_iter().filter(|c| matches!(c, Call::Detach(..))).collect();
    assert_eq!(detached, [Call::Detach(PID, rt), Call::Detach(102, 0)]);
}

#[test]
fn attach_keeps_a_signal_that_came_before_the_interrupt_and_delivers_it_on_resuming() {
    let (world, _k, mut t, _) = traced(&[PID, 101]);
    let rt = libc::SIGRTMIN() + 1;
    world.borrow_mut().stops.extend([(PID, signal_stop(rt)), (101, event_stop(EVENT_STOP, libc::SIGSTOP))]);
    t.stop_all(&|| false).unwrap();
    assert_eq!(t.threads[&PID].state, State::Stopped(Stop::Signal(rt)));
    assert_eq!(t.threads[&101].state, State::Stopped(Stop::Group));
    world.borrow_mut().stops.push_back((PID, exited(0)));
    world.borrow_mut().stops.push_back((101, exited(0)));
    t.run().unwrap();
    let resumed: Vec<Call> = calls(&world).into_iter().skip(2).collect();
    assert_eq!(resumed, [Call::Cont(PID, rt), Call::Listen(101)], "from the signal's own stop; the group-stop kept");
}

#[test]
fn a_signal_during_an_injected_system_call_is_given_back_to_the_kernel_not_sent_again() {
    let (world, _k, mut memory) = injecting();
    let rt = libc::SIGRTMIN();
    {
        let mut w = world.borrow_mut();
        w.regs(PID).rax = 7;
        // Taken although blocked (the fake does not care): given back as the step goes on.
        w.after_step.insert(PID, [signal_stop(rt)].into());
    }
    let result = inject_syscall(PID, &mut memory, libc::SYS_getpid as u64, [0; 6]).unwrap();
    assert_eq!(result, libc::SYS_getpid as u64, "the fake runs no system call: rax as set");
    let w = world.borrow();
    assert_eq!(w.calls, [Call::Step(PID), Call::Step(PID), Call::Requeued(PID, rt)]);
    assert_eq!(w.pending[&PID], 1 << (rt - 1), "pending, as it came (never sent again)");
    assert_eq!(w.blocked[&PID], 0, "the thread's mask put back");
    assert_eq!((w.regs[&PID].rip, w.regs[&PID].rax), (AT, 7), "registers put back");
}

#[test]
fn signals_are_blocked_while_an_injected_system_call_runs_and_faults_are_not() {
    let (world, _k, mut memory) = injecting();
    let usr1 = 1 << (libc::SIGUSR1 - 1);
    world.borrow_mut().blocked.insert(PID, usr1 | (1 << (libc::SIGTRAP - 1)));
    inject_syscall(PID, &mut memory, libc::SYS_getpid as u64, [0; 6]).unwrap();
    let w = world.borrow();
    let during = w.blocked_at_step[0];
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD, libc::SIGRTMIN(), libc::SIGRTMIN() + 1, 33, 64] {
        assert_ne!(during & (1 << (signal - 1)), 0, "signal {signal} kept pending");
    }
    for signal in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP] {
        assert_eq!(during & (1 << (signal - 1)), 0, "signal {signal} left open (a fault's is forced)");
    }
    assert_eq!(w.blocked[&PID], usr1 | (1 << (libc::SIGTRAP - 1)), "the program's mask put back");
    assert_eq!(w.calls, [Call::Step(PID)]);
}

#[test]
fn a_held_thread_stepped_for_the_tracer_gives_its_signal_back_to_its_queue() {
    let (world, _k, mut t, _) = traced(&[PID]);
    let rt = libc::SIGRTMIN() + 1;
    {
        let mut w = world.borrow_mut();
        w.poke(AT, &[0x90, 0x90]);
        w.regs(PID).rip = AT;
    }
    t.threads.insert(PID, Thread::stopped(Stop::Signal(rt)));
    t.step(PID).unwrap();
    assert_eq!(t.threads[&PID].state, State::Stopped(Stop::Signal(0)), "nothing left to deliver from a stop");
    let w = world.borrow();
    assert_eq!(w.calls, [Call::Step(PID), Call::Requeued(PID, rt)]);
    assert_eq!(w.pending[&PID], 1 << (rt - 1), "pending, unchanged, for when it resumes");
    assert_eq!(w.blocked[&PID], 0, "the thread's mask put back");
}

#[test]
fn a_fault_signal_a_held_thread_was_stopped_for_stays_its_own() {
    let (world, _k, mut t, _) = traced(&[PID]);
    {
        let mut w = world.borrow_mut();
        w.poke(AT, &[0x90, 0x90]);
        w.regs(PID).rip = AT;
    }
    t.threads.insert(PID, Thread::stopped(Stop::Signal(libc::SIGSEGV)));
    t.step(PID).unwrap();
    assert_eq!(t.threads[&PID].state, State::Stopped(Stop::Signal(libc::SIGSEGV)), "never blocked: delivered later");
    assert_eq!(calls(&world), [Call::Step(PID)]);
}

#[test]
fn an_injected_system_call_runs_at_the_process_s_own_syscall_and_writes_no_code() {
    let (world, _k, mut memory) = injecting();
    world.borrow_mut().writes = 0;
    inject_syscall(PID, &mut memory, libc::SYS_getpid as u64, [0; 6]).unwrap();
    let w = world.borrow();
    assert_eq!(w.stepped_at, [SYSCALL], "stepped through the process's own `syscall`");
    assert_eq!(w.writes, 0, "no code written");
    assert_eq!(w.regs[&PID].rip, AT, "registers put back");
}

#[test]
fn a_syscall_instruction_that_changed_is_not_used() {
    let (world, _k, mut memory) = injecting();
    // A probe placed there since. The fake has no maps to search: the process then has no
    // usable `syscall`.
    world.borrow_mut().poke(SYSCALL, &[0xcc, 0x05]);
    let e = crate::inject::syscall_insn(&mut memory);
    assert!(!matches!(e, Ok(Addr(SYSCALL))), "{e:?}");
}

#[test]
fn a_vanished_thread_ends_no_detach() {
    let (world, _k, mut t, _) = traced(&[PID, 101]);
    // Killed while the tracer stops it: every request about it fails, its exit comes last.
    world.borrow_mut().stops.extend([(PID, interrupt_stop()), (101, interrupt_stop()), (101, killed(9))]);
    world.borrow_mut().gone.insert(101);
    assert!(!matches!(t.detach_all(&|| false), Err(TraceError::Gone { .. })));
    assert_eq!(calls(&world).last(), Some(&Call::Detach(PID, 0)));
}

#[test]
fn an_interrupt_left_pending_is_stepped_past_and_the_injected_call_still_runs() {
    let (world, _k, mut memory) = injecting();
    // The first step stops at the interrupt before the instruction runs.
    world.borrow_mut().after_step.insert(PID, [interrupt_stop()].into());
    inject_syscall(PID, &mut memory, libc::SYS_getpid as u64, [0; 6]).unwrap();
    assert_eq!(calls(&world), [Call::Step(PID), Call::Step(PID)], "stepped until the step's own trap");
}

#[test]
fn a_second_signal_gives_up_waiting_restores_the_code_and_lets_the_stopped_threads_go() {
    let (world, _k, mut t, _) = traced(&[PID, 101]);
    {
        let mut w = world.borrow_mut();
        // 101 never stops (a vfork parent waiting for its child); the tick interrupts.
        w.stops.push_back((PID, interrupt_stop()));
        w.interrupted_when_idle = true;
    }
    let e = t.detach_all(&|| true).unwrap_err();
    assert!(matches!(e, TraceError::GaveUp { waiting: 1 }), "{e:?}");
    let w = world.borrow();
    assert_eq!(w.peek(SITE), 0x55, "original byte back");
    assert_eq!(
        w.calls,
        [Call::Interrupt(PID), Call::Interrupt(101), Call::Interrupt(101), Call::Detach(PID, 0)],
        "asked again before it is given up on"
    );
    assert!(t.threads.is_empty(), "nothing left for a later detach to wait for");
}

#[test]
fn a_stop_signal_held_at_detach_is_dropped_when_a_sigcont_came_after_it() {
    let (world, _k, mut t, _) = traced(&[PID, 101]);
    world.borrow_mut().stops.extend([(PID, signal_stop(libc::SIGSTOP)), (101, signal_stop(libc::SIGCONT))]);
    t.detach_all(&|| false).unwrap();
    let detached: Vec<Call> = calls(&world).into_iter().filter(|c| matches!(c, Call::Detach(..))).collect();
    assert_eq!(
        detached,
        [Call::Detach(PID, 0), Call::Detach(101, libc::SIGCONT)],
        "the program continued, as untraced"
    );
}

#[test]
fn a_stop_signal_after_a_sigcont_of_an_earlier_hold_is_delivered() {
    let (world, _k, mut t, _) = traced(&[PID, 101]);
    world.borrow_mut().stops.extend([(101, signal_stop(libc::SIGCONT)), (PID, interrupt_stop())]);
    t.stop_all(&|| false).unwrap();
    t.resume_stopped().unwrap();
    world.borrow_mut().stops.extend([(PID, signal_stop(libc::SIGSTOP)), (101, interrupt_stop())]);
    t.detach_all(&|| false).unwrap();
    let detached: Vec<Call> = calls(&world).into_iter().filter(|c| matches!(c, Call::Detach(..))).collect();
    assert_eq!(detached, [Call::Detach(PID, libc::SIGSTOP), Call::Detach(101, 0)], "stopped, as untraced");
}

#[test]
fn a_group_stop_held_while_attaching_ends_when_a_sigcont_came_after_it() {
    let (world, _k, mut t, _) = traced(&[PID, 101]);
    world.borrow_mut().stops.extend([(PID, event_stop(EVENT_STOP, libc::SIGSTOP)), (101, signal_stop(libc::SIGCONT))]);
    t.stop_all(&|| false).unwrap();
    world.borrow_mut().stops.extend([(PID, exited(0)), (101, exited(0))]);
    t.run().unwrap();
    let resumed: Vec<Call> = calls(&world).into_iter().skip(2).collect();
    assert_eq!(resumed, [Call::Cont(PID, 0), Call::Cont(101, libc::SIGCONT)], "not kept stopped with LISTEN");
}
