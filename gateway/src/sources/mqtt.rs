//! The MQTT ingest source: a persistent QoS 1 session with manual
//! acknowledgements.
//!
//! Messages go to the pipeline over a bounded channel; when it is full this
//! task stops reading, TCP backpressure reaches the broker, and the broker
//! holds the rest. The pipeline acknowledges a message only after the
//! transaction holding it committed; until then the broker keeps it and
//! redelivers it if the gateway dies.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BrokerUrl, IngestConfig};
use crate::stats::{self, Stats};

/// Largest incoming MQTT packet. Larger than any payload limit, so an
/// oversized message is rejected by the decoder (counted, acknowledged)
/// instead of breaking the connection and being redelivered forever.
pub const MAX_INCOMING_PACKET: usize = 16 << 20;

/// MQTT 3.1.1 packet ids are 16 bit, so no more QoS 1 messages than this
/// are ever unacknowledged: a request channel this large never blocks an
/// acknowledgement, which rules out a deadlock between the event loop
/// (blocked on a full pipeline) and the pipeline (blocked on an ack).
const REQUEST_CAPACITY: usize = 1 << 16;

/// The topic filters the gateway subscribes to.
pub fn filters(config: &IngestConfig) -> Vec<String> {
    let mut filters = vec![format!(
        "{}/+/{}",
        config.topic_prefix,
        eddy_proto::topic::TELEMETRY
    )];
    filters.extend(config.topics.iter().map(|m| m.filter.clone()));
    filters
}

/// The running ingest session.
#[derive(Debug)]
pub struct MqttSource {
    /// The client the pipeline acknowledges through.
    pub acker: AsyncClient,
    /// True while connected with every subscription acknowledged. Messages
    /// published before the first subscription have no subscriber and are
    /// not delivered by any broker, so start-up waits on this.
    pub subscribed: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// Starts the ingest session.
///
/// On `shutdown` the source stops forwarding messages and closes the
/// channel, so the pipeline drains what it holds; it keeps the connection
/// until `drained` so the pipeline's last acknowledgements reach the broker.
pub fn spawn(
    broker: &BrokerUrl,
    config: &IngestConfig,
    tx: mpsc::Sender<Publish>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    drained: CancellationToken,
) -> MqttSource {
    let mut options = MqttOptions::new(config.client_id.clone(), broker.host.clone(), broker.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let filters = filters(config);
    let subscriber = client.clone();
    let (subscribed_tx, subscribed) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut failures = 0u32;
        let mut pending_subacks = 0usize;
        let mut tx = Some(tx);
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                () = shutdown.cancelled(), if tx.is_some() => {
                    // Close the channel: the pipeline drains and acknowledges.
                    tx = None;
                    continue;
                }
                () = drained.cancelled() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // After shutdown nothing is forwarded or acknowledged;
                    // the broker keeps it for the next start.
                    let Some(sender) = &tx else { continue };
                    tokio::select! {
                        r = sender.send(p) => match r {
                            Ok(()) => stats::add(&stats.messages_received, 1),
                            Err(_) => break,
                        },
                        // Not handed over: unacknowledged, redelivered later.
                        () = shutdown.cancelled() => tx = None,
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    pending_subacks = pending_subacks.saturating_sub(1);
                    if pending_subacks == 0 {
                        subscribed_tx.send_replace(true);
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    pending_subacks = filters.len();
                    info!(session_present = ack.session_present, "ingest connected");
                    // Subscribing again is harmless with a present session
                    // and needed without one (first start, broker restart).
                    for f in &filters {
                        if let Err(e) = subscriber.try_subscribe(f, QoS::AtLeastOnce) {
                            warn!(filter = %f, error = %e, "subscribe failed");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    subscribed_tx.send_replace(false);
                    failures = failures.saturating_add(1);
                    let delay = Duration::from_millis(100 << failures.min(6));
                    warn!(error = %e, retry_in = ?delay, "ingest connection lost");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = drained.cancelled() => break,
                    }
                }
            }
        }
        // Send what is queued (acknowledgements), then disconnect cleanly.
        // Packets are flushed after rumqttc reports them, so keep polling
        // until the broker closes the connection, not just until the
        // DISCONNECT is reported, or the last acknowledgements are lost.
        if subscriber.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while eventloop.poll().await.is_ok() {}
            })
            .await;
        }
    });
    MqttSource {
        acker: client,
        subscribed,
        task,
    }
}
