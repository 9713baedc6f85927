//! The one seam between the ptrace engine and the kernel: ptrace requests, waiting, and the
//! tracee's memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use dprobe_arch::{Addr, Memory, MemoryFault, Regs};

fn check(r: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if r == -1 {
        let e = io::Error::last_os_error();
        if gone(&e) {
            return Err(e); // kept as is, so that callers can tell (see `gone`)
        }
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

/// `ptrace(request, tid, addr, data)`.
pub fn ptrace(request: libc::c_uint, tid: i32, addr: u64, data: u64, what: &str) -> io::Result<libc::c_long> {
    // SAFETY: the requests used here take integers or pointers to buffers the callers own
    // (`regs`), never anything the kernel keeps.
    check(unsafe { libc::ptrace(request, tid, addr as *mut libc::c_void, data as *mut libc::c_void) }, what)
}

/// Whether an error says the thread is gone (killed or exited while the tracer looked at it):
/// its exit is reported by `wait` later.
pub fn gone(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ESRCH)
}

/// Continue a stopped thread, delivering `signal` (0 for none).
pub fn cont(tid: i32, signal: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, tid, 0, signal as u64, "PTRACE_CONT").map(drop)
}

/// Execute one instruction of a stopped thread.
pub fn single_step(tid: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SINGLESTEP, tid, 0, 0, "PTRACE_SINGLESTEP").map(drop)
}

/// The registers of a stopped thread.
pub fn get_regs(tid: i32) -> io::Result<libc::user_regs_struct> {
    // SAFETY: all-zero is a valid user_regs_struct.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, tid, 0, &mut r as *mut _ as u64, "PTRACE_GETREGS")?;
    Ok(r)
}

/// Set the registers of a stopped thread.
pub fn set_regs(tid: i32, r: &libc::user_regs_struct) -> io::Result<()> {
    ptrace(libc::PTRACE_SETREGS, tid, 0, r as *const _ as u64, "PTRACE_SETREGS").map(drop)
}

/// The message of the last ptrace event (a new thread's or child's id).
pub fn event_message(tid: i32) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut _ as u64, "PTRACE_GETEVENTMSG")?;
    Ok(msg)
}

/// Wait for any thread this tracer thread traces (`-1`) or one; returns `(tid, status)`.
/// `__WNOTHREAD`: stops of processes other tracer threads of this process trace are theirs.
pub fn wait(tid: i32) -> io::Result<(i32, i32)> {
    let mut status = 0;
    loop {
        // SAFETY: writes the status we own.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::__WNOTHREAD) };
        if r >= 0 {
            return Ok((r, status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Like [`wait`], but a signal that interrupts the wait returns `None` (so that the caller can
/// look at what its signal handlers recorded: Ctrl-C, the end of `--duration`).
pub fn wait_interruptible(tid: i32) -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    // SAFETY: writes the status we own.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::__WNOTHREAD) };
    if r >= 0 {
        return Ok(Some((r, status)));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Like [`wait`] for any traced thread, but returns `None` at once when none has changed
/// state.
pub fn try_wait_any() -> io::Result<Option<(i32, i32)>> {
    let mut status = 0;
    // SAFETY: writes the status we own.
    let r = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::__WNOTHREAD | libc::WNOHANG) };
    match r {
        0 => Ok(None),
        r if r > 0 => Ok(Some((r, status))),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// Attach to thread `tid` without stopping it, with ptrace `options`.
pub fn seize(tid: i32, options: u64) -> io::Result<()> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, std::ptr::null_mut::<libc::c_void>(), options as usize) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stop a seized thread (it reports a `PTRACE_EVENT_STOP`).
pub fn interrupt(tid: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT").map(drop)
}

/// Let a seized thread in group-stop stay stopped while still reporting events.
/// The error is the raw one: EIO says the thread's last stop was not a group-stop.
pub fn listen(tid: i32) -> io::Result<()> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: integer arguments only.
    if unsafe { libc::ptrace(libc::PTRACE_LISTEN, tid, null, null) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detach from a stopped thread, delivering `signal` (0 for none).
pub fn detach(tid: i32, signal: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, tid, 0, signal as u64, "PTRACE_DETACH").map(drop)
}

/// The event of a ptrace stop status (`PTRACE_EVENT_*`), 0 for a plain signal stop.
pub fn event_of(status: i32) -> i32 {
    (status >> 16) & 0xff
}

/// Send `signal` to thread `tid` of process `pid`.
pub fn tgkill(pid: i32, tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    check(unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) }, "tgkill").map(drop)
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
    file: File,
}

impl RemoteMemory {
    /// Open process `pid`'s memory.
    pub fn open(pid: i32) -> io::Result<Self> {
        Ok(RemoteMemory { file: File::options().read(true).write(true).open(format!("/proc/{pid}/mem"))? })
    }
}

impl Memory for RemoteMemory {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        self.file.read_exact_at(buf, addr.0).map_err(|_| MemoryFault { addr, len: buf.len(), write: false })
    }

    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        self.file.write_all_at(data, addr.0).map_err(|_| MemoryFault { addr, len: data.len(), write: true })
    }
}

/// Write two pieces of process `pid`'s memory in one system call (`process_vm_writev`, which
/// honours page protections: for data and stacks).
pub fn write_two(pid: i32, first: (Addr, &[u8]), second: (Addr, &[u8])) -> io::Result<()> {
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
    let want = (first.1.len() + second.1.len()) as isize;
    if n == want {
        Ok(())
    } else if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::other(format!("process_vm_writev wrote {n} of {want} bytes")))
    }
}

/// Fork a child that asks to be traced and executes `program` with `args` (`args[0]` is the
/// program name). Everything the child does between `fork` and `execv` is async-signal-safe:
/// the strings are prepared before.
pub fn fork_traced(program: &std::ffi::CStr, args: &[std::ffi::CString]) -> io::Result<i32> {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: fork in a possibly multi-threaded tracer: the child only calls ptrace, execv and
    // _exit, which are async-signal-safe, on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            // The Rust runtime ignores SIGPIPE; an ignored signal stays ignored across exec,
            // and the program must start with the default disposition, as from a shell.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
            libc::execv(program.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}
