//! MQTT clients for observers and test publishers: a subscriber that
//! outlives broker restarts ([`watch`], [`Collector`]) and a publisher
//! whose event loop runs on its own ([`publisher`]).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use eddy_mqtt::{AsyncClient, BrokerUrl, Connector, Delivery, Discard, Publish, Pump, QoS, Ready};
use rumqttc::{Event, Packet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What [`watch`] subscribes to, and how.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The client id.
    pub client_id: String,
    /// The topic filter (QoS 1).
    pub filter: String,
    /// Keep the session across reconnects (`clean_session = false`): what
    /// is published while the watcher is away is delivered when it is
    /// back, if the broker kept the session.
    pub persistent: bool,
}

/// Subscribes as `subscription` says on `broker`, again at every
/// reconnect, and hands every message (retained ones included: see
/// `Publish::retain`) to `on_message` until `stop`. The returned
/// [`Ready`] says when the subscription is acknowledged.
pub fn watch(
    broker: &BrokerUrl,
    subscription: Subscription,
    stop: CancellationToken,
    mut on_message: impl FnMut(&Publish) + Send + 'static,
) -> Ready {
    let connector = Connector::new(broker, subscription.client_id)
        .clean_session(!subscription.persistent)
        .keep_alive(Duration::from_secs(5))
        .max_packet_size(1 << 20)
        .request_capacity(1024);
    let pump = Pump::new()
        .subscribe(subscription.filter, QoS::AtLeastOnce)
        .reconnect(RETRY, RETRY);
    let (_client, running) = connector.spawn(
        &pump,
        move |delivery: Delivery| {
            if let Delivery::Message(p) = delivery {
                on_message(&p);
            }
        },
        stop,
    );
    running.ready
}

/// How soon a test client connects again after its broker went away.
const RETRY: Duration = Duration::from_millis(100);

/// Everything published on a filter, in arrival order, on a persistent
/// session (a broker restart loses nothing for it). Stops when dropped.
#[derive(Debug)]
pub struct Collector {
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// (topic, payload) of what [`drain`](Self::drain) took in so far.
    pub messages: Vec<(String, Vec<u8>)>,
    stop: CancellationToken,
}

impl Collector {
    /// Subscribes `client_id` to `filter` on the broker at `url`
    /// (`mqtt://host:port`); returns once the subscription is
    /// acknowledged. Panics if that takes over 10 s.
    pub async fn start(url: &str, client_id: &str, filter: &str) -> Self {
        let url = BrokerUrl::parse(url).expect("a broker URL");
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let subscription = Subscription {
            client_id: client_id.to_string(),
            filter: filter.to_string(),
            persistent: true,
        };
        let ready = watch(&url, subscription, stop.clone(), move |p| {
            let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
        });
        ready
            .wait(Duration::from_secs(10))
            .await
            .expect("subscribed in time");
        Self {
            rx,
            messages: Vec::new(),
            stop,
        }
    }

    /// Takes in what arrived so far.
    pub fn drain(&mut self) -> &[(String, Vec<u8>)] {
        while let Ok(m) = self.rx.try_recv() {
            self.messages.push(m);
        }
        &self.messages
    }

    /// JSON payloads that arrived so far, in order; panics on another
    /// payload.
    pub fn json(&mut self) -> Vec<serde_json::Value> {
        self.drain()
            .iter()
            .map(|(_, p)| serde_json::from_slice(p).expect("JSON payload"))
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A client on `broker` whose event loop runs on its own task,
/// reconnecting after errors, until [`LINGER`] after the last clone of
/// the [`Publisher`] is dropped (so what was queued just before still goes
/// out); `capacity` requests may wait.
pub fn publisher(broker: &BrokerUrl, client_id: &str, capacity: usize) -> Publisher {
    let stop = CancellationToken::new();
    let (client, _running) = Connector::new(broker, client_id)
        .request_capacity(capacity)
        .spawn(&Pump::new().reconnect(RETRY, RETRY), Discard, stop.clone());
    Publisher {
        client,
        _stop: Arc::new(StopLater(stop)),
    }
}

/// How long a dropped [`Publisher`]'s event loop keeps sending.
pub const LINGER: Duration = Duration::from_secs(5);

/// A publishing client from [`publisher`]: an [`AsyncClient`] whose
/// event loop stops [`LINGER`] after the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: AsyncClient,
    _stop: Arc<StopLater>,
}

impl Deref for Publisher {
    type Target = AsyncClient;

    fn deref(&self) -> &AsyncClient {
        &self.client
    }
}

/// Cancels its token [`LINGER`] after being dropped (at once outside a
/// runtime).
#[derive(Debug)]
struct StopLater(CancellationToken);

impl Drop for StopLater {
    fn drop(&mut self) {
        let stop = self.0.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    stop.cancel();
                });
            }
            Err(_) => stop.cancel(),
        }
    }
}

/// Publishes `payload` (JSON) on `device`'s telemetry topic, QoS 1; false
/// once the client's event loop is gone.
pub async fn send_json(client: &AsyncClient, device: &str, payload: &serde_json::Value) -> bool {
    client
        .publish(
            format!("eddy/v1/{device}/telemetry"),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .is_ok()
}

/// Publishes every `(topic, payload)` with QoS 1 as one burst (all queued
/// before the event loop first runs, so the client sends them as fast as
/// its in-flight window allows) and returns once the broker acknowledged
/// each. Panics if the connection fails.
pub async fn burst(connector: &Connector, messages: Vec<(String, Vec<u8>)>) {
    let total = messages.len();
    let (client, mut eventloop) = connector.clone().request_capacity(total + 16).connect();
    for (topic, payload) in messages {
        client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .expect("queued");
    }
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("connected") {
            acked += 1;
        }
    }
    let _ = client.try_disconnect();
}
