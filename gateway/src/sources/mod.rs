//! Sources: where messages enter the gateway.
//!
//! A source hands the pipeline [`Message`]s over a bounded channel (when
//! it is full the source stops reading, and its transport holds the rest).
//! Each message carries an opaque [`AckToken`]; once the transaction
//! holding a batch committed, the pipeline gives the batch's tokens back
//! through the source's [`Acknowledge`], and only then may the source
//! tell its peer the messages are safe. The pipeline never sees a
//! transport type, so a new source (HTTP, another broker) is a module
//! that makes `Message`s and acknowledges tokens.

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;

pub mod mqtt;
pub mod serial;

/// One message as a source received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Where it was published: an MQTT topic (`eddy/v1/{device}/telemetry`,
    /// or a mapped one). Routing decides the device and format from it.
    pub topic: String,
    /// The payload, undecoded.
    pub payload: Bytes,
    /// A retained message delivered because the source subscribed: the
    /// last value the broker kept, not a new reading.
    pub retained: bool,
    /// Given back to the source once the message's batch committed.
    pub ack: AckToken,
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
}

/// The pipeline's handle on a source's acknowledgements.
pub type Acknowledger = Arc<dyn Acknowledge>;
