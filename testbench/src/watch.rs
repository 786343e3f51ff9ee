//! A subscriber that outlives broker restarts: what the scenarios and the
//! bench use to see alerts and upstream traffic.

use std::net::SocketAddr;
use std::time::Duration;

use eddy_mqtt::{BrokerUrl, Connector, Delivery, Pump, QoS, Ready};
use tokio_util::sync::CancellationToken;

/// Subscribes `client_id` to `filter` on `broker`, again after every
/// reconnect (brokers restart in scenarios), and hands each message that
/// is not a retained one to `on_message` until `stop`. Ready once the
/// subscription is acknowledged.
pub(crate) fn watch(
    broker: SocketAddr,
    client_id: &str,
    filter: &'static str,
    stop: CancellationToken,
    mut on_message: impl FnMut(&[u8]) + Send + 'static,
) -> Ready {
    let pump = Pump::new()
        .subscribe(filter, QoS::AtLeastOnce)
        .reconnect(Duration::from_millis(100), Duration::from_millis(100));
    let (_, watcher) = Connector::new(&BrokerUrl::from(broker), client_id)
        .keep_alive(Duration::from_secs(5))
        .spawn(
            &pump,
            move |delivery: Delivery| {
                if let Delivery::Message(p) = delivery
                    && !p.retain
                {
                    on_message(&p.payload);
                }
            },
            stop,
        );
    watcher.ready
}
