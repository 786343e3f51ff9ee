//! Client options: one place where every Eddy MQTT client is set up.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;

use crate::pump::{Handler, Pump, Running};
use crate::tls::{self, TlsError, TlsFiles};
use crate::url::BrokerUrl;

/// Requests (publishes, subscriptions, acknowledgements) a client queues
/// before its calls wait (`publish`) or fail (`try_publish`), unless set.
pub const DEFAULT_REQUEST_CAPACITY: usize = 1024;

/// Builds MQTT clients for one broker and client id. Defaults: keep-alive
/// 15 s, clean session, rumqttc's in-flight window (100) and packet limit
/// (10 KiB), [`DEFAULT_REQUEST_CAPACITY`], automatic acknowledgements, no
/// TLS, no last will.
///
/// A connector is kept and connected again by callers that restart their
/// client (a supervised task): every [`connect`](Self::connect) makes a new
/// client with the same options.
#[derive(Debug, Clone)]
pub struct Connector {
    options: MqttOptions,
    capacity: usize,
    url: BrokerUrl,
}

impl Connector {
    /// A client of the broker at `url` named `client_id`. An `mqtts://` url
    /// is connected over TLS only with [`tls_files`](Self::tls_files) or
    /// [`tls`](Self::tls).
    pub fn new(url: &BrokerUrl, client_id: impl Into<String>) -> Self {
        let mut options = MqttOptions::new(client_id, url.host.clone(), url.port);
        options.set_keep_alive(Duration::from_secs(15));
        Self {
            options,
            capacity: DEFAULT_REQUEST_CAPACITY,
            url: url.clone(),
        }
    }

    /// The broker.
    pub fn url(&self) -> &BrokerUrl {
        &self.url
    }

    /// The client id.
    pub fn client_id(&self) -> String {
        self.options.client_id()
    }

    /// Longest silence before a ping; the broker drops the client after
    /// 1.5 times this without any packet.
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.options.set_keep_alive(every);
        self
    }

    /// False: a persistent session, which the broker keeps across
    /// disconnects (subscriptions, unacknowledged QoS 1 messages).
    pub fn clean_session(mut self, clean: bool) -> Self {
        self.options.set_clean_session(clean);
        self
    }

    /// Most QoS 1 publishes of this client awaiting their PUBACK.
    pub fn inflight(mut self, publishes: u16) -> Self {
        self.options.set_inflight(publishes);
        self
    }

    /// Largest packet received and sent, in bytes; a larger incoming one
    /// breaks the connection.
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.options.set_max_packet_size(bytes, bytes);
        self
    }

    /// Requests queued between the client and its event loop.
    pub fn request_capacity(mut self, requests: usize) -> Self {
        self.capacity = requests.max(1);
        self
    }

    /// True: incoming QoS 1 messages are acknowledged only by
    /// `AsyncClient::ack`, so the broker redelivers what was not.
    pub fn manual_acks(mut self, manual: bool) -> Self {
        self.options.set_manual_acks(manual);
        self
    }

    /// What the broker publishes for this client when it vanishes.
    pub fn last_will(
        mut self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
    ) -> Self {
        self.options
            .set_last_will(LastWill::new(topic, payload.into(), qos, retain));
        self
    }

    /// TLS with `config`.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        self
    }

    /// For an `mqtts://` url, TLS with these files, read now (a bad file
    /// is reported here, with its name); nothing for `mqtt://`.
    pub fn tls_files(self, files: &TlsFiles) -> Result<Self, TlsError> {
        match self.url.tls {
            true => Ok(self.tls(tls::client_config(files)?)),
            false => Ok(self),
        }
    }

    /// A new client and the event loop that must be polled for it to do
    /// anything: for callers that drive the loop themselves. Nothing
    /// connects until the first poll.
    pub fn connect(&self) -> (AsyncClient, EventLoop) {
        AsyncClient::new(self.options.clone(), self.capacity)
    }

    /// A new client whose event loop `pump` drives on a task of its own
    /// until `cancel`, handing deliveries to `handler`.
    pub fn spawn<H: Handler + 'static>(
        &self,
        pump: &Pump,
        handler: H,
        cancel: CancellationToken,
    ) -> (AsyncClient, Running) {
        let (client, eventloop) = self.connect();
        let running = pump.spawn(client.clone(), eventloop, handler, cancel);
        (client, running)
    }
}
