//! Where dprobe's own descriptors go inside a traced program.

/// The usual soft limit on open files: dprobe's descriptors go just under it, never higher
/// (a descriptor numbered near a limit of a million would make the kernel grow the
/// program's descriptor table to that size).
const USUAL_LIMIT: u64 = 1024;

/// How many numbers under the limit are left for dprobe's descriptors.
const ROOM: u64 = 64;

/// The lowest number for dprobe's long-lived descriptors in a program whose soft limit on
/// open files is `soft_limit`: 64 under it, at most 1,024 (or 3 under a very low limit), so
/// that the program's own `open`s get the numbers they get untraced.
pub fn high_descriptor_floor(soft_limit: u64) -> u64 {
    let top = soft_limit.min(USUAL_LIMIT);
    if top > 2 * ROOM {
        top - ROOM
    } else {
        3
    }
}

/// The highest soft limit above which dprobe's descriptors may go: the kernel grows a
/// program's descriptor table up to the highest number open (8 bytes a number, and more), a
/// few pages at this size.
const HIGHEST_SOFT_LIMIT_TO_PASS: u64 = 4 * USUAL_LIMIT;

/// Where the hard limit on open files leaves room above a soft limit `soft_limit` that is not
/// too high to pass: the soft limit to raise it to for the moment, so that dprobe's
/// long-lived descriptors take the numbers from `soft_limit` up, which the program's own
/// `open`s never reach (it opens as many files as untraced before `EMFILE`). `None`: they go
/// under it ([`high_descriptor_floor`]).
pub fn raised_soft_limit(soft_limit: u64, hard_limit: u64) -> Option<u64> {
    let raised = soft_limit.checked_add(ROOM)?;
    (soft_limit <= HIGHEST_SOFT_LIMIT_TO_PASS && raised <= hard_limit).then_some(raised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_pass_a_usual_soft_limit_where_the_hard_one_leaves_room() {
        assert_eq!(raised_soft_limit(1024, 524_288), Some(1088));
        assert_eq!(raised_soft_limit(256, 4096), Some(320));
        assert_eq!(raised_soft_limit(1024, 1024), None, "no room");
        assert_eq!(raised_soft_limit(1024, 1050), None, "too little room");
        assert_eq!(raised_soft_limit(20_000, 1 << 20), None, "a table grown too large");
        assert_eq!(raised_soft_limit(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn the_floor_is_under_the_limit_and_never_above_the_usual_one() {
        assert_eq!(high_descriptor_floor(1024), 960);
        assert_eq!(high_descriptor_floor(1 << 20), 960);
        assert_eq!(high_descriptor_floor(512), 448);
        assert_eq!(high_descriptor_floor(100), 3);
    }
}
