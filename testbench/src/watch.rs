//! A subscriber that outlives broker restarts: what the scenarios and the
//! bench use to see alerts and upstream traffic.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Subscribes `client_id` to `filter` on `broker`, again after every
/// reconnect (brokers restart in scenarios), and hands each message that
/// is not a retained one to `on_message` until `stop`. The receiver
/// resolves at the first subscription's acknowledgement.
pub(crate) fn watch(
    broker: SocketAddr,
    client_id: &str,
    filter: &'static str,
    stop: CancellationToken,
    mut on_message: impl FnMut(&[u8]) + Send + 'static,
) -> oneshot::Receiver<()> {
    let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(5));
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
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => on_message(&p.payload),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    ready
}
