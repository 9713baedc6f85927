//! Whether the kernel engine aggregates in the kernel: `--count` and one `--hist`, split by
//! comm, pid, tid and one fetched value, filtered by `--filter`, with nothing else that
//! needs each event in dprobe. The kernel then counts through a BPF program per probe and
//! dprobe reads its map at the end; otherwise every event comes through the perf buffers
//! and dprobe aggregates it. What the program cannot read (a string, too many memory reads,
//! a pattern) is found when the probe is placed, and that probe alone goes the perf way.

use dprobe_kernel::InKernel;

use crate::options::TraceArgs;

/// What the kernel should aggregate, or why dprobe aggregates from each event instead.
pub fn in_kernel(args: &TraceArgs) -> Result<InKernel, String> {
    if args.no_bpf {
        return Err("--no-bpf".into());
    }
    let each_event = [
        (args.latency, "--latency pairs each entry with its return"),
        (args.hist.len() > 1, "more than one --hist"),
        (args.trace_file.is_some(), "--trace-file writes each event"),
        (args.stack.is_some() || args.folded.is_some(), "stacks are unwound from each event"),
    ];
    if let Some((_, why)) = each_event.iter().find(|(asked, _)| *asked) {
        return Err((*why).into());
    }
    if !args.count && args.hist.is_empty() {
        return Err("events are shown, not aggregated".into());
    }
    let mut ask = InKernel { hist: args.hist.first().cloned(), filter: args.filter.clone(), ..InKernel::default() };
    for key in &args.by {
        match key.trim() {
            "comm" => ask.by.comm = true,
            "pid" => ask.by.pid = true,
            "tid" => ask.by.tid = true,
            "stack" => return Err("--by stack: stacks are unwound from each event".into()),
            name => match &ask.by_value {
                None => ask.by_value = Some(name.to_owned()),
                Some(first) => {
                    return Err(format!("--by {first},{name}: the kernel keys by one fetched value at most"));
                }
            },
        }
    }
    Ok(ask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn ask(words: &str) -> Result<InKernel, String> {
        let mut all = vec!["dprobe", "trace"];
        all.extend(words.split_whitespace());
        let crate::options::Command::Trace(args) = crate::options::Cli::try_parse_from(all).unwrap().command else {
            panic!("a trace")
        };
        in_kernel(&args)
    }

    #[test]
    fn counts_and_one_histogram_by_comm_pid_tid() {
        let a = ask("-a --count --by comm,tid libc:malloc").unwrap();
        assert_eq!((a.by.comm, a.by.pid, a.by.tid, a.hist, a.by_value), (true, false, true, None, None));
        let a = ask("-a --count --by size,comm --filter size>1 libc:malloc size=$arg1").unwrap();
        assert_eq!((a.by.comm, a.by_value.as_deref(), a.filter.as_deref()), (true, Some("size"), Some("size>1")));
        let a = ask("-a --hist size --by pid libc:malloc size=$arg1").unwrap();
        assert_eq!((a.by.pid, a.hist.as_deref()), (true, Some("size")));
        assert!(ask("-a --count libc:malloc").is_ok(), "no key: one count per probe");
    }

    #[test]
    fn what_needs_each_event_stays_in_dprobe() {
        let why = |w: &str| ask(w).unwrap_err();
        assert_eq!(why("-a libc:malloc"), "events are shown, not aggregated");
        assert_eq!(why("-a --count --no-bpf libc:malloc"), "--no-bpf");
        let cases = [
            ("-a --latency libc:malloc", "--latency"),
            ("-a --hist a --hist b libc:malloc a=$arg1 b=$arg2", "more than one --hist"),
            ("-a --count --by x,y libc:malloc x=$arg1 y=$arg2", "one fetched value at most"),
            ("-a --count --by stack libc:malloc", "--by stack"),
            ("-a --count --stack libc:malloc", "stacks"),
            ("-a --folded libc:malloc", "stacks"),
        ];
        for (line, reason) in cases {
            assert!(why(line).contains(reason), "{line}: {}", why(line));
        }
    }
}
