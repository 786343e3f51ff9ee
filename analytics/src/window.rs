//! Window aggregates and results.

use serde::Deserialize;

use crate::SeriesKey;

/// Which aggregate of a window a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Count,
    Sum,
    Mean,
    Min,
    Max,
}

impl Aggregate {
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Mean => "mean",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
        }
    }
}

/// Running aggregates of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregates {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for Aggregates {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Aggregates {
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }

    pub fn get(&self, aggregate: Aggregate) -> f64 {
        match aggregate {
            Aggregate::Count => self.count as f64,
            Aggregate::Sum => self.sum,
            Aggregate::Mean => self.mean(),
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
        }
    }
}

/// A closed window of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowResult {
    pub series: SeriesKey,
    /// Inclusive start, event time in Unix milliseconds.
    pub start_ms: i64,
    /// Exclusive end.
    pub end_ms: i64,
    pub aggregates: Aggregates,
}
