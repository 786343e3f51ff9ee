//! MQTT clients for observers and test publishers: a subscriber that
//! outlives broker restarts ([`watch`], [`Collector`]) and a publisher
//! whose event loop runs on its own ([`publisher`]).

use std::time::Duration;

use eddy_gateway::config::BrokerUrl;
use rumqttc::{AsyncClient, ConnAck, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
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

/// Subscribes as `subscription` says on `broker`, again after each
/// reconnect on which the broker has no session for it, and hands every
/// message (retained ones included: see `Publish::retain`) to
/// `on_message` until `stop`. The receiver resolves at the first
/// subscription's acknowledgement.
pub fn watch(
    broker: &BrokerUrl,
    subscription: Subscription,
    stop: CancellationToken,
    mut on_message: impl FnMut(&Publish) + Send + 'static,
) -> oneshot::Receiver<()> {
    let mut options = MqttOptions::new(
        subscription.client_id.as_str(),
        broker.host.as_str(),
        broker.port,
    );
    options
        .set_clean_session(!subscription.persistent)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let (ready_tx, ready) = oneshot::channel();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                () = stop.cancelled() => return,
            };
            match event {
                // Until the first acknowledgement, and whenever the broker
                // forgot the session.
                Ok(Event::Incoming(Packet::ConnAck(ConnAck {
                    session_present, ..
                }))) if !session_present || ready_tx.is_some() => {
                    let _ = client.try_subscribe(subscription.filter.as_str(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_message(&p),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    ready
}

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
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("subscribed in time")
            .expect("collector alive");
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

/// A client on `broker` whose event loop a task polls until the client
/// is dropped (retrying after errors); `capacity` requests may wait.
pub fn publisher(broker: &BrokerUrl, client_id: &str, capacity: usize) -> AsyncClient {
    let (client, mut eventloop) = AsyncClient::new(
        MqttOptions::new(client_id, broker.host.as_str(), broker.port),
        capacity,
    );
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(_) => {}
                // Every client handle is gone: nothing more to send.
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    client
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
