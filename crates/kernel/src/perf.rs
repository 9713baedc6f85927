//! perf ring buffers for tracepoint events: one `perf_event_open` per event and CPU, the
//! events of a CPU all writing into that CPU's first buffer (`PERF_EVENT_IOC_SET_OUTPUT`),
//! read without copies through `mmap`. A buffer that fills up makes the kernel drop records
//! and report how many (`PERF_RECORD_LOST`): memory stays bounded whatever the event rate.
//! `perf_event_attr`, the ioctls and the control page's layout come from `perf-event-open-sys`,
//! generated from the kernel's headers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use perf_event_open_sys::{bindings as sys, ioctls, perf_event_open};

use crate::error::KernelError;

const RECORD_LOST: u32 = sys::PERF_RECORD_LOST;
const RECORD_SAMPLE: u32 = sys::PERF_RECORD_SAMPLE;

/// Bytes of data per CPU buffer unless asked otherwise: 1 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = 1 << 20;
/// The smallest and largest data sizes a CPU buffer may have (the kernel wants a power of two
/// of pages).
pub const BUFFER_BYTES: std::ops::RangeInclusive<usize> = PAGE..=(1 << 30);
const PAGE: usize = 4096;

/// Whether `bytes` can be a CPU buffer's data size; the reason when not.
pub fn check_buffer_size(bytes: usize) -> Result<(), String> {
    if !bytes.is_power_of_two() || !BUFFER_BYTES.contains(&bytes) {
        return Err(format!(
            "a perf buffer holds a power of two of 4 KiB pages, from 4K to 1G per CPU (not {bytes} bytes)"
        ));
    }
    Ok(())
}

/// The stacks each record carries, when asked for: the kernel's callchain (its kernel part),
/// and the user registers and a copy of the user stack to unwind in dprobe (the kernel's own
/// user callchain follows frame pointers, which code built without them does not keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackSampling {
    /// The kernel stack (`PERF_SAMPLE_CALLCHAIN`, user part excluded).
    pub kernel: bool,
    /// The user registers and stack bytes (`PERF_SAMPLE_REGS_USER`, `PERF_SAMPLE_STACK_USER`).
    pub user: bool,
    /// The most kernel frames (`sample_max_stack`).
    pub depth: u16,
}

/// Bytes of user stack copied with each record: the frames of a deep call path, within the
/// 64 KiB a record may hold.
pub const USER_STACK_BYTES: u32 = 16 * 1024;

/// The user registers a record carries: `bp`, `sp`, `ip` (bits 6, 7 and 8 of the x86 perf
/// register numbering), in that order.
const USER_REGS_MASK: u64 = (1 << 6) | (1 << 7) | (1 << 8);

/// The stacks of one sample.
#[derive(Debug, Default, Clone, Copy)]
pub struct SampleStacks<'a> {
    /// The callchain: 8-byte entries, with the kernel's context markers.
    pub callchain: &'a [u8],
    /// The user registers `[bp, sp, ip]`, when the thread was in user mode at some point.
    pub user_regs: Option<[u64; 3]>,
    /// The copy of the user stack from `sp` on.
    pub user_stack: &'a [u8],
}

/// Markers in a callchain: the entries after one are in the kernel / in user space.
const CONTEXT_KERNEL: u64 = -128i64 as u64;
/// The smallest marker value (`PERF_CONTEXT_MAX`).
const CONTEXT_MAX: u64 = -4095i64 as u64;

impl SampleStacks<'_> {
    /// The kernel addresses of the callchain, innermost first, into `out`.
    pub fn kernel_frames(&self, out: &mut Vec<u64>) {
        out.clear();
        let mut in_kernel = false;
        for entry in self.callchain.chunks_exact(8) {
            let ip = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            if ip >= CONTEXT_MAX {
                in_kernel = ip == CONTEXT_KERNEL;
            } else if in_kernel {
                out.push(ip);
            }
        }
    }

    /// The 8-byte word at user address `addr`, if the copy of the stack holds it.
    pub fn user_word(&self, addr: u64) -> Option<u64> {
        let sp = self.user_regs?[1];
        let at = usize::try_from(addr.checked_sub(sp)?).ok()?;
        Some(u64::from_le_bytes(self.user_stack.get(at..at.checked_add(8)?)?.try_into().ok()?))
    }
}

/// One record.
#[derive(Debug)]
pub enum Record<'a> {
    /// A sample: the thread group (process), the thread, the CPU, the time (ns of
    /// `CLOCK_MONOTONIC`) and the event's raw bytes.
    Sample {
        /// Process id.
        pid: u32,
        /// Thread id.
        tid: u32,
        /// CPU.
        cpu: u32,
        /// Time.
        time: u64,
        /// The raw record, starting with the common fields.
        raw: &'a [u8],
        /// Its stacks, when asked for.
        stacks: SampleStacks<'a>,
    },
    /// The kernel dropped this many records: the buffer was full.
    Lost(u64),
}

/// A CPU's buffer.
struct Ring {
    fd: OwnedFd,
    /// The control page and the data area, shared with the kernel; unmapped on drop.
    map: MmapRaw,
    /// Copy of a record that wraps around the end of the buffer.
    scratch: Vec<u8>,
    layout: Layout,
}

/// The rings of a set of events over every CPU.
pub struct Rings {
    rings: Vec<Ring>,
    /// Non-leader fds (kept open; they write into the rings).
    others: Vec<OwnedFd>,
}

/// What a sample holds beyond the common fields, to parse it.
#[derive(Clone, Copy, Default)]
struct Layout {
    callchain: bool,
    user: bool,
}

fn online_cpus() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_else(|_| "0".into());
    let mut cpus = Vec::new();
    for part in text.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<i32>().ok()),
        }
    }
    cpus
}

fn open_event(id: u64, cpu: i32, pid: i32, data_bytes: usize, stacks: Option<StackSampling>) -> io::Result<OwnedFd> {
    let mut attr = sys::perf_event_attr {
        type_: sys::PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<sys::perf_event_attr>() as u32,
        config: id,
        sample_type: u64::from(
            sys::PERF_SAMPLE_TID | sys::PERF_SAMPLE_TIME | sys::PERF_SAMPLE_CPU | sys::PERF_SAMPLE_RAW,
        ),
        ..Default::default()
    };
    if let Some(s) = stacks {
        if s.kernel {
            attr.sample_type |= u64::from(sys::PERF_SAMPLE_CALLCHAIN);
            attr.set_exclude_callchain_user(1);
            attr.sample_max_stack = s.depth;
        }
        if s.user {
            attr.sample_type |= u64::from(sys::PERF_SAMPLE_REGS_USER | sys::PERF_SAMPLE_STACK_USER);
            attr.sample_regs_user = USER_REGS_MASK;
            attr.sample_stack_user = USER_STACK_BYTES;
        }
    }
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_watermark = (data_bytes / 8) as u32;
    attr.set_disabled(1);
    attr.set_watermark(1);
    // Sample times on CLOCK_MONOTONIC, the clock every engine stamps events with (the
    // default perf clock is the scheduler's, which need not agree with it).
    attr.set_use_clockid(1);
    attr.clockid = libc::CLOCK_MONOTONIC;
    // The kernel's count of this event's records that found its buffer full, read at the
    // end (see [`Rings::lost`]); kernels before 6.0 refuse the read format.
    attr.read_format = u64::from(sys::PERF_FORMAT_LOST);
    // SAFETY: perf_event_open reads (and may write the expected size into) the attribute
    // struct we own; it returns a new fd.
    let mut fd = unsafe { perf_event_open(&mut attr, pid, cpu, -1, 0) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        attr.read_format = 0;
        // SAFETY: as above.
        fd = unsafe { perf_event_open(&mut attr, pid, cpu, -1, 0) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The result of a perf ioctl.
fn checked(r: libc::c_int) -> io::Result<()> {
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Rings {
    /// Open `events` (tracepoint ids with their filters) on every CPU, for every process
    /// (`pid` -1) or one thread, each CPU's buffer holding `data_bytes` (see
    /// [`check_buffer_size`]).
    /// With `stacks`, each record carries them.
    pub fn open(
        events: &[(u64, Option<&str>)],
        pid: i32,
        data_bytes: usize,
        stacks: Option<StackSampling>,
    ) -> Result<Rings, KernelError> {
        let layout = stacks.map_or(Layout::default(), |s| Layout { callchain: s.kernel, user: s.user });
        check_buffer_size(data_bytes).map_err(|e| KernelError::os("--buffer-size", io::Error::other(e)))?;
        let mut rings = Vec::new();
        let mut others = Vec::new();
        let cpus = if pid == -1 { online_cpus() } else { vec![-1] };
        for cpu in cpus {
            let mut leader: Option<Ring> = None;
            for &(id, filter) in events {
                let fd = open_event(id, cpu, pid, data_bytes, stacks).map_err(|e| perf_error(e, id))?;
                if let Some(f) = filter {
                    let text = std::ffi::CString::new(f).map_err(|e| KernelError::os("filter", io::Error::other(e)))?;
                    // SAFETY: a perf fd we own, and a NUL-terminated string that outlives the call.
                    checked(unsafe { ioctls::SET_FILTER(fd.as_raw_fd(), text.as_ptr().cast_mut()) }).map_err(|e| {
                        KernelError::Refused {
                            definition: format!("filter `{f}`"),
                            reason: format!("{e} (the kernel's filter syntax: FIELD OP VALUE joined by && and ||)"),
                        }
                    })?;
                }
                match &leader {
                    None => leader = Some(Ring::map(fd, data_bytes, layout)?),
                    Some(l) => {
                        // SAFETY: both are perf fds we own; the leader's buffer is mapped.
                        checked(unsafe { ioctls::SET_OUTPUT(fd.as_raw_fd(), l.fd.as_raw_fd()) })
                            .map_err(|e| KernelError::os("PERF_EVENT_IOC_SET_OUTPUT", e))?;
                        others.push(fd);
                    }
                }
            }
            rings.extend(leader);
        }
        Ok(Rings { rings, others })
    }

    /// Start recording.
    pub fn enable(&self) -> Result<(), KernelError> {
        for fd in self.rings.iter().map(|r| &r.fd).chain(&self.others) {
            // SAFETY: a perf fd we own.
            checked(unsafe { ioctls::ENABLE(fd.as_raw_fd(), 0) })
                .map_err(|e| KernelError::os("PERF_EVENT_IOC_ENABLE", e))?;
        }
        Ok(())
    }

    /// Wait up to `timeout_ms` for data, then hand the records to `each` in time order (see
    /// [`Rings::drain`]). Returns the number of records. A signal ends the wait early.
    pub fn poll(&mut self, timeout_ms: i32, each: &mut dyn FnMut(Record<'_>)) -> Result<usize, KernelError> {
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .iter()
            .map(|r| libc::pollfd { fd: r.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: a valid array of pollfds we own.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(KernelError::os("poll", e));
            }
        }
        Ok(self.drain(each))
    }

    /// Hand the records now in the buffers to `each`, all CPUs merged in time order, as `perf
    /// script` does. Each CPU's buffer is in time order, but a thread moves between CPUs: read
    /// one buffer after another, its later records could come before its earlier ones.
    ///
    /// The records stamped after the read began stay in their buffers for the next read. A
    /// record is stamped before the kernel writes it, and written before the thread goes on:
    /// one stamped before the read began and not yet in its buffer can only be of another
    /// thread, at the same moment, so whatever happened before an event (in its thread, or in
    /// a thread it woke) is handed over before it. A second read takes the records held back
    /// by the first, which were all written before it began.
    pub fn drain(&mut self, each: &mut dyn FnMut(Record<'_>)) -> usize {
        let first = self.drain_before(monotonic_ns(), each);
        first + self.drain_before(monotonic_ns(), each)
    }

    /// Hand the records stamped before `limit` to `each`, in time order.
    fn drain_before(&mut self, limit: u64, each: &mut dyn FnMut(Record<'_>)) -> usize {
        let mut cursors: Vec<Cursor> = self.rings.iter().map(Ring::cursor).collect();
        let mut next = BinaryHeap::new();
        let due = |ring: &Ring, cursor: &Cursor| ring.front_time(cursor).filter(|&t| t < limit);
        for (i, (ring, cursor)) in self.rings.iter().zip(&cursors).enumerate() {
            if let Some(t) = due(ring, cursor) {
                next.push(Reverse((t, i)));
            }
        }
        let mut n = 0;
        while let Some(Reverse((_, i))) = next.pop() {
            let (ring, cursor) = (&mut self.rings[i], &mut cursors[i]);
            ring.take(cursor, each);
            n += 1;
            if let Some(t) = due(ring, cursor) {
                next.push(Reverse((t, i)));
            }
        }
        for (ring, cursor) in self.rings.iter().zip(&cursors) {
            ring.head_tail().1.store(cursor.at, Ordering::Release);
        }
        n
    }

    /// The kernel's own count of the records it could not write because a buffer was full,
    /// all events and CPUs together (`PERF_FORMAT_LOST`; `None` where the kernel does not
    /// keep it). The buffers report a loss (`PERF_RECORD_LOST`) only when a later record of
    /// their CPU fits: the losses of a burst followed by quiet would otherwise go unsaid.
    pub fn lost(&self) -> Option<u64> {
        let mut lost = 0;
        for fd in self.rings.iter().map(|r| &r.fd).chain(&self.others) {
            // `{ value, lost }`, as read_format asked.
            let mut values = [0u64; 2];
            // SAFETY: reads at most the 16 bytes of `values` from a perf fd we own.
            let n = unsafe { libc::read(fd.as_raw_fd(), values.as_mut_ptr().cast(), std::mem::size_of_val(&values)) };
            if n != std::mem::size_of_val(&values) as isize {
                return None;
            }
            lost += values[1];
        }
        Some(lost)
    }
}

fn perf_error(e: io::Error, id: u64) -> KernelError {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => KernelError::Permission(
            "perf_event_open refused: system-wide tracing needs root (or CAP_PERFMON, with \
             kernel.perf_event_paranoid allowing it)"
                .into(),
        ),
        Some(libc::ENOENT) | Some(libc::ENODEV) => KernelError::Unsupported {
            what: format!("event id {id}"),
            why: "this kernel has no perf tracepoint events (CONFIG_PERF_EVENTS)".into(),
        },
        _ => KernelError::os("perf_event_open", e),
    }
}

impl Ring {
    fn map(fd: OwnedFd, data_bytes: usize, layout: Layout) -> Result<Ring, KernelError> {
        let map = MmapOptions::new().len(PAGE + data_bytes).map_raw(&fd).map_err(|e| {
            let what = format!(
                "mapping a perf buffer of {} KiB per CPU (a smaller --buffer-size, or a larger \
                 kernel.perf_event_mlock_kb, may fit)",
                data_bytes / 1024
            );
            KernelError::os(what, e)
        })?;
        Ok(Ring { fd, map, scratch: Vec::with_capacity(PAGE), layout })
    }

    /// `data_head` (written by the kernel) and `data_tail` (by us), in the control page.
    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        let head = std::mem::offset_of!(sys::perf_event_mmap_page, data_head);
        let tail = std::mem::offset_of!(sys::perf_event_mmap_page, data_tail);
        // SAFETY: `data_head` and `data_tail` of the mapped control page (a
        // `struct perf_event_mmap_page`) are 8-byte aligned u64s the kernel and we update
        // atomically; the mapping lives as long as `self`.
        unsafe {
            (
                &*(self.map.as_mut_ptr().add(head) as *const AtomicU64),
                &*(self.map.as_mut_ptr().add(tail) as *const AtomicU64),
            )
        }
    }

    /// Where reading this buffer begins, and how far the kernel has written.
    fn cursor(&self) -> Cursor {
        let (head, tail) = self.head_tail();
        Cursor { head: head.load(Ordering::Acquire), at: tail.load(Ordering::Relaxed) }
    }

    /// The data area, after the control page.
    fn data(&self) -> &[u8] {
        // SAFETY: the data area follows the control page, mapped with `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr().add(PAGE), self.map.len() - PAGE) }
    }

    /// The time of the record at `cursor` (0 for a record that has none, to be taken at once);
    /// `None` at the end of what the kernel wrote, or at a record that cannot be read.
    fn front_time(&self, cursor: &Cursor) -> Option<u64> {
        if cursor.at >= cursor.head {
            return None;
        }
        let data = self.data();
        let off = (cursor.at % data.len() as u64) as usize;
        let mut header = [0u8; 24];
        for (i, byte) in header.iter_mut().enumerate() {
            *byte = data[(off + i) % data.len()];
        }
        let kind = u32::from_le_bytes(header[..4].try_into().expect("4"));
        let len = u16::from_le_bytes(header[6..8].try_into().expect("2"));
        match kind {
            _ if len < 8 => None, // corrupt: stop here rather than loop
            RECORD_SAMPLE if len >= 32 => Some(u64::from_le_bytes(header[16..24].try_into().expect("8"))),
            _ => Some(0),
        }
    }

    /// Hand the record at `cursor` (which [`Ring::front_time`] found) to `each`, and move past it.
    fn take(&mut self, cursor: &mut Cursor, each: &mut dyn FnMut(Record<'_>)) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let data = self.data();
        let off = (cursor.at % data.len() as u64) as usize;
        let header = read_wrapped(data, off, 8, &mut scratch);
        let kind = u32::from_le_bytes(header[..4].try_into().expect("4"));
        let len = u16::from_le_bytes(header[6..8].try_into().expect("2")) as usize;
        let body = read_wrapped(data, off, len, &mut scratch);
        match kind {
            RECORD_SAMPLE if body.len() >= 32 => {
                let word = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4"));
                let (pid, tid) = (word(8), word(12));
                let time = u64::from_le_bytes(body[16..24].try_into().expect("8"));
                let cpu = word(24);
                if let Some((raw, stacks)) = sample_rest(body, self.layout) {
                    each(Record::Sample { pid, tid, cpu, time, raw, stacks });
                }
            }
            RECORD_LOST if body.len() >= 24 => {
                each(Record::Lost(u64::from_le_bytes(body[16..24].try_into().expect("8"))));
            }
            _ => {}
        }
        cursor.at += len as u64;
        self.scratch = scratch;
    }
}

/// A read of one buffer: the next record's place, and the end of what the kernel wrote.
struct Cursor {
    at: u64,
    head: u64,
}

/// `CLOCK_MONOTONIC` in ns, the clock the records are stamped with.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The raw data and the stacks of a sample record `body` (its fields in the kernel's order:
/// callchain, raw, user registers, user stack); `None` when it is cut short.
fn sample_rest(body: &[u8], layout: Layout) -> Option<(&[u8], SampleStacks<'_>)> {
    let u64_at = |o: usize| body.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8")));
    let mut at = 32;
    let mut stacks = SampleStacks::default();
    if layout.callchain {
        let nr = usize::try_from(u64_at(at)?).ok()?;
        stacks.callchain = body.get(at + 8..at + 8 + nr.checked_mul(8)?)?;
        at += 8 + nr * 8;
    }
    let raw_len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
    let raw = body.get(at + 4..at + 4 + raw_len)?;
    at += 4 + raw_len;
    if layout.user {
        let abi = u64_at(at)?;
        at += 8;
        if abi != 0 {
            let regs = [u64_at(at)?, u64_at(at + 8)?, u64_at(at + 16)?];
            stacks.user_regs = Some(regs);
            at += 24;
        }
        let size = usize::try_from(u64_at(at)?).ok()?;
        at += 8;
        if size > 0 {
            let copied = body.get(at..at + size)?;
            let dynamic = usize::try_from(u64_at(at + size)?).ok()?;
            stacks.user_stack = &copied[..dynamic.min(size)];
        }
    }
    Some((raw, stacks))
}

/// `len` bytes at `off` in the circular `data`, copied into `scratch` when they wrap.
fn read_wrapped<'a>(data: &'a [u8], off: usize, len: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if off + len <= data.len() {
        &data[off..off + len]
    } else {
        scratch.clear();
        scratch.extend_from_slice(&data[off..]);
        scratch.extend_from_slice(&data[..len - (data.len() - off)]);
        scratch
    }
}
