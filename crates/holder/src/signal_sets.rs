//! Which signals the process ignores now, and which are pending for it, as the kernel shows
//! them in `/proc/self/status`.

use std::io;

use nix::sys::signal::{SigSet, Signal};

/// The signals this process ignores now, as the kernel shows them (`SigIgn` in
/// `/proc/self/status`).
pub fn ignored_signals() -> io::Result<SigSet> {
    own_set("SigIgn")
}

/// The signals pending for this process as a whole (`ShdPnd`): sent to it, not yet taken by
/// any of its threads.
pub fn pending_signals() -> io::Result<SigSet> {
    own_set("ShdPnd")
}

fn own_set(field: &str) -> io::Result<SigSet> {
    parse(&std::fs::read_to_string("/proc/self/status")?, field)
        .ok_or_else(|| io::Error::other(format!("no readable {field} line in /proc/self/status")))
}

/// The set of line `field` in a `/proc/PID/status` text.
fn parse(status: &str, field: &str) -> Option<SigSet> {
    let mask = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?.trim();
    let bits = u64::from_str_radix(mask, 16).ok()?;
    let mut set = SigSet::empty();
    for signal in Signal::iterator() {
        if bits & (1 << (signal as i32 - 1)) != 0 {
            set.add(signal);
        }
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_mask() {
        // SIGHUP is 1, SIGINT 2, SIGPIPE 13.
        let set = parse("Name:\tdprobe\nSigBlk:\t0000000000000002\nSigIgn:\t0000000000001001\n", "SigIgn").unwrap();
        assert!(set.contains(Signal::SIGHUP));
        assert!(set.contains(Signal::SIGPIPE));
        assert!(!set.contains(Signal::SIGINT), "taken from SigBlk, not SigIgn");
        assert_eq!(set.iter().count(), 2);
    }

    #[test]
    fn reads_the_pending_set_by_its_name() {
        let status = "SigPnd:\t0000000000000100\nShdPnd:\t0000000000000002\n";
        let set = parse(status, "ShdPnd").unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), [Signal::SIGINT], "the process's, not the thread's (SIGUSR1)");
    }

    #[test]
    fn no_mask_is_no_answer() {
        assert!(parse("Name:\tdprobe\n", "SigIgn").is_none());
        assert!(parse("SigIgn:\tzz\n", "SigIgn").is_none());
        assert!(parse("ShdPnd:\t0\n", "SigIgn").is_none());
    }

    #[test]
    fn this_process_ignores_what_it_set_to_ignore() {
        // Rust programs start with SIGPIPE ignored.
        assert!(ignored_signals().unwrap().contains(Signal::SIGPIPE));
    }
}
