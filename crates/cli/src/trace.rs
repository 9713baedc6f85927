//! `dprobe trace`: parse the specs, pick an engine and start it (a program spawned or
//! attached for ptrace, a session for the kernel), then hand it to the driver.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context as _, Result};
use dprobe_agent::{AgentEngine, AgentError, Library};
use dprobe_kernel::{KernelEngine, KernelOptions};
use dprobe_ptrace::PtraceEngine;

use crate::choose;
use crate::drive::{drive, trace, Scope, Traced};
use crate::options::{Engine, TraceArgs};
use crate::plan::{check_hist, parse_the_filter, plan_probes, Planned};
use crate::report::Mode;
use crate::signals;

/// dprobe's agent, built with dprobe (see build.rs): loaded into traced programs from a
/// memory file, so that nothing needs installing next to `dprobe`.
const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libdprobe_agent.so"));

/// Find `program` the way a shell would (`PATH` unless it has a `/`): the first regular file
/// this user may execute, as `execvp` takes (a file it may not execute is passed over).
pub fn find_program(program: &str) -> Result<String> {
    if program.contains('/') {
        return Ok(program.to_owned());
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut not_executable = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{program}");
        if !std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            continue;
        }
        if nix::unistd::access(candidate.as_str(), nix::unistd::AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
        not_executable.get_or_insert(candidate);
    }
    match not_executable {
        Some(file) => bail!("cannot start `{program}`: `{file}` is not executable (no other in PATH)"),
        None => bail!("cannot start `{program}`: not found in PATH"),
    }
}

/// The events' destination: `-o FILE` or standard error. `None` when a stop signal came
/// while a FIFO waited for its reader (nothing is placed yet).
fn output(args: &TraceArgs) -> Result<Option<Box<dyn Write + Send>>> {
    let Some(path) = &args.output else { return Ok(Some(Box::new(std::io::LineWriter::new(std::io::stderr())))) };
    let cannot = || format!("cannot write {}", path.display());
    let fifo = std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    let file = if fifo {
        // Opening a FIFO for writing waits for a reader, and the stop signals (caught already,
        // with restarting system calls) would not end that wait: ask without waiting until a
        // reader comes or a stop signal does.
        loop {
            let nonblocking = std::fs::OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(path);
            match nonblocking {
                Ok(f) => break blocking(f).with_context(cannot)?,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
                Err(e) => return Err(e).with_context(cannot),
            }
            if signals::requested().is_some() {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    } else {
        std::fs::File::create(path).with_context(cannot)?
    };
    Ok(Some(Box::new(std::io::LineWriter::new(file))))
}

/// `file` with blocking writes (a full pipe waits for its reader, as any program's output).
fn blocking(file: std::fs::File) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL)?);
    fcntl(&file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(file)
}

/// How events are shown, from the options.
pub fn mode(args: &TraceArgs) -> Mode {
    if args.count || !args.hist.is_empty() || args.latency {
        Mode::Quiet
    } else if args.json {
        Mode::Json
    } else if args.trace_file.is_some() || args.folded.is_some() {
        // The events go to the file; JSON lines beside it only when asked.
        Mode::Quiet
    } else {
        Mode::Human
    }
}

/// Load the agent into the program `args` names (`program`: the command's file, found).
fn start_agent(args: &TraceArgs, program: Option<&str>) -> Result<AgentEngine, AgentError> {
    // A count alone needs no events: the agent counts in place (not by key).
    let events = mode(args) != Mode::Quiet
        || !args.hist.is_empty()
        || !args.by.is_empty()
        || args.latency
        || args.filter.is_some()
        || args.trace_file.is_some()
        || args.metrics.is_some()
        || args.stack.is_some()
        || args.folded.is_some();
    match (args.pid, args.command.split_first(), program) {
        (Some(pid), _, _) => {
            // The agent may take seconds to start in a busy process: a stop signal ends the wait.
            // Not the front's end, which no one waits for: the agent is stopped once it
            // connects, so that the process is as it was when dprobe's last process ends.
            let asked_to_stop = || signals::requested().is_some_and(|s| s != signals::FRONT_ENDED);
            AgentEngine::attach_giving_up(pid, Library::Image(AGENT), events, &asked_to_stop)
        }
        (None, Some((argv0, rest)), Some(program)) => {
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            AgentEngine::spawn_as(program, argv0, &rest, Library::Image(AGENT), events)
        }
        _ => Err(AgentError::Refused("nothing to trace: give `-p PID`, a command after `--`, or --system-wide".into())),
    }
}

/// Whether the ptrace engine may do what the agent could not: the process could not load
/// it, or the agent did not start or answer (not a process that is gone or cannot be traced
/// at all, which the ptrace engine would say again; a process that executed another program
/// meanwhile is traced in that program).
fn can_fall_back(e: &AgentError) -> bool {
    use dprobe_ptrace::LoadError;
    matches!(
        e,
        AgentError::Load(LoadError::Refused { .. } | LoadError::Dlopen { .. })
            | AgentError::Agent { .. }
            | AgentError::Refused(_)
            | AgentError::NoLibrary(_)
            | AgentError::ExecutedFirst(_)
            | AgentError::ExecutedAttaching(_)
    )
}

/// A stop signal came before anything was placed: dprobe ends with the status of a program
/// that signal ended.
fn stopped_before_tracing() -> i32 {
    let signal = signals::requested().filter(|&s| s > 0).or_else(signals::arrived).unwrap_or(nix::libc::SIGINT);
    eprintln!("dprobe: stopped by {} before tracing started", signals::signal_name(signal));
    if signal > 0 {
        128 + signal
    } else {
        1
    }
}

/// Whether a stop was asked for before a command is started (or, asked again once it is held
/// at its start, having run nothing of its own, before its `fork`'s moment was known): it is
/// not started, or ended there. (A Ctrl-C to the process group before the command's `fork`
/// never reached it: started, it ran untraced to its end, where it would have ended on that
/// signal. The handler notes the signal as it comes, before the thread that asks for the stop
/// does: the look once the command is held sees one that came before the `fork`.)
/// Not the end of dprobe's front (`kill -9` of `dprobe`): a started command runs on untraced.
fn stop_asked_before_the_command(args: &TraceArgs) -> bool {
    args.pid.is_none()
        && (signals::arrived().is_some() || signals::requested().is_some_and(|s| s != signals::FRONT_ENDED))
}

/// Whether a command being started was killed by the stop signal dprobe was asked to stop by
/// (a Ctrl-C to the process group as it started): stopped before tracing, as that signal says.
/// dprobe's own copy may not have run its handler yet when the command's end is seen (see
/// `signals::reached_dprobe_itself`).
fn killed_by_the_stop(e: &dprobe_ptrace::TraceError) -> bool {
    use dprobe_ptrace::{Exit, TraceError};
    matches!(e, TraceError::EndedBeforeEntry(Exit::Signal(s))
        if signals::requested() == Some(*s) || signals::reached_dprobe_itself(*s))
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Kernel => "kernel",
        Engine::Agent => "agent",
        Engine::Ptrace => "ptrace",
    }
}

/// Run `dprobe trace`; returns dprobe's exit status.
///
/// The stop signals (Ctrl-C, `SIGTERM`, `SIGHUP`) are caught first, before anything else:
/// from then on every exit path of every engine removes what it placed, and a signal that
/// comes while the probes are planned, the output opened, the program attached or the probes
/// placed ends the trace as soon as it runs. One that comes earlier still (in dprobe's first
/// moments, before `main` runs this) ends dprobe as it ends any program, with nothing changed.
/// A stop signal dprobe was started with ignored (a background job's SIGINT, `nohup`'s
/// SIGHUP) stays ignored: see [`signals::install`].
pub fn run(args: TraceArgs) -> Result<i32> {
    signals::install().context("installing signal handlers")?;
    if let Some(pid) = args.pid {
        // Before any engine attaches: it names this process even if it ends meanwhile.
        crate::process_end::watch(pid);
    }
    let planned = plan_probes(&args)?;
    let kernel_targets = planned.iter().filter(|p| p.needs_kernel()).count();
    let one_program = !args.system_wide && kernel_targets == 0 && args.engine != Some(Engine::Kernel);
    let program = match (args.pid, args.command.first()) {
        (None, Some(p)) if one_program => Some(find_program(p)?),
        _ => None,
    };
    // Why the engine was picked, for -v; for one program, the agent unless it cannot.
    let (engine, why) = match args.engine {
        Some(Engine::Ptrace) if args.system_wide => bail!("--system-wide needs the kernel engine, not ptrace"),
        Some(Engine::Agent) if args.system_wide => bail!("--system-wide needs the kernel engine, not the agent"),
        Some(e @ (Engine::Ptrace | Engine::Agent)) if kernel_targets > 0 => {
            let p = planned.iter().find(|p| p.needs_kernel()).expect("counted");
            let name = if e == Engine::Agent { "the agent" } else { "ptrace" };
            bail!("`{}`: kernel functions and tracepoints need the kernel engine, not {name}", p.info.spec)
        }
        Some(e) => (e, "as asked (--engine)".to_owned()),
        None if args.system_wide => (Engine::Kernel, "--system-wide".to_owned()),
        None if kernel_targets > 0 => (Engine::Kernel, "kernel functions or tracepoints are probed".to_owned()),
        None => match choose::agent_cannot(&args, &planned, program.as_deref()) {
            None => (Engine::Agent, "one program is traced (-p or a command), and the agent can be loaded".to_owned()),
            Some(reason) => (Engine::Ptrace, format!("the agent cannot be used: {reason}")),
        },
    };
    if let (Engine::Agent | Engine::Ptrace, Some(pid)) = (engine, args.pid) {
        if let Some(other) = choose::agent_session_of(pid) {
            bail!(
                "process {pid} is traced by another dprobe (process {other}) with the agent: two tracers \
                 would patch the same code; end that trace first"
            );
        }
    }
    if let (Some(Engine::Agent), Some(pid)) = (args.engine, args.pid) {
        // Asked for: a default choice of the agent has looked already (`choose::agent_cannot`).
        if let Some(tid) = choose::thread_blocking_traps(pid) {
            bail!("{}; --engine ptrace traces it", choose::blocked_traps(pid, tid));
        }
    }
    if args.verbose {
        eprintln!("dprobe: engine: {} ({why})", engine_name(engine));
    }
    // Every field is known before placing unless a tracepoint brings its own: check what
    // can be checked before anything starts.
    if !planned.iter().any(|p| p.info.tracepoint) {
        check_hist(&args, &planned)?;
        parse_the_filter(&args, &planned)?;
    }
    if engine == Engine::Kernel && args.pid.is_some() && !args.command.is_empty() {
        bail!("give -p PID or a command, not both");
    }
    if engine == Engine::Kernel && args.follow {
        bail!("--follow is for the ptrace and agent engines (one program and its children)");
    }
    if engine != Engine::Kernel && args.buffer_size.is_some() {
        bail!("--buffer-size sets the kernel engine's perf buffers (--system-wide or --engine kernel)");
    }
    if engine != Engine::Kernel && args.comm.is_some() {
        let name = if engine == Engine::Agent { "agent" } else { "ptrace" };
        bail!("--comm filters system-wide traces (--system-wide); the {name} engine traces one process");
    }
    // Opening a FIFO waits for its reader; a stop signal meanwhile ends dprobe (nothing is
    // placed yet) with the status of a program that signal ended.
    let Some(out) = output(&args)? else { return Ok(stopped_before_tracing()) };
    if engine == Engine::Kernel {
        let options = KernelOptions {
            pid: args.pid,
            comm: args.comm.clone(),
            // The thread's name comes with each event when something shows or filters it.
            with_comm: mode(&args) != Mode::Quiet || args.comm.is_some() || args.by.iter().any(|k| k == "comm"),
            command: args.command.clone(),
            buffer_size: args.buffer_size,
            // This process traces for the one the user started (see dprobe-holder), its parent
            // (if that one has ended already, the trace is ending anyway).
            front: Some(std::os::unix::process::parent_id()),
            in_kernel: match crate::in_kernel::in_kernel(&args) {
                Ok(ask) => Some(ask),
                Err(why) => {
                    if args.verbose && (args.count || !args.hist.is_empty()) {
                        eprintln!("dprobe: aggregating in dprobe from each event: {why}");
                    }
                    None
                }
            },
        };
        let scope = Scope::SystemWide { command: args.command.first().cloned() };
        return drive(KernelEngine::new(options)?, planned, &args, out, scope);
    }
    on_a_tracer_thread(|| trace_one_program(engine, planned, &args, out, program.as_deref()), &args)
}

/// Run `trace`, the whole trace of one program, on a thread of dprobe's made for it, which
/// ends as soon as the program is let go; then complete the outputs on this one.
///
/// The thread that traces a program is its tracer (ptrace's, and the agent engine's while it
/// loads the agent or watches a started program's `execve`). Letting a program go leaves a
/// thread that waited in a system call (`pause`, `read`...) in its call, still traced, until
/// its tracer thread ends (see `dprobe_ptrace::Tracee::let_go_as_thread_ends`): a signal of
/// the program's stops it until then. On dprobe's main thread that lasted as long as writing
/// the summary and the exports, which wait for their reader (a pipe nobody reads, a full
/// FIFO): the program could wait as long. A thread that ends once the program is let go
/// ends that at once.
fn on_a_tracer_thread(trace: impl FnOnce() -> Result<Option<Traced>> + Send, args: &TraceArgs) -> Result<i32> {
    // dprobe's main thread's stack: the engines were written for it.
    const STACK: usize = 8 << 20;
    let traced = std::thread::scope(|scope| {
        let tracer =
            std::thread::Builder::new().name("dprobe-tracer".into()).stack_size(STACK).spawn_scoped(scope, trace);
        match tracer.context("starting dprobe's tracing thread")?.join() {
            Ok(traced) => traced,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })?;
    Ok(traced.map_or_else(stopped_before_tracing, |traced| traced.conclude(args)))
}

/// Trace one program, `-p` or a command: with the agent, or ptrace when it cannot be used.
/// `None`: a stop signal came before the probes were placed.
fn trace_one_program(
    engine: Engine,
    planned: Vec<Planned>,
    args: &TraceArgs,
    out: Box<dyn Write + Send>,
    program: Option<&str>,
) -> Result<Option<Traced>> {
    if engine == Engine::Agent && planned.len() > dprobe_agent::shm::MAX_PROBES {
        bail!(
            "the agent engine places at most {} probes; the specs come to {} (narrow the globs, or use \
             --engine ptrace)",
            dprobe_agent::shm::MAX_PROBES,
            planned.len()
        );
    }
    if stop_asked_before_the_command(args) {
        return Ok(None);
    }
    if engine == Engine::Agent {
        match start_agent(args, program) {
            Ok(engine) if stop_asked_before_the_command(args) => {
                dprobe_core::Engine::abandon(engine);
                return Ok(None);
            }
            Ok(mut engine) => {
                if let Some(held) = engine.loaded_by().filter(|_| args.verbose) {
                    eprintln!("dprobe: the agent was loaded by {held}");
                }
                if args.follows_children() {
                    engine.follow()?;
                }
                let pid = engine.pid();
                return trace(engine, planned, args, out, Scope::Process(pid)).map(Some);
            }
            Err(AgentError::GaveUp) => return Ok(None),
            Err(AgentError::Load(dprobe_ptrace::LoadError::Trace(e))) if killed_by_the_stop(&e) => return Ok(None),
            // Asked for by name: its failure is the answer.
            Err(e) if args.engine == Some(Engine::Agent) || !can_fall_back(&e) => return Err(e.into()),
            Err(e) => {
                if args.verbose {
                    // (dprobe tries again itself, with the other engine.)
                    let why = e.to_string();
                    let why = why.trim_end_matches(": try again");
                    eprintln!("dprobe: engine: ptrace (the agent could not be loaded: {why})");
                }
            }
        }
    }
    if stop_asked_before_the_command(args) {
        return Ok(None);
    }
    let mut engine = match (args.pid, args.command.split_first()) {
        (Some(pid), _) => PtraceEngine::attach(pid)?,
        (None, Some((argv0, rest))) => {
            let program = program.expect("found above");
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            match PtraceEngine::spawn_as(program, argv0, &rest) {
                Err(e) if killed_by_the_stop(&e) => return Ok(None),
                started => started?,
            }
        }
        (None, None) => bail!("nothing to trace: give `-p PID`, a command after `--`, or --system-wide"),
    };
    if stop_asked_before_the_command(args) {
        dprobe_core::Engine::abandon(engine);
        return Ok(None);
    }
    if args.follows_children() {
        engine.follow();
    }
    let pid = engine.pid();
    trace(engine, planned, args, out, Scope::Process(pid)).map(Some)
}

#[cfg(test)]
mod embedded_agent {
    use object::{Object, ObjectSymbol};

    /// The agent calls its own memory functions, not the traced program's (whose probes on
    /// them may stay on `int3`: each of the agent's calls would trap): its library imports none.
    #[test]
    fn imports_no_memory_function_of_the_c_library() {
        // A copy: the embedded bytes are not aligned as the ELF reader needs.
        let bytes = super::AGENT.to_vec();
        let agent = object::File::parse(bytes.as_slice()).expect("the embedded agent is an ELF file");
        let imported: Vec<String> = agent
            .dynamic_symbols()
            .filter(|s| s.is_undefined())
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect();
        assert!(imported.iter().any(|n| n == "mmap"), "the agent's imports are read: {imported:?}");
        for function in ["memcpy", "memmove", "memset", "memcmp", "bcmp"] {
            assert!(!imported.iter().any(|n| n == function), "{function} is imported: {imported:?}");
        }
    }
}
