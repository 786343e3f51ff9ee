//! Recorded series as sensors: a CSV of `timestamp,value` rows (the NAB
//! format under `testbench/data/`) replayed at real or accelerated speed.

use std::path::Path;
use std::sync::Arc;

use eddy_firmware::{Readings, Sensor, SensorError};
use eddy_proto::{MetricName, Reading};

/// Most rows a series may hold (a year of 1 s samples fits 32 times).
pub const MAX_ROWS: usize = 1_000_000;

/// Why a series could not be loaded; names the line.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("line 1: expected the header `timestamp,value`")]
    Header,
    #[error("line {line}: {reason}")]
    Row { line: usize, reason: &'static str },
    #[error("more than {MAX_ROWS} rows")]
    TooLong,
    #[error("no rows")]
    Empty,
    #[error("metric name `{0}` breaks the wire contract")]
    Metric(String),
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS` (UTC, optional fractional seconds) to Unix ms.
fn parse_timestamp(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    let valid = (0..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&day)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0.0..61.0).contains(&sec)
        && d.next().is_none()
        && t.next().is_none();
    valid.then(|| {
        (days_from_civil(y, mo, day) * 86_400 + h * 3_600 + mi * 60) * 1_000
            + (sec * 1_000.0) as i64
    })
}

/// A recorded series: event times (Unix ms, increasing) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub points: Vec<(i64, f64)>,
    /// Rows skipped because their time was not after the previous row's
    /// (real recordings repeat an hour now and then).
    pub skipped: usize,
}

impl Series {
    /// Parses `timestamp,value` CSV text.
    pub fn parse(text: &str) -> Result<Self, ReplayError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("timestamp,value") {
            return Err(ReplayError::Header);
        }
        let mut points: Vec<(i64, f64)> = Vec::new();
        let mut skipped = 0;
        for (i, line) in lines.enumerate() {
            let line_no = i + 2;
            if line.trim().is_empty() {
                continue;
            }
            if points.len() == MAX_ROWS {
                return Err(ReplayError::TooLong);
            }
            let row = |reason| ReplayError::Row {
                line: line_no,
                reason,
            };
            let (ts, value) = line
                .split_once(',')
                .ok_or_else(|| row("expected two fields"))?;
            let ts =
                parse_timestamp(ts).ok_or_else(|| row("timestamp is not YYYY-MM-DD HH:MM:SS"))?;
            let value: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| row("value is not a finite number"))?;
            if points.last().is_some_and(|(prev, _)| ts <= *prev) {
                skipped += 1;
                continue;
            }
            points.push((ts, value));
        }
        if points.is_empty() {
            return Err(ReplayError::Empty);
        }
        Ok(Self { points, skipped })
    }

    pub fn load(path: &Path) -> Result<Self, ReplayError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Event-time span from the first to the last row.
    pub fn span_ms(&self) -> i64 {
        self.points.last().map_or(0, |l| l.0) - self.points[0].0
    }

    /// The value in effect at `offset_ms` after the first row: the last
    /// row at or before it (sample-and-hold, as the sensor reported it).
    /// The last row holds for one more interval, then the series starts over.
    pub fn value_at(&self, offset_ms: i64) -> f64 {
        let n = self.points.len();
        let last_gap = if n > 1 {
            self.points[n - 1].0 - self.points[n - 2].0
        } else {
            1
        };
        let period = (self.span_ms() + last_gap).max(1);
        let t = self.points[0].0 + offset_ms.rem_euclid(period);
        let i = self.points.partition_point(|(ts, _)| *ts <= t);
        self.points[i.saturating_sub(1)].1
    }
}

/// A sensor replaying a [`Series`]: `speedup` series-milliseconds pass per
/// board millisecond (300 plays a 5-minute series at one row a second).
#[derive(Debug, Clone)]
pub struct Replay {
    metric: MetricName,
    series: Arc<Series>,
    speedup: f64,
}

impl Replay {
    pub fn new(metric: &str, series: Arc<Series>, speedup: f64) -> Result<Self, ReplayError> {
        eddy_proto::valid_name(metric, eddy_proto::MAX_METRIC_LEN)
            .map_err(|_| ReplayError::Metric(metric.to_string()))?;
        let metric = metric
            .try_into()
            .map_err(|_| ReplayError::Metric(metric.to_string()))?;
        Ok(Self {
            metric,
            series,
            speedup: speedup.max(0.0),
        })
    }
}

impl Sensor for Replay {
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let offset = (now_ms as f64 * self.speedup) as i64;
        out.push(Reading {
            metric: self.metric.clone(),
            value: self.series.value_at(offset),
        })
        .map_err(|_| SensorError::Full)
    }
}
