//! A fleet of simulated devices.

use std::sync::Arc;
use std::time::Duration;

use eddy_proto::topic::DEFAULT_PREFIX;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::faults::{Fault, Faulty};
use crate::ota::{SimOta, SimOtaConfig};
use crate::replay::{Replay, Series};
use crate::sim::{Excursion, SimSensor, Waveform};
use crate::{DeviceReport, SimDevice, SimDeviceConfig, SimError};

/// A fleet: `devices` devices named `{id_prefix}-{i:04}`, each sampling
/// temperature and humidity `rate_hz` times a second for `duration`.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub devices: usize,
    pub rate_hz: f64,
    pub duration: Duration,
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub id_prefix: String,
    /// Every `hot_every`-th device (0, n, 2n, ...) runs hot: its temperature
    /// jumps by +55 °C for 3 s every 10 s, starting 1 s in.
    pub hot_every: Option<usize>,
    pub seed: u64,
    /// How long devices wait at the end for the gateway to acknowledge
    /// everything they sent.
    pub drain_timeout: Duration,
    /// Replace the simulated temperature with a recorded series.
    pub replay: Option<ReplaySource>,
    /// Devices also take firmware updates.
    pub ota: Option<SimOtaConfig>,
    /// Sensor faults on the temperature of the devices a pattern matches
    /// (a device id, or a prefix ending in `*`).
    pub faults: Vec<(String, Fault)>,
    /// Clock offsets (ms, added to the wall clock) of the devices a
    /// pattern matches.
    pub clock_skew: Vec<(String, i64)>,
}

/// A recorded series every device plays as its `temperature`.
#[derive(Debug, Clone)]
pub struct ReplaySource {
    pub series: Arc<Series>,
    /// Series milliseconds per board millisecond.
    pub speedup: f64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 10,
            rate_hz: 10.0,
            duration: Duration::from_secs(10),
            host: "127.0.0.1".into(),
            port: 1883,
            prefix: DEFAULT_PREFIX.into(),
            id_prefix: "sim".into(),
            hot_every: Some(5),
            seed: 1,
            drain_timeout: Duration::from_secs(15),
            replay: None,
            ota: None,
            faults: Vec::new(),
            clock_skew: Vec::new(),
        }
    }
}

/// A device id, or a prefix ending in `*`.
fn matches_id(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

impl FleetConfig {
    /// The clock offset of device `index`.
    pub fn clock_offset_ms(&self, index: usize) -> i64 {
        let id = self.device_id(index);
        self.clock_skew
            .iter()
            .filter(|(pattern, _)| matches_id(pattern, &id))
            .map(|(_, ms)| *ms)
            .sum()
    }

    pub fn device_id(&self, index: usize) -> String {
        format!("{}-{index:04}", self.id_prefix)
    }

    pub fn is_hot(&self, index: usize) -> bool {
        self.hot_every
            .is_some_and(|n| n > 0 && index.is_multiple_of(n))
    }

    /// Device `index`'s sensors: temperature (hot excursions, replay,
    /// faults as configured) and humidity.
    pub fn sensors(&self, index: usize) -> Result<Vec<SimSensor>, SimError> {
        let seed = self.seed.wrapping_mul(1_000_003).wrapping_add(index as u64);
        let setup = |metric: &str| SimError::Setup {
            device: self.device_id(index),
            reason: format!("bad metric name {metric}"),
        };
        let mut temperature =
            Waveform::new("temperature", 22.0, seed).ok_or_else(|| setup("temperature"))?;
        temperature.amplitude = 3.0;
        temperature.noise = 0.5;
        temperature.period_ms = 60_000;
        if self.is_hot(index) {
            temperature.excursion = Some(Excursion {
                first_ms: 1_000,
                every_ms: 10_000,
                duration_ms: 3_000,
                offset: 55.0,
            });
        }
        let mut humidity =
            Waveform::new("humidity", 45.0, seed ^ 0x5eed).ok_or_else(|| setup("humidity"))?;
        humidity.amplitude = 10.0;
        humidity.noise = 1.0;
        humidity.period_ms = 90_000;
        let temperature: SimSensor = match &self.replay {
            Some(r) => Box::new(
                Replay::new("temperature", r.series.clone(), r.speedup).map_err(|e| {
                    SimError::Setup {
                        device: self.device_id(index),
                        reason: e.to_string(),
                    }
                })?,
            ),
            None => Box::new(temperature),
        };
        let id = self.device_id(index);
        let faults: Vec<Fault> = self
            .faults
            .iter()
            .filter(|(pattern, _)| matches_id(pattern, &id))
            .map(|(_, f)| *f)
            .collect();
        let temperature: SimSensor = if faults.is_empty() {
            temperature
        } else {
            Box::new(Faulty::new(temperature, faults))
        };
        Ok(vec![temperature, Box::new(humidity)])
    }
}

/// What the fleet did, device by device.
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    pub devices: Vec<DeviceReport>,
}

impl FleetReport {
    pub fn frames_sent(&self) -> u64 {
        self.devices.iter().map(|d| u64::from(d.sent)).sum()
    }

    /// Frames the gateway confirmed as stored (end-to-end acks).
    pub fn frames_acked(&self) -> u64 {
        self.devices.iter().map(|d| u64::from(d.acked)).sum()
    }

    /// Frames the devices evicted unacknowledged (backlog overflow); those
    /// already sent may still be stored.
    pub fn frames_dropped(&self) -> u64 {
        self.devices.iter().map(|d| u64::from(d.dropped)).sum()
    }

    pub fn frames_retransmitted(&self) -> u64 {
        self.devices.iter().map(|d| d.retransmitted).sum()
    }

    pub fn readings_sent(&self) -> u64 {
        self.devices.iter().map(|d| d.readings).sum()
    }
}

/// Runs the fleet to completion (or until `stop`).
pub async fn run_fleet(
    config: FleetConfig,
    stop: CancellationToken,
) -> Result<FleetReport, SimError> {
    let interval_ms = (1000.0 / config.rate_hz.max(0.001))
        .round()
        .clamp(10.0, 3_600_000.0) as u32;
    let mut tasks = JoinSet::new();
    for index in 0..config.devices {
        let device = SimDevice::new(
            SimDeviceConfig {
                device: config.device_id(index),
                host: config.host.clone(),
                port: config.port,
                prefix: config.prefix.clone(),
                interval_ms,
                // Spread first samples evenly over one interval.
                start_offset: Duration::from_millis(
                    (u64::from(interval_ms) * index as u64) / config.devices.max(1) as u64,
                ),
                duration: config.duration,
                drain_timeout: config.drain_timeout,
                clock_offset_ms: config.clock_offset_ms(index),
            },
            config.sensors(index)?,
        )?;
        let device = match &config.ota {
            Some(ota) => device.with_ota(SimOta::new(&config.device_id(index), ota.clone())?),
            None => device,
        };
        tasks.spawn(device.run(stop.clone()));
    }
    let mut devices = Vec::with_capacity(config.devices);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(report) => devices.push(report),
            Err(e) => {
                return Err(SimError::Setup {
                    device: "?".into(),
                    reason: format!("device task failed: {e}"),
                });
            }
        }
    }
    devices.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(FleetReport { devices })
}
