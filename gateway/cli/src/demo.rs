//! `eddy demo`: the gateway with its embedded broker and a simulated fleet
//! in one process; alerts are printed as they arrive over MQTT, then a
//! one-screen summary.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use eddy_firmware_host::{FleetConfig, FleetReport, run_fleet};
use eddy_mqtt::{Connector, Delivery, Pump, QoS};
use tokio_util::sync::CancellationToken;

use eddy_gateway::Gateway;
use eddy_gateway::config::demo_config;
use eddy_gateway::stats::Snapshot;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub devices: usize,
    pub duration: Duration,
    pub rate_hz: f64,
    /// Keep the store here instead of a temporary directory.
    pub data_dir: Option<PathBuf>,
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub fleet: FleetReport,
    pub stats: Snapshot,
    pub stored_samples: u64,
    pub elapsed: Duration,
    pub alerts_seen: Vec<String>,
}

/// Runs the demo; `print` receives each alert line as it arrives.
pub async fn run(
    options: DemoOptions,
    mut print: impl FnMut(&str) + Send + 'static,
) -> anyhow::Result<DemoReport> {
    let temp;
    let data_dir = match &options.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    let config = demo_config(data_dir);
    let window = config.engine.window + config.engine.allowed_lateness;
    let prefix = config.ingest.topic_prefix.clone();
    let gateway = Gateway::start(config)
        .await
        .context("starting the gateway")?;
    let broker = gateway.broker().clone();

    // Watch alerts the way any MQTT client would.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watcher_stop = CancellationToken::new();
    let watcher = {
        let pump = Pump::new()
            .subscribe(format!("{prefix}/alerts/#"), QoS::AtLeastOnce)
            .reconnect(Duration::from_millis(100), Duration::from_millis(100));
        let (_, watcher) = Connector::new(&broker, "eddy-demo-watch")
            .keep_alive(Duration::from_secs(10))
            .request_capacity(64)
            .spawn(
                &pump,
                move |delivery: Delivery| {
                    if let Delivery::Message(p) = delivery {
                        let line = alert_line(&p.payload);
                        print(&line);
                        let _ = seen_tx.send(line);
                    }
                },
                watcher_stop.clone(),
            );
        watcher
            .ready
            .wait(Duration::from_secs(10))
            .await
            .context("subscribing to alerts")?;
        watcher.task
    };

    let started = Instant::now();
    let fleet = FleetConfig {
        devices: options.devices,
        rate_hz: options.rate_hz,
        duration: options.duration,
        host: broker.host.clone(),
        port: broker.port,
        prefix,
        ..FleetConfig::default()
    };
    let fleet = run_fleet(fleet, gateway.shutdown_token().child_token())
        .await
        .context("running the simulated fleet")?;

    // Under overload the backlog waits in the broker: let the gateway
    // catch up (bounded), then let the last windows close (event time
    // advances while the fleet is silent).
    let frames = fleet.frames_acked();
    let catch_up = Instant::now() + Duration::from_secs(60);
    while Instant::now() < catch_up && gateway.stats().snapshot().messages_accepted < frames {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(window + Duration::from_millis(600)).await;
    watcher_stop.cancel();
    let _ = watcher.await;

    let stats = gateway.stats().snapshot();
    let store = gateway.store().clone();
    let stored_samples = tokio::task::spawn_blocking(move || store.sample_count()).await??;
    gateway.shutdown().await.context("stopping the gateway")?;
    let mut alerts_seen = Vec::new();
    while let Ok(a) = seen_rx.try_recv() {
        alerts_seen.push(a);
    }
    Ok(DemoReport {
        fleet,
        stats,
        stored_samples,
        elapsed,
        alerts_seen,
    })
}

fn alert_line(payload: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    let n = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    format!(
        "ALERT {:<8} rule={} device={} {}={:.1} (threshold {})",
        s("state"),
        s("rule"),
        s("device"),
        s("metric"),
        n("value"),
        n("threshold"),
    )
}

/// Resident set size of this process in bytes (Linux), if known.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl DemoReport {
    /// The one-screen summary.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut out = String::new();
        let _ = writeln!(out, "\n=== eddy demo summary ===");
        let rows: [(&str, String); 14] = [
            ("devices", self.fleet.devices.len().to_string()),
            (
                "frames sent by devices",
                self.fleet.frames_sent().to_string(),
            ),
            ("messages received", s.messages_received.to_string()),
            (
                "frames retransmitted",
                self.fleet.frames_retransmitted().to_string(),
            ),
            ("duplicates dropped", s.frames_duplicate.to_string()),
            (
                "evicted, backlog full",
                self.fleet.frames_dropped().to_string(),
            ),
            (
                "messages rejected",
                (s.messages_malformed + s.messages_oversized + s.messages_unknown_topic)
                    .to_string(),
            ),
            ("samples stored (redb)", self.stored_samples.to_string()),
            ("windows closed", s.windows_closed.to_string()),
            (
                "alerts fired / resolved",
                format!("{} / {}", s.alerts_fired, s.alerts_resolved),
            ),
            ("late samples", s.samples_late.to_string()),
            (
                "ingest rate",
                format!("{:.0} messages/s", s.messages_received as f64 / secs),
            ),
            ("time to ingest all", format!("{secs:.1} s")),
            (
                "gateway RSS",
                rss_bytes().map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<26}{v:>18}");
        }
        let _ = writeln!(out, "{:<26}{:>18}", "frames lost", self.frames_lost());
        out
    }

    /// Frames the devices sent that the gateway did not store. Admission
    /// is exactly once per frame, so accepted messages count frames.
    pub fn frames_lost(&self) -> u64 {
        self.fleet
            .frames_sent()
            .saturating_sub(self.stats.messages_accepted)
    }
}
