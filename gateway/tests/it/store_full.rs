//! A full store: the declared policy applies, counters show it, and the
//! gateway keeps running.

use std::time::Duration;

use crate::common::{test_config, test_fleet};
use eddy_firmware_host::run_fleet;
use eddy_gateway::Gateway;
use eddy_gateway::config::FullPolicy;
use eddy_test_support::http::{http_get, metric};
use tokio_util::sync::CancellationToken;

const CAP: u64 = 300;

async fn run_full(policy: FullPolicy) -> (eddy_firmware_host::FleetReport, Gateway) {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(data.path().to_path_buf(), None);
    config.store.max_samples = CAP;
    config.store.on_full = policy;
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let broker = gateway.broker().clone();
    let mut fleet = test_fleet(&broker.host, broker.port, Duration::from_secs(3));
    fleet.drain_timeout = Duration::from_secs(4);
    let report = run_fleet(fleet, CancellationToken::new())
        .await
        .expect("fleet ran");
    // The data dir must outlive the gateway.
    std::mem::forget(data);
    (report, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_counts_the_rest_and_acknowledges_all() {
    let (report, gateway) = run_full(FullPolicy::DropOldest).await;
    assert!(
        report.readings_sent() > CAP * 2,
        "the fleet must overflow the cap"
    );
    assert_eq!(report.frames_acked(), report.frames_sent());
    let stats = gateway.stats().snapshot();
    let stored = gateway.store().sample_count().expect("reads");
    assert_eq!(stored, CAP);
    assert_eq!(stats.samples_dropped, report.readings_sent() - CAP);
    let (_, body) = http_get(gateway.http_addr().expect("http"), "/metrics").await;
    assert_eq!(
        metric(&body, "eddy_samples_dropped_total"),
        Some(stats.samples_dropped)
    );
    assert_eq!(metric(&body, "eddy_store_samples"), Some(CAP));
    gateway
        .shutdown()
        .await
        .expect("still running, stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_keeps_the_oldest_and_devices_hold_the_rest() {
    let (report, gateway) = run_full(FullPolicy::Refuse).await;
    let stats = gateway.stats().snapshot();
    let stored = gateway.store().sample_count().expect("reads");
    // The cap is checked per batch, so one batch may overshoot it.
    assert!(stored >= CAP, "stored {stored}");
    assert!(stored < CAP * 2, "stored {stored}");
    assert_eq!(stats.samples_dropped, 0, "nothing stored is deleted");
    assert!(stats.frames_refused_full > 0);
    assert!(
        report.frames_acked() < report.frames_sent(),
        "unstored frames must not be acknowledged"
    );
    assert_eq!(report.frames_dropped(), 0, "devices still hold every frame");
    // Whatever was acknowledged is stored: acknowledged frames' samples
    // never exceed what the store holds.
    assert!(stats.samples_committed <= stored);
    let (status, _) = http_get(gateway.http_addr().expect("http"), "/healthz").await;
    assert_eq!(status, 200);
    gateway
        .shutdown()
        .await
        .expect("still running, stops cleanly");
}
