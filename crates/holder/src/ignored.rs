//! Which signals the process ignores now.

use std::io;

use nix::sys::signal::{SigSet, Signal};

/// The signals this process ignores now, as the kernel shows them (`SigIgn` in
/// `/proc/self/status`).
pub fn ignored_signals() -> io::Result<SigSet> {
    parse(&std::fs::read_to_string("/proc/self/status")?)
        .ok_or_else(|| io::Error::other("no readable SigIgn line in /proc/self/status"))
}

/// The set in a `/proc/PID/status` text.
fn parse(status: &str) -> Option<SigSet> {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?.trim();
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
        let set = parse("Name:\tdprobe\nSigBlk:\t0000000000000002\nSigIgn:\t0000000000001001\n").unwrap();
        assert!(set.contains(Signal::SIGHUP));
        assert!(set.contains(Signal::SIGPIPE));
        assert!(!set.contains(Signal::SIGINT), "taken from SigBlk, not SigIgn");
        assert_eq!(set.iter().count(), 2);
    }

    #[test]
    fn no_mask_is_no_answer() {
        assert!(parse("Name:\tdprobe\n").is_none());
        assert!(parse("SigIgn:\tzz\n").is_none());
    }

    #[test]
    fn this_process_ignores_what_it_set_to_ignore() {
        // Rust programs start with SIGPIPE ignored.
        assert!(ignored_signals().unwrap().contains(Signal::SIGPIPE));
    }
}
