//! Static probes (USDT, `<sys/sdt.h>`) with the ptrace and agent engines: `usdt.c` at -O0
//! (arguments on the stack) and -O2 (in registers) prints what each round passes to its
//! probes and the semaphore it saw; the trace must show the same values, as many times, and
//! the semaphore must be set exactly while the program is traced.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{dprobe, dprobe_command, hits, out_file, trace_to_file, usdt};

/// One round as the program printed it.
#[derive(Debug, Clone, PartialEq)]
struct Round {
    id: i64,
    name: String,
    delta: i64,
    sem: u32,
}

fn round(line: &str) -> Round {
    let field = |key: &str| {
        line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {line:?}"))
    };
    Round {
        id: field("id=").parse().unwrap(),
        name: field("name=").to_owned(),
        delta: field("delta=").parse().unwrap(),
        sem: field("sem=").parse().unwrap(),
    }
}

/// What the events of `label` carried, in order (inside `call label(...)`).
fn events(trace: &str, label: &str) -> Vec<String> {
    let call = format!(" call {label}(");
    trace.lines().filter_map(|l| Some(l.split_once(&call)?.1.strip_suffix(')')?.to_owned())).collect()
}

fn specs(prog: &str) -> [String; 3] {
    [
        format!("usdt:{prog}:app:req id=$arg1 name=+0($arg2):string delta=$arg3"),
        format!("usdt:{prog}:tick a=$arg1 b=$arg2"),
        format!("usdt:{prog}:app:konst k=$arg1"),
    ]
}

/// A copy of the -O2 program with every symbol stripped (`strip`): its notes stay, but no
/// function symbol covers a probe's site any more.
fn stripped() -> String {
    // Made once, under a lock: a copy put again over one that another test runs would be
    // another file, which the probes that test resolved do not name.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let copy = format!("{}-stripped", usdt("-O2"));
    if !std::path::Path::new(&copy).exists() {
        let partial = format!("{copy}.tmp");
        std::fs::copy(usdt("-O2"), &partial).unwrap();
        assert!(Command::new("strip").arg(&partial).status().unwrap().success());
        std::fs::rename(&partial, &copy).unwrap();
    }
    copy
}

#[test]
fn every_hit_carries_the_values_the_program_prints_with_its_semaphore_set() {
    let stripped = stripped();
    for engine in ["ptrace", "agent"] {
        for opt in ["-O0", "-O2", "stripped"] {
            let prog = if opt == "stripped" { stripped.as_str() } else { usdt(opt) };
            let [req, tick, konst] = specs(prog);
            let t = trace_to_file(
                &format!("usdt-{engine}{opt}"),
                &["--engine", engine, &req, &tick, &konst, "--", prog, "run", "5"],
            );
            let (trace, what) = (&t.trace, t.what(&format!("{engine} {opt}")));
            assert_eq!(t.code, Some(0), "{what}");
            let rounds: Vec<Round> = t.stdout.lines().map(round).collect();
            assert_eq!(rounds.len(), 5, "{what}");
            assert!(rounds.iter().all(|r| r.sem == 1), "traced, the semaphore is set: {rounds:?}");
            let expected: Vec<String> =
                rounds.iter().map(|r| format!("id={}, name=\"{}\", delta={}", r.id, r.name, r.delta)).collect();
            assert_eq!(events(trace, "app:req"), expected, "{what}");
            let ticks: Vec<String> = (1..=5).map(|i| format!("a={}, b={}", -i, i + 200)).collect();
            assert_eq!(events(trace, "app:tick"), ticks, "{what}");
            assert_eq!(events(trace, "app:konst"), vec!["k=5"; 5], "{what}");
            for name in ["req", "tick", "konst"] {
                assert_eq!(hits(trace, &format!("usdt:{prog}:app:{name}")), 5, "{what}");
            }
        }
    }
}

#[test]
fn attached_the_semaphore_is_raised_while_traced_and_given_back_after() {
    for engine in ["ptrace", "agent"] {
        let prog = usdt("-O2");
        let mut child = Command::new(prog).arg("serve").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let mut next = || {
            writeln!(input, "go").unwrap();
            let mut line = String::new();
            output.read_line(&mut line).unwrap();
            round(&line)
        };
        assert_eq!(next().sem, 0, "untraced, the semaphore is 0");
        let listed = dprobe(&["list", "-p", &child.id().to_string(), "usdt:app:req"]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.starts_with("usdt:usdt-O2:app:req at "), "{listed}");
        let out = out_file(&format!("usdt-attach-{engine}"));
        let pid = child.id().to_string();
        let spec = format!("usdt:{prog}:app:req id=$arg1");
        let mut tracer = dprobe_command()
            .args(["trace", "--engine", engine, "-o", out.to_str().unwrap(), "-p", &pid, &spec])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Rounds until one sees the semaphore set: from then on the probe is in place.
        let mut traced = Vec::new();
        for _ in 0..100_000 {
            let r = next();
            if r.sem > 0 {
                traced.push(r);
                break;
            }
            assert!(tracer.try_wait().unwrap().is_none(), "dprobe ended early");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(traced.len(), 1, "{engine}: the semaphore was never set");
        for _ in 0..3 {
            traced.push(next());
        }
        assert!(traced.iter().all(|r| r.sem == 1), "{engine}: {traced:?}");
        // SAFETY: a signal to the dprobe this test started.
        assert_eq!(unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) }, 0);
        let status = tracer.wait().unwrap();
        let trace = std::fs::read_to_string(&out).unwrap();
        assert_eq!(status.code(), Some(0), "{engine}\n{trace}");
        assert_eq!(next().sem, 0, "{engine}: after detaching, the semaphore is 0 again");
        let ids: Vec<String> = traced.iter().map(|r| format!("id={}", r.id)).collect();
        assert_eq!(events(&trace, "app:req"), ids, "{engine}\n{trace}");
        assert_eq!(hits(&trace, &format!("usdt:{prog}:app:req")), 4, "{engine}\n{trace}");
        drop(input);
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn list_shows_each_static_probe_with_its_arguments_and_semaphore() {
    let prog = usdt("-O0");
    let o = dprobe(&["list", prog, "usdt:*"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("usdt:usdt-O0:app:indexed at 0x") && lines[0].ends_with(" $arg1=-4@%eax:s32"),
        "{text}"
    );
    assert!(lines[1].starts_with("usdt:usdt-O0:app:konst at 0x") && lines[1].ends_with(" $arg1=-4@$5:s32"), "{text}");
    assert!(lines[2].contains(":app:req at 0x") && lines[2].contains("(semaphore at 0x"), "{text}");
    assert!(lines[2].ends_with("$arg1=-4@-4(%rbp):s32 $arg2=8@%rax:u64 $arg3=-8@-16(%rbp):s64"), "{text}");
    assert!(lines[3].contains(":app:tick at 0x") && !lines[3].contains("semaphore"), "{text}");
    let o = dprobe(&["list", usdt("-O2"), "usdt:indexed"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let refused = "uses an index register, which dprobe's fetch arguments cannot express)\n";
    assert!(text.contains(" $arg1=-4@(%r") && text.ends_with(refused), "{text}");
    let o = dprobe(&["list", prog, "usdt:app:t*"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
}
