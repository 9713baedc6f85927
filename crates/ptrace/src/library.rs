//! Loading a shared library into another process: one of its threads is held stopped at a
//! point where calling into the C library is safe, made to call the process's own `dlopen`
//! and then a function of the loaded library, and given back exactly as it was (general
//! registers, the extended FPU state and `errno`).
//!
//! For a started program the point is just after its C library's initialisation, before
//! any other library's constructor (see `early`): no other thread exists, no lock is held. For
//! a running process one thread is seized and interrupted until it stops where it holds no
//! lock of the C library's or the loader's (see `safe_place`).
//!
//! A call returns to an address below the lowest mappable page: the fault stops the thread
//! there, and the tracer reads the result in `rax`.
//!
//! The program's signals wait while the calls run (the thread blocks them, see
//! `BLOCKED_DURING_CALLS`; those that stop a call all the same are held by the tracer and
//! queued again) until the thread is put back as it was, whether the load succeeded or was
//! abandoned: each is received once, where the program was. A running process is let go without a detach,
//! which would wake the thread in the call it waited in (see `let_go`).

use std::time::{Duration, Instant};

use dprobe_arch::{Addr, Memory};
use dprobe_sym::{read_maps_of, Symbols};

use crate::error::TraceError;
use crate::exec_watch::ExecWatch;
use crate::kept;
use crate::safe_place::SafePlaceChecks;
use crate::shared_image::{may_open_files_of_dprobe, SharedImage};
use crate::sys::{self, RemoteMemory, ERESTARTNOHAND, ERESTART_RESTARTBLOCK};

/// Where a remote call returns: never mapped (below `vm.mmap_min_addr`), so the return faults.
const RETURN_TRAP: u64 = 0x320;
/// Bytes below the stack pointer a function may use without moving it (the System V red zone).
const RED_ZONE: u64 = 128;
/// `RTLD_NOW`.
const RTLD_NOW: u64 = 2;
/// How long a remote call may go without running before the process is declared stuck (its
/// `dlopen` waiting for a lock another thread holds). Measured in the thread's own time on a
/// CPU, not the wall clock: on a loaded machine a call that runs, however slowly, is waited for.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The wall-clock bound for a call that keeps running (a loop in a constructor).
const CALL_WALL_LIMIT: Duration = Duration::from_secs(120);
/// Room for the extended state (`NT_X86_XSTATE`): AVX-512 and AMX included.
const XSTATE_BYTES: usize = 16 * 1024;
const NT_X86_XSTATE: libc::c_int = 0x202;

/// Why a library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A ptrace or memory operation failed.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The process cannot load a library, for this reason.
    #[error("process {pid} cannot load dprobe's agent: {reason}")]
    Refused {
        /// The process.
        pid: i32,
        /// Why, in words.
        reason: String,
    },
    /// The process's `dlopen` failed (with `dlerror`'s text when it could be read).
    #[error("process {pid} could not load `{path}`: {reason}")]
    Dlopen {
        /// The process.
        pid: i32,
        /// The library.
        path: String,
        /// `dlerror()`.
        reason: String,
    },
}

/// Run process `pid`, held at its `exec` with no trap since, to where its C library is
/// initialized (see `early`). Where it ignores `SIGTRAP` (`ignored`, where the kernel's action
/// cannot say so, or as the kernel shows it at the `exec`), the action is ignored again after
/// the start's traps set it to the default: dprobe's agent, loaded next, takes the action it
/// finds for the program's.
fn run_to_libc_keeping_trap_ignored(pid: i32, memory: &mut RemoteMemory, ignored: bool) -> Result<(), LoadError> {
    let ignored = ignored || crate::trap_action::ignored_at_exec(pid);
    crate::early::run_to_libc_initialized(pid, memory)?;
    if ignored {
        crate::trap_action::ignore_again(pid, pid, memory);
    }
    Ok(())
}

/// Refused where program `pid`, held at its `exec` with nothing of dprobe's run in it yet,
/// blocks `SIGTRAP` (a mask it started with, or kept through `execve`): the kernel kills a
/// thread at a trap it blocks, as the agent's probes on `int3` are; and the first of the traps
/// that load the agent would open it for good (the kernel does, for a trap), so that the
/// program's own `SIGTRAP`, which it blocks to wait for it, would kill it. The ptrace engine
/// takes traps as the tracer, and keeps such a mask as the program's.
fn trap_blocked_at_exec(pid: i32) -> Result<(), LoadError> {
    if sys::sigmask(pid)? & crate::kept::bit(libc::SIGTRAP) == 0 {
        return Ok(());
    }
    let reason = "it blocks SIGTRAP (a mask it started with): the traps of the agent's probes would kill it".into();
    Err(LoadError::Refused { pid, reason })
}

impl From<crate::error::SysError> for LoadError {
    fn from(e: crate::error::SysError) -> Self {
        LoadError::Trace(e.into())
    }
}

/// `memfd_create` flags, as the injected call's argument.
const MFD_CLOEXEC: u64 = libc::MFD_CLOEXEC as u64;
const MFD_EXEC: u64 = crate::shared_image::MFD_EXEC as u64;

/// The functions of the process's C library that loading a library calls.
struct Functions {
    dlopen: u64,
    dlsym: u64,
    dlerror: Option<u64>,
    errno_location: Option<u64>,
    memfd_create: Option<u64>,
    open: Option<u64>,
    fcntl: Option<u64>,
    close: Option<u64>,
}

/// One thread of a process held stopped by the tracer, to call functions through.
pub struct Injector {
    pid: i32,
    tid: i32,
    memory: RemoteMemory,
    saved: libc::user_regs_struct,
    xstate: Vec<u8>,
    /// Started by dprobe (and killed if dprobe gives up before letting it run).
    spawned: bool,
    released: bool,
    /// The signals the thread blocks (the mask it returns to, inside `sigsuspend`).
    mask: u64,
    /// The program's signals that stopped a call and could not be kept pending (see `kept`:
    /// `SIGSTOP`, a `SIGTRAP` of the program's), queued again for the thread once it is put
    /// back as it was.
    held: Vec<libc::siginfo_t>,
    /// A call into the thread was stopped inside a timed wait of its own (a stuck call, or a
    /// signal meanwhile): the kernel's per-thread restart state is the call's now, not that of
    /// the program's own sleep (see [`Injector::registers_to_resume`]).
    restart_state_replaced: bool,
    /// Where the thread was held, in words (see [`Injector::held_where`]).
    held_where: String,
}

impl Injector {
    /// Start `program` with `args` and hold it where its C library is initialised and no
    /// other constructor has run yet (see `early`).
    pub fn spawn(program: &str, args: &[&str]) -> Result<Injector, LoadError> {
        Injector::spawn_as(program, program, args)
    }

    /// [`Injector::spawn`], the program told that it was started as `argv0` (its `argv[0]`).
    pub fn spawn_as(program: &str, argv0: &str, args: &[&str]) -> Result<Injector, LoadError> {
        let spawn_err = |reason| TraceError::Spawn { program: program.to_owned(), reason };
        let (c_program, c_args) = sys::command_line(program, argv0, args).map_err(spawn_err)?;
        // Killed with its tracer until it is let go at its entry: the death of the `dprobe`
        // the user sees is outlived by the process that traces (which then lets the program
        // go as untraced); only that process's own death can come while a thread of the
        // program is in a call made for the load (its registers dprobe's, its return address
        // a trap). Let go then, the program would run half of that call and crash on its
        // return; it has not run a line of its own, so it is killed instead, as `abandon` does.
        // Seized before it executes, it is never traced without these options.
        let options = (libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEEXEC) as u64;
        let pid = sys::fork_seized(&c_program, &c_args, options).map_err(spawn_err)?;
        if let Err(ended) = sys::wait_for_exec(pid)? {
            return Err(TraceError::not_started(program, ended).into());
        }
        let mut memory = RemoteMemory::open(pid).map_err(TraceError::from)?;
        if let Err(e) =
            trap_blocked_at_exec(pid).and_then(|()| run_to_libc_keeping_trap_ignored(pid, &mut memory, false))
        {
            // It has run none of its own code: ended, so that a fallback starts it afresh.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            return Err(e);
        }
        Injector::hold(pid, pid, memory, true)
    }

    /// Hold traced process `pid`, stopped at its `exec`, where its new program can load a
    /// library (as [`Injector::spawn`] holds a started one). Killed with the tracer until let
    /// go, as a started program is. `trap_ignored`: the program ignored `SIGTRAP` before its
    /// `exec`, where the kernel's action did not say so (see [`crate::ExecWatch::trap_ignored`]).
    pub(crate) fn at_exec(pid: i32, trap_ignored: bool) -> Result<Injector, LoadError> {
        trap_blocked_at_exec(pid)?;
        sys::set_options(pid, (libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEEXEC) as u64)?;
        let mut memory = RemoteMemory::open(pid).map_err(TraceError::from)?;
        run_to_libc_keeping_trap_ignored(pid, &mut memory, trap_ignored)?;
        Injector::hold(pid, pid, memory, true)
    }

    /// Seize one thread of running process `pid` and hold it stopped at a safe point.
    pub fn attach(pid: i32) -> Result<Injector, LoadError> {
        let refused = |reason: String| LoadError::Refused { pid, reason };
        let attach_err = |reason: String| LoadError::Trace(TraceError::Attach { pid, reason });
        if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(attach_err("no such process".into()));
        }
        if pid == std::process::id() as i32 {
            return Err(attach_err("it is dprobe itself (use the in-process engine)".into()));
        }
        if let Some(process) = process_of_thread(pid) {
            let reason = match crate::tracee::others_after_first_thread_ended(process).is_some() {
                true => format!(
                    "{pid} is a thread of process {process}, whose first thread has ended: the agent cannot \
                     be loaded there, and the ptrace engine can trace it by a thread's id (`--engine ptrace -p {pid}`)"
                ),
                false => format!("{pid} is a thread of process {process}, not a process: give `-p {process}`"),
            };
            return Err(attach_err(reason));
        }
        let tids = crate::proc_ids::thread_ids(pid).map_err(|e| refused(format!("cannot list its threads: {e}")))?;
        let mut checks = SafePlaceChecks::new(pid);
        let mut tried = Vec::new();
        for tid in tids {
            if let Err(e) = sys::seize(tid, 0) {
                if e.gone() {
                    continue;
                }
                if e.errno == libc::EPERM {
                    return Err(attach_err(crate::tracee::refusal_reason(pid)));
                }
                return Err(attach_err(e.to_string()));
            }
            let safe = checks.stop_at_safe_point(tid).inspect_err(|_| {
                // Not left traced: a stopped thread is let go, a running one goes with dprobe.
                let _ = sys::detach(tid, 0);
            })?;
            match safe {
                Ok(()) => {
                    let memory = RemoteMemory::open(pid).map_err(TraceError::from)?;
                    return Injector::hold(pid, tid, memory, false);
                }
                // Seized but not stopped, it cannot be detached: the attach ends here, and the
                // end of the thread that seized it lets it go (the kernel detaches a tracer's
                // threads when it ends).
                Err(crate::safe_place::NotSafe::NoStop) => {
                    let _ = sys::detach(tid, 0);
                    return Err(refused(crate::safe_place::refusal(pid, &[(tid, crate::safe_place::NotSafe::NoStop)])));
                }
                Err(why) => {
                    let _ = sys::detach(tid, 0);
                    tried.push((tid, why));
                }
            }
        }
        Err(refused(crate::safe_place::refusal(pid, &tried)))
    }

    fn hold(pid: i32, tid: i32, memory: RemoteMemory, spawned: bool) -> Result<Injector, LoadError> {
        let saved = sys::get_regs(tid)?;
        let xstate = get_xstate(tid)?;
        let mask = sys::sigmask(tid)?;
        Ok(Injector {
            pid,
            tid,
            memory,
            saved,
            xstate,
            spawned,
            released: false,
            mask,
            held: Vec::new(),
            restart_state_replaced: false,
            held_where: crate::safe_place::held_place(pid, tid, &saved),
        })
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Load the library at `path` with the process's `dlopen`, then call its function `entry`
    /// with the C string `arg`; returns what `entry` returned.
    pub fn load_library(&mut self, path: &str, entry: &str, arg: &str) -> Result<u64, LoadError> {
        let functions = self.functions()?;
        self.keeping_errno(&functions, |me| me.dlopen_and_call(&functions, path, entry, arg))
    }

    /// Load the library whose bytes are `image`, then as [`Injector::load_library`]: from a
    /// memory file the process has already holding the same bytes (the loader then finds the
    /// library loaded), else from dprobe's sealed copy, opened by the process where it may
    /// (`shared_image.rs`), else from a copy written into a memory file of the process's own.
    /// The process needs no access to any file of dprobe's.
    pub fn load_shared_image(&mut self, image: &SharedImage, entry: &str, arg: &str) -> Result<u64, LoadError> {
        let functions = self.functions()?;
        self.keeping_errno(&functions, |me| {
            let path = match me.memory_file_holding(image.bytes(), image.name()) {
                Some(path) => path,
                None => match me.opened_shared_file(&functions, image)? {
                    Some(path) => path,
                    None => me.new_memory_file(&functions, image.bytes(), image.name())?,
                },
            };
            me.dlopen_and_call(&functions, &path, entry, arg)
        })
    }

    /// dprobe's sealed copy of `image`, opened by the process (closed at its `exec`, and out
    /// of its way as [`Injector::new_memory_file`]'s file is), by the path the process loads
    /// it with; `None` where the process may not open it.
    fn opened_shared_file(&mut self, functions: &Functions, image: &SharedImage) -> Result<Option<String>, LoadError> {
        let (Some(open), Some(shared)) = (functions.open, image.path()) else { return Ok(None) };
        if !may_open_files_of_dprobe(self.pid) {
            return Ok(None);
        }
        let flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
        let fd = self.call(open, &[shared.as_bytes()], &[flags])? as i32;
        if fd < 0 {
            return Ok(None);
        }
        let fd = self.keep_high(functions, fd)?;
        Ok(Some(format!("/proc/{}/fd/{fd}", self.pid)))
    }

    /// The functions a load calls, from the process's own C library.
    fn functions(&self) -> Result<Functions, LoadError> {
        let maps = read_maps_of(self.pid as u32).map_err(TraceError::from)?;
        let pid = self.pid;
        let refused = |reason: &str| LoadError::Refused { pid, reason: reason.to_owned() };
        if !maps.iter().filter_map(|m| m.path.as_deref()).any(|p| p.contains("/ld-linux") || p.contains("/ld-")) {
            return Err(refused("it has no dynamic loader (a static program)"));
        }
        let symbols = Symbols::load(&maps);
        let find = |names: &[&str]| names.iter().find_map(|n| symbols.find(n)).map(|f| f.start.0);
        Ok(Functions {
            dlopen: find(&["libc:dlopen", "libdl:dlopen"]).ok_or_else(|| refused("its C library has no `dlopen`"))?,
            dlsym: find(&["libc:dlsym", "libdl:dlsym"]).ok_or_else(|| refused("its C library has no `dlsym`"))?,
            dlerror: find(&["libc:dlerror", "libdl:dlerror"]),
            errno_location: find(&["libc:__errno_location"]),
            memfd_create: find(&["libc:memfd_create"]),
            open: find(&["libc:open64", "libc:open"]),
            fcntl: find(&["libc:fcntl64", "libc:fcntl"]),
            close: find(&["libc:close"]),
        })
    }

    /// Run `f`, the thread's `errno` put back afterwards (remote calls change it).
    fn keeping_errno<T>(
        &mut self,
        functions: &Functions,
        f: impl FnOnce(&mut Self) -> Result<T, LoadError>,
    ) -> Result<T, LoadError> {
        let errno_addr = match functions.errno_location {
            Some(f) => Some(self.call(f, &[], &[])?),
            None => None,
        };
        let mut errno = [0u8; 4];
        if let Some(a) = errno_addr {
            self.memory.read(Addr(a), &mut errno).map_err(TraceError::from)?;
        }
        let result = f(self)?;
        if let Some(a) = errno_addr {
            self.memory.write(Addr(a), &errno).map_err(TraceError::from)?;
        }
        Ok(result)
    }

    fn dlopen_and_call(&mut self, functions: &Functions, path: &str, entry: &str, arg: &str) -> Result<u64, LoadError> {
        let handle = self.call(functions.dlopen, &[path.as_bytes()], &[RTLD_NOW])?;
        if handle == 0 {
            let reason = match functions.dlerror {
                Some(f) => {
                    let at = self.call(f, &[], &[])?;
                    self.read_c_string(at).unwrap_or_else(|| "dlopen returned NULL".into())
                }
                None => "dlopen returned NULL".into(),
            };
            return Err(LoadError::Dlopen { pid: self.pid, path: path.to_owned(), reason });
        }
        let function = self.call_with_handle(functions.dlsym, handle, entry.as_bytes())?;
        if function == 0 {
            return Err(LoadError::Refused { pid: self.pid, reason: format!("`{path}` has no function `{entry}`") });
        }
        self.call(function, &[arg.as_bytes()], &[])
    }

    /// A memory file named `name` the process has open holding exactly `image`, by the path
    /// the process loads it with.
    fn memory_file_holding(&self, image: &[u8], name: &str) -> Option<String> {
        let wanted = format!("/memfd:{name} (deleted)");
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).ok()?;
        fds.flatten().find_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            if link.to_str() != Some(wanted.as_str()) {
                return None;
            }
            let held = std::fs::read(fd.path()).ok()?;
            (held == image).then(|| format!("/proc/{}/fd/{}", self.pid, fd.file_name().to_string_lossy()))
        })
    }

    /// Make a memory file in the process (`memfd_create`, executable, closed at `exec`),
    /// write `image` into it through `/proc`, and return the path the process loads it with
    /// (spelled with its process id: the same file seen from any process).
    fn new_memory_file(&mut self, functions: &Functions, image: &[u8], name: &str) -> Result<String, LoadError> {
        let pid = self.pid;
        let Some(memfd_create) = functions.memfd_create else {
            return Err(LoadError::Refused { pid, reason: "its C library has no `memfd_create`".into() });
        };
        // MFD_EXEC where the kernel knows it (mappable as code whatever `vm.memfd_noexec`
        // says), else an older kernel's default, which is executable.
        let mut fd = self.call(memfd_create, &[name.as_bytes()], &[MFD_CLOEXEC | MFD_EXEC])? as i32;
        if fd < 0 {
            fd = self.call(memfd_create, &[name.as_bytes()], &[MFD_CLOEXEC])? as i32;
        }
        if fd < 0 {
            return Err(LoadError::Refused { pid, reason: "it could not make a memory file (memfd_create)".into() });
        }
        let fd = self.keep_high(functions, fd)?;
        let path = format!("/proc/{pid}/fd/{fd}");
        let written = std::fs::OpenOptions::new().write(true).open(&path).and_then(|mut f| {
            use std::io::Write;
            f.write_all(image)
        });
        written.map_err(|e| LoadError::Refused { pid, reason: format!("writing the agent into {path}: {e}") })?;
        Ok(path)
    }

    /// Move the process's descriptor `fd` (one of dprobe's) out of the program's way, as
    /// `dprobe_inproc::own_files::keep_high` does inside it: above its soft limit on open files
    /// (raised for the moment from here, and put back) where its hard limit leaves room, else
    /// up near the top of its usual descriptors; closing `fd`. The program's first `open`
    /// returns the number it returns untraced, and it opens as many files. The new number, or
    /// `fd` where the process's C library cannot do it.
    fn keep_high(&mut self, functions: &Functions, fd: i32) -> Result<i32, LoadError> {
        let (Some(fcntl), Some(close)) = (functions.fcntl, functions.close) else { return Ok(fd) };
        let (soft, hard) = open_files_limits(self.pid);
        if fd as u64 >= soft {
            return Ok(fd);
        }
        let floor = dprobe_core::high_descriptor_floor(soft);
        let raised = dprobe_core::raised_soft_limit(soft, hard).filter(|&r| set_soft_limit(self.pid, r, hard));
        let from = match raised {
            Some(_) => soft,
            None if fd as u64 >= floor => return Ok(fd),
            None => floor,
        };
        let high = self.call(fcntl, &[], &[fd as u64, libc::F_DUPFD_CLOEXEC as u64, from]);
        if raised.is_some() {
            set_soft_limit(self.pid, soft, hard);
        }
        let high = high? as i32;
        if high < 0 {
            return Ok(fd);
        }
        self.call(close, &[], &[fd as u64])?;
        Ok(high)
    }

    /// Stop the thread of a running process whose call did not return, so that its registers
    /// can be put back (a started program is killed instead: it never ran a line of its own).
    /// A signal of the program's that comes first is held: delivered now, its handler would
    /// run inside the abandoned call, and the program, put back where it waited (in `pause`,
    /// say), would wait on as if it had never come.
    fn stop_stuck_call(&mut self) -> Result<(), LoadError> {
        if self.spawned {
            return Ok(());
        }
        sys::interrupt(self.tid)?;
        loop {
            let (_, status) = sys::wait(self.tid)?;
            if !libc::WIFSTOPPED(status) {
                return Err(TraceError::Gone { tid: self.tid }.into());
            }
            self.note_restart_state(&sys::get_regs(self.tid)?);
            if sys::event_of(status) != 0 {
                return Ok(());
            }
            let signal = libc::WSTOPSIG(status);
            match kept::resume_with(self.tid, signal, kept::KEPT_DURING_CALLS)? {
                Some(signal) => sys::cont(self.tid, signal)?,
                None => {
                    self.held.push(sys::siginfo(self.tid)?);
                    sys::cont(self.tid, 0)?;
                }
            }
        }
    }

    /// Give the thread back as it was and stop tracing it: the program runs on.
    pub fn release(mut self) -> Result<(), LoadError> {
        self.released = true;
        self.restore()?;
        sys::detach(self.tid, 0)?;
        Ok(())
    }

    /// Give a started program's thread back as it was and let it run, still watched for its
    /// `exec` (see [`ExecWatch`]); the tracer's death no longer kills it.
    pub fn release_watching_exec(mut self) -> Result<ExecWatch, LoadError> {
        if !self.spawned {
            let pid = self.pid;
            self.release()?;
            return Err(LoadError::Refused { pid, reason: "only a started program is watched for its exec".into() });
        }
        self.released = true;
        self.restore()?;
        sys::set_options(self.tid, libc::PTRACE_O_TRACEEXEC as u64)?;
        sys::cont(self.tid, 0)?;
        Ok(ExecWatch::new(self.pid, self.pid))
    }

    /// Kill a program dprobe started (it has not run a line of its own); let go of any other.
    pub fn abandon(mut self) {
        self.released = true;
        if self.spawned {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
        } else {
            let _ = self.restore();
            let _ = sys::detach(self.tid, 0);
        }
    }

    /// Give the thread back as it was and resume it, still traced by the calling thread of
    /// dprobe's, which must end next (see `let_go.rs`): a thread the tracer took out of a
    /// system call is first brought back into it.
    pub(crate) fn resume_as_it_was(mut self) -> Result<(), LoadError> {
        self.released = true;
        self.restore_registers()?;
        let held = std::mem::take(&mut self.held);
        crate::let_go::resume_into_its_call(self.pid, self.tid, &self.registers_to_resume(), held)?;
        Ok(())
    }

    /// Where the held thread was stopped: its id and name, and the system call it waited in (or
    /// that it ran code outside the C library and the loader).
    pub fn held_where(&self) -> &str {
        &self.held_where
    }

    /// The held thread.
    pub(crate) fn tid(&self) -> i32 {
        self.tid
    }

    /// Put the thread back as it was, the signals held meanwhile pending for it again.
    fn restore(&mut self) -> Result<(), TraceError> {
        self.restore_registers()?;
        for info in std::mem::take(&mut self.held) {
            crate::continued::queue_again(self.pid, self.tid, &info)?;
        }
        Ok(())
    }

    fn restore_registers(&mut self) -> Result<(), TraceError> {
        set_xstate(self.tid, &mut self.xstate)?;
        sys::set_regs(self.tid, &self.registers_to_resume())?;
        sys::set_sigmask(self.tid, self.mask)?;
        Ok(())
    }

    /// Note whether a call into the thread, stopped with registers `r`, was taken out of a
    /// timed wait that the kernel resumes from its per-thread restart state: the state is the
    /// call's then, no longer that of the program's own sleep.
    fn note_restart_state(&mut self, r: &libc::user_regs_struct) {
        self.restart_state_replaced |= (r.orig_rax as i64) >= 0 && r.rax as i64 == ERESTART_RESTARTBLOCK;
    }

    /// The registers the thread is put back with: those it had, except where it had been
    /// taken out of a timed sleep (`nanosleep`, `poll`, a timed `futex` wait...) that the
    /// kernel resumes from its per-thread restart state (`-ERESTART_RESTARTBLOCK`), and a call
    /// into it was later stopped inside a timed wait of its own, which replaced that state
    /// (see [`Injector::note_restart_state`]): resumed from it, the program's sleep would wait
    /// on the call's lock word until the call's deadline, then return its `ETIMEDOUT`. The
    /// program's call is then entered again from its start instead (`-ERESTARTNOHAND`, as the
    /// kernel restarts `pause`: ended by a signal with a handler, as the sleep would have
    /// been; a relative timeout starts over). A `restart_syscall` (a sleep already resumed
    /// once) cannot be entered again without its state: it returns `EINTR`, as after a signal.
    fn registers_to_resume(&self) -> libc::user_regs_struct {
        let mut r = self.saved;
        if !self.restart_state_replaced || (r.orig_rax as i64) < 0 || r.rax as i64 != ERESTART_RESTARTBLOCK {
            return r;
        }
        if r.orig_rax as i64 == libc::SYS_restart_syscall {
            r.rax = sys::EINTR as u64;
            // Out of the system call: the kernel leaves `rax` as it is.
            r.orig_rax = u64::MAX;
        } else {
            r.rax = ERESTARTNOHAND as u64;
        }
        r
    }

    fn read_c_string(&mut self, at: u64) -> Option<String> {
        if at == 0 {
            return None;
        }
        let mut buf = [0u8; 256];
        self.memory.read(Addr(at), &mut buf).ok()?;
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// `dlsym(handle, name)`.
    fn call_with_handle(&mut self, dlsym: u64, handle: u64, name: &[u8]) -> Result<u64, LoadError> {
        let (top, addrs) = self.push_strings(&[name])?;
        self.call_at(dlsym, &[handle, addrs[0]], top)
    }

    /// Call `function` with the strings (copied to the stack) as its first arguments, then
    /// `numbers`.
    fn call(&mut self, function: u64, strings: &[&[u8]], numbers: &[u64]) -> Result<u64, LoadError> {
        let (top, mut args) = self.push_strings(strings)?;
        args.extend_from_slice(numbers);
        self.call_at(function, &args, top)
    }

    /// Copy NUL-terminated strings below the thread's red zone; returns the lowest address
    /// used and each string's address.
    fn push_strings(&mut self, strings: &[&[u8]]) -> Result<(u64, Vec<u64>), LoadError> {
        let mut top = self.saved.rsp - RED_ZONE;
        let mut addrs = Vec::new();
        for s in strings {
            let mut bytes = s.to_vec();
            bytes.push(0);
            top = (top - bytes.len() as u64) & !15;
            self.memory.write(Addr(top), &bytes).map_err(TraceError::from)?;
            addrs.push(top);
        }
        Ok((top, addrs))
    }

    /// Run `function(args...)` on the held thread with its stack below `top`; the thread is
    /// stopped again when it returns. Signals that come meanwhile are the program's: they
    /// stay pending, whether the call returns, faults or is abandoned, and the thread
    /// receives them where it was once it is put back as it was (see `kept`).
    /// Meanwhile the thread blocks every signal it can (`kept::KEPT_DURING_CALLS`): one that
    /// took each as a stop would barely run when signals come faster than the tracer answers
    /// them.
    fn call_at(&mut self, function: u64, args: &[u64], top: u64) -> Result<u64, LoadError> {
        let mut r = self.saved;
        let mut sp = (top - 64) & !15;
        sp -= 8; // as after a `call`: rsp % 16 == 8 at the function's entry
        self.memory.write(Addr(sp), &RETURN_TRAP.to_le_bytes()).map_err(TraceError::from)?;
        r.rsp = sp;
        r.rip = function;
        // Not inside a system call any more: the kernel must not restart one on resume.
        r.orig_rax = u64::MAX;
        r.rax = 0;
        // Direction and trap flags clear, as the ABI promises a callee.
        r.eflags &= !(0x400 | 0x100);
        let slots = [&mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.rcx, &mut r.r8, &mut r.r9];
        for (slot, v) in slots.into_iter().zip(args) {
            *slot = *v;
        }
        sys::set_regs(self.tid, &r)?;
        let mut clean = self.xstate.clone();
        clean_fpu_control(&mut clean);
        set_xstate(self.tid, &mut clean)?;
        // Never the signals the kernel forces (the faults, `SIGTRAP`, `SIGSYS`: see `kept.rs`),
        // even where the thread blocks them (held inside its own `SIGSEGV` handler): the call's
        // return is a fault (`RETURN_TRAP`), and a forced signal the thread blocks has its
        // action reset to the default for the whole process, the program's handler gone (a
        // JVM then died at its next null check).
        sys::set_sigmask(self.tid, (self.mask | kept::KEPT_DURING_CALLS) & !kept::NEVER_BLOCKED)?;
        let started = Instant::now();
        let mut deadline = started + CALL_TIMEOUT;
        let mut ran = cpu_time(self.pid, self.tid);
        let mut resume_with = 0;
        loop {
            sys::cont(self.tid, resume_with)?;
            resume_with = 0;
            let status = loop {
                if let Some((_, status)) = sys::wait_until(self.tid, deadline)? {
                    break Some(status);
                }
                let now_ran = cpu_time(self.pid, self.tid);
                if now_ran <= ran || started.elapsed() >= CALL_WALL_LIMIT {
                    break None;
                }
                // It ran meanwhile: slow, not stuck.
                ran = now_ran;
                deadline = Instant::now() + CALL_TIMEOUT;
            };
            let Some(status) = status else {
                // Stuck: stop the thread where it waits; dropping the injector gives it back
                // as it was before the call (or ends the program dprobe started).
                self.stop_stuck_call()?;
                let reason = format!(
                    "a call into it (at {function:#x}) did not return: its thread did not run for {CALL_TIMEOUT:?}"
                );
                return Err(LoadError::Refused { pid: self.pid, reason });
            };
            if !libc::WIFSTOPPED(status) {
                return Err(TraceError::Gone { tid: self.tid }.into());
            }
            let sig = libc::WSTOPSIG(status);
            let now = sys::get_regs(self.tid)?;
            self.note_restart_state(&now);
            if sys::event_of(status) != 0 {
                continue;
            }
            let fault = kept::bit(sig) & kept::FAULTS != 0;
            // One sent (`kill`, `tgkill`: not raised by an instruction), pending while the
            // thread blocked it, comes now: held, and given back once the thread is.
            if fault {
                let info = sys::siginfo(self.tid)?;
                if info.si_code <= 0 {
                    self.held.push(info);
                    continue;
                }
            }
            if sig == libc::SIGSEGV && now.rip == RETURN_TRAP {
                return Ok(now.rax);
            }
            if fault {
                // A fault inside the call: the program's state is not ours to repair.
                let reason = format!("signal {sig} at {:#x} during the call at {function:#x}", now.rip);
                return Err(LoadError::Refused { pid: self.pid, reason });
            }
            match kept::resume_with(self.tid, sig, kept::KEPT_DURING_CALLS)? {
                Some(signal) => resume_with = signal,
                None => self.held.push(sys::siginfo(self.tid)?),
            }
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if !self.released {
            self.released = true;
            if self.spawned {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            } else {
                let _ = self.restore();
                let _ = sys::detach(self.tid, 0);
            }
        }
    }
}

/// The process that thread `tid` belongs to, where that is not `tid` itself (a thread other than
/// a process's first, whose id `/proc` also answers to).
fn process_of_thread(tid: i32) -> Option<i32> {
    crate::proc_ids::thread_group_of(tid).filter(|&tgid| tgid != tid)
}

fn get_xstate(tid: i32) -> Result<Vec<u8>, TraceError> {
    let mut buf = vec![0u8; XSTATE_BYTES];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: the iovec describes `buf`, which outlives the call; the kernel shortens iov_len
    // to what it wrote.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec) };
    if rc < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(crate::error::SysError { call: "PTRACE_GETREGSET", tid, errno }.into());
    }
    buf.truncate(iov.iov_len);
    Ok(buf)
}

fn set_xstate(tid: i32, state: &mut [u8]) -> Result<(), TraceError> {
    let mut iov = libc::iovec { iov_base: state.as_mut_ptr().cast(), iov_len: state.len() };
    // SAFETY: the iovec describes `state`, which outlives the call; the kernel only reads it.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec) };
    if rc < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(crate::error::SysError { call: "PTRACE_SETREGSET", tid, errno }.into());
    }
    Ok(())
}

/// The control words a called function expects (the legacy FXSAVE area's first bytes): x87
/// control word 0x37f, MXCSR 0x1f80, the x87 stack empty.
fn clean_fpu_control(xstate: &mut [u8]) {
    if xstate.len() >= 32 {
        xstate[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        xstate[4] = 0; // abridged tag word: every register empty
        xstate[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    }
}

/// The time thread `tid` has spent on a CPU, in nanoseconds (`schedstat`), or in clock ticks
/// (`stat`'s utime + stime) where the kernel keeps no scheduler statistics; 0 when gone.
fn cpu_time(pid: i32, tid: i32) -> u64 {
    let task = format!("/proc/{pid}/task/{tid}");
    if let Some(ns) = std::fs::read_to_string(format!("{task}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
    {
        return ns;
    }
    let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
    // The fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are the 14th and 15th fields, the 12th and 13th after the name.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    tick(11) + tick(12)
}

/// Process `pid`'s soft and hard limits on open files (`u64::MAX` for one not known).
fn open_files_limits(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let values: Vec<u64> = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .map(|rest| rest.split_whitespace().take(2).map(|v| v.parse().unwrap_or(u64::MAX)).collect())
        .unwrap_or_default();
    (values.first().copied().unwrap_or(u64::MAX), values.get(1).copied().unwrap_or(u64::MAX))
}

/// Set process `pid`'s soft limit on open files to `soft`, its hard one left at `hard`;
/// whether it was.
fn set_soft_limit(pid: i32, soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit64 { rlim_cur: soft, rlim_max: hard };
    // SAFETY: prlimit64 reads the limit it is given and writes no old one.
    unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) == 0 }
}
