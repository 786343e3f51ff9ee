//! The device node: sampling schedule, telemetry numbering, commands.

use eddy_proto::{
    Command, DeviceId, Frame, Hello, InvalidName, MAX_DEVICE_ID_LEN, Telemetry, valid_name,
};

use crate::{Readings, Sensor};

/// Shortest sampling interval a command may set, so a bad command cannot
/// saturate the link.
pub const MIN_INTERVAL_MS: u32 = 10;

/// Digital outputs a board exposes to commands (relays, LEDs, valves).
pub trait Outputs {
    /// Drives output `pin`; returns false when the board has no such pin.
    fn set(&mut self, pin: u8, on: bool) -> bool;
}

/// Why a node could not be created or a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeError {
    BadDeviceId(InvalidName),
    IntervalTooShort { ms: u32 },
    NoSuchOutput { pin: u8 },
    NotForThisDevice,
}

/// One device's firmware state.
#[derive(Debug)]
pub struct Node {
    device: DeviceId,
    boot: u32,
    interval_ms: u32,
    next_sample_ms: u64,
    next_seq: u32,
    sensor_errors: u32,
    reboot_requested: bool,
}

impl Node {
    /// A node that samples every `interval_ms`, starting at the first poll.
    ///
    /// `boot` must differ from the previous boot's (a counter kept in
    /// flash, or a random number): sequence numbers restart at 0 with it.
    pub fn new(device: &str, boot: u32, interval_ms: u32) -> Result<Self, NodeError> {
        valid_name(device, MAX_DEVICE_ID_LEN).map_err(NodeError::BadDeviceId)?;
        if interval_ms < MIN_INTERVAL_MS {
            return Err(NodeError::IntervalTooShort { ms: interval_ms });
        }
        let mut id = DeviceId::new();
        // Length was checked by valid_name.
        let _ = id.push_str(device);
        Ok(Self {
            device: id,
            boot,
            interval_ms,
            next_sample_ms: 0,
            next_seq: 0,
            sensor_errors: 0,
            reboot_requested: false,
        })
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn boot(&self) -> u32 {
        self.boot
    }

    pub fn interval_ms(&self) -> u32 {
        self.interval_ms
    }

    /// Sensor reads that failed since boot.
    pub fn sensor_errors(&self) -> u32 {
        self.sensor_errors
    }

    /// The sequence number the next telemetry frame will carry.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// True once a `Reboot` command arrived; the board acts on it.
    pub fn reboot_requested(&self) -> bool {
        self.reboot_requested
    }

    /// The frame a device sends after boot or reconnect.
    pub fn hello(&self, board: &str, firmware: &str) -> Frame {
        // Over-long names are cut; `validate` on encode reports bad alphabets.
        let hello = Hello {
            device: self.device.clone(),
            board: truncated(board),
            firmware: truncated(firmware),
        };
        Frame::Hello(hello)
    }

    /// Milliseconds until the next sample is due (0 when it is due now).
    pub fn due_in(&self, now_ms: u64) -> u64 {
        self.next_sample_ms.saturating_sub(now_ms)
    }

    /// Samples every sensor if a sample is due at `now_ms` (board clock).
    ///
    /// `wall_ms` is the event time to stamp (Unix milliseconds), or 0 when
    /// the board has no wall clock. A sensor that fails is counted and left
    /// out of this frame; when every sensor fails no frame is produced and
    /// no sequence number is used, so a gap in numbers always means loss.
    pub fn poll(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        sensors: &mut [&mut dyn Sensor],
    ) -> Option<Telemetry> {
        if now_ms < self.next_sample_ms {
            return None;
        }
        // Keep the schedule on its grid; after a stall skip missed slots
        // instead of bursting to catch up.
        let interval = u64::from(self.interval_ms);
        self.next_sample_ms =
            if self.next_sample_ms == 0 || now_ms - self.next_sample_ms >= interval {
                now_ms + interval
            } else {
                self.next_sample_ms + interval
            };
        let mut readings = Readings::new();
        for sensor in sensors.iter_mut() {
            if sensor.read(now_ms, &mut readings).is_err() {
                self.sensor_errors = self.sensor_errors.saturating_add(1);
            }
        }
        if readings.is_empty() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        Some(Telemetry {
            device: self.device.clone(),
            boot: self.boot,
            seq,
            // Without a backlog nothing older is held; `Backlog::push`
            // overwrites this.
            oldest: seq,
            timestamp_ms: wall_ms,
            readings,
        })
    }

    /// Carries out a frame addressed to this device. Frames of other kinds
    /// (Acks are handled by the link layer) are ignored.
    pub fn handle(&mut self, frame: &Frame, outputs: &mut dyn Outputs) -> Result<(), NodeError> {
        let Frame::Command(cmd) = frame else {
            return Ok(());
        };
        if cmd.device != self.device {
            return Err(NodeError::NotForThisDevice);
        }
        match cmd.command {
            Command::SetInterval { ms } if ms < MIN_INTERVAL_MS => {
                Err(NodeError::IntervalTooShort { ms })
            }
            Command::SetInterval { ms } => {
                self.interval_ms = ms;
                // Apply from the next sample on.
                self.next_sample_ms = 0;
                Ok(())
            }
            Command::SetOutput { pin, on } => {
                if outputs.set(pin, on) {
                    Ok(())
                } else {
                    Err(NodeError::NoSuchOutput { pin })
                }
            }
            Command::Reboot => {
                self.reboot_requested = true;
                Ok(())
            }
        }
    }
}

fn truncated<const N: usize>(s: &str) -> heapless::String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = heapless::String::new();
    let _ = out.push_str(&s[..end]);
    out
}
