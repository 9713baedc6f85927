//! Where a variable is at one address: its DWARF location (an expression, or the entry of a
//! location list valid there) turned into a register or a memory address that dprobe's fetch
//! model reads (`%di`, `-20(%bp)`, `+12(%sp)`), or the reason it cannot be.

use dprobe_spec::{Fetch, Register};
use gimli::{AttributeValue, Operation};

use crate::debuginfo::{DebugInfo, Reader};
use crate::types::UnitCx;
use crate::VarError;

/// Where a value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// In a register (its kernel name).
    Register(&'static str),
    /// In memory at the value of `base` plus `offset`.
    Memory { base: Fetch, offset: i64 },
    /// In memory at a link-time address of the binary (a static or global variable): where
    /// the binary is loaded moves it, so it is read relative to the probe's own address.
    Static(u64),
    /// A static the compiler split into pieces, some kept in memory.
    StaticPieces(Vec<Piece>),
}

/// `size` bytes at `start` in a variable: at a link-time address, or optimized out (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    pub start: u64,
    pub size: u64,
    pub address: Option<u64>,
}

/// A location made of pieces that are each a static address or nothing (`DW_OP_piece 16,
/// DW_OP_addrx 6, DW_OP_piece 8`: only bytes 16-23 kept), or `None` for any other.
fn static_pieces(cx: &UnitCx<'_>, list: &[Operation<Reader>]) -> Result<Option<Vec<Piece>>, VarError> {
    let mut pieces = Vec::new();
    let (mut start, mut address) = (0, None);
    for op in list {
        match op {
            Operation::Address { address: a } if address.is_none() => address = Some(*a),
            Operation::AddressIndex { index } if address.is_none() => {
                address = Some(cx.dwarf.address(cx.unit, *index)?)
            }
            Operation::Piece { size_in_bits, bit_offset: None } if size_in_bits % 8 == 0 => {
                let size = size_in_bits / 8;
                pieces.push(Piece { start, size, address: address.take() });
                start += size;
            }
            _ => return Ok(None),
        }
    }
    Ok(address.is_none().then_some(pieces))
}

/// A variable's location at an address.
#[derive(Debug, Clone)]
pub(crate) enum Located {
    /// There.
    At(Place),
    /// No location here; these are the address ranges where it has one (empty: nowhere).
    Missing(Vec<(u64, u64)>),
    /// A location dprobe cannot read, and why.
    Refused(String),
}

/// The kernel name of x86-64 DWARF register `n`.
pub(crate) fn register_name(n: u16) -> Option<&'static str> {
    const NAMES: [&str; 16] =
        ["ax", "dx", "cx", "bx", "si", "di", "bp", "sp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    NAMES.get(usize::from(n)).copied()
}

fn reg(n: gimli::Register) -> Result<&'static str, String> {
    register_name(n.0).ok_or_else(|| {
        format!("it is in DWARF register {} (not a general-purpose register; vector registers are not fetched)", n.0)
    })
}

/// The value of a frame base or CFA: `register + offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Base {
    pub register: &'static str,
    pub offset: i64,
}

/// The canonical frame address at link-time address `pc` from the binary's `.eh_frame`; at a
/// function's first instruction without call-frame information it is `%sp + 8`.
pub(crate) fn cfa_at(info: &DebugInfo, pc: u64, function_entry: bool) -> Result<Base, String> {
    let entry = Base { register: "sp", offset: 8 };
    let Some(frames) = info.call_frames() else {
        return if function_entry { Ok(entry) } else { Err("the binary has no .eh_frame to find the frame".into()) };
    };
    use gimli::UnwindSection;
    let mut cx = gimli::UnwindContext::<usize>::new();
    match frames.eh_frame.unwind_info_for_address(&frames.bases, &mut cx, pc, gimli::EhFrame::cie_from_offset) {
        Ok(row) => match row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register, offset } => {
                Ok(Base { register: reg(*register)?, offset: *offset })
            }
            gimli::CfaRule::Expression(_) => Err("the frame address here is a DWARF expression".into()),
        },
        Err(_) if function_entry => Ok(entry),
        Err(e) => Err(format!("no call-frame information for this address ({e})")),
    }
}

/// What an expression says about where a value is, given the frame base when it needs one.
fn evaluate(
    cx: &UnitCx<'_>,
    expr: gimli::Expression<Reader>,
    frame_base: &dyn Fn() -> Result<Base, String>,
) -> Result<Located, VarError> {
    let mut ops = expr.operations(cx.unit.encoding());
    let mut list = Vec::new();
    while let Some(op) = ops.next()? {
        list.push(op);
    }
    let refuse = |why: &str| Ok(Located::Refused(why.to_owned()));
    if list.is_empty() {
        return Ok(Located::Missing(Vec::new()));
    }
    if let Some(pieces) = static_pieces(cx, &list)? {
        return Ok(Located::At(Place::StaticPieces(pieces)));
    }
    for op in &list {
        match op {
            Operation::TLS => {
                return refuse(
                    "it is thread-local (__thread): each thread has its own copy, at an address only the thread's \
                     TLS block gives, which dprobe does not read",
                )
            }
            Operation::StackValue => {
                return refuse("its value is computed from others here (DW_OP_stack_value), not stored")
            }
            Operation::Piece { .. } => return refuse("it is split in pieces here (DW_OP_piece)"),
            Operation::ImplicitValue { .. } => return refuse("the compiler replaced it by a constant here"),
            Operation::ImplicitPointer { .. } => return refuse("it points to a value the compiler optimized away"),
            Operation::EntryValue { .. } => {
                return refuse("only its value at the function's entry is known here (DW_OP_entry_value)")
            }
            _ => {}
        }
    }
    let place = match list.as_slice() {
        [Operation::Register { register }] => match reg(*register) {
            Ok(r) => Place::Register(r),
            Err(why) => return Ok(Located::Refused(why)),
        },
        [Operation::RegisterOffset { register, offset, .. }] => match reg(*register) {
            Ok(r) => Place::Memory { base: Fetch::Reg(Register(r)), offset: *offset },
            Err(why) => return Ok(Located::Refused(why)),
        },
        [Operation::FrameOffset { offset }] => match frame_base() {
            Ok(b) => Place::Memory { base: Fetch::Reg(Register(b.register)), offset: b.offset + offset },
            Err(why) => return Ok(Located::Refused(why)),
        },
        [Operation::CallFrameCFA] => return refuse("its location is the frame address itself"),
        [Operation::Address { address }] => Place::Static(*address),
        [Operation::AddressIndex { index }] => Place::Static(cx.dwarf.address(cx.unit, *index)?),
        _ => return refuse("its location is a DWARF expression dprobe does not evaluate"),
    };
    Ok(Located::At(place))
}

/// The frame base of a subprogram at `pc`: `DW_AT_frame_base` (the CFA, or a register).
pub(crate) fn frame_base(
    info: &DebugInfo,
    cx: &UnitCx<'_>,
    attr: Option<AttributeValue<Reader>>,
    pc: u64,
    function_entry: bool,
) -> Result<Base, String> {
    let Some(AttributeValue::Exprloc(expr)) = attr else {
        return Err("the function has no frame base".into());
    };
    let mut ops = expr.operations(cx.unit.encoding());
    let first = ops.next().map_err(|e| e.to_string())?;
    let rest = ops.next().map_err(|e| e.to_string())?;
    match (first, rest) {
        (Some(Operation::CallFrameCFA), None) => cfa_at(info, pc, function_entry),
        (Some(Operation::Register { register }), None) => Ok(Base { register: reg(register)?, offset: 0 }),
        (Some(Operation::RegisterOffset { register, offset, .. }), None) => {
            Ok(Base { register: reg(register)?, offset })
        }
        _ => Err("the function's frame base is an expression dprobe does not evaluate".into()),
    }
}

/// Where the variable `entry` is at link-time address `pc`.
pub(crate) fn locate(
    cx: &UnitCx<'_>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
    pc: u64,
    frame_base: &dyn Fn() -> Result<Base, String>,
) -> Result<(Located, bool), VarError> {
    let Some(attr) = entry.attr_value(gimli::DW_AT_location)? else {
        if entry.attr_value(gimli::DW_AT_const_value)?.is_some() {
            return Ok((Located::Refused("the compiler replaced it by a constant".into()), false));
        }
        return Ok((Located::Missing(Vec::new()), false));
    };
    if let AttributeValue::Exprloc(expr) = attr {
        return Ok((evaluate(cx, expr, frame_base)?, false));
    }
    let Some(mut list) = cx.dwarf.attr_locations(cx.unit, attr)? else {
        return Ok((Located::Missing(Vec::new()), true));
    };
    let mut ranges = Vec::new();
    while let Some(item) = list.next()? {
        if item.range.begin <= pc && pc < item.range.end {
            return Ok((evaluate(cx, item.data, frame_base)?, true));
        }
        if item.range.begin < item.range.end {
            ranges.push((item.range.begin, item.range.end));
        }
    }
    Ok((Located::Missing(ranges), true))
}
