//! The embedded MQTT broker (rmqtt, in process), so `eddy run` needs no
//! external server.
//!
//! Devices' publishes on ingest topics are stored before the broker
//! acknowledges them ([`crate::sources::embedded`]). rmqtt's listener
//! defaults (16 in flight, 1,000 queued per client) drop QoS 1 messages
//! for a subscriber that falls behind (a local consumer of telemetry
//! under load), so both limits come from [`BrokerConfig`].

use std::net::SocketAddr;
use std::num::NonZeroU16;

use rmqtt::context::ServerContext;
use rmqtt::hook::{Priority, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::config::BrokerConfig;
use crate::sources::embedded::IngestHook;

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
/// The gateway registers its ingest hook ([`EmbeddedBroker::ingest`])
/// before it opens that listener, so no device publishes before the hook
/// takes publishes.
pub struct EmbeddedBroker {
    scx: ServerContext,
    config: BrokerConfig,
    internal: SocketAddr,
    public: Option<SocketAddr>,
    /// The public listener's accept loop.
    public_task: Option<JoinHandle<()>>,
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
            public_task: None,
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
        self.public_task = self.tasks.pop();
        info!(%addr, "embedded MQTT broker listening");
        self.public = Some(addr);
        Ok(addr)
    }

    /// Stops accepting devices on the public listener (connections made
    /// stay until they close): a stopping gateway refuses publishes, so
    /// devices had better wait for the next start than reconnect at once.
    pub fn close(&mut self) {
        if let Some(task) = self.public_task.take() {
            task.abort();
        }
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

    /// Stores every publish on an ingest topic before the broker
    /// acknowledges it: registers `hook` ahead of every other handler of
    /// rmqtt's publish check (see [`crate::sources::embedded`]).
    pub async fn ingest(&self, hook: IngestHook) {
        let register = self.scx.extends.hook_mgr().register();
        register
            .add_priority(Type::MessagePublishCheckAcl, Priority::MAX, Box::new(hook))
            .await;
        register.start().await;
    }

    /// Where the gateway's own clients connect.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.public_task) {
            t.abort();
        }
    }
}
