//! Frame encoding: one version byte, then the postcard body.

use crate::{Frame, MAX_FRAME_LEN, Validity, WIRE_VERSION};

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLong { len: usize },
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("malformed frame body")]
    Malformed,
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
    #[error("invalid frame: {0}")]
    Invalid(#[from] Validity),
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("invalid frame: {0}")]
    Invalid(#[from] Validity),
}

/// Encodes `frame` into `buf` and returns the written prefix.
///
/// The frame is validated first, so nothing that `decode` would reject is
/// ever put on the wire.
pub fn encode<'a>(frame: &Frame, buf: &'a mut [u8]) -> Result<&'a mut [u8], EncodeError> {
    frame.validate()?;
    let (version, body) = buf.split_first_mut().ok_or(EncodeError::BufferTooSmall)?;
    *version = WIRE_VERSION;
    let body_len = postcard::to_slice(frame, body)
        .map_err(|_| EncodeError::BufferTooSmall)?
        .len();
    Ok(&mut buf[..=body_len])
}

/// Decodes and validates one frame. Never panics, never allocates.
pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong { len: bytes.len() });
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (frame, rest): (Frame, _) =
        postcard::take_from_bytes(body).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    frame.validate()?;
    Ok(frame)
}
