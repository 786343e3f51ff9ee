//! The embedded MQTT broker (rmqtt, in process), so `eddy run` needs no
//! external server.
//!
//! Devices' publishes on ingest topics are stored before the broker
//! acknowledges them ([`crate::sources::embedded`]). rmqtt's listener
//! defaults (16 in flight, 1,000 queued per client) drop QoS 1 messages
//! for a subscriber that falls behind (a local consumer of telemetry
//! under load), so both limits come from [`BrokerConfig`].
//!
//! Who may connect, publish and subscribe: [`access`] (credentials in
//! [`credentials`]); TLS for devices: [`tls`].

/// `impl rmqtt::hook::Handler for $hook` calling its
/// `async fn check(&self, &Parameter, Option<HookResult>) -> ReturnType`:
/// `async_trait`'s expansion written out, since the trait's `&Parameter`
/// has an elided lifetime the macro cannot repeat.
macro_rules! rmqtt_handler {
    ($hook:ty) => {
        impl rmqtt::hook::Handler for $hook {
            fn hook<'life0, 'life1, 'life2, 'async_trait>(
                &'life0 self,
                param: &'life1 rmqtt::hook::Parameter<'life2>,
                acc: Option<rmqtt::hook::HookResult>,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = rmqtt::hook::ReturnType> + Send + 'async_trait,
                >,
            >
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(self.check(param, acc))
            }
        }
    };
}
pub(crate) use rmqtt_handler;

pub mod access;
pub mod credentials;
pub mod tls;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;

use rmqtt::context::ServerContext;
use rmqtt::hook::{Priority, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::config::BrokerConfig;
use crate::sources::embedded::IngestHook;
use crate::stats::Stats;
use access::{Access, TlsPeers};

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
    /// The public listeners' accept loops (plain, TLS and its relay).
    public_tasks: Vec<JoinHandle<()>>,
    tls: Option<SocketAddr>,
    peers: Arc<TlsPeers>,
    /// Whether an access hook checks the public listeners' clients
    /// (without one, as in benchmarks, they are admitted unchecked).
    checked: bool,
    stats: Arc<Stats>,
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

/// Retained messages the embedded broker keeps at most (a device's
/// `hello` is one per device); more are refused by the retainer, logged.
const MAX_RETAINED: usize = 200_000;

/// Topic aliases a client may use, and the broker uses towards a client.
const MAX_TOPIC_ALIASES: u16 = 64;

/// Listener ids inside rmqtt's context.
pub(crate) const INTERNAL_LISTENER: u16 = 1;
const PUBLIC_LISTENER: u16 = 2;
/// The private loopback listener the TLS relay feeds.
pub(crate) const TLS_LISTENER: u16 = 3;

impl EmbeddedBroker {
    /// Starts the broker, with the retained-message and ACL plugins, on a
    /// private loopback port only.
    pub async fn start(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let err = |reason: String| BrokerError {
            listen: config.listen,
            reason,
        };
        // Retained messages: kept until replaced or cleared (a TTL of 0
        // is none; without it they would take the listener's message
        // expiry, which is 0 = none for queued messages but "expired at
        // once" for the retainer), at most `MAX_RETAINED`.
        let retainer =
            format!("retained_message_ttl = \"0s\"\nmax_retained_messages = {MAX_RETAINED}\n");
        let scx = ServerContext::new()
            .plugins_config_map_add("rmqtt-retainer", retainer)
            .build()
            .await;
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
            public_tasks: Vec::new(),
            tls: None,
            peers: Arc::default(),
            checked: false,
            stats: Arc::default(),
            tasks: Vec::new(),
        };
        broker.internal =
            broker.serve("eddy/internal", broker.internal, INTERNAL_LISTENER, true)?;
        broker.tasks.append(&mut broker.public_tasks);
        Ok(broker)
    }

    /// Opens the configured public listeners (port 0 picks a free port)
    /// and returns the plain one's address. Opening twice returns the
    /// same address.
    pub fn open(&mut self) -> Result<SocketAddr, BrokerError> {
        if let Some(addr) = self.public {
            return Ok(addr);
        }
        let trusted = !self.checked;
        let addr = self.serve("eddy/tcp", self.config.listen, PUBLIC_LISTENER, trusted)?;
        info!(%addr, "embedded MQTT broker listening");
        if let Some(tls) = self.config.tls.clone() {
            let err = |reason: String| BrokerError {
                listen: tls.listen,
                reason,
            };
            let server = tls::server_config(&tls).map_err(err)?;
            let relay = SocketAddr::from(([127, 0, 0, 1], 0));
            let relay = self.serve("eddy/tls", relay, TLS_LISTENER, trusted)?;
            let listener = std::net::TcpListener::bind(tls.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| err(e.to_string()))?;
            self.tls = listener.local_addr().ok();
            self.public_tasks.push(tls::serve(
                listener,
                server,
                relay,
                self.peers.clone(),
                self.config.max_connections,
                self.stats.clone(),
            ));
        }
        self.public = Some(addr);
        Ok(addr)
    }

    /// The TLS listener's address, once open.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// Stops accepting devices on the public listeners (connections made
    /// stay until they close): a stopping gateway refuses publishes, so
    /// devices had better wait for the next start than reconnect at once.
    pub fn close(&mut self) {
        for task in self.public_tasks.drain(..) {
            task.abort();
        }
    }

    /// Serves listener `id` on `laddr`; `trusted` (the gateway's own
    /// clients) admits clients without credentials and without asking
    /// the access hook, every other listener asks it.
    fn serve(
        &mut self,
        name: &str,
        laddr: SocketAddr,
        id: u16,
        trusted: bool,
    ) -> Result<SocketAddr, BrokerError> {
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
            .max_connections(self.config.max_connections)
            // Queued messages live as long as their session unless the
            // publisher set an expiry (rmqtt's default expires them all
            // after 5 minutes, MQTT 5 subscribers then see an expiry the
            // publisher never set).
            .message_expiry_interval(std::time::Duration::ZERO)
            // Topic aliases both ways (MQTT 5); rmqtt allows none.
            .max_topic_aliases(MAX_TOPIC_ALIASES)
            .allow_anonymous(trusted)
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
        self.public_tasks.push(tokio::spawn(async move {
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
            .add_priority(
                Type::MessagePublishCheckAcl,
                Priority::MAX - 1,
                Box::new(hook),
            )
            .await;
        register.start().await;
    }

    /// Checks every client of the public listeners ([`access`]): at
    /// CONNECT, and each publish (before the ingest hook takes it) and
    /// subscription. `stats` counts the TLS listener's refusals.
    pub async fn access(&mut self, make: impl Fn(Arc<TlsPeers>) -> Access, stats: Arc<Stats>) {
        self.checked = true;
        self.stats = stats;
        let register = self.scx.extends.hook_mgr().register();
        for kind in [
            Type::ClientAuthenticate,
            Type::MessagePublishCheckAcl,
            Type::ClientSubscribeCheckAcl,
        ] {
            register
                .add_priority(
                    kind,
                    Priority::MAX,
                    Box::new(make(self.peers.clone()).on(self.scx.clone())),
                )
                .await;
        }
        register.start().await;
    }

    /// Where the gateway's own clients connect.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.public_tasks) {
            t.abort();
        }
    }
}
