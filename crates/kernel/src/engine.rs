//! The kernel engine behind the [`Engine`] seam: each probe becomes a dynamic event (or names
//! a tracepoint) whose fields are the plan's fetches, computed by the kernel; records read
//! from the perf buffers become [`ProbeEvent`]s. A timed probe gets a second event at its
//! return, which carries no values: the tracer pairs it with its entry.

use std::collections::HashMap;
use std::process::{Child, Command};

use dprobe_core::fetch::Values;
use dprobe_core::{
    Ending, Engine, EventSink, Exit, KeyedTally, LiveTallies, Placed, ProbeEvent, ProbeRequest, Side, StackRequest,
    Stats, ThreadNames,
};
use dprobe_spec::{ArgType, Fetch, Filter, NamedArg, ProbeKind, ProbePoint};
use dprobe_stack::{Unwinder, UserRegs};

use crate::bpf::filter::Operand;
use crate::bpf::{value_source, Globals, KeyedBy, Loader, Origin, Tally, TallyConfig, TallyOn, TallyRows, ValueSource};
use crate::error::KernelError;
use crate::exit_pairing::{Pairing, Role};
use crate::format::{Field, FieldKind, FieldValue};
use crate::session::{Hit, Session};

mod watched;
use watched::{entry_exit, Functions, StackMaps, Watched};

/// The hidden argument that brings the thread's name with each dynamic event.
const COMM_FIELD: &str = "dprobe_comm";

/// What the kernel engine is asked to do besides placing probes.
#[derive(Debug, Clone, Default)]
pub struct KernelOptions {
    /// Only this process's events.
    pub pid: Option<i32>,
    /// Only threads with this name.
    pub comm: Option<String>,
    /// Bring each event's thread name (it costs the kernel a string copy per event): when
    /// events are shown, or filtered by name.
    pub with_comm: bool,
    /// A command to start once tracing runs, traced as long as it runs.
    pub command: Vec<String>,
    /// Bytes of each CPU's perf buffer (`None`: [`crate::DEFAULT_BUFFER_BYTES`]); checked
    /// with [`crate::check_buffer_size`].
    pub buffer_size: Option<usize>,
    /// Count the hits by key in the kernel (BPF) instead of delivering events, where the
    /// probe allows it (see [`InKernel`]).
    pub in_kernel: Option<InKernel>,
    /// Another process of dprobe's own (single-threaded), whose calls are left out of
    /// user-space probes as this process's own are: the one the user started, which waits
    /// for this one and passes signals on.
    pub front: Option<u32>,
}

/// What the kernel counts by itself for each probe: hits by key, and a histogram's value.
/// Their events never reach the sink; [`Engine::tallies`] gives the figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InKernel {
    /// Keyed by the hit's process, thread or thread name.
    pub by: KeyedBy,
    /// The value (a fetched argument's name, or a tracepoint's field) to keep for a histogram.
    pub hist: Option<String>,
    /// A fetched argument (or a tracepoint's field) the hits are keyed by too (`--by NAME`).
    pub by_value: Option<String>,
    /// Only the hits that pass this filter (`--filter`, tested in the kernel).
    pub filter: Option<String>,
    /// Keys the kernel's map holds per probe (`None`: [`crate::bpf::MAX_KEYS`]).
    pub max_keys: Option<u32>,
}

/// The hidden arguments of the entry event that tells, for user stacks, where a return probe
/// put its trampoline: the return-address slot and the real return address.
const SLOT_FIELD: &str = "dprobe_slot";
const RET_FIELD: &str = "dprobe_ret";

/// What a probe's program is to count, and where it is attached.
struct Counting {
    config: TallyConfig,
    on: TallyOn,
}

/// What one placed probe reads from the kernel.
struct Probe {
    event: usize,
    return_event: Option<usize>,
    /// With user stacks and a return side: the hidden event at the function's entry that
    /// gives the slot the kernel hijacks and the real return address.
    call_event: Option<usize>,
    is_return: bool,
    /// Field names and types, in the order of the probe's values.
    fields: Vec<(String, ArgType)>,
    values: Values,
    filtered_in_kernel: bool,
    /// Records delivered (past `-p` and `--comm`): of the event, of its return event.
    delivered: u64,
    returns_delivered: u64,
    /// Its hits counted in the kernel instead (loaded and attached when tracing starts).
    tally: Option<Tally>,
    /// What its program is to count, when its hits are to be counted in the kernel (the
    /// programs are loaded together when tracing starts); for a return probe watched at its
    /// exits, also its entries'.
    counting: Option<(Counting, Option<Counting>)>,
    /// A return probe watched at its exits and counted in the kernel: `tally` counts its
    /// returns at the exits, this its entries.
    entry_tally: Option<Tally>,
    /// Why its program could not be loaded or attached (its events are read instead).
    fallback: Option<String>,
    /// A return probe watched at its function's exits: `event` is the entry's.
    exits: Option<Watched>,
}

/// System-wide tracing through the kernel's uprobes, kprobes and tracepoints.
pub struct KernelEngine {
    // Dropped first: the BPF programs let go of the events the session then removes.
    probes: Vec<Probe>,
    session: Session,
    options: KernelOptions,
    child: Option<Child>,
    names: ThreadNames,
    stacks: Stacks,
    pairing: Pairing,
    /// The functions watched at their exits, and the hops.
    functions: Functions,
    /// The maps of the processes whose calls are paired, to tell their stacks apart.
    maps: StackMaps,
    /// The kernel's counts of each event as tracing ended (read once: the summary asks for
    /// each probe's figures, and the kernel's profile file has a line per probe).
    counts_at_end: Option<Vec<Option<Stats>>>,
    /// What reads the maps of the probes counted in the kernel (set when tracing starts),
    /// for [`Engine::live_tallies`].
    readers: std::sync::Arc<std::sync::OnceLock<Vec<(usize, TallyRows)>>>,
}

/// The stacks events carry, if asked for: what unwinds the user stacks copied with each
/// record, each thread's pending returns, and the last record's stacks.
#[derive(Default)]
struct Stacks {
    want: Option<StackRequest>,
    unwinder: Unwinder,
    /// Per thread: `(slot, real return address)` of the calls whose return the kernel's
    /// return probes watch, whose slots hold the kernel's trampoline instead.
    pending: HashMap<u32, Vec<(u64, u64)>>,
    user: Vec<u64>,
    kernel: Vec<u64>,
}

impl Stacks {
    /// A call whose return address a return probe replaced: `slot` held `ret`.
    fn called(&mut self, tid: u32, slot: u64, ret: u64) {
        self.pending.entry(tid).or_default().push((slot, ret));
    }

    /// The stacks of `hit` into `self.user` and `self.kernel`.
    fn take(&mut self, hit: &Hit<'_>) {
        self.take_from(hit, false);
    }

    /// The stacks of `hit`, an event at a `ret` or tail call of a function watched at its
    /// exits, as they are once it returns (its caller's), as the kernel's return probe gives
    /// them: the stack pointer points at the return address there, and the frame pointer is
    /// the caller's again.
    fn take_at_exit(&mut self, hit: &Hit<'_>) {
        self.take_from(hit, true);
    }

    fn take_from(&mut self, hit: &Hit<'_>, returned: bool) {
        self.user.clear();
        self.kernel.clear();
        let Some(want) = self.want else { return };
        if want.kernel {
            hit.stacks.kernel_frames(&mut self.kernel);
            self.kernel.truncate(want.depth);
        }
        if let (true, Some([bp, sp, ip])) = (want.user, hit.stacks.user_regs) {
            // A slot below the stack pointer belongs to a call that returned (or was
            // abandoned, by longjmp or an exception).
            let pending = self.pending.entry(hit.tid).or_default();
            pending.retain(|&(slot, _)| slot >= sp);
            let pending = &*pending;
            let mut memory = |addr: u64| {
                let word = hit.stacks.user_word(addr);
                match pending.iter().rev().find(|(slot, _)| *slot == addr) {
                    Some(&(_, ret)) => Some(ret),
                    None => word,
                }
            };
            let regs = match returned {
                false => Some(UserRegs { ip, sp, bp }),
                true => memory(sp).map(|ip| UserRegs { ip, sp: sp + 8, bp }),
            };
            if let Some(regs) = regs {
                self.unwinder.unwind(hit.pid, regs, &mut memory, want.depth, &mut self.user);
            }
            if self.pending.get(&hit.tid).is_some_and(Vec::is_empty) {
                self.pending.remove(&hit.tid);
            }
        }
    }
}

impl KernelEngine {
    /// A session (tracefs found, leftovers of dead sessions removed), nothing placed yet.
    pub fn new(options: KernelOptions) -> Result<KernelEngine, KernelError> {
        if let Some(bytes) = options.buffer_size {
            crate::check_buffer_size(bytes).map_err(|e| KernelError::os("--buffer-size", std::io::Error::other(e)))?;
        }
        let mut session = Session::new()?;
        session.set_buffer_size(options.buffer_size.unwrap_or(crate::DEFAULT_BUFFER_BYTES));
        if let Some(front) = options.front {
            session.leave_out(front);
        }
        Ok(KernelEngine {
            session,
            options,
            probes: Vec::new(),
            child: None,
            names: ThreadNames::default(),
            stacks: Stacks::default(),
            pairing: Pairing::default(),
            functions: Functions::default(),
            maps: StackMaps::default(),
            counts_at_end: None,
            readers: Default::default(),
        })
    }

    fn comm_arg() -> NamedArg {
        NamedArg::typed(COMM_FIELD, Fetch::Comm, ArgType::String)
    }

    /// Hand `hit` to `sink` as the events of the probes it belongs to.
    fn deliver(
        probes: &mut [Probe],
        options: &KernelOptions,
        names: &mut ThreadNames,
        stacks: &mut Stacks,
        (pairing, maps, functions): (&mut Pairing, &mut StackMaps, &Functions),
        hit: &Hit<'_>,
        sink: EventSink<'_>,
    ) {
        if options.pid.is_some_and(|p| p as u32 != hit.pid) {
            return;
        }
        let field = hit.field(COMM_FIELD);
        let comm: &[u8] = match &field {
            Some(FieldValue::Str(c)) => c,
            _ if options.with_comm => names.get(hit.pid, hit.tid),
            _ => b"",
        };
        if options.comm.as_deref().is_some_and(|c| c.as_bytes() != comm) {
            return;
        }
        if let Some(record) = Self::watched_record(probes, functions, hit, comm) {
            let Some(mut record) = record else { return };
            // A return's stacks are read at the exit it leaves by (the stack copy is the
            // record's); the entry's are not shown.
            if matches!(record.role, Role::Exit(_) | Role::EntryExit(_)) && stacks.want.is_some() {
                stacks.take_at_exit(hit);
                record.user_stack = stacks.user.clone();
                record.kernel_stack = stacks.kernel.clone();
            }
            maps.seen(hit.pid);
            pairing.hold(record);
            return;
        }
        if probes.iter().any(|p| p.call_event == Some(hit.event)) {
            let word = |name: &str| match hit.field(name) {
                Some(FieldValue::Unsigned(x)) => Some(x),
                Some(FieldValue::Signed(x)) => Some(x as u64),
                _ => None,
            };
            if let (Some(slot), Some(ret)) = (word(SLOT_FIELD), word(RET_FIELD)) {
                stacks.called(hit.tid, slot, ret);
            }
            return;
        }
        stacks.take(hit);
        for (index, p) in probes.iter_mut().enumerate() {
            let side = if p.return_event == Some(hit.event) {
                p.returns_delivered += 1;
                p.values.clear();
                for _ in &p.fields {
                    p.values.push_fault(0);
                }
                Side::Return
            } else if p.event == hit.event {
                p.delivered += 1;
                p.values.clear();
                for (name, ty) in &p.fields {
                    push_field(&mut p.values, *ty, hit.field(name));
                }
                if p.is_return {
                    Side::Return
                } else {
                    Side::Entry
                }
            } else {
                continue;
            };
            sink(&ProbeEvent {
                probe: index,
                side,
                pid: hit.pid,
                tid: hit.tid,
                maps_of: hit.pid,
                time_ns: hit.time,
                entry_time_ns: None,
                comm,
                values: &p.values,
                user_stack: &stacks.user,
                kernel_stack: &stacks.kernel,
            });
        }
    }

    /// `p`'s hits that reached dprobe past `-p` and `--comm`: its records, or what its BPF
    /// program counted (and dropped, its map full, or found not to pass the filter). For a
    /// return probe watched at its exits, its entries.
    fn delivered(p: &Probe) -> u64 {
        match (&p.entry_tally, &p.tally) {
            (Some(t), _) | (None, Some(t)) => counted(t),
            (None, None) => p.delivered,
        }
    }

    /// Why the kernel's count of `p` (`kernel_hits`) is larger than its HITS under `-p` or
    /// `--comm`.
    fn restricted_remark(&self, p: &Probe, kernel_hits: u64) -> String {
        let whose = match (&self.options.pid, &self.options.comm) {
            (Some(pid), _) => format!("process {pid}"),
            (None, Some(c)) => format!("threads named {c}"),
            _ => unreachable!("restricted"),
        };
        let what = match (p.is_return, &p.exits) {
            (true, None) => "HITS and RETURNS count returns",
            (true, Some(_)) => "HITS counts entries, RETURNS returns,",
            (false, _) => "HITS counts",
        };
        let which = if p.is_return { "entries" } else { "hits" };
        format!("{what} of {whose} received; the kernel counted {kernel_hits} {which} in every process")
    }

    /// Close the BPF programs and their perf events: the kernel removes an event only once
    /// nothing uses it.
    fn detach_programs(&mut self) {
        // Together: the kernel lets go of a link's places after a grace period, which the
        // links closed at once share (one after the other, each would wait its own).
        let tallies: Vec<Tally> =
            self.probes.iter_mut().flat_map(|p| [p.tally.take(), p.entry_tally.take()]).flatten().collect();
        std::thread::scope(|s| {
            for t in tallies {
                // Without a thread (none to be had), here.
                let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(t));
            }
        });
    }

    /// Load the programs of the probes counted in the kernel, with one loader. A program
    /// the kernel refuses leaves its probe to the perf buffers, the reason said.
    fn load_programs(&mut self) {
        let globals: Vec<Vec<Result<Globals, String>>> = (self.probes.iter())
            .map(|p| match &p.counting {
                Some((c, e)) => [Some(c), e.as_ref()].into_iter().flatten().map(|c| Globals::of(&c.config)).collect(),
                None => Vec::new(),
            })
            .collect();
        let mut loader = Loader::default();
        for (p, globals) in self.probes.iter_mut().zip(&globals) {
            let Some((counting, entries)) = &p.counting else { continue };
            let mut load = |k: usize, c: &Counting| match &globals[k] {
                Ok(g) => loader.load(g, &c.config, c.on),
                Err(why) => Err(why.clone()),
            };
            let loaded = load(0, counting).and_then(|t| Ok((t, entries.as_ref().map(|e| load(1, e)).transpose()?)));
            match loaded {
                Ok((t, e)) => {
                    p.tally = Some(t);
                    p.entry_tally = e;
                }
                Err(why) => p.fallback = Some(why),
            }
        }
    }

    /// The kernel's counts of event `event`: as tracing ended, once it has (the profile file
    /// read once for all), else now.
    fn event_counts(&self, event: usize) -> Option<Stats> {
        match &self.counts_at_end {
            Some(all) => all.get(event).cloned().flatten(),
            None => self.session.kernel_counts(event),
        }
    }

    /// The kernel's counts of `p`'s event (its entries, for a return probe watched at its
    /// exits): from its profile file, or where its BPF program is attached through a link
    /// (the event then counts nothing), what the program saw.
    fn kernel_counts(&self, p: &Probe) -> Stats {
        let counts = self.event_counts(p.event).unwrap_or_default();
        match p.entry_tally.as_ref().or(p.tally.as_ref()).filter(|t| t.linked()) {
            Some(t) => Stats { hits: t.seen(), ..counts },
            None => counts,
        }
    }

    /// What the BPF program that counts `probe`'s hits (its event `event`) in the kernel is
    /// to count; why not, when the program cannot do what is asked.
    fn tally(&self, ask: &InKernel, probe: &ProbeRequest<'_>, event: usize) -> Result<Counting, String> {
        let number = |name: &str| match self.operand(probe, event, name)? {
            Some(Operand::Number(v)) => Ok(v),
            Some(Operand::Comm) => Err(format!("`{name}` is the thread's name, no number")),
            None => Err(format!("`{name}` is not fetched")),
        };
        let value = ask.hist.as_deref().map(number).transpose()?;
        let by_value = ask.by_value.as_deref().map(number).transpose()?;
        let filter = match &ask.filter {
            None => Vec::new(),
            Some(text) => {
                let fields: Vec<&str> = match probe.spec.point {
                    ProbePoint::Tracepoint { .. } => {
                        self.session.events()[event].format.own_fields().map(|f| f.name.as_str()).collect()
                    }
                    _ => probe.plan.args().iter().map(|a| a.name.as_str()).collect(),
                };
                let parsed = dprobe_spec::parse_filter(text, &crate::bpf::filter::names(text, &fields))
                    .map_err(|e| format!("--filter: {e}"))?;
                let mut operand = |name: &str| self.operand(probe, event, name);
                crate::bpf::filter::compile(&parsed, &mut operand).map_err(|e| format!("--filter: {e}"))?
            }
        };
        let config = TallyConfig {
            by: ask.by,
            only_pid: self.options.pid.map(|p| p as u32),
            only_comm: self.options.comm.clone(),
            own_pid: std::process::id(),
            front_pid: self.options.front.unwrap_or(0),
            value,
            by_value,
            filter,
            max_keys: ask.max_keys.unwrap_or(crate::bpf::MAX_KEYS),
        };
        let on = match probe.spec.point {
            ProbePoint::Tracepoint { .. } => TallyOn::Tracepoint,
            ProbePoint::User { .. } => TallyOn::UserProbe,
            _ => TallyOn::KernelProbe,
        };
        // What the loader would refuse, refused now.
        Globals::of(&config)?;
        Ok(Counting { config, on })
    }

    /// How the BPF program reads the probe's value `name` (a fetched argument, or a
    /// tracepoint's field); `None` when the probe has none of that name, the reason when the
    /// program cannot read it.
    fn operand(&self, probe: &ProbeRequest<'_>, event: usize, name: &str) -> Result<Option<Operand>, String> {
        if matches!(probe.spec.point, ProbePoint::Tracepoint { .. }) {
            let Some(field) = self.session.events()[event].format.field(name) else { return Ok(None) };
            let signed = match field.kind {
                FieldKind::Int { signed } if (1..=8).contains(&field.size) => signed,
                _ => return Err(format!("`{name}` is no integer field")),
            };
            return Ok(Some(Operand::Number(ValueSource {
                origin: Origin::Record(field.offset as u32),
                derefs: Vec::new(),
                user_memory: false,
                bits: 8 * field.size as u32,
                signed,
            })));
        }
        let Some(arg) = probe.plan.args().iter().find(|a| a.name == name) else { return Ok(None) };
        if matches!(arg.fetch, Fetch::Comm) {
            return Ok(Some(Operand::Comm));
        }
        let user = matches!(probe.spec.point, ProbePoint::User { .. });
        let is_return = probe.spec.kind == ProbeKind::Return;
        let source = value_source(&arg.fetch, arg.ty, user, is_return).map_err(|e| format!("`{name}`: {e}"))?;
        Ok(Some(Operand::Number(source)))
    }
}

/// Push the value of a field of type `ty` as the kernel recorded it.
fn push_field(values: &mut Values, ty: ArgType, field: Option<FieldValue>) {
    match field {
        Some(FieldValue::Signed(x)) => values.push_int(x as u64, ty),
        Some(FieldValue::Unsigned(x)) => values.push_int(x, ty),
        Some(FieldValue::Str(s)) | Some(FieldValue::Bytes(s)) => values.push_str(&s),
        // Cut by the kernel (its record had no more room): shown with `...` whatever its
        // length.
        Some(FieldValue::Truncated(s)) => values.push_str_cut(&s, true),
        Some(FieldValue::Fault) | None => values.push_fault(0),
    }
}

/// What BPF program `t` counted (and dropped, its map full or out of memory, or found not to
/// pass the filter).
fn counted(t: &Tally) -> u64 {
    t.counted() + t.dropped() + t.unallocated() + t.rejected()
}

/// Every key's figures in the maps of `readers` (each with its probe's index). A map that
/// cannot be read leaves the probe's tables empty; its hits (also read from the map) say 0
/// alike.
fn keyed_tallies(readers: &[(usize, TallyRows)]) -> Vec<KeyedTally> {
    readers.iter().flat_map(|(probe, reader)| reader.rows(*probe).unwrap_or_default()).collect()
}

/// CLOCK_MONOTONIC in ns, the clock the perf records are stamped with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel field of the `index`-th argument, named `name`: the name itself when it is a C
/// identifier, else the name with every other character made `_` and the index added, so
/// that two paths never share a field (`req->hdr.len` is `req__hdr_len_3`).
fn field_name(index: usize, name: &str) -> String {
    let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        return name.to_owned();
    }
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("v_{safe}_{index}")
}

/// A tracepoint field as an argument: its name, and a type that shows it well.
fn tracepoint_arg(f: &Field) -> NamedArg {
    let bits = (f.size.min(8) * 8) as u8;
    let ty = match f.kind {
        FieldKind::Int { signed: true } => ArgType::S(bits),
        FieldKind::Int { signed: false } if f.size == 8 => ArgType::X(64),
        FieldKind::Int { signed: false } => ArgType::U(bits),
        _ => ArgType::String,
    };
    NamedArg::typed(f.name.clone(), Fetch::Immediate(0), ty)
}

impl Engine for KernelEngine {
    type Error = KernelError;

    /// The kernel stack from the kernel's callchain; the user stack unwound in dprobe from the
    /// registers and the copy of the stack each record brings (the kernel's own user
    /// callchain needs frame pointers).
    fn stacks(&mut self, want: StackRequest) -> Result<(), String> {
        let depth = u16::try_from(want.depth).map_err(|_| format!("--stack-depth {} is too deep", want.depth))?;
        self.session.set_stacks(Some(crate::StackSampling { kernel: want.kernel, user: want.user, depth }));
        self.stacks.want = Some(want);
        Ok(())
    }

    fn place(&mut self, probe: ProbeRequest<'_>) -> Result<Placed, KernelError> {
        let mut spec = probe.spec.clone();
        // The kernel's field names are C identifiers; a variable's path (`req->hdr.len`) is
        // given one, and the values are read back under it.
        let plan_args: Vec<NamedArg> = probe
            .plan
            .args()
            .iter()
            .enumerate()
            .map(|(i, a)| NamedArg { name: field_name(i, &a.name), ..a.clone() })
            .collect();
        spec.args = plan_args.clone();
        let dynamic = !matches!(spec.point, ProbePoint::Tracepoint { .. });
        if dynamic && self.options.with_comm {
            // First: the kernel keeps strings in the order of the arguments, and one too long
            // takes the room of those after it.
            spec.args.insert(0, Self::comm_arg());
        }
        let maxactive = probe.maxactive;
        // User and kernel probes are defined together when tracing starts (one write to the
        // kernel whatever their number); a tracepoint's fields are needed now.
        // A user function's return probe, or an entry probe timed to its return, is watched
        // at the function's exits where it can be: the stack is then not touched, and
        // recursion has no depth limit.
        let user = matches!(spec.point, ProbePoint::User { .. });
        let timed = probe.timed && spec.kind == ProbeKind::Entry;
        let plan = match (user, spec.kind) {
            (true, ProbeKind::Return) => Some(self.exit_plan(&probe, &spec, false)),
            (true, ProbeKind::Entry) if timed => Some(self.exit_plan(&probe, &spec, true)),
            _ => None,
        };
        let mut watched = None;
        let mut mode = None;
        let event = if let Some(Ok((plan, _))) = &plan {
            let values = if self.options.with_comm { &spec.args[1..] } else { &spec.args[..] };
            let comm = if self.options.with_comm { vec![Self::comm_arg()] } else { Vec::new() };
            let (at_entry, at_ret) = if timed { (&spec.args[..], &[][..]) } else { (&comm[..], values) };
            let (entry, exit_events) = self.add_watched(plan, at_entry, at_ret)?;
            mode = Some(format!("its returns are watched {}", plan.watched_at()));
            // Numbered once it is known whether its records reach dprobe.
            let number = usize::MAX;
            let entry_exit = entry_exit(plan, &exit_events);
            watched = Some(Watched { number, exit_events, entry_exit, abandoned: 0 });
            entry
        } else if dynamic {
            if let Some(Err(why)) = &plan {
                mode = Some(format!("its returns are watched through the return address (a uretprobe): {why}"));
            }
            self.session.add_later_counting(&spec, maxactive, probe.semaphore.map(|s| s.file_offset))?
        } else {
            self.session.add(&spec, None, maxactive)?
        };
        let mut placed = Placed::default();
        let args = if dynamic {
            plan_args
        } else {
            // A tracepoint's fields are its values.
            let fields: Vec<NamedArg> = self.session.events()[event].format.own_fields().map(tracepoint_arg).collect();
            placed.fields = Some(fields.clone());
            fields
        };
        let counting = match self.options.in_kernel.as_ref().filter(|_| !probe.timed) {
            Some(ask) => {
                let loaded = match &watched {
                    Some(w) => self.watched_tallies(w, ask, &probe, event).map(|(r, e)| (r, Some(e))),
                    None => self.tally(ask, &probe, event).map(|t| (t, None)),
                };
                match loaded {
                    Ok((t, e)) => {
                        let what = if e.is_some() { "its entries and returns are" } else { "its hits are" };
                        placed.detail = Some(format!("{what} counted in the kernel (BPF)"));
                        Some((t, e))
                    }
                    Err(why) => {
                        placed.detail = Some(format!("its hits are counted in dprobe from each event: {why}"));
                        None
                    }
                }
            }
            None => None,
        };
        if let (Some(Ok((plan, hops))), Some(w)) = (&plan, watched.as_mut()) {
            // Counted in the kernel, its tail calls' returns are counted at the jumps.
            let read = counting.is_none();
            w.number = self.number_watched(plan, read);
            if read && !hops.is_empty() {
                for hop in hops {
                    self.add_hop(hop)?;
                }
                let names: Vec<&str> = hops.iter().map(|h| h.name.as_str()).collect();
                let mode = mode.as_mut().expect("a mode for a function watched at its exits");
                mode.push_str(&format!(
                    ", and its tail calls return with {}, watched at {} exits too",
                    names.join(", "),
                    if names.len() == 1 { "its" } else { "their" }
                ));
            }
        }
        if let Some(mode) = mode {
            placed.detail = Some(match placed.detail.take() {
                Some(d) => format!("{mode}; {d}"),
                None => mode,
            });
        }
        let return_event = if timed && watched.is_none() {
            let mut ret = spec.clone();
            ret.kind = ProbeKind::Return;
            ret.args = if self.options.with_comm { vec![Self::comm_arg()] } else { Vec::new() };
            Some(self.session.add_later(&ret, maxactive)?)
        } else {
            None
        };
        // The kernel's return probes put their trampoline in place of the return address: an
        // entry event tells the stacks which slot and what it held.
        let returns = spec.kind == ProbeKind::Return || return_event.is_some();
        let call_event = match self.stacks.want {
            Some(want) if want.user && returns && dynamic && watched.is_none() => {
                let mut call = spec.clone();
                call.kind = ProbeKind::Entry;
                call.args = vec![
                    NamedArg::typed(SLOT_FIELD, Fetch::StackPointer, ArgType::U(64)),
                    NamedArg::typed(RET_FIELD, Fetch::Stack(0), ArgType::U(64)),
                ];
                Some(self.session.add_later(&call, None)?)
            }
            _ => None,
        };
        // Events whose records are read may share a kernel event with others of their shape;
        // one a BPF program counts at must keep its own.
        if counting.is_none() {
            let exits = watched.iter().flat_map(|w| w.exit_events.iter().map(|(e, _)| *e));
            let events: Vec<usize> = [event].into_iter().chain(return_event).chain(call_event).chain(exits).collect();
            for e in events {
                self.session.share(e);
            }
        }
        self.probes.push(Probe {
            event,
            return_event,
            call_event,
            is_return: spec.kind == ProbeKind::Return,
            values: Values::with_capacity(args.len()),
            fields: args.into_iter().map(|a| (a.name, a.ty)).collect(),
            filtered_in_kernel: false,
            delivered: 0,
            returns_delivered: 0,
            tally: None,
            entry_tally: None,
            counting,
            fallback: None,
            exits: watched,
        });
        Ok(placed)
    }

    /// The kernel filters each event whose fields cover the filter's (a probe whose BPF
    /// program tests the filter itself needs no more).
    fn prefilter(&mut self, filter: &Filter, text: &str) {
        let names = filter.fields();
        for p in &mut self.probes {
            if p.counting.as_ref().is_some_and(|(c, _)| !c.config.filter.is_empty()) {
                continue;
            }
            if names.iter().all(|n| p.fields.iter().any(|(f, _)| f == n)) {
                for event in Self::filtered_events(p) {
                    self.session.set_filter(event, Some(text));
                }
                p.filtered_in_kernel = true;
            }
        }
    }

    fn run(&mut self, stop: &mut dyn FnMut() -> bool, sink: EventSink<'_>) -> Result<Ending, KernelError> {
        // The events are defined now: their ids take the programs. A program the kernel
        // will not attach leaves its probe to the perf buffers.
        self.session.flush()?;
        self.load_programs();
        for p in &mut self.probes {
            let events = Self::tally_events(p);
            let Some(tally) = p.tally.as_mut() else { continue };
            let session = &self.session;
            // All of a user probe's places through one link, where the kernel makes them;
            // else each place's event.
            // (Not a uretprobe: the kernel counts its entries only for an event.)
            let attach = |t: &mut Tally, events: &[usize]| match session.user_places(events) {
                Some(places) if !places.returns && t.attach_user(&places).is_ok() => Ok(()),
                _ => events.iter().try_for_each(|&e| t.attach(session.events()[e].format.id)),
            };
            let attached = attach(tally, &events).and_then(|()| match &mut p.entry_tally {
                Some(t) => attach(t, &[p.event]),
                None => Ok(()),
            });
            match attached {
                Ok(()) => {
                    for e in events.into_iter().chain(p.entry_tally.as_ref().map(|_| p.event)) {
                        self.session.without_buffer(e);
                    }
                }
                Err(why) => {
                    p.fallback = Some(why);
                    p.tally = None;
                    p.entry_tally = None;
                }
            }
        }
        let readers =
            self.probes.iter().enumerate().filter_map(|(i, p)| Some((i, p.tally.as_ref()?.reader()))).collect();
        let _ = self.readers.set(readers);
        self.session.start(None)?;
        if let Some((program, rest)) = self.options.command.split_first() {
            let child = Command::new(program)
                .args(rest)
                .spawn()
                .map_err(|e| KernelError::os(format!("cannot start `{program}`"), e))?;
            self.child = Some(child);
        }
        // A trace restricted to one process (`-p`) ends with it, as perf's and bpftrace's do.
        let watched = self.options.pid.filter(|_| self.child.is_none()).map(ProcessWatch::new);
        // `None`: the started command ended. It is reaped only once its last records are read,
        // so that `/proc` still shows it meanwhile (its name, for a trace file).
        let ending = loop {
            self.poll(100, sink)?;
            if stop() {
                break Some(Ending::Asked);
            }
            if self.child.as_ref().is_some_and(|c| ended_unreaped(c.id())) {
                break None;
            }
            if watched.as_ref().is_some_and(ProcessWatch::ended) {
                break Some(Ending::Gone);
            }
        };
        self.poll(0, sink)?;
        self.session.settle_lost();
        self.pair(None, sink);
        let ending = match (ending, self.child.as_mut()) {
            (Some(ending), _) => ending,
            (None, None) => Ending::Asked,
            (None, Some(c)) => {
                use std::os::unix::process::ExitStatusExt;
                let status = c.wait().map_err(|e| KernelError::os("waiting for the command", e))?;
                Ending::Exited(match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, signal) => Exit::Signal(signal.unwrap_or(0)),
                })
            }
        };
        self.abandon_ended_threads();
        self.counts_at_end = Some(self.session.all_kernel_counts());
        Ok(ending)
    }

    /// The figures of this session's own events as delivered (past the kernel's filter, and
    /// `-p` and `--comm`; dprobe's own threads are filtered out in the kernel). The kernel's
    /// count covers every process and every record, filtered or lost: it stands for the hits
    /// only where nothing but the kernel's filter stood between (said in a remark), and
    /// gives the entries of return probes.
    fn stats(&self, index: usize) -> Stats {
        let Some(p) = self.probes.get(index) else { return Stats::default() };
        let counts = self.kernel_counts(p);
        let delivered = Self::delivered(p);
        let restricted = self.options.pid.is_some() || self.options.comm.is_some();
        let unrestricted_kernel_count = !restricted && (p.is_return || p.filtered_in_kernel);
        let hits = if unrestricted_kernel_count { counts.hits.max(delivered) } else { delivered };
        let returns = match p.return_event {
            Some(_) => p.returns_delivered,
            None if p.exits.is_some() => p.tally.as_ref().map_or(p.returns_delivered, counted),
            None if p.is_return => delivered,
            None => 0,
        };
        // A timed entry's returns are missed at its return event (no free instance).
        let return_missed = p.return_event.and_then(|r| self.event_counts(r)).map_or(0, |c| c.missed);
        Stats {
            hits,
            returns,
            missed: counts.missed + return_missed,
            placement: dprobe_core::Placement::InKernel,
            // A filter at the exits leaves activations unpaired: not known to be abandoned (a
            // timed entry is filtered at its entry: what passed is paired whole).
            abandoned: p.exits.as_ref().map_or(counts.abandoned, |w| {
                if p.filtered_in_kernel && p.is_return {
                    0
                } else {
                    w.abandoned
                }
            }),
            ..counts
        }
    }

    fn remarks(&self, index: usize) -> Vec<String> {
        let Some(p) = self.probes.get(index) else { return Vec::new() };
        let mut remarks = Vec::new();
        if let Some(t) = &p.tally {
            remarks.push("aggregated in the kernel (BPF): no per-event records reached dprobe".into());
            if t.filtered() {
                remarks.push(format!("filtered in the kernel (BPF): {} hits did not pass", t.rejected()));
            }
            let dropped = t.dropped();
            if dropped > 0 {
                remarks.push(format!(
                    "{dropped} hits not aggregated: their keys were new and the kernel's map was full ({} keys)",
                    t.max_keys()
                ));
            }
            let unallocated = t.unallocated();
            if unallocated > 0 {
                remarks.push(format!(
                    "{unallocated} hits not aggregated: their keys were new and the kernel had no memory for them"
                ));
            }
        }
        if let Some(why) = &p.fallback {
            remarks.push(format!("aggregated in dprobe from each event: its BPF program could not run: {why}"));
        }
        let counts = self.kernel_counts(p);
        let restricted = self.options.pid.is_some() || self.options.comm.is_some();
        if p.filtered_in_kernel {
            remarks.push("filtered in the kernel: only the events that passed reached dprobe".into());
        }
        if !p.is_return && p.exits.is_some() {
            // A timed entry watched at its exits: its entries received, paired.
            let stats = self.stats(index);
            let gap = stats.hits.saturating_sub(stats.returns + stats.abandoned);
            if gap > 0 {
                remarks.push(format!(
                    "{gap} entries without a return received: they had not returned when tracing stopped"
                ));
            }
        }
        if p.is_return && !restricted {
            let stats = self.stats(index);
            let gap = stats.hits.saturating_sub(stats.returns + stats.missed + stats.abandoned);
            let lost = if self.session.lost > 0 { ", or their records were lost (full buffers)" } else { "" };
            if p.exits.is_some() && gap > 0 && !p.filtered_in_kernel {
                // Paired, the calls abandoned are told apart (counted as returns not seen);
                // counted at the exits by the kernel, they are not.
                let why = match p.tally {
                    None => format!("without a return received: they had not returned when tracing stopped{lost}"),
                    Some(_) => "without a return counted at the exits: they had not returned when tracing stopped, \
                                or were left by longjmp, an exception or their thread's end"
                        .into(),
                };
                remarks.push(format!("{gap} entries (the kernel's count) {why}"));
            } else if gap > 0 && !p.filtered_in_kernel && p.exits.is_none() {
                remarks.push(format!(
                    "{gap} entries (the kernel's count) without a return received: they had not returned when \
                     tracing stopped, left by longjmp or exit, or were nested deeper than the kernel watches \
                     returns (64 per thread){lost}"
                ));
            }
        } else if restricted && counts.hits > Self::delivered(p) {
            remarks.push(self.restricted_remark(p, counts.hits));
        } else if !p.filtered_in_kernel && counts.hits > Self::delivered(p) {
            let lost = if self.session.lost > 0 { " and the records lost (full buffers)" } else { "" };
            remarks.push(format!(
                "HITS counts the events received; the kernel counted {}, with dprobe's own calls (left out), the \
                 hits as tracing stopped{lost}",
                counts.hits
            ));
        }
        remarks
    }

    fn tallies(&self) -> Vec<KeyedTally> {
        let readers: Vec<(usize, TallyRows)> =
            self.probes.iter().enumerate().filter_map(|(i, p)| Some((i, p.tally.as_ref()?.reader()))).collect();
        keyed_tallies(&readers)
    }

    /// The maps of the probes aggregated in the kernel, read apart from the engine (the BPF
    /// programs keep counting into them while the trace runs).
    fn live_tallies(&self) -> Option<LiveTallies> {
        if self.probes.iter().all(|p| p.counting.is_none()) {
            return None;
        }
        // The programs are loaded when tracing starts: their maps are read from then on.
        let readers = std::sync::Arc::clone(&self.readers);
        Some(Box::new(move || readers.get().map(|r| keyed_tallies(r)).unwrap_or_default()))
    }

    fn notes(&self) -> Vec<String> {
        match self.session.lost {
            0 => Vec::new(),
            n => vec![format!(
                "{n} records lost: the kernel's buffers ({} KiB per CPU) were full (it dropped them); a larger \
                 --buffer-size keeps more",
                self.session.buffer_size() / 1024
            )],
        }
    }

    /// Remove every event. A command started alongside keeps running if it still does (it
    /// got the same Ctrl-C from the terminal).
    fn finish(
        mut self,
        _wait: Option<dprobe_core::WaitForProgram>,
        _give_up: &dyn Fn() -> bool,
    ) -> Result<Option<Exit>, KernelError> {
        self.detach_programs();
        self.session.close()?;
        Ok(None)
    }

    fn abandon(mut self) {
        self.detach_programs();
        let _ = self.session.close();
    }
}

/// Whether child `pid` has ended, without reaping it.
/// Tells when a process that is not dprobe's child has ended: through a pidfd (Linux 5.3),
/// which also tells it from a later process given the same number; else by its `/proc` entry.
enum ProcessWatch {
    Pidfd(std::os::fd::OwnedFd),
    Proc(std::path::PathBuf),
}

impl ProcessWatch {
    fn new(pid: i32) -> ProcessWatch {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: a descriptor just made, owned by nothing else.
            return ProcessWatch::Pidfd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) });
        }
        ProcessWatch::Proc(format!("/proc/{pid}").into())
    }

    fn ended(&self) -> bool {
        match self {
            ProcessWatch::Pidfd(fd) => {
                use std::os::fd::AsRawFd;
                let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one pollfd on this frame, no wait; a pidfd is readable once its
                // process has ended.
                unsafe { libc::poll(&mut p, 1, 0) == 1 }
            }
            ProcessWatch::Proc(path) => !path.exists(),
        }
    }
}

fn ended_unreaped(pid: u32) -> bool {
    // SAFETY: a siginfo_t is plain data, which waitid fills.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: peeks, without reaping, at our child; `info` is valid.
    let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) };
    // SAFETY: filled by waitid (zero when the child has not ended).
    r == 0 && unsafe { info.si_pid() } != 0
}

#[cfg(test)]
mod field_names {
    use super::field_name;

    #[test]
    fn paths_become_identifiers_of_their_own() {
        assert_eq!(field_name(0, "len"), "len");
        assert_eq!(field_name(3, "req->hdr.len"), "v_req__hdr_len_3");
        assert_eq!(field_name(4, "argv[1]"), "v_argv_1__4");
        assert_ne!(field_name(1, "a->b"), field_name(2, "a__b"));
    }
}
