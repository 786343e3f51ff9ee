//! Frame types and their field limits.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 32;
/// Longest metric name, in bytes.
pub const MAX_METRIC_LEN: usize = 32;
/// Longest board name, in bytes.
pub const MAX_BOARD_LEN: usize = 16;
/// Longest firmware version string, in bytes.
pub const MAX_VERSION_LEN: usize = 16;
/// Most readings one telemetry frame carries.
pub const MAX_READINGS: usize = 16;

/// A device id: ASCII letters, digits, `_`, `-`, `.`, `:`; safe as an MQTT topic level.
pub type DeviceId = String<MAX_DEVICE_ID_LEN>;
/// A metric name, same alphabet as [`DeviceId`].
pub type MetricName = String<MAX_METRIC_LEN>;
/// A board name, same alphabet as [`DeviceId`].
pub type BoardName = String<MAX_BOARD_LEN>;
/// A firmware version string such as `1.4.2`.
pub type FirmwareVersion = String<MAX_VERSION_LEN>;

/// Everything a device and the gateway say to each other.
// Telemetry is much larger than the other variants; boxing it would need an
// allocator, which device firmware does not have.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// A device announces itself after boot or reconnect.
    Hello(Hello),
    /// Sensor readings taken at one instant.
    Telemetry(Telemetry),
    /// Gateway to device: every telemetry frame up to `seq` is durably stored.
    Ack(Ack),
    /// Gateway to device: do something.
    Command(CommandFrame),
    /// Gateway to device: a signed firmware image is available.
    OtaOffer(OtaOffer),
    /// Gateway to device: a piece of that image's payload.
    OtaChunk(OtaChunk),
    /// Device to gateway: where an update stands.
    OtaStatus(OtaStatus),
}

/// Longest update offer: an image header and its signature.
pub const MAX_OTA_OFFER: usize = 160;
/// Largest payload chunk in one frame.
pub const MAX_OTA_CHUNK: usize = 512;

/// An update offer: `offer` is the image's header and signature, which
/// the device checks before it erases anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaOffer {
    pub device: DeviceId,
    /// Identifies the transfer; a repeated offer of the same campaign
    /// resumes it.
    pub campaign: u32,
    pub offer: Vec<u8, MAX_OTA_OFFER>,
}

/// Payload bytes at `offset`, with a CRC-32C of `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaChunk {
    pub device: DeviceId,
    pub campaign: u32,
    pub offset: u32,
    pub data: Vec<u8, MAX_OTA_CHUNK>,
    pub crc: u32,
}

/// A device's report on an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaStatus {
    pub device: DeviceId,
    pub campaign: u32,
    pub state: OtaState,
}

/// Where an update stands on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtaState {
    /// Send payload from `next` on (after an offer, a chunk, a damaged or
    /// out-of-order chunk, or a reconnect: always the resume point).
    Next { next: u32 },
    /// The offer or the image was refused; nothing changed on the device.
    Rejected { reason: OtaReject },
    /// The whole payload is in flash and matches the signed hash; the
    /// device restarts into it on trial.
    Verified,
    /// The device runs `version` and confirmed it healthy.
    Confirmed { version: [u16; 3] },
    /// The new image failed on trial; the device is back on `version`.
    RolledBack { version: [u16; 3] },
}

/// Why a device refused an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtaReject {
    BadSignature,
    WrongBoard,
    NotNewer,
    TooLarge,
    HashMismatch,
    Malformed,
    Flash,
}

/// CRC-32C of a chunk's data, as carried in [`OtaChunk::crc`].
pub fn chunk_crc(data: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(data)
}

/// Sent by a device after boot or reconnect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub device: DeviceId,
    pub board: BoardName,
    pub firmware: FirmwareVersion,
}

/// Readings from one device at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub device: DeviceId,
    /// Chosen anew at every boot (a counter in non-volatile memory, or a
    /// random number); sequence numbers restart with it.
    pub boot: u32,
    /// Per-boot sequence number, +1 per telemetry frame (wrapping); the
    /// gateway stores frames in sequence order exactly once.
    pub seq: u32,
    /// The oldest sequence number the device still holds for
    /// retransmission. Frames below it that the gateway has not stored are
    /// gone for good (the device's buffer overflowed); the gateway counts
    /// them as lost instead of waiting for them.
    pub oldest: u32,
    /// Event time in milliseconds since the Unix epoch; 0 means the device
    /// has no clock and the gateway stamps the arrival time.
    pub timestamp_ms: u64,
    pub readings: Vec<Reading, MAX_READINGS>,
}

/// One metric's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub metric: MetricName,
    pub value: f64,
}

/// Acknowledges every telemetry frame of `device`'s boot `boot` up to and
/// including `seq`: they are durably stored and the device may forget them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub device: DeviceId,
    pub boot: u32,
    pub seq: u32,
}

/// A command addressed to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandFrame {
    pub device: DeviceId,
    /// Chosen by the sender, echoed in the device's reports.
    pub id: u32,
    pub command: Command,
}

/// What a device can be told to do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Change the sampling interval.
    SetInterval { ms: u32 },
    /// Drive a digital output.
    SetOutput { pin: u8, on: bool },
    /// Restart the device.
    Reboot,
}

/// Why a name field is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("contains {0:?}; allowed are ASCII letters, digits, '_', '-', '.', ':'")]
    BadChar(char),
}

/// Checks the name alphabet shared by device ids, metrics and boards.
///
/// The alphabet keeps names safe as MQTT topic levels (no `/`, `+`, `#`)
/// and as keys in logs and metrics.
pub fn valid_name(name: &str, max: usize) -> Result<(), InvalidName> {
    if name.is_empty() {
        return Err(InvalidName::Empty);
    }
    if name.len() > max {
        return Err(InvalidName::TooLong { max });
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        Some(c) => Err(InvalidName::BadChar(c)),
        None => Ok(()),
    }
}

/// A frame field that broke the contract after it parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Validity {
    #[error("field `{field}` {reason}")]
    Name {
        field: &'static str,
        reason: InvalidName,
    },
    #[error("reading `{index}` is not a finite number")]
    NotFinite { index: usize },
    #[error("telemetry frame carries no readings")]
    NoReadings,
}

impl Frame {
    /// Checks the rules that the type system does not: name alphabets,
    /// finite values, non-empty telemetry. `decode` calls this.
    pub fn validate(&self) -> Result<(), Validity> {
        let name = |field: &'static str, value: &str, max: usize| {
            valid_name(value, max).map_err(|reason| Validity::Name { field, reason })
        };
        match self {
            Frame::Hello(h) => {
                name("device", &h.device, MAX_DEVICE_ID_LEN)?;
                name("board", &h.board, MAX_BOARD_LEN)?;
                name("firmware", &h.firmware, MAX_VERSION_LEN)
            }
            Frame::Telemetry(t) => {
                name("device", &t.device, MAX_DEVICE_ID_LEN)?;
                if t.readings.is_empty() {
                    return Err(Validity::NoReadings);
                }
                for (index, r) in t.readings.iter().enumerate() {
                    name("metric", &r.metric, MAX_METRIC_LEN)?;
                    if !r.value.is_finite() {
                        return Err(Validity::NotFinite { index });
                    }
                }
                Ok(())
            }
            Frame::Ack(a) => name("device", &a.device, MAX_DEVICE_ID_LEN),
            Frame::Command(c) => name("device", &c.device, MAX_DEVICE_ID_LEN),
            Frame::OtaOffer(o) => name("device", &o.device, MAX_DEVICE_ID_LEN),
            Frame::OtaChunk(c) => name("device", &c.device, MAX_DEVICE_ID_LEN),
            Frame::OtaStatus(s) => name("device", &s.device, MAX_DEVICE_ID_LEN),
        }
    }

    /// The device this frame is from or for.
    pub fn device(&self) -> &str {
        match self {
            Frame::Hello(h) => &h.device,
            Frame::Telemetry(t) => &t.device,
            Frame::Ack(a) => &a.device,
            Frame::Command(c) => &c.device,
            Frame::OtaOffer(o) => &o.device,
            Frame::OtaChunk(c) => &c.device,
            Frame::OtaStatus(s) => &s.device,
        }
    }
}
