//! Sources: where messages enter the gateway.
//!
//! A source hands the pipeline [`Message`]s over a bounded channel (when
//! it is full the source stops reading, and its transport holds the rest).
//! Each message carries an opaque [`AckToken`]; once the transaction
//! holding a batch committed, the pipeline gives the batch's tokens back
//! through the source's [`Acknowledge`], and only then may the source
//! tell its peer the messages are safe. The pipeline never sees a
//! transport type, so a new source (another broker) is a module that
//! makes `Message`s and acknowledges tokens. Several sources share the
//! pipeline through [`Fanout`], which gives each its tokens back.
//!
//! A source that answers each message's sender (HTTP) also receives each
//! message's [`Outcome`] before its acknowledgement.

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;

use crate::decode::{DecodeError, Decoder, Dropped};

pub mod embedded;
pub mod http;
pub mod mqtt;
pub mod serial;
pub mod waiters;

/// One message as a source received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Where it was published: an MQTT topic (`eddy/v1/{device}/telemetry`,
    /// or a mapped one). Routing decides the device and format from it.
    pub topic: String,
    /// The payload, undecoded.
    pub payload: Bytes,
    /// A retained message delivered because the source subscribed: the
    /// last value the broker kept, not a new reading.
    pub retained: bool,
    /// How to decode it when the source knows (HTTP: the endpoint and
    /// the content type); routed by its topic otherwise.
    pub preset: Option<Arc<Preset>>,
    /// Given back to the source once the message's batch committed.
    pub ack: AckToken,
}

/// A message's device and decoder, chosen by its source instead of by
/// topic routing.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// The device; empty when the payload names its devices (line
    /// protocol with a device tag).
    pub device: String,
    pub decoder: Decoder,
}

/// What became of one message, for a source that answers its sender.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Readings stored (committed once the message is acknowledged).
    pub stored: u64,
    /// The message was refused whole.
    pub refused: Option<DecodeError>,
    /// Fields and lines not taken, and why.
    pub dropped: Vec<Dropped>,
    /// Readings timed beyond `ingest.future_horizon`, refused.
    pub future: u64,
    /// Readings refused because the store is full (`on_full = "refuse"`):
    /// not stored, to be sent again.
    pub full: u64,
}

/// What a source needs to acknowledge one message: opaque to the
/// pipeline (for MQTT, the packet id and QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken(pub u64);

/// Why acknowledgements did not reach the peer.
#[derive(Debug, thiserror::Error)]
#[error("{failed} acknowledgements not sent: {reason}")]
pub struct AckError {
    pub failed: usize,
    pub reason: String,
}

/// A source's acknowledging end, shared with the pipeline.
pub trait Acknowledge: Send + Sync + Debug {
    /// Acknowledges messages whose batch committed. A message not
    /// acknowledged is redelivered by its peer later; admission drops it
    /// then if it was stored.
    fn acknowledge(&self, tokens: &[AckToken]) -> Result<(), AckError>;

    /// Whether the source wants the [`Outcome`] of the message `token`
    /// names (checked per message, so cheap).
    fn wants_outcome(&self, _token: AckToken) -> bool {
        false
    }

    /// The outcome of a message, reported when it was admitted, before
    /// the batch commits and the message is acknowledged.
    fn outcome(&self, _token: AckToken, _outcome: Outcome) {}
}

/// The pipeline's handle on a source's acknowledgements.
pub type Acknowledger = Arc<dyn Acknowledge>;

/// Bits of an [`AckToken`] a source may use; the top byte names the
/// source in a [`Fanout`].
pub const TOKEN_BITS: u32 = 56;

impl AckToken {
    /// Token `local` (below 2^56) of source number `source` of a [`Fanout`].
    pub fn of(source: u8, local: u64) -> Self {
        Self(u64::from(source) << TOKEN_BITS | (local & ((1 << TOKEN_BITS) - 1)))
    }

    fn source(self) -> usize {
        (self.0 >> TOKEN_BITS) as usize
    }
}

/// Several sources' acknowledging ends behind one: source `i` makes its
/// tokens with [`AckToken::of`]`(i, ..)` (source 0 may use plain tokens
/// below 2^56) and receives them back.
#[derive(Debug, Clone)]
pub struct Fanout(pub Vec<Acknowledger>);

impl Acknowledge for Fanout {
    fn acknowledge(&self, tokens: &[AckToken]) -> Result<(), AckError> {
        let mut result: Result<(), AckError> = Ok(());
        for (i, source) in self.0.iter().enumerate() {
            let mine: Vec<AckToken> = tokens.iter().copied().filter(|t| t.source() == i).collect();
            if mine.is_empty() {
                continue;
            }
            if let Err(e) = source.acknowledge(&mine) {
                result = Err(match result {
                    Ok(()) => e,
                    Err(prev) => AckError {
                        failed: prev.failed + e.failed,
                        reason: e.reason,
                    },
                });
            }
        }
        result
    }

    fn wants_outcome(&self, token: AckToken) -> bool {
        self.0
            .get(token.source())
            .is_some_and(|s| s.wants_outcome(token))
    }

    fn outcome(&self, token: AckToken, outcome: Outcome) {
        if let Some(source) = self.0.get(token.source()) {
            source.outcome(token, outcome);
        }
    }
}
