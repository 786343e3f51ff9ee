//! The device's end of the transfer protocol: turns `OtaOffer` and
//! `OtaChunk` frames into slot operations and answers each with an
//! `OtaStatus`. Transport-agnostic: the same frames travel over MQTT and
//! over a serial link.
//!
//! Every answer to an offer or a chunk names the resume point
//! (`Next { next }`): after a damaged chunk, an out-of-order one, a lost
//! answer or a reconnect, the sender continues from there, never from 0.

use eddy_proto::{DeviceId, Frame, OtaChunk, OtaOffer, OtaReject, OtaState, OtaStatus, chunk_crc};
use embedded_storage::nor_flash::NorFlash;

use crate::slots::{BootOutcome, SlotError, Slots, Update};
use crate::{ImageError, KEY_LEN, Version};

/// What the board must do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond sending the answer.
    None,
    /// The image is verified and marked for trial: restart into it.
    Reboot,
}

/// The update agent of one device.
#[derive(Debug)]
pub struct Agent<F> {
    device: DeviceId,
    board: &'static str,
    public_key: [u8; KEY_LEN],
    slots: Slots<F>,
    /// The transfer in progress and its campaign.
    update: Option<(u32, Update)>,
}

fn reject_reason(e: SlotError) -> OtaReject {
    match e {
        SlotError::Image(ImageError::BadSignature) => OtaReject::BadSignature,
        SlotError::Image(ImageError::WrongBoard) => OtaReject::WrongBoard,
        SlotError::Image(ImageError::NotNewer { .. }) => OtaReject::NotNewer,
        SlotError::Image(ImageError::HashMismatch) => OtaReject::HashMismatch,
        SlotError::Image(_) | SlotError::OutOfOrder { .. } | SlotError::Incomplete { .. } => {
            OtaReject::Malformed
        }
        SlotError::TooLarge(_) => OtaReject::TooLarge,
        SlotError::Flash(_) | SlotError::BadLayout | SlotError::NoBootableImage => OtaReject::Flash,
    }
}

fn version_words(v: Version) -> [u16; 3] {
    [v.major, v.minor, v.patch]
}

impl<F: NorFlash> Agent<F> {
    pub fn new(
        device: DeviceId,
        board: &'static str,
        public_key: [u8; KEY_LEN],
        slots: Slots<F>,
    ) -> Self {
        Self {
            device,
            board,
            public_key,
            slots,
            update: None,
        }
    }

    pub fn slots(&mut self) -> &mut Slots<F> {
        &mut self.slots
    }

    /// Gives the slots back (tests use it to "reboot").
    pub fn into_slots(self) -> Slots<F> {
        self.slots
    }

    fn status(&self, campaign: u32, state: OtaState) -> Frame {
        Frame::OtaStatus(OtaStatus {
            device: self.device.clone(),
            campaign,
            state,
        })
    }

    /// Handles an OTA frame for this device; other frames are not its
    /// business (returns `None`).
    pub fn handle(&mut self, frame: &Frame) -> Option<(Frame, Action)> {
        match frame {
            Frame::OtaOffer(o) if o.device == self.device => Some(self.offer(o)),
            Frame::OtaChunk(c) if c.device == self.device => Some(self.chunk(c)),
            _ => None,
        }
    }

    fn offer(&mut self, o: &OtaOffer) -> (Frame, Action) {
        if let Some((campaign, update)) = &self.update
            && *campaign == o.campaign
        {
            // The same transfer offered again (a reconnect): resume.
            let next = update.written;
            return (
                self.status(o.campaign, OtaState::Next { next }),
                Action::None,
            );
        }
        match self
            .slots
            .begin_update(&o.offer, &self.public_key, self.board)
        {
            Ok(mut update) => {
                update.campaign = o.campaign;
                self.update = Some((o.campaign, update));
                (
                    self.status(o.campaign, OtaState::Next { next: 0 }),
                    Action::None,
                )
            }
            Err(e) => {
                let reason = reject_reason(e);
                (
                    self.status(o.campaign, OtaState::Rejected { reason }),
                    Action::None,
                )
            }
        }
    }

    fn chunk(&mut self, c: &OtaChunk) -> (Frame, Action) {
        let Some((campaign, mut update)) = self.update.take().filter(|(k, _)| *k == c.campaign)
        else {
            // No transfer for this campaign (the device restarted): the
            // sender must offer again.
            let reason = OtaReject::Malformed;
            return (
                self.status(c.campaign, OtaState::Rejected { reason }),
                Action::None,
            );
        };
        let resume = |agent: &Self, update: &Update| {
            let next = update.written;
            agent.status(campaign, OtaState::Next { next })
        };
        // A damaged or out-of-order chunk is not written: ask for the
        // resume point again.
        if chunk_crc(&c.data) != c.crc || c.offset != update.written {
            let answer = resume(self, &update);
            self.update = Some((campaign, update));
            return (answer, Action::None);
        }
        if let Err(e) = self.slots.write_chunk(&mut update, c.offset, &c.data) {
            let reason = reject_reason(e);
            return (
                self.status(campaign, OtaState::Rejected { reason }),
                Action::None,
            );
        }
        if update.written < update.header.payload_len {
            let answer = resume(self, &update);
            self.update = Some((campaign, update));
            return (answer, Action::None);
        }
        match self.slots.finish_update(&update) {
            Ok(()) => (self.status(campaign, OtaState::Verified), Action::Reboot),
            Err(e) => {
                let reason = reject_reason(e);
                (
                    self.status(campaign, OtaState::Rejected { reason }),
                    Action::None,
                )
            }
        }
    }

    /// Called by a trial image once its health checks passed: confirms it
    /// and returns the report for the gateway, against the campaign that
    /// delivered the image. `None` when there was no trial to confirm.
    pub fn confirm(&mut self) -> Result<Option<Frame>, SlotError> {
        let campaign = self.slots.state().campaign;
        if !self.slots.confirm()? {
            return Ok(None);
        }
        let version = version_words(self.slots.installed_version());
        Ok(Some(self.status(campaign, OtaState::Confirmed { version })))
    }

    /// After [`Slots::boot`]: the report a device owes the gateway when
    /// its trial image failed and it is back on the confirmed image.
    pub fn boot_report(&mut self) -> Option<Frame> {
        match self.slots.outcome() {
            BootOutcome::RolledBack { campaign } => {
                let version = version_words(self.slots.installed_version());
                Some(self.status(campaign, OtaState::RolledBack { version }))
            }
            BootOutcome::Confirmed | BootOutcome::Trial { .. } => None,
        }
    }

    /// The version the device runs once confirmed (what it reports).
    pub fn installed_version(&mut self) -> Version {
        self.slots.installed_version()
    }
}
