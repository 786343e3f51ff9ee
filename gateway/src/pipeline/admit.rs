//! Decode and admit: a batch of messages becomes samples for the engine
//! and records for the store.
//!
//! Input: the batch's messages. Output: [`Admitted`]. Each message is
//! routed ([`super::route`]), decoded ([`crate::decode`]), refused at a
//! full store under the `refuse` policy, and, for Eddy frames, admitted
//! exactly once by `(device, boot, seq)` ([`crate::sequencer`]). A message
//! that cannot be used is counted by reason and logged (rate-limited),
//! never affects its neighbours, and is acknowledged with the batch; so is
//! a field dropped from an accepted message. A reading timed beyond
//! `ingest.future_horizon` is refused or stamped with its arrival time
//! (`ingest.on_future`), so no device's clock moves the fleet's event
//! time past that bound.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use eddy_analytics::Sample;
use tracing::{info, warn};

use super::Pipeline;
use super::route::Route;
use crate::config::{FullPolicy, FuturePolicy, TimeMode};
use crate::decode::{DecodeError, Decoded, Dropped};
use crate::sequencer::Verdict;
use crate::sources::{Message, Outcome};
use crate::stats::{self, LogEvery};
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

/// Per batch: refusals and drops by reason, counted once at its end.
#[derive(Debug, Default)]
struct Tally {
    refused: HashMap<&'static str, u64>,
    dropped: HashMap<&'static str, u64>,
}

impl Pipeline {
    /// Decodes and admits `batch` at wall-clock time `now_ms`.
    pub(super) fn admit(&mut self, batch: &[Message], now_ms: i64) -> Admitted {
        let mut admitted = Admitted {
            samples: Vec::with_capacity(batch.len() * 2),
            stored: Vec::with_capacity(batch.len() * 2),
            ack_devices: HashSet::new(),
        };
        let stats = self.parts.stats.clone();
        let mut tally = Tally::default();
        let mut decodes: Vec<Decoded> = Vec::new();
        for msg in batch {
            let report = self.parts.acker.wants_outcome(msg.ack);
            let mut outcome = Outcome::default();
            self.admit_message(
                msg,
                now_ms,
                &mut decodes,
                &mut admitted,
                &mut tally,
                report.then_some(&mut outcome),
            );
            if report {
                self.parts.acker.outcome(msg.ack, outcome);
            }
        }
        for (reason, n) in tally.refused {
            stats.messages_refused(reason, n);
        }
        for (reason, n) in tally.dropped {
            stats.values_dropped(reason, n);
        }
        admitted
    }

    /// Routes, decodes and admits one message; fills `outcome` when its
    /// source asked for it.
    fn admit_message(
        &mut self,
        msg: &Message,
        now_ms: i64,
        decodes: &mut Vec<Decoded>,
        admitted: &mut Admitted,
        tally: &mut Tally,
        mut outcome: Option<&mut Outcome>,
    ) {
        let stats = self.parts.stats.clone();
        if msg.retained && self.parts.ingest.skip_retained {
            stats::add(&stats.messages_retained_skipped, 1);
            return;
        }
        let route = match &msg.preset {
            Some(preset) => Route {
                device: Cow::Borrowed(preset.device.as_str()),
                metric: None,
                path: None,
                decoder: &preset.decoder,
            },
            None => match self.router.route(&msg.topic) {
                Some(route) => route,
                None => {
                    stats::add(&stats.messages_unknown_topic, 1);
                    self.diagnostics.unknown_topic(&msg.topic);
                    return;
                }
            },
        };
        decodes.clear();
        let decoded =
            route
                .decoder
                .decode_into(&route.device, route.metric, &msg.payload, now_ms, decodes);
        if let Err(e) = decoded {
            let counter = match e {
                DecodeError::Oversized { .. } => &stats.messages_oversized,
                _ => &stats.messages_malformed,
            };
            stats::add(counter, 1);
            *tally.refused.entry(e.reason()).or_default() += 1;
            if let DecodeError::NoLines(lines) = &e {
                for d in lines {
                    *tally.dropped.entry(d.reason.name()).or_default() += 1;
                }
            }
            self.diagnostics.refused(&route.device, &msg.topic, &e);
            if let Some(outcome) = outcome {
                outcome.refused = Some(e);
            }
            return;
        }
        let route_path = route.path;
        let mut accepted = false;
        for decoded in decodes.drain(..) {
            if let Some(path) = decoded.path.as_ref().or(route_path.as_ref()) {
                self.engine.set_path(&decoded.device, path);
            }
            for d in &decoded.dropped {
                *tally.dropped.entry(d.reason.name()).or_default() += 1;
                self.diagnostics.dropped(&decoded.device, &msg.topic, d);
            }
            accepted |= self.admit_decoded(&decoded, msg, now_ms, admitted, tally, &mut outcome);
            if let Some(outcome) = outcome.as_deref_mut() {
                outcome.dropped.extend(decoded.dropped);
            }
        }
        if accepted {
            stats::add(&stats.messages_accepted, 1);
        }
    }

    /// Admits one device's readings of a message; true when the message
    /// counts as accepted.
    fn admit_decoded(
        &mut self,
        decoded: &Decoded,
        msg: &Message,
        now_ms: i64,
        admitted: &mut Admitted,
        tally: &mut Tally,
        outcome: &mut Option<&mut Outcome>,
    ) -> bool {
        let stats = self.parts.stats.clone();
        let horizon_ms =
            i64::try_from(self.parts.ingest.future_horizon.as_millis()).unwrap_or(i64::MAX);
        if self.refusing() {
            // The store is full and the policy keeps what it has: Eddy
            // devices are not acknowledged and keep their frames.
            let counter = match decoded.seq {
                Some(_) => &stats.frames_refused_full,
                None => &stats.samples_refused,
            };
            stats::add(counter, decoded.readings.len() as u64);
            if let Some(outcome) = outcome.as_deref_mut() {
                outcome.full += decoded.readings.len() as u64;
            }
            return false;
        }
        if let Some(frame) = decoded.seq {
            let verdict = self.sequencer.admit(&decoded.device, frame);
            if let Verdict::Admit { lost } | Verdict::Gap { lost } = verdict
                && lost > 0
            {
                stats::add(&stats.frames_lost, u64::from(lost));
                warn!(device = %decoded.device, lost, "device dropped unacknowledged frames");
            }
            let counter = match verdict {
                Verdict::Admit { .. } => None,
                Verdict::Duplicate => Some(&stats.frames_duplicate),
                Verdict::Gap { .. } => Some(&stats.frames_gap),
                Verdict::TooManyDevices => {
                    let e = DecodeError::TooManyDevices;
                    *tally.refused.entry(e.reason()).or_default() += 1;
                    self.diagnostics.refused(&decoded.device, &msg.topic, &e);
                    stats::add(&stats.frames_device_cap, 1);
                    return false;
                }
            };
            admitted.ack_devices.insert(decoded.device.clone());
            if let Some(counter) = counter {
                stats::add(counter, 1);
                return false;
            }
        }
        let frame = decoded.seq.map(|f| (f.boot, f.seq));
        let mut any = decoded.seq.is_some();
        for r in &decoded.readings {
            let mut ts_ms = match self.parts.engine_section.time {
                TimeMode::Event => r.ts_ms,
                TimeMode::Processing => now_ms,
            };
            if ts_ms.saturating_sub(now_ms) > horizon_ms {
                self.diagnostics
                    .future(&decoded.device, &msg.topic, ts_ms - now_ms);
                match self.parts.ingest.on_future {
                    FuturePolicy::Refuse => {
                        stats::add(&stats.samples_future_refused, 1);
                        if let Some(outcome) = outcome.as_deref_mut() {
                            outcome.future += 1;
                        }
                        continue;
                    }
                    FuturePolicy::ArrivalTime => {
                        stats::add(&stats.samples_future_stamped, 1);
                        ts_ms = now_ms;
                    }
                }
            }
            any = true;
            match self.engine.series_key(&decoded.device, &r.metric) {
                Ok(series) => admitted.samples.push(Sample {
                    series,
                    ts_ms,
                    value: r.value,
                }),
                Err(_) => stats::add(&stats.samples_series_refused, 1),
            }
            admitted.stored.push(StoredSample {
                device: decoded.device.clone(),
                metric: r.metric.clone(),
                ts_ms,
                value: r.value,
                frame,
            });
            if let Some(outcome) = outcome.as_deref_mut() {
                outcome.stored += 1;
            }
        }
        any
    }

    /// True while the store is at a cap under the `refuse` policy.
    fn refusing(&self) -> bool {
        self.full && self.parts.limits.on_full == FullPolicy::Refuse
    }
}

/// How often each kind of bad input may log a line.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Unknown topics logged once each, up to this many.
const MAX_UNKNOWN_TOPICS_LOGGED: usize = 1000;

/// Logs of refused and dropped input, rate-limited: per reason at most
/// one line per [`LOG_EVERY`] (with the device, the topic and how many
/// were not logged since); each unknown topic once. Counters count every
/// one of them.
#[derive(Debug)]
pub(super) struct Diagnostics {
    log: LogEvery,
    unknown_topics: HashSet<String>,
}

impl Default for Diagnostics {
    fn default() -> Self {
        Self {
            log: LogEvery::new(LOG_EVERY),
            unknown_topics: HashSet::new(),
        }
    }
}

impl Diagnostics {
    fn due(&mut self, reason: &'static str) -> Option<u64> {
        self.log.due(reason)
    }

    fn refused(&mut self, device: &str, topic: &str, error: &DecodeError) {
        if let Some(suppressed) = self.due(error.reason()) {
            warn!(device, topic, reason = error.reason(), %error, suppressed, "message refused");
        }
    }

    fn dropped(&mut self, device: &str, topic: &str, field: &Dropped) {
        let reason = field.reason.name();
        if let Some(suppressed) = self.due(reason) {
            warn!(device, topic, field = %field.field, reason, suppressed, "field dropped");
        }
    }

    fn future(&mut self, device: &str, topic: &str, ahead_ms: i64) {
        if let Some(suppressed) = self.due("future") {
            warn!(
                device,
                topic,
                ahead_s = ahead_ms / 1000,
                suppressed,
                "event time beyond ingest.future_horizon: the device's clock is ahead"
            );
        }
    }

    fn unknown_topic(&mut self, topic: &str) {
        if self.unknown_topics.len() < MAX_UNKNOWN_TOPICS_LOGGED
            && self.unknown_topics.insert(topic.to_string())
        {
            let more = match self.unknown_topics.len() == MAX_UNKNOWN_TOPICS_LOGGED {
                true => "; further unknown topics are counted, not logged",
                false => "",
            };
            info!(
                topic,
                "message on a topic no mapping claims (counted){more}"
            );
        }
    }
}
