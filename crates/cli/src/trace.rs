//! `dprobe trace`: parse the specs, start or attach, place the probes, print or aggregate
//! each hit, and end with a summary, whatever ends the trace.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use dprobe_arch::Addr;
use dprobe_ptrace::{Exit, Hit, HitKind, ProbeDef, Stopped, TraceError, Tracee};
use dprobe_spec::Fetch;

use crate::errno;
use crate::fetch::{fetch, FetchContext, Fetched};
use crate::options::{Engine, TraceArgs};
use crate::output;
use crate::plan::{check_hist, parse_the_filter, plan_probes, Planned};
use crate::report::{Mode, Report};
use crate::signals;
use crate::summary::{self, ProbeLine};

/// What the ptrace engine's handlers share: the report, and what fetching needs.
struct PtraceSession {
    report: Report,
    values: Vec<Fetched>,
    pid: i32,
    comms: HashMap<i32, Vec<u8>>,
    errno_offset: Option<u64>,
}

const COMM_CACHE: usize = 4096;

impl PtraceSession {
    fn comm(&mut self, tid: i32) -> Vec<u8> {
        if self.comms.len() >= COMM_CACHE {
            self.comms.clear();
        }
        let pid = self.pid;
        self.comms.entry(tid).or_insert_with(|| thread_name(pid, tid)).clone()
    }

    /// A hit of probe `index`: fetch, then report.
    fn on_hit(&mut self, index: usize, hit: &mut Hit<'_>) {
        let comm = self.comm(hit.tid);
        let (entry_regs, latency) = match hit.kind {
            HitKind::Entry => (None, None),
            HitKind::Return { entry_regs, elapsed, .. } => (Some(entry_regs), Some(elapsed)),
        };
        let errno_addr = self.errno_offset.map(|o| hit.fs_base.wrapping_add(o));
        let mut cx = FetchContext { regs: hit.regs, entry_regs, memory: hit.memory, comm: &comm, errno_addr };
        let mut values = std::mem::take(&mut self.values);
        values.clear();
        values.extend(self.report.probes[index].info.args.iter().map(|a| fetch(a, &mut cx)));
        self.report.record(index, self.pid, hit.tid, &comm, &values, latency);
        self.values = values;
    }
}

/// A thread's name, from `/proc`.
pub fn thread_name(pid: i32, tid: i32) -> Vec<u8> {
    let mut c = std::fs::read(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
    while c.last() == Some(&b'\n') {
        c.pop();
    }
    c
}

/// Find `program` the way a shell would (`PATH` unless it has a `/`).
fn find_program(program: &str) -> Result<String> {
    if program.contains('/') {
        return Ok(program.to_owned());
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{program}");
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            return Ok(candidate);
        }
    }
    bail!("cannot start `{program}`: not found in PATH")
}

/// The events' destination: `-o FILE` or standard error.
pub fn output(args: &TraceArgs) -> Result<Box<dyn Write>> {
    Ok(match &args.output {
        Some(path) => Box::new(std::io::LineWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::LineWriter::new(std::io::stderr())),
    })
}

/// How events are shown, from the options.
pub fn mode(args: &TraceArgs) -> Mode {
    if args.count || args.hist.is_some() || args.latency {
        Mode::Quiet
    } else if args.json {
        Mode::Json
    } else {
        Mode::Human
    }
}

/// Run `dprobe trace`; returns dprobe's exit status.
pub fn run(args: TraceArgs) -> Result<i32> {
    let planned = plan_probes(&args)?;
    let kernel_targets = planned.iter().filter(|p| p.needs_kernel()).count();
    let engine = match args.engine {
        Some(Engine::Ptrace) if args.system_wide => bail!("--system-wide needs the kernel engine, not ptrace"),
        Some(Engine::Ptrace) if kernel_targets > 0 => {
            let p = planned.iter().find(|p| p.needs_kernel()).expect("counted");
            bail!("`{}`: kernel functions and tracepoints need the kernel engine, not ptrace", p.info.spec)
        }
        Some(e) => e,
        None if args.system_wide || kernel_targets > 0 => Engine::Kernel,
        None => Engine::Ptrace,
    };
    if args.verbose {
        let why = match (args.engine, args.system_wide, kernel_targets) {
            (Some(_), _, _) => "as asked (--engine)",
            (None, true, _) => "--system-wide",
            (None, false, n) if n > 0 => "kernel functions or tracepoints are probed",
            _ => "one program is traced (-p or a command)",
        };
        eprintln!("dprobe: engine: {} ({why})", if engine == Engine::Kernel { "kernel" } else { "ptrace" });
    }
    if engine == Engine::Kernel {
        return crate::system::run(&args, planned);
    }
    if args.comm.is_some() {
        bail!("--comm filters system-wide traces (--system-wide); the ptrace engine traces one process");
    }
    check_hist(&args, &planned)?;
    let filter = parse_the_filter(&args, &planned)?;
    let out = output(&args)?;
    let (mut tracee, spawned) = match (args.pid, args.command.split_first()) {
        (Some(pid), _) => (Tracee::attach(pid)?, false),
        (None, Some((program, rest))) => {
            let program = find_program(program)?;
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            let mut t = Tracee::spawn(&program, &rest)?;
            t.run_to_entry()?;
            (t, true)
        }
        (None, None) => bail!("nothing to trace: give `-p PID`, a command after `--`, or --system-wide"),
    };
    let errno_offset =
        if planned.iter().any(|p| p.info.errno_index.is_some()) { errno_offset(&mut tracee) } else { None };
    let report = Report::new(out, mode(&args), filter, args.hist.clone(), args.latency);
    let session = Rc::new(RefCell::new(PtraceSession {
        report,
        values: Vec::new(),
        pid: tracee.pid(),
        comms: HashMap::new(),
        errno_offset,
    }));
    let mut ids = Vec::new();
    for (index, p) in planned.into_iter().enumerate() {
        let id = match place(&mut tracee, &p, index, &session, &args) {
            Ok(id) => id,
            Err(e) => {
                if spawned {
                    // The command never ran a line of its own: it goes with the error.
                    // SAFETY: kills the child dprobe started.
                    unsafe { libc::kill(tracee.pid(), libc::SIGKILL) };
                }
                return Err(e);
            }
        };
        ids.push(id);
        session.borrow_mut().report.add_probe(p.info);
    }
    signals::install().context("installing signal handlers")?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    session.borrow_mut().report.start = Instant::now();
    let outcome =
        tracee.run_until(&mut || signals::requested().is_some() || deadline.is_some_and(|d| Instant::now() >= d));
    let ending = match outcome {
        Ok(Stopped::Exited(exit)) => Ending::Exited(exit),
        Ok(Stopped::Asked) => Ending::Detached(signals::requested()),
        Err(e) => Ending::Failed(e),
    };
    let lines: Vec<ProbeLine> = {
        let s = session.borrow();
        ids.iter()
            .zip(&s.report.probes)
            .map(|(id, p)| ProbeLine { spec: p.info.spec.clone(), stats: tracee.stats(*id), shown: p.shown })
            .collect()
    };
    let pid = tracee.pid();
    let detached = tracee.detach();
    signals::stop_tick();
    let status = finish(&ending, spawned, pid, &detached);
    let mut s = session.borrow_mut();
    let report = &mut s.report;
    let elapsed = report.start.elapsed();
    let text = summary::render(
        &lines,
        &report.histograms(),
        &[],
        &ending_text(&ending, pid, status.exit, elapsed),
        report.filtered(),
    );
    report.finish(&text);
    if let Err(e) = detached {
        eprintln!("dprobe: detaching from process {pid} failed: {e}");
        return Ok(1);
    }
    if let Ending::Failed(e) = &ending {
        eprintln!("dprobe: {e}");
        return Ok(1);
    }
    Ok(status.code)
}

enum Ending {
    Exited(Exit),
    Detached(Option<i32>),
    Failed(TraceError),
}

struct Status {
    code: i32,
    exit: Option<Exit>,
}

/// dprobe's exit status: the traced command's when it ended, 0 when dprobe let it go.
fn finish(ending: &Ending, spawned: bool, pid: i32, detached: &Result<(), TraceError>) -> Status {
    match ending {
        Ending::Exited(exit) => Status { code: exit_code(*exit), exit: Some(*exit) },
        // A spawned program let go by a signal to dprobe is waited for: it got the same Ctrl-C
        // from the terminal, and a `SIGTERM` or `SIGHUP` is passed on to it. One let go at the
        // end of `--duration` keeps running on its own.
        Ending::Detached(Some(signal)) if spawned && detached.is_ok() => {
            if *signal != libc::SIGINT {
                // SAFETY: signals the child dprobe started.
                unsafe { libc::kill(pid, *signal) };
            }
            let mut status = 0;
            let waited = loop {
                // SAFETY: waits for the child dprobe started, writing a status we own.
                let r = unsafe { libc::waitpid(pid, &mut status, 0) };
                let interrupted = std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
                if r >= 0 || !interrupted || signals::insisted() {
                    break r;
                }
            };
            if waited != pid {
                return Status { code: 0, exit: None };
            }
            let exit = if libc::WIFEXITED(status) {
                Exit::Code(libc::WEXITSTATUS(status))
            } else {
                Exit::Signal(libc::WTERMSIG(status))
            };
            Status { code: exit_code(exit), exit: Some(exit) }
        }
        _ => Status { code: 0, exit: None },
    }
}

fn exit_code(exit: Exit) -> i32 {
    match exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
    }
}

fn ending_text(ending: &Ending, pid: i32, exit: Option<Exit>, elapsed: Duration) -> String {
    let how = |exit: Exit| match exit {
        Exit::Code(c) => format!("exited with status {c}"),
        Exit::Signal(s) => format!("was killed by {}", signals::signal_name(s)),
    };
    let after = output::human_duration(elapsed);
    match (ending, exit) {
        (Ending::Exited(e), _) => format!("process {pid} {} after {after}", how(*e)),
        (Ending::Detached(signal), exit) => {
            let why = signal.map_or_else(|| "--duration is over".to_owned(), signals::signal_name);
            let then = match exit {
                Some(e) => format!("; it then {}", how(e)),
                None => "; it goes on untraced".into(),
            };
            format!("detached from process {pid} after {after} ({why}){then}")
        }
        (Ending::Failed(e), _) => format!("tracing process {pid} stopped after {after}: {e}"),
    }
}

/// Place one probe; a probe on a library that is not loaded yet waits for it.
fn place(
    tracee: &mut Tracee,
    p: &Planned,
    index: usize,
    session: &Rc<RefCell<PtraceSession>>,
    args: &TraceArgs,
) -> Result<dprobe_core::ProbeId> {
    let handler = |session: &Rc<RefCell<PtraceSession>>| -> dprobe_ptrace::Handler {
        let s = session.clone();
        Box::new(move |hit: &mut Hit<'_>| s.borrow_mut().on_hit(index, hit))
    };
    let make = || {
        // With --latency, entries are timed to their returns; the entry itself is no event.
        let def = if p.info.is_return || args.latency {
            ProbeDef::on_return(&p.target, handler(session))
        } else {
            ProbeDef::entry(&p.target, handler(session))
        };
        let def = def.maxactive(args.maxactive.unwrap_or(0));
        if returns_without_stop(&p.info.args) {
            def.no_return_stop()
        } else {
            def
        }
    };
    match tracee.add(make()) {
        Ok(id) => Ok(id),
        Err(TraceError::Probe(dprobe_core::ProbeError::SymbolNotFound { .. }))
            if p.object.as_deref().is_some_and(|o| !object_loaded(tracee, o)) =>
        {
            let id = tracee.add(make().when_loaded())?;
            eprintln!(
                "dprobe: `{}` is not loaded yet; `{}` will be placed when the program loads it",
                p.object.as_deref().unwrap_or(""),
                p.info.spec
            );
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("`{}`: {e}", p.info.spec)),
    }
}

/// Whether a return probe's values can all be had without stopping the thread at the return
/// (see `ProbeDef::no_return_stop`): the return value, entry arguments in registers, the
/// thread's name, and registers a return stub records or the function keeps. Anything read
/// from memory at the return needs the stop.
fn returns_without_stop(args: &[dprobe_spec::NamedArg]) -> bool {
    args.iter().all(|a| match &a.fetch {
        Fetch::Comm => true,
        Fetch::RetVal | Fetch::Immediate(_) => a.ty != dprobe_spec::ArgType::String,
        Fetch::Arg(n) => *n <= 6 && a.ty != dprobe_spec::ArgType::String,
        Fetch::Reg(r) => {
            matches!(r.0, "ax" | "dx" | "bx" | "bp" | "sp" | "ip" | "r12" | "r13" | "r14" | "r15")
        }
        _ => false,
    })
}

/// Whether an object matching `name` (`libc`, `libfoo.so.1`, a path) is loaded.
fn object_loaded(tracee: &Tracee, name: &str) -> bool {
    let Ok(maps) = dprobe_sym::read_maps_of(tracee.pid() as u32) else { return true };
    maps.iter().filter_map(|m| m.path.as_deref()).any(|path| {
        let file = path.rsplit('/').next().unwrap_or(path);
        path == name || file == name || file.starts_with(&format!("{name}.so")) || file.starts_with(&format!("{name}-"))
    })
}

/// The offset of `errno` from the thread pointer, through libc's `__errno_location`.
fn errno_offset(tracee: &mut Tracee) -> Option<u64> {
    let at = tracee.resolve("libc:__errno_location").ok()?;
    let mut read = |a: Addr, n: usize| tracee.read_code(a, n).map_err(|e| e.to_string());
    match errno::tls_offset(&mut read, at) {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("dprobe: $errno cannot be fetched: {e}");
            None
        }
    }
}
