//! Where each run of an inlined call starts, when its one `DW_TAG_inlined_subroutine` has
//! several address ranges.
//!
//! Several ranges are either one copy split apart (the compiler moved some of the inlined
//! code among its caller's, or into a cold section), or several copies under one entry: clang
//! keeps one entry for a call in a loop it unrolled, each unrolled pass a range of its own,
//! and the entry's first address may be before the loop (alignment padding that runs once
//! per call of the caller, not once per pass). The line table tells them apart: a copy starts
//! with the inlined function's first statement, a split-off piece goes on with a later one.
//! So each other range whose first statement is the line the entry range starts with is
//! another copy, entered there; when there is one, the entry range is entered at its entry
//! address if a statement starts there, else at its first statement. With none, the copy is
//! entered at its entry, as the debug information says.

use std::ops::Range;

use crate::debuginfo::Reader;

/// A statement's start: its address, file (the unit's index) and line.
type Statement = (u64, u64, u64);

/// The entry address of each copy of an inlined call with code `ranges`, entered at `entry`
/// (its `DW_AT_entry_pc`, else its first address), from `unit`'s line table.
pub(crate) fn copy_entries(
    unit: &gimli::Unit<Reader>,
    ranges: &[Range<u64>],
    entry: u64,
) -> Result<Vec<u64>, gimli::Error> {
    if ranges.len() < 2 {
        return Ok(vec![entry]);
    }
    let Some(program) = unit.line_program.clone() else { return Ok(vec![entry]) };
    let statements = statements_in(program, ranges)?;
    Ok(entries(&statements, ranges, entry))
}

/// The statements whose address is in `ranges`, by address.
fn statements_in(
    program: gimli::IncompleteLineProgram<Reader>,
    ranges: &[Range<u64>],
) -> Result<Vec<Statement>, gimli::Error> {
    let mut out = Vec::new();
    let mut rows = program.rows();
    while let Some((_, row)) = rows.next_row()? {
        if row.end_sequence() || !row.is_stmt() {
            continue;
        }
        let Some(line) = row.line() else { continue };
        if ranges.iter().any(|r| r.contains(&row.address())) {
            out.push((row.address(), row.file_index(), line.get()));
        }
    }
    out.sort_by_key(|s| s.0);
    Ok(out)
}

/// The decision, on the statements read (see the module's comment).
fn entries(statements: &[Statement], ranges: &[Range<u64>], entry: u64) -> Vec<u64> {
    let Some(entered) = ranges.iter().find(|r| r.contains(&entry)) else { return vec![entry] };
    let Some(&(first, file, line)) = statements.iter().find(|s| s.0 >= entry && entered.contains(&s.0)) else {
        return vec![entry];
    };
    let others: Vec<u64> = ranges
        .iter()
        .filter(|r| *r != entered)
        .filter_map(|range| statements.iter().find(|s| range.contains(&s.0)))
        .filter(|&&(_, f, l)| (f, l) == (file, line))
        .map(|s| s.0)
        .collect();
    if others.is_empty() {
        // One copy, split: entered where the debug information says, as ever.
        return vec![entry];
    }
    let mut out = others;
    out.push(if statements.iter().any(|s| s.0 == entry) { entry } else { first });
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clang -O2's `for (...) sink += bump(i);` unrolled twice, with a remainder pass: one
    /// entry, three ranges, the first starting with padding before the loop's head; the
    /// header's line 6 is `bump`'s first statement, line 14 the caller's.
    #[test]
    fn each_unrolled_pass_is_a_copy_entered_at_its_first_statement() {
        let ranges = [0x11d2..0x11ed, 0x11fb..0x1208, 0x1227..0x1234];
        let statements =
            [(0x11e0, 2, 6), (0x11e7, 2, 7), (0x11fb, 2, 6), (0x1202, 2, 7), (0x1227, 2, 6), (0x122e, 2, 7)];
        assert_eq!(entries(&statements, &ranges, 0x11d2), [0x11e0, 0x11fb, 0x1227]);
    }

    /// gcc's split copy: the second range goes on with a later line, and is no copy of its own.
    #[test]
    fn a_piece_split_off_one_copy_is_not_another_copy() {
        let ranges = [0x1000..0x1010, 0x1040..0x1048];
        let statements = [(0x1000, 1, 6), (0x1008, 1, 7), (0x1040, 1, 8)];
        assert_eq!(entries(&statements, &ranges, 0x1000), [0x1000]);
    }

    /// A split copy whose entry has no statement of its own stays entered at its entry: only
    /// other copies are evidence that the entry range is one pass among several.
    #[test]
    fn a_split_copy_keeps_its_entry_even_without_a_statement_there() {
        let ranges = [0x3000..0x3020, 0x3100..0x3108];
        let statements = [(0x3008, 1, 6), (0x3010, 1, 7), (0x3100, 1, 9)];
        assert_eq!(entries(&statements, &ranges, 0x3000), [0x3000]);
    }

    /// An entry with a statement at it is kept as it is, even if the range's first statement
    /// (in address order) comes earlier.
    #[test]
    fn an_entry_with_a_statement_stays_where_it_is() {
        let ranges = [0x2000..0x2020, 0x2100..0x2110];
        let statements = [(0x2000, 1, 9), (0x2008, 1, 6), (0x2100, 1, 6)];
        assert_eq!(entries(&statements, &ranges, 0x2008), [0x2008, 0x2100]);
    }

    #[test]
    fn one_range_or_no_statement_keeps_the_entry() {
        assert_eq!(entries(&[], &[0x10..0x20, 0x30..0x40], 0x10), [0x10]);
        assert_eq!(entries(&[(0x30, 1, 6)], &[0x10..0x20, 0x30..0x40], 0x90), [0x90]);
    }
}
