//! Simulated sensors behind the firmware core's `Sensor` trait (QEMU has
//! no sensors). They are deterministic functions of the board clock.

use core::cell::Cell;

use eddy_firmware::{Outputs, Readings, Sensor, SensorError};
use eddy_proto::Reading;

fn push(out: &mut Readings, metric: &str, value: f64) -> Result<(), SensorError> {
    out.push(Reading {
        metric: metric.try_into().map_err(|_| SensorError::BadData)?,
        value,
    })
    .map_err(|_| SensorError::Full)
}

/// A thermometer at about 22 °C that overheats to 75 °C for 3 s of every
/// 10 s, starting 2 s after boot: enough to fire and resolve a threshold
/// alert in a short test.
pub struct Thermometer;

impl Sensor for Thermometer {
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let phase = now_ms % 10_000;
        let wobble = (now_ms % 1_000) as f64 / 1_000.0 - 0.5;
        let value = if (2_000..5_000).contains(&phase) {
            75.0 + wobble
        } else {
            22.0 + wobble
        };
        push(out, "temperature", value)
    }
}

/// An ADC channel reading a slow 0..3.3 V sawtooth, in volts.
pub struct Adc;

impl Sensor for Adc {
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let raw = ((now_ms / 10) % 4096) as f64;
        push(out, "adc0", raw * 3.3 / 4095.0)
    }
}

/// Four output pins (relays, LEDs); their state is reported as the
/// `outputs` bit mask so a command's effect is visible upstream.
#[derive(Default)]
pub struct Pins(Cell<u32>);

impl Outputs for &Pins {
    fn set(&mut self, pin: u8, on: bool) -> bool {
        if pin >= 4 {
            return false;
        }
        let bit = 1 << pin;
        let state = self.0.get();
        self.0.set(if on { state | bit } else { state & !bit });
        true
    }
}

impl Sensor for &Pins {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        push(out, "outputs", f64::from(self.0.get()))
    }
}
