//! Aggregation in the kernel: a BPF program (`bpf/aggregate.bpf.c`, compiled by build.rs)
//! attached to a probe's event counts each hit under its key in a per-CPU hash map, and
//! returns 0 so the kernel records nothing else: a hot function's hits never travel to
//! user space one by one. dprobe reads the map when it wants the figures.
//!
//! Loading goes through `aya` (pure Rust: object relocation, maps, the verifier's log).
//! A user-space probe's program is attached to all its places through one uprobe_multi link
//! where the kernel has them (Linux 6.6, see `multi.rs`): the kernel then lets go of them
//! quickly at the end. Elsewhere, and for kprobes and tracepoints, attaching is the kernel's
//! oldest way: a perf event opened on the tracefs event, given the program
//! (`PERF_EVENT_IOC_SET_BPF`). The program runs for the event's every hit, on every CPU.

pub mod filter;
mod layout;
mod multi;
mod source;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use std::sync::Arc;

use aya::maps::{IterableMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::{KProbe, TracePoint};
use aya::{Ebpf, EbpfLoader};
use dprobe_core::KeyedTally;
use perf_event_open_sys::{bindings as sys, ioctls, perf_event_open};

pub use multi::UserPlaces;
pub use source::{value_source, Origin, ValueSource, MAX_DEREFS};

/// The compiled program (see build.rs), its map of keys allocated when it is made.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/aggregate.bpf.o"));
/// The same, the map's entries allocated as keys arrive (`BPF_F_NO_PREALLOC`).
static LAZY_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/aggregate_lazy.bpf.o"));

/// Whether a kernel of release `release` (`uname -r`) lets tracing programs use a hash map
/// whose entries are allocated as keys arrive: from Linux 6.1, where hash maps allocate
/// through `bpf_mem_alloc` (before, the verifier refused it, or accepted it with a warning
/// in the kernel's log). Such a map costs what its keys take: one allocated up front costs
/// its every entry on every CPU (16,384 keys of 32 bytes are 32 MiB on 64 CPUs) and about
/// 12 ms to make on 2 CPUs, for each probe.
pub fn lazy_keys_allowed(release: &str) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((next(), next()), (Some(major), Some(minor)) if (major, minor) >= (6, 1))
}

/// [`lazy_keys_allowed`] for the running kernel.
fn running_kernel_allows_lazy_keys() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| lazy_keys_allowed(r.trim()))
}

/// Keys the map holds per probe unless asked otherwise (bpftrace's maps hold 4096).
pub const MAX_KEYS: u32 = 16_384;

/// Which of a hit's process, thread and thread name its count is keyed by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyedBy {
    /// The process.
    pub pid: bool,
    /// The thread.
    pub tid: bool,
    /// The thread's name.
    pub comm: bool,
}

/// What a probe's hits are counted by, and which of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TallyConfig {
    /// Keyed by the hit's process, thread or thread name.
    pub by: KeyedBy,
    /// Only this process's hits.
    pub only_pid: Option<u32>,
    /// Only threads of this name (at most 15 bytes, as the kernel keeps them).
    pub only_comm: Option<String>,
    /// A process whose hits are left out (dprobe's own).
    pub own_pid: u32,
    /// Another process of dprobe's own whose hits are left out (0: none): the one the user
    /// started, which waits for this one.
    pub front_pid: u32,
    /// Keyed by this value too (rounded to 11 significant bits), for a histogram.
    pub value: Option<ValueSource>,
    /// Keyed by this fetched value too, exactly (`--by NAME`).
    pub by_value: Option<ValueSource>,
    /// Only the hits that pass these tests (none: every hit).
    pub filter: Vec<filter::Test>,
    /// Keys the map holds; a hit with a new key past them is dropped and counted.
    pub max_keys: u32,
}

/// What a counting program is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TallyOn {
    /// A tracepoint: the program reads the record.
    Tracepoint,
    /// A kprobe: the program reads the registers.
    KernelProbe,
    /// A uprobe: the program reads the registers; attached through a uprobe_multi link where
    /// the kernel has them ([`Tally::attach_user`]).
    UserProbe,
}

/// The program loaded for one probe, with its maps.
pub struct Tally {
    ebpf: Ebpf,
    tracepoint: bool,
    /// The program as aya loaded it, for perf events (loaded when first needed, when it was
    /// loaded for links).
    for_perf_events: bool,
    /// The program loaded for uprobe_multi links, where the kernel took it.
    for_links: Option<OwnedFd>,
    rows: TallyRows,
    filtered: bool,
    max_keys: u32,
    /// The perf events or links the program is attached through, once attached (a return
    /// probe watched at its function's exits counts at each of them).
    attached: Vec<OwnedFd>,
}

/// What reads a program's map of keys, apart from the program (while the trace runs).
#[derive(Clone)]
pub struct TallyRows {
    map: Arc<PerCpuHashMap<MapData, [u64; 6], [u64; 4]>>,
    keyed_by_value: bool,
    keyed_by: bool,
}

impl TallyRows {
    /// Every key's figures so far, each summed over the CPUs, as the figures of `probe`.
    pub fn rows(&self, probe: usize) -> Result<Vec<KeyedTally>, String> {
        let mut rows = Vec::new();
        for entry in self.map.iter() {
            let (key, per_cpu) = entry.map_err(|e| why("reading the map `tallies`", e))?;
            let Some(row) = row(probe, &key, per_cpu.iter(), self.keyed_by_value, self.keyed_by) else { continue };
            rows.push(row);
        }
        Ok(rows)
    }
}

/// Why loading or attaching failed, in words.
fn why(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The values of the program's read-only globals for one probe (see aggregate.bpf.c), kept
/// while a [`Loader`] loads it.
pub struct Globals {
    key_pid: u32,
    key_tid: u32,
    key_comm: u32,
    only_pid: u32,
    own_pid: u32,
    front_pid: u32,
    only_comm_set: u32,
    only_comm: [u8; 16],
    value: [u8; layout::SOURCE_BYTES],
    by_value: [u8; layout::SOURCE_BYTES],
    filter_len: u32,
    filter_comm: u32,
    filter: Vec<u8>,
    max_keys: u32,
}

impl Globals {
    /// The globals of a program counting as `config` asks; why it cannot.
    pub fn of(config: &TallyConfig) -> Result<Globals, String> {
        if config.filter.len() > filter::MAX_TESTS {
            return Err(format!("{} tests (the BPF program runs at most {})", config.filter.len(), filter::MAX_TESTS));
        }
        let flag = |b: bool| u32::from(b);
        let mut only_comm = [0u8; 16];
        if let Some(c) = &config.only_comm {
            let n = c.len().min(15);
            only_comm[..n].copy_from_slice(&c.as_bytes()[..n]);
        }
        Ok(Globals {
            key_pid: flag(config.by.pid),
            key_tid: flag(config.by.tid),
            key_comm: flag(config.by.comm),
            only_pid: config.only_pid.unwrap_or(0),
            own_pid: config.own_pid,
            front_pid: config.front_pid,
            only_comm_set: flag(config.only_comm.is_some()),
            only_comm,
            value: layout::source(config.value.as_ref()),
            by_value: layout::source(config.by_value.as_ref()),
            filter_len: config.filter.len() as u32,
            filter_comm: flag(config.filter.iter().any(|t| matches!(t, filter::Test::Comm { .. }))),
            filter: layout::tests(&config.filter),
            max_keys: config.max_keys,
        })
    }
}

/// Loads counting programs, any number, with one BPF loader: making one reads and parses
/// the kernel's whole type information (several MiB), which the program does not use (it
/// reads no kernel type), about 20 ms each time.
pub struct Loader<'a> {
    inner: EbpfLoader<'a>,
    lazy_keys: bool,
}

impl Default for Loader<'_> {
    fn default() -> Self {
        let mut inner = EbpfLoader::new();
        inner.btf(None);
        Loader { inner, lazy_keys: running_kernel_allows_lazy_keys() }
    }
}

impl<'a> Loader<'a> {
    /// Load the program for a probe (a tracepoint, a kprobe or a uprobe: `on`) with its
    /// `globals` and the figures `config` asks for, checked by the kernel's verifier; nothing
    /// runs until it is attached. Its map's entries are allocated as keys arrive where the
    /// kernel allows it, up front elsewhere.
    pub fn load(&mut self, globals: &'a Globals, config: &TallyConfig, on: TallyOn) -> Result<Tally, String> {
        if self.lazy_keys {
            // A kernel that refuses it all the same (a real-time one may) gets the map
            // allocated up front; any other refusal repeats there, and is said from there.
            if let Ok(tally) = self.load_object(LAZY_OBJECT, globals, config, on) {
                return Ok(tally);
            }
        }
        self.load_object(OBJECT, globals, config, on)
    }

    /// [`Loader::load`] from the compiled `object`.
    fn load_object(
        &mut self,
        object: &[u8],
        g: &'a Globals,
        config: &TallyConfig,
        on: TallyOn,
    ) -> Result<Tally, String> {
        let tracepoint = on == TallyOn::Tracepoint;
        self.inner
            .override_global("key_pid", &g.key_pid, true)
            .override_global("key_tid", &g.key_tid, true)
            .override_global("key_comm", &g.key_comm, true)
            .override_global("only_pid", &g.only_pid, true)
            .override_global("own_pid", &g.own_pid, true)
            .override_global("front_pid", &g.front_pid, true)
            .override_global("only_comm_set", &g.only_comm_set, true)
            .override_global("only_comm", &g.only_comm, true)
            .override_global("value", &g.value[..], true)
            .override_global("by_value", &g.by_value[..], true)
            .override_global("filter_len", &g.filter_len, true)
            .override_global("filter_comm", &g.filter_comm, true)
            .override_global("filter", &g.filter[..], true)
            .map_max_entries("tallies", g.max_keys);
        let mut ebpf = self.inner.load(object).map_err(|e| why("loading the BPF object", e))?;
        // For links if the kernel takes it so (and then for perf events only if a link
        // cannot be made); any refusal is said from aya's loading, which has its reasons.
        let for_links = match on {
            TallyOn::UserProbe => multi::load(&ebpf, object, program_name(tracepoint)).ok(),
            _ => None,
        };
        if for_links.is_none() {
            load_for_perf_events(&mut ebpf, tracepoint)?;
        }
        let map = ebpf.take_map("tallies").ok_or("no map `tallies` in the BPF object")?;
        let map = PerCpuHashMap::try_from(map).map_err(|e| why("the map `tallies`", e))?;
        let rows = TallyRows {
            map: Arc::new(map),
            keyed_by_value: config.value.is_some(),
            keyed_by: config.by_value.is_some(),
        };
        Ok(Tally {
            ebpf,
            tracepoint,
            for_perf_events: for_links.is_none(),
            for_links,
            rows,
            filtered: !config.filter.is_empty(),
            max_keys: config.max_keys,
            attached: Vec::new(),
        })
    }
}

impl Tally {
    /// Load the program for a probe alone (see [`Loader::load`]).
    pub fn load(config: &TallyConfig, on: TallyOn) -> Result<Tally, String> {
        let globals = Globals::of(config)?;
        Loader::default().load(&globals, config, on)
    }

    /// Attach the program to the tracefs event whose id is `id`, and turn it on (one program
    /// may count the hits of several events).
    pub fn attach(&mut self, id: u64) -> Result<(), String> {
        if !self.for_perf_events {
            load_for_perf_events(&mut self.ebpf, self.tracepoint)?;
            self.for_perf_events = true;
        }
        let name = program_name(self.tracepoint);
        let program = self.ebpf.program(name).ok_or_else(|| format!("no program {name}"))?;
        let fd = program.fd().map_err(|e| why("the BPF program", e))?;
        let mut attr = sys::perf_event_attr {
            type_: sys::PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<sys::perf_event_attr>() as u32,
            config: id,
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = 1;
        attr.set_disabled(1);
        // One event on CPU 0 for every process: a program attached to an event runs at its
        // every hit, on any CPU.
        // SAFETY: perf_event_open reads (and may write the expected size into) the attribute
        // struct we own; it returns a new fd.
        let raw = unsafe { perf_event_open(&mut attr, -1, 0, -1, sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong) };
        if raw < 0 {
            return Err(why("perf_event_open", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a perf fd we own and the fd of a loaded program, both open for the call.
        if unsafe { ioctls::SET_BPF(event.as_raw_fd(), fd.as_fd().as_raw_fd() as u32) } != 0 {
            return Err(why("PERF_EVENT_IOC_SET_BPF", std::io::Error::last_os_error()));
        }
        // SAFETY: a perf fd we own.
        if unsafe { ioctls::ENABLE(event.as_raw_fd(), 0) } != 0 {
            return Err(why("PERF_EVENT_IOC_ENABLE", std::io::Error::last_os_error()));
        }
        self.attached.push(event);
        Ok(())
    }

    /// Attach the program (loaded for [`TallyOn::UserProbe`]) to all of `places` through one
    /// uprobe_multi link, and so turn it on; why not (a kernel before Linux 6.6 has no such
    /// links: [`Tally::attach`] then attaches it to each place's event).
    pub fn attach_user(&mut self, places: &UserPlaces) -> Result<(), String> {
        let program = self.for_links.as_ref().ok_or("the kernel has no uprobe_multi links")?;
        let link = multi::link(program.as_fd(), places).map_err(|e| why("a uprobe_multi link", e))?;
        self.attached.push(link);
        Ok(())
    }

    /// Whether it is attached through uprobe_multi links: the kernel does not count the hits
    /// of the tracefs events it was not attached to.
    pub fn linked(&self) -> bool {
        self.for_links.is_some() && !self.attached.is_empty() && !self.for_perf_events
    }

    /// Every key's figures so far, each summed over the CPUs, as the figures of `probe`.
    pub fn rows(&self, probe: usize) -> Result<Vec<KeyedTally>, String> {
        self.rows.rows(probe)
    }

    /// Hits its map counted so far (0 when it cannot be read).
    pub fn counted(&self) -> u64 {
        self.rows(0).map_or(0, |rows| rows.iter().map(|r| r.count).sum())
    }

    /// What reads its map of keys while the trace runs.
    pub fn reader(&self) -> TallyRows {
        self.rows.clone()
    }

    /// Keys its map holds.
    pub fn max_keys(&self) -> u32 {
        self.max_keys
    }

    /// Hits not counted: their key was new and the map full.
    pub fn dropped(&self) -> u64 {
        self.counter("dropped")
    }

    /// Hits not counted: their key was new and the kernel found no memory for its entry
    /// (a map whose entries are allocated as keys arrive).
    pub fn unallocated(&self) -> u64 {
        self.counter("unallocated")
    }

    /// Whether its map's entries were all allocated when it was made (else as keys arrive).
    pub fn allocated_up_front(&self) -> Result<bool, String> {
        const NO_PREALLOC: u32 = 1;
        let info = self.rows.map.map().info().map_err(|e| why("the map `tallies`", e))?;
        Ok(info.map_flags() & NO_PREALLOC == 0)
    }

    /// Whether it counts only the hits that pass a filter.
    pub fn filtered(&self) -> bool {
        self.filtered
    }

    /// Every hit of its places, in every process (dprobe's own too): the kernel's count of
    /// them, as its profile files give it for tracefs events.
    pub fn seen(&self) -> u64 {
        self.counter("seen")
    }

    /// Hits that did not pass the filter.
    pub fn rejected(&self) -> u64 {
        self.counter("rejected")
    }

    /// The per-CPU counter `name`, summed.
    fn counter(&self, name: &str) -> u64 {
        let Some(map) = self.ebpf.map(name) else { return 0 };
        let Ok(map) = PerCpuArray::<_, u64>::try_from(map) else { return 0 };
        map.get(&0, 0).map_or(0, |per_cpu| per_cpu.iter().sum())
    }
}

/// The program's name in the object: it reads a tracepoint's record, or the registers.
fn program_name(tracepoint: bool) -> &'static str {
    if tracepoint {
        "dprobe_tally_record"
    } else {
        "dprobe_tally_regs"
    }
}

/// Load the program of `ebpf` as aya does, for perf events; the verifier's refusal, said.
fn load_for_perf_events(ebpf: &mut Ebpf, tracepoint: bool) -> Result<(), String> {
    let name = program_name(tracepoint);
    let program = ebpf.program_mut(name).ok_or_else(|| format!("no program {name} in the BPF object"))?;
    let verified = if tracepoint {
        let p: &mut TracePoint = program.try_into().map_err(|e| why(name, e))?;
        p.load()
    } else {
        let p: &mut KProbe = program.try_into().map_err(|e| why(name, e))?;
        p.load()
    };
    verified.map_err(|e| why("the kernel refused the BPF program", error_chain(&e)))
}

/// The row of one key (`[pid | tid << 32, comm, comm, value, by, faulted | by_faulted << 32]`,
/// as the program lays it out) from its per-CPU figures; `None` when no CPU counted a hit.
fn row<'a>(
    probe: usize,
    key: &[u64; 6],
    per_cpu: impl Iterator<Item = &'a [u64; 4]>,
    keyed_by_value: bool,
    keyed_by: bool,
) -> Option<KeyedTally> {
    let mut count = 0u64;
    let (mut min, mut max, mut sum) = (i64::MAX, i64::MIN, 0i128);
    for [n, lo, hi, total] in per_cpu {
        if *n == 0 {
            continue;
        }
        count += n;
        min = min.min(*lo as i64);
        max = max.max(*hi as i64);
        sum += i128::from(*total as i64);
    }
    if count == 0 {
        return None;
    }
    let mut comm: Vec<u8> = key[1].to_le_bytes().into_iter().chain(key[2].to_le_bytes()).collect();
    comm.truncate(comm.iter().position(|&b| b == 0).unwrap_or(comm.len()));
    let faulted = key[5] & 0xffff_ffff != 0;
    let by_faulted = key[5] >> 32 != 0;
    Some(KeyedTally {
        probe,
        pid: key[0] as u32,
        tid: (key[0] >> 32) as u32,
        comm,
        value: (keyed_by_value && !faulted).then_some(key[3] as i64),
        by: (keyed_by && !by_faulted).then_some(key[4] as i64),
        count,
        min,
        max,
        sum,
    })
}

/// An error with its causes (aya puts the verifier's log in one).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{lazy_keys_allowed, row};

    #[test]
    fn maps_that_allocate_as_keys_arrive_from_linux_6_1() {
        for release in ["6.1.0-37-amd64", "6.18.0", "6.1", "7.0.0-rc1"] {
            assert!(lazy_keys_allowed(release), "{release}");
        }
        for release in ["6.0.19", "5.15.0-140-generic", "4.19.0-27-amd64", "", "six"] {
            assert!(!lazy_keys_allowed(release), "{release}");
        }
    }

    #[test]
    fn a_key_summed_over_cpus() {
        let mut key = [0u64; 6];
        key[0] = 7 | (9 << 32);
        key[1] = u64::from_le_bytes(*b"worker-1");
        key[3] = (-2048i64) as u64;
        let cpus = [
            [2, -2100i64 as u64, -2050i64 as u64, -4150i64 as u64],
            [0, 0, 0, 0],
            [1, -2060i64 as u64, -2048i64 as u64, -2060i64 as u64],
        ];
        key[4] = (-5i64) as u64;
        let r = row(0, &key, cpus.iter(), true, true).unwrap();
        assert_eq!((r.pid, r.tid, r.comm.as_slice()), (7, 9, &b"worker-1"[..]));
        assert_eq!((r.value, r.count, r.min, r.max), (Some(-2048), 3, -2100, -2048), "the idle CPU ignored");
        assert_eq!((r.by, r.sum), (Some(-5), -6210));
        assert_eq!(row(0, &key, cpus.iter(), true, false).unwrap().by, None, "not keyed by a value");
        assert_eq!(row(0, &key, [[0u64; 4]].iter(), true, true), None, "no hit anywhere");
        key[5] = 1 << 32;
        assert_eq!(row(0, &key, cpus.iter(), true, true).unwrap().by, None, "faulted: no value");
        key[5] = 1;
        assert_eq!(row(0, &key, cpus.iter(), true, true).unwrap().value, None, "faulted: no value");
    }
}
