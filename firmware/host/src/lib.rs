//! The host build of the Eddy firmware: the real firmware core
//! ([`eddy_firmware::Node`]) with simulated sensors and an MQTT link, run
//! as tokio tasks so one process can simulate thousands of devices.
//!
//! Used by `eddy demo` and by the testbench.

mod device;
pub mod faults;
mod fleet;
pub mod ota;
pub mod replay;
pub mod serial;
pub mod sim;

pub use device::{DeviceReport, MqttLink, MqttLinkError, SimDevice, SimDeviceConfig};
pub use fleet::{FleetConfig, FleetReport, ReplaySource, run_fleet};

/// Why a simulated device could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("device `{device}`: {reason}")]
    Setup { device: String, reason: String },
}
