//! Publishes results to the local broker (alerts retained, aggregates not).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::BrokerUrl;
use crate::stats::{self, Stats};
use crate::supervisor::{RestartPolicy, supervise};

/// A QoS 1 publisher on the local broker. Its event loop runs on its own
/// task and never waits on the pipeline, so publishing cannot deadlock
/// with ingest; a full request queue slows the pipeline down instead.
#[derive(Debug, Clone)]
pub struct LocalPublisher {
    /// Replaced when the supervisor restarts the event loop.
    client: Arc<RwLock<AsyncClient>>,
    stats: Arc<Stats>,
}

impl LocalPublisher {
    pub fn spawn(
        broker: &BrokerUrl,
        client_id: &str,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        options
            .set_keep_alive(Duration::from_secs(15))
            .set_inflight(1000);
        let (client, eventloop) = AsyncClient::new(options.clone(), 4096);
        let shared = Arc::new(RwLock::new(client));
        let mut first = Some(eventloop);
        let task = supervise(
            "local",
            RestartPolicy::default(),
            stats.clone(),
            shutdown.clone(),
            {
                let shared = shared.clone();
                move || {
                    let eventloop = first.take().unwrap_or_else(|| {
                        let (client, eventloop) = AsyncClient::new(options.clone(), 4096);
                        *shared.write().unwrap_or_else(|e| e.into_inner()) = client;
                        eventloop
                    });
                    run(eventloop, shutdown.clone())
                }
            },
        );
        (
            Self {
                client: shared,
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

    /// Publishes at QoS 0 (end-to-end acks: cumulative, so a lost one is
    /// made good by the next). True when handed to the client.
    pub async fn publish_once(&self, topic: String, payload: Vec<u8>) -> bool {
        self.client()
            .publish(topic, QoS::AtMostOnce, false, payload)
            .await
            .is_ok()
    }

    pub async fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        if self
            .client()
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .is_ok()
        {
            stats::add(&self.stats.local_published, 1);
        }
    }
}

async fn run(
    mut eventloop: rumqttc::EventLoop,
    shutdown: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    loop {
        tokio::select! {
            r = eventloop.poll() => if let Err(e) = r {
                debug!(error = %e, "local publisher reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            },
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}
