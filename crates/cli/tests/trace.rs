//! `dprobe trace` against real programs: `cat`, `ls -R`, threads, fork and exec, a program
//! with its own `SIGTRAP` handler, `dlopen`, exit statuses, a killed tracee. What the two
//! engines that trace one program (ptrace and the agent) both do is one test run with each.
mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{hits, operators, out_file, plugin, target, trace};

/// The engines that trace one program, started or attached.
const ENGINES: [&str; 2] = ["ptrace", "agent"];

/// `dprobe trace --engine ENGINE -o FILE ARGS`: (exit code, what it wrote to FILE).
fn trace_with(engine: &str, name: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--engine", engine];
    all.extend_from_slice(args);
    trace(&format!("{engine}-{name}"), &all)
}

#[test]
fn every_open_that_cat_makes_with_path_and_flags() {
    let file = out_file("hello.txt");
    std::fs::write(&file, "hello\n").unwrap();
    let path = file.to_str().unwrap();
    for engine in ENGINES {
        let spec = "libc:open path=+0($arg1):string flags=$arg2:x32";
        let (code, out) = trace_with(engine, "cat-opens", &[spec, "--", "cat", path]);
        assert_eq!(code, Some(0), "{engine}: cat's status\n{out}");
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("process 'cat'")).collect();
        assert_eq!(lines.len(), 1, "{engine}\n{out}");
        assert!(lines[0].ends_with(&format!(" call open(path=\"{path}\", flags=0x0)")), "{engine}\n{out}");
        assert!(out.contains("exited with status 0"), "{engine}\n{out}");
    }
}

#[test]
fn failed_opens_with_the_errno_name_and_the_exit_status_of_cat() {
    for engine in ENGINES {
        let probe = "libc:open%return ret=$retval:s32 err=$errno";
        let args = [probe, "--filter", "ret < 0", "--", "cat", "/nonexistent", "/etc/hostname"];
        let (code, out) = trace_with(engine, "cat-fails", &args);
        assert_eq!(code, Some(1), "{engine}: cat failed on one file\n{out}");
        let failed: Vec<&str> = out.lines().filter(|l| l.contains(" returns ")).collect();
        assert_eq!(failed.len(), 1, "{engine}: only the failed open passes the filter\n{out}");
        assert!(failed[0].ends_with(" open returns -1 (ENOENT)"), "{engine}\n{out}");
        assert_eq!(hits(&out, "libc:open%return"), 2, "{engine}\n{out}");
    }
}

#[test]
fn ls_recursive_opens_each_directory_once() {
    let root = out_file("tree");
    let _ = std::fs::remove_dir_all(&root);
    let dirs = ["a", "a/b", "a/b/c", "d", "e"];
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join("f"), "x").unwrap();
    }
    let r = root.to_str().unwrap();
    let expected: BTreeSet<String> =
        std::iter::once(r.to_owned()).chain(dirs.iter().map(|d| format!("{r}/{d}"))).collect();
    for engine in ENGINES {
        let (code, out) = trace_with(engine, "ls", &["libc:opendir path=+0($arg1):string", "--", "ls", "-R", r]);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let opened: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.split("call opendir(path=\"").nth(1))
            .map(|p| p.trim_end_matches("\")").to_owned())
            .collect();
        assert_eq!(opened, expected, "{engine}");
        assert_eq!(hits(&out, "libc:opendir"), 6, "{engine}");
    }
}

#[test]
fn eight_threads_counted_exactly() {
    for engine in ENGINES {
        let args = ["--count", "probed", "probed_push", "--", target(), "threads", "8", "20000"];
        let (code, out) = trace_with(engine, "threads", &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        assert_eq!((hits(&out, "probed"), hits(&out, "probed_push")), (160_000, 160_000), "{engine}\n{out}");
        assert!(!out.contains("process '"), "{engine}: --count prints no events");
    }
}

#[test]
fn a_library_loaded_later_is_probed_when_it_appears() {
    for engine in ENGINES {
        let args = ["--count", "libdprobe_plugin:plugin_twice", "--", target(), "dlopen", plugin(), "1000"];
        let (code, out) = trace_with(engine, "dlopen", &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        assert_eq!(hits(&out, "libdprobe_plugin:plugin_twice"), 1000, "{engine}\n{out}");
    }
}

#[test]
fn json_events_are_one_object_per_line() {
    for engine in ENGINES {
        let args =
            ["--json", "recurse%return depth=$arg1:u8", "--filter", "depth >= 2", "--", target(), "recurse", "3"];
        let (code, out) = trace_with(engine, "json", &args);
        assert_eq!(code, Some(0), "{engine}\n{out}");
        let events: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
        assert_eq!(events.len(), 2, "{engine}\n{out}");
        let first = "\"function\":\"recurse\",\"kind\":\"return\",\"args\":{\"ret\":2,\"depth\":2},\"retval\":2";
        assert!(events[0].contains(first), "{engine}: {}", events[0]);
        assert!(events[1].contains("\"args\":{\"ret\":3,\"depth\":3}"), "{engine}: {}", events[1]);
    }
}

/// `--json -o FILE`: FILE is JSON lines and nothing else (for `jq` and the like); the summary,
/// for people, goes to standard error.
#[test]
fn a_json_output_file_holds_only_json_lines_and_the_summary_goes_to_standard_error() {
    for engine in ENGINES {
        let args = ["--engine", engine, "--json", "recurse", "--", target(), "recurse", "3"];
        let t = common::trace_to_file(&format!("json-only-{engine}"), &args);
        assert_eq!(t.code, Some(0), "{}", t.what(engine));
        let objects =
            t.trace.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).ok().filter(|v| v.is_object()));
        // recurse(3) down to recurse(0): four calls.
        assert_eq!(objects.clone().count(), 4, "{}", t.what(engine));
        assert!(objects.clone().all(|o| o.is_some()), "{engine}: a line that is no JSON object\n{}", t.trace);
        assert_eq!(hits(&t.stderr, "recurse"), 4, "{}", t.what(engine));
        assert!(t.stderr.contains("exited with status 0"), "{}", t.what(engine));
    }
}

#[test]
fn killing_the_tracee_ends_dprobe_with_its_summary() {
    for engine in ENGINES {
        let out = out_file(&format!("{engine}-killed"));
        let mut dprobe = Command::new(env!("CARGO_BIN_EXE_dprobe"))
            .args(["trace", "--engine", engine, "-o", out.to_str().unwrap(), "probed", "--", target(), "until-usr2"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it once it is traced and its calls seen, however long that takes; the deadline
        // only keeps a broken run from hanging.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&out).unwrap_or_default().contains(" call probed(") {
            assert!(std::time::Instant::now() < deadline, "{engine}: no call came");
            std::thread::sleep(Duration::from_millis(10));
        }
        let tracee = common::started_command(dprobe.id()).expect("the tracee");
        // SAFETY: kills the program dprobe started.
        assert_eq!(unsafe { libc::kill(tracee, libc::SIGKILL) }, 0);
        let status = dprobe.wait().unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(status.code(), Some(128 + 9), "{engine}\n{text}");
        assert!(text.contains(&format!("process {tracee} was killed by SIGKILL")), "{engine}\n{text}");
        assert!(hits(&text, "probed") > 0, "{engine}\n{text}");
    }
}

#[test]
fn a_cpp_operator_plus_by_name_by_path_and_by_address() {
    let prog = operators();
    let f = dprobe_sym::Symbols::load_file(prog).unwrap().find("operator+").unwrap().clone();
    let by_path = format!("{prog}:operator+%return");
    let by_address = format!("operators:{:#x}", f.start.0);
    for engine in ENGINES {
        let args = ["--engine", engine, "--count", "operator+", &by_path, &by_address, "--", prog, "1000"];
        let (code, out) = trace(&format!("operator-plus-{engine}"), &args);
        assert_eq!(code, Some(0), "{engine}: the program added correctly\n{out}");
        assert_eq!(hits(&out, "operator+"), 1000, "{engine}: {out}");
        assert_eq!(hits(&out, &by_path), 1000, "{engine}: {out}");
        assert_eq!(hits(&out, &by_address), 1000, "{engine}: {out}");
    }
}

#[test]
fn a_relative_path_is_the_file_in_the_current_directory() {
    let dir = std::path::Path::new(target()).parent().unwrap();
    let out = out_file("relative");
    let o = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .current_dir(dir)
        .args(["trace", "--count", "-o", out.to_str().unwrap(), "./target:probed", "--", "./target", "loop", "10"])
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(o.status.code(), Some(0), "{}\n{summary}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(hits(&summary, "./target:probed"), 10, "{summary}");
}

#[test]
fn the_exit_status_is_the_traced_commands() {
    let (code, out) = trace("exit7", &["probed", "--", target(), "exit", "7"]);
    assert_eq!(code, Some(7), "{out}");
    assert!(out.contains("exited with status 7"));
}

#[test]
fn the_command_starts_with_default_signal_dispositions() {
    // dprobe itself ignores SIGPIPE (as Rust programs do); the command must not inherit that.
    let (code, out) = trace("dispositions", &["--count", "probed", "--", target(), "dispositions"]);
    assert_eq!((code, hits(&out, "probed")), (Some(0), 1), "{out}");
}

#[test]
fn the_command_is_told_the_name_it_was_given_not_the_path_found() {
    // As a shell starts it: `sh` is found on PATH, yet its `$0` (argv[0]) stays `sh`.
    for engine in ENGINES {
        for (command, argv0) in [("sh", "sh\n"), ("/bin/sh", "/bin/sh\n")] {
            let args = ["--engine", engine, "--count", "libc:getenv", "--", command, "-c", "echo $0"];
            let t = common::trace_to_file(&format!("argv0-{engine}"), &args);
            assert_eq!((t.code, t.stdout.as_str()), (Some(0), argv0), "{}", t.what(engine));
        }
    }
}

#[test]
fn fork_exec_and_the_programs_own_sigtrap_handler() {
    for engine in ENGINES {
        let (code, out) = trace_with(engine, "fork", &["--no-follow", "--count", "probed", "--", target(), "fork"]);
        let what = format!("{engine}: the parent's call; the child runs untraced\n{out}");
        assert_eq!((code, hits(&out, "probed")), (Some(0), 1), "{what}");
        let (code, out) = trace_with(engine, "fork-followed", &["--count", "probed", "--", target(), "fork"]);
        let what = format!("{engine}: the parent's call and the child's, followed by default\n{out}");
        assert_eq!((code, hits(&out, "probed")), (Some(0), 2), "{what}");
        let (code, out) = trace_with(engine, "signals", &["--count", "probed", "--", target(), "signals"]);
        assert_eq!((code, hits(&out, "probed")), (Some(0), 3), "{engine}: its own int3s reached its handler\n{out}");
    }
}

#[test]
fn a_tail_call_pair_with_return_probes_counts_each_return_once() {
    // tail_outer ends in `jmp tail_inner`: tail_inner's return is both functions'.
    for engine in ENGINES {
        let probes = ["tail_outer%return", "tail_inner%return"];
        let mut args = vec!["--count"];
        args.extend(probes);
        args.extend(["--", target(), "tailcall", "1000"]);
        let (code, out) = trace_with(engine, "tailcall", &args);
        assert_eq!(code, Some(0), "{engine}: the program checks its sum\n{out}");
        for p in probes {
            assert_eq!(hits(&out, p), 1000, "{engine}: {p}\n{out}");
            let line = out.lines().find(|l| l.split_whitespace().next() == Some(p)).unwrap();
            assert_eq!(line.split_whitespace().nth(2), Some("1000"), "{engine}: {p} returns\n{out}");
        }
        // -v says how the returns are watched: at each function's one exit.
        let out = out_file(&format!("{engine}-tailcall-v"));
        let mut args = vec!["trace", "-v", "--engine", engine, "-o", out.to_str().unwrap(), "--count"];
        args.extend(probes);
        args.extend(["--", target(), "tailcall", "10"]);
        let said = String::from_utf8(common::dprobe(&args).stderr).unwrap();
        for p in probes {
            assert!(said.contains(&format!("`{p}`: returns watched at 1 exit site\n")), "{engine}\n{said}");
        }
    }
}

#[test]
fn return_values_histograms_and_latency() {
    let (code, out) = trace("hist", &["--hist", "x", "probed x=$arg1:s64", "--", target(), "loop", "1000"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("@x of probed:"), "{out}");
    let bucket = |label: &str| -> u64 {
        let l = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{label} in\n{out}"));
        l[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    // x = 0..999: 1 zero, 1 one, then 2^k values in [2^k, 2^(k+1)), the last bucket cut at 999.
    assert_eq!((bucket("[0]"), bucket("[1]"), bucket("[2, 4)"), bucket("[256, 512)")), (1, 1, 2, 256));
    assert_eq!(bucket("[512, 1K)"), 488);

    let (code, out) = trace("latency", &["--latency", "recurse", "--", target(), "recurse", "5"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("@latency of recurse (ns):"), "{out}");
    let line = out.lines().find(|l| l.starts_with("recurse")).unwrap();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>()[1..3], ["6", "6"], "6 calls, 6 returns timed\n{out}");
}

#[test]
fn an_output_that_cannot_be_written_ends_the_trace_with_an_error() {
    for engine in ENGINES {
        for mode in [&[][..], &["--count"][..]] {
            let mut args = vec!["trace", "--engine", engine, "-o", "/dev/full"];
            args.extend_from_slice(mode);
            args.extend_from_slice(&["probed", "--", target(), "loop", "1000"]);
            let o = common::dprobe(&args);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{engine} {mode:?}: {stderr}");
            let said = "dprobe: cannot write to /dev/full: No space left on device";
            assert!(stderr.contains(said), "{engine} {mode:?}: {stderr}");
        }
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_trace_quietly() {
    use std::io::BufRead;
    let mut d = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "-o", "/dev/stdout", "probed", "--", target(), "loop", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(d.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains(" call probed("), "{first}");
    // The reader is gone (its end of the pipe closed when it was dropped).
    let o = d.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("Broken pipe") && !stderr.contains("dprobe:"), "{stderr}");
}

#[test]
fn json_events_name_the_strings_cut_at_the_length_read() {
    let long = format!("/nonexistent-{}", "x".repeat(400));
    let spec = "libc:open path=+0($arg1):string";
    let (code, out) = trace("json-truncated", &["--json", spec, "--", "cat", &long, "/etc/hostname"]);
    assert_eq!(code, Some(1), "cat fails on the long path\n{out}");
    let events: Vec<serde_json::Value> =
        out.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let path = |e: &serde_json::Value| e["args"]["path"].as_str().unwrap_or_default().to_owned();
    let cut = events.iter().find(|e| path(e).starts_with("/nonexistent-")).expect("the long path's event");
    assert!(path(cut).len() < long.len(), "{cut}");
    assert_eq!(cut["truncated"], serde_json::json!(["path"]), "{cut}");
    let whole = events.iter().find(|e| path(e) == "/etc/hostname").expect("the short path's event");
    assert!(whole.get("truncated").is_none(), "{whole}");
}
