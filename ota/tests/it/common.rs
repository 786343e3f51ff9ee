//! A RAM-backed NOR flash that can lose power, and signed test images.

pub use eddy_ota::ram::{RAM_SECTOR as SECTOR, RamFlash};
use eddy_ota::slots::Layout;
use eddy_ota::{ImageHeader, KEY_LEN, Version, sign_header};

/// The flash of every test device: two state sectors and two slots.
pub fn flash() -> RamFlash {
    RamFlash::for_slots(SLOT).0
}

pub const SLOT: u32 = 8 * SECTOR as u32;
pub const BOARD: &str = "lm3s6965";
pub const SECRET: [u8; KEY_LEN] = [7; KEY_LEN];
pub const LAYOUT: Layout = Layout {
    base: 0,
    slot_size: SLOT,
};

pub fn version(s: &str) -> Version {
    Version::parse(s).expect("version")
}

/// A signed image: header || signature || payload.
pub fn image(board: &str, v: &str, payload: &[u8], secret: &[u8; KEY_LEN]) -> Vec<u8> {
    let header = ImageHeader::for_payload(board, version(v), payload)
        .expect("header")
        .encode();
    let mut out = header.to_vec();
    out.extend_from_slice(&sign_header(secret, &header));
    out.extend_from_slice(payload);
    out
}

pub fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}
