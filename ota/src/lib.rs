//! Eddy firmware images: the header format and payload verification.
//!
//! An image is a fixed-size header followed by the payload. The header
//! names the board it is for, its semantic version, the payload length and
//! the payload's SHA-256, so a device can refuse an image for another
//! board, a truncated or corrupted transfer, or (with the version) a
//! downgrade before it writes a single byte to flash.
//!
//! A signed image is `header || signature || payload`. The ed25519
//! signature covers the header, and the header holds the payload's
//! SHA-256, so together they cover every byte: a device checks the
//! signature on the offer, before it erases anything, and the hash once
//! the payload is in flash.
//!
//! `no_std` and allocation free: the firmware links the same code.
//! [`slots`] is the device side: A/B slots with trial boot and rollback.

#![no_std]
#![forbid(unsafe_code)]

pub mod agent;
#[cfg(feature = "ram-flash")]
pub mod ram;
pub mod slots;

use core::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use sha2::{Digest, Sha256};

/// First bytes of every image.
pub const MAGIC: [u8; 4] = *b"EDDY";
/// Header layout version this code reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Longest board name.
pub const MAX_BOARD_LEN: usize = 16;
/// Header size on the wire: magic, format, board (length + 16 bytes),
/// version (3 x u16), payload length (u32), SHA-256.
pub const HEADER_LEN: usize = 4 + 1 + 1 + MAX_BOARD_LEN + 6 + 4 + 32;

/// A semantic version; images never go backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// Parses `X.Y.Z`.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let mut parts = s.split('.').map(|p| p.parse::<u16>());
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch)), None) => Ok(Self {
                major,
                minor,
                patch,
            }),
            _ => Err(ImageError::BadVersion),
        }
    }
}

/// Why an image or header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image shorter than its {HEADER_LEN}-byte header")]
    Truncated,
    #[error("not an Eddy image (bad magic)")]
    BadMagic,
    #[error("unsupported image format {0}")]
    UnsupportedFormat(u8),
    #[error("board name invalid or longer than {MAX_BOARD_LEN} bytes")]
    BadBoard,
    #[error("version must be X.Y.Z with numbers up to 65535")]
    BadVersion,
    #[error("payload is {actual} bytes, header says {expected}")]
    LengthMismatch { expected: u32, actual: usize },
    #[error("payload too large for an image ({0} bytes)")]
    TooLarge(usize),
    #[error("payload SHA-256 does not match the header")]
    HashMismatch,
    #[error("signature does not verify with the device's public key")]
    BadSignature,
    #[error("image is for another board")]
    WrongBoard,
    #[error("version {offered} is not newer than {installed} (no downgrades)")]
    NotNewer {
        offered: Version,
        installed: Version,
    },
}

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an ed25519 public or secret key.
pub const KEY_LEN: usize = 32;
/// Header plus signature: what an update offer carries.
pub const OFFER_LEN: usize = HEADER_LEN + SIGNATURE_LEN;

/// Signs an encoded header with a secret key (the release machine's side).
pub fn sign_header(secret: &[u8; KEY_LEN], header: &[u8; HEADER_LEN]) -> [u8; SIGNATURE_LEN] {
    SigningKey::from_bytes(secret).sign(header).to_bytes()
}

/// The public key of a secret key.
pub fn public_key(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// Checks an offer: header and signature, as the device receives them
/// before any byte of payload. Returns the parsed header.
pub fn verify_offer(offer: &[u8], public_key: &[u8; KEY_LEN]) -> Result<ImageHeader, ImageError> {
    let header_bytes: &[u8; HEADER_LEN] = offer
        .get(..HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(ImageError::Truncated)?;
    let signature: &[u8; SIGNATURE_LEN] = offer
        .get(HEADER_LEN..OFFER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(ImageError::Truncated)?;
    let header = ImageHeader::parse(header_bytes)?;
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| ImageError::BadSignature)?;
    key.verify(header_bytes, &Signature::from_bytes(signature))
        .map_err(|_| ImageError::BadSignature)?;
    Ok(header)
}

/// A complete signed image in memory (host tools, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedImage<'a> {
    pub header: ImageHeader,
    /// Header and signature, as sent in an update offer.
    pub offer: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> SignedImage<'a> {
    /// Splits and fully verifies an image: signature, length and hash.
    pub fn verify(bytes: &'a [u8], public_key: &[u8; KEY_LEN]) -> Result<Self, ImageError> {
        let header = verify_offer(bytes, public_key)?;
        let payload = bytes.get(OFFER_LEN..).ok_or(ImageError::Truncated)?;
        header.verify_payload(payload)?;
        Ok(Self {
            header,
            offer: &bytes[..OFFER_LEN],
            payload,
        })
    }

    /// Splits an image without checking the signature (to inspect one).
    pub fn parse_unverified(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let header = ImageHeader::parse(bytes)?;
        let offer = bytes.get(..OFFER_LEN).ok_or(ImageError::Truncated)?;
        let payload = bytes.get(OFFER_LEN..).ok_or(ImageError::Truncated)?;
        Ok(Self {
            header,
            offer,
            payload,
        })
    }
}

/// The image header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageHeader {
    pub board: heapless::String<MAX_BOARD_LEN>,
    pub version: Version,
    pub payload_len: u32,
    pub sha256: [u8; 32],
}

fn valid_board(board: &str) -> bool {
    !board.is_empty()
        && board.len() <= MAX_BOARD_LEN
        && board
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl ImageHeader {
    /// The header describing `payload` for `board` at `version`.
    pub fn for_payload(board: &str, version: Version, payload: &[u8]) -> Result<Self, ImageError> {
        if !valid_board(board) {
            return Err(ImageError::BadBoard);
        }
        let payload_len =
            u32::try_from(payload.len()).map_err(|_| ImageError::TooLarge(payload.len()))?;
        Ok(Self {
            board: heapless::String::try_from(board).map_err(|_| ImageError::BadBoard)?,
            version,
            payload_len,
            sha256: Sha256::digest(payload).into(),
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = FORMAT_VERSION;
        out[5] = self.board.len() as u8;
        out[6..6 + self.board.len()].copy_from_slice(self.board.as_bytes());
        let v = 6 + MAX_BOARD_LEN;
        out[v..v + 2].copy_from_slice(&self.version.major.to_le_bytes());
        out[v + 2..v + 4].copy_from_slice(&self.version.minor.to_le_bytes());
        out[v + 4..v + 6].copy_from_slice(&self.version.patch.to_le_bytes());
        out[v + 6..v + 10].copy_from_slice(&self.payload_len.to_le_bytes());
        out[v + 10..v + 42].copy_from_slice(&self.sha256);
        out
    }

    /// Parses the header at the start of `bytes`. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(ImageError::Truncated)?;
        if h[0..4] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        if h[4] != FORMAT_VERSION {
            return Err(ImageError::UnsupportedFormat(h[4]));
        }
        let len = usize::from(h[5]);
        let board = h
            .get(6..6 + len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .filter(|b| valid_board(b))
            .ok_or(ImageError::BadBoard)?;
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let v = 6 + MAX_BOARD_LEN;
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&h[v + 10..v + 42]);
        Ok(Self {
            board: heapless::String::try_from(board).map_err(|_| ImageError::BadBoard)?,
            version: Version {
                major: u16_at(v),
                minor: u16_at(v + 2),
                patch: u16_at(v + 4),
            },
            payload_len: u32::from_le_bytes([h[v + 6], h[v + 7], h[v + 8], h[v + 9]]),
            sha256,
        })
    }

    /// Checks a complete payload against the header's length and hash.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), ImageError> {
        if payload.len() != self.payload_len as usize {
            return Err(ImageError::LengthMismatch {
                expected: self.payload_len,
                actual: payload.len(),
            });
        }
        let digest: [u8; 32] = Sha256::digest(payload).into();
        if digest != self.sha256 {
            return Err(ImageError::HashMismatch);
        }
        Ok(())
    }
}
