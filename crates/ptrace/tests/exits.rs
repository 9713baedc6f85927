//! Return probes on functions that leave without returning: `exit` (whose `atexit` handler
//! calls a return-probed function), `_exit`, `longjmp`, `pthread_exit` (which unwinds the
//! thread's stack). The program ends as it would untraced; each call that did not return is
//! counted as abandoned, each that did as a return.
mod common;

use common::{exits, in_mode, Mode, MODES};
use dprobe_ptrace::{Exit, ProbeDef, Tracee};

/// Trace `exits MODE 10` with return probes on `function` and `work` (stopping at the return
/// or through stubs); returns the exit and (hits, returns, abandoned) of each.
fn run(mode: &str, function: &str, watch: Mode) -> (Exit, [(u64, u64, u64); 2]) {
    let mut t = Tracee::spawn(exits(), &[mode, "10"]).unwrap();
    t.run_to_start().unwrap();
    let ids = [function, "work"].map(|f| {
        let def = ProbeDef::on_return(f, Box::new(|_| {}));
        t.add(in_mode(def, watch)).unwrap()
    });
    let exit = t.run().unwrap();
    (exit, ids.map(|id| (t.stats(id).hits, t.stats(id).returns, t.stats(id).abandoned)))
}

#[test]
fn functions_that_exit_longjmp_or_end_their_thread() {
    for no_stop in MODES {
        let (exit, got) = run("exit", "leave_on_last", no_stop);
        assert_eq!((exit, got), (Exit::Code(7), [(10, 9, 1), (11, 11, 0)]), "exit, its atexit handler's call");
        let (exit, got) = run("_exit", "leave_on_last", no_stop);
        assert_eq!((exit, got), (Exit::Code(9), [(10, 9, 1), (10, 10, 0)]), "_exit");
        let (exit, got) = run("longjmp", "jump_on_odd", no_stop);
        assert_eq!((exit, got), (Exit::Code(0), [(10, 5, 5), (10, 10, 0)]), "longjmp");
        let (exit, got) = run("pthread_exit", "end_thread", no_stop);
        assert_eq!((exit, got), (Exit::Code(0), [(10, 5, 5), (10, 10, 0)]), "pthread_exit");
    }
}
