//! Return stubs: return probes that do not stop the thread at the return.
//!
//! At a return probe's entry stop the return address is replaced with the address of a
//! stub of dprobe's, one per pending return (a record). When the function returns there, the
//! stub stores `rax`, `rdx` and the time stamp counter into its record, marks it done and
//! jumps to the real return address that the tracer stored in the record: no stop, no
//! signal, a few nanoseconds. The tracer collects done records before it handles the next
//! stop of any thread (so events keep their order), when its wait is interrupted, and at
//! thread exit, and runs the return handlers then.
//!
//! Records live in a read-write page; the stubs in a read-execute page just before it
//! (mapped by an injected `mmap`, made executable by an injected `mprotect`).

use std::mem::offset_of;

use dprobe_arch::{Addr, CodeWriter, Gpr, Memory, INT3};

use crate::error::TraceError;
use crate::inject::inject_syscall;
use crate::sys::RemoteMemory;
use crate::xol::PAGE;

/// Bytes per stub and per record; records per page.
const STRIDE: usize = 64;
const PER_PAGE: usize = PAGE / STRIDE;

/// A record as the tracer and its stub lay it out (native words).
#[repr(C)]
struct Record {
    /// The real return address, stored by the tracer when it arms the record.
    ret: u64,
    /// Stored by the stub.
    rax: u64,
    /// Stored by the stub.
    rdx: u64,
    /// The time stamp counter, stored by the stub.
    tsc: u64,
    /// 1 once the stub has run: written last.
    done: u64,
}

/// Bytes of a record the tracer reads and writes.
const RECORD: usize = size_of::<Record>();

/// A done record, read back.
pub struct Returned {
    pub index: usize,
    pub rax: u64,
    pub rdx: u64,
    pub tsc: u64,
}

/// The stubs and records of one process.
#[derive(Default, Clone)]
pub struct Stubs {
    /// `(stub page, record page)` pairs.
    pages: Vec<(Addr, Addr)>,
    free: Vec<usize>,
    in_flight: Vec<bool>,
    in_flight_count: usize,
}

impl Stubs {
    /// A free record, mapping a new page pair through stopped thread `tid` if none is left.
    pub fn take(&mut self, tid: i32, memory: &mut RemoteMemory) -> Result<usize, TraceError> {
        if self.free.is_empty() {
            self.grow(tid, memory)?;
        }
        let index = self.free.pop().expect("grown");
        self.in_flight[index] = true;
        self.in_flight_count += 1;
        Ok(index)
    }

    /// Give a record back (collected, or its return abandoned).
    pub fn release(&mut self, index: usize) {
        if std::mem::replace(&mut self.in_flight[index], false) {
            self.in_flight_count -= 1;
            self.free.push(index);
        }
    }

    /// Whether a record can be taken without mapping a new page.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Whether any record is pending.
    pub fn busy(&self) -> bool {
        self.in_flight_count > 0
    }

    /// Where record `index`'s stub starts (the hijacked return address).
    pub fn stub(&self, index: usize) -> Addr {
        self.pages[index / PER_PAGE].0.offset(((index % PER_PAGE) * STRIDE) as u64)
    }

    fn record(&self, index: usize) -> Addr {
        self.pages[index / PER_PAGE].1.offset(((index % PER_PAGE) * STRIDE) as u64)
    }

    /// Arm record `index` for a return to `real`: the stack slot at `slot` gets the stub's
    /// address. Both writes go out in one system call.
    pub fn arm(&self, pid: i32, index: usize, real: Addr, slot: Addr) -> Result<(), TraceError> {
        let mut record = [0u8; RECORD];
        let ret = offset_of!(Record, ret);
        record[ret..ret + 8].copy_from_slice(&real.0.to_le_bytes());
        let stub = self.stub(index).0.to_le_bytes();
        crate::sys::write_two(pid, (self.record(index), &record), (slot, &stub))?;
        Ok(())
    }

    /// The records whose stubs have run since the last call, in the order they ran; they stay
    /// taken until released.
    pub fn collect(&mut self, memory: &mut RemoteMemory) -> Vec<Returned> {
        let mut out = Vec::new();
        if self.in_flight_count == 0 {
            return out;
        }
        let mut buf = vec![0u8; PAGE];
        for (page, &(_, data)) in self.pages.iter().enumerate() {
            let first = page * PER_PAGE;
            let Some(last) = (first..first + PER_PAGE).rev().find(|&i| self.in_flight[i]) else { continue };
            let len = (last - first) * STRIDE + RECORD;
            if memory.read(data, &mut buf[..len]).is_err() {
                continue;
            }
            let done: Vec<usize> = (first..=last)
                .filter(|&i| self.in_flight[i] && buf[(i - first) * STRIDE + offset_of!(Record, done)] == 1)
                .collect();
            let Some(&last_done) = done.last() else { continue };
            // The copy above may have read a record's values before its stub stored them and
            // its flag after: read the done records again, now that their flags are set (a
            // stub writes its flag last and never again until the record is re-armed).
            let len = (last_done - first) * STRIDE + RECORD;
            if memory.read(data, &mut buf[..len]).is_err() {
                continue;
            }
            for i in done {
                let r = &buf[(i - first) * STRIDE..];
                let word = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().expect("8"));
                out.push(Returned {
                    index: i,
                    rax: word(offset_of!(Record, rax)),
                    rdx: word(offset_of!(Record, rdx)),
                    tsc: word(offset_of!(Record, tsc)),
                });
            }
        }
        // In the order the returns happened.
        out.sort_by_key(|r| r.tsc);
        out
    }

    /// Whether `addr` is inside a stub (a thread stopped there has not finished returning).
    pub fn contains(&self, addr: Addr) -> bool {
        self.pages.iter().any(|(code, _)| addr >= *code && addr.0 < code.0 + PAGE as u64)
    }

    /// Unmap the pages through stopped thread `tid`.
    pub fn unmap_all(&mut self, tid: i32, memory: &mut RemoteMemory) -> Result<(), TraceError> {
        for (code, _) in std::mem::take(&mut self.pages) {
            inject_syscall(tid, memory, libc::SYS_munmap as u64, [code.0, 2 * PAGE as u64, 0, 0, 0, 0])?;
        }
        *self = Stubs::default();
        Ok(())
    }

    /// Forget the pages (the program image they belonged to is gone).
    pub fn clear(&mut self) {
        *self = Stubs::default();
    }

    fn grow(&mut self, tid: i32, memory: &mut RemoteMemory) -> Result<(), TraceError> {
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let code = inject_syscall(tid, memory, libc::SYS_mmap as u64, [0, 2 * PAGE as u64, rw, flags, u64::MAX, 0])?;
        if code > u64::MAX - 4096 {
            return Err(TraceError::Injected { call: "mmap", errno: code.wrapping_neg() as i32 });
        }
        let (code, data) = (Addr(code), Addr(code + PAGE as u64));
        let mut page = vec![INT3; PAGE]; // int3 between stubs
        for i in 0..PER_PAGE {
            let at = code.offset((i * STRIDE) as u64);
            let stub = stub_code(at, data.offset((i * STRIDE) as u64));
            page[i * STRIDE..i * STRIDE + stub.len()].copy_from_slice(&stub);
        }
        memory.write(code, &page)?;
        let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let protected = inject_syscall(tid, memory, libc::SYS_mprotect as u64, [code.0, PAGE as u64, rx, 0, 0, 0]);
        if protected.as_ref().map_or(true, |r| *r != 0) {
            // Not left mapped for nothing (a program that refuses executable pages it wrote).
            let _ = inject_syscall(tid, memory, libc::SYS_munmap as u64, [code.0, 2 * PAGE as u64, 0, 0, 0, 0]);
            let r = protected?;
            return Err(TraceError::Injected { call: "mprotect", errno: r.wrapping_neg() as i32 });
        }
        let base = self.pages.len() * PER_PAGE;
        self.pages.push((code, data));
        self.in_flight.resize(base + PER_PAGE, false);
        self.free.extend((base..base + PER_PAGE).rev());
        Ok(())
    }
}

/// The stub at `at` for the record at `record`:
///
/// ```text
/// mov %rax, RAX(record)    mov %rdx, RDX(record)    rdtsc
/// mov %eax, TSC(record)    mov %edx, TSC+4(record)
/// mov RAX(record), %rax    mov RDX(record), %rdx    movl $1, DONE(record)
/// jmp *RET(record)
/// ```
///
/// Only `mov`, `rdtsc` and an indirect `jmp`: the flags and every register but the two
/// restored ones are untouched.
fn stub_code(at: Addr, record: Addr) -> Vec<u8> {
    let field = |offset: usize| record.offset(offset as u64);
    let (rax, rdx, tsc) = (offset_of!(Record, rax), offset_of!(Record, rdx), offset_of!(Record, tsc));
    let mut w = CodeWriter::new();
    w.store(field(rax), Gpr::Rax);
    w.store(field(rdx), Gpr::Rdx);
    w.rdtsc();
    w.store32(field(tsc), Gpr::Rax);
    w.store32(field(tsc + 4), Gpr::Rdx);
    w.load(Gpr::Rax, field(rax));
    w.load(Gpr::Rdx, field(rdx));
    w.store_imm32(field(offset_of!(Record, done)), 1);
    w.jmp_through(field(offset_of!(Record, ret)));
    // The record is a page after its stub: every operand is in reach.
    let code = w.finish(at).expect("a stub reaches its record").bytes;
    debug_assert!(code.len() <= STRIDE);
    code
}

/// The time stamp counter, read in the tracer (the same counter the stubs read: it is
/// constant-rate and shared by all CPUs on the machines dprobe runs on).
pub fn tsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Time stamp counter ticks per nanosecond, measured once against the monotonic clock.
pub fn ticks_per_ns() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        let (t0, c0) = (std::time::Instant::now(), tsc());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (ns, ticks) = (t0.elapsed().as_nanos() as f64, tsc().wrapping_sub(c0) as f64);
        if ns > 0.0 && ticks > 0.0 {
            ticks / ns
        } else {
            1.0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stub_decodes_to_the_documented_instructions_and_reaches_its_record() {
        let at = Addr(0x7000_0000_0040);
        let record = Addr(0x7000_0000_1040);
        let code = stub_code(at, record);
        assert!(code.len() <= STRIDE);
        let mut texts = Vec::new();
        let mut off = 0;
        while off < code.len() {
            let len = dprobe_arch::decode_len(&code[off..]).expect("decodes");
            texts.push(dprobe_arch::describe(&code[off..], at.offset(off as u64)));
            off += len;
        }
        let joined = texts.join("; ").to_lowercase();
        for needle in [
            "mov %rax,0x700000001048",
            "mov %rdx,0x700000001050",
            "rdtsc",
            "mov %eax,0x700000001058",
            "mov %edx,0x70000000105c",
            "mov 0x700000001048,%rax",
            "mov 0x700000001050,%rdx",
            "movl $1,0x700000001060",
            "jmpq *0x700000001040",
        ] {
            assert!(joined.contains(needle), "{needle} in {joined}");
        }
    }
}
