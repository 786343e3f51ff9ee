//! The offline buffer: telemetry frames the gateway has not yet confirmed
//! as stored, kept for retransmission.
//!
//! The promise is end to end: a frame leaves the backlog only when the
//! gateway's [`Ack`] says the transaction holding it committed, never when
//! a broker or a UART merely took it. When the backlog is full the oldest
//! frame is dropped and counted, and every frame sent afterwards carries
//! the new `oldest` so the gateway stops waiting for what is gone.

use eddy_proto::{Ack, Telemetry, seq_le};
use heapless::Deque;

/// Up to `N` unacknowledged telemetry frames of one boot, oldest first.
#[derive(Debug)]
pub struct Backlog<const N: usize> {
    boot: u32,
    frames: Deque<Telemetry, N>,
    dropped: u32,
    /// Board time of the last progress: an ack that removed frames, or a
    /// full retransmission.
    progress_ms: u64,
    /// Timeouts in a row without progress; each doubles the next timeout.
    timeouts: u32,
}

/// Most doublings of the retransmission timeout (base x 32).
const MAX_BACKOFF: u32 = 5;

impl<const N: usize> Backlog<N> {
    /// An empty backlog for frames of boot `boot`.
    pub const fn new(boot: u32) -> Self {
        Self {
            boot,
            frames: Deque::new(),
            dropped: 0,
            progress_ms: 0,
            timeouts: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames dropped unacknowledged because the backlog was full.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Sequence number of the oldest frame held, if any.
    pub fn oldest(&self) -> Option<u32> {
        self.frames.front().map(|t| t.seq)
    }

    /// Keeps a copy of `frame` until it is acknowledged, after filling in
    /// its `oldest`; the caller then sends `frame`. When the backlog is full
    /// the oldest frame is dropped first and counted.
    pub fn push(&mut self, frame: &mut Telemetry, now_ms: u64) {
        if self.frames.is_empty() {
            // The retransmission timer runs from the first unacked frame.
            self.progress_ms = now_ms;
        }
        if self.frames.is_full() {
            self.frames.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        frame.oldest = self.frames.front().map_or(frame.seq, |t| t.seq);
        // Cannot fail: a slot was freed above if there was none.
        let _ = self.frames.push_back(frame.clone());
    }

    /// Applies an acknowledgement; returns how many frames it released.
    /// Acks of another boot (late, from before a reboot) release nothing.
    pub fn ack(&mut self, ack: &Ack, now_ms: u64) -> usize {
        if ack.boot != self.boot {
            return 0;
        }
        let mut released = 0;
        while self.frames.front().is_some_and(|t| seq_le(t.seq, ack.seq)) {
            self.frames.pop_front();
            released += 1;
        }
        if released > 0 {
            self.progress_ms = now_ms;
            self.timeouts = 0;
        }
        released
    }

    /// True when frames have waited without progress for the timeout:
    /// `base_ms`, doubled for every timeout in a row (up to 32 x), so a
    /// gateway that is merely slow is not buried under retransmissions.
    /// Counts the timeout; the caller then retransmits everything
    /// ([`Backlog::resend`]).
    pub fn timed_out(&mut self, now_ms: u64, base_ms: u64) -> bool {
        let timeout = base_ms.saturating_mul(1 << self.timeouts);
        let due = !self.frames.is_empty() && now_ms.saturating_sub(self.progress_ms) >= timeout;
        if due {
            self.timeouts = (self.timeouts + 1).min(MAX_BACKOFF);
        }
        due
    }

    /// Every held frame, oldest first, each with `oldest` brought up to
    /// date; restarts the retransmission timer. Call after a reconnect or
    /// when [`Backlog::timed_out`] says so.
    pub fn resend(&mut self, now_ms: u64) -> impl Iterator<Item = &Telemetry> {
        self.progress_ms = now_ms;
        let oldest = self.oldest().unwrap_or(0);
        for t in self.frames.iter_mut() {
            t.oldest = oldest;
        }
        self.frames.iter()
    }
}
