//! Evaluating a fetch plan allocates nothing (so that it can run where allocating is not
//! allowed, inside a traced process's signal handler): a global allocator counts every
//! allocation and release the evaluating thread makes while it evaluates.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dprobe_arch::{Addr, Memory, MemoryFault, Regs};
use dprobe_core::fetch::{FetchContext, FetchPlan, Fetched};
use dprobe_spec::{parse_filter, parse_probe};

struct Counting;

static WHILE_WATCHED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if WATCHED.with(Cell::get) {
        WHILE_WATCHED.fetch_add(1, Relaxed);
    }
}

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Memory from 0x1000 to 0x2000 holding a pointer to a path; the rest faults.
struct Fake([u8; 0x1000]);
impl Memory for Fake {
    fn read(&mut self, addr: Addr, buf: &mut [u8]) -> Result<(), MemoryFault> {
        let fault = MemoryFault { addr, len: buf.len(), write: false };
        let start = addr.0.checked_sub(0x1000).ok_or(fault)? as usize;
        buf.copy_from_slice(self.0.get(start..start + buf.len()).ok_or(fault)?);
        Ok(())
    }
    fn write(&mut self, addr: Addr, data: &[u8]) -> Result<(), MemoryFault> {
        Err(MemoryFault { addr, len: data.len(), write: true })
    }
}

#[test]
fn evaluating_a_plan_and_its_filter_allocates_nothing() {
    let spec = parse_probe(
        "f%return ret=$retval:s32 path=+0(+8($arg1)):string fd=$arg2:u32 e=$errno c=$comm sp=%sp:x64 \
         bad=+0($arg3):string seven=$arg7:u64",
    )
    .unwrap();
    let filter = parse_filter("ret < 0 && path ~ \"/etc/*\" && c == \"cat\"", &["ret", "path", "c"]).unwrap();
    let plan = FetchPlan::compile(&spec.args, Some(&filter));
    let mut values = plan.values();
    let mut memory = Fake([0; 0x1000]);
    memory.0[0x108..0x110].copy_from_slice(&0x1200u64.to_le_bytes());
    memory.0[0x200..0x20b].copy_from_slice(b"/etc/hosts\0");
    memory.0[0x300..0x304].copy_from_slice(&2i32.to_le_bytes());
    let now = Regs { rax: u64::MAX, rsp: 0x1f00, ..Regs::default() };
    let entry = Regs { rdi: 0x1100, rsi: 3, rdx: 0x10, rsp: 0x1ef8, ..Regs::default() };
    let cx =
        FetchContext { regs: &now, entry_regs: Some(&entry), comm: b"cat", errno_addr: Some(0x1300), file_base: None };

    WATCHED.with(|w| w.set(true));
    let mut passed = 0;
    for _ in 0..100 {
        plan.evaluate(&cx, &mut memory, &mut values);
        passed += usize::from(plan.passes(&values));
    }
    WATCHED.with(|w| w.set(false));

    assert_eq!(WHILE_WATCHED.load(Relaxed), 0, "allocations while evaluating");
    assert_eq!(passed, 100);
    assert_eq!(values.get(1), Some(Fetched::Str { bytes: b"/etc/hosts", cut: false }));
    assert_eq!(values.get(3).and_then(|v| v.as_i64()), Some(2));
    assert_eq!(values.get(6), Some(Fetched::Fault(0x10)));
}
