use eddy_firmware::{Node, NodeError, Outputs, Readings, Sensor, SensorError};
use eddy_proto::{Command, CommandFrame, Frame, Reading};

struct Fixed {
    metric: &'static str,
    value: f64,
    fail: bool,
}

impl Sensor for Fixed {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        if self.fail {
            return Err(SensorError::Bus);
        }
        out.push(Reading {
            metric: self.metric.try_into().map_err(|_| SensorError::BadData)?,
            value: self.value,
        })
        .map_err(|_| SensorError::Full)
    }
}

#[derive(Default)]
struct Pins([bool; 4]);

impl Outputs for Pins {
    fn set(&mut self, pin: u8, on: bool) -> bool {
        match self.0.get_mut(usize::from(pin)) {
            Some(p) => {
                *p = on;
                true
            }
            None => false,
        }
    }
}

fn temp(value: f64) -> Fixed {
    Fixed {
        metric: "temperature",
        value,
        fail: false,
    }
}

fn command(device: &str, command: Command) -> Frame {
    Frame::Command(CommandFrame {
        device: device.try_into().expect("fits"),
        id: 1,
        command,
    })
}

#[test]
fn samples_on_its_interval_with_consecutive_sequence_numbers() {
    let mut node = Node::new("dev-1", 7, 100).expect("valid");
    let mut t = temp(21.5);
    let mut seqs = Vec::new();
    for now in (0..1000).step_by(10) {
        if let Some(frame) = node.poll(now, 1_700_000_000_000 + now, &mut [&mut t]) {
            assert_eq!(frame.readings[0].value, 21.5);
            assert_eq!(frame.timestamp_ms, 1_700_000_000_000 + now);
            seqs.push((now, frame.seq));
        }
    }
    assert_eq!(
        seqs,
        (0..10).map(|i| (i * 100, i as u32)).collect::<Vec<_>>()
    );
}

#[test]
fn a_stall_skips_missed_slots_instead_of_bursting() {
    let mut node = Node::new("dev-1", 7, 100).expect("valid");
    let mut t = temp(1.0);
    assert!(node.poll(0, 0, &mut [&mut t]).is_some());
    // The board was busy for a second.
    assert!(node.poll(1050, 0, &mut [&mut t]).is_some());
    assert!(node.poll(1060, 0, &mut [&mut t]).is_none());
    assert_eq!(node.due_in(1060), 90);
}

#[test]
fn failing_sensors_are_counted_and_left_out() {
    let mut node = Node::new("dev-1", 7, 100).expect("valid");
    let mut good = temp(3.0);
    let mut bad = Fixed {
        metric: "humidity",
        value: 0.0,
        fail: true,
    };
    let frame = node
        .poll(0, 0, &mut [&mut good, &mut bad])
        .expect("one reading");
    assert_eq!(frame.readings.len(), 1);
    assert_eq!(node.sensor_errors(), 1);

    // When nothing could be read, no frame and no sequence number is used.
    assert!(node.poll(100, 0, &mut [&mut bad]).is_none());
    assert_eq!(node.next_seq(), 1);
}

#[test]
fn commands_change_interval_outputs_and_request_reboot() {
    let mut node = Node::new("dev-1", 7, 1000).expect("valid");
    let mut pins = Pins::default();
    node.handle(
        &command("dev-1", Command::SetInterval { ms: 50 }),
        &mut pins,
    )
    .expect("applies");
    assert_eq!(node.interval_ms(), 50);
    node.handle(
        &command("dev-1", Command::SetOutput { pin: 2, on: true }),
        &mut pins,
    )
    .expect("applies");
    assert!(pins.0[2]);
    assert_eq!(
        node.handle(
            &command("dev-1", Command::SetOutput { pin: 9, on: true }),
            &mut pins
        ),
        Err(NodeError::NoSuchOutput { pin: 9 })
    );
    assert_eq!(
        node.handle(&command("dev-1", Command::SetInterval { ms: 1 }), &mut pins),
        Err(NodeError::IntervalTooShort { ms: 1 })
    );
    assert_eq!(
        node.handle(&command("dev-2", Command::Reboot), &mut pins),
        Err(NodeError::NotForThisDevice)
    );
    assert!(!node.reboot_requested());
    node.handle(&command("dev-1", Command::Reboot), &mut pins)
        .expect("applies");
    assert!(node.reboot_requested());
}

#[test]
fn bad_device_ids_are_refused() {
    assert!(Node::new("a/b", 7, 100).is_err());
    assert!(Node::new("", 7, 100).is_err());
    assert!(Node::new(&"x".repeat(33), 7, 100).is_err());
}

#[test]
fn hello_carries_board_and_version() {
    let node = Node::new("dev-1", 7, 100).expect("valid");
    match node.hello("host-sim", "0.1.0") {
        Frame::Hello(h) => {
            assert_eq!(h.board.as_str(), "host-sim");
            assert_eq!(h.firmware.as_str(), "0.1.0");
        }
        other => panic!("not a hello: {other:?}"),
    }
}
