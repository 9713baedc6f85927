//! Every bad spec, filter or option gets its own message, naming the wrong part and what was
//! expected; never a panic, exit status 2.
mod common;

use common::{dprobe, handlers, line_of, lines_program, out_file, target, usdt, vars_program};

#[test]
fn each_bad_input_gets_its_specific_message() {
    let t = target();
    let deep = format!("probed x={}$arg1{}", "+0(".repeat(17), ")".repeat(17));
    let cases: &[(&[&str], &str)] = &[
        (&["", "--", t], "empty probe spec"),
        (&[&deep, "--", t], "is nested too deeply"),
        (&["libc:", "--", t], "bad probe spec: nothing after `libc:`"),
        (
            &["probed+zz", "--", t],
            "bad probe spec: `zz` is not an offset\n  probed+zz\n         ^^ expected a byte offset",
        ),
        (&["probed+4%return", "--", t], "a return probe cannot have an offset"),
        (&["probed%ret", "--", t], "unknown suffix `%ret`"),
        (&["probed x=%zz", "--", t], "unknown register `%zz`\n  probed x=%zz\n           ^^^ expected a register"),
        (&["probed x=$foo", "--", t], "unknown variable `$foo`"),
        (&["probed x=$arg0", "--", t], "`$arg0` is out of range"),
        (&["probed x=$retval", "--", t], "$retval is only known at a function's return"),
        (&["probed x=+4($arg1", "--", t], "bad dereference `+4($arg1`"),
        (&["probed x=@zz", "--", t], "`@zz` is not an address"),
        (&["probed x=$arg1:q32", "--", t], "unknown type `q32`"),
        (&["probed 9x=$arg1", "--", t], "`9x` is not a valid argument name"),
        (&["probed x=$arg1 x=$arg2", "--", t], "argument name `x` is used twice"),
        (&["--engine", "ptrace", "kernel:do_sys_open", "--", t], "need the kernel engine, not ptrace"),
        (&["no_such_fn", "--", t], "`no_such_fn`: symbol `no_such_fn` not found"),
        (&["probed+4096", "--", t], "offset 0x1000 is past the end of `probed`"),
        (&["probed+1", "--", t], "is not on an instruction boundary"),
        (&["./no/such/program:main", "--", t], "`./no/such/program`: no such file"),
        (&["puts@plt", "--", t], "`puts@plt` is a PLT stub, which dprobe does not probe: probe `puts` itself"),
        (&["--filter", "nosuch == 1", "probed x=$arg1", "--", t], "bad filter: the filter names `nosuch`"),
        (&["--filter", "x == ", "probed x=$arg1", "--", t], "bad filter:"),
        (&["--duration", "abc", "probed", "--", t], "`abc` is not a duration"),
        (&["--duration", "5y", "probed", "--", t], "unknown unit `y`"),
        (&["-d", "18446744073709551615s", "probed", "--", t], "is too long (at most 100 years)"),
        (&["-d", "9300000000000000000s", "probed", "--", t], "is too long (at most 100 years)"),
        (&["-f", &"(".repeat(60_000), "probed x=$arg1", "--", t], "the filter is nested too deeply"),
        (&["-f", &"!".repeat(100_000), "probed x=$arg1", "--", t], "the filter is nested too deeply"),
        (&["-p", "1", "probed", "--", t], "'--pid <PID>' cannot be used with"),
        (&["probed"], "nothing to trace: give `-p PID`, a command after `--`, or --system-wide"),
        (&["--hist", "y", "probed x=$arg1", "--", t], "--hist y: no probe fetches a value named `y` (fetched: x)"),
        (&["--latency", "probed+4", "--", t], "`probed+4` is not at a function's entry"),
        (&["-p", "999999999", "probed"], "cannot trace process 999999999: no such process"),
        (&["-p", "2", "probed"], "cannot trace process 2: it is a kernel thread"),
        (&["probed", "--", "/no/such/program"], "cannot start `/no/such/program`: no such file"),
        (&["probed", "--", "no-such-program-anywhere"], "cannot start `no-such-program-anywhere`: not found in PATH"),
        (&["--json", "--count", "probed", "--", t], "'--json' cannot be used with '--count'"),
        (&["-a", "--buffer-size", "3K", "probed"], "a perf buffer holds a power of two of 4 KiB pages"),
        (&["-a", "--buffer-size", "lots", "probed"], "`lots` is not a size"),
        (&["--buffer-size", "1M", "probed", "--", t], "--buffer-size sets the kernel engine's perf buffers"),
    ];
    assert!(cases.len() >= 20);
    common::assert_refused(cases);
    // The same with the agent engine, but for the options that are another engine's.
    let others = ["-a", "--engine", "--buffer-size", "kernel:do_sys_open"];
    let agent: Vec<(Vec<&str>, &str)> = cases
        .iter()
        .filter(|(args, _)| !args.iter().any(|a| others.contains(a)))
        .map(|(args, message)| (["--engine", "agent"].iter().chain(args.iter()).copied().collect(), *message))
        .collect();
    let agent: Vec<(&[&str], &str)> = agent.iter().map(|(a, m)| (a.as_slice(), *m)).collect();
    assert!(agent.len() >= 20);
    common::assert_refused(&agent);
}

/// Every name that cannot be found is an error before anything runs, naming the part of the
/// spec that is wrong: binaries, prefixes, functions, globs, static probes and their
/// arguments, source lines and variables.
#[test]
fn every_name_that_cannot_be_found_is_an_error_that_says_which() {
    let t = target();
    let (prog, optimized, h) = (usdt("-O0"), usdt("-O2"), handlers());
    let (lines, vars_o0, vars_o2) =
        (lines_program("gcc", "-O2"), vars_program("gcc", "-O0", &[]), vars_program("gcc", "-O2", &[]));
    let code = line_of("long v = i * 2");
    let own = |s: &str| {
        s.replace("PROG", prog)
            .replace("OPT", optimized)
            .replace("HANDLERS", h)
            .replace("TARGET", t)
            .replace("LINES", lines)
            .replace("VARS0", &vars_o0)
            .replace("VARS2", &vars_o2)
            .replace("BLANK", &(code + 1).to_string())
            .replace("ABOVE", &code.to_string())
            .replace("BELOW", &(code + 3).to_string())
    };
    let cases: Vec<(Vec<String>, String)> = [
        ("./no/such/dir/prog:work", "`./no/such/dir/prog:work`: `./no/such/dir/prog`: no such file"),
        ("/no/such/prog:work", "`/no/such/prog`: no such file"),
        ("/tmp:work", "`/tmp`: no such file (it is not a file)"),
        ("/etc/hostname:work", "`/etc/hostname` is not an ELF file (a program or a shared library)"),
        ("TARGET:no_such_function", "`TARGET:no_such_function`: no function `no_such_function` in `TARGET`"),
        ("kernal:schedule", "`kernal:schedule`: unknown prefix `kernal:` (did you mean `kernel:`?)"),
        ("tracepiont:sched:sched_switch", "unknown prefix `tracepiont:` (did you mean `tracepoint:`?)"),
        ("usd:PROG:app:req", "unknown prefix `usd:` (did you mean `usdt:`?)"),
        (
            "usdt:PROG:app:nosuch",
            "no static probe `app:nosuch` in `PROG`; it has: app:indexed, app:konst, app:req, app:tick",
        ),
        ("usdt:PROG:web:req", "no static probe `web:req` in `PROG`; it has: app:indexed"),
        ("usdt:PROG:nosuch", "no static probe `nosuch` in `PROG`; it has: app:indexed"),
        ("usdt:TARGET:app:req", "`TARGET` has no static probes (no .note.stapsdt section)"),
        ("usdt:./no/such/prog:app:req", "`./no/such/prog`: no such file"),
        ("usdt:/etc/hostname:app:req", "`/etc/hostname` is not an ELF file"),
        ("usdt:libnosuchlibrary:app:req", "no library `libnosuchlibrary` is loaded or in the library directories"),
        (
            "usdt:PROG:app:req x=$arg4",
            "`$arg4`: the static probe app:req has 3 arguments (-4@-4(%rbp) 8@%rax -8@-16(%rbp))",
        ),
        ("usdt:PROG:app:konst x=+0($arg2):string", "`$arg2`: the static probe app:konst has 1 argument (-4@$5)"),
        ("usdt:OPT:app:indexed x=$arg1", "`$arg1` of app:indexed is `-4@(%r"),
        ("usdt:PROG:app:req%return", "a static probe (usdt:) takes no offset or %return"),
        ("usdt:PROG", "bad probe spec: `usdt:PROG` is not a static probe"),
        ("HANDLERS:nomatch_*", "`HANDLERS:nomatch_*`: no function matches `nomatch_*` in `HANDLERS`"),
        ("nomatch_*", "`nomatch_*`: no function matches `nomatch_*` in "),
        ("libnosuchlibrary:str*", "cannot list the functions of `libnosuchlibrary`"),
        ("HANDLERS:handle_raw*", "none of the 1 functions that match `handle_raw*` can be probed"),
        (
            "LINES:lines.c:BLANK",
            "lines.c:BLANK has no code; the nearest lines with code are ABOVE (above) and BELOW (below)",
        ),
        ("LINES:nothere.c:3", "no source file `nothere.c` in the debug information"),
        ("VARS2:mix acc", "`acc` is optimized out here; available at lines"),
        ("VARS0:parse_request nosuch", "no variable `nosuch` in parse_request here; known: req, len, name"),
        ("VARS0:parse_request len->x", "`len` is an int, which has no members"),
        ("VARS0:parse_request len[1]", "`len` is an int, which cannot be indexed"),
        ("VARS0:parse_request req->nope", "struct request has no member `nope`; its members: id, hdr, method"),
    ]
    .iter()
    .map(|(spec, message)| (vec![own(spec), "--".into(), own("HANDLERS")], own(message)))
    .collect();
    let mut cases = cases;
    cases.push((vec!["-a".into(), "handle_*".into()], "a glob without BINARY: matches the traced program's".into()));
    cases.push((
        vec!["--max-probes".into(), "10".into(), "libc:*".into(), "--".into(), t.into()],
        "`libc:*`: `*` matches ".into(),
    ));
    assert!(cases.len() >= 15);
    let borrowed: Vec<(Vec<&str>, &str)> =
        cases.iter().map(|(a, m)| (a.iter().map(String::as_str).collect(), m.as_str())).collect();
    let table: Vec<(&[&str], &str)> = borrowed.iter().map(|(a, m)| (a.as_slice(), *m)).collect();
    common::assert_refused(&table);
}

#[test]
fn a_refused_probe_on_a_spawned_command_leaves_nothing_running() {
    // A copy of its own, so that the fixture started by other tests at the same time is not
    // counted below.
    let own = out_file("refused-target");
    std::fs::copy(target(), &own).unwrap();
    let o = dprobe(&["trace", "probed", "probed+1", "--", own.to_str().unwrap(), "until-usr2"]);
    assert_eq!(o.status.code(), Some(2));
    // The command was killed with the error: no process of it is left.
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path().join("exe")).ok())
        .filter(|exe| *exe == own)
        .count();
    assert_eq!(left, 0);
}

#[test]
fn list_shows_functions_and_says_why_a_place_cannot_be_probed() {
    let o = dprobe(&["list", target(), "probed*"]);
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    let names: Vec<&str> = text.lines().collect();
    assert_eq!(names, ["target:probed", "target:probed_push"], "{text}");

    let o = dprobe(&["list", target(), "probed_push+0"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("`push %rbp` can be probed: emulated at the hit"), "{text}");
    assert!(text.contains("; in process, jump-optimized (no trap)"), "{text}");

    let o = dprobe(&["list", target(), "probed_push+2"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot be probed:") && text.contains("not on an instruction boundary"), "{text}");

    let o = dprobe(&["list", target(), "nothing_like_this*"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no function matches `nothing_like_this*`"));

    // A library by name where a FILE goes, as in a probe spec, and one that is not there.
    for args in [["list", "libc", "_setjm*"], ["list", "libc:_setjm*", ""]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let o = dprobe(&args);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {text}");
        assert!(text.lines().any(|l| l.starts_with("libc.so.6:_setjmp")), "{args:?}: {text}");
    }
    let o = dprobe(&["list", "no_such_library_here", "_*"]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("no file `no_such_library_here`, and no library `no_such_library_here`"), "{stderr}");
}

#[test]
fn a_crafted_elf_with_a_huge_symbol_is_listed_within_its_section() {
    let path = common::out_file("crafted.o");
    dprobe_test_fixtures::crafted_elf(&path);
    let file = path.to_str().unwrap();
    let o = dprobe(&["list", file, "huge+0"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("(crafted.o:huge+0x0): `push %rbp` can be probed"), "{text}");
    let o = dprobe(&["list", file, "huge+0x20"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("past the end of `huge` (16 bytes)"));
    let o = dprobe(&["list", file, "past+4"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(crafted.o:past+0x4): `nop` can be probed"));
}

#[test]
fn a_list_read_by_head_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["list", "-p", &std::process::id().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains(':'), "{first}");
    // The reading end is closed: dprobe's next writes fail with EPIPE.
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "no error for a reader that stopped reading");
}

#[test]
fn list_says_which_places_the_kernel_engine_cannot_probe() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernel/tests/fixtures/refused.c");
    let program = dprobe_test_fixtures::c_program(src, "refused", &["-O2"]);
    // The nop5 in `red_zone_nop` becomes a call that overwrites its red zone on kernels that
    // optimize it.
    let red_zone = dprobe_kernel::kernel_optimizes_nop5().then_some("red zone");
    let cases: &[(&str, Option<&str>)] = &[
        ("vex_first+0", Some("VEX/EVEX-encoded")),
        ("lock_first+0", Some("`lock`-prefixed")),
        ("evex_broadcast_first+0", Some("(opcode 0x7a) for a conditional jump and skip it")),
        ("kmov_second+4", Some("(opcode 0x90) for a nop and skip it")),
        ("red_zone_nop+4", red_zone),
        ("red_zone_nop+0", None),
        ("plain+0", None),
    ];
    for (place, refusal) in cases {
        let o = dprobe(&["list", program, place]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "the other engines can: {text}");
        match refusal {
            Some(why) => assert!(text.contains("but not by the kernel engine (-a): ") && text.contains(why), "{text}"),
            None => assert!(!text.contains("kernel engine"), "{text}"),
        }
    }
}

#[test]
fn a_zombie_is_called_a_zombie() {
    // A process whose first thread alone ended (a zombie until the others do) is not one.
    let source = r#"
#include <pthread.h>
#include <unistd.h>
static void *waits(void *unused) { pause(); return unused; }
int main(void) { pthread_t t; pthread_create(&t, 0, waits, 0); pthread_exit(0); }
"#;
    let program = common::c_program_from("first-thread-ended", source, &["-O1", "-pthread"]);
    let mut alone = std::process::Command::new(program).spawn().unwrap();
    let pid = alone.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z") {
        assert!(std::time::Instant::now() < deadline, "its first thread never ended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for engine in ["agent", "ptrace"] {
        let o = dprobe(&["trace", "--engine", engine, "-p", &pid.to_string(), "main"]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        let said =
            format!("cannot trace process {pid}: its first thread has ended (pthread_exit) while 1 other thread");
        assert!(stderr.contains(&said), "{engine}: {stderr}");
    }
    // Its other thread's id: not a process the agent can go into, and said so.
    let thread = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| t.unwrap().file_name().to_str()?.parse::<u32>().ok())
        .find(|&t| t != pid)
        .expect("the other thread");
    let o = dprobe(&["trace", "--engine", "agent", "-p", &thread.to_string(), "main"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    let said = format!("{thread} is a thread of process {pid}, whose first thread has ended");
    assert!(stderr.contains(&said) && stderr.contains(&format!("--engine ptrace -p {thread}")), "{stderr}");
    alone.kill().unwrap();
    alone.wait().unwrap();
    let mut zombie = std::process::Command::new("true").spawn().unwrap();
    let pid = zombie.id();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z") {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let o = dprobe(&["trace", "-p", &pid.to_string(), "main"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    zombie.wait().unwrap();
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("cannot trace process {pid}: it has exited (a zombie")), "{stderr}");
}

#[test]
fn list_finds_cpp_functions_by_the_name_probes_use() {
    let o = dprobe(&["list", common::operators(), "operator+"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.lines().collect::<Vec<_>>(), ["operators:operator+(Money, Money)"], "{text}");
}

/// Standard error that cannot be written (a full disk, a closed pipe) loses dprobe's
/// messages: no panic, the program traced and left as it was; the summary it could not write
/// makes dprobe's status 1.
#[test]
fn a_standard_error_that_cannot_be_written_is_no_panic() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "-v", "-c", "libc:getpid", "--", "/bin/echo", "traced"])
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "traced\n");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

/// A command that cannot be executed is refused with the reason, under either engine.
#[test]
fn a_command_that_cannot_be_executed_is_refused_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::out_file("not-executed");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str, mode: u32| {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        file.display().to_string()
    };
    let not_executable = file("not-executable", "#!/bin/sh\nexit 7\n", 0o644);
    let no_interpreter = file("no-interpreter", "#!/no/such/shell\nexit 7\n", 0o755);
    let no_hash_bang = file("no-hash-bang", "exit 7\n", 0o755);
    let directory = dir.display().to_string();
    let cases = [
        (not_executable, "permission denied (it is not executable"),
        (no_interpreter, "its interpreter was not found"),
        (no_hash_bang, "it is not a program this system can run (a script needs a `#!` line"),
        (directory, "it is a directory"),
    ];
    for engine in ["ptrace", "agent"] {
        for (program, why) in &cases {
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_dprobe"))
                .args(["trace", "--engine", engine, "-c", "libc:getpid", "--", program])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{engine}, {program}: {stderr}");
            assert!(stderr.contains(&format!("cannot start `{program}`: {why}")), "{engine}: {stderr}");
        }
    }
}

/// A command is found on `PATH` as `execvp` finds it: a file of that name that may not be
/// executed is passed over for the next one, and where there is no other, the error says so.
#[test]
fn a_file_on_path_that_may_not_be_executed_is_passed_over() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::out_file("path-not-executable");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["true", "dprobe-no-such-executable"] {
        let file = dir.join(name);
        std::fs::write(&file, "#!/bin/sh\nexit 7\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let run = |program: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dprobe"))
            .args(["trace", "-c", "libc:getpid", "--", program])
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let o = run("true");
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run("dprobe-no-such-executable");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    let file = dir.join("dprobe-no-such-executable");
    let said = format!("cannot start `dprobe-no-such-executable`: `{}` is not executable", file.display());
    assert!(stderr.contains(&said), "{stderr}");
}

/// Out of descriptors (a limit of open files too low for dprobe), the message says which limit
/// and what it is, not a raw errno twice.
#[test]
fn a_limit_of_open_files_too_low_for_dprobe_is_said_as_such() {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dprobe"));
    command.args(["trace", "--engine", "agent", "-c", "libc:getpid", "--", "true"]);
    // SAFETY: between fork and exec, only setrlimit, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 8, rlim_max: 8 };
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let o = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("dprobe's limit of open files (`ulimit -n`) is 8, too low"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
}
