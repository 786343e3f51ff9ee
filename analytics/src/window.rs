//! Window kinds, aggregates and results.

use serde::{Deserialize, Serialize};

use crate::sketch::Sketch;
use crate::{DeviceLevel, GroupKey};

/// One word of a grouping as configs, rules and SQL write it. This is the
/// one parser of that vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupingWord {
    /// `metric`: each metric on its own.
    Metric,
    /// `device`; `site`, `building`, `line` (hierarchy levels 1 to 3);
    /// `level:N` (the first N levels of the path, N >= 1); `all`.
    Devices(DeviceLevel),
}

impl GroupingWord {
    /// The words, for error messages.
    pub const WORDS: &'static str = "device, site, building, line, level:N, all or metric";

    /// Parses one word (case-insensitive); the error says what was expected.
    pub fn parse(word: &str) -> Result<Self, String> {
        let lower = word.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "metric" => Self::Metric,
            "device" => Self::Devices(DeviceLevel::Device),
            "site" => Self::Devices(DeviceLevel::Level(1)),
            "building" => Self::Devices(DeviceLevel::Level(2)),
            "line" => Self::Devices(DeviceLevel::Level(3)),
            "all" => Self::Devices(DeviceLevel::All),
            other => match other.strip_prefix("level:").map(str::parse::<u8>) {
                Some(Ok(n)) if n >= 1 => Self::Devices(DeviceLevel::Level(n)),
                _ => {
                    return Err(format!(
                        "unknown group key `{word}`: expected {}",
                        Self::WORDS
                    ));
                }
            },
        })
    }
}

/// The window kinds by name, as configs write them (`tumbling`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowName {
    Tumbling,
    Hopping,
    Sliding,
    Session,
    Count,
}

impl std::str::FromStr for WindowName {
    type Err = String;

    fn from_str(word: &str) -> Result<Self, String> {
        Ok(match word.to_ascii_lowercase().as_str() {
            "tumbling" => Self::Tumbling,
            "hopping" => Self::Hopping,
            "sliding" => Self::Sliding,
            "session" => Self::Session,
            "count" => Self::Count,
            _ => {
                return Err(format!(
                    "unknown window `{word}` (tumbling, hopping, sliding, session, count)"
                ));
            }
        })
    }
}

impl<'de> Deserialize<'de> for WindowName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = std::borrow::Cow::<str>::deserialize(d)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

/// What a window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows `[k*size, (k+1)*size)` of event time.
    Tumbling { size_ms: u64 },
    /// Windows of `size_ms` starting every `hop_ms` (overlapping when
    /// `hop_ms < size_ms`); a sample belongs to every window covering it.
    Hopping { size_ms: u64, hop_ms: u64 },
    /// Evaluated per sample: the window `(ts - size_ms, ts]` ending at each
    /// sample, emitted once the watermark passes the sample.
    Sliding { size_ms: u64 },
    /// Activity sessions: samples closer than `gap_ms` in event time
    /// belong together; a session closes `gap_ms` after its last sample
    /// (event time), or when it would grow longer than `max_ms`.
    Session { gap_ms: u64, max_ms: Option<u64> },
    /// Every `n` samples in arrival order; with `hop`, the last `n`
    /// samples every `hop` samples.
    Count { n: u64, hop: Option<u64> },
}

impl WindowKind {
    /// Whether a window's range depends only on event time (tumbling,
    /// hopping), so windows of different series over the same range can
    /// be joined: sliding, session and count windows end where each
    /// series' samples fall.
    pub fn is_aligned(&self) -> bool {
        matches!(
            self,
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. }
        )
    }

    /// The kind's name, as configs write it.
    pub fn name(&self) -> &'static str {
        match self {
            WindowKind::Tumbling { .. } => "tumbling",
            WindowKind::Hopping { .. } => "hopping",
            WindowKind::Sliding { .. } => "sliding",
            WindowKind::Session { .. } => "session",
            WindowKind::Count { .. } => "count",
        }
    }

    /// Checks the parameters; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |what: &str, v: u64| {
            if v == 0 {
                Err(format!("{what} must be at least 1"))
            } else {
                Ok(())
            }
        };
        match *self {
            WindowKind::Tumbling { size_ms } | WindowKind::Sliding { size_ms } => {
                positive("window size", size_ms)
            }
            WindowKind::Hopping { size_ms, hop_ms } => {
                positive("window size", size_ms)?;
                positive("hop", hop_ms)?;
                if size_ms / hop_ms > 1000 {
                    return Err("a sample may belong to at most 1000 hopping windows".into());
                }
                Ok(())
            }
            WindowKind::Session { gap_ms, max_ms } => {
                positive("session gap", gap_ms)?;
                max_ms.map_or(Ok(()), |m| positive("session max length", m))
            }
            WindowKind::Count { n, hop } => {
                positive("count", n)?;
                if n > 100_000 {
                    return Err("a count window holds at most 100000 samples".into());
                }
                hop.map_or(Ok(()), |h| positive("count hop", h))
            }
        }
    }
}

/// One aggregate of a window. Written by name in configuration and
/// snapshots: `mean`, `p99`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    Count,
    Sum,
    Mean,
    Min,
    Max,
    /// The value with the earliest event time.
    First,
    /// The value with the latest event time.
    Last,
    /// Sample standard deviation (n - 1), numerically stable (Welford).
    Stddev,
    /// Sample variance (n - 1).
    Variance,
    /// (last - first) per second of event time between them.
    Rate,
    /// last - first.
    Delta,
    /// A quantile, in ten-thousandths (`p99` is 9900, `p99.9` is 9990),
    /// from the window's sketch (relative error [`crate::sketch::ALPHA`]).
    Quantile(u16),
}

impl Aggregate {
    /// Parses `count`, `sum`, `mean` (or `avg`), `min`, `max`, `first`,
    /// `last`, `stddev`, `variance`, `rate`, `delta`, `p50`, `p99.9`, ...
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "mean" | "avg" => Self::Mean,
            "min" => Self::Min,
            "max" => Self::Max,
            "first" => Self::First,
            "last" => Self::Last,
            "stddev" | "std" => Self::Stddev,
            "variance" | "var" => Self::Variance,
            "rate" => Self::Rate,
            "delta" => Self::Delta,
            other => {
                let p: f64 = other.strip_prefix('p')?.parse().ok()?;
                if !(0.0..=100.0).contains(&p) {
                    return None;
                }
                Self::Quantile((p * 100.0).round() as u16)
            }
        })
    }

    pub fn name(self) -> String {
        match self {
            Self::Count => "count".into(),
            Self::Sum => "sum".into(),
            Self::Mean => "mean".into(),
            Self::Min => "min".into(),
            Self::Max => "max".into(),
            Self::First => "first".into(),
            Self::Last => "last".into(),
            Self::Stddev => "stddev".into(),
            Self::Variance => "variance".into(),
            Self::Rate => "rate".into(),
            Self::Delta => "delta".into(),
            Self::Quantile(q) => {
                let p = f64::from(q) / 100.0;
                format!("p{p}")
            }
        }
    }
}

impl Serialize for Aggregate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Aggregate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Aggregate::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown aggregate `{s}` (count, sum, mean, min, max, first, last, stddev, \
                 variance, rate, delta, p50, p99, ...)"
            ))
        })
    }
}

/// Running aggregates of one window: constant work per sample, mergeable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregates {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// Welford's running mean and sum of squared deviations.
    mean: f64,
    m2: f64,
    /// (event time, value) of the earliest and the latest sample.
    pub first: (i64, f64),
    pub last: (i64, f64),
    /// Present when the window's view asks for quantiles (inline: one
    /// pointer fewer to chase per sample).
    pub sketch: Option<Sketch>,
}

impl Default for Aggregates {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Aggregates {
    pub fn new(quantiles: bool) -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            first: (i64::MAX, f64::NAN),
            last: (i64::MIN, f64::NAN),
            sketch: quantiles.then(Sketch::default),
        }
    }

    #[inline]
    pub fn add(&mut self, ts_ms: i64, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
        if ts_ms < self.first.0 {
            self.first = (ts_ms, value);
        }
        if ts_ms >= self.last.0 {
            self.last = (ts_ms, value);
        }
        if let Some(s) = &mut self.sketch {
            s.add(value);
        }
    }

    /// Combines two windows' aggregates (Chan's formula for the variance);
    /// `self` holds the earlier arrivals.
    pub fn merge(&mut self, other: &Aggregates) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = Aggregates {
                sketch: match (&self.sketch, &other.sketch) {
                    (Some(_), Some(s)) => Some(s.clone()),
                    (Some(_), None) => self.sketch.take(),
                    (None, _) => None,
                },
                ..other.clone()
            };
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.first.0 < self.first.0 {
            self.first = other.first;
        }
        if other.last.0 >= self.last.0 {
            self.last = other.last;
        }
        if let (Some(a), Some(b)) = (&mut self.sketch, &other.sketch) {
            a.merge(b);
        }
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }

    pub fn variance(&self) -> f64 {
        if self.count < 2 {
            f64::NAN
        } else {
            self.m2 / (self.count - 1) as f64
        }
    }

    pub fn get(&self, aggregate: Aggregate) -> f64 {
        match aggregate {
            Aggregate::Count => self.count as f64,
            Aggregate::Sum => self.sum,
            Aggregate::Mean => self.mean(),
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::First => self.first.1,
            Aggregate::Last => self.last.1,
            Aggregate::Stddev => self.variance().sqrt(),
            Aggregate::Variance => self.variance(),
            Aggregate::Delta => self.last.1 - self.first.1,
            Aggregate::Rate => {
                let dt = self.last.0.saturating_sub(self.first.0);
                if self.count < 2 || dt <= 0 {
                    f64::NAN
                } else {
                    (self.last.1 - self.first.1) * 1000.0 / dt as f64
                }
            }
            Aggregate::Quantile(q) => self
                .sketch
                .as_ref()
                .map_or(f64::NAN, |s| s.quantile(f64::from(q) / 10_000.0)),
        }
    }

    /// Heap bytes held (the sketch).
    pub fn heap_bytes(&self) -> usize {
        self.sketch.as_ref().map_or(0, Sketch::heap_bytes)
    }
}

/// A closed (or, from a live query, open) window of one group.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// Which view produced it (index into the engine's views).
    pub view: usize,
    pub key: GroupKey,
    /// Inclusive start, event time in Unix milliseconds (count windows:
    /// the earliest sample's).
    pub start_ms: i64,
    /// Exclusive end (count windows: just after the latest sample's).
    pub end_ms: i64,
    pub aggregates: Aggregates,
}
