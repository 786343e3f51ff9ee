//! What the gateway's and the command line's tests share: the test
//! configuration and fleet, a fleet run through a gateway with its
//! checks, JSON readings, commands, and a serial wire.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mqtt::{Collector, Publisher, publisher, send_json};
use crate::{exactly_once, pty, wait_until};
use eddy_firmware_host::{FleetConfig, FleetReport, run_fleet};
use eddy_gateway::Gateway;
use eddy_gateway::config::demo_config;
use eddy_gateway::config::{BrokerUrl, Config, UpstreamConfig};
use eddy_mqtt::{AsyncClient, QoS};
use eddy_proto::Frame;
use eddy_proto::link::{FrameDecoder, MAX_WIRE_LEN, encode_framed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

/// An aggregate's natural key: (device, metric, window start).
pub fn agg_key(v: &serde_json::Value) -> (String, String, i64) {
    (
        v["device"].as_str().unwrap_or_default().to_string(),
        v["metric"].as_str().unwrap_or_default().to_string(),
        v["start"].as_i64().unwrap_or_default(),
    )
}

/// First occurrence of each key, in arrival order (at-least-once upstream).
pub fn dedup_aggregates(values: &[serde_json::Value]) -> Vec<(String, String, i64)> {
    let mut seen = std::collections::HashSet::new();
    values
        .iter()
        .filter(|v| v.get("count").is_some())
        .map(agg_key)
        .filter(|k| seen.insert(k.clone()))
        .collect()
}

/// A gateway config for tests: 1 s windows, generous lateness, free port.
pub fn test_config(data_dir: PathBuf, upstream: Option<String>) -> Config {
    let mut config = demo_config(data_dir);
    config.engine.window = Duration::from_secs(1);
    config.engine.allowed_lateness = Duration::from_secs(2);
    config.rules[0].window = Some(Duration::from_secs(1));
    config.upstream = upstream.map(|url| UpstreamConfig {
        url,
        client_id: "eddy-test-upstream".into(),
        topic_prefix: "eddy/v1".into(),
        max_inflight: 100,
        max_outbox: 1_000_000,
        tls: None,
    });
    config
}

/// [`test_config`] with an external broker at `url` for ingest.
pub fn config_on(data_dir: &Path, url: String) -> Config {
    let mut config = test_config(data_dir.to_path_buf(), None);
    config.broker.url = Some(url);
    config
}

/// Starts a gateway and waits until its ingest session subscribed.
pub async fn start_subscribed(config: Config) -> Gateway {
    let gateway = Gateway::start(config).await.expect("gateway starts");
    gateway
        .subscribed(Duration::from_secs(10))
        .await
        .expect("subscribed");
    gateway
}

/// The fleet used by the end-to-end tests: devices 0 and 3 run hot.
pub fn test_fleet(host: &str, port: u16, duration: Duration) -> FleetConfig {
    FleetConfig {
        devices: 6,
        rate_hz: 20.0,
        duration,
        host: host.to_string(),
        port,
        hot_every: Some(3),
        ..FleetConfig::default()
    }
}

/// Runs the fleet against a started gateway and waits until every frame
/// the devices sent is committed and every window has closed.
pub async fn run_fleet_through(gateway: &Gateway, fleet: FleetConfig) -> FleetReport {
    let report = run_fleet(fleet, CancellationToken::new())
        .await
        .expect("fleet ran");
    assert!(report.frames_sent() > 0);
    assert_eq!(
        report.frames_acked(),
        report.frames_sent(),
        "broker acknowledged every frame"
    );
    let stats = gateway.stats().clone();
    wait_committed(gateway, report.readings_sent()).await;
    // Event time advances while the fleet is silent: all windows close
    // within window + lateness (3 s), after which none is left to close.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let closed = stats.snapshot().windows_closed;
    assert!(closed > 0, "no window closed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stats.snapshot().windows_closed,
        closed,
        "windows still open after the fleet stopped"
    );
    report
}

/// Per-device sample counts in the store.
pub async fn stored_per_device(gateway: &Gateway) -> BTreeMap<String, u64> {
    let store = gateway.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut counts = BTreeMap::new();
        store
            .for_each_sample(|_, s| *counts.entry(s.device).or_insert(0) += 1)
            .expect("store readable");
        counts
    })
    .await
    .expect("join")
}

/// Every stored sample, in log order.
pub async fn stored_samples(gateway: &Gateway) -> Vec<eddy_gateway::store::StoredSample> {
    let store = gateway.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut samples = Vec::new();
        store
            .for_each_sample(|_, s| samples.push(s))
            .expect("store readable");
        samples
    })
    .await
    .expect("join")
}

/// The assertions shared by the end-to-end tests.
pub async fn assert_end_to_end(
    gateway: &Gateway,
    fleet: &FleetConfig,
    report: &FleetReport,
    alerts: &mut Collector,
    upstream: &mut Collector,
) {
    // Every reading each device sent is stored, exactly once.
    let stored = stored_per_device(gateway).await;
    for d in &report.devices {
        assert_eq!(
            stored.get(&d.device).copied(),
            Some(d.readings),
            "{}",
            d.device
        );
    }
    let stats = gateway.stats().snapshot();
    assert_eq!(stats.samples_committed, report.readings_sent());
    assert_eq!(stats.messages_malformed + stats.messages_oversized, 0);
    assert_eq!(stats.samples_late, 0);

    // Alerts fire for the hot devices, and only for them.
    let mut firing: Vec<String> = alerts
        .json()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["device"].as_str().unwrap_or_default().to_string())
        .collect();
    firing.sort();
    firing.dedup();
    let hot: Vec<String> = (0..fleet.devices)
        .filter(|i| fleet.is_hot(*i))
        .map(|i| fleet.device_id(i))
        .collect();
    assert_eq!(firing, hot);

    // Every window's aggregate reaches upstream, and together they count
    // every sample.
    wait_for_aggregates(upstream, stats.windows_closed as usize, gateway).await;
    let values = upstream.json();
    let mut counted = std::collections::HashMap::new();
    for v in values.iter().filter(|v| v.get("count").is_some()) {
        counted.insert(agg_key(v), v["count"].as_u64().unwrap_or_default());
    }
    assert_eq!(counted.values().sum::<u64>(), report.readings_sent());
    let upstream_alerts = values.iter().filter(|v| v.get("rule").is_some()).count() as u64;
    assert!(upstream_alerts >= stats.alerts_fired + stats.alerts_resolved);
}

/// Waits until `collector` holds `expected` distinct aggregates; fails with
/// the gateway's counters otherwise.
pub async fn wait_for_aggregates(collector: &mut Collector, expected: usize, gateway: &Gateway) {
    let arrived = wait_until(Duration::from_secs(20), || {
        dedup_aggregates(&collector.json()).len() >= expected
    })
    .await;
    assert!(
        arrived,
        "upstream has {} of {expected} aggregates; gateway:\n{}",
        dedup_aggregates(&collector.json()).len(),
        gateway.stats().snapshot()
    );
}

/// Waits until the gateway committed `samples` samples; fails otherwise.
pub async fn wait_committed(gateway: &Gateway, samples: u64) {
    let stats = gateway.stats().clone();
    let done = wait_until(Duration::from_secs(20), || {
        stats.snapshot().samples_committed >= samples
    })
    .await;
    assert!(
        done,
        "gateway committed {} of {samples} samples",
        stats.snapshot().samples_committed
    );
}

/// Asserts every device's backlog kept and got acknowledged every frame,
/// and every frame each device sent is stored exactly once.
pub fn assert_exactly_once(store: &eddy_gateway::store::Store, report: &FleetReport) {
    for d in &report.devices {
        assert_eq!(d.dropped, 0, "{}: backlog overflowed", d.device);
        assert_eq!(d.acked, d.sent, "{}: frames never acknowledged", d.device);
    }
    if let Err(problems) = exactly_once::check(store, report) {
        panic!("{}", problems.join("\n"));
    }
}

/// A client publishing JSON readings on the broker at `url`.
pub fn json_publisher(url: &BrokerUrl, client_id: &str) -> Publisher {
    publisher(url, client_id, 256)
}

/// Publishes `{metric: value, "ts": ts}` on the device's telemetry topic.
pub async fn send_reading(client: &AsyncClient, device: &str, metric: &str, ts: i64, value: f64) {
    let payload = serde_json::json!({ metric: value, "ts": ts });
    assert!(send_json(client, device, &payload).await, "published");
}

/// A gateway bridging the serial port at `path`, started once the port
/// is open.
pub async fn gateway_on_serial(data_dir: PathBuf, path: PathBuf) -> Gateway {
    let mut config = test_config(data_dir, None);
    config.serial = vec![eddy_gateway::sources::serial::SerialConfig {
        path,
        baud: 115_200,
    }];
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let stats = gateway.stats().clone();
    assert!(
        wait_until(Duration::from_secs(10), || stats.snapshot().serial_opens
            >= 1)
        .await,
        "the serial port was not opened"
    );
    gateway
}

/// A client on the gateway's broker that publishes commands to devices.
#[derive(Debug)]
pub struct Commander {
    client: Publisher,
}

impl Commander {
    /// A publisher on `gateway`'s broker as `client_id`.
    pub fn connect(gateway: &Gateway, client_id: &str) -> Self {
        Self {
            client: publisher(gateway.broker(), client_id, 16),
        }
    }

    /// Publishes `command` (id 1) on `device`'s command topic; returns the frame.
    pub async fn send(&self, device: &str, command: eddy_proto::Command) -> eddy_proto::Frame {
        let frame = eddy_proto::Frame::Command(eddy_proto::CommandFrame {
            device: device.try_into().expect("fits"),
            id: 1,
            command,
        });
        let mut buf = [0u8; eddy_proto::MAX_FRAME_LEN];
        let payload = eddy_proto::encode(&frame, &mut buf)
            .expect("encodes")
            .to_vec();
        self.client
            .publish(
                format!("eddy/v1/{device}/cmd"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish");
        frame
    }
}

/// The device end of a pty pair whose other end is reachable at `link`.
#[allow(missing_debug_implementations)]
pub struct Wire {
    /// The device end: what the test writes and reads.
    pub master: SerialStream,
    decoder: FrameDecoder,
}

impl Wire {
    /// Opens the pty whose other end is linked at `link`.
    pub fn plug(link: &Path) -> Self {
        Self {
            master: pty::plug(link).expect("a pty linked at the path"),
            decoder: FrameDecoder::new(),
        }
    }

    /// Writes `frame` framed for the serial link.
    pub async fn send(&mut self, frame: &Frame) {
        let mut out = [0u8; MAX_WIRE_LEN];
        let bytes = encode_framed(frame, &mut out).expect("encodes");
        self.master.write_all(bytes).await.expect("write");
    }

    /// Frames received within `timeout`.
    pub async fn receive(&mut self, timeout: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut buf = [0u8; 512];
        let end = tokio::time::Instant::now() + timeout;
        while let Ok(Ok(n)) = tokio::time::timeout_at(end, self.master.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            self.decoder.feed(&buf[..n], |r| {
                if let Ok(f) = r {
                    frames.push(f);
                }
            });
        }
        frames
    }
}
