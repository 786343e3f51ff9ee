//! A RAM-backed NOR flash that can lose power, and signed test images.

#![allow(dead_code)]

use eddy_ota::slots::Layout;
use eddy_ota::{ImageHeader, KEY_LEN, Version, sign_header};
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

pub const SECTOR: usize = 1024;
pub const SLOT: u32 = 8 * SECTOR as u32;
pub const BOARD: &str = "lm3s6965";
pub const SECRET: [u8; KEY_LEN] = [7; KEY_LEN];
pub const LAYOUT: Layout = Layout {
    base: 0,
    slot_size: SLOT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut;

impl NorFlashError for PowerCut {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

/// NOR flash in RAM: erase sets bytes to 0xFF, writes can only clear
/// bits. After `budget` operations the power is cut: the operation in
/// progress is left half done and every later one fails.
#[derive(Debug, Clone)]
pub struct RamFlash {
    pub mem: Vec<u8>,
    pub budget: Option<usize>,
}

impl RamFlash {
    pub fn new() -> Self {
        Self {
            mem: vec![0xFF; 2 * SECTOR + 2 * SLOT as usize],
            budget: None,
        }
    }

    fn spend(&mut self) -> bool {
        match &mut self.budget {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                *n > 0
            }
            None => true,
        }
    }

    /// Power comes back: same memory, no budget.
    pub fn reboot(mut self) -> Self {
        self.budget = None;
        self
    }
}

impl ErrorType for RamFlash {
    type Error = PowerCut;
}

impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), PowerCut> {
        if self.budget == Some(0) {
            return Err(PowerCut);
        }
        let o = offset as usize;
        bytes.copy_from_slice(&self.mem[o..o + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerCut> {
        let whole = self.spend();
        let (from, to) = (from as usize, to as usize);
        // Cut mid-erase: only the first half is erased, the rest garbled.
        let end = if whole { to } else { from + (to - from) / 2 };
        self.mem[from..end].fill(0xFF);
        if !whole {
            for b in &mut self.mem[end..to] {
                *b ^= 0x5A;
            }
            return Err(PowerCut);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerCut> {
        let whole = self.spend();
        let o = offset as usize;
        let n = if whole { bytes.len() } else { bytes.len() / 2 };
        for (m, b) in self.mem[o..o + n].iter_mut().zip(bytes) {
            *m &= *b;
        }
        if whole { Ok(()) } else { Err(PowerCut) }
    }
}

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
