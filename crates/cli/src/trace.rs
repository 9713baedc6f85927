//! `dprobe trace`: parse the specs, pick an engine and start it (a program spawned or
//! attached for ptrace, a session for the kernel), then hand it to the driver.

use std::io::Write;

use anyhow::{bail, Context as _, Result};
use dprobe_agent::AgentEngine;
use dprobe_kernel::{KernelEngine, KernelOptions};
use dprobe_ptrace::PtraceEngine;

use crate::drive::{drive, Scope};
use crate::options::{Engine, TraceArgs};
use crate::plan::{check_hist, parse_the_filter, plan_probes};
use crate::report::Mode;
use crate::signals;

/// Find `program` the way a shell would (`PATH` unless it has a `/`).
pub fn find_program(program: &str) -> Result<String> {
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
fn output(args: &TraceArgs) -> Result<Box<dyn Write>> {
    Ok(match &args.output {
        Some(path) => Box::new(std::io::LineWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?,
        )),
        None => Box::new(std::io::LineWriter::new(std::io::stderr())),
    })
}

/// How events are shown, from the options.
pub fn mode(args: &TraceArgs) -> Mode {
    if args.count || !args.hist.is_empty() || args.latency {
        Mode::Quiet
    } else if args.json {
        Mode::Json
    } else if args.trace_file.is_some() {
        // The events go to the file; JSON lines beside it only when asked.
        Mode::Quiet
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
        Some(Engine::Agent) if args.system_wide => bail!("--system-wide needs the kernel engine, not the agent"),
        Some(e @ (Engine::Ptrace | Engine::Agent)) if kernel_targets > 0 => {
            let p = planned.iter().find(|p| p.needs_kernel()).expect("counted");
            let name = if e == Engine::Agent { "the agent" } else { "ptrace" };
            bail!("`{}`: kernel functions and tracepoints need the kernel engine, not {name}", p.info.spec)
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
        let name = match engine {
            Engine::Kernel => "kernel",
            Engine::Agent => "agent",
            Engine::Ptrace => "ptrace",
        };
        eprintln!("dprobe: engine: {name} ({why})");
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
    if engine != Engine::Ptrace && args.follow {
        bail!("--follow is for the ptrace engine (the default for one program)");
    }
    if engine != Engine::Kernel && args.buffer_size.is_some() {
        bail!("--buffer-size sets the kernel engine's perf buffers (--system-wide or --engine kernel)");
    }
    if engine != Engine::Kernel && args.comm.is_some() {
        let name = if engine == Engine::Agent { "agent" } else { "ptrace" };
        bail!("--comm filters system-wide traces (--system-wide); the {name} engine traces one process");
    }
    // The output first (opening a FIFO waits for its reader: a Ctrl-C then simply ends
    // dprobe, nothing is placed yet); then the stop signals are caught, before the first
    // probe is placed, so that every later exit path removes what was placed.
    let out = output(&args)?;
    signals::install().context("installing signal handlers")?;
    if engine == Engine::Kernel {
        let options = KernelOptions {
            pid: args.pid,
            comm: args.comm.clone(),
            // The thread's name comes with each event when something shows or filters it.
            with_comm: mode(&args) != Mode::Quiet || args.comm.is_some() || args.by.iter().any(|k| k == "comm"),
            command: args.command.clone(),
            buffer_size: args.buffer_size,
        };
        let scope = Scope::SystemWide { command: args.command.first().cloned() };
        return drive(KernelEngine::new(options)?, planned, &args, out, scope);
    }
    if engine == Engine::Agent && planned.len() > dprobe_agent::shm::MAX_PROBES {
        bail!(
            "the agent engine places at most {} probes; the specs come to {} (narrow the globs, or use \
             --engine ptrace)",
            dprobe_agent::shm::MAX_PROBES,
            planned.len()
        );
    }
    if engine == Engine::Agent {
        // A count alone needs no events: the agent counts in place (not by key).
        let events = mode(&args) != Mode::Quiet
            || !args.hist.is_empty()
            || !args.by.is_empty()
            || args.latency
            || args.filter.is_some()
            || args.trace_file.is_some()
            || args.metrics.is_some();
        let engine = match (args.pid, args.command.split_first()) {
            (Some(pid), _) => AgentEngine::attach(pid, events)?,
            (None, Some((program, rest))) => {
                let program = find_program(program)?;
                let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                AgentEngine::spawn(&program, &rest, events)?
            }
            (None, None) => bail!("nothing to trace: give `-p PID`, a command after `--`, or --system-wide"),
        };
        let pid = engine.pid();
        return drive(engine, planned, &args, out, Scope::Process(pid));
    }
    let mut engine = match (args.pid, args.command.split_first()) {
        (Some(pid), _) => PtraceEngine::attach(pid)?,
        (None, Some((program, rest))) => {
            let program = find_program(program)?;
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            PtraceEngine::spawn(&program, &rest)?
        }
        (None, None) => bail!("nothing to trace: give `-p PID`, a command after `--`, or --system-wide"),
    };
    if args.follow {
        engine.follow();
    }
    let pid = engine.pid();
    drive(engine, planned, &args, out, Scope::Process(pid))
}
