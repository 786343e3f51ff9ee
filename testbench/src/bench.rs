//! `eddy-testbench bench`: the gateway under load from simulated fleets of
//! several sizes, measured end to end, with peers on the same machine as
//! reference.
//!
//! For each fleet size the real `eddy` binary runs with its embedded
//! broker; the devices (the real firmware core, Eddy frames with three
//! readings) sample at `rate` Hz for the run's duration. Measured:
//!
//! - sustained throughput: readings stored per second of the run, and
//!   whether every frame was stored exactly once (zero loss);
//! - alert latency: a probe device sends a threshold crossing every
//!   200 ms while the fleet runs; the time from publishing it to the
//!   alert's arrival goes into an HdrHistogram;
//! - the gateway's CPU (share of one core) and resident memory over time.
//!
//! Peers: the broker pass-through ceiling (Mosquitto, one publisher, one
//! subscriber, QoS 1, payloads of the same size), and Node-RED when
//! `node-red` is on the PATH. Results go to `bench.json` and three SVG
//! plots: throughput against fleet size, latency CDF, RSS over time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy_firmware_host::{FleetConfig, run_fleet};
use eddy_test_support::mqtt::{publisher, send_json, watch};
use eddy_test_support::process::ChildGuard;
use eddy_test_support::{Mosquitto, free_port};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use rumqttc::QoS;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::scenario::{GatewayChild, ScenarioError, broker_url, clean_session, no_loss, rss_kb};

/// Bench settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub fleets: Vec<usize>,
    pub rate: f64,
    pub duration: Duration,
    /// Messages for the Mosquitto ceiling.
    pub peer_messages: usize,
}

impl BenchOptions {
    pub fn quick() -> Self {
        Self {
            fleets: vec![5, 20],
            rate: 10.0,
            duration: Duration::from_secs(3),
            peer_messages: 5_000,
        }
    }

    pub fn full() -> Self {
        Self {
            fleets: vec![10, 100, 400, 800],
            rate: 50.0,
            duration: Duration::from_secs(10),
            peer_messages: 100_000,
        }
    }
}

/// One fleet size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub devices: usize,
    pub offered_per_s: f64,
    pub readings_per_s: f64,
    pub frames: u64,
    pub zero_loss: bool,
    pub loss_detail: String,
    pub latency_ms: Percentiles,
    /// (ms, cumulative fraction) for the CDF plot.
    pub latency_cdf: Vec<(f64, f64)>,
    pub cpu_share: f64,
    pub max_rss_mb: f64,
    /// (seconds since start, MB).
    pub rss_mb: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A peer's ceiling, or why it was not measured.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub name: String,
    pub messages_per_s: Option<f64>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub rate_hz: f64,
    pub duration_s: f64,
    pub levels: Vec<Level>,
    pub peers: Vec<Peer>,
}

const PROBE_RULES: &str = r#"
[engine]
window = "1s"
allowed_lateness = "500ms"

[[rules]]
name = "overheat"
metric = "temperature"
window = "1s"
aggregate = "mean"
above = 50

[[rules]]
name = "probe"
sql = "SELECT device, max(temperature) FROM telemetry WHERE device = 'probe-0' GROUP BY device, COUNT(1) HAVING max(temperature) > 50"
"#;

/// Runs every fleet size and the peers; writes `bench.json` and the plots.
pub async fn run(
    options: &BenchOptions,
    eddy: &Path,
    out: &Path,
) -> Result<BenchReport, ScenarioError> {
    std::fs::create_dir_all(out)?;
    let bar = ProgressBar::new(options.fleets.len() as u64 + 1);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut levels = Vec::new();
    for &devices in &options.fleets {
        bar.set_message(format!("{devices} devices"));
        levels.push(level(options, devices, eddy).await?);
        bar.inc(1);
    }
    bar.set_message("peers");
    let payload = payload_size();
    let peers = vec![
        mosquitto_ceiling(options.peer_messages, payload).await,
        node_red(options.peer_messages / 5).await,
    ];
    bar.finish_and_clear();
    let report = BenchReport {
        machine: machine(),
        rate_hz: options.rate,
        duration_s: options.duration.as_secs_f64(),
        levels,
        peers,
    };
    let json =
        serde_json::to_vec_pretty(&report).map_err(|e| ScenarioError::Fleet(e.to_string()))?;
    std::fs::write(out.join("bench.json"), json)?;
    plot(&report, out).map_err(|e| ScenarioError::Fleet(format!("plot: {e}")))?;
    Ok(report)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// Bytes of one device frame's JSON equivalent, for the broker peer.
fn payload_size() -> usize {
    r#"{"temperature":22.51,"humidity":45.2,"outputs":0,"ts":1700000000000}"#.len()
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn level(
    options: &BenchOptions,
    devices: usize,
    eddy: &Path,
) -> Result<Level, ScenarioError> {
    let dir = tempfile::tempdir()?;
    let (mut gateway, data_dir) = GatewayChild::prepare(dir.path(), eddy, PROBE_RULES, None, None)?;
    tokio::task::block_in_place(|| gateway.start())?;
    let broker = gateway.broker();
    let pid = gateway.pid().unwrap_or(0);
    let stop = CancellationToken::new();

    // Resident memory and CPU while the fleet runs.
    let rss: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let sampler = {
        let (rss, stop) = (rss.clone(), stop.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            while !stop.is_cancelled() {
                if let Some(kb) = rss_kb(pid) {
                    rss.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((t0.elapsed().as_secs_f64(), kb as f64 / 1024.0));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let probe = tokio::spawn(probe_latency(broker, stop.clone()));
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let report = run_fleet(
        FleetConfig {
            devices,
            rate_hz: options.rate,
            duration: options.duration,
            host: "127.0.0.1".into(),
            port: broker.port(),
            hot_every: Some(10),
            drain_timeout: Duration::from_secs(30),
            ..FleetConfig::default()
        },
        CancellationToken::new(),
    )
    .await
    .map_err(|e| ScenarioError::Fleet(e.to_string()))?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(cpu0) - cpu0;
    stop.cancel();
    let histogram = probe
        .await
        .map_err(|e| ScenarioError::Fleet(e.to_string()))?;
    let _ = sampler.await;
    tokio::task::block_in_place(|| gateway.stop())?;
    let check = tokio::task::block_in_place(|| no_loss(&data_dir.join("eddy.redb"), &report))?;
    let rss = rss.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let q = |p: f64| histogram.value_at_quantile(p) as f64 / 1000.0;
    let latency_cdf = histogram
        .iter_quantiles(2)
        .map(|v| {
            (
                v.value_iterated_to() as f64 / 1000.0,
                v.quantile_iterated_to(),
            )
        })
        .collect();
    Ok(Level {
        devices,
        offered_per_s: devices as f64 * options.rate * 3.0,
        readings_per_s: report.readings_sent() as f64 / options.duration.as_secs_f64(),
        frames: report.frames_sent(),
        zero_loss: check.passed,
        loss_detail: check.detail,
        latency_ms: Percentiles {
            count: histogram.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: histogram.max() as f64 / 1000.0,
        },
        latency_cdf,
        cpu_share: if wall > 0.0 { cpu / wall } else { 0.0 },
        max_rss_mb: rss.iter().map(|r| r.1).fold(0.0, f64::max),
        rss_mb: rss,
    })
}

/// Sends a crossing (up, then down) for `probe-0` every 200 ms and
/// records the time to each alert, in microseconds.
async fn probe_latency(broker: std::net::SocketAddr, stop: CancellationToken) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, String)>();
    let ready = watch(
        &broker_url(broker),
        clean_session("bench-alerts", "eddy/v1/alerts/probe/#"),
        stop.clone(),
        move |p| {
            if p.retain {
                return;
            }
            let state = serde_json::from_slice::<serde_json::Value>(&p.payload)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = tx.send((Instant::now(), state));
        },
    );
    if ready.wait(Duration::from_secs(5)).await.is_err() {
        return histogram;
    }
    let publisher = publisher(&broker_url(broker), "bench-probe", 64);
    let mut hot = true;
    while !stop.is_cancelled() {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let payload = serde_json::json!({ "temperature": if hot { 80.0 } else { 20.0 }, "ts": ts });
        let sent = Instant::now();
        if !send_json(&publisher, "probe-0", &payload).await {
            break;
        }
        let want = if hot { "firing" } else { "resolved" };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some((at, state))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if state == want {
                let us = at.duration_since(sent).as_micros() as u64;
                let _ = histogram.record(us.max(1));
                break;
            }
        }
        hot = !hot;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    histogram
}

/// Mosquitto settings with queues deep enough that nothing is dropped,
/// and no persistence: the broker's pass-through ceiling.
const LOSSLESS: &str = "allow_anonymous true\nmax_queued_messages 0\n\
    max_inflight_messages 0\npersistence false\n";

/// A Mosquitto with [`LOSSLESS`] settings; `Err` says why it could not
/// start.
fn lossless_mosquitto() -> Result<Mosquitto, String> {
    tokio::task::block_in_place(|| Mosquitto::with_settings(LOSSLESS)).map_err(|e| e.to_string())
}

/// A Mosquitto on a free port: publisher -> broker -> one subscriber,
/// QoS 1, `messages` payloads of `size` bytes; messages per second
/// received.
async fn mosquitto_ceiling(messages: usize, size: usize) -> Peer {
    let name = "mosquitto pass-through (1 pub -> broker -> 1 sub, QoS 1)".to_string();
    let broker = match lossless_mosquitto() {
        Ok(m) => m,
        Err(note) => {
            return Peer {
                name,
                messages_per_s: None,
                note,
            };
        }
    };
    let url = broker_url(broker.addr());
    let stop = CancellationToken::new();
    let _stop_subscriber = stop.clone().drop_guard();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let (mut got, mut done_tx) = (0usize, Some(done_tx));
    let ready = watch(
        &url,
        clean_session("ceiling-sub", "ceiling/#"),
        stop,
        move |_| {
            got += 1;
            if got == messages
                && let Some(d) = done_tx.take()
            {
                let _ = d.send(Instant::now());
            }
        },
    );
    if ready.wait(Duration::from_secs(5)).await.is_err() {
        return Peer {
            name,
            messages_per_s: None,
            note: "subscriber did not connect".into(),
        };
    }
    let publisher = publisher(&url, "ceiling-pub", 1024);
    let payload = vec![b'x'; size];
    let t0 = Instant::now();
    for _ in 0..messages {
        if publisher
            .publish("ceiling/t", QoS::AtLeastOnce, false, payload.clone())
            .await
            .is_err()
        {
            break;
        }
    }
    match tokio::time::timeout(Duration::from_secs(120), done).await {
        Ok(Ok(end)) => Peer {
            name,
            messages_per_s: Some(messages as f64 / end.duration_since(t0).as_secs_f64()),
            note: format!("{messages} messages of {size} bytes"),
        },
        _ => Peer {
            name,
            messages_per_s: None,
            note: "not every message arrived within 120 s".into(),
        },
    }
}

/// The Node-RED flow: MQTT in, a function keeping a 1 s tumbling mean
/// of `temperature` per device and alerting above 50 when a window
/// closes, MQTT out; it says `ready` to a warm-up device and `done` after
/// `TOTAL` messages.
const NODE_RED_FUNCTION: &str = r#"
const dev = msg.topic.split('/')[2];
if (dev === 'warmup') { return { topic: 'bench/ready', payload: 'ready' }; }
const w = context.get('w') || {};
const n = (context.get('n') || 0) + 1;
context.set('n', n);
const ts = msg.payload.ts, v = msg.payload.temperature;
const start = ts - (ts % 1000);
let s = w[dev];
let out = null;
if (!s || s.start !== start) {
  if (s && s.count > 0 && s.sum / s.count > 50) {
    out = { topic: 'bench/alerts/' + dev, payload: JSON.stringify({ device: dev, mean: s.sum / s.count }) };
  }
  s = { start: start, sum: 0, count: 0 };
  w[dev] = s;
}
s.sum += v; s.count += 1;
context.set('w', w);
if (n === TOTAL) { node.send({ topic: 'bench/done', payload: String(n) }); }
return out;
"#;

/// `node-red` on the PATH, or `$NODE_RED`.
fn node_red_command() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NODE_RED") {
        return Some(PathBuf::from(p));
    }
    let ok = Command::new("node-red")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    ok.then(|| PathBuf::from("node-red"))
}

/// The same job through Node-RED: `messages` JSON readings from 100
/// devices through a Mosquitto into the flow; messages per second until
/// the flow has seen them all.
async fn node_red(messages: usize) -> Peer {
    let name = "Node-RED (per-device 1 s window and threshold flow, JSON over MQTT)".to_string();
    let peer = |rate: Option<f64>, note: String| Peer {
        name: name.clone(),
        messages_per_s: rate,
        note,
    };
    let Some(command) = node_red_command() else {
        return peer(
            None,
            "not installed (npm install -g node-red, or set NODE_RED, to compare)".into(),
        );
    };
    let broker = match lossless_mosquitto() {
        Ok(m) => m,
        Err(note) => return peer(None, note),
    };
    let port = broker.port();
    let (Ok(dir), Ok(http)) = (tempfile::tempdir(), free_port()) else {
        return peer(None, "no temp dir or port".into());
    };
    let function = NODE_RED_FUNCTION.replace("TOTAL", &messages.to_string());
    let flow = serde_json::json!([
        { "id": "b1", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1",
          "port": port.to_string(), "clientid": "nodered-bench", "autoConnect": true,
          "usetls": false, "protocolVersion": "4", "keepalive": "60", "cleansession": true },
        { "id": "t1", "type": "tab", "label": "bench" },
        { "id": "in1", "type": "mqtt in", "z": "t1", "topic": "eddy/v1/+/telemetry", "qos": "1",
          "datatype": "json", "broker": "b1", "nl": false, "rap": true, "rh": 0, "inputs": 0,
          "wires": [["fn1"]] },
        { "id": "fn1", "type": "function", "z": "t1", "name": "window", "func": function,
          "outputs": 1, "wires": [["out1"]] },
        { "id": "out1", "type": "mqtt out", "z": "t1", "topic": "", "qos": "0",
          "retain": "false", "broker": "b1", "wires": [] }
    ]);
    if std::fs::write(dir.path().join("flows.json"), flow.to_string()).is_err() {
        return peer(None, "cannot write the flow".into());
    }
    let node_red = ChildGuard::spawn(
        Command::new(&command)
            .arg("--userDir")
            .arg(dir.path())
            .arg("--port")
            .arg(http.to_string())
            .arg("flows.json")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let Ok(_node_red) = node_red else {
        return peer(None, format!("{} did not start", command.display()));
    };

    let url = broker_url(broker.addr());
    let client = publisher(&url, "nodered-driver", 4096);
    let stop = CancellationToken::new();
    let _stop_subscriber = stop.clone().drop_guard();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let subscribed = watch(
        &url,
        clean_session("nodered-results", "bench/#"),
        stop,
        move |p| {
            let _ = tx.send((p.topic.clone(), Instant::now()));
        },
    );
    if subscribed.wait(Duration::from_secs(5)).await.is_err() {
        return peer(None, "the result subscriber did not connect".into());
    }
    // Warm up until the flow answers (it connects to the broker after start).
    let ready_by = Instant::now() + Duration::from_secs(60);
    let mut ready = false;
    while !ready && Instant::now() < ready_by {
        let _ = client
            .publish("eddy/v1/warmup/telemetry", QoS::AtLeastOnce, false, "{}")
            .await;
        if let Ok(Some((topic, _))) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
        {
            ready = topic == "bench/ready";
        }
    }
    if !ready {
        return peer(None, "the flow did not answer within 60 s".into());
    }
    while rx.try_recv().is_ok() {}
    let t0 = Instant::now();
    let ts0 = 1_700_000_000_000i64;
    for i in 0..messages {
        let device = format!("nr-{:03}", i % 100);
        let payload = serde_json::json!({
            "temperature": if (i / 100) % 20 < 3 { 80.0 } else { 22.0 },
            "ts": ts0 + (i / 100) as i64 * 50,
        });
        if !send_json(&client, &device, &payload).await {
            break;
        }
    }
    let done_by = tokio::time::Instant::now() + Duration::from_secs(300);
    while let Ok(Some((topic, at))) = tokio::time::timeout_at(done_by, rx.recv()).await {
        if topic == "bench/done" {
            let rate = messages as f64 / at.duration_since(t0).as_secs_f64();
            return peer(
                Some(rate),
                format!("{messages} JSON messages from 100 devices, no durable storage"),
            );
        }
    }
    peer(
        None,
        "the flow did not see every message within 300 s".into(),
    )
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// An 800 x 500 white SVG canvas at `path`.
fn canvas(
    path: &Path,
) -> Result<DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// The legend box every plot draws, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn plot(report: &BenchReport, out: &Path) -> PlotResult {
    throughput_plot(report, &out.join("throughput.svg"))?;
    latency_plot(report, &out.join("latency_cdf.svg"))?;
    rss_plot(report, &out.join("rss.svg"))?;
    Ok(())
}

fn throughput_plot(report: &BenchReport, path: &Path) -> PlotResult {
    let root = canvas(path)?;
    let max_x = report.levels.iter().map(|l| l.devices).max().unwrap_or(1) as f64;
    let ceiling = report
        .peers
        .iter()
        .find_map(|p| p.messages_per_s)
        .unwrap_or(0.0);
    let max_y = report
        .levels
        .iter()
        .map(|l| l.readings_per_s.max(l.offered_per_s))
        .fold(ceiling, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput against fleet size", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("devices")
        .y_desc("per second")
        .draw()?;
    let stored: Vec<(f64, f64)> = report
        .levels
        .iter()
        .map(|l| (l.devices as f64, l.readings_per_s))
        .collect();
    chart
        .draw_series(LineSeries::new(stored.clone(), BLUE.stroke_width(2)))?
        .label("gateway: readings stored/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(stored.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
    if ceiling > 0.0 {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, ceiling), (max_x * 1.05, ceiling)],
                RED.stroke_width(1),
            ))?
            .label("mosquitto pass-through ceiling (messages/s)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    if let Some(node_red) = report.peers.get(1).and_then(|p| p.messages_per_s) {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, node_red), (max_x * 1.05, node_red)],
                GREEN.stroke_width(1),
            ))?
            .label("Node-RED flow, same job without storage (messages/s)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    }
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present()?;
    Ok(())
}

fn latency_plot(report: &BenchReport, path: &Path) -> PlotResult {
    let root = canvas(path)?;
    let max_x = report
        .levels
        .iter()
        .map(|l| l.latency_ms.max)
        .fold(1.0, f64::max)
        * 1.05;
    let min_x = report
        .levels
        .iter()
        .flat_map(|l| l.latency_cdf.iter().map(|p| p.0))
        .fold(max_x, f64::min)
        .max(0.1)
        * 0.9;
    // Log scale: a saturated level's seconds and the others' milliseconds
    // on one plot.
    let mut chart = ChartBuilder::on(&root)
        .caption("Alert latency (CDF)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min_x..max_x).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms from the crossing sample's publication to the alert (log scale)")
        .y_desc("fraction")
        .draw()?;
    level_lines(&mut chart, report, |l| l.latency_cdf.clone())?;
    root.present()?;
    Ok(())
}

/// One line per fleet size, in palette colours, with a legend.
fn level_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    report: &BenchReport,
    points: impl Fn(&Level) -> Vec<(f64, f64)>,
) -> PlotResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, l) in report.levels.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points(l), color.stroke_width(2)))?
            .label(format!("{} devices", l.devices))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(chart, SeriesLabelPosition::LowerRight)
}

fn rss_plot(report: &BenchReport, path: &Path) -> PlotResult {
    let root = canvas(path)?;
    let max_x = report
        .levels
        .iter()
        .flat_map(|l| l.rss_mb.iter().map(|r| r.0))
        .fold(1.0, f64::max);
    let max_y = report
        .levels
        .iter()
        .map(|l| l.max_rss_mb)
        .fold(1.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption("Gateway resident memory over time", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MB")
        .draw()?;
    level_lines(&mut chart, report, |l| l.rss_mb.clone())?;
    root.present()?;
    Ok(())
}

/// The summary table printed at the end.
pub fn summary(report: &BenchReport) -> String {
    let mut out = format!(
        "machine: {}\nfleet rate {} Hz per device, {} s per level\n\n\
         {:>8} {:>12} {:>12} {:>6} {:>9} {:>9} {:>9} {:>6} {:>8}\n",
        report.machine,
        report.rate_hz,
        report.duration_s,
        "devices",
        "offered/s",
        "stored/s",
        "loss",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu",
        "RSS MB"
    );
    for l in &report.levels {
        out.push_str(&format!(
            "{:>8} {:>12.0} {:>12.0} {:>6} {:>9.2} {:>9.2} {:>9.2} {:>5.0}% {:>8.1}\n",
            l.devices,
            l.offered_per_s,
            l.readings_per_s,
            if l.zero_loss { "none" } else { "LOSS" },
            l.latency_ms.p50,
            l.latency_ms.p99,
            l.latency_ms.max,
            l.cpu_share * 100.0,
            l.max_rss_mb
        ));
    }
    out.push('\n');
    for p in &report.peers {
        match p.messages_per_s {
            Some(rate) => {
                out.push_str(&format!(
                    "{}: {:.0} messages/s ({})\n",
                    p.name, rate, p.note
                ));
                // The highest level stored without loss, as frames (one
                // broker message each) per second.
                if let Some(best) = report
                    .levels
                    .iter()
                    .filter(|l| l.zero_loss)
                    .max_by(|a, b| a.readings_per_s.total_cmp(&b.readings_per_s))
                {
                    let frames = best.readings_per_s / 3.0;
                    let peer = p.name.split(" (").next().unwrap_or(&p.name);
                    out.push_str(&format!(
                        "  gateway at {} devices: {:.0} frames/s stored without loss = {:.2}x \
                         {peer}, p99 alert latency {:.0} ms\n",
                        best.devices,
                        frames,
                        frames / rate,
                        best.latency_ms.p99
                    ));
                }
            }
            None => out.push_str(&format!("{}: {}\n", p.name, p.note)),
        }
    }
    out
}
