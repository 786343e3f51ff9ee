//! A full disk: storage holds its batch and retries, `/healthz` says
//! degraded, and everything is stored once space returns, without a
//! restart. The data directory is a small tmpfs of its own (the test
//! mounts it, so it runs as root, as CI does).

use std::time::Duration;

use crate::common::*;
use eddy_gateway::Gateway;
use eddy_mqtt::QoS;
use eddy_test_support::disk::{Tmpfs, fill};
use eddy_test_support::http::{http_get, scrape};
use eddy_test_support::wait_until;

/// Publishes `n` messages of 21 readings over seven devices.
async fn send(client: &eddy_test_support::mqtt::Publisher, readings: &str, sent: &mut u64, n: u64) {
    for i in *sent..*sent + n {
        client
            .publish(
                format!("eddy/v1/meter-{}/telemetry", i % 7),
                QoS::AtLeastOnce,
                false,
                format!("{{\"seq\": {i}, {readings}}}").into_bytes(),
            )
            .await
            .expect("queued");
    }
    *sent += n;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_then_heals_without_losing_a_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mount = Tmpfs::mount(&dir.path().join("data"), "8m")
        .expect("a tmpfs for the data directory (the test needs root, as CI runs)");
    let mut config = test_config(mount.path().to_path_buf(), None);
    config.rules.clear();
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let http = gateway.http_addr().expect("http");
    let stats = gateway.stats().clone();
    let client = json_publisher(gateway.broker(), "meter");
    let readings: String = (0..20)
        .map(|k| format!("\"phase_{k}_power_watts\": {k}.5"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sent = 0u64;
    send(&client, &readings, &mut sent, 50).await;
    wait_committed(&gateway, 50 * 21).await;
    assert_eq!(http_get(http, "/healthz").await.0, 200);

    let filler = mount.path().join("filler");
    assert!(
        fill(&filler).expect("filler") > 0,
        "the tmpfs had room to fill"
    );
    // Messages keep coming; the store runs out of room.
    let mut rounds = 0;
    while stats.snapshot().store_write_failures == 0 && rounds < 40 {
        send(&client, &readings, &mut sent, 50).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        rounds += 1;
    }
    assert!(
        stats.snapshot().store_write_failures > 0,
        "the full disk never failed a write"
    );
    let (status, body) = http_get(http, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("degraded"), "{body}");
    assert_eq!(scrape(http, "eddy_store_degraded").await, Some(1));
    let held = stats.snapshot().samples_committed;
    assert!(
        held < sent * 21,
        "nothing more stored while the disk is full"
    );

    // Space returns: the held batch and everything queued behind it land.
    std::fs::remove_file(&filler).expect("free the space");
    send(&client, &readings, &mut sent, 50).await;
    let all = sent * 21;
    let healed = wait_until(Duration::from_secs(30), || {
        stats.snapshot().samples_committed >= all
    })
    .await;
    assert!(
        healed,
        "stored {} of {all} readings after space returned",
        stats.snapshot().samples_committed
    );
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(scrape(http, "eddy_store_degraded").await, Some(0));
    let stored = stored_samples(&gateway).await;
    assert_eq!(stored.len() as u64, all, "each reading once");
    assert_eq!(
        stats.task_restarts().get("pipeline").copied().unwrap_or(0),
        0,
        "healed in place, not by restarts"
    );
    gateway.shutdown().await.expect("clean shutdown");
    drop(mount);
}
