//! Framing for byte streams (UART, serial ports, pipes).
//!
//! On the wire: `COBS(frame bytes ++ CRC-32C(frame bytes) as little endian) ++ 0x00`.
//! The zero byte delimits frames, so a receiver that starts mid-stream or
//! loses bytes resynchronises at the next zero; the CRC catches corrupted
//! frames, which are reported and skipped, never fatal.

use crc::{CRC_32_ISCSI, Crc};

use crate::{DecodeError, EncodeError, Frame, MAX_FRAME_LEN, codec};

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
const CRC_LEN: usize = 4;

/// Largest frame plus CRC before COBS stuffing.
pub const MAX_RAW_LEN: usize = MAX_FRAME_LEN + CRC_LEN;
/// Largest number of bytes one frame occupies on a byte stream, delimiter included.
pub const MAX_WIRE_LEN: usize = cobs::max_encoding_length(MAX_RAW_LEN) + 1;

/// Why a chunk of a byte stream was not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("frame longer than {MAX_WIRE_LEN} bytes before its delimiter")]
    Oversized,
    #[error("bad COBS encoding")]
    Cobs,
    #[error("frame too short to hold a CRC")]
    Truncated,
    #[error("CRC mismatch")]
    Crc,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Encodes `frame` for a byte stream into `out` and returns the written
/// prefix, delimiter included. `out` should hold [`MAX_WIRE_LEN`] bytes.
pub fn encode_framed<'a>(frame: &Frame, out: &'a mut [u8]) -> Result<&'a [u8], EncodeError> {
    let mut raw = [0u8; MAX_RAW_LEN];
    let len = codec::encode(frame, &mut raw[..MAX_FRAME_LEN])?.len();
    let crc = CRC.checksum(&raw[..len]);
    raw[len..len + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    let n =
        cobs::try_encode(&raw[..len + CRC_LEN], out).map_err(|_| EncodeError::BufferTooSmall)?;
    let delimiter = out.get_mut(n).ok_or(EncodeError::BufferTooSmall)?;
    *delimiter = 0;
    Ok(&out[..=n])
}

/// Reassembles frames from a byte stream fed in arbitrary pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: heapless::Vec<u8, MAX_WIRE_LEN>,
    overflowed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            overflowed: false,
        }
    }

    /// Feeds one byte; returns a result when it completed a frame.
    ///
    /// Bytes of an over-long frame are discarded up to the next delimiter,
    /// which then yields [`LinkError::Oversized`]; memory stays fixed.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, LinkError>> {
        if byte != 0 {
            if self.buf.push(byte).is_err() {
                self.overflowed = true;
            }
            return None;
        }
        let overflowed = core::mem::replace(&mut self.overflowed, false);
        if overflowed {
            self.buf.clear();
            return Some(Err(LinkError::Oversized));
        }
        if self.buf.is_empty() {
            // Back-to-back delimiters: a sender may emit one to flush a
            // half-received frame at the peer. Not an error.
            return None;
        }
        let result = Self::decode_raw(&mut self.buf);
        self.buf.clear();
        Some(result)
    }

    /// Feeds a chunk and calls `on_frame` for every frame it completes.
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Result<Frame, LinkError>)) {
        for &b in bytes {
            if let Some(r) = self.push(b) {
                on_frame(r);
            }
        }
    }

    fn decode_raw(buf: &mut [u8]) -> Result<Frame, LinkError> {
        let len = cobs::decode_in_place(buf).map_err(|_| LinkError::Cobs)?;
        if len <= CRC_LEN {
            return Err(LinkError::Truncated);
        }
        let (body, crc) = buf[..len].split_at(len - CRC_LEN);
        let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if CRC.checksum(body) != expected {
            return Err(LinkError::Crc);
        }
        Ok(codec::decode(body)?)
    }
}
