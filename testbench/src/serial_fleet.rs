//! A fleet on serial lines: each simulated device gets a pty pair; the
//! device end runs the firmware core (`eddy_firmware_host::serial`), the
//! other end is linked as `{dir}/{device id}` for the gateway's
//! `[[serial]]` ports (it opens them when they appear, and reopens them
//! with backoff).

use std::path::Path;
use std::time::Duration;

use eddy_firmware_host::serial::{SerialDeviceConfig, run_serial_device};
use eddy_firmware_host::{FleetConfig, FleetReport};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Runs `fleet` (size, rate, sensors, duration) on ptys linked in `dir`.
pub async fn run(
    fleet: &FleetConfig,
    dir: &Path,
    stop: CancellationToken,
) -> anyhow::Result<FleetReport> {
    std::fs::create_dir_all(dir)?;
    let interval_ms = (1000.0 / fleet.rate_hz.max(0.001))
        .round()
        .clamp(10.0, 3_600_000.0) as u32;
    let mut tasks = JoinSet::new();
    for index in 0..fleet.devices {
        let id = fleet.device_id(index);
        let master = eddy_test_support::pty::plug(&dir.join(&id))?;
        let config = SerialDeviceConfig {
            device: id,
            interval_ms,
            start_offset: Duration::from_millis(
                u64::from(interval_ms) * index as u64 / fleet.devices.max(1) as u64,
            ),
            duration: fleet.duration,
            drain_timeout: fleet.drain_timeout,
        };
        let sensors = fleet.sensors(index)?;
        tasks.spawn(run_serial_device(config, sensors, master, stop.clone()));
    }
    let mut devices = Vec::new();
    while let Some(r) = tasks.join_next().await {
        devices.push(r??);
    }
    devices.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(FleetReport { devices })
}
