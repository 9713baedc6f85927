//! Thread names from `/proc`, for engines whose hits do not bring them. The cache is bounded:
//! it is emptied when full.

use std::collections::HashMap;

const ENTRIES: usize = 4096;

/// Names of the threads seen.
#[derive(Debug, Default)]
pub struct ThreadNames {
    names: HashMap<u32, Vec<u8>>,
}

impl ThreadNames {
    /// The name of thread `tid` of process `pid` (empty when it is gone).
    pub fn get(&mut self, pid: u32, tid: u32) -> &[u8] {
        if self.names.len() >= ENTRIES && !self.names.contains_key(&tid) {
            self.names.clear();
        }
        self.names.entry(tid).or_insert_with(|| read_name(pid, tid))
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
