//! The kernel engine's return probes watched at their function's exits
//! ([`crate::exit_sites`]): an entry event and one event per exit, paired per thread by the
//! stack pointer ([`crate::exit_pairing`], on `dprobe_core::returns::exits`). The return
//! value is `%ax` at a `ret`: a filter on it is applied there by the kernel, and the kernel's
//! BPF program counts the returns at the exits.
//!
//! A function that leaves by a tail call returns where its callee does, with the callee's
//! value (as the kernel's return probe sees it). When the value or the time of the return is
//! asked for (`$retval`, `--latency`), a callee no probe watches is watched at its exits too,
//! as a *hop*: its own calls are paired but given to no probe, and the calls handed over to it
//! return with it. Recursion through the tail call then has no depth limit, and exceptions
//! meet no trampoline.

use dprobe_arch::ExitKind;
use dprobe_core::{EventSink, ProbeEvent, ProbeRequest, Side};
use dprobe_spec::{ArgType, Fetch, NamedArg, ProbeKind, ProbeSpec, Register};

use super::Counting;
use super::{monotonic_ns, push_field, InKernel, KernelEngine, Probe};
use crate::error::KernelError;
use crate::exit_pairing::{Held, Paired, Role};
use crate::exit_sites::{self, ExitPlan};
use crate::format::FieldValue;
use crate::session::Hit;

/// Which mapping holds an address in each process whose calls are watched at their exits:
/// a stack is named by its mapping's end (which stays put as the stack grows down), 0 when
/// not known. The maps are read as a process's first record comes, and again when an address
/// is in none of them: records are paired after the fact, and the process may be gone by then.
#[derive(Default)]
pub(super) struct StackMaps {
    processes: std::collections::HashMap<u32, Vec<(u64, u64)>>,
}

impl StackMaps {
    /// A record of process `pid` came: its maps, if not known yet.
    pub(super) fn seen(&mut self, pid: u32) {
        self.processes.entry(pid).or_insert_with(|| read_ranges(pid).unwrap_or_default());
    }

    fn stack_of(&mut self, pid: u32, addr: u64) -> u64 {
        let find = |ranges: &[(u64, u64)]| {
            let i = ranges.partition_point(|&(_, end)| end <= addr);
            ranges.get(i).filter(|&&(start, _)| start <= addr).map(|&(_, end)| end)
        };
        let ranges = self.processes.entry(pid).or_default();
        if let Some(end) = find(ranges) {
            return end;
        }
        if let Some(fresh) = read_ranges(pid) {
            *ranges = fresh;
        }
        find(ranges).unwrap_or(0)
    }

    /// Forget the processes that are gone and that `pending(pid)` says have nothing left to
    /// pair.
    pub(super) fn forget_gone(&mut self, pending: &dyn Fn(u32) -> bool) {
        self.processes.retain(|&pid, _| pending(pid) || std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

/// The address ranges of process `pid`'s mappings, sorted.
fn read_ranges(pid: u32) -> Option<Vec<(u64, u64)>> {
    let maps = dprobe_sym::read_maps_of(pid).ok()?;
    let mut ranges: Vec<(u64, u64)> = maps.iter().map(|m| (m.start.0, m.end.0)).collect();
    ranges.sort_unstable();
    Some(ranges)
}

/// The functions watched at their exits (by a probe or as a hop), numbered in the order they
/// were first watched, and the hops.
#[derive(Default)]
pub(super) struct Functions {
    /// The file and link-time start of each, and whether the records of its exits reach
    /// dprobe (not when its only probes are counted in the kernel).
    known: Vec<(String, u64, bool)>,
    hops: Vec<Hop>,
}

/// A function watched at its exits only to return the calls tail calls hand over to it.
struct Hop {
    /// Its number in [`Functions`].
    function: usize,
    /// Its entry event and exit events, and how it leaves at each.
    entry: usize,
    exit_events: Vec<(usize, ExitKind)>,
    /// See [`Watched::entry_exit`].
    entry_exit: Option<(usize, ExitKind)>,
}

impl Functions {
    /// The number of the function at link-time `function` of `path`, if watched.
    fn find(&self, path: &str, function: u64) -> Option<usize> {
        self.known.iter().position(|(p, f, _)| p == path && *f == function)
    }

    /// Whether the returns of the function at link-time `function` of `path` reach dprobe
    /// from its exits.
    fn read(&self, path: &str, function: u64) -> bool {
        self.find(path, function).is_some_and(|i| self.known[i].2)
    }

    /// The number of the function at link-time `function` of `path`, watched from now on;
    /// `read`: the records of its exits reach dprobe.
    fn number(&mut self, path: &str, function: u64, read: bool) -> usize {
        let i = self.find(path, function).unwrap_or_else(|| {
            self.known.push((path.to_owned(), function, false));
            self.known.len() - 1
        });
        self.known[i].2 |= read;
        i
    }

    /// Whether a tail call of function number `from` into link-time `target` (of the same
    /// file) enters a function whose returns reach dprobe from its exits.
    fn hands_over(&self, from: usize, target: u64) -> bool {
        self.known.get(from).is_some_and(|(path, _, _)| self.read(path, target))
    }

    /// The hop `event` belongs to (its function's number), and its role there (`None`: the
    /// exit at its entry, heard from its entry).
    fn hop_event(&self, event: usize) -> Option<(usize, Option<Role>)> {
        self.hops.iter().find_map(|h| {
            let role = role_of(event, h.entry, &h.exit_events, h.entry_exit)?;
            Some((h.function, role))
        })
    }
}

/// The role of `event` among a function's `entry` and `exit_events` (`None`: the exit event
/// at its entry instruction, `entry_exit`, whose record the entry's stands for).
fn role_of(
    event: usize,
    entry: usize,
    exit_events: &[(usize, ExitKind)],
    entry_exit: Option<(usize, ExitKind)>,
) -> Option<Option<Role>> {
    if event == entry {
        return Some(Some(entry_exit.map_or(Role::Entry, |(_, kind)| Role::EntryExit(kind))));
    }
    if entry_exit.is_some_and(|(e, _)| e == event) {
        return Some(None);
    }
    exit_events.iter().find(|(e, _)| *e == event).map(|&(_, kind)| Some(Role::Exit(kind)))
}

/// The exit event at the entry instruction of the function of `plan` (given its
/// `exit_events`, in the order of its exits), if its first instruction is an exit.
pub(super) fn entry_exit(plan: &ExitPlan, exit_events: &[(usize, ExitKind)]) -> Option<(usize, ExitKind)> {
    plan.exits.iter().position(|&(at, _)| at == plan.function).map(|i| exit_events[i])
}

/// A return probe watched at its function's exits instead of through the return address.
pub(super) struct Watched {
    /// Its function's number in [`Functions`].
    pub(super) number: usize,
    /// Its exit events, and how the function leaves at each.
    pub(super) exit_events: Vec<(usize, ExitKind)>,
    /// The one among them at its entry instruction (a function whose first instruction is a
    /// `jmp` or `ret`), whose records are not paired: the entry's record stands for both, in
    /// their order (two events at one instruction may be written in either).
    pub(super) entry_exit: Option<(usize, ExitKind)>,
    /// Activations the program abandoned (exceptions, `longjmp`, its thread's end).
    pub(super) abandoned: u64,
}

/// The hidden fields of the entry and exit events of a return probe watched at its exits.
const SP_FIELD: &str = "dprobe_sp";
const AX_FIELD: &str = "dprobe_ax";

impl KernelEngine {
    /// The record of an entry or exit event of a return probe watched at its exits, or of a
    /// hop (`Some(None)`: one of theirs with nothing to pair).
    pub(super) fn watched_record(
        probes: &[Probe],
        functions: &Functions,
        hit: &Hit<'_>,
        comm: &[u8],
    ) -> Option<Option<Held>> {
        let of_probe = probes.iter().enumerate().find_map(|(i, p)| {
            let w = p.exits.as_ref()?;
            let role = role_of(hit.event, p.event, &w.exit_events, w.entry_exit)?;
            Some((i, w.number, role))
        });
        let (probe, function, role) = match of_probe {
            Some((probe, function, role)) => (Some(probe), function, role),
            None => functions.hop_event(hit.event).map(|(function, role)| (None, function, role))?,
        };
        let Some(role) = role else { return Some(None) };
        let word = |name: &str| match hit.field(name) {
            Some(FieldValue::Unsigned(x)) => x,
            Some(FieldValue::Signed(x)) => x as u64,
            _ => 0,
        };
        // An entry probe timed to its return shows the values read at its entry.
        let fields = match (role, probe.map(|i| &probes[i])) {
            (Role::Entry | Role::EntryExit(_), Some(p)) if !p.is_return => {
                p.fields.iter().map(|(name, _)| hit.field(name)).collect()
            }
            _ => Vec::new(),
        };
        Some(Some(Held {
            time: hit.time,
            pid: hit.pid,
            tid: hit.tid,
            probe,
            function,
            role,
            sp: word(SP_FIELD),
            ax: word(AX_FIELD),
            comm: comm.to_vec(),
            fields,
            user_stack: Vec::new(),
            kernel_stack: Vec::new(),
        }))
    }

    /// Read what the rings hold, then pair the held entry and exit records stamped before the
    /// read began.
    pub(super) fn poll(&mut self, timeout_ms: i32, sink: EventSink<'_>) -> Result<(), KernelError> {
        let read_began = monotonic_ns();
        let (probes, options, names, stacks) = (&mut self.probes, &self.options, &mut self.names, &mut self.stacks);
        let pairs = (&mut self.pairing, &mut self.maps, &self.functions);
        self.session.poll(timeout_ms, &mut |hit| {
            Self::deliver(probes, options, names, stacks, (&mut *pairs.0, &mut *pairs.1, pairs.2), &hit, sink)
        })?;
        self.pair(Some(read_began), sink);
        Ok(())
    }

    /// Pair the held entry and exit records stamped before `read_began` (all with `None`),
    /// and hand the returns to `sink`.
    pub(super) fn pair(&mut self, read_began: Option<u64>, sink: EventSink<'_>) {
        if self.pairing.is_empty() {
            return;
        }
        let probes = &mut self.probes;
        let functions = &self.functions;
        let hands_over = |function: usize, target: u64| functions.hands_over(function, target);
        let maps = &mut self.maps;
        let mut stack_of = |pid: u32, addr: u64| maps.stack_of(pid, addr);
        self.pairing.handle(read_began, &hands_over, &mut stack_of, &mut |h, what| match what {
            Paired::Entered { probe } => probes[probe].delivered += 1,
            Paired::Abandoned { probe } => {
                if let Some(w) = probes[probe].exits.as_mut() {
                    w.abandoned += 1;
                }
            }
            Paired::Returned { probe: index, entry_time, value, fields } => {
                let p = &mut probes[index];
                p.returns_delivered += 1;
                p.values.clear();
                if p.is_return {
                    for (_, ty) in &p.fields {
                        match value {
                            Some(v) => p.values.push_int(v, *ty),
                            None => p.values.push_fault(0),
                        }
                    }
                } else {
                    for ((_, ty), field) in p.fields.iter().zip(fields) {
                        push_field(&mut p.values, *ty, field);
                    }
                }
                sink(&ProbeEvent {
                    probe: index,
                    side: Side::Return,
                    pid: h.pid,
                    tid: h.tid,
                    maps_of: h.pid,
                    time_ns: h.time,
                    entry_time_ns: Some(entry_time),
                    comm: &h.comm,
                    values: &p.values,
                    user_stack: &h.user_stack,
                    kernel_stack: &h.kernel_stack,
                });
            }
        });
        let pairing = &self.pairing;
        self.maps.forget_gone(&|pid| pairing.has_process(pid));
    }

    /// As tracing ends: the calls pending in threads that have ended will never return
    /// (`pthread_exit`, the process's exit, a `longjmp` that left them last): abandoned.
    pub(super) fn abandon_ended_threads(&mut self) {
        let alive = |pid: u32, tid: u32| std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
        for probe in self.pairing.forget_gone(&alive) {
            if let Some(w) = self.probes[probe].exits.as_mut() {
                w.abandoned += 1;
            }
        }
    }

    /// How the returns of `probe` (a return probe, or an entry probe timed to its return:
    /// `timed`) can be watched at its function's exits, with the hops its tail calls need
    /// (when its return value or time is asked for); why not.
    pub(super) fn exit_plan(
        &self,
        probe: &ProbeRequest<'_>,
        spec: &ProbeSpec,
        timed: bool,
    ) -> Result<(ExitPlan, Vec<ExitPlan>), String> {
        if probe.semaphore.is_some() {
            return Err("it has a semaphore".into());
        }
        // A timed entry's values are read at its entry, as without a return.
        if let Some(a) = probe.plan.args().iter().find(|a| a.fetch != Fetch::RetVal).filter(|_| !timed) {
            return Err(format!("`{}` is read at the return address (only $retval is read at the exits)", a.name));
        }
        let plan = exit_sites::plan(&ProbeSpec { kind: ProbeKind::Return, ..spec.clone() })?;
        // At a tail call the function returns when its callee does, with the callee's value:
        // read at the exits of the callee, watched for it if no probe does.
        let asked = if timed {
            "--latency"
        } else if !probe.plan.args().is_empty() {
            "$retval"
        } else {
            return Ok((plan, Vec::new()));
        };
        let watched = |target: u64| self.functions.read(&plan.path, target);
        let hops = exit_sites::tail_call_hops(&plan, &watched).map_err(|why| format!("{asked}: {why}"))?;
        Ok((plan, hops))
    }

    /// Watch the function of `plan` at its exits as a hop, unless the records of its exits
    /// reach dprobe already.
    pub(super) fn add_hop(&mut self, plan: &ExitPlan) -> Result<(), KernelError> {
        if self.functions.read(&plan.path, plan.function) {
            return Ok(());
        }
        let comm = if self.options.with_comm { vec![Self::comm_arg()] } else { Vec::new() };
        let (entry, exit_events) = self.add_watched(plan, &comm, &[])?;
        // Its records are read: its events may share kernel events.
        for e in [entry].into_iter().chain(exit_events.iter().map(|(e, _)| *e)) {
            self.session.share(e);
        }
        let function = self.functions.number(&plan.path, plan.function, true);
        let entry_exit = entry_exit(plan, &exit_events);
        self.functions.hops.push(Hop { function, entry, exit_events, entry_exit });
        Ok(())
    }

    /// The number of the function of `plan`, watched at its exits by a probe from now on;
    /// `read`: its records reach dprobe (it is not counted in the kernel).
    pub(super) fn number_watched(&mut self, plan: &ExitPlan, read: bool) -> usize {
        self.functions.number(&plan.path, plan.function, read)
    }

    /// Define `plan`'s entry and exit events (in the next batch); the entry's index and the
    /// exits'. The entry fetches `at_entry` (a timed entry probe's values, or the thread's
    /// name). Each `ret` also fetches `values` (the probe's `$retval`s, named as its fields)
    /// from `%ax`, for the kernel's filter.
    pub(super) fn add_watched(
        &mut self,
        plan: &ExitPlan,
        at_entry: &[NamedArg],
        values: &[NamedArg],
    ) -> Result<(usize, Vec<(usize, ExitKind)>), KernelError> {
        let hidden = |kind: Option<ExitKind>| {
            let mut args = Vec::new();
            match kind {
                None => args.extend_from_slice(at_entry),
                Some(_) if self.options.with_comm => args.push(Self::comm_arg()),
                Some(_) => {}
            }
            args.push(NamedArg::typed(SP_FIELD, Fetch::StackPointer, ArgType::U(64)));
            // An entry that is an exit too (a `ret` first) returns `%ax` there.
            if kind.is_some() || plan.exits.iter().any(|&(at, _)| at == plan.function) {
                args.push(NamedArg::typed(AX_FIELD, Fetch::Reg(Register("ax")), ArgType::U(64)));
            }
            if kind.is_some_and(ExitKind::is_ret) {
                args.extend(values.iter().map(|v| NamedArg { fetch: Fetch::Reg(Register("ax")), ..v.clone() }));
            }
            args
        };
        let event_at = |addr: u64, kind: Option<ExitKind>| {
            // Never a uprobe but at an instruction start the function was decoded with.
            assert!(exit_sites::is_planned_site(plan, addr), "{addr:#x} is no entry or exit of the function");
            ProbeSpec { point: plan.point(addr), kind: ProbeKind::Entry, args: hidden(kind) }
        };
        let entry = self.session.add_later(&event_at(plan.function, None), None)?;
        let mut exits = Vec::with_capacity(plan.exits.len());
        for &(addr, kind) in &plan.exits {
            exits.push((self.session.add_later(&event_at(addr, Some(kind)), None)?, kind));
        }
        Ok((entry, exits))
    }

    /// What the BPF programs that count the returns of `probe` (watched at its exits as `w`)
    /// at its exits, and its entries at `entry`, are to count; why not.
    pub(super) fn watched_tallies(
        &self,
        w: &Watched,
        ask: &InKernel,
        probe: &ProbeRequest<'_>,
        entry: usize,
    ) -> Result<(Counting, Counting), String> {
        let reads_values = ask.hist.is_some() || ask.by_value.is_some() || ask.filter.is_some();
        if reads_values && w.exit_events.iter().any(|(_, kind)| !kind.is_ret()) {
            return Err("its return value at a tail call is the callee's, which the kernel reads at no exit".into());
        }
        // Every entry, whatever its return will be.
        let entries = InKernel { hist: None, by_value: None, filter: None, ..ask.clone() };
        Ok((self.tally(ask, probe, entry)?, self.tally(&entries, probe, entry)?))
    }

    /// The events the BPF program of `p` counts at: its exits, or its one event.
    pub(super) fn tally_events(p: &Probe) -> Vec<usize> {
        match &p.exits {
            Some(w) => w.exit_events.iter().map(|(e, _)| *e).collect(),
            None => vec![p.event],
        }
    }

    /// The events a filter on `p`'s values applies to: a return probe's `ret`s (a tail
    /// call's record has no value and is needed for the pairing), or its one event (a timed
    /// entry's values are its entry event's: an exit with no entry pairs with nothing).
    pub(super) fn filtered_events(p: &Probe) -> Vec<usize> {
        match &p.exits {
            Some(w) if p.is_return => w.exit_events.iter().filter(|(_, kind)| kind.is_ret()).map(|(e, _)| *e).collect(),
            _ => vec![p.event],
        }
    }
}
