//! One simulated device: the firmware core, simulated sensors, MQTT link.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_firmware::{Backlog, Link, Node, Outputs, Readings, Sensor, SensorError};
use eddy_mqtt::{AsyncClient, BrokerUrl, Connector, Delivery, Handler, Pump, QoS};
use eddy_proto::{Frame, MAX_FRAME_LEN, Reading, Telemetry, topic};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::SimError;
use crate::ota::{OtaReport, SimOta};
use crate::sim::SimSensor;

/// How one simulated device behaves and where it connects.
#[derive(Debug, Clone)]
pub struct SimDeviceConfig {
    pub device: String,
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub interval_ms: u32,
    /// Delay before the first sample, to spread a fleet's samples.
    pub start_offset: Duration,
    pub duration: Duration,
    /// How long to wait at the end for outstanding acks.
    pub drain_timeout: Duration,
    /// Added to the wall clock the device stamps its frames with (a
    /// skewed real-time clock).
    pub clock_offset_ms: i64,
}

/// What a device did, counted on the device side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceReport {
    pub device: String,
    /// Boot number of its last boot.
    pub boot: u32,
    /// Telemetry frames produced, over all boots (without a reboot:
    /// sequence numbers 0..sent of `boot`; see `boots`).
    pub sent: u32,
    /// Of those, frames the gateway confirmed as durably stored (its
    /// end-to-end `Ack`s), whatever broker sat in between.
    pub acked: u32,
    /// Frames evicted unacknowledged because the backlog was full. Those
    /// already sent may still be stored; the rest are lost.
    pub dropped: u32,
    /// Frames sent again after a reconnect or an ack timeout.
    pub retransmitted: u64,
    /// Readings in the produced frames.
    pub readings: u64,
    /// Commands received and applied.
    pub commands_applied: u32,
    /// Commands received and refused.
    pub commands_refused: u32,
    /// The update side, for devices that take updates.
    pub ota: Option<OtaReport>,
    /// Every boot and the frames it produced (sequence numbers
    /// `0..frames`), the last one being `boot`. More than one after a
    /// `Reboot` command.
    pub boots: Vec<(u32, u32)>,
}

/// The simulated board's digital outputs, reported back as a reading
/// (`outputs`, a bit mask) so a command's effect is visible upstream.
#[derive(Debug, Clone, Default)]
pub struct SimOutputs(Arc<AtomicU32>);

impl Outputs for SimOutputs {
    fn set(&mut self, pin: u8, on: bool) -> bool {
        if pin >= 32 {
            return false;
        }
        let bit = 1u32 << pin;
        if on {
            self.0.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.0.fetch_and(!bit, Ordering::Relaxed);
        }
        true
    }
}

impl Sensor for SimOutputs {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        out.push(Reading {
            metric: "outputs".try_into().map_err(|_| SensorError::BadData)?,
            value: f64::from(self.0.load(Ordering::Relaxed)),
        })
        .map_err(|_| SensorError::Full)
    }
}

/// Unacknowledged frames a simulated device holds (about 100 KiB).
pub const SIM_BACKLOG: usize = 128;
/// How long frames wait for the gateway's ack before they are sent again
/// (doubling after each timeout in a row, see `Backlog::timed_out`).
pub const RESEND_AFTER: Duration = Duration::from_secs(2);

/// What the link task hands the device loop.
#[derive(Debug)]
enum LinkEvent {
    /// A (re)connection: subscriptions are renewed, the backlog resent.
    Connected,
    /// The connection failed: frames wait in the backlog.
    Lost,
    /// A frame on the device's ack or command topic.
    Frame(Vec<u8>),
}

/// Hands the pump's deliveries to the device loop.
struct LinkEvents(mpsc::Sender<LinkEvent>);

impl Handler for LinkEvents {
    async fn deliver(&mut self, delivery: Delivery) -> ControlFlow<()> {
        match delivery {
            Delivery::Connected { .. } => {
                let _ = self.0.send(LinkEvent::Connected).await;
            }
            // Acks are cumulative, so one lost to a full queue is
            // repaired by the next.
            Delivery::Message(p) => {
                let _ = self.0.try_send(LinkEvent::Frame(p.payload.to_vec()));
            }
            Delivery::Lost { .. } => {
                let _ = self.0.send(LinkEvent::Lost).await;
            }
            Delivery::Sent { .. } | Delivery::Acked { .. } => {}
        }
        ControlFlow::Continue(())
    }
}

/// A device ready to run.
#[derive(Debug)]
pub struct SimDevice {
    config: SimDeviceConfig,
    node: Node,
    backlog: Box<Backlog<SIM_BACKLOG>>,
    sensors: Vec<SimSensor>,
    outputs: SimOutputs,
    ota: Option<SimOta>,
    report: DeviceReport,
    /// Frames of the current boot.
    boot_sent: u32,
    /// Of earlier boots' frames: acknowledged, and evicted unacknowledged.
    acked_before: u32,
    dropped_before: u32,
}

/// Longest a rebooting device waits for its backlog to be acknowledged.
const REBOOT_DRAIN: Duration = Duration::from_secs(3);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The firmware core's [`Link`] on an MQTT client: frames go to the
/// device's telemetry topic with QoS 1, without waiting.
#[derive(Debug)]
pub struct MqttLink<'a> {
    pub client: &'a AsyncClient,
    pub topic: &'a str,
}

/// Why [`MqttLink::send`] did not hand a frame over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttLinkError {
    Encode(eddy_proto::EncodeError),
    /// The client's request queue is full.
    Busy,
}

impl Link for MqttLink<'_> {
    type Error = MqttLinkError;

    fn send(&mut self, frame: &Frame) -> Result<(), Self::Error> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let bytes = eddy_proto::encode(frame, &mut buf).map_err(MqttLinkError::Encode)?;
        self.client
            .try_publish(self.topic, QoS::AtLeastOnce, false, bytes.to_vec())
            .map_err(|_| MqttLinkError::Busy)
    }
}

/// The topics of one device.
#[derive(Debug)]
struct Topics {
    telemetry: String,
    status: String,
    command: String,
    ack: String,
    ota: String,
    ota_status: String,
    hello: String,
}

impl Topics {
    fn new(prefix: &str, device: &str) -> Self {
        let t = |leaf: &str| format!("{prefix}/{device}/{leaf}");
        Self {
            telemetry: t(topic::TELEMETRY),
            status: t(topic::STATUS),
            command: t(topic::COMMAND),
            ack: t(topic::ACK),
            ota: t(topic::OTA),
            ota_status: t(topic::OTA_STATUS),
            hello: t(topic::HELLO),
        }
    }
}

impl SimDevice {
    pub fn new(config: SimDeviceConfig, sensors: Vec<SimSensor>) -> Result<Self, SimError> {
        // A fresh random boot number, as a board without flash would pick.
        let boot = rand::random::<u32>();
        let node =
            Node::new(&config.device, boot, config.interval_ms).map_err(|e| SimError::Setup {
                device: config.device.clone(),
                reason: format!("{e:?}"),
            })?;
        let report = DeviceReport {
            device: config.device.clone(),
            boot,
            ..DeviceReport::default()
        };
        Ok(Self {
            config,
            node,
            backlog: Box::new(Backlog::new(boot)),
            sensors,
            outputs: SimOutputs::default(),
            ota: None,
            report,
            boot_sent: 0,
            acked_before: 0,
            dropped_before: 0,
        })
    }

    /// A graceful restart after a `Reboot` command: sampling stopped and
    /// the backlog drained (bounded by `REBOOT_DRAIN`), the device comes
    /// back with the next boot number, sequence numbers from 0, an empty
    /// backlog and its configured interval.
    fn reboot(&mut self) -> Result<(), SimError> {
        let boot = self.report.boot.wrapping_add(1);
        let node = Node::new(&self.config.device, boot, self.config.interval_ms).map_err(|e| {
            SimError::Setup {
                device: self.config.device.clone(),
                reason: format!("{e:?}"),
            }
        })?;
        let dropped = self.backlog.dropped();
        self.dropped_before += dropped;
        self.acked_before += self
            .boot_sent
            .saturating_sub(dropped)
            .saturating_sub(self.backlog.len() as u32);
        self.report.boots.push((self.report.boot, self.boot_sent));
        self.report.boot = boot;
        self.node = node;
        *self.backlog = Backlog::new(boot);
        self.boot_sent = 0;
        debug!(device = %self.config.device, boot, "rebooted");
        Ok(())
    }

    /// The device also takes firmware updates on `{prefix}/{device}/ota`.
    pub fn with_ota(mut self, ota: SimOta) -> Self {
        self.ota = Some(ota);
        self
    }

    /// Runs until the configured duration passed or `stop` fires, then
    /// waits (bounded) until the gateway has acknowledged every frame.
    pub async fn run(mut self, stop: CancellationToken) -> DeviceReport {
        let cfg = self.config.clone();
        let topics = Topics::new(&cfg.prefix, &cfg.device);
        // The pump runs the event loop on its own task; it subscribes at
        // every (re)connection and hands acks and commands over.
        let mut pump = Pump::new()
            .subscribe(&topics.ack, QoS::AtMostOnce)
            .subscribe(&topics.command, QoS::AtLeastOnce)
            .reconnect(Duration::from_millis(200), Duration::from_millis(200));
        if self.ota.is_some() {
            pump = pump.subscribe(&topics.ota, QoS::AtLeastOnce);
        }
        let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(64);
        let net_stop = CancellationToken::new();
        let (client, net) =
            Connector::new(&BrokerUrl::tcp(cfg.host.clone(), cfg.port), &cfg.device)
                .keep_alive(Duration::from_secs(10))
                .inflight(100)
                .request_capacity(256)
                .last_will(&topics.status, "offline", QoS::AtLeastOnce, true)
                .spawn(&pump, LinkEvents(link_tx), net_stop.clone());

        let start = Instant::now();
        let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let deadline = start + cfg.duration;
        let run_ms = u64::try_from(cfg.duration.as_millis()).unwrap_or(u64::MAX);
        tokio::select! {
            () = tokio::time::sleep(cfg.start_offset) => {}
            () = stop.cancelled() => {}
        }
        let mut resend_check = tokio::time::interval(RESEND_AFTER / 4);
        let resend_ms = u64::try_from(RESEND_AFTER.as_millis()).unwrap_or(u64::MAX);
        let mut sampling = true;
        // Set once the loop has handled the connection (and resent the
        // backlog), so a frame sampled meanwhile is sent once, not twice.
        let mut connected = false;
        // Draining starts when sampling stops (deadline or `stop`).
        let mut drain_deadline = deadline + cfg.drain_timeout;
        // Set while a reboot waits for the backlog to drain.
        let mut rebooting: Option<Instant> = None;
        loop {
            if sampling && (stop.is_cancelled() || Instant::now() >= deadline) {
                sampling = false;
                drain_deadline = Instant::now() + cfg.drain_timeout;
            }
            if !sampling && (self.backlog.is_empty() || Instant::now() >= drain_deadline) {
                break;
            }
            if rebooting.is_none() && self.node.reboot_requested() {
                rebooting = Some(Instant::now() + REBOOT_DRAIN);
            }
            if let Some(until) = rebooting
                && (self.backlog.is_empty() || Instant::now() >= until)
            {
                rebooting = None;
                if let Err(e) = self.reboot() {
                    warn!(device = %cfg.device, error = %e, "reboot failed");
                    break;
                }
            }
            let sample_now = sampling && rebooting.is_none();
            let (wait, due_in_run) = if sample_now {
                let now = now_ms();
                let due_in = self.node.due_in(now);
                // By the schedule, not by when the timer fires: a sample due
                // at or after the end of the run is not taken, so a run
                // sends duration x rate frames however late timers are.
                (
                    Duration::from_millis(due_in),
                    now.saturating_add(due_in) < run_ms,
                )
            } else {
                (Duration::MAX, false)
            };
            let reboot_until = rebooting.unwrap_or(deadline);
            tokio::select! {
                () = tokio::time::sleep_until(reboot_until), if rebooting.is_some() => {}
                () = tokio::time::sleep(wait), if sample_now => {
                    if due_in_run {
                        self.sample_and_send(&client, &topics, connected, now_ms());
                    }
                }
                Some(event) = link_rx.recv() => match event {
                    LinkEvent::Connected => {
                        connected = true;
                        let _ = client.try_publish(&topics.status, QoS::AtMostOnce, true, "online");
                        if let Some(ota) = &self.ota {
                            // Board and version, for the gateway's checks
                            // of an image before a campaign; retained, so
                            // the campaign runner has it whenever it
                            // subscribes.
                            let mut buf = [0u8; MAX_FRAME_LEN];
                            if let Ok(bytes) = eddy_proto::encode(&ota.hello(), &mut buf) {
                                let _ = client.try_publish(
                                    &topics.hello,
                                    QoS::AtLeastOnce,
                                    true,
                                    bytes.to_vec(),
                                );
                            }
                        }
                        self.resend(&client, &topics, now_ms());
                    }
                    LinkEvent::Lost => connected = false,
                    LinkEvent::Frame(payload) => self.on_frame(&client, &topics, &payload, now_ms()),
                },
                _ = resend_check.tick() => {
                    if connected && self.backlog.timed_out(now_ms(), resend_ms) {
                        self.resend(&client, &topics, now_ms());
                    }
                }
                () = tokio::time::sleep_until(deadline), if sampling => {}
                () = tokio::time::sleep_until(drain_deadline), if !sampling => {}
            }
        }

        let mut report = self.report;
        report.ota = self.ota.as_ref().map(|o| o.report().clone());
        let dropped = self.backlog.dropped();
        report.dropped = self.dropped_before + dropped;
        report.acked = self.acked_before
            + self
                .boot_sent
                .saturating_sub(dropped)
                .saturating_sub(self.backlog.len() as u32);
        report.boots.push((report.boot, self.boot_sent));
        let _ = client
            .publish(&topics.status, QoS::AtMostOnce, true, "offline")
            .await;
        // A clean disconnect, after the status goes out.
        net_stop.cancel();
        let _ = net.task.await;
        report
    }

    fn publish(client: &AsyncClient, topic: &str, telemetry: &Telemetry) -> bool {
        let mut link = MqttLink { client, topic };
        match link.send(&Frame::Telemetry(telemetry.clone())) {
            Ok(()) => true,
            // A full request queue leaves the frame in the backlog; it goes
            // out with the next retransmission.
            Err(MqttLinkError::Busy) => false,
            Err(MqttLinkError::Encode(e)) => {
                warn!(device = %telemetry.device, error = %e, "frame not encodable");
                false
            }
        }
    }

    fn sample_and_send(
        &mut self,
        client: &AsyncClient,
        topics: &Topics,
        connected: bool,
        now_ms: u64,
    ) {
        let Some(mut telemetry) = self.sample(now_ms) else {
            return;
        };
        self.backlog.push(&mut telemetry, now_ms);
        self.report.sent += 1;
        self.boot_sent += 1;
        self.report.readings += telemetry.readings.len() as u64;
        if connected {
            Self::publish(client, &topics.telemetry, &telemetry);
        }
    }

    fn resend(&mut self, client: &AsyncClient, topics: &Topics, now_ms: u64) {
        for telemetry in self.backlog.resend(now_ms) {
            if !Self::publish(client, &topics.telemetry, telemetry) {
                break;
            }
            self.report.retransmitted += 1;
        }
    }

    fn sample(&mut self, now_ms: u64) -> Option<eddy_proto::Telemetry> {
        let mut sensors: Vec<&mut dyn Sensor> = self
            .sensors
            .iter_mut()
            .map(|s| s.as_mut() as &mut dyn Sensor)
            .collect();
        sensors.push(&mut self.outputs);
        let wall = wall_ms().saturating_add_signed(self.config.clock_offset_ms);
        self.node.poll(now_ms, wall, &mut sensors)
    }

    fn on_frame(&mut self, client: &AsyncClient, topics: &Topics, payload: &[u8], now_ms: u64) {
        let outcome = match eddy_proto::decode(payload) {
            Ok(Frame::Ack(ack)) => {
                if ack.device == self.node.device() {
                    self.backlog.ack(&ack, now_ms);
                }
                return;
            }
            Ok(frame @ (Frame::OtaOffer(_) | Frame::OtaChunk(_))) => {
                let Some(ota) = self.ota.as_mut() else {
                    return;
                };
                for answer in ota.handle(&frame, Instant::now()) {
                    let mut link = MqttLink {
                        client,
                        topic: &topics.ota_status,
                    };
                    // A lost report is repaired by the gateway's retry.
                    let _ = link.send(&answer);
                }
                return;
            }
            Ok(frame) => self
                .node
                .handle(&frame, &mut self.outputs)
                .map_err(|e| format!("{e:?}")),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => self.report.commands_applied += 1,
            Err(reason) => {
                self.report.commands_refused += 1;
                warn!(device = %self.config.device, %reason, "command refused");
            }
        }
    }
}
