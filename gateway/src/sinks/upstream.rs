//! Store-and-forward to an upstream MQTT broker.
//!
//! The sink reads the outbox from its stored offset, publishes in order
//! with QoS 1, and moves the offset only over records the upstream
//! acknowledged (PUBACK), lowest unacknowledged first. On any connection
//! failure the session ends with an error; its supervisor waits with
//! exponential backoff and jitter and starts a new session, which resends
//! from the stored offset: nothing is lost, order is kept, and a record may
//! arrive twice (at-least-once; every payload carries its outbox offset as
//! `seq` for deduplication).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use eddy_mqtt::{Connector, Delivery, Pump, QoS};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{BrokerUrl, UpstreamConfig};
use crate::stats::{self, Stats};
use crate::store::{Store, StoreError};
use crate::tls::TlsError;

/// The name of this sink's offset in the store.
pub const SINK: &str = "upstream";

/// How often acknowledged progress is committed to the store.
const COMMIT_INTERVAL: Duration = Duration::from_millis(50);

/// Publishes in flight, by outbox offset.
#[derive(Debug, Default)]
struct Inflight {
    /// Offsets published but not yet given a packet id, in send order.
    unassigned: VecDeque<u64>,
    pkids: HashMap<u16, u64>,
    /// Offset -> acknowledged?
    window: BTreeMap<u64, bool>,
}

impl Inflight {
    fn len(&self) -> usize {
        self.window.len()
    }

    fn sent(&mut self, offset: u64) {
        self.unassigned.push_back(offset);
        self.window.insert(offset, false);
    }

    fn assigned(&mut self, pkid: u16) {
        if let Some(offset) = self.unassigned.pop_front() {
            self.pkids.insert(pkid, offset);
        }
    }

    fn acked(&mut self, pkid: u16) -> bool {
        match self
            .pkids
            .remove(&pkid)
            .and_then(|o| self.window.get_mut(&o))
        {
            Some(done) => {
                *done = true;
                true
            }
            None => false,
        }
    }

    /// Removes the acknowledged prefix; returns the new committed offset.
    fn advance(&mut self) -> Option<u64> {
        let mut next = None;
        while let Some(entry) = self.window.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(*entry.key() + 1);
            entry.remove();
        }
        next
    }
}

/// Why the sink stopped; its supervisor restarts it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url}: {reason}")]
    Connection { url: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("upstream TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Runs one upstream session until `shutdown` (Ok) or a failure (Err):
/// connect, then forward the outbox from the stored offset.
pub async fn run(
    config: UpstreamConfig,
    store: Store,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<(), UpstreamError> {
    let failed = |reason: String| UpstreamError::Connection {
        url: config.url.clone(),
        reason,
    };
    let url = BrokerUrl::parse(&config.url).map_err(|e| failed(e.to_string()))?;
    // A clean session each time: this sink resends from its own offset, so
    // the client must not replay anything of the previous connection.
    // Certificate files are read at every session start, so renewed ones
    // are picked up on the next reconnect.
    let connector = Connector::new(&url, config.client_id.clone())
        .clean_session(true)
        .keep_alive(Duration::from_secs(10))
        .inflight(config.max_inflight)
        .request_capacity(usize::from(config.max_inflight) * 2 + 16)
        .tls_files(&config.tls.clone().unwrap_or_default())?;
    match session(&config, &connector, &store, &wake, &stats, &shutdown).await? {
        SessionEnd::Shutdown => Ok(()),
        SessionEnd::Failed { reason } => {
            stats::add(&stats.upstream_disconnects, 1);
            Err(failed(reason))
        }
    }
}

enum SessionEnd {
    Shutdown,
    Failed { reason: String },
}

async fn session(
    config: &UpstreamConfig,
    connector: &Connector,
    store: &Store,
    wake: &Notify,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, StoreError> {
    let max_inflight = usize::from(config.max_inflight);
    // The session ends at the first connection failure; ending in any
    // way stops the pump (it disconnects cleanly when connected).
    let stop = shutdown.child_token();
    let _stop_pump = stop.clone().drop_guard();
    let (tx, mut events) = mpsc::channel(max_inflight * 2 + 16);
    let (client, _pump) = connector.spawn(&Pump::new().stop_on_error(), tx, stop);
    let lost = |delivery: Option<Delivery>| SessionEnd::Failed {
        reason: match delivery {
            Some(Delivery::Lost { error, .. }) => error.to_string(),
            _ => "the MQTT pump ended".into(),
        },
    };

    // Wait for the connection before reading the outbox.
    loop {
        let delivery = tokio::select! {
            d = events.recv() => d,
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
        };
        match delivery {
            Some(Delivery::Connected { .. }) => break,
            Some(Delivery::Lost { .. }) | None => return Ok(lost(delivery)),
            Some(_) => {}
        }
    }
    let mut committed = store.sink_offset(SINK)?;
    info!(upstream = %config.url, offset = committed, "upstream connected");
    let mut next = committed;
    let mut inflight = Inflight::default();
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    let mut uncommitted: Option<u64> = None;

    loop {
        // Fill the window from the outbox.
        if inflight.len() < max_inflight {
            let room = max_inflight - inflight.len();
            for (offset, record) in store.outbox_from(next, room)? {
                let topic = format!("{}/{}", config.topic_prefix, record.topic);
                if client
                    .try_publish(
                        topic,
                        QoS::AtLeastOnce,
                        false,
                        with_seq(offset, &record.payload),
                    )
                    .is_err()
                {
                    break;
                }
                inflight.sent(offset);
                next = offset + 1;
                stats::add(&stats.upstream_sent, 1);
            }
        }
        let idle = inflight.len() == 0;
        tokio::select! {
            delivery = events.recv() => match delivery {
                Some(Delivery::Sent { pkid }) => inflight.assigned(pkid),
                Some(Delivery::Acked { pkid }) => {
                    if inflight.acked(pkid)
                        && let Some(offset) = inflight.advance()
                    {
                        uncommitted = Some(offset);
                    }
                }
                Some(Delivery::Lost { .. }) | None => {
                    flush(store, stats, &mut uncommitted, &mut committed)?;
                    return Ok(lost(delivery));
                }
                Some(_) => {}
            },
            () = wake.notified(), if idle => {}
            _ = commit_tick.tick() => flush(store, stats, &mut uncommitted, &mut committed)?,
            () = shutdown.cancelled() => {
                flush(store, stats, &mut uncommitted, &mut committed)?;
                return Ok(SessionEnd::Shutdown);
            }
        }
        if uncommitted.is_some() && inflight.len() == 0 {
            flush(store, stats, &mut uncommitted, &mut committed)?;
        }
    }
}

/// Puts the record's outbox offset first in its JSON object as `seq`:
/// strictly increasing per gateway, so a consumer keeps exactly one copy of
/// each record by dropping any `seq` it has seen (at-least-once delivery
/// made exactly-once processing, as with Kafka's idempotent producer).
fn with_seq(offset: u64, payload: &[u8]) -> Vec<u8> {
    let Some(rest) = payload.strip_prefix(b"{") else {
        return payload.to_vec();
    };
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(format!("{{\"seq\":{offset}").as_bytes());
    if rest.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

fn flush(
    store: &Store,
    stats: &Stats,
    uncommitted: &mut Option<u64>,
    committed: &mut u64,
) -> Result<(), StoreError> {
    if let Some(offset) = uncommitted.take() {
        store.advance_sink(SINK, offset)?;
        stats::add(&stats.upstream_acked, offset.saturating_sub(*committed));
        *committed = offset;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_offset_as_seq() {
        let v: serde_json::Value =
            serde_json::from_slice(&with_seq(42, br#"{"device":"d","count":3}"#)).expect("JSON");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["count"], 3);
        assert_eq!(with_seq(7, b"{}"), br#"{"seq":7}"#);
        assert_eq!(
            with_seq(7, b" { } "),
            b" { } ",
            "only a leading brace is touched"
        );
        assert_eq!(with_seq(7, b"raw"), b"raw");
    }

    #[test]
    fn the_offset_moves_only_over_an_acknowledged_prefix() {
        let mut w = Inflight::default();
        for offset in 10..14 {
            w.sent(offset);
        }
        for pkid in 1..=4 {
            w.assigned(pkid);
        }
        assert!(w.acked(2));
        assert_eq!(w.advance(), None, "10 is not acknowledged yet");
        assert!(w.acked(1));
        assert_eq!(w.advance(), Some(12));
        assert!(!w.acked(1), "a duplicate PUBACK changes nothing");
        assert!(w.acked(4));
        assert_eq!(w.advance(), None);
        assert!(w.acked(3));
        assert_eq!(w.advance(), Some(14));
        assert_eq!(w.len(), 0);
    }
}
