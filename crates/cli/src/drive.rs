//! Plan → engine → sinks, the same for every engine: place the probes, run until the program
//! ends, a signal or `--duration`, feed each event to the report, and end with a summary,
//! whatever ended the trace.

use std::fmt::Display;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use dprobe_core::fetch::FetchPlan;
use dprobe_core::{Ending, Engine, Exit, MultiSite, ProbeRequest};
use dprobe_spec::{Filter, ProbeKind, ProbePoint};

use crate::clock::Clock;
use crate::export::output_files::OutputFiles;
use crate::options::TraceArgs;
use crate::output;
use crate::plan::{check_hist, parse_the_filter, Planned};
use crate::report::{Outputs, Report};
use crate::signals;
use crate::sinks;
use crate::summary::{self, ProbeLine};
use crate::trace::mode;

/// What is traced, for the closing line.
pub enum Scope {
    /// One process.
    Process(i32),
    /// Every process, with a command run alongside or not.
    SystemWide {
        /// The command's program.
        command: Option<String>,
    },
}

/// Place every probe, then check what depends on the fields they fetch; returns the report.
fn prepare<E: Engine>(
    engine: &mut MultiSite<E>,
    planned: &mut Vec<Planned>,
    args: &TraceArgs,
    out: Box<dyn Write + Send>,
) -> Result<Report> {
    // Stacks are asked for before any probe is placed (an engine may place probes
    // differently for them).
    let implied = args.folded.is_some() || args.by.iter().any(|k| k == "stack");
    let stacks = crate::stacks::parse_stack(args.stack.as_deref(), args.stack_depth, implied)?;
    if let Some(want) = stacks {
        engine.stacks(want).map_err(|e| anyhow::anyhow!("--stack: {e}"))?;
    }
    // The engine numbers probes in the order they are placed: a glob's function that cannot
    // be placed is left out of the list (and said so), as if never asked for.
    let mut kept = Vec::with_capacity(planned.len());
    let mut left_out: Vec<(String, usize)> = Vec::new();
    // Placed together (an engine that can, the agent, places them with one change of the
    // program's code), answered in order.
    let all = std::mem::take(planned);
    let plans: Vec<FetchPlan> = all.iter().map(|p| FetchPlan::compile(&p.probe.spec.args, None)).collect();
    let requests: Vec<(ProbeRequest<'_>, &[ProbePoint])> = all
        .iter()
        .zip(&plans)
        .map(|(p, plan)| {
            let request = ProbeRequest {
                spec: &p.probe.spec,
                plan,
                timed: args.latency,
                maxactive: args.maxactive,
                semaphore: p.probe.semaphore.as_ref(),
            };
            (request, p.sites.as_slice())
        })
        .collect();
    let answers = engine.place_sites_many(&requests);
    drop(requests);
    for (mut p, answer) in all.into_iter().zip(answers) {
        if let Some(note) = &p.note {
            eprintln!("dprobe: `{}`: {note}", p.info.spec);
        }
        let placed = match (answer, &p.probe.glob) {
            (Ok(placed), _) => placed,
            (Err(e), Some(glob)) => {
                eprintln!("dprobe: `{glob}`: {} left out: {e}", p.info.label);
                match left_out.iter_mut().find(|(g, _)| g == glob) {
                    Some((_, n)) => *n += 1,
                    None => left_out.push((glob.clone(), 1)),
                }
                continue;
            }
            (Err(e), None) => return Err(anyhow::anyhow!("`{}`: {e}", p.info.spec)),
        };
        if let Some(note) = placed.note {
            eprintln!("dprobe: `{}`: {note}", p.info.spec);
        }
        if let Some(detail) = placed.detail.filter(|_| args.verbose) {
            eprintln!("dprobe: `{}`: {detail}", p.info.spec);
        }
        if let Some(fields) = placed.fields {
            p.info.args = fields;
            if matches!(&p.probe.spec.point, ProbePoint::Tracepoint { event, .. } if event.starts_with("sys_exit_")) {
                // A system call's return value: negative error numbers get their names.
                p.info.retval_index = p.info.args.iter().position(|a| a.name == "ret");
                p.info.errno_in_retval = true;
            }
        }
        kept.push(p);
    }
    *planned = kept;
    for (glob, n) in left_out {
        if !planned.iter().any(|p| p.probe.glob.as_ref() == Some(&glob)) {
            anyhow::bail!("`{glob}`: none of its {n} probes could be placed");
        }
    }
    check_hist(args, planned)?;
    let filter: Option<Filter> = parse_the_filter(args, planned)?;
    if let (Some(text), Some(f)) = (&args.filter, &filter) {
        engine.prefilter(f, text);
    }
    let known: Vec<&str> = planned.iter().flat_map(|p| p.info.args.iter().map(|a| a.name.as_str())).collect();
    let by = crate::keys::parse_by(&args.by, &known)?;
    let aggregates = sinks::aggregates(args.count, &args.hist, args.latency, &by, args.top);
    let mut report = Report::new(out, mode(args), args.time, filter.is_some(), aggregates);
    if stacks.is_some() {
        report.with_stacks();
    }
    let mut files = OutputFiles::default();
    let folded = args.folded.as_deref().filter(|&path| path != "-");
    files.check("--folded", folded.map(Path::new))?;
    files.check("--trace-file", args.trace_file.as_deref())?;
    if let Some(path) = &args.metrics {
        files.check_replaced("--metrics", path)?;
    }
    if let Some(path) = &args.folded {
        report.add_export(Box::new(crate::export::folded::Folded::new(path)));
    }
    let infos: Vec<_> = planned.iter().map(|p| p.info.clone()).collect();
    if let Some(path) = &args.trace_file {
        report.add_export(crate::export::trace_file(path, &infos, args.count)?);
    }
    if let Some(path) = &args.metrics {
        let metrics = crate::export::metrics::Metrics::new(path, args.interval, &infos, &by, &args.hist, args.latency)?;
        report.add_export(Box::new(metrics));
    }
    files.keep();
    for p in planned.iter() {
        let plan = FetchPlan::compile(&p.info.args, filter.as_ref());
        let timed = args.latency && p.probe.spec.kind == ProbeKind::Entry;
        report.add_probe(p.info.clone(), plan, timed);
    }
    Ok(report)
}

/// A trace that is over, its program let go: what is left is to complete the outputs and say
/// how it ended. It holds nothing of the engine's (see [`Outputs`]).
pub struct Traced {
    outputs: Outputs,
    /// The closing text: the probes' table, the aggregates, the notes and the ending line.
    summary: String,
    /// How the program ended, if it did while dprobe watched.
    exit: Option<Exit>,
    /// Why letting the program go (or removing the kernel's events) failed, if it did.
    finish_failure: Option<String>,
    /// Why the trace itself failed, if it did.
    failure: Option<String>,
}

/// Trace with `engine`; returns dprobe's exit status.
pub fn drive<E: Engine>(
    engine: E,
    planned: Vec<Planned>,
    args: &TraceArgs,
    out: Box<dyn Write + Send>,
    scope: Scope,
) -> Result<i32> {
    Ok(trace(engine, planned, args, out, scope)?.conclude(args))
}

/// Trace with `engine` until the trace ends, and let the program go.
pub fn trace<E: Engine>(
    engine: E,
    mut planned: Vec<Planned>,
    args: &TraceArgs,
    out: Box<dyn Write + Send>,
    scope: Scope,
) -> Result<Traced> {
    let mut engine = MultiSite::new(engine);
    let mut report = match prepare(&mut engine, &mut planned, args, out) {
        Ok(r) => r,
        Err(e) => {
            engine.abandon();
            return Err(e);
        }
    };
    if let Scope::Process(pid) = &scope {
        report.prepare_stacks(*pid as u32);
    }
    if let Some(live) = engine.live_tallies() {
        report.with_live_tallies(live);
    }
    let deadline = args.duration.map(|d| Instant::now() + d);
    report.start = Instant::now();
    report.clock = Clock::start();
    // An output that cannot be written ends the trace (the program is let go as on Ctrl-C).
    let output_failed = std::cell::Cell::new(false);
    // The engine asks whether to stop now and then, and hands events over, never both at
    // once: the report is shared between the two.
    let shared = std::cell::RefCell::new(report);
    // The engine first asks once its probes are live: said with -v, for whoever waits for it.
    let mut announced = !args.verbose;
    let outcome = engine.run(
        &mut || {
            if !announced {
                announced = true;
                eprintln!("dprobe: tracing");
            }
            shared.borrow_mut().tick();
            signals::requested().is_some() || output_failed.get() || deadline.is_some_and(|d| Instant::now() >= d)
        },
        &mut |event| {
            let mut report = shared.borrow_mut();
            report.event(event);
            output_failed.set(report.write_error().is_some());
        },
    );
    let mut report = shared.into_inner();
    // What the engine aggregated itself (in the kernel) joins the tables.
    report.absorb(&engine.tallies());
    // The trace's own time: removing probes afterwards (the kernel's, a tenth of a second
    // each) is not part of it.
    let elapsed = report.start.elapsed();
    let lines: Vec<ProbeLine> = (report.probes.iter().enumerate())
        .map(|(i, p)| ProbeLine {
            spec: p.info.spec.clone(),
            stats: engine.stats(i),
            sites: engine.site_count(i),
            shown: p.shown,
            remarks: engine.remarks(i),
        })
        .collect();
    let mut notes = engine.notes();
    notes.extend(report.notes());
    let stopped_by = match outcome {
        Ok(Ending::Asked) => signals::requested(),
        _ => None,
    };
    // A started command is waited for when it got the same signal (see
    // `signals::wait_for_the_command`); a SIGINT sent to dprobe alone ends dprobe now, the
    // command going on. A process given with -p is not waited for: nothing to decide.
    let wait = stopped_by.filter(|_| args.pid.is_none()).and_then(signals::wait_for_the_command);
    // Letting the program go is given up on (the original code is back by then; what is
    // still running is let go when the tracing thread ends) at a second stop signal, or at
    // the first when the trace ended by itself (the program's end, `--duration`): a signal that comes
    // while dprobe ends is never left waiting.
    let signals_before = signals::count();
    let finish_notes = engine.finish_notes();
    let finished = engine.finish(wait, &|| signals::insisted() || signals::count() > signals_before);
    // A process given with -p that ended where the engine could not see how: see
    // `process_end.rs`.
    let gone_how = matches!(outcome, Ok(Ending::Gone)).then(crate::process_end::how_it_ended).flatten();
    let exit = match (&outcome, &finished) {
        (Ok(Ending::Exited(exit)), _) => Some(*exit),
        (Ok(Ending::Gone), _) if gone_how.is_some() => gone_how,
        (_, Ok(exit)) => *exit,
        _ => None,
    };
    let failure = outcome.as_ref().err().map(|e| e as &dyn Display);
    let gone = matches!(outcome, Ok(Ending::Gone)) && gone_how.is_none();
    let ending = ending_text(&scope, failure, stopped_by, exit, gone, elapsed);
    notes.extend(std::mem::take(&mut *finish_notes.lock().unwrap_or_else(|e| e.into_inner())));
    let summary = summary::render(&lines, &report.histograms(), &notes, &ending, report.filtered());
    let finish_failure = finished.err().map(|e| match scope {
        Scope::Process(pid) => format!("detaching from process {pid} failed: {e}"),
        Scope::SystemWide { .. } => format!("removing dprobe's kernel events failed: {e}"),
    });
    Ok(Traced {
        outputs: report.into_outputs(),
        summary,
        exit,
        finish_failure,
        failure: outcome.err().map(|e| e.to_string()),
    })
}

impl Traced {
    /// Complete the exports, write the summary and say what failed; returns dprobe's exit
    /// status.
    pub fn conclude(mut self, args: &TraceArgs) -> i32 {
        let export_errors = self.outputs.finish_exports();
        let apart = summary_apart(args);
        let write_error = self.outputs.finish(if apart { "" } else { &self.summary });
        if apart {
            // As `eprint!`, without its panic when standard error is gone.
            let _ = std::io::stderr().write_all(self.summary.as_bytes());
        }
        let exit = self.exit;
        if let Some(e) = write_error {
            // A reader that went away (`| head`) ends the trace quietly; any other failure
            // (a full disk) is an error, said where it can still be read.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return exit.map_or(0, Exit::shell_status);
            }
            let to = args.output.as_ref().map_or_else(|| "standard error".to_owned(), |p| p.display().to_string());
            eprintln!("dprobe: cannot write to {to}: {e}; the trace was ended and every probe removed");
            return 1;
        }
        if !export_errors.is_empty() {
            for e in export_errors {
                eprintln!("dprobe: {e:#}");
            }
            return 1;
        }
        if let Some(e) = self.finish_failure {
            eprintln!("dprobe: {e}");
            return 1;
        }
        if let Some(e) = self.failure {
            // The summary's closing line says it already where the summary went to standard
            // error; said again there when the summary went to a file.
            if args.output.is_some() && !apart {
                eprintln!("dprobe: {e}");
            }
            return 1;
        }
        exit.map_or(0, Exit::shell_status)
    }
}

/// Whether the summary goes to standard error rather than to `-o FILE` with the events: a
/// file of JSON lines is for programs (`jq`), which take each line for an object, and the
/// summary's table is for people.
fn summary_apart(args: &TraceArgs) -> bool {
    args.json && args.output.is_some()
}

fn how(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exited with status {c}"),
        Exit::Signal(s) => format!("was killed by {}", signals::signal_name(s)),
    }
}

/// The closing line: what was traced, for how long, and what ended it (`gone`: the process
/// ended, how not known).
fn ending_text(
    scope: &Scope,
    failure: Option<&dyn Display>,
    stopped_by: Option<i32>,
    exit: Option<Exit>,
    gone: bool,
    elapsed: Duration,
) -> String {
    let after = output::human_duration(elapsed);
    match (scope, failure) {
        (Scope::Process(pid), Some(e)) => format!("tracing process {pid} stopped after {after}: {e}"),
        (Scope::SystemWide { .. }, Some(e)) => format!("system-wide trace stopped after {after}: {e}"),
        (Scope::Process(pid), None) if gone => {
            format!("process {pid} ended after {after} (how, only its parent can tell: dprobe is not its parent)")
        }
        (Scope::Process(pid), None) => match (stopped_by, exit) {
            (None, Some(e)) => format!("process {pid} {} after {after}", how(e)),
            (signal, exit) => {
                let why = signal.map_or_else(|| "--duration is over".to_owned(), signals::signal_name);
                let then = match exit {
                    Some(e) => format!("; it then {}", how(e)),
                    None => "; it goes on untraced".into(),
                };
                format!("detached from process {pid} after {after} ({why}){then}")
            }
        },
        (Scope::SystemWide { command }, None) => {
            let why = match (stopped_by, exit, command) {
                (Some(s), _, _) => format!("stopped by {}", signals::signal_name(s)),
                (None, Some(e), Some(c)) => format!("`{c}` {}", how(e)),
                (None, None, None) if gone => "the process given with -p ended".into(),
                // (Known through `process_end.rs`.)
                (None, Some(e), None) => format!("the process given with -p {}", how(e)),
                _ => "--duration is over".into(),
            };
            format!("system-wide trace ended after {after} ({why})")
        }
    }
}
