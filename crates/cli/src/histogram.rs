//! Power-of-two histograms in fixed-size tables, printed the way bpftrace prints `hist()`.

use std::fmt::Write as _;

/// Buckets: negative values, zero, then `[2^k, 2^(k+1))` for k = 0..63.
const BUCKETS: usize = 66;

/// A log2 histogram. Its size is fixed whatever the number of values.
#[derive(Clone)]
pub struct Log2Histogram {
    counts: [u64; BUCKETS],
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram { counts: [0; BUCKETS] }
    }
}

impl Log2Histogram {
    /// Count one value.
    pub fn add(&mut self, v: i64) {
        self.counts[bucket(v)] += 1;
    }

    /// Count `n` values in `v`'s bucket.
    pub fn add_n(&mut self, v: i64, n: u64) {
        self.counts[bucket(v)] += n;
    }

    /// The table: one line per bucket from the first non-empty one to the last, with a bar.
    pub fn render(&self, unit: &str) -> String {
        let mut out = String::new();
        let used: Vec<usize> = (0..BUCKETS).filter(|&b| self.counts[b] > 0).collect();
        let (Some(&first), Some(&last)) = (used.first(), used.last()) else { return out };
        let max = self.counts.iter().copied().max().unwrap_or(1).max(1);
        for b in first..=last {
            let n = self.counts[b];
            let bar = "@".repeat(((n * 52).div_ceil(max)) as usize);
            let _ = writeln!(out, "{:<22} {n:>10} |{bar:<52}|", label(b, unit));
        }
        out
    }
}

fn bucket(v: i64) -> usize {
    match v {
        v if v < 0 => 0,
        0 => 1,
        v => 2 + (63 - v.leading_zeros() as usize),
    }
}

fn label(b: usize, unit: &str) -> String {
    match b {
        0 => format!("(..., 0){unit}"),
        1 => format!("[0]{unit}"),
        2 => format!("[1]{unit}"),
        b => format!("[{}, {}){unit}", short(1u128 << (b - 2)), short(1u128 << (b - 1))),
    }
}

/// `4K`, `16M`, like bpftrace.
fn short(v: u128) -> String {
    for (shift, suffix) in [(60, "E"), (50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if v >= 1 << shift && v % (1 << shift) == 0 {
            return format!("{}{suffix}", v >> shift);
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_power_of_two_bucket() {
        let mut h = Log2Histogram::default();
        for v in [-5, 0, 1, 2, 3, 4, 7, 8, 1023, 1024, i64::MAX] {
            h.add(v);
        }
        let text = h.render("");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("(..., 0)") && lines[0].contains(" 1 |"), "{}", lines[0]);
        assert!(lines[1].starts_with("[0] ") && lines[1].contains(" 1 |"));
        assert!(lines[3].starts_with("[2, 4) ") && lines[3].contains(" 2 |"), "2 and 3");
        assert!(lines[4].starts_with("[4, 8) ") && lines[4].contains(" 2 |"), "4 and 7");
        assert!(text.contains("[512, 1K) ") && text.contains("[1K, 2K) "));
        assert!(lines.last().unwrap().starts_with("[4E, 8E)"), "{text}");
        assert_eq!(Log2Histogram::default().render(""), "", "nothing to show");
    }
}
