//! Scenario files: a fleet, a gateway, a timeline of faults, and the
//! expectations checked at the end.
//!
//! ```toml
//! name = "network-cut"
//! duration = "8s"                 # how long the devices sample
//!
//! [fleet]
//! devices = 10
//! rate = 10.0                     # samples per second per device
//! hot_every = 5                   # every 5th device overheats now and then
//! [[fleet.faults]]                # sensor faults on chosen devices
//! devices = "sim-0003"
//! kind = "stuck_at"               # drift, spike, stuck_at, dropout, step
//! from = "2s"
//! duration = "5s"
//!
//! [gateway]
//! config = """                    # eddy.toml text (no data_dir, [broker] or [http])
//! [engine]
//! window = "1s"
//! """
//!
//! [[timeline]]
//! at = "3s"
//! action = "cut"                  # cut, restore, blackhole, delay, kill_gateway,
//!                                 # term_gateway, restart_gateway, restart,
//!                                 # malformed, duplicate, reorder, reboot,
//!                                 # stop_broker, start_broker
//!
//! [[timeline]]                    # SIGTERM or SIGKILL and start again, 10 times
//! at = "4s"
//! action = "restart"
//! signal = "mixed"                # term, kill, or mixed (alternating)
//! repeat = 10
//! every = "2s"
//!
//! [expect]
//! no_loss = true                  # every frame stored exactly once
//! alerts = [{ rule = "overheat", devices = "sim-0000", within = "6s" }]
//! quiet = ["sim-0001"]            # no alert fires for these
//! max_rss_mb = 300
//! ```
//!
//! The gateway is the real `eddy` binary in a child process (so it can be
//! SIGKILLed), with its embedded broker; the devices reach the broker
//! through a [`Proxy`] the timeline controls. Alerts are watched on the
//! broker directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy_firmware_host::faults::Fault;
use eddy_firmware_host::{FleetConfig, FleetReport, run_fleet};
use eddy_gateway::config::BrokerUrl;
use eddy_mqtt::{Connector, Delivery, Discard, Pump, QoS};
use eddy_test_support::disk::{Tmpfs, fill};
use eddy_test_support::mqtt::{Subscription, watch};
use eddy_test_support::process::GatewayProcess;
use eddy_test_support::{Mosquitto, exactly_once, free_port, http, json_device};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::proxy::{Mode, Proxy};

/// Why a scenario could not run (not a failed expectation).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("scenario `{0}`: {1}")]
    Invalid(String, String),
    #[error("the eddy binary: {0}")]
    Binary(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("fleet: {0}")]
    Fleet(String),
    #[error("store: {0}")]
    Store(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    pub fleet: FleetSpec,
    #[serde(default)]
    pub gateway: GatewaySpec,
    #[serde(default)]
    pub timeline: Vec<Step>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    pub devices: usize,
    pub rate: f64,
    #[serde(default)]
    pub hot_every: Option<usize>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Devices whose clock is off: `{ devices = "sim-0001", offset_ms = -30000 }`.
    #[serde(default)]
    pub clock_skew: Vec<SkewSpec>,
    /// JSON devices (`json-0000`, ...) beside the Eddy-frame ones: each
    /// publishes `{"n": <count>}` at QoS 1, `rate` times a second, through
    /// the same link, resending what was not acknowledged (see
    /// `eddy_test_support::json_device`).
    #[serde(default)]
    pub json_devices: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkewSpec {
    pub devices: String,
    pub offset_ms: i64,
}

fn default_seed() -> u64 {
    1
}

/// A sensor fault on the temperature of the devices `devices` matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub devices: String,
    pub kind: String,
    #[serde(default, with = "humantime_serde")]
    pub from: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Drift per hour, spike magnitude or step size.
    #[serde(default)]
    pub value: Option<f64>,
}

impl FaultSpec {
    fn fault(&self) -> Result<Fault, String> {
        let ms = |d: Option<Duration>, what: &str| {
            d.map(|d| d.as_millis() as u64)
                .ok_or_else(|| format!("fault `{}` needs `{what}`", self.kind))
        };
        let value = || {
            self.value
                .ok_or_else(|| format!("fault `{}` needs `value`", self.kind))
        };
        Ok(match self.kind.as_str() {
            "drift" => Fault::Drift { per_hour: value()? },
            "spike" => Fault::Spike {
                every_ms: ms(self.every, "every")?,
                magnitude: value()?,
            },
            "stuck_at" => Fault::StuckAt {
                from_ms: ms(self.from, "from")?,
                duration_ms: ms(self.duration, "duration")?,
            },
            "dropout" => Fault::Dropout {
                from_ms: ms(self.from, "from")?,
                duration_ms: ms(self.duration, "duration")?,
            },
            "step" => Fault::Step {
                at_ms: ms(self.from, "from")?,
                delta: value()?,
            },
            other => {
                return Err(format!(
                    "unknown fault `{other}`: drift, spike, stuck_at, dropout or step"
                ));
            }
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// `eddy.toml` text for the gateway under test.
    #[serde(default)]
    pub config: String,
    /// `embedded` (default): the gateway's own broker; `mosquitto`: an
    /// external Mosquitto the testbench runs (and can stop and start).
    #[serde(default)]
    pub broker: BrokerKind,
    /// Run an upstream Mosquitto behind its own proxy (link `upstream`)
    /// and point the gateway's `[upstream]` at it.
    #[serde(default)]
    pub upstream: bool,
    /// The data directory on a tmpfs of this size (`"24m"`), so that
    /// `fill_disk` can run it out of space (mounting needs root).
    #[serde(default)]
    pub data_dir_size: Option<String>,
}

/// Which connection a proxy step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Devices to the broker.
    #[default]
    Devices,
    /// The gateway to its upstream broker.
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    #[default]
    Embedded,
    Mosquitto,
}

/// One fault on the timeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    pub action: Action,
    /// For `delay`.
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// For `malformed`: how many bad messages.
    #[serde(default)]
    pub count: Option<usize>,
    /// For `duplicate` and `reorder`: how long frames are captured.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// For `reboot`: the devices told (an id, or a prefix ending in `*`).
    #[serde(default)]
    pub devices: Option<String>,
    /// For `cut`, `restore`, `blackhole`, `delay`: which link.
    #[serde(default)]
    pub link: Link,
    /// For `restart`: how the gateway is stopped (`term` by default).
    #[serde(default)]
    pub signal: Option<Signal>,
    /// The step runs this many times (default once), `every` apart.
    #[serde(default)]
    pub repeat: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
}

/// How a `restart` step stops the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// SIGTERM, as `systemctl restart` does: the gateway commits what it
    /// holds and stops.
    #[default]
    Term,
    /// SIGKILL: a crash or a power cut of the process.
    Kill,
    /// SIGTERM and SIGKILL by turns, SIGTERM first.
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Devices lose the broker: connections reset, new ones refused.
    Cut,
    /// Devices reach the broker again.
    Restore,
    /// Devices' traffic silently discarded.
    Blackhole,
    /// Devices' traffic held `delay` per chunk.
    Delay,
    /// SIGKILL the gateway.
    KillGateway,
    /// SIGTERM the gateway and wait for it to stop.
    TermGateway,
    /// Stop the gateway by `signal` and start it again at once.
    Restart,
    /// Fill the data directory's file system (`gateway.data_dir_size`)
    /// with a file: the store's writes fail with "no space".
    FillDisk,
    /// Remove that file: space returns.
    FreeDisk,
    /// Start the gateway again (after a kill).
    RestartGateway,
    /// Publish `count` malformed and oversized messages on telemetry topics.
    Malformed,
    /// For `duration`, publish every device frame a second time.
    Duplicate,
    /// Capture device frames for `duration`, then publish them again in
    /// reverse order.
    Reorder,
    /// Send `devices` a `Reboot` command: each drains its backlog and
    /// comes back with the next boot number.
    Reboot,
    /// Stop the external Mosquitto (SIGTERM; it keeps its persistence).
    StopBroker,
    /// Start it again on the same port.
    StartBroker,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Every frame every device sent stored exactly once, and every
    /// publish of a JSON device that the broker acknowledged stored.
    #[serde(default)]
    pub no_loss: bool,
    #[serde(default)]
    pub alerts: Vec<AlertExpectation>,
    /// Device patterns no alert may fire for.
    #[serde(default)]
    pub quiet: Vec<String>,
    /// The gateway's resident memory stays below this.
    #[serde(default)]
    pub max_rss_mb: Option<u64>,
    /// The gateway dropped at least this many duplicate frames (proof
    /// that `duplicate`/`reorder` steps reached it).
    #[serde(default)]
    pub min_duplicates_dropped: Option<u64>,
    /// Every outbox record reached the upstream broker: `seq` 0..=N
    /// without a gap, and nothing left unacknowledged.
    #[serde(default)]
    pub upstream_complete: bool,
    /// The store failed at least this many writes (proof that a
    /// `fill_disk` step reached it), by `eddy_store_write_failures_total`.
    #[serde(default)]
    pub min_store_write_failures: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertExpectation {
    pub rule: String,
    /// Device pattern; every device it matches must see the alert fire.
    pub devices: String,
    /// After the scenario started.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

impl Scenario {
    /// The timeline with repeated steps unrolled, in time order:
    /// `(at, step, repetition)`.
    pub fn steps(&self) -> Vec<(Duration, &Step, u32)> {
        let mut steps: Vec<(Duration, &Step, u32)> = self
            .timeline
            .iter()
            .flat_map(|s| {
                let every = s.every.unwrap_or_default();
                (0..s.repeat.unwrap_or(1).max(1)).map(move |i| (s.at + every * i, s, i))
            })
            .collect();
        steps.sort_by_key(|(at, ..)| *at);
        steps
    }

    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let file = |message: String| ScenarioError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        let scenario: Scenario = toml::from_str(&text).map_err(|e| file(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| ScenarioError::Invalid(self.name.clone(), m);
        if self.fleet.devices == 0 || !(self.fleet.rate > 0.0 && self.fleet.rate <= 100.0) {
            return Err(bad("fleet: devices >= 1 and rate in (0, 100]".into()));
        }
        for f in &self.fleet.faults {
            f.fault().map_err(bad)?;
        }
        let table: toml::Table = self
            .gateway
            .config
            .parse()
            .map_err(|e| bad(format!("gateway.config: {e}")))?;
        for key in ["data_dir", "broker", "http", "upstream"] {
            if table.contains_key(key) {
                return Err(bad(format!(
                    "gateway.config: `{key}` is set by the testbench"
                )));
            }
        }
        for s in &self.timeline {
            if s.repeat == Some(0) {
                return Err(bad(format!(
                    "{:?} at {:?}: `repeat` is at least 1",
                    s.action, s.at
                )));
            }
            if s.repeat.is_some_and(|n| n > 1) && s.every.is_none_or(|e| e.is_zero()) {
                return Err(bad(format!(
                    "{:?} at {:?}: a step with `repeat` needs `every` longer than 0",
                    s.action, s.at
                )));
            }
            if s.signal.is_some() && s.action != Action::Restart {
                return Err(bad(format!(
                    "{:?} at {:?}: `signal` is for `restart` steps",
                    s.action, s.at
                )));
            }
            if s.action == Action::Delay && s.delay.is_none() {
                return Err(bad("a `delay` step needs `delay`".into()));
            }
            if matches!(s.action, Action::FillDisk | Action::FreeDisk)
                && self.gateway.data_dir_size.is_none()
            {
                return Err(bad("fill_disk/free_disk need gateway.data_dir_size".into()));
            }
            if s.action == Action::Reboot && s.devices.is_none() {
                return Err(bad("a `reboot` step needs `devices`".into()));
            }
            if s.link == Link::Upstream && !self.gateway.upstream {
                return Err(bad(
                    "link = \"upstream\" needs gateway.upstream = true".into()
                ));
            }
            if matches!(s.action, Action::StopBroker | Action::StartBroker)
                && self.gateway.broker != BrokerKind::Mosquitto
            {
                return Err(bad(
                    "stop_broker/start_broker need gateway.broker = \"mosquitto\"".into(),
                ));
            }
        }
        if self.expect.upstream_complete && !self.gateway.upstream {
            return Err(bad("upstream_complete needs gateway.upstream = true".into()));
        }
        Ok(())
    }
}

/// One expectation's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// What a scenario run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: String,
    pub checks: Vec<Check>,
    pub frames_sent: u64,
    pub readings_sent: u64,
    pub alerts_seen: usize,
    /// Device restarts (boots beyond each device's first).
    pub reboots: usize,
    /// Times the gateway was started after the first.
    pub gateway_restarts: usize,
    /// Publishes of JSON devices the broker acknowledged.
    pub json_acked: usize,
    pub max_rss_kb: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// Where the `eddy` binary is: `$EDDY_BIN`, or next to this executable
/// (the same cargo target directory).
pub fn find_eddy() -> Result<PathBuf, ScenarioError> {
    if let Some(p) = std::env::var_os("EDDY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("eddy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(ScenarioError::Binary(
        "not found next to the testbench; build it (cargo build --bin eddy) or set EDDY_BIN".into(),
    ))
}

/// The gateway under test, as a child process.
pub(crate) struct GatewayChild {
    eddy: PathBuf,
    config: PathBuf,
    broker: SocketAddr,
    http: SocketAddr,
    process: Option<GatewayProcess>,
    /// The running process's id, for samplers.
    pid: Arc<Mutex<Option<u32>>>,
}

impl GatewayChild {
    /// Writes a config into `dir` from `config` (eddy.toml text without
    /// data_dir, [broker] or [http]) with free ports; returns the child
    /// (not started) and its data directory.
    /// `external`: the broker the gateway uses instead of its own;
    /// `upstream`: where it forwards results.
    pub(crate) fn prepare(
        dir: &Path,
        eddy: &Path,
        config: &str,
        external: Option<SocketAddr>,
        upstream: Option<SocketAddr>,
    ) -> Result<(Self, PathBuf), ScenarioError> {
        let upstream = upstream
            .map(|u| format!("[upstream]\nurl = \"mqtt://{u}\"\nclient_id = \"eddy-scenario\"\n"))
            .unwrap_or_default();
        let (broker_port, http_port) = (free_port()?, free_port()?);
        let (broker, broker_section) = match external {
            Some(addr) => (addr, format!("url = \"mqtt://{addr}\"")),
            None => {
                let addr = SocketAddr::from(([127, 0, 0, 1], broker_port));
                (addr, format!("listen = \"{addr}\""))
            }
        };
        let path = dir.join("eddy.toml");
        let data_dir = dir.join("data");
        std::fs::write(
            &path,
            format!(
                "data_dir = {:?}\n{config}\n[broker]\n{broker_section}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n{upstream}",
                data_dir.display().to_string(),
            ),
        )?;
        Ok((
            Self {
                eddy: eddy.to_path_buf(),
                config: path,
                broker,
                http: SocketAddr::from(([127, 0, 0, 1], http_port)),
                process: None,
                pid: Arc::default(),
            },
            data_dir,
        ))
    }

    pub(crate) fn broker(&self) -> SocketAddr {
        self.broker
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the gateway; returns once its HTTP and broker ports listen.
    pub(crate) fn start(&mut self) -> Result<(), ScenarioError> {
        let process = GatewayProcess::start(&self.eddy, &self.config, &[self.http, self.broker])?;
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = process.pid();
        self.process = Some(process);
        Ok(())
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// SIGTERM: the gateway commits what it holds and stops.
    pub(crate) fn stop(&mut self) -> Result<(), ScenarioError> {
        if let Some(mut p) = self.process.take()
            && let Some(status) = p.terminate()?
            && !status.success()
        {
            warn!(%status, "gateway did not stop cleanly");
        }
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

/// (when, rule, device, state) of every alert notification.
type Seen = Arc<Mutex<Vec<(Instant, String, String, String)>>>;

/// Alert notifications on `eddy/v1/alerts/#`.
fn watch_alerts(broker: SocketAddr, stop: CancellationToken) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    watch(
        &broker_url(broker),
        clean_session("testbench-alerts", "eddy/v1/alerts/#"),
        stop,
        move |p| {
            if p.retain {
                return;
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
                out.lock().unwrap_or_else(|e| e.into_inner()).push((
                    Instant::now(),
                    field("rule"),
                    field("device"),
                    field("state"),
                ));
            }
        },
    );
    seen
}

/// Every `seq` the upstream broker delivers (results forwarded by the
/// gateway carry their outbox offset as `seq`).
fn watch_upstream(broker: SocketAddr, stop: CancellationToken) -> Arc<Mutex<Vec<u64>>> {
    let seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let out = seqs.clone();
    watch(
        &broker_url(broker),
        clean_session("testbench-upstream", "#"),
        stop,
        move |p| {
            if p.retain {
                return;
            }
            if let Some(seq) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                .ok()
                .and_then(|v| v["seq"].as_u64())
            {
                out.lock().unwrap_or_else(|e| e.into_inner()).push(seq);
            }
        },
    );
    seqs
}

/// A broker address as the MQTT clients take it.
pub(crate) fn broker_url(addr: SocketAddr) -> BrokerUrl {
    BrokerUrl::tcp(addr.ip().to_string(), addr.port())
}

/// A watcher's subscription on a clean session: it sees what is published
/// while it is connected.
pub(crate) fn clean_session(client_id: &str, filter: &str) -> Subscription {
    Subscription {
        client_id: client_id.into(),
        filter: filter.into(),
        persistent: false,
    }
}

/// Samples the gateway's resident memory (KiB) every 200 ms.
fn watch_rss(pid: Arc<Mutex<Option<u32>>>, stop: CancellationToken) -> Arc<Mutex<u64>> {
    let max = Arc::new(Mutex::new(0u64));
    let out = max.clone();
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let current = *pid.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(kb) = current.and_then(rss_kb) {
                let mut m = out.lock().unwrap_or_else(|e| e.into_inner());
                *m = (*m).max(kb);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    max
}

/// `VmRSS` of a process, from `/proc` (Linux).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Captures device frames for `duration` and publishes them again: each
/// at once (`reorder` false), or all at the end in reverse order.
async fn replay_frames(broker: SocketAddr, duration: Duration, reorder: bool) {
    let stop = CancellationToken::new();
    let connector = Connector::new(
        &BrokerUrl::from(broker),
        format!("testbench-replay-{reorder}"),
    );
    let (client, eventloop) = connector.connect();
    let pump = Pump::new()
        .subscribe("eddy/v1/+/telemetry", QoS::AtLeastOnce)
        .reconnect(Duration::from_millis(50), Duration::from_millis(50));
    let end = tokio::time::Instant::now() + duration;
    let held = Arc::new(Mutex::new(Vec::new()));
    let capture = {
        let (client, held) = (client.clone(), held.clone());
        let mut seen = std::collections::HashSet::new();
        move |delivery: Delivery| match delivery {
            // Our own copies come back too: each frame is replayed once.
            Delivery::Message(p)
                if tokio::time::Instant::now() < end && seen.insert(p.payload.to_vec()) =>
            {
                if reorder {
                    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                    held.push((p.topic, p.payload.to_vec()));
                } else {
                    let _ =
                        client.try_publish(p.topic, QoS::AtLeastOnce, false, p.payload.to_vec());
                }
            }
            _ => {}
        }
    };
    let replayer = pump.spawn(client.clone(), eventloop, capture, stop.clone());
    tokio::time::sleep_until(end).await;
    let _ = client.unsubscribe("eddy/v1/+/telemetry").await;
    let held = std::mem::take(&mut *held.lock().unwrap_or_else(|e| e.into_inner()));
    for (topic, payload) in held.into_iter().rev() {
        let _ = client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await;
    }
    // A clean disconnect delivers what is queued first.
    stop.cancel();
    let _ = replayer.task.await;
}

/// Publishes a `Reboot` command to each device.
async fn command_reboot(broker: SocketAddr, devices: &[String]) {
    let stop = CancellationToken::new();
    let (client, sender) = Connector::new(&BrokerUrl::from(broker), "testbench-reboot")
        .request_capacity(devices.len() + 8)
        .spawn(&Pump::new(), Discard, stop.clone());
    if sender.ready.wait(Duration::from_secs(2)).await.is_err() {
        stop.cancel();
        return;
    }
    for (i, device) in devices.iter().enumerate() {
        let Ok(id) = eddy_proto::DeviceId::try_from(device.as_str()) else {
            continue;
        };
        let frame = eddy_proto::Frame::Command(eddy_proto::CommandFrame {
            device: id,
            id: i as u32,
            command: eddy_proto::Command::Reboot,
        });
        let mut buf = [0u8; 128];
        if let Ok(bytes) = eddy_proto::encode(&frame, &mut buf) {
            let _ = client
                .publish(
                    format!("eddy/v1/{device}/cmd"),
                    QoS::AtLeastOnce,
                    false,
                    bytes.to_vec(),
                )
                .await;
        }
    }
    // A clean disconnect delivers what is queued first.
    stop.cancel();
    let _ = sender.task.await;
}

async fn malformed(broker: SocketAddr, count: usize) {
    let stop = CancellationToken::new();
    let (client, sender) = Connector::new(&BrokerUrl::from(broker), "testbench-garbage")
        .request_capacity(count.max(1) + 8)
        .spawn(&Pump::new().stop_on_error(), Discard, stop.clone());
    let oversized = vec![b'{'; 128 * 1024];
    for i in 0..count {
        let payload = match i % 3 {
            0 => b"\x00\xffnot a frame".to_vec(),
            1 => b"{\"temperature\": [1, 2".to_vec(),
            _ => oversized.clone(),
        };
        let _ = client
            .publish(
                format!("eddy/v1/garbage-{i}/telemetry"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let _ = sender.task.await;
}

/// Runs a scenario to the end and checks its expectations.
pub async fn run(scenario: &Scenario, eddy: &Path) -> Result<Outcome, ScenarioError> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut mosquitto = match scenario.gateway.broker {
        BrokerKind::Mosquitto => Some(tokio::task::block_in_place(Mosquitto::start)?),
        BrokerKind::Embedded => None,
    };
    let upstream_broker = match scenario.gateway.upstream {
        true => Some(tokio::task::block_in_place(Mosquitto::start)?),
        false => None,
    };
    let upstream_proxy = match &upstream_broker {
        Some(m) => Some(Proxy::start(m.addr()).await?),
        None => None,
    };
    let upstream_stop = CancellationToken::new();
    let upstream_seqs = upstream_broker
        .as_ref()
        .map(|m| watch_upstream(m.addr(), upstream_stop.clone()));
    let (mut gateway, data_dir) = GatewayChild::prepare(
        dir.path(),
        eddy,
        &scenario.gateway.config,
        mosquitto.as_ref().map(Mosquitto::addr),
        upstream_proxy.as_ref().map(Proxy::addr),
    )?;
    let _tmpfs = match &scenario.gateway.data_dir_size {
        Some(size) => Some(tokio::task::block_in_place(|| {
            Tmpfs::mount(&data_dir, size)
        })?),
        None => None,
    };
    let filler = data_dir.join("filler");
    let broker = gateway.broker();
    let http = gateway.http;
    let pid = gateway.pid.clone();
    tokio::task::block_in_place(|| gateway.start())?;
    let stop = CancellationToken::new();
    let seen = watch_alerts(broker, stop.clone());
    let rss = watch_rss(pid, stop.clone());
    let proxy = Proxy::start(broker).await?;
    let fleet = FleetConfig {
        devices: scenario.fleet.devices,
        rate_hz: scenario.fleet.rate,
        duration: scenario.duration,
        host: "127.0.0.1".into(),
        port: proxy.addr().port(),
        hot_every: scenario.fleet.hot_every,
        seed: scenario.fleet.seed,
        faults: scenario
            .fleet
            .faults
            .iter()
            .filter_map(|f| Some((f.devices.clone(), f.fault().ok()?)))
            .collect(),
        drain_timeout: Duration::from_secs(30),
        clock_skew: scenario
            .fleet
            .clock_skew
            .iter()
            .map(|s| (s.devices.clone(), s.offset_ms))
            .collect(),
        ..FleetConfig::default()
    };
    let fleet_ids = fleet.clone();
    let t0 = Instant::now();
    let fleet_task = tokio::spawn(run_fleet(fleet, CancellationToken::new()));
    let json_stop = CancellationToken::new();
    let json_devices: Vec<(String, json_device::Acked)> = (0..scenario.fleet.json_devices)
        .map(|i| (format!("json-{i:04}"), json_device::Acked::default()))
        .collect();
    let json_tasks: Vec<_> = json_devices
        .iter()
        .map(|(id, acked)| {
            tokio::spawn(json_device::run(
                proxy.addr(),
                id.clone(),
                Some(scenario.fleet.rate),
                acked.clone(),
                json_stop.clone(),
            ))
        })
        .collect();
    let gateway = Arc::new(Mutex::new(gateway));
    let mut replays = Vec::new();
    let mut gateway_restarts = 0;
    for (at, step, repetition) in scenario.steps() {
        tokio::time::sleep_until((t0 + at).into()).await;
        info!(?at, action = ?step.action, repetition, "scenario step");
        let link = match (step.link, &upstream_proxy) {
            (Link::Upstream, Some(p)) => p,
            _ => &proxy,
        };
        match step.action {
            Action::Cut => link.set(Mode::Cut),
            Action::Restore => link.set(Mode::Pass),
            Action::Blackhole => link.set(Mode::Blackhole),
            Action::Delay => link.set(Mode::Delay(step.delay.unwrap_or_default())),
            Action::KillGateway => {
                let g = gateway.clone();
                tokio::task::block_in_place(|| g.lock().unwrap_or_else(|e| e.into_inner()).kill());
            }
            Action::TermGateway => {
                let g = gateway.clone();
                tokio::task::block_in_place(|| g.lock().unwrap_or_else(|e| e.into_inner()).stop())?;
            }
            Action::RestartGateway => {
                let g = gateway.clone();
                tokio::task::block_in_place(|| {
                    g.lock().unwrap_or_else(|e| e.into_inner()).start()
                })?;
                gateway_restarts += 1;
            }
            Action::Restart => {
                let kill = match step.signal.unwrap_or_default() {
                    Signal::Term => false,
                    Signal::Kill => true,
                    Signal::Mixed => repetition % 2 == 1,
                };
                let g = gateway.clone();
                tokio::task::block_in_place(|| {
                    let mut g = g.lock().unwrap_or_else(|e| e.into_inner());
                    if kill {
                        g.kill()
                    } else {
                        g.stop()?
                    }
                    g.start()
                })?;
                gateway_restarts += 1;
            }
            Action::Malformed => malformed(broker, step.count.unwrap_or(30)).await,
            Action::FillDisk => {
                let bytes = tokio::task::block_in_place(|| fill(&filler))?;
                info!(bytes, "data directory filled");
            }
            Action::FreeDisk => std::fs::remove_file(&filler)?,
            Action::StopBroker | Action::StartBroker => {
                if let Some(m) = mosquitto.as_mut() {
                    tokio::task::block_in_place(|| {
                        if step.action == Action::StopBroker {
                            m.stop();
                            Ok(())
                        } else {
                            m.launch()
                        }
                    })?;
                }
            }
            Action::Reboot => {
                let pattern = step.devices.clone().unwrap_or_default();
                let ids: Vec<String> = (0..scenario.fleet.devices)
                    .map(|i| fleet_ids.device_id(i))
                    .filter(|id| eddy_analytics::glob(&pattern, id))
                    .collect();
                command_reboot(broker, &ids).await;
            }
            Action::Duplicate | Action::Reorder => {
                let duration = step.duration.unwrap_or(Duration::from_secs(2));
                replays.push(tokio::spawn(replay_frames(
                    broker,
                    duration,
                    step.action == Action::Reorder,
                )));
            }
        }
    }
    let report = fleet_task
        .await
        .map_err(|e| ScenarioError::Fleet(e.to_string()))?
        .map_err(|e| ScenarioError::Fleet(e.to_string()))?;
    // The frame fleet samples for `duration` and then drains; JSON
    // devices stop when it is done and finish the publish in flight.
    tokio::time::sleep_until((t0 + scenario.duration).into()).await;
    json_stop.cancel();
    for t in json_tasks {
        if tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .is_err()
        {
            warn!("a JSON device did not finish its last publish within 20 s");
        }
    }
    for r in replays {
        let _ = r.await;
    }
    // Windows close and alerts go out within window + lateness.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let duplicates = http::scrape(http, "eddy_frames_duplicate_total").await;
    let write_failures = http::scrape(http, "eddy_store_write_failures_total").await;
    // The upstream sink catches up once its link is back.
    let mut upstream_lag = None;
    if scenario.expect.upstream_complete {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            upstream_lag = http::scrape(http, "eddy_sink_lag_records{sink=\"upstream\"}").await;
            if upstream_lag == Some(0) || tokio::time::Instant::now() > end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Delivered to the subscriber, too.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    tokio::task::block_in_place(|| gateway.lock().unwrap_or_else(|e| e.into_inner()).stop())?;
    upstream_stop.cancel();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let max_rss_kb = *rss.lock().unwrap_or_else(|e| e.into_inner());
    let mut checks = Vec::new();
    if scenario.expect.no_loss {
        let store = data_dir.join("eddy.redb");
        checks.push(tokio::task::block_in_place(|| no_loss(&store, &report))?);
        if !json_devices.is_empty() {
            checks.push(tokio::task::block_in_place(|| {
                json_no_loss(&store, &json_devices)
            })?);
        }
    }
    for a in &scenario.expect.alerts {
        checks.push(alert_within(a, &report, &seen, t0));
    }
    for pattern in &scenario.expect.quiet {
        let fired: Vec<String> = seen
            .iter()
            .filter(|(_, _, d, s)| s == "firing" && eddy_analytics::glob(pattern, d))
            .map(|(_, r, d, _)| format!("{r} for {d}"))
            .collect();
        checks.push(Check {
            name: format!("quiet {pattern}"),
            passed: fired.is_empty(),
            detail: if fired.is_empty() {
                "no alert".into()
            } else {
                format!("fired: {}", fired.join(", "))
            },
        });
    }
    if let Some(min) = scenario.expect.min_duplicates_dropped {
        checks.push(Check {
            name: format!("at least {min} duplicate frames dropped"),
            passed: duplicates.is_some_and(|d| d >= min),
            detail: duplicates.map_or("no /metrics".into(), |d| format!("{d} dropped")),
        });
    }
    if let Some(min) = scenario.expect.min_store_write_failures {
        checks.push(Check {
            name: format!("at least {min} store writes failed"),
            passed: write_failures.is_some_and(|f| f >= min),
            detail: write_failures.map_or("no /metrics".into(), |f| format!("{f} failed")),
        });
    }
    if scenario.expect.upstream_complete {
        let seqs = upstream_seqs
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
        let last = distinct.iter().next_back().copied();
        let contiguous = last.is_some_and(|l| distinct.len() as u64 == l + 1);
        checks.push(Check {
            name: "every outbox record reached upstream".into(),
            passed: contiguous && upstream_lag == Some(0),
            detail: format!(
                "{} records (seq 0..={}), {} resent, lag {}",
                distinct.len(),
                last.map_or("-".into(), |l| l.to_string()),
                seqs.len() - distinct.len(),
                upstream_lag.map_or("unknown".into(), |l| l.to_string())
            ),
        });
    }
    if let Some(max) = scenario.expect.max_rss_mb {
        checks.push(Check {
            name: format!("gateway RSS <= {max} MB"),
            passed: max_rss_kb <= max * 1024,
            detail: format!("max {:.1} MB", max_rss_kb as f64 / 1024.0),
        });
    }
    Ok(Outcome {
        scenario: scenario.name.clone(),
        checks,
        frames_sent: report.frames_sent(),
        readings_sent: report.readings_sent(),
        alerts_seen: seen.len(),
        reboots: report
            .devices
            .iter()
            .map(|d| d.boots.len().saturating_sub(1))
            .sum(),
        gateway_restarts,
        json_acked: json_devices
            .iter()
            .map(|(_, a)| a.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum(),
        max_rss_kb,
        elapsed: started.elapsed(),
    })
}

fn alert_within(
    a: &AlertExpectation,
    report: &FleetReport,
    seen: &[(Instant, String, String, String)],
    t0: Instant,
) -> Check {
    let devices: Vec<&str> = report
        .devices
        .iter()
        .map(|d| d.device.as_str())
        .filter(|d| eddy_analytics::glob(&a.devices, d))
        .collect();
    let mut late = Vec::new();
    let mut worst = Duration::ZERO;
    for d in &devices {
        let first = seen
            .iter()
            .filter(|(_, r, dev, s)| r == &a.rule && dev == d && s == "firing")
            .map(|(at, ..)| at.duration_since(t0))
            .min();
        match first {
            Some(after) if after <= a.within => worst = worst.max(after),
            Some(after) => late.push(format!("{d} after {after:.1?}")),
            None => late.push(format!("{d} never")),
        }
    }
    Check {
        name: format!("{} fires for {} within {:?}", a.rule, a.devices, a.within),
        passed: !devices.is_empty() && late.is_empty(),
        detail: if devices.is_empty() {
            "no device matches".into()
        } else if late.is_empty() {
            format!("{} devices, latest after {worst:.1?}", devices.len())
        } else {
            late.join(", ")
        },
    }
}

/// Every publish a JSON device saw acknowledged is in the store. Copies
/// (a publish resent after its PUBACK was lost with the connection) are
/// reported, not failed: QoS 1 is at-least-once and a JSON payload
/// carries no identity to drop them by.
fn json_no_loss(
    store: &Path,
    devices: &[(String, json_device::Acked)],
) -> Result<Check, ScenarioError> {
    let store =
        eddy_gateway::store::Store::open(store).map_err(|e| ScenarioError::Store(e.to_string()))?;
    let verdict = json_device::check(&store, devices)?;
    Ok(Check {
        name: "every acknowledged JSON publish stored".into(),
        passed: verdict.lost.is_empty() && verdict.acked > 0,
        detail: if verdict.lost.is_empty() {
            format!(
                "{} acknowledged by {} devices, all stored ({} stored twice after a lost PUBACK)",
                verdict.acked,
                devices.len(),
                verdict.copies
            )
        } else {
            format!(
                "{} not stored: {}",
                verdict.lost_count,
                verdict.lost.join("; ")
            )
        },
    })
}

/// Every device's frames `(boot, 0..sent)` stored exactly once, and as
/// many readings as it sent.
pub(crate) fn no_loss(store: &Path, report: &FleetReport) -> Result<Check, ScenarioError> {
    let store =
        eddy_gateway::store::Store::open(store).map_err(|e| ScenarioError::Store(e.to_string()))?;
    let verdict = exactly_once::check(&store, report);
    Ok(Check {
        name: "no sample lost or doubled".into(),
        passed: verdict.is_ok(),
        detail: match verdict {
            Ok(()) => format!(
                "{} frames, {} readings",
                report.frames_sent(),
                report.readings_sent()
            ),
            Err(problems) => problems.join("; "),
        },
    })
}
