//! `dprobe`, the tracer: kprobe-style probes on the functions of a running or started
//! program, with their arguments and return values, filters, counts and histograms.
//!
//! ```text
//! dprobe trace 'libc:openat path=+0($arg2):string flags=$arg3:x32' -- cat /etc/hostname
//! dprobe trace --count -p 1234 'libc:nanosleep'
//! dprobe list -p 1234 '*open*'
//! ```

// The CLI makes no system call of its own: the crates below it own the mechanism.
#![forbid(unsafe_code)]

/// dprobe's messages on standard error. One that cannot be written (standard error closed, a
/// full disk, a pipe whose reader is gone) is lost, where the standard library's `eprintln!`
/// would end dprobe with a panic, perhaps before it put the traced program back as it was.
/// (Defined before the modules: theirs is this one.)
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod aggregates;
mod choose;
mod clock;
mod distribution;
mod drive;
mod expand;
mod export;
mod histogram;
mod in_kernel;
mod keys;
mod list;
mod list_lines;
mod list_returns;
mod options;
mod output;
mod plan;
mod process_end;
mod report;
mod signals;
mod sinks;
mod sites;
mod stacks;
mod summary;
mod trace;
mod usdt;
mod vars;

use clap::Parser;

fn main() {
    let cli = options::Cli::parse();
    // Indirect functions whose library records no choice (libc's `strstr`): dprobe runs the
    // C library's resolver itself to see what the loader chooses on this machine.
    dprobe_sym::run_resolvers_with(dprobe_inproc::run_resolver);
    let result = match cli.command {
        // Before anything else: the process that traces outlives this one (see dprobe-holder).
        options::Command::Trace(args) => match dprobe_holder::split(&signals::STOPS).and_then(signals::watch_the_front)
        {
            Ok(()) => trace::run(*args),
            Err(e) => Err(anyhow::Error::new(e).context("starting dprobe's tracing process")),
        },
        options::Command::List(args) => list::run(args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            match out_of_descriptors(&e) {
                Some(said) => eprintln!("dprobe: {said}"),
                None => eprintln!("dprobe: {e:#}"),
            }
            std::process::exit(2);
        }
    }
}

/// What to say where dprobe ran out of descriptors (`EMFILE`), a raw errno otherwise: the limit
/// it has, which the user set (`ulimit -n`) and the traced program gets as it is.
fn out_of_descriptors(e: &anyhow::Error) -> Option<String> {
    let emfile = e
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(nix::libc::EMFILE));
    if !emfile {
        return None;
    }
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    Some(format!(
        "too many open files: dprobe's limit of open files (`ulimit -n`) is {soft}, too low for it to work (it \
         needs a few dozen descriptors of its own; the traced program keeps the limit it is given)"
    ))
}
