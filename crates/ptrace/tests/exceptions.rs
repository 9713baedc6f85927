//! C++ exceptions thrown through functions with return probes: the unwinder reads each
//! frame's return address to find its unwind information, so dprobe's trampoline or stub in
//! a frame would make it give up (`terminate`). The addresses go back when the unwinder
//! starts; the frames the exception leaves are watched again where it is caught.
mod common;

use common::{assert_mode, counter, in_mode, throws, Mode};
use dprobe_ptrace::{Exit, ProbeDef, Tracee};
use std::sync::atomic::Ordering::Relaxed;

fn exceptions_through_probed_frames(mode: Mode) {
    let mut t = Tracee::spawn(throws(), &["300"]).unwrap();
    t.run_to_start().unwrap();
    let mut ids = Vec::new();
    let mut counters = Vec::new();
    for f in ["inner", "middle", "outer"] {
        let (c, h) = counter();
        let def = ProbeDef::on_return(f, h);
        ids.push(t.add(in_mode(def, mode)).unwrap());
        assert_mode(&t, *ids.last().unwrap(), mode);
        counters.push(c);
    }
    assert_eq!(t.run().unwrap(), Exit::Code(0), "every result right, every destructor run");
    let got: Vec<_> = ids.iter().map(|id| (t.stats(*id).hits, t.stats(*id).returns, t.stats(*id).abandoned)).collect();
    // Every third call throws from inner through middle; outer catches and returns.
    assert_eq!(got, [(300, 200, 100), (300, 200, 100), (300, 300, 0)]);
    let handled: Vec<_> = counters.iter().map(|c| c.load(Relaxed)).collect();
    assert_eq!(handled, [200, 200, 300]);
}

#[test]
fn exceptions_through_frames_whose_exits_are_watched() {
    exceptions_through_probed_frames(Mode::Exits);
}

#[test]
fn exceptions_through_frames_returning_through_the_trampoline() {
    exceptions_through_probed_frames(Mode::Trampoline);
}

#[test]
fn exceptions_through_frames_returning_through_stubs() {
    exceptions_through_probed_frames(Mode::Stubs);
}
