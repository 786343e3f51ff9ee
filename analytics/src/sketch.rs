//! A mergeable quantile sketch with a relative-error guarantee (the
//! DDSketch construction): every value is counted in a bucket whose
//! bounds are within a factor `γ = (1 + α) / (1 - α)` of each other, and
//! the bucket reports the value within a relative error `α` of both
//! bounds. A quantile is then within `α` of the true quantile's value,
//! whatever the distribution. Two sketches merge by adding bucket counts,
//! so windows, panes and hierarchy levels combine exactly.
//!
//! The bucket of `x` is `ceil(M · f(x))`, where `f` is `log2` with its
//! mantissa part replaced by a cubic (`x = 2^e · (1 + s)`,
//! `f(x) = e + P(s)`): a few multiply-adds on the float's bits instead
//! of a logarithm. `f` is monotone and `d ln x / d f ≤ 0.7` everywhere,
//! so `M = 0.7 / ln γ` keeps every bucket within a factor `γ`, with about
//! 1 % more buckets than an exact logarithm would use.
//!
//! Two stores. Most windows hold values of one sign from a narrow range
//! (a sensor over seconds), so a sketch starts **inline**: 64 byte-sized
//! counters covering a 3.5x range of one sign, plus a count of zeros,
//! inside the window's state, with no allocation and no pointer to chase
//! per sample. It re-centres in place as the signal drifts. A value
//! outside that range, a value of the other sign, or a 256th value in one
//! bucket moves the sketch to the **full** store on the heap: 32-bit
//! counts per sign.
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
/// `ln γ` for [`ALPHA`] (checked against `ln` in the tests).
const LN_GAMMA: f64 = 0.020_000_666_706_669_435;
/// Buckets per unit of `f` (see the module documentation).
const MULTIPLIER: f64 = 0.7 / LN_GAMMA;
/// The cubic `P(s) = ((A s + B) s + C) s`: `P(0) = 0`, `P(1) = 1`, and
/// `(1 + s) P'(s) ≥ C = 10/7` on `[0, 1]`.
const A: f64 = 6.0 / 35.0;
const B: f64 = -3.0 / 5.0;
const C: f64 = 10.0 / 7.0;
/// Counters in the inline store.
const INLINE: usize = 64;

/// `f(x)` for a positive normal `x`.
#[inline]
fn log2_approx(x: f64) -> f64 {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let s = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000) - 1.0;
    ((A * s + B) * s + C) * s + e as f64
}

/// The inverse of [`log2_approx`].
fn exp2_approx(y: f64) -> f64 {
    let e = y.floor();
    let t = y - e;
    // Newton on the monotone cubic from s = t, kept within [0, 1].
    let mut s = t;
    for _ in 0..8 {
        let p = ((A * s + B) * s + C) * s - t;
        let dp = (3.0 * A * s + 2.0 * B) * s + C;
        s = (s - p / dp).clamp(0.0, 1.0);
    }
    (1.0 + s) * 2f64.powi(e as i32)
}

#[inline]
fn index(magnitude: f64) -> i32 {
    // Clamped so absurd magnitudes (1e308) stay in range.
    ceil_i32((MULTIPLIER * log2_approx(magnitude)).clamp(-1e6, 1e6))
}

/// The value a bucket reports: its bounds' harmonic mean, within `α` of
/// every value between them.
fn value(index: i32) -> f64 {
    let lo = exp2_approx(f64::from(index - 1) / MULTIPLIER);
    let hi = exp2_approx(f64::from(index) / MULTIPLIER);
    // 2 lo hi / (lo + hi), without overflowing at the top of the range.
    2.0 * lo / (1.0 + lo / hi)
}

/// Ceiling of a float already clamped to the `i32` range, without a call
/// to `ceil` (not an instruction on baseline x86-64).
#[inline]
fn ceil_i32(y: f64) -> i32 {
    let t = y as i32;
    t + i32::from(y > f64::from(t))
}

/// Buckets allocated at the first value of the full store, centred on
/// it.
const FIRST_BUCKETS: usize = 64;

/// Contiguous 32-bit (saturating) bucket counts from `offset`.
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

    fn bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u32>()
    }
}

/// The full store: any sign, any range, 32-bit counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Full {
    positive: Buckets,
    negative: Buckets,
    zeros: u64,
}

#[derive(Debug, Clone)]
enum Store {
    /// Values of one sign (`negative`), byte counts of their magnitudes
    /// from `offset`, and zeros.
    Inline {
        offset: i32,
        negative: bool,
        zeros: u8,
        counts: [u8; INLINE],
    },
    Full(Box<Full>),
}

/// The buckets of one sign in either store.
#[derive(Clone, Copy)]
enum Counts<'a> {
    Narrow(&'a [u8]),
    Wide(&'a [u32]),
}

impl Counts<'_> {
    fn len(self) -> usize {
        match self {
            Self::Narrow(c) => c.len(),
            Self::Wide(c) => c.len(),
        }
    }

    fn get(self, k: usize) -> u32 {
        match self {
            Self::Narrow(c) => u32::from(c[k]),
            Self::Wide(c) => c[k],
        }
    }
}

/// Adds `n` at `index` to an inline store, re-centring it when the
/// occupied buckets and `index` still fit; false when they do not, or
/// when the count would pass 255 (the store is then unchanged or only
/// re-centred).
fn inline_add(offset: &mut i32, counts: &mut [u8; INLINE], index: i32, n: u32) -> bool {
    let at = index.wrapping_sub(*offset) as u32 as usize;
    if at < INLINE {
        return bump(&mut counts[at], n);
    }
    let occupied = counts
        .iter()
        .position(|&c| c > 0)
        .zip(counts.iter().rposition(|&c| c > 0));
    let (lo, hi) = match occupied {
        None => (index, index),
        Some((first, last)) => (
            (*offset + first as i32).min(index),
            (*offset + last as i32).max(index),
        ),
    };
    let span = i64::from(hi) - i64::from(lo) + 1;
    if span > INLINE as i64 {
        return false;
    }
    let new_offset = lo - (INLINE as i32 - span as i32) / 2;
    let mut moved = [0u8; INLINE];
    if let Some((first, last)) = occupied {
        for (k, &c) in counts.iter().enumerate().take(last + 1).skip(first) {
            moved[(*offset + k as i32 - new_offset) as usize] = c;
        }
    }
    *counts = moved;
    *offset = new_offset;
    bump(&mut counts[(index - new_offset) as usize], n)
}

/// Adds `n` to a byte counter; false (and unchanged) past 255.
fn bump(c: &mut u8, n: u32) -> bool {
    match u32::from(*c).checked_add(n).map(u8::try_from) {
        Some(Ok(v)) => {
            *c = v;
            true
        }
        _ => false,
    }
}

/// A quantile sketch over f64 values (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub struct Sketch {
    count: u64,
    store: Store,
}

impl Default for Sketch {
    fn default() -> Self {
        Self {
            count: 0,
            store: Store::Inline {
                offset: 0,
                negative: false,
                zeros: 0,
                counts: [0; INLINE],
            },
        }
    }
}

/// How a sketch is stored in snapshots: the full store's form, whatever
/// the sketch used in memory.
#[derive(Serialize, Deserialize)]
struct Wire {
    count: u64,
    zeros: u64,
    positive: Buckets,
    negative: Buckets,
}

impl From<Sketch> for Wire {
    fn from(s: Sketch) -> Self {
        let buckets = |negative: bool| {
            let mut b = Buckets::default();
            for (index, n) in s.nonzero(negative) {
                b.add(index, n);
            }
            b
        };
        Self {
            count: s.count,
            zeros: s.zeros(),
            positive: buckets(false),
            negative: buckets(true),
        }
    }
}

impl From<Wire> for Sketch {
    fn from(w: Wire) -> Self {
        let mut s = Sketch {
            count: w.count,
            ..Sketch::default()
        };
        s.add_zeros(w.zeros);
        for (negative, b) in [(true, &w.negative), (false, &w.positive)] {
            for (i, &n) in b.counts.iter().enumerate() {
                if n > 0 {
                    s.add_magnitude(negative, b.offset.saturating_add(i as i32), n);
                }
            }
        }
        s
    }
}

/// Equal when they count the same values in the same buckets, whichever
/// store holds them.
impl PartialEq for Sketch {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count
            && self.zeros() == other.zeros()
            && self.nonzero(false).eq(other.nonzero(false))
            && self.nonzero(true).eq(other.nonzero(true))
    }
}

impl Sketch {
    #[inline]
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        if x > MIN_MAGNITUDE {
            self.add_magnitude(false, index(x), 1);
        } else if x < -MIN_MAGNITUDE {
            self.add_magnitude(true, index(-x), 1);
        } else {
            self.add_zeros(1);
        }
    }

    /// Counts `n` values of one sign in bucket `index`.
    #[inline]
    fn add_magnitude(&mut self, negative: bool, index: i32, n: u32) {
        if let Store::Inline {
            offset,
            negative: sign,
            counts,
            ..
        } = &mut self.store
            && *sign == negative
        {
            let at = index.wrapping_sub(*offset) as u32 as usize;
            if let Some(c) = counts.get_mut(at)
                && u32::from(*c) + n <= u32::from(u8::MAX)
            {
                *c += n as u8;
                return;
            }
        }
        self.add_magnitude_slow(negative, index, n);
    }

    #[cold]
    fn add_magnitude_slow(&mut self, negative: bool, index: i32, n: u32) {
        if let Store::Inline {
            offset,
            negative: sign,
            counts,
            ..
        } = &mut self.store
        {
            // An inline store without magnitudes takes either sign.
            if counts.iter().all(|&c| c == 0) {
                *sign = negative;
            }
            if *sign == negative && inline_add(offset, counts, index, n) {
                return;
            }
        }
        let full = self.full();
        if negative {
            full.negative.add(index, n);
        } else {
            full.positive.add(index, n);
        }
    }

    fn add_zeros(&mut self, n: u64) {
        if let Store::Inline { zeros, .. } = &mut self.store
            && let Ok(n) = u32::try_from(n)
            && bump(zeros, n)
        {
            return;
        }
        self.full().zeros += n;
    }

    /// The full store, moving an inline one there first.
    fn full(&mut self) -> &mut Full {
        if let Store::Inline {
            offset,
            negative,
            zeros,
            counts,
        } = &self.store
        {
            let mut full = Full {
                zeros: u64::from(*zeros),
                ..Full::default()
            };
            let side = if *negative {
                &mut full.negative
            } else {
                &mut full.positive
            };
            for (k, &c) in counts.iter().enumerate() {
                if c > 0 {
                    side.add(offset + k as i32, u32::from(c));
                }
            }
            self.store = Store::Full(Box::new(full));
        }
        match &mut self.store {
            Store::Full(full) => full,
            Store::Inline { .. } => unreachable!("moved to the full store above"),
        }
    }

    fn zeros(&self) -> u64 {
        match &self.store {
            Store::Inline { zeros, .. } => u64::from(*zeros),
            Store::Full(f) => f.zeros,
        }
    }

    /// The buckets of one sign: offset and counts.
    fn counts(&self, negative: bool) -> (i32, Counts<'_>) {
        match &self.store {
            Store::Inline {
                offset,
                negative: sign,
                counts,
                ..
            } if *sign == negative => (*offset, Counts::Narrow(counts)),
            Store::Inline { .. } => (0, Counts::Narrow(&[])),
            Store::Full(f) => {
                let b = if negative { &f.negative } else { &f.positive };
                (b.offset, Counts::Wide(&b.counts))
            }
        }
    }

    /// Non-empty buckets of one sign, lowest magnitude first.
    fn nonzero(&self, negative: bool) -> impl DoubleEndedIterator<Item = (i32, u32)> + '_ {
        let (offset, counts) = self.counts(negative);
        (0..counts.len()).filter_map(move |k| {
            let n = counts.get(k);
            (n > 0).then_some((offset + k as i32, n))
        })
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.add_zeros(other.zeros());
        for negative in [true, false] {
            for (index, n) in other.nonzero(negative) {
                self.add_magnitude(negative, index, n);
            }
        }
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
        for (index, n) in self.nonzero(true).rev() {
            seen += u64::from(n);
            if seen > rank {
                return -value(index);
            }
        }
        seen += self.zeros();
        if seen > rank {
            return 0.0;
        }
        let mut top = None;
        for (index, n) in self.nonzero(false) {
            seen += u64::from(n);
            if seen > rank {
                return value(index);
            }
            top = Some(index);
        }
        // Unreachable while counts add up; the largest bucket otherwise.
        top.map_or(f64::NAN, value)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        match &self.store {
            Store::Inline { .. } => 0,
            Store::Full(f) => std::mem::size_of::<Full>() + f.positive.bytes() + f.negative.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn assert_quantiles(values: &mut [f64], s: &Sketch) {
        values.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let (got, want) = (s.quantile(q), exact(values, q));
            assert!(
                (got - want).abs() <= ALPHA * want.abs() + 1e-9,
                "q{q}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn the_constants_are_what_they_claim() {
        assert_eq!(LN_GAMMA, ((1.0 + ALPHA) / (1.0 - ALPHA)).ln());
        let p = |s: f64| ((A * s + B) * s + C) * s;
        assert_eq!(p(0.0), 0.0);
        assert!((p(1.0) - 1.0).abs() < 1e-15);
        for k in 0..=100_000 {
            let s = f64::from(k) / 100_000.0;
            let dp = (3.0 * A * s + 2.0 * B) * s + C;
            assert!((1.0 + s) * dp >= C - 1e-12, "at {s}");
        }
        assert!(std::mem::size_of::<Sketch>() <= 80);
    }

    #[test]
    fn every_bucket_spans_at_most_gamma_and_its_value_lies_within_alpha() {
        let gamma = (1.0 + ALPHA) / (1.0 - ALPHA);
        for i in (-1_500..35_800).step_by(7) {
            let lo = exp2_approx(f64::from(i - 1) / MULTIPLIER);
            let hi = exp2_approx(f64::from(i) / MULTIPLIER);
            assert!(hi / lo <= gamma * (1.0 + 1e-12), "bucket {i}: {lo}..{hi}");
            let v = value(i);
            assert!(
                (v - lo) / lo <= ALPHA + 1e-12 && (hi - v) / hi <= ALPHA + 1e-12,
                "bucket {i}: {lo} {v} {hi}"
            );
            // Values inside the bucket map to it.
            let mid = lo * (hi / lo).sqrt();
            assert_eq!(index(mid), i, "{mid}");
        }
        for x in [1e-11, 0.3, 1.0, 2.0, 3.999, 17.25, 1e6, 1e300] {
            let i = index(x);
            let (lo, hi) = (
                exp2_approx(f64::from(i - 1) / MULTIPLIER),
                exp2_approx(f64::from(i) / MULTIPLIER),
            );
            assert!(lo <= x * (1.0 + 1e-12) && x <= hi * (1.0 + 1e-12), "{x}");
        }
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
        assert_quantiles(&mut values, &s);
    }

    #[test]
    fn a_narrow_positive_window_stays_inline_and_exact_to_alpha() {
        let mut values: Vec<f64> = (0..200).map(|i| 20.0 + f64::from(i % 40)).collect();
        let mut s = Sketch::default();
        for &v in &values {
            s.add(v);
        }
        assert!(matches!(s.store, Store::Inline { .. }));
        assert_eq!(s.heap_bytes(), 0);
        assert_quantiles(&mut values, &s);
        // A value far outside, then a crowded bucket: the full store.
        let mut wide = s.clone();
        wide.add(1e6);
        assert!(matches!(wide.store, Store::Full(_)));
        values.push(1e6);
        assert_quantiles(&mut values, &wide);
        let mut crowded = Sketch::default();
        for _ in 0..1000 {
            crowded.add(42.0);
        }
        assert!(matches!(crowded.store, Store::Full(_)));
        assert_eq!(crowded.count(), 1000);
        assert!((crowded.quantile(0.5) - 42.0).abs() <= ALPHA * 42.0);
    }

    #[test]
    fn zeros_and_a_narrow_negative_window_stay_inline() {
        let mut values: Vec<f64> = (0..100)
            .map(|i| -20.0 + f64::from(i % 10) * 0.5)
            .chain([0.0; 30])
            .collect();
        let mut s = Sketch::default();
        for &v in &values {
            s.add(v);
        }
        assert!(matches!(s.store, Store::Inline { negative: true, .. }));
        assert_quantiles(&mut values, &s);
        // The other sign moves it to the full store, counts intact.
        s.add(5.0);
        values.push(5.0);
        assert!(matches!(s.store, Store::Full(_)));
        assert_quantiles(&mut values, &s);
        // A 256th zero too.
        let mut z = Sketch::default();
        for _ in 0..300 {
            z.add(0.0);
        }
        assert!(matches!(z.store, Store::Full(_)));
        assert_eq!(z.quantile(0.5), 0.0);
    }

    #[test]
    fn an_inline_store_recentres_on_a_drifting_signal() {
        // Decreasing then increasing within a 3x range: moves, no spill.
        let mut values: Vec<f64> = (0..50)
            .map(|i| 30.0 - f64::from(i) * 0.3)
            .chain((0..50).map(|i| 15.0 + f64::from(i) * 0.5))
            .collect();
        let mut s = Sketch::default();
        for &v in &values {
            s.add(v);
        }
        assert!(matches!(s.store, Store::Inline { .. }));
        assert_quantiles(&mut values, &s);
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
        assert_eq!(a, all);
        for q in 0..=100 {
            let q = f64::from(q) / 100.0;
            assert_eq!(a.quantile(q), all.quantile(q), "q{q}");
        }
        // Inline into inline, and inline into full.
        let (mut x, mut y) = (Sketch::default(), Sketch::default());
        for i in 0..40 {
            x.add(10.0 + f64::from(i) * 0.1);
            y.add(12.0 + f64::from(i) * 0.1);
        }
        let mut xy = x.clone();
        xy.merge(&y);
        assert!(matches!(xy.store, Store::Inline { .. }));
        let mut full = all.clone();
        full.merge(&x);
        assert_eq!(full.count(), all.count() + 40);
    }

    #[test]
    fn the_snapshot_form_round_trips_either_store() {
        let mut inline = Sketch::default();
        let mut full = Sketch::default();
        for i in 0..100 {
            inline.add(5.0 + f64::from(i) * 0.05);
            full.add(f64::from(i) - 50.0);
        }
        for s in [inline, full] {
            let bytes = postcard::to_allocvec(&s).expect("encodes");
            let back: Sketch = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(back, s);
            assert_eq!(back.quantile(0.9), s.quantile(0.9));
        }
    }

    fn values() -> impl proptest::strategy::Strategy<Value = Vec<f64>> {
        use proptest::prelude::*;
        // Narrow positive windows (the inline store), wide ones, zeros
        // and negatives, crowded buckets (repeats).
        let value = prop_oneof![
            4 => 20.0f64..60.0,
            1 => -1e6f64..1e6,
            1 => Just(0.0),
            1 => 1e-9f64..1e9,
        ];
        (prop::collection::vec(value, 1..400), 1usize..4).prop_map(|(mut v, repeat)| {
            let n = v.len();
            v.extend_from_within(..n.min(repeat * 100));
            v
        })
    }

    proptest::proptest! {
        #[test]
        fn every_quantile_is_within_alpha_and_merges_are_exact(
            values in values(),
            split in 0usize..400,
        ) {
            let mut all = Sketch::default();
            let (mut a, mut b) = (Sketch::default(), Sketch::default());
            for (i, &v) in values.iter().enumerate() {
                all.add(v);
                if i < split { &mut a } else { &mut b }.add(v);
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
                let (got, want) = (all.quantile(q), exact(&sorted, q));
                let bound = ALPHA * want.abs() + MIN_MAGNITUDE;
                proptest::prop_assert!((got - want).abs() <= bound, "q{}: {} vs {}", q, got, want);
            }
            a.merge(&b);
            proptest::prop_assert_eq!(&a, &all);
            let back: Sketch = postcard::from_bytes(&postcard::to_allocvec(&all).expect("encodes"))
                .expect("decodes");
            proptest::prop_assert_eq!(&back, &all);
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
        let Store::Full(f) = &s.store else {
            panic!("a huge range leaves the inline store")
        };
        assert!(f.positive.counts.len() <= MAX_BUCKETS);
        assert_eq!(s.count(), 601);
        let top = s.quantile(1.0);
        assert!((top - 1e299).abs() <= ALPHA * 1e299, "{top}");
        assert!(Sketch::default().quantile(0.5).is_nan());
    }
}
