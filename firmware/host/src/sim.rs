//! Simulated sensors: a waveform with noise and scheduled excursions.

use std::f64::consts::TAU;

use eddy_firmware::{Readings, Sensor, SensorError};
use eddy_proto::{MetricName, Reading};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A sensor a simulated device can own: any `Sensor` that is `Send` and
/// `Debug` (waveforms, replayed series, either with faults).
pub trait HostSensor: Sensor + Send + std::fmt::Debug {}

impl<T: Sensor + Send + std::fmt::Debug> HostSensor for T {}

/// A simulated device's sensor.
pub type SimSensor = Box<dyn HostSensor>;

impl Sensor for Box<dyn HostSensor> {
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        (**self).read(now_ms, out)
    }
}

/// A temporary offset added to a signal: `offset` during
/// `[first_ms + k * every_ms, first_ms + k * every_ms + duration_ms)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Excursion {
    pub first_ms: u64,
    pub every_ms: u64,
    pub duration_ms: u64,
    pub offset: f64,
}

impl Excursion {
    fn offset_at(&self, now_ms: u64) -> f64 {
        let Some(since) = now_ms.checked_sub(self.first_ms) else {
            return 0.0;
        };
        let phase = if self.every_ms == 0 {
            since
        } else {
            since % self.every_ms
        };
        if phase < self.duration_ms {
            self.offset
        } else {
            0.0
        }
    }
}

/// `base + amplitude * sin(2π t / period) + uniform noise + excursions`.
#[derive(Debug, Clone)]
pub struct Waveform {
    metric: MetricName,
    pub base: f64,
    pub amplitude: f64,
    pub period_ms: u64,
    pub noise: f64,
    pub excursion: Option<Excursion>,
    rng: SmallRng,
}

impl Waveform {
    /// A waveform for `metric`; `None` when the name breaks the wire contract.
    pub fn new(metric: &str, base: f64, seed: u64) -> Option<Self> {
        eddy_proto::valid_name(metric, eddy_proto::MAX_METRIC_LEN).ok()?;
        Some(Self {
            metric: metric.try_into().ok()?,
            base,
            amplitude: 0.0,
            period_ms: 60_000,
            noise: 0.0,
            excursion: None,
            rng: SmallRng::seed_from_u64(seed),
        })
    }

    pub fn value_at(&mut self, now_ms: u64) -> f64 {
        let phase = if self.period_ms == 0 {
            0.0
        } else {
            (now_ms % self.period_ms) as f64 / self.period_ms as f64
        };
        let noise = if self.noise > 0.0 {
            self.rng.random_range(-self.noise..=self.noise)
        } else {
            0.0
        };
        self.base
            + self.amplitude * (TAU * phase).sin()
            + noise
            + self.excursion.map_or(0.0, |e| e.offset_at(now_ms))
    }
}

impl Sensor for Waveform {
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let value = self.value_at(now_ms);
        out.push(Reading {
            metric: self.metric.clone(),
            value,
        })
        .map_err(|_| SensorError::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excursions_apply_only_inside_their_windows() {
        let e = Excursion {
            first_ms: 1000,
            every_ms: 5000,
            duration_ms: 2000,
            offset: 50.0,
        };
        let got: Vec<f64> = [0, 999, 1000, 2999, 3000, 6000, 8000]
            .iter()
            .map(|t| e.offset_at(*t))
            .collect();
        assert_eq!(got, vec![0.0, 0.0, 50.0, 50.0, 0.0, 50.0, 0.0]);
    }

    #[test]
    fn noise_stays_within_its_bound() {
        let mut w = Waveform::new("t", 20.0, 7).expect("valid");
        w.noise = 0.5;
        assert!((0..1000).all(|t| (w.value_at(t) - 20.0).abs() <= 0.5));
        assert!(Waveform::new("bad/name", 0.0, 1).is_none());
    }
}
