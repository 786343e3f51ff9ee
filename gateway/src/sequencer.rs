//! Exactly-once admission of Eddy telemetry frames by (device, boot, seq).
//!
//! Devices number their frames per boot and keep every frame until the
//! gateway acknowledges it (see the firmware's `Backlog`). The gateway
//! admits a device's frames strictly in sequence order, go-back-N style:
//! the next expected frame is stored, an earlier one is a duplicate (a
//! retransmission, or a redelivery by the broker) and is dropped, a later
//! one means something in between went missing and is refused without
//! being stored or acknowledged, so the device sends the gap again.
//! Only the device can declare frames lost for good, through the `oldest`
//! field of its frames (its backlog overflowed); those are counted.
//!
//! The state of every device is written in the same redb transaction as
//! the samples it admitted, so after a crash the gateway's idea of what it
//! stored is exactly what it stored, and it acknowledges nothing more.

use std::collections::HashMap;

use eddy_proto::seq_le;

/// What the gateway remembers of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSeq {
    pub boot: u32,
    /// The next sequence number to admit.
    pub next: u32,
    /// The boot before `boot`: its late frames are stale, not a new boot.
    pub previous_boot: u32,
}

impl DeviceSeq {
    /// Fixed-size encoding for the store.
    pub fn encode(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[0..4].copy_from_slice(&self.boot.to_le_bytes());
        out[4..8].copy_from_slice(&self.next.to_le_bytes());
        out[8..12].copy_from_slice(&self.previous_boot.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
        (bytes.len() == 12).then_some(())?;
        Some(Self {
            boot: word(0)?,
            next: word(4)?,
            previous_boot: word(8)?,
        })
    }

    /// The sequence number to acknowledge: everything before `next`.
    /// Right after a new boot this is `oldest - 1`, which releases nothing
    /// the device holds (serial arithmetic), so it is always safe to send.
    pub fn acked(&self) -> u32 {
        self.next.wrapping_sub(1)
    }
}

/// The sequence fields of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSeq {
    pub boot: u32,
    pub seq: u32,
    pub oldest: u32,
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store it. `lost` frames before it were declared gone by the device.
    Admit { lost: u32 },
    /// Already stored, or from a previous boot: drop it, but acknowledge.
    Duplicate,
    /// A gap before it: refuse it; the device will send the gap again.
    /// `lost` frames before the gap were declared gone by the device.
    Gap { lost: u32 },
    /// A new device while `max_devices` are tracked: refuse it; the device
    /// keeps its frames.
    TooManyDevices,
}

/// Per-device admission state with a cap on the number of devices.
#[derive(Debug)]
pub struct Sequencer {
    devices: HashMap<String, DeviceSeq>,
    /// Devices whose state changed since the last [`Sequencer::take_dirty`].
    dirty: Vec<String>,
    max_devices: usize,
}

impl Sequencer {
    /// State as loaded from the store.
    pub fn new(devices: HashMap<String, DeviceSeq>, max_devices: usize) -> Self {
        Self {
            devices,
            dirty: Vec::new(),
            max_devices,
        }
    }

    pub fn get(&self, device: &str) -> Option<&DeviceSeq> {
        self.devices.get(device)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Decides on one frame and updates the device's state.
    pub fn admit(&mut self, device: &str, frame: FrameSeq) -> Verdict {
        let is_new = !self.devices.contains_key(device);
        if is_new && self.devices.len() >= self.max_devices {
            return Verdict::TooManyDevices;
        }
        // A device numbers each boot's frames from 0: what it gave up of
        // a boot before the gateway first heard of that boot is lost too.
        let mut lost = 0;
        if is_new {
            lost = frame.oldest;
            let fresh = DeviceSeq {
                boot: frame.boot,
                next: frame.oldest,
                previous_boot: frame.boot,
            };
            self.devices.insert(device.to_string(), fresh);
        }
        let Some(state) = self.devices.get_mut(device) else {
            return Verdict::TooManyDevices;
        };
        let before = *state;
        if frame.boot != state.boot {
            if frame.boot == state.previous_boot {
                return Verdict::Duplicate;
            }
            lost = frame.oldest;
            *state = DeviceSeq {
                boot: frame.boot,
                next: frame.oldest,
                previous_boot: state.boot,
            };
        }
        if !seq_le(frame.oldest, state.next) {
            // The device no longer holds state.next..oldest.
            lost = frame.oldest.wrapping_sub(state.next);
            state.next = frame.oldest;
        }
        // Counted once, with whatever verdict the frame gets: the state
        // moved past the lost frames already.
        let verdict = if frame.seq == state.next {
            state.next = state.next.wrapping_add(1);
            Verdict::Admit { lost }
        } else if seq_le(frame.seq, state.next) {
            Verdict::Duplicate
        } else {
            Verdict::Gap { lost }
        };
        if is_new || *state != before {
            self.dirty.push(device.to_string());
        }
        verdict
    }

    /// Devices changed since the last call, with their state, for the
    /// store transaction that commits the frames admitted meanwhile.
    pub fn take_dirty(&mut self) -> Vec<(String, DeviceSeq)> {
        let mut names = std::mem::take(&mut self.dirty);
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| self.devices.get(&n).map(|s| (n, *s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(boot: u32, seq: u32, oldest: u32) -> FrameSeq {
        FrameSeq { boot, seq, oldest }
    }

    #[test]
    fn admits_in_order_and_drops_duplicates() {
        let mut s = Sequencer::new(HashMap::new(), 10);
        assert_eq!(s.admit("d", f(1, 0, 0)), Verdict::Admit { lost: 0 });
        assert_eq!(s.admit("d", f(1, 1, 0)), Verdict::Admit { lost: 0 });
        assert_eq!(s.admit("d", f(1, 0, 0)), Verdict::Duplicate);
        assert_eq!(s.admit("d", f(1, 1, 0)), Verdict::Duplicate);
        assert_eq!(s.get("d").map(DeviceSeq::acked), Some(1));
    }

    #[test]
    fn a_gap_is_refused_until_the_device_fills_it() {
        let mut s = Sequencer::new(HashMap::new(), 10);
        s.admit("d", f(1, 0, 0));
        assert_eq!(s.admit("d", f(1, 2, 1)), Verdict::Gap { lost: 0 });
        assert_eq!(s.admit("d", f(1, 3, 1)), Verdict::Gap { lost: 0 });
        assert_eq!(s.admit("d", f(1, 1, 1)), Verdict::Admit { lost: 0 });
        assert_eq!(s.admit("d", f(1, 2, 1)), Verdict::Admit { lost: 0 });
    }

    #[test]
    fn frames_the_device_gave_up_are_counted_lost() {
        let mut s = Sequencer::new(HashMap::new(), 10);
        s.admit("d", f(1, 0, 0));
        // The device's backlog overflowed: 1..=4 are gone.
        assert_eq!(s.admit("d", f(1, 5, 5)), Verdict::Admit { lost: 4 });
        assert_eq!(s.admit("d", f(1, 7, 6)), Verdict::Gap { lost: 0 });
        // Given up while the frame that says so is itself after a gap:
        // counted once, at that frame.
        assert_eq!(s.admit("d", f(1, 10, 8)), Verdict::Gap { lost: 2 });
        assert_eq!(s.admit("d", f(1, 9, 8)), Verdict::Gap { lost: 0 });
        assert_eq!(s.admit("d", f(1, 8, 8)), Verdict::Admit { lost: 0 });
        // A new boot whose first frames the device gave up before the
        // gateway heard of the boot.
        assert_eq!(s.admit("d", f(2, 3, 3)), Verdict::Admit { lost: 3 });
    }

    #[test]
    fn a_reboot_restarts_numbering_and_stale_frames_are_dropped() {
        let mut s = Sequencer::new(HashMap::new(), 10);
        for seq in 0..5 {
            s.admit("d", f(1, seq, 0));
        }
        assert_eq!(s.admit("d", f(2, 0, 0)), Verdict::Admit { lost: 0 });
        // A late retransmission of the previous boot.
        assert_eq!(s.admit("d", f(1, 5, 5)), Verdict::Duplicate);
        assert_eq!(s.admit("d", f(2, 1, 0)), Verdict::Admit { lost: 0 });
    }

    #[test]
    fn first_contact_starts_at_the_oldest_frame_the_device_holds() {
        let mut s = Sequencer::new(HashMap::new(), 10);
        // A redelivered later frame arrives first: wait for the oldest.
        // The device numbers each boot from 0, so 0..=6 were given up
        // before the gateway ever heard of it: lost, counted.
        assert_eq!(s.admit("d", f(1, 9, 7)), Verdict::Gap { lost: 7 });
        assert_eq!(s.get("d").map(DeviceSeq::acked), Some(6));
        assert_eq!(s.admit("d", f(1, 7, 7)), Verdict::Admit { lost: 0 });
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Sequencer::new(HashMap::new(), 10);
        let start = u32::MAX - 1;
        // First heard of near the end of the sequence space: everything
        // before `start` of this boot never reached the gateway.
        assert_eq!(
            s.admit("d", f(1, start, start)),
            Verdict::Admit { lost: start }
        );
        for seq in [u32::MAX, 0, 1] {
            assert_eq!(s.admit("d", f(1, seq, start)), Verdict::Admit { lost: 0 });
        }
        assert_eq!(s.admit("d", f(1, u32::MAX, start)), Verdict::Duplicate);
    }

    #[test]
    fn at_the_device_cap_new_devices_are_refused_known_ones_continue() {
        let mut s = Sequencer::new(HashMap::new(), 2);
        s.admit("a", f(1, 0, 0));
        s.admit("b", f(1, 0, 0));
        assert_eq!(s.admit("c", f(1, 0, 0)), Verdict::TooManyDevices);
        assert_eq!(s.admit("a", f(1, 1, 0)), Verdict::Admit { lost: 0 });
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn state_round_trips_and_dirty_devices_are_reported_once() {
        let mut s = Sequencer::new(HashMap::new(), 10);
        s.admit("a", f(1, 0, 0));
        s.admit("a", f(1, 1, 0));
        s.admit("b", f(3, 0, 0));
        let dirty = s.take_dirty();
        assert_eq!(
            dirty.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        for (_, state) in &dirty {
            assert_eq!(DeviceSeq::decode(&state.encode()), Some(*state));
        }
        assert!(s.take_dirty().is_empty());
        assert_eq!(DeviceSeq::decode(&[1, 2, 3]), None);
    }
}
