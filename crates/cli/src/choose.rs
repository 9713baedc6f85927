//! Which engine traces one program when none is asked for: the agent (no stop per hit) where
//! it can be loaded, otherwise ptrace, for a reason `-v` gives. What can be known before
//! anything starts is checked here; a load that fails later falls back too (see trace.rs).

use std::os::unix::fs::MetadataExt;

use crate::options::TraceArgs;
use crate::plan::Planned;

/// Why the agent cannot trace what `args` asks for (`None`: it can, as far as can be told
/// before it is loaded). `program`: the started command's file, found in `PATH`.
pub fn agent_cannot(args: &TraceArgs, planned: &[Planned], program: Option<&str>) -> Option<String> {
    let most = dprobe_agent::shm::MAX_PROBES;
    if planned.len() > most {
        return Some(format!("the specs come to {} probes, the agent places at most {most}", planned.len()));
    }
    let implied = args.folded.is_some() || args.by.iter().any(|k| k == "stack");
    if crate::stacks::parse_stack(args.stack.as_deref(), args.stack_depth, implied)
        .is_ok_and(|w| w.is_some_and(|w| w.kernel))
    {
        return Some("--stack=kernel: the agent captures user stacks only".into());
    }
    if let Some(pid) = args.pid {
        return process_cannot(pid);
    }
    // A started command: the agent is loaded before its libraries' constructors run, and
    // again into each program it executes.
    program.and_then(program_cannot)
}

/// Why the agent cannot trace running process `pid`.
fn process_cannot(pid: i32) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let files: Vec<&str> =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.starts_with('/')).collect();
    let has_loader = files.iter().any(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with("ld-")));
    if !maps.is_empty() && !has_loader {
        return Some(format!("process {pid} has no dynamic loader (a static program): nothing to load the agent with"));
    }
    if let Some(tid) = thread_blocking_traps(pid) {
        return Some(blocked_traps(pid, tid));
    }
    // A library not loaded yet is no reason: the agent places its probes when the program
    // loads it, as the ptrace engine does. Nor are return probes in a program that unwinds its
    // stack: the agent watches them at the functions' exits, as the ptrace engine does.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let seccomp = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(str::trim);
    if seccomp == Some("2") {
        return Some(format!(
            "process {pid} runs under a seccomp filter, which may forbid what the agent needs (a thread, a socket)"
        ));
    }
    None
}

/// The process id of another dprobe whose agent traces process `pid` now, if one does: its
/// listener for the agent's connection (`dprobe-agent.DPROBE.N.PID`, an abstract socket) is
/// open; the `dprobe` the user started, which that tracing process was split from (see
/// `dprobe-holder`), while it runs. (A forked child traced through its parent's session is
/// not seen here; its agent refuses a second session itself.)
pub fn agent_session_of(pid: i32) -> Option<u32> {
    let tracer = dprobe_agent::listener_for_agent_in(pid)?;
    let parent = std::fs::read_to_string(format!("/proc/{tracer}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse::<u32>().ok());
    let program = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let tracers = program(tracer);
    Some(parent.filter(|&p| tracers.is_some() && program(p) == tracers).unwrap_or(tracer))
}

/// A thread of process `pid` that blocks `SIGTRAP`, if any (`dprobe_agent::thread_blocking_traps`):
/// the agent's first trap there would kill the program. (A process whose threads cannot be
/// read cannot have the agent loaded either.)
pub fn thread_blocking_traps(pid: i32) -> Option<i32> {
    dprobe_agent::thread_blocking_traps(pid as u32).ok().flatten().map(|tid| tid as i32)
}

/// The words for [`thread_blocking_traps`]'s finding.
pub fn blocked_traps(pid: i32, tid: i32) -> String {
    format!(
        "thread {tid} of process {pid} blocks SIGTRAP (as a thread that blocks every signal does): \
         the kernel would kill the program at the agent's first trap there"
    )
}

/// Why the agent cannot be loaded into `program` once started.
fn program_cannot(program: &str) -> Option<String> {
    let meta = std::fs::metadata(program).ok()?;
    if meta.mode() & (nix::libc::S_ISUID | nix::libc::S_ISGID) != 0 {
        return Some(format!("`{program}` is setuid or setgid: traced, it runs without its privileges either way"));
    }
    let head = read_head(program)?;
    // A script: the interpreter named on its first line is what runs.
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next()?;
        let interpreter = String::from_utf8_lossy(line);
        let interpreter = interpreter.split_whitespace().next()?;
        return program_cannot(interpreter);
    }
    match has_interpreter(&head) {
        Some(false) => {
            Some(format!("`{program}` is a static program (no dynamic loader): nothing to load the agent with"))
        }
        _ => None,
    }
}

/// The first 64 KiB of a file (the ELF header and program headers are there).
fn read_head(path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path).ok()?.take(64 << 10).read_to_end(&mut head).ok()?;
    Some(head)
}

/// Whether a 64-bit little-endian ELF file (its first bytes) names a dynamic loader
/// (`PT_INTERP`); `None` when it is not such a file or its headers are not in `head`.
fn has_interpreter(head: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if head.get(..5)? != b"\x7fELF\x02" || head.get(5) != Some(&1) {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(head.get(0x20..0x28)?.try_into().ok()?) as usize;
    let (size, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    let mut interp = false;
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(size)?)?;
        let kind = u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?);
        interp |= kind == PT_INTERP;
    }
    Some(interp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_name_their_loader_and_scripts_their_interpreter() {
        assert_eq!(has_interpreter(&read_head("/bin/sh").unwrap()), Some(true));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(has_interpreter(b"\x7fELF\x02\x01"), None, "headers cut short");
        assert_eq!(program_cannot("/bin/sh"), None);
        let script = std::env::temp_dir().join(format!("dprobe-choose-{}.sh", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\necho\n").unwrap();
        assert_eq!(program_cannot(script.to_str().unwrap()), None);
        std::fs::remove_file(&script).unwrap();
    }
}
