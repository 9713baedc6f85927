//! The one seam between the in-process engine and the operating system: writing code,
//! mapping slot pages, reading memory without faulting, synchronizing instruction streams.
//!
//! Everything here is callable from registration paths; the functions marked
//! *async-signal-safe* are also used on the hit path.

use std::io;
use std::sync::{Mutex, OnceLock};

use dprobe_arch::{Addr, MemoryFault};

use crate::own_files::{self, FileId};

/// Write `bytes` at `addr` in this process's code through `/proc/self/mem`, which writes
/// through page protections (as a debugger's `PTRACE_POKETEXT` does): an `int3` probe leaves
/// its page `r-x`. The one exception is a page under a live jump, which the engine keeps
/// `rwx` while the jump is there (see `code_pages.rs`: that is what keeps another tool's
/// kernel uprobe from being written over the jump). dprobe writes code only here and, in
/// such pages, with plain stores under its fault guard or with [`write_pieces`]
/// (`code_writes.rs`).
///
/// A one-byte write is seen by other threads either before or after, never torn. Other
/// threads are not serialized here: the caller writes every change of one protocol step, then
/// calls [`sync_cores`] once for all of them.
pub fn write_code_unsynced(addr: Addr, bytes: &[u8]) -> io::Result<()> {
    let mut mem = MEM.lock().unwrap_or_else(|e| e.into_inner());
    let (fd, one_write) = mem_file(&mut mem)?;
    let written = write_through(fd, addr, bytes);
    if one_write {
        own_files::close(fd);
    }
    written
}

/// Write `bytes` at `addr` through `fd`, this process's `/proc/self/mem`.
fn write_through(fd: i32, addr: Addr, bytes: &[u8]) -> io::Result<()> {
    // The system call itself, not the C library's `pwrite64`, which may be probed (and on
    // `int3` while a batch is being placed).
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let args = [fd as u64, rest.as_ptr() as u64, rest.len() as u64, addr.0 + done as u64, 0, 0];
        // SAFETY: pwrite64 reads `rest`, which lives for the call; the kernel checks the rest.
        let n = unsafe { raw_syscall6(libc::SYS_pwrite64, args) };
        match n {
            n if n > 0 => done += n as usize,
            n if n == -(libc::EINTR as i64) => {}
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => return Err(io::Error::from_raw_os_error(-n as i32)),
        }
    }
    Ok(())
}

/// The engine's `/proc/self/mem`: the process that opened it, its descriptor and its file,
/// and whether it is in a thread's own descriptor table (`own_files::PrivateTable`).
struct MemFile {
    pid: libc::pid_t,
    fd: i32,
    id: FileId,
    private: bool,
}

static MEM: Mutex<Option<MemFile>> = Mutex::new(None);

/// The descriptor of this process's `/proc/self/mem`, opened if it is not open yet, or if the
/// one open is not it any more: a forked child's copy of its parent's (which would write the
/// parent's code: closed), or a number the program closed and maybe reused for a file of its
/// own (left alone: see `own_files.rs`). With `true` when the descriptor is for one write
/// only, to be closed after it: the one open is in the other table (the agent's own, or the
/// program's), which this thread cannot close.
fn mem_file(mem: &mut Option<MemFile>) -> io::Result<(i32, bool)> {
    let (pid, private) = (own_pid(), own_files::in_private_table());
    if let Some(open) = mem.as_ref().filter(|m| m.pid == pid && m.private == private && m.id.is(m.fd)) {
        return Ok((open.fd, false));
    }
    if mem.as_ref().is_some_and(|m| m.pid == pid && m.private != private) {
        return open_mem().map(|(fd, _)| (fd, true));
    }
    if let Some(inherited) = mem.take().filter(|m| m.pid != pid) {
        own_files::close_if_ours(inherited.fd, inherited.id);
    }
    let (fd, id) = open_mem()?;
    *mem = Some(MemFile { pid, fd, id, private });
    Ok((fd, false))
}

/// Open this process's `/proc/self/mem`, out of the program's way.
fn open_mem() -> io::Result<(i32, FileId)> {
    let path = c"/proc/self/mem";
    // SAFETY: opens a file by a NUL-terminated path that lives for the call. (The system
    // call itself: the C library's `open` may be probed, on `int3` while a batch is placed.)
    let fd = unsafe {
        raw_syscall6(
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, path.as_ptr() as u64, (libc::O_RDWR | libc::O_CLOEXEC) as u64, 0, 0, 0],
        )
    };
    if fd < 0 {
        let e = io::Error::from_raw_os_error(-fd as i32);
        return Err(io::Error::new(e.kind(), format!("opening /proc/self/mem: {e}")));
    }
    let fd = own_files::keep_high(fd as i32);
    let Some(id) = FileId::of(fd) else {
        own_files::close(fd);
        return Err(io::Error::other("opening /proc/self/mem: the descriptor opened is gone"));
    };
    Ok((fd, id))
}

/// Close the engine's `/proc/self/mem` (a traced program's session is over; in a forked
/// child, its copy of the parent's): opened again by the next code write.
pub fn close_mem_file() {
    let mut mem = MEM.lock().unwrap_or_else(|e| e.into_inner());
    // One in another thread's table of this process is not this thread's to close (its number
    // here may be a file of the program's: even its own `/proc/self/mem`).
    let ours = |m: &mut MemFile| m.pid != own_pid() || m.private == own_files::in_private_table();
    if let Some(open) = mem.take_if(ours) {
        own_files::close_if_ours(open.fd, open.id);
    }
}

/// This process's `/proc/self/maps`, read into `text` (emptied first) with the system calls
/// themselves: while a batch is being placed the C library's `open`, `read`, `close` and
/// allocator may be probed, on `int3` (`text` is grown only when the map outgrows it).
pub fn read_own_maps(text: &mut Vec<u8>) -> io::Result<()> {
    text.clear();
    let path = c"/proc/self/maps";
    // SAFETY: opens a file by a NUL-terminated path that lives for the call.
    let fd = unsafe {
        raw_syscall6(
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, path.as_ptr() as u64, libc::O_RDONLY as u64 | libc::O_CLOEXEC as u64, 0, 0, 0],
        )
    };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd as i32));
    }
    let outcome = loop {
        if text.capacity() - text.len() < 4096 {
            text.reserve(text.capacity().max(64 << 10));
        }
        let room = text.spare_capacity_mut();
        // SAFETY: reads into the vector's spare capacity, which `room` spans.
        let n =
            unsafe { raw_syscall6(libc::SYS_read, [fd as u64, room.as_mut_ptr() as u64, room.len() as u64, 0, 0, 0]) };
        match n {
            0 => break Ok(()),
            n if n > 0 => {
                // SAFETY: the kernel wrote `n` bytes after the initialized ones.
                unsafe { text.set_len(text.len() + n as usize) };
            }
            n if n == -(libc::EINTR as i64) => {}
            n => break Err(io::Error::from_raw_os_error(-n as i32)),
        }
    };
    // SAFETY: closes the descriptor opened above, which nothing else holds.
    unsafe { raw_syscall6(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]) };
    outcome
}

/// Every signal but the synchronous ones, as a kernel signal set (bit N-1 for signal N), and
/// but the C library's own two (32 and 33: thread cancellation, and `setuid` in a threaded
/// program, which waits for every thread to take it; the C library never lets a program block
/// them, and its handlers for them do not run on the alternate stack).
pub(crate) fn asynchronous_signals() -> u64 {
    let synchronous = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS];
    let c_library = [32, 33];
    synchronous.iter().chain(&c_library).fold(u64::MAX, |set, &sig| set & !(1u64 << (sig - 1)))
}

/// The calling thread's blocked signals, as a kernel signal set (bit N-1 for signal N).
/// Async-signal-safe.
pub fn signal_mask() -> u64 {
    let mut now = 0u64;
    // SAFETY: rt_sigprocmask with no new set writes 8 bytes of signal set into `now`.
    unsafe {
        raw_syscall6(libc::SYS_rt_sigprocmask, [libc::SIG_BLOCK as u64, 0, &mut now as *mut u64 as u64, 8, 0, 0])
    };
    now
}

/// Make `mask` (a kernel signal set, from [`block_asynchronous_signals`] or [`signal_mask`])
/// the calling thread's blocked set again. Async-signal-safe.
pub fn set_signal_mask(mask: u64) {
    // SAFETY: rt_sigprocmask reads 8 bytes of signal set on this frame.
    unsafe {
        raw_syscall6(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as u64, &mask as *const u64 as u64, 0, 8, 0, 0])
    };
}

/// Block every signal on the calling thread (but `SIGKILL` and `SIGSTOP`); the set before.
/// For a few instructions that cannot fault or trap. Async-signal-safe.
pub(crate) fn block_every_signal() -> u64 {
    let (all, mut before) = (u64::MAX, 0u64);
    // SAFETY: rt_sigprocmask reads 8 bytes of signal set from `all` and writes 8 to `before`,
    // both on this frame; the kernel leaves SIGKILL and SIGSTOP out.
    unsafe {
        raw_syscall6(
            libc::SYS_rt_sigprocmask,
            [libc::SIG_BLOCK as u64, &all as *const u64 as u64, &mut before as *mut u64 as u64, 8, 0, 0],
        )
    };
    before
}

/// The kernel's `struct sigaction` on x86-64: handler, flags, restorer, mask.
pub(crate) type KernelAction = [u64; 4];

/// Install `new` (when given) as `sig`'s action, with the system call itself (the C
/// library's `sigaction` may be probed, and answers for dprobe's signals without installing
/// anything: `signals::program_installs`); the action it replaced, or `None` if the kernel
/// refused. Async-signal-safe.
pub(crate) fn swap_action(sig: libc::c_int, new: Option<&KernelAction>) -> Option<KernelAction> {
    let mut old: KernelAction = [0; 4];
    let new = new.map_or(0, |action| action.as_ptr() as u64);
    let args = [sig as u64, new, old.as_mut_ptr() as u64, 8, 0, 0];
    // SAFETY: rt_sigaction reads `new` (a kernel action, or none) and writes the current one
    // into `old`, both as large as the kernel's structure for an 8-byte signal set.
    let r = unsafe { raw_syscall6(libc::SYS_rt_sigaction, args) };
    (r == 0).then_some(old)
}

/// Add the asynchronous signals to the calling thread's blocked set; the set before.
/// Async-signal-safe (the hit path off a program's alternate stack, `hit_stack.rs`, and the
/// code writer's guarded stores, `code_writes.rs`).
pub fn block_asynchronous_signals() -> u64 {
    block_signals(asynchronous_signals())
}

/// Block the signals of `set` (a kernel signal set) on the calling thread, besides those it
/// blocks; the set before. Async-signal-safe.
pub(crate) fn block_signals(set: u64) -> u64 {
    let mut old = 0u64;
    // SAFETY: rt_sigprocmask reads 8 bytes of signal set from `set` and writes 8 to `old`,
    // both on this frame; the kernel ignores SIGKILL and SIGSTOP in it.
    unsafe {
        raw_syscall6(
            libc::SYS_rt_sigprocmask,
            [libc::SIG_BLOCK as u64, &set as *const u64 as u64, &mut old as *mut u64 as u64, 8, 0, 0],
        )
    };
    old
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 6;

/// Register this process for [`sync_cores`] (once; whether the kernel supports it). The
/// kernel's registration waits for an RCU grace period (`synchronize_rcu`, 10-20 ms on a
/// virtual machine) when more than one thread shares the address space, and returns at once
/// when the caller is the process's only thread: a process's first thread does it before it
/// starts any other ([`crate::ready_for_code_changes`]).
pub fn register_core_syncs() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // Made directly, not through the C library's `syscall`, which may be probed (the
        // agent's own probe there: code changes would hit it at each step).
        let command = MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE as u64;
        // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
        unsafe { raw_syscall6(libc::SYS_membarrier, [command, 0, 0, 0, 0, 0]) == 0 }
    })
}

/// Make every thread of the process execute a serializing instruction before it runs user
/// code again, so that a code change is seen by all (the user-space `sync_core()` of the
/// kernel's `text_poke_bp`). Without membarrier support this is a no-op, which x86's
/// coherent instruction fetch tolerates for the single-byte `int3` protocol.
pub fn sync_cores() -> bool {
    let ok = register_core_syncs();
    if ok {
        // SAFETY: as above.
        unsafe {
            raw_syscall6(libc::SYS_membarrier, [MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE as u64, 0, 0, 0, 0, 0])
        };
    }
    ok
}

/// Read `buf.len()` bytes at `addr` without faulting: a bad address returns an error instead
/// of raising `SIGSEGV`. Async-signal-safe (one `process_vm_readv` system call).
pub fn read_memory(addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    copy_own_memory(addr, local, false)
}

/// Write `data` at `addr` without faulting (see [`read_memory`]). Async-signal-safe.
pub fn write_memory(addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
    // The kernel only reads `data` for a write; the iovec type is shared with reads.
    let local = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    copy_own_memory(addr, local, true)
}

/// The most ranges [`read_ranges`] takes (`IOV_MAX`, the limit of one `process_vm_readv`).
pub const MAX_RANGES: usize = 1024;

/// Read the ranges `(addr, len)` of `ranges` (at most [`MAX_RANGES`]) one after the other
/// into `buf`, with one system call and without faulting: how many bytes were read. A range
/// that cannot be read in full ends the read there (`process_vm_readv` never splits one).
pub fn read_ranges(ranges: &[(Addr, usize)], buf: &mut [u8]) -> usize {
    read_few_ranges::<MAX_RANGES>(ranges, buf)
}

/// [`read_ranges`] of at most `N` ranges, whose list takes `16 N` bytes of the stack (the hit
/// path may run on a program's small alternate stack).
pub(crate) fn read_few_ranges<const N: usize>(ranges: &[(Addr, usize)], buf: &mut [u8]) -> usize {
    assert!(ranges.len() <= N, "at most {N} ranges per read");
    let total: usize = ranges.iter().map(|r| r.1).sum();
    assert!(total <= buf.len(), "the buffer holds every range");
    if total == 0 {
        return 0;
    }
    // On the stack: the registrar reads while the C library's allocator may be probed.
    let mut remote = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; N];
    for (iov, (addr, len)) in remote.iter_mut().zip(ranges) {
        *iov = libc::iovec { iov_base: addr.0 as *mut libc::c_void, iov_len: *len };
    }
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: total };
    let args =
        [own_pid() as u64, &local as *const libc::iovec as u64, 1, remote.as_ptr() as u64, ranges.len() as u64, 0];
    // SAFETY: `local` describes `total` bytes of `buf`, which the caller lends mutably for the
    // call; the kernel validates every remote range.
    let n = unsafe { raw_syscall6(libc::SYS_process_vm_readv, args) };
    usize::try_from(n).unwrap_or(0)
}

/// The most pieces [`write_pieces`] takes.
pub const MAX_PIECES: usize = 256;

/// Write each piece `(addr, bytes)` of `pieces` (at most [`MAX_PIECES`]), in order, with one
/// system call and without faulting, through the pages' own protections
/// (`process_vm_writev`): how many pieces were written. The first piece whose memory is not
/// writable ends the write there (the kernel never splits one piece).
pub fn write_pieces(pieces: &[(Addr, &[u8])]) -> usize {
    assert!(pieces.len() <= MAX_PIECES, "at most {MAX_PIECES} pieces per write");
    if pieces.is_empty() {
        return 0;
    }
    // On the stack: the registrar writes while the C library's allocator may be probed.
    let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let (mut local, mut remote) = ([empty; MAX_PIECES], [empty; MAX_PIECES]);
    for ((l, r), (addr, bytes)) in local.iter_mut().zip(&mut remote).zip(pieces) {
        // The kernel only reads the local side of a write; the iovec type is shared with reads.
        *l = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        *r = libc::iovec { iov_base: addr.0 as *mut libc::c_void, iov_len: bytes.len() };
    }
    let n = pieces.len() as u64;
    let args = [own_pid() as u64, local.as_ptr() as u64, n, remote.as_ptr() as u64, n, 0];
    // SAFETY: each local iovec describes a piece's bytes, borrowed for the call; the kernel
    // validates every remote range and writes only where the page allows it.
    let written = usize::try_from(unsafe { raw_syscall6(libc::SYS_process_vm_writev, args) }).unwrap_or(0);
    let mut whole = 0;
    let mut total = 0;
    for (_, bytes) in pieces {
        if total + bytes.len() > written {
            break;
        }
        total += bytes.len();
        whole += 1;
    }
    whole
}

/// Copy between `local` and this process's memory at `addr` with `process_vm_readv`/`writev`,
/// which validate `addr` and report EFAULT instead of faulting.
fn copy_own_memory(addr: Addr, local: libc::iovec, write: bool) -> Result<(), MemoryFault> {
    let len = local.iov_len;
    if len == 0 {
        return Ok(());
    }
    let remote = libc::iovec { iov_base: addr.0 as *mut libc::c_void, iov_len: len };
    let (number, pid) = (if write { libc::SYS_process_vm_writev } else { libc::SYS_process_vm_readv }, own_pid());
    // SAFETY: `local` describes a buffer the caller owns for the duration of the call
    // (mutably for reads); the kernel validates `remote`.
    let n = unsafe {
        raw_syscall6(
            number,
            [pid as u64, &local as *const libc::iovec as u64, 1, &remote as *const libc::iovec as u64, 1, 0],
        )
    };
    if n == len as i64 {
        Ok(())
    } else {
        Err(MemoryFault { addr, len, write })
    }
}

/// This process's id, from the kernel itself: the hit path calls no C library function,
/// which the user may have probed (`getpid`). Async-signal-safe.
pub fn own_pid() -> libc::pid_t {
    // SAFETY: getpid takes no argument and touches no memory.
    unsafe { raw_syscall6(libc::SYS_getpid, [0; 6]) as libc::pid_t }
}

/// A system call made by the `syscall` instruction itself, not through the C library's
/// wrappers (which a probe may sit on); returns the kernel's result (`-errno` on failure).
///
/// # Safety
/// As for the system call `number` with these arguments.
pub(crate) unsafe fn raw_syscall6(number: libc::c_long, args: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the call; `syscall` clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Set the protection of the pages `[addr, addr + len)` (page-aligned) to `prot`
/// (`mprotect`, made by the `syscall` instruction itself: the C library's wrapper may be
/// probed).
pub fn protect(addr: Addr, len: u64, prot: libc::c_int) -> io::Result<()> {
    // SAFETY: mprotect changes only the protection of pages the caller names, which hold code
    // that stays readable and executable; the kernel checks the range.
    let r = unsafe { raw_syscall6(libc::SYS_mprotect, [addr.0, len, prot as u64, 0, 0, 0]) };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r as i32));
    }
    Ok(())
}

/// Map `len` bytes of `r-x` memory at exactly `addr` (never replacing an existing mapping).
pub fn map_code_page_at(addr: Addr, len: usize) -> io::Result<Addr> {
    // SAFETY: anonymous mapping with MAP_FIXED_NOREPLACE: the kernel refuses instead of
    // replacing anything already mapped there, so no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            addr.0 as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if p as u64 != addr.0 {
        // Old kernels treat the flag as a hint: give the page back.
        // SAFETY: `p` is the mapping just created, of `len` bytes, used by nobody.
        unsafe { libc::munmap(p, len) };
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    Ok(Addr(p as u64))
}

/// The calling thread's alternate signal stack `(base, size)` (size 0: none).
/// Async-signal-safe: one system call, made without the C library (see
/// [`raw_alternate_stack`]).
pub fn alternate_stack() -> (u64, u64) {
    raw_alternate_stack().map_or((0, 0), |(base, size, _)| (base, size))
}

/// The calling thread's alternate signal stack as the kernel reports it (flags included),
/// asked without the C library. Async-signal-safe.
pub(crate) fn raw_alternate_stack_settings() -> Option<libc::stack_t> {
    let mut old = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: 0, ss_size: 0 };
    // SAFETY: with no new stack, sigaltstack only writes the current one into `old`, a
    // stack_t on this frame.
    let ret = unsafe { raw_syscall6(libc::SYS_sigaltstack, [0, &mut old as *mut libc::stack_t as u64, 0, 0, 0, 0]) };
    (ret == 0).then_some(old)
}

/// The calling thread's alternate signal stack `(base, size, running on it)` (size 0: none),
/// asked of the kernel directly: the C library's `sigaltstack` may be probed. None when the
/// kernel says nothing. Async-signal-safe.
pub(crate) fn raw_alternate_stack() -> Option<(u64, u64, bool)> {
    let old = raw_alternate_stack_settings()?;
    if old.ss_flags & libc::SS_DISABLE != 0 {
        return Some((0, 0, false));
    }
    Some((old.ss_sp as u64, old.ss_size as u64, old.ss_flags & libc::SS_ONSTACK != 0))
}

/// The calling thread's id, from the kernel itself. Async-signal-safe.
pub fn own_tid() -> libc::pid_t {
    // SAFETY: gettid takes no argument and touches no memory.
    unsafe { raw_syscall6(libc::SYS_gettid, [0; 6]) as libc::pid_t }
}

/// Send `sig` to the thread `tid` of this process with `value` in its `si_value`
/// (`rt_tgsigqueueinfo`, `si_code` `SI_QUEUE`), so that its handler can tell the sender.
pub fn queue_signal(tid: libc::pid_t, sig: libc::c_int, value: u64) -> io::Result<()> {
    #[repr(C)]
    struct QueuedInfo {
        signo: i32,
        errno: i32,
        code: i32,
        pad: i32,
        pid: i32,
        uid: u32,
        value: u64,
        rest: [u64; 12],
    }
    const _: () = assert!(std::mem::size_of::<QueuedInfo>() == 128);
    let pid = own_pid();
    // SAFETY: getuid takes no argument.
    let uid = unsafe { libc::getuid() };
    let info = QueuedInfo { signo: sig, errno: 0, code: libc::SI_QUEUE, pad: 0, pid, uid, value, rest: [0; 12] };
    // SAFETY: `info` is a 128-byte siginfo in the x86-64 layout for SI_QUEUE, read by the
    // kernel during the call.
    let r = unsafe {
        raw_syscall6(libc::SYS_rt_tgsigqueueinfo, [pid as u64, tid as u64, sig as u64, &info as *const _ as u64, 0, 0])
    };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r as i32));
    }
    Ok(())
}

/// Whether the thread `tid` of this process still exists.
pub fn thread_alive(tid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    unsafe { raw_syscall6(libc::SYS_tgkill, [own_pid() as u64, tid as u64, 0, 0, 0, 0]) != -(libc::ESRCH as i64) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synchronous_signals_stay_deliverable() {
        let set = asynchronous_signals();
        let blocked = |sig: libc::c_int| set & (1 << (sig - 1)) != 0;
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGTRAP, libc::SIGSYS, 32, 33] {
            assert!(!blocked(sig), "signal {sig}");
        }
        for sig in [
            libc::SIGINT,
            libc::SIGUSR1,
            libc::SIGALRM,
            libc::SIGURG,
            libc::SIGCHLD,
            libc::SIGRTMIN(),
            libc::SIGRTMAX(),
        ] {
            assert!(blocked(sig), "signal {sig}");
        }
    }
}
