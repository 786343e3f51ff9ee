//! Decode and admit: a batch of messages becomes samples for the engine
//! and records for the store.
//!
//! Input: the batch's messages. Output: [`Admitted`]. Each message is
//! routed ([`super::route`]), decoded ([`crate::decode`]), refused at a
//! full store under the `refuse` policy, and, for Eddy frames, admitted
//! exactly once by `(device, boot, seq)` ([`crate::sequencer`]). A message
//! that cannot be used is counted and logged, never affects its
//! neighbours, and is acknowledged with the batch.

use std::collections::HashSet;

use eddy_analytics::Sample;
use tracing::{debug, warn};

use super::Pipeline;
use crate::config::{FullPolicy, TimeMode};
use crate::decode::{self, DecodeError};
use crate::sequencer::Verdict;
use crate::sources::Message;
use crate::stats;
use crate::store::StoredSample;

/// What a batch brings: samples for the engine, records for the store,
/// and the Eddy devices to tell what is stored once it committed.
#[derive(Debug, Default)]
pub(super) struct Admitted {
    /// Samples of series the engine admitted (interned).
    pub samples: Vec<Sample>,
    /// Every admitted reading, also of series the engine refused.
    pub stored: Vec<StoredSample>,
    /// Devices whose frames were admitted or seen again.
    pub ack_devices: HashSet<String>,
}

impl Pipeline {
    /// Decodes and admits `batch` at wall-clock time `now_ms`.
    pub(super) fn admit(&mut self, batch: &[Message], now_ms: i64) -> Admitted {
        let mut admitted = Admitted {
            samples: Vec::with_capacity(batch.len() * 2),
            stored: Vec::with_capacity(batch.len() * 2),
            ack_devices: HashSet::new(),
        };
        let mut rejected = Rejections::default();
        for msg in batch {
            let Some((device, format)) = self.router.route(&msg.topic) else {
                stats::add(&self.parts.stats.messages_unknown_topic, 1);
                debug!(topic = %msg.topic, "message on an unmapped topic");
                continue;
            };
            if let Some(path) = self.router.path(&msg.topic) {
                self.engine.set_path(device, &path);
            }
            let decoded = match decode::decode(
                format,
                device,
                &msg.payload,
                self.parts.ingest.max_payload_bytes,
                now_ms,
            ) {
                Ok(d) => d,
                Err(e) => {
                    let counter = match e {
                        DecodeError::Oversized { .. } => &self.parts.stats.messages_oversized,
                        _ => &self.parts.stats.messages_malformed,
                    };
                    stats::add(counter, 1);
                    rejected.note(&msg.topic, e);
                    continue;
                }
            };
            if self.refusing() {
                // The store is full and the policy keeps what it has: Eddy
                // devices are not acknowledged and keep their frames.
                let counter = match decoded.seq {
                    Some(_) => &self.parts.stats.frames_refused_full,
                    None => &self.parts.stats.samples_refused,
                };
                stats::add(counter, decoded.readings.len() as u64);
                continue;
            }
            if let Some(frame) = decoded.seq {
                let counter = match self.sequencer.admit(&decoded.device, frame) {
                    Verdict::Admit { lost } => {
                        if lost > 0 {
                            stats::add(&self.parts.stats.frames_lost, u64::from(lost));
                            warn!(device = %decoded.device, lost, "device dropped unacknowledged frames");
                        }
                        None
                    }
                    Verdict::Duplicate => Some(&self.parts.stats.frames_duplicate),
                    Verdict::Gap => Some(&self.parts.stats.frames_gap),
                    Verdict::TooManyDevices => {
                        rejected.note(&msg.topic, DecodeError::TooManyDevices);
                        stats::add(&self.parts.stats.frames_device_cap, 1);
                        continue;
                    }
                };
                admitted.ack_devices.insert(decoded.device.clone());
                if let Some(counter) = counter {
                    stats::add(counter, 1);
                    continue;
                }
            }
            let frame = decoded.seq.map(|f| (f.boot, f.seq));
            let ts_ms = match self.parts.engine_section.time {
                TimeMode::Event => decoded.ts_ms,
                TimeMode::Processing => now_ms,
            };
            for r in &decoded.readings {
                match self.engine.series_key(&decoded.device, &r.metric) {
                    Ok(series) => admitted.samples.push(Sample {
                        series,
                        ts_ms,
                        value: r.value,
                    }),
                    Err(_) => stats::add(&self.parts.stats.samples_series_refused, 1),
                }
                admitted.stored.push(StoredSample {
                    device: decoded.device.clone(),
                    metric: r.metric.clone(),
                    ts_ms,
                    value: r.value,
                    frame,
                });
            }
            stats::add(&self.parts.stats.messages_accepted, 1);
        }
        rejected.log();
        admitted
    }

    /// True while the store is at a cap under the `refuse` policy.
    fn refusing(&self) -> bool {
        self.full && self.parts.limits.on_full == FullPolicy::Refuse
    }
}

/// Rejected messages of one batch, logged once per batch, not per message.
#[derive(Debug, Default)]
struct Rejections {
    count: usize,
    first: Option<(String, DecodeError)>,
}

impl Rejections {
    fn note(&mut self, topic: &str, error: DecodeError) {
        self.count += 1;
        self.first.get_or_insert_with(|| (topic.to_string(), error));
    }

    fn log(&self) {
        if let Some((topic, error)) = &self.first {
            warn!(rejected = self.count, first_topic = %topic, first_error = %error, "messages rejected");
        }
    }
}
