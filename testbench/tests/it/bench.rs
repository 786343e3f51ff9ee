//! The bench end to end on a tiny fleet: figures that make sense (no
//! absolute speeds asserted), `bench.json` and the three plots written.

use std::time::Duration;

use eddy_testbench::bench::{self, BenchOptions};
use eddy_testbench::scenario::find_eddy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_writes_its_figures_and_plots() {
    let out = tempfile::tempdir().expect("tempdir");
    let options = BenchOptions {
        fleets: vec![2, 4],
        rate: 10.0,
        duration: Duration::from_secs(2),
        peer_messages: 500,
    };
    let eddy = find_eddy().expect("the eddy binary (cargo test --workspace builds it)");
    let report = bench::run(&options, &eddy, out.path())
        .await
        .expect("bench runs");
    assert_eq!(report.levels.len(), 2);
    for l in &report.levels {
        assert!(l.zero_loss, "{}: {}", l.devices, l.loss_detail);
        assert_eq!(l.frames, (l.devices * 20) as u64, "2 s at 10 Hz per device");
        assert!(
            l.latency_ms.count >= 3,
            "probe crossings measured: {:?}",
            l.latency_ms
        );
        assert!(l.latency_ms.p50 > 0.0 && l.latency_ms.p50 <= l.latency_ms.p99);
        assert!(l.max_rss_mb > 1.0, "RSS sampled");
        assert!(!l.rss_mb.is_empty());
    }
    let mosquitto = &report.peers[0];
    assert!(
        mosquitto.messages_per_s.is_some_and(|r| r > 0.0),
        "{mosquitto:?}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("bench.json")).expect("json"))
            .expect("valid JSON");
    assert_eq!(json["levels"][1]["devices"], 4);
    for (file, caption) in [
        ("throughput.svg", "Throughput against fleet size"),
        ("latency_cdf.svg", "Alert latency (CDF)"),
        ("rss.svg", "Gateway resident memory over time"),
    ] {
        let svg = std::fs::read_to_string(out.path().join(file)).expect(file);
        assert!(svg.starts_with("<svg") && svg.contains(caption), "{file}");
    }
    let table = bench::summary(&report);
    assert!(
        table.contains("devices") && table.contains("mosquitto"),
        "{table}"
    );
}
