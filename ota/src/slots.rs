//! The device side of an update: A/B slots on NOR flash with trial boot,
//! rollback and anti-rollback, safe against power loss at any point.
//!
//! Flash layout, from `Layout::base`, in erase sectors:
//!
//! ```text
//! state copy 0 | state copy 1 | slot 0 (slot_size) | slot 1 (slot_size)
//! ```
//!
//! A slot holds an image as it was sent: `header || signature || payload`.
//! The boot state (which slot is confirmed, which holds a trial image,
//! the lowest version still allowed) is a small record written to the two
//! state sectors in turn, with a sequence number and a CRC: the newest
//! valid copy wins, so a power cut while one is written leaves the other.
//! Only the inactive slot is ever erased or written, and the state points
//! at a new image only after its hash was checked in flash. Whatever the
//! moment of a power cut, [`Slots::boot`] finds a slot with a whole image.

use crc::{CRC_32_ISCSI, Crc};
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use sha2::{Digest, Sha256};

use crate::{HEADER_LEN, ImageError, ImageHeader, KEY_LEN, OFFER_LEN, Version, verify_offer};

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
/// Bytes of an encoded state record (a multiple of common write sizes).
const STATE_LEN: usize = 32;
const NO_SLOT: u8 = 0xFF;

/// Where the slots live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Flash offset of the first state sector.
    pub base: u32,
    /// Bytes per slot, a multiple of the erase size.
    pub slot_size: u32,
}

/// What the boot state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// Increases with every write; the newest valid copy wins.
    pub seq: u32,
    /// The slot with the confirmed image.
    pub active: u8,
    /// A slot with a new, verified image that has not confirmed itself.
    pub trial: Option<u8>,
    /// The trial image was started once; if it boots again unconfirmed,
    /// it failed and the device rolls back.
    pub trial_booted: bool,
    /// The lowest version the device accepts (anti-rollback).
    pub min_version: Version,
    /// The campaign that delivered the trial image (0: none), so the
    /// image's confirmation or rollback can be reported against it after
    /// the restart.
    pub campaign: u32,
}

impl BootState {
    const FACTORY: BootState = BootState {
        seq: 0,
        active: 0,
        trial: None,
        trial_booted: false,
        min_version: Version {
            major: 0,
            minor: 0,
            patch: 0,
        },
        campaign: 0,
    };

    fn encode(&self) -> [u8; STATE_LEN] {
        let mut out = [0xFFu8; STATE_LEN];
        out[0..4].copy_from_slice(&self.seq.to_le_bytes());
        out[4] = self.active;
        out[5] = self.trial.unwrap_or(NO_SLOT);
        out[6] = u8::from(self.trial_booted);
        out[8..10].copy_from_slice(&self.min_version.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.min_version.minor.to_le_bytes());
        out[12..14].copy_from_slice(&self.min_version.patch.to_le_bytes());
        out[16..20].copy_from_slice(&self.campaign.to_le_bytes());
        let crc = CRC.checksum(&out[..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8; STATE_LEN]) -> Option<Self> {
        let crc = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
        if CRC.checksum(&b[..20]) != crc || b[4] > 1 || !(b[5] <= 1 || b[5] == NO_SLOT) {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            seq: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            active: b[4],
            trial: (b[5] != NO_SLOT).then_some(b[5]),
            trial_booted: b[6] == 1,
            min_version: Version {
                major: u16_at(8),
                minor: u16_at(10),
                patch: u16_at(12),
            },
            campaign: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
        })
    }
}

/// Why a slot operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("flash: {0:?}")]
    Flash(NorFlashErrorKind),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("chunk at offset {got}, expected {expected}")]
    OutOfOrder { expected: u32, got: u32 },
    #[error("image of {0} bytes does not fit a slot")]
    TooLarge(u32),
    #[error("transfer incomplete: {written} of {total} bytes")]
    Incomplete { written: u32, total: u32 },
    #[error("layout does not fit the flash or its sector size")]
    BadLayout,
    #[error("no slot holds a whole image")]
    NoBootableImage,
}

fn flash_err(e: impl NorFlashError) -> SlotError {
    SlotError::Flash(e.kind())
}

/// An update being received into the inactive slot. Kept across
/// disconnects, so a transfer resumes at `written`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub target: u8,
    pub header: ImageHeader,
    /// Payload bytes written so far: where the next chunk must start.
    pub written: u32,
    /// The campaign delivering it (0: none); kept in the boot state with
    /// the trial image.
    pub campaign: u32,
}

/// What [`Slots::boot`] decided, beyond the slot to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOutcome {
    /// The confirmed image, as before.
    Confirmed,
    /// A new image on trial: it must confirm itself or the next boot
    /// rolls back.
    Trial { campaign: u32 },
    /// The trial image failed (restarted without confirming, or
    /// damaged): the device is back on the confirmed image.
    RolledBack { campaign: u32 },
}

/// The slots of one device.
#[derive(Debug)]
pub struct Slots<F> {
    flash: F,
    layout: Layout,
    state: BootState,
    outcome: BootOutcome,
}

impl<F: NorFlash> Slots<F> {
    /// Reads the boot state (factory state when no copy is valid).
    pub fn open(mut flash: F, layout: Layout) -> Result<Self, SlotError> {
        let sector = F::ERASE_SIZE as u32;
        let end = u64::from(layout.base) + 2 * u64::from(sector) + 2 * u64::from(layout.slot_size);
        if layout.slot_size == 0
            || !layout.slot_size.is_multiple_of(sector)
            || !layout.base.is_multiple_of(sector)
            || end > flash.capacity() as u64
            || !STATE_LEN.is_multiple_of(F::WRITE_SIZE)
            || !OFFER_LEN.is_multiple_of(F::WRITE_SIZE)
        {
            return Err(SlotError::BadLayout);
        }
        let mut state = BootState::FACTORY;
        for copy in 0..2 {
            let mut buf = [0u8; STATE_LEN];
            flash
                .read(layout.base + copy * sector, &mut buf)
                .map_err(flash_err)?;
            if let Some(s) = BootState::decode(&buf)
                && (s.seq > state.seq || state.seq == 0)
            {
                state = s;
            }
        }
        Ok(Self {
            flash,
            layout,
            state,
            outcome: BootOutcome::Confirmed,
        })
    }

    pub fn state(&self) -> BootState {
        self.state
    }

    /// What the last [`Slots::boot`] decided.
    pub fn outcome(&self) -> BootOutcome {
        self.outcome
    }

    /// Gives the flash back (tests use it to "reboot").
    pub fn into_flash(self) -> F {
        self.flash
    }

    fn slot_base(&self, slot: u8) -> u32 {
        self.layout.base + 2 * F::ERASE_SIZE as u32 + u32::from(slot) * self.layout.slot_size
    }

    fn write_state(&mut self, mut next: BootState) -> Result<(), SlotError> {
        next.seq = self.state.seq.wrapping_add(1);
        // Overwrite the older copy; the current one stays intact meanwhile.
        let sector = F::ERASE_SIZE as u32;
        let at = self.layout.base + (next.seq % 2) * sector;
        self.flash.erase(at, at + sector).map_err(flash_err)?;
        self.flash.write(at, &next.encode()).map_err(flash_err)?;
        self.state = next;
        Ok(())
    }

    /// The header of the image in `slot`, if one parses there.
    pub fn header(&mut self, slot: u8) -> Option<ImageHeader> {
        let mut buf = [0u8; HEADER_LEN];
        self.flash.read(self.slot_base(slot), &mut buf).ok()?;
        ImageHeader::parse(&buf).ok()
    }

    /// True when `slot` holds a whole image whose payload matches its hash.
    pub fn verify_slot(&mut self, slot: u8) -> Result<bool, SlotError> {
        let Some(header) = self.header(slot) else {
            return Ok(false);
        };
        if u64::from(header.payload_len) + OFFER_LEN as u64 > u64::from(self.layout.slot_size) {
            return Ok(false);
        }
        let start = self.slot_base(slot) + OFFER_LEN as u32;
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 256];
        let mut done = 0u32;
        while done < header.payload_len {
            let n = (header.payload_len - done).min(buf.len() as u32) as usize;
            self.flash
                .read(start + done, &mut buf[..n])
                .map_err(flash_err)?;
            hasher.update(&buf[..n]);
            done += n as u32;
        }
        Ok(<[u8; 32]>::from(hasher.finalize()) == header.sha256)
    }

    /// The bootloader's decision: the slot to start, updating the state.
    ///
    /// A verified trial image is started once; if the device comes back
    /// here without it having confirmed itself, it failed and the device
    /// rolls back to the confirmed image.
    pub fn boot(&mut self) -> Result<u8, SlotError> {
        let state = self.state;
        if let Some(trial) = state.trial {
            if !state.trial_booted && self.verify_slot(trial)? {
                self.write_state(BootState {
                    trial_booted: true,
                    ..state
                })?;
                self.outcome = BootOutcome::Trial {
                    campaign: state.campaign,
                };
                return Ok(trial);
            }
            // Booted before without confirming, or damaged: roll back.
            self.write_state(BootState {
                trial: None,
                trial_booted: false,
                ..state
            })?;
            self.outcome = BootOutcome::RolledBack {
                campaign: state.campaign,
            };
        } else {
            self.outcome = BootOutcome::Confirmed;
        }
        if self.verify_slot(state.active)? {
            return Ok(state.active);
        }
        let other = 1 - state.active;
        if self.verify_slot(other)? {
            return Ok(other);
        }
        Err(SlotError::NoBootableImage)
    }

    /// Called by a trial image once its health checks passed: it becomes
    /// the confirmed image, and nothing older can be installed again.
    pub fn confirm(&mut self) -> Result<bool, SlotError> {
        let state = self.state;
        let Some(trial) = state.trial.filter(|_| state.trial_booted) else {
            return Ok(false);
        };
        let version = self.header(trial).map_or(state.min_version, |h| h.version);
        self.write_state(BootState {
            active: trial,
            trial: None,
            trial_booted: false,
            min_version: version.max(state.min_version),
            ..state
        })?;
        Ok(true)
    }

    /// The version a new image must exceed: the confirmed image's, or the
    /// anti-rollback floor, whichever is higher.
    pub fn installed_version(&mut self) -> Version {
        let active = self.state.active;
        let floor = self.state.min_version;
        self.header(active).map_or(floor, |h| h.version.max(floor))
    }

    /// Accepts an update offer (header and signature) for `board`:
    /// checks the signature, the board and the version before touching
    /// flash, then erases the inactive slot and stores the offer in it.
    pub fn begin_update(
        &mut self,
        offer: &[u8],
        public_key: &[u8; KEY_LEN],
        board: &str,
    ) -> Result<Update, SlotError> {
        let header = verify_offer(offer, public_key)?;
        if header.board.as_str() != board {
            return Err(ImageError::WrongBoard.into());
        }
        let installed = self.installed_version();
        if header.version <= installed {
            return Err(ImageError::NotNewer {
                offered: header.version,
                installed,
            }
            .into());
        }
        let total = u64::from(header.payload_len) + OFFER_LEN as u64;
        if total > u64::from(self.layout.slot_size) {
            return Err(SlotError::TooLarge(header.payload_len));
        }
        let target = 1 - self.state.active;
        if self.state.trial == Some(target) {
            // An unconfirmed image is being replaced: forget it first.
            self.write_state(BootState {
                trial: None,
                trial_booted: false,
                ..self.state
            })?;
        }
        let base = self.slot_base(target);
        self.flash
            .erase(base, base + self.layout.slot_size)
            .map_err(flash_err)?;
        self.flash
            .write(base, &offer[..OFFER_LEN])
            .map_err(flash_err)?;
        Ok(Update {
            target,
            header,
            written: 0,
            campaign: 0,
        })
    }

    /// Writes the next chunk of payload. Chunks arrive in order; all but
    /// the last are a multiple of the flash's write size.
    pub fn write_chunk(
        &mut self,
        update: &mut Update,
        offset: u32,
        data: &[u8],
    ) -> Result<(), SlotError> {
        if offset != update.written {
            return Err(SlotError::OutOfOrder {
                expected: update.written,
                got: offset,
            });
        }
        let len = u32::try_from(data.len()).map_err(|_| SlotError::TooLarge(u32::MAX))?;
        if u64::from(offset) + u64::from(len) > u64::from(update.header.payload_len) {
            return Err(SlotError::TooLarge(offset.saturating_add(len)));
        }
        let at = self.slot_base(update.target) + OFFER_LEN as u32 + offset;
        let whole = data.len() - data.len() % F::WRITE_SIZE;
        self.flash.write(at, &data[..whole]).map_err(flash_err)?;
        if whole < data.len() {
            // The tail, padded with erased bytes to one write unit.
            let mut tail = [0xFFu8; 32];
            let rest = &data[whole..];
            let unit = F::WRITE_SIZE.min(tail.len());
            tail[..rest.len()].copy_from_slice(rest);
            self.flash
                .write(at + whole as u32, &tail[..unit])
                .map_err(flash_err)?;
        }
        update.written += len;
        Ok(())
    }

    /// Checks the whole payload in flash against the signed hash and
    /// marks the slot for a trial boot.
    pub fn finish_update(&mut self, update: &Update) -> Result<(), SlotError> {
        if update.written != update.header.payload_len {
            return Err(SlotError::Incomplete {
                written: update.written,
                total: update.header.payload_len,
            });
        }
        if !self.verify_slot(update.target)? {
            return Err(ImageError::HashMismatch.into());
        }
        self.write_state(BootState {
            trial: Some(update.target),
            trial_booted: false,
            campaign: update.campaign,
            ..self.state
        })
    }
}
