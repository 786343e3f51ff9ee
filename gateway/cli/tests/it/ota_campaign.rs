//! OTA campaigns end to end: simulated devices running the real update
//! agent on RAM-backed NOR flash, a gateway with the embedded broker, and
//! campaigns created through the HTTP API, as `eddy ota deploy` does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Wire, eddy_process, terminate, test_config};
use eddy_cli::client::{Campaigns, Client, ClientError};
use eddy_firmware_host::ota::{OtaReport, SimOta, SimOtaConfig};
use eddy_firmware_host::{FleetConfig, FleetReport, run_fleet};
use eddy_gateway::Gateway;
use eddy_gateway::campaign::api::Detail;
use eddy_gateway::campaign::{DeviceState, Status};
use eddy_ota::{HEADER_LEN, MAX_BOARD_LEN, OFFER_LEN};
use eddy_ota::{ImageHeader, KEY_LEN, Version, public_key, sign_header};
use eddy_proto::{Frame, Hello};
use eddy_test_support::http::{admin_token, scrape};
use eddy_test_support::process::stdout_of_success;
use eddy_test_support::{free_port, wait_until};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const BOARD: &str = "sim-board";
const SECRET: [u8; KEY_LEN] = [42; KEY_LEN];
const OTHER_SECRET: [u8; KEY_LEN] = [43; KEY_LEN];
/// 64 KiB images in 72 KiB slots.
const IMAGE_LEN: usize = 64 * 1024;
const SLOT: u32 = 72 * 1024;

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 8) as u8)
        .collect()
}

fn image(board: &str, version: &str, len: usize, secret: &[u8; KEY_LEN]) -> Vec<u8> {
    let v = Version::parse(version).expect("version");
    let body = payload(v.minor as u8 ^ v.major as u8, len);
    let header = ImageHeader::for_payload(board, v, &body)
        .expect("header")
        .encode();
    let mut out = header.to_vec();
    out.extend_from_slice(&sign_header(secret, &header));
    out.extend_from_slice(&body);
    out
}

fn sim_ota() -> SimOtaConfig {
    SimOtaConfig {
        board: BOARD,
        public_key: public_key(&SECRET),
        factory_image: Arc::new(image(BOARD, "1.0.0", 4096, &SECRET)),
        slot_size: SLOT,
        unhealthy_from: None,
        corrupt_every: None,
        silent_at: None,
    }
}

/// The public key of `SECRET` in a file in `dir`, as `eddy ota keygen`
/// writes it.
fn key_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join("eddy-ota.pub");
    let hex: String = public_key(&SECRET)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&path, hex).expect("key written");
    path
}

/// A client of `gateway`'s API with its admin token.
fn admin_client(gateway: &Gateway) -> Client {
    let addr = gateway.http_addr().expect("http enabled");
    Client::new(&format!("http://{addr}"))
        .expect("url")
        .with_token(Some(admin_token(gateway.data_dir())))
}

/// A gateway with the embedded broker, the key of `SECRET` and short OTA
/// timeouts.
async fn gateway(dir: &TempDir) -> (Gateway, Client) {
    let mut config = test_config(dir.path().join("data"), None);
    config.ota.retry_after = Duration::from_millis(500);
    config.ota.confirm_timeout = Duration::from_secs(10);
    config.ota.public_key = Some(key_file(dir));
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let client = admin_client(&gateway);
    (gateway, client)
}

/// Waits until the gateway recorded `n` Hello frames (boards, versions).
async fn hellos(gateway: &Gateway, n: u64) {
    let stats = gateway.stats().clone();
    assert!(
        wait_until(Duration::from_secs(20), || stats.snapshot().ota_hellos >= n).await,
        "the devices did not say hello"
    );
}

/// A simulated device taking updates, on `gateway`'s broker.
fn sim_device(gateway: &Gateway, name: &str, ota: SimOtaConfig) -> eddy_firmware_host::SimDevice {
    let broker = gateway.broker();
    eddy_firmware_host::SimDevice::new(
        eddy_firmware_host::SimDeviceConfig {
            device: name.into(),
            host: broker.host.clone(),
            port: broker.port,
            prefix: "eddy/v1".into(),
            interval_ms: 500,
            start_offset: Duration::ZERO,
            duration: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(5),
            clock_offset_ms: 0,
        },
        Vec::new(),
    )
    .expect("device")
    .with_ota(SimOta::new(name, ota).expect("factory image"))
}

/// Starts a fleet of update-taking devices; returns once the gateway
/// knows all of them.
async fn fleet(
    gateway: &Gateway,
    devices: usize,
    ota: SimOtaConfig,
) -> (CancellationToken, tokio::task::JoinHandle<FleetReport>) {
    let broker = gateway.broker().clone();
    let config = FleetConfig {
        devices,
        rate_hz: 1.0,
        duration: Duration::from_secs(600),
        host: broker.host,
        port: broker.port,
        hot_every: None,
        drain_timeout: Duration::from_secs(5),
        ota: Some(ota),
        ..FleetConfig::default()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { run_fleet(config, stop).await.expect("fleet runs") }
    });
    let store = gateway.store().clone();
    assert!(
        wait_until(Duration::from_secs(20), || store
            .devices()
            .is_ok_and(|d| d.len() >= devices))
        .await,
        "the gateway did not hear every device"
    );
    hellos(gateway, devices as u64).await;
    (stop, task)
}

async fn finish(
    stop: CancellationToken,
    task: tokio::task::JoinHandle<FleetReport>,
) -> FleetReport {
    stop.cancel();
    task.await.expect("fleet task")
}

/// Waits until the campaign is no longer running and every device has
/// an outcome (devices mid-transfer when a campaign halts finish).
async fn settled(client: &Client, id: u32) -> Detail {
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let d = client.campaign(id).await.expect("campaign");
        if d.campaign.status != Status::Running && d.counts.in_progress == 0 {
            return d;
        }
        assert!(Instant::now() < end, "campaign still running: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ota_report(report: &FleetReport, device: &str) -> OtaReport {
    report
        .devices
        .iter()
        .find(|d| d.device == device)
        .and_then(|d| d.ota.clone())
        .expect("device took part")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_100_devices_is_updated_canary_first_then_in_stages() {
    let dir = TempDir::new().expect("tempdir");
    let (gateway, client) = gateway(&dir).await;
    let (stop, task) = fleet(&gateway, 100, sim_ota()).await;

    // The gateway holds a key: an image it did not sign never reaches a device.
    let forged = image(BOARD, "1.1.0", 1000, &OTHER_SECRET);
    match client.deploy(forged, "all", "5%", "100%", "10%").await {
        Err(ClientError::Refused {
            status: 400,
            message,
        }) => {
            assert!(message.contains("signature"), "{message}");
        }
        other => panic!("forged image accepted: {other:?}"),
    }

    let img = image(BOARD, "1.1.0", IMAGE_LEN, &SECRET);
    let started = Instant::now();
    let created = client
        .deploy(img.clone(), "sim-*", "5%", "25%,100%", "10%")
        .await
        .expect("campaign created");
    assert_eq!(created.campaign.boundaries, vec![5, 25, 100]);
    let id = created.campaign.id;
    let end = settled(&client, id).await;
    let took = started.elapsed();
    let report = finish(stop, task).await;

    assert_eq!(end.campaign.status, Status::Completed, "{end:?}");
    assert_eq!(end.counts.confirmed, 100);
    for d in &report.devices {
        let ota = d.ota.as_ref().expect("update side");
        assert_eq!(ota.version, [1, 1, 0], "{}: {ota:?}", d.device);
        assert_eq!(ota.rollbacks, 0);
    }
    for e in &end.campaign.devices {
        assert_eq!(
            e.state,
            DeviceState::Confirmed {
                version: "1.1.0".into()
            }
        );
    }
    // Telemetry kept flowing and nothing was lost while devices updated.
    assert!(report.frames_sent() > 0);
    assert_eq!(report.frames_dropped(), 0);

    let bytes: u64 = end.campaign.devices.iter().map(|e| e.bytes_sent).sum();
    let per_device = bytes as f64 / 100.0;
    println!(
        "100 devices, {IMAGE_LEN}-byte image: updated in {:.2} s; {per_device:.0} bytes sent per device \
         ({:.3}x the image)",
        took.as_secs_f64(),
        per_device / img.len() as f64
    );
    // Offer + chunks: framing costs a few percent, resends none here.
    assert!(per_device < 1.2 * img.len() as f64, "{per_device}");
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_failing_its_health_check_rolls_back_and_halts_the_campaign() {
    let dir = TempDir::new().expect("tempdir");
    let (gateway, client) = gateway(&dir).await;
    let ota = SimOtaConfig {
        unhealthy_from: Some(Version::parse("2.0.0").expect("version")),
        ..sim_ota()
    };
    let (stop, task) = fleet(&gateway, 20, ota).await;
    let img = image(BOARD, "2.0.0", 8 * 1024, &SECRET);
    let created = client
        .deploy(img, "all", "10%", "50%,100%", "10%")
        .await
        .expect("campaign created");
    assert_eq!(created.campaign.boundaries, vec![2, 10, 20]);
    let end = settled(&client, created.campaign.id).await;
    let report = finish(stop, task).await;

    let Status::Halted { reason } = &end.campaign.status else {
        panic!("not halted: {end:?}");
    };
    assert!(reason.contains("failed"), "{reason}");
    assert_eq!(end.campaign.stage, 0, "later stages never started");
    for e in &end.campaign.devices {
        let ota = ota_report(&report, &e.device);
        assert_eq!(ota.version, [1, 0, 0], "{} runs the old image", e.device);
        if e.stage == 0 {
            assert_eq!(
                e.state,
                DeviceState::RolledBack {
                    version: "1.0.0".into()
                }
            );
            assert_eq!(ota.rollbacks, 1);
        } else {
            assert_eq!(e.state, DeviceState::Skipped, "{}", e.device);
            assert_eq!(ota.chunk_bytes, 0, "{} was never sent a chunk", e.device);
        }
    }
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_tampered_foreign_wrong_board_and_downgrade_images_are_refused_at_creation() {
    let dir = TempDir::new().expect("tempdir");
    let (gateway, client) = gateway(&dir).await;
    let (stop, task) = fleet(&gateway, 3, sim_ota()).await;
    let good = image(BOARD, "1.5.0", 2048, &SECRET);
    let mut zeroed = good.clone();
    zeroed[HEADER_LEN..OFFER_LEN].fill(0);
    let mut edited = good.clone();
    // The version's major number, in the signed header.
    edited[4 + 1 + 1 + MAX_BOARD_LEN] ^= 1;
    let mut payload = good.clone();
    payload[OFFER_LEN + 10] ^= 0xff;
    let devices = "sim-0000,sim-0001,sim-0002";
    let cases = [
        (zeroed, devices, "signature"),
        (edited, devices, "signature"),
        (
            image(BOARD, "1.5.0", 2048, &OTHER_SECRET),
            devices,
            "signature",
        ),
        (payload, devices, "image"),
        (good[..100].to_vec(), devices, "image"),
        (
            image("other-board", "1.5.0", 2048, &SECRET),
            devices,
            "is a `sim-board` board",
        ),
        (
            image(BOARD, "0.9.0", 2048, &SECRET),
            devices,
            "runs 1.0.0; the image's 0.9.0 is not newer",
        ),
        (
            image(BOARD, "1.0.0", 2048, &SECRET),
            "sim-0001",
            "not newer (anti-rollback)",
        ),
        (
            good.clone(),
            "sim-0000,nobody",
            "`nobody` has not said which board",
        ),
        (good.clone(), "nobody-*", "matches no device"),
        (good.clone(), "all", "last one must be 100%"),
    ];
    for (img, selector, expected) in cases {
        let stages = if expected.contains("100%") {
            "50%"
        } else {
            "100%"
        };
        match client.deploy(img, selector, "5%", stages, "10%").await {
            Err(ClientError::Refused {
                status: 400,
                message,
            }) => {
                assert!(message.contains(expected), "{expected}: {message}");
            }
            other => panic!("{expected}: accepted: {other:?}"),
        }
    }
    // A device of another board among the selected refuses the whole image.
    let odd = SimOtaConfig {
        board: "odd-board",
        factory_image: Arc::new(image("odd-board", "1.0.0", 4096, &SECRET)),
        ..sim_ota()
    };
    let odd_stop = CancellationToken::new();
    let odd_task = tokio::spawn(sim_device(&gateway, "odd-0", odd).run(odd_stop.clone()));
    hellos(&gateway, 4).await;
    match client
        .deploy(good.clone(), "all", "100%", "100%", "10%")
        .await
    {
        Err(ClientError::Refused {
            status: 400,
            message,
        }) => {
            assert!(
                message.contains("`odd-0` is a `odd-board` board"),
                "{message}"
            );
        }
        other => panic!("accepted: {other:?}"),
    }
    odd_stop.cancel();
    odd_task.await.expect("device task");
    // Nothing was created.
    assert!(client.campaigns().await.expect("list").is_empty());
    // Three devices that said hello and never answer an offer.
    let ghosts = eddy_test_support::mqtt::publisher(gateway.broker(), "ghosts", 16);
    for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
        let hello = Frame::Hello(Hello {
            device: ghost.try_into().expect("fits"),
            board: BOARD.try_into().expect("fits"),
            firmware: "1.0.0".try_into().expect("fits"),
        });
        let mut buf = [0u8; eddy_proto::MAX_FRAME_LEN];
        let bytes = eddy_proto::encode(&hello, &mut buf).expect("encodes");
        ghosts
            .publish(
                format!("eddy/v1/{ghost}/hello"),
                eddy_mqtt::QoS::AtLeastOnce,
                false,
                bytes.to_vec(),
            )
            .await
            .expect("published");
    }
    hellos(&gateway, 7).await;
    // Halting: an unknown campaign is not found; a running one stops
    // starting devices, and once ended cannot be halted again.
    assert!(matches!(
        client.campaign(99).await,
        Err(ClientError::Refused { status: 404, .. })
    ));
    let running = client
        .deploy(
            good.clone(),
            "ghost-1,ghost-2,ghost-3",
            "10%",
            "100%",
            "100%",
        )
        .await
        .expect("campaign created");
    let id = running.campaign.id;
    let end = Instant::now() + Duration::from_secs(10);
    while client
        .campaign(id)
        .await
        .expect("campaign")
        .counts
        .in_progress
        == 0
    {
        assert!(Instant::now() < end, "the canary device never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let halted = client.halt(id).await.expect("halts");
    assert_eq!(
        halted.campaign.status,
        Status::Halted {
            reason: "halted by the operator".into()
        }
    );
    let end = settled(&client, id).await;
    assert_eq!(end.counts.skipped, 2, "{end:?}");
    assert!(
        matches!(&end.campaign.devices[0].state, DeviceState::Failed { reason } if reason.contains("no answer")),
        "{end:?}"
    );
    assert!(matches!(
        client.halt(id).await,
        Err(ClientError::Refused { status: 409, .. })
    ));
    let report = finish(stop, task).await;
    for d in &report.devices {
        let ota = d.ota.as_ref().expect("update side");
        assert_eq!(ota.version, [1, 0, 0]);
        assert_eq!(ota.chunk_bytes, 0, "a refused image never reached a device");
    }
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_chunks_are_sent_again_and_an_interrupted_transfer_resumes() {
    let dir = TempDir::new().expect("tempdir");
    let (gateway, client) = gateway(&dir).await;
    let noisy = SimOtaConfig {
        corrupt_every: Some(10),
        ..sim_ota()
    };
    let silent_at = 20 * 1024;
    let silent = SimOtaConfig {
        silent_at: Some((silent_at, Duration::from_secs(2))),
        ..sim_ota()
    };
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (name, ota) in [("noisy", noisy), ("silent", silent)] {
        tasks.push(tokio::spawn(
            sim_device(&gateway, name, ota).run(stop.clone()),
        ));
    }
    let store = gateway.store().clone();
    assert!(
        wait_until(Duration::from_secs(20), || store
            .devices()
            .is_ok_and(|d| d.len() >= 2))
        .await
    );
    hellos(&gateway, 2).await;
    let img = image(BOARD, "1.2.0", IMAGE_LEN, &SECRET);
    let created = client
        .deploy(img, "noisy,silent", "100%", "100%", "0%")
        .await
        .expect("campaign created");
    let end = settled(&client, created.campaign.id).await;
    stop.cancel();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.expect("device task"));
    }
    assert_eq!(end.campaign.status, Status::Completed, "{end:?}");
    let entry = |name: &str| {
        end.campaign
            .devices
            .iter()
            .find(|e| e.device == name)
            .expect("entry")
            .clone()
    };
    let ota = |name: &str| {
        reports
            .iter()
            .find(|r| r.device == name)
            .and_then(|r| r.ota.clone())
            .expect("update side")
    };
    let noisy = ota("noisy");
    assert_eq!(noisy.version, [1, 2, 0]);
    assert!(noisy.chunks_damaged >= 5, "{noisy:?}");
    assert!(
        entry("noisy").chunks_resent >= u64::from(noisy.chunks_damaged),
        "every damaged chunk was sent again: {:?}",
        entry("noisy")
    );
    // Go-back-N: each damaged chunk costs at most one window (8 chunks)
    // sent again, not a cascade.
    let bound = IMAGE_LEN as u64 + (u64::from(noisy.chunks_damaged) + 1) * 8 * 512;
    assert!(noisy.chunk_bytes <= bound, "{noisy:?}, bound {bound}");
    let silent = ota("silent");
    assert_eq!(silent.version, [1, 2, 0]);
    // After the silence the gateway offered again and went on from where
    // the device stood, not from zero.
    assert!(
        silent.resumed_at.iter().any(|&at| at >= silent_at),
        "{silent:?}"
    );
    assert!(
        silent.chunk_bytes < (IMAGE_LEN + 16 * 512) as u64,
        "the transfer started over: {silent:?}"
    );
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_serial_line_is_updated() {
    let dir = TempDir::new().expect("tempdir");
    let link = dir.path().join("ttyOTA");
    let mut wire = Wire::plug(&link);
    let mut gateway_config = test_config(dir.path().join("data"), None);
    gateway_config.ota.retry_after = Duration::from_millis(500);
    gateway_config.ota.public_key = Some(key_file(&dir));
    gateway_config.serial = vec![eddy_gateway::sources::serial::SerialConfig {
        path: link.clone(),
        baud: 115_200,
    }];
    let gateway = Gateway::start(gateway_config)
        .await
        .expect("gateway starts");
    let stats = gateway.stats().clone();
    assert!(
        wait_until(Duration::from_secs(10), || stats.snapshot().serial_opens
            >= 1)
        .await
    );
    let client = admin_client(&gateway);

    // The device introduces itself, then answers what the wire brings.
    let mut device = SimOta::new("uart-ota", sim_ota()).expect("factory image");
    wire.send(&Frame::Hello(Hello {
        device: "uart-ota".try_into().expect("fits"),
        board: BOARD.try_into().expect("fits"),
        firmware: "1.0.0".try_into().expect("fits"),
    }))
    .await;
    hellos(&gateway, 1).await;
    let img = image(BOARD, "1.3.0", 16 * 1024, &SECRET);
    let created = client
        .deploy(img, "uart-ota", "100%", "100%", "0%")
        .await
        .expect("campaign created");
    let id = created.campaign.id;
    let end = Instant::now() + Duration::from_secs(60);
    while device.report().version != [1, 3, 0] {
        assert!(Instant::now() < end, "not updated: {:?}", device.report());
        for frame in wire.receive(Duration::from_millis(50)).await {
            for answer in device.handle(&frame, tokio::time::Instant::now()) {
                wire.send(&answer).await;
            }
        }
    }
    // The confirmation crossed the wire and reached the campaign.
    let done = Instant::now() + Duration::from_secs(20);
    let detail = loop {
        let d = client.campaign(id).await.expect("campaign");
        if d.campaign.status != Status::Running || Instant::now() > done {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(detail.campaign.status, Status::Completed, "{detail:?}");
    assert_eq!(
        detail.campaign.devices[0].state,
        DeviceState::Confirmed {
            version: "1.3.0".into()
        }
    );
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_survives_a_gateway_crash_and_transfers_resume_through_the_cli() {
    const SILENT_AT: u32 = 16 * 1024;
    let dir = TempDir::new().expect("tempdir");
    let (port, http) = (
        free_port().expect("a free port"),
        free_port().expect("a free port"),
    );
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[broker]\nlisten = \"127.0.0.1:{port}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [ota]\nretry_after = \"500ms\"\nmax_retries = 20\nmax_parallel = 2\npublic_key = {:?}\n",
            dir.path().join("data"),
            key_file(&dir)
        ),
    )
    .expect("config written");
    let mut process = eddy_process(&config, port);
    let gateway_url = format!("http://127.0.0.1:{http}");
    let client = Client::new(&gateway_url)
        .expect("url")
        .with_token(Some(admin_token(&dir.path().join("data"))));
    let fleet_config = FleetConfig {
        devices: 6,
        rate_hz: 1.0,
        duration: Duration::from_secs(600),
        port,
        hot_every: None,
        drain_timeout: Duration::from_secs(5),
        // Each device goes silent for a while at 16 KiB: the gateway is
        // killed during such a silence, mid-transfer.
        ota: Some(SimOtaConfig {
            silent_at: Some((SILENT_AT, Duration::from_secs(3))),
            ..sim_ota()
        }),
        ..FleetConfig::default()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { run_fleet(fleet_config, stop).await.expect("fleet runs") }
    });
    let image_file = dir.path().join("fw-1.4.0.eddy");
    std::fs::write(&image_file, image(BOARD, "1.4.0", IMAGE_LEN, &SECRET)).expect("image");
    let devices: Vec<String> = (0..6).map(|i| format!("sim-{i:04}")).collect();
    // The CLI finds the admin token through the gateway's config.
    let eddy = |args: &[&str]| {
        stdout_of_success(
            std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
                .args(args)
                .arg("--config")
                .arg(&config)
                .env_remove("EDDY_TOKEN"),
        )
    };
    let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let end = Instant::now() + Duration::from_secs(20);
    while scrape(http_addr, "eddy_ota_hellos_total")
        .await
        .unwrap_or(0)
        < 6
    {
        assert!(Instant::now() < end, "the devices did not say hello");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = eddy(&[
        "ota",
        "deploy",
        "--image",
        image_file.to_str().expect("utf-8 path"),
        "--devices",
        &devices.join(","),
        "--canary",
        "50%",
        "--stages",
        "100%",
        "--max-failures",
        "0%",
        "--detach",
        "--gateway",
        &gateway_url,
    ]);
    let id: u32 = out
        .strip_prefix("campaign ")
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no campaign id in {out:?}"));

    // Kill the gateway while devices are mid-transfer.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let d = client.campaign(id).await.expect("campaign");
        if d.campaign
            .devices
            .iter()
            .any(|e| matches!(e.state, DeviceState::Transferring { acked } if acked >= SILENT_AT))
        {
            break;
        }
        assert!(Instant::now() < end, "no transfer under way: {d:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let interrupted: Vec<String> = client
        .campaign(id)
        .await
        .expect("campaign")
        .campaign
        .devices
        .into_iter()
        .filter(|e| matches!(e.state, DeviceState::Transferring { acked } if acked >= SILENT_AT))
        .map(|e| e.device)
        .collect();
    process.kill();
    let mut process = eddy_process(&config, port);
    let end = settled(&client, id).await;
    let report = finish(stop, task).await;
    assert_eq!(end.campaign.status, Status::Completed, "{end:?}");
    assert_eq!(end.counts.confirmed, 6);
    // The devices killed mid-transfer went on from where they stood.
    assert!(!interrupted.is_empty());
    for device in &interrupted {
        let o = ota_report(&report, device);
        assert_eq!(o.version, [1, 4, 0]);
        assert!(
            o.resumed_at.iter().any(|&at| at >= SILENT_AT),
            "{device}: {o:?}"
        );
        assert!(
            o.chunk_bytes < (IMAGE_LEN + 16 * 512) as u64,
            "{device} started over: {o:?}"
        );
    }
    let status = eddy(&["ota", "status", &id.to_string(), "--gateway", &gateway_url]);
    assert_eq!(status.matches("confirmed 1.4.0").count(), 6, "{status}");
    let list = eddy(&["ota", "status", "--gateway", &gateway_url]);
    assert!(list.contains("completed"), "{list}");
    terminate(&mut process);
}
