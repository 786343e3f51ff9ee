//! A simulated device's update side: the real [`Agent`] and A/B slots on
//! RAM-backed NOR flash, a health check for trial images, restarts, and
//! the transport faults the testbench injects (damaged chunks, a device
//! that goes silent mid-transfer). Transport-agnostic: the device loop
//! (MQTT) and a serial-line device both hand it frames and send what it
//! answers.

use std::sync::Arc;
use std::time::Duration;

use eddy_ota::agent::{Action, Agent};
use eddy_ota::ram::RamFlash;
use eddy_ota::slots::{BootOutcome, Slots};
use eddy_ota::{KEY_LEN, OFFER_LEN, Version};
use eddy_proto::{DeviceId, Frame, Hello, OtaState, OtaStatus};
use tokio::time::Instant;

use crate::SimError;

/// How a simulated device takes updates.
#[derive(Debug, Clone)]
pub struct SimOtaConfig {
    pub board: &'static str,
    pub public_key: [u8; KEY_LEN],
    /// A signed image installed at the factory (the device's first version).
    pub factory_image: Arc<Vec<u8>>,
    /// Bytes per slot (a multiple of the flash's 1 KiB sector).
    pub slot_size: u32,
    /// Images of this version or newer fail their health check: the
    /// device restarts before it confirms them, and rolls back.
    pub unhealthy_from: Option<Version>,
    /// Fault: every n-th chunk arrives with a flipped byte (line noise).
    pub corrupt_every: Option<u32>,
    /// Fault: once this many payload bytes are written, the device hears
    /// nothing for the given time (a dropped link), once per transfer.
    pub silent_at: Option<(u32, Duration)>,
}

/// What the update side did, counted on the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtaReport {
    /// The confirmed image's version, as the device reports it.
    pub version: [u16; 3],
    /// Chunk bytes received, damaged ones included.
    pub chunk_bytes: u64,
    /// Chunks that arrived damaged (injected) and were not written.
    pub chunks_damaged: u32,
    /// Offers answered with a resume point past 0 (the transfer went on
    /// where it stopped).
    pub resumed_at: Vec<u32>,
    pub restarts: u32,
    pub rollbacks: u32,
}

/// The update side of one simulated device.
#[derive(Debug)]
pub struct SimOta {
    config: SimOtaConfig,
    device: DeviceId,
    /// `None` only while a restart swaps it.
    agent: Option<Agent<RamFlash>>,
    chunks_seen: u32,
    deaf_until: Option<Instant>,
    silenced: bool,
    report: OtaReport,
}

fn words(v: Version) -> [u16; 3] {
    [v.major, v.minor, v.patch]
}

impl SimOta {
    /// A device fresh from the factory: the factory image installed and
    /// confirmed in its slots.
    pub fn new(device: &str, config: SimOtaConfig) -> Result<Self, SimError> {
        let setup = |reason: String| SimError::Setup {
            device: device.to_string(),
            reason,
        };
        let id: DeviceId = device
            .try_into()
            .map_err(|()| setup("device id too long".into()))?;
        let (flash, layout) = RamFlash::for_slots(config.slot_size);
        let slots = Slots::open(flash, layout).map_err(|e| setup(format!("slots: {e}")))?;
        let mut agent = Agent::new(id.clone(), config.board, config.public_key, slots);
        let img = &config.factory_image;
        let factory = |e: eddy_ota::slots::SlotError| setup(format!("factory image: {e}"));
        let slots = agent.slots();
        let mut update = slots
            .begin_update(
                img.get(..OFFER_LEN).unwrap_or_default(),
                &config.public_key,
                config.board,
            )
            .map_err(factory)?;
        for (i, chunk) in img[OFFER_LEN..].chunks(1024).enumerate() {
            slots
                .write_chunk(&mut update, (i * 1024) as u32, chunk)
                .map_err(factory)?;
        }
        slots.finish_update(&update).map_err(factory)?;
        slots.boot().map_err(factory)?;
        slots.confirm().map_err(factory)?;
        let version = words(agent.installed_version());
        Ok(Self {
            config,
            device: id,
            agent: Some(agent),
            chunks_seen: 0,
            deaf_until: None,
            silenced: false,
            report: OtaReport {
                version,
                ..OtaReport::default()
            },
        })
    }

    pub fn report(&self) -> &OtaReport {
        &self.report
    }

    /// The frame the device introduces itself with at every connect: its
    /// board and the version it runs.
    pub fn hello(&self) -> Frame {
        let [major, minor, patch] = self.report.version;
        Frame::Hello(Hello {
            device: self.device.clone(),
            board: self.config.board.try_into().unwrap_or_default(),
            firmware: format!("{major}.{minor}.{patch}")
                .as_str()
                .try_into()
                .unwrap_or_default(),
        })
    }

    fn agent(&mut self) -> &mut Agent<RamFlash> {
        self.agent.as_mut().expect("agent present outside restart")
    }

    /// Handles a frame from the gateway; returns the reports to send (none
    /// for frames that are not the device's OTA business).
    pub fn handle(&mut self, frame: &Frame, now: Instant) -> Vec<Frame> {
        if self.deaf_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let mut frame = frame.clone();
        if let Frame::OtaChunk(c) = &mut frame {
            if c.device != self.device {
                return Vec::new();
            }
            self.chunks_seen += 1;
            self.report.chunk_bytes += c.data.len() as u64;
            if self
                .config
                .corrupt_every
                .is_some_and(|n| n > 0 && self.chunks_seen.is_multiple_of(n))
                && let Some(b) = c.data.first_mut()
            {
                *b ^= 0xA5;
                self.report.chunks_damaged += 1;
            }
        }
        let Some((answer, action)) = self.agent().handle(&frame) else {
            return Vec::new();
        };
        if let (Frame::OtaOffer(_), Frame::OtaStatus(s)) = (&frame, &answer)
            && let OtaState::Next { next } = s.state
            && next > 0
        {
            self.report.resumed_at.push(next);
        }
        if let Frame::OtaStatus(OtaStatus {
            state: OtaState::Next { next },
            ..
        }) = &answer
            && let Some((at, pause)) = self.config.silent_at
            && !self.silenced
            && *next >= at
        {
            // The link drops before this answer gets out.
            self.silenced = true;
            self.deaf_until = Some(now + pause);
            return Vec::new();
        }
        let mut out = vec![answer];
        if action == Action::Reboot {
            self.silenced = false;
            out.extend(self.restart_into_trial());
        }
        out
    }

    /// The device restarts: the bootloader starts the trial image, which
    /// confirms itself if healthy; an unhealthy one crashes, and the next
    /// start rolls back.
    fn restart_into_trial(&mut self) -> Option<Frame> {
        match self.restart() {
            BootOutcome::Trial { .. } => {}
            BootOutcome::Confirmed | BootOutcome::RolledBack { .. } => return None,
        }
        let trial = self.agent().slots().state().trial;
        let version = trial.and_then(|slot| self.agent().slots().header(slot));
        let healthy = match (version, self.config.unhealthy_from) {
            (Some(h), Some(bad)) => h.version < bad,
            _ => true,
        };
        if healthy {
            let report = self.agent().confirm().ok().flatten();
            self.report.version = words(self.agent().installed_version());
            return report;
        }
        // The trial image crashes before its health check passed.
        self.restart();
        self.report.rollbacks += 1;
        self.agent().boot_report()
    }

    fn restart(&mut self) -> BootOutcome {
        self.report.restarts += 1;
        let agent = self.agent.take().expect("agent present outside restart");
        let flash = agent.into_slots().into_flash().reboot();
        let layout = eddy_ota::slots::Layout {
            base: 0,
            slot_size: self.config.slot_size,
        };
        let mut slots = Slots::open(flash, layout).expect("the layout opened at the factory");
        // The factory image is whole, so some slot always boots.
        let _ = slots.boot();
        let outcome = slots.outcome();
        self.agent = Some(Agent::new(
            self.device.clone(),
            self.config.board,
            self.config.public_key,
            slots,
        ));
        outcome
    }
}
