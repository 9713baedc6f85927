//! The seam between a tracer and an engine: place probes, run until an ending while events
//! flow to a sink, report each probe's [`Stats`], let go. The ptrace engine (one program,
//! stopped at each hit) and the kernel engine (the kernel's own probes, read from perf
//! buffers) both implement it, so a tracer is written once.

use dprobe_spec::{NamedArg, ProbeSpec};

use crate::event::EventSink;
use crate::fetch::FetchPlan;
use crate::stats::Stats;

/// One probe to place.
#[derive(Debug, Clone, Copy)]
pub struct ProbeRequest<'a> {
    /// Where, and entry or return.
    pub spec: &'a ProbeSpec,
    /// What to fetch at each hit (at the return for a return probe).
    pub plan: &'a FetchPlan,
    /// Time each call from its entry to its return: an entry probe then delivers its entries
    /// and its returns (return events carry the entry's time when the engine pairs them).
    pub timed: bool,
    /// Returns that may be pending at once for a return or timed probe; more are missed.
    /// `None`: the engine's default.
    pub maxactive: Option<usize>,
    /// A static probe's semaphore: held above zero in the traced program while the probe is
    /// placed, and given back when it is removed, so that the program prepares the probe's
    /// arguments only while it is traced.
    pub semaphore: Option<&'a dprobe_sym::Semaphore>,
}

/// What placing a probe told.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    /// The fields the engine fetches instead of the plan's, when the probed thing defines
    /// them (a tracepoint's own fields); events then carry these values, in this order.
    pub fields: Option<Vec<NamedArg>>,
    /// Said to the user (a probe waiting for its library).
    pub note: Option<String>,
    /// Said to the user who asked for details (`-v`): how the engine placed it.
    pub detail: Option<String>,
}

/// One key's figures for a probe whose hits the engine aggregated itself (the kernel engine,
/// in the kernel through BPF) instead of handing over each event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedTally {
    /// Which probe.
    pub probe: usize,
    /// The process (0 unless keyed by it).
    pub pid: u32,
    /// The thread (0 unless keyed by it).
    pub tid: u32,
    /// The thread's name (empty unless keyed by it).
    pub comm: Vec<u8>,
    /// The histogram's value, its magnitude rounded to 11 significant bits (the classes of
    /// an HDR histogram of 3 significant digits); `None` without one, or when it could not
    /// be read.
    pub value: Option<i64>,
    /// The value of the fetched argument it is keyed by (`--by NAME`), exactly; `None` when
    /// not keyed by one, or when it could not be read.
    pub by: Option<i64>,
    /// Hits with this key.
    pub count: u64,
    /// The smallest and largest exact values among them.
    pub min: i64,
    /// See `min`.
    pub max: i64,
    /// The sum of their exact values (0 without a histogram's value).
    pub sum: i128,
}

/// Which stacks events carry, and how deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackRequest {
    /// The user stack.
    pub user: bool,
    /// The kernel stack (kernel probes, and user probes' system calls).
    pub kernel: bool,
    /// Frames kept at most, innermost first.
    pub depth: usize,
}

/// How a traced program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// The status a shell reports for it (`128 + N` for signal N).
    pub fn shell_status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Why [`Engine::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The traced program (or the command run alongside) ended.
    Exited(Exit),
    /// The traced process ended and how is not known: dprobe is neither its parent nor its
    /// tracer (a process the agent was loaded into).
    Gone,
    /// The caller asked (its `stop` said so).
    Asked,
}

/// Reads every key's figures so far, while the engine runs.
pub type LiveTallies = Box<dyn Fn() -> Vec<KeyedTally>>;

/// Notes an engine learns only as it removes its probes, in [`Engine::finish`], which takes
/// the engine: read through this handle afterwards.
pub type FinishNotes = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// An engine.
pub trait Engine {
    /// Its errors.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Place one probe; its events carry its index, the order of the calls from 0.
    fn place(&mut self, probe: ProbeRequest<'_>) -> Result<Placed, Self::Error>;

    /// Place several probes, in order: one answer each, as one call of [`Engine::place`] each
    /// would give (what the default does); an engine that can place them together does.
    fn place_many(&mut self, probes: Vec<ProbeRequest<'_>>) -> Vec<Result<Placed, Self::Error>> {
        probes.into_iter().map(|p| self.place(p)).collect()
    }

    /// Let the engine drop events that fail `filter` (its text, the kernel's filter syntax)
    /// before they reach the tracer, for the probes that fetch every field it uses. The
    /// tracer still tests each event it receives; this only saves the transport. Called
    /// after every probe is placed and before [`Engine::run`]; by default it does nothing.
    fn prefilter(&mut self, filter: &dprobe_spec::Filter, text: &str) {
        let _ = (filter, text);
    }

    /// Have every event carry the stacks `want` names (asked before any probe is placed).
    /// By default the engine refuses, with what to say.
    fn stacks(&mut self, want: StackRequest) -> Result<(), String> {
        let _ = want;
        Err("this engine does not capture stacks".into())
    }

    /// Trace until the program ends or `stop` returns true (asked between events, and at
    /// least every tenth of a second), handing every event to `sink` in order.
    fn run(&mut self, stop: &mut dyn FnMut() -> bool, sink: EventSink<'_>) -> Result<Ending, Self::Error>;

    /// Probe `index`'s figures so far.
    fn stats(&self, index: usize) -> Stats;

    /// What the summary should say about probe `index` beyond its figures.
    fn remarks(&self, index: usize) -> Vec<String> {
        let _ = index;
        Vec::new()
    }

    /// What the summary should say about the trace as a whole (records the kernel dropped).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Every key's figures so far, for the probes the engine aggregates itself (whose events
    /// never reach the sink); none by default.
    fn tallies(&self) -> Vec<KeyedTally> {
        Vec::new()
    }

    /// What reads [`Engine::tallies`] while the trace runs, for a file rewritten periodically
    /// (`--metrics --interval`); none by default.
    fn live_tallies(&self) -> Option<LiveTallies> {
        None
    }

    /// Where [`Engine::finish`] leaves what the user should know of the removal (a probe's
    /// code that could not be given back whole, and why); none by default.
    fn finish_notes(&self) -> FinishNotes {
        FinishNotes::default()
    }

    /// Remove every probe and let go. `wait`: a program the engine started is waited for as
    /// it says (a signal ended the trace), until `give_up` says to stop waiting. Returns how
    /// that program ended, when it did.
    fn finish(self, wait: Option<WaitForProgram>, give_up: &dyn Fn() -> bool) -> Result<Option<Exit>, Self::Error>;

    /// Give up before tracing (a probe could not be placed): remove what was placed and let
    /// go; a program the engine started, which has not run yet, goes too.
    fn abandon(self);
}

/// The summary's note for `n` child processes that ran untraced, with `hint` saying how to
/// trace them; none when there were none.
pub fn untraced_children(n: u64, hint: &str) -> Option<String> {
    match n {
        0 => None,
        1 => Some(format!("1 child process ran untraced ({hint})")),
        n => Some(format!("{n} child processes ran untraced ({hint})")),
    }
}

/// How a program the engine started is waited for once a stop signal ended the trace: the
/// signal's end is the program's too when the program got it (the terminal's Ctrl-C, a `kill`
/// of the whole process group, or one the engine passes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitForProgram {
    /// The signal that ended the trace.
    pub signal: i32,
    /// When the engine sends the program the signal, if it does: at once for one sent to
    /// dprobe alone; after a moment for one the program may have got itself, so that a
    /// program that got it and ends by it in that moment is not sent it twice.
    pub pass_on_after: Option<std::time::Duration>,
    /// How long the program is waited for; `None`: until it ends.
    pub patience: Option<std::time::Duration>,
}
