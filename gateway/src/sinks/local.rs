//! The local broker as a live sink: results, alert states (retained),
//! device acknowledgements and commands.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use eddy_mqtt::{AsyncClient, Connector, Discard, Pump, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Guarantee, Publish, Publishing};
use crate::config::BrokerUrl;
use crate::pipeline::render::Rendered;
use crate::stats::{self, Stats};
use crate::supervisor::{RestartPolicy, supervise};

/// A QoS 1 publisher on the local broker. Its event loop runs on its own
/// task and never waits on the pipeline, so publishing cannot deadlock
/// with ingest; a full request queue slows the pipeline down instead.
#[derive(Debug, Clone)]
pub struct LocalPublisher {
    /// Replaced when the supervisor restarts the event loop.
    client: Arc<RwLock<AsyncClient>>,
    /// Prepended to every topic (`eddy/v1`).
    prefix: String,
    stats: Arc<Stats>,
}

impl LocalPublisher {
    pub fn spawn(
        broker: &BrokerUrl,
        client_id: &str,
        prefix: &str,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let connector = Connector::new(broker, client_id)
            .inflight(1000)
            .request_capacity(4096);
        // The local broker is near: retry every 200 ms or so.
        let pump = Pump::new().reconnect(Duration::from_millis(200), Duration::from_millis(200));
        let (client, eventloop) = connector.connect();
        let shared = Arc::new(RwLock::new(client.clone()));
        let mut first = Some((client, eventloop));
        let task = supervise(
            "local",
            RestartPolicy::default(),
            stats.clone(),
            shutdown.clone(),
            {
                let shared = shared.clone();
                move || {
                    let (client, eventloop) = first.take().unwrap_or_else(|| {
                        let (client, eventloop) = connector.connect();
                        *shared.write().unwrap_or_else(|e| e.into_inner()) = client.clone();
                        (client, eventloop)
                    });
                    let (pump, shutdown) = (pump.clone(), shutdown.clone());
                    async move {
                        pump.run(client, eventloop, Discard, &shutdown).await;
                        Ok::<(), std::convert::Infallible>(())
                    }
                }
            },
        );
        (
            Self {
                client: shared,
                prefix: prefix.to_string(),
                stats,
            },
            task,
        )
    }

    fn client(&self) -> AsyncClient {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Publish for LocalPublisher {
    fn publish(&self, message: Rendered, guarantee: Guarantee) -> Publishing<'_> {
        Box::pin(async move {
            let topic = format!("{}/{}", self.prefix, message.topic);
            let qos = match guarantee {
                Guarantee::AtMostOnce => QoS::AtMostOnce,
                Guarantee::AtLeastOnce => QoS::AtLeastOnce,
            };
            let taken = self
                .client()
                .publish(topic, qos, message.retain, message.payload)
                .await
                .is_ok();
            if taken && guarantee == Guarantee::AtLeastOnce {
                stats::add(&self.stats.local_published, 1);
            }
            taken
        })
    }
}
