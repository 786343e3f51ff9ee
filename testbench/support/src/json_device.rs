//! A JSON device as common firmware writes one (a smart plug, an ESPHome
//! board): it publishes `{"n": <count>}` at QoS 1 on
//! `eddy/v1/<id>/telemetry`, one publish in flight, and after a lost
//! connection sends the unacknowledged publish again on a new one. What
//! it records (every `n` the broker acknowledged) is checked against the
//! store by [`check`]: a PUBACK from Eddy's broker means stored.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_gateway::config::BrokerUrl;
use eddy_gateway::store::Store;
use eddy_mqtt::{Connector, QoS};
use rumqttc::{Event, Packet};
use tokio_util::sync::CancellationToken;

/// The `n` values a device saw acknowledged, in order.
pub type Acked = Arc<Mutex<Vec<i64>>>;

/// The metric a JSON device publishes its count under.
pub const METRIC: &str = "n";

/// Runs device `id` against the broker at `broker` until `stop`, then
/// finishes the publish in flight (if the broker is up). `rate`: publishes
/// per second, or as fast as acknowledgements come when `None`.
///
/// Each connection is a fresh client: rumqttc's clean session drops
/// unacknowledged publishes on reconnect, and a new client makes the
/// PUBACK a connection gets the one for the publish sent on it.
pub async fn run(
    broker: SocketAddr,
    id: String,
    rate: Option<f64>,
    acked: Acked,
    stop: CancellationToken,
) {
    let connector = Connector::new(&BrokerUrl::tcp(broker.ip().to_string(), broker.port()), &id)
        .keep_alive(Duration::from_secs(5))
        .request_capacity(16);
    let topic = format!("eddy/v1/{id}/telemetry");
    let period = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut ticks = period.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let (mut client, mut eventloop) = connector.connect();
    let mut n = 0i64;
    while !stop.is_cancelled() {
        if let Some(t) = ticks.as_mut() {
            tokio::select! {
                _ = t.tick() => {}
                _ = stop.cancelled() => break,
            }
        }
        // Until acknowledged, however many connections it takes; a
        // device that gives up after `stop` sent nothing it counts.
        'publish: loop {
            if client
                .publish(&topic, QoS::AtLeastOnce, false, format!("{{\"n\": {n}}}"))
                .await
                .is_err()
            {
                (client, eventloop) = connector.connect();
                continue;
            }
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => break 'publish,
                    Ok(_) => {}
                    Err(_) => {
                        if stop.is_cancelled() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        (client, eventloop) = connector.connect();
                        continue 'publish;
                    }
                }
            }
        }
        acked.lock().unwrap_or_else(|e| e.into_inner()).push(n);
        n += 1;
    }
    let _ = client.disconnect().await;
}

/// What the store holds against what JSON devices saw acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Publishes acknowledged, over all devices.
    pub acked: usize,
    /// Acknowledged publishes not in the store, one line per device.
    pub lost: Vec<String>,
    /// How many of them.
    pub lost_count: usize,
    /// Stored copies beyond the first: a publish sent again because its
    /// PUBACK was lost with the connection (QoS 1 is at-least-once; a
    /// JSON payload carries no identity to drop the copy by).
    pub copies: usize,
}

/// Checks every `(device, acked)` pair against `store`'s samples of
/// metric [`METRIC`].
pub fn check(store: &Store, devices: &[(String, Acked)]) -> std::io::Result<Verdict> {
    let mut stored: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    store
        .for_each_sample(|_, s| {
            if s.frame.is_none() && s.metric == METRIC {
                stored.entry(s.device).or_default().push(s.value as i64);
            }
        })
        .map_err(std::io::Error::other)?;
    let mut verdict = Verdict::default();
    for (device, acked) in devices {
        let values = stored.remove(device).unwrap_or_default();
        let distinct: BTreeSet<i64> = values.iter().copied().collect();
        verdict.copies += values.len() - distinct.len();
        let acked = acked.lock().unwrap_or_else(|e| e.into_inner());
        verdict.acked += acked.len();
        let missing: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|n| !distinct.contains(n))
            .collect();
        if !missing.is_empty() {
            verdict.lost_count += missing.len();
            verdict.lost.push(format!(
                "{device}: {} acknowledged, not stored: {missing:?}",
                acked.len()
            ));
        }
    }
    Ok(verdict)
}
