//! Serial links (UART, USB serial): each configured port is bridged to the
//! broker, so devices on a wire get exactly what devices on MQTT get.
//!
//! Uplink: bytes -> COBS + CRC frame decoder -> `Telemetry` frames are
//! published on `{prefix}/{device}/telemetry` (QoS 1), where the ingest
//! pipeline admits them exactly once like any other, and update reports
//! (`OtaStatus`) on `{prefix}/{device}/ota/status`; bad frames are
//! counted and skipped, never fatal. Downlink: the bridge subscribes to
//! `{prefix}/+/ack`, `{prefix}/+/cmd` and `{prefix}/+/ota` (offers and
//! chunks) and writes the frames for the
//! devices it has heard on this port back to the port, framed. A port that
//! fails or disappears (a USB adapter unplugged) is reopened with backoff;
//! the device's backlog covers the gap.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use eddy_mqtt::{AsyncClient, Connector, Delivery, Pump, QoS};
use eddy_proto::link::{FrameDecoder, MAX_WIRE_LEN, encode_framed};
use eddy_proto::{Frame, MAX_FRAME_LEN, topic};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::BrokerUrl;
use crate::sinks::backoff;
use crate::stats::{self, Stats};
use crate::supervisor::{RestartPolicy, supervise};

/// Device-bound messages queued between the MQTT client and the port;
/// when full, the client stops reading until the port takes them.
const DOWNLINK_QUEUE: usize = 64;

/// Most distinct devices one port carries (a multi-drop bus); frames of
/// further devices are counted and dropped.
pub const MAX_DEVICES_PER_PORT: usize = 64;

/// One serial port, as configured in `[[serial]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// `/dev/ttyUSB0`, `/dev/serial/by-id/...` (stable across replugging).
    pub path: PathBuf,
    #[serde(default = "SerialConfig::default_baud")]
    pub baud: u32,
}

impl SerialConfig {
    fn default_baud() -> u32 {
        115_200
    }
}

/// Bridges `port` to the broker until `shutdown`, under the supervisor.
pub fn spawn(
    port: SerialConfig,
    broker: &BrokerUrl,
    prefix: &str,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let bridge = Arc::new(Bridge {
        port,
        broker: broker.clone(),
        prefix: prefix.to_string(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
    });
    supervise(
        "serial",
        RestartPolicy::default(),
        stats,
        shutdown,
        move || bridge.clone().run(),
    )
}

#[derive(Debug)]
struct Bridge {
    port: SerialConfig,
    broker: BrokerUrl,
    prefix: String,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

/// What ended a connected stretch of the port.
enum PortEnd {
    Shutdown,
    Failed(String),
}

impl Bridge {
    fn client_id(&self) -> String {
        let path: String = self
            .port
            .path
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let id = format!("eddy-serial{path}");
        id.chars().take(64).collect()
    }

    async fn run(self: Arc<Self>) -> Result<(), std::convert::Infallible> {
        // Subscribed again at every connection: the session is clean.
        let pump = [topic::ACK, topic::COMMAND, topic::OTA]
            .into_iter()
            .fold(Pump::new(), |pump, leaf| {
                pump.subscribe(format!("{}/+/{leaf}", self.prefix), QoS::AtLeastOnce)
            })
            .reconnect(Duration::from_millis(200), Duration::from_millis(200));
        let (tx, mut downlink) = mpsc::channel(DOWNLINK_QUEUE);
        let stop = self.shutdown.child_token();
        let _stop_pump = stop.clone().drop_guard();
        // The session stays up while the port is away.
        let (client, _pump) = Connector::new(&self.broker, self.client_id()).spawn(&pump, tx, stop);
        let mut devices = HashSet::new();
        let mut failures = 0u32;
        let path = self.port.path.display().to_string();
        loop {
            match tokio_serial::new(&path, self.port.baud).open_native_async() {
                Ok(port) => {
                    stats::add(&self.stats.serial_opens, 1);
                    info!(port = %path, baud = self.port.baud, "serial port open");
                    failures = 0;
                    match self
                        .connected(port, &client, &mut downlink, &mut devices)
                        .await
                    {
                        PortEnd::Shutdown => return Ok(()),
                        PortEnd::Failed(reason) => {
                            stats::add(&self.stats.serial_port_errors, 1);
                            warn!(port = %path, %reason, "serial port lost; reopening");
                        }
                    }
                }
                Err(e) => {
                    if failures == 0 {
                        warn!(port = %path, error = %e, "serial port cannot be opened; retrying");
                    }
                    failures = failures.saturating_add(1);
                }
            }
            let delay = backoff(failures, Duration::from_millis(100), Duration::from_secs(5));
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = self.shutdown.cancelled() => return Ok(()),
                    // Acks are cumulative and commands are re-sent by
                    // their sender; with the port away they are dropped.
                    Some(delivery) = downlink.recv() => {
                        if let Delivery::Message(_) = delivery {
                            stats::add(&self.stats.serial_downlink_dropped, 1);
                        }
                    }
                }
            }
        }
    }

    /// Runs while the port is open.
    async fn connected(
        &self,
        mut port: SerialStream,
        client: &AsyncClient,
        downlink: &mut mpsc::Receiver<Delivery>,
        devices: &mut HashSet<String>,
    ) -> PortEnd {
        let mut decoder = FrameDecoder::new();
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                read = port.read(&mut buf) => match read {
                    Ok(0) => return PortEnd::Failed("end of stream".into()),
                    Ok(n) => decoder.feed(&buf[..n], |r| self.uplink(r, client, devices)),
                    Err(e) => return PortEnd::Failed(e.to_string()),
                },
                Some(delivery) = downlink.recv() => {
                    if let Delivery::Message(p) = delivery
                        && let Err(e) = self.downlink(&p.topic, &p.payload, devices, &mut port).await
                    {
                        return PortEnd::Failed(e.to_string());
                    }
                }
                () = self.shutdown.cancelled() => return PortEnd::Shutdown,
            }
        }
    }

    fn uplink(
        &self,
        frame: Result<Frame, eddy_proto::link::LinkError>,
        client: &AsyncClient,
        devices: &mut HashSet<String>,
    ) {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                stats::add(&self.stats.serial_bad_frames, 1);
                debug!(port = %self.port.path.display(), error = %e, "bad serial frame skipped");
                return;
            }
        };
        let device = frame.device().to_string();
        if !devices.contains(&device) {
            if devices.len() >= MAX_DEVICES_PER_PORT {
                stats::add(&self.stats.serial_bad_frames, 1);
                return;
            }
            info!(port = %self.port.path.display(), %device, "device on serial port");
            devices.insert(device.clone());
        }
        let leaf = match &frame {
            Frame::Telemetry(_) => topic::TELEMETRY,
            Frame::OtaStatus(_) => topic::OTA_STATUS,
            // Its board and firmware, for the campaigns' checks.
            Frame::Hello(_) => topic::HELLO,
            // Nothing else flows uplink.
            _ => return,
        };
        let mut out = [0u8; MAX_FRAME_LEN];
        let Ok(bytes) = eddy_proto::encode(&frame, &mut out) else {
            stats::add(&self.stats.serial_bad_frames, 1);
            return;
        };
        let topic = format!("{}/{device}/{leaf}", self.prefix);
        // A Hello is the device's current board and firmware: retained, so
        // the campaign runner has it whenever it subscribes.
        let retain = matches!(frame, Frame::Hello(_));
        match client.try_publish(topic, QoS::AtLeastOnce, retain, bytes.to_vec()) {
            Ok(()) => stats::add(&self.stats.serial_frames, 1),
            // The device keeps it and sends it again.
            Err(_) => stats::add(&self.stats.serial_uplink_dropped, 1),
        }
    }

    async fn downlink(
        &self,
        topic: &str,
        payload: &[u8],
        devices: &HashSet<String>,
        port: &mut SerialStream,
    ) -> std::io::Result<()> {
        let Some((device, _)) = eddy_proto::topic::split_device_topic(&self.prefix, topic) else {
            return Ok(());
        };
        if !devices.contains(device) {
            return Ok(());
        }
        let Ok(frame) = eddy_proto::decode(payload) else {
            stats::add(&self.stats.serial_downlink_dropped, 1);
            return Ok(());
        };
        let mut out = [0u8; MAX_WIRE_LEN];
        let Ok(bytes) = encode_framed(&frame, &mut out) else {
            stats::add(&self.stats.serial_downlink_dropped, 1);
            return Ok(());
        };
        port.write_all(bytes).await?;
        stats::add(&self.stats.serial_downlink, 1);
        Ok(())
    }
}
