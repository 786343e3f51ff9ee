//! Crash and broker-restart tests: things are killed under load, and every
//! frame every device sent must be stored exactly once.

use std::time::Duration;

use crate::common::{assert_exactly_once, eddy_process, terminate, test_config};
use eddy_firmware_host::{FleetConfig, run_fleet};
use eddy_gateway::Gateway;
use eddy_gateway::store::Store;
use eddy_test_support::{Mosquitto, free_port};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_ten_times_under_load_every_frame_is_stored_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("a free port");
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data")
        ),
    )
    .expect("write config");
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
