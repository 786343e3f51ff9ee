//! Sensor faults the testbench injects: drift, spikes, stuck-at values,
//! dropouts and step changes, on top of any sensor.

use eddy_firmware::{Readings, Sensor, SensorError};

/// One fault, on the board clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Adds `per_hour` for every hour since boot (a drifting sensor).
    Drift { per_hour: f64 },
    /// Adds `magnitude` to the first reading at or after every `every_ms`.
    Spike { every_ms: u64, magnitude: f64 },
    /// Repeats the last good reading from `from_ms` for `duration_ms`.
    StuckAt { from_ms: u64, duration_ms: u64 },
    /// Reads fail (a bus error) from `from_ms` for `duration_ms`.
    Dropout { from_ms: u64, duration_ms: u64 },
    /// Adds `delta` from `at_ms` on (a recalibration, a moved sensor).
    Step { at_ms: u64, delta: f64 },
}

fn active(now_ms: u64, from_ms: u64, duration_ms: u64) -> bool {
    now_ms >= from_ms && now_ms - from_ms < duration_ms
}

/// A sensor with faults applied to every value it reads.
#[derive(Debug, Clone)]
pub struct Faulty<S> {
    inner: S,
    faults: Vec<Fault>,
    last: Option<Readings>,
    next_spike_ms: u64,
}

impl<S: Sensor> Faulty<S> {
    pub fn new(inner: S, faults: Vec<Fault>) -> Self {
        Self {
            inner,
            faults,
            last: None,
            next_spike_ms: 0,
        }
    }

    fn offset(&mut self, now_ms: u64) -> f64 {
        let mut offset = 0.0;
        for fault in &self.faults {
            match *fault {
                Fault::Drift { per_hour } => offset += per_hour * now_ms as f64 / 3_600_000.0,
                Fault::Step { at_ms, delta } if now_ms >= at_ms => offset += delta,
                Fault::Spike {
                    every_ms,
                    magnitude,
                } if every_ms > 0 => {
                    if self.next_spike_ms == 0 {
                        self.next_spike_ms = every_ms;
                    }
                    if now_ms >= self.next_spike_ms {
                        offset += magnitude;
                        self.next_spike_ms = (now_ms / every_ms + 1) * every_ms;
                    }
                }
                _ => {}
            }
        }
        offset
    }
}

impl<S: Sensor> Sensor for Faulty<S> {
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let window = |f: &Fault| match *f {
            Fault::Dropout {
                from_ms,
                duration_ms,
            } => Some((true, active(now_ms, from_ms, duration_ms))),
            Fault::StuckAt {
                from_ms,
                duration_ms,
            } => Some((false, active(now_ms, from_ms, duration_ms))),
            _ => None,
        };
        if self
            .faults
            .iter()
            .filter_map(window)
            .any(|(drop, on)| drop && on)
        {
            return Err(SensorError::Bus);
        }
        let stuck = self
            .faults
            .iter()
            .filter_map(window)
            .any(|(drop, on)| !drop && on);
        if stuck && let Some(last) = &self.last {
            for r in last {
                out.push(r.clone()).map_err(|_| SensorError::Full)?;
            }
            return Ok(());
        }
        let mut fresh = Readings::new();
        self.inner.read(now_ms, &mut fresh)?;
        let offset = self.offset(now_ms);
        for r in &mut fresh {
            r.value += offset;
        }
        for r in &fresh {
            out.push(r.clone()).map_err(|_| SensorError::Full)?;
        }
        self.last = Some(fresh);
        Ok(())
    }
}
