//! `dprobe trace --system-wide` with return probes the kernel engine watches at the function's
//! exits (a uprobe at its entry and at each `ret` and tail call, paired by the stack pointer):
//! tail calls, C++ exceptions, `longjmp`, signal handlers recursing on an alternate stack and
//! recursion deeper than the kernel's return probes watch (64 per thread), in one thread or
//! several, give the program's own result and exact figures; so do entry probes timed to
//! their returns (`--latency`), watched the same way.
mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use common::{hits, trace_to_file};

/// The kernel's event files are compared by other system tests: one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `kernel_returns MODE N` (its source says what it does).
fn program() -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kernel_returns.cpp");
    let path = dprobe_test_fixtures::c_program_by("g++", src, "kernel_returns", &["-O2", "-pthread"]);
    Box::leak(std::fs::canonicalize(path).unwrap().to_string_lossy().into_owned().into_boxed_str())
}

/// The RETURNS column of `probe` in a summary table.
fn returns(summary: &str, probe: &str) -> u64 {
    let line = summary.lines().find(|l| l.split_whitespace().next() == Some(probe)).expect("a line");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// What the program prints untraced.
fn untraced(args: &[&str]) -> String {
    let o = Command::new(program()).args(args).output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

/// The values of `function`'s return events, in order.
fn returned(trace: &str, function: &str) -> Vec<i64> {
    let marker = format!(" {function} returns ");
    trace.lines().filter_map(|l| l.split_once(&marker)).map(|(_, v)| v.trim().parse().unwrap()).collect()
}

#[test]
fn a_tail_call_pair_returns_both_with_the_callee_value() {
    let _x = exclusive();
    let p = program();
    let (caller, callee) = (format!("{p}:caller%return r=$retval:s32"), format!("{p}:callee%return r=$retval:s32"));
    let expected: Vec<i64> = (1..=100).map(|i| 3 * i).collect();
    // caller's one exit is its `jmp callee`: the value it returns is read at callee's `ret`,
    // watched at its exits already, or, placed before callee, watched for caller.
    for (first, second, caller_hops) in [(&callee, &caller, false), (&caller, &callee, true)] {
        let t = trace_to_file("system-exits-tail", &["-a", "-v", first, second, "--", p, "tail", "100"]);
        assert_eq!(t.code, Some(0), "{}", t.what("tail"));
        assert_eq!(t.stdout, untraced(&["tail", "100"]));
        assert_eq!(returned(&t.trace, "caller"), expected, "{}", t.what("caller"));
        assert_eq!(returned(&t.trace, "callee"), expected, "{}", t.what("callee"));
        let said =
            |spec: &str, how: &str| t.stderr.contains(&format!("dprobe: `{spec}`: its returns are watched {how}"));
        assert!(said(&callee, "at its 1 exit (ret, tail calls)"), "{}", t.stderr);
        let caller_how = match caller_hops {
            false => "at its 1 exit (ret, tail calls): the stack is not touched\n",
            true => "at its 1 exit (ret, tail calls): the stack is not touched, and its tail calls return with callee",
        };
        assert!(said(&caller, caller_how), "{}", t.stderr);
    }
}

#[test]
fn an_exception_through_return_probed_frames_leaves_the_program_as_untraced() {
    let _x = exclusive();
    let p = program();
    let probes = [format!("{p}:through%return"), format!("{p}:thrower%return")];
    // Paired in dprobe, the calls the exception unwound are told as such; counted in the
    // kernel at the exits, with the other causes of a missing return.
    let told = [
        ("--no-bpf", "30 returns not seen: longjmp, an exception, their thread exited"),
        ("--count", "30 entries (the kernel's count) without a return counted at the exits: they had not returned"),
    ];
    for (aggregation, gap) in told {
        let mut args = vec!["-a", "--count", &probes[0], &probes[1], "--", p, "throw", "90"];
        if aggregation == "--no-bpf" {
            args.insert(1, aggregation);
        }
        let t = trace_to_file("system-exits-throw", &args);
        assert_eq!(t.code, Some(0), "no terminate\n{}", t.what("throw"));
        assert_eq!(t.stdout, untraced(&["throw", "90"]), "the program's own result");
        for probe in &probes {
            assert_eq!((hits(&t.trace, probe), returns(&t.trace, probe)), (90, 60), "{}", t.what(probe));
            assert!(t.trace.contains(&format!("{probe}: {gap}")), "the unwound calls are told\n{}", t.trace);
        }
    }
}

#[test]
fn recursion_far_deeper_than_the_kernel_watches_returns_is_counted_exactly() {
    let _x = exclusive();
    let p = program();
    let probe = format!("{p}:deep%return");
    let t = trace_to_file("system-exits-deep", &["-a", "-c", &probe, "--", p, "deep", "10000"]);
    assert_eq!(t.code, Some(0), "{}", t.what("deep"));
    assert_eq!(t.stdout, untraced(&["deep", "10000"]));
    assert_eq!((hits(&t.trace, &probe), returns(&t.trace, &probe)), (10_001, 10_001), "{}", t.trace);
    assert!(!t.trace.contains("without a return"), "{}", t.trace);
}

#[test]
fn a_function_whose_exits_are_not_all_known_keeps_the_uretprobe_and_its_limit_is_said() {
    let _x = exclusive();
    let p = program();
    let probe = format!("{p}:jumps%return");
    // jumps leaves its first block through a computed goto: the kernel's return probe, whose
    // nesting stops at 64 per thread.
    let t = trace_to_file("system-exits-jumps", &["-a", "-v", "-c", &probe, "--", p, "jumps", "100"]);
    assert_eq!(t.code, Some(0), "{}", t.what("jumps"));
    assert_eq!(t.stdout, untraced(&["jumps", "100"]));
    let all = format!("{}{}", t.stderr, t.trace);
    let why = "its returns are watched through the return address (a uretprobe): its exits are not all known: `jmp";
    assert!(all.contains(why) && all.contains("is an indirect jump whose targets cannot be bounded"), "{all}");
    assert_eq!((hits(&t.trace, &probe), returns(&t.trace, &probe)), (101, 64), "{}", t.trace);
    assert!(
        t.trace.contains(
            "37 entries (the kernel's count) without a return received: they had not returned when \
             tracing stopped, left by longjmp or exit, or were nested deeper than the kernel watches returns (64 \
             per thread)"
        ),
        "{}",
        t.trace
    );
}

/// `dprobe trace -a --count [--no-bpf] PROBE -- kernel_returns ARGS`, which must end as the
/// program does untraced: what dprobe wrote.
fn counted(name: &str, probe: &str, extra: &[&str], args: &[&str]) -> String {
    let mut all = vec!["-a", "--count"];
    all.extend_from_slice(extra);
    all.extend_from_slice(&[probe, "--", program()]);
    all.extend_from_slice(args);
    let t = trace_to_file(name, &all);
    assert_eq!(t.code, Some(0), "{}", t.what(name));
    assert_eq!(t.stdout, untraced(args), "the program's own result\n{}", t.what(name));
    assert!(!t.trace.contains("records lost"), "{}", t.trace);
    t.trace
}

#[test]
fn a_handler_recursing_on_an_alternate_stack_above_or_below_the_frames_it_interrupted_pairs_exactly() {
    let _x = exclusive();
    let probe = format!("{}:alt_rec%return", program());
    // Each of 10 calls recurses 100 deep, and at its bottom a handler on the alternate stack
    // recurses 100 deep again: 2 x 101 activations per call, pending across the two stacks.
    for place in ["above", "below"] {
        let trace = counted("system-exits-altstack", &probe, &["--no-bpf"], &["altstack", "10", "100", place]);
        assert_eq!((hits(&trace, &probe), returns(&trace, &probe)), (2020, 2020), "{place}\n{trace}");
        assert!(!trace.contains("not seen") && !trace.contains("without a return"), "{place}\n{trace}");
    }
}

#[test]
fn longjmp_past_a_hundred_probed_frames_leaves_them_told_as_not_returned() {
    let _x = exclusive();
    let probe = format!("{}:leaper%return", program());
    let args = ["longjmp", "40", "100"];
    // 40 recursions 101 deep; the 20 odd ones (the last among them) jump back to main from
    // their bottom: 2,020 returns, 2,020 calls left.
    let trace = counted("system-exits-longjmp", &probe, &["--no-bpf"], &args);
    assert_eq!((hits(&trace, &probe), returns(&trace, &probe)), (4040, 2020), "{trace}");
    assert!(trace.contains("2020 returns not seen: longjmp, an exception"), "{trace}");
    assert!(!trace.contains("without a return"), "none taken for pending: {trace}");
    // Counted in the kernel at the exits: the same figures.
    let trace = counted("system-exits-longjmp-bpf", &probe, &[], &args);
    assert_eq!((hits(&trace, &probe), returns(&trace, &probe)), (4040, 2020), "{trace}");
    assert!(trace.contains("2020 entries (the kernel's count) without a return counted at the exits"), "{trace}");
}

#[test]
fn threads_recursing_far_past_the_kernels_64_returns_are_each_paired_exactly() {
    let _x = exclusive();
    let probe = format!("{}:deep%return", program());
    // 4 threads, each calling deep(500) 5 times: 10,020 calls, up to 2,004 pending at once,
    // their records read from every CPU's ring and paired in time order.
    let args = ["threads", "4", "5", "500"];
    let trace = counted("system-exits-threads", &probe, &["--no-bpf", "--buffer-size", "8M"], &args);
    assert_eq!((hits(&trace, &probe), returns(&trace, &probe)), (10_020, 10_020), "{trace}");
    assert!(!trace.contains("not seen") && !trace.contains("without a return"), "{trace}");
    let trace = counted("system-exits-threads-bpf", &probe, &[], &args);
    assert_eq!((hits(&trace, &probe), returns(&trace, &probe)), (10_020, 10_020), "{trace}");
}

/// The calls `function`'s latency table counts, in its buckets (0 without a table).
fn timed(summary: &str, function: &str) -> u64 {
    let title = format!("@latency of {function} (ns):");
    let table = summary.lines().skip_while(|l| *l != title).skip(1).take_while(|l| !l.is_empty());
    let buckets = table.filter(|l| l.contains('|'));
    buckets.map(|l| l.split('|').next().unwrap().split_whitespace().last().unwrap().parse::<u64>().unwrap()).sum()
}

#[test]
fn latency_times_every_call_past_64_deep_through_exceptions_and_longjmp() {
    let _x = exclusive();
    let p = program();
    let chrome = common::out_file("system-exits-latency.json");
    let export = format!("--trace-file={}", chrome.display());
    // (program's arguments, functions timed, calls, returns, returns not seen)
    type Case<'a> = (&'a [&'a str], &'a [&'a str], u64, u64, u64);
    let cases: [Case; 3] = [
        (&["deep", "1000"], &["deep"], 1001, 1001, 0),
        (&["throw", "90"], &["through", "thrower"], 90, 60, 30),
        (&["longjmp", "40", "100"], &["leaper"], 4040, 2020, 2020),
    ];
    for (args, functions, calls, returned, unwound) in cases {
        let specs: Vec<String> = functions.iter().map(|f| format!("{p}:{f}")).collect();
        let mut all = vec!["-a", "-v", "--latency", &export];
        all.extend(specs.iter().map(String::as_str));
        all.extend_from_slice(&["--", p]);
        all.extend_from_slice(args);
        let t = trace_to_file("system-exits-latency", &all);
        assert_eq!(t.code, Some(0), "{}", t.what(args[0]));
        assert_eq!(t.stdout, untraced(args), "the program's own result");
        let slices: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&chrome).unwrap()).unwrap();
        let slices = slices["traceEvents"].as_array().unwrap();
        for (spec, function) in specs.iter().zip(functions) {
            let how = format!("dprobe: `{spec}`: its returns are watched at its ");
            assert!(t.stderr.contains(&how), "not through the return address\n{}", t.stderr);
            assert_eq!((hits(&t.trace, spec), returns(&t.trace, spec)), (calls, returned), "{}", t.what(spec));
            assert_eq!(timed(&t.trace, function), returned, "each return timed once\n{}", t.trace);
            let seen = format!("{spec}: {unwound} returns not seen: longjmp, an exception");
            assert_eq!(t.trace.contains(&seen), unwound > 0, "{}", t.trace);
            assert!(!t.trace.contains("without a return"), "{}", t.trace);
            // The timeline has one slice per call timed.
            let begun = slices.iter().filter(|e| e["name"] == *function && e["ph"] == "B").count();
            assert_eq!(begun as u64, returned, "{function}'s slices");
        }
    }
}

#[test]
fn two_return_probes_on_one_function_each_watch_it_at_its_exits() {
    let _x = exclusive();
    let p = program();
    // Two return probes and an entry timed to its return, on one function, through 1,001-deep
    // recursion, and two on each of the functions an exception unwinds: every probe has
    // uprobes of its own at the function's exits, and each pairs every call.
    let deep =
        [format!("{p}:deep%return a=$retval:s32"), format!("{p}:deep%return b=$retval:u64"), format!("{p}:deep")];
    let throw = [
        format!("{p}:through%return a=$retval:s32"),
        format!("{p}:through%return b=$retval:u64"),
        format!("{p}:thrower%return a=$retval:s32"),
        format!("{p}:thrower%return b=$retval:u64"),
    ];
    for (specs, args, calls, returned, unwound) in
        [(&deep[..], &["deep", "1000"], 1001, 1001, 0), (&throw[..], &["throw", "90"], 90, 60, 30)]
    {
        let mut all = vec!["-a", "-v", "--latency"];
        all.extend(specs.iter().map(String::as_str));
        all.extend_from_slice(&["--", p]);
        all.extend_from_slice(args);
        let t = trace_to_file("system-exits-twice", &all);
        assert_eq!(t.code, Some(0), "{}", t.what(args[0]));
        assert_eq!(t.stdout, untraced(args), "the program's own result");
        for spec in specs {
            let how = format!("dprobe: `{spec}`: its returns are watched at its ");
            assert!(t.stderr.contains(&how), "not through the return address\n{}", t.stderr);
            let probe = spec.split_whitespace().next().unwrap();
            let line = t.trace.lines().find(|l| l.split_whitespace().next() == Some(probe)).unwrap();
            let figures: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(figures[1..3], [calls.to_string(), returned.to_string()], "{}", t.what(spec));
            let seen = format!("{probe}: {unwound} returns not seen: longjmp, an exception");
            assert_eq!(t.trace.matches(&seen).count(), if unwound > 0 { 2 } else { 0 }, "{}", t.trace);
        }
        assert!(!t.trace.contains("without a return"), "{}", t.trace);
    }
    // Each of the two return probes on deep sees every return with its value.
    let t = trace_to_file("system-exits-twice-values", &["-a", &deep[0], &deep[1], "--", p, "deep", "100"]);
    assert_eq!(t.code, Some(0), "{}", t.what("deep"));
    let expected: Vec<i64> = (0..=100).flat_map(|v| [v, v]).collect();
    assert_eq!(returned(&t.trace, "deep"), expected, "{}", t.trace);
}

#[test]
fn coroutines_switching_stacks_with_calls_pending_on_each_pair_exactly() {
    let _x = exclusive();
    let probe = format!("{}:co_rec%return", program());
    // 10 rounds of two coroutines 100 deep: the first resumed returns while the second's
    // frames, on a stack above or below its own, are the latest pending.
    for place in ["higher", "lower"] {
        let trace = counted("system-exits-coro", &probe, &["--no-bpf"], &["coro", "10", "100", place]);
        assert_eq!((hits(&trace, &probe), returns(&trace, &probe)), (2020, 2020), "{place}\n{trace}");
        assert!(!trace.contains("not seen") && !trace.contains("without a return"), "{place}\n{trace}");
    }
}
