//! A function on a page that cannot be read is refused with the reason (its mapping is no
//! code, found as the batch's probes are resolved, before their functions' code is read
//! together), the batch registers nothing and the functions around it keep their bytes, and the
//! same batch goes in once the page can be read again. (How the reading ahead skips a piece it
//! cannot read is `engine.rs`'s unit test.)
use dprobe_inproc::{list, register_all, unregister_all, Addr, Kprobe, PreAction, ProbeError};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

std::arch::global_asm!(
    ".text",
    ".globl urc_before",
    ".type urc_before,@function",
    "urc_before:",
    "lea rax, [rdi + 1]",
    "ret",
    ".size urc_before, . - urc_before",
    // A page of its own, made unreadable by the test, and a function on the page after it.
    ".pushsection .text.urc_pages,\"ax\",@progbits",
    ".p2align 12",
    ".globl urc_hidden",
    ".type urc_hidden,@function",
    "urc_hidden:",
    "lea rax, [rdi + 2]",
    "ret",
    ".size urc_hidden, . - urc_hidden",
    ".p2align 12",
    ".globl urc_after",
    ".type urc_after,@function",
    "urc_after:",
    "lea rax, [rdi + 3]",
    "ret",
    ".size urc_after, . - urc_after",
    ".popsection",
);

extern "C" {
    fn urc_before(x: u64) -> u64;
    fn urc_hidden(x: u64) -> u64;
    fn urc_after(x: u64) -> u64;
}

static HITS: AtomicU64 = AtomicU64::new(0);

fn at(f: unsafe extern "C" fn(u64) -> u64) -> Addr {
    Addr(f as *const () as usize as u64)
}

fn bytes(a: Addr) -> Vec<u8> {
    // SAFETY: the first bytes of a function of this file, read while its page is readable.
    unsafe { std::slice::from_raw_parts(a.0 as *const u8, 5).to_vec() }
}

fn batch() -> Vec<Kprobe> {
    [at(urc_before), at(urc_hidden), at(urc_after)]
        .into_iter()
        .map(|a| {
            Kprobe::addr(a).pre(|_| {
                HITS.fetch_add(1, Relaxed);
                PreAction::Continue
            })
        })
        .collect()
}

fn protect(prot: libc::c_int) {
    // SAFETY: the page holds `urc_hidden` alone (aligned to a page, the next function a page
    // further on); no thread runs it while it is unreadable.
    assert_eq!(unsafe { libc::mprotect(at(urc_hidden).0 as *mut libc::c_void, 4096, prot) }, 0);
}

#[test]
fn a_function_whose_code_cannot_be_read_refuses_its_batch() {
    let (before, after) = (bytes(at(urc_before)), bytes(at(urc_after)));
    protect(libc::PROT_NONE);
    let refused = register_all(batch());
    protect(libc::PROT_READ | libc::PROT_EXEC);
    match refused {
        Err(ProbeError::InvalidAddress { addr, reason }) => {
            assert_eq!(addr, at(urc_hidden));
            assert!(reason.contains("not code (a ---p mapping"), "{reason}");
        }
        other => panic!("expected the unreadable function refused, got {other:?}"),
    }
    assert_eq!((bytes(at(urc_before)), bytes(at(urc_after))), (before.clone(), after.clone()));
    let probed = [at(urc_before), at(urc_hidden), at(urc_after)];
    assert!(list().iter().all(|p| !probed.contains(&p.addr)), "nothing of the batch is left");
    // Readable again: the same batch goes in, every call counted.
    let probes = register_all(batch()).expect("the batch, readable");
    // SAFETY: the functions only add.
    let sum = unsafe { urc_before(10) + urc_hidden(10) + urc_after(10) };
    assert_eq!((sum, HITS.load(Relaxed)), (36, 3));
    unregister_all(probes).expect("unregister");
    assert_eq!((bytes(at(urc_before)), bytes(at(urc_after))), (before, after));
}
