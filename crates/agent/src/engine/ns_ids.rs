//! Process and thread ids the agent reports, as dprobe's pid namespace numbers them.
//!
//! The agent reads its ids inside the program (`getpid`, `gettid`): in a pid namespace of its
//! own (a container, `unshare --pid --fork`), those are the namespace's numbers, and the same
//! numbers name other processes in dprobe's namespace (1 is its `init`). A thread that asks
//! before its `exec` (`exec_gate.rs`) is seized by its id: one taken as it was reported would
//! seize a process dprobe does not trace. So each id is looked up among the processes dprobe
//! traces (the program's threads; for a child, the processes that map the program's shared
//! memory, which only its forked children and theirs do, orphaned or not): the last id of a
//! thread's `NSpid` line (in `/proc/PID/task/TID/status`) is the one it has in its innermost
//! namespace, the one it reported; the directory's name is dprobe's.

use std::fs;

/// dprobe's id of the thread of process `pid` (dprobe's id) that knows itself as `tid`.
pub(super) fn thread_of(pid: i32, tid: i32) -> Option<i32> {
    if innermost_id(&format!("/proc/{pid}/task/{tid}/status")) == Some(tid) {
        return Some(tid);
    }
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| innermost_id(&format!("/proc/{pid}/task/{t}/status")) == Some(tid))
}

/// dprobe's ids of the process that shares the program's memory file `ring` (the inode of
/// the agent's shared memory: a child the program forked, or one of its children, orphaned
/// or not) and knows itself as `pid`, and of its thread that knows itself as `tid`; `None`
/// where no such process is found, or two are. Never `program` itself (dprobe's id of the
/// program, which asks in a gate of its own).
pub(super) fn sharing_thread(ring: u64, program: i32, pid: i32, tid: i32) -> Option<(i32, i32)> {
    // Where the child's ids are dprobe's too (no namespace between them): one look. (A child
    // in a namespace of its own that numbers itself as that process is numbered by dprobe is
    // not looked for then.)
    let own = pid != program && innermost_id(&format!("/proc/{pid}/status")) == Some(pid) && maps_ring(pid, ring);
    let found = match own {
        true => pid,
        false => {
            let processes = fs::read_dir("/proc").ok()?;
            let mut matching = processes
                .flatten()
                .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| p != program)
                .filter(|&p| innermost_id(&format!("/proc/{p}/status")) == Some(pid) && maps_ring(p, ring));
            let first = matching.next()?;
            // Two processes that say the same (in two namespaces): neither is taken.
            if matching.next().is_some() {
                return None;
            }
            first
        }
    };
    Some((found, thread_of(found, tid)?))
}

/// Whether process `pid` maps the agent's shared memory whose inode is `ring`.
fn maps_ring(pid: i32, ring: u64) -> bool {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else { return false };
    maps.lines().any(|l| {
        let mut fields = l.split_whitespace();
        fields.nth(4).and_then(|inode| inode.parse::<u64>().ok()) == Some(ring) && l.ends_with(RING_NAME)
    })
}

/// How `/proc/PID/maps` names the agent's shared memory.
const RING_NAME: &str = "/memfd:dprobe-agent-ring (deleted)";

/// The ids of the agent's records in dprobe's numbering, for a program whose threads or
/// children may number themselves otherwise (a process in a container, a child in a pid
/// namespace of its own): events, thread names and stacks are then those of the right
/// process. Looked up once per thread, where the program is in another pid namespace than
/// dprobe's or makes its children in one; the rest of the time, the ids are dprobe's.
pub(super) struct OutsideIds {
    /// The program's namespaces when last looked at, and whether they are dprobe's.
    seen: Option<(std::time::Instant, bool)>,
    /// Whether the program, or the children it makes, was ever seen in another pid namespace:
    /// a program that ended can no longer be looked at, and its last records are read after.
    ever_nested: bool,
    /// The program's id in its own pid namespace, read as its agent connected (it is alive
    /// then): its records keep their ids once it ended.
    program_inner: Option<i32>,
    /// Ids as the agent reported them, and as dprobe numbers them (the same where the
    /// process could not be found: it ended), with when they were looked up.
    known: std::collections::HashMap<(u32, u32), ((u32, u32), std::time::Instant)>,
}

/// How often the program's namespaces are looked at again (a program that makes a pid
/// namespace for its children does so once, early).
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// The most ids remembered (a long trace of a program that makes children without end).
const KNOWN_AT_MOST: usize = 1 << 16;

/// How long ids looked up are taken as they are (a namespace's ids are used again once its
/// processes end).
const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl OutsideIds {
    /// The ids of the program `program` (dprobe's id), looked at while it is alive (its agent
    /// just connected).
    pub(super) fn new(program: i32) -> OutsideIds {
        let mut ids = OutsideIds { seen: None, ever_nested: false, program_inner: None, known: Default::default() };
        if ids.nested(program) {
            ids.program_inner = innermost_id(&format!("/proc/{program}/status"));
        }
        ids
    }

    /// dprobe's ids of the thread the agent of `program` (dprobe's id), whose shared memory
    /// is `shm`, reported as `pid`/`tid`.
    pub(super) fn of(&mut self, program: i32, shm: &crate::shm::Shm, pid: u32, tid: u32) -> (u32, u32) {
        if !self.nested(program) {
            return (pid, tid);
        }
        if let Some(&(ids, _)) = self.known.get(&(pid, tid)).filter(|(_, when)| when.elapsed() < KNOWN_FOR) {
            return ids;
        }
        let program_inner = self.program_inner.or_else(|| innermost_id(&format!("/proc/{program}/status")));
        let found = match program_inner == Some(pid as i32) {
            // Its first thread has the process's id in every namespace, ended or not.
            true if tid == pid => Some((program, program)),
            true => thread_of(program, tid as i32).map(|t| (program, t)),
            false => shm.inode().and_then(|ring| sharing_thread(ring, program, pid as i32, tid as i32)),
        };
        let ids = found.map_or((pid, tid), |(p, t)| (p as u32, t as u32));
        if self.known.len() >= KNOWN_AT_MOST {
            self.known.clear();
        }
        self.known.insert((pid, tid), (ids, std::time::Instant::now()));
        ids
    }

    /// Whether the program, or the children it makes, is or was in another pid namespace than
    /// dprobe's (looked at every [`LOOK_AGAIN`] at most).
    fn nested(&mut self, program: i32) -> bool {
        if let Some((_, nested)) = self.seen.filter(|(when, _)| when.elapsed() < LOOK_AGAIN) {
            return nested;
        }
        let ns = |path: &str| fs::read_link(path).ok();
        let ours = ns("/proc/self/ns/pid");
        let nested = [format!("/proc/{program}/ns/pid"), format!("/proc/{program}/ns/pid_for_children")]
            .iter()
            .any(|p| ns(p).is_some_and(|theirs| Some(&theirs) != ours.as_ref()));
        self.ever_nested |= nested;
        self.seen = Some((std::time::Instant::now(), self.ever_nested));
        self.ever_nested
    }
}

/// The last id of the `NSpid` line of the `status` file at `path`: the id the process or
/// thread has in its own pid namespace.
fn innermost_id(path: &str) -> Option<i32> {
    let status = fs::read_to_string(path).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_dprobe_s_namespace_are_their_own() {
        let pid = std::process::id() as i32;
        // SAFETY: gettid takes no argument.
        let tid = unsafe { libc::gettid() };
        assert_eq!(thread_of(pid, tid), Some(tid));
        assert_eq!(thread_of(pid, pid), Some(pid));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let c = child.id() as i32;
        // A thread another process has is not this one's.
        assert_eq!(thread_of(pid, c), None);
        // A process that does not map the ring: refused, whatever its ids (init's too).
        let ring = crate::shm::Shm::create().unwrap();
        let inode = ring_inode(&ring);
        assert_eq!(sharing_thread(inode, 0, c, c), None);
        assert_eq!(sharing_thread(inode, 0, 1, 1), None);
        // This process maps it, unless it is the program (which asks in a gate of its own).
        assert_eq!(sharing_thread(inode, 0, pid, tid), Some((pid, tid)));
        assert_eq!(sharing_thread(inode, pid, pid, tid), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A program in a pid namespace of its own (`unshare --pid --fork`) keeps dprobe's ids for
    /// its records once it ended: they are read after its last hit, and nothing of it is left
    /// in `/proc` then.
    #[test]
    fn a_program_in_a_pid_namespace_keeps_dprobe_s_ids_once_it_ended() {
        let Ok(mut unshare) = std::process::Command::new("unshare").args(["--pid", "--fork", "sleep", "30"]).spawn()
        else {
            return eprintln!("skipped: no unshare");
        };
        let parent = unshare.id();
        let children = format!("/proc/{parent}/task/{parent}/children");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let program = loop {
            if let Some(p) = fs::read_to_string(&children).ok().and_then(|c| c.split_whitespace().next()?.parse().ok())
            {
                break p;
            }
            if unshare.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
                return eprintln!("skipped: `unshare --pid --fork` is not allowed here");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        // Until it executes `sleep`, the child may still be `unshare`, whose namespace is ours
        // (its command line says which: `exe` may be a multi-call binary's).
        let cmdline = || fs::read(format!("/proc/{program}/cmdline")).unwrap_or_default();
        while cmdline().starts_with(b"unshare") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Ended with the test, whatever it finds.
        struct KillOnDrop(i32);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                // SAFETY: kill takes no pointer.
                unsafe { libc::kill(self.0, libc::SIGKILL) };
            }
        }
        let _guard = KillOnDrop(program);
        let mut ids = OutsideIds::new(program);
        let ring = crate::shm::Shm::create().unwrap();
        assert_eq!(ids.of(program, &ring, 1, 1), (program as u32, program as u32));
        // SAFETY: kill takes no pointer; `program` is the child of a process this test made.
        unsafe { libc::kill(program, libc::SIGKILL) };
        unshare.wait().unwrap();
        let mut later = OutsideIds { known: Default::default(), seen: None, ..ids };
        assert_eq!(later.of(program, &ring, 1, 1), (program as u32, program as u32));
    }

    fn ring_inode(ring: &crate::shm::Shm) -> u64 {
        ring.inode().unwrap()
    }
}
