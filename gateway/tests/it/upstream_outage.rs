//! The upstream broker is down for 30 s while devices keep sending: every
//! aggregate and alert produced meanwhile arrives afterwards, exactly once
//! by its `seq`, in order, with no gap.

use std::time::Duration;

use crate::common::*;
use eddy_gateway::Gateway;
use eddy_test_support::mqtt::Collector;
use eddy_test_support::{Mosquitto, wait_until};

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_30_s_upstream_outage_under_load_every_record_arrives_once_in_order() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut upstream = Mosquitto::start().expect("mosquitto starts");
    // A persistent QoS 1 subscriber: what the broker accepted survives its restart.
    let mut upstream_rx = Collector::start(&upstream.url(), "outage-rx", "eddy/v1/#").await;

    let gateway = Gateway::start(test_config(data.path().to_path_buf(), Some(upstream.url())))
        .await
        .expect("gateway starts");
    let local = format!("mqtt://{}:{}", gateway.broker().host, gateway.broker().port);
    let mut local_rx = Collector::start(&local, "outage-local", "eddy/v1/agg/#").await;
    let stats = gateway.stats().clone();

    let fleet = test_fleet(
        &gateway.broker().host,
        gateway.broker().port,
        OUTAGE + Duration::from_secs(8),
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
    tokio::task::block_in_place(|| upstream.stop());
    // PUBACKs received just before the stop are committed up to one commit
    // interval later (or on the connection error): let that settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_outage = stats.snapshot();
    tokio::time::sleep(OUTAGE).await;
    let before_return = stats.snapshot();
    assert_eq!(
        before_return.upstream_acked, at_outage.upstream_acked,
        "nothing can be acknowledged while upstream is down"
    );
    assert!(
        before_return.outbox_appended > at_outage.outbox_appended + 100,
        "records piled up in the outbox during the outage"
    );
    assert!(
        before_return.samples_committed > at_outage.samples_committed,
        "ingest went on during the outage"
    );
    // ... and comes back.
    tokio::task::block_in_place(|| upstream.restart()).expect("mosquitto restarts");
    let report = fleet_task.await.expect("join").expect("fleet ran");
    assert_eq!(report.frames_acked(), report.frames_sent());
    wait_committed(&gateway, report.readings_sent()).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        gateway.stats().task_restarts().get("upstream").copied() > Some(0),
        "the outage was seen and the sink restarted"
    );

    let appended = stats.snapshot().outbox_appended;
    let arrived = |rx: &mut Collector| rx.drain().len() as u64;
    assert!(
        wait_until(Duration::from_secs(60), || arrived(&mut upstream_rx)
            >= appended)
        .await,
        "only {} of {appended} records arrived upstream",
        arrived(&mut upstream_rx)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Exactly once by seq, in order: every message is either the next seq
    // or a resend of one already seen; after dropping resends the seqs are
    // 0..appended with no gap.
    let values = upstream_rx.json();
    let mut next = 0u64;
    let mut resent = 0u64;
    let mut kept = Vec::new();
    for v in &values {
        let seq = v["seq"].as_u64().expect("every record carries seq");
        assert!(seq <= next, "gap: seq {seq} arrived while {next} was due");
        if seq == next {
            next += 1;
            kept.push(v.clone());
        } else {
            resent += 1;
        }
    }
    assert_eq!(next, appended, "records delivered");
    // Only the in-flight window of a broken connection is ever resent.
    let bound = 100 * (gateway.stats().snapshot().upstream_disconnects + 1);
    assert!(resent <= bound, "{resent} resends, bound {bound}");
    // Same aggregates, same order, as published locally.
    let local_order = dedup_aggregates(&local_rx.json());
    assert_eq!(dedup_aggregates(&kept), local_order);
    gateway.shutdown().await.expect("clean shutdown");
}
