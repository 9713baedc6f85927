//! `kill -9` of a system-wide dprobe (the kernel engine) at moments spread over its startup,
//! its placing of probes and its steady state, 20 times: no kernel event of dprobe's is left
//! defined, and the program it watched runs on to its own result.
mod common;
#[path = "common/killing.rs"]
mod killing;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{out_file, target};
use killing::{become_subreaper, kill_and_reap, start_dprobe, wait_until, Moment, Moments};

fn uprobe_events() -> String {
    std::fs::read_to_string(format!("{}/uprobe_events", dprobe_test_fixtures::tracing_dir())).unwrap_or_default()
}

/// The running target; killed if a test fails before it finishes it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_of_a_system_wide_dprobe_leaves_no_kernel_event() {
    become_subreaper();
    let before = uprobe_events();
    assert!(!before.contains("dprobe_"), "another session is running:\n{before}");
    let mut child = Running(Command::new(target()).arg("until-usr2").stdin(Stdio::null()).spawn().unwrap());
    let pid = child.0.id() as i32;
    let p = pid.to_string();
    let spec = format!("{}:probed", target());
    let ret = format!("{}:pair%return", target());
    let mut moments = Moments::new();
    let mut defined = [0u32; 3];
    for i in 0..20 {
        let out = out_file(&format!("system-killed-{i}"));
        let err = out_file(&format!("system-killed-{i}.err"));
        let dprobe = start_dprobe(&["-a", "-p", &p, &spec, &ret], &out, &err);
        let moment = Moment::of_try(i);
        match moment {
            Moment::Startup => std::thread::sleep(moments.below(Duration::from_millis(30))),
            Moment::Placing => {
                wait_until("an event defined", || uprobe_events().contains("dprobe_"));
                std::thread::sleep(moments.below(Duration::from_millis(10)));
            }
            Moment::Steady => {
                wait_until("events", || std::fs::read_to_string(&out).unwrap_or_default().contains(" call probed"));
                std::thread::sleep(moments.below(Duration::from_millis(50)));
            }
        }
        defined[moment as usize] += u32::from(uprobe_events().contains("dprobe_"));
        let ended = kill_and_reap(dprobe);
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "try {i}: {stderr}");
        assert_eq!(uprobe_events(), before, "try {i} ({moment:?}): every event removed; {ended:?}\n{stderr}");
        assert!(child.0.try_wait().unwrap().is_none(), "try {i}: the program died");
    }
    eprintln!("killed with events defined (startup, placing, steady): {defined:?} of 20");
    assert!(defined[Moment::Steady as usize] > 0, "no kill came while events were defined");
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "it finished with the results it computes untraced");
}
