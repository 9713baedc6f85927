//! A histogram with its figures: count, min, p50, p90, p99, max (from HDR histograms, within
//! 0.1 %, exact below 2048), beside the log2 buckets.

use hdrhistogram::Histogram;

use crate::histogram::Log2Histogram;

/// Significant decimal digits the percentiles keep.
const DIGITS: u8 = 3;

/// The percentiles printed.
const PERCENTILES: [(&str, u32); 3] = [("p50", 50), ("p90", 90), ("p99", 99)];

/// The values of one histogram.
#[derive(Clone)]
pub struct Distribution {
    buckets: Log2Histogram,
    /// The magnitudes of negative values, and the other values: an HDR histogram holds
    /// unsigned values only.
    negative: Histogram<u64>,
    positive: Histogram<u64>,
    min: i64,
    max: i64,
}

impl Default for Distribution {
    fn default() -> Self {
        // Auto-resizing: the tables grow with the largest value seen, not to 2^64 at once.
        let empty = || Histogram::new(DIGITS).expect("3 significant digits are supported");
        Distribution { buckets: Log2Histogram::default(), negative: empty(), positive: empty(), min: 0, max: 0 }
    }
}

impl Distribution {
    /// Count one value.
    pub fn add(&mut self, v: i64) {
        if self.count() == 0 {
            (self.min, self.max) = (v, v);
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.buckets.add(v);
        // Recording cannot fail: the histograms resize, and a magnitude fits in u64.
        let _ = if v < 0 { self.negative.record(v.unsigned_abs()) } else { self.positive.record(v as u64) };
    }

    /// `n` values counted elsewhere (in the kernel) as `v`, their magnitude rounded to the
    /// HDR histogram's classes (so the percentiles come out as from the values themselves),
    /// the smallest and largest of them exact.
    pub fn add_tallied(&mut self, v: i64, n: u64, min: i64, max: i64) {
        if n == 0 {
            return;
        }
        if self.count() == 0 {
            (self.min, self.max) = (min, max);
        }
        self.min = self.min.min(min);
        self.max = self.max.max(max);
        self.buckets.add_n(v, n);
        let _ = if v < 0 { self.negative.record_n(v.unsigned_abs(), n) } else { self.positive.record_n(v as u64, n) };
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.negative.len() + self.positive.len()
    }

    /// The value at percentile `p` (the smallest value that `p` % of the values do not
    /// exceed), within the histograms' precision and never outside [min, max].
    pub fn percentile(&self, p: u32) -> i64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = (u64::from(p) * n).div_ceil(100).clamp(1, n);
        // Asking for the middle of the rank keeps float rounding off the next one.
        let at = |h: &Histogram<u64>, r: u64| h.value_at_quantile((r as f64 - 0.5) / h.len() as f64);
        let negatives = self.negative.len();
        let v = if rank <= negatives {
            // Ascending values are descending magnitudes.
            -(at(&self.negative, negatives - rank + 1).min(i64::MAX as u64) as i64)
        } else {
            at(&self.positive, rank - negatives).min(i64::MAX as u64) as i64
        };
        v.clamp(self.min, self.max)
    }

    /// `count 100, min 1, p50 50, p90 90, p99 99, max 100`, then the buckets.
    pub fn render(&self) -> String {
        let mut out = format!("count {}, min {}", self.count(), self.min);
        for (name, p) in PERCENTILES {
            out.push_str(&format!(", {name} {}", self.percentile(p)));
        }
        out.push_str(&format!(", max {}\n", self.max));
        out.push_str(&self.buckets.render(""));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut d = Distribution::default();
        for v in 1..=1000 {
            d.add(v);
        }
        assert_eq!((d.count(), d.percentile(50), d.percentile(90), d.percentile(99)), (1000, 500, 900, 990));
        assert!(d.render().starts_with("count 1000, min 1, p50 500, p90 900, p99 990, max 1000\n[1] "));

        // 90 small values and 10 large ones: p90 is the last small one, p99 a large one,
        // within 0.1 %.
        let mut d = Distribution::default();
        (0..90).for_each(|_| d.add(7));
        (0..10).for_each(|_| d.add(1_000_000));
        assert_eq!((d.percentile(50), d.percentile(90)), (7, 7));
        assert!((999_000..=1_000_000).contains(&d.percentile(99)), "{}", d.percentile(99));
        assert_eq!(d.percentile(100), 1_000_000, "never past the max");
    }

    #[test]
    fn negative_values_sort_below_the_others() {
        let mut d = Distribution::default();
        for v in [-30, -20, -10, 0, 10, 20, 30, 40, 50, 60] {
            d.add(v);
        }
        assert_eq!((d.percentile(10), d.percentile(20), d.percentile(30)), (-30, -20, -10));
        assert_eq!((d.percentile(50), d.percentile(90), d.percentile(100)), (10, 50, 60));
        assert!(d.render().starts_with("count 10, min -30, p50 10, p90 50, p99 60, max 60\n(..., 0) "));
    }
}
