//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// dprobe: kprobe-style dynamic probes on any function of a Linux program.
#[derive(Parser, Debug)]
#[command(name = "dprobe", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per run: the size of a variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace a program: print, count or summarize what its functions are called with and
    /// return.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(Box<TraceArgs>),
    /// List the functions that can be probed, or say whether one place can be and why not.
    List(ListArgs),
}

const TRACE_EXAMPLES: &str = "\
Probe specs (the kernel's dynamic-event syntax):
  [BINARY:]FUNCTION[+OFFSET][%return] [NAME=]FETCHARG[:TYPE] ...
  usdt:BINARY:[PROVIDER:]NAME [NAME=]FETCHARG[:TYPE] ...   (static probes, $argN their arguments)
  FUNCTION may be a glob (libc:str*, ./app:handle_*): one probe per matching function.
  [BINARY:]FILE:LINE ...  [BINARY:]FUNCTION:+N ...   (source lines, from DWARF; +N is lines)
  FETCHARG: %REG  $argN  $retval  $comm  $errno  $stackN  @ADDR  \\IMM  +|-OFF(FETCHARG)
  TYPE:     s8..s64  u8..u64  x8..x64  string

Examples:
  dprobe trace 'libc:open path=+0($arg1):string flags=$arg2:x32' -- cat /etc/hostname
  dprobe trace 'libc:open%return ret=$retval:s32 err=$errno' --filter 'ret < 0' -- cat /nonexistent
  dprobe trace --count --duration 5s -p 1234 'libc:nanosleep' 'libc:sched_yield'
  dprobe trace --latency 'libc:write' -- dd if=/dev/zero of=/dev/null count=1000
  dprobe trace --count 'libc:str*' -- ls
  dprobe trace 'usdt:./app:server:request id=$arg1 path=+0($arg2):string' -- ./app
  dprobe trace -a 'libc:open path=+0($arg1):string' --duration 10s       (every process)
  dprobe trace -a tracepoint:syscalls:sys_exit_openat --filter 'ret < 0'
  dprobe trace -a 'kernel:do_sys_openat2%return ret=$retval:s32'          (kprobe events)";

/// `dprobe trace`.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Probe specs, one per argument (see below).
    #[arg(required = true, value_name = "PROBE")]
    pub probes: Vec<String>,
    /// Trace this running process (every thread) instead of starting a command.
    #[arg(short = 'p', long = "pid", value_name = "PID", conflicts_with = "command")]
    pub pid: Option<i32>,
    /// The command to start and trace, after `--` (with --system-wide: to run while tracing).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Only events whose fetched values match: `ret < 0`, `path ~ "/etc/*" && flags != 0`.
    #[arg(short = 'f', long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// One JSON object per event (fields: time, time_ns, wall_time, pid, tid, comm, probe,
    /// function, kind, args, and for returns retval, errno, errno_name, latency_ns).
    #[arg(long, conflicts_with_all = ["count", "hist", "latency"])]
    pub json: bool,
    /// Count hits per probe, print the table at the end instead of each event.
    #[arg(short = 'c', long)]
    pub count: bool,
    /// A histogram of the fetched value NAME (count, min, p50, p90, p99, max and log2
    /// buckets), instead of each event. May be repeated.
    #[arg(long, value_name = "NAME")]
    pub hist: Vec<String>,
    /// A histogram of each function's time from entry to return (count, min, p50, p90, p99,
    /// max and log2 buckets, in ns), instead of each event.
    #[arg(long)]
    pub latency: bool,
    /// Split --count, --hist and --latency by key: comm (thread name), pid, tid, stack (the
    /// user stack, folded) or a fetched value's NAME, several with commas (`--by comm,tid`).
    #[arg(long, value_name = "KEY,...", value_delimiter = ',')]
    pub by: Vec<String>,
    /// Each event's stack: the user stack (`--stack`), the kernel's (`--stack=kernel`, kernel
    /// engine) or both (`--stack=kernel,user`), unwound with the code's call-frame
    /// information (no frame pointers needed) and shown as functions with offsets,
    /// `file:line` and inlined calls; JSON gets a `stack` array.
    #[arg(long, value_name = "kernel,user", num_args = 0..=1, require_equals = true, default_missing_value = "user")]
    pub stack: Option<String>,
    /// With --stack: the most frames kept per stack.
    #[arg(long, value_name = "N", default_value_t = crate::stacks::DEFAULT_DEPTH)]
    pub stack_depth: usize,
    /// Count each distinct stack and write them at the end as folded stacks (`main;run;leaf
    /// 42`, root first: for flamegraph.pl, inferno, speedscope) to FILE, or with no FILE to
    /// standard output; implies --stack, instead of each event.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "-")]
    pub folded: Option<String>,
    /// With --by: keep the N keys with the most hits (per probe).
    #[arg(long, value_name = "N", requires = "by")]
    pub top: Option<usize>,
    /// Stop tracing after this long (`10`, `2.5s`, `500ms`, `1m`) and detach.
    #[arg(short = 'd', long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Leave children untraced. By default a forked child, and the program a child executes
    /// (`system`, `posix_spawn`, a shell's commands), is traced too, its events carrying its
    /// pid, its hits counted with the rest. With this, a child's probes are removed as it
    /// starts; a `vfork` child (`system`, `posix_spawn`), which runs in the program's own
    /// memory, is traced until it executes its program.
    #[arg(long, overrides_with = "follow")]
    pub no_follow: bool,
    /// Follow children: the default (see --no-follow).
    #[arg(long, overrides_with = "no_follow", hide = true)]
    pub follow: bool,
    /// Pending returns per return probe, over all threads; more are counted as missed.
    /// Default: no limit (the kernel engine: the kernel's default).
    #[arg(long, value_name = "N")]
    pub maxactive: Option<usize>,
    /// The most probes the specs may come to, globs (`libc:str*`) and static probes with
    /// several sites expanded.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_probes: usize,
    /// Trace every process on the machine through the kernel's own probes (uprobes,
    /// kprobes, tracepoints); with a command, for as long as it runs.
    #[arg(short = 'a', long = "system-wide")]
    pub system_wide: bool,
    /// With --system-wide: only threads with this name.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// With the kernel engine: the size of each CPU's perf buffer (`256K`, `4M`; a power of
    /// two from 4K to 1G; default 1M). A larger one loses fewer events in bursts.
    #[arg(long, value_name = "SIZE", value_parser = parse_buffer_size)]
    pub buffer_size: Option<usize>,
    /// With the kernel engine: aggregate --count and --hist in dprobe from each event read
    /// through the perf buffers, instead of in the kernel through BPF.
    #[arg(long)]
    pub no_bpf: bool,
    /// Which engine: ptrace (one program, handlers see the stopped thread), agent (one
    /// program, dprobe's in-process engine loaded into it: no stop per hit) or kernel
    /// (system-wide, kernel functions, tracepoints). Default: what the probes need.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// Say which engine was picked, and why.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Print each event's time: its local wall-clock time (`HH:MM:SS.ffffff`), or with
    /// `--time=rel` the seconds since the trace started.
    #[arg(short = 'T', long, value_enum, value_name = "wall|rel", num_args = 0..=1, require_equals = true, default_missing_value = "wall")]
    pub time: Option<crate::clock::TimeFormat>,
    /// Write the events as a timeline: `FILE.pftrace` a Perfetto trace (one track per thread
    /// under its process, calls as slices with their arguments and return values, other hits
    /// as instants, with --count a counter per probe), `FILE.json` Chrome's trace-event
    /// format. Events then go to the file only; the summary is still printed.
    #[arg(long, value_name = "FILE", value_parser = parse_trace_file)]
    pub trace_file: Option<PathBuf>,
    /// Write hits per probe (and key, with --by), the --hist values and --latency as
    /// OpenMetrics text to FILE at the end (replaced whole, never half-written).
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// With --metrics: rewrite the file this often while tracing (`10s`, `1m`).
    #[arg(long, value_name = "TIME", value_parser = parse_duration, requires = "metrics")]
    pub interval: Option<Duration>,
    /// Write events and the summary here instead of standard error (which keeps them apart
    /// from the traced program's own output). With --json, only the events: the summary
    /// goes to standard error.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl TraceArgs {
    /// Whether children are followed (the default; not with --no-follow).
    pub fn follows_children(&self) -> bool {
        !self.no_follow
    }
}

/// The engines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// ptrace: one program, spawned or attached.
    Ptrace,
    /// dprobe's agent library loaded into one program, spawned or attached.
    Agent,
    /// The kernel's uprobes, kprobes and tracepoints.
    Kernel,
}

/// `dprobe list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// The functions of this running process and its libraries.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pid: Option<i32>,
    /// For `FILE FUNCTION`: its signature from the DWARF, and each variable's type and where
    /// a probe finds it (as `perf probe -V`).
    #[arg(long = "args")]
    pub args: bool,
    /// `FILE [PATTERN]` (an ELF program or library), or with `-p` just `[PATTERN]`. PATTERN is
    /// a glob on function names (`*open*`), `usdt:GLOB` for the file's static probes with
    /// their arguments, or one place to check: `FUNCTION+OFFSET` or `0xADDRESS`. A library and
    /// pattern may also be given as in a probe spec: `libc:str*`, `libm:floor`; and a library by
    /// name where FILE goes: `libc 'str*'`.
    #[arg(value_name = "FILE | PATTERN", num_args = 0..=2)]
    pub rest: Vec<String>,
    /// The source lines of this function, numbered where they have code (where a probe
    /// `FILE:LINE` or `FUNCTION:+N` can go); needs the binary's debug information. With
    /// `-p`, `[BINARY:]FUNCTION` (the program's own by default).
    #[arg(long, value_name = "FUNCTION")]
    pub lines: Option<String>,
}

impl ListArgs {
    /// `LIBRARY:PATTERN` alone, as in a probe spec (`libc:str*`), or `LIBRARY PATTERN`
    /// (`libc 'str*'`), made `FILE PATTERN`: the library found by name as `dprobe trace` finds
    /// it without a process. Anything else, and a path that exists, is left as given.
    pub fn spec_form_as_file_and_pattern(&mut self) -> Result<(), String> {
        if let [file, _pattern] = self.rest.as_slice() {
            // `libc '_*'`: a library named as in a probe spec, where a FILE goes.
            if self.pid.is_none() && !file.contains('/') && !std::path::Path::new(file).exists() {
                self.rest[0] = library_path(file, file)?;
            }
            return Ok(());
        }
        let [only] = self.rest.as_slice() else { return Ok(()) };
        if self.pid.is_some() || std::path::Path::new(only).exists() {
            return Ok(());
        }
        let (Some(library), pattern) = dprobe_spec::split_binary(only) else { return Ok(()) };
        self.rest = vec![library_path(only, library)?, pattern.to_owned()];
        Ok(())
    }

    /// The file (without `-p`).
    pub fn file(&self) -> Option<&str> {
        if self.pid.is_some() {
            None
        } else {
            self.rest.first().map(String::as_str)
        }
    }

    /// The pattern.
    pub fn pattern(&self) -> Option<&str> {
        let skip = usize::from(self.pid.is_none());
        self.rest.get(skip).map(String::as_str)
    }
}

/// The path of `library`, found by name as `dprobe trace` finds it without a process; the
/// error names what was given (`given`) when no file and no such library is there.
fn library_path(given: &str, library: &str) -> Result<String, String> {
    crate::sites::object_path(Some(library), crate::sites::Traced::Nothing).ok_or_else(|| {
        format!("`{given}`: no file `{given}`, and no library `{library}` in the system's library directories")
    })
}

/// `--trace-file`: a name whose extension says the format.
fn parse_trace_file(text: &str) -> Result<PathBuf, String> {
    let known = [".pftrace", ".perfetto-trace", ".json"];
    if known.iter().any(|e| text.len() > e.len() && text.ends_with(e)) {
        Ok(PathBuf::from(text))
    } else {
        Err(format!("name it FILE.pftrace (Perfetto) or FILE.json (Chrome trace events), not `{text}`"))
    }
}

/// `4096`, `256K`, `4M`, `1G` (K, M, G are KiB, MiB, GiB): a perf buffer's size, checked as
/// the kernel engine wants it.
pub fn parse_buffer_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("`{text}` is not a size (4096, 256K, 4M, 1G)")),
    };
    let n: usize = digits.parse().map_err(|_| format!("`{text}` is not a size (4096, 256K, 4M, 1G)"))?;
    let bytes = n.checked_shl(shift).filter(|b| b >> shift == n).ok_or_else(|| format!("`{text}` is too large"))?;
    dprobe_kernel::check_buffer_size(bytes)?;
    Ok(bytes)
}

/// The longest `--duration`: far beyond any trace, far below where adding it to the clock
/// would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `10`, `2.5s`, `500ms`, `1m`: a number of seconds, or a duration as `humantime` reads it
/// in the units that make sense for a trace (ns, us, ms, s, m, min, h), up to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: [&str; 9] = ["ns", "us", "ms", "s", "sec", "m", "min", "h", "hr"];
    let not_a_duration = || format!("`{text}` is not a duration (10, 2.5s, 500ms, 1m)");
    let number_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let unit = &text[number_end..];
    if number_end == 0 {
        return Err(not_a_duration());
    }
    if !unit.is_empty() && !UNITS.contains(&unit) {
        return Err(format!("unknown unit `{unit}` in `{text}` (ms, s, m, h)"));
    }
    let with_unit = if unit.is_empty() { format!("{text}s") } else { text.to_owned() };
    let too_long = || format!("`{text}` is too long (at most 100 years)");
    let d = humantime::parse_duration(&with_unit).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => too_long(),
        _ => not_a_duration(),
    })?;
    if d.is_zero() {
        return Err(format!("`{text}` is not a positive duration"));
    }
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_sizes_are_powers_of_two_of_pages() {
        assert_eq!(parse_buffer_size("4096"), Ok(4096));
        assert_eq!(parse_buffer_size("256K"), Ok(256 << 10));
        assert_eq!(parse_buffer_size("4m"), Ok(4 << 20));
        assert_eq!(parse_buffer_size("1GiB"), Ok(1 << 30));
        for bad in ["", "K", "3K", "100", "2G", "1T", "-4K", "99999999999999999999G", "18014398509481984K"] {
            assert!(parse_buffer_size(bad).is_err(), "{bad}");
        }
        assert!(parse_buffer_size("3K").unwrap_err().contains("power of two"));
    }

    #[test]
    fn durations_in_seconds_or_with_a_unit() {
        let ok = |t: &str| parse_duration(t).unwrap();
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("2.5s"), Duration::from_millis(2500));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert!(parse_duration("abc").unwrap_err().contains("`abc` is not a duration"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit `y`"));
        assert!(parse_duration("0").unwrap_err().contains("not a positive duration"));
        assert!(parse_duration("1.2.3s").is_err());
    }

    #[test]
    fn durations_past_the_bound_are_refused_not_a_panic() {
        let cases = [
            "18446744073709551615s",
            "18446744073709551616s",
            "9300000000000000000s",
            "3153600001s",
            "99999999999999999999999999h",
            "5000000000000000000000000000000000000000ms",
        ];
        for text in cases {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains("is too long (at most 100 years)"), "{text}: {e}");
        }
        assert_eq!(parse_duration("3153600000s"), Ok(MAX_DURATION));
    }
}
