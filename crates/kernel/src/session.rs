//! A kernel tracing session: the events dprobe defined (in a group of its own, named after
//! the session's process id), their formats and perf buffers, and their removal on every
//! exit path. Groups left by sessions that died without cleaning up (`SIGKILL`) are removed
//! when the next session starts.

use std::collections::HashMap;

use dprobe_core::{Placement, Stats};
use dprobe_spec::ProbeSpec;

use crate::bpf::UserPlaces;
use crate::define::{definition, Definition, EventKind, END_FIELD};
use crate::error::KernelError;
use crate::format::{data_loc, EventFormat, FieldKind, FieldValue};
use crate::perf::{Record, Rings, SampleStacks, StackSampling, DEFAULT_BUFFER_BYTES};
use crate::tracefs::Tracefs;

const GROUP_PREFIX: &str = "dprobe_";

/// The hidden field of a kernel event that holds several user-space probes: which of them a
/// record is from (their site number, in the order they were added to it).
///
/// The kernel lets one dynamic event hold probes at several places, all with the same fields
/// (Linux 5.7: a definition line naming an existing event appends to it). dprobe puts the
/// probes of one shape in one event for the sake of its end: the kernel lets go of an event's
/// probes together, after one grace period, but of separate events one at a time, a grace
/// period each (about a tenth of a second: 300 probes took half a minute to remove).
pub const SITE_FIELD: &str = "dprobe_site";

/// One event the session defined in tracefs (its definition, format and counts; the events
/// it delivers are `dprobe_core::ProbeEvent`s).
pub struct DefinedEvent {
    /// How it was defined.
    pub definition: Definition,
    /// Its format.
    pub format: EventFormat,
    /// Its group and name in tracefs (for the kernel's profile files).
    pub group: String,
    /// See `group`.
    pub name: String,
    filter: Option<String>,
    /// Records received.
    pub received: u64,
    /// Read through the perf buffers (not when a BPF program takes its hits).
    buffered: bool,
    /// Its number among the probes of its kernel event, when that holds several
    /// ([`SITE_FIELD`]).
    pub site: Option<u32>,
}

/// An event kept for the next batch ([`Session::add_later`]).
struct Pending {
    definition: Definition,
    maxactive: Option<usize>,
    filter: Option<String>,
    /// It may share its kernel event with others of its shape ([`Session::share`]).
    share: bool,
}

/// Which probe a record is from, by its event's id: its event's own, or the one its
/// [`SITE_FIELD`] names.
enum Route {
    One(usize),
    Sites { offset: usize, events: Vec<usize> },
}

impl Route {
    fn event(&self, raw: &[u8]) -> Option<usize> {
        match self {
            Route::One(i) => Some(*i),
            Route::Sites { offset, events } => {
                let site = raw.get(*offset..*offset + 4)?;
                let event = events.get(u32::from_ne_bytes(site.try_into().ok()?) as usize)?;
                (*event != usize::MAX).then_some(*event)
            }
        }
    }
}

/// A decoded record.
pub struct Hit<'a> {
    /// Which event (index in the order of [`Session::add`]).
    pub event: usize,
    /// Process (thread group) id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU.
    pub cpu: u32,
    /// Kernel time stamp (ns).
    pub time: u64,
    /// The event.
    pub format: &'a EventFormat,
    /// The raw record (decode fields with [`EventFormat::decode`]).
    pub raw: &'a [u8],
    /// Its stacks, when the session samples them ([`Session::set_stacks`]).
    pub stacks: SampleStacks<'a>,
}

impl Hit<'_> {
    /// The value of field `name`. A string the kernel could not read is
    /// [`FieldValue::Fault`]; one it cut is [`FieldValue::Truncated`].
    pub fn field(&self, name: &str) -> Option<FieldValue> {
        let f = self.format.field(name)?;
        let value = self.format.decode(f, self.raw)?;
        let Some(end) = self.format.field(END_FIELD) else { return Some(value) };
        if f.kind != FieldKind::DataLocString || f.name == END_FIELD {
            return Some(value);
        }
        let loc = |f: &crate::format::Field| self.raw.get(f.offset..f.offset + 4).and_then(data_loc);
        let (start, len) = loc(f)?;
        // The end marker had room: every string fitted; a length of 0 is the kernel's mark of
        // a string it could not read. Otherwise the string whose data reaches the end of the
        // strings' area took the room of those after it: it was cut (and those after it, of
        // length 0, were not fetched at all).
        let all_fitted = loc(end).is_some_and(|(_, l)| l > 0);
        let area_end = self
            .format
            .fields
            .iter()
            .filter(|g| g.kind == FieldKind::DataLocString)
            .filter_map(|g| loc(g).map(|(s, l)| s + l))
            .max()
            .unwrap_or(0);
        Some(match (all_fitted, len, value) {
            (true, 0, _) => FieldValue::Fault,
            (false, 0, _) => FieldValue::Truncated(Vec::new()),
            (false, _, FieldValue::Str(s)) if start + len == area_end => FieldValue::Truncated(s),
            (_, _, value) => value,
        })
    }
}

/// A session.
pub struct Session {
    tracefs: Tracefs,
    group: String,
    events: Vec<DefinedEvent>,
    rings: Option<Rings>,
    /// Which event each record is from, by its `common_type` (set when tracing starts).
    routes: HashMap<u16, Route>,
    /// Events to define in the next batch ([`Session::add_later`]).
    pending: Vec<Pending>,
    /// The kernel lets one event hold probes at several places ([`SITE_FIELD`]).
    sharing: bool,
    /// Records the kernel dropped because a buffer was full.
    pub lost: u64,
    /// Bytes of data of each CPU's perf buffer.
    buffer_bytes: usize,
    /// Single-threaded processes of dprobe's own besides this one ([`Session::leave_out`]).
    also_own: Vec<u32>,
    stacks: Option<StackSampling>,
}

impl Session {
    /// Start a session: find (or mount) tracefs and remove groups of dead sessions.
    pub fn new() -> Result<Session, KernelError> {
        let tracefs = Tracefs::open()?;
        remove_stale_groups(&tracefs);
        // The process id names the owner (for the clean-up of dead sessions); the counter keeps
        // sessions of one process apart.
        static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let group = format!("{GROUP_PREFIX}{}_{n}", std::process::id());
        // Appending to an event, and the immediate values that number its probes: both
        // in the kernel's own help text since Linux 5.7.
        let help = std::fs::read_to_string(tracefs.path("README")).unwrap_or_default();
        let sharing = help.contains("Create/append/remove/show the userspace dynamic events") && help.contains("\\imm");
        Ok(Session {
            tracefs,
            group,
            events: Vec::new(),
            rings: None,
            routes: HashMap::new(),
            pending: Vec::new(),
            sharing,
            lost: 0,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            also_own: Vec::new(),
            stacks: None,
        })
    }

    /// The data size of each CPU's perf buffer, from the next [`Session::start`] on (see
    /// [`crate::check_buffer_size`]; the default is [`DEFAULT_BUFFER_BYTES`]).
    pub fn set_buffer_size(&mut self, bytes: usize) {
        self.buffer_bytes = bytes;
    }

    /// Have every record carry the stacks `stacks` names, from the next [`Session::start`] on.
    pub fn set_stacks(&mut self, stacks: Option<StackSampling>) {
        self.stacks = stacks;
    }

    /// See [`Session::set_buffer_size`].
    pub fn buffer_size(&self) -> usize {
        self.buffer_bytes
    }

    /// The tracefs group of this session's dynamic events.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Define the event for `spec`, with a kernel filter on its fields (the kernel's syntax,
    /// which `dprobe-spec` filters follow). `maxactive` is for kernel return probes.
    pub fn add(
        &mut self,
        spec: &ProbeSpec,
        filter: Option<&str>,
        maxactive: Option<usize>,
    ) -> Result<usize, KernelError> {
        self.flush()?;
        let index = self.add_all(&[(spec, maxactive)]).map_err(|(_, e)| e)?[0];
        self.set_filter(index, filter);
        Ok(index)
    }

    /// Define the events for `probes` (each with its `maxactive`, for kernel return probes)
    /// with one write per event file, whatever their number; their indexes, in order. On an
    /// error, none of them stays defined, and the error comes with the index in `probes` of
    /// the probe it is about (0 when the kernel did not say which).
    pub fn add_all(&mut self, probes: &[(&ProbeSpec, Option<usize>)]) -> Result<Vec<usize>, (usize, KernelError)> {
        self.flush().map_err(|e| (0, e))?;
        for (k, (spec, maxactive)) in probes.iter().enumerate() {
            if let Err(e) = self.add_later(spec, *maxactive) {
                self.pending.clear();
                return Err((k, e));
            }
        }
        let first = self.events.len();
        self.define_pending()?;
        Ok((first..self.events.len()).collect())
    }

    /// Check `spec` and keep its event for the next batch, defined at the next
    /// [`Session::add`], [`Session::flush`] or [`Session::start`]; the index it will have.
    pub fn add_later(&mut self, spec: &ProbeSpec, maxactive: Option<usize>) -> Result<usize, KernelError> {
        self.add_later_counting(spec, maxactive, None)
    }

    /// [`Session::add_later`] for a user probe whose semaphore (a static probe's) is at
    /// `ref_ctr` in the probed file, if it has one: the kernel sets it while the event is on.
    pub fn add_later_counting(
        &mut self,
        spec: &ProbeSpec,
        maxactive: Option<usize>,
        ref_ctr: Option<u64>,
    ) -> Result<usize, KernelError> {
        let mut definition = definition(spec)?;
        if let Some(offset) = ref_ctr {
            definition = definition.counting(offset);
        }
        if definition.kind != EventKind::Tracepoint && !self.tracefs.has(event_file(definition.kind)) {
            return Err(missing_dynamic_events(definition.kind));
        }
        self.pending.push(Pending { definition, maxactive, filter: None, share: false });
        Ok(self.events.len() + self.pending.len() - 1)
    }

    /// Let event `index`, not defined yet, share its kernel event with the other user-space
    /// probes of its batch that have its kind (entry or return), its arguments and its
    /// filter ([`SITE_FIELD`]): those whose records are read. An event a BPF program is
    /// attached to must keep its own, or it would count the others' hits too.
    pub fn share(&mut self, index: usize) {
        if let Some(p) = index.checked_sub(self.events.len()).and_then(|k| self.pending.get_mut(k)) {
            p.share = true;
        }
    }

    /// Define the events kept by [`Session::add_later`], in one batch.
    pub fn flush(&mut self) -> Result<(), KernelError> {
        self.define_pending().map_err(|(_, e)| e)
    }

    fn define_pending(&mut self) -> Result<(), (usize, KernelError)> {
        let pending = std::mem::take(&mut self.pending);
        let first = self.events.len();
        let mut planned = Vec::new();
        let mut filters = Vec::new();
        let mut lines: [Vec<(usize, String)>; 2] = Default::default();
        let mut shared = SharedEvents::default();
        for (k, p) in pending.into_iter().enumerate() {
            let Pending { definition, maxactive, filter, share } = p;
            let (group, name, site) = match (&definition.kind, &definition.tracepoint) {
                (EventKind::Tracepoint, Some(tp)) => {
                    let (g, n) = tp.split_once('/').expect("SUBSYSTEM/EVENT");
                    (g.to_owned(), n.to_owned(), None)
                }
                _ => {
                    // The kernel's profile files name events without their group: the name
                    // carries the session too, so that two sessions never read each other's.
                    let own_name = format!("{}_p{}", self.group, first + k);
                    let prefix = match (definition.is_return, maxactive, definition.kind) {
                        (false, _, _) => "p".to_owned(),
                        (true, Some(n), EventKind::Kprobe) => format!("r{n}"),
                        (true, _, _) => "r".to_owned(),
                    };
                    let shares = share && self.sharing && definition.kind == EventKind::Uprobe;
                    let (name, site, body) = if shares {
                        let (name, site) = shared.join(&definition, filter.as_deref(), own_name);
                        let body = format!("{} {SITE_FIELD}=\\{site}:u32", definition.body);
                        (name, Some(site), body)
                    } else {
                        (own_name, None, definition.body.clone())
                    };
                    let line = format!("{prefix}:{}/{name} {body}", self.group);
                    lines[usize::from(definition.kind == EventKind::Kprobe)].push((k, line));
                    (self.group.clone(), name, site)
                }
            };
            planned.push((definition, group, name, site));
            filters.push(filter);
        }
        let names: Vec<&str> = planned.iter().map(|(_, _, n, _)| n.as_str()).collect();
        let mut defined = Vec::new();
        let mut result = Ok(());
        for (file, lines) in ["uprobe_events", "kprobe_events"].into_iter().zip(&lines) {
            if lines.is_empty() {
                continue;
            }
            let text: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
            result = self.tracefs.define_all(file, &text).map_err(|e| {
                let k = match &e {
                    KernelError::Refused { definition, .. } => {
                        lines.iter().find(|(_, l)| l == definition).map(|(k, _)| *k)
                    }
                    _ => None,
                };
                (k.unwrap_or(0), e)
            });
            defined.push(file);
            if result.is_err() {
                break;
            }
        }
        // An event holding several probes has one format, read once.
        let mut read: HashMap<(&str, &str), EventFormat> = HashMap::new();
        let formats = result.and_then(|()| {
            planned
                .iter()
                .enumerate()
                .map(|(k, (_, group, name, _))| match read.get(&(group.as_str(), name.as_str())) {
                    Some(f) => Ok(f.clone()),
                    None => {
                        let f = self.tracefs.format(group, name).map_err(|e| (k, e))?;
                        read.insert((group, name), f.clone());
                        Ok(f)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let formats = match formats {
            Ok(f) => f,
            Err(e) => {
                for file in defined {
                    let _ = self.remove(file, &names);
                }
                return Err(e);
            }
        };
        for (((definition, group, name, site), format), filter) in planned.into_iter().zip(formats).zip(filters) {
            let event = DefinedEvent { definition, format, group, name, filter, received: 0, buffered: true, site };
            self.events.push(event);
        }
        Ok(())
    }

    /// Remove this session's events among `names` from `file`, in one write; those already
    /// gone are skipped.
    fn remove(&self, file: &str, names: &[&str]) -> Result<(), KernelError> {
        let lines: Vec<String> = defined_events(&self.tracefs, file)
            .into_iter()
            .filter(|(group, name)| *group == self.group && names.contains(&name.as_str()))
            .map(|(group, name)| format!("-:{group}/{name}"))
            .collect();
        if lines.is_empty() {
            return Ok(());
        }
        self.tracefs.define_all(file, &lines)
    }

    /// Set (or replace) the kernel filter of event `index`; it takes effect at [`Session::start`].
    pub fn set_filter(&mut self, index: usize, filter: Option<&str>) {
        let filter = filter.map(str::to_owned);
        match index.checked_sub(self.events.len()) {
            None => self.events[index].filter = filter,
            Some(k) => {
                if let Some(p) = self.pending.get_mut(k) {
                    p.filter = filter;
                }
            }
        }
    }

    /// Open no perf buffer for event `index` (defined already) at [`Session::start`]: a BPF
    /// program attached to it takes its hits, and the kernel writes no record of them.
    pub fn without_buffer(&mut self, index: usize) {
        if let Some(e) = self.events.get_mut(index) {
            e.buffered = false;
        }
    }

    /// Leave the calls of process `pid`, single-threaded, out of user-space probes as this
    /// process's own are (see [`Session::start`]): another process of dprobe's own, such as
    /// the one the user started, which waits for this one and passes signals on.
    pub fn leave_out(&mut self, pid: u32) {
        self.also_own.push(pid);
    }

    /// The places of events `indexes` (defined already) as one uprobe_multi link takes them:
    /// `None` unless they are all user-space probes of one kind in one file.
    pub fn user_places(&self, indexes: &[usize]) -> Option<UserPlaces> {
        let mut places: Option<UserPlaces> = None;
        for &i in indexes {
            let d = &self.events.get(i)?.definition;
            let (path, offset) = d.file.as_ref().filter(|_| d.kind == EventKind::Uprobe)?;
            let p = places.get_or_insert_with(|| UserPlaces {
                path: path.clone(),
                offsets: Vec::new(),
                semaphores: Vec::new(),
                returns: d.is_return,
            });
            if p.path != *path || p.returns != d.is_return {
                return None;
            }
            p.offsets.push(*offset);
            p.semaphores.push(d.semaphore.unwrap_or(0));
        }
        places
    }

    /// The events defined so far, in the order they were added.
    pub fn events(&self) -> &[DefinedEvent] {
        &self.events
    }

    /// Open the perf buffers and start recording, system-wide or for one thread (`pid`).
    ///
    /// dprobe's own threads are left out of user-space probes (a `common_pid` condition,
    /// the thread id, added to their kernel filter): its own calls (`malloc` while reading
    /// the buffers) would otherwise feed the buffers with its own events, without end.
    pub fn start(&mut self, pid: Option<i32>) -> Result<(), KernelError> {
        self.flush()?;
        let own = (own_threads().iter().chain(&self.also_own))
            .map(|t| format!("common_pid != {t}"))
            .collect::<Vec<_>>()
            .join(" && ");
        let filters: Vec<Option<String>> = self
            .events
            .iter()
            .map(|e| match (e.definition.kind, &e.filter) {
                (EventKind::Uprobe, Some(f)) => Some(format!("({f}) && {own}")),
                (EventKind::Uprobe, None) => Some(own.clone()),
                (_, f) => f.clone(),
            })
            .collect();
        // An event holding several probes is opened once, with its probes' filter (they
        // were given one together; were they not, the tracer's own filter does the work).
        let mut ids: Vec<(u64, Option<&str>)> = Vec::new();
        for (e, f) in self.events.iter().zip(&filters) {
            match ids.iter_mut().find(|(id, _)| *id == e.format.id) {
                Some((_, kept)) if *kept != f.as_deref() => {
                    *kept = (e.definition.kind == EventKind::Uprobe).then_some(own.as_str());
                }
                Some(_) => {}
                None if e.buffered => ids.push((e.format.id, f.as_deref())),
                None => {}
            }
        }
        let rings = Rings::open(&ids, pid.unwrap_or(-1), self.buffer_bytes, self.stacks).map_err(|e| match e {
            // Say what the user wrote, not what dprobe added.
            KernelError::Refused { definition, reason } => KernelError::Refused {
                definition: self.events.iter().zip(&filters).fold(definition, |d, (e, f)| match (&e.filter, f) {
                    (Some(user), Some(f)) if *user != *f => d.replace(f.as_str(), user),
                    _ => d,
                }),
                reason,
            },
            e => e,
        })?;
        rings.enable()?;
        self.rings = Some(rings);
        self.routes = routes(&self.events);
        Ok(())
    }

    /// Wait up to `timeout_ms` for records and hand each to `each`.
    pub fn poll(&mut self, timeout_ms: i32, each: &mut dyn FnMut(Hit<'_>)) -> Result<usize, KernelError> {
        let Some(rings) = self.rings.as_mut() else { return Ok(0) };
        let events = &mut self.events;
        let routes = &self.routes;
        let lost = &mut self.lost;
        rings.poll(timeout_ms, &mut |record| match record {
            Record::Lost(n) => *lost += n,
            Record::Sample { pid, tid, cpu, time, raw, stacks } => {
                let Some(kind) = raw.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]])) else { return };
                let Some(i) = routes.get(&kind).and_then(|r| r.event(raw)) else { return };
                events[i].received += 1;
                each(Hit { event: i, pid, tid, cpu, time, format: &events[i].format, raw, stacks });
            }
        })
    }

    /// Take the kernel's own count of the records lost to full buffers into [`Session::lost`]
    /// (from Linux 6.0, `PERF_FORMAT_LOST`): call it once the last records are read, before
    /// the figures are given. The buffers say a loss only when a later record fits in them:
    /// the losses of a burst followed by quiet are known from this count alone.
    pub fn settle_lost(&mut self) {
        if let Some(n) = self.rings.as_ref().and_then(Rings::lost) {
            self.lost = self.lost.max(n);
        }
    }

    /// The kernel's own counts of event `index` (dynamic events only, from `uprobe_profile`
    /// or `kprobe_profile`): its hits, and its misses, which for a return probe are calls
    /// with no free instance (`maxactive`, [`Stats::missed`]) and for an entry hits while
    /// another kprobe ran ([`Stats::reentered`]).
    pub fn kernel_counts(&self, index: usize) -> Option<Stats> {
        // Only this event's file, read once: a summary asks for each event in turn.
        let e = self.events.get(index)?;
        counts_of(e, &self.tracefs.lines(profile_file(e)?))
    }

    /// [`Session::kernel_counts`] of every event, in order, reading each profile file once.
    /// The kernel counts every hit of a probe, in every process: also those its filters
    /// dropped, a full buffer lost, and for a return probe, entries (returned or not).
    pub fn all_kernel_counts(&self) -> Vec<Option<Stats>> {
        let mut profiles: std::collections::HashMap<&str, Vec<String>> = Default::default();
        self.events
            .iter()
            .map(|e| {
                let file = profile_file(e)?;
                counts_of(e, profiles.entry(file).or_insert_with(|| self.tracefs.lines(file)))
            })
            .collect()
    }

    /// Stop recording and remove every event of the session (also done on drop).
    pub fn close(&mut self) -> Result<(), KernelError> {
        // The kernel removes a user-space probe at the close of its last perf user, waiting
        // for a grace period (about a tenth of a second, one removal at a time).
        self.rings = None;
        let mut first_error = None;
        for kind in [EventKind::Uprobe, EventKind::Kprobe] {
            let names: Vec<&str> =
                self.events.iter().filter(|e| e.definition.kind == kind).map(|e| e.name.as_str()).collect();
            if names.is_empty() {
                continue;
            }
            // The kernel may still be letting go of an event's perf users (EBUSY): retry a
            // little before reporting.
            let mut result = self.remove(event_file(kind), &names);
            for _ in 0..20 {
                if result.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                result = self.remove(event_file(kind), &names);
            }
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        self.events.clear();
        first_error.map_or(Ok(()), Err)
    }
}

/// The kernel events of one batch that hold several probes: for each, its shape (kind,
/// arguments, filter), its name, and the places it holds so far.
#[derive(Default)]
struct SharedEvents {
    events: Vec<SharedEvent>,
}

struct SharedEvent {
    is_return: bool,
    args: String,
    filter: Option<String>,
    name: String,
    places: Vec<String>,
}

impl SharedEvents {
    /// The event `definition` joins (named `own_name` if it starts one), and its site there.
    /// The kernel refuses a second probe at one place in one event: such a probe starts
    /// another.
    fn join(&mut self, definition: &Definition, filter: Option<&str>, own_name: String) -> (String, u32) {
        let (place, args) = definition.body.split_once(' ').unwrap_or((&definition.body, ""));
        let same_shape = |e: &&mut SharedEvent| {
            e.is_return == definition.is_return && e.args == args && e.filter.as_deref() == filter
        };
        if let Some(e) = self.events.iter_mut().filter(same_shape).find(|e| !e.places.iter().any(|p| p == place)) {
            e.places.push(place.to_owned());
            return (e.name.clone(), e.places.len() as u32 - 1);
        }
        self.events.push(SharedEvent {
            is_return: definition.is_return,
            args: args.to_owned(),
            filter: filter.map(str::to_owned),
            name: own_name.clone(),
            places: vec![place.to_owned()],
        });
        (own_name, 0)
    }
}

/// The threads of this process (the process id alone if they cannot be listed).
fn own_threads() -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if tids.is_empty() {
        tids.push(std::process::id());
    }
    tids.sort_unstable();
    tids
}

/// Which event each record is from, by its `common_type`.
fn routes(events: &[DefinedEvent]) -> HashMap<u16, Route> {
    let mut routes = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let kind = e.format.id as u16;
        match (e.site, e.format.field(SITE_FIELD)) {
            (Some(site), Some(field)) => {
                let route =
                    routes.entry(kind).or_insert_with(|| Route::Sites { offset: field.offset, events: Vec::new() });
                if let Route::Sites { events, .. } = route {
                    let site = site as usize;
                    if events.len() <= site {
                        // (Every site of an event is one of its probes: none stays unset.)
                        events.resize(site + 1, usize::MAX);
                    }
                    events[site] = i;
                }
            }
            _ => {
                routes.entry(kind).or_insert(Route::One(i));
            }
        }
    }
    routes
}

fn event_file(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Kprobe => "kprobe_events",
        _ => "uprobe_events",
    }
}

/// The file with the kernel's counts of a dynamic event (none for a tracepoint).
fn profile_file(e: &DefinedEvent) -> Option<&'static str> {
    match e.definition.kind {
        EventKind::Uprobe => Some("uprobe_profile"),
        EventKind::Kprobe => Some("kprobe_profile"),
        EventKind::Tracepoint => None,
    }
}

/// The kernel's counts of event `e`, from its profile file's `lines`.
fn counts_of(e: &DefinedEvent, lines: &[String]) -> Option<Stats> {
    // uprobe_profile: `PATH EVENT HITS`; kprobe_profile: `EVENT HITS MISSES`. EVENT is the name
    // alone, which is unique to the session. An event that holds several probes has a line
    // for each, in the order of their sites.
    let named = |line: &&String| line.split_whitespace().any(|w| w == e.name);
    lines.iter().filter(named).nth(e.site.unwrap_or(0) as usize).and_then(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == e.name)?;
        let number = |i: usize| words.get(i).and_then(|w| w.parse().ok());
        let (hits, missed) = (number(at + 1)?, number(at + 2).unwrap_or(0));
        let mut stats = Stats { hits, placement: Placement::InKernel, ..Stats::default() };
        if e.definition.is_return {
            stats.missed = missed;
        } else {
            stats.reentered = missed;
        }
        Some(stats)
    })
}

/// The `(group, name)` of each event defined in `file`: `p:GROUP/NAME ...` or `r...`; once
/// each, though an event that holds several probes has a line for each (and is removed
/// whole by one `-:GROUP/NAME`: a second would be refused, and end the batch).
fn defined_events(tracefs: &Tracefs, file: &str) -> Vec<(String, String)> {
    let mut events: Vec<(String, String)> = Vec::new();
    for line in tracefs.lines(file) {
        let Some(event) = line.split_whitespace().next().and_then(|w| w.split_once(':')) else { continue };
        let Some((group, name)) = event.1.split_once('/') else { continue };
        if !events.iter().any(|(g, n)| g == group && n == name) {
            events.push((group.to_owned(), name.to_owned()));
        }
    }
    events
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn missing_dynamic_events(kind: EventKind) -> KernelError {
    match kind {
        EventKind::Kprobe => KernelError::Unsupported {
            what: "kernel function probes".into(),
            why: "this kernel has no kprobe events (CONFIG_KPROBE_EVENTS is off): kernel:FUNCTION probes cannot be \
                  placed; user-space probes (BINARY:FUNCTION) and tracepoints (tracepoint:SUBSYSTEM:EVENT) still work"
                .into(),
        },
        _ => KernelError::Unsupported {
            what: "system-wide user-space probes".into(),
            why: "this kernel has no uprobe events (CONFIG_UPROBE_EVENTS is off); tracepoints still work, and the \
                  ptrace engine (-p PID or -- CMD) probes one program"
                .into(),
        },
    }
}

/// Remove the dynamic events of groups `dprobe_PID_N` whose process is gone.
fn remove_stale_groups(tracefs: &Tracefs) {
    for file in ["uprobe_events", "kprobe_events"] {
        let stale: Vec<String> = defined_events(tracefs, file)
            .into_iter()
            .filter(|(group, _)| {
                let owner = group.strip_prefix(GROUP_PREFIX).and_then(|rest| rest.split('_').next());
                owner
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            })
            .map(|(group, name)| format!("-:{group}/{name}"))
            .collect();
        if !stale.is_empty() {
            let _ = tracefs.define_all(file, &stale);
        }
    }
}
