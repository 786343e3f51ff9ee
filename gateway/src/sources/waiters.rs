//! Senders that wait for their commit: the half the HTTP source and the
//! embedded broker's ingest hook share.
//!
//! A sender hands one message to the pipeline and waits until the
//! transaction holding it committed; only then does its source answer
//! (`200`, or the device's PUBACK). Each waiting message is one entry of
//! a map from its [`AckToken`] to the sender's reply channel; the
//! pipeline's acknowledgement (through [`Acknowledge`]) completes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AckError, AckToken, Acknowledge, Message, Outcome};

/// Longest a sender waits for room in the pipeline's queue and then for
/// the commit holding its message (an HTTP request, a device's publish).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a message was not committed for its sender: nothing of it is
/// acknowledged, so its sender keeps it and sends it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unstored {
    /// The pipeline's queue was full (and, when waiting, stayed full
    /// until the timeout): not queued.
    #[error("the ingest queue is full")]
    QueueFull,
    #[error("the gateway is shutting down")]
    Closed,
    /// Queued, but its commit was not seen in time: it may still land
    /// (delivery is at least once).
    #[error("the commit did not complete in time")]
    TimedOut,
}

impl Unstored {
    /// A short stable name, for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Closed => "shutting_down",
            Self::TimedOut => "commit_timeout",
        }
    }
}

/// When the pipeline's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse at once ([`Unstored::QueueFull`]): the sender retries.
    Refuse,
    /// Wait for room, within the commit timeout: backpressure.
    Wait,
}

/// Messages whose senders wait for their commit, and the acknowledging
/// end that completes them.
#[derive(Debug)]
pub struct Waiters {
    /// The pipeline's channel; dropped at shutdown.
    tx: Mutex<Option<mpsc::Sender<Message>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    /// This source's number in the pipeline's [`super::Fanout`].
    source: u8,
}

#[derive(Debug)]
struct Pending {
    outcome: Outcome,
    reply: oneshot::Sender<Outcome>,
}

impl Waiters {
    /// Waiters feeding `tx` as number `source` of the pipeline's fanout;
    /// the channel closes at `shutdown` (what is queued still commits).
    pub fn new(tx: mpsc::Sender<Message>, source: u8, shutdown: CancellationToken) -> Arc<Self> {
        let this = Arc::new(Self {
            tx: Mutex::new(Some(tx)),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            source,
        });
        let closing = this.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            closing.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        });
        this
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sender(&self) -> Result<mpsc::Sender<Message>, Unstored> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Unstored::Closed)
    }

    /// Hands the message `make` builds (with its token) to the pipeline
    /// and, if `wait_commit`, waits up to `timeout` for the commit holding
    /// it; returns what became of it. Without `wait_commit` it returns
    /// once the message is queued (a QoS 0 publish: nobody to answer).
    pub async fn submit(
        &self,
        make: impl FnOnce(AckToken) -> Message,
        when_full: WhenFull,
        wait_commit: bool,
        timeout: Duration,
    ) -> Result<Outcome, Unstored> {
        let tx = self.sender()?;
        let token = AckToken::of(self.source, self.next.fetch_add(1, Ordering::Relaxed));
        let (reply, answer) = oneshot::channel();
        if wait_commit {
            let outcome = Outcome::default();
            self.pending().insert(token.0, Pending { outcome, reply });
        }
        let forget = |e| {
            self.pending().remove(&token.0);
            e
        };
        let msg = make(token);
        let deadline = tokio::time::Instant::now() + timeout;
        match when_full {
            WhenFull::Refuse => tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Unstored::QueueFull,
                mpsc::error::TrySendError::Closed(_) => Unstored::Closed,
            }),
            WhenFull::Wait => match tokio::time::timeout_at(deadline, tx.send(msg)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Unstored::Closed),
                Err(_) => Err(Unstored::QueueFull),
            },
        }
        .map_err(forget)?;
        if !wait_commit {
            return Ok(Outcome::default());
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => Ok(outcome),
            // Dropped unacknowledged (the pipeline failed).
            Ok(Err(_)) => Err(forget(Unstored::Closed)),
            Err(_) => Err(forget(Unstored::TimedOut)),
        }
    }
}

impl Acknowledge for Waiters {
    fn acknowledge(&self, tokens: &[AckToken]) -> Result<(), AckError> {
        let mut pending = self.pending();
        for token in tokens {
            if let Some(p) = pending.remove(&token.0) {
                // The sender may have gone; its readings are stored.
                let _ = p.reply.send(p.outcome);
            }
        }
        Ok(())
    }

    fn wants_outcome(&self, _token: AckToken) -> bool {
        true
    }

    fn outcome(&self, token: AckToken, outcome: Outcome) {
        if let Some(p) = self.pending().get_mut(&token.0) {
            p.outcome = outcome;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(ack: AckToken) -> Message {
        Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"{}"),
            retained: false,
            preset: None,
            ack,
        }
    }

    #[tokio::test]
    async fn a_sender_is_answered_only_by_the_acknowledgement() {
        let (tx, mut rx) = mpsc::channel(4);
        let waiters = Waiters::new(tx, 1, CancellationToken::new());
        let w = waiters.clone();
        let sent = tokio::spawn(async move {
            w.submit(message, WhenFull::Wait, true, Duration::from_secs(5))
                .await
        });
        let msg = rx.recv().await.expect("queued");
        assert_eq!(msg.ack.source(), 1);
        waiters.outcome(
            msg.ack,
            Outcome {
                stored: 3,
                ..Outcome::default()
            },
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sent.is_finished(), "answered before the acknowledgement");
        waiters.acknowledge(&[msg.ack]).expect("acknowledged");
        let outcome = sent.await.expect("join").expect("committed");
        assert_eq!(outcome.stored, 3);
        assert!(waiters.pending().is_empty());
    }

    #[tokio::test]
    async fn full_queue_closed_channel_and_slow_commit_are_each_reported() {
        let (tx, mut rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let waiters = Waiters::new(tx, 0, shutdown.clone());
        let quick = Duration::from_millis(50);
        // Queued but never acknowledged: timed out, and forgotten.
        let r = waiters.submit(message, WhenFull::Refuse, true, quick).await;
        assert_eq!(r, Err(Unstored::TimedOut));
        assert!(waiters.pending().is_empty());
        // The one slot is taken.
        let r = waiters.submit(message, WhenFull::Refuse, true, quick).await;
        assert_eq!(r, Err(Unstored::QueueFull));
        let r = waiters.submit(message, WhenFull::Wait, true, quick).await;
        assert_eq!(r, Err(Unstored::QueueFull), "stayed full while it waited");
        assert!(rx.recv().await.is_some());
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = waiters.submit(message, WhenFull::Wait, false, quick).await;
        assert_eq!(r, Err(Unstored::Closed));
        assert!(waiters.pending().is_empty());
    }
}
