//! Sinks: where results leave the gateway.

pub mod local;
pub mod upstream;

/// The backoff of reconnects and restarts: the MQTT transport's.
pub use eddy_mqtt::backoff;
