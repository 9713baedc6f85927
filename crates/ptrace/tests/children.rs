//! The traced program's children: `vfork`, `posix_spawn` and `system()` children share its
//! memory and its probes; `fork` children get a copy, given back its original code. In every
//! case the program and its children compute what they compute untraced (the fixture checks
//! its sums and its children's exit statuses), and every call of the program is counted.
mod common;

use common::{counter, family};
use dprobe_ptrace::{Exit, Handler, ProbeDef, Tracee};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

/// A handler that records the process id of every hit.
fn pids() -> (Rc<RefCell<Vec<i32>>>, Handler) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    (seen, Box::new(move |hit| s.borrow_mut().push(hit.pid)))
}

fn started(args: &[&str]) -> Tracee {
    let mut t = Tracee::spawn(family(), args).unwrap();
    t.run_to_entry().unwrap();
    t
}

#[test]
fn every_call_around_system_is_counted_and_the_shell_children_run_untouched() {
    let mut t = started(&["system", "100"]);
    let (c, h) = counter();
    let (r, h2) = counter();
    let (execs, h3) = pids();
    let work = t.add_probe("work", h).unwrap();
    let ret = t.add(ProbeDef::on_return("work", h2)).unwrap();
    // The spawning child calls `execve` in the program's memory, over the program's probe.
    t.add_probe("libc:execve", h3).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "every system() returned the shell's status");
    assert_eq!((t.hits(work), c.load(Relaxed)), (100, 100));
    assert_eq!((t.stats(ret).returns, r.load(Relaxed)), (100, 100));
    let execs = execs.borrow();
    assert_eq!(execs.len(), 100, "each spawning child's execve");
    assert!(!execs.contains(&t.pid()), "carried the children's ids: {execs:?}");
    assert_eq!(execs.iter().collect::<BTreeSet<_>>().len(), 100, "one child each");
}

#[test]
fn posix_spawn_children_leave_the_programs_probes_in_place() {
    let mut t = started(&["spawn", "100"]);
    let (c, h) = counter();
    let work = t.add_probe("work", h).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    assert_eq!((t.hits(work), c.load(Relaxed)), (100, 100));
}

#[test]
fn a_vfork_child_calling_a_probed_function_is_stepped_like_the_program() {
    let mut t = started(&["vfork", "200"]);
    let (seen, h) = pids();
    let (r, h2) = counter();
    let work = t.add(ProbeDef::on_return("work", h2).with_entry(h)).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "each child exited with work's result");
    let seen = seen.borrow();
    let parent = seen.iter().filter(|p| **p == t.pid()).count();
    assert_eq!((t.hits(work), parent, seen.len() - parent), (400, 200, 200), "the program's calls and its children's");
    assert_eq!((t.stats(work).returns, r.load(Relaxed)), (400, 400), "every call returned, in either process");
}

#[test]
fn a_fork_child_runs_untraced_with_its_copy_restored() {
    let mut t = started(&["fork", "50", "70"]);
    let (c, h) = counter();
    let (r, h2) = counter();
    let work = t.add_probe("work", h).unwrap();
    // forker returns in both processes; the child's copy must return to the real address.
    let forker = t.add(ProbeDef::on_return("forker", h2)).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the child's 70 calls summed right");
    assert_eq!((t.hits(work), c.load(Relaxed)), (50, 50), "the parent's calls alone");
    assert_eq!((t.stats(forker).returns, r.load(Relaxed)), (1, 1));
}

#[test]
fn other_threads_keep_every_hit_while_a_thread_waits_in_system() {
    let mut t = started(&["threads-system", "20000", "40"]);
    let (c, h) = counter();
    let work = t.add_probe("work", h).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    assert_eq!((t.hits(work), c.load(Relaxed)), (20000, 20000));
}

#[test]
fn detaching_while_vfork_children_run_lets_everything_go_right() {
    // Detach at moments spread over a program that starts a shell 300 times while a thread
    // calls the probed function: some detaches find a vfork child running in the program's
    // memory.
    for round in 0..12u64 {
        let mut t = started(&["threads-system", "3000000", "300"]);
        let (_, h) = counter();
        t.add_probe("work", h).unwrap();
        t.add_probe("libc:execve", Box::new(|_| {})).unwrap();
        let pid = t.pid();
        let exit = t.run_for(std::time::Duration::from_millis(20 + round * 13)).unwrap();
        assert_eq!(exit, None, "still running");
        t.detach().unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0), "round {round}");
    }
}
