//! The pairing of a return probe's entry and exit events (placed at its function's exits,
//! [`crate::exit_sites`]) per thread by the stack pointer (`dprobe_core::returns::exits`).
//!
//! Each CPU has its own ring, and a thread that moved between CPUs may have its exit read
//! before its entry: the records are held and handled in the order of their times, once no
//! ring can still bring an earlier one (those stamped before the last read began).

use std::collections::HashMap;

use dprobe_arch::ExitKind;
use dprobe_core::returns::exits::ActivationStack;

use crate::format::FieldValue;

/// How long before a read began a record must be stamped to be handled: the kernel stamps a
/// record just before it writes it.
const SETTLE_NS: u64 = 2_000_000;

/// What an event of a return probe watched at its exits says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The function's entry.
    Entry,
    /// One of its exits.
    Exit(ExitKind),
    /// Its entry, whose instruction is one of its exits too (a `jmp` or a `ret` first): the
    /// one record is both, in that order (two events at one instruction may be written in
    /// either order).
    EntryExit(ExitKind),
}

/// One record of an entry or exit event, kept until it can be handled in time order.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its time (CLOCK_MONOTONIC, ns).
    pub time: u64,
    /// Process and thread.
    pub pid: u32,
    /// The thread.
    pub tid: u32,
    /// The probe it belongs to; `None` for a hop's: the events at the entry and exits of a
    /// function that only a tail call of a probed function leads into, which returns that
    /// function's calls handed over to it and is itself no probe's.
    pub probe: Option<usize>,
    /// The function it is at, as the engine numbers the functions watched at their exits:
    /// the probes on one function, and its hop, each see its calls.
    pub function: usize,
    /// Its role.
    pub role: Role,
    /// `%sp` as the instruction was about to run.
    pub sp: u64,
    /// `%ax` (at an exit: a `ret`'s return value).
    pub ax: u64,
    /// The thread's name, if brought.
    pub comm: Vec<u8>,
    /// At the entry of an entry probe timed to its return (`--latency`): its values, read
    /// at the entry and given with the return.
    pub fields: Vec<Option<FieldValue>>,
    /// At an exit, with `--stack`: the user stack as the function returns (its caller's
    /// frames), and the kernel stack.
    pub user_stack: Vec<u64>,
    /// See `user_stack`.
    pub kernel_stack: Vec<u64>,
}

/// What the pairing tells the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Paired {
    /// Probe `probe` entered (a hit).
    Entered {
        /// Which probe.
        probe: usize,
    },
    /// Probe `probe`'s function returned; `value` its return value, when known (`None`: it
    /// left through a tail call into a function whose return is not watched).
    Returned {
        /// Which probe.
        probe: usize,
        /// The entry's time.
        entry_time: u64,
        /// The return value.
        value: Option<u64>,
        /// The values read at the entry (an entry probe timed to its return).
        fields: Vec<Option<FieldValue>>,
    },
    /// An activation of `probe` the program abandoned (an exception or `longjmp` unwound
    /// past it).
    Abandoned {
        /// Which probe.
        probe: usize,
    },
}

/// A probe's share of a pending call: the probe (`None`: the function's hop), its entry's
/// time, the values read at its entry.
type Member = (Option<usize>, u64, Vec<Option<FieldValue>>);

/// A pending call of a function: every return probe on the function has its own entry and
/// exit events, and each of them is one member of the one activation of the call (a second
/// entry record on the same word would otherwise take the first for a stale call).
struct Call {
    /// Which function (see [`Held::function`]).
    function: usize,
    members: Vec<Member>,
}

/// A thread's pending calls.
struct Thread {
    pid: u32,
    calls: ActivationStack<Call>,
}

/// The members of stale calls: abandoned, handed over by a tail call or not (the callee it
/// jumped to may have been unwound).
fn members_of(stale: Vec<(Call, bool)>) -> Vec<Member> {
    stale.into_iter().flat_map(|(call, _)| call.members).collect()
}

impl Thread {
    /// Probe `member.0`'s entry into `function` with stack pointer `sp`: a member of the
    /// call another probe of the function entered at this very record's hit, or a call of
    /// its own. Returns the members of the calls it made stale.
    fn enter(
        &mut self,
        sp: u64,
        function: usize,
        member: Member,
        stack_of: &mut impl FnMut(u64) -> u64,
    ) -> Vec<Member> {
        let same_call = (self.calls.innermost_at(sp))
            .filter(|c| c.function == function && c.members.iter().all(|m| m.0 != member.0));
        match same_call {
            Some(call) => {
                call.members.push(member);
                Vec::new()
            }
            None => members_of(self.calls.enter(sp, Call { function, members: vec![member] }, stack_of)),
        }
    }

    /// Probe `probe`'s exit (`None`: the hop's) with stack pointer `sp`: its member of the call at `sp` returns,
    /// with the calls handed over to that one by tail calls (at the first of its probes'
    /// exits). Returns the members of stale calls, and those returning.
    fn leave(
        &mut self,
        sp: u64,
        probe: Option<usize>,
        stack_of: &mut impl FnMut(u64) -> u64,
    ) -> (Vec<Member>, Vec<Member>) {
        let take = |c: &mut Call| Some(c.members.remove(c.members.iter().position(|m| m.0 == probe)?));
        let (share, left) = self.calls.leave_share(sp, stack_of, take, |c| c.members.is_empty());
        let returning = share
            .map(|member| std::iter::once(member).chain(left.returning.into_iter().flat_map(|c| c.members)).collect());
        (members_of(left.stale), returning.unwrap_or_default())
    }
}

/// Every thread's pending calls, and the records not handled yet.
#[derive(Default)]
pub struct Pairing {
    held: Vec<Held>,
    threads: HashMap<u32, Thread>,
}

impl Pairing {
    /// Keep `record` until it can be handled.
    pub fn hold(&mut self, record: Held) {
        self.held.push(record);
    }

    /// Whether records wait.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether process `pid` has records waiting or calls pending.
    pub fn has_process(&self, pid: u32) -> bool {
        self.held.iter().any(|h| h.pid == pid) || self.threads.values().any(|t| t.pid == pid)
    }

    /// Handle, in time order, the records stamped before `read_began - SETTLE_NS` (every one
    /// with `None`, when no more will come). `hands_over(function, target)`: whether a tail
    /// call of `function` to `target` enters a function whose exits are watched (by a probe
    /// or a hop).
    /// `stack_of(pid, addr)` names the stack `addr` lies on in process `pid` (asked only when
    /// an exit is not the innermost pending call's: a coroutine switched stacks, a handler
    /// ran on an alternate stack, a frame was abandoned). `each(record, what)` for
    /// everything paired.
    pub fn handle(
        &mut self,
        read_began: Option<u64>,
        hands_over: &dyn Fn(usize, u64) -> bool,
        stack_of: &mut dyn FnMut(u32, u64) -> u64,
        each: &mut dyn FnMut(&Held, Paired),
    ) {
        self.held.sort_by_key(|h| h.time);
        let ready = match read_began {
            Some(t) => self.held.partition_point(|h| h.time < t.saturating_sub(SETTLE_NS)),
            None => self.held.len(),
        };
        let ready: Vec<Held> = self.held.drain(..ready).collect();
        for mut h in ready {
            let h = &mut h;
            let steps = match h.role {
                Role::EntryExit(kind) => [Some(Role::Entry), Some(Role::Exit(kind))],
                role => [Some(role), None],
            };
            for role in steps.into_iter().flatten() {
                self.step(h, role, hands_over, stack_of, each);
            }
        }
    }

    /// Handle `h` as a record of `role`.
    fn step(
        &mut self,
        h: &mut Held,
        role: Role,
        hands_over: &dyn Fn(usize, u64) -> bool,
        stack_of: &mut dyn FnMut(u32, u64) -> u64,
        each: &mut dyn FnMut(&Held, Paired),
    ) {
        let pid = h.pid;
        let mut stack_of = |addr: u64| stack_of(pid, addr);
        let thread =
            (self.threads.entry(h.tid)).or_insert_with(|| Thread { pid: h.pid, calls: ActivationStack::default() });
        let (stale, returning, value) = match role {
            // (An entry that is an exit too comes here as its entry, then as its exit.)
            Role::Entry | Role::EntryExit(_) => {
                if let Some(probe) = h.probe {
                    each(h, Paired::Entered { probe });
                }
                let member = (h.probe, h.time, std::mem::take(&mut h.fields));
                (thread.enter(h.sp, h.function, member, &mut stack_of), Vec::new(), None)
            }
            // A tail call: the call at `sp` returns with the callee it jumps to (whose
            // entry finds it on the same word).
            Role::Exit(ExitKind::TailJump { target }) if hands_over(h.function, target.0) => {
                (members_of(thread.calls.hand_over(h.sp, &mut stack_of).0), Vec::new(), None)
            }
            Role::Exit(kind) => {
                let (stale, returning) = thread.leave(h.sp, h.probe, &mut stack_of);
                (stale, returning, kind.is_ret().then_some(h.ax))
            }
        };
        for (probe, _, _) in stale {
            if let Some(probe) = probe {
                each(h, Paired::Abandoned { probe });
            }
        }
        for (probe, entry_time, fields) in returning {
            if let Some(probe) = probe {
                each(h, Paired::Returned { probe, entry_time, value, fields });
            }
        }
        if thread.calls.is_empty() {
            self.threads.remove(&h.tid);
        }
    }

    /// The probes of the activations pending in threads that no longer run (`alive(pid,
    /// tid)` false), one per probe of each, forgotten: they will never return (their thread
    /// ended, or jumped away from them last).
    pub fn forget_gone(&mut self, alive: &dyn Fn(u32, u32) -> bool) -> Vec<usize> {
        let gone: Vec<u32> = self.threads.iter().filter(|(tid, t)| !alive(t.pid, **tid)).map(|(t, _)| *t).collect();
        let mut probes = Vec::new();
        for tid in gone {
            if let Some(mut thread) = self.threads.remove(&tid) {
                probes.extend(members_of(thread.calls.drain()).into_iter().filter_map(|(probe, _, _)| probe));
            }
        }
        probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_arch::Addr;

    fn rec(time: u64, tid: u32, probe: usize, role: Role, sp: u64, ax: u64) -> Held {
        Held {
            time,
            pid: 1,
            tid,
            probe: Some(probe),
            function: probe,
            role,
            sp,
            ax,
            comm: Vec::new(),
            fields: Vec::new(),
            user_stack: Vec::new(),
            kernel_stack: Vec::new(),
        }
    }

    fn run(records: Vec<Held>, watched: u64) -> Vec<Paired> {
        let mut p = Pairing::default();
        for r in records {
            p.hold(r);
        }
        let mut out = Vec::new();
        p.handle(None, &|_, target| target == watched, &mut |_, _| 0, &mut |_, what| out.push(what));
        out
    }

    #[test]
    fn records_read_out_of_order_pair_in_time_order() {
        let ret = Role::Exit(ExitKind::Ret);
        let out = run(vec![rec(20, 7, 0, ret, 0x1000, 5), rec(10, 7, 0, Role::Entry, 0x1000, 0)], 0);
        assert_eq!(
            out,
            vec![
                Paired::Entered { probe: 0 },
                Paired::Returned { probe: 0, entry_time: 10, value: Some(5), fields: Vec::new() }
            ]
        );
    }

    #[test]
    fn a_tail_call_returns_both_with_the_callee_value() {
        let jump = Role::Exit(ExitKind::TailJump { target: Addr(0x500) });
        let ret = Role::Exit(ExitKind::Ret);
        let out = run(
            vec![
                rec(1, 7, 0, Role::Entry, 0x1000, 0),
                rec(2, 7, 0, jump, 0x1000, 0),
                rec(3, 7, 1, Role::Entry, 0x1000, 0),
                rec(4, 7, 1, ret, 0x1000, 42),
            ],
            0x500,
        );
        assert_eq!(
            out,
            vec![
                Paired::Entered { probe: 0 },
                Paired::Entered { probe: 1 },
                Paired::Returned { probe: 1, entry_time: 3, value: Some(42), fields: Vec::new() },
                Paired::Returned { probe: 0, entry_time: 1, value: Some(42), fields: Vec::new() },
            ]
        );
        // Into a function not watched: it returns at the jump, its value unknown.
        let out = run(vec![rec(1, 7, 0, Role::Entry, 0x1000, 0), rec(2, 7, 0, jump, 0x1000, 9)], 0);
        assert_eq!(out[1], Paired::Returned { probe: 0, entry_time: 1, value: None, fields: Vec::new() });
    }

    #[test]
    fn a_hop_returns_the_calls_handed_over_to_it_and_is_no_probes() {
        // Probe 0 watches function 0 (at 0x100), which tail-calls function 1 (at 0x200, a hop:
        // records of no probe), which tail-calls function 0 again, twice, until function 0
        // returns 42. Function 1 is also called on its own in between, deeper.
        let jump = |target: u64| Role::Exit(ExitKind::TailJump { target: Addr(target) });
        let ret = Role::Exit(ExitKind::Ret);
        let probe = |time: u64, role: Role, sp: u64, ax: u64| rec(time, 7, 0, role, sp, ax);
        let hop =
            |time: u64, role: Role, sp: u64, ax: u64| Held { probe: None, function: 1, ..probe(time, role, sp, ax) };
        let mut records = Vec::new();
        for t in [0, 10] {
            records.extend([probe(t + 1, Role::Entry, 0x1000, 0), probe(t + 2, jump(0x200), 0x1000, 0)]);
            records.extend([hop(t + 3, Role::Entry, 0x1000, 0), hop(t + 4, Role::Entry, 0x0f00, 0)]);
            records.extend([hop(t + 5, ret, 0x0f00, 5), hop(t + 6, jump(0x100), 0x1000, 0)]);
        }
        records.extend([probe(21, Role::Entry, 0x1000, 0), probe(30, ret, 0x1000, 42)]);
        let mut p = Pairing::default();
        for r in records {
            p.hold(r);
        }
        let mut out = Vec::new();
        let hands_over = |_: usize, target: u64| target == 0x100 || target == 0x200;
        p.handle(None, &hands_over, &mut |_, _| 0, &mut |_, what| out.push(what));
        let returned = |entry_time| Paired::Returned { probe: 0, entry_time, value: Some(42), fields: Vec::new() };
        let mut expected: Vec<Paired> = (0..3).map(|_| Paired::Entered { probe: 0 }).collect();
        expected.extend([returned(21), returned(11), returned(1)]);
        assert_eq!(out, expected, "every call returns at once, with the last one's value, and nothing of the hop's");
        assert!(p.threads.is_empty());
        // A function whose first instruction is its tail call: its entry's record is its exit
        // too, handed over before the hop's entry.
        let out = run(
            vec![
                probe(1, Role::EntryExit(ExitKind::TailJump { target: Addr(0x200) }), 0x1000, 0),
                hop(2, Role::Entry, 0x1000, 0),
                hop(3, ret, 0x1000, 9),
            ],
            0x200,
        );
        assert_eq!(out[1], Paired::Returned { probe: 0, entry_time: 1, value: Some(9), fields: Vec::new() });
    }

    #[test]
    fn a_timed_entry_returns_with_the_values_read_at_its_entry() {
        let ret = Role::Exit(ExitKind::Ret);
        let mut outer = rec(1, 7, 0, Role::Entry, 0x1000, 0);
        outer.fields = vec![Some(FieldValue::Unsigned(1))];
        let mut inner = rec(2, 7, 0, Role::Entry, 0x0f00, 0);
        inner.fields = vec![Some(FieldValue::Unsigned(2))];
        let out = run(vec![outer, inner, rec(3, 7, 0, ret, 0x0f00, 0), rec(4, 7, 0, ret, 0x1000, 0)], 0);
        let returned: Vec<(u64, Vec<Option<FieldValue>>)> = out
            .into_iter()
            .filter_map(|p| match p {
                Paired::Returned { entry_time, fields, .. } => Some((entry_time, fields)),
                _ => None,
            })
            .collect();
        assert_eq!(
            returned,
            [(2, vec![Some(FieldValue::Unsigned(2))]), (1, vec![Some(FieldValue::Unsigned(1))])],
            "innermost first, each with its own entry's values"
        );
    }

    #[test]
    fn two_probes_on_one_function_each_pair_every_call() {
        let ret = Role::Exit(ExitKind::Ret);
        // Probes 0 and 1 on one function (the same hits): a call nested in another, then a
        // call the program abandoned, found stale at the outer call's exit.
        let both = |time: u64, role: Role, sp: u64, ax: u64| {
            let mut second = rec(time, 7, 1, role, sp, ax);
            second.function = 0;
            [rec(time, 7, 0, role, sp, ax), second]
        };
        let mut records = Vec::new();
        records.extend(both(1, Role::Entry, 0x1000, 0));
        records.extend(both(2, Role::Entry, 0x0f00, 0));
        records.extend(both(3, ret, 0x0f00, 5));
        records.extend(both(4, Role::Entry, 0x0f00, 0));
        records.extend(both(5, ret, 0x1000, 6));
        let out = run(records, 0);
        let returned = |probe: usize| {
            (out.iter())
                .filter_map(|p| match p {
                    Paired::Returned { probe: q, entry_time, value, .. } if *q == probe => Some((*entry_time, *value)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        for probe in [0, 1] {
            assert_eq!(returned(probe), [(2, Some(5)), (1, Some(6))], "probe {probe}");
            assert_eq!(out.iter().filter(|p| **p == Paired::Abandoned { probe }).count(), 1, "probe {probe}");
        }
    }

    #[test]
    fn frames_an_exception_unwound_are_abandoned_at_the_next_exit_above() {
        let ret = Role::Exit(ExitKind::Ret);
        let mut records = vec![rec(0, 7, 0, Role::Entry, 0x10000, 0)];
        for k in 1..100u64 {
            records.push(rec(k, 7, 0, Role::Entry, 0x10000 - 64 * k, 0));
        }
        records.push(rec(200, 7, 0, ret, 0x10000, 3));
        let out = run(records, 0);
        let abandoned = out.iter().filter(|p| matches!(p, Paired::Abandoned { .. })).count();
        assert_eq!(abandoned, 99);
        assert_eq!(out.last(), Some(&Paired::Returned { probe: 0, entry_time: 0, value: Some(3), fields: Vec::new() }));
    }

    #[test]
    fn only_the_activations_of_threads_gone_are_forgotten() {
        let mut p = Pairing::default();
        p.hold(rec(1, 7, 0, Role::Entry, 0x1000, 0));
        p.hold(rec(2, 7, 1, Role::Entry, 0x0f00, 0));
        p.hold(rec(3, 8, 0, Role::Entry, 0x2000, 0));
        p.handle(None, &|_, _| false, &mut |_, _| 0, &mut |_, _| {});
        let mut gone = p.forget_gone(&|_, tid| tid == 8);
        gone.sort();
        assert_eq!(gone, [0, 1]);
        assert_eq!(p.forget_gone(&|_, _| false), [0], "thread 8's one, kept until its thread is gone");
        assert!(p.forget_gone(&|_, _| false).is_empty());
    }
}
