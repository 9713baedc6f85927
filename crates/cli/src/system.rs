//! `dprobe trace` on the kernel engine: system-wide user-space probes, kernel functions and
//! tracepoints, read from the kernel's perf buffers; the same output, filters, counts and
//! histograms as the ptrace engine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use dprobe_kernel::{Field, FieldKind, FieldValue, Session};
use dprobe_ptrace::ProbeStats;
use dprobe_spec::{ArgType, Fetch, NamedArg, ProbeKind, Target};

use crate::fetch::Fetched;
use crate::options::TraceArgs;
use crate::output;
use crate::plan::{check_hist, parse_the_filter, Planned};
use crate::report::Report;
use crate::signals;
use crate::summary::{self, ProbeLine};
use crate::trace::{mode, output, thread_name};

/// The hidden argument that brings the thread's name with each dynamic event.
const COMM_FIELD: &str = "dprobe_comm";
/// Pending entries kept for `--latency`, over all threads; more are dropped and counted.
const MAX_PENDING: usize = 65_536;

/// What one report probe reads from the kernel.
struct KernelProbe {
    /// Its event, and for `--latency` the event of its return.
    event: usize,
    return_event: Option<usize>,
    /// Field names in the order of the probe's arguments.
    fields: Vec<String>,
}

/// Run `dprobe trace` on the kernel engine.
pub fn run(args: &TraceArgs, mut planned: Vec<Planned>) -> Result<i32> {
    if args.pid.is_some() && !args.command.is_empty() {
        bail!("give -p PID or a command, not both");
    }
    // The output first (opening a FIFO waits for its reader: a Ctrl-C then simply ends
    // dprobe, nothing is defined yet); then the stop signals are caught, before the first
    // event is defined, so that every later exit path removes what was defined.
    let out = output(args)?;
    signals::install().context("installing signal handlers")?;
    let mut session = Session::new()?;
    // The thread's name comes with each event when something shows or filters it (it costs
    // the kernel a string copy per event).
    let with_comm = mode(args) != crate::report::Mode::Quiet || args.comm.is_some();
    let mut probes = Vec::new();
    for p in &mut planned {
        let mut spec = p.spec.clone();
        let dynamic = !matches!(spec.target, Target::Tracepoint { .. });
        if dynamic && with_comm {
            spec.args.push(NamedArg { name: COMM_FIELD.into(), fetch: Fetch::Comm, ty: ArgType::String });
        }
        let event = session.add(&spec, None, args.maxactive).map_err(|e| anyhow::anyhow!("`{}`: {e}", p.info.spec))?;
        if !dynamic {
            // A tracepoint's fields are its arguments.
            let format = &session.events()[event].format;
            p.info.args = format.own_fields().map(tracepoint_arg).collect();
            if format.name.starts_with("sys_exit_") {
                // A system call's return value: negative error numbers get their names.
                p.info.retval_index = p.info.args.iter().position(|a| a.name == "ret");
                p.info.errno_in_retval = true;
            }
        }
        let return_event = if args.latency && p.spec.kind == ProbeKind::Entry {
            let mut ret = p.spec.clone();
            ret.kind = ProbeKind::Return;
            ret.args = Vec::new();
            if with_comm {
                ret.args.push(NamedArg { name: COMM_FIELD.into(), fetch: Fetch::Comm, ty: ArgType::String });
            }
            Some(session.add(&ret, None, args.maxactive).map_err(|e| anyhow::anyhow!("`{}`: {e}", p.info.spec))?)
        } else {
            None
        };
        let fields = p.info.args.iter().map(|a| a.name.clone()).collect();
        probes.push(KernelProbe { event, return_event, fields });
    }
    check_hist(args, &planned)?;
    let filter = parse_the_filter(args, &planned)?;
    let mut kernel_filtered = Vec::new();
    if let (Some(text), Some(f)) = (&args.filter, &filter) {
        // The kernel filters what it can: each event whose fields cover the filter's.
        let names = f.fields();
        for (p, k) in planned.iter().zip(&probes) {
            if names.iter().all(|n| p.info.args.iter().any(|a| a.name == *n)) {
                session.set_filter(k.event, Some(text));
                kernel_filtered.push(p.info.spec.split_whitespace().next().unwrap_or_default().to_owned());
            }
        }
    }
    let mut report = Report::new(out, mode(args), filter, args.hist.clone(), args.latency);
    for p in &planned {
        report.add_probe(p.info.clone());
    }
    session.start(None)?;
    let mut child = match args.command.split_first() {
        Some((program, rest)) => Some(
            std::process::Command::new(program)
                .args(rest)
                .spawn()
                .with_context(|| format!("cannot start `{program}`"))?,
        ),
        None => None,
    };
    let deadline = args.duration.map(|d| Instant::now() + d);
    report.start = Instant::now();
    let mut pending: HashMap<(usize, u32), Vec<u64>> = HashMap::new();
    let mut pending_dropped = 0u64;
    let mut values: Vec<Fetched> = Vec::new();
    let mut comms: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut exit = None;
    let mut on_hit = |hit: dprobe_kernel::Hit<'_>| {
        if args.pid.is_some_and(|p| p as u32 != hit.pid) {
            return;
        }
        let comm = match hit.field(COMM_FIELD) {
            Some(FieldValue::Str(c)) => c,
            _ => {
                if comms.len() > 4096 {
                    comms.clear();
                }
                comms.entry(hit.tid).or_insert_with(|| thread_name(hit.pid as i32, hit.tid as i32)).clone()
            }
        };
        if args.comm.as_deref().is_some_and(|c| c.as_bytes() != comm) {
            return;
        }
        for (index, k) in probes.iter().enumerate() {
            if k.return_event == Some(hit.event) {
                let Some(start) = pending.get_mut(&(index, hit.tid)).and_then(Vec::pop) else { continue };
                let latency = Duration::from_nanos(hit.time.saturating_sub(start));
                values.clear();
                values.extend(report.probes[index].info.args.iter().map(|_| Fetched::Fault(0)));
                report.record(index, hit.pid as i32, hit.tid as i32, &comm, &values, Some(latency));
            } else if k.event == hit.event {
                if k.return_event.is_some() {
                    if pending.len() < MAX_PENDING {
                        pending.entry((index, hit.tid)).or_default().push(hit.time);
                    } else {
                        pending_dropped += 1;
                    }
                    continue;
                }
                values.clear();
                for (name, arg) in k.fields.iter().zip(&report.probes[index].info.args) {
                    values.push(to_fetched(hit.field(name), arg.ty));
                }
                report.record(index, hit.pid as i32, hit.tid as i32, &comm, &values, None);
            }
        }
    };
    let why = loop {
        session.poll(100, &mut on_hit)?;
        if let Some(s) = signals::requested() {
            break format!("stopped by {}", signals::signal_name(s));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "--duration is over".into();
        }
        if let Some(c) = child.as_mut() {
            if let Some(status) = c.try_wait()? {
                exit = Some(status);
                break format!("`{}` {status}", args.command[0]);
            }
        }
    };
    session.poll(0, &mut on_hit)?;
    signals::stop_tick();
    let lines: Vec<ProbeLine> = planned
        .iter()
        .zip(&probes)
        .zip(&report.probes)
        .map(|((p, k), state)| {
            let received = session.events()[k.event].received;
            let counts = session.kernel_counts(k.event).unwrap_or_default();
            let returns = k.return_event.map(|r| session.events()[r].received);
            let stats = ProbeStats {
                // The kernel counts every hit, also those its filter dropped or a full buffer lost.
                hits: counts.hits.max(received),
                returns: if p.info.is_return { received } else { returns.unwrap_or(0) },
                missed: counts.missed,
                addr: Some(dprobe_arch::Addr(0)),
                ..ProbeStats::default()
            };
            ProbeLine { spec: p.info.spec.clone(), stats, shown: state.shown }
        })
        .collect();
    let mut notes = Vec::new();
    for ((p, k), line) in planned.iter().zip(&probes).zip(&lines) {
        let target = p.info.spec.split_whitespace().next().unwrap_or_default();
        let received = session.events()[k.event].received;
        if !kernel_filtered.iter().any(|t| t == target) && line.stats.hits > received {
            notes.push(format!(
                "{target}: {} hits not received: they came as tracing stopped, or the kernel's buffers were full",
                line.stats.hits - received
            ));
        }
    }
    if session.lost > 0 {
        notes.push(format!("{} records lost: the kernel's buffers were full (it dropped them)", session.lost));
    }
    for target in &kernel_filtered {
        notes.push(format!("{target}: filtered in the kernel: only the events that passed reached dprobe"));
    }
    if pending_dropped > 0 {
        notes.push(format!("{pending_dropped} entries not timed: {MAX_PENDING} calls were already pending"));
    }
    let elapsed = report.start.elapsed();
    let ending = format!("system-wide trace ended after {} ({why})", output::human_duration(elapsed));
    let text = summary::render(&lines, &report.histograms(), &notes, &ending, report.filtered());
    report.finish(&text);
    session.close()?;
    Ok(match exit {
        Some(status) => {
            status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0))
        }
        None => 0,
    })
}

/// A tracepoint field as an argument: its name, and a type that shows it well.
fn tracepoint_arg(f: &Field) -> NamedArg {
    let bits = (f.size.min(8) * 8) as u8;
    let ty = match f.kind {
        FieldKind::Int { signed: true } => ArgType::S(bits),
        FieldKind::Int { signed: false } if f.size == 8 => ArgType::X(64),
        FieldKind::Int { signed: false } => ArgType::U(bits),
        _ => ArgType::String,
    };
    NamedArg { name: f.name.clone(), fetch: Fetch::Immediate(0), ty }
}

fn to_fetched(v: Option<FieldValue>, ty: ArgType) -> Fetched {
    match v {
        Some(FieldValue::Signed(x)) => Fetched::Int(x as u64, ty),
        Some(FieldValue::Unsigned(x)) => Fetched::Int(x, ty),
        Some(FieldValue::Str(s)) | Some(FieldValue::Bytes(s)) => Fetched::Str(s),
        None => Fetched::Fault(0),
    }
}
