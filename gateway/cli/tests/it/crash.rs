//! Crash and broker-restart tests: things are killed under load, and every
//! frame every device sent must be stored exactly once.

use std::time::Duration;

use crate::common::{assert_exactly_once, eddy_process, terminate, test_config};
use eddy_firmware_host::{FleetConfig, run_fleet};
use eddy_gateway::Gateway;
use eddy_gateway::store::Store;
use eddy_test_support::json_device::{self, Acked};
use eddy_test_support::{Mosquitto, free_port};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// A config file in `dir`: the store in `dir/data`, the embedded broker on
/// a free port (returned), the HTTP port on any.
fn config_in(dir: &std::path::Path) -> (std::path::PathBuf, u16) {
    let port = free_port().expect("a free port");
    let config = dir.join("eddy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("data")
        ),
    )
    .expect("write config");
    (config, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_ten_times_under_load_every_frame_is_stored_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, port) = config_in(dir.path());
    let mut gateway = eddy_process(&config, port);

    let fleet = FleetConfig {
        devices: 50,
        rate_hz: 20.0,
        duration: Duration::from_secs(20),
        host: "127.0.0.1".into(),
        port,
        ..FleetConfig::default()
    };
    let devices = tokio::spawn(run_fleet(fleet, CancellationToken::new()));

    let seed = rand::random::<u64>();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..10 {
        let pause = Duration::from_millis(rng.random_range(300..1500));
        tokio::time::sleep(pause).await;
        tokio::task::block_in_place(|| {
            gateway.kill();
            gateway = eddy_process(&config, port);
        });
    }

    let report = devices.await.expect("join").expect("fleet ran");
    terminate(&mut gateway);
    let store = Store::open(&dir.path().join("data/eddy.redb")).expect("store opens after crashes");
    assert!(
        report.frames_retransmitted() > 0,
        "the kills should have forced retransmissions"
    );
    assert_exactly_once(&store, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_broker_restarted_under_load_loses_nothing() {
    let mut mosquitto = Mosquitto::start().expect("mosquitto starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path().to_path_buf(), None);
    config.broker.url = Some(mosquitto.url());
    let gateway = Gateway::start(config).await.expect("starts");
    gateway
        .subscribed(Duration::from_secs(10))
        .await
        .expect("subscribed");

    let fleet = FleetConfig {
        devices: 20,
        rate_hz: 20.0,
        duration: Duration::from_secs(12),
        host: "127.0.0.1".into(),
        port: mosquitto.port(),
        ..FleetConfig::default()
    };
    let devices = tokio::spawn(run_fleet(fleet, CancellationToken::new()));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::block_in_place(|| mosquitto.restart()).expect("mosquitto restarts");
    }
    let report = devices.await.expect("join").expect("fleet ran");
    let store = gateway.store().clone();
    gateway.shutdown().await.expect("clean shutdown");
    assert_exactly_once(&store, &report);
}

/// What a PUBACK from the embedded broker promises: the message is in
/// the store. JSON devices publish through restarts by SIGTERM (what
/// `systemctl restart` does) and SIGKILL; every publish a device saw
/// acknowledged is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_json_publish_survives_sigterm_and_sigkill() {
    const DEVICES: usize = 6;
    const RESTARTS: usize = 6;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, port) = config_in(dir.path());
    let mut gateway = eddy_process(&config, port);
    let stop = CancellationToken::new();
    let devices: Vec<(String, Acked)> = (0..DEVICES)
        .map(|i| (format!("json-{i}"), Acked::default()))
        .collect();
    let broker = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let tasks: Vec<_> = devices
        .iter()
        .map(|(id, acked)| {
            tokio::spawn(json_device::run(
                broker,
                id.clone(),
                None,
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let total = || {
        devices
            .iter()
            .map(|(_, a)| a.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum::<usize>()
    };
    let mut before = 0;
    for i in 0..RESTARTS {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| {
            match i % 2 {
                0 => terminate(&mut gateway),
                _ => gateway.kill(),
            }
            let now = total();
            assert!(now > before, "devices published while the gateway ran");
            before = now;
            gateway = eddy_process(&config, port);
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    for d in tasks {
        tokio::time::timeout(Duration::from_secs(20), d)
            .await
            .expect("devices finish their last publish")
            .expect("device task");
    }
    tokio::task::block_in_place(|| terminate(&mut gateway));

    let store = Store::open(&dir.path().join("data/eddy.redb")).expect("store opens");
    let verdict = json_device::check(&store, &devices).expect("readable");
    eprintln!(
        "{} publishes acknowledged through {RESTARTS} restarts, {} not stored, {} stored twice",
        verdict.acked, verdict.lost_count, verdict.copies
    );
    assert!(verdict.acked > 500, "only {} acknowledged", verdict.acked);
    assert!(verdict.lost.is_empty(), "{}", verdict.lost.join("\n"));
}
