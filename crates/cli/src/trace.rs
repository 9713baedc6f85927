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
use dprobe_spec::{parse_filter, parse_probe, Fetch, Filter, ProbeKind, Target};

use crate::errno;
use crate::fetch::{fetch, FetchContext, Fetched};
use crate::histogram::Log2Histogram;
use crate::options::TraceArgs;
use crate::output::{self, Event, ProbeInfo};
use crate::signals;
use crate::summary::{self, ProbeLine};

/// How events are shown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Human,
    Json,
    /// Only aggregates (`--count`, `--hist`, `--latency`).
    Quiet,
}

/// What the handlers share: the output and the aggregates. Sizes are bounded: one entry per
/// probe, fixed-size histograms, a thread-name cache that is emptied when it grows large.
struct Session {
    out: Box<dyn Write>,
    line: String,
    values: Vec<Fetched>,
    mode: Mode,
    filter: Option<Filter>,
    hist_field: Option<String>,
    start: Instant,
    pid: i32,
    comms: HashMap<i32, Vec<u8>>,
    errno_offset: Option<u64>,
    probes: Vec<ProbeState>,
    write_failed: bool,
}

struct ProbeState {
    info: ProbeInfo,
    shown: u64,
    hist: Log2Histogram,
    latency: Log2Histogram,
}

const COMM_CACHE: usize = 4096;

impl Session {
    fn comm(&mut self, tid: i32) -> Vec<u8> {
        if self.comms.len() >= COMM_CACHE {
            self.comms.clear();
        }
        let pid = self.pid;
        self.comms
            .entry(tid)
            .or_insert_with(|| {
                let mut c = std::fs::read(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
                while c.last() == Some(&b'\n') {
                    c.pop();
                }
                c
            })
            .clone()
    }

    /// A hit of probe `index`: fetch, filter, then print or aggregate.
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
        values.extend(self.probes[index].info.args.iter().map(|a| fetch(a, &mut cx)));
        let probe = &mut self.probes[index];
        let passes = self.filter.as_ref().is_none_or(|f| {
            f.matches(&|name| {
                let i = probe.info.args.iter().position(|a| a.name == name)?;
                values[i].filter_value()
            })
        });
        if passes {
            probe.shown += 1;
            if let Some(field) = &self.hist_field {
                if let Some(v) = probe.info.args.iter().position(|a| &a.name == field).and_then(|i| values[i].as_i64())
                {
                    probe.hist.add(v);
                }
            }
            if let Some(l) = latency {
                probe.latency.add(l.as_nanos().min(i64::MAX as u128) as i64);
            }
            if self.mode != Mode::Quiet && !self.write_failed {
                let event = Event {
                    time: self.start.elapsed().as_secs_f64(),
                    pid: self.pid,
                    tid: hit.tid,
                    comm: &comm,
                    probe: &probe.info,
                    values: &values,
                    latency,
                };
                self.line.clear();
                match self.mode {
                    Mode::Json => output::json(&event, &mut self.line),
                    _ => output::human(&event, &mut self.line),
                }
                // A closed output (`| head`) ends printing, not tracing: the summary says so.
                self.write_failed = self.out.write_all(self.line.as_bytes()).is_err();
            }
        }
        self.values = values;
    }
}

/// A parsed probe, ready to place.
struct Planned {
    info: ProbeInfo,
    target: String,
    object: Option<String>,
    is_function_entry: bool,
}

fn plan_probes(args: &TraceArgs) -> Result<Vec<Planned>> {
    let mut planned = Vec::new();
    for text in &args.probes {
        let mut spec = parse_probe(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (binary, function, offset) = match &spec.target {
            Target::User { binary, function, offset } => (binary.clone(), function.clone(), *offset),
            Target::Kernel { .. } | Target::Tracepoint { .. } => bail!(
                "`{text}`: kernel functions and tracepoints are traced by the kernel engine, which this dprobe \
                 does not include yet; `dprobe trace` probes user-space programs (`-p PID` or `-- CMD`)"
            ),
        };
        let is_return = spec.kind == ProbeKind::Return;
        if is_return && !spec.args.iter().any(|a| a.fetch == Fetch::RetVal) {
            // A return probe shows its return value unless told otherwise.
            spec.args.insert(
                0,
                dprobe_spec::NamedArg { name: "ret".into(), fetch: Fetch::RetVal, ty: dprobe_spec::ArgType::S(64) },
            );
        }
        let label = if offset == 0 { function.clone() } else { format!("{function}+{offset:#x}") };
        let target = match &binary {
            Some(b) => format!("{b}:{function}+{offset}"),
            None => format!("{function}+{offset}"),
        };
        let retval_index = spec.args.iter().position(|a| a.fetch == Fetch::RetVal);
        let errno_index = spec.args.iter().position(|a| a.fetch == Fetch::Errno);
        let info = ProbeInfo { spec: text.clone(), label, args: spec.args, is_return, retval_index, errno_index };
        planned.push(Planned { info, target, object: binary, is_function_entry: offset == 0 });
    }
    if args.latency {
        if let Some(p) = planned.iter().find(|p| !p.is_function_entry) {
            bail!("--latency times functions from entry to return; `{}` is not at a function's entry", p.info.spec);
        }
    }
    if let Some(field) = &args.hist {
        if !planned.iter().any(|p| p.info.args.iter().any(|a| &a.name == field)) {
            let known: Vec<&str> = planned.iter().flat_map(|p| p.info.args.iter().map(|a| a.name.as_str())).collect();
            bail!("--hist {field}: no probe fetches a value named `{field}` (fetched: {})", list_or_none(&known));
        }
    }
    Ok(planned)
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn parse_the_filter(args: &TraceArgs, planned: &[Planned]) -> Result<Option<Filter>> {
    let Some(text) = &args.filter else { return Ok(None) };
    let mut fields: Vec<&str> = planned.iter().flat_map(|p| p.info.args.iter().map(|a| a.name.as_str())).collect();
    fields.sort_unstable();
    fields.dedup();
    Ok(Some(parse_filter(text, &fields).map_err(|e| anyhow::anyhow!("{e}"))?))
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

/// Run `dprobe trace`; returns dprobe's exit status.
pub fn run(args: TraceArgs) -> Result<i32> {
    let planned = plan_probes(&args)?;
    let filter = parse_the_filter(&args, &planned)?;
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::LineWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::LineWriter::new(std::io::stderr())),
    };
    let (mut tracee, spawned) = match (args.pid, args.command.split_first()) {
        (Some(pid), _) => (Tracee::attach(pid)?, false),
        (None, Some((program, rest))) => {
            let program = find_program(program)?;
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            let mut t = Tracee::spawn(&program, &rest)?;
            t.run_to_entry()?;
            (t, true)
        }
        (None, None) => bail!("nothing to trace: give `-p PID` or a command after `--`"),
    };
    let mode = if args.count || args.hist.is_some() || args.latency {
        Mode::Quiet
    } else if args.json {
        Mode::Json
    } else {
        Mode::Human
    };
    let errno_offset =
        if planned.iter().any(|p| p.info.errno_index.is_some()) { errno_offset(&mut tracee) } else { None };
    let session = Rc::new(RefCell::new(Session {
        out,
        line: String::new(),
        values: Vec::new(),
        mode,
        filter,
        hist_field: args.hist.clone(),
        start: Instant::now(),
        pid: tracee.pid(),
        comms: HashMap::new(),
        errno_offset,
        probes: Vec::new(),
        write_failed: false,
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
        let state =
            ProbeState { info: p.info, shown: 0, hist: Log2Histogram::default(), latency: Log2Histogram::default() };
        session.borrow_mut().probes.push(state);
    }
    signals::install().context("installing signal handlers")?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    session.borrow_mut().start = Instant::now();
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
            .zip(&s.probes)
            .map(|(id, p)| ProbeLine { spec: p.info.spec.clone(), stats: tracee.stats(*id), shown: p.shown })
            .collect()
    };
    let pid = tracee.pid();
    let detached = tracee.detach();
    signals::stop_tick();
    let status = finish(&ending, spawned, pid, &detached);
    let mut s = session.borrow_mut();
    let elapsed = s.start.elapsed();
    let hists: Vec<(String, String)> = s
        .probes
        .iter()
        .filter(|p| args.hist.is_some() && p.hist.total() > 0)
        .map(|p| {
            let target = p.info.spec.split_whitespace().next().unwrap_or_default();
            (format!("{} of {target}", args.hist.as_deref().unwrap_or("")), p.hist.render(""))
        })
        .chain(
            s.probes
                .iter()
                .filter(|p| args.latency && p.latency.total() > 0)
                .map(|p| (format!("latency of {} (ns)", p.info.label), p.latency.render(""))),
        )
        .collect();
    let text = summary::render(&lines, &hists, &ending_text(&ending, pid, status.exit, elapsed), s.filter.is_some());
    let _ = s.out.write_all(text.as_bytes());
    let _ = s.out.flush();
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
    session: &Rc<RefCell<Session>>,
    args: &TraceArgs,
) -> Result<dprobe_core::ProbeId> {
    let handler = |session: &Rc<RefCell<Session>>| -> dprobe_ptrace::Handler {
        let s = session.clone();
        Box::new(move |hit: &mut Hit<'_>| s.borrow_mut().on_hit(index, hit))
    };
    let make = || {
        let def = if p.info.is_return {
            ProbeDef::on_return(&p.target, handler(session))
        } else if args.latency {
            // Entries are timed to their returns; the entry itself is not an event.
            ProbeDef::on_return(&p.target, handler(session))
        } else {
            ProbeDef::entry(&p.target, handler(session))
        };
        let def = def.maxactive(args.maxactive);
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
