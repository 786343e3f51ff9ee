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
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Binds the listener (port 0 picks a free port) and starts serving,
    /// with the retained-message and ACL plugins loaded.
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
        let inflight = NonZeroU16::new(config.max_inflight)
            .ok_or_else(|| err("max_inflight must be at least 1".into()))?;
        let listener = Builder::new()
            .name("eddy/tcp")
            .laddr(config.listen)
            .max_inflight(inflight)
            .max_mqueue_len(config.max_queued_messages)
            .max_packet_size(config.max_packet_size)
            .bind()
            .map_err(|e| err(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
        let listener = listener.tcp().map_err(|e| err(e.to_string()))?;
        let server = MqttServer::new(scx).listener(listener).build();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                error!(error = %e, "embedded broker stopped");
            }
        });
        info!(%addr, "embedded MQTT broker listening");
        Ok(Self { addr, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
