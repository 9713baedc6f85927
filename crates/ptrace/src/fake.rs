//! A fake kernel for the engine's own tests: wait statuses come from a script, ptrace
//! requests are recorded, registers and memory are plain maps. The stop loop, attach and
//! detach are tested against it without a real process.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::rc::Rc;

use crate::sys::{Kernel, Request};
use crate::tracee::EVENT_STOP;

/// What the tracer asked of the fake kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Cont(i32, i32),
    Step(i32),
    Detach(i32, i32),
    Interrupt(i32),
    Listen(i32),
    Tgkill(i32, i32),
    Queue(i32, i32),
    /// A signal the thread was resumed with while it blocked it: queued again by the kernel.
    Requeued(i32, i32),
}

/// The fake kernel's state, shared with the test.
#[derive(Default)]
pub struct World {
    /// Wait statuses to report, in order.
    pub stops: VecDeque<(i32, i32)>,
    /// A status to report when a thread is continued (what it does next), per thread.
    pub after_cont: HashMap<i32, VecDeque<i32>>,
    /// A status to report when a thread is stepped (default: the step's `SIGTRAP`).
    pub after_step: HashMap<i32, VecDeque<i32>>,
    pub regs: HashMap<i32, libc::user_regs_struct>,
    pub memory: BTreeMap<u64, u8>,
    /// Signals pending per thread (mask); a thread's are delivered when it is continued,
    /// those it blocks excepted.
    pub pending: HashMap<i32, u64>,
    /// Signals blocked per thread (mask).
    pub blocked: HashMap<i32, u64>,
    pub messages: HashMap<i32, u64>,
    /// Threads that vanished: every request about them fails with `ESRCH`.
    pub gone: HashSet<i32>,
    /// Threads that exited and were reaped.
    pub exited: HashSet<i32>,
    pub calls: Vec<Call>,
    /// When no status is left: a signal interrupts the wait (`EINTR`) rather than `ECHILD`.
    pub interrupted_when_idle: bool,
    /// Where each single step started.
    pub stepped_at: Vec<u64>,
    /// The signals blocked at each single step.
    pub blocked_at_step: Vec<u64>,
    /// Memory writes made through the fake.
    pub writes: usize,
    /// Words of each thread's `struct user` written (its debug registers), by offset.
    pub user_words: HashMap<(i32, u64), u64>,
    /// The `si_code` of a `SIGTRAP` (default: a breakpoint's, `TRAP_BRKPT`).
    pub trap_code: Option<i32>,
    /// Signals that come while a thread runs after it is continued, per continue, after the
    /// stop it then reports (`after_cont`): pending from then on.
    pub pend_after_cont: HashMap<i32, VecDeque<u64>>,
    last_signal: HashMap<i32, i32>,
}

impl World {
    pub fn new() -> Rc<RefCell<World>> {
        Rc::new(RefCell::new(World::default()))
    }

    pub fn regs(&mut self, tid: i32) -> &mut libc::user_regs_struct {
        // SAFETY: all-zero is a valid user_regs_struct.
        self.regs.entry(tid).or_insert_with(|| unsafe { std::mem::zeroed() })
    }

    pub fn poke(&mut self, addr: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.memory.insert(addr + i as u64, *b);
        }
    }

    pub fn peek(&self, addr: u64) -> u8 {
        self.memory[&addr]
    }

    /// A thread resumed with `signal` that it blocks has it queued again (`ptrace_signal`).
    fn requeue_if_blocked(&mut self, tid: i32, signal: i32) {
        if signal != 0 && self.blocked.get(&tid).copied().unwrap_or(0) & (1 << (signal - 1)) != 0 {
            self.calls.push(Call::Requeued(tid, signal));
            *self.pending.entry(tid).or_default() |= 1 << (signal - 1);
        }
    }

    fn report(&mut self, tid: i32, status: i32, front: bool) {
        if front {
            self.stops.push_front((tid, status));
        } else {
            self.stops.push_back((tid, status));
        }
    }
}

/// Wait statuses.
pub fn signal_stop(signal: i32) -> i32 {
    (signal << 8) | 0x7f
}

pub fn event_stop(event: i32, signal: i32) -> i32 {
    (event << 16) | (signal << 8) | 0x7f
}

/// The stop a `PTRACE_INTERRUPT` produces.
pub fn interrupt_stop() -> i32 {
    event_stop(EVENT_STOP, libc::SIGTRAP)
}

pub fn exited(code: i32) -> i32 {
    code << 8
}

pub fn killed(signal: i32) -> i32 {
    signal
}

/// The fake kernel itself.
pub struct Fake(pub Rc<RefCell<World>>);

impl Kernel for Fake {
    fn ptrace(&mut self, tid: i32, request: Request<'_>) -> Result<u64, i32> {
        let mut w = self.0.borrow_mut();
        if w.gone.contains(&tid) {
            return Err(libc::ESRCH);
        }
        match request {
            Request::Cont { signal } | Request::Syscall { signal } => {
                w.calls.push(Call::Cont(tid, signal));
                w.requeue_if_blocked(tid, signal);
                let blocked = w.blocked.get(&tid).copied().unwrap_or(0);
                let pending = w.pending.get(&tid).copied().unwrap_or(0) & !blocked;
                if pending != 0 {
                    // The lowest pending signal is dequeued first (SIGTRAP before the others).
                    let signal = pending.trailing_zeros() as i32 + 1;
                    *w.pending.entry(tid).or_default() &= !(1 << (signal - 1));
                    w.report(tid, signal_stop(signal), true);
                } else if let Some(next) = w.after_cont.get_mut(&tid).and_then(VecDeque::pop_front) {
                    w.report(tid, next, false);
                }
                if let Some(more) = w.pend_after_cont.get_mut(&tid).and_then(VecDeque::pop_front) {
                    *w.pending.entry(tid).or_default() |= more;
                }
            }
            Request::Step { signal } => {
                w.calls.push(Call::Step(tid));
                w.requeue_if_blocked(tid, signal);
                let rip = w.regs(tid).rip;
                w.stepped_at.push(rip);
                let blocked = w.blocked.get(&tid).copied().unwrap_or(0);
                w.blocked_at_step.push(blocked);
                let next =
                    w.after_step.get_mut(&tid).and_then(VecDeque::pop_front).unwrap_or(signal_stop(libc::SIGTRAP));
                w.report(tid, next, true);
            }
            Request::GetRegs(r) => *r = *w.regs(tid),
            Request::SetRegs(r) => *w.regs(tid) = *r,
            Request::EventMessage => return Ok(w.messages.get(&tid).copied().unwrap_or(0)),
            Request::Seize { .. } | Request::SetOptions { .. } => {}
            Request::PokeUser { offset, value } => {
                w.user_words.insert((tid, offset), value);
            }
            Request::Interrupt => w.calls.push(Call::Interrupt(tid)),
            Request::Listen => w.calls.push(Call::Listen(tid)),
            Request::Detach { signal } => w.calls.push(Call::Detach(tid, signal)),
            Request::GetSigInfo(info) => {
                info.si_signo = w.last_signal.get(&tid).copied().unwrap_or(0);
                // A step's trap is the kernel's; other signals were sent with `sigqueue`.
                info.si_code = match info.si_signo {
                    libc::SIGTRAP => w.trap_code.unwrap_or(libc::TRAP_BRKPT),
                    _ => libc::SI_QUEUE,
                };
            }
            Request::GetSigMask(mask) => *mask = w.blocked.get(&tid).copied().unwrap_or(0),
            Request::SetSigMask(mask) => {
                w.blocked.insert(tid, *mask);
            }
            Request::SetSigInfo(info) => {
                w.last_signal.insert(tid, info.si_signo);
            }
        }
        Ok(0)
    }

    fn wait(&mut self, tid: i32, nohang: bool) -> Result<Option<(i32, i32)>, i32> {
        let mut w = self.0.borrow_mut();
        let idle = if w.interrupted_when_idle { libc::EINTR } else { libc::ECHILD };
        let found = w.stops.iter().position(|(t, _)| tid == -1 || *t == tid);
        // Another thread's status is for another wait: this thread has nothing yet.
        if found.is_none() && nohang && tid != -1 && !w.exited.contains(&tid) && !w.gone.contains(&tid) {
            return Ok(None);
        }
        let i = found.ok_or(idle)?;
        let (t, status) = w.stops.remove(i).expect("found");
        if libc::WIFSTOPPED(status) {
            w.last_signal.insert(t, libc::WSTOPSIG(status));
        } else {
            w.exited.insert(t);
        }
        Ok(Some((t, status)))
    }

    fn tgkill(&mut self, _pid: i32, tid: i32, signal: i32) -> Result<(), i32> {
        self.0.borrow_mut().calls.push(Call::Tgkill(tid, signal));
        Ok(())
    }

    fn queue(&mut self, _pid: i32, tid: i32, info: &libc::siginfo_t) -> Result<(), i32> {
        self.0.borrow_mut().calls.push(Call::Queue(tid, info.si_signo));
        Ok(())
    }

    fn pending(&mut self, _pid: i32, tid: i32) -> u64 {
        self.0.borrow().pending.get(&tid).copied().unwrap_or(0)
    }

    fn pending_anywhere(&mut self, _pid: i32) -> u64 {
        self.0.borrow().pending.values().fold(0, |all, mask| all | mask)
    }

    fn exists(&mut self, _pid: i32, tid: i32) -> bool {
        !self.0.borrow().exited.contains(&tid)
    }

    fn memory_file(&mut self, _pid: i32) -> io::Result<Option<File>> {
        Ok(None)
    }

    fn read(&mut self, _pid: i32, addr: u64, buf: &mut [u8]) -> bool {
        let w = self.0.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            match w.memory.get(&(addr + i as u64)) {
                Some(v) => *b = *v,
                None => return false,
            }
        }
        true
    }

    fn write(&mut self, _pid: i32, addr: u64, data: &[u8]) -> bool {
        let mut w = self.0.borrow_mut();
        if !data.iter().enumerate().all(|(i, _)| w.memory.contains_key(&(addr + i as u64))) {
            return false;
        }
        w.poke(addr, data);
        w.writes += 1;
        true
    }
}
