//! The MQTT ingest source: a persistent QoS 1 session with manual
//! acknowledgements.
//!
//! Messages go to the pipeline over a bounded channel; when it is full this
//! task stops reading, TCP backpressure reaches the broker, and the broker
//! holds the rest. The pipeline acknowledges a message only after the
//! transaction holding it committed; until then the broker keeps it and
//! redelivers it if the gateway dies.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{AckError, AckToken, Acknowledge, Message};
use crate::config::{BrokerUrl, IngestConfig};
use crate::sinks::backoff;
use crate::stats::{self, Stats};
use crate::supervisor::{RestartPolicy, supervise};

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

/// The client acknowledgements go through. A restarted source replaces
/// it; the pipeline always acknowledges through the current one.
#[derive(Debug, Clone)]
pub struct Acker(Arc<RwLock<AsyncClient>>);

/// A publish as the pipeline sees it: its topic, payload, and a token of
/// its QoS and packet id (all a PUBACK or PUBREC needs).
pub fn message(p: Publish) -> Message {
    let qos = match p.qos {
        QoS::AtMostOnce => 0u64,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    };
    Message {
        topic: p.topic,
        payload: p.payload,
        ack: AckToken(qos << 16 | u64::from(p.pkid)),
    }
}

impl Acknowledge for Acker {
    fn acknowledge(&self, tokens: &[AckToken]) -> Result<(), AckError> {
        let client = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut failed = 0;
        let mut reason = String::new();
        for token in tokens {
            let qos = match token.0 >> 16 {
                0 => continue,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            // The ack names only the packet id; topic and payload are not sent.
            let mut p = Publish::new("", qos, Vec::new());
            p.pkid = (token.0 & 0xffff) as u16;
            if let Err(e) = client.try_ack(&p) {
                failed += 1;
                reason = e.to_string();
            }
        }
        match failed {
            0 => Ok(()),
            _ => Err(AckError { failed, reason }),
        }
    }
}

/// The running ingest session.
#[derive(Debug)]
pub struct MqttSource {
    /// Where the pipeline acknowledges.
    pub acker: Acker,
    /// True while connected with every subscription acknowledged. Messages
    /// published before the first subscription have no subscriber and are
    /// not delivered by any broker, so start-up waits on this.
    pub subscribed: watch::Receiver<bool>,
    pub task: JoinHandle<()>,
}

/// What one run of the source needs; shared by its restarts.
#[derive(Debug)]
struct Shared {
    broker: BrokerUrl,
    config: IngestConfig,
    /// The pipeline's channel. Taken (dropped) at shutdown, so the channel
    /// closes once the running session drops its clone too.
    tx: Mutex<Option<mpsc::Sender<Message>>>,
    acker: Arc<RwLock<AsyncClient>>,
    subscribed: watch::Sender<bool>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    drained: CancellationToken,
}

fn client(broker: &BrokerUrl, config: &IngestConfig) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(config.client_id.clone(), broker.host.clone(), broker.port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
    AsyncClient::new(options, REQUEST_CAPACITY)
}

/// Starts the ingest session under the supervisor.
///
/// On `shutdown` the source stops forwarding messages and closes the
/// channel, so the pipeline drains what it holds; it keeps the connection
/// until `drained` so the pipeline's last acknowledgements reach the broker.
/// Connection failures are retried inside a run with backoff (the
/// session, and with it the packet ids awaiting acknowledgement, survives
/// them); a run that panics is restarted by the supervisor with a new
/// client, which resumes the persistent session: the broker redelivers
/// what was not acknowledged, and exactly-once admission drops what was
/// already stored.
pub fn spawn(
    broker: &BrokerUrl,
    config: &IngestConfig,
    tx: mpsc::Sender<Message>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    drained: CancellationToken,
) -> MqttSource {
    let (first, eventloop) = client(broker, config);
    let (subscribed_tx, subscribed) = watch::channel(false);
    let shared = Arc::new(Shared {
        broker: broker.clone(),
        config: config.clone(),
        tx: Mutex::new(Some(tx)),
        acker: Arc::new(RwLock::new(first.clone())),
        subscribed: subscribed_tx,
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        drained,
    });
    let acker = Acker(shared.acker.clone());
    let mut first = Some((first, eventloop));
    let task = supervise(
        "ingest",
        RestartPolicy::default(),
        stats,
        shutdown,
        move || {
            let (client, eventloop) = first.take().unwrap_or_else(|| {
                let (c, e) = client(&shared.broker, &shared.config);
                *shared.acker.write().unwrap_or_else(|e| e.into_inner()) = c.clone();
                (c, e)
            });
            run(shared.clone(), client, eventloop)
        },
    );
    MqttSource {
        acker,
        subscribed,
        task,
    }
}

async fn run(
    shared: Arc<Shared>,
    subscriber: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
) -> Result<(), std::convert::Infallible> {
    let filters = filters(&shared.config);
    let stats = &shared.stats;
    let mut failures = 0u32;
    let mut pending_subacks = 0usize;
    let mut tx = shared.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let close = |tx: &mut Option<mpsc::Sender<Message>>| {
        // Close the channel: the pipeline drains and acknowledges.
        *tx = None;
        shared.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    };
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            () = shared.shutdown.cancelled(), if tx.is_some() => {
                close(&mut tx);
                continue;
            }
            () = shared.drained.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // After shutdown nothing is forwarded or acknowledged;
                // the broker keeps it for the next start.
                let Some(sender) = &tx else { continue };
                tokio::select! {
                    r = sender.send(message(p)) => match r {
                        Ok(()) => stats::add(&stats.messages_received, 1),
                        Err(_) => break,
                    },
                    // Not handed over: unacknowledged, redelivered later.
                    () = shared.shutdown.cancelled() => close(&mut tx),
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                pending_subacks = pending_subacks.saturating_sub(1);
                if pending_subacks == 0 {
                    shared.subscribed.send_replace(true);
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
                shared.subscribed.send_replace(false);
                stats::add(&stats.ingest_disconnects, 1);
                failures = failures.saturating_add(1);
                let delay = backoff(failures, Duration::from_millis(100), Duration::from_secs(5));
                warn!(error = %e, retry_in = ?delay, "ingest connection lost");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shared.drained.cancelled() => break,
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
    Ok(())
}
