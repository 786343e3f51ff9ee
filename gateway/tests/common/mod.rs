//! Helpers for the gateway's integration tests: real brokers on free
//! ports, MQTT collectors, and the fleet scenario several tests share.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eddy_firmware_host::{FleetConfig, FleetReport, run_fleet};
use eddy_gateway::Gateway;
use eddy_gateway::config::{Config, UpstreamConfig};
use eddy_gateway::demo::demo_config;
use eddy_proto::Frame;
use eddy_proto::link::{FrameDecoder, MAX_WIRE_LEN, encode_framed};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A Mosquitto broker on a free loopback port, configured with the
/// project's recommended settings (deploy/mosquitto.conf).
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// Appended to the generated configuration (extra listeners).
    extra: String,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts with `extra` appended to the configuration, e.g. a TLS
    /// listener block; the plain listener on `port` stays.
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Started as root, Mosquitto drops to its own user, which must be
        // able to write its persistence file here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod temp dir");
        let mut m = Self {
            child: None,
            port: free_port(),
            dir,
            extra: extra.to_string(),
        };
        m.launch();
        m
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let recommended = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto.conf"),
        )
        .expect("deploy/mosquitto.conf");
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\npersistence_location {}/\n{recommended}\n{}\n",
                self.port,
                self.dir.path().display(),
                self.extra
            ),
        )
        .expect("write config");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto; .ci/run does this)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < end, "mosquitto did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker gracefully (SIGTERM: it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same persistence.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything published on a filter, in arrival order.
pub struct Collector {
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    pub messages: Vec<(String, Vec<u8>)>,
    stop: CancellationToken,
}

impl Collector {
    /// Subscribes with QoS 1 and a persistent session (so a broker restart
    /// loses nothing for it); returns once the subscription is acknowledged.
    pub async fn start(url: &str, client_id: &str, filter: &str) -> Self {
        let url = eddy_gateway::config::BrokerUrl::parse(url).expect("url");
        let mut options = MqttOptions::new(client_id, url.host, url.port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            let _client = client;
            let mut ready = Some(ready_tx);
            loop {
                let event = tokio::select! {
                    e = eventloop.poll() => e,
                    () = stop2.cancelled() => break,
                };
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("subscribed in time")
            .expect("collector alive");
        Self {
            rx,
            messages: Vec::new(),
            stop,
        }
    }

    /// Takes in what arrived so far.
    pub fn drain(&mut self) -> &[(String, Vec<u8>)] {
        while let Ok(m) = self.rx.try_recv() {
            self.messages.push(m);
        }
        &self.messages
    }

    /// JSON payloads that arrived so far, in order.
    pub fn json(&mut self) -> Vec<serde_json::Value> {
        self.drain()
            .iter()
            .map(|(_, p)| serde_json::from_slice(p).expect("JSON payload"))
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

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

/// Asserts every frame each device sent is stored exactly once: the
/// (boot, seq) numbers stored for the `outputs` metric, which every
/// simulated frame carries, are exactly 0..sent of the device's boot, and
/// the device's whole reading count is stored, no more, no less.
pub fn assert_exactly_once(store: &eddy_gateway::store::Store, report: &FleetReport) {
    let mut seqs: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    let mut readings: BTreeMap<String, u64> = BTreeMap::new();
    store
        .for_each_sample(|_, s| {
            *readings.entry(s.device.clone()).or_insert(0) += 1;
            if s.metric == "outputs" {
                let frame = s.frame.expect("eddy samples carry their frame");
                seqs.entry(s.device).or_default().push(frame);
            }
        })
        .expect("store readable");
    for d in &report.devices {
        assert_eq!(d.dropped, 0, "{}: backlog overflowed", d.device);
        assert_eq!(d.acked, d.sent, "{}: frames never acknowledged", d.device);
        let mut got = seqs.remove(&d.device).unwrap_or_default();
        got.sort_unstable();
        let expected: Vec<(u32, u32)> = (0..d.sent).map(|s| (d.boot, s)).collect();
        if got != expected {
            let dups = got.windows(2).filter(|w| w[0] == w[1]).count();
            let missing = expected.iter().filter(|e| !got.contains(e)).count();
            panic!(
                "{}: sent {}, stored {} frames ({dups} duplicates, {missing} missing)",
                d.device,
                d.sent,
                got.len()
            );
        }
        assert_eq!(
            readings.get(&d.device).copied().unwrap_or(0),
            d.readings,
            "{}: stored readings",
            d.device
        );
    }
    assert!(seqs.is_empty(), "samples of unknown devices: {seqs:?}");
}

/// A client publishing JSON readings on the broker at `url`.
pub fn json_publisher(url: &eddy_gateway::config::BrokerUrl, client_id: &str) -> AsyncClient {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new(client_id, url.host.clone(), url.port), 256);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    client
}

/// Publishes `{metric: value, "ts": ts}` on the device's telemetry topic.
pub async fn send_reading(client: &AsyncClient, device: &str, metric: &str, ts: i64, value: f64) {
    let payload = serde_json::json!({ metric: value, "ts": ts }).to_string();
    client
        .publish(
            format!("eddy/v1/{device}/telemetry"),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("published");
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connects");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: eddy\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// The value of an unlabelled (or exactly labelled) metric line.
pub fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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
pub struct Commander {
    client: AsyncClient,
}

impl Commander {
    pub fn connect(gateway: &Gateway, client_id: &str) -> Self {
        let broker = gateway.broker().clone();
        let (client, mut eventloop) =
            AsyncClient::new(MqttOptions::new(client_id, broker.host, broker.port), 16);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        Self { client }
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
pub struct Wire {
    pub master: SerialStream,
    decoder: FrameDecoder,
}

impl Wire {
    pub fn plug(link: &Path) -> Self {
        let (master, slave) = SerialStream::pair().expect("pty pair");
        let name = slave.name().expect("slave has a path");
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&name, link).expect("symlink");
        // The gateway opens the slave by path; this handle is not needed,
        // but keeping it open keeps the pty alive until the bridge opens it.
        std::mem::forget(slave);
        Self {
            master,
            decoder: FrameDecoder::new(),
        }
    }

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

/// The `eddy` binary, killed if the test fails early.
pub struct GatewayProcess(Option<Child>);

impl GatewayProcess {
    pub fn start(config: &Path, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("eddy starts");
        Self::adopt(child, port)
    }

    /// Takes a started `eddy run` over, once its MQTT listener on `port`
    /// accepts connections.
    pub fn adopt(child: Child, port: u16) -> Self {
        // The public listener opens once ingest subscribed.
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let end = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < end, "gateway did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(Some(child))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let status = child.wait().expect("wait");
            assert!(status.success(), "graceful stop failed: {status}");
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
