//! Thread names from `/proc`, for engines whose hits do not bring them. The cache is bounded:
//! it is emptied when full. A name is read again once it is [`FRESH_FOR`] old: a thread that
//! renames itself (`prctl(PR_SET_NAME)`, `pthread_setname_np`) is seen under its new name
//! from then on, without a read of `/proc` at every hit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const ENTRIES: usize = 4096;

/// How long a name read is taken as the thread's.
pub const FRESH_FOR: Duration = Duration::from_millis(100);

/// Names of the threads seen.
#[derive(Debug, Default)]
pub struct ThreadNames {
    names: HashMap<u32, (Vec<u8>, Instant)>,
}

impl ThreadNames {
    /// The name of thread `tid` of process `pid` (the last one read when it is gone; empty
    /// when it was never read).
    pub fn get(&mut self, pid: u32, tid: u32) -> &[u8] {
        if self.names.len() >= ENTRIES && !self.names.contains_key(&tid) {
            self.names.clear();
        }
        let now = Instant::now();
        let (name, read_at) = self.names.entry(tid).or_insert_with(|| (read_name(pid, tid), now));
        if now.duration_since(*read_at) >= FRESH_FOR {
            let again = read_name(pid, tid);
            // A thread that ended keeps the name it had.
            if !again.is_empty() {
                *name = again;
            }
            *read_at = now;
        }
        name
    }

    /// Forget thread `tid` (it exited; its number may be reused).
    pub fn forget(&mut self, tid: u32) {
        self.names.remove(&tid);
    }
}

fn read_name(pid: u32, tid: u32) -> Vec<u8> {
    let mut c = std::fs::read(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
    while c.last() == Some(&b'\n') {
        c.pop();
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that is renamed is seen under its new name once the old one is stale.
    #[test]
    fn a_renamed_thread_is_seen_under_its_new_name() {
        let pid = std::process::id();
        let (tell, told) = std::sync::mpsc::channel();
        let (end, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("before".into())
            .spawn(move || {
                let me = std::fs::read_link("/proc/thread-self").unwrap();
                tell.send(me.file_name().unwrap().to_str().unwrap().parse::<u32>().unwrap()).unwrap();
                ended.recv().unwrap();
            })
            .unwrap();
        let tid = told.recv().unwrap();
        let mut names = ThreadNames::default();
        let first = Instant::now();
        assert_eq!(names.get(pid, tid), b"before");
        std::fs::write(format!("/proc/self/task/{tid}/comm"), "after").unwrap();
        let cached = names.get(pid, tid).to_vec();
        // (On a machine stalled past the freshness, the name was read again: rightly "after".)
        if first.elapsed() < FRESH_FOR {
            assert_eq!(cached, b"before", "read again at most every {FRESH_FOR:?}");
        }
        std::thread::sleep(FRESH_FOR);
        assert_eq!(names.get(pid, tid), b"after");
        end.send(()).unwrap();
        thread.join().unwrap();
        std::thread::sleep(FRESH_FOR);
        assert_eq!(names.get(pid, tid), b"after", "a thread that ended keeps its last name");
    }
}
