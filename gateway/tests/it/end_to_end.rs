//! Simulated fleet -> broker -> gateway -> alerts, store and upstream.

use std::time::Duration;

use crate::common::*;
use eddy_gateway::Gateway;
use eddy_gateway::broker::EmbeddedBroker;
use eddy_gateway::config::BrokerConfig;
use eddy_test_support::Mosquitto;
use eddy_test_support::mqtt::Collector;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_fleet_to_alerts_store_and_upstream() {
    let data = tempfile::tempdir().expect("temp dir");
    // The upstream is a second embedded broker on a free port.
    let mut upstream = EmbeddedBroker::start(&BrokerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..BrokerConfig::default()
    })
    .await
    .expect("upstream broker");
    let upstream_url = format!("mqtt://{}", upstream.open().expect("listens"));
    let mut upstream_rx = Collector::start(&upstream_url, "test-upstream-rx", "eddy/v1/#").await;

    let gateway = Gateway::start(test_config(data.path().to_path_buf(), Some(upstream_url)))
        .await
        .expect("gateway starts");
    let local = format!("mqtt://{}:{}", gateway.broker().host, gateway.broker().port);
    let mut alerts = Collector::start(&local, "test-alerts", "eddy/v1/alerts/#").await;

    let fleet = test_fleet(
        &gateway.broker().host,
        gateway.broker().port,
        Duration::from_secs(5),
    );
    let report = run_fleet_through(&gateway, fleet.clone()).await;
    assert_end_to_end(&gateway, &fleet, &report, &mut alerts, &mut upstream_rx).await;
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_as_ingest_broker_and_as_upstream() {
    let data = tempfile::tempdir().expect("temp dir");
    let ingest = Mosquitto::start().expect("mosquitto starts");
    let upstream = Mosquitto::start().expect("mosquitto starts");
    let mut upstream_rx = Collector::start(&upstream.url(), "test-upstream-rx", "eddy/v1/#").await;

    let mut config = test_config(data.path().to_path_buf(), Some(upstream.url()));
    config.broker.url = Some(ingest.url());
    let gateway = Gateway::start(config).await.expect("gateway starts");
    assert_eq!(gateway.broker().port, ingest.port(), "no embedded broker");
    let mut alerts = Collector::start(&ingest.url(), "test-alerts", "eddy/v1/alerts/#").await;
    gateway
        .subscribed(Duration::from_secs(10))
        .await
        .expect("ingest subscribed");
    let stats = gateway.stats().clone();

    let fleet = test_fleet("127.0.0.1", ingest.port(), Duration::from_secs(5));
    let report = run_fleet_through(&gateway, fleet.clone()).await;
    assert_eq!(stats.snapshot().messages_received, report.frames_sent());
    assert_end_to_end(&gateway, &fleet, &report, &mut alerts, &mut upstream_rx).await;
    gateway.shutdown().await.expect("clean shutdown");
}
