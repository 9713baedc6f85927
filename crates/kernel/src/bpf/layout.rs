//! The bytes of the program's read-only globals `struct source` and `struct test`
//! (aggregate.bpf.c), little-endian and laid out as clang lays the C structs out for BPF.

use dprobe_spec::CmpOp;

use super::filter::{Test, MAX_TESTS};
use super::{Origin, ValueSource, MAX_DEREFS};

/// `sizeof(struct source)`.
pub const SOURCE_BYTES: usize = 32 + 8 * MAX_DEREFS;
/// `sizeof(struct test)`.
pub const TEST_BYTES: usize = 32 + SOURCE_BYTES;

/// `struct source` for `v` (`None`: `SOURCE_NONE`).
pub fn source(v: Option<&ValueSource>) -> [u8; SOURCE_BYTES] {
    let mut out = [0u8; SOURCE_BYTES];
    let Some(v) = v else { return out };
    let (kind, offset, constant): (u32, u32, i64) = match v.origin {
        Origin::Regs(o) => (1, o, 0),
        Origin::Record(o) => (2, o, 0),
        Origin::Constant(c) => (3, 0, c),
    };
    out[0..4].copy_from_slice(&kind.to_le_bytes());
    out[4..8].copy_from_slice(&offset.to_le_bytes());
    out[8..16].copy_from_slice(&constant.to_le_bytes());
    out[16..20].copy_from_slice(&(v.derefs.len() as u32).to_le_bytes());
    out[20..24].copy_from_slice(&v.bits.to_le_bytes());
    out[24..28].copy_from_slice(&u32::from(v.signed).to_le_bytes());
    out[28..32].copy_from_slice(&u32::from(v.user_memory).to_le_bytes());
    for (i, d) in v.derefs.iter().take(MAX_DEREFS).enumerate() {
        out[32 + 8 * i..40 + 8 * i].copy_from_slice(&d.to_le_bytes());
    }
    out
}

/// The array `struct test filter[MAX_TESTS]` holding `tests` (at most [`MAX_TESTS`]).
pub fn tests(tests: &[Test]) -> Vec<u8> {
    let mut out = vec![0u8; MAX_TESTS * TEST_BYTES];
    for (t, slot) in tests.iter().zip(out.chunks_exact_mut(TEST_BYTES)) {
        let (code, literal): (u32, i64) = match t {
            Test::Compare { op, literal, .. } => (compare_code(*op), *literal),
            Test::Comm { equal: true, .. } => (7, 0),
            Test::Comm { equal: false, .. } => (8, 0),
            Test::And => (9, 0),
            Test::Or => (10, 0),
            Test::Not => (11, 0),
            Test::Constant(b) => (12, i64::from(*b)),
        };
        slot[0..4].copy_from_slice(&code.to_le_bytes());
        slot[8..16].copy_from_slice(&literal.to_le_bytes());
        if let Test::Comm { name, .. } = t {
            slot[16..32].copy_from_slice(name);
        }
        if let Test::Compare { value, .. } = t {
            slot[32..].copy_from_slice(&source(Some(value)));
        }
    }
    out
}

/// `TEST_EQ` .. `TEST_GE`.
fn compare_code(op: CmpOp) -> u32 {
    match op {
        CmpOp::Eq => 1,
        CmpOp::Ne => 2,
        CmpOp::Lt => 3,
        CmpOp::Le => 4,
        CmpOp::Gt => 5,
        CmpOp::Ge => 6,
        CmpOp::Glob => unreachable!("a pattern is no comparison of numbers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_at_their_c_offsets() {
        let v =
            ValueSource { origin: Origin::Regs(112), derefs: vec![16, -8], user_memory: true, bits: 32, signed: true };
        let s = source(Some(&v));
        assert_eq!(s[0..4], 1u32.to_le_bytes());
        assert_eq!(s[4..8], 112u32.to_le_bytes());
        assert_eq!(s[16..20], 2u32.to_le_bytes());
        assert_eq!(s[20..24], 32u32.to_le_bytes());
        assert_eq!((s[24], s[28]), (1, 1));
        assert_eq!(s[40..48], (-8i64).to_le_bytes());
        assert_eq!(source(None), [0; SOURCE_BYTES]);
        let t = tests(&[Test::Compare { op: CmpOp::Ge, value: v, literal: -3 }, Test::Not]);
        assert_eq!(t.len(), MAX_TESTS * TEST_BYTES);
        assert_eq!((t[0], &t[8..16], &t[32..TEST_BYTES]), (6, &(-3i64).to_le_bytes()[..], &s[..]));
        assert_eq!(t[TEST_BYTES], 11);
    }
}
