//! The ptrace engine against a real program: exact counts under threads, a libc function,
//! exit statuses, the program's own signals, fork and exec.
mod common;

use common::{counter, target};
use dprobe_ptrace::{Exit, Tracee};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[test]
fn eight_threads_hundred_thousand_calls_each_counted_exactly() {
    let mut t = Tracee::spawn(target(), &["threads", "8", "100000"]).unwrap();
    t.run_to_entry().unwrap();
    let (boosted_count, h1) = counter();
    let (emulated_count, h2) = counter();
    let boosted = t.add_probe("probed", h1).unwrap();
    let emulated = t.add_probe("probed_push", h2).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the program computed its results correctly");
    assert_eq!((t.hits(boosted), boosted_count.load(Relaxed)), (800_000, 800_000));
    assert_eq!((t.hits(emulated), emulated_count.load(Relaxed)), (800_000, 800_000));
}

#[test]
fn a_libc_function_and_handlers_that_read_registers() {
    let mut t = Tracee::spawn(target(), &["libc", "1000"]).unwrap();
    t.run_to_entry().unwrap();
    let seen_pid = Arc::new(AtomicU64::new(0));
    let s = seen_pid.clone();
    let p = t
        .add_probe(
            "libc:getppid",
            Box::new(move |hit| {
                s.store(hit.tid as u64, Relaxed);
            }),
        )
        .unwrap();
    let pid = t.pid();
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    assert_eq!(t.hits(p), 1001, "1000 calls in the loop and one before it");
    assert_eq!(seen_pid.load(Relaxed), pid as u64, "the main thread made the calls");
}

#[test]
fn the_exit_status_is_the_programs() {
    let mut t = Tracee::spawn(target(), &["exit", "7"]).unwrap();
    t.run_to_entry().unwrap();
    let (c, h) = counter();
    t.add_probe("probed", h).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(7));
    assert_eq!(c.load(Relaxed), 1);
}

#[test]
fn the_programs_own_traps_and_signals_reach_it() {
    let mut t = Tracee::spawn(target(), &["signals"]).unwrap();
    t.run_to_entry().unwrap();
    let (c, h) = counter();
    t.add_probe("probed", h).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "its SIGTRAP and SIGUSR1 handlers ran three times each");
    assert_eq!(c.load(Relaxed), 3);
}

#[test]
fn a_forked_child_gets_its_code_back_and_execs() {
    let mut t = Tracee::spawn(target(), &["fork"]).unwrap();
    t.run_to_entry().unwrap();
    let (c, h) = counter();
    let (e, h2) = counter();
    t.add_probe("probed", h).unwrap();
    t.add_probe("probed_push", h2).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the child ran its calls untraced and exec'd");
    assert_eq!((c.load(Relaxed), e.load(Relaxed)), (1, 0), "only the parent's call is traced");
}

#[test]
fn bad_targets_are_refused() {
    let mut t = Tracee::spawn(target(), &["exit", "0"]).unwrap();
    t.run_to_entry().unwrap();
    let (_, h) = counter();
    let e = t.add_probe("no_such_function", h).unwrap_err();
    assert!(e.to_string().contains("symbol `no_such_function` not found"), "{e}");
    let (_, h) = counter();
    let e = t.add_probe("probed+4096", h).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
    let addr = t.resolve("probed").unwrap();
    let before = t.read_code(addr, 8).unwrap();
    let (_, h) = counter();
    assert!(t.add_probe(&format!("{:#x}", addr.0 + 1), h).is_err(), "inside an instruction");
    assert_eq!(t.read_code(addr, 8).unwrap(), before, "nothing patched");
    assert_eq!(t.run().unwrap(), Exit::Code(0));
}

#[test]
fn spawning_a_missing_program_is_an_error() {
    let e = Tracee::spawn("/no/such/program", &[]).err().expect("must fail");
    assert!(e.to_string().contains("/no/such/program"), "{e}");
}

#[test]
fn detaching_mid_run_leaves_the_program_intact() {
    let mut t = Tracee::spawn(target(), &["until-usr2"]).unwrap();
    t.run_to_entry().unwrap();
    let (c, h) = counter();
    let (e, h2) = counter();
    let boosted = t.resolve("probed").unwrap();
    let emulated = t.resolve("probed_push").unwrap();
    let original = (t.read_code(boosted, 16).unwrap(), t.read_code(emulated, 16).unwrap());
    t.add_probe("probed", h).unwrap();
    t.add_probe("probed_push", h2).unwrap();
    let pid = t.pid();
    // Until both were hit (as long as a busy machine makes it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(c.load(Relaxed) > 0 && e.load(Relaxed) > 0) && std::time::Instant::now() < deadline {
        assert_eq!(t.run_for(std::time::Duration::from_millis(50)).unwrap(), None, "still running");
    }
    assert!(c.load(Relaxed) > 0 && e.load(Relaxed) > 0);
    t.detach().unwrap();
    // The code reads back as it was, through the process's own memory file.
    let read = |addr: dprobe_arch::Addr| {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; 16];
        std::fs::File::open(format!("/proc/{pid}/mem")).unwrap().read_exact_at(&mut b, addr.0).unwrap();
        b
    };
    assert_eq!((read(boosted), read(emulated)), original, "original bytes after detach");
    let hits_at_detach = (c.load(Relaxed), e.load(Relaxed));
    // It goes on untraced, checking every result, until told to finish.
    std::thread::sleep(std::time::Duration::from_millis(50));
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    assert_eq!((c.load(Relaxed), e.load(Relaxed)), hits_at_detach, "no hit after detach");
}

#[test]
fn probes_follow_the_process_into_the_program_it_executes() {
    let mut t = Tracee::spawn(target(), &["exec", "10"]).unwrap();
    t.run_to_entry().unwrap();
    let (c, h) = counter();
    let (r, h2) = counter();
    let p = t.add_probe("probed", h).unwrap();
    let ret = t.add(dprobe_ptrace::ProbeDef::on_return("probed", h2)).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "the new program computed its results correctly");
    assert_eq!((c.load(Relaxed), t.hits(p)), (11, 11), "one call before exec, ten after");
    assert_eq!((r.load(Relaxed), t.stats(ret).returns), (11, 11), "returns that stop");
}

#[test]
fn returns_recorded_by_stubs_across_exec() {
    let mut t = Tracee::spawn(target(), &["exec", "10"]).unwrap();
    t.run_to_entry().unwrap();
    let (s, h) = counter();
    let stub = t.add(dprobe_ptrace::ProbeDef::on_return("probed", h).via_return_address().no_return_stop()).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    // The return before `exec` was recorded by a stub after the last stop: it is lost with
    // the old memory and counted as abandoned. The ten after are all there.
    let st = t.stats(stub);
    assert_eq!((s.load(Relaxed), st.hits, st.returns, st.abandoned), (10, 11, 10, 1));
}

#[test]
fn returns_watched_at_exits_across_exec() {
    let mut t = Tracee::spawn(target(), &["exec", "10"]).unwrap();
    t.run_to_entry().unwrap();
    let (s, h) = counter();
    let p = t.add(dprobe_ptrace::ProbeDef::on_return("probed", h)).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0));
    // The exit stops the thread: the return before `exec` is seen like the ten after.
    let st = t.stats(p);
    assert_eq!((s.load(Relaxed), st.hits, st.returns, st.abandoned), (11, 11, 11, 0));
}
