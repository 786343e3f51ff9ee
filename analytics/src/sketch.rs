//! A mergeable quantile sketch with a relative-error guarantee (the
//! DDSketch construction): every value is counted in the bucket
//! `ceil(log_γ |x|)` with `γ = (1 + α) / (1 - α)`, so the value a bucket
//! reports is within a relative error `α` of every value counted in it.
//! A quantile is then within `α` of the true quantile's value, whatever
//! the distribution. Two sketches merge by adding bucket counts, so
//! windows, panes and hierarchy levels combine exactly.
//!
//! Memory is bounded: each sign keeps at most [`MAX_BUCKETS`] contiguous
//! buckets. Values spanning a wider dynamic range (more than about
//! 10^17 : 1 at α = 1 %) collapse the lowest buckets into one, which keeps
//! the guarantee for every quantile above the collapsed mass.

use serde::{Deserialize, Serialize};

/// Relative accuracy of every quantile the sketch reports.
pub const ALPHA: f64 = 0.01;
/// Buckets kept per sign.
pub const MAX_BUCKETS: usize = 2048;
/// Magnitudes below this count as zero.
const MIN_MAGNITUDE: f64 = 1e-12;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

fn ln_gamma() -> f64 {
    // ln((1 + α) / (1 - α)), computed once per call site by the optimiser.
    gamma().ln()
}

/// Buckets allocated at the first value, centred on it: a sensor's
/// values usually stay within a factor of 3 (about 55 buckets at α = 1 %),
/// so a window rarely allocates twice.
const FIRST_BUCKETS: usize = 64;

/// Contiguous bucket counts from `offset`. Counts are 32-bit (saturating):
/// half the memory per window, which is what the hot path waits on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Buckets {
    offset: i32,
    counts: Vec<u32>,
}

impl Buckets {
    fn add(&mut self, index: i32, n: u32) {
        if self.counts.is_empty() {
            let half = (FIRST_BUCKETS / 2) as i32;
            self.offset = index.saturating_sub(half);
            self.counts.resize(FIRST_BUCKETS, 0);
            self.counts[(index - self.offset) as usize] = n;
            return;
        }
        if index < self.offset {
            let need = (self.offset - index) as usize;
            if self.counts.len() + need > MAX_BUCKETS {
                // Too wide a range: the low end collapses into its lowest
                // bucket kept.
                self.counts[0] = self.counts[0].saturating_add(n);
                return;
            }
            // Grow the front with slack (as `Vec` grows its back), so a
            // run of ever lower values does not copy at every step.
            let grow = need
                .max(self.counts.len())
                .min(MAX_BUCKETS - self.counts.len());
            let mut counts = Vec::with_capacity(self.counts.len() + grow);
            counts.resize(grow, 0);
            counts.extend_from_slice(&self.counts);
            self.counts = counts;
            self.offset -= grow as i32;
            self.counts[(index - self.offset) as usize] = n;
            return;
        }
        let at = (index - self.offset) as usize;
        if at >= self.counts.len() {
            if at >= MAX_BUCKETS {
                // Keep the high end: the lowest buckets fold into the
                // lowest one kept.
                let new_offset = index - MAX_BUCKETS as i32 + 1;
                let drop = (new_offset - self.offset) as usize;
                let folded = self
                    .counts
                    .iter()
                    .take(drop)
                    .fold(0u32, |a, &c| a.saturating_add(c));
                self.counts.drain(..drop.min(self.counts.len()));
                self.offset = new_offset;
                self.counts.resize(MAX_BUCKETS, 0);
                self.counts[0] = self.counts[0].saturating_add(folded);
                let last = &mut self.counts[MAX_BUCKETS - 1];
                *last = last.saturating_add(n);
                return;
            }
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] = self.counts[at].saturating_add(n);
    }

    fn merge(&mut self, other: &Buckets) {
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                self.add(other.offset + i as i32, n);
            }
        }
    }

    fn bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u32>()
    }
}

/// A quantile sketch over f64 values (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    positive: Buckets,
    negative: Buckets,
    zeros: u64,
    count: u64,
}

fn index(magnitude: f64) -> i32 {
    // Clamped so absurd magnitudes (1e308) stay in range.
    (magnitude.ln() / ln_gamma()).ceil().clamp(-1e6, 1e6) as i32
}

fn value(index: i32) -> f64 {
    2.0 * gamma().powi(index) / (gamma() + 1.0)
}

impl Sketch {
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        if x > MIN_MAGNITUDE {
            self.positive.add(index(x), 1);
        } else if x < -MIN_MAGNITUDE {
            self.negative.add(index(-x), 1);
        } else {
            self.zeros += 1;
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zeros += other.zeros;
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1): the sample of rank
    /// `floor(q * (count - 1))` in sorted order, within a relative error
    /// of [`ALPHA`]. NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return f64::NAN;
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Most negative first: the negative buckets from the highest
        // magnitude down.
        for (i, &n) in self.negative.counts.iter().enumerate().rev() {
            seen += u64::from(n);
            if seen > rank {
                return -value(self.negative.offset + i as i32);
            }
        }
        seen += self.zeros;
        if seen > rank {
            return 0.0;
        }
        for (i, &n) in self.positive.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen > rank {
                return value(self.positive.offset + i as i32);
            }
        }
        // Unreachable while counts add up; the largest bucket otherwise.
        value(self.positive.offset + self.positive.counts.len() as i32 - 1)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.positive.bytes() + self.negative.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn quantiles_are_within_the_relative_error() {
        let mut values: Vec<f64> = (1..=10_000)
            .map(|i| ((i * 7919) % 10_007) as f64 * 0.37 - 900.0)
            .collect();
        let mut s = Sketch::default();
        for &v in &values {
            s.add(v);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let (got, want) = (s.quantile(q), exact(&values, q));
            assert!(
                (got - want).abs() <= ALPHA * want.abs() + 1e-9,
                "q{q}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..1000 {
            let v = (i as f64).sin() * 100.0;
            if i % 3 == 0 { &mut a } else { &mut b }.add(v);
            all.add(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        for q in 0..=100 {
            let q = f64::from(q) / 100.0;
            assert_eq!(a.quantile(q), all.quantile(q), "q{q}");
        }
    }

    #[test]
    fn a_huge_dynamic_range_stays_bounded_and_keeps_the_top() {
        let mut s = Sketch::default();
        for e in -300..300 {
            s.add(10f64.powi(e));
        }
        s.add(0.0);
        s.add(f64::NAN);
        assert!(s.positive.counts.len() <= MAX_BUCKETS);
        assert_eq!(s.count(), 601);
        let top = s.quantile(1.0);
        assert!((top - 1e299).abs() <= ALPHA * 1e299, "{top}");
        assert!(Sketch::default().quantile(0.5).is_nan());
    }
}
