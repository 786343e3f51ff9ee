//! NOR flash in RAM, for simulated devices and tests: erase sets bytes to
//! 0xFF, writes can only clear bits, and power can be cut after a given
//! number of operations, leaving the operation in progress half done.

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

use crate::slots::Layout;

/// Erase sector of [`RamFlash`].
pub const RAM_SECTOR: usize = 1024;

/// Every operation after a power cut fails with this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerCut;

impl NorFlashError for PowerCut {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

/// NOR flash in RAM. After `budget` operations the power is cut: the
/// operation in progress is left half done (an erase garbles the rest of
/// its range, a write stores half its bytes) and every later one fails.
#[derive(Debug, Clone)]
pub struct RamFlash {
    pub mem: Vec<u8>,
    pub budget: Option<usize>,
}

impl RamFlash {
    /// Erased flash of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self {
            mem: vec![0xFF; len],
            budget: None,
        }
    }

    /// Flash that fits a slot layout of two `slot_size` slots at 0.
    pub fn for_slots(slot_size: u32) -> (Self, Layout) {
        let layout = Layout { base: 0, slot_size };
        (Self::new(2 * RAM_SECTOR + 2 * slot_size as usize), layout)
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

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, PowerCut> {
        let start = offset as usize;
        match start.checked_add(len) {
            Some(end) if end <= self.mem.len() => Ok(start..end),
            _ => Err(PowerCut),
        }
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
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = RAM_SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerCut> {
        let r = self.range(from, to.saturating_sub(from) as usize)?;
        let whole = self.spend();
        // Cut mid-erase: only the first half is erased, the rest garbled.
        let end = if whole { r.end } else { r.start + r.len() / 2 };
        self.mem[r.start..end].fill(0xFF);
        if !whole {
            for b in &mut self.mem[end..r.end] {
                *b ^= 0x5A;
            }
            return Err(PowerCut);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerCut> {
        let r = self.range(offset, bytes.len())?;
        let whole = self.spend();
        let n = if whole { bytes.len() } else { bytes.len() / 2 };
        for (m, b) in self.mem[r.start..r.start + n].iter_mut().zip(bytes) {
            *m &= *b;
        }
        if whole { Ok(()) } else { Err(PowerCut) }
    }
}
