//! The upstream MQTT broker as an outbox [`Sink`]: each record published
//! with QoS 1 under `topic_prefix`, accepted when the broker's PUBACK
//! arrives. Every payload carries its outbox offset as `seq`, so a
//! consumer drops the duplicates that at-least-once delivery may send.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use eddy_mqtt::{AsyncClient, Connector, Delivery, Pump, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Session, Sink, SinkError};
use crate::config::{BrokerUrl, UpstreamConfig};
use crate::store::OutboxRecord;

/// The name of this sink's offset in the store.
pub const SINK: &str = "upstream";

/// An upstream MQTT broker (`[upstream]`): QoS 1 publishes, one topic per
/// record under `topic_prefix`.
#[derive(Debug)]
pub struct MqttSink {
    config: UpstreamConfig,
    url: BrokerUrl,
}

impl MqttSink {
    /// Checks the URL and, for TLS, the certificate files now rather than
    /// at the first connect.
    pub fn new(config: UpstreamConfig) -> Result<Self, SinkError> {
        let url = BrokerUrl::parse(&config.url).map_err(|e| SinkError::Connection {
            sink: SINK,
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
        if url.tls {
            crate::tls::client_config(&config.tls.clone().unwrap_or_default())
                .map_err(|source| SinkError::Tls { sink: SINK, source })?;
        }
        Ok(Self { config, url })
    }

    fn failed(&self, reason: String) -> SinkError {
        SinkError::Connection {
            sink: SINK,
            url: self.config.url.clone(),
            reason,
        }
    }
}

impl Sink for MqttSink {
    type Session = MqttSession;

    fn name(&self) -> &'static str {
        SINK
    }

    async fn open(&self, stop: CancellationToken) -> Result<MqttSession, SinkError> {
        let config = &self.config;
        // A clean session each time: this sink resends from its own offset,
        // so the client must not replay anything of the previous
        // connection. Certificate files are read at every session start,
        // so renewed ones are picked up on the next reconnect.
        let connector = Connector::new(&self.url, config.client_id.clone())
            .clean_session(true)
            .keep_alive(Duration::from_secs(10))
            .inflight(config.max_inflight)
            .request_capacity(usize::from(config.max_inflight) * 2 + 16)
            .tls_files(&config.tls.clone().unwrap_or_default())
            .map_err(|source| SinkError::Tls { sink: SINK, source })?;
        let max_inflight = usize::from(config.max_inflight);
        let (tx, mut events) = mpsc::channel(max_inflight * 2 + 16);
        let (client, _pump) = connector.spawn(&Pump::new().stop_on_error(), tx, stop);
        // Wait for the connection before reading the outbox.
        loop {
            match events.recv().await {
                Some(Delivery::Connected { .. }) => break,
                d @ (Some(Delivery::Lost { .. }) | None) => return Err(self.failed(lost(d))),
                Some(_) => {}
            }
        }
        info!(upstream = %config.url, "upstream connected");
        Ok(MqttSession {
            client,
            events,
            prefix: config.topic_prefix.clone(),
            url: config.url.clone(),
            max_inflight,
            unassigned: VecDeque::new(),
            pkids: HashMap::new(),
        })
    }
}

fn lost(delivery: Option<Delivery>) -> String {
    match delivery {
        Some(Delivery::Lost { error, .. }) => error.to_string(),
        _ => "the MQTT pump ended".into(),
    }
}

/// One connection to the upstream broker.
#[derive(Debug)]
pub struct MqttSession {
    client: AsyncClient,
    events: mpsc::Receiver<Delivery>,
    prefix: String,
    url: String,
    max_inflight: usize,
    /// Offsets published but not yet given a packet id, in send order.
    unassigned: VecDeque<u64>,
    pkids: HashMap<u16, u64>,
}

impl Session for MqttSession {
    fn max_inflight(&self) -> usize {
        self.max_inflight
    }

    fn send(&mut self, offset: u64, record: &OutboxRecord) -> bool {
        let topic = format!("{}/{}", self.prefix, record.topic);
        let sent = self
            .client
            .try_publish(
                topic,
                QoS::AtLeastOnce,
                false,
                with_seq(offset, &record.payload),
            )
            .is_ok();
        if sent {
            self.unassigned.push_back(offset);
        }
        sent
    }

    async fn accepted(&mut self) -> Result<u64, SinkError> {
        loop {
            match self.events.recv().await {
                // The client numbers publishes in the order they were queued.
                Some(Delivery::Sent { pkid }) => {
                    if let Some(offset) = self.unassigned.pop_front() {
                        self.pkids.insert(pkid, offset);
                    }
                }
                Some(Delivery::Acked { pkid }) => {
                    if let Some(offset) = self.pkids.remove(&pkid) {
                        return Ok(offset);
                    }
                }
                d @ (Some(Delivery::Lost { .. }) | None) => {
                    return Err(SinkError::Connection {
                        sink: SINK,
                        url: self.url.clone(),
                        reason: lost(d),
                    });
                }
                Some(_) => {}
            }
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
}
