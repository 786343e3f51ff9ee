//! A graceful shutdown commits and acknowledges everything it received:
//! a restarted gateway on the same persistent session gets no
//! redeliveries, and the store holds every message exactly once.

use std::time::Duration;

use crate::common::*;
use eddy_gateway::Gateway;
use eddy_mqtt::{BrokerUrl, Connector};
use eddy_test_support::mqtt::burst;
use eddy_test_support::{Mosquitto, wait_until};

const MESSAGES: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_acknowledges_what_it_committed() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = Mosquitto::start().expect("mosquitto starts");
    let config = || config_on(data.path(), broker.url());
    let gateway = start_subscribed(config()).await;
    let stats = gateway.stats().clone();

    // A burst of JSON telemetry; wait until the broker took all of it.
    let burster = Connector::new(&BrokerUrl::from(broker.addr()), "burst").inflight(200);
    let messages = (0..MESSAGES)
        .map(|i| {
            let payload = format!("{{\"n\": {i}}}").into_bytes();
            ("eddy/v1/dev-1/telemetry".to_string(), payload)
        })
        .collect();
    burst(&burster, messages).await;
    // Stop while the gateway is still working through the burst.
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .snapshot()
            .messages_received
            > 0)
        .await
    );
    gateway.shutdown().await.expect("clean shutdown");
    let first = stats.snapshot();
    assert_eq!(
        first.samples_committed, first.messages_received,
        "all received was committed"
    );

    // Restart on the same session: only what the first run never received
    // is delivered, so every message is stored exactly once.
    let gateway = Gateway::start(config()).await.expect("gateway restarts");
    let stats2 = gateway.stats().clone();
    let all_stored = wait_until(Duration::from_secs(20), || {
        first.samples_committed + stats2.snapshot().samples_committed >= MESSAGES as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = stats2.snapshot();
    assert!(
        all_stored,
        "first {} + second {} of {MESSAGES}",
        first.samples_committed, second.samples_committed
    );
    assert_eq!(
        first.messages_received + second.messages_received,
        MESSAGES as u64,
        "no message was delivered twice"
    );
    let mut values: Vec<i64> = Vec::new();
    let store = gateway.store().clone();
    tokio::task::spawn_blocking(move || {
        store
            .for_each_sample(|_, s| values.push(s.value as i64))
            .expect("readable");
        values.sort_unstable();
        assert_eq!(values, (0..MESSAGES as i64).collect::<Vec<_>>());
    })
    .await
    .expect("join");
    gateway.shutdown().await.expect("clean shutdown");
}
