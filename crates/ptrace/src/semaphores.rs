//! The semaphores of static probes (USDT) in a traced process: each one placed raises its
//! counter by one, and removing the probes lowers it again, whoever else counts on it (another
//! tracer, the kernel): a program tests its semaphore to prepare a probe's arguments only
//! while something traces it.
//!
//! A probe placed by the tracee ([`ProbeDef::semaphore`]) raises its semaphore wherever it is
//! placed: in a library when the program loads it, in a program a followed process executes.
//! A forked child inherits the raised counter with the probes: followed, it lowers it when let
//! go; not followed, it gets it back lowered with its original code.
//!
//! [`ProbeDef::semaphore`]: crate::ProbeDef::semaphore

use dprobe_arch::{Addr, Memory};
use dprobe_core::{Placement, ProbeId};
use dprobe_sym::{load_bias_of, Mapping, Semaphore};

use crate::tracee::Tracee;

impl Tracee {
    /// Raise the semaphore of probe `id`, just placed, where its object is mapped (`maps`).
    pub(crate) fn raise_semaphore(&mut self, id: ProbeId, semaphore: &Semaphore, maps: &[Mapping]) {
        let Some(bias) = load_bias_of(maps, &semaphore.object) else {
            let why = format!("`{}` is not mapped in process {}", semaphore.object, self.pid);
            self.unraised.push((id, why));
            return;
        };
        let addr = Addr(semaphore.addr.wrapping_add(bias));
        match add(&mut self.memory, addr, 1) {
            Ok(()) => self.raised.push((id, addr)),
            Err(()) => self.unraised.push((id, format!("cannot write the semaphore at {addr}"))),
        }
    }

    /// Why probe `id`'s semaphore could not be raised, if it could not.
    pub fn semaphore_not_raised(&self, id: ProbeId) -> Option<&str> {
        self.unraised.iter().find(|(i, _)| *i == id).map(|(_, why)| why.as_str())
    }

    /// Lower every semaphore raised in this process (the probes are about to go).
    pub fn lower_semaphores(&mut self) {
        for (_, addr) in std::mem::take(&mut self.raised) {
            let _ = add(&mut self.memory, addr, -1);
        }
    }

    /// Lower the semaphores raised here in `child`'s copy of this memory (a fork let go).
    pub(crate) fn lower_semaphores_in(&self, child: &mut dyn Memory) {
        for (_, addr) in &self.raised {
            let _ = add(child, *addr, -1);
        }
    }

    /// Forget the semaphores of probes whose code was unmapped (`dlclose`): their counters
    /// went with it, and the probe raises a new one when its library is loaded again.
    pub(crate) fn forget_unloaded_semaphores(&mut self) {
        let probes = &self.probes;
        self.raised.retain(|(id, _)| probes.get(id).is_some_and(|p| p.stats.placement != Placement::Unloaded));
    }
}

/// Add `delta` to the 16-bit counter at `addr`, never past 0 or 0xffff.
fn add(memory: &mut dyn Memory, addr: Addr, delta: i32) -> Result<(), ()> {
    let mut bytes = [0u8; 2];
    memory.read(addr, &mut bytes).map_err(|_| ())?;
    let now = i32::from(u16::from_le_bytes(bytes));
    let new = (now + delta).clamp(0, i32::from(u16::MAX)) as u16;
    memory.write(addr, &new.to_le_bytes()).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dprobe_arch::MemoryFault;

    struct Two([u8; 2]);

    impl Memory for Two {
        fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
            buf.copy_from_slice(&self.0[..buf.len()]);
            let _ = addr;
            Ok(())
        }
        fn write(&mut self, _addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
            self.0[..data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    #[test]
    fn counters_go_up_and_down_by_one_and_stay_in_range() {
        let mut m = Two(2u16.to_le_bytes());
        add(&mut m, Addr(0), 1).unwrap();
        assert_eq!(u16::from_le_bytes(m.0), 3, "another tracer's 2, and ours");
        add(&mut m, Addr(0), -1).unwrap();
        assert_eq!(u16::from_le_bytes(m.0), 2, "theirs stays");
        let mut m = Two([0, 0]);
        add(&mut m, Addr(0), -1).unwrap();
        assert_eq!(m.0, [0, 0]);
        let mut m = Two([0xff, 0xff]);
        add(&mut m, Addr(0), 1).unwrap();
        assert_eq!(m.0, [0xff, 0xff]);
    }
}
