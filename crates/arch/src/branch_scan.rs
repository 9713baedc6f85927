//! One window's check against an object's direct branches, without decoding the whole object.
//!
//! [`CodeBranches::decode`](crate::CodeBranches::decode) decodes every instruction of an
//! object once (libc: 1.4 MB of code, 6-10 ms here), which a program that probes a few
//! functions of a large library pays at each start: a traced command's every `exec` under
//! the agent. A direct branch's target is its immediate plus the address of the instruction's
//! end, so the places a branch could land are found without decoding: every `call`, `jmp`,
//! `jcc` or `xbegin` opcode byte followed by a 4-byte immediate is indexed by the target it
//! would have ([`BranchCandidates`], one pass over the bytes), and the branches with a 1-byte
//! immediate (`jmp`, `jcc`, `loop`, `jrcxz`) are looked for within their reach of a window.
//! A window's candidates are then decoded in their places, from the start of the stretch of
//! code the whole-object decoding would decode them in, with the same rules: the branches
//! found are exactly those the whole decoding keeps for that window (a test compares both
//! over libc and over random code).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use crate::object_branches::{decode_run, CodeRegion};
use crate::{Addr, CodeBranches};

/// The longest x86 instruction: a branch's opcode lies at most this far into it.
const LONGEST: u64 = 15;

/// Function starts, sorted and without repeats: where the whole-object decoding restarts,
/// and the branch targets it does not keep (see [`CodeBranches`](crate::CodeBranches)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionStarts(Vec<u64>);

impl FunctionStarts {
    /// `starts`, in any order.
    pub fn new(starts: &[Addr]) -> FunctionStarts {
        let mut sorted: Vec<u64> = starts.iter().map(|a| a.0).collect();
        sorted.sort_unstable();
        sorted.dedup();
        FunctionStarts(sorted)
    }

    pub(crate) fn as_slice(&self) -> &[u64] {
        &self.0
    }

    /// The starts, in address order.
    pub fn addresses(&self) -> &[u64] {
        &self.0
    }

    /// Starts already in address order without repeats (another process's
    /// [`FunctionStarts::addresses`]); `None` when they are not.
    pub fn from_sorted(starts: Vec<u64>) -> Option<FunctionStarts> {
        starts.windows(2).all(|w| w[0] < w[1]).then_some(FunctionStarts(starts))
    }
}

/// Where an object's branches with a 4-byte or 2-byte immediate could land: every place in
/// its code that holds such a branch's opcode followed by an immediate, read as one whatever
/// the instruction boundaries really are, by target. Built in one pass over the code (no
/// decoding) and a counting sort by target; a window is then checked by decoding its few
/// candidates in their places.
///
/// Decoding in place is bounded: an object with few known function starts has long
/// stretches, each decoded whole for a candidate in it. A window whose stretches would bring
/// those decoded for the object's windows past a quarter of its code's size
/// ([`IN_PLACE_SHARE`]) has its object's every branch decoded once instead
/// ([`CodeBranches`](crate::CodeBranches)), and it and the windows after are looked up there.
/// A batch of many windows in one object (every function of a library) then costs at most a
/// quarter more than decoding it whole, and a few windows a few stretches.
#[derive(Debug, Default)]
pub struct BranchCandidates {
    /// The lowest address of the code: the offsets below are from it.
    base: u64,
    /// For each [`BUCKET`]-byte stretch of the code from `base`, where its candidates begin in
    /// `opcodes` (one more entry than stretches: the end).
    buckets: Vec<u32>,
    /// The candidates' opcodes (offsets from `base`), by the stretch their target lies in.
    opcodes: Vec<u32>,
    /// The size of the code.
    size: u64,
    /// How many bytes the windows' checks decoded so far.
    decoded: AtomicU64,
    /// How many they may decode in place: `size / IN_PLACE_SHARE`.
    in_place: u64,
    /// Every branch, once a window's check would take `decoded` past `in_place`.
    whole: OnceLock<CodeBranches>,
}

/// The windows' checks decode in place up to `1 / IN_PLACE_SHARE` of the code's size.
const IN_PLACE_SHARE: u64 = 4;

/// Call `f` with each place in `code` where an opcode with a long immediate begins (as if an
/// instruction began there), in address order, and how far on its immediate is: `call` and
/// `jmp` (`e8`, `e9`) one byte, `jcc` (`0f 80`-`0f 8f`) and `xbegin` (`c7 f8`) two.
///
/// About one byte in twenty of compiled code begins one: the bytes are compared eight at a
/// time (each with the byte after it), and only the places found are visited.
fn each_long_branch_opcode(code: &[u8], mut f: impl FnMut(usize, usize)) {
    const fn splat(b: u8) -> u64 {
        u64::from_le_bytes([b; 8])
    }
    // The high bit of each byte of `x` that is zero, and no other bit. Exact for every byte:
    // no sum carries out of its byte.
    let zero_bytes = |x: u64| !(((x & splat(0x7f)) + splat(0x7f)) | x) & splat(0x80);
    let immediate_at = |i: usize| if code[i] >= 0xe8 { 1 } else { 2 };
    let mut k = 0;
    while k + 8 < code.len() {
        let word = u64::from_le_bytes(code[k..k + 8].try_into().expect("eight bytes"));
        let next = u64::from_le_bytes(code[k + 1..k + 9].try_into().expect("eight bytes"));
        let calls = zero_bytes((word & splat(0xfe)) ^ splat(0xe8));
        let jccs = zero_bytes(word ^ splat(0x0f)) & zero_bytes((next & splat(0xf0)) ^ splat(0x80));
        let xbegins = zero_bytes(word ^ splat(0xc7)) & zero_bytes(next ^ splat(0xf8));
        let mut found = calls | jccs | xbegins;
        while found != 0 {
            let i = k + (found.trailing_zeros() / 8) as usize;
            f(i, immediate_at(i));
            found &= found - 1;
        }
        k += 8;
    }
    for i in k..code.len() {
        if matches!((code[i], code.get(i + 1)), (0xe8 | 0xe9, _) | (0x0f, Some(0x80..=0x8f)) | (0xc7, Some(0xf8))) {
            f(i, immediate_at(i));
        }
    }
}

/// Whether one of the [`LONGEST`] - 1 bytes before `i` in `code` is a `66` (a prefix the
/// opcode at `i` may have): the sixteen bytes before it compared at once.
fn prefix_66_before(code: &[u8], i: usize) -> bool {
    const ONES: u128 = u128::from_le_bytes([0x01; 16]);
    const HIGHS: u128 = u128::from_le_bytes([0x80; 16]);
    const PREFIXES: u128 = u128::from_le_bytes([0x66; 16]);
    let reach = LONGEST as usize - 1;
    let Some(bytes) = i.checked_sub(16).map(|from| &code[from..i]) else {
        return code[i.saturating_sub(reach)..i].contains(&0x66);
    };
    let word = u128::from_le_bytes(bytes.try_into().expect("sixteen bytes"));
    // A byte of `x` is zero where the code holds a `66`; the bytes out of reach (the lowest)
    // are made all ones. No borrow reaches a byte below the lowest zero one, so whether there
    // is one is exact.
    let out_of_reach = (1u128 << (8 * (16 - reach))) - 1;
    let x = (word ^ PREFIXES) | out_of_reach;
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// How many bytes of targets share one entry of [`BranchCandidates`]' index.
const BUCKET: u64 = 64;

impl BranchCandidates {
    /// The candidates of `regions` (an object's executable sections).
    pub fn new(regions: &[CodeRegion<'_>]) -> BranchCandidates {
        let base = regions.iter().map(|r| r.0 .0).min().unwrap_or(0);
        let end = regions.iter().map(|r| r.0 .0 + r.1.len() as u64).max().unwrap_or(0);
        if end.saturating_sub(base) > u64::from(u32::MAX) {
            // Code larger than 4 GiB: every window is decoded around (no such object exists).
            return BranchCandidates::default();
        }
        // (target offset, opcode offset), targets inside the code only.
        let mut found: Vec<(u32, u32)> = Vec::with_capacity(regions.iter().map(|r| r.1.len() / 16).sum());
        for &(start, code) in regions {
            // The opcode at `i`, its immediate `at` bytes on.
            let mut opcode = |i: usize, at: usize| {
                let imm_at = i + at;
                let imm_end = start.0 + imm_at as u64;
                let mut push = |target: u64| {
                    if (base..end).contains(&target) {
                        found.push(((target - base) as u32, (start.0 + i as u64 - base) as u32));
                    }
                };
                if let Some(imm) = code.get(imm_at..imm_at + 4) {
                    let imm = i32::from_le_bytes([imm[0], imm[1], imm[2], imm[3]]);
                    push((imm_end + 4).wrapping_add(imm as i64 as u64));
                }
                // A 2-byte immediate: the operand size a `66` prefix gives on some processors
                // (and `xbegin` on all), so only behind such a byte.
                if let Some(imm) = code.get(imm_at..imm_at + 2) {
                    if prefix_66_before(code, i) {
                        let imm = i16::from_le_bytes([imm[0], imm[1]]);
                        push((imm_end + 2).wrapping_add(imm as i64 as u64));
                    }
                }
            };
            each_long_branch_opcode(code, &mut opcode);
        }
        let stretches = ((end - base).div_ceil(BUCKET)) as usize;
        let mut buckets = vec![0u32; stretches + 1];
        for &(target, _) in &found {
            buckets[(u64::from(target) / BUCKET) as usize + 1] += 1;
        }
        for i in 1..buckets.len() {
            buckets[i] += buckets[i - 1];
        }
        let mut next = buckets.clone();
        let mut opcodes = vec![0u32; found.len()];
        for &(target, opcode) in &found {
            let slot = &mut next[(u64::from(target) / BUCKET) as usize];
            opcodes[*slot as usize] = opcode;
            *slot += 1;
        }
        let size = regions.iter().map(|r| r.1.len() as u64).sum();
        BranchCandidates::of(base, size, buckets, opcodes)
    }

    /// The index of these parts, nothing decoded yet.
    fn of(base: u64, size: u64, buckets: Vec<u32>, opcodes: Vec<u32>) -> BranchCandidates {
        let in_place = size / IN_PLACE_SHARE;
        BranchCandidates { base, buckets, opcodes, size, in_place, ..BranchCandidates::default() }
    }

    /// What the index holds, for another process to take over with
    /// [`BranchCandidates::from_parts`] instead of scanning the same code again: the lowest
    /// address of the code, the code's size, each stretch's first candidate, the candidates.
    pub fn parts(&self) -> (u64, u64, &[u32], &[u32]) {
        (self.base, self.size, &self.buckets, &self.opcodes)
    }

    /// The index [`BranchCandidates::parts`] gave, for the same code; `None` when the parts do
    /// not make one (each stretch's first candidate in order, the last one's end the
    /// candidates' count).
    pub fn from_parts(base: u64, size: u64, buckets: Vec<u32>, opcodes: Vec<u32>) -> Option<BranchCandidates> {
        let ordered = buckets.windows(2).all(|w| w[0] <= w[1]);
        let ends =
            buckets.first().is_none_or(|&b| b == 0) && buckets.last().is_none_or(|&b| b as usize == opcodes.len());
        let counted = !buckets.is_empty() || opcodes.is_empty();
        (ordered && ends && counted).then(|| BranchCandidates::of(base, size, buckets, opcodes))
    }

    /// How many candidates are kept.
    pub fn len(&self) -> usize {
        self.opcodes.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.opcodes.is_empty()
    }

    /// Whether windows are still checked in place (no window's stretches would have taken
    /// those decoded past a quarter of the code's size).
    pub fn checks_in_place(&self) -> bool {
        self.whole.get().is_none()
    }

    /// The opcodes of the candidates whose target may lie in `targets` (those of the
    /// stretches it touches; the decoding tells).
    fn far_opcodes(&self, targets: &std::ops::Range<u64>) -> &[u32] {
        let stretches = self.buckets.len().saturating_sub(1) as u64;
        if stretches == 0 || targets.end <= self.base {
            return &[];
        }
        let stretch = |a: u64| (a.saturating_sub(self.base) / BUCKET).min(stretches - 1) as usize;
        let (from, to) = (self.buckets[stretch(targets.start)], self.buckets[stretch(targets.end - 1) + 1]);
        &self.opcodes[from as usize..to as usize]
    }

    /// The branch (the lowest in address order) of the code in `regions` (those these
    /// candidates were made from) that lands on any byte of the `len` bytes at `addr` after
    /// the first, as `(from, target)`: what
    /// `CodeBranches::decode(regions, starts).into_range(addr, len)` gives for a window in the
    /// code (a branch to a place outside it has no candidate).
    pub fn into_range(
        &self,
        regions: &[CodeRegion<'_>],
        starts: &FunctionStarts,
        addr: Addr,
        len: u64,
    ) -> Option<(Addr, Addr)> {
        let targets = addr.0.checked_add(1)?..addr.0.checked_add(len)?;
        if targets.is_empty() {
            return None;
        }
        if let Some(whole) = self.whole.get() {
            return whole.into_range(addr, len);
        }
        let far = self.far_opcodes(&targets).iter().map(|&o| self.base + u64::from(o));
        // Every stretch an instruction whose opcode is a candidate can begin in (its prefixes
        // may lie in the stretch before the opcode's), by region.
        let mut runs: Vec<(usize, u64, u64)> = Vec::new();
        for (r, &(base, code)) in regions.iter().enumerate() {
            let end = base.0 + code.len() as u64;
            let opcodes =
                far.clone().filter(|o| (base.0..end).contains(o)).chain(short_branches(base.0, code, &targets));
            for opcode in opcodes {
                let mut at = opcode.saturating_sub(LONGEST - 1).max(base.0);
                loop {
                    let run = run_of(base.0, end, starts.as_slice(), at);
                    if !runs.contains(&(r, run.0, run.1)) {
                        runs.push((r, run.0, run.1));
                    }
                    if run.1 > opcode || run.1 >= end {
                        break;
                    }
                    at = run.1;
                }
            }
        }
        let decoded: u64 = runs.iter().map(|(_, from, to)| to - from).sum();
        if self.decoded.fetch_add(decoded, Relaxed) + decoded > self.in_place {
            // (Another thread that gets here meanwhile waits for this one's decoding.)
            let whole = self.whole.get_or_init(|| CodeBranches::decode_sorted(regions, starts));
            return whole.into_range(addr, len);
        }
        let mut found: Option<(u64, u64)> = None;
        let mut branches = Vec::new();
        for &(r, from, to) in &runs {
            let (base, code) = regions[r];
            branches.clear();
            decode_run(code, base.0, from, to, starts.as_slice(), &mut branches);
            for &(target, from) in &branches {
                if targets.contains(&target) && found.is_none_or(|(f, _)| from < f) {
                    found = Some((from, target));
                }
            }
        }
        found.map(|(from, target)| (Addr(from), Addr(target)))
    }
}

/// The stretch `[from, to)` the whole-object decoding decodes `at` in (in a region from `base`
/// to `end`): from the last function start at or before it (or the region's start) to the
/// next one (or the region's end).
fn run_of(base: u64, end: u64, starts: &[u64], at: u64) -> (u64, u64) {
    let after = starts.partition_point(|&s| s <= at);
    let from = starts[..after].last().copied().filter(|&s| s > base).unwrap_or(base);
    let to = starts.get(after).copied().filter(|&s| s < end).unwrap_or(end);
    (from, to)
}

/// The opcodes of the branches with a 1-byte immediate (`jmp` `eb`, `jcc` `7x`, `loop` and
/// `jrcxz` `e0`-`e3`) in `code` (at `base`) that would land in `targets`: within 128 bytes.
fn short_branches(base: u64, code: &[u8], targets: &std::ops::Range<u64>) -> Vec<u64> {
    let index = |a: u64| a.saturating_sub(base).min(code.len() as u64) as usize;
    let (first, last) = (index(targets.start.saturating_sub(130)), index(targets.end.saturating_add(128)));
    (first.max(1)..last)
        .filter(|&i| matches!(code[i - 1], 0xeb | 0x70..=0x7f | 0xe0..=0xe3))
        .filter(|&i| targets.contains(&(base + i as u64 + 1).wrapping_add(code[i] as i8 as i64 as u64)))
        .map(|i| base + i as u64 - 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CodeBranches;

    /// A small, repeatable generator (xorshift64*).
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Code made of branches of every form aimed near a few spots, among random bytes and
    /// prefixes, so that instruction boundaries, overlapping candidates and function starts
    /// all vary.
    fn random_code(r: &mut Random, base: u64, len: usize) -> Vec<u8> {
        let mut code = Vec::with_capacity(len + 16);
        let spot = |r: &mut Random| base - 8 + r.next() % (len as u64 + 16);
        while code.len() < len {
            let here = base + code.len() as u64;
            match r.next() % 10 {
                0 => code.push([0x66, 0x67, 0xf2, 0xf3, 0x2e, 0x3e, 0x48][(r.next() % 7) as usize]),
                1..=3 => {
                    let (opcode, extra): (&[u8], u64) = match r.next() % 4 {
                        0 => (&[0xe8], 5),
                        1 => (&[0xe9], 5),
                        2 => (&[0x0f, 0x80 | (r.next() % 16) as u8], 6),
                        _ => (&[0xc7, 0xf8], 6),
                    };
                    code.extend_from_slice(opcode);
                    let rel = spot(r).wrapping_sub(here + extra) as u32;
                    code.extend_from_slice(&rel.to_le_bytes());
                }
                4 | 5 => {
                    let opcode =
                        [0xeb, 0x70 | (r.next() % 16) as u8, 0xe0 | (r.next() % 4) as u8][(r.next() % 3) as usize];
                    code.extend([opcode, (r.next() % 256) as u8]);
                }
                _ => code.push((r.next() % 256) as u8),
            }
        }
        code.truncate(len);
        code
    }

    #[test]
    fn the_scan_finds_what_the_whole_decoding_finds_in_random_code() {
        let mut r = Random(0x9e37_79b9_7f4a_7c15);
        let base = 0x40_1000;
        let mut compared = 0;
        for _ in 0..16 {
            let code = random_code(&mut r, base, 2048);
            let starts: Vec<Addr> = (0..r.next() % 40).map(|_| Addr(base + r.next() % 2048)).collect();
            let regions = [(Addr(base), &code[..])];
            let whole = CodeBranches::decode(&regions, &starts);
            let sorted = FunctionStarts::new(&starts);
            // Windows inside the code (branches also aim just outside it).
            for at in base..base + 2048 - 9 {
                for len in [5, 9] {
                    let expected = whole.into_range(Addr(at), len);
                    // Fresh candidates for each window, with no bound: the check in place,
                    // never the whole decoding it falls back on.
                    let mut candidates = BranchCandidates::new(&regions);
                    candidates.in_place = u64::MAX;
                    assert_eq!(candidates.into_range(&regions, &sorted, Addr(at), len), expected, "at {at:#x}, {len}");
                    assert!(candidates.checks_in_place());
                    compared += usize::from(expected.is_some());
                }
            }
        }
        assert!(compared > 2_000, "the code lands branches in many windows: {compared}");
    }

    #[test]
    fn an_object_without_known_starts_is_decoded_whole_once_its_windows_decoded_as_much() {
        let mut r = Random(7);
        let base = 0x40_1000;
        let code = random_code(&mut r, base, 4096);
        let regions = [(Addr(base), &code[..])];
        let starts = FunctionStarts::default();
        let whole = CodeBranches::decode(&regions, &[]);
        let windows: Vec<u64> = (base..base + 4096 - 5).filter(|&at| whole.into_window(Addr(at)).is_some()).collect();
        // Each window with a candidate decodes the one stretch there is, the whole code: more
        // than a quarter of it, so the first window already takes the whole decoding.
        let candidates = BranchCandidates::new(&regions);
        assert_eq!(candidates.into_range(&regions, &starts, Addr(windows[0]), 5), whole.into_window(Addr(windows[0])));
        assert!(!candidates.checks_in_place(), "decoded whole, not in place");
        // With room for two such stretches, the third window's check decodes it whole.
        let mut candidates = BranchCandidates::new(&regions);
        candidates.in_place = 2 * 4096;
        for (k, &at) in windows.iter().enumerate() {
            assert_eq!(candidates.checks_in_place(), k < 3, "window {k}");
            assert_eq!(candidates.into_range(&regions, &starts, Addr(at), 5), whole.into_window(Addr(at)));
        }
    }

    /// An index handed to another process in parts answers as the one made from the code;
    /// parts that do not make an index (out of order, or not ending at the candidates' count)
    /// are refused, so that no lookup can index past them.
    #[test]
    fn an_index_made_again_from_its_parts_answers_the_same() {
        let mut r = Random(11);
        let base = 0x40_1000;
        let code = random_code(&mut r, base, 8192);
        let regions = [(Addr(base), &code[..])];
        let starts = FunctionStarts::new(&[Addr(base), Addr(base + 3000), Addr(base + 6000)]);
        let made = BranchCandidates::new(&regions);
        let (b, size, buckets, opcodes) = made.parts();
        assert!(opcodes.len() > 100);
        let again = BranchCandidates::from_parts(b, size, buckets.to_vec(), opcodes.to_vec()).expect("whole parts");
        for at in (base..base + 8192 - 5).step_by(3) {
            let expected = made.into_range(&regions, &starts, Addr(at), 5);
            assert_eq!(again.into_range(&regions, &starts, Addr(at), 5), expected, "at {at:#x}");
        }
        let mut unordered = buckets.to_vec();
        unordered[1] = opcodes.len() as u32 + 1;
        assert!(BranchCandidates::from_parts(b, size, unordered, opcodes.to_vec()).is_none());
        assert!(BranchCandidates::from_parts(b, size, buckets.to_vec(), opcodes[1..].to_vec()).is_none());
        assert!(BranchCandidates::from_parts(b, size, Vec::new(), opcodes.to_vec()).is_none());
        assert!(BranchCandidates::from_parts(b, size, Vec::new(), Vec::new()).is_some(), "no code");
        assert_eq!(FunctionStarts::from_sorted(vec![1, 3, 9]), Some(FunctionStarts::new(&[Addr(9), Addr(1), Addr(3)])));
        assert_eq!(FunctionStarts::from_sorted(vec![1, 1]), None);
        assert_eq!(FunctionStarts::from_sorted(vec![3, 1]), None);
    }

    #[test]
    fn a_branch_whose_prefixes_lie_in_the_previous_stretch_is_found() {
        // `f` at 0x1000 ends with prefixes that belong to the `jmp` at `g`'s start, 0x1002:
        // the whole decoding decodes `f`'s stretch past its end, the jump included.
        let code = [0x90, 0x2e, 0xe9, 0x00, 0x00, 0x00, 0x00, 0x90, 0x90, 0x90, 0x90, 0x90, 0xc3];
        let regions = [(Addr(0x1000), &code[..])];
        let starts = [Addr(0x1000), Addr(0x1002)];
        let whole = CodeBranches::decode(&regions, &starts);
        let scan = BranchCandidates::new(&regions).into_range(&regions, &FunctionStarts::new(&starts), Addr(0x1006), 5);
        assert_eq!(whole.into_range(Addr(0x1006), 5), scan);
    }

    /// The opcodes found eight bytes at a time are those a byte-by-byte look finds, with the
    /// same immediate offsets, at every length (the last bytes are looked at one by one), in
    /// code dense with the opcodes' bytes and their neighbours (`e7`-`ea`, `0e`-`10`,
    /// `7f`-`90`, `c6`-`c8`, `f7`-`f9`).
    #[test]
    fn the_opcodes_compared_eight_at_a_time_are_those_looked_at_one_by_one() {
        const DENSE: [u8; 18] = [
            0xe7, 0xe8, 0xe9, 0xea, 0x0e, 0x0f, 0x10, 0x7f, 0x80, 0x85, 0x8f, 0x90, 0xc6, 0xc7, 0xc8, 0xf7, 0xf8, 0xf9,
        ];
        let mut r = Random(0x5eed);
        for len in (0..40).chain([257, 4096]) {
            for _ in 0..50 {
                let code: Vec<u8> = (0..len)
                    .map(|_| match r.next() % 4 {
                        0 => r.next() as u8,
                        _ => DENSE[(r.next() % DENSE.len() as u64) as usize],
                    })
                    .collect();
                let mut one_by_one = Vec::new();
                for i in 0..code.len() {
                    match (code[i], code.get(i + 1)) {
                        (0xe8 | 0xe9, _) => one_by_one.push((i, 1)),
                        (0x0f, Some(0x80..=0x8f)) | (0xc7, Some(0xf8)) => one_by_one.push((i, 2)),
                        _ => {}
                    }
                }
                let mut found = Vec::new();
                each_long_branch_opcode(&code, |i, at| found.push((i, at)));
                assert_eq!(found, one_by_one, "{code:02x?}");
            }
        }
    }

    /// The `66` looked for before an opcode: exactly in the 14 bytes before it.
    #[test]
    fn a_66_prefix_counts_only_within_reach() {
        for len in 1..40 {
            for at in 0..len {
                let mut code = vec![0x90u8; len];
                code[at] = 0x66;
                for i in 0..=len {
                    let within = at < i && i - at < LONGEST as usize;
                    assert_eq!(prefix_66_before(&code, i), within, "66 at {at}, opcode at {i}, {len} bytes");
                }
            }
        }
    }

    #[test]
    fn an_empty_or_one_byte_range_has_no_branch_into_it() {
        let code = [0xeb, 0x00, 0x90];
        let regions = [(Addr(0x1000), &code[..])];
        let (starts, candidates) = (FunctionStarts::default(), BranchCandidates::new(&regions));
        assert_eq!(candidates.into_range(&regions, &starts, Addr(0x1001), 1), None);
        assert_eq!(candidates.into_range(&regions, &starts, Addr(0x1001), 2), Some((Addr(0x1000), Addr(0x1002))));
        assert_eq!(candidates.into_range(&regions, &starts, Addr(u64::MAX), 5), None);
    }
}
