//! `dprobe trace --system-wide` with `$retval` or `--latency` on functions that leave by a
//! tail call (`return g(x)`, a `jmp` at -O2) into a function no probe watches: the function
//! returns where its callee does, with its callee's value, as the kernel's return probe would
//! see it. The callee is watched at its exits too (a hop), so recursion through the tail call
//! goes past the kernel's 64 nested return probes, and an exception through it meets no
//! trampoline (with the kernel's return probe the program dies in `std::terminate`).
mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use common::{hits, trace_to_file, Traced};

/// The kernel's event files are compared by other system tests: one at a time.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Each function that tail-calls, and its callee.
const TAIL_CALLS: [(&str, &str); 5] = [
    ("front", "back"),
    ("rec_front", "rec_back"),
    ("ping", "pong"),
    ("thr_front", "thr_back"),
    ("past_front", "past_back"),
];

/// `tail_hops MODE ...` (its source says what it does), checked to leave each function of
/// [`TAIL_CALLS`] by a `jmp` to its callee.
fn program() -> &'static str {
    static BUILT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tail_hops.cpp");
        let path = dprobe_test_fixtures::c_program_by("g++", src, "tail_hops", &["-O2"]);
        let path = std::fs::canonicalize(path).unwrap().to_string_lossy().into_owned();
        let o = Command::new("objdump").args(["-d", "--no-show-raw-insn", &path]).output().unwrap();
        assert!(o.status.success());
        let code = String::from_utf8(o.stdout).unwrap();
        let first = |function: &str| {
            let body = code.split_once(&format!("<{function}>:\n")).unwrap_or_else(|| panic!("no {function}")).1;
            body.lines().next().unwrap().split('\t').nth(1).unwrap().trim().to_owned()
        };
        assert_eq!(first("nothing"), "ret", "nothing's first instruction is its ret");
        for (function, callee) in TAIL_CALLS {
            let start = format!("<{function}>:\n");
            let body = code.split_once(&start).unwrap_or_else(|| panic!("no {function}")).1;
            let body = body.split("\n\n").next().unwrap();
            let jump = body.lines().any(|l| l.contains("\tjmp ") && l.ends_with(&format!("<{callee}>")));
            assert!(jump, "{function} tail-calls {callee} with a jmp:\n{body}");
        }
        Box::leak(path.into_boxed_str())
    })
}

/// What the program prints untraced, and the values its functions returned to `main` (each
/// printed line but `caught` and the total).
fn untraced(args: &[&str]) -> (String, Vec<i64>) {
    let o = Command::new(program()).args(args).output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let values =
        out.lines().filter(|l| *l != "caught" && !l.starts_with("total")).map(|l| l.parse().unwrap()).collect();
    (out, values)
}

/// `dprobe trace -a -v SPECS... -- tail_hops ARGS`, which must end as the program does
/// untraced.
fn traced(name: &str, specs: &[&str], args: &[&str]) -> Traced {
    let mut all = vec!["-a", "-v"];
    all.extend_from_slice(specs);
    all.push("--");
    all.push(program());
    all.extend_from_slice(args);
    let t = trace_to_file(name, &all);
    assert_eq!(t.code, Some(0), "{}", t.what(name));
    assert_eq!(t.stdout, untraced(args).0, "the program's own result\n{}", t.what(name));
    assert!(!t.trace.contains("records lost"), "{}", t.trace);
    t
}

/// The values of `function`'s return events, in order.
fn returned(trace: &str, function: &str) -> Vec<i64> {
    let marker = format!(" {function} returns ");
    trace.lines().filter_map(|l| l.split_once(&marker)).map(|(_, v)| v.trim().parse().unwrap()).collect()
}

/// The RETURNS column of `probe` in a summary table.
fn returns(summary: &str, probe: &str) -> u64 {
    let line = summary.lines().find(|l| l.split_whitespace().next() == Some(probe)).expect("a line");
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The calls `function`'s latency table counts, in its buckets (0 without a table).
fn timed(summary: &str, function: &str) -> u64 {
    let title = format!("@latency of {function} (ns):");
    let table = summary.lines().skip_while(|l| *l != title).skip(1).take_while(|l| !l.is_empty());
    let buckets = table.filter(|l| l.contains('|'));
    buckets.map(|l| l.split('|').next().unwrap().split_whitespace().last().unwrap().parse::<u64>().unwrap()).sum()
}

/// That `spec` is watched at its exits, its tail calls returning with `callee`.
fn watched_with(t: &Traced, spec: &str, callee: &str) {
    let said = format!("dprobe: `{spec}`: its returns are watched at its ");
    let line = t.stderr.lines().find(|l| l.starts_with(&said)).unwrap_or_else(|| panic!("{}", t.stderr));
    assert!(line.contains(&format!("its tail calls return with {callee}, watched at its exits too")), "{line}");
}

#[test]
fn a_tail_call_into_an_unwatched_function_returns_with_its_value_and_time() {
    let _x = exclusive();
    let p = program();
    // front(i) jumps to back(i + 1); main also calls back(i) itself, which returns no front.
    let args = ["tail", "100"];
    let spec = format!("{p}:front%return r=$retval:s32");
    let t = traced("tail-hops-values", &[&spec], &args);
    watched_with(&t, &spec, "back");
    assert_eq!(returned(&t.trace, "front"), untraced(&args).1, "{}", t.trace);
    let spec = format!("{p}:front");
    let t = traced("tail-hops-latency", &["--latency", &spec], &args);
    watched_with(&t, &spec, "back");
    assert_eq!((hits(&t.trace, &spec), returns(&t.trace, &spec), timed(&t.trace, "front")), (100, 100, 100));
}

#[test]
fn recursion_through_a_tail_call_far_deeper_than_the_kernels_64_returns_is_exact() {
    let _x = exclusive();
    let p = program();
    // rec_front(n) is `jmp rec_back`, which calls rec_front(n - 1): every call's value is its
    // depth, innermost first.
    let args = ["recurse", "2", "300"];
    let spec = format!("{p}:rec_front%return r=$retval:s32");
    let t = traced("tail-hops-recurse", &[&spec], &args);
    watched_with(&t, &spec, "rec_back");
    let values = returned(&t.trace, "rec_front");
    let expected: Vec<i64> = [(0..=300).collect::<Vec<i64>>(), (0..=300).collect()].concat();
    assert_eq!(values, expected, "{}", t.what("recurse"));
    assert_eq!(values.iter().filter(|v| **v == 300).count(), untraced(&args).1.len());
    let spec = format!("{p}:rec_front");
    let t = traced("tail-hops-recurse-latency", &["--latency", &spec], &["recurse", "5", "1000"]);
    let calls = 5 * 1001;
    assert_eq!((hits(&t.trace, &spec), returns(&t.trace, &spec), timed(&t.trace, "rec_front")), (calls, calls, calls));
    assert!(!t.trace.contains("not seen") && !t.trace.contains("without a return"), "{}", t.trace);
}

#[test]
fn mutual_tail_recursion_returns_every_call_at_once_with_the_last_value() {
    let _x = exclusive();
    let p = program();
    // ping(n): `jmp pong`; pong: `jmp ping` with n - 1; ping(0) returns 42. The whole chain
    // lies on one word of the stack, 201 calls of ping deep.
    let args = ["ping", "3", "200"];
    let spec = format!("{p}:ping%return r=$retval:s32");
    let t = traced("tail-hops-ping", &[&spec], &args);
    watched_with(&t, &spec, "pong");
    let values = returned(&t.trace, "ping");
    assert_eq!(values, vec![42; 3 * 201], "{}", t.what("ping"));
    assert_eq!(untraced(&args).1, [42; 3]);
    let spec = format!("{p}:ping");
    let t = traced("tail-hops-ping-latency", &["--latency", &spec], &args);
    assert_eq!((hits(&t.trace, &spec), returns(&t.trace, &spec), timed(&t.trace, "ping")), (603, 603, 603));
}

#[test]
fn an_exception_through_the_tail_call_leaves_the_program_as_untraced() {
    let _x = exclusive();
    let p = program();
    // thr_front(i) is `jmp thr_back`, which throws every third call: with the kernel's return
    // probe on thr_front the unwinder meets its trampoline, and the program is aborted.
    let args = ["throw", "30"];
    let spec = format!("{p}:thr_front%return r=$retval:s32");
    let t = traced("tail-hops-throw", &[&spec], &args);
    watched_with(&t, &spec, "thr_back");
    assert_eq!(returned(&t.trace, "thr_front"), untraced(&args).1, "{}", t.trace);
    let unwound = format!("{p}:thr_front%return: 10 returns not seen: longjmp, an exception");
    assert!(t.trace.contains(&unwound), "{}", t.trace);
    let spec = format!("{p}:thr_front");
    let t = traced("tail-hops-throw-latency", &["--latency", &spec], &args);
    assert_eq!((hits(&t.trace, &spec), returns(&t.trace, &spec), timed(&t.trace, "thr_front")), (30, 20, 20));
}

#[test]
fn a_tail_call_into_a_function_whose_exits_are_not_all_known_keeps_the_return_address() {
    let _x = exclusive();
    let p = program();
    // past_back leaves through a computed goto: past_front keeps the kernel's return probe,
    // which sees past_back's return as its own.
    let args = ["past", "20"];
    let spec = format!("{p}:past_front%return r=$retval:s32");
    let t = traced("tail-hops-past", &[&spec], &args);
    let why = format!(
        "dprobe: `{spec}`: its returns are watched through the return address (a uretprobe): $retval: its tail \
         call at "
    );
    assert!(t.stderr.contains(&why), "{}", t.stderr);
    assert!(t.stderr.contains("whose returns cannot be watched at its exits: its exits are not all known"));
    assert_eq!(returned(&t.trace, "past_front"), untraced(&args).1, "{}", t.trace);
}

#[test]
fn a_function_whose_first_instruction_is_its_exit_returns_every_call() {
    let _x = exclusive();
    let p = program();
    // nothing is one `ret`, and rec_front one `jmp`: their entry and exit are one instruction,
    // whose two uprobes the kernel writes in either order. The entry's record stands for both.
    for (function, args) in [("nothing", &["empty", "500"][..]), ("rec_front", &["recurse", "500", "0"])] {
        let (spec, calls) = (format!("{p}:{function}"), 500);
        let t = traced("tail-hops-first", &["--latency", &spec], args);
        assert!(t.stderr.contains(&format!("dprobe: `{spec}`: its returns are watched at its ")), "{}", t.stderr);
        let figures = (hits(&t.trace, &spec), returns(&t.trace, &spec), timed(&t.trace, function));
        assert_eq!(figures, (calls, calls, calls), "{}", t.what(function));
        assert!(!t.trace.contains("not seen") && !t.trace.contains("without a return"), "{}", t.trace);
    }
}
