//! Breakpoints that disappear. Another tool's kernel uprobe on an instruction dprobe probes
//! writes the original instruction back when it is removed (the kernel keeps its own copy of
//! the instruction, read from the file, and finds dprobe's `int3` already there when it is
//! registered); a program may rewrite its own code. While such a uprobe is registered the
//! kernel takes every hit there itself, unseen by dprobe. What dprobe can do is look at its
//! breakpoints a few times a second, put back one whose original byte is back, and count it
//! ([`dprobe_core::Stats::rearmed`]): the loss is reported, never silent.

use std::time::{Duration, Instant};

use dprobe_arch::{Addr, Memory};
use dprobe_core::ProbeId;
use dprobe_sym::read_maps_of;

use crate::probes::origin_at;
use crate::tracee::Tracee;

/// How often the breakpoints are looked at.
const EVERY: Duration = Duration::from_millis(100);

impl Tracee {
    /// Look at the breakpoints if [`EVERY`] has passed since the last look.
    pub(crate) fn check_breakpoints_now_and_then(&mut self) {
        if self.breakpoints_checked.elapsed() >= EVERY {
            self.check_breakpoints();
            self.breakpoints_checked = Instant::now();
        }
    }

    /// Put back every breakpoint whose original byte is back, counting it against its probes;
    /// never where its file is no longer mapped (a library unloaded, not yet forgotten).
    pub(crate) fn check_breakpoints(&mut self) {
        if self.sites.is_empty() {
            return;
        }
        let Ok(maps) = read_maps_of(self.pid as u32) else { return };
        let mut gone: Vec<(Addr, Vec<u8>, Vec<ProbeId>)> = Vec::new();
        for (addr, site) in &self.sites {
            if site.origin.is_some() && origin_at(&maps, *addr) != site.origin {
                continue;
            }
            let patch = site.prepared.arm();
            let mut now = vec![0u8; patch.old.len()];
            if self.memory.read(*addr, &mut now).is_ok() && now == patch.old {
                gone.push((*addr, patch.new, site.probes.clone()));
            }
        }
        for (addr, int3, probes) in gone {
            if self.memory.write(addr, &int3).is_err() {
                continue;
            }
            for id in probes {
                if let Some(p) = self.probes.get_mut(&id) {
                    p.stats.rearmed += 1;
                }
            }
        }
    }
}
