//! The one seam between the ptrace engine and the kernel: ptrace requests, waiting, and the
//! tracee's memory. Every call goes through [`Kernel`]; the engine's own tests put a fake
//! kernel in its place (per test thread, as aya's `override_syscall` does), so the stop loop
//! is tested without a real process.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use dprobe_arch::{Addr, Memory, MemoryFault, Regs};

use crate::error::{SysError, TraceError};
use crate::seccomp_check::Seccomp;

/// What a tracer finds in `rax` of a thread taken out of a system call: `-EINTR` (the call
/// returns it), and two of the kernel's own codes, which it turns into a restart on resume
/// (`-ERESTARTNOHAND`: unless a signal's handler runs; `-ERESTART_RESTARTBLOCK`: through
/// `restart_syscall`, from the thread's restart state).
pub(crate) const EINTR: i64 = -(libc::EINTR as i64);
pub(crate) const ERESTARTNOHAND: i64 = -514;
pub(crate) const ERESTART_RESTARTBLOCK: i64 = -516;

/// One ptrace request on a thread.
pub(crate) enum Request<'a> {
    Cont { signal: i32 },
    Syscall { signal: i32 },
    Step { signal: i32 },
    GetRegs(&'a mut libc::user_regs_struct),
    SetRegs(&'a libc::user_regs_struct),
    EventMessage,
    Seize { options: u64 },
    SetOptions { options: u64 },
    Interrupt,
    Listen,
    Detach { signal: i32 },
    GetSigInfo(&'a mut libc::siginfo_t),
    SetSigInfo(&'a libc::siginfo_t),
    GetSigMask(&'a mut u64),
    SetSigMask(&'a u64),
    PokeUser { offset: u64, value: u64 },
}

impl Request<'_> {
    fn name(&self) -> &'static str {
        match self {
            Request::Cont { .. } => "PTRACE_CONT",
            Request::Syscall { .. } => "PTRACE_SYSCALL",
            Request::Step { .. } => "PTRACE_SINGLESTEP",
            Request::GetRegs(_) => "PTRACE_GETREGS",
            Request::SetRegs(_) => "PTRACE_SETREGS",
            Request::EventMessage => "PTRACE_GETEVENTMSG",
            Request::Seize { .. } => "PTRACE_SEIZE",
            Request::SetOptions { .. } => "PTRACE_SETOPTIONS",
            Request::Interrupt => "PTRACE_INTERRUPT",
            Request::Listen => "PTRACE_LISTEN",
            Request::Detach { .. } => "PTRACE_DETACH",
            Request::GetSigInfo(_) => "PTRACE_GETSIGINFO",
            Request::SetSigInfo(_) => "PTRACE_SETSIGINFO",
            Request::GetSigMask(_) => "PTRACE_GETSIGMASK",
            Request::SetSigMask(_) => "PTRACE_SETSIGMASK",
            Request::PokeUser { .. } => "PTRACE_POKEUSER",
        }
    }
}

/// What the engine asks of the kernel. Errors are errnos.
pub(crate) trait Kernel {
    /// A ptrace request on thread `tid`; returns the event message for `EventMessage`.
    fn ptrace(&mut self, tid: i32, request: Request<'_>) -> Result<u64, i32>;
    /// `waitpid(tid, __WALL | __WNOTHREAD [| WNOHANG])`: `Ok(None)` when `nohang` and no
    /// thread changed state; `Err(EINTR)` when a signal interrupted it.
    fn wait(&mut self, tid: i32, nohang: bool) -> Result<Option<(i32, i32)>, i32>;
    /// `tgkill(pid, tid, signal)`.
    fn tgkill(&mut self, pid: i32, tid: i32, signal: i32) -> Result<(), i32>;
    /// `rt_tgsigqueueinfo(pid, tid, signal, info)`: a signal queued again with its
    /// information.
    fn queue(&mut self, pid: i32, tid: i32, info: &libc::siginfo_t) -> Result<(), i32>;
    /// The signals pending for thread `tid` alone (not the process), as a mask (bit N-1:
    /// signal N).
    fn pending(&mut self, pid: i32, tid: i32) -> u64;
    /// Whether thread `tid` of process `pid` still exists (not reaped).
    fn exists(&mut self, pid: i32, tid: i32) -> bool;
    /// Process `pid`'s memory file, or `None` when memory goes through `read`/`write` here.
    fn memory_file(&mut self, pid: i32) -> io::Result<Option<File>>;
    /// Read process memory (when there is no memory file).
    fn read(&mut self, pid: i32, addr: u64, buf: &mut [u8]) -> bool;
    /// Write process memory (when there is no memory file).
    fn write(&mut self, pid: i32, addr: u64, data: &[u8]) -> bool;
    /// The signals process `pid` ignores and those it catches, as masks (`SigIgn`, `SigCgt`).
    fn dispositions(&mut self, _pid: i32) -> (u64, u64) {
        (0, 0)
    }
    /// The signals pending anywhere in process `pid`: for the process or for any of its
    /// threads, as a mask.
    fn pending_anywhere(&mut self, _pid: i32) -> u64 {
        0
    }
    /// The seccomp filters stopped thread `tid` of process `pid` runs under, or why they
    /// cannot be read.
    fn seccomp(&mut self, _pid: i32, _tid: i32) -> Result<Seccomp, String> {
        Ok(Seccomp::Off)
    }
}

/// The kernel itself.
struct Real;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

impl Kernel for Real {
    fn ptrace(&mut self, tid: i32, request: Request<'_>) -> Result<u64, i32> {
        let mut message: libc::c_ulong = 0;
        let (req, addr, data): (libc::c_uint, u64, u64) = match request {
            Request::Cont { signal } => (libc::PTRACE_CONT, 0, signal as u64),
            Request::Syscall { signal } => (libc::PTRACE_SYSCALL, 0, signal as u64),
            Request::Step { signal } => (libc::PTRACE_SINGLESTEP, 0, signal as u64),
            Request::GetRegs(r) => (libc::PTRACE_GETREGS, 0, r as *mut _ as u64),
            Request::SetRegs(r) => (libc::PTRACE_SETREGS, 0, r as *const _ as u64),
            Request::EventMessage => (libc::PTRACE_GETEVENTMSG, 0, &mut message as *mut _ as u64),
            Request::Seize { options } => (libc::PTRACE_SEIZE, 0, options),
            Request::SetOptions { options } => (libc::PTRACE_SETOPTIONS, 0, options),
            Request::Interrupt => (libc::PTRACE_INTERRUPT, 0, 0),
            Request::Listen => (libc::PTRACE_LISTEN, 0, 0),
            Request::Detach { signal } => (libc::PTRACE_DETACH, 0, signal as u64),
            Request::GetSigInfo(info) => (libc::PTRACE_GETSIGINFO, 0, info as *mut _ as u64),
            Request::SetSigInfo(info) => (libc::PTRACE_SETSIGINFO, 0, info as *const _ as u64),
            // The kernel's sigset_t: 8 bytes on x86-64.
            Request::GetSigMask(mask) => (libc::PTRACE_GETSIGMASK, 8, mask as *mut _ as u64),
            Request::SetSigMask(mask) => (libc::PTRACE_SETSIGMASK, 8, mask as *const _ as u64),
            // A word of the thread's `struct user` (a debug register).
            Request::PokeUser { offset, value } => (libc::PTRACE_POKEUSER, offset, value),
        };
        // SAFETY: the requests used here take integers or pointers to buffers that live for
        // the call (`regs`, `message`), never anything the kernel keeps.
        let r = unsafe { libc::ptrace(req, tid, addr as *mut libc::c_void, data as *mut libc::c_void) };
        if r == -1 {
            return Err(errno());
        }
        Ok(message)
    }

    fn wait(&mut self, tid: i32, nohang: bool) -> Result<Option<(i32, i32)>, i32> {
        let mut status = 0;
        let flags = libc::__WALL | libc::__WNOTHREAD | if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: writes the status we own.
        match unsafe { libc::waitpid(tid, &mut status, flags) } {
            0 => Ok(None),
            r if r > 0 => Ok(Some((r, status))),
            _ => Err(errno()),
        }
    }

    fn tgkill(&mut self, pid: i32, tid: i32, signal: i32) -> Result<(), i32> {
        // SAFETY: plain integer arguments.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } == -1 {
            return Err(errno());
        }
        Ok(())
    }

    fn queue(&mut self, pid: i32, tid: i32, info: &libc::siginfo_t) -> Result<(), i32> {
        // SAFETY: `info` is a live siginfo the kernel only reads.
        let r = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, info.si_signo, info as *const _) };
        if r == -1 {
            return Err(errno());
        }
        Ok(())
    }

    fn pending(&mut self, pid: i32, tid: i32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
        status_mask(&status, "SigPnd:")
    }

    fn exists(&mut self, pid: i32, tid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
    }

    fn memory_file(&mut self, pid: i32) -> io::Result<Option<File>> {
        File::options().read(true).write(true).open(format!("/proc/{pid}/mem")).map(Some)
    }

    fn read(&mut self, _: i32, _: u64, _: &mut [u8]) -> bool {
        false
    }

    fn write(&mut self, _: i32, _: u64, _: &[u8]) -> bool {
        false
    }

    fn dispositions(&mut self, pid: i32) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        (status_mask(&status, "SigIgn:"), status_mask(&status, "SigCgt:"))
    }

    fn seccomp(&mut self, _pid: i32, tid: i32) -> Result<Seccomp, String> {
        // (Any thread's, a traced `vfork` child's too.) A thread gone meanwhile is said to be so
        // by the call that follows.
        match crate::proc_ids::seccomp_status(&format!("/proc/{tid}/status")) {
            Some((0, _)) | None => return Ok(Seccomp::Off),
            Some((1, _)) => return Ok(Seccomp::Strict),
            _ => {}
        }
        const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
        let mut filters = Vec::new();
        for index in 0.. {
            // SAFETY: with a null buffer the kernel only says how many instructions filter
            // `index` has.
            let n = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, std::ptr::null_mut::<u8>()) };
            if n < 0 {
                match errno() {
                    libc::ENOENT if index > 0 => break,
                    // Not in a ptrace stop any more: gone, said by the call that follows.
                    libc::ESRCH => return Ok(Seccomp::Off),
                    e => return Err(io::Error::from_raw_os_error(e).to_string()),
                }
            }
            let mut raw = vec![[0u8; 8]; n as usize];
            // SAFETY: `raw` holds `n` instructions of 8 bytes, which the kernel fills.
            let got = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, raw.as_mut_ptr()) };
            if got != n {
                return Err(io::Error::from_raw_os_error(errno()).to_string());
            }
            filters.push(raw.into_iter().map(crate::seccomp_check::Insn::from_bytes).collect());
        }
        Ok(Seccomp::Filters(filters))
    }

    fn pending_anywhere(&mut self, pid: i32) -> u64 {
        let status = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
        let shared = status_mask(&status(format!("/proc/{pid}/status").as_ref()), "ShdPnd:");
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        tasks.fold(shared, |mask, t| mask | status_mask(&status(&t.path().join("status")), "SigPnd:"))
    }
}

/// The seccomp filters stopped thread `tid` of process `pid` runs under (see `seccomp_check`).
pub(crate) fn seccomp(pid: i32, tid: i32) -> Result<Seccomp, String> {
    kernel(|k| k.seccomp(pid, tid))
}

/// The signal mask on line `key` of a `/proc` status file (hexadecimal; 0 when absent).
fn status_mask(status: &str, key: &str) -> u64 {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
}

#[cfg(test)]
thread_local! {
    static FAKE: std::cell::RefCell<Option<Box<dyn Kernel>>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` with the kernel (or, in the engine's tests, the fake one this thread installed).
fn kernel<R>(f: impl FnOnce(&mut dyn Kernel) -> R) -> R {
    #[cfg(test)]
    {
        FAKE.with(|fake| match fake.borrow_mut().as_mut() {
            Some(k) => f(k.as_mut()),
            None => f(&mut Real),
        })
    }
    #[cfg(not(test))]
    {
        f(&mut Real)
    }
}

/// While the guard lives, this thread's system calls go to `fake`.
#[cfg(test)]
pub(crate) fn install_fake(fake: Box<dyn Kernel>) -> FakeGuard {
    FAKE.with(|f| *f.borrow_mut() = Some(fake));
    FakeGuard
}

#[cfg(test)]
pub(crate) struct FakeGuard;

#[cfg(test)]
impl Drop for FakeGuard {
    fn drop(&mut self) {
        FAKE.with(|f| *f.borrow_mut() = None);
    }
}

fn request(tid: i32, request: Request<'_>) -> Result<u64, SysError> {
    let call = request.name();
    kernel(|k| k.ptrace(tid, request)).map_err(|errno| SysError { call, tid, errno })
}

/// Continue a stopped thread, delivering `signal` (0 for none).
pub fn cont(tid: i32, signal: i32) -> Result<(), SysError> {
    request(tid, Request::Cont { signal }).map(drop)
}

/// Continue a stopped thread until it enters or leaves a system call, delivering `signal`.
pub fn cont_to_syscall(tid: i32, signal: i32) -> Result<(), SysError> {
    request(tid, Request::Syscall { signal }).map(drop)
}

/// Execute one instruction of a stopped thread, delivering `signal` first (see `kept`: a
/// signal it blocks is queued again instead).
pub fn single_step(tid: i32, signal: i32) -> Result<(), SysError> {
    request(tid, Request::Step { signal }).map(drop)
}

/// `value` as request `ask` fills it in (a `PTRACE_GET*` of a C struct).
fn filled<T>(tid: i32, mut value: T, ask: impl FnOnce(&mut T) -> Request<'_>) -> Result<T, SysError> {
    request(tid, ask(&mut value))?;
    Ok(value)
}

/// The registers of a stopped thread.
pub fn get_regs(tid: i32) -> Result<libc::user_regs_struct, SysError> {
    // SAFETY: all-zero is a valid user_regs_struct.
    filled(tid, unsafe { std::mem::zeroed() }, |r| Request::GetRegs(r))
}

/// Set the registers of a stopped thread.
pub fn set_regs(tid: i32, r: &libc::user_regs_struct) -> Result<(), SysError> {
    request(tid, Request::SetRegs(r)).map(drop)
}

/// The message of the last ptrace event (a new thread's or child's id).
pub fn event_message(tid: i32) -> Result<u64, SysError> {
    request(tid, Request::EventMessage)
}

/// Set the ptrace options of a traced thread.
pub fn set_options(tid: i32, options: u64) -> Result<(), SysError> {
    request(tid, Request::SetOptions { options }).map(drop)
}

/// Wait for any thread this tracer thread traces (`-1`) or one; returns `(tid, status)`.
/// `__WNOTHREAD`: stops of processes other tracer threads of this process trace are theirs.
pub fn wait(tid: i32) -> Result<(i32, i32), SysError> {
    loop {
        match wait_interruptible(tid)? {
            Some(got) => return Ok(got),
            None => continue,
        }
    }
}

/// Like [`wait`], but gives up at `deadline` (`None`): polled, 10 µs apart at first and up to a
/// millisecond apart (most stops waited for here end a call into the program that takes
/// microseconds: a load of the agent makes a dozen).
pub fn wait_until(tid: i32, deadline: std::time::Instant) -> Result<Option<(i32, i32)>, SysError> {
    let mut pause = std::time::Duration::from_micros(10);
    loop {
        match kernel(|k| k.wait(tid, true)) {
            Ok(Some(got)) => return Ok(Some(got)),
            Ok(None) | Err(libc::EINTR) if std::time::Instant::now() >= deadline => return Ok(None),
            Ok(None) | Err(libc::EINTR) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(1));
            }
            Err(errno) => return Err(SysError { call: "waitpid", tid, errno }),
        }
    }
}

/// Like [`wait`], but a signal that interrupts the wait returns `None` (so that the caller can
/// look at what its signal handlers recorded: Ctrl-C, the end of `--duration`).
pub fn wait_interruptible(tid: i32) -> Result<Option<(i32, i32)>, SysError> {
    match kernel(|k| k.wait(tid, false)) {
        Ok(got) => Ok(got),
        Err(libc::EINTR) => Ok(None),
        Err(errno) => Err(SysError { call: "waitpid", tid, errno }),
    }
}

/// Like [`wait`] for thread `tid` alone, but returns `None` at once when it has not changed
/// state. What other traced threads report stays with the kernel for whoever waits for them.
pub fn try_wait(tid: i32) -> Result<Option<(i32, i32)>, SysError> {
    match kernel(|k| k.wait(tid, true)) {
        Ok(got) => Ok(got),
        Err(libc::EINTR) => Ok(None),
        Err(errno) => Err(SysError { call: "waitpid", tid, errno }),
    }
}

/// Like [`wait`] for any traced thread, but returns `None` at once when none has changed
/// state.
pub fn try_wait_any() -> Result<Option<(i32, i32)>, SysError> {
    match kernel(|k| k.wait(-1, true)) {
        Ok(got) => Ok(got),
        Err(libc::EINTR) => Ok(None),
        Err(errno) => Err(SysError { call: "waitpid", tid: -1, errno }),
    }
}

/// Attach to thread `tid` without stopping it, with ptrace `options`.
pub fn seize(tid: i32, options: u64) -> Result<(), SysError> {
    request(tid, Request::Seize { options }).map(drop)
}

/// Stop a seized thread (it reports a `PTRACE_EVENT_STOP`).
pub fn interrupt(tid: i32) -> Result<(), SysError> {
    request(tid, Request::Interrupt).map(drop)
}

/// Let a seized thread in group-stop stay stopped while still reporting events.
/// `EIO` says the thread's last stop was not a group-stop.
pub fn listen(tid: i32) -> Result<(), SysError> {
    request(tid, Request::Listen).map(drop)
}

/// Detach from a stopped thread, delivering `signal` (0 for none).
pub fn detach(tid: i32, signal: i32) -> Result<(), SysError> {
    request(tid, Request::Detach { signal }).map(drop)
}

/// Whether two register sets of a thread are the same: its general registers, its flags, its
/// instruction and stack pointers.
pub fn same_registers(a: &libc::user_regs_struct, b: &libc::user_regs_struct) -> bool {
    let all = |r: &libc::user_regs_struct| {
        [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15, r.rip, r.eflags,
        ]
    };
    all(a) == all(b)
}

/// The event of a ptrace stop status (`PTRACE_EVENT_*`), 0 for a plain signal stop.
pub fn event_of(status: i32) -> i32 {
    (status >> 16) & 0xff
}

/// Whether `signal` is pending for thread `tid` of process `pid` itself.
pub fn is_pending(pid: i32, tid: i32, signal: i32) -> bool {
    kernel(|k| k.pending(pid, tid)) & (1 << (signal - 1)) != 0
}

/// Whether `signal` is pending for process `pid` or for one of its threads.
pub fn is_pending_anywhere(pid: i32, signal: i32) -> bool {
    kernel(|k| k.pending_anywhere(pid)) & (1 << (signal - 1)) != 0
}

/// How process `pid` takes `signal` now: (ignored, caught), both false for the default.
pub fn disposition(pid: i32, signal: i32) -> (bool, bool) {
    let (ignored, caught) = kernel(|k| k.dispositions(pid));
    let bit = 1 << (signal - 1);
    (ignored & bit != 0, caught & bit != 0)
}

/// Whether thread `tid` of process `pid` still exists: a new thread may have run, exited and
/// been reaped before its parent's clone event is read.
pub fn exists(pid: i32, tid: i32) -> bool {
    kernel(|k| k.exists(pid, tid))
}

/// The information of the signal a thread is stopped for (in a signal-delivery stop).
pub fn siginfo(tid: i32) -> Result<libc::siginfo_t, SysError> {
    // SAFETY: all-zero is a valid siginfo_t.
    filled(tid, unsafe { std::mem::zeroed() }, |i| Request::GetSigInfo(i))
}

/// The signals a stopped thread blocks, as a mask (bit N-1: signal N); inside `sigsuspend`
/// or `ppoll`, the mask it returns to.
pub fn sigmask(tid: i32) -> Result<u64, SysError> {
    filled(tid, 0, |m| Request::GetSigMask(m))
}

/// Set the signals a stopped thread blocks (SIGKILL and SIGSTOP never are).
pub fn set_sigmask(tid: i32, mask: u64) -> Result<(), SysError> {
    request(tid, Request::SetSigMask(&mask)).map(drop)
}

/// Set debug register `n` (0-3: an address; 7: which of them are armed, and how) of a stopped
/// thread. The kernel keeps them per thread until it `exec`s or ends, after a detach too.
pub fn set_debug_register(tid: i32, n: u64, value: u64) -> Result<(), SysError> {
    let offset = (std::mem::offset_of!(libc::user, u_debugreg) + n as usize * 8) as u64;
    request(tid, Request::PokeUser { offset, value }).map(drop)
}

/// Set the information of the signal a thread in a signal-delivery stop is to receive.
pub fn set_siginfo(tid: i32, info: &libc::siginfo_t) -> Result<(), SysError> {
    request(tid, Request::SetSigInfo(info)).map(drop)
}

/// Make a signal the tracer held back pending again for thread `tid` of process `pid`: with
/// its information when the kernel allows it (signals sent with `sigqueue`), or as sent by
/// `tgkill` (it refuses to forge a `kill` from another process).
pub fn queue_again(pid: i32, tid: i32, info: &libc::siginfo_t) -> Result<(), SysError> {
    kernel(|k| match k.queue(pid, tid, info) {
        Err(libc::EPERM) => k.tgkill(pid, tid, info.si_signo),
        other => other,
    })
    .map_err(|errno| SysError { call: "rt_tgsigqueueinfo", tid, errno })
}

/// Converting between the kernel's `user_regs_struct` and [`Regs`] (no vector registers).
pub fn to_regs(r: &libc::user_regs_struct) -> Regs {
    Regs {
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rbx: r.rbx,
        rsp: r.rsp,
        rbp: r.rbp,
        rsi: r.rsi,
        rdi: r.rdi,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.eflags,
        xmm: [0; 16],
    }
}

/// Write `regs`' general registers into `r`.
pub fn from_regs(regs: &Regs, r: &mut libc::user_regs_struct) {
    (r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi) =
        (regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi);
    (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) =
        (regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15);
    r.rip = regs.rip;
    r.eflags = (r.eflags & !0xcd5) | (regs.rflags & 0xcd5);
}

/// The tracee's memory through `/proc/PID/mem`, which reads and writes through page
/// protections (code included) and reports bad addresses as errors.
pub struct RemoteMemory {
    pid: i32,
    file: Option<File>,
    /// Where the process's code has a `syscall` instruction that dprobe makes a thread run
    /// (found once per program image, checked before each use).
    pub(crate) syscall_insn: Option<Addr>,
}

impl RemoteMemory {
    /// Open process `pid`'s memory.
    pub fn open(pid: i32) -> io::Result<Self> {
        Ok(RemoteMemory { pid, file: kernel(|k| k.memory_file(pid))?, syscall_insn: None })
    }

    /// Whose memory it is.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Memory for RemoteMemory {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let ok = match &self.file {
            Some(file) => file.read_exact_at(buf, addr.0).is_ok(),
            None => kernel(|k| k.read(self.pid, addr.0, buf)),
        };
        ok.then_some(()).ok_or(MemoryFault { addr, len: buf.len(), write: false })
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        let ok = match &self.file {
            Some(file) => file.write_all_at(data, addr.0).is_ok(),
            None => kernel(|k| k.write(self.pid, addr.0, data)),
        };
        ok.then_some(()).ok_or(MemoryFault { addr, len: data.len(), write: true })
    }
}

/// Write two pieces of process `pid`'s memory in one system call (`process_vm_writev`, which
/// honours page protections: for data and stacks).
pub fn write_two(pid: i32, first: (Addr, &[u8]), second: (Addr, &[u8])) -> Result<(), TraceError> {
    let local = [
        libc::iovec { iov_base: first.1.as_ptr() as *mut libc::c_void, iov_len: first.1.len() },
        libc::iovec { iov_base: second.1.as_ptr() as *mut libc::c_void, iov_len: second.1.len() },
    ];
    let remote = [
        libc::iovec { iov_base: first.0 .0 as *mut libc::c_void, iov_len: first.1.len() },
        libc::iovec { iov_base: second.0 .0 as *mut libc::c_void, iov_len: second.1.len() },
    ];
    // SAFETY: the local iovecs point into live slices that the kernel only reads; the remote
    // ones are addresses in the other process, checked by the kernel.
    let n = unsafe { libc::process_vm_writev(pid, local.as_ptr(), 2, remote.as_ptr(), 2, 0) };
    if n < 0 {
        return Err(SysError { call: "process_vm_writev", tid: pid, errno: errno() }.into());
    }
    // A short write stopped at the first byte it could not write.
    let n = n as usize;
    if n < first.1.len() {
        Err(MemoryFault { addr: first.0.offset(n as u64), len: first.1.len() - n, write: true }.into())
    } else if n < first.1.len() + second.1.len() {
        let done = n - first.1.len();
        Err(MemoryFault { addr: second.0.offset(done as u64), len: second.1.len() - done, write: true }.into())
    } else {
        Ok(())
    }
}

/// A command as `execv` takes it: the file `program` (a path) and its argument vector, whose
/// first element is `argv0`, the name the program is told it was started by (a command
/// found on `PATH` is told the name it was given, as `execvp` and shells do, not the path).
pub fn command_line(program: &str, argv0: &str, args: &[&str]) -> io::Result<(CString, Vec<CString>)> {
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    let file = CString::new(program).map_err(invalid)?;
    let argv = std::iter::once(argv0)
        .chain(args.iter().copied())
        .map(CString::new)
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    Ok((file, argv))
}

/// Fork a child that executes `program` with `args`, seized (`PTRACE_SEIZE` with `options`)
/// before it executes: it waits for a byte on a pipe until the tracer has seized it. Unlike
/// `PTRACE_TRACEME`, it leaves no moment where it is traced without `options`: with
/// `PTRACE_O_EXITKILL` it dies with the tracer from the first instruction of the program on,
/// and its `execve` stops it with a `PTRACE_EVENT_EXEC` (`options` must hold
/// `PTRACE_O_TRACEEXEC`), never with the `SIGTRAP` of `PTRACE_TRACEME`, which the program
/// would receive (and die of) if the tracer died at that stop. A tracer that dies before it
/// seized the child ends it (`_exit(127)`), never runs the program untraced. A child whose
/// `execv` fails exits with its `errno`.
pub fn fork_seized(program: &std::ffi::CStr, args: &[std::ffi::CString], options: u64) -> io::Result<i32> {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut go = [0i32; 2];
    // SAFETY: `go` has room for the two descriptors.
    if unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [go_read, go_write] = go;
    // Every signal blocked across the fork, until the child has its handlers at the default:
    // one that came in between ran dprobe's handler in the child (a Ctrl-C to the process
    // group as the command started: the program, never told, ran to its end). Pending, it is
    // the program's once the mask is back, just before `execv`.
    // SAFETY: all-zero is a valid sigset_t, which sigfillset fills.
    let (mut all, mut before): (libc::sigset_t, libc::sigset_t) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: valid sets, owned by this frame.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
    }
    // SAFETY: fork in a possibly multi-threaded tracer: the child only calls sigaction,
    // signal, sigprocmask, close, read, execv and _exit, which are async-signal-safe, on memory
    // prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            // dprobe's handlers to the default (the kernel's `execve` would, too late); an
            // ignored signal stays ignored across exec, as from a shell.
            for signal in 1..=libc::SIGRTMAX() {
                let mut action: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                    && action.sa_sigaction != libc::SIG_DFL
                    && action.sa_sigaction != libc::SIG_IGN
                {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            // The Rust runtime ignores SIGPIPE: the program starts with it at the default, as
            // from a shell.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::close(go_write);
            let mut byte = 0u8;
            loop {
                match libc::read(go_read, (&mut byte as *mut u8).cast(), 1) {
                    1 => break,
                    -1 if *libc::__errno_location() == libc::EINTR => {}
                    _ => libc::_exit(127),
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            libc::execv(program.as_ptr(), argv.as_ptr());
            // Why it failed, as the exit status (`execve`'s errors are below 127), for the
            // tracer to say (see `TraceError::not_started`).
            let why = *libc::__errno_location();
            libc::_exit(if (1..127).contains(&why) { why } else { 127 });
        }
    }
    // SAFETY: the mask saved above, a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut()) };
    // SAFETY: our end of the pipe, which the child has its own copy of.
    unsafe { libc::close(go_read) };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: our end of the pipe.
        unsafe { libc::close(go_write) };
        return Err(e);
    }
    let seized = seize(pid, options);
    if seized.is_ok() {
        // SAFETY: writes one byte from a local to our end of the pipe.
        unsafe { libc::write(go_write, (&1u8 as *const u8).cast(), 1) };
    }
    // SAFETY: our end of the pipe; closed without a byte, it ends a child not seized.
    unsafe { libc::close(go_write) };
    if let Err(e) = seized {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(io::Error::from_raw_os_error(e.errno));
    }
    Ok(pid)
}

/// Wait for child `pid`, which [`fork_seized`] started, to reach its `execve`
/// (`PTRACE_EVENT_EXEC`): `Ok` there, else the wait status it ended with. A signal that came
/// before (pending as it started: a Ctrl-C to the process group) is the program's, delivered
/// as untraced (it may end it); a stop keeps it stopped until it is continued.
pub fn wait_for_exec(pid: i32) -> Result<Result<(), i32>, SysError> {
    loop {
        let (_, status) = wait(pid)?;
        if !libc::WIFSTOPPED(status) {
            return Ok(Err(status));
        }
        match event_of(status) {
            libc::PTRACE_EVENT_EXEC => return Ok(Ok(())),
            0 => cont(pid, libc::WSTOPSIG(status))?,
            _ if crate::thread::is_group_stop(status) => listen(pid)?,
            _ => cont(pid, 0)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel where every thread has vanished and no memory is readable.
    struct Vanished;

    impl Kernel for Vanished {
        fn ptrace(&mut self, _: i32, _: Request<'_>) -> Result<u64, i32> {
            Err(libc::ESRCH)
        }
        fn wait(&mut self, _: i32, _: bool) -> Result<Option<(i32, i32)>, i32> {
            Err(libc::ECHILD)
        }
        fn tgkill(&mut self, _: i32, _: i32, _: i32) -> Result<(), i32> {
            Err(libc::ESRCH)
        }
        fn queue(&mut self, _: i32, _: i32, _: &libc::siginfo_t) -> Result<(), i32> {
            Err(libc::ESRCH)
        }
        fn pending(&mut self, _: i32, _: i32) -> u64 {
            0
        }
        fn exists(&mut self, _: i32, _: i32) -> bool {
            false
        }
        fn memory_file(&mut self, _: i32) -> io::Result<Option<File>> {
            Ok(None)
        }
        fn read(&mut self, _: i32, _: u64, _: &mut [u8]) -> bool {
            false
        }
        fn write(&mut self, _: i32, _: u64, _: &[u8]) -> bool {
            false
        }
    }

    #[test]
    fn a_vanished_thread_is_gone_and_other_errnos_stay_typed() {
        let _fake = install_fake(Box::new(Vanished));
        let e: TraceError = cont(42, 0).unwrap_err().into();
        assert!(matches!(e, TraceError::Gone { tid: 42 }), "{e:?}");
        let e: TraceError = wait(7).unwrap_err().into();
        assert!(matches!(e, TraceError::Sys(SysError { call: "waitpid", tid: 7, errno: libc::ECHILD })), "{e:?}");
    }

    #[test]
    fn a_memory_fault_stays_a_memory_fault() {
        let _fake = install_fake(Box::new(Vanished));
        let mut memory = RemoteMemory::open(1).unwrap();
        let mut buf = [0u8; 8];
        let e: TraceError = memory.read(Addr(0x1000), &mut buf).unwrap_err().into();
        assert!(matches!(e, TraceError::Memory(MemoryFault { addr: Addr(0x1000), len: 8, write: false })), "{e:?}");
    }
}
