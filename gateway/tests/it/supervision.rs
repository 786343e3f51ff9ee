//! Supervision and metrics: a sink that fails over and over is restarted
//! with backoff and counted, while ingest keeps storing every frame.

use std::time::Duration;

use crate::common::{assert_exactly_once, test_config, test_fleet};
use eddy_firmware_host::run_fleet;
use eddy_gateway::Gateway;
use eddy_test_support::http::{http_get, metric};
use eddy_test_support::wait_until;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_is_restarted_and_counted_while_ingest_goes_on() {
    // An "upstream" that accepts TCP and hangs up at once: every session
    // of the upstream sink fails.
    let hangup = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("mqtt://{}", hangup.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((socket, _)) = hangup.accept().await {
            drop(socket);
        }
    });
    let data = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(test_config(data.path().to_path_buf(), Some(url)))
        .await
        .expect("gateway starts");
    let broker = gateway.broker().clone();
    let report = run_fleet(
        test_fleet(&broker.host, broker.port, Duration::from_secs(4)),
        CancellationToken::new(),
    )
    .await
    .expect("fleet ran");

    let stats = gateway.stats().clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            stats.task_restarts().get("upstream").copied().unwrap_or(0) >= 3
        })
        .await,
        "upstream restarts: {:?}",
        stats.task_restarts()
    );
    assert_eq!(stats.task_restarts().get("pipeline"), None);
    assert_exactly_once(gateway.store(), &report);

    let addr = gateway.http_addr().expect("http enabled");
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let restarts = metric(&body, "eddy_task_restarts_total{task=\"upstream\"}").expect("restarts");
    assert!(restarts >= 3, "{body}");
    assert_eq!(
        metric(&body, "eddy_task_restarts_total{task=\"pipeline\"}"),
        Some(0)
    );
    let committed = metric(&body, "eddy_samples_committed_total").expect("committed");
    assert_eq!(committed, report.readings_sent());
    assert!(metric(&body, "eddy_outbox_depth").expect("outbox depth") > 0);
    assert_eq!(
        metric(&body, "eddy_devices_tracked"),
        Some(report.devices.len() as u64)
    );
    assert!(body.contains("# TYPE eddy_frames_duplicate_total counter"));
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    gateway.shutdown().await.expect("clean shutdown");
}
