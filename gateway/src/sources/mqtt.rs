//! The MQTT ingest source: a persistent QoS 1 session with manual
//! acknowledgements.
//!
//! Messages go to the pipeline over a bounded channel; when it is full this
//! task stops reading, TCP backpressure reaches the broker, and the broker
//! holds the rest. The pipeline acknowledges a message only after the
//! transaction holding it committed; until then the broker keeps it and
//! redelivers it if the gateway dies.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use eddy_mqtt::Publish;
use eddy_mqtt::{AsyncClient, Connector, Delivery, EventLoop, Handler, Pump, QoS, Ready};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{AckError, AckToken, Acknowledge, Message};
use crate::config::{BrokerUrl, IngestConfig};
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
        // Set by the broker only on what it delivers for a new
        // subscription (MQTT 3.1.1, 3.3.1.3): an old reading.
        retained: p.retain,
        preset: None,
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
    /// Ready while connected with every subscription acknowledged.
    /// Messages published before the first subscription have no
    /// subscriber and are not delivered by any broker, so start-up waits
    /// on this.
    pub ready: Ready,
    pub task: JoinHandle<()>,
}

/// What one run of the source needs; shared by its restarts.
#[derive(Debug)]
struct Shared {
    connector: Connector,
    /// Subscribes to [`filters`] at every connection; one status across
    /// restarts.
    pump: Pump,
    /// The pipeline's channel. Taken (dropped) at shutdown, so the channel
    /// closes once the running session drops its clone too.
    tx: Mutex<Option<mpsc::Sender<Message>>>,
    acker: Arc<RwLock<AsyncClient>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    drained: CancellationToken,
}

impl Shared {
    fn sender(&self) -> Option<mpsc::Sender<Message>> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Closes the channel: the pipeline drains and acknowledges.
    fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// A persistent session with manual acknowledgements.
fn connector(broker: &BrokerUrl, config: &IngestConfig) -> Connector {
    Connector::new(broker, config.client_id.clone())
        .clean_session(false)
        .manual_acks(true)
        .keep_alive(Duration::from_secs(15))
        .max_packet_size(MAX_INCOMING_PACKET)
        .request_capacity(REQUEST_CAPACITY)
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
    let connector = connector(broker, config);
    // Subscribing again at every connection is harmless with a present
    // session and needed without one (first start, broker restart).
    let pump = filters(config)
        .into_iter()
        .fold(Pump::new(), |pump, f| pump.subscribe(f, QoS::AtLeastOnce));
    let ready = pump.ready();
    let (first, eventloop) = connector.connect();
    let shared = Arc::new(Shared {
        connector,
        pump,
        tx: Mutex::new(Some(tx)),
        acker: Arc::new(RwLock::new(first.clone())),
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
                let (c, e) = shared.connector.connect();
                *shared.acker.write().unwrap_or_else(|e| e.into_inner()) = c.clone();
                (c, e)
            });
            run(shared.clone(), client, eventloop)
        },
    );
    MqttSource { acker, ready, task }
}

async fn run(
    shared: Arc<Shared>,
    client: AsyncClient,
    eventloop: EventLoop,
) -> Result<(), std::convert::Infallible> {
    let close_at_shutdown = async {
        shared.shutdown.cancelled().await;
        shared.close();
        std::future::pending::<()>().await;
    };
    let forward = Forward {
        shared: shared.clone(),
    };
    // Until `drained`: the pump then disconnects cleanly, after the
    // acknowledgements queued before.
    tokio::select! {
        _ = shared.pump.run(client, eventloop, forward, &shared.drained) => {}
        () = close_at_shutdown => {}
    }
    Ok(())
}

/// Hands messages to the pipeline; waiting on a full channel stops the
/// client reading (backpressure to the broker).
struct Forward {
    shared: Arc<Shared>,
}

impl Handler for Forward {
    async fn deliver(&mut self, delivery: Delivery) -> ControlFlow<()> {
        let shared = &self.shared;
        match delivery {
            Delivery::Message(p) => {
                // After shutdown nothing is forwarded or acknowledged;
                // the broker keeps it for the next start.
                let Some(sender) = shared.sender() else {
                    return ControlFlow::Continue(());
                };
                tokio::select! {
                    r = sender.send(message(p)) => match r {
                        Ok(()) => stats::add(&shared.stats.messages_received, 1),
                        Err(_) => return ControlFlow::Break(()),
                    },
                    // Not handed over: unacknowledged, redelivered later.
                    () = shared.shutdown.cancelled() => shared.close(),
                }
            }
            Delivery::Connected { session_present } => {
                info!(session_present, "ingest connected");
            }
            Delivery::Lost { error, retry_in } => {
                stats::add(&shared.stats.ingest_disconnects, 1);
                warn!(%error, ?retry_in, "ingest connection lost");
            }
            Delivery::Sent { .. } | Delivery::Acked { .. } => {}
        }
        ControlFlow::Continue(())
    }
}
