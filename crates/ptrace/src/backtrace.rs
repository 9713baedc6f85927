//! A stopped thread's user stack, unwound in the tracer from its registers and its memory
//! (DWARF call-frame information, see `dprobe_stack`). The memory is read a page at a time,
//! each page once per stack, and the slots that return probes hijacked read as the real
//! return addresses, so callers with a pending return probe stay in the stack.

use dprobe_arch::{Addr, Memory, Regs};
use dprobe_stack::{StackMemory, Unwinder, UserRegs};

const PAGE: u64 = 4096;

/// The stack memory of one stopped thread.
struct Pages<'a> {
    memory: &'a mut dyn Memory,
    hijacked: &'a [(u64, u64)],
    /// Pages read so far: their address and bytes (`None`: unreadable).
    pages: Vec<(u64, Option<Box<[u8]>>)>,
}

impl Pages<'_> {
    fn page(&mut self, at: u64) -> Option<&[u8]> {
        let i = match self.pages.iter().position(|(p, _)| *p == at) {
            Some(i) => i,
            None => {
                let mut bytes = vec![0u8; PAGE as usize].into_boxed_slice();
                let read = self.memory.read(Addr(at), &mut bytes).is_ok();
                self.pages.push((at, read.then_some(bytes)));
                self.pages.len() - 1
            }
        };
        self.pages[i].1.as_deref()
    }
}

impl StackMemory for Pages<'_> {
    fn word(&mut self, addr: u64) -> Option<u64> {
        if let Some(&(_, real)) = self.hijacked.iter().find(|(slot, _)| *slot == addr) {
            return Some(real);
        }
        let page = addr & !(PAGE - 1);
        let within = (addr - page) as usize;
        if within + 8 > PAGE as usize {
            let mut word = [0u8; 8];
            return self.memory.read(Addr(addr), &mut word).ok().map(|()| u64::from_le_bytes(word));
        }
        let bytes = self.page(page)?;
        Some(u64::from_le_bytes(bytes[within..within + 8].try_into().ok()?))
    }
}

/// The user stack of the thread stopped at `regs` in process `pid`: at most `depth`
/// addresses, innermost first.
pub(crate) fn stack_of(
    unwinder: &mut Unwinder,
    pid: u32,
    regs: &Regs,
    memory: &mut dyn Memory,
    hijacked: &[(u64, u64)],
    depth: usize,
) -> Vec<u64> {
    let mut pages = Pages { memory, hijacked, pages: Vec::new() };
    let start = UserRegs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp };
    let mut out = Vec::new();
    unwinder.unwind(pid, start, &mut pages, depth, &mut out);
    out
}
