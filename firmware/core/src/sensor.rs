//! The sensor abstraction boards implement.

use eddy_proto::{MAX_READINGS, Reading};

/// Readings collected for one telemetry frame.
pub type Readings = heapless::Vec<Reading, MAX_READINGS>;

/// Why a sensor produced no reading this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorError {
    /// The bus or the device did not answer.
    Bus,
    /// The device answered with data that fails its own checks.
    BadData,
    /// The frame has no room left for this sensor's readings.
    Full,
}

/// A source of readings. Drivers for real parts wrap embedded-hal buses;
/// simulated sensors compute values.
pub trait Sensor {
    /// Takes a measurement at `now_ms` (board clock) and appends its readings.
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError>;
}
