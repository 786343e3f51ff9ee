//! The upstream broker goes away mid-run and comes back: every aggregate
//! produced meanwhile arrives, in order.

mod common;

use std::time::Duration;

use common::*;
use eddy_gateway::Gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_produced_during_an_upstream_outage_arrive_in_order() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut upstream = Mosquitto::start();
    // A persistent QoS 1 subscriber: what the broker accepted survives its restart.
    let mut upstream_rx = Collector::start(&upstream.url(), "outage-rx", "eddy/v1/agg/#").await;

    let gateway = Gateway::start(test_config(data.path().to_path_buf(), Some(upstream.url())))
        .await
        .expect("gateway starts");
    let local = format!("mqtt://{}:{}", gateway.broker().host, gateway.broker().port);
    let mut local_rx = Collector::start(&local, "outage-local", "eddy/v1/agg/#").await;
    let stats = gateway.stats().clone();

    let fleet = test_fleet(
        &gateway.broker().host,
        gateway.broker().port,
        Duration::from_secs(8),
    );
    let fleet_task = tokio::spawn(eddy_firmware_host::run_fleet(
        fleet,
        tokio_util::sync::CancellationToken::new(),
    ));
    // Upstream disappears after a few windows have been forwarded ...
    assert!(
        wait_until(Duration::from_secs(10), || stats.snapshot().upstream_acked
            > 0)
        .await
    );
    upstream.stop();
    // PUBACKs received just before the stop are committed up to one commit
    // interval later (or on the connection error): let that settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_at_outage = stats.snapshot().upstream_acked;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let produced_during = stats.snapshot().outbox_appended;
    assert!(
        stats.snapshot().upstream_acked == acked_at_outage,
        "nothing can be acknowledged while upstream is down"
    );
    // ... and comes back.
    upstream.restart();
    let report = fleet_task.await.expect("join").expect("fleet ran");
    wait_committed(&gateway, report.readings_sent()).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        stats.snapshot().upstream_disconnects > 0,
        "the outage was seen"
    );
    assert!(
        produced_during > acked_at_outage,
        "aggregates were produced during the outage"
    );

    let closed = stats.snapshot().windows_closed as usize;
    wait_for_aggregates(&mut upstream_rx, closed, &gateway).await;
    // Same aggregates, same order, as published locally.
    let local_order = dedup_aggregates(&local_rx.json());
    assert_eq!(local_order.len(), closed);
    assert_eq!(dedup_aggregates(&upstream_rx.json()), local_order);
    gateway.shutdown().await.expect("clean shutdown");
}
