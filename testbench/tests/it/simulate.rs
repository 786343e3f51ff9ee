//! `eddy-testbench simulate` against a gateway: every frame lands.

use std::process::Command;
use std::time::Duration;

use eddy_gateway::Gateway;
use eddy_gateway::config::demo_config;
use eddy_test_support::process::stdout_of_success;
use tempfile::TempDir;

/// Runs `eddy-testbench simulate ARGS` off the runtime; its output once
/// it exited 0.
async fn simulate(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        stdout_of_success(
            Command::new(env!("CARGO_BIN_EXE_eddy-testbench"))
                .arg("simulate")
                .args(&args),
        )
    })
    .await
    .expect("join")
}

/// A demo-configured gateway and the broker URL devices use.
async fn gateway() -> (TempDir, Gateway, String) {
    let data = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(demo_config(data.path().to_path_buf()))
        .await
        .expect("gateway starts");
    let broker = format!("mqtt://{}:{}", gateway.broker().host, gateway.broker().port);
    (data, gateway, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_command_publishes_to_a_gateway_and_nothing_is_lost() {
    let (_data, gateway, broker) = gateway().await;
    let stdout = simulate(&[
        "--devices",
        "4",
        "--rate",
        "10",
        "--duration",
        "2",
        "--broker",
        &broker,
    ])
    .await;
    // "frames sent N, stored (acknowledged by the gateway) N, ..."
    let sent: u64 = stdout
        .split("frames sent ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("report line");
    assert!(sent >= 4 * 15, "about 4 devices x 20 frames, got {sent}");
    let stats = gateway.stats().clone();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while stats.snapshot().messages_accepted < sent && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.snapshot().messages_accepted, sent);
    gateway.shutdown().await.expect("clean shutdown");
}

#[test]
fn a_bad_broker_url_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_eddy-testbench"))
        .args(["simulate", "--broker", "http://nope"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mqtt://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_series_is_replayed_as_the_devices_temperature() {
    let (_data, gateway, broker) = gateway().await;
    let csv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/machine_temperature_system_failure.csv");
    let series = eddy_firmware_host::replay::Series::load(&csv).expect("the shipped series loads");
    let csv_arg = csv.to_string_lossy().into_owned();
    simulate(&[
        "--devices",
        "2",
        "--rate",
        "10",
        "--duration",
        "2",
        "--hot-every",
        "0",
        "--broker",
        &broker,
        "--speedup",
        "3000",
        "--replay",
        &csv_arg,
    ])
    .await;
    // Every stored temperature is a value of the series, and at 3000x
    // (one row per 100 ms sample) the devices walked through many rows.
    let mut temps = Vec::new();
    gateway
        .store()
        .for_each_sample(|_, s| {
            if s.metric == "temperature" {
                temps.push(s.value);
            }
        })
        .expect("reads");
    assert!(temps.len() >= 20, "{} temperatures", temps.len());
    for t in &temps {
        assert!(
            series.points.iter().any(|(_, v)| v == t),
            "{t} is not in the series"
        );
    }
    let distinct: std::collections::BTreeSet<u64> = temps.iter().map(|t| t.to_bits()).collect();
    assert!(
        distinct.len() >= 10,
        "only {} distinct values",
        distinct.len()
    );
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_serial_ptys_is_stored_exactly_once() {
    let data = tempfile::tempdir().expect("temp dir");
    let ptys = data.path().join("ptys");
    let mut config = demo_config(data.path().join("store"));
    // The ports appear once the testbench makes them; the gateway
    // reopens them with backoff until then.
    config.serial = (0..3)
        .map(|i| eddy_gateway::sources::serial::SerialConfig {
            path: ptys.join(format!("sim-{i:04}")),
            baud: 115_200,
        })
        .collect();
    let gateway = Gateway::start(config).await.expect("gateway starts");
    // Exits 0 only when every frame was acknowledged over the line.
    let dir = ptys.to_string_lossy().into_owned();
    let stdout = simulate(&[
        "--devices",
        "3",
        "--rate",
        "10",
        "--duration",
        "3",
        "--serial-dir",
        &dir,
    ])
    .await;
    assert!(stdout.contains("on ptys in"), "{stdout}");
    let stats = gateway.stats().clone();
    assert!(
        stats.snapshot().serial_frames >= 3 * 25,
        "{:?}",
        stats.snapshot()
    );
    // Every device's frames, each once: (boot, 0..n) per device.
    let mut frames: std::collections::BTreeMap<String, Vec<(u32, u32)>> = Default::default();
    gateway
        .store()
        .for_each_sample(|_, s| {
            if s.metric == "outputs" {
                frames
                    .entry(s.device)
                    .or_default()
                    .push(s.frame.expect("an Eddy frame"));
            }
        })
        .expect("store readable");
    assert_eq!(frames.len(), 3, "{:?}", frames.keys());
    for (device, mut got) in frames {
        got.sort_unstable();
        let boot = got[0].0;
        let expected: Vec<(u32, u32)> = (0..got.len() as u32).map(|s| (boot, s)).collect();
        assert_eq!(got, expected, "{device}");
        assert!(got.len() >= 25, "{device}: {} frames", got.len());
    }
    gateway.shutdown().await.expect("clean shutdown");
}
