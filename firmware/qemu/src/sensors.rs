//! Simulated parts for the QEMU board, which emulates no sensors: I2C
//! devices that answer the real drivers' bus traffic (an SHT4x at 0x44, an
//! LM75 at 0x48), an ADC channel and output pins. The firmware runs the
//! same driver code it would run against real parts.

use core::convert::Infallible;

use eddy_firmware::SensorError;
use eddy_firmware::drivers::AnalogInput;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorType as PinErrorType, OutputPin};
use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use crate::millis;

/// SHT4x address and its high-precision measurement command.
const SHT4X: u8 = 0x44;
const SHT4X_MEASURE_HIGH: u8 = 0xFD;
/// LM75 address and its temperature register.
const LM75: u8 = 0x48;
const LM75_TEMPERATURE: u8 = 0x00;

/// About 22 °C, overheating to 75 °C for 3 s of every 10 s from 2 s after
/// boot: enough to fire and resolve a threshold alert in a short test.
fn air_temperature(now_ms: u64) -> f64 {
    let wobble = (now_ms % 1_000) as f64 / 1_000.0 - 0.5;
    if (2_000..5_000).contains(&(now_ms % 10_000)) {
        75.0 + wobble
    } else {
        22.0 + wobble
    }
}

/// Sensirion's CRC-8 (polynomial 0x31, init 0xFF).
fn crc8(word: [u8; 2]) -> u8 {
    let mut crc = 0xFFu8;
    for byte in word {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// An I2C bus with the simulated parts on it.
#[derive(Default)]
pub struct SimBus {
    /// An SHT4x measurement was started (and when).
    sht4x_started: Option<u64>,
}

impl ErrorType for SimBus {
    type Error = ErrorKind;
}

impl SimBus {
    fn sht4x_response(&self, out: &mut [u8]) -> Result<(), ErrorKind> {
        let Some(at) = self.sht4x_started else {
            // Read without a command: the part does not acknowledge.
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        };
        let t = ((air_temperature(at) + 45.0) / 175.0 * 65535.0) as u16;
        let rh = ((45.0 + 6.0) / 125.0 * 65535.0) as u16;
        let (t, rh) = (t.to_be_bytes(), rh.to_be_bytes());
        let bytes = [t[0], t[1], crc8(t), rh[0], rh[1], crc8(rh)];
        let n = out.len().min(bytes.len());
        out[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    }

    fn lm75_temperature(out: &mut [u8]) {
        // The board runs about 9 °C above the air, in 0.125 °C steps.
        let eighths = ((air_temperature(millis()) + 9.0) / 0.125) as i16;
        let bytes = ((eighths as u16) << 5).to_be_bytes();
        let n = out.len().min(2);
        out[..n].copy_from_slice(&bytes[..n]);
    }
}

impl I2c for SimBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        for op in operations {
            match (address, op) {
                (SHT4X, Operation::Write([SHT4X_MEASURE_HIGH])) => {
                    self.sht4x_started = Some(millis());
                }
                (SHT4X, Operation::Read(out)) => self.sht4x_response(out)?,
                (LM75, Operation::Write([LM75_TEMPERATURE])) => {}
                (LM75, Operation::Read(out)) => Self::lm75_temperature(out),
                _ => return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
            }
        }
        Ok(())
    }
}

/// Delays on the SysTick millisecond clock, sleeping between ticks.
pub struct TickDelay;

impl DelayNs for TickDelay {
    fn delay_ns(&mut self, ns: u32) {
        let until = millis() + u64::from(ns.div_ceil(1_000_000)) + 1;
        while millis() < until {
            cortex_m::asm::wfi();
        }
    }
}

/// A 12-bit ADC channel reading a slow 0..3.3 V sawtooth.
pub struct SimAdc;

impl AnalogInput for SimAdc {
    fn read_raw(&mut self) -> Result<u16, SensorError> {
        Ok(((millis() / 10) % 4096) as u16)
    }
}

/// An output pin with nothing attached.
#[derive(Default)]
pub struct SimPin;

impl PinErrorType for SimPin {
    type Error = Infallible;
}

impl OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
