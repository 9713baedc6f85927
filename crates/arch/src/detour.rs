//! The detour of a jump-optimized probe: the code its `jmp rel32` leads to.
//!
//! Layout, from the detour's address `at`:
//!
//! ```text
//! at+0   the probe address (8 bytes), or an engine's word (`Detour::set_word`): how the
//!        dispatcher finds the site from the return address
//! at+8   the address of the engine's entry stub (8 bytes), called through memory (any distance)
//! at+16  redirect: ret 128           ; to where a handler sent RIP, see below
//! at+24  entry:    lea rsp,[rsp-136] ; skip the red zone, and keep one slot for a redirect
//!                  call [at+8]       ; the stub saves every register, dispatches, restores
//!                  lea rsp,[rsp+136]
//!        window:   the relocated instructions, then a jump back after them
//! ```
//!
//! The stub returns to the instruction after the call, or, when a handler moved RIP (or the
//! stack pointer), with the stack pointer at `new_rsp - 136`, where it has stored the new RIP,
//! to `redirect`: `ret 128` then jumps there and leaves the stack pointer at `new_rsp`.
//! Nothing is written into the red zone of the probed code, and no register or flag is
//! changed on the way to the window.

use crate::{relocate, Addr, CodeWriter, Insn, NotOptimized, Relocated};

/// Bytes below the stack pointer the probed code may use without moving it (System V).
const RED_ZONE: i32 = 128;
/// Offset of the `ret 128` reached when a handler moves RIP.
pub const DETOUR_REDIRECT: u64 = 16;
/// Offset of the detour's entry (the target of the probe's jump).
pub const DETOUR_ENTRY: u64 = 24;
/// Offset of the return address of the detour's call to the stub.
pub const DETOUR_RETURN: u64 = DETOUR_ENTRY + 8 + 6;
/// Offset of the relocated window.
pub const DETOUR_WINDOW: u64 = DETOUR_RETURN + 8;
/// How far below the stack pointer at the probe the stub's return address is stored.
pub const DETOUR_STACK_SKIP: u64 = RED_ZONE as u64 + 8;

/// A detour's code and where its parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detour {
    /// Where it runs from.
    pub addr: Addr,
    /// The probe address.
    pub site: Addr,
    /// All of it, from `addr`.
    pub code: Vec<u8>,
    /// The relocated window (at `addr + DETOUR_WINDOW`).
    pub window: Relocated,
}

impl Detour {
    /// The jump's target.
    pub fn entry(&self) -> Addr {
        self.addr.offset(DETOUR_ENTRY)
    }

    /// Replace the word at +0 (the probe address) with an engine's own, e.g. the address of
    /// its record of the probe, which its stub then finds without a lookup.
    pub fn set_word(&mut self, word: u64) {
        self.code[..8].copy_from_slice(&word.to_le_bytes());
    }

    /// The `jmp rel32` that replaces the window's first five bytes.
    pub fn jump(&self) -> [u8; 5] {
        crate::jmp_rel32(self.site, self.entry()).expect("the entry is in reach: checked when the detour was built")
    }
}

/// Build the detour of the probe at `site` whose window is `window` (as
/// [`crate::can_optimize`] returned it), to run from `at`, calling `stub`.
pub fn detour_code(site: Addr, window: &[Insn], at: Addr, stub: Addr) -> Result<Detour, NotOptimized> {
    let entry = at.offset(DETOUR_ENTRY);
    let rel = entry.0.wrapping_sub(site.offset(5).0) as i64;
    if i32::try_from(rel).is_err() {
        return Err(NotOptimized::NoDetourPage { addr: site, reason: format!("{at} is out of a jump's reach") });
    }
    let encode = |e: crate::EncodeError| NotOptimized::Relocate(crate::RelocateError::Encode(e.0));
    let mut redirect = CodeWriter::new();
    redirect.ret_pop(RED_ZONE as u16);
    let redirect = redirect.finish(at.offset(DETOUR_REDIRECT)).map_err(encode)?;
    let mut head = CodeWriter::new();
    head.move_rsp(-(DETOUR_STACK_SKIP as i32));
    head.call_through(at.offset(8));
    head.move_rsp(DETOUR_STACK_SKIP as i32);
    let head = head.finish(entry).map_err(encode)?;
    assert_eq!(head.offsets, [0, 8, 14], "the detour's head has a fixed layout");
    let window = relocate(window, at.offset(DETOUR_WINDOW))?;
    let mut code = Vec::with_capacity(DETOUR_WINDOW as usize + window.code.len());
    code.extend(site.0.to_le_bytes());
    code.extend(stub.0.to_le_bytes());
    code.extend(&redirect.bytes);
    code.resize(DETOUR_ENTRY as usize, 0xcc);
    code.extend(&head.bytes);
    code.extend(&window.code);
    Ok(Detour { addr: at, site, code, window })
}
