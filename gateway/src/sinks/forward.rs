//! Store-and-forward, the same for every outbox [`Sink`].
//!
//! A session reads the outbox from the sink's stored offset, sends in
//! order up to the session's in-flight limit, and moves the offset only
//! over records the peer accepted, lowest unaccepted first (as a Kafka
//! consumer commits its offset). On any failure the session ends with an
//! error; its supervisor waits with exponential backoff and jitter and
//! starts a new session, which resends from the stored offset: nothing is
//! lost, order is kept, and a record may arrive twice (at-least-once;
//! payloads carry their outbox offset for deduplication).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Session, Sink, SinkError};
use crate::stats::{self, Stats};
use crate::store::{Store, StoreError};

/// How often accepted progress is committed to the store.
const COMMIT_INTERVAL: Duration = Duration::from_millis(50);

/// Records in flight: offset -> accepted?
#[derive(Debug, Default)]
struct Window(BTreeMap<u64, bool>);

impl Window {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn sent(&mut self, offset: u64) {
        self.0.insert(offset, false);
    }

    /// Marks `offset` accepted; false if it was not in flight.
    fn accepted(&mut self, offset: u64) -> bool {
        match self.0.get_mut(&offset) {
            Some(done) => {
                *done = true;
                true
            }
            None => false,
        }
    }

    /// Removes the accepted prefix; returns the new committed offset.
    fn advance(&mut self) -> Option<u64> {
        let mut next = None;
        while let Some(entry) = self.0.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(*entry.key() + 1);
            entry.remove();
        }
        next
    }
}

/// Runs one session of `sink` until `shutdown` (Ok) or a failure (Err).
pub async fn run<S: Sink>(
    sink: &S,
    store: &Store,
    mut head: watch::Receiver<()>,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Result<(), SinkError> {
    // Ending the session in any way stops its transport.
    let stop = shutdown.child_token();
    let _stop = stop.clone().drop_guard();
    let mut session = tokio::select! {
        s = sink.open(stop) => s,
        () = shutdown.cancelled() => return Ok(()),
    }
    .inspect_err(|_| stats::add(&stats.upstream_disconnects, 1))?;
    // Anything appended from here on wakes the session.
    head.mark_unchanged();
    let name = sink.name();
    let mut committed = store.sink_offset(name)?;
    info!(sink = name, offset = committed, "sink session open");
    let mut next = committed;
    let mut window = Window::default();
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    let mut uncommitted: Option<u64> = None;
    let mut flush = |uncommitted: &mut Option<u64>| -> Result<(), StoreError> {
        if let Some(offset) = uncommitted.take() {
            store.advance_sink(name, offset)?;
            stats::add(&stats.upstream_acked, offset.saturating_sub(committed));
            committed = offset;
        }
        Ok(())
    };
    let mut head_open = true;

    loop {
        let room = session.max_inflight().saturating_sub(window.len());
        if room > 0 {
            for (offset, record) in store.outbox_from(next, room)? {
                if !session.send(offset, &record) {
                    break;
                }
                window.sent(offset);
                next = offset + 1;
                stats::add(&stats.upstream_sent, 1);
            }
        }
        let idle = window.len() == 0;
        tokio::select! {
            accepted = session.accepted() => match accepted {
                Ok(offset) => {
                    if window.accepted(offset)
                        && let Some(offset) = window.advance()
                    {
                        uncommitted = Some(offset);
                    }
                }
                Err(e) => {
                    flush(&mut uncommitted)?;
                    stats::add(&stats.upstream_disconnects, 1);
                    return Err(e);
                }
            },
            changed = head.changed(), if idle && head_open => head_open = changed.is_ok(),
            _ = commit_tick.tick() => flush(&mut uncommitted)?,
            () = shutdown.cancelled() => {
                flush(&mut uncommitted)?;
                return Ok(());
            }
        }
        if uncommitted.is_some() && window.len() == 0 {
            flush(&mut uncommitted)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_moves_only_over_an_accepted_prefix() {
        let mut w = Window::default();
        for offset in 10..14 {
            w.sent(offset);
        }
        assert!(w.accepted(11));
        assert_eq!(w.advance(), None, "10 is not accepted yet");
        assert!(w.accepted(10));
        assert_eq!(w.advance(), Some(12));
        assert!(!w.accepted(10), "a duplicate acceptance changes nothing");
        assert!(w.accepted(13));
        assert_eq!(w.advance(), None);
        assert!(w.accepted(12));
        assert_eq!(w.advance(), Some(14));
        assert_eq!(w.len(), 0);
    }
}
