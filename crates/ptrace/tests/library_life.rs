//! Libraries over a program's life: constructors that run before `main` (the program's, a
//! linked library's, a `dlopen`ed library's) are probed, and a library unloaded and loaded
//! again is probed at each load, wherever it lands, its old range never written to.
mod common;

use common::{counter, ctor_plugin, loads, plugin};
use dprobe_core::Placement;
use dprobe_ptrace::{Exit, ProbeDef, Tracee};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

#[test]
fn calls_from_constructors_are_counted() {
    let mut t = Tracee::spawn(loads(), &["ctors", ctor_plugin()]).unwrap();
    t.run_to_start().unwrap();
    let (lib, h) = counter();
    let (main, h2) = counter();
    let (plugin, h3) = counter();
    let (lib_returns, h4) = counter();
    t.add_probe("libdprobe_ctor:ctor_work", h).unwrap();
    t.add_probe("main_work", h2).unwrap();
    t.add(ProbeDef::entry("libdprobe_ctorplugin:plugin_ctor_work", h3).when_loaded()).unwrap();
    t.add(ProbeDef::on_return("libdprobe_ctor:ctor_work", h4)).unwrap();
    assert_eq!(t.run().unwrap(), Exit::Code(0), "every constructor computed its sum");
    // 5 from its library's constructor, 3 from the program's, 4 from the plugin's; 1 each from main.
    let counts = [lib.load(Relaxed), main.load(Relaxed), plugin.load(Relaxed), lib_returns.load(Relaxed)];
    assert_eq!(counts, [6, 4, 4, 6]);
}

#[test]
fn a_library_loaded_100_times_is_probed_at_every_load_and_its_old_places_are_left_alone() {
    let mut t = Tracee::spawn(loads(), &["reload", plugin(), "100"]).unwrap();
    t.run_to_start().unwrap();
    let (c, h) = counter();
    let (r, h2) = counter();
    let twice = t.add(ProbeDef::entry("libdprobe_plugin:plugin_twice", h).when_loaded()).unwrap();
    let returns = t.add(ProbeDef::on_return("libdprobe_plugin:plugin_twice", h2).when_loaded()).unwrap();
    // Stop once the loads are done, with the library unloaded and blocks of the program's own
    // mapped where it was: letting the program go then must write nothing into them.
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    t.add_probe("checkpoint", Box::new(move |_| d.set(true))).unwrap();
    let stopped = t.run_until(&mut || done.get()).unwrap();
    assert!(matches!(stopped, dprobe_ptrace::Stopped::Asked), "{stopped:?}");
    assert_eq!((t.hits(twice), c.load(Relaxed)), (100, 100), "one hit per load");
    assert_eq!((t.stats(returns).returns, r.load(Relaxed)), (100, 100));
    assert_eq!(t.stats(twice).placement, Placement::Unloaded);
    let pid = t.pid();
    t.detach().unwrap();
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0), "blocks untouched");
}
