//! One simulated device: the firmware core, simulated sensors, MQTT link.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_firmware::{Node, Outputs, Readings, Sensor, SensorError};
use eddy_proto::{Frame, MAX_FRAME_LEN, Reading, topic};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::SimError;
use crate::sim::Waveform;

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
}

/// What a device did, counted on the device side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceReport {
    pub device: String,
    /// Telemetry frames published (sequence numbers 0..sent).
    pub sent: u32,
    /// Of those, frames the broker acknowledged (PUBACK).
    pub acked: u32,
    /// Readings in the published frames.
    pub readings: u64,
    /// Commands received and applied.
    pub commands_applied: u32,
    /// Commands received and refused.
    pub commands_refused: u32,
}

/// The simulated board's digital outputs, reported back as a reading
/// (`outputs`, a bit mask) so a command's effect is visible upstream.
#[derive(Debug, Clone, Default)]
struct SimOutputs(Arc<AtomicU32>);

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

/// A device ready to run.
#[derive(Debug)]
pub struct SimDevice {
    config: SimDeviceConfig,
    node: Node,
    sensors: Vec<Waveform>,
    outputs: SimOutputs,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SimDevice {
    pub fn new(config: SimDeviceConfig, sensors: Vec<Waveform>) -> Result<Self, SimError> {
        let node = Node::new(&config.device, config.interval_ms).map_err(|e| SimError::Setup {
            device: config.device.clone(),
            reason: format!("{e:?}"),
        })?;
        Ok(Self {
            config,
            node,
            sensors,
            outputs: SimOutputs::default(),
        })
    }

    /// Runs until the configured duration passed or `stop` fires, then
    /// waits (bounded) for the broker to acknowledge what was sent.
    pub async fn run(mut self, stop: CancellationToken) -> DeviceReport {
        let cfg = self.config.clone();
        let mut report = DeviceReport {
            device: cfg.device.clone(),
            ..DeviceReport::default()
        };
        let telemetry_topic = format!("{}/{}/{}", cfg.prefix, cfg.device, topic::TELEMETRY);
        let status_topic = format!("{}/{}/{}", cfg.prefix, cfg.device, topic::STATUS);
        let command_topic = format!("{}/{}/{}", cfg.prefix, cfg.device, topic::COMMAND);

        let mut options = MqttOptions::new(cfg.device.clone(), cfg.host.clone(), cfg.port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_inflight(100)
            .set_last_will(LastWill::new(
                &status_topic,
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        let (client, mut eventloop) = AsyncClient::new(options, 256);

        // The event loop runs on its own task; it reports PUBACKs and
        // hands commands over.
        let acked = Arc::new(AtomicU32::new(0));
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Vec<u8>>(16);
        let net_stop = CancellationToken::new();
        let net = {
            let acked = acked.clone();
            let net_stop = net_stop.clone();
            let device = cfg.device.clone();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        e = eventloop.poll() => e,
                        () = net_stop.cancelled() => return,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            // Commands are rare; if the node is behind, drop.
                            let _ = cmd_tx.try_send(p.payload.to_vec());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            debug!(%device, error = %e, "link down, reconnecting");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        // Status and the command subscription are queued before the first
        // connect and sent once it is up. Status is QoS 0 so every PUBACK
        // counted is a telemetry frame's.
        let _ = client
            .publish(&status_topic, QoS::AtMostOnce, true, "online")
            .await;
        let _ = client.subscribe(&command_topic, QoS::AtLeastOnce).await;

        let start = Instant::now();
        let deadline = start + cfg.duration;
        tokio::select! {
            () = tokio::time::sleep(cfg.start_offset) => {}
            () = stop.cancelled() => {}
        }
        let mut buf = [0u8; MAX_FRAME_LEN];
        while !stop.is_cancelled() {
            let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let wait = Duration::from_millis(self.node.due_in(now_ms));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                Some(payload) = cmd_rx.recv() => {
                    self.apply_command(&payload, &mut report);
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => break,
                () = stop.cancelled() => break,
            }
            let now_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let Some(telemetry) = self.sample(now_ms) else {
                continue;
            };
            let readings = telemetry.readings.len() as u64;
            let bytes = match eddy_proto::encode(&Frame::Telemetry(telemetry), &mut buf) {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    warn!(device = %cfg.device, error = %e, "frame not encodable");
                    continue;
                }
            };
            if client
                .publish(&telemetry_topic, QoS::AtLeastOnce, false, bytes)
                .await
                .is_err()
            {
                break;
            }
            report.sent += 1;
            report.readings += readings;
        }

        // Drain: give the broker time to acknowledge what is in flight.
        let drain_until = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::Relaxed) < report.sent && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report.acked = acked.load(Ordering::Relaxed);
        let _ = client
            .publish(&status_topic, QoS::AtMostOnce, true, "offline")
            .await;
        let _ = client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        net_stop.cancel();
        let _ = net.await;
        report
    }

    fn sample(&mut self, now_ms: u64) -> Option<eddy_proto::Telemetry> {
        let mut sensors: Vec<&mut dyn Sensor> = self
            .sensors
            .iter_mut()
            .map(|s| s as &mut dyn Sensor)
            .collect();
        sensors.push(&mut self.outputs);
        self.node.poll(now_ms, wall_ms(), &mut sensors)
    }

    fn apply_command(&mut self, payload: &[u8], report: &mut DeviceReport) {
        let outcome = eddy_proto::decode(payload)
            .map_err(|e| format!("{e}"))
            .and_then(|frame| {
                self.node
                    .handle(&frame, &mut self.outputs)
                    .map_err(|e| format!("{e:?}"))
            });
        match outcome {
            Ok(()) => report.commands_applied += 1,
            Err(reason) => {
                report.commands_refused += 1;
                warn!(device = %self.config.device, %reason, "command refused");
            }
        }
    }
}
