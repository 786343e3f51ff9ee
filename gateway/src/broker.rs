//! The embedded MQTT broker (rmqtt, in process), so `eddy run` needs no
//! external server.
//!
//! rmqtt's listener defaults (16 in flight, 1,000 queued per client) drop
//! QoS 1 messages for a subscriber that falls behind; the gateway's ingest
//! client is exactly such a subscriber under load, so both limits come from
//! [`BrokerConfig`] with much larger defaults.

use std::net::SocketAddr;
use std::num::NonZeroU16;

use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::config::BrokerConfig;

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("embedded broker on {listen}: {reason}")]
pub struct BrokerError {
    pub listen: SocketAddr,
    pub reason: String,
}

/// A running embedded broker; stops when dropped.
///
/// It starts with a private loopback listener for the gateway's own
/// clients; [`EmbeddedBroker::open`] adds the configured public listener.
/// The gateway opens it only after its ingest session is subscribed, so no
/// device can publish into a broker that has no subscriber for it yet
/// (such a message would be dropped: MQTT has no subscriber to queue it for).
pub struct EmbeddedBroker {
    scx: ServerContext,
    config: BrokerConfig,
    internal: SocketAddr,
    public: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("internal", &self.internal)
            .field("public", &self.public)
            .finish()
    }
}

/// Listener ids inside rmqtt's context.
const INTERNAL_LISTENER: u16 = 1;
const PUBLIC_LISTENER: u16 = 2;

impl EmbeddedBroker {
    /// Starts the broker, with the retained-message and ACL plugins, on a
    /// private loopback port only.
    pub async fn start(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let err = |reason: String| BrokerError {
            listen: config.listen,
            reason,
        };
        let scx = ServerContext::new().build().await;
        rmqtt_acl::register(&scx, true, false)
            .await
            .map_err(|e| err(format!("ACL plugin: {e}")))?;
        rmqtt_retainer::register(&scx, true, false)
            .await
            .map_err(|e| err(format!("retainer plugin: {e}")))?;
        let mut broker = Self {
            scx,
            config: config.clone(),
            internal: SocketAddr::from(([127, 0, 0, 1], 0)),
            public: None,
            tasks: Vec::new(),
        };
        broker.internal = broker.serve("eddy/internal", broker.internal, INTERNAL_LISTENER)?;
        Ok(broker)
    }

    /// Opens the configured public listener (port 0 picks a free port) and
    /// returns its address. Opening twice returns the same address.
    pub fn open(&mut self) -> Result<SocketAddr, BrokerError> {
        if let Some(addr) = self.public {
            return Ok(addr);
        }
        let addr = self.serve("eddy/tcp", self.config.listen, PUBLIC_LISTENER)?;
        info!(%addr, "embedded MQTT broker listening");
        self.public = Some(addr);
        Ok(addr)
    }

    fn serve(&mut self, name: &str, laddr: SocketAddr, id: u16) -> Result<SocketAddr, BrokerError> {
        let err = |reason: String| BrokerError {
            listen: laddr,
            reason,
        };
        let inflight = NonZeroU16::new(self.config.max_inflight)
            .ok_or_else(|| err("max_inflight must be at least 1".into()))?;
        let listener = Builder::new()
            .name(name)
            .laddr(laddr)
            .max_inflight(inflight)
            .max_mqueue_len(self.config.max_queued_messages)
            .max_packet_size(self.config.max_packet_size)
            // A restarted gateway (after a crash, too) must get its port
            // back while the old connections linger in TIME_WAIT.
            .reuseaddr(Some(true))
            .bind()
            .map_err(|e| err(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
        let listener = listener.tcp().map_err(|e| err(e.to_string()))?;
        let server = MqttServer::new(self.scx.clone())
            .listener_by_id(listener, id)
            .build();
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = server.run().await {
                error!(error = %e, "embedded broker listener stopped");
            }
        }));
        Ok(addr)
    }

    /// Where the gateway's own clients connect.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
