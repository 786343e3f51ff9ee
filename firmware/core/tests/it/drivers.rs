//! The embedded-hal drivers against mocked buses and pins: the bytes the
//! real driver crates put on the bus, what comes back, and the errors.

use eddy_firmware::drivers::{AdcSensor, AnalogInput, Every, Lm75Sensor, PinOutputs, Sht4xSensor};
use eddy_firmware::{Link, Node, Readings, Sensor, SensorError, SerialLink};
use eddy_proto::link::FrameDecoder;
use eddy_proto::{Command, CommandFrame, Frame};
use embedded_hal::i2c::ErrorKind;
use embedded_hal_mock::eh1::delay::NoopDelay;
use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as PinTx};
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2cTx};
use sensirion_i2c::crc8::calculate;

/// The six bytes an SHT4x answers for `celsius` and `percent`.
fn sht4x_response(celsius: f64, percent: f64) -> Vec<u8> {
    let t = (((celsius + 45.0) / 175.0) * 65535.0).round() as u16;
    let rh = (((percent + 6.0) / 125.0) * 65535.0).round() as u16;
    let (t, rh) = (t.to_be_bytes(), rh.to_be_bytes());
    vec![t[0], t[1], calculate(&t), rh[0], rh[1], calculate(&rh)]
}

fn values(readings: &Readings) -> Vec<(String, f64)> {
    readings
        .iter()
        .map(|r| (r.metric.to_string(), r.value))
        .collect()
}

#[test]
fn sht4x_measures_through_the_real_driver() {
    let expectations = [
        // High-precision measurement command, then the 6-byte response.
        I2cTx::write(0x44, vec![0xFD]),
        I2cTx::read(0x44, sht4x_response(23.5, 41.0)),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Sht4xSensor::new(i2c.clone(), NoopDelay::new());
    let mut out = Readings::new();
    sensor.read(0, &mut out).expect("reads");
    let got = values(&out);
    assert_eq!(got[0].0, "temperature");
    assert!((got[0].1 - 23.5).abs() < 0.01, "{got:?}");
    assert_eq!(got[1].0, "humidity");
    assert!((got[1].1 - 41.0).abs() < 0.01, "{got:?}");
    i2c.done();
}

#[test]
fn sht4x_errors_are_named_not_fatal() {
    let mut corrupt = sht4x_response(20.0, 50.0);
    corrupt[2] ^= 0xFF;
    let expectations = [
        I2cTx::write(0x44, vec![0xFD]),
        I2cTx::read(0x44, corrupt),
        I2cTx::write(0x44, vec![0xFD]).with_error(ErrorKind::Other),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Sht4xSensor::new(i2c.clone(), NoopDelay::new());
    let mut out = Readings::new();
    assert_eq!(sensor.read(0, &mut out), Err(SensorError::BadData));
    assert_eq!(sensor.read(0, &mut out), Err(SensorError::Bus));
    assert!(out.is_empty());
    i2c.done();
}

#[test]
fn lm75_reads_its_temperature_register() {
    // 0x19 0x80 = 25.5 °C (11-bit, two's complement, 0.125 °C steps).
    let expectations = [
        I2cTx::write_read(0x48, vec![0x00], vec![0x19, 0x80]),
        I2cTx::write_read(0x48, vec![0x00], vec![0xF5, 0x00]),
        I2cTx::write_read(0x48, vec![0x00], vec![0, 0]).with_error(ErrorKind::Other),
    ];
    let mut i2c = I2cMock::new(&expectations);
    let mut sensor = Lm75Sensor::new(i2c.clone(), 0x48, "board_temp");
    let mut out = Readings::new();
    sensor.read(0, &mut out).expect("reads");
    sensor.read(0, &mut out).expect("reads");
    assert_eq!(
        values(&out),
        vec![("board_temp".into(), 25.5), ("board_temp".into(), -11.0)]
    );
    assert_eq!(sensor.read(0, &mut out), Err(SensorError::Bus));
    i2c.done();
}

struct FakeAdc(Vec<u16>);

impl AnalogInput for FakeAdc {
    fn read_raw(&mut self) -> Result<u16, SensorError> {
        self.0.pop().ok_or(SensorError::Bus)
    }
}

#[test]
fn adc_readings_are_scaled_and_out_of_range_raw_values_rejected() {
    let mut adc = AdcSensor::new(FakeAdc(vec![5000, 4095, 0, 2048]), "adc0", 4095, 3.3);
    let mut out = Readings::new();
    for _ in 0..3 {
        adc.read(0, &mut out).expect("reads");
    }
    let got: Vec<f64> = out.iter().map(|r| r.value).collect();
    assert!((got[0] - 1.6504).abs() < 0.001, "{got:?}");
    assert_eq!(&got[1..], &[0.0, 3.3]);
    assert_eq!(adc.read(0, &mut out), Err(SensorError::BadData));
    assert_eq!(adc.read(0, &mut out), Err(SensorError::Bus));
}

struct Counter(u32);

impl Sensor for Counter {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        self.0 += 1;
        out.push(eddy_proto::Reading {
            metric: "n".try_into().map_err(|_| SensorError::BadData)?,
            value: f64::from(self.0),
        })
        .map_err(|_| SensorError::Full)
    }
}

#[test]
fn each_sensor_keeps_its_own_interval() {
    // Base tick 100 ms; the slow sensor every 300 ms.
    let mut node = Node::new("dev-1", 1, 100).expect("valid");
    let mut fast = Counter(0);
    let mut slow = Every::new(Counter(0), 300);
    let mut metrics_per_frame = Vec::new();
    for now in (0..1000).step_by(100) {
        let mut sensors: [&mut dyn Sensor; 2] = [&mut fast, &mut slow];
        let frame = node.poll(now, 0, &mut sensors).expect("a frame every tick");
        metrics_per_frame.push(frame.readings.len());
    }
    assert_eq!(metrics_per_frame, vec![2, 1, 1, 2, 1, 1, 2, 1, 1, 2]);
}

#[test]
fn commands_drive_output_pins_and_the_state_is_reported() {
    let pin0 = PinMock::new(&[PinTx::set(State::Low)]);
    let pin1 = PinMock::new(&[
        PinTx::set(State::Low),
        PinTx::set(State::High),
        PinTx::set(State::Low),
    ]);
    let mut outputs = PinOutputs::new([pin0.clone(), pin1.clone()]);
    let mut node = Node::new("dev-1", 1, 100).expect("valid");
    let command = |pin, on| {
        Frame::Command(CommandFrame {
            device: "dev-1".try_into().expect("fits"),
            id: 1,
            command: Command::SetOutput { pin, on },
        })
    };
    node.handle(&command(1, true), &mut outputs)
        .expect("applied");
    assert_eq!(outputs.state(), 0b10);
    let mut out = Readings::new();
    outputs.read(0, &mut out).expect("reads");
    assert_eq!(values(&out), vec![("outputs".into(), 2.0)]);
    node.handle(&command(1, false), &mut outputs)
        .expect("applied");
    assert!(
        node.handle(&command(2, true), &mut outputs).is_err(),
        "no pin 2"
    );
    assert_eq!(outputs.state(), 0);
    for mut pin in [pin0, pin1] {
        pin.done();
    }
}

#[test]
fn a_serial_link_writes_frames_a_decoder_reads_back() {
    let mut wire = [0u8; 512];
    let frame = Node::new("dev-1", 9, 100)
        .expect("valid")
        .hello("board", "1.0.0");
    let used = {
        let mut link = SerialLink::new(&mut wire[..]);
        link.send(&frame).expect("fits");
        link.send(&frame).expect("fits");
        // An embedded-io slice writer advances past what it wrote.
        512 - link.into_inner().len()
    };
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    decoder.feed(&wire[..used], |r| got.push(r));
    assert_eq!(got, vec![Ok(frame.clone()), Ok(frame)]);
}
