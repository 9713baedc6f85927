//! dprobe's probes and another tool's kernel uprobe on the same function.
//!
//! * The ptrace engine's breakpoint: while the uprobe is registered the kernel takes the hits
//!   (dprobe's `int3` is the one it found there); once it is removed (which writes the original
//!   instruction back) dprobe puts its breakpoint back and says so.
//! * The agent's jump (the default for a started command): the page under a jump is writable,
//!   so the kernel places no uprobe there, and never writes over the jump.
//! * A uprobe there before dprobe starts: the agent's probe stays on `int3` and says why.
//! * The agent's `int3` (an instruction no jump fits): the kernel takes it for its own while
//!   its uprobe is registered, and writes the original byte over it when the uprobe is
//!   removed; the agent puts its breakpoint back and says so, as the ptrace engine does.
//! * A return probe's `int3` exit in the page made writable for its entry's jump: the same,
//!   through the read-only alias of the file page the agent maps beside a writable one
//!   (without it a thread hitting the `int3` spins in the kernel while the uprobe is there).
//!
//! Each test runs its own copy of the program (a uprobe is on a file, and fires in every
//! process that maps it) and names its own event. No hit is counted twice, none is lost
//! unsaid, and the program's own sums are right.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{function_addr, out_file, read_mem, started_command};

/// The kernel's tracing directory (mounted by [`tracing`] where no one did yet).
const TRACING: &str = "/sys/kernel/tracing";

/// Mount [`TRACING`] where nothing did yet: this test defines events there before dprobe ran.
fn tracing() {
    let _ = dprobe_test_fixtures::tracing_dir();
}
const GROUP: &str = "coexisting_tool";

/// `phases N` (see fixtures/phases.c), built as `name`.
fn phases(name: &str) -> &'static str {
    phases_with(name, &["-O2"])
}

fn phases_with(name: &str, flags: &[&str]) -> &'static str {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/phases.c");
    dprobe_test_fixtures::c_program(src, name, flags)
}

fn define(line: &str) {
    // Mounted where it is not (a fresh machine, where no kernel-engine test ran before).
    dprobe_kernel::Tracefs::open().unwrap();
    tracing();
    let mut f = std::fs::OpenOptions::new().append(true).open(format!("{TRACING}/uprobe_events")).unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
}

/// Another tool's uprobe `event` on `program` at file offset `offset`, removed when dropped
/// (a failed test leaves nothing behind).
struct OtherTool {
    program: &'static str,
    event: &'static str,
}

impl OtherTool {
    fn add(program: &'static str, event: &'static str, offset: u64) -> OtherTool {
        define(&format!("p:{GROUP}/{event} {program}:{offset:#x}"));
        let tool = OtherTool { program, event };
        tool.enable(true);
        tool
    }

    fn enable(&self, on: bool) {
        let path = format!("{TRACING}/events/{GROUP}/{}/enable", self.event);
        std::fs::write(path, if on { "1" } else { "0" }).unwrap();
    }

    /// The kernel's hit count of the uprobe, from `uprobe_profile`. A read of the list while
    /// another test adds or removes its events may skip a line (the kernel's listing goes by
    /// position from one read to the next): read again until this one's is there.
    fn kernel_hits(&self) -> u64 {
        let mut profile = String::new();
        for _ in 0..100 {
            profile = std::fs::read_to_string(format!("{TRACING}/uprobe_profile")).unwrap();
            // `  PATH EVENT HITS`
            let line = profile.lines().find(|l| l.split_whitespace().take(2).eq([self.program, self.event]));
            if let Some(line) = line {
                return line.split_whitespace().last().unwrap().parse().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the uprobe is listed:\n{profile}")
    }
}

impl Drop for OtherTool {
    fn drop(&mut self) {
        self.enable(false);
        define(&format!("-:{GROUP}/{}", self.event));
    }
}

/// The offset in its file of address `addr` of process `pid`, and the permissions of the
/// mapping holding it.
fn file_offset(pid: i32, addr: u64) -> (u64, String) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = f[0].split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        if (start..end).contains(&addr) {
            return (addr - start + u64::from_str_radix(f[2], 16).unwrap(), f[1].to_owned());
        }
    }
    panic!("{addr:#x} is not mapped in {pid}");
}

/// Wait until `done`; the deadline only keeps a broken run from hanging.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `dprobe ARGS -- PROGRAM N`, driven phase by phase.
struct Traced {
    dprobe: Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
    pid: i32,
    n: u64,
}

impl Traced {
    fn start(args: &[&str], program: &str, n: u64) -> Traced {
        Traced::start_phases(args, program, n, 3)
    }

    /// `dprobe ARGS -- PROGRAM N PHASES`.
    fn start_phases(args: &[&str], program: &str, n: u64, phases: u32) -> Traced {
        // SIGINT at its default: one test stops dprobe with it.
        let mut dprobe = common::dprobe_command()
            .args(args)
            .args(["--", program, &n.to_string(), &phases.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = dprobe.stdin.take();
        let output = BufReader::new(dprobe.stdout.take().unwrap());
        wait_until("the command", || started_command(dprobe.id()).is_some());
        let pid = started_command(dprobe.id()).unwrap();
        Traced { dprobe, input, output, pid, n }
    }

    /// Run phase `k` of the program: its own sum must be right.
    fn phase(&mut self, k: u32) {
        self.input.as_mut().unwrap().write_all(b"go\n").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        let n = self.n;
        assert_eq!(line.trim(), format!("phase {k} done {}", n * (n + 1) / 2), "the program's own sums");
    }

    /// Let the program end: dprobe's exit code and what it said on standard error.
    fn finish(mut self) -> (Option<i32>, String) {
        drop(self.input.take());
        let mut said = String::new();
        self.dprobe.stderr.take().unwrap().read_to_string(&mut said).unwrap();
        (self.dprobe.wait().unwrap().code(), said)
    }
}

#[test]
fn a_kernel_uprobe_added_and_removed_on_a_probed_function() {
    const N: u64 = 2000;
    let program = phases("phases");
    // Tracing one process, and following its children (another loop of waits).
    for follow in [false, true] {
        let out = out_file(&format!("coexist-{follow}"));
        // The ptrace engine's breakpoint (the agent's jump has a test of its own below).
        let mut args = vec!["trace", "--engine", "ptrace", "--count", "-o", out.to_str().unwrap(), "counted"];
        if !follow {
            args.push("--no-follow");
        }
        let mut traced = Traced::start(&args, program, N);
        let pid = traced.pid;
        // Phase 1: dprobe alone (its probes are placed before the command runs a line of its own).
        traced.phase(1);
        // Phase 2: another tool's uprobe on the same instruction.
        let at = function_addr(pid, "counted");
        let other = OtherTool::add(program, "counted", file_offset(pid, at).0);
        traced.phase(2);
        let kernel = other.kernel_hits();
        // Phase 3: the uprobe removed, which writes the original instruction over dprobe's
        // breakpoint; dprobe's is put back.
        drop(other);
        wait_until("dprobe's breakpoint back", || read_mem(pid, at, 1) == [0xcc]);
        traced.phase(3);
        let (status, said) = traced.finish();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(status, Some(0), "follow: {follow}: {text}{said}");
        assert_eq!(kernel, N, "the kernel took the hits while its uprobe was there, follow: {follow}\n{text}");
        assert_eq!(common::hits(&text, "counted"), 2 * N, "dprobe's: phases 1 and 3, follow: {follow}\n{text}");
        assert!(text.contains("counted: its breakpoint was removed by something else 1 time(s)"), "{text}");
    }
}

#[test]
fn a_kernel_uprobe_added_and_removed_on_the_agents_int3() {
    const N: u64 = 2000;
    let program = phases_with("phases_int3", &["-O2", "-DRET_IS_A_BRANCH_TARGET"]);
    // `counted`'s `ret`, the function's last byte and the target of its own `js`: no jump fits
    // there, the probe stays on int3.
    let f = dprobe_sym::Symbols::load_file(program).unwrap().find("counted").unwrap().clone();
    let mut code = vec![0u8; f.size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(program).unwrap(), &mut code, f.file_offset)
        .unwrap();
    let last = code.len() - 1;
    assert_eq!(code[last], 0xc3, "`counted` ends with its `ret`: {code:02x?}");
    assert_eq!(code[last - 3..last - 1], [0x78, 0x01], "a `js` over one `nop` to the `ret`: {code:02x?}");
    let ret = format!("counted+{last}");
    let out = out_file("coexist_int3");
    let args = ["trace", "-v", "--engine", "agent", "--count", "-o", out.to_str().unwrap(), &ret];
    let mut traced = Traced::start_phases(&args, program, N, 4);
    let pid = traced.pid;
    traced.phase(1);
    let at = function_addr(pid, "counted") + last as u64;
    let (offset, perms) = file_offset(pid, at);
    assert_eq!(read_mem(pid, at, 1), [0xcc], "the agent's probe is an int3");
    assert_eq!(perms, "r-xp", "an int3 probe leaves its page as it was");
    // Phase 2: another tool's uprobe on the same instruction. The kernel finds an int3 there
    // and writes nothing, but takes the hits from now on.
    let other = OtherTool::add(program, "int3_counted", offset);
    assert_eq!(read_mem(pid, at, 1), [0xcc]);
    traced.phase(2);
    let kernel = other.kernel_hits();
    // Phase 3: the uprobe removed, which writes the original `ret` over the agent's int3; the
    // agent puts it back.
    drop(other);
    wait_until("the agent's breakpoint back", || read_mem(pid, at, 1) == [0xcc]);
    traced.phase(3);
    // Phase 4: dprobe stopped (SIGINT to it alone: it detaches, the program goes on).
    // SAFETY: signals the dprobe this test started.
    assert_eq!(unsafe { libc::kill(traced.dprobe.id() as i32, libc::SIGINT) }, 0);
    let stopped = traced.dprobe.wait().unwrap();
    assert_eq!(stopped.code(), Some(0));
    assert_eq!(read_mem(pid, at, 1), [0xc3], "the original byte back");
    assert_eq!(file_offset(pid, at).1, "r-xp");
    traced.phase(4);
    let (status, said) = traced.finish();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status, Some(0), "{text}{said}");
    assert!(said.contains("on int3, a trap per hit"), "how its hits run is shown:\n{said}");
    assert_eq!(kernel, N, "the kernel took phase 2's hits\n{text}");
    assert_eq!(common::hits(&text, &ret), 2 * N, "dprobe's: phases 1 and 3\n{text}");
    let note = format!("{ret}: its breakpoint was removed by something else 1 time(s)");
    assert!(text.contains(&note), "{text}");
}

#[test]
fn a_kernel_uprobe_added_and_removed_on_a_return_probes_int3_beside_its_entrys_jump() {
    const N: u64 = 2000;
    let program = phases_with("phases_int3_exit", &["-O2", "-DRET_IS_A_BRANCH_TARGET", "-DELSEWHERE"]);
    // `counted`'s entry takes a jump; its `ret`, a branch target, no jump: the exit stays on
    // int3 in the page made writable for the entry's jump.
    let f = dprobe_sym::Symbols::load_file(program).unwrap().find("counted").unwrap().clone();
    let last = f.size - 1;
    let out = out_file("coexist_int3_exit");
    let args = ["trace", "--engine", "agent", "--count", "-o", out.to_str().unwrap(), "counted%return"];
    let mut traced = Traced::start(&args, program, N);
    let pid = traced.pid;
    traced.phase(1);
    let entry = function_addr(pid, "counted");
    let at = entry + last;
    assert_eq!((read_mem(pid, entry, 1), read_mem(pid, at, 1)), (vec![0xe9], vec![0xcc]), "a jump, an int3");
    let (offset, perms) = file_offset(pid, at);
    assert_eq!(perms, "rwxp", "the exit's int3 is in the page under the entry's jump");
    // Phase 2: another tool's uprobes on a function in another page (the process then has a
    // uprobe, and the kernel looks up every int3 it executes) and on the exit. The page keeps
    // a read-only alias of its file page: the uprobe goes there with the `ret` read from the
    // file, and the kernel takes the hits of the int3. (Without it, the uprobe never read its
    // instruction: a thread hitting the int3 spins in the kernel while it is registered, and
    // its removal writes a zero byte over the int3.)
    let (elsewhere, perms) = file_offset(pid, function_addr(pid, "elsewhere"));
    assert_eq!(perms, "r-xp", "a page of its own");
    let first = OtherTool::add(program, "int3_exit_elsewhere", elsewhere);
    let other = OtherTool::add(program, "int3_exit", offset);
    // A program spinning in the kernel would never end the phase: it is killed after a while,
    // which fails the phase (the deadline only keeps a broken run from hanging).
    let (ended, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(Duration::from_secs(120)).is_err() {
            // SAFETY: signals the program this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    traced.phase(2);
    ended.send(()).unwrap();
    watchdog.join().unwrap();
    let kernel = other.kernel_hits();
    // Phase 3: the uprobe removed, which writes the `ret` back; the agent puts its int3 back.
    drop(other);
    drop(first);
    wait_until("the agent's breakpoint back", || read_mem(pid, at, 1) == [0xcc]);
    traced.phase(3);
    let (status, said) = traced.finish();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status, Some(0), "{text}{said}");
    assert_eq!(kernel, N, "the kernel took phase 2's returns\n{text}");
    // `PROBE HITS RETURNS MISSED`: every entry, the returns of phases 1 and 3.
    let row: Vec<&str> = text.lines().find(|l| l.starts_with("counted%return ")).unwrap().split_whitespace().collect();
    assert_eq!(row[1..], [(3 * N).to_string(), (2 * N).to_string(), "0".to_owned()], "{text}");
    let note = format!("counted%return: {N} returns not seen");
    assert!(text.contains(&note), "the returns the kernel took are said\n{text}");
    let note = "counted%return: its breakpoint was removed by something else 1 time(s)";
    assert!(text.contains(note), "{text}");
}

#[test]
fn a_kernel_uprobe_added_and_removed_on_the_agents_jump() {
    const N: u64 = 2000;
    let program = phases("phases_jump");
    let out = out_file("coexist_jump");
    // The default engine for a started command: the agent, whose probe here is a jump.
    let args = ["trace", "--count", "-o", out.to_str().unwrap(), "counted"];
    let mut traced = Traced::start(&args, program, N);
    let pid = traced.pid;
    traced.phase(1);
    let at = function_addr(pid, "counted");
    let (offset, perms) = file_offset(pid, at);
    assert_eq!(read_mem(pid, at, 1), [0xe9], "the agent's probe is a jump");
    assert_eq!(perms, "rwxp", "the page under the jump is writable");
    // Phase 2: another tool's uprobe on the same instruction. The kernel places a uprobe only
    // in a mapping without write permission (its `valid_vma`), and registering takes the
    // address space's lock as `mprotect` does: it does not go into this process at all, and
    // writes no int3 over the jump.
    let other = OtherTool::add(program, "jump_counted", offset);
    assert_eq!(read_mem(pid, at, 1), [0xe9], "the jump is still there");
    traced.phase(2);
    let kernel = other.kernel_hits();
    // Phase 3: the uprobe removed. The kernel writes the original byte back only where it finds
    // an int3: the jump stays.
    drop(other);
    assert_eq!(read_mem(pid, at, 1), [0xe9], "the jump is still there");
    traced.phase(3);
    let (status, said) = traced.finish();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status, Some(0), "{text}{said}");
    assert_eq!(kernel, 0, "the kernel's uprobe never went into the process\n{text}");
    assert_eq!(common::hits(&text, "counted"), 3 * N, "dprobe's: every phase\n{text}");
}

#[test]
fn a_kernel_uprobe_inside_the_window_before_dprobe_starts() {
    const N: u64 = 2000;
    let program = phases("phases_before");
    let out = out_file("coexist_before");
    // The uprobe on `counted`'s second instruction, which a jump at its first would cover.
    let symbols = dprobe_sym::Symbols::load_file(program).unwrap();
    let f = symbols.find("counted").unwrap().clone();
    let mut code = vec![0u8; f.size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(program).unwrap(), &mut code, f.file_offset)
        .unwrap();
    let first = dprobe_arch::analyze(&code, f.start, f.start).unwrap();
    assert!(first.len < 5 && first.len < code.len(), "the second instruction is under a jump: {code:02x?}");
    let other = OtherTool::add(program, "before_counted", f.file_offset + first.len as u64);
    let args = ["trace", "--count", "-o", out.to_str().unwrap(), "counted"];
    let mut traced = Traced::start(&args, program, N);
    let pid = traced.pid;
    traced.phase(1);
    let at = function_addr(pid, "counted");
    let second = at + first.len as u64;
    assert_eq!(read_mem(pid, at, 1), [0xcc], "dprobe's probe stays on int3");
    assert_eq!(read_mem(pid, second, 1), [0xcc], "the kernel's");
    let kernel = other.kernel_hits();
    // The uprobe removed during the trace: the kernel writes its instruction's first byte back,
    // dprobe's int3 is not touched.
    drop(other);
    assert_eq!(read_mem(pid, second, 1), [code[first.len]]);
    assert_eq!(read_mem(pid, at, 1), [0xcc]);
    traced.phase(2);
    traced.phase(3);
    let (status, said) = traced.finish();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(status, Some(0), "{text}{said}");
    assert_eq!(kernel, N, "the kernel's uprobe took phase 1's hits too\n{text}");
    assert_eq!(common::hits(&text, "counted"), 3 * N, "dprobe's: every phase\n{text}");
    let why = format!("`counted`: each hit traps (no jump to a detour): the window cannot be analyzed: cannot probe `int3` at {second:#x}");
    assert!(said.contains(&why), "the reason is shown:\n{said}");
}

#[test]
fn a_kernel_uprobe_at_the_probe_before_dprobe_starts_is_refused_with_the_reason() {
    let program = phases("phases_refused");
    let f = dprobe_sym::Symbols::load_file(program).unwrap().find("counted").unwrap().clone();
    let other = OtherTool::add(program, "refused_counted", f.file_offset);
    // Its int3 is where dprobe's would go: taken for the instruction, it would be written back
    // after the other tool removed its own (a stray trap). dprobe says so and stops before the
    // command runs a line of its own.
    let out = Command::new(env!("CARGO_BIN_EXE_dprobe"))
        .args(["trace", "--count", "counted", "--", program, "10"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("already holds a breakpoint that is not dprobe's"), "{said}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "the command did not run");
    assert_eq!(other.kernel_hits(), 0);
}
