//! A kernel tracing session: the events dprobe defined (in a group of its own, named after
//! the session's process id), their formats and perf buffers, and their removal on every
//! exit path. Groups left by sessions that died without cleaning up (`SIGKILL`) are removed
//! when the next session starts.

use dprobe_core::{Placement, Stats};
use dprobe_spec::ProbeSpec;

use crate::define::{definition, Definition, EventKind};
use crate::error::KernelError;
use crate::format::{EventFormat, FieldValue};
use crate::perf::{Record, Rings};
use crate::tracefs::Tracefs;

const GROUP_PREFIX: &str = "dprobe_";

/// One event of the session.
pub struct Event {
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
}

impl Hit<'_> {
    /// The value of field `name`.
    pub fn field(&self, name: &str) -> Option<FieldValue> {
        let f = self.format.field(name)?;
        self.format.decode(f, self.raw)
    }
}

/// A session.
pub struct Session {
    tracefs: Tracefs,
    group: String,
    events: Vec<Event>,
    rings: Option<Rings>,
    /// Records the kernel dropped because a buffer was full.
    pub lost: u64,
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
        Ok(Session { tracefs, group, events: Vec::new(), rings: None, lost: 0 })
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
        let definition = definition(spec)?;
        let (group, name) = match (&definition.kind, &definition.tracepoint) {
            (EventKind::Tracepoint, Some(tp)) => {
                let (g, n) = tp.split_once('/').expect("SUBSYSTEM/EVENT");
                (g.to_owned(), n.to_owned())
            }
            _ => {
                let name = format!("p{}", self.events.len());
                let file = if definition.kind == EventKind::Uprobe { "uprobe_events" } else { "kprobe_events" };
                if !self.tracefs.has(file) {
                    return Err(missing_dynamic_events(definition.kind));
                }
                let prefix = match (definition.is_return, maxactive, definition.kind) {
                    (false, _, _) => "p".to_owned(),
                    (true, Some(n), EventKind::Kprobe) => format!("r{n}"),
                    (true, _, _) => "r".to_owned(),
                };
                self.tracefs.define(file, &format!("{prefix}:{}/{name} {}", self.group, definition.body))?;
                (self.group.clone(), name)
            }
        };
        let format = self.tracefs.format(&group, &name)?;
        self.events.push(Event { definition, format, group, name, filter: filter.map(str::to_owned), received: 0 });
        Ok(self.events.len() - 1)
    }

    /// Set (or replace) the kernel filter of event `index`; it takes effect at [`Session::start`].
    pub fn set_filter(&mut self, index: usize, filter: Option<&str>) {
        if let Some(e) = self.events.get_mut(index) {
            e.filter = filter.map(str::to_owned);
        }
    }

    /// The events, in the order they were added.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Open the perf buffers and start recording, system-wide or for one thread (`pid`).
    pub fn start(&mut self, pid: Option<i32>) -> Result<(), KernelError> {
        let ids: Vec<(u64, Option<&str>)> = self.events.iter().map(|e| (e.format.id, e.filter.as_deref())).collect();
        let rings = Rings::open(&ids, pid.unwrap_or(-1))?;
        rings.enable()?;
        self.rings = Some(rings);
        Ok(())
    }

    /// Wait up to `timeout_ms` for records and hand each to `each`.
    pub fn poll(&mut self, timeout_ms: i32, each: &mut dyn FnMut(Hit<'_>)) -> Result<usize, KernelError> {
        let Some(rings) = self.rings.as_mut() else { return Ok(0) };
        let events = &mut self.events;
        let lost = &mut self.lost;
        rings.poll(timeout_ms, &mut |record| match record {
            Record::Lost(n) => *lost += n,
            Record::Sample { pid, tid, cpu, time, raw } => {
                let Some(kind) = raw.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]])) else { return };
                let Some(i) = events.iter().position(|e| e.format.id as u16 == kind) else { return };
                events[i].received += 1;
                each(Hit { event: i, pid, tid, cpu, time, format: &events[i].format, raw });
            }
        })
    }

    /// The kernel's own counts of event `index` (dynamic events only, from `uprobe_profile`
    /// or `kprobe_profile`): its hits, and its misses, which for a return probe are calls
    /// with no free instance (`maxactive`, [`Stats::missed`]) and for an entry hits while
    /// another kprobe ran ([`Stats::reentered`]).
    pub fn kernel_counts(&self, index: usize) -> Option<Stats> {
        let e = self.events.get(index)?;
        let file = match e.definition.kind {
            EventKind::Uprobe => "uprobe_profile",
            EventKind::Kprobe => "kprobe_profile",
            EventKind::Tracepoint => return None,
        };
        // uprobe_profile: `PATH EVENT HITS`; kprobe_profile: `EVENT HITS MISSES`.
        self.tracefs.lines(file).iter().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == e.name || *w == format!("{}/{}", e.group, e.name))?;
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

    /// Stop recording and remove every event of the session (also done on drop).
    pub fn close(&mut self) -> Result<(), KernelError> {
        self.rings = None;
        let mut first_error = None;
        for e in self.events.drain(..) {
            let file = match e.definition.kind {
                EventKind::Uprobe => "uprobe_events",
                EventKind::Kprobe => "kprobe_events",
                EventKind::Tracepoint => continue,
            };
            // The kernel may still be letting go of the event's perf users (EBUSY): retry a
            // little before reporting.
            let line = format!("-:{}/{}", e.group, e.name);
            let mut result = self.tracefs.define(file, &line);
            for _ in 0..20 {
                if result.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                result = self.tracefs.define(file, &line);
            }
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
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
        for line in tracefs.lines(file) {
            // `p:dprobe_1234/p0 /path:0x...` or `r:...`
            let Some(event) = line.split_whitespace().next().and_then(|w| w.split_once(':')).map(|(_, e)| e) else {
                continue;
            };
            let Some((group, _)) = event.split_once('/') else { continue };
            let owner = group.strip_prefix(GROUP_PREFIX).and_then(|rest| rest.split('_').next());
            let Some(pid) = owner.and_then(|p| p.parse::<u32>().ok()) else { continue };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = tracefs.define(file, &format!("-:{event}"));
            }
        }
    }
}
