//! perf ring buffers for tracepoint events: one `perf_event_open` per event and CPU, the
//! events of a CPU all writing into that CPU's first buffer (`PERF_EVENT_IOC_SET_OUTPUT`),
//! read without copies through `mmap`. A buffer that fills up makes the kernel drop records
//! and report how many (`PERF_RECORD_LOST`): memory stays bounded whatever the event rate.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::KernelError;

const PERF_TYPE_TRACEPOINT: u32 = 2;
const SAMPLE_TID: u64 = 1 << 1;
const SAMPLE_TIME: u64 = 1 << 2;
const SAMPLE_CPU: u64 = 1 << 7;
const SAMPLE_RAW: u64 = 1 << 10;
const FLAG_DISABLED: u64 = 1 << 0;
const FLAG_WATERMARK: u64 = 1 << 14;
const IOC_ENABLE: libc::c_ulong = 0x2400;
const IOC_SET_OUTPUT: libc::c_ulong = 0x2405;
const IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
const RECORD_LOST: u32 = 2;
const RECORD_SAMPLE: u32 = 9;

/// Data pages per CPU buffer (a power of two): 256 KiB.
const DATA_PAGES: usize = 64;
const PAGE: usize = 4096;

/// The kernel's `perf_event_attr` (version 8, 136 bytes), the fields dprobe sets.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_watermark: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
    aux_sample_size: u32,
    reserved_3: u32,
    sig_data: u64,
    config3: u64,
}

/// One record.
#[derive(Debug)]
pub enum Record<'a> {
    /// A sample: the thread group (process), the thread, the CPU, the time (ns, the
    /// kernel's clock) and the event's raw bytes.
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
    },
    /// The kernel dropped this many records: the buffer was full.
    Lost(u64),
}

/// A CPU's buffer.
struct Ring {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
    /// Copy of a record that wraps around the end of the buffer.
    scratch: Vec<u8>,
}

/// The rings of a set of events over every CPU.
pub struct Rings {
    rings: Vec<Ring>,
    /// Non-leader fds (kept open; they write into the rings).
    others: Vec<OwnedFd>,
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

fn open_event(id: u64, cpu: i32, pid: i32) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        sample_type: SAMPLE_TID | SAMPLE_TIME | SAMPLE_CPU | SAMPLE_RAW,
        flags: FLAG_DISABLED | FLAG_WATERMARK,
        wakeup_watermark: (DATA_PAGES * PAGE / 8) as u32,
        ..PerfEventAttr::default()
    };
    // SAFETY: perf_event_open reads the attribute struct we own; it returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr as *const PerfEventAttr, pid, cpu, -1, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: perf ioctls on a perf fd; pointer arguments (SET_FILTER) point to live memory.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Rings {
    /// Open `events` (tracepoint ids with their filters) on every CPU, for every process
    /// (`pid` -1) or one thread.
    pub fn open(events: &[(u64, Option<&str>)], pid: i32) -> Result<Rings, KernelError> {
        let mut rings = Vec::new();
        let mut others = Vec::new();
        let cpus = if pid == -1 { online_cpus() } else { vec![-1] };
        for cpu in cpus {
            let mut leader: Option<Ring> = None;
            for &(id, filter) in events {
                let fd = open_event(id, cpu, pid).map_err(|e| perf_error(e, id))?;
                if let Some(f) = filter {
                    let text = std::ffi::CString::new(f).map_err(|e| KernelError::os("filter", io::Error::other(e)))?;
                    ioctl(&fd, IOC_SET_FILTER, text.as_ptr() as libc::c_ulong).map_err(|e| KernelError::Refused {
                        definition: format!("filter `{f}`"),
                        reason: format!("{e} (the kernel's filter syntax: FIELD OP VALUE joined by && and ||)"),
                    })?;
                }
                match &leader {
                    None => leader = Some(Ring::map(fd)?),
                    Some(l) => {
                        ioctl(&fd, IOC_SET_OUTPUT, l.fd.as_raw_fd() as libc::c_ulong)
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
            ioctl(fd, IOC_ENABLE, 0).map_err(|e| KernelError::os("PERF_EVENT_IOC_ENABLE", e))?;
        }
        Ok(())
    }

    /// Wait up to `timeout_ms` for data, then hand every record to `each`. Returns the
    /// number of records. A signal ends the wait early.
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

    /// Hand every record now in the buffers to `each`.
    pub fn drain(&mut self, each: &mut dyn FnMut(Record<'_>)) -> usize {
        self.rings.iter_mut().map(|r| r.drain(each)).sum()
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
    fn map(fd: OwnedFd) -> Result<Ring, KernelError> {
        let len = (1 + DATA_PAGES) * PAGE;
        // SAFETY: maps the perf buffer of a perf fd we own; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(KernelError::os("mapping a perf buffer", io::Error::last_os_error()));
        }
        Ok(Ring { fd, base: base.cast(), len, scratch: Vec::with_capacity(PAGE) })
    }

    /// `data_head` (written by the kernel) and `data_tail` (by us), in the control page.
    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        // SAFETY: offsets 1024 and 1032 of the mapped control page are the u64 data_head and
        // data_tail of `struct perf_event_mmap_page`, 8-byte aligned; the mapping lives as
        // long as `self`.
        unsafe { (&*(self.base.add(1024) as *const AtomicU64), &*(self.base.add(1032) as *const AtomicU64)) }
    }

    fn drain(&mut self, each: &mut dyn FnMut(Record<'_>)) -> usize {
        let (head, mut at) = {
            let (head, tail) = self.head_tail();
            (head.load(Ordering::Acquire), tail.load(Ordering::Relaxed))
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        let size = (DATA_PAGES * PAGE) as u64;
        // SAFETY: the data area follows the control page, `size` bytes, mapped with `self`.
        let data = unsafe { std::slice::from_raw_parts(self.base.add(PAGE), DATA_PAGES * PAGE) };
        let mut n = 0;
        while at < head {
            let off = (at % size) as usize;
            let header = read_wrapped(data, off, 8, &mut scratch).to_vec();
            let kind = u32::from_le_bytes(header[..4].try_into().expect("4"));
            let len = u16::from_le_bytes(header[6..8].try_into().expect("2")) as usize;
            if len < 8 {
                break; // corrupt; stop rather than loop
            }
            let body = read_wrapped(data, off, len, &mut scratch);
            match kind {
                RECORD_SAMPLE if body.len() >= 32 => {
                    let word = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4"));
                    let (pid, tid) = (word(8), word(12));
                    let time = u64::from_le_bytes(body[16..24].try_into().expect("8"));
                    let cpu = word(24);
                    let raw_len = word(32) as usize;
                    let raw = body.get(36..36 + raw_len).unwrap_or_default();
                    each(Record::Sample { pid, tid, cpu, time, raw });
                }
                RECORD_LOST if body.len() >= 24 => {
                    each(Record::Lost(u64::from_le_bytes(body[16..24].try_into().expect("8"))));
                }
                _ => {}
            }
            at += len as u64;
            n += 1;
        }
        self.head_tail().1.store(at, Ordering::Release);
        self.scratch = scratch;
        n
    }
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

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`, which nothing references any more.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
