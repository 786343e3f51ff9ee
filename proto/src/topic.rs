//! MQTT topic layout shared by devices and the gateway.
//!
//! With the default prefix `eddy/v1`:
//! `eddy/v1/{device}/telemetry` (device to gateway), `eddy/v1/{device}/cmd`
//! and `eddy/v1/{device}/ack` and `eddy/v1/{device}/ota` (gateway to device),
//! `eddy/v1/{device}/ota/status` and `eddy/v1/{device}/hello` (device to
//! gateway), `eddy/v1/alerts/{rule}/{device}` and
//! `eddy/v1/agg/{device}/{metric}` (gateway outputs).

/// Default topic prefix.
pub const DEFAULT_PREFIX: &str = "eddy/v1";
/// Last level of a device's telemetry topic.
pub const TELEMETRY: &str = "telemetry";
/// Last level of a device's command topic.
pub const COMMAND: &str = "cmd";
/// Last level of a device's acknowledgement topic (gateway to device).
pub const ACK: &str = "ack";
/// Last level of a device's update topic (gateway to device: `OtaOffer`
/// and `OtaChunk` frames).
pub const OTA: &str = "ota";
/// Last levels of a device's update report topic (device to gateway:
/// `OtaStatus` frames).
pub const OTA_STATUS: &str = "ota/status";
/// Last level of a device's introduction topic (device to gateway: a
/// `Hello` frame with its board and firmware version, at every connect).
pub const HELLO: &str = "hello";
/// Last level of a device's presence topic.
pub const STATUS: &str = "status";

/// Splits `{prefix}/{device}/{leaf}` into `(device, leaf)`.
///
/// Returns `None` for topics outside the prefix or with another shape.
pub fn split_device_topic<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (device, leaf) = rest.split_once('/')?;
    if device.is_empty() || leaf.is_empty() || leaf.contains('/') {
        return None;
    }
    Some((device, leaf))
}
