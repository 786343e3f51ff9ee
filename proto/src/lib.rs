//! The Eddy wire contract, shared by firmware, gateway, OTA and testbench.
//!
//! A [`Frame`] is what travels between a device and the gateway: `Hello`,
//! `Telemetry`, `Ack` and `Command`. Frames are encoded compactly with
//! postcard behind a one-byte wire version ([`codec`]); on byte streams
//! (UART, serial) each encoded frame also carries a CRC-32C and is COBS
//! delimited by a zero byte ([`link`]).
//!
//! Everything here is `no_std` and allocation free: strings and lists are
//! bounded (`heapless`), so a decoder can never be made to allocate or to
//! panic by a hostile peer; an over-long field is a decode error.

#![no_std]
#![forbid(unsafe_code)]

pub mod codec;
mod frame;
pub mod link;
mod seq;
pub mod topic;

pub use codec::{DecodeError, EncodeError, decode, encode};
pub use frame::{
    Ack, BoardName, Command, CommandFrame, DeviceId, FirmwareVersion, Frame, Hello, InvalidName,
    MAX_BOARD_LEN, MAX_DEVICE_ID_LEN, MAX_METRIC_LEN, MAX_OTA_CHUNK, MAX_OTA_OFFER, MAX_READINGS,
    MAX_VERSION_LEN, MetricName, OtaChunk, OtaOffer, OtaReject, OtaState, OtaStatus, Reading,
    Telemetry, Validity, chunk_crc, valid_name,
};
pub use seq::seq_le;

/// Version byte that starts every encoded frame. A decoder rejects any
/// other value instead of guessing at a layout it does not know.
pub const WIRE_VERSION: u8 = 2;

/// Upper bound of one encoded frame (version byte and postcard body),
/// large enough for a `Telemetry` frame with every field at its limit.
pub const MAX_FRAME_LEN: usize = 768;
