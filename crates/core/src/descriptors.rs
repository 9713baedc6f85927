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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_under_the_limit_and_never_above_the_usual_one() {
        assert_eq!(high_descriptor_floor(1024), 960);
        assert_eq!(high_descriptor_floor(1 << 20), 960);
        assert_eq!(high_descriptor_floor(512), 448);
        assert_eq!(high_descriptor_floor(100), 3);
    }
}
