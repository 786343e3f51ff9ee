//! Sensors and outputs on embedded-hal 1.0, through maintained driver
//! crates: any board that provides an `I2c` bus, a `DelayNs` and
//! `OutputPin`s gets them for free.
//!
//! - [`Sht4xSensor`]: Sensirion SHT4x temperature and humidity (`sht4x`).
//! - [`Lm75Sensor`]: LM75 family temperature (`lm75`).
//! - [`AdcSensor`]: one ADC channel scaled to a physical unit. embedded-hal
//!   1.0 has no ADC trait, so boards implement the small [`AnalogInput`].
//! - [`Every`]: gives any sensor its own sampling interval.
//! - [`PinOutputs`]: command-driven output pins, reported as `outputs`.
//!
//! Several sensors on one bus share it with `embedded-hal-bus`.

use eddy_proto::Reading;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use embedded_hal::i2c::I2c;

use crate::{Outputs, Readings, Sensor, SensorError};

fn push(out: &mut Readings, metric: &str, value: f64) -> Result<(), SensorError> {
    out.push(Reading {
        metric: metric.try_into().map_err(|_| SensorError::BadData)?,
        value,
    })
    .map_err(|_| SensorError::Full)
}

/// An SHT4x on an I2C bus: `temperature` (°C) and `humidity` (%RH), high
/// precision (about 9 ms per measurement, spent in `delay`).
#[derive(Debug)]
pub struct Sht4xSensor<I2C, D> {
    device: sht4x::Sht4x<I2C, D>,
    delay: D,
}

impl<I2C: I2c, D: DelayNs> Sht4xSensor<I2C, D> {
    /// The sensor at its default address (0x44).
    pub fn new(i2c: I2C, delay: D) -> Self {
        Self {
            device: sht4x::Sht4x::new(i2c),
            delay,
        }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.device.destroy()
    }
}

impl<I2C: I2c, D: DelayNs> Sensor for Sht4xSensor<I2C, D> {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let m = self
            .device
            .measure(sht4x::Precision::High, &mut self.delay)
            .map_err(|e| match e {
                sht4x::Error::Crc => SensorError::BadData,
                _ => SensorError::Bus,
            })?;
        push(
            out,
            "temperature",
            f64::from(m.temperature_milli_celsius()) / 1000.0,
        )?;
        push(
            out,
            "humidity",
            f64::from(m.humidity_milli_percent()) / 1000.0,
        )
    }
}

/// An LM75 (or compatible) temperature sensor, reported as `metric`.
pub struct Lm75Sensor<I2C> {
    device: lm75::Lm75<I2C, lm75::ic::Lm75>,
    metric: &'static str,
}

impl<I2C> core::fmt::Debug for Lm75Sensor<I2C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Lm75Sensor")
            .field("metric", &self.metric)
            .finish_non_exhaustive()
    }
}

impl<I2C: I2c> Lm75Sensor<I2C> {
    /// The sensor at I2C `address` (0x48 with all address pins low).
    pub fn new(i2c: I2C, address: u8, metric: &'static str) -> Self {
        Self {
            device: lm75::Lm75::new(i2c, lm75::Address::from(address)),
            metric,
        }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.device.destroy()
    }
}

impl<I2C: I2c> Sensor for Lm75Sensor<I2C> {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let celsius = self
            .device
            .read_temperature()
            .map_err(|_| SensorError::Bus)?;
        push(out, self.metric, f64::from(celsius))
    }
}

/// One ADC channel as the board provides it.
pub trait AnalogInput {
    /// A raw conversion result.
    fn read_raw(&mut self) -> Result<u16, SensorError>;
}

/// An ADC channel scaled linearly: `raw * full_scale / max_raw`.
#[derive(Debug)]
pub struct AdcSensor<A> {
    input: A,
    metric: &'static str,
    max_raw: u16,
    full_scale: f64,
}

impl<A: AnalogInput> AdcSensor<A> {
    /// E.g. a 12-bit ADC on a 3.3 V reference: `new(pin, "adc0", 4095, 3.3)`.
    pub fn new(input: A, metric: &'static str, max_raw: u16, full_scale: f64) -> Self {
        Self {
            input,
            metric,
            max_raw: max_raw.max(1),
            full_scale,
        }
    }
}

impl<A: AnalogInput> Sensor for AdcSensor<A> {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        let raw = self.input.read_raw()?;
        if raw > self.max_raw {
            return Err(SensorError::BadData);
        }
        let value = f64::from(raw) * self.full_scale / f64::from(self.max_raw);
        push(out, self.metric, value)
    }
}

/// A sensor read only every `interval_ms` (a slow humidity sensor next to
/// a fast ADC). Between its slots it adds nothing to the frame; the node's
/// interval is the base tick.
#[derive(Debug)]
pub struct Every<S> {
    sensor: S,
    interval_ms: u64,
    next_ms: Option<u64>,
}

impl<S: Sensor> Every<S> {
    pub fn new(sensor: S, interval_ms: u32) -> Self {
        Self {
            sensor,
            interval_ms: u64::from(interval_ms.max(1)),
            next_ms: None,
        }
    }
}

impl<S: Sensor> Sensor for Every<S> {
    fn read(&mut self, now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        if self.next_ms.is_some_and(|next| now_ms < next) {
            return Ok(());
        }
        // Stay on the grid; after a stall, skip missed slots.
        self.next_ms = Some(match self.next_ms {
            Some(next) if now_ms - next < self.interval_ms => next + self.interval_ms,
            _ => now_ms + self.interval_ms,
        });
        self.sensor.read(now_ms, out)
    }
}

/// Up to 32 output pins driven by `SetOutput` commands; their state is
/// also a sensor (`outputs`, a bit mask), so a command's effect shows in
/// the data.
#[derive(Debug)]
pub struct PinOutputs<P, const N: usize> {
    pins: [P; N],
    state: u32,
}

impl<P: OutputPin, const N: usize> PinOutputs<P, N> {
    /// Takes the pins; they are driven low first, so the reported state
    /// is true from the start.
    pub fn new(mut pins: [P; N]) -> Self {
        for pin in &mut pins {
            let _ = pin.set_low();
        }
        Self { pins, state: 0 }
    }

    pub fn state(&self) -> u32 {
        self.state
    }
}

impl<P: OutputPin, const N: usize> Outputs for PinOutputs<P, N> {
    fn set(&mut self, pin: u8, on: bool) -> bool {
        let Some(p) = self.pins.get_mut(usize::from(pin)).filter(|_| pin < 32) else {
            return false;
        };
        let driven = if on { p.set_high() } else { p.set_low() };
        if driven.is_err() {
            return false;
        }
        let bit = 1u32 << pin;
        self.state = if on {
            self.state | bit
        } else {
            self.state & !bit
        };
        true
    }
}

impl<P: OutputPin, const N: usize> Sensor for PinOutputs<P, N> {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        push(out, "outputs", f64::from(self.state))
    }
}
